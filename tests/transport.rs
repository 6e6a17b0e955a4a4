//! The transport as clients meet it on the wire: plain HTTP/1.1 connections
//! kept alive (and closed when asked, or once idle), request heads that are
//! too large, event streams chunked on HTTP/1.1 and delimited by close on
//! HTTP/1.0, a stream opened on a reused connection, refused streams, h2c
//! (HTTP/2 with prior knowledge on the plain port), CORS and a stream's
//! headers. Where the bytes matter a test reads a raw socket, every read
//! with a deadline; where a real client's view matters, hyper's or reqwest's.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::redis::addr_of;
use common::{Client, Joined, PATIENCE, TestServer, user_in, users_in};
use eventsource_stream::{Event, Eventsource};
use futures_util::StreamExt;
use http_body_util::{BodyDataStream, BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How soon an event must be on the wire once it happened: far below the
/// keep-alive period (15 s), whose comment used to be what pushed a
/// buffered event out to some clients.
const PROMPTLY: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// A raw connection
// ---------------------------------------------------------------------------

/// One plain TCP connection to the lobby, written and read byte for byte.
/// Every read waits at most `PATIENCE`.
struct Wire {
    socket: TcpStream,
    /// Read from the socket, not yet taken by a test.
    read: BytesMut,
}

/// A response head as it came over the wire.
#[derive(Debug)]
struct Head {
    /// The status line, e.g. `HTTP/1.1 200 OK`.
    line: String,
    status: u16,
    /// Names lowercased, in the order sent.
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn names(&self) -> BTreeSet<&str> {
        self.headers.iter().map(|(name, _)| name.as_str()).collect()
    }
}

impl Wire {
    async fn open(server: &Client) -> Wire {
        Wire {
            socket: TcpStream::connect(addr_of(server))
                .await
                .expect("connect to the lobby"),
            read: BytesMut::with_capacity(16 * 1024),
        }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.socket
            .write_all(bytes.as_ref())
            .await
            .expect("send to the lobby");
    }

    /// Reads what comes next; false once the server has closed the connection.
    async fn fill(&mut self) -> bool {
        match tokio::time::timeout(PATIENCE, self.socket.read_buf(&mut self.read)).await {
            Err(_) => panic!(
                "nothing came within {PATIENCE:?}; so far: {:?}",
                String::from_utf8_lossy(&self.read)
            ),
            Ok(Ok(0)) => false,
            Ok(Ok(_)) => true,
            // Closed with a reset (after its answer was read) is closed too.
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionReset => false,
            Ok(Err(err)) => panic!("reading from the lobby: {err}"),
        }
    }

    async fn head(&mut self) -> Head {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            match response
                .parse(&self.read)
                .expect("a well-formed response head")
            {
                httparse::Status::Complete(len) => {
                    let head = Head {
                        line: String::from_utf8_lossy(&self.read[..len])
                            .lines()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                        status: response.code.expect("a status code"),
                        headers: response
                            .headers
                            .iter()
                            .map(|header| {
                                (
                                    header.name.to_ascii_lowercase(),
                                    String::from_utf8_lossy(header.value).into_owned(),
                                )
                            })
                            .collect(),
                    };
                    let _ = self.read.split_to(len);
                    return head;
                }
                httparse::Status::Partial => {
                    assert!(self.fill().await, "closed before a whole response head");
                }
            }
        }
    }

    /// A whole response whose body has a `content-length`.
    async fn response(&mut self) -> (Head, String) {
        let head = self.head().await;
        let length: usize = head
            .header("content-length")
            .unwrap_or_else(|| panic!("a content-length in {head:?}"))
            .parse()
            .expect("a decimal content-length");
        while self.read.len() < length {
            assert!(self.fill().await, "closed before the whole body");
        }
        let body = self.read.split_to(length);
        (
            head,
            String::from_utf8(body.to_vec()).expect("a UTF-8 body"),
        )
    }

    /// The next chunk of a chunked body: its data, empty for the last chunk.
    async fn chunk(&mut self) -> Bytes {
        loop {
            if let Some(line) = self.read.windows(2).position(|pair| pair == b"\r\n") {
                let size = std::str::from_utf8(&self.read[..line]).expect("a size line");
                let size = usize::from_str_radix(size, 16)
                    .unwrap_or_else(|_| panic!("a bare hex chunk size, not {size:?}"));
                let whole = line + 2 + size + 2;
                if self.read.len() >= whole {
                    let chunk = self.read.split_to(whole).freeze();
                    assert_eq!(&chunk[whole - 2..], b"\r\n", "a chunk ends with CRLF");
                    return chunk.slice(line + 2..line + 2 + size);
                }
            }
            assert!(self.fill().await, "closed in the middle of a chunked body");
        }
    }

    /// Chunks up to the end of an SSE block, however the server split them.
    async fn block(&mut self) -> Bytes {
        let mut block = BytesMut::new();
        while !block.ends_with(b"\n\n") {
            let chunk = self.chunk().await;
            assert!(
                !chunk.is_empty(),
                "the body ended inside a block: {block:?}"
            );
            block.extend_from_slice(&chunk);
        }
        block.freeze()
    }

    /// Everything until the server closes the connection.
    async fn rest(&mut self) -> Bytes {
        while self.fill().await {}
        self.read.split().freeze()
    }

    /// Waits for the server to close the connection, with nothing more sent.
    async fn expect_closed(&mut self) {
        let rest = self.rest().await;
        assert!(
            rest.is_empty(),
            "expected the connection to close, got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

/// A GET request head for a kept-alive HTTP/1.1 connection, with `extra` header lines.
fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: lobby\r\n{extra}\r\n")
}

/// A POST /join request with a JSON body.
fn join_request(name: &str) -> String {
    let body = serde_json::json!({ "name": name }).to_string();
    format!(
        "POST /join HTTP/1.1\r\nHost: lobby\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn events_path(token: &str) -> String {
    format!("/events?token={token}")
}

/// The SSE events in `bytes`, read by the maintained parser the other tests use.
async fn events_in(bytes: Bytes) -> Vec<Event> {
    futures_util::stream::iter([Ok::<_, std::convert::Infallible>(bytes)])
        .eventsource()
        .map(|event| event.expect("a well-formed event"))
        .collect()
        .await
}

/// The JSON error sentence of a refusal's body.
fn error_in(body: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(body).expect("the body is JSON");
    json["error"]
        .as_str()
        .unwrap_or_else(|| panic!("an error sentence in {body}"))
        .to_owned()
}

// ---------------------------------------------------------------------------
// Keep-alive
// ---------------------------------------------------------------------------

#[tokio::test]
async fn several_requests_on_one_plain_connection_are_each_answered_and_it_stays_open() {
    let server = TestServer::start().await;
    let mut wire = Wire::open(&server).await;

    wire.send(get("/healthz", "")).await;
    let (health, _) = wire.response().await;
    wire.send(join_request("alice")).await;
    let (joined, body) = wire.response().await;
    wire.send(get("/users", "")).await;
    let (users, list) = wire.response().await;

    assert_eq!(
        [health.status, joined.status, users.status],
        [200, 201, 200]
    );
    for head in [&health, &joined, &users] {
        assert!(head.line.starts_with("HTTP/1.1 "), "{head:?}");
        assert_eq!(head.header("connection"), None, "kept alive: {head:?}");
    }
    let alice: Joined = serde_json::from_str(&body).expect("a join reply");
    assert!(list.contains(&alice.id), "{list}");
}

/// A refusal answered before its body was read (here a leave whose token is
/// in its header, sent before its body) says `connection: close`, and the
/// connection closes: hyper would close it anyway if the rest of the body had
/// not come, and a client must not send its next request on it meanwhile.
#[tokio::test]
async fn an_answer_that_leaves_the_body_unread_closes_the_connection_and_says_so() {
    let server = TestServer::start().await;
    let mut wire = Wire::open(&server).await;

    wire.send(
        "POST /leave HTTP/1.1\r\nHost: lobby\r\nAuthorization: Bearer nobody\r\n\
         Content-Type: text/plain\r\nContent-Length: 10\r\n\r\n",
    )
    .await;
    let (refused, body) = wire.response().await;

    assert_eq!(refused.status, 401, "{refused:?} {body}");
    assert_eq!(refused.header("connection"), Some("close"), "{refused:?}");
    wire.expect_closed().await;

    // A body read to its end keeps the connection.
    let mut wire = Wire::open(&server).await;
    wire.send(join_request("alice")).await;
    let (joined, _) = wire.response().await;
    assert_eq!(joined.status, 201);
    assert_eq!(joined.header("connection"), None, "{joined:?}");
    wire.send(get("/healthz", "")).await;
    assert_eq!(wire.response().await.0.status, 200);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_even_with_a_stream_request_last() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;
    let mut wire = Wire::open(&server).await;

    // All three in one write: the stream request must wait for the two
    // before it, and its head must not be given to the wrong parser.
    wire.send(format!(
        "{}{}{}",
        join_request("bob"),
        get("/users", ""),
        get(&events_path(&alice.token), "")
    ))
    .await;

    let (joined, _) = wire.response().await;
    let (users, list) = wire.response().await;
    let stream = wire.head().await;
    assert_eq!(
        [joined.status, users.status, stream.status],
        [201, 200, 200]
    );
    assert!(list.contains("bob"), "{list}");
    let opening = events_in(wire.chunk().await).await;
    assert_eq!(opening[0].event, "existing_users");
    let names: Vec<String> = users_in(&opening[0]).into_iter().map(|u| u.name).collect();
    assert_eq!(names, ["alice", "bob"]);
}

/// The next item of `stream`, which must come (or end) within `PATIENCE`.
async fn next<S: futures_util::Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("an event, or the end, within PATIENCE")
}

#[tokio::test]
async fn hyper_s_client_sends_every_request_and_then_a_stream_over_one_connection() {
    let server = TestServer::start().await;
    let socket = TcpStream::connect(addr_of(&server))
        .await
        .expect("connect to the lobby");
    let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(socket))
        .await
        .expect("an HTTP/1.1 handshake");
    let connection = tokio::spawn(connection);
    let request = |method: &str, path: &str, body: &str| {
        hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "lobby")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("a request")
    };

    // hyper's connection-level client has one socket: were any answer to
    // close it, the next request would fail.
    let health = send
        .send_request(request("GET", "/healthz", ""))
        .await
        .expect("GET /healthz");
    assert_eq!(health.status(), 200);
    health.into_body().collect().await.expect("its body");
    let joined = send
        .send_request(request("POST", "/join", r#"{"name":"alice"}"#))
        .await
        .expect("POST /join");
    assert_eq!(joined.status(), 201);
    let joined = joined.into_body().collect().await.expect("its body");
    let alice: Joined = serde_json::from_slice(&joined.to_bytes()).expect("a join reply");
    let stream = send
        .send_request(request("GET", &events_path(&alice.token), ""))
        .await
        .expect("GET /events");
    assert_eq!(stream.status(), 200);

    let mut events = BodyDataStream::new(stream.into_body()).eventsource();
    let opening: Event = next(&mut events)
        .await
        .expect("the stream is open")
        .expect("a well-formed event");
    assert_eq!(opening.event, "existing_users");
    let bob = server.join("bob").await;
    let announced: Event = next(&mut events)
        .await
        .expect("the stream is open")
        .expect("a well-formed event");
    assert_eq!(
        (announced.event.as_str(), user_in(&announced)),
        ("new_user", bob.user())
    );
    assert_eq!(server.leave(&alice.token).await, 204);
    // The body ends cleanly (its last chunk came): hyper reports no error.
    loop {
        match next(&mut events).await {
            None => break,
            Some(Ok(_)) => {}
            Some(Err(err)) => panic!("the stream broke instead of ending: {err}"),
        }
    }
    let ended = tokio::time::timeout(PATIENCE, connection)
        .await
        .expect("the connection ends after the stream")
        .expect("the connection task does not panic");
    assert!(ended.is_ok(), "{ended:?}");
}

#[tokio::test]
async fn a_request_with_connection_close_is_answered_and_its_connection_closed() {
    let server = TestServer::start().await;
    let mut wire = Wire::open(&server).await;

    wire.send(get("/healthz", "Connection: close\r\n")).await;

    let (head, _) = wire.response().await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("connection"), Some("close"));
    wire.expect_closed().await;
}

#[tokio::test]
async fn an_http_1_0_request_is_answered_and_its_connection_closed() {
    let server = TestServer::start().await;
    let mut wire = Wire::open(&server).await;

    wire.send("GET /users HTTP/1.0\r\n\r\n").await;

    let (head, body) = wire.response().await;
    assert_eq!(head.status, 200, "{head:?}");
    assert!(body.contains("users"), "{body}");
    wire.expect_closed().await;
}

#[tokio::test]
async fn a_kept_alive_connection_left_idle_is_closed_after_the_idle_timeout() {
    // The idle wait is apart from the head's: a connection idle for longer
    // than the header timeout is kept until the idle timeout.
    let server =
        TestServer::with_args(&["--header-timeout", "100ms", "--idle-timeout", "300ms"]).await;
    let mut wire = Wire::open(&server).await;
    wire.send(get("/healthz", "")).await;
    let (head, _) = wire.response().await;
    assert_eq!(head.status, 200);

    let idle = Instant::now();
    wire.expect_closed().await;

    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "closed after {waited:?} idle, with --idle-timeout 300ms"
    );
}

