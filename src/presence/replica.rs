//! A cluster node's copy of the rooms a cluster keeps: [`Replicas`], a
//! [`Replica`] per room, fed each event of the cluster's one log in order
//! ([`Replicas::apply`]), or the whole state after a gap
//! ([`Replicas::reload`]). The log has one sequence over every room, which
//! the replicas follow so that none is missed, and gives each event its
//! room's id, the same on every node. The cluster numbers each stream it opens here
//! ([`Replicas::open`]), and a replica reports each one that closes
//! ([`StreamKey`]), so that the cluster can count every user's streams on
//! every node and keep the deadlines; a replica keeps none itself. Streams are
//! served from it exactly as from a local lobby: the core is the same.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::pieces::Pieces;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::event::{Event, EventId, EventKind, UserView};
use super::history::History;
use super::lobby::{Kind, Lobby, Shared, State};
use super::name::{Name, Token, TokenKey, UserId, UserState};
use super::observer::Observe;
use super::room::RoomName;
use super::rooms::RoomsOf;
use super::roster::Roster;
use super::{PresenceConfig, Subscription, TokenError};

/// One room as a cluster node has it.
pub type Replica = Lobby<Replicated>;

/// Every room of a cluster, as this node has it. Cheap to clone: every
/// clone is a handle to the same replicas.
pub type Replicas = RoomsOf<Replicated>;

/// What a replica adds to the shared part: where it reports its streams.
#[derive(Debug)]
pub struct Replicated {
    /// Where each stream that closes on this node is reported, for the
    /// cluster to count.
    closed: mpsc::UnboundedSender<StreamKey>,
}

/// What the replicas keep once for every room.
#[derive(Debug)]
pub struct Following {
    closed: mpsc::UnboundedSender<StreamKey>,
    /// The newest entry of the log applied, for those waiting until one is.
    applied: watch::Sender<u64>,
    /// Joins waiting for their `new_user`: each gets its room's users list as
    /// it was just before.
    joins: Mutex<HashMap<UserId, oneshot::Sender<Pieces>>>,
}

/// A membership as a replica keeps it: the cluster's id for it, its
/// streams open on this node, and, if this node answered its join and no
/// stream of it has opened here since, when that was.
#[derive(Debug)]
pub struct Membership {
    id: UserId,
    streams: Vec<u64>,
    joined_here: Option<Instant>,
}

impl Kind for Replicated {
    type User = Membership;
    type State = ();
    /// The cluster's id for the stream.
    type Stream = u64;
    type Rooms = Following;

    fn opened(state: &mut State<Replicated>, member: TokenKey, stream: u64) {
        if let Some(member) = state.members.get_mut(&member) {
            member.own.streams.push(stream);
            member.own.joined_here = None;
        }
    }

    fn closed(
        shared: &Shared<Replicated>,
        mut state: MutexGuard<'_, State<Replicated>>,
        member: TokenKey,
        stream: u64,
    ) {
        let Some(member) = state.members.get_mut(&member) else {
            return;
        };
        member.own.streams.retain(|&id| id != stream);
        let closed = StreamKey {
            user: member.own.id.clone(),
            stream,
        };
        // An error only means the cluster is gone (the lobby is stopping).
        let _ = shared.kind.closed.send(closed);
    }
}

/// One stream a cluster opened on this node: whose (the membership's id),
/// and the cluster's id for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub user: UserId,
    pub stream: u64,
}

/// One event of the cluster's log: its place in the log, its id in its
/// room, its room and what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its place in the log, across every room: each follows the one before.
    pub seq: u64,
    /// Its id in its room, as streams see it.
    pub id: EventId,
    pub room: RoomName,
    pub change: Change,
}

