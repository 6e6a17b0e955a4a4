// A site's script on lobby.js, as its developer would write it: never run,
// only type-checked against static/lobby.d.ts (tsconfig.json maps "lobby-client"
// to it), so the types say what the client does. Each @ts-expect-error is a
// mistake the types must catch.
import { Presence, hueOf, join, showUsers, watch } from "lobby-client";
import type { PresenceError, Status, User } from "lobby-client";

const LOBBY = "https://lobby.example.com";

// An open join: a name, in a room, away once every tab has been hidden 30 s.
const presence: Presence = join(LOBBY, { room: "doc-42", name: "Ada", awayAfter: 30_000 });

presence.addEventListener("join", ({ detail }) => console.log(`${detail.name} joined`));
presence.addEventListener("leave", ({ detail: { id, name } }) => console.log(`${name} (${id}) left`));
presence.addEventListener("update", ({ detail }) => {
  const typing = detail.state?.["typing"] === true;
  console.log(`${detail.name} is ${typing ? "typing" : "idle"}`);
});

// A listener kept to be taken off again.
const count = ({ detail: users }: CustomEvent<Map<string, User>>) => console.log(`${users.size} online`);
presence.addEventListener("change", count);
presence.removeEventListener("change", count);

presence.addEventListener("status", ({ detail }) => {
  const shown: Record<Status, string> = {
    connecting: "Connecting…",
    live: "Live",
    reconnecting: "Reconnecting…",
    closed: "Closed",
  };
  console.log(shown[detail]);
});

presence.addEventListener("error", ({ detail }) => {
  const failure: PresenceError = detail;
  if (!failure.retry) console.error(`lobby refused (${failure.status}): ${failure.message}`);
});

await presence.ready;
await presence.setState({ typing: true });
if (presence.me) console.log(`joined as ${presence.me.name}, ${presence.users.size} online`);
for (const [id, user] of presence.users) console.log(id, user.name, user.state ?? {});
if (presence.error) console.log(presence.error.status);
const now: Status = presence.status;
console.log(now);

// A signed join: the site mints tickets (lobby --join-secret), a fresh one when asked.
const signed = join(LOBBY, {
  room: "doc-42",
  getTicket: () => fetch("/lobby-ticket", { method: "POST" }).then((response) => response.text()),
});
join(LOBBY, { ticket: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJl", getTicket: () => "a fresh ticket" });
signed.leave();

// The room the page names, if any (an option left undefined is left out).
const room = document.body.dataset["room"];
join(LOBBY, { room, name: "Ada", getTicket: undefined });
new Presence(LOBBY, { room }).leave();

// Watching a room without joining it.
const watcher = watch(LOBBY, { room: "doc-42" });
watch(LOBBY);

// A list of one's own, kept by showUsers.
const list = document.querySelector("#online");
if (list) {
  showUsers(
    list,
    watcher,
    (user) => {
      const item = document.createElement("li");
      item.textContent = user.name;
      item.style.setProperty("--hue", String(hueOf(user.id)));
      return item;
    },
    (item, user, me, away) => {
      item.classList.toggle("me", me);
      item.classList.toggle("away", away);
      item.title = user.name;
    },
  );
}

// The element: fresh tickets from the site, set before it connects.
const element = document.querySelector("lobby-presence");
if (element) {
  element.getTicket = async () => (await fetch("/lobby-ticket", { method: "POST" })).text();
  element.presence?.addEventListener("join", ({ detail }) => console.log(detail.name));
  const shownBy: Presence | null = element.presence;
  console.log(shownBy?.status);
}

// Mistakes the types catch.
// @ts-expect-error: a state is a JSON object, not a string.
void presence.setState("typing");
// @ts-expect-error: the status is the client's to set.
presence.status = "live";
// @ts-expect-error: a join's detail is a User, not a Status.
presence.addEventListener("join", ({ detail }: CustomEvent<Status>) => console.log(detail));
// @ts-expect-error: a presence needs the lobby's address.
new Presence();
// @ts-expect-error: a watcher takes no name.
watch(LOBBY, { room: "doc-42", name: "Ada" });
// @ts-expect-error: getTicket gives a ticket, not a promise of nothing.
join(LOBBY, { getTicket: async () => {} });
