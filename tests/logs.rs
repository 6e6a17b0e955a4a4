//! The real binary's logs: `--log-format json` (or `LOBBY_LOG_FORMAT=json`)
//! makes every stderr line one JSON object, with a line per join and leave that
//! carries the id and the name as plain fields, and never a token, even with
//! the request logs of `RUST_LOG=debug`.

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