/// One change in a room, as the cluster's log has it. `user` is always the
/// person; `member` a membership (one join) of theirs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Someone came: their `new_user`, with their first membership.
    Joined {
        user: UserId,
        member: UserId,
        name: Name,
        token: TokenKey,
        state: Option<UserState>,
    },
    /// Another membership of someone in the room (no event).
    MemberAdded {
        member: UserId,
        token: TokenKey,
        /// The id of the person's `new_user` event.
        joined: EventId,
    },
    /// A membership ended while its person stays (no event; its streams end).
    MemberLeft {
        token: TokenKey,
        /// The id of the person's `new_user` event.
        joined: EventId,
    },
    Left {
        user: UserId,
        name: Name,
        /// The id of the user's `new_user` event.
        joined: EventId,
    },
    Updated {
        user: UserId,
        name: Name,
        /// The id of the user's `new_user` event.
        joined: EventId,
        state: UserState,
    },
}

/// An entry of the log that does not follow the last one applied: the
/// replicas missed some.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("log entry {got} does not follow entry {latest}")]
pub struct OutOfOrder {
    pub latest: u64,
    pub got: u64,
}

/// The cluster's whole state: everyone online, the log's newest entry, each
/// room's newest event id, and the recent entries of every room, oldest first.
#[derive(Debug, Default)]
pub struct Reload {
    pub latest: u64,
    pub rooms: HashMap<RoomName, EventId>,
    pub users: Vec<Online>,
    pub history: Vec<Entry>,
}

/// A membership, and its person, as the cluster has them.
#[derive(Debug, Clone)]
pub struct Online {
    /// The id of their `new_user` event.
    pub joined: EventId,
    pub room: RoomName,
    pub member: UserId,
    pub user: UserId,
    pub name: Name,
    pub token: TokenKey,
    pub state: Option<UserState>,
}

/// A membership as a replica knows it, for a cluster that must put it back.
#[derive(Debug, Clone)]
pub struct Known {
    pub room: RoomName,
    pub member: UserId,
    pub user: UserId,
    pub name: Name,
    pub token: TokenKey,
    /// When this node answered its join, if it did and no stream of it has
    /// opened here since: its join timeout may still run.
    pub joined_here: Option<Instant>,
}

impl Replicas {
    /// No rooms yet: the replicas keep no deadlines and number nothing
    /// themselves. They send each stream that closes to `closed`. Their joins
    /// and leaves are the cluster's to observe; they tell `observer` only of
    /// resumes.
    pub fn new(
        config: PresenceConfig,
        closed: mpsc::UnboundedSender<StreamKey>,
        observer: impl Observe,
    ) -> Replicas {
        let following = Following {
            closed,
            applied: watch::Sender::new(0),
            joins: Mutex::default(),
        };
        // The cluster decides how many rooms there may be.
        RoomsOf::with(config, usize::MAX, Arc::new(observer), following)
    }

    fn make(&self, room: &RoomName) -> Replica {
        let shared = &self.shared;
        let replicated = Replicated {
            closed: shared.own.closed.clone(),
        };
        Lobby::with(
            room.clone(),
            shared.config.clone(),
            shared.observer.clone(),
            replicated,
            (),
            shared.outlet.clone(),
        )
    }

    fn joins(&self) -> MutexGuard<'_, HashMap<UserId, oneshot::Sender<Pieces>>> {
        self.shared
            .own
            .joins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The newest entry of the log applied.
    pub fn latest(&self) -> u64 {
        *self.shared.own.applied.borrow()
    }

