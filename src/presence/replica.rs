//! A lobby kept as a replica of a log that a cluster numbers elsewhere: the
//! cluster feeds it each event in order ([`Replica::apply`]), or its whole
//! state after a gap ([`Replica::reload`]). The cluster numbers each stream it
//! opens here ([`Replica::open`]), and the replica reports each one that closes
//! ([`StreamKey`]), so that the cluster can count every user's streams on every
//! node and keep the deadlines; a replica keeps none itself. Streams are served
//! from it exactly as from a local lobby: the core is the same.

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use super::pieces::Pieces;
use tokio::sync::{mpsc, oneshot, watch};

use super::PresenceConfig;
use super::event::{Event, EventId, EventKind, UserView};
use super::history::History;
use super::lobby::{Kind, Lobby, Outlet, Shared, State};
use super::name::{Name, Token, TokenKey, UserId};
use super::observer::Observe;
use super::room::RoomName;
use super::roster::Roster;

/// A replica of the lobby a cluster keeps. Cheap to clone: every clone is a
/// handle to the same replica.
pub type Replica = Lobby<Replicated>;

/// What a replica adds to the shared part: where it reports its streams, and
/// how far it has applied the log.
#[derive(Debug)]
pub struct Replicated {
    /// Where each stream that closes on this node is reported, for the
    /// cluster to count.
    closed: mpsc::UnboundedSender<StreamKey>,
    /// The newest event applied, for those waiting until an event is.
    applied: watch::Sender<EventId>,
}

impl Kind for Replicated {
    /// The cluster's ids of the user's streams open on this node.
    type User = Vec<u64>;
    /// Joins waiting for their `new_user`: each gets the users list as it was
    /// just before.
    type State = HashMap<UserId, oneshot::Sender<Pieces>>;
    /// The cluster's id for the stream.
    type Stream = u64;

    fn opened(state: &mut State<Replicated>, seq: EventId, stream: u64) {
        if let Some(user) = state.users.get_mut(&seq) {
            user.own.push(stream);
        }
    }

    fn closed(
        shared: &Shared<Replicated>,
        mut state: MutexGuard<'_, State<Replicated>>,
        seq: EventId,
        stream: u64,
    ) {
        let Some(user) = state.users.get_mut(&seq) else {
            return;
        };
        user.own.retain(|&id| id != stream);
        let closed = StreamKey {
            user: user.id,
            stream,
        };
        // An error only means the cluster is gone (the lobby is stopping).
        let _ = shared.kind.closed.send(closed);
    }
}

/// One stream a cluster opened on this node: whose, and the cluster's id for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub user: UserId,
    pub stream: u64,
}

/// One change in a replica's log, as the cluster numbered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Joined {
        user: UserId,
        name: Name,
        token: TokenKey,
    },
    Left {
        user: UserId,
        name: Name,
        /// The id of the user's `new_user` event.
        joined: EventId,
    },
}

/// An event that does not follow the last one applied: the replica missed some.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("event {got} does not follow event {latest}")]
pub struct OutOfOrder {
    pub latest: EventId,
    pub got: EventId,
}

/// A replica's whole state, as the cluster has it: everyone online (with the id
/// of their `new_user` event), the newest event id, and the recent events.
#[derive(Debug, Default)]
pub struct Reload {
    pub latest: EventId,
    pub users: Vec<(EventId, UserId, Name, TokenKey)>,
    pub history: Vec<(EventId, Change)>,
}

/// A user as a replica knows them, for a cluster that must put them back.
#[derive(Debug, Clone)]
pub struct Known {
    pub user: UserId,
    pub name: Name,
    pub token: TokenKey,
}

impl Replica {
    /// Creates an empty replica: it keeps no deadlines and numbers nothing
    /// itself. It sends each stream it closes to `closed`.
    /// Its joins and leaves are the cluster's to observe; it tells `observer`
    /// only of resumes.
    pub fn new(
        config: PresenceConfig,
        closed: mpsc::UnboundedSender<StreamKey>,
        observer: impl Observe,
    ) -> Replica {
        let applied = watch::Sender::new(0);
        let outlet = Outlet::new(&config);
        Lobby::with(
            RoomName::lobby(),
            config,
            Arc::new(observer),
            Replicated { closed, applied },
            HashMap::new(),
            outlet,
        )
    }

