//! GET /events over real HTTP: the stream's wire format (`retry:`, the snapshot,
//! decimal ids that strictly increase, keep-alive comments), the event sequence
//! between several users, `Last-Event-ID` replay, a leaver's own streams, the
//! limit of four streams per token, and the token's cookie, which a browser's
//! `EventSource` sends where it cannot send a header.

mod common;

use std::time::Duration;

use common::{
    PATIENCE, Sse, TestCert, TestServer, assert_error, read_raw_until, user_in, users_in,
};
use eventsource_stream::Event;
use serde_json::Value;

/// Long enough that an event the server had already sent would have arrived,
/// short enough to keep the file fast: used only to check that nothing more came.
const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn a_stream_starts_with_a_retry_line_in_milliseconds() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;

    let mut stream = Sse::keeping_bytes(server.open_events(&alice.token, None).await);
    let first = stream.next_event().await;

    let wire = String::from_utf8(stream.wire()).expect("the stream is UTF-8");
    let first_line = wire.lines().next().expect("the stream sent a line");
    let millis = first_line
        .strip_prefix("retry: ")
        .unwrap_or_else(|| panic!("the first line is `retry: <ms>`, got {first_line:?}"));
    assert!(
        !millis.is_empty() && millis.bytes().all(|b| b.is_ascii_digit()),
        "the retry is a decimal number of milliseconds, got {millis:?}"
    );
    // In the snapshot's own block, the reader hands the retry out with it.
    if let Some(retry) = first.retry {
        assert_eq!(retry.as_millis().to_string(), millis);
    }
}

#[tokio::test]
async fn the_snapshot_comes_right_after_the_retry_line() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;

    let mut stream = server.subscribe(&alice.token, None).await;
    let first = stream.next_event().await;

    // The retry line stands in a block of its own or opens the snapshot's
    // block: either way a client's first event is the snapshot.
    assert_eq!(first.event, "existing_users");
}

#[tokio::test]
async fn the_snapshot_lists_everyone_online_including_the_subscriber_oldest_first() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;
    let bob = server.join("bob").await;
    let carol = server.join("carol").await;

    let mut stream = server.subscribe(&bob.token, None).await;
    let snapshot = stream.next_event().await;

    assert_eq!(snapshot.event, "existing_users");
    assert_eq!(
        users_in(&snapshot),
        vec![alice.user(), bob.user(), carol.user()]
    );
    let data: Value = serde_json::from_str(&snapshot.data).expect("snapshot data is JSON");
    let fields: Vec<&String> = data.as_object().expect("an object").keys().collect();
    assert_eq!(fields, ["users"], "the snapshot's data: {data}");
    for listed in data["users"].as_array().expect("a list") {
        assert_only_id_and_name(listed);
    }
}

#[tokio::test]
async fn every_event_on_the_wire_has_its_own_decimal_id_and_the_ids_strictly_increase() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;
    let mut stream = server.subscribe(&alice.token, None).await;
    let bob = server.join("bob").await;
    server.join("carol").await;
    assert_eq!(server.leave(&bob.token).await, 204);

    // The reader fails on an id that is not decimal or does not rise; an
    // event without an `id:` line of its own would come with the id before it.
    let mut events = Vec::new();
    for _ in 0..4 {
        events.push(stream.next_event().await);
    }

    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds,
        ["existing_users", "new_user", "new_user", "disconnect_user"]
    );
    for event in &events {
        assert!(
            !event.id.is_empty() && event.id.bytes().all(|b| b.is_ascii_digit()),
            "the id is a decimal integer, got {:?}",
            event.id
        );
    }
}

