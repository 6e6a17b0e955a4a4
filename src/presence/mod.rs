//! The presence core: who is online, the numbered event history, grace and
//! join timeouts. It knows nothing of HTTP; it is driven by method calls and the
//! (tokio) clock, and hands each event to every stream as shared, encoded bytes.
//!
//! The rules, in one place:
//! - a user is online from [`Presence::join`] until the first of: [`Presence::leave`];
//!   their last stream closed longer than `grace` ago; no stream opened within
//!   `join_timeout` of joining;
//! - a stream reopened within `grace` changes nothing anyone can see;
//! - `new_user` and `disconnect_user` go out exactly once per user.
//!
//! Two kinds of lobby share one core (`lobby.rs`: who is online, the history,
//! how a stream starts and is counted). [`Presence`], here, is this process's
//! own: it decides, numbers the events and keeps the deadlines. A replica
//! follows a log that a cluster keeps elsewhere: [`Replicas::apply`] feeds
//! each event in order to its room's replica, and it reports each stream of
//! its node that closes ([`StreamKey`]), so that the cluster can count
//! streams and keep the deadlines. Rooms of either kind are kept in a
//! `RoomsOf` (`rooms.rs`): [`Rooms`] and [`Replicas`].
//!
//! Presence tells the world outside of joins, leaves and resumes through
//! [`Observe`], which it defines and the outside implements.

mod event;
mod history;
mod lobby;
mod name;
mod observer;
mod pieces;
mod replica;
mod room;
mod rooms;
mod roster;
mod saved;

pub use event::{Event, EventId, EventKind, UserView};
pub use name::{
    IdError, MAX_ID_CHARS, MAX_NAME_CHARS, MAX_STATE_BYTES, Name, NameError, StateError, Token,
    TokenKey, UserId, UserState,
};
pub use observer::{LeaveReason, Observe};
pub use pieces::Pieces;
pub use replica::{Change, Entry, Known, Online, OutOfOrder, Reload, Replicas, StreamKey};
pub use room::{RoomName, RoomNameError};
pub use rooms::{RoomCount, Rooms};
pub use saved::{Saved, SavedError};

use std::collections::BTreeSet;
use std::sync::{Arc, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use lobby::{Ended, Kind, Lobby, Open, Outlet, Shared, Since, State};
use observer::Unobserved;
use rooms::Emptied;

/// How many streams one token may hold open at once.
pub const MAX_STREAMS_PER_USER: u8 = 4;

#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// How long a user whose last stream closed stays online, waiting for a reconnect.
    pub grace: Duration,
    /// How long a user who joined has to open their first stream.
    pub join_timeout: Duration,
    /// Joins beyond this many online users are refused.
    pub max_users: usize,
    /// How many recent events are kept for `Last-Event-ID` replay.
    pub history: usize,
    /// How many events a stream may fall behind before it is ended (it then
    /// reconnects and resumes from the history). Rounded up to a power of two;
    /// the history is kept at least twice this long, so a stream ended for
    /// lagging (just past the backlog) resumes without a snapshot unless as
    /// many events again came before it reconnected.
    pub backlog: usize,
}

impl PresenceConfig {
    /// How many events the history keeps: at least twice the backlog, so a
    /// stream ended for lagging, just past it, can resume.
    pub fn history_len(&self) -> usize {
        self.history
            .max(2 * self.backlog.max(1).next_power_of_two())
    }
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            grace: Duration::from_secs(5),
            join_timeout: Duration::from_secs(10),
            max_users: 100_000,
            history: 4096,
            backlog: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("the lobby is full ({0} users online)")]
    Full(usize),
    /// The join would make a room, and `--max-rooms` are open already.
    #[error("there are already {0} rooms")]
    TooManyRooms(usize),
    /// A cluster node cannot reach the shared store, so it cannot number the join.
    #[error("the lobby's store cannot be reached")]
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("unknown or expired token")]
    Unknown,
    /// The token is good, for another room.
    #[error("the token belongs to another room")]
    OtherRoom,
    #[error("this token already has {MAX_STREAMS_PER_USER} open streams")]
    TooManyStreams,
    /// A cluster node cannot reach the shared store, so it cannot record a leave.
    #[error("the lobby's store cannot be reached")]
    Unavailable,
}

/// What a joiner gets back.
#[derive(Debug)]
pub struct Joined {
    pub id: UserId,
    pub name: Name,
    pub token: Token,
    /// Those online before this join, oldest first, as a JSON array of
    /// `{"id","name"}`: already encoded, since it can list thousands.
    pub users: Pieces,
}

