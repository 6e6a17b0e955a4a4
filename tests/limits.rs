//! The limits that keep a lobby on the open internet standing: joins per
//! address, connections at once, request heads that never finish, bodies too
//! large, readers that stop reading, and pages from other sites. Each is
//! checked through a real socket, and each refusal is checked to change nothing.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::redis::addr_of;
use common::{LobbyProcess, PATIENCE, TestServer, rss_kib, user_in};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A whole response to one raw request: the server closes the connection
/// after it (no keep-alive), so it is read to the end.
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }

    fn error(&self) -> String {
        let json: Value = serde_json::from_str(&self.body).expect("the body is JSON");
        json["error"]
            .as_str()
            .expect("an error sentence")
            .to_owned()
    }
}

/// Reads one response: its head, then as many bytes as its Content-Length
/// says (or, without one, until the server closes), as a client that keeps
/// the connection alive must.
async fn read_response(stream: &mut TcpStream) -> Raw {
    let mut bytes = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|value| value.trim().parse::<usize>().ok());
                if length.is_some_and(|length| bytes.len() >= end + 4 + length) {
                    return;
                }
            }
            let n = stream.read(&mut buf).await.expect("reading the response");
            if n == 0 {
                return;
            }
            bytes.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the response within PATIENCE");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    Raw {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

async fn raw(addr: SocketAddr, request: &str) -> Raw {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    read_response(&mut stream).await
}

