//! The presence rules over real HTTP and SSE: a reopened stream causes no
//! flicker, a closed one is announced gone once after grace, a user who never
//! streams times out, several streams keep a user online, and however joins,
//! leaves and subscriptions race, every stream's view ends equal to GET /users.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    Joined, PATIENCE, Sse, TestServer, User, announcements_until, apply_to_view, live_a_short_life,
    user_in,
};
use eventsource_stream::Event;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The grace period most tests run with: short, but far above a local round trip.
const GRACE: &str = "400ms";
const GRACE_DURATION: Duration = Duration::from_millis(400);

/// Twice the grace: if a leave were going to be announced, it would have been by now.
const PAST_GRACE: Duration = Duration::from_millis(800);

/// Long enough that nothing expires while a concurrency test runs.
const FOREVER: &str = "60s";

/// The join timeout when some users must never open a stream and others must
/// open one in time: thirty users joining at once on a loaded machine have
/// taken over 400 ms from the join reply to the stream, and got 401. Two
/// seconds still has those who never open one gone well within `PATIENCE`.
const JOIN_TIMEOUT: &str = "2s";

#[tokio::test]
async fn a_user_with_an_open_stream_stays_online_past_grace() {
    let server = TestServer::with_args(&["--grace", GRACE]).await;
    let (alice, mut stream, _) = server.join_and_subscribe("alice").await;

    let event = stream.next_within(PAST_GRACE).await;

    assert!(
        event.is_none(),
        "nothing happened, yet alice's own open stream got {event:?}"
    );
    assert!(server.users().await.contains(&alice.user()));
}

#[tokio::test]
async fn a_stream_reopened_within_grace_causes_no_disconnect_and_no_new_user() {
    let server = TestServer::with_args(&["--grace", GRACE]).await;
    let (_observer, mut observer_stream, _) = server.join_and_subscribe("observer").await;
    let (alice, alice_stream, _) = server.join_and_subscribe("alice").await;
    expect_announced("new_user", &alice, &mut observer_stream).await;

    drop(alice_stream);
    // A reload: the old connection is gone a moment before the new one opens.
    // This is time that must pass, not something the test could await.
    tokio::time::sleep(GRACE_DURATION / 4).await;
    let _reopened = server.subscribe(&alice.token, None).await;

    let flicker = observer_stream.next_within(PAST_GRACE).await;
    assert!(
        flicker.is_none(),
        "alice reopened within grace, yet the observer got {flicker:?}"
    );
    assert!(server.users().await.contains(&alice.user()));
}

#[tokio::test]
async fn a_stream_closed_and_not_reopened_is_announced_gone_exactly_once() {
    let server = TestServer::with_args(&["--grace", GRACE]).await;
    let (_observer, mut observer_stream, _) = server.join_and_subscribe("observer").await;
    let (alice, alice_stream, _) = server.join_and_subscribe("alice").await;
    expect_announced("new_user", &alice, &mut observer_stream).await;

    drop(alice_stream);

    expect_announced("disconnect_user", &alice, &mut observer_stream).await;
    let again = observer_stream.next_within(PAST_GRACE).await;
    assert!(again.is_none(), "a second event after the leave: {again:?}");
}

#[tokio::test]
async fn a_closed_stream_is_not_announced_gone_before_grace_has_passed() {
    let server = TestServer::with_args(&["--grace", GRACE]).await;
    let (_observer, mut observer_stream, _) = server.join_and_subscribe("observer").await;
    let (alice, alice_stream, _) = server.join_and_subscribe("alice").await;
    expect_announced("new_user", &alice, &mut observer_stream).await;

    let closed = Instant::now();
    drop(alice_stream);
    expect_announced("disconnect_user", &alice, &mut observer_stream).await;

    let waited = closed.elapsed();
    assert!(
        waited >= GRACE_DURATION,
        "alice was announced gone {waited:?} after her stream closed, inside the {GRACE_DURATION:?} grace"
    );
}