/// How a stream starts.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// An `existing_users` frame: everyone online, the subscriber included.
    Snapshot(Pieces),
    /// The frames after the client's `Last-Event-ID`, possibly none.
    Resume(Pieces),
}

impl Start {
    pub fn into_pieces(self) -> Pieces {
        match self {
            Start::Snapshot(pieces) | Start::Resume(pieces) => pieces,
        }
    }
}

/// One open stream of one room: where it starts, then every later event of
/// the room. A user's stream counts them online: dropping it closes the
/// stream (and, if it was the user's last, starts grace). A watcher's
/// (no user) keeps no one online.
pub struct Subscription {
    /// Whose stream it is; `None` for a watcher.
    pub user: Option<UserId>,
    /// The membership it is a stream of; `None` for a watcher.
    member: Option<TokenKey>,
    pub room: RoomName,
    pub start: Start,
    /// Every event after `start`, in order, of every room ([`accept`](Self::accept)
    /// skips the other rooms'), until [`stop_receiving`](Self::stop_receiving).
    events: Option<broadcast::Receiver<Arc<Event>>>,
    /// The `seq` of the last event sent before `events` began: a stream that
    /// reads events from elsewhere reads only those after it.
    pub since: u64,
    /// A user's count of open streams; `None` for a watcher.
    open: Option<Box<dyn Open>>,
    /// Whatever the caller wants kept until the stream ends.
    held: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("user", &self.user)
            .field("room", &self.room)
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

/// What a stream found when it read its waiting events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// All read (or the batch is full); the stream goes on.
    Open,
    /// The stream's own user left: it ends after this batch.
    Left,
    /// It fell more than the backlog behind (or the lobby is gone): it ends
    /// after this batch, and its client resumes with `Last-Event-ID`.
    Lagged,
}

impl Subscription {
    fn watching(room: RoomName, start: Start, since: Since) -> Subscription {
        Subscription {
            user: None,
            member: None,
            room,
            start,
            events: Some(since.events),
            since: since.seq,
            open: None,
            held: None,
        }
    }

    /// The next event of any room, waiting for it. A `Lagged` error means the
    /// stream fell more than `backlog` events behind and should end.
    pub async fn recv(&mut self) -> Result<Arc<Event>, broadcast::error::RecvError> {
        match &mut self.events {
            Some(events) => events.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }

    /// The next event of any room, if one is waiting.
    pub fn try_recv(&mut self) -> Result<Arc<Event>, broadcast::error::TryRecvError> {
        match &mut self.events {
            Some(events) => events.try_recv(),
            None => Err(broadcast::error::TryRecvError::Closed),
        }
    }

    /// Lets go of the channel, for a stream that reads its events elsewhere
    /// from now on (the lean writer's room logs). A receiver kept unread
    /// would hold the channel's last events, and read them all when dropped.
    pub fn stop_receiving(&mut self) {
        self.events = None;
    }

    /// Keeps `value` until the stream ends (a count of a client's watchers, say).
    pub fn hold(&mut self, value: impl Send + Sync + 'static) {
        self.held = Some(Box::new(value));
    }

    /// The frames the stream opens with: a snapshot or a replay. Taken once.
    pub fn take_start(&mut self) -> Pieces {
        std::mem::replace(&mut self.start, Start::Resume(Pieces::default())).into_pieces()
    }

    /// Adds `event`, which the stream has received, to `batch`.
    pub fn accept(&self, event: &Event, batch: &mut Vec<Bytes>) -> Waiting {
        if event.room != self.room {
            return Waiting::Open;
        }
        if event.kind == EventKind::Revoked {
            return match (event.member, self.member) {
                (Some(revoked), Some(mine)) if revoked == mine => Waiting::Left,
                _ => Waiting::Open,
            };
        }
        if event.kind == EventKind::Reset {
            if self.open.as_ref().is_some_and(|open| !open.online()) {
                return Waiting::Left;
            }
            batch.push(event.frame.clone());
            return Waiting::Open;
        }
        batch.push(event.frame.clone());
        if event.kind == EventKind::DisconnectUser && self.user.as_ref() == Some(&event.user) {
            Waiting::Left
        } else {
            Waiting::Open
        }
    }

    /// Moves the events already waiting into `batch`, until it holds `max`, so
    /// that a stream woken for one event writes all that came with it at once.
    pub fn read_waiting(&mut self, batch: &mut Vec<Bytes>, max: usize) -> Waiting {
        while batch.len() < max {
            match self.try_recv() {
                Ok(event) => {
                    if self.accept(&event, batch) == Waiting::Left {
                        return Waiting::Left;
                    }
                }
                Err(broadcast::error::TryRecvError::Empty) => return Waiting::Open,
                // A lagged receiver skips ahead: going on would lose events.
                Err(
                    broadcast::error::TryRecvError::Lagged(_)
                    | broadcast::error::TryRecvError::Closed,
                ) => return Waiting::Lagged,
            }
        }
        Waiting::Open
    }
}

/// This process's own lobby: it decides who is online, numbers the events and
/// keeps the deadlines. Cheap to clone: every clone is a handle to the same lobby.
pub type Presence = Lobby<Local>;

/// What a local lobby adds to the shared part: deadlines, and the task that
/// takes users offline at them.
#[derive(Debug)]
pub struct Local {
    /// Wakes the expiry task when a deadline is added or the lobby is dropped.
    expiry: Arc<Notify>,
    /// Told when this lobby, one room of many, has no one left.
    emptied: Option<Emptied>,
}

/// When a user with no open stream goes offline unless one opens, and why.
type Deadline = (Instant, LeaveReason);

impl Kind for Local {
    /// Set while the membership has no open stream: a join timeout before
    /// its first stream, grace after its last one closed.
    type User = Option<Deadline>;
    /// When each membership with no open stream ends, soonest first.
    type State = BTreeSet<(Instant, TokenKey)>;
    type Stream = ();
    type Rooms = ();

