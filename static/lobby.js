// lobby.js: who's online, from a lobby server, on any page; no dependencies.
// join() and watch() give a Presence; <lobby-presence> shows one. The tabs of
// one origin showing one person (or watcher) in one room share one stream: a
// Web Lock elects a leader, which joins, streams and tells the others over a
// BroadcastChannel; when it closes, another tab resumes its token with
// Last-Event-ID within the grace period, and nobody sees a leave.

/** What a Presence uses of the browser; tests hand in their own. */
export function browser() {
  const g = globalThis;
  return {
    fetch: (url, init) => g.fetch(url, init),
    locks: g.navigator?.locks,
    channel: (name) => g.BroadcastChannel && new BroadcastChannel(name),
    beacon: (url, text) => g.navigator.sendBeacon(url, new Blob([text], { type: "text/plain" })),
    origin: g.location?.origin,
    window: g.window,
    document: g.document,
  };
}

const refused = (message, status, retry) => Object.assign(new Error(message), { status, retry });

const sleep = (ms, signal) =>
  new Promise((done) => {
    setTimeout(done, ms);
    signal.addEventListener("abort", done);
  });

// Server-Sent Events as the HTML standard parses them, fed chunks of text.
function parser(dispatch, retry) {
  let rest = "", data = [], kind = "", id = null;
  return (text) => {
    const lines = (rest + text).split(/\r\n|\r(?!$)|\n/);
    rest = lines.pop();
    for (const line of lines) {
      const colon = line.indexOf(":"), value = line.slice(colon + 1).replace(/^ /, "");
      const field = colon < 0 ? line : line.slice(0, colon);
      if (line === "") {
        if (data.length) dispatch(kind || "message", data.join("\n"), id);
        [data, kind] = [[], ""];
      } else if (field === "data") data.push(colon < 0 ? "" : value);
      else if (field === "event") kind = value;
      else if (field === "id" && !value.includes("\0")) id = value;
      else if (field === "retry" && /^\d+$/.test(value)) retry(+value);
    }
  };
}

