//! Unit tests of the presence core: the rules of who is online, the events that
//! announce them, and how a stream starts (snapshot or resume). Time-dependent
//! rules run on tokio's paused clock, so grace and timeouts pass instantly.

use std::collections::VecDeque;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::{Instant, sleep};

use super::frames::{Frame, Person, parse_frames, people, people_in_json, person};
use super::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn frame_of(event: &Event) -> Frame {
    let mut frames = parse_frames(&event.frame);
    assert_eq!(frames.len(), 1, "one event is one frame");
    let frame = frames.remove(0);
    assert_eq!(frame.id, event.id, "the frame carries the event's id");
    frame
}

fn person_of(joined: &Joined) -> Person {
    (joined.id.to_string(), joined.name.to_string())
}

/// The `existing_users` frame a stream starts with; panics on a resume.
fn snapshot_of(start: &Start) -> Frame {
    let Start::Snapshot(bytes) = start else {
        panic!("expected a snapshot, got {start:?}");
    };
    let mut frames = parse_frames(bytes);
    assert_eq!(frames.len(), 1, "a snapshot is one frame");
    let frame = frames.remove(0);
    assert_eq!(frame.event, "existing_users");
    frame
}

fn users_in(snapshot: &Frame) -> Vec<Person> {
    snapshot.data["users"]
        .as_array()
        .expect("a users array")
        .iter()
        .map(person)
        .collect()
}

/// Applies one `new_user` or `disconnect_user` to a client's view of the lobby,
/// failing on a user announced twice or removed while absent.
fn apply(view: &mut Vec<Person>, frame: &Frame) {
    let who = person(&frame.data);
    match frame.event.as_str() {
        "new_user" => {
            assert!(!view.contains(&who), "{who:?} announced twice");
            view.push(who);
        }
        "disconnect_user" => {
            let before = view.len();
            view.retain(|p| p != &who);
            assert_eq!(view.len() + 1, before, "{who:?} removed while not online");
        }
        other => panic!("unexpected event {other:?}"),
    }
}

fn name(raw: &str) -> Name {
    Name::parse(raw).expect("a valid name")
}

fn lobby() -> Presence {
    Presence::new(PresenceConfig::default())
}

fn join(presence: &Presence, raw: &str) -> Joined {
    presence.join(name(raw)).expect("room to join")
}

fn subscribe(presence: &Presence, joined: &Joined) -> Subscription {
    presence
        .subscribe(&joined.token, None)
        .expect("a known token")
}

/// Every event already waiting for this stream, without waiting for more.
fn pending(subscription: &mut Subscription) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        match subscription.try_recv() {
            Ok(event) => frames.push(frame_of(&event)),
            Err(TryRecvError::Empty) => return frames,
            Err(error) => panic!("the stream broke: {error:?}"),
        }
    }
}

/// The next event, waiting for it on the paused clock (which jumps straight to
/// the next timer, so this takes no real time).
async fn next_frame(subscription: &mut Subscription) -> Frame {
    let event = tokio::time::timeout(Duration::from_secs(3600), subscription.recv())
        .await
        .expect("an event within an hour")
        .expect("an open, caught-up stream");
    frame_of(&event)
}

/// A lobby whose grace and join timeout are the constants below, spelled out
/// so that the time-dependent tests do not lean on the defaults.
fn timed_lobby() -> Presence {
    Presence::new(PresenceConfig {
        grace: GRACE,
        join_timeout: JOIN_TIMEOUT,
        ..PresenceConfig::default()
    })
}

const GRACE: Duration = Duration::from_secs(5);
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
const MS: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------
// Join
// ---------------------------------------------------------------------------

#[tokio::test]
async fn joining_returns_the_users_online_before_oldest_first_without_the_joiner() {
    let presence = lobby();
    let alice = join(&presence, "alice");
    let bob = join(&presence, "bob");

    let carol = join(&presence, "carol");

    assert_eq!(
        people_in_json(&carol.users),
        vec![person_of(&alice), person_of(&bob)]
    );
}