/// The idle wait starts again after every request: a connection in use,
/// however long, is not closed for having once been idle.
#[tokio::test]
async fn a_kept_alive_connection_in_use_outlives_the_idle_timeout() {
    let server = TestServer::with_args(&["--idle-timeout", "300ms"]).await;
    let mut wire = Wire::open(&server).await;
    let opened = Instant::now();

    // Requests paced under the idle timeout, for several times its length.
    let mut answered = opened;
    while opened.elapsed() < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        wire.send(get("/healthz", "")).await;
        let (head, _) = wire.response().await;
        assert_eq!(head.status, 200, "after {:?}", opened.elapsed());
        answered = Instant::now();
    }
    wire.expect_closed().await;
    assert!(
        answered.elapsed() >= Duration::from_millis(250),
        "closed {:?} after its last answer, with --idle-timeout 300ms",
        answered.elapsed()
    );
}

#[tokio::test]
async fn a_connection_that_never_sends_a_request_is_closed_after_the_header_timeout() {
    let server = TestServer::with_args(&["--header-timeout", "300ms"]).await;
    let opened = Instant::now();
    let mut wire = Wire::open(&server).await;

    wire.expect_closed().await;

    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "closed after {waited:?}, with --header-timeout 300ms"
    );
}

// ---------------------------------------------------------------------------
// Request heads
// ---------------------------------------------------------------------------

