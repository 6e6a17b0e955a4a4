// lobby.js's state machine in Node: joins, streams, resumes, refusals, the
// tabs that share one stream, and away; against the fakes of ./fakes.mjs.
// Every wait is for something to happen (a request, an event, the channels
// falling quiet); where time must pass, the test fakes setTimeout.
import { describe, it } from "node:test";
import assert from "node:assert/strict";

import { Presence, watch } from "../../static/lobby.js";
import { BASE, FakeBrowser, FakeLobby, clock, frame, snapshot } from "./fakes.mjs";

const ADA = { id: "a", name: "ada", token: "token-a" };
const ada = { id: ADA.id, name: ADA.name };
const BOB = { id: "b", name: "bob" };
const CAROL = { id: "c", name: "carol" };

// A suite whose tests wait in vain fails after this long instead of hanging.
const timeout = 10_000;

/** A tab of `browser` showing `options`; its Presence leaves when test `t` ends. */
function open(t, browser, options) {
  const tab = browser.tab();
  tab.presence = new Presence(BASE, options, tab.io);
  t.after(() => tab.presence.leave());
  return tab;
}

/** Resolves once `check()` holds: now, or after some `type` event of `target`. */
function until(target, type, check) {
  return new Promise((resolve) => {
    if (check()) return resolve();
    const listener = () => {
      if (!check()) return;
      target.removeEventListener(type, listener);
      resolve();
    };
    target.addEventListener(type, listener);
  });
}

/** The detail of the next `type` event of `target`. */
const next = (target, type) =>
  new Promise((resolve) => target.addEventListener(type, ({ detail }) => resolve(detail), { once: true }));

/** The details of every `type` event of `target` from now on. */
function record(target, type) {
  const details = [];
  target.addEventListener(type, ({ detail }) => details.push(detail));
  return details;
}

const names = (presence) => [...presence.users.values()].map((user) => user.name);
const becomes = (presence, status) => until(presence, "status", () => presence.status === status);

/**
 * Ada joined in `count` tabs of one browser, the first leading, every tab
 * showing event 1 of her stream (bob and her; retry: 5 ms).
 */
async function joined(t, options = {}, count = 1) {
  const lobby = new FakeLobby();
  const browser = new FakeBrowser(lobby);
  const tabs = Array.from({ length: count }, () => open(t, browser, { name: "ada", ...options }));
  const [tab] = tabs;
  await lobby.acceptJoin(ADA, [BOB]);
  const stream = await lobby.acceptStream();
  const applied = next(tab.presence, "change");
  stream.send(snapshot(1, [BOB, ada]));
  await applied;
  await browser.channels.idle();
  return { lobby, browser, tabs, tab, presence: tab.presence, stream };
}

/** A signed ticket for `sub` (lobby.js reads its `sub`; the lobby checks the signature). */
const ticket = (sub, serial) => `e30.${Buffer.from(JSON.stringify({ sub, serial })).toString("base64url")}.signature`;