#[tokio::test]
async fn the_first_joiner_sees_an_empty_lobby() {
    let presence = lobby();

    let alice = join(&presence, "alice");

    assert!(people_in_json(&alice.users).is_empty());
}

#[tokio::test]
async fn two_users_with_the_same_name_get_different_ids() {
    let presence = lobby();

    let first = join(&presence, "alice");
    let second = join(&presence, "alice");

    assert_eq!(first.name, second.name);
    assert_ne!(first.id, second.id);
    assert_ne!(first.token, second.token);
}

#[tokio::test]
async fn a_token_is_not_the_user_id() {
    let presence = lobby();

    let alice = join(&presence, "alice");

    assert_ne!(alice.token.expose(), alice.id.to_string());
    assert!(!alice.token.expose().contains(&alice.id.to_string()));
}

#[tokio::test]
async fn joining_announces_new_user_to_every_open_stream() {
    let presence = lobby();
    let alice = join(&presence, "alice");
    let mut first = subscribe(&presence, &alice);
    let mut second = subscribe(&presence, &alice);

    let bob = join(&presence, "bob");

    for stream in [&mut first, &mut second] {
        let frames = pending(stream);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].event, "new_user");
        assert_eq!(person(&frames[0].data), person_of(&bob));
    }
}

#[tokio::test]
async fn the_token_is_never_in_an_event_or_a_snapshot() {
    let presence = lobby();
    let alice = join(&presence, "alice");
    let mut stream = subscribe(&presence, &alice);

    let bob = join(&presence, "bob");
    presence.leave(&bob.token).expect("bob is online");

    let Start::Snapshot(snapshot) = &stream.start else {
        panic!("expected a snapshot");
    };
    let mut wire = String::from_utf8(snapshot.to_bytes().to_vec()).expect("UTF-8");
    while let Ok(event) = stream.try_recv() {
        wire.push_str(std::str::from_utf8(&event.frame).expect("UTF-8"));
    }
    assert!(!wire.contains(alice.token.expose()));
    assert!(!wire.contains(bob.token.expose()));
}

// ---------------------------------------------------------------------------
// max_users
// ---------------------------------------------------------------------------

fn lobby_for_two() -> Presence {
    Presence::new(PresenceConfig {
        max_users: 2,
        ..PresenceConfig::default()
    })
}

#[tokio::test]
async fn joining_a_full_lobby_is_refused_as_full() {
    let presence = lobby_for_two();
    join(&presence, "alice");
    join(&presence, "bob");

    let refused = presence.join(name("carol"));

    assert!(matches!(refused, Err(JoinError::Full(2))), "{refused:?}");
}

#[tokio::test]
async fn a_refused_join_adds_no_user_and_publishes_nothing() {
    let presence = lobby_for_two();
    let alice = join(&presence, "alice");
    let mut watching = subscribe(&presence, &alice);
    join(&presence, "bob");
    pending(&mut watching);
    let before = presence.stats();

    let _ = presence.join(name("carol"));

    assert_eq!(presence.stats(), before);
    assert_eq!(presence.users().len(), 2);
    assert_eq!(
        people_in_json(&presence.users_json()),
        people(&presence.users())
    );
    assert!(pending(&mut watching).is_empty());
}

#[tokio::test]
async fn a_lobby_that_was_full_accepts_a_join_after_someone_leaves() {
    let presence = lobby_for_two();
    let alice = join(&presence, "alice");
    join(&presence, "bob");
    presence.leave(&alice.token).expect("alice is online");

    let carol = presence.join(name("carol"));

    assert!(carol.is_ok());
}

// ---------------------------------------------------------------------------
// Subscribe
// ---------------------------------------------------------------------------

#[tokio::test]
async fn subscribing_with_an_unknown_token_is_refused_as_unknown() {
    let presence = lobby();
    join(&presence, "alice");

    let refused = presence.subscribe(&Token::from_client("not-a-token"), None);

    assert_eq!(refused.err(), Some(TokenError::Unknown));
}