#[tokio::test]
async fn users_joining_in_turn_are_each_announced_once_to_everyone_already_watching() {
    let server = TestServer::start().await;

    let (alice, mut alice_stream, alice_view) = server.join_and_subscribe("alice").await;
    let (bob, mut bob_stream, bob_view) = server.join_and_subscribe("bob").await;
    let bob_seen_by_alice = alice_stream.next_event().await;
    let (carol, mut carol_stream, carol_view) = server.join_and_subscribe("carol").await;
    let carol_seen_by_alice = alice_stream.next_event().await;
    let carol_seen_by_bob = bob_stream.next_event().await;

    assert_eq!(alice_view, vec![alice.user()]);
    assert_eq!(bob_view, vec![alice.user(), bob.user()]);
    assert_eq!(carol_view, vec![alice.user(), bob.user(), carol.user()]);
    assert_announces("new_user", &bob, &bob_seen_by_alice);
    assert_announces("new_user", &carol, &carol_seen_by_alice);
    assert_announces("new_user", &carol, &carol_seen_by_bob);
    assert_eq!(
        carol_seen_by_alice.id, carol_seen_by_bob.id,
        "one event has one id on every stream"
    );
    for stream in [&mut alice_stream, &mut bob_stream, &mut carol_stream] {
        expect_quiet(stream).await;
    }
}

#[tokio::test]
async fn users_leaving_in_turn_are_each_announced_once_to_everyone_still_watching() {
    let server = TestServer::start().await;
    let (_alice, mut alice_stream, _) = server.join_and_subscribe("alice").await;
    let (bob, mut bob_stream, _) = server.join_and_subscribe("bob").await;
    let (carol, _carol_stream, _) = server.join_and_subscribe("carol").await;
    drain(&mut alice_stream, 2).await;
    drain(&mut bob_stream, 1).await;

    assert_eq!(server.leave(&carol.token).await, 204);
    let carol_gone_for_alice = alice_stream.next_event().await;
    let carol_gone_for_bob = bob_stream.next_event().await;
    assert_eq!(server.leave(&bob.token).await, 204);
    let bob_gone_for_alice = alice_stream.next_event().await;

    assert_announces("disconnect_user", &carol, &carol_gone_for_alice);
    assert_announces("disconnect_user", &carol, &carol_gone_for_bob);
    assert_eq!(carol_gone_for_alice.id, carol_gone_for_bob.id);
    assert_announces("disconnect_user", &bob, &bob_gone_for_alice);
    expect_quiet(&mut alice_stream).await;
}

#[tokio::test]
async fn the_events_after_a_snapshot_carry_higher_ids_than_the_snapshot() {
    let server = TestServer::start().await;
    let (_alice, mut stream, _) = server.join_and_subscribe("alice").await;
    let snapshot_id = stream.last_id.expect("the snapshot has an id");

    let bob = server.join("bob").await;
    let event = stream.next_event().await;

    assert_announces("new_user", &bob, &event);
    assert!(
        event.id.parse::<u64>().expect("decimal id") > snapshot_id,
        "{} after the snapshot's {snapshot_id}",
        event.id
    );
}

#[tokio::test]
async fn keep_alive_comments_go_out_at_least_every_keepalive_period() {
    let server = TestServer::with_args(&["--keepalive", "200ms"]).await;
    let alice = server.join("alice").await;
    let mut response = server.open_events(&alice.token, None).await;
    assert_eq!(response.status(), 200);

    let raw = read_raw_until(&mut response, Duration::from_millis(1000), |_| false).await;

    let comments = raw.lines().filter(|line| line.starts_with(':')).count();
    assert!(
        comments >= 4,
        "five keep-alive periods of 200ms passed in 1s, yet only {comments} comment lines came:\n{raw}"
    );
}

#[tokio::test]
async fn a_stream_resumed_with_last_event_id_gets_exactly_the_events_it_missed_in_order() {
    let server = TestServer::start().await;
    let (alice, stream, _) = server.join_and_subscribe("alice").await;
    let last_seen = stream.last_id.expect("the snapshot has an id");
    drop(stream);
    let bob = server.join("bob").await;
    let carol = server.join("carol").await;
    assert_eq!(server.leave(&bob.token).await, 204);

    let mut resumed = server.subscribe(&alice.token, Some(last_seen)).await;
    // Sse checks that each id is above the last one: start from the one we sent.
    resumed.last_id = Some(last_seen);
    let missed = [
        resumed.next_event().await,
        resumed.next_event().await,
        resumed.next_event().await,
    ];

    assert_announces("new_user", &bob, &missed[0]);
    assert_announces("new_user", &carol, &missed[1]);
    assert_announces("disconnect_user", &bob, &missed[2]);
    expect_quiet(&mut resumed).await;
}

