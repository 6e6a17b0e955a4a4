//! Rooms: a lobby each, made by the first join and dropped once it has been
//! empty for its resume window (`grace`). [`Rooms`] are this process's own
//! ([`Presence`] each); a cluster node's [`Replicas`](super::Replicas) follow
//! the cluster's log (`replica.rs`). What they share is here.
//!
//! The rooms share one [`Outlet`]: one channel every stream reads (skipping
//! other rooms' events) and one count of ids, so that a room made again
//! numbers its events past every id already sent and a client's
//! `Last-Event-ID` never means two things. A watcher of a room that does not
//! exist reads the same channel and so sees the join that makes it.
//!
//! A token names its room (`Token::random_in`), so that one used in another
//! room is told so (403) rather than unknown (401), with nothing kept for it.
//!
//! Locks are taken in one order: the map of rooms, then a room.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use super::event::{self, Event, EventId};
use super::lobby::{Kind, Lobby, Outlet};
use super::name::{Name, Token, UserId, UserState};
use super::observer::Observe;
use super::pieces::Pieces;
use super::room::RoomName;
use super::{
    JoinError, Joined, Local, Presence, PresenceConfig, Start, Stats, Subscription, TokenError,
    UserView,
};

/// Rooms of one kind. Cheap to clone: every clone is a handle to the same rooms.
pub struct RoomsOf<K: Kind> {
    pub(super) shared: Arc<Shared<K>>,
}

impl<K: Kind> Clone for RoomsOf<K> {
    fn clone(&self) -> Self {
        RoomsOf {
            shared: self.shared.clone(),
        }
    }
}

/// This process's own rooms.
pub type Rooms = RoomsOf<Local>;

pub(super) struct Shared<K: Kind> {
    rooms: Mutex<HashMap<RoomName, Lobby<K>>>,
    pub(super) emptied: Emptied,
    pub(super) outlet: Outlet,
    pub(super) config: PresenceConfig,
    pub(super) observer: Arc<dyn Observe>,
    /// A join that would make one more room than this is refused.
    max_rooms: usize,
    /// What only this kind of rooms keeps.
    pub(super) own: K::Rooms,
}

/// Tells the task that drops rooms of each room that has just emptied.
#[derive(Debug, Clone)]
pub(super) struct Emptied(mpsc::UnboundedSender<RoomName>);

impl Emptied {
    pub(super) fn room(&self, room: &RoomName) {
        // Fails only once the rooms are gone, when there is nothing to drop.
        let _ = self.0.send(room.clone());
    }
}

/// A room and how many are in it, for `GET /rooms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomCount {
    pub room: RoomName,
    pub users: usize,
}

impl<K: Kind> RoomsOf<K> {
    /// No rooms yet, and the task that drops the rooms that empty, which ends
    /// with the last handle. Needs a tokio runtime.
    pub(super) fn with(
        config: PresenceConfig,
        max_rooms: usize,
        observer: Arc<dyn Observe>,
        own: K::Rooms,
    ) -> RoomsOf<K> {
        let (emptied, empties) = mpsc::unbounded_channel();
        let rooms = RoomsOf {
            shared: Arc::new(Shared {
                rooms: Mutex::default(),
                emptied: Emptied(emptied),
                outlet: Outlet::new(&config),
                config,
                observer,
                max_rooms,
                own,
            }),
        };
        tokio::spawn(drop_empty_rooms(Arc::downgrade(&rooms.shared), empties));
        rooms
    }

    pub fn config(&self) -> &PresenceConfig {
        &self.shared.config
    }

    /// Every event of every room from now on, for the fan-out.
    pub fn events(&self) -> broadcast::Receiver<Arc<Event>> {
        self.shared.outlet.subscribe()
    }

    /// The room's lobby, if someone is in it (or it emptied within its
    /// resume window).
    pub(super) fn get(&self, room: &RoomName) -> Option<Lobby<K>> {
        self.shared.lock().get(room).cloned()
    }