#[tokio::test]
async fn a_user_whose_stream_stayed_closed_past_grace_is_no_longer_listed() {
    let server = TestServer::with_args(&["--grace", GRACE]).await;
    let (_observer, mut observer_stream, _) = server.join_and_subscribe("observer").await;
    let (alice, alice_stream, _) = server.join_and_subscribe("alice").await;
    expect_announced("new_user", &alice, &mut observer_stream).await;

    drop(alice_stream);
    expect_announced("disconnect_user", &alice, &mut observer_stream).await;

    assert!(!server.users().await.contains(&alice.user()));
}

#[tokio::test]
async fn a_token_whose_user_went_offline_is_refused_with_401() {
    let server = TestServer::with_args(&["--grace", GRACE]).await;
    let (_observer, mut observer_stream, _) = server.join_and_subscribe("observer").await;
    let (alice, alice_stream, _) = server.join_and_subscribe("alice").await;
    expect_announced("new_user", &alice, &mut observer_stream).await;
    drop(alice_stream);
    expect_announced("disconnect_user", &alice, &mut observer_stream).await;

    let response = server.open_events(&alice.token, None).await;

    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("a JSON error");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
}

#[tokio::test]
async fn a_user_who_never_opens_a_stream_is_announced_gone_once_after_the_join_timeout() {
    let server = TestServer::with_args(&["--join-timeout", "400ms", "--grace", FOREVER]).await;
    let (_observer, mut observer_stream, _) = server.join_and_subscribe("observer").await;

    let joining = Instant::now();
    let alice = server.join("alice").await;

    expect_announced("new_user", &alice, &mut observer_stream).await;
    expect_announced("disconnect_user", &alice, &mut observer_stream).await;
    let waited = joining.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "alice was dropped {waited:?} after joining, inside the join timeout"
    );
    let again = observer_stream.next_within(PAST_GRACE).await;
    assert!(
        again.is_none(),
        "a second event after the timeout: {again:?}"
    );
    assert!(!server.users().await.contains(&alice.user()));
}

#[tokio::test]
async fn a_user_who_opens_a_stream_in_time_outlives_the_join_timeout() {
    let server = TestServer::with_args(&["--join-timeout", "400ms", "--grace", FOREVER]).await;
    let (alice, mut stream, _) = server.join_and_subscribe("alice").await;

    let event = stream.next_within(PAST_GRACE).await;

    assert!(event.is_none(), "alice's own stream got {event:?}");
    assert!(server.users().await.contains(&alice.user()));
}

#[tokio::test]
async fn a_user_with_two_streams_stays_online_while_one_is_open() {
    let server = TestServer::with_args(&["--grace", GRACE]).await;
    let (_observer, mut observer_stream, _) = server.join_and_subscribe("observer").await;
    let (alice, first, _) = server.join_and_subscribe("alice").await;
    let mut second = server.subscribe(&alice.token, None).await;
    assert_eq!(second.next_event().await.event, "existing_users");
    expect_announced("new_user", &alice, &mut observer_stream).await;

    drop(first);

    let event = observer_stream.next_within(PAST_GRACE).await;
    assert!(
        event.is_none(),
        "alice still has a stream open, yet the observer got {event:?}"
    );
    assert!(server.users().await.contains(&alice.user()));
}

