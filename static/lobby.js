// lobby.js: who's online, from a lobby server; no dependencies. Types: lobby.d.ts. Tabs of one
// origin showing one person (or watcher) in one room share one stream: a Web Lock elects the tab
// that streams and tells the others over a BroadcastChannel; when it closes, the next one resumes.

/** What a Presence uses of the browser; tests hand in their own. */
export function browser() {
  const g = globalThis;
  return {
    fetch: (url, init) => g.fetch(url, init),
    locks: g.navigator?.locks,
    channel: (name) => g.BroadcastChannel && new BroadcastChannel(name),
    beacon: (url, text) => g.navigator.sendBeacon(url, text), // as text/plain
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
      const [, field, value] = line.match(/^([^:]*):? ?(.*)/s);
      if (!line) {
        if (data.length) dispatch(kind, data.join("\n"), id);
        [data, kind] = [[], ""];
      } else if (field === "data") data.push(value);
      else if (field === "event") kind = value;
      else if (field === "id" && !value.includes("\0")) id = value;
      else if (field === "retry" && /^\d+$/.test(value)) retry(+value);
    }
  };
}

// Whose a ticket is: its `sub`, read, not checked (the server checks).
function subject(ticket) {
  try {
    return JSON.parse(atob(ticket.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).sub;
  } catch {
    return ticket;
  }
}

/** Who is online in a room, kept true; its events are listed in lobby.d.ts. */
export class Presence extends EventTarget {
  users = new Map();
  me = null;
  status = "connecting";
  error = null;
  ready = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
  session = null; // { token, me } once joined
  last = null; // the last event's id
  retry = 1000; // ms before a resume, until the stream says
  tab = Math.random();
  peers = new Map(); // the other tabs of this stream: whether each is hidden
  gone = new AbortController(); // aborted on leave()

  constructor(base, options = {}, io = browser()) {
    super();
    const { room } = options, { signal } = this.gone;
    this.base = new URL(base, io.origin).href.replace(/\/+$/, "");
    this.routes = this.base + (room == null ? "" : `/rooms/${encodeURIComponent(room)}`);
    this.joining = ["name", "ticket", "getTicket"].some((key) => options[key] != null);
    Object.assign(this, { options, io });
    this.ready.catch(() => {});
    io.window?.addEventListener("pagehide", () => this.stop(), { signal });
    io.window?.addEventListener("pageshow", (event) => event.persisted && this.start(), { signal });
    io.document?.addEventListener("visibilitychange", () => this.seen(), { signal });
    this.start();
  }

  async setState(state) {
    this.own = state;
    if (this.leader) await this.post(state);
    else this.say({ t: "state", state });
  }

  /** This tab stops; the person leaves at once if no other tab shows them. */
  leave() {
    if (this.status === "closed") return;
    this.stop();
    this.gone.abort();
    this.channel?.close();
    this.setStatus("closed");
    this.settle.reject(this.error ?? new Error("left"));
  }

  async start() {
    const { options, io } = this;
    const { signal } = (this.abort = new AbortController());
    try {
      options.ticket ??= await options.getTicket?.();
    } catch (error) {
      return this.fail(refused(`getTicket() failed: ${error.message}`, 0, false));
    }
    if (signal.aborted) return; // left (or hidden) while getTicket() was asked
    const who = options.ticket != null ? `ticket ${subject(options.ticket)}` : `name ${options.name}`;
    const key = `lobby ${this.routes} ${this.joining ? who : "watch"}`;
    // Without Web Locks every tab leads alone, so tabs share nothing.
    if (io.locks && (this.channel ??= io.channel(key))) this.channel.onmessage = ({ data }) => this.heard(data);
    this.seen(true);
    // Chromium may grant a lock whose request was aborted: give it back.
    const lead = () => signal.aborted || new Promise((done) => ((this.done = done), this.run(signal)));
    if (io.locks) io.locks.request(key, { signal }, lead).catch(() => {});
    else lead();
  }

  // This page hides (another tab takes over) or this presence ends.
  stop() {
    this.say({ t: "bye", tab: this.tab });
    if (this.leader) {
      if (this.session && !this.peers.size) this.io.beacon(`${this.routes}/leave`, this.session.token);
      if (!this.peers.size) this.session = null;
      this.sync();
    }
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
          this.session = null; // a void token (a restart, a timeout): join again,
          if (this.options.getTicket) this.options.ticket = null; // with a fresh ticket
          continue;
        }
        if (!error.retry) {
          // Refused for good: so would every tab be.
          this.say({ t: "left", error: { message: error.message, status: error.status } });
          return this.fail(error);
        }
        this.fail(error);
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
      const body = options.ticket != null ? { ticket: options.ticket } : { name: options.name };
      return (await this.send("/join", { body, signal })).json();
    };
    const { token, id, name, users } = await ask().catch(async (error) => {
      if (error.status !== 401 || !options.getTicket) throw error;
      options.ticket = await options.getTicket();
      return ask();
    });
    const me = { id, name };
    this.session = { token, me };
    this.last = null;
    this.event("existing_users", { users: users.some((user) => user.id === id) ? users : [...users, me] });
    const state = this.away ? { ...this.away, status: "away" } : this.own; // a join has none
    if (state) this.post(state);
  }

  async listen(signal) {
    const headers = { Accept: "text/event-stream" };
    if (this.last != null) headers["Last-Event-ID"] = this.last;
    // No cookie: it would make a watcher someone who joined.
    const response = await this.send("/events", { headers, signal, cache: "no-store", credentials: "omit" });
    this.backoff = 1000;
    this.setStatus("live");
    const push = parser((kind, data, id) => this.event(kind, JSON.parse(data), id), (ms) => (this.retry = ms));
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (let chunk; !(chunk = await reader.read()).done; ) push(chunk.value);
    } catch {
      if (!signal.aborted) this.fail(refused(`The stream from ${this.base} dropped.`, 0, true));
    }
  }

  // A refused state is only reported: the stream is fine.
  post(state) {
    return this.session && this.send("/state", { body: state }).catch((error) => this.emit("error", error));
  }

  // A refusal throws the server's sentence. No answer: the server is down or, if it answers a
  // request that needs no permission, it bars this origin (the browser hides which).
  async send(path, { body, headers = {}, ...init }) {
    const { origin, fetch } = this.io;
    if (this.session) headers.Authorization = `Bearer ${this.session.token}`;
    if (body) {
      Object.assign(init, { method: "POST", body: JSON.stringify(body) });
      headers["Content-Type"] = "application/json";
    }
    const response = await fetch(this.routes + path, { ...init, headers }).catch(async (error) => {
      if (init.signal?.aborted) throw error;
      const up = () => fetch(`${this.base}/healthz`, { mode: "no-cors" }).then(() => true, () => false);
      if (origin && origin !== new URL(this.base).origin && (await up())) {
        const why = `does not let pages of ${origin} use it: start it with --cors-origin ${origin}`;
        throw refused(`The lobby at ${this.base} ${why}.`, 403, false);
      }
      throw refused(`The lobby at ${this.base} cannot be reached.`, 0, true);
    });
    if (response.ok) return response;
    const { status } = response, { error } = await response.json().catch(() => ({}));
    throw refused(error || `${this.base} answered ${status}.`, status, status === 429 || status >= 500);
  }

  // An event from the stream (or the leader), applied and told to the other tabs.
  event(kind, data, id) {
    if (id != null) this.last = id;
    if (this.leader) this.say({ t: "event", kind, data, last: this.last, session: this.session });
    const { users } = this, was = users.get(data.id);
    if (kind === "existing_users") {
      const before = new Map(users);
      users.clear();
      for (const user of data.users) users.set(user.id, user);
      for (const [id, user] of before) if (!users.has(id)) this.emit("leave", user);
      for (const [id, user] of users) {
        if (!before.has(id)) this.emit("join", user);
        else if (JSON.stringify(before.get(id).state) !== JSON.stringify(user.state)) this.emit("update", user);
      }
    } else if (kind === "new_user" ? !was : kind === "user_updated" && was) {
      users.set(data.id, data);
      this.emit(was ? "update" : "join", data);
    } else if (kind === "disconnect_user" && was) this.emit("leave", users.delete(data.id) && was);
    this.me = this.session?.me ?? null;
    this.emit("change", users);
    if (kind === "disconnect_user" && this.leader && data.id === this.me?.id) {
      this.session = null; // made to leave (POST /leave): every tab is
      this.say({ t: "left" });
      this.leave();
    }
  }

  // Everything the other tabs show: for a new tab, and from a leader that stops.
  sync() {
    const { users, last, session, status } = this, data = { users: [...users.values()] };
    this.say({ t: "event", kind: "existing_users", data, last, session, status });
  }

  // What another tab of this stream says.
  heard(message) {
    const { t, tab, error } = message;
    if (t === "tab") {
      this.peers.set(tab, message.hidden);
      this.updateAway();
      if (message.hello) {
        this.seen(); // this tab, to the new one
        if (this.leader) this.sync();
      }
    } else if (t === "bye") {
      this.peers.delete(tab);
      this.updateAway();
    } else if (t === "left") {
      if (error) this.fail(refused(error.message, error.status, false));
      else this.leave();
    } else if (t === "state" && this.leader) this.setState(message.state);
    else if (t === "event" && !this.leader) {
      this.session = message.session;
      this.event(message.kind, message.data, message.last);
    }
    if (!this.leader && message.status) this.setStatus(message.status);
  }

  say(message) {
    if (!this.abort.signal.aborted) this.channel?.postMessage(message); // a stopped tab is gone
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  setStatus(status) {
    if (status === "live") this.settle.resolve((this.error = null));
    if (status === this.status) return;
    this.status = status;
    if (this.leader) this.say({ t: "status", status });
    this.emit("status", status);
  }

  // A failure, reported; unless it is tried again, this tab closes.
  fail(error) {
    this.error = error;
    if (error.retry) this.setStatus("reconnecting");
    else this.leave();
    this.emit("error", error);
  }

  isHidden() {
    return this.io.document?.visibilityState === "hidden";
  }

  // This tab's visibility, to all (hello: a new tab, which the others answer).
  seen(hello) {
    this.say({ t: "tab", tab: this.tab, hidden: this.isHidden(), hello });
    this.updateAway();
  }

  // Away: every tab of this stream hidden for options.awayAfter ms; back when one shows.
  updateAway() {
    const { awayAfter } = this.options;
    if (awayAfter == null) return;
    if (!this.isHidden() || [...this.peers.values()].includes(false)) {
      clearTimeout(this.awayTimer);
      if (this.away && this.leader) this.post(this.away);
      this.awayTimer = this.away = null;
    } else {
      this.awayTimer ??= setTimeout(() => {
        const { status, ...rest } = this.users.get(this.session?.me.id)?.state ?? {};
        this.away = this.own ?? rest;
        if (this.leader) this.post({ ...this.away, status: "away" });
      }, awayAfter);
    }
  }
}

