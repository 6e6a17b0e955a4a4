//! Several lobby nodes sharing one Redis (`--redis`), over real HTTP and SSE:
//! a join, a leave and GET /users on any node are seen on every node; every
//! stream on every node gets the same events in the same order with the same
//! ids; a stream resumes on another node; grace and the join timeout hold
//! across nodes; a SIGKILLed node's users are announced gone within the bound,
//! exactly once, and nothing of it lingers in Redis; and when Redis is stopped
//! and started again empty, streams stay open, joins are refused meanwhile, and
//! afterwards every view equals the truth.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::redis::{Cluster, Next, ProcessCluster, health, wait_for_health};
use common::{
    Client, Joined, PATIENCE, Sse, User, announcements_until, apply_to_view, assert_error,
    live_a_short_life, user_in, users_in,
};
use eventsource_stream::Event;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Short timings, so that grace, the join timeout and a lost node all come
/// within a fraction of a test's time, yet far above a local round trip.
const GRACE: Duration = Duration::from_millis(500);
const NODE_TIMEOUT: Duration = Duration::from_secs(1);
const FLAGS: [&str; 4] = ["--grace", "500ms", "--node-timeout", "1s"];

/// Nothing expires while a test that is not about expiry runs.
const STEADY: [&str; 6] = [
    "--grace",
    "60s",
    "--join-timeout",
    "60s",
    "--node-timeout",
    "1s",
];

/// The promised bound for a killed node's users to be announced gone:
/// node timeout + grace + at most 1 s.
const LOST_BOUND: Duration = NODE_TIMEOUT
    .saturating_add(GRACE)
    .saturating_add(Duration::from_secs(1));

/// Twice the grace: a leave that was going to be announced would have been by now.
const PAST_GRACE: Duration = Duration::from_millis(1000);

/// How long a check that nothing (more) comes waits.
const QUIET: Duration = Duration::from_millis(300);

/// How long nodes may take to notice Redis going away or coming back, and to reconcile.
const RECONCILE: Duration = Duration::from_secs(10);

/// How many events the history keeps for Last-Event-ID (README).
const HISTORY: usize = 4096;

// ---- /healthz ----

#[tokio::test]
async fn healthz_on_every_node_says_redis_is_up_and_names_a_node_redis_lists_as_live() {
    let cluster = Cluster::start(3, &FLAGS).await;

    let mut ids = Vec::new();
    for node in cluster.nodes() {
        let (status, body) = health(node).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "ok", "{body}");
        assert_eq!(body["redis"], "up", "{body}");
        ids.push(node_id(&body));
    }

    ids.sort_unstable();
    let mut live = cluster.redis.sorted_set("lobby:nodes").await;
    live.sort_unstable();
    assert_eq!(live, ids, "lobby:nodes lists exactly the three nodes");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 3, "{ids:?}");
}

// ---- joins, leaves, /users and event order across nodes ----

#[tokio::test]
async fn a_join_on_one_node_is_announced_to_the_streams_on_every_node_under_one_id() {
    let cluster = Cluster::start(3, &STEADY).await;
    let mut watchers = watch_from_every_node(&cluster, 1).await;

    let alice = cluster.node(1).join("alice").await;

    let mut ids = HashSet::new();
    for watcher in &mut watchers {
        let event = watcher.stream.next_event().await;
        assert_announces("new_user", &alice, &event);
        ids.insert(event.id);
    }
    assert_eq!(ids.len(), 1, "one event, one id on every node: {ids:?}");
}

#[tokio::test]
async fn get_users_on_every_node_lists_everyone_joined_on_any_node_oldest_first() {
    let cluster = Cluster::start(3, &STEADY).await;

    let alice = cluster.node(0).join("alice").await;
    let bob = cluster.node(1).join("bob").await;
    let carol = cluster.node(2).join("carol").await;

    assert_eq!(
        carol.users,
        [alice.user(), bob.user()],
        "carol's join reply"
    );
    for node in cluster.nodes() {
        assert_eq!(
            node.users().await,
            [alice.user(), bob.user(), carol.user()],
            "GET /users on {}",
            node.base
        );
    }
}

