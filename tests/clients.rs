//! Third-party SSE clients, as programs written against lobby would use
//! them: LaunchDarkly's `eventsource-client` (on hyper 0.14) and
//! `reqwest-eventsource` (on reqwest 0.12). Each must get the snapshot, see a
//! later join at once, and, when its connection is cut, reconnect by itself
//! with `Last-Event-ID` and miss no event.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::redis::addr_of;
use common::{Client, Joined, PATIENCE, TestServer, User};
use eventsource_client::{Client as _, ReconnectOptions, SSE};
use futures_util::{Stream, StreamExt};
use reqwest_eventsource::{Event as ReqwestEvent, EventSource};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How soon a join must reach a client that is listening.
const PROMPTLY: Duration = Duration::from_secs(1);

/// The flags of a lobby whose streams tell clients to reconnect within half
/// a second (`retry:` is half the grace), so a cut connection is back well
/// before the grace ends and its user is still online.
const QUICK_RETRY: &[&str] = &["--grace", "1s"];

/// What a client made of one event: its type, id and data.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    event: String,
    id: u64,
    data: Value,
}

impl Seen {
    fn new(event: &str, id: &str, data: &str) -> Seen {
        Seen {
            event: event.to_owned(),
            id: id.parse().expect("every event has a decimal id"),
            data: serde_json::from_str(data).expect("event data is JSON"),
        }
    }

    fn user(&self) -> User {
        serde_json::from_value(self.data.clone()).expect("a user")
    }

    fn names(&self) -> Vec<String> {
        let users: Vec<User> =
            serde_json::from_value(self.data["users"].clone()).expect("a users list");
        users.into_iter().map(|user| user.name).collect()
    }
}

/// The events one client reads, whichever crate it is, each within a deadline.
struct Listener {
    events: std::pin::Pin<Box<dyn Stream<Item = Seen> + Send>>,
}

impl Listener {
    /// LaunchDarkly's client, reconnecting on its own after a dropped stream.
    fn eventsource_client(url: &str) -> Listener {
        let client = eventsource_client::ClientBuilder::for_url(url)
            .expect("a valid URL")
            .reconnect(ReconnectOptions::reconnect(true).build())
            .build_http();
        // Connection notices, comments and the errors that precede a
        // reconnection are the client's business; the test sees events.
        let events = client.stream().filter_map(|item| async move {
            match item {
                Ok(SSE::Event(event)) => Some(Seen::new(
                    &event.event_type,
                    event.id.as_deref().expect("an id"),
                    &event.data,
                )),
                Ok(SSE::Connected(_) | SSE::Comment(_)) | Err(_) => None,
            }
        });
        Listener {
            events: Box::pin(events),
        }
    }

    /// reqwest-eventsource's client, which reconnects after any error or end.
    fn reqwest_eventsource(url: &str) -> Listener {
        let events = EventSource::get(url).filter_map(|item| async move {
            match item {
                Ok(ReqwestEvent::Message(event)) => {
                    Some(Seen::new(&event.event, &event.id, &event.data))
                }
                Ok(ReqwestEvent::Open) | Err(_) => None,
            }
        });
        Listener {
            events: Box::pin(events),
        }
    }

    async fn next_within(&mut self, wait: Duration) -> Seen {
        tokio::time::timeout(wait, self.events.next())
            .await
            .unwrap_or_else(|_| panic!("no event within {wait:?}"))
            .expect("the client goes on")
    }
}