/// What a request head the server will not read gets: hyper's own answer,
/// `431 Request Header Fields Too Large` with an empty body, and the
/// connection closed. On a fresh connection and on one that had a request
/// answered before, which is read differently until hyper is handed the head.
async fn assert_refused_as_too_large(server: &Client, head: &str) {
    for reused in [false, true] {
        let mut wire = Wire::open(server).await;
        if reused {
            wire.send(get("/healthz", "")).await;
            assert_eq!(wire.response().await.0.status, 200);
        }
        wire.send(head).await;
        let (refused, body) = wire.response().await;
        assert_eq!(
            refused.line, "HTTP/1.1 431 Request Header Fields Too Large",
            "{refused:?}"
        );
        assert_eq!(refused.header("connection"), Some("close"), "{refused:?}");
        assert_eq!(body, "");
        wire.expect_closed().await;
    }
}

#[tokio::test]
async fn a_request_head_over_8_kib_gets_431_on_every_route() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;
    let pad = format!("X-Pad: {}\r\n", "a".repeat(9 * 1024));

    for path in ["/users".to_owned(), events_path(&alice.token)] {
        assert_refused_as_too_large(&server, &get(&path, &pad)).await;
    }
    // Just under the limit is served.
    let mut wire = Wire::open(&server).await;
    wire.send(get(
        "/users",
        &format!("X-Pad: {}\r\n", "a".repeat(7 * 1024)),
    ))
    .await;
    assert_eq!(wire.response().await.0.status, 200);
}

