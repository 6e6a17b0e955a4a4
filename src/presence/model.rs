//! A model-based property test of the presence core: random runs of joins,
//! subscribes, closes, reloads and retries with `Last-Event-ID`, leaves, bursts
//! and time passing, checked after every step against a plain model of the rules
//! and against what each stream's client would show. Runs on tokio's paused clock.

use std::collections::HashMap;

use proptest::prelude::*;
use proptest::sample::Index;
use tokio::time::Instant;

use super::frames::{Frame, Person, parse_frames, people, people_in_json, person};
use super::*;

// ---------------------------------------------------------------------------
// The lobby under test
// ---------------------------------------------------------------------------

const GRACE: Duration = Duration::from_secs(5);
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
const MS: Duration = Duration::from_millis(1);
/// Small, so that a short run outgrows it and retries fall back to snapshots.
const HISTORY: usize = 16;
/// Small, so that a burst leaves slow streams behind and they must resume.
const BACKLOG: usize = 8;
/// Small, so that runs reach it; the observer counts as one.
const MAX_USERS: usize = 8;
/// How many frames a stream takes per write: small, so batches split.
const BATCH: usize = 3;
/// How many events replay can reach back: the history, which `Presence::new`
/// keeps as configured since it is above the backlog.
const KEPT: EventId = HISTORY as EventId;
/// Names repeat on purpose: two users of one name are told apart by id.
const NAMES: [&str; 4] = ["alice", "bob", "alice", "<b>山田</b> 🦀"];

fn lobby() -> Presence {
    Presence::new(PresenceConfig {
        grace: GRACE,
        join_timeout: JOIN_TIMEOUT,
        max_users: MAX_USERS,
        history: HISTORY,
        backlog: BACKLOG,
    })
}

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// Someone joins (refused while the lobby is full).
    Join(Index),
    /// A user opens a stream.
    Subscribe(Who, LastId),
    /// An open stream closes, as when a tab closes or curl is stopped.
    Close(Index),
    /// An open stream drops and its browser reopens it at once with the last id it saw.
    Reload(Index),
    /// A stream closed earlier is retried now with the last id it saw, as a
    /// browser does after a network cut: within grace or not.
    Retry(Index),
    /// A user leaves.
    Leave(Who),
    /// So many join-and-leave at once that slow streams fall behind the backlog.
    Burst(u8),
    /// Time passes: below, at and beyond the grace and the join timeout.
    Advance(Duration),
}

/// Which user an operation is about. Never the observer, who stays throughout.
#[derive(Debug, Clone, Copy)]
enum Who {
    /// One of those online (if anyone is), so that streams pile up to the limit.
    Online(Index),
    /// Anyone who ever joined, perhaps gone by now (their token is then unknown).
    Anyone(Index),
}

/// The `Last-Event-ID` of a first subscription, which has no view to resume.
#[derive(Debug, Clone, Copy)]
enum LastId {
    None,
    /// "From the first event": a resume while the history still holds event 1.
    Zero,
    /// An id this server never gave out: a snapshot.
    Next,
    Max,
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(MS),
        Just(GRACE - MS),
        Just(GRACE),
        Just(GRACE + MS),
        Just(JOIN_TIMEOUT - MS),
        Just(JOIN_TIMEOUT),
        (1..12_000u64).prop_map(Duration::from_millis),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let last_id = prop_oneof![
        4 => Just(LastId::None),
        2 => Just(LastId::Zero),
        1 => Just(LastId::Next),
        1 => Just(LastId::Max),
    ];
    let who = prop_oneof![
        3 => any::<Index>().prop_map(Who::Online),
        1 => any::<Index>().prop_map(Who::Anyone),
    ];
    prop_oneof![
        4 => any::<Index>().prop_map(Op::Join),
        5 => (who.clone(), last_id).prop_map(|(user, last)| Op::Subscribe(user, last)),
        2 => any::<Index>().prop_map(Op::Close),
        2 => any::<Index>().prop_map(Op::Reload),
        2 => any::<Index>().prop_map(Op::Retry),
        2 => who.prop_map(Op::Leave),
        1 => (1..=12u8).prop_map(Op::Burst),
        4 => duration().prop_map(Op::Advance),
    ]
}

