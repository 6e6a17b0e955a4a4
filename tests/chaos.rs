//! A randomized chaos test of the cluster, Jepsen-style (issue 16): a real
//! redis-server that keeps an append-only file, and three lobby binaries that
//! each reach it through a proxy the test controls; twenty clients that join,
//! stream, drop, resume (with and without Last-Event-ID) and leave on nodes
//! picked at random; and overlapping faults drawn from a seeded RNG: a node
//! SIGKILLed and restarted on its port, a node SIGSTOPped for longer than
//! `--node-timeout`, Redis restarted empty or from its append-only file, Redis
//! SIGSTOPped, one node's link to Redis cut. After each round of faults has
//! healed, the clients hold still and a checker compares what every node lists
//! with what every client was acknowledged and told; at the end every stream
//! is checked against every event any stream saw.
//!
//! What counts as what:
//! - a **lost join**: a user acknowledged with 201 whom the lobby dropped (its
//!   own `disconnect_user`, a snapshot without it, or a 401 that no node
//!   contradicts within grace) while the documented rules kept it online:
//!   every moment since the lobby last showed it online was covered by its
//!   join timeout, a stream on a node in step with Redis, or grace after one
//!   (counted from the node's last heartbeat for a node taken for dead, and
//!   from Redis's return for a close Redis could not hear of). Losses outside
//!   those rules are counted apart, as ones the docs allow;
//! - a **refused token**: a 401 (or 403) that another node contradicts by
//!   taking the same token within grace;
//! - after each round: every node lists the same users, every open stream's
//!   view (its snapshot and events applied) equals its node's list, every
//!   user with an open stream is listed, nobody is listed later than grace +
//!   node timeout + a margin after their client left or stopped (a zombie),
//!   and no join answered 503 is listed;
//! - on every stream: ids increase, no user is announced twice, a resume
//!   starts after its Last-Event-ID (or with a snapshot), no id or snapshot
//!   means two things across streams, and no event of the room is missing
//!   between where a stream began and its last event.
//!
//! `LOBBY_CHAOS_SECS` is the length (60 s unless set; `make chaos` runs 600 s);
//! `LOBBY_CHAOS_SEED` replays a run's choices (the timings still vary). It
//! prints the seed, each fault as it starts and heals, and a report, and keeps
//! the nodes' logs (their stderr) in a directory it names when something
//! fails. `make test` runs it for a minute; `make chaos` for ten, in release.
//!
//! A second test restarts the nodes one by one (SIGTERM, as a deploy does)
//! while the clients hold still: no stream may hear anyone leave or join.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::LobbyProcess;
use common::proxy::{Link, Proxy};
use common::redis::RedisServer;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const NODES: usize = 3;
const CLIENTS: usize = 20;

/// Short timings, so that every fault matters within a short run: a pause
/// of a node outlasts the node timeout, and a client that does not come back
/// is gone within seconds.
const GRACE: Duration = Duration::from_secs(2);
const NODE_TIMEOUT: Duration = Duration::from_secs(3);
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// A comment line every 250 ms, so that a client notices a stream whose node
/// is stopped (no byte for `STALL`) and reconnects elsewhere, as a careful
/// client would. The join limit is lifted: every client joins from 127.0.0.1.
const FLAGS: [&str; 12] = [
    "--grace",
    "2s",
    "--node-timeout",
    "3s",
    "--join-timeout",
    "5s",
    "--keepalive",
    "250ms",
    "--join-rate",
    "1000000",
    "--join-burst",
    "1000000",
];
/// Every join and leave, and what the cluster does about Redis and why it refuses a request.
const LOG_FILTER: &str = "info,lobby::cluster=debug,lobby::http::error=debug";

/// A stream that has taken no byte for this long is on a node that is stopped.
const STALL: Duration = Duration::from_secs(1);
/// Room for a loaded machine (two shared cores) on every bound below.
const MARGIN: Duration = Duration::from_secs(3);
/// After the last fault heals, how long before the zombies are counted:
/// anyone who was to go has gone by then.
const SETTLE: Duration = GRACE.saturating_add(NODE_TIMEOUT).saturating_add(MARGIN);
/// After the last fault heals, how long the nodes and clients have to agree.
const CONVERGE_WITHIN: Duration = Duration::from_secs(30);
/// The checker's deadlines are estimates (a fault heals when the harness's
/// command returns; Redis hears of a close a moment later; a client is told
/// after the lobby decided): a loss seen less than this before one, or after
/// it, is on time, and a stream opened less than this after one still counts.
const TOLERANCE: Duration = Duration::from_millis(300);

/// A round: faults, then a check of about `CHECK`.
const ROUND: Duration = Duration::from_secs(55);
const CHECK: Duration = Duration::from_secs(10);
/// Between two faults, in ms: about one every 1.5 s, so that they overlap
/// (and 600 s, checks included, bring over 300).
const FAULT_GAP_MS: (u64, u64) = (400, 2600);
/// A target (a node, Redis, a link) rests this long between two faults.
const COOLDOWN: Duration = Duration::from_secs(1);

/// How long a join or a leave may take (a node waits up to 1 s for Redis, then
/// up to 2 s for the log).
const ANSWER: Duration = Duration::from_secs(5);
/// How long a stream's reply may take: a node asks Redis for at most 1 s,
/// then serves from what it knows. A careful client tries another node then.
const OPEN: Duration = Duration::from_secs(2);
/// How many violations of one kind are printed as they happen, and in the report.
const SHOWN: usize = 10;
/// How long the clients churn before a rolling restart: most are online then.
const ROLLING_CHURN: Duration = Duration::from_secs(8);
const DEFAULT_SECS: u64 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_under_random_overlapping_faults_keeps_every_acknowledged_join_and_converges() {
    let _alone = one_cluster_at_a_time().await;
    let length = Duration::from_secs(chaos_secs());
    let (run, cluster, clients) = begin("chaos", length).await;
    let mut faults = Faults::new(SmallRng::seed_from_u64(run.seed));
    let rounds = ((length.as_secs_f64() / ROUND.as_secs_f64()).round() as u32).max(1);
    let per_round = length / rounds;
    for round in 1..=rounds {
        let until = run.now() + per_round.saturating_sub(CHECK);
        faults.inject_until(&run, &cluster, until).await;
        run.phase.send_replace(Phase::Hold);
        let healed = faults.heal(&run).await;
        check(&run, &cluster, round, healed).await;
        if round < rounds {
            run.phase.send_replace(Phase::Churn);
        }
    }
    finish(run, cluster, clients, rounds).await;
}

/// A deploy of the cluster: each node in turn stopped with SIGTERM and started
/// again on its port, the next once the one before answers /healthz with 200.
/// Redis holds who is online, so the clients, holding still and resuming with
/// Last-Event-ID wherever a node ended their stream, hear of no one leaving
/// or joining, and the usual check finds every join kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_the_cluster_is_invisible_to_its_clients() {
    let _alone = one_cluster_at_a_time().await;
    let (run, cluster, clients) = begin("rolling-restart", ROLLING_CHURN).await;
    tokio::time::sleep(ROLLING_CHURN).await;
    run.phase.send_replace(Phase::Hold);
    let restless = until_resting(&run).await;
    assert_eq!(restless, 0, "clients still busy before the restarts");
    // Users whose clients dropped them before the hold leave first, as due.
    tokio::time::sleep(SETTLE).await;
    let from = run.now();
    for index in 0..NODES {
        let mut node = cluster.nodes[index].lock().await;
        run.say(&format!("rolling restart: node {index} stops (SIGTERM)"));
        if let Some(process) = node.process.take() {
            process.stop().await;
        }
        node.launch(run.now())
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        drop(node);
        let back_by = run.now() + CONVERGE_WITHIN;
        while health_of(&run, index).await != "200" {
            assert!(run.now() < back_by, "node {index} not in step again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        run.say(&format!("rolling restart: node {index} is back"));
    }
    let restarted = run.now();
    check(&run, &cluster, 1, restarted).await;
    let heard = run.book().membership_events(from, run.now());
    for event in &heard {
        run.book()
            .violate("seen_in_a_restart", run.now(), event.clone());
    }
    finish(run, cluster, clients, 1).await;
}

/// The tests of this file each take both cores: they run one after the other.
async fn one_cluster_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ALONE.lock().await
}

/// Starts a cluster and the clients, churning; says the seed and where the logs go.
async fn begin(kind: &str, length: Duration) -> (Arc<Run>, Arc<Cluster>, Vec<JoinHandle<()>>) {
    let seed = chaos_seed();
    let logs = std::env::temp_dir().join(format!("lobby-{kind}-{}-{seed}", std::process::id()));
    std::fs::create_dir_all(&logs).expect("a directory for the logs");
    let cluster = Arc::new(Cluster::start(&logs).await);
    let run = Arc::new(Run::new(seed, cluster.addrs(), logs.clone()));
    run.say(&format!(
        "{kind}: seed {seed} (LOBBY_CHAOS_SEED), {} s, {NODES} nodes {:?}, {CLIENTS} clients, \
         redis :{}, logs in {}",
        length.as_secs(),
        cluster.addrs(),
        cluster.redis_port,
        logs.display()
    ));
    let clients = (0..CLIENTS)
        .map(|index| {
            let rng = SmallRng::seed_from_u64(seed ^ mix(index as u64 + 1));
            tokio::spawn(client(run.clone(), index, rng))
        })
        .collect();
    (run, cluster, clients)
}