#[tokio::test]
async fn a_request_head_with_more_than_100_headers_gets_431_on_every_route() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;
    // `get` adds a Host header: 100 in all is served, 101 is refused.
    let headers =
        |count: usize| -> String { (1..count).map(|i| format!("X-H{i}: {i}\r\n")).collect() };

    for path in ["/users".to_owned(), events_path(&alice.token)] {
        assert_refused_as_too_large(&server, &get(&path, &headers(101))).await;
    }
    let mut wire = Wire::open(&server).await;
    wire.send(get("/users", &headers(100))).await;
    assert_eq!(wire.response().await.0.status, 200);
}

// ---------------------------------------------------------------------------
// Streams on HTTP/1
// ---------------------------------------------------------------------------

/// Opens `token`'s stream on `wire` with a raw HTTP/1.1 request; returns its
/// head and its first chunk.
async fn open_chunked(wire: &mut Wire, token: &str, extra: &str) -> (Head, Bytes) {
    wire.send(get(&events_path(token), extra)).await;
    let head = wire.head().await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(
        head.header("transfer-encoding"),
        Some("chunked"),
        "{head:?}"
    );
    (head, wire.chunk().await)
}

/// Asserts that `opening` is one SSE block: `retry:` first, then the
/// snapshot's id, name and data, as a client that resumes needs them.
async fn assert_opening(opening: Bytes, everyone: &[&str]) {
    let text = String::from_utf8(opening.to_vec()).expect("UTF-8");
    let after_retry = text
        .strip_prefix("retry: 1000\nid: ")
        .unwrap_or_else(|| panic!("retry: and id: open the first block: {text:?}"));
    let (id, rest) = after_retry.split_once('\n').expect("the id line");
    assert!(id.parse::<u64>().is_ok(), "a decimal id: {id:?}");
    let data = rest
        .strip_prefix("event: existing_users\ndata: ")
        .and_then(|rest| rest.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("one existing_users block: {text:?}"));
    assert!(!data.contains('\n'), "one data line: {text:?}");
    let events = events_in(opening).await;
    assert_eq!(events.len(), 1, "the retry is not a block of its own");
    let names: Vec<String> = users_in(&events[0]).into_iter().map(|u| u.name).collect();
    assert_eq!(names, everyone);
}

