// Types for lobby.js (served beside it as /lobby.d.ts). Checked by
// tests/js/example.ts, which `make test` type-checks with TypeScript.

/** Someone online: `id` is public, `name` is text, `state` is what they said they are doing. */
export interface User {
  id: string;
  name: string;
  state?: Record<string, unknown>;
}

export type Status = "connecting" | "live" | "reconnecting" | "closed";

/** A refusal or a failure: the server's sentence, its HTTP status (0 when none), and whether it keeps trying. */
export interface PresenceError extends Error {
  status: number;
  retry: boolean;
}

// Each option may be undefined, which is the same as leaving it out (as the
// element does with a missing attribute).
export interface JoinOptions {
  /** The room; the lobby's own room when left out. */
  room?: string | undefined;
  /** Join under this name (open joins). */
  name?: string | undefined;
  /** Join with this ticket, signed by the site (lobby --join-secret). */
  ticket?: string | undefined;
  /** A fresh ticket, asked when there is none yet and whenever one is refused (it expired). */
  getTicket?: (() => string | Promise<string>) | undefined;
  /** Say {"status":"away"} once every tab showing this person has been hidden this long (ms). */
  awayAfter?: number | undefined;
}

export interface WatchOptions {
  room?: string | undefined;
}

interface PresenceEvents {
  join: CustomEvent<User>;
  leave: CustomEvent<User>;
  update: CustomEvent<User>;
  change: CustomEvent<Map<string, User>>;
  status: CustomEvent<Status>;
  error: CustomEvent<PresenceError>;
}

/** Who is online in one room, kept true; shared by the tabs of one origin showing the same person. */
export declare class Presence extends EventTarget {
  /** What join() does (watch() when the options name nobody). */
  constructor(base: string, options?: JoinOptions);
  /** Everyone online, by id, oldest first. */
  readonly users: Map<string, User>;
  /** The joined person, once joined; null for a watcher. */
  readonly me: { id: string; name: string } | null;
  readonly status: Status;
  /** The last failure, if any. */
  readonly error: PresenceError | null;
  /** Settles when the list is first live; rejects if the presence closes before. */
  readonly ready: Promise<void>;
  /** Says what this person is doing: a JSON object of at most 256 bytes as compact JSON. */
  setState(state: Record<string, unknown>): Promise<void>;
  /** This tab stops; the person leaves at once if no other tab of theirs shows them. */
  leave(): void;
  addEventListener<K extends keyof PresenceEvents>(
    type: K,
    listener: (event: PresenceEvents[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof PresenceEvents>(
    type: K,
    listener: (event: PresenceEvents[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

/** Joins a room of the lobby at `base` (such as "https://lobby.example.com"). */
export declare function join(base: string, options: JoinOptions): Presence;

/** Watches a room of the lobby at `base` without joining it. */
export declare function watch(base: string, options?: WatchOptions): Presence;

/** A hue (0–359) for an id, the same on every page. */
export declare function hueOf(id: string): number;

/**
 * Keeps `list` showing `presence.users` in order: `make(user)` makes a new
 * user's element, `dress(element, user, me, away)` shows their latest.
 */
export declare function showUsers(
  list: Element,
  presence: Presence,
  make: (user: User) => HTMLElement,
  dress: (element: HTMLElement, user: User, me: boolean, away: boolean) => void,
): void;

/**
 * `<lobby-presence src room name | ticket | watch away-after look="initials">`:
 * the boxes (or round initials) of who is online in a room, and how many.
 * Style it with `::part(count | list | user | me | away | error)` and
 * `--lobby-gap`, `--lobby-size`, `--lobby-radius`, `--lobby-box`, `--lobby-ink`,
 * `--lobby-away-opacity`, `--lobby-error`.
 */
export declare class LobbyPresence extends HTMLElement {
  /** Set before the element is connected for joins with fresh tickets. */
  getTicket?: () => string | Promise<string>;
  /** What the element shows, while connected. */
  readonly presence: Presence | null;
}

declare global {
  interface HTMLElementTagNameMap {
    "lobby-presence": LobbyPresence;
  }
}
