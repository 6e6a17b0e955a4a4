//! A client that vanishes without closing (its network cut: no FIN, no RST)
//! is noticed: the next keep-alive goes unacknowledged, the kernel gives up
//! after `--tcp-user-timeout`, the stream ends, and after the grace everyone
//! else gets `disconnect_user`.
//!
//! The client runs in a network namespace of its own, joined to the host by a
//! veth pair; the cut is its end of the pair going down, after which packets
//! to it are dropped. Making namespaces needs root (CI runs as root, with
//! iproute2 and curl from Debian): elsewhere these tests say they were
//! skipped, unless `CI=true`, where they fail.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use common::{TestServer, user_in};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

const SKIPPED: &str =
    "SKIPPED: the network test needs root and iproute2 (ip) and curl, to make a network namespace";

/// A network namespace joined to the host by a veth pair: the host end is
/// `10.P.N.1`, the namespace's `10.P.N.2`, where P comes from the process id
/// (test runs of other checkouts may run at once) and N counts this process's
/// namespaces. Removed when dropped.
struct Netns {
    name: String,
    inside: String,
    host_ip: Ipv4Addr,
}

/// Tests in this file run at once: each gets its own namespace and subnet.
static NEXT: AtomicU8 = AtomicU8::new(1);

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .unwrap_or_else(|err| panic!("ip {args:?}: {err}"));
    assert!(status.success(), "ip {args:?} failed");
}

impl Netns {
    /// Makes the namespace, or returns `None` after saying the test is
    /// skipped where it cannot (not root, no `ip`, no `curl`).
    fn make_or_skip() -> Option<Netns> {
        let root = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|line| line.starts_with("Uid:"))?;
                Some(line.split_whitespace().nth(2)? == "0")
            })
            .unwrap_or(false);
        let have = |tool: &str| {
            Command::new(tool)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        };
        if !(root && have("ip") && have("curl")) {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{SKIPPED}");
            eprintln!("{SKIPPED}");
            return None;
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let p = u8::try_from(100 + pid % 100).unwrap_or(213);
        let tag = format!("{}x{n}", pid % 100_000);
        let netns = Netns {
            name: format!("lobby{tag}"),
            inside: format!("lbn{tag}"),
            host_ip: Ipv4Addr::new(10, p, n, 1),
        };
        let host = format!("lbh{tag}");
        let (host_cidr, inside_cidr) = (format!("10.{p}.{n}.1/24"), format!("10.{p}.{n}.2/24"));
        ip(&["netns", "add", &netns.name]);
        ip(&[
            "link",
            "add",
            &host,
            "type",
            "veth",
            "peer",
            "name",
            &netns.inside,
        ]);
        ip(&["link", "set", &netns.inside, "netns", &netns.name]);
        ip(&["addr", "add", &host_cidr, "dev", &host]);
        ip(&["link", "set", &host, "up"]);
        ip(&[
            "-n",
            &netns.name,
            "addr",
            "add",
            &inside_cidr,
            "dev",
            &netns.inside,
        ]);
        ip(&["-n", &netns.name, "link", "set", &netns.inside, "up"]);
        ip(&["-n", &netns.name, "link", "set", "lo", "up"]);
        Some(netns)
    }

    /// Runs `command` inside the namespace, its output piped to the test;
    /// killed when dropped.
    fn spawn(&self, command: &[&str]) -> Child {
        tokio::process::Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(command)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn in the namespace")
    }

    /// Cuts the namespace off: its end of the pair goes down, and whatever
    /// the host sends to it is dropped, with no FIN and no RST.
    fn cut(&self) {
        ip(&["-n", &self.name, "link", "set", &self.inside, "down"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and so the pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Opens a stream from inside the namespace with curl and waits until its
/// snapshot has arrived; then cuts the network and returns how long it took
/// until a watcher on the host saw the user leave.
async fn time_to_notice_a_vanished_client(
    netns: &Netns,
    args: &[&str],
    bound: Duration,
) -> Duration {
    let lobby = TestServer::with_args_on(IpAddr::V4(netns.host_ip), args).await;
    let (_watcher, mut watching, _) = lobby.join_and_subscribe("watcher").await;
    let vanishing = lobby.join("vanishing").await;
    assert_eq!(watching.next_event().await.event, "new_user");

    let url = lobby.url(&format!("/events?token={}", vanishing.token));
    let mut curl = netns.spawn(&["curl", "-sN", &url]);
    let mut lines = BufReader::new(curl.stdout.take().expect("curl's output")).lines();
    let opened = tokio::time::timeout(common::PATIENCE, async {
        while let Some(line) = lines.next_line().await.expect("read curl's output") {
            if line == "event: existing_users" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(opened, Ok(true), "the stream opened from the namespace");

    netns.cut();
    let cut = Instant::now();
    let gone = loop {
        let left = bound.saturating_sub(cut.elapsed());
        let event = watching.next_within(left).await.unwrap_or_else(|| {
            panic!("the vanished client was still online {bound:?} after the cut")
        });
        if event.event == "disconnect_user" && user_in(&event).id == vanishing.id {
            break cut.elapsed();
        }
    };
    let _ = curl.kill().await;
    gone
}

#[tokio::test]
async fn a_client_whose_network_is_cut_is_gone_after_keepalive_user_timeout_and_grace() {
    let Some(netns) = Netns::make_or_skip() else {
        return;
    };
    let args = [
        "--keepalive",
        "1s",
        "--tcp-user-timeout",
        "2s",
        "--grace",
        "500ms",
    ];
    // At most: a keep-alive period until the next write, the user timeout,
    // the grace, and a second for the kernel's retransmission timer.
    let gone = time_to_notice_a_vanished_client(&netns, &args, Duration::from_millis(4500)).await;
    eprintln!(
        "with --keepalive 1s --tcp-user-timeout 2s --grace 500ms: gone {gone:?} after the cut"
    );
    assert!(
        gone >= Duration::from_millis(2500),
        "not before the user timeout and the grace: {gone:?}"
    );
}

#[tokio::test]
async fn with_the_defaults_a_vanished_client_is_gone_within_keepalive_plus_10_s_plus_grace() {
    let Some(netns) = Netns::make_or_skip() else {
        return;
    };
    // 15 s keep-alive, 10 s user timeout, 5 s grace, and slack for the
    // kernel's timer and a busy machine.
    let gone = time_to_notice_a_vanished_client(&netns, &[], Duration::from_secs(32)).await;
    eprintln!("with the defaults: gone {gone:?} after the cut");
}
