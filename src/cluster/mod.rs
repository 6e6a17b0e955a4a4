//! Cluster mode (`--redis`): several lobby nodes, one set of rooms. Redis
//! holds the truth; each node keeps a copy of every room in its [`Replicas`]
//! (the same core as a single process's rooms, fed the log instead of
//! deciding) and serves its streams from there, exactly as a single process
//! does.
//!
//! - **One log, for every room.** Every join and leave is a Lua script that
//!   numbers the entry (`INCR lobby:seq`) and appends it to a Redis stream
//!   whose entry id is that number (`XADD lobby:log <n>-0`, trimmed to the
//!   history), with its room and its id in the room (one past the room's
//!   last, as in one process; a room with no one starts past every id sent).
//!   So every node applies every room's events in one order, an event id is
//!   the same integer on every node, and a stream that resumes on another
//!   node with `Last-Event-ID` gets a replay from that node's copy of the
//!   same history.
//! - **People and memberships.** Each join is a membership (`lobby:users`,
//!   keyed by its own id, which the streams, deadlines and nodes count); a
//!   signed join names its person (`sub`), and `lobby:people` counts each
//!   person's memberships in a room. The first announces them (`new_user`),
//!   later ones and those that end while others stay are entries with no
//!   event (`member_added`, `member_left`: the nodes learn the token, or end
//!   its streams), and the last sends `disconnect_user`. So one person on two
//!   nodes is one entry, and leaves once, when both are gone.
//! - **Rooms are counted in Redis** (`lobby:rooms`), so `--max-users` (per
//!   room) and `--max-rooms` hold across nodes; a node's replica of a room is
//!   made by the room's first event and dropped once it has been empty for
//!   its resume window, as in one process.
//! - **Each node follows it** (`XREAD BLOCK`) and applies each event to its
//!   replica, which fans it out. A gap (the node fell behind the trimmed log, or
//!   the log began again) reloads the replica, ending its streams; their
//!   clients reconnect and get a snapshot.
//! - **Deadlines live in Redis.** A node reports when a user's first stream on
//!   it opens and their last one closes; a user no node streams to gets a
//!   deadline. Every node reaps due deadlines with one script, so each
//!   `disconnect_user` is written exactly once, whichever node gets there first.
//! - **Nodes heartbeat.** A node whose heartbeat is older than `--node-timeout`
//!   is taken for dead: its users start grace from its last heartbeat, and its
//!   keys are deleted.
//! - **Redis away.** Streams stay open and are served from the replica; joins
//!   and leaves get 503. When Redis is back, the node reports everything it
//!   holds again; if the log is gone, it puts back the users it knew (they start
//!   grace) and begins following the new log.

mod store;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::observe::Observer;
use crate::presence::{
    Event, EventId, JoinError, Joined, LeaveReason, MAX_STREAMS_PER_USER, Name, Observe, Pieces,
    PresenceConfig, Replicas, RoomCount, RoomName, Stats, StreamKey, Subscription, Token,
    TokenError, UserId, UserState, UserView,
};
use store::{Joining, Limits, Member, Opening, Store, Updating};

/// How long a request waits for this node to apply an event it knows exists.
const CATCH_UP: Duration = Duration::from_secs(2);

/// How long a read first asks Redis for the newest event id, so that it sees
/// every write another node finished; past this it answers from the replica.
const SYNC_READ: Duration = Duration::from_millis(250);

/// How long the log reader blocks on Redis for new events at a time.
const READ_BLOCK: Duration = Duration::from_secs(1);

/// Waits between attempts to reach Redis: from the first to the last, doubling.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub presence: PresenceConfig,
    /// A join that would make one more room than this is refused.
    pub max_rooms: usize,
    pub node_timeout: Duration,
    /// Told of each join and leave this node makes: each is told once, by
    /// the node that made it, never by the replicas that apply it.
    pub observer: Observer,
}

