//! `lobby watch`, run as a person runs it: the real binary as a child process
//! against a real lobby, its stdout read line by line, each line with a deadline.
//! With a name it joins, prints who is online and every join and leave, and
//! leaves on SIGINT or SIGTERM; without one it follows a watcher's stream; errors are one
//! line on stderr and exit code 1.

mod common;

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};

use common::{LobbyProcess, PATIENCE, free_addr, user_in};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

// ---- with a name ----

#[tokio::test]
async fn with_a_name_it_prints_who_is_online_then_each_join_and_leave() {
    let lobby = LobbyProcess::start(&[]).await;
    let (_alice, _alice_stream, _) = lobby.join_and_subscribe("alice").await;
    let mut watcher = Watcher::start(lobby.addr, &["--name", "carol"]);
    watcher
        .expect_lines(&["2 online:", "  alice", "  carol (you)"])
        .await;

    let bob = lobby.join("bob").await;
    watcher.expect_lines(&["+ bob"]).await;
    assert_eq!(lobby.leave(&bob.token).await, 204);

    watcher.expect_lines(&["- bob"]).await;
}

/// Against a lobby of signed joins, a ticket stands for the name.
#[tokio::test]
async fn with_a_ticket_it_joins_as_the_ticket_says() {
    let secret = "a-secret-for-lobby-watch-0123456789";
    let lobby = LobbyProcess::start(&["--join-secret", secret]).await;
    let ticket = common::ticket(secret, "u42", "Ada");
    let mut watcher = Watcher::start(lobby.addr, &["--ticket", &ticket]);
    watcher.expect_lines(&["1 online:", "  Ada (you)"]).await;
    assert_eq!(lobby.users().await[0].id, "u42");
    watcher.signal("TERM");
    let (status, stderr) = watcher.exit().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(lobby.users().await.is_empty(), "it left");
}

#[tokio::test]
async fn sigint_makes_it_leave_so_others_see_it_go_and_it_exits_0() {
    leaves_on("INT").await;
}

#[tokio::test]
async fn sigterm_makes_it_leave_so_others_see_it_go_and_it_exits_0() {
    leaves_on("TERM").await;
}

/// The grace is long, so the `disconnect_user` others get can only come from a leave.
async fn leaves_on(signal: &str) {
    let lobby = LobbyProcess::start(&["--grace", "60s"]).await;
    let (_alice, mut alice_stream, _) = lobby.join_and_subscribe("alice").await;
    let mut watcher = Watcher::start(lobby.addr, &["--name", "carol"]);
    watcher
        .expect_lines(&["2 online:", "  alice", "  carol (you)"])
        .await;
    let joined = alice_stream.next_event().await;
    assert_eq!(joined.event, "new_user");

    watcher.signal(signal);

    let left = alice_stream.next_event().await;
    assert_eq!(left.event, "disconnect_user");
    assert_eq!(user_in(&left), user_in(&joined));
    let (status, stderr) = watcher.exit().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(lobby.users().await.len(), 1, "only alice is left");
}

#[tokio::test]
async fn a_lobby_that_restarted_and_forgot_it_is_one_line_on_stderr_and_exit_1() {
    let addr = free_addr();
    let lobby = LobbyProcess::start_with(addr, &[], &[]).await;
    let mut watcher = Watcher::start(addr, &["--name", "carol"]);
    watcher.expect_lines(&["1 online:", "  carol (you)"]).await;

    lobby.stop().await;
    let _restarted = LobbyProcess::start_with(addr, &[], &[]).await;

    let (status, stderr) = watcher.exit().await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("lobby watch: the lobby no longer knows carol"),
        "{stderr}"
    );
}

// ---- without a name ----