    /// The map of rooms, locked.
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<RoomName, Lobby<K>>> {
        self.shared.lock()
    }

    /// Opens a watcher's stream on `room`, which need not exist: it then
    /// starts with no one and sees the join that makes it.
    pub fn watch(&self, room: &RoomName, last_event_id: Option<EventId>) -> Subscription {
        let rooms = self.shared.lock();
        if let Some(lobby) = rooms.get(room) {
            return lobby.watch(last_event_id);
        }
        // Subscribed under the map's lock, so no join makes the room unseen.
        let since = self.shared.outlet.subscribe_since();
        let empty = Pieces::from("[]");
        let start = Start::Snapshot(event::snapshot_frame(since.newest, empty));
        let subscription = Subscription::watching(room.clone(), start, since);
        drop(rooms);
        if last_event_id.is_some() {
            self.shared.observer.resumed(false);
        }
        subscription
    }

    /// Everyone in `room`, oldest first.
    pub fn users(&self, room: &RoomName) -> Vec<UserView> {
        self.get(room)
            .map(|lobby| lobby.users())
            .unwrap_or_default()
    }

    /// Everyone in `room`, oldest first, as a JSON array of `{"id","name"}`.
    pub fn users_json(&self, room: &RoomName) -> Pieces {
        match self.get(room) {
            Some(lobby) => lobby.users_json(),
            None => Pieces::from("[]"),
        }
    }

    /// How many rooms there are.
    pub fn count(&self) -> usize {
        self.shared.lock().len()
    }

    /// The `limit` fullest rooms, fullest first (then by name).
    pub fn list(&self, limit: usize) -> Vec<RoomCount> {
        let rooms: Vec<(RoomName, Lobby<K>)> = self
            .shared
            .lock()
            .iter()
            .map(|(room, lobby)| (room.clone(), lobby.clone()))
            .collect();
        let mut counts: Vec<RoomCount> = rooms
            .into_iter()
            .map(|(room, lobby)| RoomCount {
                room,
                users: lobby.stats().users,
            })
            .filter(|count| count.users > 0)
            .collect();
        counts.sort_by(|a, b| b.users.cmp(&a.users).then_with(|| a.room.cmp(&b.room)));
        counts.truncate(limit);
        counts
    }

    /// Users, streams and history summed over every room; the newest id sent.
    pub fn stats(&self) -> Stats {
        let rooms: Vec<Lobby<K>> = self.shared.lock().values().cloned().collect();
        let mut total = Stats {
            users: 0,
            streams: 0,
            history: 0,
            latest_event: self.shared.outlet.newest(),
        };
        for lobby in rooms {
            let stats = lobby.stats();
            total.users += stats.users;
            total.streams += stats.streams;
            total.history += stats.history;
        }
        total
    }

    /// Why `token` was refused in `room` with `err`: a token unknown there
    /// may be good in the room it names, and then it is the wrong room's
    /// (403), not an unknown one (401).
    pub fn why(&self, room: &RoomName, token: &Token, err: TokenError) -> TokenError {
        if err != TokenError::Unknown {
            return err;
        }
        let owner = token.room().filter(|owner| owner != room);
        let lobby = owner.and_then(|owner| self.get(&owner));
        match lobby {
            Some(lobby) if lobby.knows(token) => TokenError::OtherRoom,
            _ => TokenError::Unknown,
        }
    }
}

impl Rooms {
    /// No rooms yet, and the task that drops the rooms that empty, which ends
    /// with the last handle. Needs a tokio runtime.
    pub fn new(config: PresenceConfig, max_rooms: usize, observer: impl Observe) -> Rooms {
        RoomsOf::with(config, max_rooms, Arc::new(observer), ())
    }