/// Stops the clients, checks every stream, prints the report, and fails on
/// any violation, keeping the logs (removed when there is none).
async fn finish(run: Arc<Run>, cluster: Arc<Cluster>, clients: Vec<JoinHandle<()>>, rounds: u32) {
    run.phase.send_replace(Phase::Stop);
    for client in clients {
        if tokio::time::timeout(Duration::from_secs(10), client)
            .await
            .is_err()
        {
            run.book()
                .violate("harness", run.now(), "a client did not stop".into());
        }
    }
    run.book().check_every_stream();
    let _ = std::fs::copy(cluster.redis_log.clone(), run.logs.join("redis.log"));
    let report = run.book().report(&run, rounds);
    run.say(&report);
    let violations = run.book().violations.len();
    drop(cluster);
    let (seed, logs) = (run.seed, run.logs.display());
    if violations == 0 {
        let _ = std::fs::remove_dir_all(&run.logs);
    } else {
        // CI keeps only what is printed: the lines that tell each story.
        for violation in run.book().violations.iter().take(SHOWN) {
            println!("{}", run.trail(violation));
        }
        println!("chaos: the nodes' logs (node-N.log), redis.log and the schedule are in {logs}");
    }
    assert_eq!(
        violations, 0,
        "{violations} violations of the cluster's invariants (seed {seed}; logs in {logs})"
    );
}

// ---- the run: its clock, its clients' phase, and everything recorded ----

/// What the clients may do: churn, hold still for a check, or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Churn,
    Hold,
    Stop,
}

struct Run {
    seed: u64,
    /// Where the nodes' logs, redis.log and schedule.log go.
    logs: PathBuf,
    started: Instant,
    wall: SystemTime,
    nodes: Vec<SocketAddr>,
    /// For joins, leaves and GET /users: a fresh connection each, so that a
    /// node killed and restarted leaves no dead connection in a pool.
    api: reqwest::Client,
    streams: reqwest::Client,
    phase: watch::Sender<Phase>,
    /// Which clients are holding still (an open stream, or no user) during a check.
    resting: Vec<AtomicBool>,
    /// A std mutex: every use is a few map updates, never across an await.
    book: Mutex<Book>,
    schedule: Mutex<std::fs::File>,
}

impl Run {
    fn new(seed: u64, nodes: Vec<SocketAddr>, logs: PathBuf) -> Run {
        let client = || {
            reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .connect_timeout(Duration::from_secs(1))
                .build()
                .expect("an HTTP client")
        };
        let schedule = std::fs::File::create(logs.join("schedule.log")).expect("schedule.log");
        Run {
            seed,
            logs,
            started: Instant::now(),
            wall: SystemTime::now(),
            nodes,
            api: client(),
            streams: client(),
            phase: watch::Sender::new(Phase::Churn),
            resting: (0..CLIENTS).map(|_| AtomicBool::new(false)).collect(),
            book: Mutex::new(Book::default()),
            schedule: Mutex::new(schedule),
        }
    }

    /// Time since the run began.
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn url(&self, node: usize, path: &str) -> String {
        format!("http://{}{path}", self.nodes[node])
    }

    /// Prints a line of the schedule, stamped with the run's time and the
    /// wall clock (UTC, as the nodes' logs are), and keeps it in schedule.log.
    fn say(&self, line: &str) {
        let stamped = format!("{} {line}", self.stamp(self.now()));
        println!("{stamped}");
        let mut file = self
            .schedule
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(file, "{stamped}");
    }

    /// What the nodes' logs say of a violation's users (named in its text
    /// by the first 8 digits of their ids, in brackets): each line that names
    /// one, and the cluster's own lines (not its debug lines) from the first
    /// of those until a second past the violation.
    fn trail(&self, violation: &Violation) -> String {
        let ids: Vec<&str> = violation
            .detail
            .split('(')
            .filter_map(|after| after.split_once(')'))
            .map(|(inside, _)| inside)
            .filter(|inside| inside.len() == 8 && inside.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect();
        let mut out = format!(
            "-- the nodes' logs on {} ({})",
            violation.kind,
            ids.join(", ")
        );
        let stamp = self.stamp(violation.at + Duration::from_secs(1));
        let Some((_, until)) = stamp.split_once(' ') else {
            return out;
        };
        let time = |line: &str| line.get(11..23).unwrap_or_default().to_owned();
        let names = |line: &str| ids.iter().any(|id| line.contains(id));
        let logs: Vec<String> = (0..self.nodes.len())
            .map(|node| std::fs::read_to_string(self.logs.join(format!("node-{node}.log"))))
            .map(Result::unwrap_or_default)
            .collect();
        let first = logs
            .iter()
            .flat_map(|log| log.lines().find(|line| names(line)));
        let Some(from) = first.map(time).min() else {
            return out;
        };
        for (node, log) in logs.iter().enumerate() {
            let told = log.lines().filter(|line| {
                let when = time(line);
                names(line)
                    || (line.contains(" lobby::cluster:")
                        && !line.contains(" DEBUG ")
                        && when >= from
                        && when.as_str() <= until)
            });
            for line in told.take(80) {
                let _ = write!(out, "\n   node {node}: {line}");
            }
        }
        out
    }

    fn stamp(&self, at: Duration) -> String {
        let wall = (self.wall + at)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let ms = wall.as_millis() % 86_400_000;
        format!(
            "{} {:02}:{:02}:{:02}.{:03}Z",
            t(at),
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000
        )
    }

    fn rest(&self, client: usize, resting: bool) {
        self.resting[client].store(resting, Ordering::Relaxed);
    }

    /// Waits while the clients hold still (resting meanwhile); false once they stop.
    async fn may_act(&self, client: usize) -> bool {
        let mut phase = self.phase.subscribe();
        loop {
            let now = *phase.borrow_and_update();
            match now {
                Phase::Churn => {
                    self.rest(client, false);
                    return true;
                }
                Phase::Stop => return false,
                Phase::Hold => self.rest(client, true),
            }
            if phase.changed().await.is_err() {
                return false;
            }
        }
    }

    /// GET /users on node `node`: the ids and names, or why not.
    async fn users(&self, node: usize) -> Result<BTreeMap<String, String>, String> {
        #[derive(Deserialize)]
        struct Users {
            users: Vec<User>,
        }
        let response = self
            .api
            .get(self.url(node, "/users"))
            .timeout(ANSWER)
            .send()
            .await
            .map_err(|err| format!("GET /users on node {node}: {err}"))?;
        if response.status() != 200 {
            return Err(format!("GET /users on node {node}: {}", response.status()));
        }
        let users: Users = response
            .json()
            .await
            .map_err(|err| format!("GET /users on node {node}: {err}"))?;
        Ok(users.users.into_iter().map(|u| (u.id, u.name)).collect())
    }

    async fn every_node_s_users(&self) -> Vec<Result<BTreeMap<String, String>, String>> {
        futures_util::future::join_all((0..NODES).map(|node| self.users(node))).await
    }
}

#[derive(Debug, Deserialize)]
struct User {
    id: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct Joined {
    id: String,
    token: String,
}

// ---- the cluster: Redis, three nodes, a proxy between each node and Redis ----

struct Cluster {
    /// A tokio mutex: a fault holds it across a restart's awaits.
    redis: tokio::sync::Mutex<RedisServer>,
    redis_port: u16,
    redis_log: PathBuf,
    proxies: Vec<Proxy>,
    /// Tokio mutexes for the same reason; a node is never faulted twice at once.
    nodes: Vec<tokio::sync::Mutex<Node>>,
    addrs: Vec<SocketAddr>,
}

struct Node {
    index: usize,
    addr: SocketAddr,
    flags: Vec<String>,
    log: PathBuf,
    process: Option<LobbyProcess>,
}

impl Cluster {
    async fn start(logs: &std::path::Path) -> Cluster {
        let redis = RedisServer::start_with_aof().await;
        let redis_port = redis.port();
        let redis_log = redis.log_file();
        let mut proxies = Vec::new();
        let mut nodes = Vec::new();
        let mut addrs = Vec::new();
        for index in 0..NODES {
            let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], redis_port))).await;
            let mut flags: Vec<String> = FLAGS.iter().map(|flag| (*flag).to_owned()).collect();
            flags.extend(["--redis".into(), format!("redis://{}/", proxy.addr())]);
            let addr = common::free_addr();
            let mut node = Node {
                index,
                addr,
                flags,
                log: logs.join(format!("node-{index}.log")),
                process: None,
            };
            node.launch(Duration::ZERO)
                .await
                .unwrap_or_else(|err| panic!("{err}"));
            proxies.push(proxy);
            nodes.push(tokio::sync::Mutex::new(node));
            addrs.push(addr);
        }
        Cluster {
            redis: tokio::sync::Mutex::new(redis),
            redis_port,
            redis_log,
            proxies,
            nodes,
            addrs,
        }
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }
}

impl Node {
    /// Starts the binary on the node's port, its stderr appended to its log
    /// after a line that says when (a port still held is tried again).
    async fn launch(&mut self, at: Duration) -> Result<(), String> {
        let mut failures = Vec::new();
        for _ in 0..3 {
            if let Ok(mut log) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
            {
                let _ = writeln!(log, "==== chaos: node {} starts at {}", self.index, t(at));
            }
            let flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
            let env = [("RUST_LOG", LOG_FILTER)];
            match LobbyProcess::start_logged(self.addr, &flags, &env, &self.log).await {
                Ok(process) => {
                    self.process = Some(process);
                    return Ok(());
                }
                Err(failure) => failures.push(failure),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!("node {} did not start: {failures:?}", self.index))
    }
}

// ---- faults ----

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL, then the same binary on the same port `down` later.
    KillNode {
        node: usize,
        down: Duration,
    },
    /// SIGSTOP, SIGCONT `lasting` later.
    PauseNode {
        node: usize,
        lasting: Duration,
    },
    /// SIGKILL, its data deleted, started again `down` later.
    RestartRedisEmpty {
        down: Duration,
    },
    /// SIGKILL, started again from its append-only file `down` later.
    RestartRedisFromAof {
        down: Duration,
    },
    PauseRedis {
        lasting: Duration,
    },
    /// The node's link to Redis cut for `lasting`.
    CutLink {
        node: usize,
        how: Link,
        lasting: Duration,
    },
}

