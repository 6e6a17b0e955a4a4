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
//! A lobby is either *local* (this process decides, keeps the deadlines and
//! numbers the events) or a *replica* of a log that a cluster keeps elsewhere:
//! then [`Presence::apply`] feeds it each event in order, and it reports when a
//! user's first stream on this node opens and their last one closes
//! ([`StreamKey`]), so that the cluster can count streams and keep the deadlines.

mod event;
mod history;
mod name;
mod observer;
mod replica;
mod roster;

pub use event::{Event, EventId, EventKind, UserView};
pub use name::{MAX_NAME_CHARS, Name, NameError, Token, TokenKey, UserId};
pub use observer::{LeaveReason, Observe};
pub use replica::{Change, Known, OutOfOrder, Reload, StreamKey};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

use history::History;
use observer::Unobserved;
use roster::Roster;

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
    /// A cluster node cannot reach the shared store, so it cannot number the join.
    #[error("the lobby's store cannot be reached")]
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("unknown or expired token")]
    Unknown,
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
    pub users: Bytes,
}

/// How a stream starts.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// An `existing_users` frame: everyone online, the subscriber included.
    Snapshot(Bytes),
    /// The frames after the client's `Last-Event-ID`, possibly none.
    Resume(Bytes),
}

impl Start {
    pub fn into_bytes(self) -> Bytes {
        match self {
            Start::Snapshot(bytes) | Start::Resume(bytes) => bytes,
        }
    }
}

/// One open stream of one user: where it starts, then every later event.
/// Dropping it closes the stream (and, if it was the user's last, starts grace).
#[derive(Debug)]
pub struct Subscription {
    pub user: UserId,
    pub start: Start,
    /// Every event after `start`, in order. A `Lagged` error means the stream
    /// fell more than `backlog` events behind and should end.
    pub events: broadcast::Receiver<Arc<Event>>,
    open: OpenStream,
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
    /// The frames the stream opens with: a snapshot or a replay. Taken once.
    pub fn take_start(&mut self) -> Bytes {
        std::mem::replace(&mut self.start, Start::Resume(Bytes::new())).into_bytes()
    }

    /// Adds `event`, which the stream has received, to `batch`.
    pub fn accept(&self, event: &Event, batch: &mut Vec<Bytes>) -> Waiting {
        if event.kind == EventKind::Reset {
            if !self.open.online() {
                return Waiting::Left;
            }
            batch.push(event.frame.clone());
            return Waiting::Open;
        }
        batch.push(event.frame.clone());
        if event.kind == EventKind::DisconnectUser && event.user == self.user {
            Waiting::Left
        } else {
            Waiting::Open
        }
    }

    /// Moves the events already waiting into `batch`, until it holds `max`, so
    /// that a stream woken for one event writes all that came with it at once.
    pub fn read_waiting(&mut self, batch: &mut Vec<Bytes>, max: usize) -> Waiting {
        while batch.len() < max {
            match self.events.try_recv() {
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

/// Cheap to clone: every clone is a handle to the same lobby.
#[derive(Debug, Clone)]
pub struct Presence {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// A std mutex, not a tokio one: it is never held across an await, and every
    /// critical section is a few map operations, so an async mutex would only add cost.
    state: Mutex<State>,
    /// Wakes the expiry task when a deadline is added or the lobby is dropped.
    expiry: Arc<Notify>,
    config: PresenceConfig,
    /// Where a replica reports its streams; `None` in a local lobby.
    holding: Option<mpsc::UnboundedSender<StreamKey>>,
    /// The newest event applied, for those waiting until an event is.
    applied: watch::Sender<EventId>,
    /// Told of each join and leave this lobby decides, and of each resume.
    observer: Box<dyn Observe>,
}

#[derive(Debug)]
struct State {
    /// Keyed by the id of the user's `new_user` event, so iteration is oldest first.
    users: BTreeMap<EventId, User>,
    /// Found by the token's key, never by the token itself.
    tokens: HashMap<TokenKey, EventId>,
    /// When each user with no open stream goes offline, soonest first.
    deadlines: BTreeSet<(Instant, EventId)>,
    /// The JSON list of everyone online, cached for the next reader.
    roster: Roster,
    history: History,
    latest: EventId,
    /// Sent to while the lock is held, so that a snapshot taken under the lock and
    /// the events received after it meet exactly: nothing missed, nothing twice.
    sender: broadcast::Sender<Arc<Event>>,
    /// A replica's joins waiting for their `new_user`: each gets the users list
    /// as it was just before.
    joining: HashMap<UserId, oneshot::Sender<Bytes>>,
}

#[derive(Debug)]
struct User {
    id: UserId,
    name: Name,
    token: TokenKey,
    streams: u8,
    /// In a replica, the cluster's ids of the streams open here.
    stream_ids: Vec<u64>,
    /// Whether a stream was ever opened: tells a join timeout from a grace expiry.
    ever_streamed: bool,
    /// Set while the user has no open stream: when they go offline unless one opens.
    deadline: Option<Instant>,
}

impl Presence {
    /// Creates an empty lobby and its expiry task, which ends when the last
    /// handle (and the last open stream) is dropped. Needs a tokio runtime.
    pub fn new(config: PresenceConfig) -> Presence {
        Presence::observed(config, Unobserved)
    }

    /// [`new`](Self::new), telling `observer` of every join, leave and resume.
    pub fn observed(config: PresenceConfig, observer: impl Observe) -> Presence {
        let presence = Presence::with(config, None, observer);
        let shared = &presence.shared;
        tokio::spawn(expire_users(Arc::downgrade(shared), shared.expiry.clone()));
        presence
    }

    /// Creates an empty replica: it keeps no deadlines and numbers nothing
    /// itself. It sends each stream it closes to `closed`.
    /// Its joins and leaves are the cluster's to observe; it tells `observer`
    /// only of resumes.
    pub fn replica(
        config: PresenceConfig,
        closed: mpsc::UnboundedSender<StreamKey>,
        observer: impl Observe,
    ) -> Presence {
        Presence::with(config, Some(closed), observer)
    }

    fn with(
        config: PresenceConfig,
        holding: Option<mpsc::UnboundedSender<StreamKey>>,
        observer: impl Observe,
    ) -> Presence {
        // tokio's broadcast channel rounds its capacity up to a power of two; the
        // history is kept at least twice that long, so a lagged stream, just past
        // the backlog, can resume.
        let backlog = config.backlog.max(1).next_power_of_two();
        let (sender, _) = broadcast::channel(backlog);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                users: BTreeMap::new(),
                tokens: HashMap::new(),
                deadlines: BTreeSet::new(),
                roster: Roster::default(),
                history: History::new(config.history_len()),
                latest: 0,
                sender,
                joining: HashMap::new(),
            }),
            expiry: Arc::new(Notify::new()),
            config,
            holding,
            applied: watch::Sender::new(0),
            observer: Box::new(observer),
        });
        Presence { shared }
    }

