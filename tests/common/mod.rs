//! Test helpers shared by every integration test: a real lobby server on
//! 127.0.0.1 port 0, a typed client for its JSON API, and an SSE reader whose
//! every wait has a deadline, so a missing event fails a test instead of hanging it.
#![allow(dead_code)] // each test file uses a different part of this module

pub mod browser;
pub mod http2;
pub mod metrics;
pub mod proxy;
pub mod redis;

use std::collections::HashMap;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use lobby::Config;
use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// A signed join's ticket: `claims` as a JWT signed by `alg` with `secret`,
/// as a site's backend mints it.
pub fn ticket_with(secret: &str, alg: jsonwebtoken::Algorithm, claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("a key");
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), claims, &key).expect("a JWT")
}

/// A ticket for `sub` named `name` that does not expire for a long while,
/// signed (HS256) with `secret`.
pub fn ticket(secret: &str, sub: &str, name: &str) -> String {
    let claims = serde_json::json!({"sub": sub, "name": name, "exp": 4_000_000_000_u64});
    ticket_with(secret, jsonwebtoken::Algorithm::HS256, &claims)
}

/// A lobby serving on a free port of 127.0.0.1, stopped when dropped. It
/// derefs to a [`Client`] for that server.
///
/// With `LOBBY_TEST_CLUSTER=1` in the environment it is a cluster instead: a
/// redis-server and three nodes with the same flags plus `--redis`, and its
/// client sends each request to a node picked at random, so that every test
/// written for one process also checks that a cluster behaves as one.
pub struct TestServer {
    api: Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    /// Under `LOBBY_TEST_CLUSTER`, the nodes (and their Redis) that `api` spreads requests over.
    cluster: Option<redis::Cluster>,
}

