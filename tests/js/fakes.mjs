// What lobby.js uses of a browser and of a lobby server, faked for its unit
// tests in Node: a lobby behind `fetch` that the test answers request by
// request, Web Locks, BroadcastChannels, and a window and a document per tab.
// Nothing here knows lobby.js: a test hands `browser.tab().io` to `new Presence`.

import FakeTimers from "@sinonjs/fake-timers";

// Node 18 (Debian 12's) has no global CustomEvent, which lobby.js dispatches.
globalThis.CustomEvent ??= class CustomEvent extends Event {
  constructor(type, options = {}) {
    super(type, options);
    this.detail = options.detail ?? null;
  }
};

export const BASE = "http://lobby.test";

/** One turn of the event loop: what was queued (a message, a lock) has run. */
export const task = () => new Promise((resolve) => setImmediate(resolve));

const aborted = (signal) => signal.reason ?? new DOMException("The operation was aborted.", "AbortError");

/** One event as the lobby frames it. */
export const frame = (id, event, data) => `id: ${id}\nevent: ${event}\ndata: ${JSON.stringify(data)}\n\n`;

/** A stream's opening: `retry:` (tiny, so resumes are quick) in the block of the snapshot. */
export const snapshot = (id, users, retry = 5) => `retry: ${retry}\n${frame(id, "existing_users", { users })}`;

/**
 * A lobby server behind `fetch`. Every request waits until the test takes it
 * (`next`) and answers it: a reply, a refusal, an event stream, or a network
 * failure. An aborted request fails as a browser's does, its stream too.
 */
export class FakeLobby {
  /** Every request the client made, in order. */
  requests = [];
  #untaken = [];
  #waiters = [];

  /** The client's `fetch`; a plain function, as lobby.js may call it unbound. */
  fetch = (url, init = {}) => {
    const request = new FakeRequest(url, init);
    this.requests.push(request);
    const waiter = this.#waiters.findIndex(({ what }) => request.is(what));
    if (waiter >= 0) this.#waiters.splice(waiter, 1)[0].take(request);
    else this.#untaken.push(request);
    return request.response;
  };