#[tokio::test]
async fn a_stream_resumed_at_the_latest_event_starts_with_nothing() {
    let server = TestServer::start().await;
    let (alice, stream, _) = server.join_and_subscribe("alice").await;
    let last_seen = stream.last_id.expect("the snapshot has an id");
    drop(stream);

    let mut resumed = server.subscribe(&alice.token, Some(last_seen)).await;
    let first = resumed.next_within(QUIET).await;
    let bob = server.join("bob").await;
    let next = resumed.next_event().await;

    assert!(
        first.is_none(),
        "nothing was missed, yet the stream sent {first:?}"
    );
    assert_announces("new_user", &bob, &next);
}

#[tokio::test]
async fn a_last_event_id_the_server_never_issued_gets_a_fresh_snapshot() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;
    let bob = server.join("bob").await;

    let mut stream = server.subscribe(&alice.token, Some(999_999)).await;
    let first = stream.next_event().await;

    assert_eq!(first.event, "existing_users");
    assert_eq!(users_in(&first), vec![alice.user(), bob.user()]);
}

#[tokio::test]
async fn a_last_event_id_the_history_no_longer_holds_gets_a_fresh_snapshot() {
    // Alice must still be online after the churn, however slow: a debug build
    // on a loaded machine has taken over a minute for it, so the grace and
    // join timeout are set to outlast any test run rather than a guess at one.
    let server = TestServer::with_args(&["--grace", "1h", "--join-timeout", "1h"]).await;
    let (alice, stream, _) = server.join_and_subscribe("alice").await;
    let last_seen = stream.last_id.expect("the snapshot has an id");
    drop(stream);
    // Push the event after `last_seen` out of the bounded history (4096 events).
    churn(&server, 2100).await;
    let bob = server.join("bob").await;

    let mut resumed = server.subscribe(&alice.token, Some(last_seen)).await;
    let first = resumed.next_event().await;

    assert_eq!(first.event, "existing_users");
    assert_eq!(users_in(&first), vec![alice.user(), bob.user()]);
}

#[tokio::test]
async fn a_last_event_id_that_is_not_a_number_gets_a_fresh_snapshot() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;

    let response = server
        .client
        .get(server.url("/events"))
        .query(&[("token", &alice.token)])
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .expect("GET /events");
    assert_eq!(response.status(), 200);
    let first = Sse::new(response).next_event().await;

    assert_eq!(first.event, "existing_users");
    assert_eq!(users_in(&first), vec![alice.user()]);
}

#[tokio::test]
async fn a_leaver_s_own_streams_get_their_disconnect_user_and_then_end() {
    let server = TestServer::start().await;
    let (alice, mut first, _) = server.join_and_subscribe("alice").await;
    let mut second = server.subscribe(&alice.token, None).await;
    assert_eq!(second.next_event().await.event, "existing_users");

    assert_eq!(server.leave(&alice.token).await, 204);

    for stream in [&mut first, &mut second] {
        let goodbye = stream.next_event().await;
        assert_announces("disconnect_user", &alice, &goodbye);
        stream.expect_end().await;
    }
}

#[tokio::test]
async fn a_join_s_cookie_alone_opens_the_joiner_s_own_stream() {
    let server = TestServer::start().await;
    let browser = server.keeping_cookies();
    let alice = browser.join("alice").await;

    // No token in the query or a header: only the cookie the join set.
    let mut stream = browser.watch(None).await;
    let snapshot = stream.next_event().await;
    assert_eq!(users_in(&snapshot), vec![alice.user()]);
    assert_eq!(server.leave(&alice.token).await, 204);

    // Her own stream, not a watcher's: it gets her leave, then ends.
    assert_announces("disconnect_user", &alice, &stream.next_event().await);
    stream.expect_end().await;
}