export const join = (base, options) => new Presence(base, options);

export const watch = (base, { room } = {}) => new Presence(base, { room });

export function hueOf(id) {
  let hash = 0;
  for (const c of id) hash = (hash * 31 + c.charCodeAt(0)) >>> 0;
  return hash % 360;
}

/** make(user) makes a box, dress(box, user, me, away) shows the user's latest. */
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

const STYLE = `:host{display:block}[part=error]{color:var(--lobby-error,#b00020)}
ul{display:flex;flex-wrap:wrap;gap:var(--lobby-gap,.5em);list-style:none;margin:0;padding:0}
li{display:grid;place-items:center;min-width:var(--lobby-size,2.2em);height:var(--lobby-size,2.2em);
padding:0 .7em;box-sizing:border-box;border-radius:var(--lobby-radius,.5em);
background:var(--lobby-box,hsl(var(--hue) 70% 88%));color:var(--lobby-ink,hsl(var(--hue) 60% 22%))}
.me{outline:2px solid currentColor}.away{opacity:var(--lobby-away-opacity,.45)}
:host([look=initials]) li{padding:0;border-radius:50%}
:host([look=initials]) .name,:host(:not([look=initials])) .initials,
.said{position:absolute;clip-path:inset(50%)}`;

// A person's box: their initial and their name, of which the look shows one.
function box(user) {
  const box = document.createElement("li");
  box.innerHTML = `<span class="initials" aria-hidden="true"></span><span class="name"></span>`;
  box.firstChild.textContent = [...user.name][0].toUpperCase();
  box.lastChild.textContent = user.name;
  return box;
}