    /// Applies the next entry of the shared log: it must follow the newest
    /// one applied, or nothing changes and the cluster must
    /// [`reload`](Self::reload).
    pub fn apply(&self, entry: Entry) -> Result<(), OutOfOrder> {
        let Entry {
            seq,
            id,
            room,
            change,
        } = entry;
        let mut rooms = self.lock();
        let latest = self.latest();
        if seq != latest + 1 {
            return Err(OutOfOrder { latest, got: seq });
        }
        match change {
            Change::Joined {
                user,
                member,
                name,
                token,
                state: user_state,
            } => {
                let replica = rooms
                    .entry(room.clone())
                    .or_insert_with(|| self.make(&room));
                let mut state = replica.shared.lock();
                // A join made on this node, waiting for its event (`expect_join`).
                if let Some(waiting) = self.joins().remove(&user) {
                    let _ = waiting.send(state.users_json());
                }
                let view = UserView {
                    id: user,
                    name,
                    state: user_state,
                };
                state.publish_at(id, EventKind::NewUser, &view);
                state.add_person(id, view);
                state.add_member(id, token, Membership::of(member));
            }
            Change::MemberAdded {
                member,
                token,
                joined,
            } => {
                if let Some(replica) = rooms.get(&room) {
                    let mut state = replica.shared.lock();
                    if state.people.contains_key(&joined) {
                        state.add_member(joined, token, Membership::of(member));
                    }
                }
            }
            Change::MemberLeft { token, joined } => {
                if let Some(replica) = rooms.get(&room) {
                    let mut state = replica.shared.lock();
                    // Never the person's last here: that comes as a leave.
                    let others = state
                        .people
                        .get(&joined)
                        .is_some_and(|person| person.members.iter().count() > 1);
                    if others {
                        state.end_member(token);
                    }
                }
            }
            Change::Updated {
                user,
                name,
                joined,
                state: user_state,
            } => {
                if let Some(replica) = rooms.get(&room) {
                    let mut state = replica.shared.lock();
                    if let Some(person) = state.people.get_mut(&joined).filter(|p| p.id == user) {
                        person.state = Some(user_state.clone());
                        state.roster.changed(joined);
                    }
                    let view = UserView {
                        id: user,
                        name,
                        state: Some(user_state),
                    };
                    state.publish_at(id, EventKind::UserUpdated, &view);
                }
            }
            Change::Left { user, name, joined } => {
                // A room unknown here cannot have a leave, in order.
                if let Some(replica) = rooms.get(&room) {
                    let mut state = replica.shared.lock();
                    if state
                        .people
                        .get(&joined)
                        .is_some_and(|known| known.id == user)
                    {
                        state.take(joined);
                    }
                    // Even for a user not known here (it cannot happen in
                    // order): the event is still the log's, every stream gets it.
                    let view = UserView::new(user, &name);
                    state.publish_at(id, EventKind::DisconnectUser, &view);
                    if state.people.is_empty() {
                        self.shared.emptied.room(&room);
                    }
                }
            }
        }
        drop(rooms);
        self.shared.own.applied.send_replace(seq);
        Ok(())
    }

    /// Replaces everything with the cluster's state. Every open stream gets
    /// a fresh `existing_users` of its room and goes on (or ends, if its user
    /// is gone); users who are still online keep their streams here. Joins
    /// waiting for their event are let go.
    pub fn reload(&self, reload: Reload) {
        let Reload {
            latest,
            rooms: last,
            users,
            history,
        } = reload;
        let mut by_room: HashMap<RoomName, (Vec<Online>, Vec<Entry>)> = HashMap::new();
        for online in users {
            by_room
                .entry(online.room.clone())
                .or_default()
                .0
                .push(online);
        }
        for entry in history {
            by_room.entry(entry.room.clone()).or_default().1.push(entry);
        }
        let mut rooms = self.lock();
        self.joins().clear();
        let known: Vec<RoomName> = rooms.keys().cloned().collect();
        for room in known {
            by_room.entry(room).or_default();
        }
        // Every room's ids are below the log's newest entry: a room made
        // from now on numbers its events past it.
        self.shared.outlet.reached(latest);
        for (room, (users, history)) in by_room {
            let replica = rooms
                .entry(room.clone())
                .or_insert_with(|| self.make(&room));
            if replica.reload(last.get(&room).copied(), users, history) {
                self.shared.emptied.room(&room);
            }
        }
        drop(rooms);
        self.shared.own.applied.send_replace(latest);
    }