#[tokio::test]
async fn a_token_given_outright_wins_over_the_cookie_of_someone_who_joined_later() {
    let server = TestServer::start().await;
    let browser = server.keeping_cookies();
    // Two tabs of one browser, joined as two people: one cookie jar, bob's cookie.
    let alice = browser.join("alice").await;
    let _bob = browser.join("bob").await;

    let in_query = browser.subscribe(&alice.token, None).await;
    let in_header = browser
        .client
        .get(browser.url("/events"))
        .bearer_auth(&alice.token)
        .timeout(Duration::from_secs(3600))
        .send()
        .await
        .expect("GET /events");
    assert_eq!(in_header.status(), 200);
    assert_eq!(browser.leave(&alice.token).await, 204);

    for mut stream in [in_query, Sse::new(in_header)] {
        assert_eq!(stream.next_event().await.event, "existing_users");
        assert_announces("disconnect_user", &alice, &stream.next_event().await);
        stream.expect_end().await;
    }
}

#[tokio::test]
async fn the_cookie_is_http_only_strict_and_scoped_to_the_room_s_events() {
    let server = TestServer::start().await;

    let in_lobby = server.post_join("alice").await;
    let in_room = server.in_room("doc-42").post_join("bob").await;

    let token = |response: &reqwest::Response| set_cookie(response, "lobby_token=");
    let lobby_cookie = token(&in_lobby).expect("a join sets the token's cookie");
    let joined: Value = in_lobby.json().await.expect("a join reply");
    let expected = format!(
        "lobby_token={}; HttpOnly; SameSite=Strict; Path=/events",
        joined["token"].as_str().expect("a token")
    );
    assert_eq!(lobby_cookie, expected);
    let room_cookie = token(&in_room).expect("a room's join sets it too");
    assert!(
        room_cookie.ends_with("; Path=/rooms/doc-42/events"),
        "{room_cookie}"
    );
}

#[tokio::test]
async fn the_cookie_is_secure_over_https_or_behind_a_trusted_proxy_that_says_https() {
    let cert = TestCert::new();
    let https = TestServer::https(&cert, &[]).await;
    let proxied = TestServer::with_args(&["--trust-proxy"]).await;
    let untrusted = TestServer::start().await;
    let forwarded_join = async |server: &TestServer| {
        server
            .client
            .post(server.url("/join"))
            .header("X-Forwarded-Proto", "https")
            .form(&[("name", "alice")])
            .send()
            .await
            .expect("POST /join")
    };

    let secure = |response: &reqwest::Response| {
        set_cookie(response, "lobby_token=")
            .expect("a join sets the token's cookie")
            .contains("; Secure")
    };
    assert!(secure(&https.post_join("alice").await), "lobby's own HTTPS");
    assert!(
        secure(&forwarded_join(&proxied).await),
        "a trusted proxy's word"
    );
    assert!(
        !secure(&forwarded_join(&untrusted).await),
        "anyone can write the header"
    );
}

#[tokio::test]
async fn a_leave_clears_the_cookie_only_when_it_is_the_token_being_left() {
    let server = TestServer::start().await;
    let browser = server.keeping_cookies();
    let alice = browser.join("alice").await;
    let bob = browser.join("bob").await;

    let leave = async |token: &str| {
        browser
            .client
            .post(browser.url("/leave"))
            .header("content-type", "text/plain")
            .body(token.to_owned())
            .send()
            .await
            .expect("POST /leave, as a beacon sends it")
    };
    let alices = leave(&alice.token).await;
    assert_eq!(alices.status(), 204);
    assert_eq!(
        set_cookie(&alices, "lobby_token="),
        None,
        "bob's cookie stays"
    );
    let mut bobs_stream = browser.watch(None).await;
    assert_eq!(bobs_stream.next_event().await.event, "existing_users");

    let bobs = leave(&bob.token).await;
    assert_eq!(bobs.status(), 204);
    let cleared = set_cookie(&bobs, "lobby_token=").expect("bob's cookie is cleared");
    assert!(
        cleared.starts_with("lobby_token=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert_announces("disconnect_user", &bob, &bobs_stream.next_event().await);
    bobs_stream.expect_end().await;
    // With no cookie left, the browser's next stream is a watcher's.
    let mut watching = browser.watch(None).await;
    assert_eq!(users_in(&watching.next_event().await), vec![]);
    expect_quiet(&mut watching).await;
}

/// The `Set-Cookie` header of `response` that starts with `prefix`.
fn set_cookie(response: &reqwest::Response, prefix: &str) -> Option<String> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|value| value.starts_with(prefix))
        .map(str::to_owned)
}