/// What a fault strikes; one fault at a time on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    Node(usize),
    Redis,
    Link(usize),
}

const KINDS: [&str; 6] = [
    "node-kill",
    "node-pause",
    "redis-restart-empty",
    "redis-restart-aof",
    "redis-pause",
    "link-cut",
];

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Fault::KillNode { .. } => KINDS[0],
            Fault::PauseNode { .. } => KINDS[1],
            Fault::RestartRedisEmpty { .. } => KINDS[2],
            Fault::RestartRedisFromAof { .. } => KINDS[3],
            Fault::PauseRedis { .. } => KINDS[4],
            Fault::CutLink { .. } => KINDS[5],
        }
    }

    fn target(&self) -> Target {
        match *self {
            Fault::KillNode { node, .. } | Fault::PauseNode { node, .. } => Target::Node(node),
            Fault::CutLink { node, .. } => Target::Link(node),
            Fault::RestartRedisEmpty { .. }
            | Fault::RestartRedisFromAof { .. }
            | Fault::PauseRedis { .. } => Target::Redis,
        }
    }

    /// How long it was meant to last.
    fn lasting(&self) -> Duration {
        match *self {
            Fault::KillNode { down, .. }
            | Fault::RestartRedisEmpty { down }
            | Fault::RestartRedisFromAof { down } => down,
            Fault::PauseNode { lasting, .. }
            | Fault::PauseRedis { lasting }
            | Fault::CutLink { lasting, .. } => lasting,
        }
    }

    fn describe(&self) -> String {
        let lasting = format!("{:.1}s", self.lasting().as_secs_f64());
        match *self {
            Fault::KillNode { node, .. } => format!("node-kill node {node}, down {lasting}"),
            Fault::PauseNode { node, .. } => format!("node-pause node {node}, {lasting}"),
            Fault::RestartRedisEmpty { .. } => format!("redis-restart-empty, down {lasting}"),
            Fault::RestartRedisFromAof { .. } => format!("redis-restart-aof, down {lasting}"),
            Fault::PauseRedis { .. } => format!("redis-pause, {lasting}"),
            Fault::CutLink { node, how, .. } => {
                format!("link-cut node {node} ({how:?}), {lasting}")
            }
        }
    }

    /// Whether the node is, by the docs, taken for dead: killed, or away from
    /// Redis for most of a node timeout (its last heartbeat may be a third
    /// of one older than the fault).
    fn isolates(&self, node: usize) -> bool {
        match *self {
            Fault::KillNode { node: n, .. } => n == node,
            Fault::PauseNode { node: n, lasting }
            | Fault::CutLink {
                node: n, lasting, ..
            } => n == node && lasting * 3 > NODE_TIMEOUT * 2,
            _ => false,
        }
    }

    /// Whether it strikes `node` itself (not Redis, which every node shares).
    fn own(&self, node: usize) -> bool {
        match *self {
            Fault::KillNode { node: n, .. }
            | Fault::PauseNode { node: n, .. }
            | Fault::CutLink { node: n, .. } => n == node,
            _ => false,
        }
    }

    /// Whether Redis itself was away (paused or restarting), for every node.
    fn away_for_every_node(&self) -> bool {
        matches!(
            self,
            Fault::RestartRedisEmpty { .. }
                | Fault::RestartRedisFromAof { .. }
                | Fault::PauseRedis { .. }
        )
    }

    /// Whether, for streams on `node`, Redis was away: the grace of one that
    /// closed meanwhile starts when it is back.
    fn away_for(&self, node: usize) -> bool {
        match *self {
            Fault::CutLink { node: n, .. } => n == node,
            _ => self.away_for_every_node(),
        }
    }
}

struct Faults {
    rng: SmallRng,
    running: Vec<(Target, JoinHandle<()>)>,
    free_at: HashMap<Target, Duration>,
    count: usize,
}

impl Faults {
    fn new(rng: SmallRng) -> Faults {
        Faults {
            rng,
            running: Vec::new(),
            free_at: HashMap::new(),
            count: 0,
        }
    }

    /// Strikes at random, every 0.4 to 2.6 s, until `until`.
    async fn inject_until(&mut self, run: &Arc<Run>, cluster: &Arc<Cluster>, until: Duration) {
        loop {
            let gap = Duration::from_millis(self.rng.random_range(FAULT_GAP_MS.0..FAULT_GAP_MS.1));
            if run.now() + gap >= until {
                tokio::time::sleep(until.saturating_sub(run.now())).await;
                return;
            }
            tokio::time::sleep(gap).await;
            self.reap(run).await;
            let Some(fault) = self.draw(run.now()) else {
                continue;
            };
            self.count += 1;
            let number = self.count;
            let task = tokio::spawn(inflict(run.clone(), cluster.clone(), number, fault));
            self.running.push((fault.target(), task));
        }
    }

    /// A fault on a target that is free: its kind first, then its target.
    fn draw(&mut self, now: Duration) -> Option<Fault> {
        let free = |target: &Target| {
            !self.running.iter().any(|(busy, _)| busy == target)
                && self.free_at.get(target).is_none_or(|at| *at <= now)
        };
        let nodes = |wrap: fn(usize) -> Target| -> Vec<usize> {
            (0..NODES).filter(|&node| free(&wrap(node))).collect()
        };
        let free_nodes = nodes(Target::Node);
        let free_links = nodes(Target::Link);
        let redis = free(&Target::Redis);
        let kinds: Vec<usize> = (0..KINDS.len())
            .filter(|kind| match kind {
                0 | 1 => !free_nodes.is_empty(),
                2..=4 => redis,
                _ => !free_links.is_empty(),
            })
            .collect();
        if kinds.is_empty() {
            return None;
        }
        let rng = &mut self.rng;
        let kind = kinds[rng.random_range(0..kinds.len())];
        let mut ms = |from: u64, to: u64| Duration::from_millis(rng.random_range(from..to));
        let fault = match kind {
            0 => Fault::KillNode {
                node: free_nodes[ms(0, free_nodes.len() as u64).as_millis() as usize],
                down: ms(0, 2500),
            },
            1 => Fault::PauseNode {
                node: free_nodes[ms(0, free_nodes.len() as u64).as_millis() as usize],
                lasting: NODE_TIMEOUT + ms(500, 3000),
            },
            2 => Fault::RestartRedisEmpty {
                down: ms(100, 2500),
            },
            3 => Fault::RestartRedisFromAof {
                down: ms(100, 2500),
            },
            4 => Fault::PauseRedis {
                lasting: ms(1000, 5000),
            },
            _ => Fault::CutLink {
                node: free_links[ms(0, free_links.len() as u64).as_millis() as usize],
                how: if ms(0, 2).is_zero() {
                    Link::Refused
                } else {
                    Link::Blackholed
                },
                lasting: ms(1000, 6000),
            },
        };
        Some(fault)
    }

    /// Forgets the faults that healed; a target rests a while after one.
    async fn reap(&mut self, run: &Run) {
        let mut still = Vec::new();
        for (target, task) in self.running.drain(..) {
            if task.is_finished() {
                if let Err(err) = task.await {
                    run.book()
                        .violate("harness", run.now(), format!("a fault failed: {err}"));
                }
                self.free_at.insert(target, run.now() + COOLDOWN);
            } else {
                still.push((target, task));
            }
        }
        self.running = still;
    }

    /// Waits until every fault has healed; when the last one did.
    async fn heal(&mut self, run: &Run) -> Duration {
        for (_, task) in self.running.drain(..) {
            if let Err(err) = task.await {
                run.book()
                    .violate("harness", run.now(), format!("a fault failed: {err}"));
            }
        }
        self.free_at.clear();
        let healed = run.book().faults.iter().filter_map(|f| f.end).max();
        healed.unwrap_or_default()
    }
}

/// Strikes with `fault` and heals it, saying both.
async fn inflict(run: Arc<Run>, cluster: Arc<Cluster>, number: usize, fault: Fault) {
    let at = run.now();
    run.book().faults.push(FaultRecord {
        number,
        fault,
        start: at,
        end: None,
    });
    run.say(&format!("fault #{number} {}", fault.describe()));
    let outcome = strike(&run, &cluster, fault).await;
    let end = run.now();
    {
        let mut book = run.book();
        if let Some(record) = book.faults.iter_mut().find(|f| f.number == number) {
            record.end = Some(end);
        }
        if let Err(failure) = &outcome {
            book.violate("harness", end, format!("fault #{number}: {failure}"));
        }
    }
    run.say(&format!(
        "healed #{number} {} after {:.1}s",
        fault.kind(),
        (end - at).as_secs_f64()
    ));
}

async fn strike(run: &Run, cluster: &Cluster, fault: Fault) -> Result<(), String> {
    match fault {
        Fault::KillNode { node, down } => {
            let mut node = cluster.nodes[node].lock().await;
            if let Some(process) = node.process.take() {
                process.kill_now();
            }
            tokio::time::sleep(down).await;
            node.launch(run.now()).await
        }
        Fault::PauseNode { node, lasting } => {
            let node = cluster.nodes[node].lock().await;
            let process = node.process.as_ref().ok_or("the node is not running")?;
            process.signal("-STOP");
            tokio::time::sleep(lasting).await;
            process.signal("-CONT");
            Ok(())
        }
        Fault::RestartRedisEmpty { down } | Fault::RestartRedisFromAof { down } => {
            let mut redis = cluster.redis.lock().await;
            redis.kill().await;
            tokio::time::sleep(down).await;
            if matches!(fault, Fault::RestartRedisEmpty { .. }) {
                redis.start_again_empty().await;
            } else {
                redis.start_again().await;
            }
            Ok(())
        }
        Fault::PauseRedis { lasting } => {
            let redis = cluster.redis.lock().await;
            redis.pause();
            tokio::time::sleep(lasting).await;
            redis.resume();
            Ok(())
        }
        Fault::CutLink { node, how, lasting } => {
            cluster.proxies[node].cut(how);
            tokio::time::sleep(lasting).await;
            cluster.proxies[node].heal();
            Ok(())
        }
    }
}