    /// Applies the next event of the shared log: `id` must follow the newest
    /// one applied, or nothing changes and the cluster must [`reload`](Self::reload).
    pub fn apply(&self, id: EventId, change: Change) -> Result<(), OutOfOrder> {
        let mut state = self.shared.lock();
        if id != state.latest + 1 {
            return Err(OutOfOrder {
                latest: state.latest,
                got: id,
            });
        }
        match change {
            Change::Joined { user, name, token } => {
                // A join made on this node, waiting for its event (`expect_join`).
                if let Some(waiting) = state.own.remove(&user) {
                    let _ = waiting.send(state.users_json());
                }
                state.publish(EventKind::NewUser, user, &name);
                state.add(id, user, name, token, Vec::new());
            }
            Change::Left { user, name, joined } => {
                if state
                    .users
                    .get(&joined)
                    .is_some_and(|known| known.id == user)
                {
                    state.remove(joined);
                } else {
                    // Not known here (it cannot happen in order), but the
                    // event is still the log's: every stream gets it.
                    state.publish(EventKind::DisconnectUser, user, &name);
                }
            }
        }
        drop(state);
        self.shared.kind.applied.send_replace(id);
        Ok(())
    }

    /// Replaces everything with the cluster's state. Every open stream gets
    /// a fresh `existing_users` and goes on (or ends, if its user is gone);
    /// users who are still online keep their streams here. Joins waiting for
    /// their event are let go.
    pub fn reload(&self, reload: Reload) {
        let mut state = self.shared.lock();
        let state = &mut *state;
        let mut streams: HashMap<TokenKey, (u8, Vec<u64>)> = state
            .users
            .values_mut()
            .filter(|user| user.streams > 0)
            .map(|user| {
                let ids = std::mem::take(&mut user.own);
                (user.token, (user.streams, ids))
            })
            .collect();
        state.users.clear();
        state.tokens.clear();
        state.own.clear();
        state.roster = Roster::default();
        state.history = History::new(self.shared.config.history_len());
        for (id, change) in reload.history {
            let (kind, user, name) = match change {
                Change::Joined { user, name, .. } => (EventKind::NewUser, user, name),
                Change::Left { user, name, .. } => (EventKind::DisconnectUser, user, name),
            };
            state
                .history
                .push(Arc::new(Event::new(&state.room, id, kind, user, &name)));
        }
        state.latest = reload.latest;
        for (seq, user, name, token) in reload.users {
            let (count, ids) = streams.remove(&token).unwrap_or_default();
            state.add(seq, user, name, token, ids);
            if let Some(user) = state.users.get_mut(&seq) {
                user.streams = count;
            }
        }
        let users = state.users_json();
        let reset = Event::reset(&state.room, state.latest, users.clone());
        state.outlet.send(reset);
        self.shared.kind.applied.send_replace(state.latest);
    }

    /// The users list as it is just before `user`'s `new_user` is applied.
    /// Ask before the join is sent to the cluster; the receiver fails if the
    /// replica is reloaded first.
    pub fn expect_join(&self, user: UserId) -> oneshot::Receiver<Pieces> {
        let (sender, receiver) = oneshot::channel();
        self.shared.lock().own.insert(user, sender);
        receiver
    }

    /// Forgets a join that [`expect_join`](Self::expect_join) waited for.
    pub fn forget_join(&self, user: UserId) {
        self.shared.lock().own.remove(&user);
    }

    /// The user holding `token`, as far as this lobby knows.
    pub fn user_of(&self, token: &Token) -> Option<UserView> {
        let key = token.key();
        let state = self.shared.lock();
        let seq = state.tokens.get(&key)?;
        state
            .users
            .get(seq)
            .map(|user| UserView::new(user.id, &user.name))
    }

    /// Every stream the cluster opened on this node that is open now.
    pub fn open_streams(&self) -> Vec<StreamKey> {
        let state = self.shared.lock();
        state
            .users
            .values()
            .flat_map(|user| {
                user.own.iter().map(|&stream| StreamKey {
                    user: user.id,
                    stream,
                })
            })
            .collect()
    }

    /// Everyone this lobby knows to be online, oldest first.
    pub fn known(&self) -> Vec<Known> {
        let state = self.shared.lock();
        state
            .users
            .values()
            .map(|user| Known {
                user: user.id,
                name: user.name.clone(),
                token: user.token,
            })
            .collect()
    }