#[tokio::test]
async fn a_fifth_stream_for_one_token_is_refused_with_429_and_a_json_error() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(server.subscribe(&alice.token, None).await);
    }

    let response = server.open_events(&alice.token, None).await;

    assert_error(response, 429).await;
}

#[tokio::test]
async fn closing_one_of_four_streams_makes_room_for_another() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(server.subscribe(&alice.token, None).await);
    }

    drop(open.pop());

    // The server learns of the close when the connection drops: poll for it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let response = server.open_events(&alice.token, None).await;
        if response.status() == 200 {
            break;
        }
        assert_eq!(response.status(), 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "a fifth stream was still refused {PATIENCE:?} after one of four closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- helpers local to this file ----

/// Asserts that `event` is a `kind` event about `who`.
fn assert_announces(kind: &str, who: &common::Joined, event: &Event) {
    assert_eq!(
        event.event, kind,
        "expected {kind} for {}: {event:?}",
        who.name
    );
    assert_eq!(user_in(event), who.user());
    let data: Value = serde_json::from_str(&event.data).expect("event data is JSON");
    assert_only_id_and_name(&data);
}

/// Asserts that a user object holds `id` and `name` and nothing else (no token).
fn assert_only_id_and_name(user: &Value) {
    let mut keys: Vec<&str> = user
        .as_object()
        .unwrap_or_else(|| panic!("a user is a JSON object, got {user}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["id", "name"], "a user as others see it: {user}");
}

/// Asserts that no event comes within `QUIET`.
async fn expect_quiet(stream: &mut Sse) {
    if let Some(event) = stream.next_within(QUIET).await {
        panic!("expected no more events, got {event:?}");
    }
}

/// Reads `count` events, whatever they are.
async fn drain(stream: &mut Sse, count: usize) {
    for _ in 0..count {
        stream.next_event().await;
    }
}

/// Makes `2 * pairs` events: that many users join and leave again, a few at a time.
async fn churn(server: &TestServer, pairs: usize) {
    use futures_util::StreamExt;
    futures_util::stream::iter(0..pairs)
        .for_each_concurrent(16, |i| async move {
            let joined = server.join(&format!("churn {i}")).await;
            assert_eq!(server.leave(&joined.token).await, 204);
        })
        .await;
}

/// Most streams are taken off hyper by lobby's own fast path; a request head
/// it leaves to hyper (here: more headers than it parses) must stream the same.
#[tokio::test]
async fn a_stream_served_through_the_router_behaves_like_any_other() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;
    let mut request = server
        .client
        .get(server.url("/events"))
        .query(&[("token", alice.token.as_str())])
        .timeout(Duration::from_secs(3600));
    for index in 0..40 {
        request = request.header(format!("x-filler-{index}"), "so the head has many headers");
    }

    let response = request.send().await.expect("GET /events");

    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("content-type"), "text/event-stream");
    assert_eq!(header("cache-control"), "no-cache");
    assert_eq!(header("x-accel-buffering"), "no");
    // Only hyper chunks a stream: this is the router's path, not the fast one.
    assert_eq!(header("transfer-encoding"), "chunked");
    let mut stream = Sse::new(response);
    let snapshot = stream.next_event().await;
    assert_eq!(snapshot.event, "existing_users");
    assert_eq!(users_in(&snapshot), [alice.user()]);
    let bob = server.join("bob").await;
    let event = stream.next_event().await;
    assert_eq!(event.event, "new_user");
    assert_eq!(user_in(&event), bob.user());
}