// ---- clients ----

/// A user a client holds: acknowledged with 201.
struct Me {
    identity: usize,
    id: String,
    token: String,
    name: String,
}

/// One client: joins, lives as that user until it leaves, drops it or is
/// told it is gone, and joins again.
async fn client(run: Arc<Run>, index: usize, mut rng: SmallRng) {
    let mut serial = 0;
    while run.may_act(index).await {
        serial += 1;
        let name = format!("c{index:02}.{serial}");
        match join(&run, index, &name, &mut rng).await {
            Some(me) => live(&run, index, &me, &mut rng).await,
            None => pause(&mut rng, 200, 1000).await,
        }
    }
}

async fn join(run: &Run, client: usize, name: &str, rng: &mut SmallRng) -> Option<Me> {
    let node = rng.random_range(0..NODES);
    let identity = run.book().asked(client, name, node, run.now());
    let sent = run
        .api
        .post(run.url(node, "/join"))
        .json(&serde_json::json!({ "name": name }))
        .timeout(ANSWER)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(err) => {
            run.book()
                .join_unanswered(identity, run.now(), err.to_string());
            return None;
        }
    };
    let status = response.status().as_u16();
    if status != 201 {
        run.book().join_refused(identity, run.now(), status);
        return None;
    }
    match response.json::<Joined>().await {
        Ok(joined) => {
            run.book().acked(identity, &joined.id, run.now());
            Some(Me {
                identity,
                id: joined.id,
                token: joined.token,
                name: name.to_owned(),
            })
        }
        Err(err) => {
            run.book()
                .join_unanswered(identity, run.now(), err.to_string());
            None
        }
    }
}

/// What reading a stream for a while came to.
enum Read {
    /// It was read for as long as the client meant to: time to do something.
    Dwelled,
    /// The node ended it, or it broke: the client reconnects, as EventSource does.
    Ended(String),
    /// No byte for `STALL`: its node is stopped; the client reconnects elsewhere.
    Stalled,
    /// It said the user is gone.
    Gone(String),
    Stop,
}

