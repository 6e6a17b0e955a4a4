//! What a local lobby and a cluster's replica share, under one lock: who is
//! online (each person, and each of their memberships found by its token's
//! key), the users list kept encoded, the numbered history, the channel every
//! stream reads, and how a stream starts (a replay or a snapshot) and is
//! counted.
//!
//! A person is listed once however many memberships they hold (one per join:
//! a signed join of someone already in the room adds one). Their `new_user`
//! goes out with the first, their `disconnect_user` with the last; a
//! membership that goes while others stay ends its own streams and tells no
//! one. What only one kind of lobby keeps and does when a stream opens or
//! closes, it adds through [`Kind`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use super::pieces::Pieces;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::event::{self, Event, EventId, EventKind, UserView};
use super::history::History;
use super::name::{Name, Token, TokenKey, UserId, UserState};
use super::observer::Observe;
use super::room::RoomName;
use super::roster::Roster;
use super::{MAX_STREAMS_PER_USER, PresenceConfig, Start, Stats, Subscription, TokenError};

/// A lobby of one kind: [`Presence`](super::Presence), which decides for
/// itself, or [`Replica`](super::Replica), which follows a cluster's log.
/// Cheap to clone: every clone is a handle to the same lobby.
#[derive(Debug)]
pub struct Lobby<K: Kind> {
    pub(super) shared: Arc<Shared<K>>,
}

impl<K: Kind> Clone for Lobby<K> {
    fn clone(&self) -> Self {
        Lobby {
            shared: self.shared.clone(),
        }
    }
}

/// What one kind of lobby keeps beside the shared part, and what it does when
/// one of a user's streams opens or closes. (Its methods name [`State`] and
/// [`Shared`], so those are `pub` too; this module is private, so nothing
/// outside presence can name any of them.)
pub trait Kind: fmt::Debug + Send + Sync + Sized + 'static {
    /// Kept for each membership.
    type User: fmt::Debug + Send;
    /// Kept for the whole lobby, under the same lock as the shared part.
    type State: fmt::Debug + Send;
    /// What it knows of one open stream.
    type Stream: fmt::Debug + Copy + Send + Sync;
    /// Kept once for all the rooms of this kind ([`RoomsOf`](super::rooms::RoomsOf)).
    type Rooms: Send + Sync + 'static;

    /// A stream of the membership `member` opened (and is counted).
    fn opened(state: &mut State<Self>, member: TokenKey, stream: Self::Stream);

    /// A stream of the membership `member` closed (and is counted off); the
    /// membership is still there.
    fn closed(
        shared: &Shared<Self>,
        state: MutexGuard<'_, State<Self>>,
        member: TokenKey,
        stream: Self::Stream,
    );
}

#[derive(Debug)]
pub struct Shared<K: Kind> {
    /// A std mutex, not a tokio one: it is never held across an await, and every
    /// critical section is a few map operations, so an async mutex would only add cost.
    state: Mutex<State<K>>,
    pub(super) config: PresenceConfig,
    /// Told of each join and leave this lobby decides, and of each resume.
    pub(super) observer: Arc<dyn Observe>,
    /// What the kind keeps outside the lock.
    pub(super) kind: K,
}

#[derive(Debug)]
pub struct State<K: Kind> {
    pub(super) room: RoomName,
    /// Everyone in the room, keyed by the id of their `new_user` event, so
    /// iteration is oldest first.
    pub(super) people: BTreeMap<EventId, Person>,
    /// A person's `new_user` id, by their id.
    pub(super) by_id: HashMap<UserId, EventId>,
    /// Each join's membership, found by its token's key, never by the token itself.
    pub(super) members: HashMap<TokenKey, Member<K::User>>,
    /// The JSON list of everyone online, cached for the next reader.
    pub(super) roster: Roster,
    pub(super) history: History,
    pub(super) latest: EventId,
    /// Sent to while the lock is held, so that a snapshot taken under the lock and
    /// the events received after it meet exactly: nothing missed, nothing twice.
    pub(super) outlet: Outlet,
    /// What only this kind of lobby keeps.
    pub(super) own: K::State,
}

/// Someone in the room, listed once.
#[derive(Debug)]
pub struct Person {
    pub(super) id: UserId,
    pub(super) name: Name,
    /// What they are doing, once they (or their ticket) said.
    pub(super) state: Option<UserState>,
    /// Their memberships: one per join, each with its own token.
    pub(super) members: Keys,
}

impl Person {
    pub(super) fn view(&self) -> UserView {
        UserView {
            id: self.id.clone(),
            name: self.name.clone(),
            state: self.state.clone(),
        }
    }
}

/// A person's memberships, by their tokens' keys: nearly always one, kept
/// without an allocation of its own.
#[derive(Debug, Default)]
pub enum Keys {
    #[default]
    None,
    One(TokenKey),
    Many(Vec<TokenKey>),
}