#[tokio::test]
async fn a_fifth_concurrent_stream_is_refused_as_too_many() {
    let presence = lobby();
    let alice = join(&presence, "alice");
    let _open: Vec<_> = (0..MAX_STREAMS_PER_USER)
        .map(|_| subscribe(&presence, &alice))
        .collect();

    let fifth = presence.subscribe(&alice.token, None);

    assert_eq!(fifth.err(), Some(TokenError::TooManyStreams));
}

#[tokio::test]
async fn a_refused_fifth_stream_does_not_count_as_open() {
    let presence = lobby();
    let alice = join(&presence, "alice");
    let _open: Vec<_> = (0..MAX_STREAMS_PER_USER)
        .map(|_| subscribe(&presence, &alice))
        .collect();

    let _ = presence.subscribe(&alice.token, None);

    assert_eq!(presence.stats().streams, usize::from(MAX_STREAMS_PER_USER));
}

#[tokio::test]
async fn after_one_of_four_streams_closes_another_can_open() {
    let presence = lobby();
    let alice = join(&presence, "alice");
    let mut open: Vec<_> = (0..MAX_STREAMS_PER_USER)
        .map(|_| subscribe(&presence, &alice))
        .collect();

    drop(open.pop());
    let again = presence.subscribe(&alice.token, None);

    assert!(again.is_ok());
}

// ---------------------------------------------------------------------------
// Snapshot
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_snapshot_holds_everyone_online_oldest_first_including_the_subscriber() {
    let presence = lobby();
    let alice = join(&presence, "alice");
    let bob = join(&presence, "bob");
    let carol = join(&presence, "carol");
    presence.leave(&alice.token).expect("alice is online");

    let stream = subscribe(&presence, &bob);

    let snapshot = snapshot_of(&stream.start);
    assert_eq!(
        users_in(&snapshot),
        vec![person_of(&bob), person_of(&carol)]
    );
}

#[tokio::test]
async fn a_snapshot_id_is_the_latest_event_id() {
    let presence = lobby();
    let alice = join(&presence, "alice");
    join(&presence, "bob");
    let carol = join(&presence, "carol");
    presence.leave(&carol.token).expect("carol is online");

    let stream = subscribe(&presence, &alice);

    assert_eq!(snapshot_of(&stream.start).id, presence.stats().latest_event);
    assert_eq!(presence.stats().latest_event, 4);
}

#[tokio::test]
async fn events_after_a_snapshot_continue_exactly_after_its_id() {
    let presence = lobby();
    let alice = join(&presence, "alice");
    let mut stream = subscribe(&presence, &alice);
    let snapshot = snapshot_of(&stream.start);

    let bob = join(&presence, "bob");
    presence.leave(&bob.token).expect("bob is online");

    let ids: Vec<_> = pending(&mut stream).iter().map(|f| f.id).collect();
    assert_eq!(ids, vec![snapshot.id + 1, snapshot.id + 2]);
}

/// Joins and leaves on other threads while watchers join and subscribe, all
/// started together so that subscriptions land between the other changes.
#[tokio::test]
async fn snapshots_and_later_events_match_who_is_online_despite_racing_joins_and_leaves() {
    let presence = lobby();
    let start = std::sync::Barrier::new(3);

    let streams = std::thread::scope(|threads| {
        for thread in 0..2 {
            let (presence, start) = (&presence, &start);
            threads.spawn(move || {
                start.wait();
                let mut mine = VecDeque::new();
                for i in 0..150 {
                    mine.push_back(join(presence, &format!("churn {thread}-{i}")));
                    if i % 3 == 2 {
                        let leaving = mine.pop_front().expect("someone to leave");
                        presence.leave(&leaving.token).expect("still online");
                    }
                }
            });
        }
        let watchers = threads.spawn(|| {
            start.wait();
            (0..80)
                .map(|i| subscribe(&presence, &join(&presence, &format!("watcher {i}"))))
                .collect::<Vec<_>>()
        });
        watchers.join().expect("the watcher thread finishes")
    });

    let online = people(&presence.users());
    let latest = presence.stats().latest_event;
    for mut stream in streams {
        let snapshot = snapshot_of(&stream.start);
        let mut view = users_in(&snapshot);
        let mut last = snapshot.id;
        for frame in pending(&mut stream) {
            assert_eq!(frame.id, last + 1, "no event missed or repeated");
            last = frame.id;
            apply(&mut view, &frame);
        }
        assert_eq!(last, latest);
        assert_eq!(view, online);
    }
}

