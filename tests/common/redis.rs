//! Cluster mode under test: a real `redis-server` of its own on a free port,
//! which a test can stop, start again (empty, or from its append-only file),
//! pause or kill, and read keys from; and
//! lobby clusters that share one, as in-process nodes or as real binaries that
//! a test can SIGKILL.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eventsource_stream::Event;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::{Client, LobbyProcess, Sse, TestServer, free_addr};

/// Debian's server and client (package `redis-server`, which `.ci/run` installs).
const REDIS_SERVER: &str = "redis-server";
const REDIS_CLI: &str = "redis-cli";

/// How long a redis-server or a lobby node may take to start answering.
const STARTUP: Duration = Duration::from_secs(10);

/// Redis servers started by this test binary, to give each its own directory.
static SERVERS: AtomicUsize = AtomicUsize::new(0);

/// How often a wait with a deadline looks again.
const POLL: Duration = Duration::from_millis(20);

/// Whether `LOBBY_TEST_CLUSTER` asks for every [`TestServer`] to be a cluster.
pub fn cluster_under_test() -> bool {
    std::env::var("LOBBY_TEST_CLUSTER").is_ok_and(|value| {
        matches!(
            value.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// A `redis-server` on a free port of 127.0.0.1. By default it keeps nothing
/// on disk, so that starting it again is starting it empty (as after a crash
/// that lost its data); [`RedisServer::start_with_aof`] makes one that writes
/// every change to its append-only file before answering. Killed when dropped.
pub struct RedisServer {
    port: u16,
    /// Its working directory, log and append-only file, removed when dropped.
    dir: PathBuf,
    /// Whether it keeps an append-only file (`--appendonly yes`).
    aof: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one and waits until it answers PING. A port taken between
    /// choosing it and binding it is met by trying another.
    pub async fn start() -> RedisServer {
        RedisServer::start_keeping(false).await
    }

    /// The same, with `--appendonly yes --appendfsync always`: every write
    /// is on disk before Redis answers it, so that [`start_again`] after a
    /// SIGKILL comes back with everything it acknowledged.
    ///
    /// [`start_again`]: RedisServer::start_again
    pub async fn start_with_aof() -> RedisServer {
        RedisServer::start_keeping(true).await
    }

    async fn start_keeping(aof: bool) -> RedisServer {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = free_addr().port();
            let dir = std::env::temp_dir().join(format!(
                "lobby-test-redis-{}-{}",
                std::process::id(),
                SERVERS.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("a directory for redis-server");
            let mut server = RedisServer {
                port,
                dir,
                aof,
                child: None,
            };
            match server.launch().await {
                Ok(()) => return server,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("redis-server did not start: {failures:#?}");
    }

    /// `redis://127.0.0.1:PORT/`, for `--redis`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops it the way an operator does (SIGTERM) and waits until it has exited.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("redis-server is running");
        let pid = child.id().expect("redis-server has not been reaped");
        let signalled = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(signalled.success(), "kill -TERM {pid}");
        tokio::time::timeout(STARTUP, child.wait())
            .await
            .expect("redis-server exits on SIGTERM")
            .expect("wait for redis-server");
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Its log file (`--logfile`), in its directory.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// Starts it again on the same port and waits until it answers PING:
    /// empty, or, with an append-only file, with what that file holds.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is still running");
        if let Err(failure) = self.launch().await {
            panic!(
                "redis-server did not start again on port {}: {failure}",
                self.port
            );
        }
    }

    /// Starts it again on the same port with nothing, whatever it kept on
    /// disk (the append-only file and any snapshot are deleted first).
    pub async fn start_again_empty(&mut self) {
        assert!(self.child.is_none(), "redis-server is still running");
        for kept in ["appendonlydir", "dump.rdb"] {
            let path = self.dir.join(kept);
            let _ = std::fs::remove_dir_all(&path);
            let _ = std::fs::remove_file(&path);
        }
        self.start_again().await;
    }

    /// Freezes it (SIGSTOP): connections stay open and nothing is answered,
    /// as when Redis hangs or its network stalls.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run on (SIGCONT); what it was sent meanwhile runs now.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server is running");
        let pid = child.id().expect("redis-server has not been reaped");
        let signalled = std::process::Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(signalled.success(), "kill {signal} {pid}");
    }

    /// Kills it with SIGKILL, as a crash would, and reaps it.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Runs one command through `redis-cli --raw`; its reply, one line per
    /// element (an empty string for nil).
    pub async fn command(&self, args: &[&str]) -> Vec<String> {
        let output = Command::new(REDIS_CLI)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--raw"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run redis-cli");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && !stdout.starts_with("ERR"),
            "redis-cli {args:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout.lines().map(str::to_owned).collect()
    }

    /// Whether `key` exists.
    pub async fn exists(&self, key: &str) -> bool {
        self.command(&["EXISTS", key]).await == ["1"]
    }

    /// The members of the sorted set at `key`, lowest score first.
    pub async fn sorted_set(&self, key: &str) -> Vec<String> {
        self.list(&["ZRANGE", key, "0", "-1"]).await
    }

    /// The fields of the hash at `key`.
    pub async fn hash_fields(&self, key: &str) -> Vec<String> {
        self.list(&["HKEYS", key]).await
    }

    /// Every key matching `pattern`, sorted (KEYS: fine for a test's few keys).
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys = self.list(&["KEYS", pattern]).await;
        keys.sort_unstable();
        keys
    }

    /// A command whose reply is an array of non-empty strings (`--raw` prints
    /// an empty array as one empty line).
    async fn list(&self, args: &[&str]) -> Vec<String> {
        let mut lines = self.command(args).await;
        lines.retain(|line| !line.is_empty());
        lines
    }

    /// Spawns redis-server on `self.port` and waits until it answers PING.
    async fn launch(&mut self) -> Result<(), String> {
        let log = self.log_file();
        let persistence: &[&str] = if self.aof {
            &[
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ]
        } else {
            &["--save", "", "--appendonly", "no"]
        };
        let mut child = Command::new(REDIS_SERVER)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(persistence)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| {
                format!(
                    "cannot run {REDIS_SERVER}: {err} (install it: apt-get install redis-server)"
                )
            })?;
        let deadline = Instant::now() + STARTUP;
        loop {
            if answers_ping(self.port).await {
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("redis-server exited with {status}: {log}"));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "redis-server did not answer PING within {STARTUP:?}"
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a Redis on `port` answers an inline PING with PONG.
async fn answers_ping(port: u16) -> bool {
    let exchange = async {
        let mut socket = TcpStream::connect(("127.0.0.1", port)).await?;
        socket.write_all(b"PING\r\n").await?;
        let mut reply = [0; 7];
        socket.read_exact(&mut reply).await?;
        Ok::<_, std::io::Error>(&reply == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), exchange).await,
        Ok(Ok(true))
    )
}

/// Lobby nodes in this process sharing one [`RedisServer`]: each is a
/// [`TestServer`] started with `--redis`. Stopped when dropped.
pub struct Cluster {
    /// Declared before `redis`, so that dropping stops the nodes first.
    nodes: Vec<TestServer>,
    pub redis: RedisServer,
}

impl Cluster {
    /// `count` nodes on 127.0.0.1 with these flags, each answering /healthz with 200.
    pub async fn start(count: usize, args: &[&str]) -> Cluster {
        Cluster::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), count, args).await
    }

    /// The same, each node on a free port of `ip`.
    pub async fn start_on(ip: IpAddr, count: usize, args: &[&str]) -> Cluster {
        let redis = RedisServer::start().await;
        let url = redis.url();
        let mut flags = args.to_vec();
        flags.extend(["--redis", &url]);
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            nodes.push(TestServer::one_node_on(ip, &flags).await);
        }
        for node in &nodes {
            wait_for_health(node, 200, STARTUP).await;
        }
        Cluster { nodes, redis }
    }

    /// Adds a node with flags of its own, on the same Redis.
    pub async fn add_node(&mut self, args: &[&str]) -> &Client {
        let node = self.start_node(args).await;
        wait_for_health(node, 200, STARTUP).await;
        node
    }

    /// Adds a node without waiting for it to be in step with Redis (which
    /// may be away): it answers HTTP, whatever its /healthz says.
    pub async fn start_node(&mut self, args: &[&str]) -> &Client {
        let url = self.redis.url();
        let mut flags = args.to_vec();
        flags.extend(["--redis", &url]);
        let node = TestServer::one_node_on(IpAddr::V4(Ipv4Addr::LOCALHOST), &flags).await;
        self.nodes.push(node);
        self.nodes.last().expect("the node just added")
    }

    /// Stops node `index` the way SIGTERM does and starts a new one with
    /// `args` on its address, as a deploy does; returns once it is in step.
    pub async fn restart_node(&mut self, index: usize, args: &[&str]) -> &Client {
        let url = self.redis.url();
        let mut flags = args.to_vec();
        flags.extend(["--redis", &url]);
        self.nodes[index].start_again(&flags).await;
        wait_for_health(&self.nodes[index], 200, STARTUP).await;
        &self.nodes[index]
    }

    /// Stops node `index` the way SIGTERM does; its client then reaches nobody.
    pub async fn stop_node(&mut self, index: usize) {
        self.nodes[index].stop_this_node().await;
    }

    /// The client of node `index`.
    pub fn node(&self, index: usize) -> &Client {
        &self.nodes[index]
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Client> {
        self.nodes.iter().map(|node| &**node)
    }

    /// A client that sends each request to a node picked at random.
    pub fn any_node(&self) -> Client {
        let addrs: Vec<SocketAddr> = self.nodes().map(addr_of).collect();
        Client::any_of(&addrs)
    }

    /// Stops every node the way SIGTERM does and waits until each has stopped.
    pub async fn shutdown(self) {
        let Cluster { nodes, redis } = self;
        for mut node in nodes {
            node.stop_this_node().await;
        }
        drop(redis);
    }
}

/// Lobby binaries sharing one [`RedisServer`], so that a node can be killed
/// without warning. Every node still running is killed when dropped.
pub struct ProcessCluster {
    nodes: Vec<LobbyProcess>,
    pub redis: RedisServer,
}

impl ProcessCluster {
    /// `count` binaries with these flags plus `--redis`, each answering /healthz with 200.
    pub async fn start(count: usize, flags: &[&str]) -> ProcessCluster {
        let redis = RedisServer::start().await;
        let url = redis.url();
        let mut flags = flags.to_vec();
        flags.extend(["--redis", &url]);
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            nodes.push(LobbyProcess::start(&flags).await);
        }
        ProcessCluster { nodes, redis }
    }

    /// The client of node `index`.
    pub fn node(&self, index: usize) -> &Client {
        &self.nodes[index]
    }

    pub fn process(&self, index: usize) -> &LobbyProcess {
        &self.nodes[index]
    }

    /// Kills node `index` with `kill -KILL`, as the OOM killer or a power cut
    /// would: no goodbye to Redis, no stream closed cleanly. Waits until it is gone.
    pub fn sigkill(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let pid = node.pid();
        let killed = std::process::Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(killed.success(), "kill -KILL {pid}");
        node.child.wait().expect("reap the killed lobby");
    }
}

/// The address a single-node client sends its requests to.
pub fn addr_of(node: &Client) -> SocketAddr {
    node.base
        .strip_prefix("http://")
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("a base of http://ADDR: {}", node.base))
}