    /// Adds a user to `room`, making the room if it is not there: a
    /// membership of `person` (a signed join's `sub`), or someone new.
    pub fn join(
        &self,
        room: &RoomName,
        person: Option<UserId>,
        name: Name,
        state: Option<UserState>,
    ) -> Result<Joined, JoinError> {
        let mut rooms = self.shared.lock();
        let made = !rooms.contains_key(room);
        if made && rooms.len() >= self.shared.max_rooms {
            return Err(JoinError::TooManyRooms(rooms.len()));
        }
        let presence = rooms
            .entry(room.clone())
            .or_insert_with(|| self.make(room))
            .clone();
        let joined = presence.join_as(person, name, state);
        if joined.is_err() && made {
            rooms.remove(room);
        }
        joined
    }

    /// Opens a stream for the user of `room` holding `token`.
    pub fn subscribe(
        &self,
        room: &RoomName,
        token: &Token,
        last_event_id: Option<EventId>,
    ) -> Result<Subscription, TokenError> {
        let found = self.get(room).ok_or(TokenError::Unknown);
        let subscribed = found.and_then(|presence| presence.subscribe(token, last_event_id));
        subscribed.map_err(|err| self.why(room, token, err))
    }

    /// Sets the state of the person of `room` holding `token`.
    pub fn set_state(
        &self,
        room: &RoomName,
        token: &Token,
        state: UserState,
    ) -> Result<(), TokenError> {
        let found = self.get(room).ok_or(TokenError::Unknown);
        let set = found.and_then(|presence| presence.set_state(token, state));
        set.map_err(|err| self.why(room, token, err))
    }

    /// Takes the user of `room` holding `token` offline.
    pub fn leave(&self, room: &RoomName, token: &Token) -> Result<UserId, TokenError> {
        let found = self.get(room).ok_or(TokenError::Unknown);
        let left = found.and_then(|presence| presence.leave(token));
        left.map_err(|err| self.why(room, token, err))
    }

    pub(super) fn make(&self, room: &RoomName) -> Presence {
        let shared = &self.shared;
        Presence::in_room(
            room.clone(),
            shared.config.clone(),
            shared.observer.clone(),
            shared.outlet.clone(),
            Some(shared.emptied.clone()),
        )
    }
}

impl<K: Kind> Shared<K> {
    fn lock(&self) -> MutexGuard<'_, HashMap<RoomName, Lobby<K>>> {
        self.rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Drops `room` if it has been empty for its resume window; otherwise
    /// says when to look again.
    fn drop_if_empty(&self, room: &RoomName, now: Instant) -> Option<Instant> {
        let mut rooms = self.lock();
        let since = rooms.get(room)?.empty_since()?;
        let due = since + self.config.grace;
        if due > now {
            return Some(due);
        }
        rooms.remove(room);
        None
    }
}

/// Drops each room that emptied once its resume window has passed, unless
/// someone came back. Holds only a weak reference, so it ends with the rooms.
async fn drop_empty_rooms<K: Kind>(
    shared: Weak<Shared<K>>,
    mut empties: mpsc::UnboundedReceiver<RoomName>,
) {
    let mut waiting: BTreeSet<(Instant, RoomName)> = BTreeSet::new();
    loop {
        let next = waiting.first().map(|(due, _)| *due);
        tokio::select! {
            emptied = empties.recv() => match emptied {
                Some(room) => {
                    let Some(shared) = shared.upgrade() else { return };
                    waiting.insert((Instant::now() + shared.config.grace, room));
                }
                None => return,
            },
            () = sleep_until(next), if next.is_some() => {
                let Some(shared) = shared.upgrade() else { return };
                let now = Instant::now();
                while waiting.first().is_some_and(|(due, _)| *due <= now) {
                    let Some((_, room)) = waiting.pop_first() else { break };
                    if let Some(later) = shared.drop_if_empty(&room, now) {
                        waiting.insert((later, room));
                    }
                }
            }
        }
    }
}

async fn sleep_until(when: Option<Instant>) {
    if let Some(when) = when {
        tokio::time::sleep_until(when).await;
    }
}
