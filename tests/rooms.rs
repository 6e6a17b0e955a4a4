//! Rooms and watchers, through HTTP and SSE on a real socket: every room has
//! the lobby's routes under /rooms/{room}, the routes without a room are the
//! room named lobby, tokens belong to their room, a room lives while someone
//! is in it, and a request with no token watches a room without joining.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::metrics::scrape;
use common::{
    Client, LobbyProcess, PATIENCE, Sse, TestServer, User, assert_error, rss_kib, user_in, users_in,
};
use serde_json::Value;

/// Starts a lobby: one process, or under `LOBBY_TEST_CLUSTER` three nodes
/// with each request sent to one at random, so that every room rule is also
/// checked across a cluster.
async fn lobby(args: &[&str]) -> TestServer {
    TestServer::with_args(args).await
}

/// Starts one lobby process, whatever `LOBBY_TEST_CLUSTER` says: for what
/// one process counts (its metrics, its memory, its watchers per address).
async fn one_node(args: &[&str]) -> TestServer {
    TestServer::one_node_on(Ipv4Addr::LOCALHOST.into(), args).await
}

async fn assert_next(stream: &mut Sse, kind: &str, who: &User) -> u64 {
    let event = stream.next_event().await;
    assert_eq!((event.event.as_str(), user_in(&event)), (kind, who.clone()));
    event.id.parse().expect("a decimal id")
}

async fn rooms_gauge(server: &Client) -> f64 {
    scrape(server).await.get("lobby_rooms")
}