    pub fn config(&self) -> &PresenceConfig {
        &self.shared.config
    }

    /// A receiver of every event from now on, for a task that fans events out
    /// and wants waking when there are some (each stream reads its own receiver).
    pub fn events(&self) -> broadcast::Receiver<Arc<Event>> {
        self.shared.lock().sender.subscribe()
    }

    /// Adds a user and announces them with `new_user`.
    pub fn join(&self, name: Name) -> Result<Joined, JoinError> {
        let config = &self.shared.config;
        let (id, token) = (UserId::random(), Token::random());
        let key = token.key();
        let mut state = self.shared.lock();
        if state.users.len() >= config.max_users {
            return Err(JoinError::Full(state.users.len()));
        }
        let users = state.users_json();
        let seq = state.publish(EventKind::NewUser, id, &name);
        state.add(seq, id, name.clone(), key);
        let deadline = Instant::now() + config.join_timeout;
        if let Some(user) = state.users.get_mut(&seq) {
            user.deadline = Some(deadline);
        }
        state.deadlines.insert((deadline, seq));
        drop(state);
        self.shared.expiry.notify_one();
        self.shared.observer.joined(id, &name, Some(seq));
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
        self.open(token, last_event_id, None)
    }

    /// [`subscribe`](Self::subscribe), for a stream a cluster numbered.
    pub(crate) fn open(
        &self,
        token: &Token,
        last_event_id: Option<EventId>,
        stream: Option<u64>,
    ) -> Result<Subscription, TokenError> {
        let key = token.key();
        let mut state = self.shared.lock();
        let state = &mut *state;
        let seq = *state.tokens.get(&key).ok_or(TokenError::Unknown)?;
        let user = state.users.get_mut(&seq).ok_or(TokenError::Unknown)?;
        if user.streams >= MAX_STREAMS_PER_USER {
            return Err(TokenError::TooManyStreams);
        }
        user.streams += 1;
        user.ever_streamed = true;
        if let Some(deadline) = user.deadline.take() {
            state.deadlines.remove(&(deadline, seq));
        }
        let id = user.id;
        user.stream_ids.extend(stream);
        let replay =
            last_event_id.and_then(|after| state.history.replay_after(after, state.latest));
        let start = match replay {
            Some(frames) => Start::Resume(frames),
            None => Start::Snapshot(event::snapshot_frame(state.latest, &state.users_json())),
        };
        if last_event_id.is_some() {
            let replayed = matches!(start, Start::Resume(_));
            self.shared.observer.resumed(replayed);
        }
        Ok(Subscription {
            user: id,
            start,
            events: state.sender.subscribe(),
            open: OpenStream {
                shared: self.shared.clone(),
                token: key,
                stream,
            },
        })
    }

    /// Takes the user off the lobby at once and announces `disconnect_user`.
    /// Their own streams receive it too, and end there.
    pub fn leave(&self, token: &Token) -> Result<UserId, TokenError> {
        let key = token.key();
        let mut state = self.shared.lock();
        let seq = *state.tokens.get(&key).ok_or(TokenError::Unknown)?;
        let user = state.remove(seq).ok_or(TokenError::Unknown)?;
        let event = state.latest;
        drop(state);
        let reason = LeaveReason::Leave;
        self.shared
            .observer
            .left(user.id, &user.name, reason, Some(event));
        Ok(user.id)
    }

