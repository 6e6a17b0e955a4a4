//! The real binary's logs: `--log-format json` (or `LOBBY_LOG_FORMAT=json`)
//! makes every stderr line one JSON object, with a line per join and leave that
//! carries the id and the name as plain fields, and never a token, even with
//! the request logs of `RUST_LOG=debug`. A request forwarded by a proxy
//! without `--trust-proxy` is warned of once, and a limit's first refusals
//! are logged at most once a minute, each naming the flag to change.

mod common;

use std::process::{Command, Stdio};

use common::{Joined, LobbyProcess, free_addr};
use serde_json::Value;

#[tokio::test]
async fn json_logs_are_one_object_a_line_with_a_line_per_join_and_leave() {
    let lobby = LobbyProcess::start_with(
        free_addr(),
        &["--log-format", "json"],
        &[("RUST_LOG", "info")],
    )
    .await;
    let alice = lobby.join("alice").await;
    let _stream = lobby.subscribe(&alice.token, None).await;
    assert_eq!(lobby.leave(&alice.token).await, 204);

    let stderr = lobby.stop().await;

    let lines = json_lines(&stderr);
    let joined = find(&lines, "joined", &alice);
    assert_eq!(joined["level"], "INFO", "{joined}");
    let left = find(&lines, "left", &alice);
    assert_eq!(left["reason"], "leave", "{left}");
    assert!(
        !stderr.contains(&alice.token),
        "a token in the logs: {stderr}"
    );
}

#[tokio::test]
async fn lobby_log_format_json_applies_to_debug_request_logs_too_and_they_hold_no_token() {
    let lobby = LobbyProcess::start_with(
        free_addr(),
        &[],
        &[("LOBBY_LOG_FORMAT", "json"), ("RUST_LOG", "debug")],
    )
    .await;
    let bob = lobby.join("bob").await;
    let _stream = lobby.subscribe(&bob.token, None).await;
    assert_eq!(lobby.leave(&bob.token).await, 204);

    let stderr = lobby.stop().await;

    let lines = json_lines(&stderr);
    assert!(
        lines.iter().any(|line| line["level"] == "DEBUG"),
        "debug logging was on: {stderr}"
    );
    find(&lines, "joined", &bob);
    find(&lines, "left", &bob);
    assert!(
        !stderr.contains(&bob.token),
        "a token in the logs: {stderr}"
    );
}

#[tokio::test]
async fn the_token_s_cookie_appears_in_no_log_even_at_debug_level() {
    let lobby = LobbyProcess::start_with(free_addr(), &[], &[("RUST_LOG", "debug")]).await;
    let browser = lobby.keeping_cookies();
    let carol = browser.join("carol").await;
    let mut stream = browser.watch(None).await;
    assert_eq!(stream.next_event().await.event, "existing_users");
    assert_eq!(browser.leave(&carol.token).await, 204);

    let stderr = lobby.stop().await;

    assert!(stderr.contains("joined"), "debug logging was on: {stderr}");
    assert!(
        !stderr.contains(&carol.token),
        "a token in the logs: {stderr}"
    );
}

#[test]
fn a_log_format_that_is_neither_pretty_nor_json_exits_2_with_one_line_naming_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_lobby"))
        .args(["--bind", "127.0.0.1:0", "--log-format", "xml"])
        .env_remove("LOBBY_LOG_FORMAT")
        .stdin(Stdio::null())
        .output()
        .expect("run lobby");

    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let [line] = lines[..] else {
        panic!("one line on stderr: {stderr:?}");
    };
    assert!(
        line.contains("--log-format") && line.contains("xml"),
        "{line}"
    );
}

#[tokio::test]
async fn forwarded_requests_without_trust_proxy_are_warned_of_once_naming_the_flag() {
    let lobby = LobbyProcess::start(&[]).await;

    for ip in ["203.0.113.1", "203.0.113.2"] {
        assert_eq!(join_forwarded(&lobby, "X-Forwarded-For", ip).await, 201);
    }
    assert_eq!(
        join_forwarded(&lobby, "Forwarded", "for=203.0.113.3").await,
        201
    );
    let stderr = lobby.stop().await;

    let warnings = lines_with(&stderr, "through a proxy");
    let [warning] = warnings[..] else {
        panic!("one warning of a proxy: {stderr}");
    };
    assert!(
        warning.contains("WARN") && warning.contains("--trust-proxy"),
        "{warning}"
    );
}

#[tokio::test]
async fn forwarded_requests_with_trust_proxy_are_not_warned_of() {
    let lobby = LobbyProcess::start(&["--trust-proxy"]).await;

    for ip in ["203.0.113.1", "203.0.113.2"] {
        assert_eq!(join_forwarded(&lobby, "X-Forwarded-For", ip).await, 201);
    }
    let stderr = lobby.stop().await;

    assert_eq!(lines_with(&stderr, "through a proxy"), Vec::<&str>::new());
}

#[tokio::test]
async fn a_limit_is_logged_once_naming_its_flag_however_many_are_refused() {
    let lobby = LobbyProcess::start(&[
        "--join-rate",
        "1",
        "--join-burst",
        "1",
        "--max-watchers-per-address",
        "1",
    ])
    .await;

    let statuses = join_n_times(&lobby, 10).await;
    let _watching = lobby.watch(None).await;
    for _ in 0..5 {
        assert_eq!(lobby.open_watcher(None).await.status(), 429);
    }
    let stderr = lobby.stop().await;

    assert_eq!(statuses.iter().filter(|status| **status == 429).count(), 9);
    for flag in ["--join-rate", "--max-watchers-per-address"] {
        let lines = lines_with(&stderr, flag);
        let [line] = lines[..] else {
            panic!("one line naming {flag}: {stderr}");
        };
        assert!(line.contains("WARN") && line.contains("refused"), "{line}");
    }
}

/// POST /join, as a proxy would forward it with `header: value`; the status.
async fn join_forwarded(lobby: &LobbyProcess, header: &str, value: &str) -> u16 {
    lobby
        .client
        .post(lobby.url("/join"))
        .header(header, value)
        .form(&[("name", "someone")])
        .send()
        .await
        .expect("POST /join")
        .status()
        .as_u16()
}

/// `count` joins one after another; their statuses.
async fn join_n_times(lobby: &LobbyProcess, count: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(count);
    for n in 0..count {
        statuses.push(lobby.post_join(&format!("p{n}")).await.status().as_u16());
    }
    statuses
}

/// The lines of `stderr` that contain `text`.
fn lines_with<'a>(stderr: &'a str, text: &str) -> Vec<&'a str> {
    stderr.lines().filter(|line| line.contains(text)).collect()
}

/// Every line of `stderr` parsed as JSON; panics at the first that is not.
fn json_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("a log line that is not JSON ({err}): {line:?}"))
        })
        .collect()
}

/// The one line whose message is `message` about `user`, with their id and
/// name as fields of their own.
fn find<'a>(lines: &'a [Value], message: &str, user: &Joined) -> &'a Value {
    let found: Vec<&Value> = lines
        .iter()
        .filter(|line| line["message"] == message && line["id"] == user.id.as_str())
        .collect();
    let [line] = found[..] else {
        panic!("one {message:?} line for {}: {lines:#?}", user.id);
    };
    assert_eq!(
        line["name"],
        user.name.as_str(),
        "the name, unquoted: {line}"
    );
    line
}