    /// The users list of `room` as it is just before `user`'s `new_user` is
    /// applied. Ask before the join is sent to the cluster; the receiver
    /// fails if the replicas are reloaded first.
    pub fn expect_join(&self, user: UserId) -> oneshot::Receiver<Pieces> {
        let (sender, receiver) = oneshot::channel();
        self.joins().insert(user, sender);
        receiver
    }

    /// Forgets a join that [`expect_join`](Self::expect_join) waited for.
    pub fn forget_join(&self, user: &UserId) {
        self.joins().remove(user);
    }

    /// Opens a stream, numbered `stream` by the cluster, for the user of
    /// `room` holding `token`.
    pub fn open(
        &self,
        room: &RoomName,
        token: &Token,
        last_event_id: Option<EventId>,
        stream: u64,
    ) -> Result<Subscription, TokenError> {
        let found = self.get(room).ok_or(TokenError::Unknown);
        let opened = found.and_then(|replica| replica.open(token, last_event_id, stream));
        opened.map_err(|err| self.why(room, token, err))
    }

    /// The user of `room` holding `token`, as far as this node knows; or
    /// why not (the token is unknown, or another room's).
    pub fn user_of(&self, room: &RoomName, token: &Token) -> Result<UserView, TokenError> {
        let found = self.get(room).and_then(|replica| replica.user_of(token));
        found.ok_or_else(|| self.why(room, token, TokenError::Unknown))
    }

    /// The person of `room` holding `token`, and the cluster's id for that
    /// membership; or why not.
    pub fn member_of(
        &self,
        room: &RoomName,
        token: &Token,
    ) -> Result<(UserView, UserId), TokenError> {
        let person = self.user_of(room, token)?;
        let member = self.get(room).and_then(|replica| replica.member_of(token));
        member
            .map(|member| (person, member))
            .ok_or(TokenError::Unknown)
    }

    /// Notes that this node answered the join of `token` in `room` at `at`
    /// (until its first stream opens here): if Redis loses it meanwhile, it
    /// is put back with the rest of its join timeout.
    pub fn joined_here(&self, room: &RoomName, token: &Token, at: Instant) {
        if let Some(replica) = self.get(room) {
            let mut state = replica.shared.lock();
            if let Some(member) = state.members.get_mut(&token.key())
                && member.streams == 0
            {
                member.own.joined_here = Some(at);
            }
        }
    }

    /// Every stream the cluster opened on this node that is open now.
    pub fn open_streams(&self) -> Vec<StreamKey> {
        let rooms: Vec<Replica> = self.lock().values().cloned().collect();
        rooms.iter().flat_map(Replica::open_streams).collect()
    }

    /// Everyone this node knows to be online, in every room.
    pub fn known(&self) -> Vec<Known> {
        let rooms: Vec<Replica> = self.lock().values().cloned().collect();
        rooms.iter().flat_map(Replica::known).collect()
    }

    /// Waits (at most `patience`) until entry `seq` of the log has been
    /// applied; says whether it was.
    pub async fn applied(&self, seq: u64, patience: Duration) -> bool {
        let mut applied = self.shared.own.applied.subscribe();
        tokio::time::timeout(patience, applied.wait_for(|&latest| latest >= seq))
            .await
            .is_ok_and(|result| result.is_ok())
    }
}