describe("the event stream", { timeout }, () => {
  it("events split across chunks arrive whole, with LF, CRLF or CR line ends", async (t) => {
    const { presence, stream } = await joined(t);
    const joins = record(presence, "join");
    const updates = record(presence, "update");

    stream.send("id: 2\r\nevent: new_");
    stream.send('user\r\ndata: {"id":"c",');
    stream.send('"name":"carol"}\r');
    stream.send("\n\r\nid: 3\revent: user_updated\rdata: ");
    stream.send('{"id":"b","name":"bob","state":{"mood":"busy"}}\r\rid: 4\nevent: new_user\n');
    stream.send('data: {"id":"d","name":"dan"}\n\n');
    await until(presence, "change", () => presence.users.has("d"));

    assert.deepEqual(joins, [CAROL, { id: "d", name: "dan" }]);
    assert.deepEqual(updates, [{ ...BOB, state: { mood: "busy" } }]);
    assert.deepEqual(names(presence), ["bob", "ada", "carol", "dan"]);
  });

  it("comments are skipped and data of several lines is joined by newlines", async (t) => {
    const { presence, stream } = await joined(t);
    const changes = record(presence, "change");

    stream.send(":\n\n: a comment line\n");
    stream.send('id: 2\nevent: new_user\ndata: {"id":"c",\ndata: "name":\ndata: "carol"}\n\n');
    await until(presence, "change", () => presence.users.has("c"));

    assert.equal(changes.length, 1, "the comments made no event");
    assert.deepEqual(presence.users.get("c"), CAROL);
  });

  it("a name whose UTF-8 bytes are split between chunks arrives whole", async (t) => {
    const { presence, stream } = await joined(t);
    const bytes = new TextEncoder().encode(frame(2, "new_user", { id: "z", name: "Zoë" }));
    const middle = bytes.indexOf(0xc3) + 1; // between the two bytes of ë

    stream.sendBytes(bytes.slice(0, middle));
    stream.sendBytes(bytes.slice(middle));
    await until(presence, "change", () => presence.users.has("z"));

    assert.equal(presence.users.get("z").name, "Zoë");
  });

  it("retry: sets how long a dropped stream waits, times 1 to 2, before it resumes", async (t) => {
    const time = clock(t);
    const lobby = new FakeLobby();
    const { presence } = open(t, new FakeBrowser(lobby), { name: "ada" });
    await lobby.acceptJoin(ADA);
    const stream = await lobby.acceptStream();
    const applied = next(presence, "change");
    stream.send(snapshot(1, [ada], 300));
    await applied;

    stream.end();
    await becomes(presence, "reconnecting");
    await time.tick(299);
    assert.equal(lobby.all("GET /events").length, 1, "no resume before 300 ms");
    await time.tick(301);
    assert.equal(lobby.all("GET /events").length, 2, "a resume before 600 ms");
  });

  it("a stream that breaks resumes after the server's retry, not after a second", async (t) => {
    const time = clock(t);
    const { lobby, presence, stream } = await joined(t);

    stream.break();
    await becomes(presence, "reconnecting");
    await time.tick(10);

    assert.equal(lobby.all("GET /events").length, 2, "resumed within twice retry: 5");
  });

  it("a resume that brings no retry: keeps the one the stream gave before", async (t) => {
    const time = clock(t);
    const { lobby, presence, stream } = await joined(t);
    stream.end();
    await becomes(presence, "reconnecting");
    await time.tick(10);
    const resumed = await lobby.acceptStream(); // it missed nothing: no event, so no retry: line
    await becomes(presence, "live");

    resumed.end();
    await becomes(presence, "reconnecting");
    await time.tick(10);

    assert.equal(lobby.all("GET /events").length, 3, "resumed again within twice retry: 5");
  });
});