    fn opened(state: &mut State<Local>, member: TokenKey, (): ()) {
        let deadline = state
            .members
            .get_mut(&member)
            .and_then(|member| member.own.take());
        if let Some((deadline, _)) = deadline {
            state.own.remove(&(deadline, member));
        }
    }

    fn closed(
        shared: &Shared<Local>,
        mut state: MutexGuard<'_, State<Local>>,
        member: TokenKey,
        (): (),
    ) {
        let deadline = Instant::now() + shared.config.grace;
        let Some(idle) = state
            .members
            .get_mut(&member)
            .filter(|idle| idle.streams == 0)
        else {
            return;
        };
        idle.own = Some((deadline, LeaveReason::GraceExpired));
        state.own.insert((deadline, member));
        drop(state);
        shared.kind.expiry.notify_one();
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // Lets the expiry task see that the lobby is gone and end.
        self.expiry.notify_one();
    }
}

impl Presence {
    /// Creates an empty lobby and its expiry task, which ends when the last
    /// handle (and the last open stream) is dropped. Needs a tokio runtime.
    pub fn new(config: PresenceConfig) -> Presence {
        Presence::observed(config, Unobserved)
    }

    /// [`new`](Self::new), telling `observer` of every join, leave and resume.
    pub fn observed(config: PresenceConfig, observer: impl Observe) -> Presence {
        let outlet = Outlet::new(&config);
        Presence::in_room(RoomName::lobby(), config, Arc::new(observer), outlet, None)
    }

    /// One room of many, sending its events to their shared `outlet` and
    /// telling `emptied` when it has no one left.
    fn in_room(
        room: RoomName,
        config: PresenceConfig,
        observer: Arc<dyn Observe>,
        outlet: Outlet,
        emptied: Option<Emptied>,
    ) -> Presence {
        let expiry = Arc::new(Notify::new());
        let local = Local {
            expiry: expiry.clone(),
            emptied,
        };
        let presence = Lobby::with(room, config, observer, local, BTreeSet::new(), outlet);
        tokio::spawn(expire_users(Arc::downgrade(&presence.shared), expiry));
        presence
    }

    /// Adds a user and announces them with `new_user`.
    pub fn join(&self, name: Name) -> Result<Joined, JoinError> {
        self.join_as(None, name, None)
    }

    /// Adds a membership of the person `person` (a signed join's `sub`),
    /// announcing them with `new_user` (with `state`, if given) unless they
    /// are in the room already; with `None`, someone new under a random id.
    pub fn join_as(
        &self,
        person: Option<UserId>,
        name: Name,
        user_state: Option<UserState>,
    ) -> Result<Joined, JoinError> {
        let config = &self.shared.config;
        let mut state = self.shared.lock();
        let token = Token::random_in(&state.room);
        let key = token.key();
        let already = person.as_ref().and_then(|id| state.person_of(id));
        if already.is_none() && state.people.len() >= config.max_users {
            return Err(JoinError::Full(state.people.len()));
        }
        let users = state.users_json();
        let (seq, id, name, announced) = match already {
            Some(seq) => {
                let person = &state.people[&seq];
                (seq, person.id.clone(), person.name.clone(), false)
            }
            None => {
                let id = person.unwrap_or_else(UserId::random);
                let view = UserView {
                    id: id.clone(),
                    name: name.clone(),
                    state: user_state,
                };
                let seq = state.publish(EventKind::NewUser, &view);
                state.add_person(seq, view);
                (seq, id, name, true)
            }
        };
        let deadline = Instant::now() + config.join_timeout;
        state.add_member(seq, key, Some((deadline, LeaveReason::JoinTimeout)));
        state.own.insert((deadline, key));
        let room = state.room.clone();
        drop(state);
        self.shared.kind.expiry.notify_one();
        if announced {
            self.shared
                .observer
                .joined(&room, id.clone(), &name, Some(seq));
        }
        Ok(Joined {
            id,
            name,
            token,
            users,
        })
    }