#[tokio::test]
async fn a_leave_on_one_node_is_announced_everywhere_and_ends_the_leaver_s_streams_on_other_nodes()
{
    let cluster = Cluster::start(3, &STEADY).await;
    let alice = cluster.node(0).join("alice").await;
    let mut watchers = watch_from_every_node(&cluster, 1).await;
    let mut alice_streams = Vec::new();
    for node in [1, 2] {
        let mut stream = cluster.node(node).subscribe(&alice.token, None).await;
        assert_eq!(stream.next_event().await.event, "existing_users");
        alice_streams.push(stream);
    }

    assert_eq!(cluster.node(0).leave(&alice.token).await, 204);

    let mut ids = HashSet::new();
    for watcher in &mut watchers {
        let event = watcher.stream.next_event().await;
        assert_announces("disconnect_user", &alice, &event);
        ids.insert(event.id);
        expect_quiet(&mut watcher.stream).await;
    }
    assert_eq!(ids.len(), 1, "one event, one id on every node: {ids:?}");
    for stream in &mut alice_streams {
        assert_announces("disconnect_user", &alice, &stream.next_event().await);
        stream.expect_end().await;
    }
    for node in cluster.nodes() {
        assert!(!node.users().await.contains(&alice.user()), "{}", node.base);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_on_every_node_gets_the_same_events_in_the_same_order_with_the_same_ids() {
    let cluster = Cluster::start(3, &STEADY).await;
    let watchers = watch_from_every_node(&cluster, 2).await;
    for watcher in &watchers[1..] {
        assert_eq!(
            (watcher.stream.last_id, &watcher.view),
            (watchers[0].stream.last_id, &watchers[0].view),
            "{}'s snapshot differs from {}'s",
            watcher.name,
            watchers[0].name
        );
    }

    let any_node = Arc::new(cluster.any_node());
    let mut churn = JoinSet::new();
    for worker in 0..4 {
        let any_node = any_node.clone();
        churn.spawn(async move {
            for round in 0..25 {
                let joined = any_node.join(&format!("churn {worker}.{round}")).await;
                // Every third one stays, so the events are not just pairs.
                if round % 3 != 0 {
                    assert_eq!(any_node.leave(&joined.token).await, 204);
                }
            }
        });
    }
    churn.join_all().await;
    let sentinel = cluster.node(0).join("sentinel").await;

    let reads = watchers.into_iter().map(|mut watcher| {
        let sentinel = sentinel.id.clone();
        async move {
            let mut seen = Vec::new();
            loop {
                let event = watcher.stream.next_event().await;
                let who = user_in(&event);
                seen.push((event.id, event.event, who.id.clone()));
                if who.id == sentinel {
                    return (watcher.name, seen);
                }
            }
        }
    });
    let sequences = futures_util::future::join_all(reads).await;

    let (first_name, first) = &sequences[0];
    let joins = first
        .iter()
        .filter(|(_, kind, _)| kind == "new_user")
        .count();
    assert_eq!(joins, 4 * 25 + 1, "every churn join and the sentinel's");
    assert_eq!(first.len() - joins, 4 * 16, "every churn leave");
    for (name, sequence) in &sequences[1..] {
        assert_eq!(
            sequence, first,
            "{name}'s events differ from {first_name}'s"
        );
    }
}

// ---- resuming on another node ----

#[tokio::test]
async fn a_stream_resumed_on_another_node_with_last_event_id_gets_exactly_the_events_it_missed() {
    let cluster = Cluster::start(3, &STEADY).await;
    let (alice, stream, _) = cluster.node(0).join_and_subscribe("alice").await;
    let last_seen = stream.last_id.expect("the snapshot has an id");
    drop(stream);
    let bob = cluster.node(1).join("bob").await;
    let carol = cluster.node(2).join("carol").await;
    assert_eq!(cluster.node(0).leave(&bob.token).await, 204);

    let mut resumed = cluster
        .node(1)
        .subscribe(&alice.token, Some(last_seen))
        .await;
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
async fn a_stream_resumed_on_another_node_at_the_latest_event_starts_with_nothing() {
    let cluster = Cluster::start(3, &STEADY).await;
    let (alice, stream, _) = cluster.node(0).join_and_subscribe("alice").await;
    let last_seen = stream.last_id.expect("the snapshot has an id");
    drop(stream);

    let mut resumed = cluster
        .node(2)
        .subscribe(&alice.token, Some(last_seen))
        .await;
    let first = resumed.next_within(QUIET).await;
    let bob = cluster.node(1).join("bob").await;
    let next = resumed.next_event().await;

    assert!(first.is_none(), "nothing was missed, yet it sent {first:?}");
    assert_announces("new_user", &bob, &next);
}

#[tokio::test]
async fn a_last_event_id_no_node_has_issued_gets_a_fresh_snapshot_on_any_node() {
    let cluster = Cluster::start(3, &STEADY).await;
    let alice = cluster.node(0).join("alice").await;
    let bob = cluster.node(1).join("bob").await;

    for node in cluster.nodes() {
        let mut stream = node.subscribe(&alice.token, Some(u64::MAX / 2)).await;
        let first = stream.next_event().await;

        assert_eq!(first.event, "existing_users", "on {}", node.base);
        assert_eq!(users_in(&first), [alice.user(), bob.user()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumed_on_another_node_from_before_the_history_gets_a_fresh_snapshot() {
    let cluster = Cluster::start(3, &STEADY).await;
    let (alice, stream, _) = cluster.node(0).join_and_subscribe("alice").await;
    let last_seen = stream.last_id.expect("the snapshot has an id");
    drop(stream);
    // Push the event after `last_seen` out of the history, with some to spare.
    churn(&cluster.any_node(), HISTORY / 2 + 100).await;
    let bob = cluster.node(2).join("bob").await;

    let mut resumed = cluster
        .node(1)
        .subscribe(&alice.token, Some(last_seen))
        .await;
    let first = resumed.next_event().await;

    assert_eq!(first.event, "existing_users");
    assert_eq!(users_in(&first), [alice.user(), bob.user()]);
}

// ---- grace and the join timeout across nodes ----

#[tokio::test]
async fn a_stream_that_moves_to_another_node_within_grace_causes_no_events() {
    let cluster = Cluster::start(3, &FLAGS).await;
    let mut watchers = watch_from_every_node(&cluster, 1).await;
    let alice = cluster.node(0).join("alice").await;
    let stream = cluster.node(1).subscribe(&alice.token, None).await;
    for watcher in &mut watchers {
        assert_announces("new_user", &alice, &watcher.stream.next_event().await);
    }

    drop(stream);
    // A reload through a load balancer: the old connection is gone a moment
    // before the new one reaches another node. Time that must pass.
    tokio::time::sleep(GRACE / 4).await;
    let _moved = cluster.node(2).subscribe(&alice.token, None).await;

    for watcher in &mut watchers {
        let flicker = watcher.stream.next_within(PAST_GRACE).await;
        assert!(flicker.is_none(), "{} got {flicker:?}", watcher.name);
    }
    for node in cluster.nodes() {
        assert!(node.users().await.contains(&alice.user()), "{}", node.base);
    }
}

#[tokio::test]
async fn a_user_with_streams_on_two_nodes_stays_online_while_either_is_open_then_goes_once() {
    let cluster = Cluster::start(3, &FLAGS).await;
    let mut watchers = watch_from_every_node(&cluster, 1).await;
    let alice = cluster.node(0).join("alice").await;
    let on_one = cluster.node(1).subscribe(&alice.token, None).await;
    let on_two = cluster.node(2).subscribe(&alice.token, None).await;
    for watcher in &mut watchers {
        assert_announces("new_user", &alice, &watcher.stream.next_event().await);
    }

    drop(on_one);
    for watcher in &mut watchers {
        let event = watcher.stream.next_within(PAST_GRACE).await;
        assert!(event.is_none(), "alice streams on node 2: {event:?}");
    }
    drop(on_two);

    for watcher in &mut watchers {
        assert_announces(
            "disconnect_user",
            &alice,
            &watcher.stream.next_event().await,
        );
    }
    for watcher in &mut watchers {
        let again = watcher.stream.next_within(PAST_GRACE).await;
        assert!(again.is_none(), "a second event after the leave: {again:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_user_is_announced_joined_and_gone_exactly_once_on_every_node() {
    let cluster =
        Arc::new(Cluster::start(3, &["--grace", "500ms", "--join-timeout", "500ms"]).await);
    let mut watchers = watch_from_every_node(&cluster, 1).await;
    let mut users = JoinSet::new();
    for i in 0..30 {
        let cluster = cluster.clone();
        users.spawn(async move {
            // Each request of one user goes to another node than the last.
            let nodes = [i % 3, (i + 1) % 3, (i + 2) % 3].map(|n| cluster.node(n));
            live_a_short_life(i, nodes).await
        });
    }
    let ids = users.join_all().await;
    for node in cluster.nodes() {
        wait_until_users(node, |users| users.len() == 3).await;
    }
    let sentinel = cluster.node(0).join("sentinel").await;

    for watcher in &mut watchers {
        let counts = announcements_until(&mut watcher.stream, &sentinel.id).await;
        assert_eq!(
            counts.len(),
            ids.len(),
            "{}: events about the 30",
            watcher.name
        );
        for id in &ids {
            let (joins, leaves) = &counts[id];
            assert_eq!(
                joins.len(),
                1,
                "{}: new_user for {id}: {joins:?}",
                watcher.name
            );
            assert_eq!(
                leaves.len(),
                1,
                "{}: disconnect_user for {id}: {leaves:?}",
                watcher.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_open_while_their_node_reports_everything_again_keep_their_users_online() {
    let cluster = Arc::new(Cluster::start(3, &FLAGS).await);
    // Redis forgets every node again and again; each then reports all its
    // streams at once, while streams keep opening on it. A report that took a
    // stream being opened for closed would start its user's grace.
    let opened = tokio::sync::Notify::new();
    let forget = async {
        loop {
            cluster.redis.command(&["DEL", "lobby:nodes"]).await;
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
                () = opened.notified() => return,
            }
        }
    };
    let open = async {
        let mut set = JoinSet::new();
        for i in 0..240 {
            let cluster = cluster.clone();
            set.spawn(async move {
                let node = cluster.node(i % 3);
                let joined = node.join(&format!("steady {i}")).await;
                let mut stream = node.subscribe(&joined.token, None).await;
                assert_eq!(stream.next_event().await.event, "existing_users");
                (joined, stream)
            });
        }
        let streams = set.join_all().await;
        opened.notify_one();
        streams
    };
    let (streams, ()) = tokio::join!(open, forget);
    // Past the grace, more than once over: nobody with a stream has left.
    tokio::time::sleep(PAST_GRACE * 2).await;
    for node in cluster.nodes() {
        assert_eq!(node.users().await.len(), streams.len(), "on {}", node.base);
    }
    drop(streams);
}

#[tokio::test]
async fn a_user_who_never_streams_is_announced_gone_once_on_every_node_after_the_join_timeout() {
    let cluster = Cluster::start(3, &["--join-timeout", "500ms", "--grace", "60s"]).await;
    let mut watchers = watch_from_every_node(&cluster, 1).await;

    let joining = Instant::now();
    let alice = cluster.node(0).join("alice").await;

    let mut ids = HashSet::new();
    for watcher in &mut watchers {
        assert_announces("new_user", &alice, &watcher.stream.next_event().await);
        let gone = watcher.stream.next_event().await;
        assert_announces("disconnect_user", &alice, &gone);
        ids.insert(gone.id);
    }
    let waited = joining.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "dropped after {waited:?}"
    );
    assert_eq!(ids.len(), 1, "one event, one id on every node: {ids:?}");
    for watcher in &mut watchers {
        let again = watcher.stream.next_within(PAST_GRACE).await;
        assert!(
            again.is_none(),
            "a second event after the timeout: {again:?}"
        );
    }
}

#[tokio::test]
async fn a_user_who_joins_on_one_node_and_streams_on_another_in_time_outlives_the_join_timeout() {
    let cluster = Cluster::start(3, &["--join-timeout", "500ms", "--grace", "60s"]).await;
    let mut watchers = watch_from_every_node(&cluster, 1).await;
    let alice = cluster.node(0).join("alice").await;

    let _stream = cluster.node(1).subscribe(&alice.token, None).await;

    for watcher in &mut watchers {
        assert_announces("new_user", &alice, &watcher.stream.next_event().await);
    }
    for watcher in &mut watchers {
        let event = watcher.stream.next_within(PAST_GRACE).await;
        assert!(event.is_none(), "alice streams on node 1: {event:?}");
    }
    for node in cluster.nodes() {
        assert!(node.users().await.contains(&alice.user()), "{}", node.base);
    }
}

// ---- a node killed without warning ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_of_a_killed_node_are_announced_gone_on_every_other_node_within_the_bound_once() {
    let mut cluster = ProcessCluster::start(3, &FLAGS).await;
    let first = cluster.node(1).join("watcher 1").await;
    let second = cluster.node(2).join("watcher 2").await;
    let mut watchers = vec![
        Watcher::open(cluster.node(1), &first).await,
        Watcher::open(cluster.node(2), &second).await,
    ];
    // alice and bob stream on node 0; carol joined there but streams on node 1.
    let alice = cluster.node(1).join("alice").await;
    let bob = cluster.node(0).join("bob").await;
    let carol = cluster.node(0).join("carol").await;
    let _alice_stream = cluster.node(0).subscribe(&alice.token, None).await;
    let _bob_stream = cluster.node(0).subscribe(&bob.token, None).await;
    let _carol_stream = cluster.node(1).subscribe(&carol.token, None).await;
    let killed_id = node_id(&health(cluster.node(0)).await.1);
    let held = format!("lobby:held:{killed_id}");
    assert!(cluster.redis.exists(&held).await, "{held} before the kill");

    let killed = Instant::now();
    cluster.sigkill(0);

    for watcher in &mut watchers {
        let mut gone = HashSet::new();
        while gone.len() < 2 {
            let left = (killed + LOST_BOUND).saturating_duration_since(Instant::now());
            let Some(event) = watcher.stream.next_within(left).await else {
                panic!(
                    "{}: within {LOST_BOUND:?} of the kill only {gone:?} were announced gone",
                    watcher.name
                );
            };
            let who = user_in(&event);
            match event.event.as_str() {
                // The joins made after the watcher subscribed.
                "new_user" => assert!([&alice.id, &bob.id, &carol.id].contains(&&who.id)),
                "disconnect_user" => {
                    assert!(who == alice.user() || who == bob.user(), "{who:?} went");
                    assert!(gone.insert(who.id.clone()), "{who:?} announced gone twice");
                }
                other => panic!("unexpected {other} event"),
            }
            watcher.apply(&event);
        }
    }
    for watcher in &mut watchers {
        let again = watcher.stream.next_within(PAST_GRACE).await;
        assert!(
            again.is_none(),
            "{}: after the kill, {again:?}",
            watcher.name
        );
    }
    let survivors = [
        watchers[0].user.clone(),
        watchers[1].user.clone(),
        carol.user(),
    ];
    for node in [1, 2] {
        assert_eq!(cluster.node(node).users().await, survivors);
    }
    for watcher in &watchers {
        assert_eq!(watcher.view, survivors, "{}'s view", watcher.name);
    }
    let live = cluster.redis.sorted_set("lobby:nodes").await;
    assert!(
        !live.contains(&killed_id),
        "the killed node is still live: {live:?}"
    );
    assert!(!cluster.redis.exists(&held).await, "{held} lingers");
    let named = cluster.redis.keys(&format!("*{killed_id}*")).await;
    assert!(
        named.is_empty(),
        "keys of the killed node linger: {named:?}"
    );
    assert_eq!(cluster.redis.hash_fields("lobby:users").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_whose_node_is_killed_and_who_reconnects_to_another_node_at_once_stays_online() {
    let mut cluster = ProcessCluster::start(3, &FLAGS).await;
    let watcher = cluster.node(1).join("watcher").await;
    let mut watching = Watcher::open(cluster.node(1), &watcher).await;
    let (alice, alice_stream, _) = cluster.node(0).join_and_subscribe("alice").await;
    assert_announces("new_user", &alice, &watching.next().await);

    cluster.sigkill(0);
    let _moved = cluster
        .node(2)
        .subscribe(&alice.token, alice_stream.last_id)
        .await;

    let event = watching.stream.next_within(LOST_BOUND + GRACE).await;
    assert!(event.is_none(), "alice moved to node 2, yet {event:?}");
    for node in [1, 2] {
        assert_eq!(
            cluster.node(node).users().await,
            [watcher.user(), alice.user()]
        );
    }
}

// ---- Redis stopped and started again ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarts_empty_every_node_and_every_stream_sees_exactly_who_streams() {
    let mut cluster = Cluster::start(
        3,
        &[
            "--grace",
            "500ms",
            "--node-timeout",
            "1s",
            "--join-timeout",
            "60s",
        ],
    )
    .await;
    let mut people = Vec::new();
    for (index, name) in ["alice", "bob", "carol", "dave"].into_iter().enumerate() {
        people.push(cluster.node(index % 3).join(name).await);
    }
    // alice, bob and carol keep their streams; dave's closes while Redis is down.
    let mut watchers = Vec::new();
    for (node, person) in people.iter().enumerate().take(3) {
        watchers.push(Watcher::open(cluster.node(node), person).await);
    }
    let dave_stream = cluster.node(0).subscribe(&people[3].token, None).await;
    // erin is in a room of her own, and keeps her stream: she is put back there.
    let design = cluster.node(1).in_room("design");
    let (erin, _erin_stream, _) = design.join_and_subscribe("erin").await;
    let before: Vec<User> = people.iter().map(Joined::user).collect();
    let node_ids = every_node_s_id(&cluster).await;

    cluster.redis.stop().await;

    for (node, id) in cluster.nodes().zip(&node_ids) {
        let body = wait_for_health(node, 503, RECONCILE).await;
        assert_eq!(body["status"], "degraded", "{body}");
        assert_eq!(body["redis"], "down", "{body}");
        assert_eq!(&node_id(&body), id, "{body}");
        assert_eq!(node.users().await, before, "GET /users from the last view");
    }
    for watcher in &mut watchers {
        let next = watcher.stream.next_or_end(QUIET).await;
        assert!(matches!(next, Next::Quiet), "{}: {next:?}", watcher.name);
    }
    drop(dave_stream);
    // dave's grace runs out while Redis is down: time that must pass.
    tokio::time::sleep(PAST_GRACE).await;
    cluster.redis.start_again().await;

    for (node, id) in cluster.nodes().zip(&node_ids) {
        let body = wait_for_health(node, 200, RECONCILE).await;
        assert_eq!(body["redis"], "up", "{body}");
        assert_eq!(&node_id(&body), id, "{body}");
    }
    let truth: Vec<User> = before[..3].to_vec();
    for node in cluster.nodes() {
        wait_until_users_within(node, RECONCILE, |users| same_people(users, &truth)).await;
    }
    let lists = futures_util::future::join_all(cluster.nodes().map(Client::users)).await;
    assert!(
        lists.iter().all(|list| *list == lists[0]),
        "the nodes list people in different orders: {lists:?}"
    );
    for node in cluster.nodes() {
        let design = node.in_room("design");
        wait_until_users_within(&design, RECONCILE, |users| users == [erin.user()]).await;
    }
    let sentinel = cluster.node(0).join("sentinel").await;
    let mut expected = truth.clone();
    expected.push(sentinel.user());
    for (index, watcher) in watchers.iter_mut().enumerate() {
        // Reconnect, where a node ended the stream, to another node.
        let other = cluster.node((index + 1) % 3);
        watcher.catch_up_with(other, &sentinel).await;
        assert!(
            same_people(&watcher.view, &expected),
            "{}'s view {:?}, the truth {expected:?}",
            watcher.name,
            watcher.view
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_while_redis_is_down_is_a_json_503_on_every_node_and_changes_nothing() {
    let mut cluster = Cluster::start(3, &FLAGS).await;
    let watcher = cluster.node(1).join("watcher").await;
    let mut watching = Watcher::open(cluster.node(1), &watcher).await;
    cluster.redis.stop().await;
    for node in cluster.nodes() {
        wait_for_health(node, 503, RECONCILE).await;
    }

    for node in cluster.nodes() {
        let response = node.post_join("mallory").await;

        assert_error(response, 503).await;
        assert_eq!(node.users().await, [watcher.user()], "{}", node.base);
    }

    cluster.redis.start_again().await;
    for node in cluster.nodes() {
        wait_for_health(node, 200, RECONCILE).await;
        wait_until_users_within(node, RECONCILE, |users| users == [watcher.user()]).await;
    }
    let sentinel = cluster.node(2).join("sentinel").await;
    watching.catch_up_with(cluster.node(1), &sentinel).await;
    assert!(
        same_people(&watching.view, &[watcher.user(), sentinel.user()]),
        "{:?}",
        watching.view
    );
    assert!(
        !watching.seen.iter().any(|name| name == "mallory"),
        "mallory was announced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_and_a_leave_refused_while_redis_hangs_never_happen_later() {
    let cluster = Cluster::start(2, &FLAGS).await;
    // Redis has run each script once, so a call sent while it hangs is one
    // short message that it would run as soon as it wakes.
    let warm = cluster.node(1).join("warm").await;
    assert_eq!(cluster.node(0).leave(&warm.token).await, 204);
    let watcher = cluster.node(0).join("watcher").await;
    let mut watching = Watcher::open(cluster.node(0), &watcher).await;
    let alice = cluster.node(1).join("alice").await;
    let _alice_streams = Watcher::open(cluster.node(1), &alice).await;

    cluster.redis.pause();
    let refused_join = cluster.node(1).post_join("ghost").await;
    let refused_leave = cluster.node(0).leave(&alice.token).await;
    cluster.redis.resume();

    assert_error(refused_join, 503).await;
    assert_eq!(refused_leave, 503, "the leave is refused while Redis hangs");
    for node in cluster.nodes() {
        wait_for_health(node, 200, RECONCILE).await;
    }
    // Whatever Redis ran when it woke came before this.
    let sentinel = cluster.node(1).join("sentinel").await;
    watching.catch_up_with(cluster.node(0), &sentinel).await;
    assert!(
        !watching.seen.iter().any(|name| name == "ghost"),
        "a join answered with 503 happened later: {:?}",
        watching.seen
    );
    for node in cluster.nodes() {
        let names: Vec<String> = node.users().await.into_iter().map(|u| u.name).collect();
        assert_eq!(names, ["watcher", "alice", "sentinel"], "on {}", node.base);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_hangs_for_longer_than_the_node_timeout_takes_no_node_for_dead() {
    let cluster = Cluster::start(3, &FLAGS).await;
    let mut watchers = watch_from_every_node(&cluster, 1).await;
    let everyone: Vec<User> = watchers.iter().map(|w| w.user.clone()).collect();

    cluster.redis.pause();
    // Three node timeouts without a heartbeat reaching Redis.
    tokio::time::sleep(NODE_TIMEOUT * 3).await;
    cluster.redis.resume();

    for node in cluster.nodes() {
        wait_for_health(node, 200, RECONCILE).await;
    }
    still_everyone_after(PAST_GRACE, &cluster, &everyone, &mut watchers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_shorter_node_timeout_takes_no_healthy_node_for_dead() {
    let mut cluster = Cluster::start(2, &FLAGS).await;
    let mut watchers = watch_from_every_node(&cluster, 1).await;
    let everyone: Vec<User> = watchers.iter().map(|w| w.user.clone()).collect();

    // The others beat every third of their own timeout (1 s), far more
    // rarely than this node's timeout; each is judged by its own. (Judged by
    // this node's, they would be dead, and with its grace their users gone
    // at once.)
    let quick = cluster
        .add_node(&["--grace", "100ms", "--node-timeout", "100ms"])
        .await;
    assert!(same_people(&quick.users().await, &everyone));
    still_everyone_after(
        NODE_TIMEOUT + PAST_GRACE,
        &cluster,
        &everyone,
        &mut watchers,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_while_redis_is_down_is_a_json_503_and_the_user_stays_online() {
    let mut cluster = Cluster::start(3, &FLAGS).await;
    let watcher = cluster.node(1).join("watcher").await;
    let mut watching = Watcher::open(cluster.node(1), &watcher).await;
    let alice = cluster.node(0).join("alice").await;
    let mut alice_watching = Watcher::open(cluster.node(0), &alice).await;
    cluster.redis.stop().await;
    for node in cluster.nodes() {
        wait_for_health(node, 503, RECONCILE).await;
    }

    let response = cluster
        .node(2)
        .client
        .post(cluster.node(2).url("/leave"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("POST /leave");

    assert_error(response, 503).await;
    cluster.redis.start_again().await;
    let truth = [watcher.user(), alice.user()];
    for node in cluster.nodes() {
        wait_for_health(node, 200, RECONCILE).await;
        wait_until_users_within(node, RECONCILE, |users| same_people(users, &truth)).await;
    }
    let sentinel = cluster.node(2).join("sentinel").await;
    let mut expected = truth.to_vec();
    expected.push(sentinel.user());
    for (watcher, node) in [(&mut watching, 1), (&mut alice_watching, 0)] {
        watcher.catch_up_with(cluster.node(node), &sentinel).await;
        assert!(
            same_people(&watcher.view, &expected),
            "{}: {:?}",
            watcher.name,
            watcher.view
        );
    }
}

// ---- Redis lost everything: the rule of the new log ----
//
// Each of these reproduced a bug found from outside (issue 16) before the fix.

/// Joins on `node` and opens `alice`'s stream there over and over, from the
/// moment Redis answers again until the node is back in step and a round
/// after; returns the joins answered 201. No answer may be a 401 for alice,
/// who was online all along, and a join is either 201 or 503.
async fn join_and_reopen_while_the_node_catches_up(node: &Client, alice: &Joined) -> Vec<Joined> {
    let mut acknowledged = Vec::new();
    let mut rounds_in_step = 0;
    let deadline = Instant::now() + RECONCILE;
    for attempt in 0.. {
        let response = node.post_join(&format!("n-after-redis {attempt}")).await;
        match response.status().as_u16() {
            201 => acknowledged.push(response.json().await.expect("join reply is JSON")),
            503 => {}
            other => panic!("a join as Redis came back: {other}"),
        }
        let opened = node.open_events(&alice.token, None).await;
        let status = opened.status().as_u16();
        assert!(
            status == 200 || status == 503,
            "alice, online all along, got {status} as Redis came back: {}",
            opened.text().await.unwrap_or_default()
        );
        if health(node).await.0 == 200 {
            rounds_in_step += 1;
            if rounds_in_step == 2 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} not back in step within {RECONCILE:?}",
            node.base
        );
    }
    acknowledged
}

/// A client that joined a moment before Redis lost everything may open its
/// first stream any time within its join timeout: put back, it keeps that
/// time, not only grace from the moment it was put back (the chaos test lost
/// such a join: its stream came 1.5 s after the put-back, with grace 2 s
/// and a join timeout of 5 s, on a node cut off from Redis that could report
/// it only later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_put_back_after_redis_lost_it_keeps_the_rest_of_its_join_timeout() {
    let flags = [
        "--grace",
        "500ms",
        "--join-timeout",
        "20s",
        "--node-timeout",
        "1s",
    ];
    let mut cluster = Cluster::start(1, &flags).await;
    let alice = cluster.node(0).join("alice").await;
    cluster.redis.stop().await;
    cluster.redis.start_again_empty().await;
    let node = cluster.node(0);
    wait_until_users_within(node, RECONCILE, |users| users == [alice.user()]).await;

    tokio::time::sleep(PAST_GRACE).await;
    let opened = node.open_events(&alice.token, None).await;
    assert_eq!(
        opened.status(),
        200,
        "alice's first stream, within her join timeout"
    );
    assert_eq!(node.users().await, [alice.user()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_answered_as_redis_comes_back_empty_is_kept_and_online_tokens_are_not_refused() {
    let mut cluster = Cluster::start(2, &STEADY).await;
    let alice = cluster.node(0).join("alice").await;
    let _alice_stream = cluster.node(0).subscribe(&alice.token, None).await;
    cluster.redis.stop().await;
    for node in cluster.nodes() {
        wait_for_health(node, 503, RECONCILE).await;
    }

    cluster.redis.start_again_empty().await;
    let acknowledged = join_and_reopen_while_the_node_catches_up(cluster.node(1), &alice).await;

    let mut everyone = vec![alice.user()];
    everyone.extend(acknowledged.iter().map(Joined::user));
    for node in cluster.nodes() {
        wait_for_health(node, 200, RECONCILE).await;
        wait_until_users_within(node, RECONCILE, |users| same_people(users, &everyone)).await;
    }
    for joined in &acknowledged {
        let opened = cluster.node(0).open_events(&joined.token, None).await;
        assert_eq!(opened.status(), 200, "{} was answered 201", joined.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_while_redis_is_down_answers_503_not_401_to_tokens_it_cannot_check() {
    let mut cluster = Cluster::start(1, &STEADY).await;
    let alice = cluster.node(0).join("alice").await;
    let _alice_stream = cluster.node(0).subscribe(&alice.token, None).await;
    cluster.redis.stop().await;

    let late = cluster.start_node(&STEADY).await;
    wait_for_health(late, 503, RECONCILE).await;
    assert_error(late.open_events(&alice.token, None).await, 503).await;
    assert_eq!(
        late.leave(&alice.token).await,
        503,
        "a leave it cannot check"
    );

    cluster.redis.start_again().await;
    let late = cluster.node(1);
    wait_for_health(late, 200, RECONCILE).await;
    wait_until_users_within(late, RECONCILE, |users| users == [alice.user()]).await;
    let opened = late.open_events(&alice.token, None).await;
    assert_eq!(opened.status(), 200, "alice's token, once Redis is back");
}

/// Redis lost everything, and the node that knew alice is away: the node that
/// begins the new log started during the outage, so it cannot tell whether
/// users existed. Until the log settles (node timeout + grace), a token it
/// does not hold is "try again" (503), not "join again" (401): the away node
/// may yet come back and put alice back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_begun_by_a_node_started_in_an_outage_is_not_sure_of_tokens_it_lacks() {
    let mut cluster = Cluster::start(1, &STEADY).await;
    let alice = cluster.node(0).join("alice").await;
    cluster.redis.stop().await;
    cluster.stop_node(0).await;

    let late = cluster.start_node(&STEADY).await;
    wait_for_health(late, 503, RECONCILE).await;
    cluster.redis.start_again_empty().await;
    let late = cluster.node(1);
    wait_for_health(late, 200, RECONCILE).await;

    assert_error(late.open_events(&alice.token, None).await, 503).await;
    assert_eq!(
        late.leave(&alice.token).await,
        503,
        "a leave it cannot be sure of"
    );
}

/// Redis lost everything while the only node that knew alice was away, and
/// the node that begins the new log never saw the old one: it found Redis at
/// once, and empty, so it cannot tell a new lobby from a lost one. Alice's
/// token was given out by another log: until the new log settles it is "try
/// again" (503), not "join again" (401). A token the new log gave out and
/// took back is unknown at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_begun_by_a_node_that_saw_nothing_is_not_sure_of_an_earlier_logs_tokens() {
    let mut cluster = Cluster::start(1, &STEADY).await;
    let alice = cluster.node(0).join("alice").await;
    cluster.stop_node(0).await;
    cluster.redis.stop().await;
    cluster.redis.start_again_empty().await;

    let fresh = cluster.add_node(&STEADY).await;
    assert_error(fresh.open_events(&alice.token, None).await, 503).await;
    assert_eq!(fresh.leave(&alice.token).await, 503, "alice's leave");

    let bob = fresh.join("bob").await;
    assert_eq!(fresh.leave(&bob.token).await, 204, "bob's leave");
    assert_error(fresh.open_events(&bob.token, None).await, 401).await;
    assert_eq!(fresh.leave(&bob.token).await, 401, "bob's second leave");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_begun_again_by_a_node_that_saw_nothing_never_gives_an_old_id_a_new_meaning() {
    let mut cluster = Cluster::start(1, &STEADY).await;
    let (_alice, mut stream, _) = cluster.node(0).join_and_subscribe("alice").await;
    for name in ["bob", "carol"] {
        cluster.node(0).join(name).await;
        stream.next_event().await;
    }
    let last_old_id = stream.last_id.expect("events carry ids");
    drop(stream);
    cluster.stop_node(0).await;
    cluster.redis.stop().await;
    cluster.redis.start_again_empty().await;

    // This node never saw the old log: it begins the new one.
    let fresh = cluster.add_node(&STEADY).await;
    let (_dave, mut stream, _) = fresh.join_and_subscribe("dave").await;
    fresh.join("erin").await;
    let erin = stream.next_event().await;

    let new_id: u64 = erin.id.parse().expect("a numeric id");
    assert!(
        new_id > last_old_id,
        "the new log's id {new_id} is one the old log already sent (up to {last_old_id})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_emptied_under_open_connections_is_noticed_and_everyone_put_back() {
    let cluster = Cluster::start(2, &STEADY).await;
    let alice = cluster.node(0).join("alice").await;
    let _alice_stream = cluster.node(0).subscribe(&alice.token, None).await;
    let bob = cluster.node(1).join("bob").await;

    // An operator's FLUSHALL, or a fail-over to an empty replica behind a
    // proxy: no connection drops, so only the answers can tell.
    cluster.redis.command(&["FLUSHALL"]).await;
    let acknowledged = join_and_reopen_while_the_node_catches_up(cluster.node(1), &alice).await;

    let mut everyone = vec![alice.user(), bob.user()];
    everyone.extend(acknowledged.iter().map(Joined::user));
    for node in cluster.nodes() {
        everyone.push(join_within(node, "sentinel", RECONCILE).await.user());
    }
    for node in cluster.nodes() {
        wait_until_users_within(node, RECONCILE, |users| same_people(users, &everyone)).await;
    }
    let in_redis = cluster.redis.hash_fields("lobby:users").await;
    assert_eq!(in_redis.len(), everyone.len(), "Redis holds {in_redis:?}");
}

/// Joins on `node`, trying again while it answers 503, for at most `within`.
async fn join_within(node: &Client, name: &str, within: Duration) -> Joined {
    let deadline = Instant::now() + within;
    loop {
        let response = node.post_join(name).await;
        match response.status().as_u16() {
            201 => return response.json().await.expect("join reply is JSON"),
            503 if Instant::now() < deadline => {}
            other => panic!("a join on {} within {within:?}: {other}", node.base),
        }
    }
}

// ---- helpers local to this file ----

/// One client's stream and who it believes is online: the snapshot, then every
/// event applied in order. A `new_user` for someone already shown, or a
/// `disconnect_user` for someone not shown, fails the test at once: a ghost or
/// a missing user.
struct Watcher {
    name: String,
    user: User,
    token: String,
    stream: Sse,
    view: Vec<User>,
    /// The name of everyone any event or snapshot mentioned.
    seen: Vec<String>,
}

impl Watcher {
    /// Opens a stream for `joined` on `node` and applies its opening snapshot.
    async fn open(node: &Client, joined: &Joined) -> Watcher {
        let mut watcher = Watcher {
            name: joined.name.clone(),
            user: joined.user(),
            token: joined.token.clone(),
            stream: node.subscribe(&joined.token, None).await,
            view: Vec::new(),
            seen: Vec::new(),
        };
        let snapshot = watcher.next().await;
        assert_eq!(snapshot.event, "existing_users");
        watcher
    }

    /// Reads and applies one event.
    async fn next(&mut self) -> Event {
        let event = self.stream.next_event().await;
        self.apply(&event);
        event
    }

    fn apply(&mut self, event: &Event) {
        apply_to_view(&mut self.view, event, &self.name);
        match event.event.as_str() {
            "existing_users" => self.seen.extend(self.view.iter().map(|u| u.name.clone())),
            "new_user" => self.seen.push(user_in(event).name),
            _ => {}
        }
    }

    /// Reads and applies events up to `sentinel`'s `new_user`, reconnecting to
    /// `node` with Last-Event-ID whenever the stream ends, as a browser does.
    async fn catch_up_with(&mut self, node: &Client, sentinel: &Joined) {
        let deadline = Instant::now() + RECONCILE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stream.next_or_end(left).await {
                Next::Event(event) => {
                    self.apply(&event);
                    if event.event == "new_user" && user_in(&event).id == sentinel.id {
                        return;
                    }
                }
                Next::Ended => {
                    let last_id = self.stream.last_id;
                    self.stream = node.subscribe(&self.token, last_id).await;
                    self.stream.last_id = last_id;
                }
                Next::Quiet => panic!(
                    "{}: no new_user for the sentinel within {RECONCILE:?}; view {:?}",
                    self.name, self.view
                ),
            }
        }
    }
}

/// Waits `wait` (long enough for a wrong leave to have been announced), then
/// asserts that every node still lists `everyone` and no watcher heard a thing.
async fn still_everyone_after(
    wait: Duration,
    cluster: &Cluster,
    everyone: &[User],
    watchers: &mut [Watcher],
) {
    tokio::time::sleep(wait).await;
    for node in cluster.nodes() {
        assert!(
            same_people(&node.users().await, everyone),
            "on {}",
            node.base
        );
    }
    for watcher in watchers {
        expect_quiet(&mut watcher.stream).await;
    }
}

/// Joins `per_node` watchers on every node, then opens each one's stream on the
/// node it joined, so that every snapshot is taken after the last of the joins.
async fn watch_from_every_node(cluster: &Cluster, per_node: usize) -> Vec<Watcher> {
    let mut joined = Vec::new();
    for round in 0..per_node {
        for (index, node) in cluster.nodes().enumerate() {
            joined.push((index, node.join(&format!("watcher {index}.{round}")).await));
        }
    }
    let mut watchers = Vec::new();
    for (index, joined) in &joined {
        watchers.push(Watcher::open(cluster.node(*index), joined).await);
    }
    watchers
}

/// Makes `2 * pairs` events: that many users join and leave again, a few at a time.
async fn churn(any_node: &Client, pairs: usize) {
    use futures_util::StreamExt;
    futures_util::stream::iter(0..pairs)
        .for_each_concurrent(16, |i| async move {
            let joined = any_node.join(&format!("churn {i}")).await;
            assert_eq!(any_node.leave(&joined.token).await, 204);
        })
        .await;
}

/// The `node` field of a cluster node's /healthz body.
fn node_id(health: &Value) -> String {
    health["node"]
        .as_str()
        .unwrap_or_else(|| panic!("/healthz names its node: {health}"))
        .to_owned()
}

async fn every_node_s_id(cluster: &Cluster) -> Vec<String> {
    let mut ids = Vec::new();
    for node in cluster.nodes() {
        ids.push(node_id(&health(node).await.1));
    }
    ids
}

/// Whether two lists hold the same users, whatever their order: after Redis
/// lost its data, the order of joins it knew is gone with it.
fn same_people(some: &[User], others: &[User]) -> bool {
    let ids = |users: &[User]| {
        let mut ids: Vec<String> = users.iter().map(|u| u.id.clone()).collect();
        ids.sort_unstable();
        ids
    };
    some.len() == others.len() && ids(some) == ids(others)
}

/// Polls GET /users on `node` until `done` holds, for at most `PATIENCE`.
async fn wait_until_users(node: &Client, done: impl Fn(&[User]) -> bool) {
    wait_until_users_within(node, PATIENCE, done).await;
}

async fn wait_until_users_within(node: &Client, within: Duration, done: impl Fn(&[User]) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let users = node.users().await;
        if done(&users) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET /users on {} did not settle within {within:?}: {users:?}",
            node.base
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that `event` is a `kind` event about `who`.
fn assert_announces(kind: &str, who: &Joined, event: &Event) {
    assert_eq!(
        event.event, kind,
        "expected {kind} for {}: {event:?}",
        who.name
    );
    assert_eq!(user_in(event), who.user());
}

/// Asserts that no event comes within `QUIET`.
async fn expect_quiet(stream: &mut Sse) {
    if let Some(event) = stream.next_within(QUIET).await {
        panic!("expected no more events, got {event:?}");
    }
}

#[tokio::test]
async fn a_watcher_on_one_node_sees_a_join_on_another_and_the_lobby_s_room_routes_work() {
    let cluster = Cluster::start(2, &STEADY).await;
    let mut watcher = cluster.node(0).watch(None).await;
    assert_eq!(users_in(&watcher.next_event().await), []);

    let alice = cluster.node(1).in_room("lobby").join("alice").await;

    assert_announces("new_user", &alice, &watcher.next_event().await);
    assert_eq!(cluster.node(0).users().await, [alice.user()]);
    assert_eq!(
        cluster.node(0).in_room("lobby").leave(&alice.token).await,
        204
    );
}

// ---- Rooms across nodes ----

/// A join in a room on one node reaches that room's members and watchers on
/// the other nodes under one id, and no other room's streams.
#[tokio::test]
async fn a_join_in_a_room_reaches_its_members_and_watchers_on_every_node_under_one_id() {
    let cluster = Cluster::start(3, &STEADY).await;
    let design: Vec<_> = (0..3).map(|n| cluster.node(n).in_room("design")).collect();
    let (ada, mut ada_sees, _) = design[0].join_and_subscribe("ada").await;
    let mut watcher = design[1].watch(None).await;
    assert_eq!(users_in(&watcher.next_event().await), [ada.user()]);
    let (_bob, mut ops_sees, _) = cluster
        .node(2)
        .in_room("ops")
        .join_and_subscribe("bob")
        .await;

    let opened = ada_sees.last_id.expect("the snapshot has an id");
    let cy = design[2].join("cy").await;

    let seen_by_member = ada_sees.next_event().await;
    assert_eq!(
        seen_by_member.id,
        (opened + 1).to_string(),
        "design's ids follow one another, though ops' join came between"
    );
    let seen_by_watcher = watcher.next_event().await;
    assert_announces("new_user", &cy, &seen_by_member);
    assert_announces("new_user", &cy, &seen_by_watcher);
    assert_eq!(
        seen_by_member.id, seen_by_watcher.id,
        "one id on every node"
    );
    expect_quiet(&mut ops_sees).await;
    for node in &design {
        assert_eq!(node.users().await, [ada.user(), cy.user()]);
    }
    assert_eq!(cluster.node(0).in_room("ops").users().await.len(), 1);
    assert_eq!(
        cluster.node(1).users().await,
        [],
        "the lobby is a room of its own"
    );
}

/// A stream of a room that moves to another node with `Last-Event-ID` is
/// replayed its room's events only, though the ids between went to others.
#[tokio::test]
async fn a_room_s_stream_resumed_on_another_node_gets_exactly_its_room_s_events() {
    let cluster = Cluster::start(3, &STEADY).await;
    let (design, ops) = (
        cluster.node(0).in_room("design"),
        cluster.node(1).in_room("ops"),
    );
    let (ada, stream, _) = design.join_and_subscribe("ada").await;
    let last_seen = stream.last_id.expect("the snapshot has an id");
    drop(stream);
    let bob = ops.join("bob").await;
    let cy = cluster.node(2).in_room("design").join("cy").await;
    assert_eq!(ops.leave(&bob.token).await, 204);
    assert_eq!(design.leave(&cy.token).await, 204);

    let mut resumed = cluster
        .node(2)
        .in_room("design")
        .subscribe(&ada.token, Some(last_seen))
        .await;
    assert_announces("new_user", &cy, &resumed.next_event().await);
    assert_announces("disconnect_user", &cy, &resumed.next_event().await);
    expect_quiet(&mut resumed).await;
}

/// Tokens, `--max-rooms` and a room's users hold across nodes: another
/// room's token gets 403 on any node, and a room past the cap gets 503
/// whichever node the other rooms were made on.
#[tokio::test]
async fn tokens_belong_to_their_room_and_max_rooms_holds_across_nodes() {
    let flags = [&STEADY[..], &["--max-rooms", "2"]].concat();
    let cluster = Cluster::start(2, &flags).await;
    let ada = cluster.node(0).in_room("one").join("ada").await;
    cluster.node(1).in_room("two").join("bob").await;

    let refused = cluster.node(1).in_room("three").post_join("cy").await;
    let sentence = assert_error(refused, 503).await;
    assert!(sentence.contains("2 rooms"), "{sentence}");

    let two = cluster.node(1).in_room("two");
    let sentence = assert_error(two.open_events(&ada.token, None).await, 403).await;
    assert!(sentence.contains("another room"), "{sentence}");
    assert_eq!(two.leave(&ada.token).await, 403);
    assert_eq!(cluster.node(1).in_room("one").users().await, [ada.user()]);
    assert_eq!(cluster.node(1).in_room("one").leave(&ada.token).await, 204);
    cluster.node(0).in_room("three").join("cy").await;
}

/// The users a killed node streamed to leave their rooms once, seen by
/// each room's watchers on the other nodes; the other rooms see nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_of_a_killed_node_leave_their_rooms_once_on_every_other_node() {
    let mut cluster = ProcessCluster::start(3, &FLAGS).await;
    let mut design_watcher = cluster.node(1).in_room("design").watch(None).await;
    design_watcher.next_event().await;
    let mut ops_watcher = cluster.node(2).in_room("ops").watch(None).await;
    ops_watcher.next_event().await;
    let (ada, _ada_stream, _) = cluster
        .node(0)
        .in_room("design")
        .join_and_subscribe("ada")
        .await;
    let (bob, _bob_stream, _) = cluster
        .node(0)
        .in_room("ops")
        .join_and_subscribe("bob")
        .await;
    assert_announces("new_user", &ada, &design_watcher.next_event().await);
    assert_announces("new_user", &bob, &ops_watcher.next_event().await);

    let killed = Instant::now();
    cluster.sigkill(0);

    for (watcher, who) in [(&mut design_watcher, &ada), (&mut ops_watcher, &bob)] {
        let left = (killed + LOST_BOUND).saturating_duration_since(Instant::now());
        let event = watcher.next_within(left).await;
        let event = event.unwrap_or_else(|| panic!("{} not gone within the bound", who.name));
        assert_announces("disconnect_user", who, &event);
        let again = watcher.next_within(PAST_GRACE).await;
        assert!(again.is_none(), "after {}'s leave, {again:?}", who.name);
    }
    for node in [1, 2] {
        for room in ["design", "ops"] {
            assert_eq!(cluster.node(node).in_room(room).users().await, []);
        }
    }
    assert_eq!(
        cluster.redis.hash_fields("lobby:rooms").await,
        Vec::<String>::new()
    );
}

// ---- One person on several nodes (signed joins) ----

/// One person (one `sub`) in two browsers, each on its own node, is one
/// entry on every node. Their node dying takes only that browser's
/// membership: they stay while the other streams, and go once when it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_on_two_nodes_is_one_entry_outlives_one_node_and_goes_once() {
    const SECRET: &str = "a-secret-for-the-cluster-test-0123456789";
    let flags = [&FLAGS[..], &["--join-secret", SECRET]].concat();
    let mut cluster = ProcessCluster::start(3, &flags).await;
    let ticket = common::ticket(SECRET, "u1", "Ada");
    let join = |node: usize| {
        let client = cluster.node(node);
        let body = serde_json::json!({ "ticket": ticket });
        async move {
            let response = client.post_join_body(&body).await;
            assert_eq!(response.status(), 201);
            response.json::<Joined>().await.expect("a join reply")
        }
    };
    let mut watcher = cluster.node(2).watch(None).await;
    watcher.next_event().await;
    let laptop = join(0).await;
    let phone = join(1).await;
    assert_eq!((laptop.id.as_str(), phone.id.as_str()), ("u1", "u1"));
    let _laptop_stream = cluster.node(0).subscribe(&laptop.token, None).await;
    let phone_stream = cluster.node(1).subscribe(&phone.token, None).await;
    assert_eq!(watcher.next_event().await.event, "new_user");
    for node in 0..3 {
        assert_eq!(cluster.node(node).users().await.len(), 1, "node {node}");
    }

    cluster.sigkill(0);
    let quiet = watcher.next_within(LOST_BOUND + GRACE).await;
    assert!(quiet.is_none(), "the phone still streams, yet {quiet:?}");
    assert_eq!(cluster.node(1).users().await.len(), 1);

    drop(phone_stream);
    let gone = watcher.next_within(PATIENCE).await.expect("she goes");
    assert_eq!(gone.event, "disconnect_user");
    assert_eq!(user_in(&gone).id, "u1");
    assert!(watcher.next_within(PAST_GRACE).await.is_none(), "once");
    assert_eq!(
        cluster.redis.hash_fields("lobby:people").await,
        Vec::<String>::new()
    );
}