/// A typed client of one lobby's HTTP API, wherever that lobby runs.
pub struct Client {
    /// The lobby's address, or the first node's when the client has several.
    pub base: String,
    /// Every node a request may go to; each request picks one at random.
    bases: Vec<String>,
    pub client: reqwest::Client,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Joined {
    pub id: String,
    pub name: String,
    pub token: String,
    pub users: Vec<User>,
}

impl Joined {
    /// The joiner as everyone else sees them.
    pub fn user(&self) -> User {
        User {
            id: self.id.clone(),
            name: self.name.clone(),
        }
    }
}

/// A certificate for 127.0.0.1 and localhost that a test makes itself, and
/// its key, written as PEM files for `--tls-cert` and `--tls-key`. The files
/// are removed when it is dropped.
pub struct TestCert {
    dir: PathBuf,
    cert: String,
    key: String,
    /// The certificate, which clients of the test trust as their only root.
    pub pem: String,
}

impl TestCert {
    pub fn new() -> TestCert {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let made =
            rcgen::generate_simple_self_signed(["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("a self-signed certificate");
        let dir = std::env::temp_dir().join(format!(
            "lobby-cert-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a directory for the certificate");
        let pem = made.cert.pem();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &pem).expect("write cert.pem");
        std::fs::write(&key, made.signing_key.serialize_pem()).expect("write key.pem");
        let path = |path: PathBuf| path.to_str().expect("a UTF-8 temp path").to_owned();
        TestCert {
            dir,
            cert: path(cert),
            key: path(key),
            pem,
        }
    }

    pub fn cert_file(&self) -> &str {
        &self.cert
    }

    pub fn key_file(&self) -> &str {
        &self.key
    }

    /// A client builder that trusts this certificate and no other.
    pub fn https_client(&self) -> reqwest::ClientBuilder {
        let root = reqwest::Certificate::from_pem(self.pem.as_bytes()).expect("a PEM certificate");
        reqwest::Client::builder()
            .tls_certs_only([root])
            .timeout(Duration::from_secs(30))
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A token no lobby gave out, of a form lobby never gives out (its tokens
/// are 64 hex digits): a cluster's log that began moments ago answers `503`
/// to a well-formed token it does not hold, which may be an earlier log's
/// (docs/deploying.md), and `401` to this at once.
pub const UNKNOWN_TOKEN: &str = "not-a-token-lobby-gave-out";

/// A free address on 127.0.0.1: bound by the OS, then released for a server to take.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port on 127.0.0.1")
}

impl TestServer {
    /// Starts a server with the default settings.
    pub async fn start() -> TestServer {
        TestServer::with_args(&[]).await
    }

    /// Starts a server with these command-line flags, e.g. `["--grace", "300ms"]`.
    /// Tests join many people from one address in a hurry, so the per-address
    /// join limit is lifted unless the flags set it.
    pub async fn with_args(args: &[&str]) -> TestServer {
        TestServer::with_args_on(IpAddr::V4(Ipv4Addr::LOCALHOST), args).await
    }

    /// The same, listening on a free port of `ip` (one of this machine's).
    pub async fn with_args_on(ip: IpAddr, args: &[&str]) -> TestServer {
        if redis::cluster_under_test() {
            let cluster = redis::Cluster::start_on(ip, 3, args).await;
            return TestServer {
                api: cluster.any_node(),
                stop: None,
                task: None,
                cluster: Some(cluster),
            };
        }
        TestServer::one_node_on(ip, args).await
    }

    /// One in-process lobby on a free port of `ip`, whatever the environment says.
    pub(crate) async fn one_node_on(ip: IpAddr, args: &[&str]) -> TestServer {
        TestServer::one_node_with(SocketAddr::new(ip, 0), args, Client::new).await
    }

    /// Stops this in-process lobby the way SIGTERM does and starts a fresh
    /// one with `args` on its address, as a restart would: it knows what
    /// `args` give it (a state file, a Redis), nothing else.
    pub(crate) async fn start_again(&mut self, args: &[&str]) {
        let addr = redis::addr_of(&self.api);
        self.stop_this_node().await;
        *self = TestServer::one_node_with(addr, args, Client::new).await;
    }

    /// One in-process lobby serving HTTPS on 127.0.0.1 with `cert` (plus
    /// `args`); its client trusts `cert` and offers HTTP/2 and HTTP/1.1.
    pub async fn https(cert: &TestCert, args: &[&str]) -> TestServer {
        let mut args = args.to_vec();
        args.extend(["--tls-cert", cert.cert_file(), "--tls-key", cert.key_file()]);
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        TestServer::one_node_with(addr, &args, |addr| {
            Client::https(addr, cert.https_client().build().expect("https client"))
        })
        .await
    }

    async fn one_node_with(
        bind: SocketAddr,
        args: &[&str],
        client: impl FnOnce(SocketAddr) -> Client,
    ) -> TestServer {
        let mut args = args.to_vec();
        if !args.contains(&"--join-rate") {
            args.extend(["--join-rate", "1000000", "--join-burst", "1000000"]);
        }
        let config = Config::try_parse_from_args(&args);
        let listener = TcpListener::bind(bind)
            .await
            .unwrap_or_else(|err| panic!("bind {bind}: {err}"));
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(lobby::run(listener, config, async {
            let _ = stopped.await;
        }));
        TestServer {
            api: client(addr),
            stop: Some(stop),
            task: Some(task),
            cluster: None,
        }
    }

    /// Stops the server the way SIGTERM does and waits until it has stopped
    /// (every node of it, under `LOBBY_TEST_CLUSTER`).
    pub async fn shutdown(mut self) {
        if let Some(cluster) = self.cluster.take() {
            cluster.shutdown().await;
        }
        self.stop_this_node().await;
    }

    /// Stops the in-process lobby of this server (none for a cluster's front).
    async fn stop_this_node(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("the server stops within the patience")
                .expect("the server task does not panic")
                .expect("the server returns Ok");
        }
    }
}

impl std::ops::Deref for TestServer {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.api
    }
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client::any_of(&[addr])
    }

    /// A client of several nodes of one cluster: each request goes to one of
    /// them, picked at random, as a load balancer without sticky sessions would.
    pub fn any_of(addrs: &[SocketAddr]) -> Client {
        let bases: Vec<String> = addrs.iter().map(|addr| format!("http://{addr}")).collect();
        Client {
            base: bases.first().expect("at least one address").clone(),
            bases,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        }
    }

    /// The same lobby through a client that keeps cookies as a browser does
    /// (by path) and sends them back, as a page's `EventSource` relies on.
    pub fn keeping_cookies(&self) -> Client {
        Client {
            base: self.base.clone(),
            bases: self.bases.clone(),
            client: reqwest::Client::builder()
                .cookie_store(true)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client with a cookie jar"),
        }
    }

    /// A client of the lobby serving HTTPS at `addr`, sending through `client`.
    pub fn https(addr: SocketAddr, client: reqwest::Client) -> Client {
        let base = format!("https://{addr}");
        Client {
            base: base.clone(),
            bases: vec![base],
            client,
        }
    }

    /// The same API in `room`'s routes: `/rooms/{room}/join` and so on, and
    /// the room's page at `url("")`.
    pub fn in_room(&self, room: &str) -> Client {
        let base = |base: &String| format!("{base}/rooms/{room}");
        Client {
            base: base(&self.base),
            bases: self.bases.iter().map(base).collect(),
            client: self.client.clone(),
        }
    }

    /// The URL of `path` on this lobby, or on one of its nodes picked at random.
    pub fn url(&self, path: &str) -> String {
        let base = match self.bases.as_slice() {
            [only] => only,
            bases => &bases[rand::random_range(0..bases.len())],
        };
        format!("{base}{path}")
    }

    /// POST /join with a JSON body, whatever the reply.
    pub async fn post_join(&self, name: &str) -> reqwest::Response {
        self.post_join_body(&serde_json::json!({ "name": name }))
            .await
    }

    /// POST /join with `body` as JSON (a name, a ticket, or anything),
    /// whatever the reply.
    pub async fn post_join_body(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/join"))
            .json(body)
            .send()
            .await
            .expect("POST /join")
    }

    /// POST /join with a JSON body; panics unless the reply is 201.
    pub async fn join(&self, name: &str) -> Joined {
        let response = self.post_join(name).await;
        assert_eq!(response.status(), 201, "joining as {name:?}");
        response.json().await.expect("join reply is JSON")
    }

    /// POST /leave with the token as Bearer; returns the status.
    pub async fn leave(&self, token: &str) -> u16 {
        self.client
            .post(self.url("/leave"))
            .bearer_auth(token)
            .send()
            .await
            .expect("POST /leave")
            .status()
            .as_u16()
    }

    /// GET `path`, which must answer 200; its body as text.
    pub async fn get_text(&self, path: &str) -> String {
        let response = self.client.get(self.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), 200, "GET {path}");
        response.text().await.expect("body")
    }