/// One node of a lobby shared through Redis. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    shared: Arc<Shared>,
}

struct Shared {
    /// This node's copy of every room, which serves its streams.
    presence: Replicas,
    store: Store,
    config: ClusterConfig,
    node: String,
    /// Since when this node has been in step with Redis; `None` while it is not.
    in_step: Mutex<Step>,
    /// Wakes the reaper when this node made a deadline.
    reap: Notify,
    /// Asks the reporter to report everything this node holds.
    resync: Notify,
    /// Where streams closed on this node are reported (the replica's too).
    closed: mpsc::UnboundedSender<StreamKey>,
    /// Numbers this node's streams, and knows which are being opened.
    opening: Mutex<Numbering>,
    /// Ends the node's tasks.
    stop: CancellationToken,
    /// The reporter, which tells Redis the node stopped as it ends.
    reporter: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Whether a node is in step with Redis, for /healthz.
#[derive(Debug, Clone)]
pub struct Health {
    /// Whether the node follows the log in Redis now.
    pub redis_up: bool,
    pub node: String,
}

impl Cluster {
    /// Starts following the lobby in `url`'s Redis; /healthz says when this
    /// node is in step with it. Its tasks run until [`retire`](Self::retire).
    pub fn start(url: &str, config: ClusterConfig) -> redis::RedisResult<Cluster> {
        let store = Store::new(url, config.presence.history_len())?;
        let (closed, reports) = mpsc::unbounded_channel();
        let presence = Replicas::new(
            config.presence.clone(),
            closed.clone(),
            config.observer.clone(),
        );
        let node = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let cluster = Cluster {
            shared: Arc::new(Shared {
                presence,
                store,
                config,
                node,
                in_step: Mutex::default(),
                reap: Notify::new(),
                resync: Notify::new(),
                closed,
                opening: Mutex::default(),
                stop: CancellationToken::new(),
                reporter: Mutex::new(None),
            }),
        };
        tracing::info!(node = %cluster.shared.node, "cluster node starting");
        let stop = &cluster.shared.stop;
        tokio::spawn(follow(cluster.clone(), stop.clone()));
        tokio::spawn(reap(cluster.clone(), stop.clone()));
        let reporter = tokio::spawn(report(cluster.clone(), reports, stop.clone()));
        *lock(&cluster.shared.reporter) = Some(reporter);
        Ok(cluster)
    }

    pub fn config(&self) -> &PresenceConfig {
        self.shared.presence.config()
    }

    pub fn events(&self) -> broadcast::Receiver<Arc<Event>> {
        self.shared.presence.events()
    }

    pub fn health(&self) -> Health {
        Health {
            redis_up: self.in_step_since().is_some(),
            node: self.shared.node.clone(),
        }
    }

