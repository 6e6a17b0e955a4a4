//! The hosting kit, checked as far as this machine can: `deploy/Caddyfile`
//! by `caddy validate`, `deploy/lobby.service` by `systemd-analyze verify`
//! (and its hardening by `systemd-analyze security`), and the static binary
//! of `make dist`: linked against nothing, it answers GET /healthz and
//! reaches a Redis by its host name. `deploy/nginx.conf` is loaded into a real
//! nginx by tests/nginx.rs. The `Dockerfile` is not built here (no Docker
//! daemon). Where caddy or systemd-analyze is missing the tests say they were
//! skipped, unless `CI=true`, where they fail. The static binary's test is
//! ignored by `make test` (building it takes minutes): `make dist` builds it
//! and runs this test on it, through `LOBBY_DIST_BINARY`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::redis::RedisServer;
use common::{LobbyProcess, free_addr, installed, skipped};
use serde_json::Value;

/// The repository's root, where the files the kit ships are.
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn the_caddyfile_is_valid_and_formatted_as_caddy_writes_it() {
    let Some(caddy) = tool_or_skip("caddy", "caddy") else {
        return;
    };
    let scratch = Scratch::new("caddy");

    let output = Command::new(caddy)
        .args(["validate", "--adapter", "caddyfile", "--config"])
        .arg(Path::new(ROOT).join("deploy/Caddyfile"))
        // Caddy keeps its data (certificates) under these: not the user's.
        .env("XDG_DATA_HOME", &scratch.0)
        .env("XDG_CONFIG_HOME", &scratch.0)
        .output()
        .expect("run caddy validate");

    let said = text(&output);
    assert!(output.status.success(), "caddy validate failed: {said}");
    assert!(said.contains("Valid configuration"), "{said}");
    assert!(
        !said.contains("not formatted"),
        "run caddy fmt --overwrite: {said}"
    );
}

#[test]
fn the_systemd_unit_verifies_cleanly_and_is_well_hardened() {
    let Some(analyze) = tool_or_skip("systemd-analyze", "systemd") else {
        return;
    };
    // verify checks that the binary exists: point the unit at this build's.
    let scratch = Scratch::new("systemd");
    let unit = std::fs::read_to_string(Path::new(ROOT).join("deploy/lobby.service"))
        .expect("deploy/lobby.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/lobby\n"), "{unit}");
    let unit = unit.replacen(
        "ExecStart=/usr/local/bin/lobby",
        &format!("ExecStart={}", env!("CARGO_BIN_EXE_lobby")),
        1,
    );
    let path = scratch.0.join("lobby.service");
    std::fs::write(&path, unit).expect("write the unit");

    let verified = Command::new(&analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze verify");
    let security = Command::new(&analyze)
        .args(["security", "--offline=yes"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze security");

    // An unknown or misspelt setting is only a warning, and still exit 0.
    let said = text(&verified);
    assert!(
        verified.status.success() && said.trim().is_empty(),
        "{said}"
    );
    let report = text(&security);
    let exposure: f64 = report
        .lines()
        .find_map(|line| {
            line.split("Overall exposure level for lobby.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("an overall exposure level: {report}"));
    assert!(
        exposure <= 2.0,
        "exposure {exposure} (10 is none at all): {report}"
    );
}

#[tokio::test]
#[ignore = "needs the static binary: `make dist` builds it and runs this test on it"]
async fn the_static_binary_runs_in_an_empty_root_answers_healthz_and_reaches_redis_by_name() {
    let binary = std::env::var("LOBBY_DIST_BINARY")
        .expect("LOBBY_DIST_BINARY names the binary of make dist");
    let ldd = Command::new("ldd").arg(&binary).output().expect("run ldd");
    let file = Command::new("file")
        .arg(&binary)
        .output()
        .expect("run file");
    // A root with the binary and /etc/hosts in it, and nothing else: no
    // libraries, no /dev, no /etc/nsswitch.conf (a scratch image, less what
    // a container runtime adds to it).
    let jail = Scratch::new("root");
    std::fs::create_dir_all(jail.0.join("etc")).expect("etc");
    std::fs::write(jail.0.join("etc/hosts"), "127.0.0.1 localhost\n").expect("etc/hosts");
    std::fs::copy(&binary, jail.0.join("lobby")).expect("copy the binary");
    let jail_dir = jail.0.display().to_string();
    let in_jail = ["chroot", jail_dir.as_str(), "/lobby"];
    // chroot needs root; elsewhere the binary runs where it is, and says so.
    let program: &[&str] = if is_root() {
        &in_jail
    } else {
        eprintln!("not root: the static binary runs outside an empty root");
        &[binary.as_str()]
    };
    let redis = RedisServer::start().await;
    // By name, not by address: a static glibc still resolves through NSS.
    let by_name = format!("redis://localhost:{}/", redis.port());

    let alone = LobbyProcess::start_program(program, free_addr(), &[], &[]).await;
    let node = LobbyProcess::start_program(program, free_addr(), &["--redis", &by_name], &[]).await;
    let joined = alone.join("alice").await;
    let health: Value =
        serde_json::from_str(&node.get_text("/healthz").await).expect("/healthz is JSON");

    let (ldd, file) = (text(&ldd), text(&file));
    let size = std::fs::metadata(&binary).expect("the binary").len();
    eprintln!("{binary}: {size} bytes\n  file: {file}  ldd: {ldd}");
    // glibc's ldd says "statically linked" of a static PIE, "not a dynamic
    // executable" of an older kind; file says "static-pie linked" or
    // "statically linked".
    assert!(
        ldd.contains("statically linked") || ldd.contains("not a dynamic executable"),
        "ldd: {ldd}"
    );
    assert!(
        file.contains("static") && !file.contains("dynamically linked"),
        "file: {file}"
    );
    assert_eq!(joined.name, "alice", "a join, which draws a random token");
    assert_eq!(health["redis"], "up", "through {by_name}: {health}");
    alone.stop().await;
    node.stop().await;
}

/// Whether this process runs as root (`id -u` says 0).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

/// The command `name` (from Debian's `package`), or `None` after saying the
/// test is skipped (under `CI=true`, failing it).
fn tool_or_skip(name: &str, package: &str) -> Option<PathBuf> {
    let found = installed(name);
    if found.is_none() {
        skipped(&format!(
            "SKIPPED: this test needs {name} (apt-get install {package})"
        ));
    }
    found
}

/// What a command wrote, stdout then stderr.
fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A directory of the test's own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("lobby-hosting-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
