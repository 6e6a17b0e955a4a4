//! A person's state (`POST /state`, `POST /rooms/{room}/state`), through
//! HTTP and SSE on a real socket: it reaches every stream of the room as
//! `user_updated`, shows in every list once set (and nowhere before), the
//! same state again sends nothing, and every bad request gets its status and
//! sentence and changes nothing. Under `LOBBY_TEST_CLUSTER` the same runs
//! against three nodes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Client, TestServer, assert_error, users_in};
use serde_json::{Value, json};

const QUIET: Duration = Duration::from_millis(300);

async fn post_state(client: &Client, token: &str, body: &str) -> reqwest::Response {
    client
        .client
        .post(client.url("/state"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("POST /state")
}

async fn users_json(client: &Client) -> Value {
    let response = client
        .client
        .get(client.url("/users"))
        .send()
        .await
        .expect("GET /users");
    response.json().await.expect("JSON")
}

#[tokio::test]
async fn a_state_reaches_every_stream_of_the_room_and_shows_in_every_list_once_set() {
    let server = TestServer::with_args(&[]).await;
    let (ada, mut ada_sees, _) = server.join_and_subscribe("ada").await;
    let (_bob, mut bob_sees, _) = server.join_and_subscribe("bob").await;
    ada_sees.next_event().await; // bob's new_user
    let mut watcher = server.watch(None).await;
    watcher.next_event().await;
    let ops = server.in_room("ops");
    let (_cy, mut elsewhere, _) = ops.join_and_subscribe("cy").await;
    // Before any state, the lists look exactly as ever.
    let before = users_json(&server).await;
    assert!(before["users"][0].get("state").is_none(), "{before}");

    let response = post_state(&server, &ada.token, r#"{ "status": "away" }"#).await;
    assert_eq!(response.status(), 204);

    let expected = json!({"id": ada.id, "name": "ada", "state": {"status": "away"}});
    for stream in [&mut ada_sees, &mut bob_sees, &mut watcher] {
        let event = stream.next_event().await;
        assert_eq!(event.event, "user_updated");
        let data: Value = serde_json::from_str(&event.data).expect("JSON");
        assert_eq!(data, expected);
    }
    assert_eq!(
        elsewhere.next_within(QUIET).await,
        None,
        "ops hears nothing"
    );
    assert_eq!(users_json(&server).await["users"][0], expected);
    let reply: Value = server.post_join("dee").await.json().await.expect("JSON");
    assert_eq!(reply["users"][0], expected, "the join reply carries it");
    let dee_token = reply["token"].as_str().expect("a token").to_owned();
    let mut late = server.subscribe(&dee_token, None).await;
    let snapshot = late.next_event().await;
    let data: Value = serde_json::from_str(&snapshot.data).expect("JSON");
    assert_eq!(data["users"][0], expected, "existing_users carries it");
    assert!(data["users"][1].get("state").is_none(), "bob never set one");

    // The same state again (keys in another order) sends nothing.
    let again = post_state(&server, &ada.token, r#"{"status":"away"}"#).await;
    assert_eq!(again.status(), 204);
    bob_sees.next_event().await; // dee's new_user
    assert_eq!(bob_sees.next_within(QUIET).await, None);

    // A resume replays it like any event.
    let last = bob_sees.last_id.expect("an id");
    assert_eq!(
        post_state(&server, &ada.token, r#"{"typing":true}"#)
            .await
            .status(),
        204
    );
    let mut resumed = server.subscribe(&_bob.token, Some(last)).await;
    let event = resumed.next_event().await;
    assert_eq!(event.event, "user_updated");
    let data: Value = serde_json::from_str(&event.data).expect("JSON");
    assert_eq!(data["state"], json!({"typing": true}));
}

#[tokio::test]
async fn every_bad_state_request_gets_its_status_and_sentence_and_changes_nothing() {
    let server = TestServer::with_args(&[]).await;
    let (ada, mut ada_sees, _) = server.join_and_subscribe("ada").await;
    let big = format!(r#"{{"s":"{}"}}"#, "x".repeat(300));
    let cases: [(&str, &str, u16, &str); 6] = [
        (&ada.token, "not json", 400, "not JSON"),
        (&ada.token, r#"["away"]"#, 422, "JSON object"),
        (&ada.token, r#""away""#, 422, "JSON object"),
        (&ada.token, &big, 413, "256 bytes"),
        ("no-such-token", r#"{"status":"away"}"#, 401, "unknown"),
        ("", r#"{"status":"away"}"#, 401, "token"),
    ];
    for (token, body, status, says) in cases {
        let sentence = assert_error(post_state(&server, token, body).await, status).await;
        assert!(sentence.contains(says), "{says:?} not in {sentence:?}");
    }
    let other_room = server.in_room("ops").join("bob").await;
    let sentence = assert_error(
        post_state(&server, &other_room.token, r#"{"status":"away"}"#).await,
        403,
    )
    .await;
    assert!(sentence.contains("another room"), "{sentence}");
    let form = server
        .client
        .post(server.url("/state"))
        .bearer_auth(&ada.token)
        .form(&[("status", "away")])
        .send()
        .await
        .expect("POST /state");
    assert_error(form, 415).await;

    assert_eq!(ada_sees.next_within(QUIET).await, None, "nothing went out");
    assert!(users_json(&server).await["users"][0].get("state").is_none());
}

/// The budget is each process's (each node's, in a cluster), as joins' is.
#[tokio::test]
async fn a_token_s_updates_are_limited_and_the_next_is_told_when_to_come() {
    let flags = ["--state-rate", "1", "--state-burst", "2"];
    let server = TestServer::one_node_on(std::net::Ipv4Addr::LOCALHOST.into(), &flags).await;
    let ada = server.join("ada").await;
    for n in 0..2 {
        let body = format!(r#"{{"n":{n}}}"#);
        assert_eq!(post_state(&server, &ada.token, &body).await.status(), 204);
    }
    let refused = post_state(&server, &ada.token, r#"{"n":2}"#).await;
    let retry = refused
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    assert_eq!(retry, Some(1));
    let sentence = assert_error(refused, 429).await;
    assert!(sentence.contains("Wait 1 s"), "{sentence}");
    // Another token has its own budget.
    let bob = server.join("bob").await;
    assert_eq!(
        post_state(&server, &bob.token, r#"{"n":0}"#).await.status(),
        204
    );
    let users = users_in(&server.watch(None).await.next_event().await);
    assert_eq!(users.len(), 2);
}

/// A burst of updates from one person reaches every stream in the order
/// they were made, ending at the last.
#[tokio::test]
async fn a_burst_of_updates_arrives_in_order_ending_at_the_last() {
    let server = TestServer::with_args(&[]).await;
    let (ada, _ada_sees, _) = server.join_and_subscribe("ada").await;
    let (_bob, mut bob_sees, _) = server.join_and_subscribe("bob").await;
    for n in 0..5 {
        let body = format!(r#"{{"n":{n}}}"#);
        assert_eq!(post_state(&server, &ada.token, &body).await.status(), 204);
    }
    let mut seen = Vec::new();
    while seen.last() != Some(&4) {
        let event = bob_sees.next_event().await;
        assert_eq!(event.event, "user_updated");
        let data: Value = serde_json::from_str(&event.data).expect("JSON");
        seen.push(data["state"]["n"].as_u64().expect("a number"));
    }
    assert!(seen.windows(2).all(|pair| pair[0] < pair[1]), "{seen:?}");
}