fn join_request(name: &str, extra_headers: &str) -> String {
    let body = format!("name={name}");
    format!(
        "POST /join HTTP/1.1\r\nHost: lobby\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    )
}

// ---------------------------------------------------------------------------
// Joins per address
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_flood_of_joins_from_one_address_gets_429_with_retry_after_past_the_burst() {
    let server = TestServer::with_args(&["--join-rate", "10", "--join-burst", "20"]).await;
    let addr = addr_of(&server);
    let started = Instant::now();
    let flood = Duration::from_secs(2);
    let (mut accepted, mut refused) = (0u32, 0u32);
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..8 {
        workers.spawn(async move {
            let (mut accepted, mut refused) = (0u32, 0u32);
            let mut n = 0;
            while started.elapsed() < flood {
                n += 1;
                let reply = raw(addr, &join_request(&format!("f{worker}-{n}"), "")).await;
                match reply.status {
                    201 => accepted += 1,
                    429 => {
                        let wait: u64 = reply
                            .header("retry-after")
                            .and_then(|v| v.parse().ok())
                            .expect("a Retry-After in whole seconds");
                        assert!((1..=2).contains(&wait), "Retry-After {wait}");
                        assert!(reply.error().contains("Too many joins"), "{}", reply.body);
                        refused += 1;
                    }
                    other => panic!("unexpected status {other}: {}", reply.body),
                }
            }
            (accepted, refused)
        });
    }
    while let Some(counts) = workers.join_next().await {
        let (a, r) = counts.expect("a flood worker");
        accepted += a;
        refused += r;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "join flood from one address: {accepted} accepted, {refused} refused in {secs:.2} s \
         ({:.0} refused per second)",
        f64::from(refused) / secs
    );
    // The burst, then ten a second (and one more for a refill mid-request).
    assert!(accepted >= 20, "the burst of 20 is allowed: {accepted}");
    let most = 20.0 + 10.0 * secs + 1.0;
    assert!(
        f64::from(accepted) <= most,
        "{accepted} accepted in {secs:.2} s"
    );
    assert!(refused > 0);
    // Only the accepted joins changed anything.
    assert_eq!(server.users().await.len(), accepted as usize);
}

/// Joins `count` people from this test's one address, `at_once` in flight at
/// a time, as fast as the lobby answers; the statuses and how long it took.
async fn joins_from_one_address(
    lobby: &LobbyProcess,
    count: usize,
    at_once: usize,
) -> (Vec<u16>, Duration) {
    use futures_util::StreamExt;
    let started = Instant::now();
    let statuses = futures_util::stream::iter(0..count)
        .map(|n| async move { lobby.post_join(&format!("j{n}")).await.status().as_u16() })
        .buffer_unordered(at_once)
        .collect()
        .await;
    (statuses, started.elapsed())
}

#[tokio::test]
async fn at_the_defaults_a_test_suite_s_burst_of_300_joins_from_one_address_all_pass() {
    let lobby = LobbyProcess::start(&[]).await;

    let (statuses, took) = joins_from_one_address(&lobby, 300, 300).await;

    let refused = statuses.iter().filter(|status| **status != 201).count();
    assert_eq!(refused, 0, "300 joins at once in {took:?}: {statuses:?}");
    assert_eq!(lobby.users().await.len(), 300);
}

#[tokio::test]
async fn at_the_defaults_a_flood_of_2000_joins_from_one_address_is_held_to_the_bound() {
    let lobby = LobbyProcess::start(&[]).await;
    let rss_before = rss_kib(lobby.pid(), "VmRSS");

    let (statuses, took) = joins_from_one_address(&lobby, 2000, 32).await;

    let accepted = statuses.iter().filter(|status| **status == 201).count();
    let refused = statuses.iter().filter(|status| **status == 429).count();
    assert_eq!(
        accepted + refused,
        statuses.len(),
        "only 201 and 429: {statuses:?}"
    );
    let secs = took.as_secs_f64();
    let rss_after = rss_kib(lobby.pid(), "VmRSS");
    eprintln!(
        "2,000 joins from one address at the defaults: {accepted} accepted, {refused} refused \
         in {secs:.2} s; lobby RSS {rss_before} -> {rss_after} KiB ({:.1} KiB per accepted join)",
        (rss_after as f64 - rss_before as f64) / accepted as f64
    );
    // The burst of 500, then 100 a second (and one more for a refill mid-request).
    assert!(accepted >= 500, "the burst of 500 is allowed: {accepted}");
    let most = 500.0 + 100.0 * secs + 1.0;
    assert!(
        accepted as f64 <= most,
        "{accepted} accepted in {secs:.2} s"
    );
    assert!(refused > 0, "a flood is refused past the bound");
    // Each joiner is held until its join timeout: what the bound lets in
    // costs a few MB at most.
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}

#[tokio::test]
async fn a_client_at_another_address_joins_while_a_flooding_one_is_refused() {
    let server = TestServer::with_args(&["--join-rate", "1", "--join-burst", "2"]).await;
    let addr = addr_of(&server);
    for n in 0..2 {
        assert_eq!(
            raw(addr, &join_request(&format!("a{n}"), "")).await.status,
            201
        );
    }
    assert_eq!(raw(addr, &join_request("a2", "")).await.status, 429);

    let elsewhere = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<IpAddr>().expect("an address"))
        .build()
        .expect("a client on 127.0.0.2");
    let reply = elsewhere
        .post(server.url("/join"))
        .form(&[("name", "bob")])
        .send()
        .await
        .expect("POST /join from 127.0.0.2");
    assert_eq!(reply.status(), 201);
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    let server =
        TestServer::with_args(&["--join-rate", "1", "--join-burst", "1", "--trust-proxy"]).await;
    let addr = addr_of(&server);
    let from = |ip: &str| format!("X-Forwarded-For: 198.51.100.7, {ip}\r\n");
    assert_eq!(
        raw(addr, &join_request("a", &from("203.0.113.1")))
            .await
            .status,
        201
    );
    assert_eq!(
        raw(addr, &join_request("b", &from("203.0.113.1")))
            .await
            .status,
        429
    );
    assert_eq!(
        raw(addr, &join_request("c", &from("203.0.113.2")))
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn without_a_trusted_proxy_x_forwarded_for_changes_nothing() {
    let server = TestServer::with_args(&["--join-rate", "1", "--join-burst", "1"]).await;
    let addr = addr_of(&server);
    let from = |ip: &str| format!("X-Forwarded-For: {ip}\r\n");
    assert_eq!(
        raw(addr, &join_request("a", &from("203.0.113.1")))
            .await
            .status,
        201
    );
    let reply = raw(addr, &join_request("b", &from("203.0.113.2"))).await;
    assert_eq!(reply.status, 429, "a header anyone can write is no address");
}

// ---------------------------------------------------------------------------
// Connections, heads and bodies
// ---------------------------------------------------------------------------

#[tokio::test]
async fn past_max_connections_a_new_one_gets_503_at_once_and_open_streams_go_on() {
    let server =
        TestServer::with_args(&["--max-connections", "4", "--header-timeout", "60s"]).await;
    let addr = addr_of(&server);
    let (_alice, mut stream, _) = server.join_and_subscribe("alice").await;
    // Three more connections that send nothing: four in all.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // The server counts a connection once it has accepted it; a refused one
    // proves the count is full, so ask until then.
    let asked = Instant::now();
    let refused = loop {
        let reply = raw(addr, "GET /users HTTP/1.1\r\nHost: lobby\r\n\r\n").await;
        if reply.status == 503 || asked.elapsed() > PATIENCE {
            break reply;
        }
    };
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.error().contains("Too many connections"));
    assert!(refused.header("retry-after").is_some());
    let answered_in = Instant::now();
    let again = raw(addr, "GET /users HTTP/1.1\r\nHost: lobby\r\n\r\n").await;
    assert_eq!(again.status, 503);
    assert!(
        answered_in.elapsed() < Duration::from_secs(1),
        "refused at once"
    );

    // One closes: a join gets through, and the open stream sees it.
    drop(idle.pop());
    let joined_at = Instant::now();
    let bob = loop {
        let reply = raw(addr, &join_request("bob", "")).await;
        if reply.status == 201 {
            break reply;
        }
        assert!(
            joined_at.elapsed() < PATIENCE,
            "a slot frees when a connection closes"
        );
    };
    let bob: Value = serde_json::from_str(&bob.body).expect("a join reply");
    let event = stream.next_event().await;
    assert_eq!(event.event, "new_user");
    assert_eq!(user_in(&event).id, bob["id"].as_str().expect("an id"));
}

#[tokio::test]
async fn a_request_head_that_does_not_arrive_in_time_is_dropped() {
    let server = TestServer::with_args(&["--header-timeout", "500ms"]).await;
    let addr = addr_of(&server);
    for partial in ["GET /users HTTP/1.1\r\nHost: lob".to_owned()] {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(partial.as_bytes())
            .await
            .expect("send part of a head");
        let sent = Instant::now();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the server closed the connection");
        assert!(
            sent.elapsed() >= Duration::from_millis(400),
            "not before the timeout: {:?}",
            sent.elapsed()
        );
    }
    // And it goes on serving.
    assert!(server.users().await.is_empty());
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_refused_and_its_connection_closed() {
    let server = TestServer::with_args(&["--header-timeout", "500ms"]).await;
    let addr = addr_of(&server);
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            b"POST /join HTTP/1.1\r\nHost: lobby\r\nContent-Type: application/json\r\n\
              Content-Length: 20\r\n\r\n{\"name\":",
        )
        .await
        .expect("send the head and part of the body");
    let sent = Instant::now();
    // The rest never comes.
    let reply = read_response(&mut stream).await;
    assert!(
        sent.elapsed() >= Duration::from_millis(400),
        "not before the timeout: {:?}",
        sent.elapsed()
    );
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.error().contains("could not be read"),
        "{}",
        reply.body
    );
    assert!(server.users().await.is_empty());
}