#[tokio::test]
async fn without_a_name_it_prints_the_joins_and_leaves_its_watcher_stream_sees() {
    let lobby = LobbyProcess::start(&[]).await;
    let (_alice, _alice_stream, _) = lobby.join_and_subscribe("alice").await;
    // --every is for lobbies without watchers; a poll this slow would miss bob.
    let mut watcher = Watcher::start(lobby.addr, &["--every", "1h"]);
    watcher.expect_lines(&["1 online:", "  alice"]).await;

    let (bob, _bob_stream, _) = lobby.join_and_subscribe("bob").await;
    watcher.expect_lines(&["+ bob"]).await;
    assert_eq!(lobby.leave(&bob.token).await, 204);
    watcher.expect_lines(&["- bob"]).await;

    assert_eq!(lobby.users().await.len(), 1, "the watcher did not join");
    watcher.signal("TERM");
    let (status, stderr) = watcher.exit().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[tokio::test]
async fn a_room_s_url_watches_that_room_with_or_without_a_name() {
    let lobby = LobbyProcess::start(&[]).await;
    let design = lobby.in_room("design");
    let (_alice, _alice_stream, _) = design.join_and_subscribe("alice").await;
    let (_bob, _bob_stream, _) = lobby.join_and_subscribe("bob").await;
    let url = format!("http://{}/rooms/design", lobby.addr);

    let mut watcher = Watcher::spawn(&["watch", &url]);
    watcher.expect_lines(&["1 online:", "  alice"]).await;
    let mut member = Watcher::spawn(&["watch", &url, "--name", "carol"]);
    member
        .expect_lines(&["2 online:", "  alice", "  carol (you)"])
        .await;
    watcher.expect_lines(&["+ carol"]).await;

    assert_eq!(design.users().await.len(), 2, "carol joined design");
    assert_eq!(lobby.users().await.len(), 1, "and not the lobby");
    member.signal("TERM");
    watcher.expect_lines(&["- carol"]).await;
}

/// A lobby from before watchers answers GET /events with no token 401: the
/// watch then asks GET /users every `--every`.
#[tokio::test]
async fn without_a_name_a_lobby_without_watchers_is_polled_instead() {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("its address");
    let polls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = polls.clone();
    let old = axum::Router::new()
        .route(
            "/events",
            get(|| async {
                let refusal = axum::Json(serde_json::json!({"error": "No token was given."}));
                (axum::http::StatusCode::UNAUTHORIZED, refusal)
            }),
        )
        .route(
            "/users",
            get(move || {
                let (id, name) = match counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                    0 => ("1", "old"),
                    _ => ("2", "older"),
                };
                async move { axum::Json(serde_json::json!({"users": [{"id": id, "name": name}]})) }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, old).await });

    let mut watcher = Watcher::start(addr, &["--every", "50ms"]);

    watcher.expect_lines(&["1 online:", "  old"]).await;
    watcher.expect_lines(&["- old", "+ older"]).await;
}

#[tokio::test]
async fn without_a_name_an_empty_lobby_says_nobody_is_online() {
    let lobby = LobbyProcess::start(&[]).await;

    let mut watcher = Watcher::start(lobby.addr, &[]);

    watcher.expect_lines(&["nobody online"]).await;
}

// ---- errors ----

#[tokio::test]
async fn a_refused_name_is_the_servers_sentence_on_one_line_and_exit_1() {
    let lobby = LobbyProcess::start(&[]).await;

    let mut watcher = Watcher::start(lobby.addr, &["--name", "   "]);

    let (status, stderr) = watcher.exit().await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "lobby watch: The name is empty. Type at least one character that is not a space.\n"
    );
}

#[tokio::test]
async fn a_server_that_is_not_there_is_one_line_naming_it_and_exit_1() {
    for args in [&["--name", "carol"][..], &[]] {
        let addr = free_addr();

        let mut watcher = Watcher::start(addr, args);

        let (status, stderr) = watcher.exit().await;
        assert_eq!(status.code(), Some(1), "{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        let [line] = lines[..] else {
            panic!("one line on stderr: {stderr:?}");
        };
        assert!(
            line.starts_with(&format!("lobby watch: cannot reach http://{addr}/")),
            "{line}"
        );
    }
}

#[tokio::test]
async fn a_url_that_is_not_http_is_one_line_and_exit_2() {
    let mut watcher = Watcher::spawn(&["watch", "ftp://example.com/"]);

    let (status, stderr) = watcher.exit().await;

    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("http://"), "{stderr}");
}

#[tokio::test]
async fn a_missing_url_is_one_line_naming_it_and_exit_2() {
    let mut watcher = Watcher::spawn(&["watch"]);

    let (status, stderr) = watcher.exit().await;

    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("<URL>"), "{stderr}");
    assert!(stderr.contains("lobby watch --help"), "{stderr}");
}

// ---- helpers local to this file ----

/// `lobby watch` running as a child process. Killed if dropped.
struct Watcher {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Watcher {
    /// `lobby watch http://ADDR ARGS…`.
    fn start(addr: SocketAddr, args: &[&str]) -> Watcher {
        let url = format!("http://{addr}");
        let args: Vec<&str> = ["watch", url.as_str()]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        Watcher::spawn(&args)
    }

    fn spawn(args: &[&str]) -> Watcher {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lobby"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn lobby watch");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Watcher { child, stdout }
    }

    /// The next lines of stdout must be `expected`, each within `PATIENCE`.
    async fn expect_lines(&mut self, expected: &[&str]) {
        for want in expected {
            let line = tokio::time::timeout(PATIENCE, self.stdout.next_line())
                .await
                .unwrap_or_else(|_| panic!("no line within {PATIENCE:?}; expected {want:?}"))
                .expect("read stdout");
            assert_eq!(line.as_deref(), Some(*want));
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running");
        let killed = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(killed.success(), "kill -{signal} {pid}");
    }

    /// Waits (up to `PATIENCE`) for it to exit; its status and stderr.
    async fn exit(&mut self) -> (ExitStatus, String) {
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("lobby watch did not exit within {PATIENCE:?}"))
            .expect("wait for lobby watch");
        (status, self.stderr().await)
    }

    async fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            pipe.read_to_string(&mut text).await.expect("read stderr");
        }
        text
    }
}