    /// Everyone online, oldest first.
    pub fn users(&self) -> Vec<UserView> {
        self.shared.lock().views()
    }

    /// Everyone online, oldest first, as a JSON array of `{"id","name"}`.
    pub fn users_json(&self) -> Bytes {
        self.shared.lock().users_json()
    }

    /// The newest event id: cheap, unlike [`stats`](Self::stats), which
    /// counts every user's streams.
    pub fn latest(&self) -> EventId {
        self.shared.lock().latest
    }

    /// How many users, history entries and open streams the lobby holds:
    /// all three return to nothing but history once everyone has left.
    pub fn stats(&self) -> Stats {
        let state = self.shared.lock();
        Stats {
            users: state.users.len(),
            streams: state.users.values().map(|u| usize::from(u.streams)).sum(),
            history: state.history.len(),
            latest_event: state.latest,
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

impl Shared {
    /// Tells the cluster, if there is one, about a user's streams on this node.
    fn report(&self, closed: StreamKey) {
        if let Some(reports) = &self.holding {
            // An error only means the cluster is gone (the lobby is stopping).
            let _ = reports.send(closed);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a
        // way later calls would misread, so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes offline everyone whose deadline has passed; returns the next deadline.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut gone = Vec::new();
        let mut state = self.lock();
        let next = loop {
            let Some(&(when, seq)) = state.deadlines.first() else {
                break None;
            };
            if when > now {
                break Some(when);
            }
            state.deadlines.pop_first();
            if let Some(user) = state.remove(seq) {
                let reason = if user.ever_streamed {
                    LeaveReason::GraceExpired
                } else {
                    LeaveReason::JoinTimeout
                };
                gone.push((user, reason, state.latest));
            }
        };
        drop(state);
        for (user, reason, event) in gone {
            self.observer.left(user.id, &user.name, reason, Some(event));
        }
        next
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Lets the expiry task see that the lobby is gone and end.
        self.expiry.notify_one();
    }
}

impl State {
    fn views(&self) -> Vec<UserView> {
        self.users
            .values()
            .map(|u| UserView::new(u.id, &u.name))
            .collect()
    }

    fn users_json(&mut self) -> Bytes {
        let users = &self.users;
        self.roster
            .json(|range| users.range(range).map(|(_, user)| (&user.id, &user.name)))
    }

    /// Adds a user whose `new_user` event is `seq`, with no stream and no deadline.
    fn add(&mut self, seq: EventId, id: UserId, name: Name, token: TokenKey) {
        self.users.insert(
            seq,
            User {
                id,
                name,
                token,
                streams: 0,
                stream_ids: Vec::new(),
                ever_streamed: false,
                deadline: None,
            },
        );
        self.tokens.insert(token, seq);
        self.roster.added(seq);
    }

    fn publish(&mut self, kind: EventKind, user: UserId, name: &Name) -> EventId {
        self.latest += 1;
        let event = Arc::new(Event::new(self.latest, kind, user, name));
        self.history.push(event.clone());
        // An error only means that no stream is open; the history still has it.
        let _ = self.sender.send(event);
        self.latest
    }

    fn remove(&mut self, seq: EventId) -> Option<User> {
        let user = self.users.remove(&seq)?;
        self.tokens.remove(&user.token);
        self.roster.removed(seq);
        if let Some(deadline) = user.deadline {
            self.deadlines.remove(&(deadline, seq));
        }
        self.publish(EventKind::DisconnectUser, user.id, &user.name);
        Some(user)
    }
}

/// Counts one open stream; dropping it is how presence learns the stream closed.
/// Found by the token's key, which (unlike the id of the user's `new_user`)
/// stays the same when a cluster node reloads.
#[derive(Debug)]
struct OpenStream {
    shared: Arc<Shared>,
    token: TokenKey,
    /// The cluster's id for the stream, in a replica.
    stream: Option<u64>,
}

impl OpenStream {
    fn online(&self) -> bool {
        self.shared.lock().tokens.contains_key(&self.token)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let deadline = Instant::now() + self.shared.config.grace;
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        // The user may be gone already (they left); then there is nothing to do.
        let Some(&seq) = state.tokens.get(&self.token) else {
            return;
        };
        // A reload may have found the user gone and a later one put them
        // back, with no streams counted here: then this one is not counted.
        let Some(user) = state.users.get_mut(&seq).filter(|user| user.streams > 0) else {
            return;
        };
        user.streams -= 1;
        if let Some(stream) = self.stream {
            user.stream_ids.retain(|&id| id != stream);
            self.shared.report(StreamKey {
                user: user.id,
                stream,
            });
        } else if user.streams == 0 {
            user.deadline = Some(deadline);
            state.deadlines.insert((deadline, seq));
            drop(guard);
            self.shared.expiry.notify_one();
        }
    }
}

/// Sleeps until the next deadline (or until woken by a new one) and takes
/// expired users offline. Holds only a weak reference, so it ends with the lobby.
async fn expire_users(shared: Weak<Shared>, wake: Arc<Notify>) {
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
mod tests;