impl Keys {
    fn push(&mut self, key: TokenKey) {
        *self = match std::mem::take(self) {
            Keys::None => Keys::One(key),
            Keys::One(first) => Keys::Many(vec![first, key]),
            Keys::Many(mut keys) => {
                keys.push(key);
                Keys::Many(keys)
            }
        };
    }

    /// Removes `key`; says whether none is left.
    fn remove(&mut self, key: TokenKey) -> bool {
        match self {
            Keys::One(only) if *only == key => *self = Keys::None,
            Keys::Many(keys) => {
                keys.retain(|kept| *kept != key);
                if let [only] = keys[..] {
                    *self = Keys::One(only);
                }
            }
            _ => {}
        }
        matches!(self, Keys::None)
    }

    pub(super) fn iter(&self) -> std::slice::Iter<'_, TokenKey> {
        match self {
            Keys::None => [].iter(),
            Keys::One(key) => std::slice::from_ref(key).iter(),
            Keys::Many(keys) => keys.iter(),
        }
    }
}

/// One join: its person (by their `new_user` id) and its open streams.
#[derive(Debug)]
pub struct Member<X> {
    pub(super) person: EventId,
    pub(super) streams: u8,
    /// What only this kind of lobby keeps of the membership.
    pub(super) own: X,
}

/// Where a lobby's events go and where its ids start: one channel of every
/// event, and the newest id sent on it. A lobby on its own has its own; the
/// rooms of a process share one, so that a room made again numbers its
/// events past every id already sent: a room's ids follow on one from the
/// next, never go back, and a client's `Last-Event-ID` never means two things.
#[derive(Debug, Clone)]
pub struct Outlet(Arc<Mutex<Sending>>);

/// An outlet's channel and counts, under one lock: events are numbered
/// (`seq`) and sent together, so `seq` is the order receivers see.
#[derive(Debug)]
struct Sending {
    sender: broadcast::Sender<Arc<Event>>,
    /// The `seq` of the last event sent.
    seq: u64,
    /// The newest event id sent (or applied, in a replica), in any room.
    newest: EventId,
}

/// A receiver of every event from some moment on, and where that moment is.
pub(super) struct Since {
    pub(super) events: broadcast::Receiver<Arc<Event>>,
    /// The `seq` of the last event sent before it: what a stream reads from
    /// elsewhere (a shard's log) starts after that.
    pub(super) seq: u64,
    /// The newest id sent before it, in any room: a room that does not exist
    /// yet will number its events past it.
    pub(super) newest: EventId,
}