// ---------------------------------------------------------------------------
// Grace
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_user_whose_last_stream_closed_stays_online_until_grace_passes() {
    let presence = timed_lobby();
    let watcher = join(&presence, "watcher");
    let mut watching = subscribe(&presence, &watcher);
    let alice = join(&presence, "alice");
    let stream = subscribe(&presence, &alice);
    pending(&mut watching);

    drop(stream);
    sleep(GRACE - MS).await;

    assert!(people(&presence.users()).contains(&person_of(&alice)));
    assert!(pending(&mut watching).is_empty());
}

#[tokio::test(start_paused = true)]
async fn once_grace_passes_exactly_one_disconnect_user_is_published() {
    let presence = timed_lobby();
    let watcher = join(&presence, "watcher");
    let mut watching = subscribe(&presence, &watcher);
    let alice = join(&presence, "alice");
    let stream = subscribe(&presence, &alice);
    pending(&mut watching);

    drop(stream);
    let closed_at = Instant::now();
    let frame = next_frame(&mut watching).await;
    let waited = closed_at.elapsed();
    sleep(GRACE * 10).await;

    assert_eq!(frame.event, "disconnect_user");
    assert_eq!(person(&frame.data), person_of(&alice));
    assert!(waited >= GRACE, "gone after {waited:?}, before grace");
    assert!(
        pending(&mut watching).is_empty(),
        "one disconnect_user only"
    );
    assert_eq!(people(&presence.users()), vec![person_of(&watcher)]);
}

#[tokio::test(start_paused = true)]
async fn a_stream_reopened_within_grace_publishes_nothing() {
    let presence = timed_lobby();
    let watcher = join(&presence, "watcher");
    let mut watching = subscribe(&presence, &watcher);
    let alice = join(&presence, "alice");
    let stream = subscribe(&presence, &alice);
    pending(&mut watching);
    let latest = presence.stats().latest_event;

    drop(stream);
    sleep(GRACE - MS).await;
    let _reopened = subscribe(&presence, &alice);
    sleep(GRACE * 10).await;

    assert!(pending(&mut watching).is_empty(), "no flicker");
    assert_eq!(presence.stats().latest_event, latest);
    assert!(people(&presence.users()).contains(&person_of(&alice)));
}

#[tokio::test(start_paused = true)]
async fn a_user_stays_online_while_any_of_their_streams_is_open() {
    let presence = timed_lobby();
    let watcher = join(&presence, "watcher");
    let mut watching = subscribe(&presence, &watcher);
    let alice = join(&presence, "alice");
    let first = subscribe(&presence, &alice);
    let _second = subscribe(&presence, &alice);
    pending(&mut watching);

    drop(first);
    sleep(GRACE * 10).await;

    assert!(pending(&mut watching).is_empty());
    assert!(people(&presence.users()).contains(&person_of(&alice)));
}

#[tokio::test(start_paused = true)]
async fn grace_starts_when_the_last_of_several_streams_closes() {
    let presence = timed_lobby();
    let watcher = join(&presence, "watcher");
    let mut watching = subscribe(&presence, &watcher);
    let alice = join(&presence, "alice");
    let first = subscribe(&presence, &alice);
    let second = subscribe(&presence, &alice);
    pending(&mut watching);

    drop(first);
    sleep(GRACE * 2).await;
    drop(second);
    let closed_at = Instant::now();
    let frame = next_frame(&mut watching).await;

    assert_eq!(frame.event, "disconnect_user");
    assert_eq!(person(&frame.data), person_of(&alice));
    assert!(closed_at.elapsed() >= GRACE);
}