/// GET /healthz: its status and JSON body.
pub async fn health(node: &Client) -> (u16, Value) {
    let response = node
        .client
        .get(node.url("/healthz"))
        .send()
        .await
        .expect("GET /healthz");
    let status = response.status().as_u16();
    let body = response.json().await.expect("/healthz answers JSON");
    (status, body)
}

/// Polls GET /healthz until it answers `status`, for at most `within`; its body.
pub async fn wait_for_health(node: &Client, status: u16, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        // A node still starting may not answer at all yet.
        if let Ok(response) = node.client.get(node.url("/healthz")).send().await
            && response.status() == status
        {
            return response.json().await.expect("/healthz answers JSON");
        }
        assert!(
            Instant::now() < deadline,
            "{} did not answer /healthz with {status} within {within:?}",
            node.base
        );
        tokio::time::sleep(POLL).await;
    }
}

/// What reading a stream that a node may end came to.
#[derive(Debug)]
pub enum Next {
    Event(Event),
    /// Nothing came within the wait; the stream is still open.
    Quiet,
    /// The node ended the stream (or the connection broke): the client reconnects.
    Ended,
}

impl Sse {
    /// The next event within `wait`, like [`Sse::next_within`], except that the
    /// stream ending is an answer rather than a failure: a cluster node may end
    /// its streams after reconciling with Redis, for their clients to reconnect.
    pub async fn next_or_end(&mut self, wait: Duration) -> Next {
        match tokio::time::timeout(wait, self.events.next()).await {
            Err(_) => Next::Quiet,
            Ok(None | Some(Err(_))) => Next::Ended,
            Ok(Some(Ok(event))) => {
                let id: u64 = event.id.parse().expect("every event has a decimal id");
                if let Some(last) = self.last_id {
                    assert!(id > last, "ids strictly increase: {id} after {last}");
                }
                self.last_id = Some(id);
                Next::Event(event)
            }
        }
    }
}