/// Asserts that a join is announced on `wire`'s chunked stream at once, in
/// a chunk of its own that holds exactly that event.
async fn assert_announced_promptly(server: &Client, wire: &mut Wire, name: &str) {
    let joined = server.join(name).await;
    let chunk = tokio::time::timeout(PROMPTLY, wire.chunk())
        .await
        .unwrap_or_else(|_| panic!("the new_user of {name} within {PROMPTLY:?}"));
    let events = events_in(chunk.clone()).await;
    assert_eq!(events.len(), 1, "one event, one chunk: {chunk:?}");
    assert_eq!(
        (events[0].event.as_str(), user_in(&events[0])),
        ("new_user", joined.user())
    );
}

/// Asserts that after the user leaves, the stream's body ends with the last chunk.
async fn assert_ends_on_leave(server: &Client, wire: &mut Wire, token: &str) {
    assert_eq!(server.leave(token).await, 204);
    loop {
        if wire.chunk().await.is_empty() {
            break;
        }
    }
}

#[tokio::test]
async fn a_stream_on_http_1_1_is_chunked_and_opens_with_retry_in_the_first_event_s_block() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;
    let mut wire = Wire::open(&server).await;

    let (head, opening) = open_chunked(&mut wire, &alice.token, "").await;

    assert_eq!(head.line, "HTTP/1.1 200 OK");
    assert_eq!(head.header("content-length"), None);
    assert_opening(opening, &["alice"]).await;
}

#[tokio::test]
async fn each_event_on_a_chunked_stream_comes_at_once_in_a_chunk_of_its_own() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;
    let mut wire = Wire::open(&server).await;
    open_chunked(&mut wire, &alice.token, "").await;

    for name in ["bob", "carol", "dave"] {
        assert_announced_promptly(&server, &mut wire, name).await;
    }
}

#[tokio::test]
async fn when_its_user_leaves_a_chunked_stream_ends_with_the_last_chunk_and_closes() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;
    let mut wire = Wire::open(&server).await;
    open_chunked(&mut wire, &alice.token, "").await;

    assert_ends_on_leave(&server, &mut wire, &alice.token).await;
    wire.expect_closed().await;
}

#[tokio::test]
async fn a_stream_on_http_1_0_is_not_chunked_and_ends_when_the_connection_closes() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;
    let mut wire = Wire::open(&server).await;

    wire.send(format!(
        "GET {} HTTP/1.0\r\n\r\n",
        events_path(&alice.token)
    ))
    .await;
    let head = wire.head().await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("transfer-encoding"), None, "{head:?}");
    assert_eq!(head.header("content-length"), None, "{head:?}");
    assert_eq!(head.header("connection"), Some("close"), "{head:?}");
    while !wire.read.ends_with(b"\n\n") {
        assert!(wire.fill().await, "closed before the opening");
    }
    let opening = wire.read.split().freeze();
    assert_opening(opening, &["alice"]).await;
    let bob = server.join("bob").await;
    assert_eq!(server.leave(&alice.token).await, 204);

    // Bare SSE until the server closes: no chunk sizes, no last chunk.
    let rest = wire.rest().await;
    let events = events_in(rest.clone()).await;
    assert!(
        rest.starts_with(b"id: "),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    assert_eq!(
        (events[0].event.as_str(), user_in(&events[0])),
        ("new_user", bob.user())
    );
}

#[tokio::test]
async fn a_stream_opened_on_a_reused_connection_is_served_like_one_on_a_fresh_connection() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;
    let mut fresh = Wire::open(&server).await;
    let (fresh_head, _) = open_chunked(&mut fresh, &alice.token, "").await;
    let mut reused = Wire::open(&server).await;
    reused.send(get("/users", "")).await;
    assert_eq!(reused.response().await.0.status, 200);
    reused.send(join_request("bob")).await;
    let (_, body) = reused.response().await;
    let bob: Joined = serde_json::from_str(&body).expect("a join reply");

    let (reused_head, opening) = open_chunked(&mut reused, &bob.token, "").await;

    // The same head, header for header: both written by the transport's
    // lean writer (hyper, which wrote the answers before, would add its own).
    assert_eq!(fresh_head.line, reused_head.line);
    assert_eq!(fresh_head.names(), reused_head.names());
    assert_opening(opening, &["alice", "bob"]).await;
    assert_announced_promptly(&server, &mut reused, "carol").await;
    assert_ends_on_leave(&server, &mut reused, &bob.token).await;
    reused.expect_closed().await;
}