describe("joining", { timeout }, () => {
  it("a join posts the name, then streams with the bearer token and shows who is online", async (t) => {
    const lobby = new FakeLobby();
    const { presence } = open(t, new FakeBrowser(lobby), { name: "ada" });
    const joins = record(presence, "join");

    const join = await lobby.acceptJoin(ADA, [BOB]);
    await lobby.acceptStream();
    await presence.ready;

    assert.equal(join.url, `${BASE}/join`);
    assert.equal(join.headers["content-type"], "application/json");
    assert.deepEqual(join.json(), { name: "ada" });
    const request = lobby.all("GET /events")[0];
    assert.equal(request.url, `${BASE}/events`);
    assert.equal(request.headers.authorization, "Bearer token-a");
    assert.equal(request.headers.accept, "text/event-stream");
    assert.equal(request.headers["last-event-id"], undefined);
    assert.deepEqual(names(presence), ["bob", "ada"], "the join's snapshot, her too");
    assert.deepEqual(joins, [BOB, ada]);
    assert.deepEqual(presence.me, ada);
    assert.equal(presence.status, "live");
  });

  it("new_user, user_updated and disconnect_user fire join, update and leave, and keep users in order", async (t) => {
    const { presence, stream } = await joined(t);
    const seen = [];
    for (const type of ["join", "update", "leave"]) {
      presence.addEventListener(type, ({ detail }) => seen.push(`${type} ${detail.name}`));
    }
    presence.addEventListener("change", ({ detail }) => seen.push([...detail.values()].map(({ name }) => name)));

    stream.send(frame(2, "new_user", CAROL));
    stream.send(frame(3, "user_updated", { ...BOB, state: { mood: "busy" } }));
    stream.send(frame(4, "disconnect_user", BOB));
    await until(presence, "change", () => !presence.users.has("b"));

    assert.deepEqual(seen, [
      "join carol",
      ["bob", "ada", "carol"],
      "update bob",
      ["bob", "ada", "carol"],
      "leave bob",
      ["ada", "carol"],
    ]);
    assert.ok(presence.users instanceof Map);
    assert.deepEqual(presence.users.get("c"), CAROL);
  });

  it("a room's requests go to /rooms/NAME/", async (t) => {
    const lobby = new FakeLobby();
    open(t, new FakeBrowser(lobby), { room: "doc 42", name: "ada" });

    const join = await lobby.acceptJoin(ADA);
    const stream = await lobby.acceptStream();

    assert.equal(join.url, `${BASE}/rooms/doc%2042/join`);
    assert.equal(lobby.all("GET /events")[0].url, `${BASE}/rooms/doc%2042/events`);
    assert.ok(stream.open);
  });

  it("leave() in the only tab lets go of the stream, sends the leave as a beacon and closes", async (t) => {
    const { browser, presence, stream } = await joined(t);

    presence.leave();

    assert.deepEqual(browser.beacons, [{ url: `${BASE}/leave`, text: "token-a" }]);
    assert.equal(stream.open, false);
    assert.equal(presence.status, "closed");
  });
});

describe("resuming", { timeout }, () => {
  it("a dropped stream resumes with the id of the last event, and no new join", async (t) => {
    const { lobby, presence, stream } = await joined(t);
    stream.send(frame(2, "new_user", CAROL));
    await until(presence, "change", () => presence.users.has("c"));

    stream.end();
    const resume = await lobby.next("GET /events");

    assert.equal(resume.headers["last-event-id"], "2");
    assert.equal(resume.headers.authorization, "Bearer token-a");
    assert.equal(lobby.all("POST /join").length, 1);
  });

  it("a 401 on resume joins again under the same name and starts from a fresh snapshot", async (t) => {
    const { lobby, presence, stream } = await joined(t);
    stream.send(frame(2, "new_user", CAROL));
    await until(presence, "change", () => presence.users.has("c"));
    stream.end();

    (await lobby.next("GET /events")).refuse(401, "This token is unknown: join again.");
    const join = await lobby.next("POST /join");
    join.reply(201, { id: "a2", name: "ada", token: "token-a2", users: [CAROL] });
    const fresh = await lobby.next("GET /events");

    assert.deepEqual(join.json(), { name: "ada" });
    assert.equal(fresh.headers.authorization, "Bearer token-a2");
    assert.equal(fresh.headers["last-event-id"], undefined);
    assert.deepEqual(names(presence), ["carol", "ada"]);
    assert.deepEqual(presence.me, { id: "a2", name: "ada" });
  });
});