    /// Waits (at most `patience`) until event `id` has been applied; says
    /// whether it was.
    pub async fn applied(&self, id: EventId, patience: Duration) -> bool {
        let mut applied = self.shared.kind.applied.subscribe();
        tokio::time::timeout(patience, applied.wait_for(|&latest| latest >= id))
            .await
            .is_ok_and(|result| result.is_ok())
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

    struct Someone {
        user: UserId,
        name: Name,
        token: Token,
    }

    impl Someone {
        fn new(raw: &str) -> Someone {
            Someone {
                user: UserId::random(),
                name: name(raw),
                token: Token::random(),
            }
        }

        fn joined(&self) -> Change {
            Change::Joined {
                user: self.user,
                name: self.name.clone(),
                token: self.token.key(),
            }
        }

        fn left(&self, joined: EventId) -> Change {
            Change::Left {
                user: self.user,
                name: self.name.clone(),
                joined,
            }
        }

        fn person(&self) -> (String, String) {
            (self.user.to_string(), self.name.to_string())
        }
    }

    fn replica(config: PresenceConfig) -> (Replica, mpsc::UnboundedReceiver<StreamKey>) {
        let (closed, reports) = mpsc::unbounded_channel();
        (Replica::new(config, closed, Unobserved), reports)
    }

    /// What a stream would write now, frame by frame, and whether it goes on.
    fn written(subscription: &mut Subscription) -> (Vec<Frame>, Waiting) {
        let mut batch = Vec::new();
        let waiting = subscription.read_waiting(&mut batch, 1024);
        (parse_frames(&batch.concat()), waiting)
    }

    #[tokio::test]
    async fn events_are_applied_with_the_cluster_s_ids_and_only_in_order() {
        let replica = replica(PresenceConfig::default()).0;
        let (ann, bob) = (Someone::new("ann"), Someone::new("bob"));
        let mut watcher = replica.events();
        replica.apply(1, ann.joined()).expect("the first event");
        assert_eq!(
            replica.apply(3, bob.joined()),
            Err(OutOfOrder { latest: 1, got: 3 })
        );
        assert_eq!(
            replica.users().len(),
            1,
            "an event out of order changes nothing"
        );
        replica.apply(2, bob.joined()).expect("the next event");
        replica.apply(3, ann.left(1)).expect("the next event");
        let ids: Vec<EventId> = std::iter::from_fn(|| watcher.try_recv().ok())
            .map(|event| event.id)
            .collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(
            replica.user_of(&bob.token).map(|view| view.id),
            Some(bob.user)
        );
        assert_eq!(replica.user_of(&ann.token), None, "ann left");
        assert!(replica.applied(3, Duration::ZERO).await);
    }

    #[tokio::test]
    async fn a_join_waiting_for_its_event_gets_the_users_just_before_it() {
        let replica = replica(PresenceConfig::default()).0;
        let (ann, bob) = (Someone::new("ann"), Someone::new("bob"));
        replica.apply(1, ann.joined()).expect("in order");
        let before = replica.expect_join(bob.user);
        replica.apply(2, bob.joined()).expect("in order");
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
        let (replica, mut reports) = replica(config);
        let ann = Someone::new("ann");
        replica.apply(1, ann.joined()).expect("in order");
        let first = replica.open(&ann.token, None, 7).expect("known");
        let second = replica.open(&ann.token, None, 8).expect("known");
        let key = |stream| StreamKey {
            user: ann.user,
            stream,
        };
        assert_eq!(replica.open_streams(), [key(7), key(8)]);
        drop(first);
        assert_eq!(reports.try_recv(), Ok(key(7)));
        drop(second);
        assert_eq!(reports.try_recv(), Ok(key(8)));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            replica.users().len(),
            1,
            "only the cluster takes her offline"
        );
        assert!(replica.open_streams().is_empty());
    }

    #[tokio::test]
    async fn a_reload_sends_every_stream_the_new_state_and_ends_those_whose_user_is_gone() {
        let (replica, mut reports) = replica(PresenceConfig::default());
        let (ann, bob, cat) = (
            Someone::new("ann"),
            Someone::new("bob"),
            Someone::new("cat"),
        );
        replica.apply(1, ann.joined()).expect("in order");
        replica.apply(2, bob.joined()).expect("in order");
        let mut ann_stream = replica.open(&ann.token, None, 1).expect("known");
        let mut bob_stream = replica.open(&bob.token, None, 2).expect("known");

        // The log began again: ann is back under a new id, bob is gone, cat came.
        replica.reload(Reload {
            latest: 1_000_005,
            users: vec![
                (1_000_003, ann.user, ann.name.clone(), ann.token.key()),
                (1_000_005, cat.user, cat.name.clone(), cat.token.key()),
            ],
            history: vec![
                (1_000_003, ann.joined()),
                (1_000_004, bob.left(2)),
                (1_000_005, cat.joined()),
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

        // Ann's stream still counts here, and its close is reported; bob's
        // went with him.
        let ann_key = StreamKey {
            user: ann.user,
            stream: 1,
        };
        assert_eq!(replica.open_streams(), [ann_key]);
        drop(ann_stream);
        drop(bob_stream);
        assert_eq!(reports.try_recv(), Ok(ann_key));
        assert_eq!(reports.try_recv(), Err(TryRecvError::Empty));

        // The new history replays; an id of the old log gets a snapshot.
        let resumed = replica.open(&cat.token, Some(1_000_003), 3).expect("known");
        let replayed: Vec<EventId> = parse_frames(&resumed.start.into_pieces())
            .iter()
            .map(|frame| frame.id)
            .collect();
        assert_eq!(replayed, [1_000_004, 1_000_005]);
        let old = replica.open(&cat.token, Some(2), 4).expect("known");
        assert!(matches!(old.start, Start::Snapshot(_)));
        replica
            .apply(1_000_006, cat.left(1_000_005))
            .expect("in order");
    }
}