// ---------------------------------------------------------------------------
// Frames, as a client reads them
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// The model: who should be online, and every event so far
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct User {
    joined: Joined,
    online: bool,
    streams: u8,
    /// While online with no stream open: when they go offline.
    deadline: Option<Instant>,
}

impl User {
    fn person(&self) -> Person {
        (self.joined.id.to_string(), self.joined.name.to_string())
    }
}

/// The reference: users in join order (the observer first), and the log of
/// every event, the event with id `n` at `log[n - 1]`.
#[derive(Debug, Default)]
struct Model {
    users: Vec<User>,
    /// A user's index, by their id as the wire spells it.
    by_id: HashMap<String, usize>,
    log: Vec<(EventKind, usize)>,
}

impl Model {
    fn latest(&self) -> EventId {
        EventId::try_from(self.log.len()).expect("a small log")
    }

    fn event(&self, id: EventId) -> Option<(EventKind, usize)> {
        let index = usize::try_from(id.checked_sub(1)?).ok()?;
        self.log.get(index).copied()
    }

    fn online(&self) -> Vec<Person> {
        self.users
            .iter()
            .filter(|u| u.online)
            .map(User::person)
            .collect()
    }

    fn online_count(&self) -> usize {
        self.users.iter().filter(|u| u.online).count()
    }

    fn open_streams(&self) -> usize {
        self.users
            .iter()
            .filter(|u| u.online)
            .map(|u| usize::from(u.streams))
            .sum()
    }

    fn joined(&mut self, joined: Joined) -> usize {
        let index = self.users.len();
        self.by_id.insert(joined.id.to_string(), index);
        self.users.push(User {
            joined,
            online: true,
            streams: 0,
            deadline: Some(Instant::now() + JOIN_TIMEOUT),
        });
        index
    }

    fn stream_opened(&mut self, user: usize) {
        let user = &mut self.users[user];
        user.streams += 1;
        user.deadline = None;
    }

    fn stream_closed(&mut self, user: usize) {
        let user = &mut self.users[user];
        if user.online {
            user.streams -= 1;
            if user.streams == 0 {
                user.deadline = Some(Instant::now() + GRACE);
            }
        }
    }

    fn went_offline(&mut self, user: usize) {
        let user = &mut self.users[user];
        user.online = false;
        user.streams = 0;
        user.deadline = None;
    }