describe("tickets", { timeout }, () => {
  it("a ticket refused on join is asked of getTicket() once more, and the fresh one joins", async (t) => {
    const lobby = new FakeLobby();
    let asked = 0;
    const getTicket = async () => ticket("ada", ++asked);
    const { presence } = open(t, new FakeBrowser(lobby), { getTicket });

    const first = await lobby.next("POST /join");
    first.refuse(401, "The ticket has expired: ask the site for a fresh one.");
    const second = await lobby.next("POST /join");
    second.reply(201, { ...ADA, users: [] });
    await lobby.acceptStream();
    await presence.ready;

    assert.deepEqual(first.json(), { ticket: ticket("ada", 1) });
    assert.deepEqual(second.json(), { ticket: ticket("ada", 2) });
    assert.equal(asked, 2);
  });

  it("a fresh ticket refused as well closes the presence without asking a third time", async (t) => {
    const lobby = new FakeLobby();
    let asked = 0;
    const getTicket = () => ticket("ada", ++asked);
    const { presence } = open(t, new FakeBrowser(lobby), { getTicket });
    const sentence = "The ticket was not signed with this lobby's secret.";

    (await lobby.next("POST /join")).refuse(401, sentence);
    (await lobby.next("POST /join")).refuse(401, sentence);

    await assert.rejects(presence.ready, { message: sentence, status: 401, retry: false });
    assert.equal(presence.status, "closed");
    assert.equal(asked, 2);
  });

  it("a presence left while getTicket() is pending asks for nothing and hears no other tab", async (t) => {
    const lobby = new FakeLobby();
    const browser = new FakeBrowser(lobby);
    let give;
    const asked = new Promise((resolve) => (give = resolve));
    const { presence: gone } = open(t, browser, { getTicket: () => asked });
    const changes = record(gone, "change");

    gone.leave();
    give(ticket("ada", 1));
    const { presence } = open(t, browser, { ticket: ticket("ada", 2) });
    await lobby.acceptJoin(ADA);
    await lobby.acceptStream();
    await presence.ready;
    await browser.channels.idle();

    assert.equal(lobby.all("POST /join").length, 1);
    assert.deepEqual(changes, [], "the presence that left heard the other tab");
  });
});

describe("refusals", { timeout }, () => {
  it("a 422 on join closes with the server's sentence, and ready rejects", async (t) => {
    const lobby = new FakeLobby();
    const { presence } = open(t, new FakeBrowser(lobby), { name: "" });
    const errors = record(presence, "error");
    const sentence = "A name must have 1 to 32 characters.";

    (await lobby.next("POST /join")).refuse(422, sentence);

    await assert.rejects(presence.ready, { message: sentence, status: 422, retry: false });
    assert.equal(presence.status, "closed");
    assert.deepEqual(
      errors.map(({ message, status, retry }) => ({ message, status, retry })),
      [{ message: sentence, status: 422, retry: false }],
    );
    assert.equal(lobby.all("GET /events").length, 0);
  });

  it("a join refused with 429, then 503, is tried again after 1 s, then after 2 s more", async (t) => {
    const time = clock(t);
    const lobby = new FakeLobby();
    const { presence } = open(t, new FakeBrowser(lobby), { name: "ada" });

    let failed = next(presence, "error");
    (await lobby.next("POST /join")).refuse(429, "Too many joins: try again in a moment.");
    const refused = await failed;
    assert.equal(refused.status, 429);
    assert.equal(refused.retry, true);
    assert.equal(presence.status, "reconnecting");
    await time.tick(999);
    assert.equal(lobby.all("POST /join").length, 1, "no second join before 1 s");
    await time.tick(1);

    failed = next(presence, "error");
    (await lobby.next("POST /join")).refuse(503, "The lobby is full.");
    assert.equal((await failed).retry, true);
    await time.tick(1999);
    assert.equal(lobby.all("POST /join").length, 2, "no third join before 2 s more");
    await time.tick(1);
    await lobby.acceptJoin(ADA);
    await lobby.acceptStream();

    await presence.ready;
    assert.equal(presence.error, null);
  });

  it("a lobby that does not let the page's origin in says so, naming --cors-origin", async (t) => {
    const lobby = new FakeLobby();
    const { presence } = open(t, new FakeBrowser(lobby, { origin: "https://site.example" }), { name: "ada" });

    (await lobby.next("POST /join")).failNetwork(); // how a browser hides a response without CORS headers
    const probe = await lobby.next("GET /healthz");
    probe.reply(200); // an opaque response: the server is up

    assert.equal(probe.url, `${BASE}/healthz`);
    assert.equal(probe.mode, "no-cors");
    await assert.rejects(presence.ready, {
      message:
        "The lobby at http://lobby.test does not let pages of https://site.example use it: " +
        "start it with --cors-origin https://site.example.",
      retry: false,
    });
    assert.equal(presence.status, "closed");
  });

  it("a lobby that cannot be reached is said to be so, and tried again", async (t) => {
    const time = clock(t);
    const lobby = new FakeLobby();
    const { presence } = open(t, new FakeBrowser(lobby, { origin: "https://site.example" }), { name: "ada" });
    const failed = next(presence, "error");

    (await lobby.next("POST /join")).failNetwork();
    (await lobby.next("GET /healthz")).failNetwork();

    const error = await failed;
    assert.equal(error.message, "The lobby at http://lobby.test cannot be reached.");
    assert.equal(error.retry, true);
    assert.equal(presence.status, "reconnecting");
    await time.tick(1000);
    assert.equal(lobby.all("POST /join").length, 2);
  });

  for (const [code, sentence] of [
    [413, "A state must be at most 256 bytes as compact JSON."],
    [429, "Too many state updates: slow down."],
  ]) {
    it(`a state update refused with ${code} is reported, and the presence stays live`, async (t) => {
      const { lobby, presence } = await joined(t);
      const statuses = record(presence, "status");
      const failed = next(presence, "error");

      const said = presence.setState({ note: "x".repeat(300) });
      (await lobby.next("POST /state")).refuse(code, sentence);

      assert.equal((await failed).message, sentence);
      await said;
      assert.deepEqual(statuses, [], "the stream is still live");
      assert.equal(presence.status, "live");
    });
  }
});