// Whose a ticket is (its `sub`, read, not checked: the server checks).
function subject(ticket) {
  try {
    return JSON.parse(atob(ticket.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).sub;
  } catch {
    return ticket;
  }
}

/**
 * Who is online in a room, kept true. Events: join, leave, update (detail: the
 * user), change, status (connecting, live, reconnecting, closed) and error
 * (detail: an Error; `retry` says whether it keeps trying).
 */
export class Presence extends EventTarget {
  constructor(base, options = {}, io = browser()) {
    super();
    const room = options.room;
    this.base = new URL(base, io.origin).href.replace(/\/+$/, "");
    this.routes = this.base + (room == null ? "" : `/rooms/${encodeURIComponent(room)}`);
    Object.assign(this, { io, options, users: new Map(), me: null, status: "connecting", error: null });
    this.joining = ["name", "ticket", "getTicket"].some((key) => options[key] != null);
    this.session = null; // { token, id, name } once joined
    this.last = null; // the last event id
    this.tab = Math.random().toString(36).slice(2);
    this.peers = new Set(); // the other tabs of this stream
    this.hidden = new Set(); // the tabs, this one too, whose page is hidden
    this.ready = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
    this.ready.catch(() => {});
    this.off = [];
    const on = (target, type, listener) => {
      target?.addEventListener(type, listener);
      this.off.push(() => target?.removeEventListener(type, listener));
    };
    on(io.window, "pagehide", () => this.stop());
    on(io.window, "pageshow", (event) => event.persisted && !this.closed && this.start());
    on(io.document, "visibilitychange", () => this.seen());
    this.start();
  }

  /** Says what this person is doing: a JSON object of at most 256 bytes. */
  async setState(state) {
    this.own = state;
    if (this.leader) await this.post(state);
    else this.say({ t: "state", state });
  }

  /** This tab stops; the person leaves at once if no other tab shows them. */
  leave() {
    if (this.closed) return;
    this.stop();
    this.closed = true;
    this.off.forEach((off) => off());
    this.channel?.close();
    this.setStatus("closed");
    this.settle.reject(this.error ?? new Error("left"));
  }

  async start() {
    const { options, io } = this;
    const signal = (this.abort = new AbortController()).signal;
    try {
      options.ticket ??= await options.getTicket?.();
    } catch (error) {
      this.fail(refused(`getTicket() failed: ${error.message}`, 0, false));
      return this.leave();
    }
    if (signal.aborted) return; // left (or hidden) while getTicket() was asked
    const who = options.ticket != null ? `ticket ${subject(options.ticket)}` : `name ${options.name}`;
    const key = `lobby ${this.routes} ${this.joining ? who : "watch"}`;
    // Without Web Locks every tab leads alone, so tabs share nothing.
    if (io.locks && (this.channel ??= io.channel(key))) this.channel.onmessage = ({ data }) => this.heard(data);
    this.say({ t: "tab", tab: this.tab, hello: true, hidden: this.isHidden() });
    this.seen();
    // Chromium may grant a lock whose request was aborted: it goes back at once.
    const lead = () => signal.aborted || new Promise((done) => ((this.done = done), this.run(signal)));
    if (io.locks) io.locks.request(key, { signal }, lead).catch(() => {});
    else lead();
  }

  // This page hides (a following tab takes over) or this presence ends.
  stop() {
    if (this.closed) return;
    this.say({ t: "bye", tab: this.tab });
    if (this.leader && this.session && !this.peers.size) {
      this.io.beacon(`${this.routes}/leave`, this.session.token);
      this.session = null;
    }
    if (this.leader) this.sync();
    this.leader = false;
    this.peers.clear();
    this.abort.abort();
    this.done?.();
  }

  // The leader's loop: join if need be, stream, and resume when the stream drops.
  async run(signal) {
    this.leader = true;
    this.backoff = 1000;
    while (!signal.aborted) {
      try {
        if (this.joining && !this.session) await this.join(signal);
        await this.listen(signal);
        if (signal.aborted) break;
        this.setStatus("reconnecting");
        await sleep(this.retry * (1 + Math.random()), signal);
      } catch (error) {
        if (signal.aborted) break;
        if (error.status === 401 && this.session) {
          this.session = this.last = null; // a void token (a restart, a timeout): join again
          if (this.options.getTicket) this.options.ticket = null; // with a fresh ticket
          continue;
        }
        this.fail(error);
        if (!error.retry) return this.say({ t: "left", error: error.message, status: error.status }), this.leave();
        await sleep(this.backoff, signal);
        this.backoff = Math.min(this.backoff * 2, 30000);
      }
    }
  }

  // A join; a refused ticket is asked of getTicket() once more, fresh.
  async join(signal) {
    const { options } = this;
    options.ticket ??= await options.getTicket?.();
    const ask = async () => {
      const body = JSON.stringify(options.ticket != null ? { ticket: options.ticket } : { name: options.name });
      const headers = { "Content-Type": "application/json" };
      return (await this.send("/join", { method: "POST", headers, body, signal })).json();
    };
    const reply = await ask().catch(async (error) => {
      if (error.status !== 401 || !options.getTicket) throw error;
      options.ticket = await options.getTicket();
      return ask();
    });
    const { id, name, users } = reply;
    this.session = { token: reply.token, id, name };
    this.last = null;
    this.event("existing_users", { users: users.some((user) => user.id === id) ? users : [...users, { id, name }] });
    const state = this.away ? { ...this.away, status: "away" } : this.own; // a new join starts with none
    if (state) this.post(state);
  }

  async listen(signal) {
    const headers = { Accept: "text/event-stream" };
    if (this.session) headers.Authorization = `Bearer ${this.session.token}`;
    if (this.last != null) headers["Last-Event-ID"] = this.last;
    const response = await this.send("/events", { headers, signal, cache: "no-store" });
    this.backoff = 1000;
    this.retry ??= 1000; // a resume that missed nothing brings no retry: the last one holds
    this.setStatus("live");
    const push = parser((kind, data, id) => this.event(kind, JSON.parse(data), id), (ms) => (this.retry = ms));
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (let chunk; !(chunk = await reader.read()).done; ) push(chunk.value);
    } catch {
      if (!signal.aborted) this.fail(refused(`The stream from ${this.base} dropped.`, 0, true));
    }
  }

  post(state) {
    const headers = { "Content-Type": "application/json", Authorization: `Bearer ${this.session?.token}` };
    const init = { method: "POST", headers, body: JSON.stringify(state) };
    const refusal = (error) => this.dispatchEvent(new CustomEvent("error", { detail: error })); // the stream is fine
    return this.session && this.send("/state", init).catch(refusal);
  }

  // A request to the room's routes; a refusal throws the server's sentence.
  async send(path, init) {
    const response = await this.io.fetch(this.routes + path, init).catch(async (error) => {
      throw init.signal?.aborted ? error : await this.unreachable();
    });
    const { ok, status } = response;
    if (ok) return response;
    const { error } = await response.json().catch(() => ({}));
    throw refused(error || `${this.base} answered ${status}.`, status, status === 429 || status >= 500);
  }

  // What the browser would not show: the server is down, or (if it answers a
  // request that needs no permission) it does not allow pages of this origin.
  async unreachable() {
    const { origin, fetch } = this.io;
    if (origin && origin !== new URL(this.base).origin) {
      const up = await fetch(`${this.base}/healthz`, { mode: "no-cors" }).then(() => true, () => false);
      const allow = `start it with --cors-origin ${origin}`;
      if (up) return refused(`The lobby at ${this.base} does not let pages of ${origin} use it: ${allow}.`, 403, false);
    }
    return refused(`The lobby at ${this.base} cannot be reached.`, 0, true);
  }

  // An event from the stream (or the leader), applied and told to the other tabs.
  event(kind, data, id) {
    if (id != null) this.last = id;
    if (this.leader) this.say({ t: "event", kind, data, last: this.last, session: this.session });
    const { users } = this;
    const tell = (type, user) => this.dispatchEvent(new CustomEvent(type, { detail: user }));
    const was = users.get(data.id);
    if (kind === "existing_users") {
      const before = new Map(users);
      users.clear();
      for (const user of data.users) users.set(user.id, user);
      for (const [id, user] of before) if (!users.has(id)) tell("leave", user);
      for (const [id, user] of users) {
        if (!before.has(id)) tell("join", user);
        else if (JSON.stringify(before.get(id).state) !== JSON.stringify(user.state)) tell("update", user);
      }
    } else if (kind === "new_user" && !was) tell("join", users.set(data.id, data) && data);
    else if (kind === "user_updated" && was) tell("update", users.set(data.id, data) && data);
    else if (kind === "disconnect_user" && was) tell("leave", users.delete(data.id) && was);
    this.me = this.session && { id: this.session.id, name: this.session.name };
    tell("change", users);
    if (kind === "disconnect_user" && this.leader && data.id === this.session?.id) {
      this.session = null; // made to leave (POST /leave with this token): every tab is
      this.say({ t: "left" });
      this.leave();
    }
  }

  sync() {
    const { users, last, session, status } = this;
    this.say({ t: "event", kind: "existing_users", data: { users: [...users.values()] }, last, session, status });
  }

  // What another tab of this stream says.
  heard(message) {
    const { t, tab } = message;
    if (t === "tab") {
      this.peers.add(tab);
      this.hide(tab, message.hidden);
      if (message.hello) this.say({ t: "tab", tab: this.tab, hidden: this.isHidden() });
      if (message.hello && this.leader) this.sync();
    } else if (t === "bye") {
      this.peers.delete(tab);
      this.hide(tab, false);
    } else if (t === "left") {
      if (message.error) this.fail(refused(message.error, message.status, false)); // every tab would be refused
      this.leave();
    }
    else if (t === "state" && this.leader) this.setState(message.state);
    else if (!this.leader && t === "event") {
      this.session = message.session;
      this.event(message.kind, message.data, message.last);
    }
    if (!this.leader && message.status) this.setStatus(message.status);
  }

  say(message) {
    if (!this.closed && !this.abort.signal.aborted) this.channel?.postMessage(message); // a stopped tab is gone
  }

  setStatus(status) {
    if (status === "live") this.settle.resolve((this.error = null));
    if (status === this.status) return;
    this.status = status;
    if (this.leader) this.say({ t: "status", status });
    this.dispatchEvent(new CustomEvent("status", { detail: status }));
  }

  fail(error) {
    this.error = error;
    this.setStatus(error.retry ? "reconnecting" : "closed");
    if (!error.retry) this.settle.reject(error);
    this.dispatchEvent(new CustomEvent("error", { detail: error }));
  }

  isHidden() {
    return this.io.document?.visibilityState === "hidden";
  }

  seen() {
    this.hide(this.tab, this.isHidden());
    this.say({ t: "tab", tab: this.tab, hidden: this.isHidden() });
  }

  // Away: every tab of this stream hidden for options.awayAfter ms.
  hide(tab, hidden) {
    this.hidden[hidden ? "add" : "delete"](tab);
    if (this.options.awayAfter == null) return;
    if (this.hidden.size <= this.peers.size) {
      clearTimeout(this.awayTimer);
      if (this.away && this.leader) this.post(this.away);
      this.awayTimer = this.away = null;
    } else this.awayTimer ??= setTimeout(() => {
      const { status, ...rest } = this.users.get(this.session?.id)?.state ?? {};
      this.away = this.own ?? rest;
      if (this.leader) this.post({ ...this.away, status: "away" });
    }, this.options.awayAfter);
  }
}