    /// Adds a membership of `person` (a signed join's `sub`; with `None`,
    /// someone new) to `room`: their `new_user` goes out with their first.
    pub async fn join(
        &self,
        room: &RoomName,
        person: Option<UserId>,
        name: Name,
        user_state: Option<UserState>,
    ) -> Result<Joined, JoinError> {
        let shared = &self.shared;
        let asked = Instant::now();
        let (member, token) = (UserId::random(), shared.store.new_token(room));
        let id = person.clone().unwrap_or_else(|| member.clone());
        let before = shared.presence.expect_join(id.clone());
        let limits = Limits {
            max_users: shared.config.presence.max_users,
            max_rooms: shared.config.max_rooms,
            join_timeout: shared.config.presence.join_timeout,
        };
        let joining = Member {
            room,
            user: member,
            person: person.as_ref(),
            token: token.key(),
            name: &name,
            state: user_state.as_ref(),
        };
        let joined = match shared.store.join(limits, joining).await {
            Ok(Joining::Joined { seq, new }) => Ok((seq, new)),
            Ok(Joining::Full(online)) => Err(JoinError::Full(online)),
            Ok(Joining::TooManyRooms(rooms)) => Err(JoinError::TooManyRooms(rooms)),
            Err(err) => {
                tracing::warn!("join not recorded: {err}");
                Err(JoinError::Unavailable)
            }
        };
        let (seq, new) = joined.inspect_err(|_| shared.presence.forget_join(&id))?;
        shared.reap.notify_one();
        let users = if new {
            // The users list just before the join, once the join comes back
            // through the log; if it is slow to, the list as this node has it.
            match tokio::time::timeout(CATCH_UP, before).await {
                Ok(Ok(users)) => users,
                // The replicas were reloaded first (the log began again):
                // the join counts only if the new log holds it.
                Ok(Err(_)) if shared.presence.user_of(room, &token).is_err() => {
                    return Err(JoinError::Unavailable);
                }
                _ => shared.presence.users_json(room),
            }
        } else {
            // Another membership of someone in the room: no `new_user`; the
            // list once this node has the membership, them in it.
            shared.presence.forget_join(&id);
            shared.presence.applied(seq, CATCH_UP).await;
            shared.presence.users_json(room)
        };
        let name = match shared.presence.user_of(room, &token) {
            // The name the person came in with, as one process answers.
            Ok(view) if !new => view.name,
            _ => name,
        };
        shared.presence.joined_here(room, &token, asked);
        if new {
            shared.config.observer.joined(room, id.clone(), &name, None);
        }
        Ok(Joined {
            id,
            name,
            token,
            users,
        })
    }

    /// Ends the membership of `token` in `room`; its person leaves with
    /// their last.
    pub async fn leave(&self, room: &RoomName, token: &Token) -> Result<UserId, TokenError> {
        let sure = self.sure_of(token).await;
        let (user, member) = unsure_unless(sure, self.shared.presence.member_of(room, token))?;
        match self.shared.store.leave(&member, token.key()).await {
            Ok(Some((seq, event))) => {
                self.shared.presence.applied(seq, CATCH_UP).await;
                if let Some(event) = event {
                    let observer = &self.shared.config.observer;
                    let reason = LeaveReason::Leave;
                    observer.left(room, user.id.clone(), &user.name, reason, Some(event));
                }
                Ok(user.id)
            }
            Ok(None) => Err(TokenError::Unknown),
            Err(err) => {
                tracing::warn!("leave not recorded: {err}");
                Err(TokenError::Unavailable)
            }
        }
    }

    /// Sets the state of the user of `room` holding `token`, once this node
    /// has caught up, and waits until its `user_updated` is applied here.
    pub async fn set_state(
        &self,
        room: &RoomName,
        token: &Token,
        state: UserState,
    ) -> Result<(), TokenError> {
        let sure = self.sure_of(token).await;
        let (user, member) = unsure_unless(sure, self.shared.presence.member_of(room, token))?;
        match self.shared.store.update(&member, token.key(), &state).await {
            Ok(Updating::Updated(seq, event)) => {
                self.shared.presence.applied(seq, CATCH_UP).await;
                let observer = &self.shared.config.observer;
                observer.updated(room, user.id, &user.name, &state, Some(event));
                Ok(())
            }
            Ok(Updating::Same) => Ok(()),
            Ok(Updating::Unknown) => Err(TokenError::Unknown),
            Err(err) => {
                tracing::warn!("state not recorded: {err}");
                Err(TokenError::Unavailable)
            }
        }
    }