/// Waits, as long as `PATIENCE`, until the number of rooms is `count`.
async fn until_rooms(server: &Client, count: f64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while rooms_gauge(server).await != count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {} rooms, not {count}",
            rooms_gauge(server).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn each_room_has_its_own_people_and_events_and_its_ids_increase() {
    let server = lobby(&[]).await;
    let (design, ops) = (server.in_room("design"), server.in_room("ops"));
    let (ada, mut ada_sees, before) = design.join_and_subscribe("ada").await;
    assert_eq!(before, [ada.user()]);
    let (bob, mut bob_sees, before) = ops.join_and_subscribe("bob").await;
    assert_eq!(before, [bob.user()], "ops does not list design's people");

    let cy = ops.join("cy").await;
    let dee = design.join("dee").await;

    // Events come in order, so had cy's join reached design, ada would see it before dee's.
    let first = assert_next(&mut ada_sees, "new_user", &dee.user()).await;
    let cy_id = assert_next(&mut bob_sees, "new_user", &cy.user()).await;
    assert_eq!(ops.leave(&cy.token).await, 204);
    assert_eq!(design.leave(&dee.token).await, 204);
    let second = assert_next(&mut ada_sees, "disconnect_user", &dee.user()).await;
    assert!(
        second > first,
        "design's ids increase: {first} then {second}"
    );
    assert!(assert_next(&mut bob_sees, "disconnect_user", &cy.user()).await > cy_id);

    assert_eq!(design.users().await, [ada.user()]);
    assert_eq!(ops.users().await, [bob.user()]);
    assert_eq!(server.users().await, [], "the lobby is a room of its own");
}

#[tokio::test]
async fn the_routes_without_a_room_are_the_room_named_lobby() {
    let server = lobby(&[]).await;
    let lobby = server.in_room("lobby");
    let ada = server.join("ada").await;
    let bob = lobby.join("bob").await;

    assert_eq!(server.users().await, [ada.user(), bob.user()]);
    assert_eq!(lobby.users().await, server.users().await);
    // A token from one works on the other.
    let mut ada_sees = lobby.subscribe(&ada.token, None).await;
    assert_eq!(
        users_in(&ada_sees.next_event().await),
        [ada.user(), bob.user()]
    );
    assert_eq!(server.leave(&bob.token).await, 204);
    assert_next(&mut ada_sees, "disconnect_user", &bob.user()).await;
    assert_eq!(lobby.get_text("").await, server.get_text("/").await);
}

#[tokio::test]
async fn a_token_used_in_another_room_gets_403_and_changes_nothing() {
    let server = lobby(&[]).await;
    let (design, ops) = (server.in_room("design"), server.in_room("ops"));
    let (ada, mut ada_sees, _) = design.join_and_subscribe("ada").await;
    let (bob, mut bob_sees, _) = ops.join_and_subscribe("bob").await;

    for refused in [
        ops.open_events(&ada.token, None).await,
        server.open_events(&ada.token, None).await,
        ops.client
            .post(ops.url("/leave"))
            .bearer_auth(&ada.token)
            .send()
            .await
            .expect("POST /leave"),
    ] {
        let sentence = assert_error(refused, 403).await;
        assert!(sentence.contains("another room"), "{sentence}");
    }

    assert_eq!(design.users().await, [ada.user()]);
    assert_eq!(ops.users().await, [bob.user()]);
    // Nothing went out in either room: the next event each sees is this one.
    let cy = design.join("cy").await;
    assert_next(&mut ada_sees, "new_user", &cy.user()).await;
    let dee = ops.join("dee").await;
    assert_next(&mut bob_sees, "new_user", &dee.user()).await;
}

#[tokio::test]
async fn one_person_may_be_in_several_rooms_with_a_token_for_each() {
    let server = lobby(&[]).await;
    let (design, ops) = (server.in_room("design"), server.in_room("ops"));
    let in_design = design.join("ada").await;
    let in_ops = ops.join("ada").await;
    assert_ne!(in_design.token, in_ops.token);

    assert_eq!(design.leave(&in_design.token).await, 204);
    assert_eq!(design.users().await, []);
    assert_eq!(ops.users().await, [in_ops.user()]);
    assert_eq!(design.leave(&in_ops.token).await, 403);
}

#[tokio::test]
async fn a_room_name_outside_the_rules_gets_400_on_every_route_and_changes_nothing() {
    let server = one_node(&[]).await;
    let ada = server.join("ada").await;
    let long = "x".repeat(65);
    for room in ["a%20b", "caf%C3%A9", long.as_str(), "a%2Fb", "%FF"] {
        let room = server.in_room(room);
        let requests = [
            room.client.get(room.url("")),
            room.client.get(room.url("/users")),
            room.client.get(room.url("/events")),
            room.client
                .get(room.url("/events"))
                .query(&[("token", &ada.token)]),
            room.client
                .post(room.url("/join"))
                .json(&serde_json::json!({"name": "bob"})),
            room.client.post(room.url("/leave")).bearer_auth(&ada.token),
        ];
        for request in requests {
            let sentence = assert_error(request.send().await.expect("an answer"), 400).await;
            assert!(sentence.contains("A-Z a-z 0-9 . _ ~ -"), "{sentence}");
        }
    }
    assert_eq!(server.users().await, [ada.user()]);
    assert_eq!(rooms_gauge(&server).await, 1.0);
}

#[tokio::test]
async fn a_watcher_sees_the_room_live_without_being_in_it() {
    let server = lobby(&[]).await;
    let design = server.in_room("design");
    let ada = design.join("ada").await;

    let mut watcher = design.watch(None).await;
    let snapshot = watcher.next_event().await;
    assert_eq!(snapshot.event, "existing_users");
    assert_eq!(users_in(&snapshot), [ada.user()]);
    let bob = design.join("bob").await;
    assert_next(&mut watcher, "new_user", &bob.user()).await;
    assert_eq!(design.leave(&ada.token).await, 204);
    assert_next(&mut watcher, "disconnect_user", &ada.user()).await;

    assert_eq!(
        design.users().await,
        [bob.user()],
        "the watcher is in no one's list"
    );
    // A plain GET /events with no token watches the lobby.
    let mut lobby_watcher = server.watch(None).await;
    assert_eq!(users_in(&lobby_watcher.next_event().await), []);
}

#[tokio::test]
async fn watching_a_room_that_does_not_exist_sees_the_join_that_makes_it() {
    let server = one_node(&["--grace", "200ms"]).await;
    let later = server.in_room("later");
    let mut watcher = later.watch(None).await;
    let snapshot = watcher.next_event().await;
    assert_eq!(users_in(&snapshot), []);
    let opened: u64 = snapshot.id.parse().expect("a decimal id");
    assert_eq!(rooms_gauge(&server).await, 0.0, "watching makes no room");

    let ada = later.join("ada").await;
    let joined = assert_next(&mut watcher, "new_user", &ada.user()).await;
    assert!(joined > opened);
    assert_eq!(later.leave(&ada.token).await, 204);
    let left = assert_next(&mut watcher, "disconnect_user", &ada.user()).await;

    // The watcher does not keep the room: it goes once its resume window passes.
    until_rooms(&server, 0.0).await;
    // Made again, the room's ids go on past everything already sent.
    let bob = later.join("bob").await;
    let again = assert_next(&mut watcher, "new_user", &bob.user()).await;
    assert!(again > left, "ids never go back: {left} then {again}");

    // A client back with an id from before the room was dropped is not
    // replayed the old room's events, nor anything twice.
    let mut resumed = later.watch(Some(joined)).await;
    let first = resumed.next_event().await;
    assert_eq!(first.event, "existing_users");
    assert_eq!(users_in(&first), [bob.user()]);
}

#[tokio::test]
async fn a_watcher_resumes_with_last_event_id_and_is_replayed_its_room_only() {
    let server = lobby(&[]).await;
    let (design, ops) = (server.in_room("design"), server.in_room("ops"));
    let ada = design.join("ada").await;
    let mut watcher = design.watch(None).await;
    let last: u64 = watcher.next_event().await.id.parse().expect("an id");

    let bob = ops.join("bob").await;
    let cy = design.join("cy").await;
    assert_eq!(ops.leave(&bob.token).await, 204);
    assert_eq!(design.leave(&ada.token).await, 204);
    drop(watcher);

    let mut resumed = design.watch(Some(last)).await;
    assert_next(&mut resumed, "new_user", &cy.user()).await;
    assert_next(&mut resumed, "disconnect_user", &ada.user()).await;
    assert_eq!(resumed.next_within(Duration::from_millis(300)).await, None);
}

#[tokio::test]
async fn one_address_holds_at_most_its_watchers_and_gets_one_back_when_one_closes() {
    let server = one_node(&["--max-watchers-per-address", "2"]).await;
    let design = server.in_room("design");
    let mut first = design.watch(None).await;
    first.next_event().await;
    let mut second = server.watch(None).await;
    second.next_event().await;

    let sentence = assert_error(design.open_watcher(None).await, 429).await;
    assert!(sentence.contains("watcher"), "{sentence}");

    drop(first);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let response = design.open_watcher(None).await;
        if response.status() == 200 {
            break;
        }
        assert_error(response, 429).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed watcher's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Joined users' streams do not count against it.
    let (_, _stream, _) = design.join_and_subscribe("ada").await;
}

#[tokio::test]
async fn a_join_that_would_make_a_room_past_max_rooms_gets_503_and_others_go_on() {
    let server = lobby(&["--max-rooms", "2"]).await;
    let ada = server.in_room("one").join("ada").await;
    server.in_room("two").join("bob").await;

    let refused = server.in_room("three").post_join("cy").await;
    let sentence = assert_error(refused, 503).await;
    assert!(sentence.contains("2 rooms"), "{sentence}");
    assert_eq!(server.in_room("three").users().await, []);

    server.in_room("one").join("dee").await;
    assert_eq!(server.in_room("one").leave(&ada.token).await, 204);
    assert_eq!(server.in_room("two").users().await.len(), 1);
}

#[tokio::test]
async fn get_rooms_is_404_unless_listing_is_on_and_then_lists_the_fullest_first() {
    let hidden = lobby(&[]).await;
    hidden.in_room("secret-doc").join("ada").await;
    let response = hidden
        .client
        .get(hidden.url("/rooms"))
        .send()
        .await
        .expect("GET");
    assert_error(response, 404).await;

    let server = lobby(&["--list-rooms"]).await;
    for (room, people) in [("small", 1), ("big", 3), ("mid", 2)] {
        for i in 0..people {
            server.in_room(room).join(&format!("p{i}")).await;
        }
    }
    let listed = |query: &'static str| {
        let server = &server;
        async move {
            let body: Value = server
                .client
                .get(server.url(&format!("/rooms{query}")))
                .send()
                .await
                .expect("GET /rooms")
                .json()
                .await
                .expect("JSON");
            body["rooms"]
                .as_array()
                .expect("a list")
                .iter()
                .map(|entry| {
                    let room = entry["room"].as_str().expect("a name").to_owned();
                    (room, entry["users"].as_u64().expect("a count"))
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        listed("").await,
        [("big".into(), 3), ("mid".into(), 2), ("small".into(), 1)]
    );
    assert_eq!(listed("?limit=1").await, [("big".into(), 3)]);
    assert_eq!(listed("?limit=100000").await.len(), 3);
    let bad = server
        .client
        .get(server.url("/rooms?limit=many"))
        .send()
        .await
        .expect("GET");
    assert_error(bad, 400).await;
}

#[tokio::test]
async fn a_room_s_page_names_it_and_lists_its_people_as_text() {
    let server = lobby(&[]).await;
    let design = server.in_room("doc-42");
    design.join("<b>ada</b>").await;
    server.join("bob").await;

    let page = design.get_text("").await;
    assert!(page.contains("<title>doc-42 · lobby</title>"), "{page}");
    assert!(page.contains("<h1>doc-42</h1>"));
    assert!(page.contains(r#"data-room="doc-42""#));
    assert!(page.contains("&lt;b&gt;ada&lt;/b&gt;"));
    assert!(!page.contains(">bob<"), "the lobby's people are not on it");
    let lobby = server.get_text("/").await;
    assert!(lobby.contains("<title>lobby</title>") && !lobby.contains("data-room"));
}

#[tokio::test]
async fn the_metrics_count_rooms_and_a_room_goes_once_empty_past_its_grace() {
    let server = one_node(&["--grace", "200ms"]).await;
    let ada = server.in_room("a").join("ada").await;
    let bob = server.in_room("b").join("bob").await;
    assert_eq!(rooms_gauge(&server).await, 2.0);
    assert_eq!(server.in_room("a").leave(&ada.token).await, 204);
    until_rooms(&server, 1.0).await;
    assert_eq!(server.in_room("b").users().await, [bob.user()]);
}

/// Rooms cost memory only while they exist: 10,000 made and emptied leave the
/// process's RSS within 10% of where it was.
#[tokio::test]
async fn ten_thousand_rooms_made_and_emptied_give_their_memory_back() {
    let lobby = LobbyProcess::start(&[
        "--grace",
        "100ms",
        "--join-rate",
        "1000000",
        "--join-burst",
        "1000000",
    ])
    .await;
    let churn = |from: usize, count: usize| {
        let lobby = &lobby;
        async move {
            let rooms: Vec<usize> = (from..from + count).collect();
            for batch in rooms.chunks(200) {
                let joins = batch.iter().map(|i| async move {
                    let room = lobby.in_room(&format!("room-{i}"));
                    let joined = room.join("ada").await;
                    assert_eq!(room.leave(&joined.token).await, 204);
                });
                futures_util::future::join_all(joins).await;
            }
            until_rooms(lobby, 0.0).await;
        }
    };
    // Warm up the allocator, the connection pool and the maps.
    churn(0, 1_000).await;
    let before = rss_kib(lobby.pid(), "VmRSS");
    churn(1_000, 10_000).await;
    let after = rss_kib(lobby.pid(), "VmRSS");
    eprintln!("RSS {before} KiB before, {after} KiB after 10,000 rooms");

    assert!(
        after as f64 <= before as f64 * 1.10,
        "RSS {before} KiB before, {after} KiB after 10,000 rooms"
    );
}

/// A stream of a quiet room is not ended (nor sent anything) while other
/// rooms have more events than its backlog (1024): it reads only its room's.
#[tokio::test]
async fn a_quiet_room_s_stream_outlasts_a_busy_room_s_thousand_events() {
    let server = one_node(&["--join-rate", "1000000", "--join-burst", "1000000"]).await;
    let (quiet, busy) = (server.in_room("quiet"), server.in_room("busy"));
    let (_ada, mut ada_sees, _) = quiet.join_and_subscribe("ada").await;
    let (_bob, mut bob_sees, _) = busy.join_and_subscribe("bob").await;

    for n in 0..600 {
        let joined = busy.join(&format!("n{n}")).await;
        assert_eq!(busy.leave(&joined.token).await, 204);
    }
    for _ in 0..1200 {
        bob_sees.next_event().await;
    }
    let cy = quiet.join("cy").await;

    assert_next(&mut ada_sees, "new_user", &cy.user()).await;
}