/** Joins a room of the lobby at `base` with { room, name } or { room, ticket, getTicket }. */
export const join = (base, options) => new Presence(base, options);

/** Watches a room of the lobby at `base` without joining it. */
export const watch = (base, { room } = {}) => new Presence(base, { room });

/** A hue for an id, the same on every page. */
export function hueOf(id) {
  let hash = 0;
  for (const c of id) hash = (hash * 31 + c.charCodeAt(0)) >>> 0;
  return hash % 360;
}

/** Keeps a list showing presence.users in order: make(user) a box, dress(box, user, me, away). */
export function showUsers(list, presence, make, dress) {
  const boxes = new Map([...list.children].map((box) => [box.dataset.userId, box]));
  for (const [id, box] of boxes) if (!presence.users.has(id)) box.remove();
  for (const user of presence.users.values()) {
    let box = boxes.get(user.id);
    if (!box) {
      list.append((box = make(user)));
      box.dataset.userId = user.id;
      box.style.setProperty("--hue", hueOf(user.id));
    }
    dress(box, user, user.id === presence.me?.id, user.state?.status === "away");
  }
}

const STYLE = `:host{display:block}[hidden]{display:none}[part=error]{color:var(--lobby-error,#b00020)}
ul{display:flex;flex-wrap:wrap;gap:var(--lobby-gap,.5em);list-style:none;margin:0;padding:0}
li{display:flex;align-items:center;justify-content:center;min-width:var(--lobby-size,2.2em);
height:var(--lobby-size,2.2em);padding:0 .7em;box-sizing:border-box;border-radius:var(--lobby-radius,.5em);
background:var(--lobby-box,hsl(var(--hue) 70% 88%));color:var(--lobby-ink,hsl(var(--hue) 60% 22%))}
.me{outline:2px solid currentColor}.away{opacity:var(--lobby-away-opacity,.45)}
:host([look=initials]) li{padding:0;border-radius:50%}
:host([look=initials]) .name,:host(:not([look=initials])) .initials,.said{position:absolute;clip-path:inset(50%)}`;