    /// GET /users.
    pub async fn users(&self) -> Vec<User> {
        #[derive(Deserialize)]
        struct Users {
            users: Vec<User>,
        }
        let response = self
            .client
            .get(self.url("/users"))
            .send()
            .await
            .expect("GET /users");
        assert_eq!(response.status(), 200);
        response.json::<Users>().await.expect("users JSON").users
    }

    /// GET /events?token=…, with `Last-Event-ID` when given. Returns the raw response.
    pub async fn open_events(&self, token: &str, last_event_id: Option<u64>) -> reqwest::Response {
        self.open_stream(Some(token), last_event_id).await
    }

    /// GET /events with no token, a watcher's stream, with `Last-Event-ID`
    /// when given. Returns the raw response.
    pub async fn open_watcher(&self, last_event_id: Option<u64>) -> reqwest::Response {
        self.open_stream(None, last_event_id).await
    }

    async fn open_stream(
        &self,
        token: Option<&str>,
        last_event_id: Option<u64>,
    ) -> reqwest::Response {
        let mut request = self.client.get(self.url("/events"));
        if let Some(token) = token {
            request = request.query(&[("token", token)]);
        }
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        // No overall timeout on a stream: each read has its own deadline.
        request
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .expect("GET /events")
    }

    /// Opens a watcher's stream that must be accepted (200).
    pub async fn watch(&self, last_event_id: Option<u64>) -> Sse {
        let response = self.open_watcher(last_event_id).await;
        assert_eq!(response.status(), 200, "GET /events with no token");
        Sse::new(response)
    }

    /// Opens an event stream that must be accepted (200).
    pub async fn subscribe(&self, token: &str, last_event_id: Option<u64>) -> Sse {
        let response = self.open_events(token, last_event_id).await;
        assert_eq!(response.status(), 200, "GET /events");
        Sse::new(response)
    }