  /** The next request for `what` ("POST /join", "GET /events") no test has taken, once it is made. */
  next(what) {
    const index = this.#untaken.findIndex((request) => request.is(what));
    if (index >= 0) return Promise.resolve(this.#untaken.splice(index, 1)[0]);
    return new Promise((take) => this.#waiters.push({ what, take }));
  }

  /** Every request for `what` so far, answered or not. */
  all(what) {
    return this.requests.filter((request) => request.is(what));
  }

  /** The event streams the client still holds. */
  openStreams() {
    return this.requests.filter((request) => request.events?.open);
  }

  /** Answers the next join as the lobby does: 201, the person, their token and who was online before. */
  async acceptJoin(person, before = []) {
    const request = await this.next("POST /join");
    request.reply(201, { ...person, users: before });
    return request;
  }

  /** Answers the next stream request with an open event stream. */
  async acceptStream() {
    return (await this.next("GET /events")).stream();
  }
}

/** A request as the client made it, and the means to answer it. */
class FakeRequest {
  #answer;

  constructor(url, init) {
    this.url = String(url);
    this.method = init.method ?? "GET";
    this.headers = Object.fromEntries(new Headers(init.headers));
    this.body = init.body ?? null;
    this.mode = init.mode ?? "cors";
    this.response = new Promise((resolve, reject) => (this.#answer = { resolve, reject }));
    this.answered = false;
    this.events = null; // the stream, once answered with one
    const { signal } = init;
    if (signal?.aborted) this.#abort(signal);
    else signal?.addEventListener("abort", () => this.#abort(signal), { once: true });
  }

  /** Whether this is `what`: "GET /events" matches a room's /rooms/NAME/events too. */
  is(what) {
    const [method, path] = what.split(" ");
    const { pathname } = new URL(this.url);
    return this.method === method && (pathname === path || pathname.endsWith(path));
  }

  json() {
    return JSON.parse(this.body);
  }

  /** Answers `status` with `body` as JSON (no body when undefined). */
  reply(status, body) {
    const headers = body === undefined ? {} : { "Content-Type": "application/json" };
    this.#settle(new Response(body === undefined ? null : JSON.stringify(body), { status, headers }));
  }

  /** A refusal as the lobby words it: `{"error": sentence}`. */
  refuse(status, sentence) {
    this.reply(status, { error: sentence });
  }

  /** No response: the server is down, or the browser hid a refusal (CORS). */
  failNetwork() {
    this.answered = true;
    this.#answer.reject(new TypeError("Failed to fetch"));
  }

  /** Answers 200 with an event stream, and returns it for the test to write. */
  stream() {
    this.events = new EventStream();
    this.#settle(new Response(this.events.body, { status: 200, headers: { "Content-Type": "text/event-stream" } }));
    return this.events;
  }

  #settle(response) {
    this.answered = true;
    this.#answer.resolve(response);
  }

  #abort(signal) {
    if (!this.answered) {
      this.answered = true;
      this.#answer.reject(aborted(signal));
    }
    this.events?.fail(aborted(signal));
  }
}

/** An open event stream: the test writes text (or bytes), ends it, or breaks it. */
class EventStream {
  open = true;
  #controller;
  #encoder = new TextEncoder();

  constructor() {
    this.body = new ReadableStream({
      start: (controller) => (this.#controller = controller),
      cancel: () => (this.open = false),
    });
  }

  send(text) {
    this.sendBytes(this.#encoder.encode(text));
  }

  sendBytes(bytes) {
    if (this.open) this.#controller.enqueue(bytes);
  }

  /** The server ends the response, as it does when it shuts down. */
  end() {
    if (this.open) this.#controller.close();
    this.open = false;
  }

  /** The connection drops in the middle: the reader fails, as a browser's does. */
  break() {
    this.fail(new TypeError("network error"));
  }

  fail(error) {
    if (this.open) this.#controller.error(error);
    this.open = false;
  }
}

/**
 * A LockManager as lobby.js uses it: `request(name, {signal}, callback)`,
 * exclusive, granted in order of request, each grant in a task of its own,
 * held until the callback's promise settles; `signal` takes back a request
 * still waiting, which rejects with an AbortError.
 */
export class FakeLocks {
  #queues = new Map(); // name -> the requests, the holder (granted) first

  request(name, ...args) {
    const callback = args.pop();
    const { signal } = args[0] ?? {};
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(aborted(signal));
      const queue = this.#queues.get(name) ?? this.#queues.set(name, []).get(name);
      const request = { callback, resolve, reject, granted: false };
      queue.push(request);
      signal?.addEventListener("abort", () => {
        if (request.granted || !queue.includes(request)) return;
        queue.splice(queue.indexOf(request), 1);
        reject(aborted(signal));
      }, { once: true });
      if (queue.length === 1) this.#grant(name);
    });
  }

  async #grant(name) {
    await task();
    const queue = this.#queues.get(name);
    const request = queue[0];
    if (!request || request.granted) return;
    request.granted = true;
    try {
      request.resolve(await request.callback({ name, mode: "exclusive" }));
    } catch (error) {
      request.reject(error);
    }
    queue.shift();
    if (queue.length) this.#grant(name);
  }
}

/**
 * BroadcastChannels: a message goes, structured-cloned and in a task of its
 * own, to every other open channel of the same name, never to its sender.
 */
export class ChannelHub {
  #open = new Set();
  #inFlight = 0;

  /** What lobby.js calls as `io.channel(name)`. */
  channel = (name) => {
    const channel = new FakeChannel(name, this);
    this.#open.add(channel);
    return channel;
  };

  post(from, message) {
    const data = structuredClone(message);
    for (const to of this.#open) {
      if (to === from || to.name !== from.name) continue;
      this.#inFlight += 1;
      setImmediate(() => {
        this.#inFlight -= 1;
        if (this.#open.has(to)) to.onmessage?.(new MessageEvent("message", { data: structuredClone(data) }));
      });
    }
  }

  close(channel) {
    this.#open.delete(channel);
  }

  /** Once every message sent has arrived (and whatever they made the tabs say too). */
  async idle() {
    do await task();
    while (this.#inFlight > 0);
  }
}

class FakeChannel {
  onmessage = null;
  #hub;

  constructor(name, hub) {
    this.name = name;
    this.#hub = hub;
  }

  postMessage(message) {
    if (this.closed) throw new DOMException("The channel is closed.", "InvalidStateError");
    this.#hub.post(this, message);
  }

  close() {
    this.closed = true;
    this.#hub.close(this);
  }
}

/** One browser: its tabs share the Web Locks and the channels; `beacons` holds what they sent. */
export class FakeBrowser {
  channels = new ChannelHub();
  beacons = [];

  /** `origin` is the page's (undefined: none, as in Node); `locks: false`, a browser without Web Locks. */
  constructor(lobby, { origin, locks = true } = {}) {
    this.lobby = lobby;
    this.origin = origin;
    this.locks = locks ? new FakeLocks() : null;
  }

  tab() {
    return new FakeTab(this);
  }
}

/** A tab: its window (pagehide, pageshow), its document (visibility) and the `io` for a Presence. */
class FakeTab {
  window = new EventTarget();
  document = Object.assign(new EventTarget(), { visibilityState: "visible" });

  constructor(browser) {
    const { lobby, locks, channels, beacons, origin } = browser;
    const beacon = (url, text) => beacons.push({ url, text }) > 0;
    const { window, document } = this;
    this.io = { fetch: lobby.fetch, locks, channel: channels.channel, beacon, origin, window, document };
  }

  hide() {
    this.#visibility("hidden");
  }

  show() {
    this.#visibility("visible");
  }

  /** The page goes away: closed, navigated from, or into the back-forward cache. */
  pagehide() {
    this.window.dispatchEvent(pageTransition("pagehide", false));
  }

  /** The page comes back from the back-forward cache. */
  pageshow() {
    this.window.dispatchEvent(pageTransition("pageshow", true));
  }

  #visibility(state) {
    this.document.visibilityState = state;
    this.document.dispatchEvent(new Event("visibilitychange"));
  }
}

const pageTransition = (type, persisted) => Object.assign(new Event(type), { persisted });

/**
 * Fakes setTimeout and clearTimeout for test `t`; `tick(ms)` moves time on and
 * lets what woke up run. (Node 18's own mock timers lose every timer after a
 * clearTimeout(null), which lobby.js does.)
 */
export function clock(t) {
  const timers = FakeTimers.install({ toFake: ["setTimeout", "clearTimeout"] });
  t.after(() => timers.uninstall());
  return {
    async tick(ms) {
      await timers.tickAsync(ms);
      await task();
    },
  };
}