    /// Counts the stream in Redis, where a user's streams on every node are
    /// counted, then serves it from this node's replica once that has every
    /// event Redis had. While Redis is away, the replica alone decides, and
    /// the stream is counted once Redis is back.
    pub async fn subscribe(
        &self,
        room: &RoomName,
        token: &Token,
        last_event_id: Option<EventId>,
    ) -> Result<Subscription, TokenError> {
        let shared = &self.shared;
        if token.room().as_ref() != Some(room) {
            // Another room's token (or no room's): refused before Redis
            // counts a stream for it, which would touch its user's deadline.
            self.sync().await;
            return Err(shared.presence.why(room, token, TokenError::Unknown));
        }
        let numbered = OpeningStream::new(shared);
        let stream = numbered.stream;
        let opened = shared.store.open(
            &shared.node,
            token.key(),
            stream,
            MAX_STREAMS_PER_USER,
            self.settling(),
            shared.store.of_another_log(token),
        );
        let user = match tokio::time::timeout(store::RESPONSE_SLACK, opened).await {
            Ok(Ok((opening, latest))) => {
                shared.presence.applied(latest, CATCH_UP).await;
                match opening {
                    Opening::Opened(user) => user,
                    Opening::Unknown => return Err(TokenError::Unknown),
                    Opening::Unsettled => return Err(TokenError::Unavailable),
                    Opening::TooMany => return Err(TokenError::TooManyStreams),
                    Opening::OtherLog => {
                        return self.open_unchecked(room, token, last_event_id, stream);
                    }
                }
            }
            _ => return self.open_unchecked(room, token, last_event_id, stream),
        };
        let opened = shared.presence.open(room, token, last_event_id, stream);
        unsure_unless(false, opened).inspect_err(|_| {
            // Counted in Redis but not here (the replica lags, or was
            // reloaded since): take it back.
            let _ = shared.closed.send(StreamKey { user, stream });
        })
    }

    /// Redis cannot check the token now (it is away, or holds a log this
    /// node has not caught up with): the replica serves it if it knows it, and
    /// the stream is counted once Redis is back. A token the replica does not
    /// know may only be unknown *yet*: the client is told to try again, not
    /// to join again.
    fn open_unchecked(
        &self,
        room: &RoomName,
        token: &Token,
        last_event_id: Option<EventId>,
        stream: u64,
    ) -> Result<Subscription, TokenError> {
        let shared = &self.shared;
        let opened = shared.presence.open(room, token, last_event_id, stream);
        let subscription = unsure_unless(false, opened)?;
        shared.resync.notify_one();
        Ok(subscription)
    }

    /// A watcher's stream of `room`: the room as this node's replica has
    /// it, once it has caught up.
    pub async fn watch(&self, room: &RoomName, last_event_id: Option<EventId>) -> Subscription {
        self.sync().await;
        self.shared.presence.watch(room, last_event_id)
    }

    /// The replicas' figures: every room's users, this node's streams.
    pub fn stats(&self) -> Stats {
        self.shared.presence.stats()
    }

    pub async fn users(&self, room: &RoomName) -> Vec<UserView> {
        self.sync().await;
        self.shared.presence.users(room)
    }

    pub async fn users_json(&self, room: &RoomName) -> Pieces {
        self.sync().await;
        self.shared.presence.users_json(room)
    }

    /// How many rooms this node has a replica of: those with someone in
    /// them, and those emptied within their resume window.
    pub fn rooms(&self) -> usize {
        self.shared.presence.count()
    }

    /// The `limit` fullest rooms, fullest first.
    pub async fn list_rooms(&self, limit: usize) -> Vec<RoomCount> {
        self.sync().await;
        self.shared.presence.list(limit)
    }

    /// Stops the node's tasks. The users it streamed to start grace (their
    /// clients reconnect to another node) and the node is forgotten at once.
    pub async fn retire(&self) {
        self.shared.stop.cancel();
        let reporter = lock(&self.shared.reporter).take();
        if let Some(reporter) = reporter {
            let _ = tokio::time::timeout(CATCH_UP * 2, reporter).await;
        }
    }

