// lobby's page: join with a name, then keep #users equal to who is online,
// fed by GET /events (existing_users, new_user, disconnect_user). Before
// joining, the same list is kept by a watcher's stream (GET /events with no
// token). A room's page (/rooms/NAME, body data-room) uses that room's routes.
// With signed joins (lobby --join-secret) the page has no form: the site that
// embeds lobby joins its people, and this page only watches.
// Names are always set with textContent, never as HTML. A joined page whose
// tab stays hidden for AWAY_AFTER_MS sets its state to {"status":"away"}
// (POST /state), and back to {} when shown; an away person's box is dimmed.
"use strict";

const ROOM = document.body.dataset.room;
// The routes of this page's room: /join, or /rooms/NAME/join.
const BASE = ROOM === undefined ? "" : `/rooms/${encodeURIComponent(ROOM)}`;

const form = document.getElementById("join"); // null with signed joins
const nameInput = form?.elements.name;
const joinButton = form?.querySelector("button");
const errorLine = document.getElementById("error");
const statusLine = document.getElementById("status");
const list = document.getElementById("users");
const count = document.getElementById("count");

// The name is kept for this tab and room only, so a reload joins again by itself.
const SAVED_NAME = ROOM === undefined ? "lobby.name" : `lobby.name.${ROOM}`;
// A watcher's stream that was refused (too many from this address) is tried
// again after this long.
const WATCH_AGAIN_MS = 5000;

let me = null; // { id, name, token } while joined
let source = null; // the EventSource while joined
let watching = null; // the watcher's EventSource while not joined
let watchAgain = null; // a refused watcher's retry timer
let rejoinTimer = null; // a rejoin waiting to happen
let rejoinDelay = 1000;
let leaving = false; // the page is being unloaded: nothing more may start

// How long a joined page's tab stays hidden before its person is away.
const AWAY_AFTER_MS = 5000;
let awayTimer = null; // the hidden tab's wait before it says "away"
let away = false; // whether this page said "away" and has not said it is back

// A browser closes the stream as it unloads the page, before "pagehide"; a
// refused stream and an unloading page look the same at that moment, so a
// rejoin waits this long, and unloading cancels it.
const REJOIN_AFTER_MS = 300;

// ---- the list of boxes ----

function hueOf(id) {
  let hash = 0;
  for (const c of id) hash = (hash * 31 + c.charCodeAt(0)) >>> 0;
  return hash % 360;
}

function decorate(element) {
  element.style.setProperty("--hue", String(hueOf(element.dataset.userId)));
  element.classList.toggle("me", me !== null && element.dataset.userId === me.id);
  const says = [];
  if (element.classList.contains("me")) says.push("you");
  if (element.classList.contains("away")) says.push("away");
  element.title = says.join(", ");
}

// A person's state, as far as the page shows it: away, or not.
function showState(element, state) {
  element.classList.toggle("away", state?.status === "away");
  decorate(element);
}

function box(user) {
  const element = document.createElement("li");
  element.className = "user";
  element.dataset.userId = user.id;
  element.textContent = user.name;
  showState(element, user.state);
  return element;
}

// A linear search, not a CSS selector: an id is never spliced into a query.
function boxOf(id) {
  for (const element of list.children) {
    if (element.dataset.userId === id) return element;
  }
  return null;
}

function showCount() {
  count.textContent = String(list.children.length);
}

function replaceUsers(users) {
  list.replaceChildren(...users.map(box));
  showCount();
}

function addUser(user) {
  if (!boxOf(user.id)) list.append(box(user));
  showCount();
}

function removeUser(id) {
  boxOf(id)?.remove();
  showCount();
}

function updateUser(user) {
  const element = boxOf(user.id);
  if (element) showState(element, user.state);
}

// ---- joining and leaving ----

async function requestJoin(name) {
  let response;
  try {
    response = await fetch(`${BASE}/join`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name }),
    });
  } catch {
    throw Object.assign(new Error("The lobby cannot be reached. Check the connection and try again."), { retry: true });
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const retry = response.status === 503 || response.status === 429 || response.status >= 500;
    throw Object.assign(new Error(body.error || `The lobby answered ${response.status}.`), { retry });
  }
  return body;
}

function joined(reply) {
  me = { id: reply.id, name: reply.name, token: reply.token };
  rejoinDelay = 1000;
  sessionStorage.setItem(SAVED_NAME, reply.name);
  stopWatching();
  form.hidden = true;
  showStatus(`You are ${reply.name}.`);
  // Shown at once; the stream's existing_users replaces it moments later.
  replaceUsers([...reply.users, { id: reply.id, name: reply.name }]);
  listen();
}

function showStatus(text) {
  statusLine.hidden = false;
  statusLine.textContent = text;
}