function dress(box, user, me, away) {
  box.className = `${me ? "me" : ""} ${away ? "away" : ""}`.trim();
  box.part = `user ${box.className}`;
  box.title = `${user.name}${me ? " (you)" : ""}${away ? " (away)" : ""}`;
}

/** <lobby-presence>: who is online (attributes: lobby.d.ts). */
export class LobbyPresence extends (globalThis.HTMLElement ?? Object) {
  static observedAttributes = ["src", "room", "name", "ticket", "watch", "away-after"];

  constructor() {
    super();
    const root = this.attachShadow({ mode: "open" });
    root.innerHTML = `<style>${STYLE}</style><p part="count"><span></span> online</p>
<ul part="list" aria-label="Who is online"></ul><p part="error" role="alert" hidden></p>
<p class="said" aria-live="polite"></p>`;
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
    const get = (name) => this.getAttribute(name); // null: left out
    const src = get("src"), away = get("away-after"), { list, count, said, problem, getTicket } = this;
    if (!this.isConnected || !src) return;
    const options = { room: get("room"), name: get("name"), ticket: get("ticket"), getTicket };
    if (away) options.awayAfter = away * 1000;
    const presence = (this.presence = this.hasAttribute("watch") ? watch(src, options) : join(src, options));
    const announce = (verb) => ({ detail }) => {
      if (presence.status === "live") said.textContent = `${detail.name} ${verb}`;
    };
    const listeners = {
      change() {
        showUsers(list, presence, box, dress);
        count.textContent = presence.users.size;
      },
      join: announce("joined"),
      leave: announce("left"),
      status: () => (problem.hidden = !presence.error || presence.status === "live"),
      error({ detail }) {
        problem.hidden = false;
        problem.textContent = detail.message;
        if (!detail.retry) console.error(`<lobby-presence>: ${detail.message}`);
      },
    };
    for (const type in listeners) presence.addEventListener(type, listeners[type]);
    listeners.change();
  }
}

const registry = globalThis.customElements; // none in Node
if (registry && !registry.get("lobby-presence")) registry.define("lobby-presence", LobbyPresence);