    /// Waits until this node has applied every event Redis had when asked, so
    /// a read here sees what any node finished writing before it. Says
    /// whether the log is still settling (see [`settling`](Self::settling));
    /// `None` if Redis did not answer in time, holds another log, or this
    /// node could not catch up.
    async fn sync(&self) -> Option<bool> {
        let latest = self.shared.store.latest_followed(self.settling());
        match tokio::time::timeout(SYNC_READ, latest).await {
            Ok(Ok(Some((latest, settling)))) => {
                let caught_up = self.shared.presence.applied(latest, CATCH_UP).await;
                caught_up.then_some(settling)
            }
            _ => None,
        }
    }

    /// Syncs, and says whether this node is sure that `token` is unknown if
    /// its replica lacks it: it caught up, and the token is of this log or
    /// the log has settled.
    async fn sure_of(&self, token: &Token) -> bool {
        self.sync()
            .await
            .is_some_and(|settling| !settling || !self.shared.store.of_another_log(token))
    }

    /// How long a new log is not sure of the tokens of earlier logs that it
    /// does not hold: a node may be silent for its node timeout before it is
    /// taken for dead, and its users are kept for grace after that.
    fn settling(&self) -> Duration {
        self.shared.config.node_timeout + self.shared.config.presence.grace
    }

    fn in_step_since(&self) -> Option<Instant> {
        lock(&self.shared.in_step).since
    }

    fn in_step(&self) {
        let mut step = lock(&self.shared.in_step);
        if step.since.is_none() {
            step.since = Some(Instant::now());
            step.problem = None;
            tracing::info!("in step with Redis");
        }
    }

    /// Logs why, once per outage and whenever the reason changes (a wrong
    /// password or an unknown host says so at once, not only under debug).
    fn out_of_step(&self, problem: impl std::fmt::Display) {
        let problem = problem.to_string();
        let mut step = lock(&self.shared.in_step);
        if step.since.take().is_some() {
            tracing::warn!("lost Redis ({problem}); streams stay open, joins and leaves wait");
        } else if step.problem.as_deref() != Some(problem.as_str()) {
            tracing::warn!("cannot reach Redis: {problem}");
        }
        step.problem = Some(problem);
    }
}

/// Whether, and since when, a node follows the log; and what kept it from it.
#[derive(Default)]
struct Step {
    since: Option<Instant>,
    problem: Option<String>,
}

/// The streams of a node: the next id, and those counted in Redis but maybe
/// not yet in the replica. A full report must not take those for closed.
#[derive(Default)]
struct Numbering {
    next: u64,
    in_flight: HashSet<u64>,
}

/// A stream being opened: numbered, and in flight until dropped.
struct OpeningStream<'a> {
    shared: &'a Shared,
    stream: u64,
}

impl<'a> OpeningStream<'a> {
    fn new(shared: &'a Shared) -> OpeningStream<'a> {
        let mut opening = lock(&shared.opening);
        let stream = opening.next;
        opening.next += 1;
        opening.in_flight.insert(stream);
        OpeningStream { shared, stream }
    }
}

impl Drop for OpeningStream<'_> {
    fn drop(&mut self) {
        lock(&self.shared.opening).in_flight.remove(&self.stream);
    }
}

/// A token the replica does not know, when this node is not sure to have
/// every change Redis has (`sure` is false), is "try again" (503), not
/// "unknown" (401): a client told 401 joins again, and its user is lost.
fn unsure_unless<T>(sure: bool, found: Result<T, TokenError>) -> Result<T, TokenError> {
    match found {
        Err(TokenError::Unknown) if !sure => Err(TokenError::Unavailable),
        found => found,
    }
}

/// Each of these locks guards one value, which a panic cannot leave half-written.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Doubling waits between attempts, from `BACKOFF.0` to `BACKOFF.1`.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(BACKOFF.0)
    }

    async fn wait(&mut self, stop: &CancellationToken) {
        tokio::select! {
            () = tokio::time::sleep(self.0) => {}
            () = stop.cancelled() => {}
        }
        self.0 = (self.0 * 2).min(BACKOFF.1);
    }

    fn reset(&mut self) {
        self.0 = BACKOFF.0;
    }
}

