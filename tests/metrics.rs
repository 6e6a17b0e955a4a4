//! GET /metrics, through HTTP: scrape, do something through the API, scrape
//! again, and check what changed.

mod common;

use std::time::Duration;

use common::metrics::{Scrape, scrape};
use common::{Client, PATIENCE, TestServer, free_addr};

/// Scrapes until `key` has grown by `by` since `before`, or panics after the patience.
async fn until_grown(client: &Client, before: &Scrape, key: &str, by: f64) -> Scrape {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = scrape(client).await;
        if now.get(key) - before.get(key) >= by {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} grew by {} within {PATIENCE:?}, not {by}",
            now.get(key) - before.get(key)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const JOINS: &str = "lobby_joins_total";
const ONLINE: &str = "lobby_users_online";
const STREAMS: &str = "lobby_open_streams";
const SENT: &str = "lobby_events_sent_total";
const REPLAYED: &str = "lobby_resumes_total{outcome=\"replayed\"}";
const SNAPSHOT: &str = "lobby_resumes_total{outcome=\"snapshot\"}";
const LEFT: &str = "lobby_leaves_total{reason=\"leave\"}";
const GRACE: &str = "lobby_leaves_total{reason=\"grace_expired\"}";
const TIMEOUT: &str = "lobby_leaves_total{reason=\"join_timeout\"}";
const RATE: &str = "lobby_requests_refused_total{limit=\"join_rate\"}";

#[tokio::test]
async fn joins_streams_events_and_resumes_are_counted() {
    let server = TestServer::with_args(&["--join-timeout", "1m"]).await;
    let before = scrape(&server).await;

    let (alice, mut stream, _) = server.join_and_subscribe("alice").await;
    let _bob = server.join("bob").await;
    assert_eq!(stream.next_event().await.event, "new_user");
    let latest = stream.last_id.expect("an id");
    let mut replayed = server.subscribe(&alice.token, Some(latest)).await;
    let mut snapshot = server.subscribe(&alice.token, Some(latest + 1000)).await;
    assert_eq!(snapshot.next_event().await.event, "existing_users");
    let after = until_grown(&server, &before, SENT, 1.0).await;

    assert_eq!(after.get(JOINS) - before.get(JOINS), 2.0);
    assert_eq!(after.get(ONLINE), 2.0);
    assert_eq!(after.get(STREAMS), 3.0);
    assert_eq!(after.get(REPLAYED) - before.get(REPLAYED), 1.0);
    assert_eq!(after.get(SNAPSHOT) - before.get(SNAPSHOT), 1.0);
    assert!(
        replayed
            .next_within(Duration::from_millis(100))
            .await
            .is_none(),
        "a resume from the latest event has nothing to replay"
    );
}

#[tokio::test]
async fn each_leave_is_counted_by_its_reason() {
    let server = TestServer::with_args(&["--grace", "200ms", "--join-timeout", "300ms"]).await;
    let before = scrape(&server).await;

    let leaver = server.join("leaver").await;
    assert_eq!(server.leave(&leaver.token).await, 204);
    let _never_streams = server.join("never streams").await;
    let (_, stream, _) = server.join_and_subscribe("drops").await;
    drop(stream);

    until_grown(&server, &before, GRACE, 1.0).await;
    let after = until_grown(&server, &before, TIMEOUT, 1.0).await;
    assert_eq!(after.get(LEFT) - before.get(LEFT), 1.0);
    assert_eq!(after.get(GRACE) - before.get(GRACE), 1.0);
    assert_eq!(after.get(TIMEOUT) - before.get(TIMEOUT), 1.0);
    assert_eq!(after.get(ONLINE), 0.0);
    assert_eq!(after.get(STREAMS), 0.0);
}

#[tokio::test]
async fn a_join_refused_by_the_join_limit_is_counted() {
    let server = TestServer::with_args(&["--join-rate", "1", "--join-burst", "1"]).await;
    let before = scrape(&server).await;
    server.join("first").await;
    assert_eq!(server.post_join("second").await.status(), 429);
    let after = scrape(&server).await;
    assert_eq!(after.get(RATE) - before.get(RATE), 1.0);
    assert_eq!(after.get(JOINS) - before.get(JOINS), 1.0);
}

#[tokio::test]
async fn request_latency_is_recorded_by_route() {
    let server = TestServer::start().await;
    let count = "lobby_http_request_duration_seconds_count{route=\"/users\"}";
    server.users().await;
    let before = scrape(&server).await;
    server.users().await;
    server.users().await;
    let after = scrape(&server).await;
    assert_eq!(after.get(count) - before.get(count), 2.0);
    assert!(after.get("lobby_http_request_duration_seconds_sum{route=\"/users\"}") > 0.0);
}

#[tokio::test]
async fn with_metrics_bind_the_metrics_are_elsewhere_and_the_main_address_has_none() {
    let metrics_addr = free_addr();
    let server = TestServer::with_args(&["--metrics-bind", &metrics_addr.to_string()]).await;
    server.join("alice").await;

    let main = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics on the main address");
    assert_eq!(main.status(), 404);

    let elsewhere = scrape(&Client::new(metrics_addr)).await;
    assert_eq!(elsewhere.get(JOINS), 1.0);
    let other = server
        .client
        .get(format!("http://{metrics_addr}/users"))
        .send()
        .await
        .expect("GET /users on the metrics address");
    assert_eq!(
        other.status(),
        404,
        "the metrics address serves only /metrics"
    );
}