// ---------------------------------------------------------------------------
// Join timeout
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_user_who_never_opens_a_stream_is_removed_after_the_join_timeout() {
    let presence = timed_lobby();
    let watcher = join(&presence, "watcher");
    let mut watching = subscribe(&presence, &watcher);
    let joined_at = Instant::now();
    let bob = join(&presence, "bob");
    pending(&mut watching);

    let frame = next_frame(&mut watching).await;
    let waited = joined_at.elapsed();
    sleep(JOIN_TIMEOUT * 10).await;

    assert_eq!(frame.event, "disconnect_user");
    assert_eq!(person(&frame.data), person_of(&bob));
    assert!(
        waited >= JOIN_TIMEOUT,
        "gone after {waited:?}, before the timeout"
    );
    assert!(
        pending(&mut watching).is_empty(),
        "one disconnect_user only"
    );
    assert_eq!(
        presence.subscribe(&bob.token, None).err(),
        Some(TokenError::Unknown)
    );
}

#[tokio::test(start_paused = true)]
async fn a_user_who_opens_a_stream_in_time_is_not_removed_by_the_join_timeout() {
    let presence = timed_lobby();
    let watcher = join(&presence, "watcher");
    let mut watching = subscribe(&presence, &watcher);
    let bob = join(&presence, "bob");
    pending(&mut watching);

    sleep(JOIN_TIMEOUT - MS).await;
    let _stream = subscribe(&presence, &bob);
    sleep(JOIN_TIMEOUT * 10).await;

    assert!(pending(&mut watching).is_empty());
    assert!(people(&presence.users()).contains(&person_of(&bob)));
}

// ---------------------------------------------------------------------------
// Leave
// ---------------------------------------------------------------------------

#[tokio::test]
async fn leaving_publishes_one_disconnect_user_to_everyone_including_the_leaver() {
    let presence = lobby();
    let watcher = join(&presence, "watcher");
    let mut watching = subscribe(&presence, &watcher);
    let alice = join(&presence, "alice");
    let mut own = subscribe(&presence, &alice);
    pending(&mut watching);

    let left = presence.leave(&alice.token);

    assert_eq!(left, Ok(alice.id.clone()));
    for stream in [&mut watching, &mut own] {
        let frames = pending(stream);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].event, "disconnect_user");
        assert_eq!(person(&frames[0].data), person_of(&alice));
    }
}

#[tokio::test]
async fn a_token_is_unknown_after_its_user_left() {
    let presence = lobby();
    let alice = join(&presence, "alice");
    presence.leave(&alice.token).expect("alice is online");

    let refused = presence.subscribe(&alice.token, None);

    assert_eq!(refused.err(), Some(TokenError::Unknown));
}

#[tokio::test]
async fn leaving_twice_is_unknown_the_second_time() {
    let presence = lobby();
    let alice = join(&presence, "alice");
    presence.leave(&alice.token).expect("alice is online");
    let latest = presence.stats().latest_event;

    let second = presence.leave(&alice.token);

    assert_eq!(second, Err(TokenError::Unknown));
    assert_eq!(presence.stats().latest_event, latest, "nothing published");
}

#[tokio::test(start_paused = true)]
async fn closing_the_stream_of_a_user_who_left_publishes_nothing() {
    let presence = timed_lobby();
    let watcher = join(&presence, "watcher");
    let mut watching = subscribe(&presence, &watcher);
    let alice = join(&presence, "alice");
    let own = subscribe(&presence, &alice);
    presence.leave(&alice.token).expect("alice is online");
    pending(&mut watching);
    let latest = presence.stats().latest_event;

    drop(own);
    sleep(GRACE * 10).await;

    assert!(
        pending(&mut watching).is_empty(),
        "no second disconnect_user"
    );
    assert_eq!(presence.stats().latest_event, latest);
}