#[tokio::test]
async fn a_body_declared_over_4_kib_is_refused_with_413_before_it_is_sent() {
    let server = TestServer::start().await;
    let addr = addr_of(&server);
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            b"POST /join HTTP/1.1\r\nHost: lobby\r\nContent-Type: application/json\r\n\
              Content-Length: 10000000\r\n\r\n{\"name\":",
        )
        .await
        .expect("send the head");
    // The rest of the body never comes: the answer must not wait for it.
    let reply = read_response(&mut stream).await;
    assert_eq!(reply.status, 413);
    assert!(reply.error().contains("4 KiB"), "{}", reply.body);
    assert!(server.users().await.is_empty());
}

// ---------------------------------------------------------------------------
// Readers that stop reading
// ---------------------------------------------------------------------------

/// Opens a stream for `token` from a socket with a tiny receive buffer, reads
/// its response head and snapshot, and then never reads again.
async fn stalled_stream(addr: SocketAddr, token: &str) -> TcpStream {
    stalled_stream_with(addr, token, "").await
}

/// The same, with `extra` header lines in the request.
async fn stalled_stream_with(addr: SocketAddr, token: &str, extra: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .set_recv_buffer_size(2048)
        .expect("a small receive buffer");
    let mut stream = socket.connect(addr).await.expect("connect");
    let request = format!("GET /events?token={token} HTTP/1.1\r\nHost: lobby\r\n{extra}\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut opening = Vec::new();
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(&opening).contains("existing_users") {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("the opening within PATIENCE")
            .expect("read the opening");
        assert!(n > 0, "the stream opened");
        opening.extend_from_slice(&buf[..n]);
    }
    stream
}

/// Reads `watching` until `id`'s `disconnect_user`, which must come `within`.
async fn gone_within(watching: &mut common::Sse, id: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let event = watching
            .next_within(deadline.saturating_duration_since(Instant::now()))
            .await
            .unwrap_or_else(|| panic!("{id} was still online {within:?} later"));
        if event.event == "disconnect_user" && user_in(&event).id == id {
            return;
        }
    }
}

