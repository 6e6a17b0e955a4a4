//! `--state-file`: the real binary stopped with SIGTERM and started again on
//! the same address, as a deploy does. Who was online stays online, their
//! tokens stay good, and a stream resumed with `Last-Event-ID` within the
//! grace period is told nothing but what happens after it: no leave, no join.
//! A file that is stale, missing or not lobby's is a clean start with a log
//! line, never a failed one.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{LobbyProcess, free_addr};

/// Long enough for a debug build to stop and start again inside it.
const GRACE: &str = "10s";

/// Logs at `info`, where the state file's lines are.
const LOGGING: &[(&str, &str)] = &[("RUST_LOG", "info")];

/// A path in a directory of its own, removed when the guard goes.
struct StateDir(PathBuf);

impl StateDir {
    fn new(test: &str) -> StateDir {
        let dir = std::env::temp_dir().join(format!("lobby-state-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for the state file");
        StateDir(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join("lobby.state")
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn flags(file: &Path) -> Vec<String> {
    vec![
        "--state-file".to_owned(),
        file.display().to_string(),
        "--grace".to_owned(),
        GRACE.to_owned(),
    ]
}

async fn start(addr: std::net::SocketAddr, flags: &[String]) -> LobbyProcess {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    LobbyProcess::start_with(addr, &flags, LOGGING).await
}

#[tokio::test]
async fn a_restart_keeps_everyone_online_and_resumed_streams_see_no_leave_and_no_join() {
    let dir = StateDir::new("keeps");
    let flags = flags(&dir.file());
    let addr = free_addr();
    let first = start(addr, &flags).await;
    let (alice, mut alice_stream, _) = first.join_and_subscribe("alice").await;
    let (bob, bob_stream, _) = first.join_and_subscribe("bob").await;
    let bob_joined = alice_stream.next_event().await;
    assert_eq!(bob_joined.event, "new_user");
    let last: u64 = bob_joined.id.parse().expect("a numeric id");
    let online = first.users().await;

    let log = first.stop().await;
    assert!(
        log.contains("wrote who is online to the state file"),
        "{log}"
    );
    let written = std::fs::read_to_string(dir.file()).expect("the state file");
    let mode = std::fs::metadata(dir.file())
        .expect("its metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "only its owner may read it");
    for token in [&alice.token, &bob.token] {
        assert!(
            !written.contains(token.as_str()),
            "a token is never written: {written}"
        );
    }

    let second = start(addr, &flags).await;
    assert_eq!(second.users().await, online, "everyone is still online");
    assert!(
        !dir.file().exists(),
        "a state file is read once, then removed"
    );
    // Each resumes where it left off, as a browser does after the drop.
    let mut alice_again = second.subscribe(&alice.token, Some(last)).await;
    let mut bob_again = second.subscribe(&bob.token, bob_stream.last_id).await;
    let carol = second.join("carol").await;
    for (who, stream) in [("alice", &mut alice_again), ("bob", &mut bob_again)] {
        let next = stream.next_event().await;
        assert_eq!(
            (next.event.as_str(), next.id.as_str()),
            ("new_user", (last + 1).to_string().as_str()),
            "{who}'s resumed stream is told nothing before carol's join, under the next id"
        );
        assert!(next.data.contains(&carol.id), "{}", next.data);
    }
    drop(bob_stream);
    second.stop().await;
}

#[tokio::test]
async fn someone_who_does_not_come_back_within_the_grace_period_leaves_after_the_restart() {
    let dir = StateDir::new("leaves");
    let flags = vec![
        "--state-file".to_owned(),
        dir.file().display().to_string(),
        "--grace".to_owned(),
        "3s".to_owned(),
    ];
    let addr = free_addr();
    let first = start(addr, &flags).await;
    let (alice, _alice_stream, _) = first.join_and_subscribe("alice").await;
    let (_bob, _bob_stream, _) = first.join_and_subscribe("bob").await;
    first.stop().await;

    let second = start(addr, &flags).await;
    let mut alice_again = second.subscribe(&alice.token, None).await;
    assert_eq!(alice_again.next_event().await.event, "existing_users");
    let left = alice_again.next_event().await;
    assert_eq!(left.event, "disconnect_user", "bob never came back");
    assert_eq!(second.users().await.len(), 1);
    second.stop().await;
}

#[tokio::test]
async fn a_state_file_that_is_stale_or_not_lobby_s_or_missing_is_a_clean_start_with_a_log_line() {
    let dir = StateDir::new("clean");
    let flags = flags(&dir.file());
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    let person = r#"{"seq":1,"id":"ada","name":"Ada","members":["00000000000000000000000000000000000000000000000000000000000000aa"]}"#;
    let file = |written_at_ms: u128, person: &str| {
        format!(
            r#"{{"lobby_state":1,"written_at_ms":{written_at_ms},"newest":1,"rooms":[{{"room":"lobby","latest":1,"people":[{person}]}}]}}"#
        )
    };
    let bad_name = person.replace("\"Ada\"", "\"\"");
    let cases = [
        (
            Some(file(now_ms - 60_000, person)),
            "older than the grace period",
        ),
        (Some("{\"users\": [".to_owned()), "not one lobby wrote"),
        (Some(file(now_ms, &bad_name)), "does not hold up"),
        (None, "no state file yet"),
    ];
    for (content, said) in cases {
        // Each stop writes the file again (with no one in it): set it as the case says.
        match &content {
            Some(content) => std::fs::write(dir.file(), content).expect("write the state file"),
            None => std::fs::remove_file(dir.file()).expect("remove the state file"),
        }
        let lobby = start(free_addr(), &flags).await;
        assert_eq!(lobby.users().await, [], "{said}: no one is online");
        let log = lobby.stop().await;
        assert!(log.contains(said), "the log says {said:?}: {log}");
    }
    // A fresh file, for comparison: Ada is put back.
    std::fs::write(dir.file(), file(now_ms, person)).expect("write the state file");
    let lobby = start(free_addr(), &flags).await;
    let users = lobby.users().await;
    assert_eq!(
        users
            .iter()
            .map(|user| user.id.as_str())
            .collect::<Vec<_>>(),
        ["ada"]
    );
    lobby.stop().await;
}

#[test]
fn a_state_file_is_for_one_process_and_is_refused_beside_redis() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_lobby"))
        .args([
            "--state-file",
            "/tmp/never",
            "--redis",
            "redis://127.0.0.1:1/",
        ])
        .output()
        .expect("run lobby");
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("--state-file") && said.contains("--redis"),
        "{said}"
    );
}