/// A TCP relay in front of a lobby whose connections a test can cut, as a
/// proxy restart or a dropped network would; it keeps the head of every
/// request it relayed.
struct Relay {
    addr: SocketAddr,
    cut: watch::Sender<u64>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let addr = listener.local_addr().expect("the relay's address");
        let (cut, cuts) = watch::channel(0);
        let heads = Arc::new(Mutex::new(Vec::new()));
        let kept = heads.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream, kept.clone(), cuts.clone()));
            }
        });
        Relay { addr, cut, heads }
    }

    /// Closes every connection open through the relay; new ones go on.
    fn cut(&self) {
        self.cut.send_modify(|count| *count += 1);
    }

    fn heads(&self) -> Vec<String> {
        self.heads
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// Relays one connection until either side closes it or the relay is cut.
async fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    mut cuts: watch::Receiver<u64>,
) {
    cuts.mark_unchanged();
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let mut head = Vec::new();
    while !head.windows(4).any(|end| end == b"\r\n\r\n") {
        let mut buffer = [0; 4096];
        match client.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    heads
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(String::from_utf8_lossy(&head).to_ascii_lowercase());
    if server.write_all(&head).await.is_err() {
        return;
    }
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cuts.changed() => {}
    }
}

fn events_url(base: &str, token: &str) -> String {
    format!("{base}/events?token={token}")
}

/// A client connects with its token, gets the snapshot, and sees a later join at once.
async fn gets_the_snapshot_and_then_a_join(connect: fn(&str) -> Listener) {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;
    let mut listener = connect(&events_url(&server.base, &alice.token));

    let snapshot = listener.next_within(PATIENCE).await;
    let bob = server.join("bob").await;
    let announced = listener.next_within(PROMPTLY).await;

    assert_eq!(snapshot.event, "existing_users");
    assert_eq!(snapshot.names(), ["alice"]);
    assert_eq!(announced.event, "new_user");
    assert_eq!(announced.user(), bob.user());
    assert!(announced.id > snapshot.id);
}

/// A client's connection is cut; a join happens while it is away; it comes
/// back by itself with `Last-Event-ID` and gets that join, then the next.
async fn resumes_after_a_cut_and_misses_nothing(connect: fn(&str) -> Listener) {
    let server = TestServer::with_args(QUICK_RETRY).await;
    let relay = Relay::start(addr_of(&server)).await;
    let alice = server.join("alice").await;
    let mut listener = connect(&events_url(&format!("http://{}", relay.addr), &alice.token));
    let snapshot = listener.next_within(PATIENCE).await;
    assert_eq!(snapshot.event, "existing_users");

    relay.cut();
    let bob = server.join("bob").await;
    let missed = listener.next_within(PATIENCE).await;
    let carol = server.join("carol").await;
    let next = listener.next_within(PROMPTLY).await;

    let heads = relay.heads();
    assert_eq!(
        heads.len(),
        2,
        "one request, then one reconnection: {heads:?}"
    );
    assert!(
        heads[1].contains(&format!("last-event-id: {}\r\n", snapshot.id)),
        "the reconnection says where it left off: {}",
        heads[1]
    );
    assert_eq!(
        (missed.event.as_str(), missed.user()),
        ("new_user", bob.user())
    );
    assert_eq!(
        (next.event.as_str(), next.user()),
        ("new_user", carol.user())
    );
    assert!(snapshot.id < missed.id && missed.id < next.id);
    // Alice never left: nobody saw her go while she was away.
    assert_still_online(&server, &alice).await;
}

async fn assert_still_online(server: &Client, joined: &Joined) {
    assert!(server.users().await.contains(&joined.user()));
}

#[tokio::test]
async fn eventsource_client_gets_the_snapshot_and_then_a_join_at_once() {
    gets_the_snapshot_and_then_a_join(Listener::eventsource_client).await;
}

#[tokio::test]
async fn eventsource_client_resumes_after_a_cut_with_last_event_id_and_misses_nothing() {
    resumes_after_a_cut_and_misses_nothing(Listener::eventsource_client).await;
}

#[tokio::test]
async fn reqwest_eventsource_gets_the_snapshot_and_then_a_join_at_once() {
    gets_the_snapshot_and_then_a_join(Listener::reqwest_eventsource).await;
}

#[tokio::test]
async fn reqwest_eventsource_resumes_after_a_cut_with_last_event_id_and_misses_nothing() {
    resumes_after_a_cut_and_misses_nothing(Listener::reqwest_eventsource).await;
}