/// Joins and leaves `count` people with long names: 2 × `count` events.
async fn churn(server: &TestServer, count: usize) {
    for n in 0..count {
        let joined = server.join(&format!("{n:0>32}")).await;
        assert_eq!(server.leave(&joined.token).await, 204);
    }
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_ended_after_the_write_timeout_and_slows_no_one() {
    let server = TestServer::with_args(&["--write-timeout", "1s", "--grace", "300ms"]).await;
    let addr = addr_of(&server);
    let (_watcher, mut watching, _) = server.join_and_subscribe("watcher").await;
    let stalled = server.join("stalled").await;
    let stalled_socket = stalled_stream(addr, &stalled.token).await;
    assert_eq!(watching.next_event().await.event, "new_user");

    // 600 events of about 125 bytes: about twice what the stalled socket and
    // the kernel's buffers take (some 40 KB, seen queued when it was ended).
    let started = Instant::now();
    churn(&server, 300).await;

    // The stalled stream is ended, and after the grace its user is gone. On a
    // slow machine that comes while the churn is still going, so its leave is
    // looked for among the reader's events, not after them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut churned, mut gone) = (0, None);
    while churned < 600 || gone.is_none() {
        let event = watching
            .next_within(deadline.saturating_duration_since(Instant::now()))
            .await
            .unwrap_or_else(|| {
                panic!("after {churned} of 600 events, the stalled reader's user gone: {gone:?}")
            });
        if event.event == "disconnect_user" && user_in(&event).id == stalled.id {
            gone = Some(started.elapsed());
        } else {
            assert!(event.event == "new_user" || event.event == "disconnect_user");
            churned += 1;
        }
    }
    eprintln!(
        "600 events reached a reader in {:?} beside a stalled one",
        started.elapsed()
    );
    let gone = gone.expect("the loop ends once the user is gone");
    eprintln!("a stalled reader's user was gone {gone:?} after the events began");
    assert!(
        gone >= Duration::from_secs(1),
        "not before the write timeout"
    );
    drop(stalled_socket);
}

#[tokio::test]
async fn a_stalled_reader_of_a_stream_served_through_hyper_is_cut_by_the_kernel() {
    // Over 32 headers: the fast path leaves the stream to hyper and the router,
    // where no sweep looks at it; the kernel's user timeout, which also bounds
    // how long it probes a shut receive window, ends it.
    let server = TestServer::with_args(&[
        "--write-timeout",
        "10m",
        "--grace",
        "300ms",
        "--tcp-user-timeout",
        "2s",
    ])
    .await;
    let addr = addr_of(&server);
    let (_watcher, mut watching, _) = server.join_and_subscribe("watcher").await;
    let stalled = server.join("stalled").await;
    let extra: String = (0..40).map(|n| format!("X-Extra-{n}: {n}\r\n")).collect();
    let stalled_socket = stalled_stream_with(addr, &stalled.token, &extra).await;
    assert_eq!(watching.next_event().await.event, "new_user");

    churn(&server, 300).await;
    gone_within(&mut watching, &stalled.id, Duration::from_secs(10)).await;
    drop(stalled_socket);
}

#[tokio::test]
async fn a_reader_that_falls_past_the_backlog_is_ended_before_the_write_timeout() {
    let server = TestServer::with_args(&["--write-timeout", "10m", "--grace", "300ms"]).await;
    let addr = addr_of(&server);
    let (_watcher, mut watching, _) = server.join_and_subscribe("watcher").await;
    let stalled = server.join("stalled").await;
    let stalled_socket = stalled_stream(addr, &stalled.token).await;
    assert_eq!(watching.next_event().await.event, "new_user");

    // 1,200 events: past the backlog of 1,024 a stream may fall behind.
    let started = Instant::now();
    churn(&server, 600).await;
    gone_within(&mut watching, &stalled.id, Duration::from_secs(15)).await;
    eprintln!(
        "a reader past the backlog was gone {:?} after the events began",
        started.elapsed()
    );
    drop(stalled_socket);
}

#[tokio::test]
async fn a_reader_that_reads_slowly_but_keeps_up_is_not_ended() {
    let server = TestServer::with_args(&["--write-timeout", "1s"]).await;
    let (alice, mut stream, _) = server.join_and_subscribe("alice").await;
    churn(&server, 50).await;
    // Reads with pauses shorter than the write timeout.
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let event = stream.next_event().await;
        assert!(event.event == "new_user" || event.event == "disconnect_user");
    }
    assert!(server.users().await.iter().any(|user| user.id == alice.id));
}