    /// Joins and opens a stream, reading the opening snapshot.
    pub async fn join_and_subscribe(&self, name: &str) -> (Joined, Sse, Vec<User>) {
        let joined = self.join(name).await;
        let mut sse = self.subscribe(&joined.token, None).await;
        let snapshot = sse.next_event().await;
        assert_eq!(snapshot.event, "existing_users");
        let users = users_in(&snapshot);
        (joined, sse, users)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Builds a `Config` from test flags without reading `LOBBY_*` from the environment.
trait ConfigExt {
    fn try_parse_from_args(args: &[&str]) -> Config;
}

impl ConfigExt for Config {
    fn try_parse_from_args(args: &[&str]) -> Config {
        use clap::Parser;
        Config::try_parse_from(std::iter::once("lobby").chain(args.iter().copied()))
            .expect("valid test flags")
    }
}

type EventStream = std::pin::Pin<
    Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send + Sync>,
>;

/// An event stream read by eventsource-stream, as a browser's EventSource
/// reads one: the one SSE reader of the tests. It checks what every lobby
/// stream promises, that each event has a decimal id above the one before (the
/// reader hands an event with no `id:` line the id before it, so this also
/// catches an event without an id of its own). Every read has a deadline.
pub struct Sse {
    events: EventStream,
    /// The id of the last event read, as a browser would send in Last-Event-ID.
    pub last_id: Option<u64>,
    /// What the body's bytes showed so far, beside the events.
    wire: Arc<Mutex<Wire>>,
}

/// What came of a read.
#[derive(Debug)]
pub enum Came {
    Event(Event),
    /// Nothing before the deadline; the stream stays open.
    Quiet,
    /// The server ended the stream after a whole block.
    End,
}

/// The body's bytes as the reader took them in.
#[derive(Default)]
struct Wire {
    /// Every byte, for the tests that check the stream's bytes themselves.
    kept: Option<Vec<u8>>,
    /// The last two bytes, and how many came: a stream that ends anywhere
    /// but after a blank line ended inside an event, which the reader would
    /// drop without a word.
    tail: [u8; 2],
    len: usize,
}

impl Wire {
    fn take_in(&mut self, bytes: &[u8]) {
        if let Some(kept) = &mut self.kept {
            kept.extend_from_slice(bytes);
        }
        for &byte in &bytes[bytes.len().saturating_sub(2)..] {
            self.tail = [self.tail[1], byte];
        }
        self.len += bytes.len();
    }

    fn after_a_whole_block(&self) -> bool {
        self.len == 0 || self.tail == *b"\n\n"
    }
}

impl Sse {
    pub fn new(response: reqwest::Response) -> Sse {
        Sse::reading(response.bytes_stream(), false)
    }

    /// The same, keeping every byte of the body for [`Sse::wire`].
    pub fn keeping_bytes(response: reqwest::Response) -> Sse {
        Sse::reading(response.bytes_stream(), true)
    }

    fn reading(
        body: impl Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send + Sync + 'static,
        keep: bool,
    ) -> Sse {
        let wire = Arc::new(Mutex::new(Wire {
            kept: keep.then(Vec::new),
            ..Wire::default()
        }));
        let tap = wire.clone();
        let body = body.inspect(move |chunk| {
            if let Ok(bytes) = chunk {
                lock(&tap).take_in(bytes);
            }
        });
        Sse {
            events: Box::pin(body.eventsource()),
            last_id: None,
            wire,
        }
    }

    /// The body's bytes so far (de-chunked), if the stream keeps them.
    pub fn wire(&self) -> Vec<u8> {
        lock(&self.wire).kept.clone().unwrap_or_default()
    }

    /// The next event; panics if none comes within `PATIENCE` or the stream ends.
    pub async fn next_event(&mut self) -> Event {
        match self.next_within(PATIENCE).await {
            Some(event) => event,
            None => panic!("no event within {PATIENCE:?}"),
        }
    }

    /// The next event within `wait`, or `None` if none came (the stream may stay open).
    /// Panics if the stream ends or breaks.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Event> {
        match self
            .try_next_until(tokio::time::Instant::now() + wait)
            .await
        {
            Ok(Came::Event(event)) => Some(event),
            Ok(Came::Quiet) => None,
            Ok(Came::End) => panic!("the event stream ended"),
            Err(why) => panic!("{why}"),
        }
    }

    /// The next event, or `None` once the server has ended the stream after a
    /// whole block; panics if nothing happens within `PATIENCE` or it breaks.
    pub async fn event_or_end(&mut self) -> Option<Event> {
        match self
            .try_next_until(tokio::time::Instant::now() + PATIENCE)
            .await
        {
            Ok(Came::Event(event)) => Some(event),
            Ok(Came::End) => None,
            Ok(Came::Quiet) => panic!("no event and no end within {PATIENCE:?}"),
            Err(why) => panic!("{why}"),
        }
    }

    /// The next event, the quiet of a stream still open at `deadline`, or its
    /// end; an error for a stream that breaks, ends inside an event, or
    /// breaks the promise on ids.
    pub async fn try_next_until(&mut self, deadline: tokio::time::Instant) -> Result<Came, String> {
        match tokio::time::timeout_at(deadline, self.events.next()).await {
            Err(_) => Ok(Came::Quiet),
            Ok(None) => self.ended(),
            Ok(Some(read)) => self.accept(read).map(Came::Event),
        }
    }

    /// Waits for the server to end the stream; panics if an event comes instead
    /// or nothing happens within `PATIENCE`.
    pub async fn expect_end(&mut self) {
        match tokio::time::timeout(PATIENCE, self.events.next()).await {
            Err(_) => panic!("the stream did not end within {PATIENCE:?}"),
            Ok(None) => {}
            Ok(Some(Ok(event))) => panic!("expected the stream to end, got {event:?}"),
            Ok(Some(Err(_))) => {}
        }
    }

    fn ended(&self) -> Result<Came, String> {
        if lock(&self.wire).after_a_whole_block() {
            Ok(Came::End)
        } else {
            Err("the stream ended inside an event".to_owned())
        }
    }

    fn accept(
        &mut self,
        read: Result<Event, EventStreamError<reqwest::Error>>,
    ) -> Result<Event, String> {
        let event = read.map_err(|err| format!("the event stream broke: {err}"))?;
        let id: u64 = event.id.parse().map_err(|_| {
            format!(
                "every event has a decimal id, not {:?}: {event:?}",
                event.id
            )
        })?;
        if let Some(last) = self.last_id
            && id <= last
        {
            return Err(format!("ids strictly increase: {id} after {last}"));
        }
        self.last_id = Some(id);
        Ok(event)
    }
}

/// Every event in `bytes`, read as [`Sse`] reads a stream: for bytes a test
/// holds in hand. An error for bytes the reader refuses, that break the
/// promise on ids, or that end inside an event.
pub fn events_in(bytes: &[u8]) -> Result<Vec<Event>, String> {
    use futures_util::FutureExt;

    let body = futures_util::stream::iter([Ok(bytes::Bytes::copy_from_slice(bytes))]);
    let mut sse = Sse::reading(body, false);
    let mut events = Vec::new();
    loop {
        let next = sse
            .events
            .next()
            .now_or_never()
            .expect("bytes in hand are read at once");
        match next {
            Some(read) => events.push(sse.accept(read)?),
            None => return sse.ended().map(|_| events),
        }
    }
}

fn lock(wire: &Mutex<Wire>) -> std::sync::MutexGuard<'_, Wire> {
    wire.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The users in an `existing_users` event.
pub fn users_in(event: &Event) -> Vec<User> {
    let data: Value = serde_json::from_str(&event.data).expect("event data is JSON");
    serde_json::from_value(data["users"].clone()).expect("a users list")
}

/// The user in a `new_user` or `disconnect_user` event.
pub fn user_in(event: &Event) -> User {
    serde_json::from_str(&event.data).expect("event data is a user")
}

/// Applies one event of `who`'s stream to the users `view` it keeps, as the
/// page does, asserting that the stream never announces a user already shown
/// or removes one not shown.
pub fn apply_to_view(view: &mut Vec<User>, event: &Event, who: &str) {
    match event.event.as_str() {
        "existing_users" => *view = users_in(event),
        "new_user" => {
            let user = user_in(event);
            assert!(
                !view.iter().any(|u| u.id == user.id),
                "{who}: new_user for {user:?}, already shown"
            );
            view.push(user);
        }
        "disconnect_user" => {
            let user = user_in(event);
            let at = view.iter().position(|u| u.id == user.id);
            let at = at.unwrap_or_else(|| panic!("{who}: disconnect_user for {user:?}, not shown"));
            view.remove(at);
        }
        other => panic!("{who}: unexpected event {other:?}"),
    }
}

/// One of five short lives, chosen by `i`, each ending in exactly one leave:
/// a leave with a stream open, grace after a closed stream, the join timeout,
/// a leave within grace (or just after it), and grace after two streams. The
/// user joins on `nodes[0]`, streams on `nodes[1]` and leaves on `nodes[2]`
/// (one server thrice, or three nodes of a cluster). Returns their id.
pub async fn live_a_short_life(i: usize, nodes: [&Client; 3]) -> String {
    let [first, second, third] = nodes;
    let joined = first.join(&format!("user {i}")).await;
    match i % 5 {
        // Leaves with a stream open.
        0 => {
            let _stream = second.subscribe(&joined.token, None).await;
            assert_eq!(third.leave(&joined.token).await, 204);
        }
        // Closes its stream and never comes back: grace expires.
        1 => drop(second.subscribe(&joined.token, None).await),
        // Never opens a stream: the join timeout expires.
        2 => {}
        // Closes its stream, then leaves within grace (or just after it).
        3 => {
            drop(second.subscribe(&joined.token, None).await);
            let status = third.leave(&joined.token).await;
            assert!(status == 204 || status == 401, "leave answered {status}");
        }
        // Two streams, both closed: grace expires once.
        _ => {
            let a = second.subscribe(&joined.token, None).await;
            let b = third.subscribe(&joined.token, None).await;
            drop((a, b));
        }
    }
    joined.id
}

/// Reads `stream` up to the `new_user` of `sentinel` (a user id); returns, for
/// every user an event was about, the ids of its `new_user` and
/// `disconnect_user` events.
pub async fn announcements_until(
    stream: &mut Sse,
    sentinel: &str,
) -> HashMap<String, (Vec<u64>, Vec<u64>)> {
    let mut counts: HashMap<String, (Vec<u64>, Vec<u64>)> = HashMap::new();
    loop {
        let event = stream.next_event().await;
        let who = user_in(&event);
        if who.id == sentinel {
            return counts;
        }
        let id: u64 = event.id.parse().expect("decimal id");
        let (joins, leaves) = counts.entry(who.id).or_default();
        match event.event.as_str() {
            "new_user" => joins.push(id),
            "disconnect_user" => leaves.push(id),
            other => panic!("unexpected {other} event"),
        }
    }
}

/// Reads raw chunks of a response until `wait` passes or `enough` says stop.
pub async fn read_raw_until(
    response: &mut reqwest::Response,
    wait: Duration,
    enough: impl Fn(&str) -> bool,
) -> String {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + wait;
    while !enough(&text) {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Err(_) | Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Err(err)) => panic!("reading the stream: {err}"),
        }
    }
    text
}