#[tokio::test]
async fn a_user_whose_every_stream_closed_is_announced_gone_once() {
    let server = TestServer::with_args(&["--grace", GRACE]).await;
    let (_observer, mut observer_stream, _) = server.join_and_subscribe("observer").await;
    let (alice, first, _) = server.join_and_subscribe("alice").await;
    let second = server.subscribe(&alice.token, None).await;
    expect_announced("new_user", &alice, &mut observer_stream).await;

    drop(first);
    drop(second);

    expect_announced("disconnect_user", &alice, &mut observer_stream).await;
    let again = observer_stream.next_within(PAST_GRACE).await;
    assert!(again.is_none(), "a second event after the leave: {again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_users_all_end_with_a_view_equal_to_get_users() {
    let server =
        Arc::new(TestServer::with_args(&["--grace", FOREVER, "--join-timeout", FOREVER]).await);
    let mut clients = JoinSet::new();
    for i in 0..200 {
        let server = server.clone();
        clients.spawn(async move {
            let joined = server.join(&format!("user {i}")).await;
            match i % 5 {
                // Leaves before ever watching.
                0 => {
                    assert_eq!(server.leave(&joined.token).await, 204);
                    None
                }
                // Watches, then leaves: its own stream sees it go and ends.
                1 => {
                    let mut watcher = Watcher::open(&server, &joined).await;
                    assert_eq!(server.leave(&joined.token).await, 204);
                    watcher.read_until("disconnect_user", &joined.id).await;
                    watcher.stream.expect_end().await;
                    None
                }
                _ => Some(Watcher::open(&server, &joined).await),
            }
        });
    }
    let watchers: Vec<Watcher> = clients.join_all().await.into_iter().flatten().collect();

    let views = catch_up(&server, watchers).await;

    let truth = server.users().await;
    assert_eq!(truth.len(), 120 + 1, "120 stayed, and the sentinel");
    for (name, view) in views {
        assert_eq!(view, truth, "{name}'s view differs from GET /users");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_taken_while_others_join_and_leave_still_add_up_to_the_truth() {
    let server =
        Arc::new(TestServer::with_args(&["--grace", FOREVER, "--join-timeout", FOREVER]).await);
    let mut churn = JoinSet::new();
    for worker in 0..4 {
        let server = server.clone();
        churn.spawn(async move {
            for round in 0..40 {
                let joined = server.join(&format!("churn {worker}.{round}")).await;
                // Every third one stays, so the truth is not just the watchers.
                if round % 3 != 0 {
                    assert_eq!(server.leave(&joined.token).await, 204);
                }
            }
        });
    }
    let mut subscribers = JoinSet::new();
    for i in 0..40 {
        let server = server.clone();
        subscribers.spawn(async move {
            let joined = server.join(&format!("watcher {i}")).await;
            Watcher::open(&server, &joined).await
        });
    }
    let watchers = subscribers.join_all().await;
    churn.join_all().await;

    let views = catch_up(&server, watchers).await;

    let truth = server.users().await;
    for (name, view) in views {
        assert_eq!(view, truth, "{name}'s view differs from GET /users");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_resumed_with_last_event_id_while_others_join_and_leave_still_add_up_to_the_truth()
{
    let server =
        Arc::new(TestServer::with_args(&["--grace", FOREVER, "--join-timeout", FOREVER]).await);
    let mut watchers = Vec::new();
    for i in 0..20 {
        let joined = server.join(&format!("watcher {i}")).await;
        watchers.push(Watcher::open(&server, &joined).await);
    }
    let mut churn = JoinSet::new();
    for worker in 0..4 {
        let server = server.clone();
        churn.spawn(async move {
            for round in 0..40 {
                let joined = server.join(&format!("churn {worker}.{round}")).await;
                if round % 3 != 0 {
                    assert_eq!(server.leave(&joined.token).await, 204);
                }
            }
        });
    }
    let mut reconnecting = JoinSet::new();
    for mut watcher in watchers {
        let server = server.clone();
        reconnecting.spawn(async move {
            for _ in 0..3 {
                watcher.read_some(5).await;
                watcher.reconnect(&server).await;
            }
            watcher
        });
    }
    churn.join_all().await;
    let watchers = reconnecting.join_all().await;

    let views = catch_up(&server, watchers).await;

    let truth = server.users().await;
    for (name, view) in views {
        assert_eq!(view, truth, "{name}'s view differs from GET /users");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_sees_new_user_and_disconnect_user_exactly_once_per_user() {
    let server =
        Arc::new(TestServer::with_args(&["--grace", GRACE, "--join-timeout", JOIN_TIMEOUT]).await);
    let (_observer, mut observer_stream, _) = server.join_and_subscribe("observer").await;
    let mut users = JoinSet::new();
    for i in 0..30 {
        let server = server.clone();
        users.spawn(async move { live_a_short_life(i, [&server, &server, &server]).await });
    }
    let ids = users.join_all().await;
    wait_until_users(&server, |users| users.len() == 1).await;
    let sentinel = server.join("sentinel").await;

    let counts = announcements_until(&mut observer_stream, &sentinel.id).await;

    assert_eq!(counts.len(), ids.len(), "events about exactly the 30 users");
    for id in &ids {
        let (joins, leaves) = counts
            .get(id)
            .unwrap_or_else(|| panic!("no event at all about {id}"));
        assert_eq!(joins.len(), 1, "new_user for {id}: {joins:?}");
        assert_eq!(leaves.len(), 1, "disconnect_user for {id}: {leaves:?}");
        assert!(joins[0] < leaves[0], "{id} left before joining");
    }
}

// ---- helpers local to this file ----

/// Reads the next event and asserts that it is a `kind` event about `who`.
async fn expect_announced(kind: &str, who: &Joined, stream: &mut Sse) {
    let event = stream.next_event().await;
    assert_eq!(
        event.event, kind,
        "expected {kind} for {}: {event:?}",
        who.name
    );
    assert_eq!(user_in(&event), who.user());
}

/// Polls GET /users until `done` holds, for at most `PATIENCE`.
async fn wait_until_users(server: &TestServer, done: impl Fn(&[User]) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let users = server.users().await;
        if done(&users) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET /users did not settle within {PATIENCE:?}: {users:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One client's stream and who it believes is online: the snapshot, then
/// every event applied in order. A `new_user` for someone already shown, or a
/// `disconnect_user` for someone not shown, fails the test at once.
struct Watcher {
    name: String,
    token: String,
    stream: Sse,
    view: Vec<User>,
}

impl Watcher {
    /// Opens a stream for `joined` and applies its opening snapshot.
    async fn open(server: &TestServer, joined: &Joined) -> Watcher {
        let mut watcher = Watcher {
            name: joined.name.clone(),
            token: joined.token.clone(),
            stream: server.subscribe(&joined.token, None).await,
            view: Vec::new(),
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
    }

    /// Reads and applies events until a `kind` event about the user `id`.
    async fn read_until(&mut self, kind: &str, id: &str) {
        loop {
            let event = self.next().await;
            if event.event == kind && user_in(&event).id == id {
                return;
            }
        }
    }

    /// Reads and applies up to `count` events, stopping early if the stream goes quiet.
    async fn read_some(&mut self, count: usize) {
        for _ in 0..count {
            match self.stream.next_within(Duration::from_millis(50)).await {
                Some(event) => self.apply(&event),
                None => return,
            }
        }
    }

    /// Drops the stream and opens a new one with `Last-Event-ID`, as a browser does.
    async fn reconnect(&mut self, server: &TestServer) {
        let last_id = self.stream.last_id;
        self.stream = server.subscribe(&self.token, last_id).await;
        // Resumed events must still come after the last one seen.
        self.stream.last_id = last_id;
    }
}

/// Joins a sentinel user, then reads every watcher's stream up to the sentinel's
/// `new_user`: events are ordered, so each watcher has then seen everything that
/// happened before. Returns each watcher's name and view.
async fn catch_up(server: &TestServer, watchers: Vec<Watcher>) -> Vec<(String, Vec<User>)> {
    let sentinel = server.join("sentinel").await;
    let reads = watchers.into_iter().map(|mut watcher| {
        let sentinel = sentinel.id.clone();
        async move {
            watcher.read_until("new_user", &sentinel).await;
            (watcher.name, watcher.view)
        }
    });
    futures_util::future::join_all(reads).await
}