impl Outlet {
    pub fn new(config: &PresenceConfig) -> Outlet {
        // tokio's broadcast channel rounds its capacity up to a power of two; the
        // history is kept at least twice that long, so a lagged stream, just past
        // the backlog, can resume.
        let backlog = config.backlog.max(1).next_power_of_two();
        let (sender, _) = broadcast::channel(backlog);
        Outlet(Arc::new(Mutex::new(Sending {
            sender,
            seq: 0,
            newest: 0,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Sending> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.lock().sender.subscribe()
    }

    /// A receiver of every event from now on, and where it starts.
    pub(super) fn subscribe_since(&self) -> Since {
        let sending = self.lock();
        Since {
            events: sending.sender.subscribe(),
            seq: sending.seq,
            newest: sending.newest,
        }
    }

    /// The newest id sent, in any room.
    pub fn newest(&self) -> EventId {
        self.lock().newest
    }

    /// Notes that ids up to `id` are taken (a cluster's log gave them).
    pub(super) fn reached(&self, id: EventId) {
        let mut sending = self.lock();
        sending.newest = sending.newest.max(id);
    }

    /// Numbers `event` among all sent here and sends it; returns it shared.
    pub(super) fn send(&self, mut event: Event) -> Arc<Event> {
        let mut sending = self.lock();
        sending.seq += 1;
        sending.newest = sending.newest.max(event.id);
        event.seq = sending.seq;
        let event = Arc::new(event);
        // An error only means that no stream is open; the history still has it.
        let _ = sending.sender.send(event.clone());
        event
    }
}

impl<K: Kind> Lobby<K> {
    /// An empty lobby of kind `kind` named `room`, which keeps `own` beside
    /// the shared part and sends its events to `outlet`; its history starts
    /// at the newest id sent there.
    pub(super) fn with(
        room: RoomName,
        config: PresenceConfig,
        observer: Arc<dyn Observe>,
        kind: K,
        own: K::State,
        outlet: Outlet,
    ) -> Lobby<K> {
        let state = State {
            room,
            people: BTreeMap::new(),
            by_id: HashMap::new(),
            members: HashMap::new(),
            roster: Roster::default(),
            history: History::new(config.history_len(), outlet.newest()),
            latest: outlet.newest(),
            outlet,
            own,
        };
        Lobby {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                config,
                observer,
                kind,
            }),
        }
    }

    pub fn config(&self) -> &PresenceConfig {
        &self.shared.config
    }

    /// A receiver of every event from now on, for a task that fans events out
    /// and wants waking when there are some (each stream reads its own receiver).
    pub fn events(&self) -> broadcast::Receiver<Arc<Event>> {
        self.shared.lock().outlet.subscribe()
    }

    /// Opens a stream for the user holding `token`. With `last_event_id`, the
    /// stream resumes after that event when the history still holds what came
    /// since; otherwise (and without it) it starts with a snapshot.
    pub(crate) fn open(
        &self,
        token: &Token,
        last_event_id: Option<EventId>,
        stream: K::Stream,
    ) -> Result<Subscription, TokenError> {
        let key = token.key();
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        let member = state.members.get_mut(&key).ok_or(TokenError::Unknown)?;
        if member.streams >= MAX_STREAMS_PER_USER {
            return Err(TokenError::TooManyStreams);
        }
        member.streams += 1;
        let seq = member.person;
        let id = state.people.get(&seq).map(|person| person.id.clone());
        K::opened(state, key, stream);
        let since = state.outlet.subscribe_since();
        let subscription = Subscription {
            user: id,
            member: Some(key),
            room: state.room.clone(),
            start: state.start(last_event_id),
            events: Some(since.events),
            since: since.seq,
            open: Some(Box::new(OpenStream {
                shared: self.shared.clone(),
                token: key,
                stream,
            })),
            held: None,
        };
        drop(guard);
        self.resumed(last_event_id, &subscription);
        Ok(subscription)
    }

    /// Opens a watcher's stream: the same start and events as a user's, for
    /// no user; it keeps no one online.
    pub fn watch(&self, last_event_id: Option<EventId>) -> Subscription {
        let state = &mut *self.shared.lock();
        let since = state.outlet.subscribe_since();
        let start = state.start(last_event_id);
        let subscription = Subscription::watching(state.room.clone(), start, since);
        self.resumed(last_event_id, &subscription);
        subscription
    }

    fn resumed(&self, last_event_id: Option<EventId>, subscription: &Subscription) {
        if last_event_id.is_some() {
            let replayed = matches!(subscription.start, Start::Resume(_));
            self.shared.observer.resumed(replayed);
        }
    }

    /// Since when the room has had no one in it, if it has no one.
    pub(super) fn empty_since(&self) -> Option<Instant> {
        let state = self.shared.lock();
        state
            .people
            .is_empty()
            .then(|| state.history.newest_at().unwrap_or_else(Instant::now))
    }

    /// Whether `token` is a user's here.
    pub(super) fn knows(&self, token: &Token) -> bool {
        self.shared.lock().members.contains_key(&token.key())
    }

    /// Everyone online, oldest first.
    pub fn users(&self) -> Vec<UserView> {
        self.shared.lock().views()
    }

    /// Everyone online, oldest first, as a JSON array of `{"id","name"}`.
    pub fn users_json(&self) -> Pieces {
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
            users: state.people.len(),
            streams: state.members.values().map(|m| usize::from(m.streams)).sum(),
            history: state.history.len(),
            latest_event: state.latest,
        }
    }
}

impl<K: Kind> Shared<K> {
    pub(super) fn lock(&self) -> MutexGuard<'_, State<K>> {
        // A panic while holding the lock cannot leave the maps half-updated in a
        // way later calls would misread, so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<K: Kind> State<K> {
    /// How a stream starts: after `last_event_id`, when the history still
    /// holds what came since; otherwise (and without it) with a snapshot.
    fn start(&mut self, last_event_id: Option<EventId>) -> Start {
        let replay = last_event_id.and_then(|after| self.history.replay_after(after, self.latest));
        match replay {
            Some(frames) => Start::Resume(frames),
            None => Start::Snapshot(event::snapshot_frame(self.latest, self.users_json())),
        }
    }

    pub(super) fn views(&self) -> Vec<UserView> {
        self.people.values().map(Person::view).collect()
    }

    pub(super) fn users_json(&mut self) -> Pieces {
        let people = &self.people;
        self.roster.json(|range| {
            people
                .range(range)
                .map(|(_, person)| (&person.id, &person.name, person.state.as_ref()))
        })
    }

    /// Adds `person`, whose `new_user` event is `seq`, with no membership yet.
    pub(super) fn add_person(&mut self, seq: EventId, person: UserView) {
        let UserView { id, name, state } = person;
        // Only a site's id can join again as the same person: a random one
        // is never looked up, and costs no entry.
        if id.is_site_s() {
            self.by_id.insert(id.clone(), seq);
        }
        let members = Keys::default();
        self.people.insert(
            seq,
            Person {
                id,
                name,
                state,
                members,
            },
        );
        self.roster.added(seq);
    }