/// The program `name`, from PATH or from Debian's sbin directories (not on a
/// normal user's PATH), if it is installed.
pub fn installed(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// Says a test is skipped (`message` starts with `SKIPPED:` and says what to
/// install); under `CI=true` it fails the test instead.
pub fn skipped(message: &str) {
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
    eprintln!("{message}");
}

/// Asserts this status and a JSON body `{"error": "<a sentence>"}`; returns the sentence.
pub async fn assert_error(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status(), status);
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "an error is JSON, not {content_type:?}"
    );
    let body: Value = response.json().await.expect("an error body is JSON");
    let keys: Vec<&String> = body.as_object().expect("an object").keys().collect();
    assert_eq!(keys, ["error"], "{body}");
    let sentence = body["error"].as_str().expect("error is a string");
    assert!(!sentence.trim().is_empty(), "the error says something");
    sentence.to_owned()
}

/// The `lobby` binary, serving on a free port of 127.0.0.1. Killed if dropped.
pub struct LobbyProcess {
    child: Child,
    pub addr: SocketAddr,
    api: Client,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl LobbyProcess {
    /// Starts the binary with `flags` and waits until it answers. It logs at
    /// `warn`: a line per join and leave would only cost a debug build time.
    pub async fn start(flags: &[&str]) -> LobbyProcess {
        LobbyProcess::start_with(free_addr(), flags, &[("RUST_LOG", "warn")]).await
    }

    /// The same on `addr`, with these environment variables (`RUST_LOG` and
    /// `LOBBY_*` from the test's own environment are not passed on).
    pub async fn start_with(
        addr: SocketAddr,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> LobbyProcess {
        LobbyProcess::start_program(&[env!("CARGO_BIN_EXE_lobby")], addr, flags, env).await
    }

    /// The same with another build of the binary, run by `program`: its path
    /// (the static one of `make dist`), or a command and its first arguments
    /// that end with it (`["chroot", DIR, "/lobby"]`).
    pub async fn start_program(
        program: &[&str],
        addr: SocketAddr,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> LobbyProcess {
        let mut command = LobbyProcess::command(program, addr, flags, env);
        let mut child = command.stderr(Stdio::piped()).spawn().expect("spawn lobby");
        let mut pipe = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        });
        let mut lobby = LobbyProcess {
            child,
            addr,
            api: Client::new(addr),
            stderr: Some(stderr),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(response) = lobby.client.get(lobby.url("/healthz")).send().await
                && response.status() == 200
            {
                return lobby;
            }
            if let Ok(Some(status)) = lobby.child.try_wait() {
                panic!("lobby exited with {status} before answering");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "lobby did not answer on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The binary on `addr` with `flags` and these environment variables
    /// (`RUST_LOG` and `LOBBY_*` from the test's own environment are not
    /// passed on), its stderr appended to the file `log`. Waits until it
    /// answers GET /healthz with any status: a cluster node that cannot reach
    /// Redis answers 503. `Err` if it exits first or does not answer in time.
    pub async fn start_logged(
        addr: SocketAddr,
        flags: &[&str],
        env: &[(&str, &str)],
        log: &std::path::Path,
    ) -> Result<LobbyProcess, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|err| format!("cannot open {}: {err}", log.display()))?;
        let mut child = LobbyProcess::command(&[env!("CARGO_BIN_EXE_lobby")], addr, flags, env)
            .stderr(Stdio::from(file))
            .spawn()
            .map_err(|err| format!("cannot spawn lobby: {err}"))?;
        let api = Client::new(addr);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let asked = api.client.get(api.url("/healthz")).send();
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), asked).await {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "lobby on {addr} exited with {status} before answering"
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("lobby did not answer on {addr} within 10 s"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(LobbyProcess {
            child,
            addr,
            api,
            stderr: None,
        })
    }

    fn command(
        program: &[&str],
        addr: SocketAddr,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> Command {
        let (program, first) = program.split_first().expect("a program to run");
        let mut command = Command::new(program);
        command
            .args(first)
            .arg("--bind")
            .arg(addr.to_string())
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("LOBBY_") || name == "RUST_LOG" || name == "PORT"
            {
                command.env_remove(name);
            }
        }
        command.envs(env.iter().copied());
        command
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends it `signal` with kill(1): "-STOP" freezes it (its sockets stay
    /// open, nothing is answered), "-CONT" lets it run on.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid();
        let sent = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {signal} {pid}");
    }

    /// How it ended, if it has (without waiting).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills it with SIGKILL, as the OOM killer or a power cut would (no
    /// goodbye to Redis, no stream closed cleanly), and reaps it.
    pub fn kill_now(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it with SIGTERM, as a deploy does; returns what it wrote on stderr.
    pub async fn stop(mut self) -> String {
        let killed = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(killed.success(), "kill -TERM {}", self.pid());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("check on lobby") {
                break status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "lobby did not exit on SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Nothing to read when its stderr went to a log file (start_logged).
        let stderr = self
            .stderr
            .take()
            .map(|reader| reader.join().expect("the stderr reader does not panic"))
            .unwrap_or_default();
        assert!(status.success(), "lobby exited with {status}: {stderr}");
        stderr
    }
}

impl std::ops::Deref for LobbyProcess {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.api
    }
}

impl Drop for LobbyProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `kB` line of /proc/PID/status: `VmRSS` (resident now) or `VmHWM` (its peak).
pub fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().strip_suffix(" kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}