// ---------------------------------------------------------------------------
// Other sites' pages, and the page's own policy
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_page_runs_only_its_own_script_and_style_and_sends_no_referrer() {
    let server = TestServer::start().await;
    let page = server
        .client
        .get(server.url("/"))
        .send()
        .await
        .expect("GET /");
    let header = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let policy = header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(directive), "{directive} in {policy:?}");
    }
    assert!(!policy.contains("unsafe-inline"));
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("referrer-policy"), "no-referrer");
    let html = page.text().await.expect("the page");
    assert!(!html.contains("<script>"), "no inline script");
    assert!(!html.contains(" style="), "no inline style");
}

#[tokio::test]
async fn api_replies_and_streams_send_nosniff_too() {
    let server = TestServer::start().await;
    let users = server
        .client
        .get(server.url("/users"))
        .send()
        .await
        .expect("GET /users");
    assert_eq!(users.headers()["x-content-type-options"], "nosniff");
    let alice = server.join("alice").await;
    let stream = server.open_events(&alice.token, None).await;
    assert_eq!(stream.headers()["x-content-type-options"], "nosniff");
    assert_eq!(stream.headers()["referrer-policy"], "no-referrer");
}

const CROSS_SITE: &str = "Origin: https://elsewhere.example\r\nSec-Fetch-Site: cross-site\r\n";

#[tokio::test]
async fn another_site_s_page_is_refused_everywhere_and_changes_nothing() {
    let server = TestServer::start().await;
    let addr = addr_of(&server);
    let alice = server.join("alice").await;
    let before = server.users().await;

    let join = raw(addr, &join_request("mallory", CROSS_SITE)).await;
    assert_eq!(join.status, 403, "{}", join.body);
    assert!(join.error().contains("--cors-origin"));
    assert!(join.header("access-control-allow-origin").is_none());

    let events = raw(
        addr,
        &format!(
            "GET /events?token={} HTTP/1.1\r\nHost: lobby\r\n{CROSS_SITE}\r\n",
            alice.token
        ),
    )
    .await;
    assert_eq!(events.status, 403);
    let leave = raw(
        addr,
        &format!(
            "POST /leave HTTP/1.1\r\nHost: lobby\r\nAuthorization: Bearer {}\r\n{CROSS_SITE}Content-Length: 0\r\n\r\n",
            alice.token
        ),
    )
    .await;
    assert_eq!(leave.status, 403);
    assert_eq!(server.users().await, before);

    // The lobby's own page, and clients that are not browsers, are served.
    let own = "Origin: http://lobby\r\nSec-Fetch-Site: same-origin\r\n";
    assert_eq!(raw(addr, &join_request("bob", own)).await.status, 201);
    assert_eq!(raw(addr, &join_request("carol", "")).await.status, 201);
}