function listen() {
  source = new EventSource(`${BASE}/events?token=${encodeURIComponent(me.token)}`);
  source.addEventListener("open", () => showStatus(`You are ${me.name}.`));
  source.addEventListener("existing_users", (event) => replaceUsers(JSON.parse(event.data).users));
  source.addEventListener("new_user", (event) => addUser(JSON.parse(event.data)));
  source.addEventListener("user_updated", (event) => updateUser(JSON.parse(event.data)));
  source.addEventListener("disconnect_user", (event) => {
    const user = JSON.parse(event.data);
    if (me !== null && user.id === me.id) notJoined(); // we were made to leave
    else removeUser(user.id);
  });
  // A dropped connection is retried by the browser itself (with Last-Event-ID);
  // CLOSED means the server refused the stream (401: it restarted, or we timed
  // out), so join again under the same name.
  source.addEventListener("error", () => {
    if (source === null || leaving) return;
    if (source.readyState === EventSource.CLOSED) scheduleRejoin(REJOIN_AFTER_MS);
    else showStatus("Connection lost. Reconnecting…");
  });
}

function scheduleRejoin(delay) {
  clearTimeout(rejoinTimer);
  rejoinTimer = setTimeout(rejoin, delay);
}

function closeStream() {
  if (source !== null) source.close();
  source = null;
}

async function rejoin() {
  rejoinTimer = null;
  if (leaving) return;
  const name = me === null ? sessionStorage.getItem(SAVED_NAME) : me.name;
  closeStream();
  me = null;
  if (!name) return notJoined();
  try {
    joined(await requestJoin(name));
  } catch (error) {
    if (!error.retry) return notJoined(error.message);
    showStatus(`Reconnecting… (${error.message})`);
    scheduleRejoin(rejoinDelay);
    rejoinDelay = Math.min(rejoinDelay * 2, 30000);
  }
}

function notJoined(message = "") {
  closeStream();
  me = null;
  sessionStorage.removeItem(SAVED_NAME);
  statusLine.hidden = true;
  if (form !== null) form.hidden = false;
  errorLine.textContent = message;
  for (const element of list.children) decorate(element);
  startWatching();
}

// ---- watching without joining ----

// A watcher's stream: the room's events as they happen, without joining. A
// dropped one is resumed by the browser itself (with Last-Event-ID).
function startWatching() {
  if (watching !== null || leaving) return;
  const watcher = new EventSource(`${BASE}/events`);
  watching = watcher;
  watcher.addEventListener("existing_users", (event) => replaceUsers(JSON.parse(event.data).users));
  watcher.addEventListener("new_user", (event) => addUser(JSON.parse(event.data)));
  watcher.addEventListener("user_updated", (event) => updateUser(JSON.parse(event.data)));
  watcher.addEventListener("disconnect_user", (event) => removeUser(JSON.parse(event.data).id));
  watcher.addEventListener("error", () => {
    if (watching !== watcher || watcher.readyState !== EventSource.CLOSED) return;
    stopWatching();
    watchAgain = setTimeout(startWatching, WATCH_AGAIN_MS);
  });
}

function stopWatching() {
  clearTimeout(watchAgain);
  watchAgain = null;
  if (watching !== null) watching.close();
  watching = null;
}

// ---- away while the tab is hidden ----

async function sayState(state) {
  if (me === null) return;
  try {
    await fetch(`${BASE}/state`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${me.token}` },
      body: JSON.stringify(state),
    });
  } catch {
    // Not reachable now: the next change of visibility says it again.
  }
}

document.addEventListener("visibilitychange", () => {
  clearTimeout(awayTimer);
  awayTimer = null;
  if (document.visibilityState === "hidden") {
    awayTimer = setTimeout(() => {
      away = true;
      sayState({ status: "away" });
    }, AWAY_AFTER_MS);
  } else if (away) {
    away = false;
    sayState({});
  }
});

// ---- wiring ----

form?.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorLine.textContent = "";
  joinButton.disabled = true;
  try {
    joined(await requestJoin(nameInput.value));
  } catch (error) {
    errorLine.textContent = error.message;
  } finally {
    joinButton.disabled = false;
  }
});

// Leaving the page tells the server at once, so others see the box go now
// rather than after the grace period.
window.addEventListener("pagehide", () => {
  leaving = true;
  clearTimeout(rejoinTimer);
  stopWatching();
  if (me === null) return;
  navigator.sendBeacon(`${BASE}/leave`, new Blob([me.token], { type: "text/plain" }));
  closeStream();
});

// Back from the browser's page cache after leaving: join again.
window.addEventListener("pageshow", (event) => {
  if (!event.persisted) return;
  leaving = false;
  if (me !== null) rejoin();
  else startWatching();
});

for (const element of list.children) decorate(element);
if (form !== null && sessionStorage.getItem(SAVED_NAME)) rejoin();
else startWatching();