    /// Sets the state of the person whose `new_user` is `seq` and announces
    /// it with `user_updated`; says whether it changed (the same state again
    /// announces nothing).
    pub(super) fn set_state(&mut self, seq: EventId, state: UserState) -> Option<bool> {
        let person = self.people.get_mut(&seq)?;
        if person.state.as_ref() == Some(&state) {
            return Some(false);
        }
        person.state = Some(state);
        let view = person.view();
        self.roster.changed(seq);
        self.publish(EventKind::UserUpdated, &view);
        Some(true)
    }

    /// Adds a membership of the person whose `new_user` is `seq`, with no stream.
    pub(super) fn add_member(&mut self, seq: EventId, member: TokenKey, own: K::User) {
        if let Some(person) = self.people.get_mut(&seq) {
            person.members.push(member);
        }
        let member_of = Member {
            person: seq,
            streams: 0,
            own,
        };
        self.members.insert(member, member_of);
    }

    /// The person whose id is `id`, if they are in the room: their `new_user` id.
    pub(super) fn person_of(&self, id: &UserId) -> Option<EventId> {
        self.by_id.get(id).copied()
    }

    /// Announces an event about `user` under the room's next id.
    pub(super) fn publish(&mut self, kind: EventKind, user: &UserView) -> EventId {
        let id = self.latest + 1;
        self.publish_at(id, kind, user);
        id
    }

    /// Announces an event about `user` under `id` (a cluster's log gave it).
    pub(super) fn publish_at(&mut self, id: EventId, kind: EventKind, user: &UserView) {
        self.latest = id;
        let event = Event::new(&self.room, id, kind, user);
        self.history.push(self.outlet.send(event));
    }

    /// Takes the person whose `new_user` is `seq` out of the room with all
    /// their memberships, announcing nothing.
    pub(super) fn take(&mut self, seq: EventId) -> Option<(Person, Vec<Member<K::User>>)> {
        let person = self.people.remove(&seq)?;
        self.by_id.remove(&person.id);
        self.roster.removed(seq);
        let members = person
            .members
            .iter()
            .filter_map(|key| self.members.remove(key))
            .collect();
        Some((person, members))
    }

    /// Takes the person whose `new_user` is `seq` out of the room and announces it.
    pub(super) fn remove(&mut self, seq: EventId) -> Option<(Person, Vec<Member<K::User>>)> {
        let gone = self.take(seq)?;
        // `disconnect_user` says who, not what they were doing.
        let user = UserView::new(gone.0.id.clone(), &gone.0.name);
        self.publish(EventKind::DisconnectUser, &user);
        Some(gone)
    }

    /// Ends the membership `member`. The last of a person's takes them out of
    /// the room and announces it (returning them); any other ends only its
    /// own streams.
    pub(super) fn end_member(&mut self, member: TokenKey) -> Option<Ended<K::User>> {
        let ending = self.members.remove(&member)?;
        let seq = ending.person;
        let person = self.people.get_mut(&seq)?;
        if person.members.remove(member) {
            let (person, _) = self.remove(seq)?;
            return Some(Ended {
                member: ending,
                person: Some(person),
            });
        }
        let revoked = Event::revoked(&self.room, self.latest, member);
        self.outlet.send(revoked);
        Some(Ended {
            member: ending,
            person: None,
        })
    }
}

/// A membership that ended, and its person if they left with it.
#[derive(Debug)]
pub struct Ended<X> {
    pub(super) member: Member<X>,
    pub(super) person: Option<Person>,
}

/// What a [`Subscription`] holds of its lobby, whatever the lobby's kind.
pub(super) trait Open: fmt::Debug + Send + Sync {
    /// Whether the stream's user is still online.
    fn online(&self) -> bool;
}

/// Counts one open stream; dropping it is how the lobby learns the stream
/// closed. Found by the token's key, which (unlike the id of the person's
/// `new_user`) stays the same when a replica reloads.
#[derive(Debug)]
struct OpenStream<K: Kind> {
    shared: Arc<Shared<K>>,
    token: TokenKey,
    stream: K::Stream,
}

impl<K: Kind> Open for OpenStream<K> {
    fn online(&self) -> bool {
        self.shared.lock().members.contains_key(&self.token)
    }
}

impl<K: Kind> Drop for OpenStream<K> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        // The membership may be gone already (it left): then there is nothing
        // to do. A reload may have found it gone and a later one put it back,
        // with no streams counted here: then this one is not counted.
        let Some(member) = state
            .members
            .get_mut(&self.token)
            .filter(|member| member.streams > 0)
        else {
            return;
        };
        member.streams -= 1;
        K::closed(&self.shared, state, self.token, self.stream);
    }
}