// ---------------------------------------------------------------------------
// Resume
// ---------------------------------------------------------------------------

#[tokio::test]
async fn resuming_from_an_event_the_history_holds_gives_exactly_the_frames_after_it() {
    let presence = lobby();
    let alice = join(&presence, "alice");
    let mut first = subscribe(&presence, &alice);
    let after = snapshot_of(&first.start).id;
    let bob = join(&presence, "bob");
    join(&presence, "carol");
    presence.leave(&bob.token).expect("bob is online");
    let missed = pending(&mut first);

    let resumed = presence
        .subscribe(&alice.token, Some(after))
        .expect("alice is online");

    let Start::Resume(frames) = &resumed.start else {
        panic!("expected a resume, got {:?}", resumed.start);
    };
    assert_eq!(parse_frames(frames), missed);
    assert_eq!(missed.len(), 3);
}

#[tokio::test]
async fn events_after_a_resume_continue_exactly_after_the_latest_id() {
    let presence = lobby();
    let alice = join(&presence, "alice");
    join(&presence, "bob");
    let mut resumed = presence
        .subscribe(&alice.token, Some(1))
        .expect("alice is online");
    let latest = presence.stats().latest_event;

    join(&presence, "carol");

    let ids: Vec<_> = pending(&mut resumed).iter().map(|f| f.id).collect();
    assert_eq!(ids, vec![latest + 1]);
}

#[tokio::test]
async fn resuming_from_the_latest_event_gives_an_empty_resume() {
    let presence = lobby();
    let alice = join(&presence, "alice");
    join(&presence, "bob");
    let latest = presence.stats().latest_event;

    let resumed = presence
        .subscribe(&alice.token, Some(latest))
        .expect("alice is online");

    assert_eq!(resumed.start, Start::Resume(Pieces::default()));
}

fn lobby_with_short_history() -> Presence {
    Presence::new(PresenceConfig {
        history: 4,
        backlog: 2,
        ..PresenceConfig::default()
    })
}

#[tokio::test]
async fn the_history_keeps_at_most_its_bound() {
    let presence = lobby_with_short_history();

    for i in 0..10 {
        join(&presence, &format!("user {i}"));
    }

    assert_eq!(presence.stats().history, 4);
}

#[tokio::test]
async fn resuming_from_an_event_older_than_the_history_gives_a_snapshot() {
    let presence = lobby_with_short_history();
    let alice = join(&presence, "alice");
    for i in 0..10 {
        join(&presence, &format!("user {i}"));
    }

    let resumed = presence
        .subscribe(&alice.token, Some(1))
        .expect("alice is online");

    let snapshot = snapshot_of(&resumed.start);
    assert_eq!(snapshot.id, presence.stats().latest_event);
    assert_eq!(users_in(&snapshot), people(&presence.users()));
}

#[tokio::test]
async fn resuming_from_the_oldest_event_the_history_still_needs_gives_a_resume() {
    let presence = lobby_with_short_history();
    let alice = join(&presence, "alice");
    for i in 0..10 {
        join(&presence, &format!("user {i}"));
    }
    let latest = presence.stats().latest_event;

    let resumed = presence
        .subscribe(&alice.token, Some(latest - 4))
        .expect("alice is online");

    let Start::Resume(frames) = &resumed.start else {
        panic!("expected a resume, got {:?}", resumed.start);
    };
    let ids: Vec<_> = parse_frames(frames).iter().map(|f| f.id).collect();
    assert_eq!(ids, (latest - 3..=latest).collect::<Vec<_>>());
}

#[tokio::test]
async fn resuming_from_an_event_newer_than_the_latest_gives_a_snapshot() {
    let presence = lobby();
    let alice = join(&presence, "alice");
    let latest = presence.stats().latest_event;

    let resumed = presence
        .subscribe(&alice.token, Some(latest + 1))
        .expect("alice is online");

    assert_eq!(snapshot_of(&resumed.start).id, latest);
}