    /// Those whose deadline has come: the code takes a user offline at exactly
    /// `grace` (or `join_timeout`), not a tick later.
    fn due(&self, now: Instant) -> Vec<usize> {
        (0..self.users.len())
            .filter(|&i| self.users[i].online && self.users[i].deadline.is_some_and(|d| d <= now))
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Clients: what each stream's page shows, from its own frames only
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Client {
    user: usize,
    subscription: Subscription,
    /// The page's list: the snapshot replaces it, `new_user` appends,
    /// `disconnect_user` removes.
    view: Vec<Person>,
    /// The id of the last frame received: what the browser sends as `Last-Event-ID`.
    last: EventId,
}

/// A stream closed by its client, which may retry it later.
#[derive(Debug)]
struct Closed {
    user: usize,
    view: Vec<Person>,
    last: EventId,
}

impl Client {
    /// Applies one event frame, which must be the next in the lobby's log.
    fn receive(&mut self, frame: &Frame, model: &Model) -> Result<(), TestCaseError> {
        prop_assert_eq!(frame.id, self.last + 1, "ids run on with no gap or repeat");
        let Some((kind, user)) = model.event(frame.id) else {
            return Err(TestCaseError::fail(format!(
                "event {} never happened",
                frame.id
            )));
        };
        prop_assert_eq!(frame.event.as_str(), kind.as_str(), "event {}", frame.id);
        let who = person(&frame.data);
        prop_assert_eq!(&who, &model.users[user].person(), "event {}", frame.id);
        match kind {
            EventKind::NewUser => {
                prop_assert!(!self.view.contains(&who), "{:?} announced twice", who);
                self.view.push(who);
            }
            EventKind::DisconnectUser => {
                prop_assert!(self.view.contains(&who), "{:?} removed while absent", who);
                self.view.retain(|p| p != &who);
            }
            EventKind::Reset | EventKind::Revoked | EventKind::UserUpdated => {
                return Err(TestCaseError::fail("these runs make no such event"));
            }
        }
        self.last = frame.id;
        Ok(())
    }

    /// Reads every waiting event as the fan-out does, a batch at a time.
    fn read(&mut self) -> (Vec<Frame>, Waiting) {
        let mut frames = Vec::new();
        loop {
            let mut batch = Vec::new();
            let waiting = self.subscription.read_waiting(&mut batch, BATCH);
            frames.extend(batch.iter().flat_map(parse_frames));
            if waiting != Waiting::Open || batch.len() < BATCH {
                return (frames, waiting);
            }
        }
    }
}

/// Lets the expiry task run after the clock moved or a deadline was added.
async fn settle() {
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
}

// ---------------------------------------------------------------------------
// A run: the lobby, the model and the clients, stepped together
// ---------------------------------------------------------------------------

struct Run {
    presence: Presence,
    model: Model,
    /// A stream that stays open from start to end and reads every event at once.
    observer: Client,
    /// Every frame the observer received, for the once-per-user count.
    observed: Vec<Frame>,
    /// The observer's frames of the current step, not yet checked.
    step: Vec<Frame>,
    clients: Vec<Client>,
    closed: Vec<Closed>,
}

impl Run {
    fn new() -> Result<Run, TestCaseError> {
        let presence = lobby();
        let mut model = Model::default();
        let joined = presence.join(name(NAMES[0])).expect("room to join");
        model.joined(joined);
        model.log.push((EventKind::NewUser, 0));
        let subscription = presence
            .subscribe(&model.users[0].joined.token, Some(0))
            .expect("the observer is online");
        model.stream_opened(0);
        let mut observer = Client {
            user: 0,
            subscription,
            view: Vec::new(),
            last: 0,
        };
        let replay = parse_frames(&observer.subscription.take_start());
        for frame in &replay {
            observer.receive(frame, &model)?;
        }
        Ok(Run {
            presence,
            model,
            observer,
            observed: replay,
            step: Vec::new(),
            clients: Vec::new(),
            closed: Vec::new(),
        })
    }

    fn pick_user(&self, who: Who) -> Option<usize> {
        let (index, candidates): (Index, Vec<usize>) = match who {
            Who::Online(index) => (
                index,
                (1..self.model.users.len())
                    .filter(|&user| self.model.users[user].online)
                    .collect(),
            ),
            Who::Anyone(index) => (index, (1..self.model.users.len()).collect()),
        };
        (!candidates.is_empty()).then(|| candidates[index.index(candidates.len())])
    }

    async fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let mut expected = Vec::new();
        let mut any_order = false;
        match *op {
            Op::Join(name) => {
                self.join(NAMES[name.index(NAMES.len())], &mut expected)?;
            }
            Op::Subscribe(user, last_id) => {
                if let Some(user) = self.pick_user(user) {
                    let after = match last_id {
                        LastId::None => None,
                        LastId::Zero => Some(0),
                        LastId::Next => Some(self.model.latest() + 1),
                        LastId::Max => Some(EventId::MAX),
                    };
                    self.open(user, after, Vec::new())?;
                }
            }
            Op::Close(client) => {
                if !self.clients.is_empty() {
                    let client = self.clients.remove(client.index(self.clients.len()));
                    let closed = self.close(client);
                    self.closed.push(closed);
                }
            }
            Op::Reload(client) => {
                if !self.clients.is_empty() {
                    let client = self.clients.remove(client.index(self.clients.len()));
                    let Closed { user, view, last } = self.close(client);
                    let reopened = self.open(user, Some(last), view)?;
                    prop_assert!(reopened, "a stream reopened at once is accepted");
                }
            }
            Op::Retry(closed) => {
                if !self.closed.is_empty() {
                    let Closed { user, view, last } =
                        self.closed.remove(closed.index(self.closed.len()));
                    self.open(user, Some(last), view)?;
                }
            }
            Op::Leave(user) => {
                if let Some(user) = self.pick_user(user) {
                    self.leave(user, &mut expected)?;
                }
            }
            Op::Burst(count) => {
                for i in 0..count {
                    if let Some(user) =
                        self.join(NAMES[usize::from(i) % NAMES.len()], &mut expected)?
                    {
                        self.leave(user, &mut expected)?;
                    }
                    // The observer keeps up; the other streams read only after the step.
                    self.read_observer()?;
                }
            }
            Op::Advance(by) => {
                tokio::time::advance(by).await;
                any_order = true;
                for user in self.model.due(Instant::now()) {
                    self.model.went_offline(user);
                    expected.push((EventKind::DisconnectUser, user));
                }
            }
        }
        settle().await;
        self.check_events(expected, any_order)?;
        self.check_clients()?;
        self.check_lobby()
    }

    /// Joins; `None` when the lobby is full, which the model must agree with.
    fn join(
        &mut self,
        raw: &str,
        expected: &mut Vec<(EventKind, usize)>,
    ) -> Result<Option<usize>, TestCaseError> {
        let before = self.model.online();
        match self.presence.join(name(raw)) {
            Ok(joined) => {
                prop_assert!(before.len() < MAX_USERS, "joined a full lobby");
                prop_assert_eq!(people_in_json(&joined.users), before, "the join reply");
                let user = self.model.joined(joined);
                expected.push((EventKind::NewUser, user));
                Ok(Some(user))
            }
            Err(JoinError::Full(online)) => {
                prop_assert_eq!(before.len(), MAX_USERS, "refused as full");
                prop_assert_eq!(online, MAX_USERS);
                Ok(None)
            }
            Err(JoinError::Unavailable) => Err(TestCaseError::fail("a local lobby has no store")),
            Err(JoinError::TooManyRooms(_)) => Err(TestCaseError::fail("one lobby is one room")),
        }
    }

    fn leave(
        &mut self,
        user: usize,
        expected: &mut Vec<(EventKind, usize)>,
    ) -> Result<(), TestCaseError> {
        let left = self.presence.leave(&self.model.users[user].joined.token);
        if self.model.users[user].online {
            prop_assert_eq!(left, Ok(self.model.users[user].joined.id.clone()));
            self.model.went_offline(user);
            expected.push((EventKind::DisconnectUser, user));
        } else {
            prop_assert_eq!(left, Err(TokenError::Unknown), "leaving while offline");
        }
        Ok(())
    }

    /// Opens a stream for `user` as a client holding `view` after event
    /// `after` would. Whether it is accepted, and whether it resumes or starts
    /// with a snapshot, must be what the model says. Returns whether it opened.
    fn open(
        &mut self,
        user: usize,
        after: Option<EventId>,
        view: Vec<Person>,
    ) -> Result<bool, TestCaseError> {
        let result = self
            .presence
            .subscribe(&self.model.users[user].joined.token, after);
        let model = &self.model.users[user];
        if !model.online {
            prop_assert_eq!(result.err(), Some(TokenError::Unknown), "offline user");
            return Ok(false);
        }
        if model.streams == MAX_STREAMS_PER_USER {
            prop_assert_eq!(result.err(), Some(TokenError::TooManyStreams));
            return Ok(false);
        }
        let Ok(mut subscription) = result else {
            return Err(TestCaseError::fail(format!("refused: {result:?}")));
        };
        self.model.stream_opened(user);
        let latest = self.model.latest();
        let held = after.is_some_and(|after| after <= latest && after + KEPT >= latest);
        let resumed = matches!(subscription.start, Start::Resume(_));
        prop_assert_eq!(resumed, held, "resume after {:?}, latest {}", after, latest);
        let frames = parse_frames(&subscription.take_start());
        let mut client = Client {
            user,
            subscription,
            view,
            last: after.unwrap_or(0),
        };
        if resumed {
            for frame in &frames {
                client.receive(frame, &self.model)?;
            }
            prop_assert_eq!(client.last, latest, "the replay reaches the latest event");
        } else {
            prop_assert_eq!(frames.len(), 1, "a snapshot is one frame");
            let snapshot = &frames[0];
            prop_assert_eq!(snapshot.event.as_str(), "existing_users");
            prop_assert_eq!(snapshot.id, latest, "the snapshot's id");
            let users = snapshot.data["users"].as_array().expect("a users array");
            client.view = users.iter().map(person).collect();
            client.last = snapshot.id;
        }
        prop_assert_eq!(&client.view, &self.model.online(), "the view as it opens");
        self.clients.push(client);
        Ok(true)
    }

    fn close(&mut self, client: Client) -> Closed {
        let Client {
            user,
            subscription,
            view,
            last,
        } = client;
        drop(subscription);
        self.model.stream_closed(user);
        Closed { user, view, last }
    }

    fn read_observer(&mut self) -> Result<(), TestCaseError> {
        let (frames, waiting) = self.observer.read();
        prop_assert_eq!(waiting, Waiting::Open, "the observer keeps up and stays");
        self.step.extend(frames);
        Ok(())
    }

    /// The observer saw exactly the events the model expected, numbered on
    /// from the last; they join the log that every other stream is held to.
    fn check_events(
        &mut self,
        mut expected: Vec<(EventKind, usize)>,
        any_order: bool,
    ) -> Result<(), TestCaseError> {
        self.read_observer()?;
        let frames = std::mem::take(&mut self.step);
        let mut actual = Vec::new();
        for (frame, id) in frames.iter().zip(self.model.latest() + 1..) {
            prop_assert_eq!(frame.id, id, "ids run on with no gap or repeat");
            let kind = match frame.event.as_str() {
                "new_user" => EventKind::NewUser,
                "disconnect_user" => EventKind::DisconnectUser,
                other => return Err(TestCaseError::fail(format!("event {other:?}"))),
            };
            let Some(&user) = self.model.by_id.get(&person(&frame.data).0) else {
                return Err(TestCaseError::fail(format!("unknown user in {frame:?}")));
            };
            actual.push((kind, user));
        }
        let in_order = actual.clone();
        if any_order {
            // Users expiring at one instant may be announced in any order.
            expected.sort_by_key(|&(_, user)| user);
            actual.sort_by_key(|&(_, user)| user);
        }
        prop_assert_eq!(actual, expected, "the events of this step");
        self.model.log.extend(in_order);
        for frame in &frames {
            self.observer.receive(frame, &self.model)?;
        }
        self.observed.extend(frames);
        Ok(())
    }

    /// Every stream reads what waits for it: it must lag exactly when it fell
    /// more than the backlog behind, end exactly when its user left, and
    /// otherwise show who is online.
    fn check_clients(&mut self) -> Result<(), TestCaseError> {
        let latest = self.model.latest();
        let online = self.model.online();
        let capacity = EventId::try_from(BACKLOG.next_power_of_two()).expect("small");
        let mut lagged = Vec::new();
        for mut client in std::mem::take(&mut self.clients) {
            let behind = latest - client.last;
            let (frames, waiting) = client.read();
            for frame in &frames {
                client.receive(frame, &self.model)?;
            }
            let user = &self.model.users[client.user];
            prop_assert_eq!(
                waiting == Waiting::Lagged,
                behind > capacity,
                "lagged, {} events behind",
                behind
            );
            prop_assert_eq!(
                waiting == Waiting::Left,
                !user.online,
                "ends as its user left"
            );
            match waiting {
                Waiting::Open => {
                    prop_assert_eq!(&client.view, &online, "a stream's view");
                    self.clients.push(client);
                }
                // Its own disconnect_user was its last frame; the stream ends.
                Waiting::Left => {
                    prop_assert!(!client.view.contains(&user.person()));
                    prop_assert_eq!(
                        frames.last().map(|f| (f.event.as_str(), person(&f.data))),
                        Some(("disconnect_user", user.person()))
                    );
                }
                Waiting::Lagged => lagged.push(client),
            }
        }
        // The browser reconnects at once with the last id it received.
        for client in lagged {
            let Closed { user, view, last } = self.close(client);
            let reopened = self.open(user, Some(last), view)?;
            prop_assert!(reopened, "a lagged stream reopens");
        }
        Ok(())
    }

    fn check_lobby(&mut self) -> Result<(), TestCaseError> {
        let online = self.model.online();
        prop_assert_eq!(people(&self.presence.users()), online.clone(), "users()");
        prop_assert_eq!(people_in_json(&self.presence.users_json()), online.clone());
        prop_assert_eq!(&self.observer.view, &online, "the observer's view");
        let stats = self.presence.stats();
        prop_assert_eq!(stats.users, online.len());
        prop_assert_eq!(stats.streams, self.model.open_streams());
        prop_assert_eq!(
            stats.streams,
            self.clients.len() + 1,
            "clients and observer"
        );
        prop_assert_eq!(stats.latest_event, self.model.latest());
        prop_assert_eq!(stats.history, HISTORY.min(self.model.log.len()));
        Ok(())
    }

    /// Everyone's streams close and time passes: everyone goes, each announced
    /// once, and the lobby holds no user and no stream.
    async fn finish(mut self) -> Result<(), TestCaseError> {
        for client in std::mem::take(&mut self.clients) {
            self.close(client);
        }
        self.closed.clear();
        self.apply(&Op::Advance(JOIN_TIMEOUT.max(GRACE))).await?;
        prop_assert_eq!(self.model.online_count(), 1, "only the observer is left");

        for (user, model) in self.model.users.iter().enumerate().skip(1) {
            let id = model.joined.id.to_string();
            let seen: Vec<&str> = self
                .observed
                .iter()
                .filter(|f| f.data["id"] == id.as_str())
                .map(|f| f.event.as_str())
                .collect();
            prop_assert_eq!(
                seen,
                vec!["new_user", "disconnect_user"],
                "user {} ({}) as the observer saw them",
                user,
                id
            );
        }

        let mut tail = self.presence.events();
        let observer = self.model.users[0].joined.id.clone();
        drop(self.observer);
        tokio::time::advance(GRACE).await;
        settle().await;
        let last = tail.try_recv().expect("the observer's disconnect_user");
        prop_assert_eq!(
            (last.kind, last.user.clone()),
            (EventKind::DisconnectUser, observer)
        );
        prop_assert!(tail.try_recv().is_err(), "nothing after it");

        let stats = self.presence.stats();
        prop_assert_eq!((stats.users, stats.streams), (0, 0), "{:?}", stats);
        prop_assert!(stats.history <= HISTORY, "the history stays bounded");
        prop_assert!(self.presence.users().is_empty());
        prop_assert_eq!(&self.presence.users_json().to_bytes()[..], b"[]");
        Ok(())
    }
}

fn name(raw: &str) -> Name {
    Name::parse(raw).expect("a valid name")
}

/// Runs `ops` on a fresh lobby on a paused clock, checking after every step.
fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let mut run = Run::new()?;
        for (step, op) in ops.iter().enumerate() {
            run.apply(op)
                .await
                .map_err(|e| TestCaseError::fail(format!("step {step}, {op:?}: {e}")))?;
        }
        run.finish()
            .await
            .map_err(|e| TestCaseError::fail(format!("at the end: {e}")))
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        // A failure found here is to be kept as a plain test in this file,
        // not in a regressions file beside it.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_run_of_joins_streams_leaves_and_time_keeps_every_view_true(
        ops in prop::collection::vec(op(), 1..80)
    ) {
        run(&ops)?;
    }
}