#[tokio::test]
async fn a_stream_after_a_chunked_request_body_on_the_same_connection_works_all_the_same() {
    let server = TestServer::start().await;
    let mut wire = Wire::open(&server).await;
    let body = r#"{"name":"alice"}"#;
    wire.send(format!(
        "POST /join HTTP/1.1\r\nHost: lobby\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    ))
    .await;
    let (joined, reply) = wire.response().await;
    assert_eq!(joined.status, 201, "{reply}");
    let alice: Joined = serde_json::from_str(&reply).expect("a join reply");

    wire.send(get(&events_path(&alice.token), "")).await;
    let head = wire.head().await;

    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(
        head.header("transfer-encoding"),
        Some("chunked"),
        "{head:?}"
    );
    assert_opening(wire.block().await, &["alice"]).await;
    let bob = server.join("bob").await;
    let announced = events_in(wire.block().await).await;
    assert_eq!(user_in(&announced[0]), bob.user());
    assert_ends_on_leave(&server, &mut wire, &alice.token).await;
    // Written by hyper, which keeps the connection for the next request.
    wire.send(get("/healthz", "")).await;
    assert_eq!(wire.response().await.0.status, 200);
}

#[tokio::test]
async fn keep_alive_comments_are_chunks_of_their_own_on_http_1_1_and_bare_on_http_1_0() {
    let server = TestServer::with_args(&["--keepalive", "200ms"]).await;
    let alice = server.join("alice").await;
    let mut chunked = Wire::open(&server).await;
    open_chunked(&mut chunked, &alice.token, "").await;
    let mut bare = Wire::open(&server).await;
    bare.send(format!(
        "GET {} HTTP/1.0\r\n\r\n",
        events_path(&alice.token)
    ))
    .await;
    bare.head().await;
    while !bare.read.ends_with(b"\n\n") {
        assert!(bare.fill().await, "closed before the opening");
    }
    bare.read.clear();

    assert_eq!(chunked.chunk().await, ":\n\n");
    assert!(bare.fill().await, "open");
    assert_eq!(bare.read, ":\n\n");
}

#[tokio::test]
async fn stopping_the_server_closes_an_idle_kept_alive_connection_at_once() {
    let server = TestServer::start().await;
    let mut wire = Wire::open(&server).await;
    wire.send(get("/healthz", "")).await;
    assert_eq!(wire.response().await.0.status, 200);

    let stopping = Instant::now();
    server.shutdown().await;

    assert!(
        stopping.elapsed() < Duration::from_secs(1),
        "an idle connection held the shutdown for {:?}",
        stopping.elapsed()
    );
    wire.expect_closed().await;
}

// ---------------------------------------------------------------------------
// Refused streams
// ---------------------------------------------------------------------------

/// Asserts that `wire`'s answer is a JSON refusal with `status`, after which
/// the server closes the connection; returns its sentence.
async fn assert_refused(wire: &mut Wire, status: u16) -> String {
    let (head, body) = wire.response().await;
    assert_eq!(head.status, status, "{head:?} {body}");
    assert_eq!(head.header("connection"), Some("close"), "{head:?}");
    assert!(
        head.header("content-type")
            .is_some_and(|kind| kind.starts_with("application/json")),
        "{head:?}"
    );
    wire.expect_closed().await;
    error_in(&body)
}

#[tokio::test]
async fn a_stream_with_a_bad_token_gets_401_and_its_connection_closed_fresh_or_reused() {
    let server = TestServer::start().await;
    let mut fresh = Wire::open(&server).await;
    fresh.send(get(&events_path("not-a-token"), "")).await;
    let mut reused = Wire::open(&server).await;
    reused.send(get("/healthz", "")).await;
    assert_eq!(reused.response().await.0.status, 200);
    reused.send(get(&events_path("not-a-token"), "")).await;

    let sentences = [
        assert_refused(&mut fresh, 401).await,
        assert_refused(&mut reused, 401).await,
    ];

    assert_eq!(sentences[0], sentences[1]);
    assert!(sentences[0].ends_with('.'), "{sentences:?}");
}

#[tokio::test]
async fn a_fifth_stream_of_one_token_gets_429_and_its_connection_closed() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(server.subscribe(&alice.token, None).await);
    }
    let mut fifth = Wire::open(&server).await;

    fifth.send(get(&events_path(&alice.token), "")).await;

    let sentence = assert_refused(&mut fifth, 429).await;
    assert!(sentence.contains("4 open streams"), "{sentence}");
    // The four go on.
    let bob = server.join("bob").await;
    for stream in &mut open {
        stream.next_event().await;
        assert_eq!(user_in(&stream.next_event().await), bob.user());
    }
}