/// Follows the log into the replica, reconnecting with backoff.
async fn follow(cluster: Cluster, stop: CancellationToken) {
    let shared = &cluster.shared;
    let mut epoch: Option<String> = None;
    let mut backoff = Backoff::new();
    while !stop.is_cancelled() {
        let mut connection = match shared.store.reader().await {
            Ok(connection) => connection,
            Err(err) => {
                cluster.out_of_step(err);
                backoff.wait(&stop).await;
                continue;
            }
        };
        if let Err(err) = catch_up(&cluster, &mut epoch).await {
            cluster.out_of_step(format_args!("cannot load the lobby: {err}"));
            backoff.wait(&stop).await;
            continue;
        }
        cluster.in_step();
        backoff.reset();
        let problem = loop {
            let after = shared.presence.latest();
            let read = tokio::select! {
                read = tokio::time::timeout(
                    READ_BLOCK + store::RESPONSE_SLACK,
                    store::read_log(&mut connection, after, READ_BLOCK),
                ) => read,
                () = stop.cancelled() => return,
                () = shared.store.another_log_seen() => {
                    if let Err(err) = catch_up(&cluster, &mut epoch).await {
                        break format!("cannot load the new log: {err}");
                    }
                    continue;
                }
            };
            let entries = match read {
                Ok(Ok(entries)) => entries,
                Ok(Err(err)) => break format!("lost the log: {err}"),
                Err(_) => break "the log did not answer in time".to_owned(),
            };
            let mut in_order = true;
            for entry in entries {
                if let Err(gap) = shared.presence.apply(entry) {
                    tracing::info!("{gap}: reloading from Redis");
                    in_order = false;
                    break;
                }
            }
            if !in_order && let Err(err) = catch_up(&cluster, &mut epoch).await {
                break format!("cannot reload the lobby: {err}");
            }
        };
        cluster.out_of_step(problem);
        backoff.wait(&stop).await;
    }
}

/// Brings the replica in step with Redis after a start, a gap or a reconnect:
/// if the log is the one it followed and still holds what came next, nothing
/// is to be done (the next read continues it); otherwise the replica reloads.
/// If the log began again, the users this node knew are put back first.
async fn catch_up(cluster: &Cluster, epoch: &mut Option<String>) -> redis::RedisResult<()> {
    let shared = &cluster.shared;
    let latest = shared.presence.latest();
    let fresh = uuid::Uuid::new_v4().simple().to_string();
    let current = shared.store.epoch(&fresh, latest).await?;
    let same_log = epoch.as_deref() == Some(current.as_str());
    if same_log && continues(shared, latest).await? {
        return Ok(());
    }
    if epoch.is_some() && !same_log {
        let known = shared.presence.known();
        let presence = &shared.config.presence;
        let added = shared
            .store
            .restore(presence.grace, presence.join_timeout, &known)
            .await?;
        tracing::warn!(
            known = known.len(),
            added,
            "the lobby's log in Redis began again; put back the users this node knew"
        );
    }
    let (epoch_now, reload) = shared.store.state().await?;
    tracing::info!(
        users = reload.users.len(),
        latest = reload.latest,
        "loaded the lobby from Redis"
    );
    shared.presence.reload(reload);
    shared.store.follow_epoch(&epoch_now);
    *epoch = Some(epoch_now);
    shared.resync.notify_one();
    Ok(())
}

/// Whether the log still holds every entry after `latest`.
async fn continues(shared: &Shared, latest: u64) -> redis::RedisResult<bool> {
    let newest = shared.store.latest().await?;
    if newest <= latest {
        return Ok(newest == latest);
    }
    Ok(shared
        .store
        .oldest()
        .await?
        .is_some_and(|oldest| oldest <= latest + 1))
}