impl Replica {
    /// Replaces the room's state with the cluster's: its newest event id
    /// (`None` if the cluster has no one in it), its users and its recent
    /// events, which hold every event of the room after the one before their
    /// first. Says whether the room is left empty.
    fn reload(&self, latest: Option<EventId>, users: Vec<Online>, history: Vec<Entry>) -> bool {
        let mut state = self.shared.lock();
        let state = &mut *state;
        let floor = history.first().map(|entry| entry.id.saturating_sub(1));
        let newest = history.last().map(|entry| entry.id);
        let latest = latest.or(newest).unwrap_or(state.latest);
        let floor = floor.unwrap_or(latest);
        // What a reload cannot say of a membership this node had: its
        // streams here, and whether (and when) it joined here.
        let mut kept: HashMap<TokenKey, (u8, Vec<u64>, Option<Instant>)> = state
            .members
            .iter_mut()
            .map(|(key, member)| {
                let ids = std::mem::take(&mut member.own.streams);
                (*key, (member.streams, ids, member.own.joined_here))
            })
            .collect();
        state.people.clear();
        state.by_id.clear();
        state.members.clear();
        state.roster = Roster::default();
        state.history = History::new(self.shared.config.history_len(), floor);
        for Entry { id, change, .. } in history {
            let (kind, view) = match change {
                Change::Joined {
                    user, name, state, ..
                } => {
                    let view = UserView {
                        id: user,
                        name,
                        state,
                    };
                    (EventKind::NewUser, view)
                }
                // Memberships are no events: nothing to replay.
                Change::MemberAdded { .. } | Change::MemberLeft { .. } => continue,
                Change::Left { user, name, .. } => {
                    (EventKind::DisconnectUser, UserView::new(user, &name))
                }
                Change::Updated {
                    user, name, state, ..
                } => {
                    let view = UserView {
                        id: user,
                        name,
                        state: Some(state),
                    };
                    (EventKind::UserUpdated, view)
                }
            };
            state
                .history
                .push(Arc::new(Event::new(&state.room, id, kind, &view)));
        }
        state.latest = latest;
        for online in users {
            let (count, ids, joined_here) = kept.remove(&online.token).unwrap_or_default();
            let seq = online.joined;
            if !state.people.contains_key(&seq) {
                let view = UserView {
                    id: online.user,
                    name: online.name,
                    state: online.state,
                };
                state.add_person(seq, view);
            }
            let membership = Membership {
                id: online.member,
                streams: ids,
                joined_here,
            };
            state.add_member(seq, online.token, membership);
            if let Some(member) = state.members.get_mut(&online.token) {
                member.streams = count;
            }
        }
        let users = state.users_json();
        let reset = Event::reset(&state.room, latest, users);
        state.outlet.send(reset);
        state.people.is_empty()
    }

    /// The person holding `token`, as far as this room knows.
    fn user_of(&self, token: &Token) -> Option<UserView> {
        let state = self.shared.lock();
        let member = state.members.get(&token.key())?;
        state
            .people
            .get(&member.person)
            .map(|person| UserView::new(person.id.clone(), &person.name))
    }

    fn open_streams(&self) -> Vec<StreamKey> {
        let state = self.shared.lock();
        state
            .members
            .values()
            .flat_map(|member| {
                member.own.streams.iter().map(|&stream| StreamKey {
                    user: member.own.id.clone(),
                    stream,
                })
            })
            .collect()
    }

    fn known(&self) -> Vec<Known> {
        let state = self.shared.lock();
        state
            .members
            .iter()
            .filter_map(|(&token, member)| {
                let person = state.people.get(&member.person)?;
                Some(Known {
                    room: state.room.clone(),
                    member: member.own.id.clone(),
                    user: person.id.clone(),
                    name: person.name.clone(),
                    token,
                    joined_here: member.own.joined_here,
                })
            })
            .collect()
    }

    /// The cluster's id for the membership of `token`.
    fn member_of(&self, token: &Token) -> Option<UserId> {
        let state = self.shared.lock();
        state
            .members
            .get(&token.key())
            .map(|member| member.own.id.clone())
    }
}