    /// Opens a stream for the user holding `token`. With `last_event_id`, the
    /// stream resumes after that event when the history still holds what came
    /// since; otherwise (and without it) it starts with a snapshot.
    pub fn subscribe(
        &self,
        token: &Token,
        last_event_id: Option<EventId>,
    ) -> Result<Subscription, TokenError> {
        self.open(token, last_event_id, ())
    }

    /// Sets the state of the person holding `token`: every stream of the
    /// room gets `user_updated`, unless it is the state they have already.
    pub fn set_state(&self, token: &Token, user_state: UserState) -> Result<(), TokenError> {
        let mut state = self.shared.lock();
        let seq = state
            .members
            .get(&token.key())
            .map(|member| member.person)
            .ok_or(TokenError::Unknown)?;
        let changed = state.set_state(seq, user_state.clone());
        let (event, room) = (state.latest, state.room.clone());
        let person = state
            .people
            .get(&seq)
            .map(|p| (p.id.clone(), p.name.clone()));
        drop(state);
        if changed == Some(true)
            && let Some((id, name)) = person
        {
            self.shared
                .observer
                .updated(&room, id, &name, &user_state, Some(event));
        }
        Ok(())
    }

    /// Ends the membership of `token` at once. If it was the person's last,
    /// they leave and `disconnect_user` goes out: their own streams receive
    /// it too, and end there. Otherwise only this membership's streams end.
    pub fn leave(&self, token: &Token) -> Result<UserId, TokenError> {
        let mut state = self.shared.lock();
        let ended = self
            .shared
            .end_member(&mut state, token.key())
            .ok_or(TokenError::Unknown)?;
        let id = state.people.get(&ended.member.person).map(|p| p.id.clone());
        let (event, room) = (state.latest, state.room.clone());
        drop(state);
        match ended.person {
            Some(person) => {
                let reason = LeaveReason::Leave;
                self.shared.observer.left(
                    &room,
                    person.id.clone(),
                    &person.name,
                    reason,
                    Some(event),
                );
                Ok(person.id)
            }
            None => id.ok_or(TokenError::Unknown),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub users: usize,
    pub streams: usize,
    pub history: usize,
    pub latest_event: EventId,
}

impl Shared<Local> {
    /// Ends the membership `member` and forgets its deadline; tells the rooms
    /// if no one is left.
    fn end_member(
        &self,
        state: &mut State<Local>,
        member: TokenKey,
    ) -> Option<Ended<Option<Deadline>>> {
        let ended = state.end_member(member)?;
        if let Some((deadline, _)) = ended.member.own {
            state.own.remove(&(deadline, member));
        }
        if let Some(emptied) = self
            .kind
            .emptied
            .as_ref()
            .filter(|_| state.people.is_empty())
        {
            emptied.room(&state.room);
        }
        Some(ended)
    }

    /// Ends every membership whose deadline has passed (and takes offline
    /// the people left with none); returns the next deadline.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut gone = Vec::new();
        let mut state = self.lock();
        let next = loop {
            let Some(&(when, member)) = state.own.first() else {
                break None;
            };
            if when > now {
                break Some(when);
            }
            state.own.pop_first();
            let Some(ended) = self.end_member(&mut state, member) else {
                continue;
            };
            if let Some(person) = ended.person {
                let reason = ended
                    .member
                    .own
                    .map_or(LeaveReason::GraceExpired, |(_, why)| why);
                gone.push((person, reason, state.latest));
            }
        };
        let room = state.room.clone();
        drop(state);
        for (person, reason, event) in gone {
            self.observer
                .left(&room, person.id, &person.name, reason, Some(event));
        }
        next
    }
}

/// Sleeps until the next deadline (or until woken by a new one) and takes
/// expired users offline. Holds only a weak reference, so it ends with the lobby.
async fn expire_users(shared: Weak<Shared<Local>>, wake: Arc<Notify>) {
    loop {
        let next = match shared.upgrade() {
            Some(shared) => shared.expire(Instant::now()),
            None => return,
        };
        match next {
            Some(when) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(when) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

#[cfg(test)]
mod frames;
#[cfg(test)]
mod model;
#[cfg(test)]
mod people;
#[cfg(test)]
mod tests;