/// Tells Redis, in order, which streams closed on this node, and beats the
/// node's heart. After any failure (and
/// whenever Redis did not know the node) it reports everything it holds.
/// When the node stops, it tells Redis so, after its last report.
async fn report(
    cluster: Cluster,
    reports: mpsc::UnboundedReceiver<StreamKey>,
    stop: CancellationToken,
) {
    report_until(&cluster, reports, &stop).await;
    let shared = &cluster.shared;
    let retired = shared
        .store
        .retire(&shared.node, shared.config.presence.grace);
    match tokio::time::timeout(CATCH_UP, retired).await {
        Ok(Ok(())) => tracing::info!(node = %shared.node, "left the cluster"),
        _ => tracing::warn!("could not tell Redis this node stopped; it will be taken for dead"),
    }
}

async fn report_until(
    cluster: &Cluster,
    mut reports: mpsc::UnboundedReceiver<StreamKey>,
    stop: &CancellationToken,
) {
    let shared = &cluster.shared;
    let grace = shared.config.presence.grace;
    let node_timeout = shared.config.node_timeout;
    let mut beat = tokio::time::interval(shared.config.node_timeout / 3);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut whole = true;
    let mut backoff = Backoff::new();
    let mut batch = Vec::new();
    loop {
        if whole {
            // In this order: a stream numbered before `next` is either in
            // flight now, or in the replica by the time it is read, or closed.
            let (next, in_flight) = {
                let opening = lock(&shared.opening);
                (
                    opening.next,
                    opening.in_flight.iter().copied().collect::<Vec<_>>(),
                )
            };
            let open = shared.presence.open_streams();
            match shared
                .store
                .sync(&shared.node, node_timeout, grace, next, &in_flight, &open)
                .await
            {
                Ok(()) => {
                    whole = false;
                    backoff.reset();
                    shared.reap.notify_one();
                }
                Err(err) => {
                    tracing::debug!("cannot report to Redis: {err}");
                    backoff.wait(stop).await;
                    if stop.is_cancelled() {
                        return;
                    }
                    continue;
                }
            }
        }
        batch.clear();
        tokio::select! {
            received = reports.recv_many(&mut batch, 1024) => if received == 0 { return },
            _ = beat.tick() => {}
            () = shared.resync.notified() => {
                whole = true;
                continue;
            }
            () = stop.cancelled() => return,
        }
        match shared
            .store
            .report(&shared.node, node_timeout, grace, &batch)
            .await
        {
            Ok(known) => whole |= !known,
            Err(err) => {
                tracing::debug!("cannot report to Redis: {err}");
                whole = true;
            }
        }
        if !batch.is_empty() {
            shared.reap.notify_one();
        }
    }
}

/// Takes offline the users whose deadline passed, and notices dead nodes.
/// It runs at the next deadline it knows of, when woken by a new one, and at
/// least three times per node timeout. A node that has just come back to Redis
/// waits a whole node timeout before taking anyone else for dead, so that the
/// other nodes have had time to come back too.
async fn reap(cluster: Cluster, stop: CancellationToken) {
    let shared = &cluster.shared;
    let config = &shared.config;
    let period = config.node_timeout / 3;
    loop {
        let look_for_lost = cluster
            .in_step_since()
            .is_some_and(|since| since.elapsed() >= config.node_timeout);
        let wait = match shared
            .store
            .reap(config.node_timeout, config.presence.grace, look_for_lost)
            .await
        {
            Ok(reaped) => {
                if reaped.lost_nodes > 0 {
                    tracing::warn!(nodes = reaped.lost_nodes, "took nodes for dead");
                }
                for (id, room, name, reason) in &reaped.gone {
                    config.observer.left(room, id.clone(), name, *reason, None);
                }
                reaped.next.map_or(period, |next| next.min(period))
            }
            Err(err) => {
                tracing::debug!("cannot reap: {err}");
                period
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.reap.notified() => {}
            () = stop.cancelled() => return,
        }
    }
}