describe("tabs", { timeout }, () => {
  it("three tabs make one join, hold one stream, and show the same users", async (t) => {
    const { lobby, browser, tabs, stream } = await joined(t, {}, 3);

    stream.send(frame(2, "new_user", CAROL));
    await until(tabs[0].presence, "change", () => tabs[0].presence.users.has("c"));
    await browser.channels.idle();

    assert.equal(lobby.all("POST /join").length, 1);
    assert.equal(lobby.all("GET /events").length, 1);
    assert.equal(lobby.openStreams().length, 1);
    for (const { presence } of tabs) {
      assert.deepEqual([...presence.users.values()], [BOB, ada, CAROL]);
      assert.deepEqual(presence.me, ada);
      assert.equal(presence.status, "live");
      await presence.ready;
    }
  });

  it("a following tab's setState is posted once, by the leading tab, with the token", async (t) => {
    const { lobby, browser, tabs } = await joined(t, {}, 3);

    await tabs[2].presence.setState({ mood: "busy" });
    const posted = await lobby.next("POST /state");
    posted.reply(204);
    await browser.channels.idle();

    assert.deepEqual(posted.json(), { mood: "busy" });
    assert.equal(posted.headers.authorization, "Bearer token-a");
    assert.equal(lobby.all("POST /state").length, 1);
  });

  it("when the leading tab goes, the next resumes its token with Last-Event-ID; no beacon, no leave", async (t) => {
    const { lobby, browser, tabs, stream } = await joined(t, {}, 3);
    const leaves = tabs.flatMap(({ presence }) => record(presence, "leave"));
    stream.send(frame(2, "new_user", CAROL));
    await until(tabs[0].presence, "change", () => tabs[0].presence.users.has("c"));
    await browser.channels.idle();

    tabs[0].pagehide();
    const resumed = await lobby.next("GET /events");

    assert.equal(resumed.headers.authorization, "Bearer token-a");
    assert.equal(resumed.headers["last-event-id"], "2");
    assert.equal(stream.open, false, "the first tab let go of its stream");
    assert.equal(lobby.all("POST /join").length, 1);
    assert.deepEqual(browser.beacons, []);
    assert.deepEqual(leaves, []);
  });

  it("when the last tab goes, it sends the leave as a beacon with the token", async (t) => {
    const { lobby, browser, tabs } = await joined(t, {}, 3);

    for (const tab of tabs.slice(0, 2)) {
      tab.pagehide();
      await lobby.acceptStream();
      await browser.channels.idle();
      assert.deepEqual(browser.beacons, []);
    }
    tabs[2].pagehide();

    assert.deepEqual(browser.beacons, [{ url: `${BASE}/leave`, text: "token-a" }]);
    assert.equal(lobby.openStreams().length, 0);
  });

  it("a disconnect_user of one's own id closes every tab, which ask for nothing more", async (t) => {
    const { lobby, browser, tabs, stream } = await joined(t, {}, 3);

    stream.send(frame(2, "disconnect_user", ada));
    await Promise.all(tabs.map(({ presence }) => becomes(presence, "closed")));
    await browser.channels.idle();

    assert.equal(lobby.requests.length, 2, "the join and the first stream only");
    assert.equal(lobby.openStreams().length, 0);
    assert.deepEqual(browser.beacons, [], "the lobby has let her go already");
    for (const { presence } of tabs) assert.ok(!presence.users.has("a"));
  });

  it("two tabs with tickets of the same person share one join", async (t) => {
    const lobby = new FakeLobby();
    const browser = new FakeBrowser(lobby);
    open(t, browser, { ticket: ticket("ada", 1) });
    const second = open(t, browser, { ticket: ticket("ada", 2) });

    await lobby.acceptJoin(ADA);
    await lobby.acceptStream();
    await second.presence.ready;

    assert.equal(lobby.all("POST /join").length, 1);
    assert.deepEqual(second.presence.me, ada);
  });

  it("without Web Locks, each tab joins and streams on its own", async (t) => {
    const lobby = new FakeLobby();
    const browser = new FakeBrowser(lobby, { locks: false });
    const tabs = [1, 2].map(() => open(t, browser, { name: "ada" }));

    for (const { presence } of tabs) {
      await lobby.acceptJoin(ADA);
      await lobby.acceptStream();
      await presence.ready;
    }

    assert.equal(lobby.all("POST /join").length, 2);
    assert.equal(lobby.openStreams().length, 2);
  });

  it("a page back from the back-forward cache joins again", async (t) => {
    const { lobby, browser, tab } = await joined(t);

    tab.pagehide();
    assert.deepEqual(browser.beacons, [{ url: `${BASE}/leave`, text: "token-a" }]);
    tab.pageshow();
    const again = await lobby.next("POST /join");

    assert.deepEqual(again.json(), { name: "ada" });
  });
});