#[tokio::test]
async fn an_allowed_origin_gets_cors_on_every_api_route_and_its_preflight() {
    let server = TestServer::with_args(&["--cors-origin", "https://app.example"]).await;
    let addr = addr_of(&server);
    let allowed = "Origin: https://app.example\r\nSec-Fetch-Site: cross-site\r\n";

    let preflight = raw(
        addr,
        "OPTIONS /leave HTTP/1.1\r\nHost: lobby\r\nOrigin: https://app.example\r\n\
         Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization\r\n\r\n",
    )
    .await;
    assert!(preflight.status < 300, "{}", preflight.head);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(
        preflight
            .header("access-control-allow-headers")
            .is_some_and(|h| h.to_ascii_lowercase().contains("authorization"))
    );

    let join = raw(addr, &join_request("alice", allowed)).await;
    assert_eq!(join.status, 201);
    assert_eq!(
        join.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let token = serde_json::from_str::<Value>(&join.body).expect("a join reply")["token"]
        .as_str()
        .expect("a token")
        .to_owned();

    // The stream, served on the fast path, names the origin too.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("GET /events?token={token} HTTP/1.1\r\nHost: lobby\r\n{allowed}\r\n")
                .as_bytes(),
        )
        .await
        .expect("send the request");
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&head).contains("\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("a head within PATIENCE")
            .expect("read the head");
        assert!(n > 0);
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("access-control-allow-origin: https://app.example"),
        "{head}"
    );

    // Any other site is still refused.
    assert_eq!(
        raw(addr, &join_request("mallory", CROSS_SITE)).await.status,
        403
    );
}

// ---------------------------------------------------------------------------
// A thousand stalled readers, against the real binary (to read its memory)
// ---------------------------------------------------------------------------

/// The kernel's memory for TCP buffers, all sockets, in KiB (pages of 4 KiB).
fn tcp_kernel_kib() -> u64 {
    std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|line| line.starts_with("TCP:"))?;
            let mut words = line.split_whitespace();
            words.find(|word| *word == "mem")?;
            words.next()?.parse::<u64>().ok()
        })
        .map_or(0, |pages| pages * 4)
}

#[tokio::test]
async fn a_thousand_stalled_readers_hold_little_memory_and_slow_no_one() {
    const STALLED: usize = 1000;
    // The readers must stay stalled for the whole test: the kernel would cut
    // a socket whose window stays shut for --tcp-user-timeout (10 s by
    // default), and on a loaded machine the thousand joins alone take longer.
    let lobby = LobbyProcess::start(&[
        "--join-rate",
        "1000000",
        "--join-burst",
        "1000000",
        "--write-timeout",
        "10m",
        "--tcp-user-timeout",
        "10m",
    ])
    .await;
    let (_watcher, mut watching, _) = lobby.join_and_subscribe("watcher").await;
    let (rss_before, kernel_before) = (rss_kib(lobby.pid(), "VmRSS"), tcp_kernel_kib());
    let mut stalled = Vec::with_capacity(STALLED);
    for n in 0..STALLED {
        let joined = lobby.join(&format!("stalled-{n}")).await;
        stalled.push(stalled_stream(lobby.addr, &joined.token).await);
    }
    for _ in 0..STALLED {
        assert_eq!(watching.next_event().await.event, "new_user");
    }

    // Another 800 events of about 140 bytes (110 KiB) to every stream: far
    // more than a stalled socket holds, less than the backlog.
    let started = Instant::now();
    for n in 0..400 {
        let joined = lobby.join(&format!("{n:0>32}")).await;
        assert_eq!(lobby.leave(&joined.token).await, 204);
    }
    for _ in 0..800 {
        let event = watching.next_event().await;
        assert!(event.event == "new_user" || event.event == "disconnect_user");
    }
    let took = started.elapsed();
    let (rss_after, kernel_after) = (rss_kib(lobby.pid(), "VmRSS"), tcp_kernel_kib());
    eprintln!(
        "{STALLED} stalled readers (users and streams included), 1,800 events: lobby RSS \
         {rss_before} -> {rss_after} KiB ({:+} KiB, {:.2} KiB per stalled reader); kernel TCP \
         buffers, all sockets on the machine, {kernel_before} -> {kernel_after} KiB; a live \
         reader got the last 800 in {took:?}",
        rss_after as i64 - rss_before as i64,
        (rss_after as f64 - rss_before as f64) / STALLED as f64,
    );
    // A stalled stream holds its user, its stream and one pending batch: a
    // few KiB, nothing that grows with what it has not read.
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    // Each stalled socket holds what its small send buffer takes (about 80
    // KiB with the kernel's overhead), not the 250 KiB sent to it, nor the
    // megabyte its snapshot could have needed.
    assert!(
        kernel_after.saturating_sub(kernel_before) < 160 * 1024,
        "kernel TCP memory grew from {kernel_before} to {kernel_after} KiB"
    );
    drop(stalled);
}