/** <lobby-presence src room name|ticket|watch away-after look=initials>: who is online. */
export class LobbyPresence extends (globalThis.HTMLElement ?? Object) {
  static observedAttributes = ["src", "room", "name", "ticket", "watch", "away-after"];

  constructor() {
    super();
    const root = this.attachShadow({ mode: "open" });
    root.innerHTML = `<style>${STYLE}</style><p part="count"><span></span> online</p>
<ul part="list" aria-label="Who is online"></ul><p part="error" role="alert" hidden></p><p class="said" aria-live="polite"></p>`;
    [this.count, this.list, this.problem, this.said] = root.querySelectorAll("span,ul,p[role],.said");
  }

  connectedCallback() {
    queueMicrotask(() => this.restart()); // after the page's script sets getTicket
  }

  disconnectedCallback() {
    this.presence?.leave();
    this.presence = null;
  }

  attributeChangedCallback() {
    if (this.presence) this.restart();
  }

  restart() {
    this.disconnectedCallback();
    const get = (name) => this.getAttribute(name) ?? undefined;
    if (!this.isConnected || !get("src")) return;
    const room = get("room"), away = get("away-after"), { getTicket } = this;
    const presence = (this.presence = this.hasAttribute("watch")
      ? watch(get("src"), { room })
      : join(get("src"), { room, name: get("name"), ticket: get("ticket"), getTicket, awayAfter: away && away * 1000 }));
    const make = (user) => {
      const box = document.createElement("li");
      box.append(...["initials", "name"].map((part) => Object.assign(document.createElement("span"), { className: part })));
      box.firstChild.textContent = [...user.name][0].toUpperCase();
      box.firstChild.ariaHidden = "true";
      box.lastChild.textContent = user.name;
      return box;
    };
    const dress = (box, user, me, away) => {
      box.className = `${me ? "me" : ""} ${away ? "away" : ""}`.trim();
      box.part = `user ${box.className}`;
      box.title = `${user.name}${me ? " (you)" : ""}${away ? " (away)" : ""}`;
    };
    const render = () => {
      showUsers(this.list, presence, make, dress);
      this.count.textContent = presence.users.size;
    };
    const say = (verb) => ({ detail }) => presence.status === "live" && (this.said.textContent = `${detail.name} ${verb}`);
    presence.addEventListener("change", render);
    presence.addEventListener("join", say("joined"));
    presence.addEventListener("leave", say("left"));
    presence.addEventListener("status", () => (this.problem.hidden = !presence.error || presence.status === "live"));
    presence.addEventListener("error", ({ detail }) => {
      this.problem.hidden = false;
      this.problem.textContent = detail.message;
      if (!detail.retry) console.error(`<lobby-presence>: ${detail.message}`);
    });
    render();
  }
}

globalThis.customElements?.get("lobby-presence") ?? globalThis.customElements?.define("lobby-presence", LobbyPresence);