impl Membership {
    fn of(id: UserId) -> Membership {
        Membership {
            id,
            streams: Vec::new(),
            joined_here: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::frames::{Frame, parse_frames, people_in_json, person};
    use super::super::observer::Unobserved;
    use super::super::{Start, Subscription, Waiting};
    use super::*;
    use tokio::sync::mpsc;
    use tokio::sync::mpsc::error::TryRecvError;

    fn name(raw: &str) -> Name {
        Name::parse(raw).expect("a valid name")
    }

    fn room(raw: &str) -> RoomName {
        RoomName::parse(raw).expect("a valid room name")
    }

    struct Someone {
        room: RoomName,
        user: UserId,
        name: Name,
        token: Token,
    }

    impl Someone {
        fn new(raw: &str) -> Someone {
            Someone::in_room(raw, RoomName::lobby())
        }

        fn in_room(raw: &str, room: RoomName) -> Someone {
            Someone {
                user: UserId::random(),
                name: name(raw),
                token: Token::random_in(&room),
                room,
            }
        }

        /// Entry `seq` of the log, with id `id` in the room.
        fn entry(&self, (seq, id): (u64, EventId), change: Change) -> Entry {
            Entry {
                seq,
                id,
                room: self.room.clone(),
                change,
            }
        }

        /// Their `new_user`: entry and id `at`, or as `(entry, id)`.
        fn joined(&self, at: impl Into<At>) -> Entry {
            let change = Change::Joined {
                user: self.user.clone(),
                member: self.user.clone(),
                name: self.name.clone(),
                token: self.token.key(),
                state: None,
            };
            self.entry(at.into().0, change)
        }

        /// Their `disconnect_user` at `at`; their `new_user` was `joined`.
        fn left(&self, at: impl Into<At>, joined: EventId) -> Entry {
            let change = Change::Left {
                user: self.user.clone(),
                name: self.name.clone(),
                joined,
            };
            self.entry(at.into().0, change)
        }

        fn online(&self, joined: EventId) -> Online {
            Online {
                joined,
                room: self.room.clone(),
                member: self.user.clone(),
                user: self.user.clone(),
                name: self.name.clone(),
                token: self.token.key(),
                state: None,
            }
        }

        fn person(&self) -> (String, String) {
            (self.user.to_string(), self.name.to_string())
        }

        fn open(&self, replicas: &Replicas, last: Option<EventId>, stream: u64) -> Subscription {
            replicas
                .open(&self.room, &self.token, last, stream)
                .expect("known")
        }
    }

    /// Where an entry is: its number in the log and its id in its room,
    /// the same number for a test with one room.
    struct At((u64, EventId));

    impl From<u64> for At {
        fn from(both: u64) -> At {
            At((both, both))
        }
    }

    impl From<(u64, EventId)> for At {
        fn from(at: (u64, EventId)) -> At {
            At(at)
        }
    }

    fn replicas(config: PresenceConfig) -> (Replicas, mpsc::UnboundedReceiver<StreamKey>) {
        let (closed, reports) = mpsc::unbounded_channel();
        (Replicas::new(config, closed, Unobserved), reports)
    }

    /// What a stream would write now, frame by frame, and whether it goes on.
    fn written(subscription: &mut Subscription) -> (Vec<Frame>, Waiting) {
        let mut batch = Vec::new();
        let waiting = subscription.read_waiting(&mut batch, 1024);
        (parse_frames(&batch.concat()), waiting)
    }

    fn ids(frames: &[Frame]) -> Vec<EventId> {
        frames.iter().map(|frame| frame.id).collect()
    }

    #[tokio::test]
    async fn events_are_applied_with_the_cluster_s_ids_and_only_in_order() {
        let replicas = replicas(PresenceConfig::default()).0;
        let (ann, bob) = (Someone::new("ann"), Someone::new("bob"));
        let mut watcher = replicas.events();
        replicas.apply(ann.joined(1)).expect("the first event");
        assert_eq!(
            replicas.apply(bob.joined(3)),
            Err(OutOfOrder { latest: 1, got: 3 })
        );
        assert_eq!(
            replicas.users(&RoomName::lobby()).len(),
            1,
            "an event out of order changes nothing"
        );
        replicas.apply(bob.joined(2)).expect("the next event");
        replicas.apply(ann.left(3, 1)).expect("the next event");
        let ids: Vec<EventId> = std::iter::from_fn(|| watcher.try_recv().ok())
            .map(|event| event.id)
            .collect();
        assert_eq!(ids, [1, 2, 3]);
        let lobby = RoomName::lobby();
        assert_eq!(
            replicas.user_of(&lobby, &bob.token).map(|view| view.id),
            Ok(bob.user)
        );
        assert_eq!(
            replicas.user_of(&lobby, &ann.token),
            Err(TokenError::Unknown),
            "ann left"
        );
        assert!(replicas.applied(3, Duration::ZERO).await);
    }

    #[tokio::test]
    async fn each_room_gets_its_own_events_under_the_log_s_ids_and_resumes_in_its_room() {
        let replicas = replicas(PresenceConfig::default()).0;
        let design = room("design");
        let ann = Someone::in_room("ann", design.clone());
        let bob = Someone::in_room("bob", room("ops"));
        let cat = Someone::in_room("cat", design.clone());
        // Entries 1 to 5 of the log; design's ids are 1, 2, 3 and ops' 2, 3.
        replicas.apply(ann.joined((1, 1))).expect("in order");
        let mut ann_sees = ann.open(&replicas, None, 1);
        replicas.apply(bob.joined((2, 2))).expect("in order");
        replicas.apply(cat.joined((3, 2))).expect("in order");
        replicas.apply(bob.left((4, 3), 2)).expect("in order");
        replicas.apply(cat.left((5, 3), 2)).expect("in order");
        assert_eq!(
            replicas.apply(ann.left((7, 4), 1)),
            Err(OutOfOrder { latest: 5, got: 7 }),
            "the log's order is checked, not a room's ids"
        );

        let (frames, waiting) = written(&mut ann_sees);
        assert_eq!(waiting, Waiting::Open);
        assert_eq!(ids(&frames), [2, 3], "ops' events are not design's");
        assert_eq!(replicas.users(&design).len(), 1);
        assert_eq!(
            replicas.user_of(&design, &bob.token),
            Err(TokenError::Unknown),
            "bob has left ops, and was never in design"
        );

        let resumed = ann.open(&replicas, Some(1), 2);
        let replayed = parse_frames(&resumed.start.into_pieces());
        assert_eq!(ids(&replayed), [2, 3]);
        let resumed = ann.open(&replicas, Some(3), 3);
        assert_eq!(resumed.start, Start::Resume(Pieces::default()));
    }

    #[tokio::test]
    async fn a_join_waiting_for_its_event_gets_its_room_s_users_just_before_it() {
        let replicas = replicas(PresenceConfig::default()).0;
        let (ann, bob) = (Someone::new("ann"), Someone::new("bob"));
        let elsewhere = Someone::in_room("cy", room("ops"));
        replicas.apply(ann.joined(1)).expect("in order");
        replicas.apply(elsewhere.joined(2)).expect("in order");
        let before = replicas.expect_join(bob.user.clone());
        replicas.apply(bob.joined(3)).expect("in order");
        let users = before.await.expect("the join's event came");
        assert_eq!(people_in_json(&users), [ann.person()]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_reports_each_stream_that_closes_and_keeps_no_deadline() {
        let config = PresenceConfig {
            grace: Duration::from_secs(1),
            join_timeout: Duration::from_secs(1),
            ..PresenceConfig::default()
        };
        let (replicas, mut reports) = replicas(config);
        let ann = Someone::new("ann");
        replicas.apply(ann.joined(1)).expect("in order");
        let first = ann.open(&replicas, None, 7);
        let second = ann.open(&replicas, None, 8);
        let key = |stream| StreamKey {
            user: ann.user.clone(),
            stream,
        };
        assert_eq!(replicas.open_streams(), [key(7), key(8)]);
        drop(first);
        assert_eq!(reports.try_recv(), Ok(key(7)));
        drop(second);
        assert_eq!(reports.try_recv(), Ok(key(8)));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            replicas.users(&RoomName::lobby()).len(),
            1,
            "only the cluster takes her offline"
        );
        assert!(replicas.open_streams().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_room_emptied_by_the_log_is_dropped_after_its_resume_window() {
        let config = PresenceConfig {
            grace: Duration::from_secs(1),
            ..PresenceConfig::default()
        };
        let replicas = replicas(config).0;
        let ann = Someone::in_room("ann", room("design"));
        replicas.apply(ann.joined(1)).expect("in order");
        replicas.apply(ann.left(2, 1)).expect("in order");
        assert_eq!(replicas.count(), 1, "kept for its resume window");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(replicas.count(), 0);
    }

    #[tokio::test]
    async fn a_reload_sends_every_stream_the_new_state_and_ends_those_whose_user_is_gone() {
        let (replicas, mut reports) = replicas(PresenceConfig::default());
        let (ann, bob, cat) = (
            Someone::new("ann"),
            Someone::new("bob"),
            Someone::new("cat"),
        );
        let dee = Someone::in_room("dee", room("ops"));
        replicas.apply(ann.joined(1)).expect("in order");
        replicas.apply(bob.joined(2)).expect("in order");
        replicas.apply(dee.joined(3)).expect("in order");
        let mut ann_stream = ann.open(&replicas, None, 1);
        let mut bob_stream = bob.open(&replicas, None, 2);
        let mut dee_stream = dee.open(&replicas, None, 3);

        // The log began again: ann is back under a new id, bob and dee are
        // gone, cat came.
        replicas.reload(Reload {
            latest: 1_000_005,
            rooms: HashMap::from([(RoomName::lobby(), 1_000_005)]),
            users: vec![ann.online(1_000_003), cat.online(1_000_005)],
            history: vec![
                ann.joined(1_000_003),
                bob.left(1_000_004, 2),
                cat.joined(1_000_005),
            ],
        });
        let (frames, waiting) = written(&mut ann_stream);
        assert_eq!(waiting, Waiting::Open);
        assert_eq!(frames.len(), 1);
        assert_eq!(
            (frames[0].id, frames[0].event.as_str()),
            (1_000_005, "existing_users")
        );
        let users: Vec<_> = frames[0].data["users"]
            .as_array()
            .expect("a list")
            .iter()
            .map(person)
            .collect();
        assert_eq!(users, [ann.person(), cat.person()]);
        assert_eq!(written(&mut bob_stream), (vec![], Waiting::Left));
        assert_eq!(
            written(&mut dee_stream),
            (vec![], Waiting::Left),
            "a room the log no longer has"
        );

        // Ann's stream still counts here, and its close is reported; bob's
        // and dee's went with them.
        let ann_key = StreamKey {
            user: ann.user,
            stream: 1,
        };
        assert_eq!(replicas.open_streams(), std::slice::from_ref(&ann_key));
        drop(ann_stream);
        drop(bob_stream);
        drop(dee_stream);
        assert_eq!(reports.try_recv(), Ok(ann_key));
        assert_eq!(reports.try_recv(), Err(TryRecvError::Empty));

        // The new history replays; an id of the old log gets a snapshot.
        let resumed = cat.open(&replicas, Some(1_000_003), 3);
        let replayed = parse_frames(&resumed.start.into_pieces());
        assert_eq!(ids(&replayed), [1_000_004, 1_000_005]);
        let old = cat.open(&replicas, Some(2), 4);
        assert!(matches!(old.start, Start::Snapshot(_)));
        replicas
            .apply(cat.left(1_000_006, 1_000_005))
            .expect("in order");
    }
}