// ---------------------------------------------------------------------------
// h2c: HTTP/2 with prior knowledge on the plain port
// ---------------------------------------------------------------------------

/// A client of `server` that speaks only HTTP/2, without TLS, from the first byte.
fn h2c(server: &Client) -> Client {
    let mut client = Client::new(addr_of(server));
    client.client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("an h2c client");
    client
}

#[tokio::test]
async fn h2c_serves_every_route_over_http_2() {
    let server = TestServer::start().await;
    let h2 = h2c(&server);

    for path in [
        "/",
        "/static/app.js",
        "/static/style.css",
        "/static/favicon.svg",
        "/healthz",
        "/metrics",
        "/users",
    ] {
        let response = h2
            .client
            .get(h2.url(path))
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET {path} over h2c: {err}"));
        assert_eq!(
            (response.version(), response.status().as_u16()),
            (reqwest::Version::HTTP_2, 200),
            "GET {path}"
        );
    }
    let alice = h2.join("alice").await;
    assert_eq!(h2.users().await, [alice.user()]);
    assert_eq!(h2.leave(&alice.token).await, 204);
    assert!(h2.users().await.is_empty());
}

#[tokio::test]
async fn a_stream_over_h2c_gets_every_event_and_ends_when_its_user_leaves() {
    let server = TestServer::start().await;
    let h2 = h2c(&server);
    let alice = h2.join("alice").await;
    let response = h2.open_events(&alice.token, None).await;
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let mut stream = common::Sse::new(response);

    let opening = stream.next_event().await;
    let bob = h2.join("bob").await;
    let announced = tokio::time::timeout(PROMPTLY, stream.next_event())
        .await
        .expect("the new_user within PROMPTLY");

    assert_eq!(opening.event, "existing_users");
    assert_eq!(opening.retry, Some(Duration::from_secs(1)));
    assert_eq!(
        (announced.event.as_str(), user_in(&announced)),
        ("new_user", bob.user())
    );
    assert_eq!(h2.leave(&alice.token).await, 204);
    let goodbye = stream.next_event().await;
    assert_eq!(
        (goodbye.event.as_str(), user_in(&goodbye)),
        ("disconnect_user", alice.user())
    );
    stream.expect_end().await;
}

#[tokio::test]
async fn a_stream_refused_over_h2c_gets_its_json_answer_and_the_connection_goes_on() {
    let server = TestServer::start().await;
    let h2 = h2c(&server);

    let refused = h2.open_events("not-a-token", None).await;

    assert_eq!(
        (refused.version(), refused.status().as_u16()),
        (reqwest::Version::HTTP_2, 401)
    );
    let sentence = error_in(&refused.text().await.expect("its body"));
    assert!(sentence.ends_with('.'), "{sentence}");
    assert!(h2.users().await.is_empty());
}

#[tokio::test]
async fn an_h2c_connection_with_no_request_open_is_closed_after_the_idle_timeout() {
    let server = TestServer::with_args(&["--idle-timeout", "300ms"]).await;
    let socket = TcpStream::connect(addr_of(&server))
        .await
        .expect("connect to the lobby");
    let (mut send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(socket))
            .await
            .expect("an h2c handshake");
    let connection = tokio::spawn(connection);
    let health = send
        .send_request(
            hyper::Request::get(format!("{}/healthz", server.base))
                .body(Full::new(Bytes::new()))
                .expect("a request"),
        )
        .await
        .expect("GET /healthz over h2c");
    assert_eq!(health.version(), hyper::Version::HTTP_2);
    health.into_body().collect().await.expect("its body");

    let idle = Instant::now();
    let ended = tokio::time::timeout(PATIENCE, connection)
        .await
        .expect("the server ends the idle connection")
        .expect("the connection task does not panic");

    assert!(ended.is_ok(), "a clean end (GOAWAY): {ended:?}");
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "closed after {waited:?} idle, with --idle-timeout 300ms"
    );
}

// ---------------------------------------------------------------------------
// A stream's response headers, and CORS
// ---------------------------------------------------------------------------

