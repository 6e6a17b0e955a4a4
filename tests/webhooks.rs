//! --webhook, against a real HTTP receiver in the test: every join and leave
//! arrives signed, a failing backend gets retries, and a hanging one slows no
//! join while the queue stays bounded.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::metrics::scrape;
use common::{PATIENCE, TestServer};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::net::TcpListener;

const SECRET: &str = "s3cret shared with the backend";

/// How the receiver answers.
#[derive(Clone, Copy)]
enum Answer {
    /// 200 at once.
    Ok,
    /// 500 this many times, then 200.
    FailFirst(usize),
    /// Never answers.
    Hang,
}

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Received {
    body: Value,
    raw: Bytes,
    signature: String,
    delivery: String,
}

#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(answer: Answer) -> Receiver {
        let got = Arc::new(Mutex::new(Vec::new()));
        let router = Router::new()
            .route("/hook", post(receive))
            .with_state((answer, got.clone()));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        tokio::spawn(async move { axum::serve(listener, router).await });
        Receiver {
            url: format!("http://{addr}/hook"),
            got,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().expect("not poisoned").clone()
    }

    /// Waits until `count` POSTs came; panics after the patience.
    async fn until(&self, count: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let got = self.received();
            if got.len() >= count {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} webhooks within {PATIENCE:?}, not {count}: {got:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(
    State((answer, got)): State<(Answer, Arc<Mutex<Vec<Received>>>)>,
    headers: HeaderMap,
    raw: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let count = {
        let mut got = got.lock().expect("not poisoned");
        got.push(Received {
            body: serde_json::from_slice(&raw).expect("the body is JSON"),
            raw: raw.clone(),
            signature: header("x-lobby-signature"),
            delivery: header("x-lobby-delivery"),
        });
        got.len()
    };
    match answer {
        Answer::Ok => StatusCode::OK,
        Answer::FailFirst(failures) if count <= failures => StatusCode::INTERNAL_SERVER_ERROR,
        Answer::FailFirst(_) => StatusCode::OK,
        Answer::Hang => std::future::pending().await,
    }
}

/// What the backend computes to check a webhook.
fn expected_signature(body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).expect("a key");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("sha256={hex}")
}

async fn lobby_posting_to(receiver: &Receiver, more: &[&str]) -> TestServer {
    let mut args = vec!["--webhook", &receiver.url, "--webhook-secret", SECRET];
    args.extend_from_slice(more);
    TestServer::with_args(&args).await
}

#[tokio::test]
async fn every_join_and_leave_reaches_the_backend_signed_with_its_reason_and_no_token() {
    let receiver = Receiver::start(Answer::Ok).await;
    let server =
        lobby_posting_to(&receiver, &["--grace", "200ms", "--join-timeout", "400ms"]).await;

    let leaver = server.join("leaver").await;
    assert_eq!(server.leave(&leaver.token).await, 204);
    let idle = server.join("never streams").await;
    let (dropper, stream, _) = server.join_and_subscribe("drops").await;
    drop(stream);
    let got = receiver.until(6).await;

    for received in &got {
        assert_eq!(received.signature, expected_signature(&received.raw));
        assert!(!received.delivery.is_empty(), "each names its delivery");
        let text = String::from_utf8_lossy(&received.raw);
        for token in [&leaver.token, &idle.token, &dropper.token] {
            assert!(!text.contains(token.as_str()), "no token in {text}");
        }
        assert!(
            received.body["at"]
                .as_str()
                .is_some_and(|at| at.ends_with('Z')),
            "a UTC timestamp: {text}"
        );
        assert!(received.body["event_id"].as_u64().is_some(), "{text}");
        assert_eq!(received.body["room"], "lobby", "{text}");
    }
    let summary = |received: &Received| {
        (
            received.body["event"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            received.body["id"].as_str().unwrap_or_default().to_owned(),
            received.body["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            received.body["reason"].as_str().map(str::to_owned),
        )
    };
    let got: Vec<_> = got.iter().map(summary).collect();
    let event = |event: &str, joined: &common::Joined, reason: Option<&str>| {
        (
            event.to_owned(),
            joined.id.clone(),
            joined.name.clone(),
            reason.map(str::to_owned),
        )
    };
    assert_eq!(
        got[..4],
        [
            event("join", &leaver, None),
            event("leave", &leaver, Some("leave")),
            event("join", &idle, None),
            event("join", &dropper, None),
        ]
    );
    assert!(got[4..].contains(&event("leave", &idle, Some("join_timeout"))));
    assert!(got[4..].contains(&event("leave", &dropper, Some("grace_expired"))));
}

#[tokio::test]
async fn a_join_and_leave_in_a_room_name_the_room() {
    let receiver = Receiver::start(Answer::Ok).await;
    let server = lobby_posting_to(&receiver, &[]).await;
    let design = server.in_room("doc-42");

    let ada = design.join("ada").await;
    assert_eq!(design.leave(&ada.token).await, 204);
    let got = receiver.until(2).await;

    for (received, event) in got.iter().zip(["join", "leave"]) {
        assert_eq!(received.body["event"], event);
        assert_eq!(received.body["room"], "doc-42");
        assert_eq!(received.body["id"], ada.id.as_str());
    }
}

#[tokio::test]
async fn a_backend_that_fails_a_few_times_gets_the_event_on_a_retry() {
    let receiver = Receiver::start(Answer::FailFirst(3)).await;
    let server = lobby_posting_to(&receiver, &[]).await;
    let before = scrape(&server).await;

    let alice = server.join("alice").await;
    let got = receiver.until(4).await;

    assert!(got.iter().all(|received| received.raw == got[0].raw));
    assert!(
        got.iter()
            .all(|received| received.delivery == got[0].delivery)
    );
    assert_eq!(got[0].body["id"], alice.id.as_str());
    let delivered = "lobby_webhooks_total{outcome=\"delivered\"}";
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while scrape(&server).await.get(delivered) == before.get(delivered) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivered is counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 4, "nothing is sent after a 200");
}

#[tokio::test]
async fn a_backend_that_hangs_slows_no_join_and_the_queue_stays_bounded() {
    let receiver = Receiver::start(Answer::Hang).await;
    let queue = 4;
    let server = lobby_posting_to(
        &receiver,
        &[
            "--webhook-timeout",
            "1m",
            "--webhook-queue",
            &queue.to_string(),
        ],
    )
    .await;
    let joins = 30;

    let mut slowest = Duration::ZERO;
    for n in 0..joins {
        let started = Instant::now();
        server.join(&format!("user {n}")).await;
        slowest = slowest.max(started.elapsed());
    }

    // A join that waited for the hanging backend, or for room in its queue,
    // would take the whole webhook timeout (a minute). The bound is only that
    // far below it: a tighter one measures the machine's load, not lobby.
    assert!(slowest < PATIENCE, "the slowest join took {slowest:?}");
    let dropped = scrape(&server)
        .await
        .get("lobby_webhooks_total{outcome=\"dropped\"}");
    // One in flight at the hanging backend, `queue` waiting, the rest dropped.
    let kept = (joins - dropped as usize) as f64;
    assert!(
        (queue as f64..=(queue + 1) as f64).contains(&kept),
        "{dropped} of {joins} dropped with a queue of {queue}"
    );
    assert_eq!(
        receiver.until(1).await.len(),
        1,
        "one attempt hangs; no other is made"
    );
}