/// A lagged stream must always be able to resume, so the history is never
/// shorter than the backlog, whatever it is configured to.
#[tokio::test]
async fn the_history_is_kept_at_least_twice_as_long_as_the_backlog() {
    let presence = Presence::new(PresenceConfig {
        history: 0,
        backlog: 4,
        ..PresenceConfig::default()
    });

    for i in 0..10 {
        join(&presence, &format!("user {i}"));
    }

    assert_eq!(presence.stats().history, 8);
}

// ---------------------------------------------------------------------------
// Backlog
// ---------------------------------------------------------------------------

fn lobby_with_backlog(backlog: usize) -> Presence {
    Presence::new(PresenceConfig {
        backlog,
        ..PresenceConfig::default()
    })
}

/// Subscribes a user, then publishes `events` joins the stream does not read.
fn stream_behind_by(presence: &Presence, events: usize) -> Subscription {
    let reader = join(presence, "reader");
    let stream = subscribe(presence, &reader);
    for i in 0..events {
        join(presence, &format!("user {i}"));
    }
    stream
}

#[tokio::test]
async fn a_stream_that_falls_more_than_the_backlog_behind_is_told_it_lagged() {
    let presence = lobby_with_backlog(4);
    let mut stream = stream_behind_by(&presence, 5);

    let received = stream.recv().await;

    assert!(
        matches!(received, Err(RecvError::Lagged(_))),
        "{received:?}"
    );
}

#[tokio::test]
async fn a_stream_exactly_the_backlog_behind_still_gets_every_event() {
    let presence = lobby_with_backlog(4);
    let mut stream = stream_behind_by(&presence, 4);

    let frames = pending(&mut stream);

    assert_eq!(frames.len(), 4);
}

/// tokio's broadcast channel rounds its capacity up to a power of two, and so
/// does `PresenceConfig::backlog`: a backlog of 3 lets a stream lag by 4.
#[tokio::test]
async fn a_backlog_that_is_not_a_power_of_two_is_rounded_up() {
    let mut four_behind = stream_behind_by(&lobby_with_backlog(3), 4);
    let mut five_behind = stream_behind_by(&lobby_with_backlog(3), 5);

    assert_eq!(pending(&mut four_behind).len(), 4);
    let received = five_behind.recv().await;
    assert!(
        matches!(received, Err(RecvError::Lagged(_))),
        "{received:?}"
    );
}

// ---------------------------------------------------------------------------
// Lifecycle as a whole
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn after_everyone_leaves_or_expires_no_user_or_stream_remains() {
    let presence = timed_lobby();
    let leaver = join(&presence, "leaver");
    let leaver_stream = subscribe(&presence, &leaver);
    let closer = join(&presence, "closer");
    let closer_streams = [subscribe(&presence, &closer), subscribe(&presence, &closer)];
    join(&presence, "never streams");

    presence.leave(&leaver.token).expect("the leaver is online");
    drop(leaver_stream);
    drop(closer_streams);
    sleep(GRACE + JOIN_TIMEOUT).await;

    let stats = presence.stats();
    assert_eq!((stats.users, stats.streams), (0, 0));
    assert!(presence.users().is_empty());
}