async fn live(run: &Run, client: usize, me: &Me, rng: &mut SmallRng) {
    // As a browser: the id of the last event, sent when it reconnects.
    let mut last_id: Option<u64> = None;
    let mut with_id = false;
    let mut held: Option<Open> = None;
    // A node that just failed to answer is not asked again at once.
    let mut avoid: Option<usize> = None;
    loop {
        let mut open = match held.take() {
            Some(open) => open,
            None => {
                let node = match avoid.take() {
                    Some(failed) => (failed + rng.random_range(1..NODES)) % NODES,
                    None => rng.random_range(0..NODES),
                };
                let after = last_id.filter(|_| with_id);
                match open_stream(run, me, node, after, rng).await {
                    Opening::Open(open) => open,
                    Opening::Refused(status, why) => {
                        let what = format!("GET /events: {status} {why}");
                        match second_opinion(run, me, node, &what, after, rng).await {
                            Some(open) => open,
                            None => return,
                        }
                    }
                    Opening::Failed(_) if *run.phase.borrow() == Phase::Stop => {
                        run.book().abandoned(me.identity, run.now());
                        return;
                    }
                    Opening::Failed(why) => {
                        run.book().open_failed(why);
                        avoid = Some(node);
                        pause(rng, 100, 400).await;
                        continue;
                    }
                }
            }
        };
        let dwell = Duration::from_millis(rng.random_range(1000..8000));
        match read(run, client, me, &mut open, &mut last_id, dwell).await {
            Read::Dwelled => {}
            Read::Ended(why) => {
                run.book().closed(open.log, run.now(), &why);
                with_id = true;
                pause(rng, 0, 600).await;
                continue;
            }
            Read::Stalled => {
                run.book().closed(open.log, run.now(), "stalled");
                avoid = Some(open.node);
                with_id = true;
                continue;
            }
            Read::Gone(how) => {
                told_gone(run, me, open.node, &how).await;
                run.book().closed(open.log, run.now(), &how);
                return;
            }
            Read::Stop => {
                let now = run.now();
                run.book().closed(open.log, now, "the run stops");
                run.book().abandoned(me.identity, now);
                return;
            }
        }
        match rng.random_range(0..100) {
            // Drops the stream and comes back within grace, on any node.
            0..40 => {
                run.book()
                    .closed(open.log, run.now(), "dropped by its client");
                pause(rng, 0, 1200).await;
                with_id = rng.random_bool(0.7);
            }
            // Moves: a stream on another node first, then this one dropped.
            40..50 => {
                let node = (open.node + rng.random_range(1..NODES)) % NODES;
                match open_stream(run, me, node, last_id, rng).await {
                    Opening::Open(moved) => {
                        run.book()
                            .closed(open.log, run.now(), "moved to another node");
                        held = Some(moved);
                    }
                    Opening::Refused(status, why) => {
                        let what = format!("GET /events: {status} {why}");
                        match second_opinion(run, me, node, &what, last_id, rng).await {
                            Some(moved) => {
                                run.book()
                                    .closed(open.log, run.now(), "moved to another node");
                                held = Some(moved);
                            }
                            None => {
                                run.book().closed(open.log, run.now(), "refused");
                                return;
                            }
                        }
                    }
                    Opening::Failed(why) => {
                        run.book().open_failed(why);
                        held = Some(open);
                    }
                }
            }
            // Leaves with the stream open.
            50..62 => {
                leave(run, me, rng).await;
                run.book().closed(open.log, run.now(), "left");
                return;
            }
            // Closes the stream, then leaves within grace.
            62..70 => {
                run.book()
                    .closed(open.log, run.now(), "closed before leaving");
                pause(rng, 0, 1000).await;
                leave(run, me, rng).await;
                return;
            }
            // Closes the stream and never comes back: gone after grace.
            70..80 => {
                let now = run.now();
                run.book().closed(open.log, now, "dropped for good");
                run.book().abandoned(me.identity, now);
                return;
            }
            _ => held = Some(open),
        }
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send>>;

/// An open stream: its record in the book, its node, its events, and when
/// its last byte came (ms since the run began).
struct Open {
    log: usize,
    node: usize,
    events: Events,
    last_byte: Arc<AtomicU64>,
}

enum Opening {
    Open(Open),
    /// 401 or 403: the token is not (or no longer) good.
    Refused(u16, String),
    Failed(String),
}

async fn open_stream(
    run: &Run,
    me: &Me,
    node: usize,
    after: Option<u64>,
    rng: &mut SmallRng,
) -> Opening {
    let mut request = run.streams.get(run.url(node, "/events"));
    request = if rng.random_bool(0.5) {
        request.query(&[("token", &me.token)])
    } else {
        request.bearer_auth(&me.token)
    };
    if let Some(id) = after {
        request = request.header("Last-Event-ID", id.to_string());
    }
    let sent = run.now();
    let response = match tokio::time::timeout(OPEN, request.send()).await {
        Ok(Ok(response)) => response,
        Ok(Err(err)) if err.is_connect() => return Opening::Failed("no connection".into()),
        Ok(Err(_)) => return Opening::Failed("a broken reply".into()),
        Err(_) => {
            let mut book = run.book();
            let first = &mut book.identities[me.identity].first_unanswered;
            first.get_or_insert(sent);
            return Opening::Failed(format!("no answer within {OPEN:?}"));
        }
    };
    match response.status().as_u16() {
        200 => {}
        status @ (401 | 403) => {
            let body = tokio::time::timeout(Duration::from_secs(1), response.text()).await;
            let why = body.ok().and_then(Result::ok).unwrap_or_default();
            return Opening::Refused(status, why);
        }
        status => return Opening::Failed(format!("GET /events: {status}")),
    }
    let log = run.book().opened(me.identity, node, after, run.now());
    let started = run.started;
    let last_byte = Arc::new(AtomicU64::new(millis(started.elapsed())));
    let tap = last_byte.clone();
    let events = response
        .bytes_stream()
        .inspect(move |_| tap.store(millis(started.elapsed()), Ordering::Relaxed))
        .eventsource();
    Opening::Open(Open {
        log,
        node,
        events: Box::pin(events),
        last_byte,
    })
}

/// Reads `open` for `dwell` (longer while the clients hold still), taking
/// every event to the book.
async fn read(
    run: &Run,
    client: usize,
    me: &Me,
    open: &mut Open,
    last_id: &mut Option<u64>,
    dwell: Duration,
) -> Read {
    let until = run.now() + dwell;
    let mut phase = run.phase.subscribe();
    let read = loop {
        let tick = tokio::time::sleep(Duration::from_millis(200));
        tokio::select! {
            next = open.events.next() => match next {
                Some(Ok(event)) => {
                    let heard = run.book().received(open.log, &event, run.now());
                    match heard {
                        Heard::Fine(id) => *last_id = id.or(*last_id),
                        Heard::Gone(how) => break Read::Gone(how),
                    }
                }
                Some(Err(err)) => break Read::Ended(format!("broke: {err}")),
                None => break Read::Ended("ended by its node".into()),
            },
            () = tick => {
                let now = *phase.borrow_and_update();
                if now == Phase::Stop {
                    break Read::Stop;
                }
                let quiet = millis(run.now()).saturating_sub(open.last_byte.load(Ordering::Relaxed));
                if quiet > millis(STALL) {
                    break Read::Stalled;
                }
                run.rest(client, now == Phase::Hold);
                if now == Phase::Churn && run.now() >= until {
                    break Read::Dwelled;
                }
            }
        }
    };
    run.rest(client, false);
    let _ = me;
    read
}

/// POST /leave on any node, trying others while Redis is away; the user ends
/// either way (without a 204, after grace). A 401 is checked with the other
/// nodes, as for a stream.
async fn leave(run: &Run, me: &Me, rng: &mut SmallRng) {
    let mut refusal: Option<(Duration, Result<(), String>, Vec<String>)> = None;
    for attempt in 0..6 {
        let node = rng.random_range(0..NODES);
        let status = post_leave(run, me, node).await;
        match status {
            Some(204) => {
                if let Some((at, Ok(()), asked)) = refusal {
                    contradicted(run, me, at, &format!("left on node {node}"), &asked);
                }
                run.book().left(me.identity, run.now());
                return;
            }
            Some(status @ (401 | 403)) => {
                let health = health_of(run, node).await;
                let said = format!("node {node}: POST /leave {status} (its /healthz: {health})");
                match &mut refusal {
                    Some((_, _, asked)) => asked.push(said),
                    None => {
                        let at = run.now();
                        let entitled = run.book().entitled(me.identity, at);
                        refusal = Some((at, entitled, vec![said]));
                    }
                }
                let gave_up = refusal
                    .as_ref()
                    .is_some_and(|(at, _, _)| run.now() > *at + GRACE && attempt >= 2);
                if gave_up {
                    break;
                }
            }
            _ => {}
        }
        pause(rng, 200, 500).await;
    }
    match refusal {
        // The user meant to go: the harm is the answer, not a lost user.
        Some((at, entitled, asked)) => {
            if entitled.is_ok() {
                let what = format!("{} refused everywhere: {}", who(me), asked.join("; "));
                run.book().refused_token(me.identity, at, &what);
            }
            run.book().gone(me.identity, at);
        }
        None => run.book().abandoned(me.identity, run.now()),
    }
}

async fn post_leave(run: &Run, me: &Me, node: usize) -> Option<u16> {
    let sent = run
        .api
        .post(run.url(node, "/leave"))
        .bearer_auth(&me.token)
        .timeout(ANSWER)
        .send()
        .await;
    sent.ok().map(|response| response.status().as_u16())
}

/// What GET /healthz on `node` says, in short: a 503 means it is not in step with Redis.
async fn health_of(run: &Run, node: usize) -> String {
    let asked = run
        .api
        .get(run.url(node, "/healthz"))
        .timeout(Duration::from_secs(1))
        .send()
        .await;
    match asked {
        Ok(response) => response.status().as_u16().to_string(),
        Err(_) => "no answer".into(),
    }
}

/// A stream said the user is gone: a lost join, unless the docs allow it.
async fn told_gone(run: &Run, me: &Me, node: usize, how: &str) {
    let at = run.now();
    let entitled = run.book().entitled(me.identity, at);
    let what = format!("{} told on node {node}: {how}", who(me));
    run.book().lost(me.identity, at, entitled, &what);
}

/// `node` refused the token (401, 403): a careful client asks the other
/// nodes for the rest of the grace period, since one node may not be able
/// to check a token yet. A node that takes it makes the refusal a refused
/// token (and the stream goes on); if none does, the join is lost (unless
/// the docs allow it).
async fn second_opinion(
    run: &Run,
    me: &Me,
    node: usize,
    what: &str,
    after: Option<u64>,
    rng: &mut SmallRng,
) -> Option<Open> {
    let at = run.now();
    let entitled = run.book().entitled(me.identity, at);
    let health = health_of(run, node).await;
    let mut asked = vec![format!("node {node}: {what} (its /healthz: {health})")];
    let mut next = node;
    let mut attempts = 0;
    while attempts < 2 || run.now() < at + GRACE {
        attempts += 1;
        next = (next + 1) % NODES;
        pause(rng, 100, 300).await;
        match open_stream(run, me, next, after, rng).await {
            Opening::Open(open) => {
                if entitled.is_ok() {
                    contradicted(run, me, at, &format!("taken by node {next}"), &asked);
                }
                return Some(open);
            }
            Opening::Refused(status, _) => asked.push(format!(
                "node {next}: {status} (its /healthz: {})",
                health_of(run, next).await
            )),
            Opening::Failed(why) => asked.push(format!("node {next}: {why}")),
        }
    }
    let what = format!("{} refused everywhere: {}", who(me), asked.join("; "));
    run.book().lost(me.identity, at, entitled, &what);
    None
}

/// A token refused at `at` (by the nodes in `asked`) that a node then took:
/// what it was refused for was not so.
fn contradicted(run: &Run, me: &Me, at: Duration, then: &str, asked: &[String]) {
    let detail = format!(
        "{} refused, then {then} at {}: {}",
        who(me),
        t(run.now()),
        asked.join("; ")
    );
    run.book().refused_token(me.identity, at, &detail);
}

fn who(me: &Me) -> String {
    format!("{} ({})", me.name, short(&me.id))
}

async fn pause(rng: &mut SmallRng, from_ms: u64, to_ms: u64) {
    let wait = rng.random_range(from_ms..to_ms.max(from_ms + 1));
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

// ---- the check after a round ----

/// Holds the clients still, waits for the nodes and clients to agree (from
/// the last heal, within `CONVERGE_WITHIN`) and past `SETTLE`, then records
/// what does not hold: lost joins, nodes or views that differ, zombies.
/// Waits up to 20 s for every client to hold still; how many did not.
async fn until_resting(run: &Run) -> usize {
    let rest_by = run.now() + Duration::from_secs(20);
    while run.resting.iter().any(|r| !r.load(Ordering::Relaxed)) && run.now() < rest_by {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    run.resting
        .iter()
        .filter(|r| !r.load(Ordering::Relaxed))
        .count()
}

async fn check(run: &Run, cluster: &Cluster, round: u32, healed: Duration) {
    let restless = until_resting(run).await;
    for node in &cluster.nodes {
        let mut node = node.lock().await;
        let exited = node.process.as_mut().and_then(LobbyProcess::exited);
        if let Some(status) = exited {
            let detail = format!("node {} exited by itself with {status}", node.index);
            run.book().violate("node_crashed", run.now(), detail);
            let _ = node.launch(run.now()).await;
        }
    }
    let settled = healed + SETTLE;
    let deadline = healed + CONVERGE_WITHIN;
    let mut agreed: Option<Duration> = None;
    let (problems, lists, at) = loop {
        let lists = run.every_node_s_users().await;
        let at = run.now();
        let resting: Vec<bool> = run
            .resting
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .collect();
        let problems = run.book().disagreements(&lists, &resting);
        if problems.is_empty() {
            agreed.get_or_insert(at);
        }
        if (problems.is_empty() && at >= settled) || at >= deadline {
            break (problems, lists, at);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let converged = problems.is_empty().then(|| agreed.unwrap_or(at) - healed);
    let mut book = run.book();
    for (kind, identity, detail) in problems {
        match identity {
            Some(identity) => book.lost(identity, at, Ok(()), &detail),
            None => book.violate(kind, at, detail),
        }
    }
    let zombies = book.zombies(&lists, at, healed);
    book.checks.push(converged);
    let listed = lists
        .first()
        .and_then(|list| list.as_ref().ok())
        .map_or(0, BTreeMap::len);
    drop(book);
    run.say(&format!(
        "check {round}: last heal at {}, {}; {listed} listed, {zombies} zombies{}",
        t(healed),
        match converged {
            Some(within) => format!("converged {:.1}s after it", within.as_secs_f64()),
            None => format!("NOT converged within {CONVERGE_WITHIN:?}"),
        },
        if restless > 0 {
            format!(", {restless} clients still busy")
        } else {
            String::new()
        }
    ));
}

// ---- the book: what was asked, acknowledged, told and seen ----

#[derive(Default)]
struct Book {
    identities: Vec<Identity>,
    by_id: HashMap<String, usize>,
    by_name: HashMap<String, usize>,
    streams: Vec<StreamLog>,
    /// Every event any stream got, by id: its kind, its user and the stream
    /// that first showed it. An id means one event on every node.
    ledger: BTreeMap<u64, Seen>,
    /// Every snapshot any stream got, by id: its users.
    snapshots: HashMap<u64, (BTreeSet<String>, usize)>,
    faults: Vec<FaultRecord>,
    violations: Vec<Violation>,
    /// Losses the docs allow, and why.
    allowed: Vec<String>,
    joins: BTreeMap<String, usize>,
    /// Streams that could not be opened, by why.
    open_failures: BTreeMap<String, usize>,
    /// Each check's time to agree after its last heal, if it did.
    checks: Vec<Option<Duration>>,
    /// Identities listed past their bound: for how long, at most.
    zombies: BTreeMap<usize, Duration>,
    lost: BTreeSet<usize>,
}

struct Identity {
    client: usize,
    name: String,
    /// Its id, once a 201 said it.
    id: Option<String>,
    /// When its join was sent: the lobby's join timeout runs from a moment
    /// between this and the answer, so a client can count on it from here.
    asked_at: Duration,
    acked_at: Option<Duration>,
    node: usize,
    streams: Vec<usize>,
    /// When it first asked for a stream and had no answer in time: a node
    /// (paused, or waiting for Redis) may have counted that stream all the
    /// same, and seen it close when the client gave up.
    first_unanswered: Option<Duration>,
    end: Option<End>,
}

#[derive(Debug, Clone)]
enum End {
    /// Its join was refused (a 503 must never happen later).
    Refused(Duration, u16),
    /// Its join's answer never came: it may have happened.
    Unanswered(Duration),
    Left(Duration),
    /// Its client dropped it: its last stream closed (or it never had one).
    Abandoned(Duration),
    /// The lobby said it was gone.
    Gone(Duration),
}

struct StreamLog {
    identity: usize,
    node: usize,
    opened_at: Duration,
    closed_at: Option<Duration>,
    /// The Last-Event-ID it was opened with.
    after: Option<u64>,
    events: Vec<Received>,
    /// Who is online, as its events say: from its snapshot, or (a resume)
    /// from the view of the stream whose last id it resumed after.
    view: BTreeMap<String, String>,
    /// Whether `view` is known: false for a resume with no such stream, until a snapshot.
    seeded: bool,
    /// Whether it began with a snapshot that lists its own user: the lobby
    /// showed the user online when it opened.
    showed_online: bool,
    last_id: Option<u64>,
}

struct Received {
    id: u64,
    kind: String,
    at: Duration,
}

struct Seen {
    kind: String,
    user: String,
    stream: usize,
}

struct FaultRecord {
    number: usize,
    fault: Fault,
    start: Duration,
    end: Option<Duration>,
}

struct Violation {
    kind: &'static str,
    at: Duration,
    detail: String,
}

/// What a stream's event said of its own user.
enum Heard {
    Fine(Option<u64>),
    Gone(String),
}

impl Book {
    /// Every new_user and disconnect_user any stream got between `from` and `to`.
    fn membership_events(&self, from: Duration, to: Duration) -> Vec<String> {
        let mut found = Vec::new();
        for (s, stream) in self.streams.iter().enumerate() {
            for event in &stream.events {
                let membership = matches!(event.kind.as_str(), "new_user" | "disconnect_user");
                if membership && (from..=to).contains(&event.at) {
                    let name = self.stream_name(s);
                    found.push(format!(
                        "{name}: {} {} at {}",
                        event.kind,
                        event.id,
                        t(event.at)
                    ));
                }
            }
        }
        found
    }

    fn violate(&mut self, kind: &'static str, at: Duration, detail: String) {
        let shown = self.violations.iter().filter(|v| v.kind == kind).count();
        let detail = format!("{detail}; {}", self.context(at));
        if shown < SHOWN {
            println!("!! {} {kind}: {detail}", t(at));
        }
        self.violations.push(Violation { kind, at, detail });
    }

    /// The faults under way at `at`, or healed within 10 s before it.
    fn context(&self, at: Duration) -> String {
        let near: Vec<String> = self
            .faults
            .iter()
            .filter(|f| {
                f.start <= at && f.end.is_none_or(|end| end + Duration::from_secs(10) >= at)
            })
            .map(|f| {
                let end = f.end.map_or_else(|| "…".to_owned(), t);
                format!(
                    "#{} {} ({}..{end})",
                    f.number,
                    f.fault.describe(),
                    t(f.start)
                )
            })
            .collect();
        if near.is_empty() {
            "no fault within 10 s before".into()
        } else {
            format!("faults: {}", near.join("; "))
        }
    }

    fn asked(&mut self, client: usize, name: &str, node: usize, at: Duration) -> usize {
        *self.joins.entry("asked".into()).or_default() += 1;
        self.identities.push(Identity {
            client,
            name: name.to_owned(),
            id: None,
            asked_at: at,
            acked_at: None,
            node,
            streams: Vec::new(),
            first_unanswered: None,
            end: None,
        });
        let identity = self.identities.len() - 1;
        self.by_name.insert(name.to_owned(), identity);
        identity
    }

    fn acked(&mut self, identity: usize, id: &str, at: Duration) {
        *self.joins.entry("acknowledged (201)".into()).or_default() += 1;
        let me = &mut self.identities[identity];
        me.id = Some(id.to_owned());
        me.acked_at = Some(at);
        self.by_id.insert(id.to_owned(), identity);
    }

    fn join_refused(&mut self, identity: usize, at: Duration, status: u16) {
        *self.joins.entry(format!("refused ({status})")).or_default() += 1;
        self.identities[identity].end = Some(End::Refused(at, status));
    }

    fn join_unanswered(&mut self, identity: usize, at: Duration, _why: String) {
        *self.joins.entry("unanswered".into()).or_default() += 1;
        self.identities[identity].end = Some(End::Unanswered(at));
    }

    /// Counts a stream that could not be opened, by why.
    fn open_failed(&mut self, why: String) {
        *self.open_failures.entry(why).or_default() += 1;
    }

    fn left(&mut self, identity: usize, at: Duration) {
        self.identities[identity].end.get_or_insert(End::Left(at));
    }

    fn abandoned(&mut self, identity: usize, at: Duration) {
        self.identities[identity]
            .end
            .get_or_insert(End::Abandoned(at));
    }

    fn opened(&mut self, identity: usize, node: usize, after: Option<u64>, at: Duration) -> usize {
        // As a page does: a resume applies its replay to the list it had.
        let previous = after.and_then(|after| {
            self.identities[identity]
                .streams
                .iter()
                .rev()
                .map(|&s| &self.streams[s])
                .find(|stream| stream.last_id == Some(after) && stream.seeded)
        });
        let (view, seeded) = match previous {
            Some(previous) => (previous.view.clone(), true),
            None => (BTreeMap::new(), after.is_none()),
        };
        self.streams.push(StreamLog {
            identity,
            node,
            opened_at: at,
            closed_at: None,
            after,
            events: Vec::new(),
            view,
            seeded,
            showed_online: false,
            last_id: None,
        });
        let stream = self.streams.len() - 1;
        self.identities[identity].streams.push(stream);
        stream
    }

    fn closed(&mut self, stream: usize, at: Duration, _why: &str) {
        self.streams[stream].closed_at.get_or_insert(at);
    }

    /// Says of stream `s` who (client, user, node, when opened, after which id).
    fn stream_name(&self, s: usize) -> String {
        let stream = &self.streams[s];
        let me = &self.identities[stream.identity];
        let after = stream
            .after
            .map_or_else(String::new, |after| format!(", Last-Event-ID {after}"));
        format!(
            "{} ({})'s stream on node {} (opened {}{after})",
            me.name,
            me.id.as_deref().map_or("?", short),
            stream.node,
            t(stream.opened_at)
        )
    }

    /// Takes an event of stream `s` in: checks its id against the stream's
    /// and every stream's, applies it to the stream's view.
    fn received(&mut self, s: usize, event: &Event, at: Duration) -> Heard {
        let mut found: Vec<(&'static str, String)> = Vec::new();
        let name = self.stream_name(s);
        let Ok(id) = event.id.parse::<u64>() else {
            self.violate(
                "bad_id",
                at,
                format!("{name}: {} with id {:?}", event.event, event.id),
            );
            return Heard::Fine(None);
        };
        let me = self.identities[self.streams[s].identity]
            .id
            .clone()
            .unwrap_or_default();
        let stream = &mut self.streams[s];
        if let Some(last) = stream.last_id
            && id <= last
        {
            found.push((
                "ids_not_increasing",
                format!("{name}: {} {id} after {last}", event.event),
            ));
        }
        if stream.events.is_empty() && event.event != "existing_users" {
            match stream.after {
                Some(after) if id > after => {}
                Some(after) => found.push((
                    "bad_resume",
                    format!("{name}: began with {} {id}, not after {after}", event.event),
                )),
                None => found.push((
                    "bad_resume",
                    format!(
                        "{name}: opened without Last-Event-ID, began with {} {id}",
                        event.event
                    ),
                )),
            }
        }
        stream.last_id = Some(id);
        stream.events.push(Received {
            id,
            kind: event.event.clone(),
            at,
        });
        let mut heard = Heard::Fine(Some(id));
        match event.event.as_str() {
            "existing_users" => {
                let users = users_of(&event.data);
                let ids: BTreeSet<String> = users.keys().cloned().collect();
                if !ids.contains(&me) {
                    heard = Heard::Gone(format!("a snapshot ({id}) without it"));
                } else if stream.events.len() == 1 {
                    stream.showed_online = true;
                }
                stream.view = users;
                stream.seeded = true;
                match self.snapshots.get(&id) {
                    Some((seen, by)) if *seen != ids => {
                        let only_here: Vec<&str> = ids.difference(seen).map(|u| short(u)).collect();
                        let only_there: Vec<&str> =
                            seen.difference(&ids).map(|u| short(u)).collect();
                        found.push((
                            "snapshot_two_meanings",
                            format!(
                                "{name}: snapshot {id} differs from the one {} got: only here {only_here:?}, only there {only_there:?}",
                                self.stream_name(*by)
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        self.snapshots.insert(id, (ids, s));
                    }
                }
            }
            kind @ ("new_user" | "disconnect_user" | "user_updated") => {
                let (user, user_name) = user_of(&event.data);
                let twice = match kind {
                    "new_user" => stream
                        .view
                        .insert(user.clone(), user_name.clone())
                        .is_some()
                        .then_some("already shown"),
                    "disconnect_user" => stream.view.remove(&user).is_none().then_some("not shown"),
                    _ => None,
                };
                if let Some(twice) = twice.filter(|_| stream.seeded) {
                    found.push((
                        "event_twice",
                        format!(
                            "{name}: {kind} {id} for {user_name} ({}), {twice}",
                            short(&user)
                        ),
                    ));
                }
                if kind == "disconnect_user" && user == me {
                    heard = Heard::Gone(format!("its own disconnect_user ({id})"));
                }
                match self.ledger.get(&id) {
                    Some(seen) if seen.kind != kind || seen.user != user => found.push((
                        "id_two_meanings",
                        format!(
                            "{name}: {id} is {kind} of {user_name} ({}), but {} of {} for {}",
                            short(&user),
                            seen.kind,
                            short(&seen.user),
                            self.stream_name(seen.stream)
                        ),
                    )),
                    Some(_) => {}
                    None => {
                        self.ledger.insert(
                            id,
                            Seen {
                                kind: kind.to_owned(),
                                user,
                                stream: s,
                            },
                        );
                    }
                }
            }
            other => found.push(("unknown_event", format!("{name}: {other} {id}"))),
        }
        for (kind, detail) in found {
            self.violate(kind, at, detail);
        }
        heard
    }

    /// Whether identity `i` should still be online at `at` by the documented
    /// rules, and if not, why not: every moment since the lobby last showed it
    /// online (its join, or the latest stream a node in step with Redis
    /// opened for it) must be covered. The join covers the join timeout, until
    /// its first stream; a stream on a node in step with Redis covers from its
    /// opening to grace after it closed (while Redis was away from that node,
    /// grace waits for it); a stream on a node taken for dead (killed, or away
    /// from Redis for most of a node timeout) covers only to grace after the
    /// node's last heartbeat, and one opened on such a node covers nothing.
    /// A stream request that went unanswered may have been counted, and
    /// closed when the client gave up, so it ends the join's cover; it covers
    /// nothing itself, since it may as well never have been counted (a node
    /// paused throughout).
    fn entitled(&self, i: usize, at: Duration) -> Result<(), String> {
        let me = &self.identities[i];
        if me.end.is_some() {
            return Err("it had ended".into());
        }
        let Some(acked) = me.acked_at else {
            return Err("it was never acknowledged".into());
        };
        let streams: Vec<&StreamLog> = me.streams.iter().map(|&s| &self.streams[s]).collect();
        let confirmed = streams
            .iter()
            .filter(|stream| {
                stream.showed_online && self.in_step(stream.node, stream.opened_at, at)
            })
            .map(|stream| stream.opened_at)
            .fold(acked, Duration::max);
        let joined = self.join_deadline(me.asked_at, at);
        let first = streams
            .first()
            .map_or(joined, |stream| stream.opened_at.min(joined));
        let first = me.first_unanswered.map_or(first, |sent| sent.min(first));
        let mut cover = vec![(acked, first, "its join".to_owned())];
        for stream in streams {
            let (opened, node) = (stream.opened_at, stream.node);
            let close = stream.closed_at.unwrap_or(at);
            let until = self.extended(close + GRACE, close, node, at);
            let what = format!("its stream on node {node} ({}..)", t(opened));
            match self.isolation(node, opened, until, at) {
                None => cover.push((opened, until, what)),
                Some(fault) => {
                    let beat = fault.start.saturating_sub(NODE_TIMEOUT / 3);
                    let until = close.min(beat).max(opened) + GRACE;
                    let until = if fault.start <= opened { opened } else { until };
                    let what = format!(
                        "{what}, met by #{} {}",
                        fault.number,
                        fault.fault.describe()
                    );
                    cover.push((opened, until, what));
                }
            }
        }
        cover.retain(|(_, until, _)| *until >= confirmed);
        cover.sort_by_key(|(from, _, _)| *from);
        let mut reach = confirmed;
        let mut last = format!("the lobby showed it online at {}", t(confirmed));
        for (from, until, what) in cover {
            if from > reach + TOLERANCE && from <= at {
                return Err(format!(
                    "nothing kept it online from {} to {} (after {last})",
                    t(reach),
                    t(from)
                ));
            }
            if until > reach {
                reach = until;
                last = what;
            }
        }
        // Told at `at`, after the lobby decided: a loss seen just before the
        // estimated deadline, or after it, is on time.
        if reach < at + TOLERANCE {
            return Err(format!(
                "nothing kept it online after {} ({last})",
                t(reach)
            ));
        }
        Ok(())
    }

    /// The earliest the join timeout of a join asked at `asked` can end. Its
    /// deadline is in Redis from the join on, whatever becomes of the node
    /// that answered it. Redis away from every node when it falls, for longer
    /// than half a node timeout (so that no node reaped meanwhile), moves it
    /// to grace after Redis is back; Redis come back empty puts the user back
    /// with grace, which may end sooner (the node that answered the join,
    /// which keeps the rest of its join timeout, may be away).
    fn join_deadline(&self, asked: Duration, at: Duration) -> Duration {
        let due = asked + JOIN_TIMEOUT;
        self.faults
            .iter()
            .filter(|f| f.fault.away_for_every_node() && f.start <= due)
            .fold(due, |deadline, f| {
                let end = f.end.unwrap_or(at);
                let during = deadline <= end;
                match f.fault {
                    Fault::RestartRedisEmpty { .. } if asked > end => deadline,
                    Fault::RestartRedisEmpty { .. } if during => end + GRACE,
                    Fault::RestartRedisEmpty { .. } => deadline.min(end + GRACE),
                    _ if during && end - f.start > NODE_TIMEOUT / 2 => end + GRACE,
                    _ => deadline,
                }
            })
    }

    /// Whether `node` was in step with Redis at `when`: no fault kept them
    /// apart then, or in the two seconds before (a node takes a moment to
    /// reconnect and catch up). A node that is not serves from what it last
    /// knew, which moves no deadline in Redis: it shows nothing for sure.
    fn in_step(&self, node: usize, when: Duration, at: Duration) -> bool {
        let settle = Duration::from_secs(2);
        !self.faults.iter().any(|f| {
            (f.fault.own(node) || f.fault.away_for(node))
                && f.start <= when
                && f.end.unwrap_or(at) + settle >= when
        })
    }

    /// The first fault that took `node` for dead between `from` and `to`.
    fn isolation(
        &self,
        node: usize,
        from: Duration,
        to: Duration,
        at: Duration,
    ) -> Option<&FaultRecord> {
        self.faults
            .iter()
            .filter(|f| f.fault.isolates(node) && f.start <= to && f.end.unwrap_or(at) >= from)
            .min_by_key(|f| f.start)
    }

    /// A grace ending at `until` for a stream on `node` that closed at
    /// `from`: if Redis was away from that node then, the node tells Redis
    /// when it is back, and grace starts then. (A deadline that falls while
    /// Redis is away is not moved: it is due when Redis is back.)
    fn extended(&self, until: Duration, from: Duration, node: usize, at: Duration) -> Duration {
        self.faults
            .iter()
            .filter(|f| f.fault.away_for(node) && f.start <= from && f.end.unwrap_or(at) >= from)
            .map(|f| f.end.unwrap_or(at) + GRACE)
            .fold(until, Duration::max)
    }

    /// The lobby dropped identity `i` (told so at `at`): a lost join when it
    /// was entitled to stay, a loss the docs allow when not.
    fn lost(&mut self, i: usize, at: Duration, entitled: Result<(), String>, what: &str) {
        let me = &self.identities[i];
        let already = me.end.is_some();
        match entitled {
            Ok(()) => {
                let detail = format!("{what} ({})", self.life_of(i));
                if self.lost.insert(i) {
                    self.violate("lost_join", at, detail);
                }
            }
            Err(why) if !already => self.allowed.push(format!("{} {what}: {why}", t(at))),
            Err(_) => {}
        }
        self.identities[i].end.get_or_insert(End::Gone(at));
    }

    fn gone(&mut self, i: usize, at: Duration) {
        self.identities[i].end.get_or_insert(End::Gone(at));
    }

    /// A node refused the token of identity `i`, which another node took later.
    fn refused_token(&mut self, i: usize, at: Duration, what: &str) {
        let detail = format!("{what} ({})", self.life_of(i));
        self.violate("refused_token", at, detail);
    }

    /// Where and when identity `i` joined, and its streams.
    fn life_of(&self, i: usize) -> String {
        let me = &self.identities[i];
        let acked = me.acked_at.map_or_else(|| "never".into(), t);
        format!(
            "joined on node {} at {acked}; {}",
            me.node,
            self.history_of(i)
        )
    }

    /// The identity's streams, in short: node, opened, closed.
    fn history_of(&self, i: usize) -> String {
        let streams: Vec<String> = self.identities[i]
            .streams
            .iter()
            .map(|&s| {
                let stream = &self.streams[s];
                format!(
                    "node {} {}..{}",
                    stream.node,
                    t(stream.opened_at),
                    stream.closed_at.map_or_else(|| "open".into(), t)
                )
            })
            .collect();
        if streams.is_empty() {
            "no stream".into()
        } else {
            format!("streams {}", streams.join(", "))
        }
    }

    /// What keeps the nodes and the clients from agreeing now: nodes whose
    /// lists differ, an open stream whose view differs from its node's list,
    /// a user with an open stream that some node does not list (with the
    /// identity: a lost join if it lasts).
    fn disagreements(
        &self,
        lists: &[Result<BTreeMap<String, String>, String>],
        resting: &[bool],
    ) -> Vec<(&'static str, Option<usize>, String)> {
        let mut problems = Vec::new();
        let mut answered = Vec::new();
        for (node, list) in lists.iter().enumerate() {
            match list {
                Ok(list) => answered.push((node, list)),
                Err(err) => problems.push(("nodes_disagree", None, err.clone())),
            }
        }
        if let Some(&(first, reference)) = answered.first() {
            for &(node, list) in &answered[1..] {
                if list != reference {
                    problems.push((
                        "nodes_disagree",
                        None,
                        format!(
                            "node {node} lists {} users, node {first} {}: only on node {node} {:?}, only on node {first} {:?}",
                            list.len(),
                            reference.len(),
                            self.names(list, reference),
                            self.names(reference, list)
                        ),
                    ));
                }
            }
        }
        for (s, stream) in self.streams.iter().enumerate() {
            let me = &self.identities[stream.identity];
            if stream.closed_at.is_some() || me.end.is_some() || !resting[me.client] {
                continue;
            }
            let id = me.id.clone().unwrap_or_default();
            for &(node, list) in &answered {
                if !list.contains_key(&id) {
                    problems.push((
                        "lost_join",
                        Some(stream.identity),
                        format!(
                            "{} holds an open stream but node {node} does not list it ({})",
                            self.stream_name(s),
                            self.history_of(stream.identity)
                        ),
                    ));
                    break;
                }
            }
            if let Some((_, list)) = answered.iter().find(|(node, _)| *node == stream.node)
                && stream.seeded
                && stream.view != **list
            {
                problems.push((
                    "view_disagrees",
                    None,
                    format!(
                        "{} shows {} users, its node lists {}: only in the view {:?}, only on the node {:?}",
                        self.stream_name(s),
                        stream.view.len(),
                        list.len(),
                        self.names(&stream.view, list),
                        self.names(list, &stream.view)
                    ),
                ));
            }
        }
        problems
    }

    /// The users of `some` that `others` lacks, by name (and id).
    fn names(
        &self,
        some: &BTreeMap<String, String>,
        others: &BTreeMap<String, String>,
    ) -> Vec<String> {
        some.iter()
            .filter(|(id, _)| !others.contains_key(*id))
            .map(|(id, name)| format!("{name} ({})", short(id)))
            .collect()
    }

    /// Records who is listed past their bound (or was never acknowledged, or
    /// was refused); how many.
    fn zombies(
        &mut self,
        lists: &[Result<BTreeMap<String, String>, String>],
        at: Duration,
        healed: Duration,
    ) -> usize {
        let mut listed: BTreeMap<String, (String, Vec<usize>)> = BTreeMap::new();
        for (node, list) in lists.iter().enumerate() {
            for (id, name) in list.iter().flatten() {
                listed
                    .entry(id.clone())
                    .or_insert_with(|| (name.clone(), Vec::new()))
                    .1
                    .push(node);
            }
        }
        let mut count = 0;
        for (id, (name, nodes)) in listed {
            let identity = self
                .by_id
                .get(&id)
                .or_else(|| self.by_name.get(&name))
                .copied();
            let Some(i) = identity else {
                count += 1;
                self.violate(
                    "zombie",
                    at,
                    format!(
                        "{name} ({}) on nodes {nodes:?}: no client ever asked for it",
                        short(&id)
                    ),
                );
                continue;
            };
            let me = &self.identities[i];
            let gone_by = match me.end {
                None => continue,
                Some(End::Refused(when, status)) => {
                    if self.zombies.insert(i, at - when).is_none() {
                        count += 1;
                        self.violate("refused_join_happened", at, format!("{name} ({}) is listed on nodes {nodes:?}, though its join got {status} at {}", short(&id), t(when)));
                    }
                    continue;
                }
                Some(End::Unanswered(when)) => when + JOIN_TIMEOUT,
                Some(End::Left(when)) => when,
                Some(End::Abandoned(when)) => {
                    when + if me.streams.is_empty() {
                        JOIN_TIMEOUT
                    } else {
                        GRACE
                    }
                }
                Some(End::Gone(when)) => when + GRACE,
            };
            let bound = gone_by.max(healed + GRACE) + NODE_TIMEOUT + MARGIN;
            if at > bound {
                let first = !self.zombies.contains_key(&i);
                let longest = self.zombies.entry(i).or_default();
                *longest = (*longest).max(at - gone_by);
                count += 1;
                if first {
                    let detail = format!(
                        "{name} ({}) still listed on nodes {nodes:?} {:.1}s after it should have gone ({:?}; {})",
                        short(&id),
                        (at - gone_by).as_secs_f64(),
                        me.end,
                        self.history_of(i)
                    );
                    self.violate("zombie", at, detail);
                }
            }
        }
        count
    }

    /// Every stream against every event any stream saw: between where a
    /// stream began (its snapshot, or the Last-Event-ID it resumed after) and
    /// its last event, it must have had every event of the room.
    fn check_every_stream(&mut self) {
        let mut found = Vec::new();
        for (s, stream) in self.streams.iter().enumerate() {
            let mut segments: Vec<(u64, bool, BTreeSet<u64>, Duration)> = Vec::new();
            for event in &stream.events {
                if event.kind == "existing_users" {
                    segments.push((event.id, false, BTreeSet::new(), event.at));
                    continue;
                }
                if segments.is_empty() {
                    segments.push((stream.after.unwrap_or(0), true, BTreeSet::new(), event.at));
                }
                if let Some(segment) = segments.last_mut() {
                    segment.2.insert(event.id);
                }
            }
            for (start, replay, got, at) in segments {
                let Some(&last) = got.last() else { continue };
                if last <= start {
                    continue;
                }
                let missing: Vec<String> = self
                    .ledger
                    .range(start + 1..=last)
                    .filter(|(id, _)| !got.contains(id))
                    .map(|(id, seen)| format!("{id} {} of {}", seen.kind, short(&seen.user)))
                    .collect();
                if missing.is_empty() {
                    continue;
                }
                let first = got.first().copied().unwrap_or(last);
                let kind = if replay && self.ledger.range(start + 1..first).next().is_some() {
                    "bad_resume"
                } else {
                    "missed_event"
                };
                let shown: Vec<&String> = missing.iter().take(8).collect();
                found.push((
                    kind,
                    at,
                    format!(
                        "{}: after {start}{} it lacks {} events up to {last}: {shown:?}",
                        self.stream_name(s),
                        if replay {
                            " (a replay)"
                        } else {
                            " (a snapshot)"
                        },
                        missing.len()
                    ),
                ));
            }
        }
        for (kind, at, detail) in found {
            self.violate(kind, at, detail);
        }
    }

    fn report(&self, run: &Run, rounds: u32) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "== chaos report");
        let _ = writeln!(
            out,
            "seed {} (replay: LOBBY_CHAOS_SEED={}); {:.0} s in {rounds} rounds; {NODES} nodes, {CLIENTS} clients; {}",
            run.seed,
            run.seed,
            run.now().as_secs_f64(),
            FLAGS[..6].join(" ")
        );
        let mut kinds: BTreeMap<&str, usize> = KINDS.iter().map(|kind| (*kind, 0)).collect();
        for fault in &self.faults {
            *kinds.entry(fault.fault.kind()).or_default() += 1;
        }
        let _ = writeln!(
            out,
            "faults injected: {} ({})",
            self.faults.len(),
            counts(&kinds)
        );
        let joins: BTreeMap<&str, usize> =
            self.joins.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let _ = writeln!(out, "joins: {}", counts(&joins));
        let failures: BTreeMap<&str, usize> = self
            .open_failures
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        let _ = writeln!(
            out,
            "streams opened: {}; not opened: {}",
            self.streams.len(),
            counts(&failures)
        );
        let _ = writeln!(out, "lost acknowledged joins: {}", self.lost.len());
        let _ = writeln!(
            out,
            "losses the docs allow (a node taken for dead, a client away past grace): {}",
            self.allowed.len()
        );
        let longest = self.zombies.values().max().copied().unwrap_or_default();
        let _ = writeln!(
            out,
            "zombies: {} (longest listed {:.1}s after it should have gone; bound grace + node timeout + {MARGIN:?})",
            self.zombies.len(),
            longest.as_secs_f64()
        );
        let converged: Vec<String> = self
            .checks
            .iter()
            .map(|c| c.map_or_else(|| "never".into(), |d| format!("{:.1}s", d.as_secs_f64())))
            .collect();
        let worst = if self.checks.iter().any(Option::is_none) {
            format!("not within {CONVERGE_WITHIN:?}")
        } else {
            let max = self
                .checks
                .iter()
                .flatten()
                .max()
                .copied()
                .unwrap_or_default();
            format!("{:.1}s", max.as_secs_f64())
        };
        let _ = writeln!(
            out,
            "longest time to converge after the last heal: {worst} (each check: {})",
            converged.join(", ")
        );
        let mut by_kind: BTreeMap<&str, Vec<&Violation>> = BTreeMap::new();
        for violation in &self.violations {
            by_kind.entry(violation.kind).or_default().push(violation);
        }
        let totals: BTreeMap<&str, usize> = by_kind.iter().map(|(k, v)| (*k, v.len())).collect();
        let _ = writeln!(
            out,
            "violations: {}{}",
            self.violations.len(),
            if totals.is_empty() {
                String::new()
            } else {
                format!(" ({})", counts(&totals))
            }
        );
        for (kind, violations) in &by_kind {
            let _ = writeln!(
                out,
                "-- {kind}, the first {} of {}:",
                violations.len().min(SHOWN),
                violations.len()
            );
            for violation in violations.iter().take(SHOWN) {
                let _ = writeln!(out, "   {} {}", t(violation.at), violation.detail);
            }
        }
        if !self.allowed.is_empty() {
            let _ = writeln!(
                out,
                "-- allowed losses, the first {}:",
                self.allowed.len().min(SHOWN)
            );
            for allowed in self.allowed.iter().take(SHOWN) {
                let _ = writeln!(out, "   {allowed}");
            }
        }
        out
    }
}

// ---- small things ----

/// The users of an `existing_users` event's data, by id.
fn users_of(data: &str) -> BTreeMap<String, String> {
    let value: Value = serde_json::from_str(data).unwrap_or_default();
    let users: Vec<User> = serde_json::from_value(value["users"].clone()).unwrap_or_default();
    users.into_iter().map(|u| (u.id, u.name)).collect()
}

/// The id and name in a `new_user`, `disconnect_user` or `user_updated` event's data.
fn user_of(data: &str) -> (String, String) {
    let value: Value = serde_json::from_str(data).unwrap_or_default();
    let text = |key: &str| value[key].as_str().unwrap_or_default().to_owned();
    (text("id"), text("name"))
}

/// The first 8 characters of an id, enough to find it in a log.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// A time of the run: `+12.3s`.
fn t(at: Duration) -> String {
    format!("+{:.1}s", at.as_secs_f64())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn counts(counts: &BTreeMap<&str, usize>) -> String {
    let parts: Vec<String> = counts
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    parts.join(", ")
}

/// Spreads a client's index over a seed's bits.
fn mix(value: u64) -> u64 {
    value.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// `LOBBY_CHAOS_SECS`, or a minute.
fn chaos_secs() -> u64 {
    match std::env::var("LOBBY_CHAOS_SECS") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("LOBBY_CHAOS_SECS is a number of seconds, not {text:?}")),
        Err(_) => DEFAULT_SECS,
    }
}

/// `LOBBY_CHAOS_SEED` to replay a run's choices, or a fresh one.
fn chaos_seed() -> u64 {
    match std::env::var("LOBBY_CHAOS_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("LOBBY_CHAOS_SEED is a number, not {text:?}")),
        Err(_) => rand::random(),
    }
}
