// lobby's page: join with a name, then keep #users equal to who is online.
// The client is lobby.js, the same one other sites load: it joins, streams,
// resumes, joins again when a token is void, leaves on pagehide, says "away"
// when every tab of this person has been hidden for 5 s, and shares one
// stream among the tabs that show the same name in the same room. Before
// joining, the page watches the room. A room's page (/rooms/NAME, body
// data-room) uses that room's routes. With signed joins (lobby --join-secret)
// the page has no form: the site that embeds lobby joins its people.
// Names are always set with textContent, never as HTML.
import { join, watch, showUsers, hueOf } from "/lobby.js";

const ROOM = document.body.dataset.room;
const form = document.getElementById("join"); // null with signed joins
const errorLine = document.getElementById("error");
const statusLine = document.getElementById("status");
const list = document.getElementById("users");
const count = document.getElementById("count");

// The name is kept for this tab and room only, so a reload joins again by itself.
const SAVED_NAME = ROOM === undefined ? "lobby.name" : `lobby.name.${ROOM}`;
// How long every tab of a joined person stays hidden before they are away.
const AWAY_AFTER_MS = 5000;

let shown = null; // the Presence this page shows: a watcher's, or a join's

function box(user) {
  const element = document.createElement("li");
  element.textContent = user.name;
  return element;
}

function dress(element, user, me, away) {
  element.className = "user";
  element.classList.toggle("me", me);
  element.classList.toggle("away", away);
  element.title = [me && "you", away && "away"].filter(Boolean).join(", ");
}

// Shows `presence`'s list from its first change on (until then, the list the
// page was served with stays).
function show(presence) {
  const before = shown;
  shown = presence;
  before?.leave();
  presence.addEventListener("change", () => {
    showUsers(list, presence, box, dress);
    count.textContent = String(presence.users.size);
  });
  return presence;
}

function showStatus(text) {
  statusLine.hidden = false;
  statusLine.textContent = text;
}

// Joins as `name`. From the form (`typed`), a refusal is shown there at once;
// from a reload, a join the server cannot take now is tried again.
function joinAs(name, typed) {
  // A reload joins its person again at once: no form for a moment meanwhile.
  if (form && !typed) form.hidden = true;
  const presence = show(join(location.origin, { room: ROOM, name, awayAfter: AWAY_AFTER_MS }));
  let joined = false;
  presence.addEventListener("status", () => {
    const { status, error, me } = presence;
    if (presence !== shown) return;
    if (status === "live") {
      joined = true;
      sessionStorage.setItem(SAVED_NAME, me.name);
      if (form) form.hidden = true;
      errorLine.textContent = "";
      showStatus(`You are ${me.name}.`);
    } else if (status === "closed" || (typed && !joined)) notJoined(error?.message);
    else if (status === "reconnecting") {
      // A refusal the server explains (503, 429) is shown; a drop is not.
      showStatus(error?.status ? `Reconnecting… (${error.message})` : "Connection lost. Reconnecting…");
    }
  });
}

function notJoined(message = "") {
  sessionStorage.removeItem(SAVED_NAME);
  statusLine.hidden = true;
  if (form) form.hidden = false;
  errorLine.textContent = message;
  show(watch(location.origin, { room: ROOM }));
}

form?.addEventListener("submit", (event) => {
  event.preventDefault();
  errorLine.textContent = "";
  joinAs(form.elements.name.value, true);
});

for (const element of list.children) element.style.setProperty("--hue", hueOf(element.dataset.userId));
const saved = form && sessionStorage.getItem(SAVED_NAME);
if (saved) joinAs(saved, false);
else show(watch(location.origin, { room: ROOM }));