#[tokio::test(start_paused = true)]
async fn every_user_gets_exactly_one_new_user_and_one_disconnect_user() {
    let presence = timed_lobby();
    let watcher = join(&presence, "watcher");
    let mut watching = subscribe(&presence, &watcher);
    let mut joined: Vec<Joined> = Vec::new();
    let mut streams: Vec<Subscription> = Vec::new();
    let mut seen: Vec<Frame> = Vec::new();
    // xorshift64: a fixed sequence that still mixes every kind of step.
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut roll = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        usize::try_from(rng % n as u64).expect("small")
    };

    for step in 0..300 {
        match roll(6) {
            0 | 1 => joined.push(join(&presence, &format!("user {step}"))),
            2 if !joined.is_empty() => {
                let user = &joined[roll(joined.len())];
                if let Ok(stream) = presence.subscribe(&user.token, None) {
                    streams.push(stream);
                }
            }
            3 if !streams.is_empty() => drop(streams.swap_remove(roll(streams.len()))),
            4 if !joined.is_empty() => {
                let _ = presence.leave(&joined[roll(joined.len())].token);
            }
            _ => sleep(Duration::from_millis(roll(4000) as u64)).await,
        }
        seen.extend(pending(&mut watching));
    }
    drop(streams);
    sleep(GRACE + JOIN_TIMEOUT).await;
    seen.extend(pending(&mut watching));

    for user in &joined {
        let id = user.id.to_string();
        let count = |event: &str| {
            seen.iter()
                .filter(|f| f.event == event && f.data["id"] == id.as_str())
                .count()
        };
        assert_eq!(count("new_user"), 1, "new_user of {id}");
        assert_eq!(count("disconnect_user"), 1, "disconnect_user of {id}");
    }
    assert_eq!(seen.len(), 2 * joined.len(), "no event about anyone else");
    assert_eq!(people(&presence.users()), vec![person_of(&watcher)]);
}

// ---------------------------------------------------------------------------
// One person, several memberships (signed joins)
// ---------------------------------------------------------------------------

fn id(raw: &str) -> UserId {
    UserId::parse(raw).expect("a valid id")
}

#[tokio::test(start_paused = true)]
async fn a_person_s_memberships_are_one_entry_announced_once_and_gone_with_the_last() {
    let presence = timed_lobby();
    let watcher = join(&presence, "watcher");
    let mut sees = subscribe(&presence, &watcher);
    pending(&mut sees);

    let tab = presence
        .join_as(Some(id("u1")), name("Ada"), None)
        .expect("joined");
    let other = presence
        .join_as(Some(id("u1")), name("Ada, renamed"), None)
        .expect("joined");
    assert_eq!((tab.id.clone(), other.id.clone()), (id("u1"), id("u1")));
    assert_eq!(
        other.name,
        name("Ada"),
        "the person keeps the name they came with"
    );
    let frames = pending(&mut sees);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].event, "new_user");
    assert_eq!(presence.stats().users, 2, "the watcher and Ada");

    let mut tab_stream = subscribe(&presence, &tab);
    let mut other_stream = subscribe(&presence, &other);
    pending(&mut other_stream);
    assert_eq!(presence.leave(&tab.token), Ok(id("u1")));
    let mut batch = Vec::new();
    assert_eq!(tab_stream.read_waiting(&mut batch, 16), Waiting::Left);
    assert_eq!(other_stream.read_waiting(&mut batch, 16), Waiting::Open);
    assert_eq!(sees.read_waiting(&mut batch, 16), Waiting::Open);
    assert!(batch.is_empty(), "no one is told of a tab that went");

    // The other tab's stream closes: she goes once grace has passed.
    drop(other_stream);
    drop(tab_stream);
    sleep(GRACE + Duration::from_millis(1)).await;
    let frames = pending(&mut sees);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].event, "disconnect_user");
    assert_eq!(person(&frames[0].data), ("u1".to_owned(), "Ada".to_owned()));
}

#[tokio::test]
async fn a_full_room_takes_another_membership_of_someone_in_it_but_no_one_new() {
    let presence = Presence::new(PresenceConfig {
        max_users: 1,
        ..PresenceConfig::default()
    });
    presence
        .join_as(Some(id("u1")), name("Ada"), None)
        .expect("joined");
    presence
        .join_as(Some(id("u1")), name("Ada"), None)
        .expect("she is in already");
    assert_eq!(
        presence
            .join_as(Some(id("u2")), name("Bob"), None)
            .map(|j| j.id),
        Err(JoinError::Full(1))
    );
}