describe("away", { timeout }, () => {
  it("every tab hidden for awayAfter posts away once; a tab shown again posts the state before", async (t) => {
    const time = clock(t);
    const { lobby, browser, tabs } = await joined(t, { awayAfter: 30_000 }, 3);
    tabs[1].presence.setState({ mood: "busy" });
    (await lobby.next("POST /state")).reply(204);

    for (const tab of tabs) tab.hide();
    await browser.channels.idle();
    await time.tick(29_999);
    assert.equal(lobby.all("POST /state").length, 1, "not away before 30 s");
    await time.tick(1);
    const away = await lobby.next("POST /state");
    away.reply(204);
    await time.tick(60_000);
    await browser.channels.idle();
    assert.equal(lobby.all("POST /state").length, 2, "away is said once");

    tabs[2].show();
    const back = await lobby.next("POST /state");

    assert.deepEqual(away.json(), { mood: "busy", status: "away" });
    assert.equal(away.headers.authorization, "Bearer token-a");
    assert.deepEqual(back.json(), { mood: "busy" });
  });
});

describe("watching", { timeout }, () => {
  it("watch() streams the room without a join and without Authorization", async (t) => {
    const lobby = new FakeLobby();
    t.mock.method(globalThis, "fetch", lobby.fetch);
    const presence = watch(BASE, { room: "doc-42" });
    t.after(() => presence.leave());

    const request = await lobby.next("GET /events");
    request.stream().send(snapshot(1, [BOB]));
    await until(presence, "change", () => presence.users.has("b"));

    assert.equal(request.url, `${BASE}/rooms/doc-42/events`);
    assert.equal(request.headers.authorization, undefined);
    assert.equal(lobby.all("POST /join").length, 0);
    assert.equal(presence.me, null);
    assert.equal(presence.status, "live");
  });
});