/// Asserts the headers every event stream's response carries, whichever way it went out.
fn assert_stream_headers(header: impl Fn(&str) -> Option<String>, how: &str) {
    for (name, value) in [
        ("content-type", "text/event-stream"),
        ("cache-control", "no-cache"),
        ("x-accel-buffering", "no"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(header(name).as_deref(), Some(value), "{name} {how}");
    }
    assert_eq!(header("content-length"), None, "no content-length {how}");
}

#[tokio::test]
async fn a_stream_s_response_carries_the_event_stream_headers_and_no_length_every_way() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;

    let mut chunked = Wire::open(&server).await;
    let (head, _) = open_chunked(&mut chunked, &alice.token, "").await;
    assert_stream_headers(|name| head.header(name).map(str::to_owned), "on HTTP/1.1");
    let mut until_close = Wire::open(&server).await;
    until_close
        .send(format!(
            "GET {} HTTP/1.0\r\n\r\n",
            events_path(&alice.token)
        ))
        .await;
    let head = until_close.head().await;
    assert_stream_headers(|name| head.header(name).map(str::to_owned), "on HTTP/1.0");
    let h2 = h2c(&server);
    let response = h2.open_events(&alice.token, None).await;
    assert_eq!(response.status(), 200);
    assert_stream_headers(
        |name| {
            response
                .headers()
                .get(name)
                .map(|value| value.to_str().expect("ASCII").to_owned())
        },
        "over h2c",
    );
}

#[tokio::test]
async fn an_allowed_origin_is_named_on_a_stream_s_response_on_http_1_1_and_over_h2c() {
    let server = TestServer::with_args(&["--cors-origin", "https://site.example"]).await;
    let alice = server.join("alice").await;
    let cross_site = "Origin: https://site.example\r\nSec-Fetch-Site: cross-site\r\n";

    let mut wire = Wire::open(&server).await;
    let (head, _) = open_chunked(&mut wire, &alice.token, cross_site).await;
    let h2 = h2c(&server);
    let response = h2
        .client
        .get(h2.url("/events"))
        .query(&[("token", &alice.token)])
        .header("origin", "https://site.example")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .expect("GET /events over h2c");

    assert_eq!(
        head.header("access-control-allow-origin"),
        Some("https://site.example"),
        "{head:?}"
    );
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://site.example"
    );
}

// ---------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------

/// At shutdown the streams are not all closed in the same instant: their
/// clients would all reconnect (to the next process) at once. Each shard
/// closes its streams in a random order, 400 µs apart, within the `retry:`
/// (1 s here). 2,000 streams over a few shards: well over 50 ms from the
/// first close to the last, and shutdown still within its bound.
#[tokio::test]
async fn shutdown_spreads_the_closing_of_many_streams_over_time() {
    const STREAMS: usize = 2000;
    let server = TestServer::with_args(&["--max-watchers-per-address", "5000"]).await;
    let addr = addr_of(&server);
    let mut opened = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let mut socket = TcpStream::connect(addr).await.expect("connect");
        socket
            .write_all(b"GET /events HTTP/1.1\r\nHost: lobby\r\n\r\n")
            .await
            .expect("ask for a watcher's stream");
        opened.push(socket);
    }
    let mut ends = Vec::with_capacity(STREAMS);
    for mut socket in opened {
        // Read the head and the snapshot, then wait for the end.
        let mut head = [0u8; 512];
        let read = tokio::time::timeout(PATIENCE, socket.read(&mut head))
            .await
            .expect("the stream starts")
            .expect("read");
        assert!(
            head[..read].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            &head[..read]
        );
        ends.push(tokio::spawn(async move {
            let mut rest = [0u8; 512];
            loop {
                match socket.read(&mut rest).await {
                    Ok(0) | Err(_) => return Instant::now(),
                    Ok(_) => {}
                }
            }
        }));
    }

    let asked = Instant::now();
    server.shutdown().await;
    let mut closed = Vec::with_capacity(STREAMS);
    for end in ends {
        closed.push(
            tokio::time::timeout(PATIENCE, end)
                .await
                .expect("every stream ends")
                .expect("no panic"),
        );
    }
    let first = closed.iter().min().expect("streams");
    let last = closed.iter().max().expect("streams");
    assert!(
        *last - *first >= Duration::from_millis(50),
        "the closes were spread over only {:?}",
        *last - *first
    );
    assert!(
        *last - asked <= Duration::from_secs(3),
        "the last stream closed {:?} after shutdown began",
        *last - asked
    );
}
