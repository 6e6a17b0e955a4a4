//! lobby behind a real nginx: once with the sample `deploy/nginx.conf`, once
//! with a bare `proxy_pass` that keeps nginx's default buffering. In both an
//! event must reach a client through nginx within a second. Where nginx is
//! missing the tests say they were skipped, unless `CI=true`, where they fail.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Client, PATIENCE, TestServer, free_addr, installed, skipped, user_in};
use tokio::time::Instant;

const SKIPPED: &str = "SKIPPED: the nginx test needs nginx (apt-get install nginx-light)";

/// How soon an event must reach a client through nginx.
const PROMPT: Duration = Duration::from_secs(1);

/// The sample, as shipped.
const SAMPLE: &str = include_str!("../deploy/nginx.conf");

#[tokio::test]
async fn an_event_reaches_a_client_through_the_sample_config_within_a_second() {
    let lobby = TestServer::with_args(&["--trust-proxy"]).await;
    let Some(nginx) = Nginx::start(|site| site.sample(lobby_addr(&lobby))).await else {
        return;
    };

    let latency = event_latency_through(&nginx.client()).await;

    eprintln!("through nginx with deploy/nginx.conf: {latency:?}");
    assert!(latency < PROMPT, "an event took {latency:?} through nginx");
}

#[tokio::test]
async fn a_room_s_events_reach_a_member_and_a_watcher_through_the_sample_config() {
    let lobby = TestServer::with_args(&["--trust-proxy"]).await;
    let Some(nginx) = Nginx::start(|site| site.sample(lobby_addr(&lobby))).await else {
        return;
    };
    let room = nginx.client().in_room("doc-42");
    let mut watcher = room.watch(None).await;
    assert_eq!(watcher.next_event().await.event, "existing_users");

    let latency = event_latency_through(&room).await;

    eprintln!("a room's stream through nginx with deploy/nginx.conf: {latency:?}");
    assert!(latency < PROMPT, "an event took {latency:?} through nginx");
    let seen = tokio::time::timeout(PROMPT, watcher.next_event())
        .await
        .expect("the watcher sees alice join promptly");
    assert_eq!(
        (seen.event.as_str(), user_in(&seen).name.as_str()),
        ("new_user", "alice")
    );
}

#[tokio::test]
async fn an_event_reaches_a_client_through_a_bare_proxy_pass_with_default_buffering() {
    let lobby = TestServer::start().await;
    let Some(nginx) = Nginx::start(|site| site.bare(lobby_addr(&lobby))).await else {
        return;
    };

    let latency = event_latency_through(&nginx.client()).await;

    eprintln!("through nginx with a bare proxy_pass: {latency:?}");
    assert!(latency < PROMPT, "an event took {latency:?} through nginx");
}

#[tokio::test]
async fn the_sample_config_keeps_tokens_out_of_the_access_log() {
    let lobby = TestServer::with_args(&["--trust-proxy"]).await;
    let Some(nginx) = Nginx::start(|site| site.sample(lobby_addr(&lobby))).await else {
        return;
    };
    let client = nginx.client();
    let (alice, stream, _) = client.join_and_subscribe("alice").await;

    // nginx logs a request when it ends: end the stream, then wait for its line.
    drop(stream);
    assert_eq!(client.leave(&alice.token).await, 204);
    let log = nginx.access_log_once_it_has("GET /events").await;

    assert!(
        !log.contains(&alice.token),
        "the token is in the log:\n{log}"
    );
    assert!(log.contains("POST /join"), "{log}");
}

#[test]
fn the_sample_speaks_http_1_1_unbuffered_and_waits_well_past_the_keepalive() {
    let timeout = directive(SAMPLE, "proxy_read_timeout");
    let timeout = humantime::parse_duration(&timeout).expect("a duration nginx and humantime read");
    assert!(
        timeout > Duration::from_secs(15) * 2,
        "proxy_read_timeout {timeout:?} is well above --keepalive (15 s)"
    );
    assert_eq!(directive(SAMPLE, "proxy_http_version"), "1.1");
    assert_eq!(directive(SAMPLE, "proxy_buffering"), "off");
}

/// Alice, then bob, join through `client`; alice's stream (through it too)
/// must see bob come and go. Returns the slower of the two: from sending the
/// request to alice reading its event. A proxy that holds the stream back
/// (even its head, as a buffering nginx does) fails it within the patience.
async fn event_latency_through(client: &Client) -> Duration {
    tokio::time::timeout(PATIENCE * 2, bob_comes_and_goes(client))
        .await
        .expect("alice's stream shows bob come and go through nginx")
}

async fn bob_comes_and_goes(client: &Client) -> Duration {
    let (_alice, mut alice_stream, _) = client.join_and_subscribe("alice").await;

    let sent = Instant::now();
    let bob = client.join("bob").await;
    let new_user = alice_stream.next_event().await;
    let joined = sent.elapsed();
    assert_eq!(new_user.event, "new_user");
    assert_eq!(user_in(&new_user), bob.user());

    let sent = Instant::now();
    assert_eq!(client.leave(&bob.token).await, 204);
    let gone = alice_stream.next_event().await;
    let left = sent.elapsed();
    assert_eq!(gone.event, "disconnect_user");
    assert_eq!(user_in(&gone), bob.user());

    joined.max(left)
}

/// The address of a one-process lobby.
fn lobby_addr(lobby: &TestServer) -> String {
    lobby.base.trim_start_matches("http://").to_owned()
}

/// The value of the first `name value;` directive in an nginx config.
fn directive(config: &str, name: &str) -> String {
    config
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|rest| rest.split(';').next())
        .map(|value| value.trim().to_owned())
        .unwrap_or_else(|| panic!("the sample sets {name}"))
}

/// A real nginx in the foreground, as one process, with everything it writes
/// (config, pid, logs, temporary files) in a directory of its own, so it runs
/// as root or not beside any other nginx. Killed and cleaned up when dropped.
struct Nginx {
    child: Child,
    dir: PathBuf,
    addr: std::net::SocketAddr,
}

impl Nginx {
    /// Writes the main config around the `http` part `site` gives, starts
    /// nginx and polls until it answers /healthz from lobby. `None` (after
    /// saying so) where nginx is not installed and this is not CI.
    async fn start(site: impl FnOnce(&Site) -> String) -> Option<Nginx> {
        let Some(binary) = installed("nginx") else {
            skipped(SKIPPED);
            return None;
        };
        let dir = std::env::temp_dir().join(format!(
            "lobby-nginx-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("create nginx's directory");
        let addr = free_addr();
        let http = site(&Site {
            listen: addr.to_string(),
            access_log: dir.join("access.log"),
        });
        let path = |name: &str| dir.join(name).display().to_string();
        let config = format!(
            "daemon off;\n\
             master_process off;\n\
             pid {pid};\n\
             error_log {error} info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
             client_body_temp_path {body};\n\
             proxy_temp_path {proxy};\n\
             fastcgi_temp_path {fastcgi};\n\
             uwsgi_temp_path {uwsgi};\n\
             scgi_temp_path {scgi};\n\
             {http}\n\
             }}\n",
            pid = path("nginx.pid"),
            error = path("error.log"),
            body = path("body"),
            proxy = path("proxy"),
            fastcgi = path("fastcgi"),
            uwsgi = path("uwsgi"),
            scgi = path("scgi"),
        );
        std::fs::write(dir.join("nginx.conf"), config).expect("write nginx.conf");
        let child = Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx { child, dir, addr };
        nginx.wait_until_ready().await;
        Some(nginx)
    }

    /// Polls GET /healthz through nginx until lobby answers it, with a deadline.
    async fn wait_until_ready(&mut self) {
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(response) = client.client.get(client.url("/healthz")).send().await
                && response.status() == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nginx exited with {status}:\n{}", self.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not answer on {}:\n{}",
                self.addr,
                self.error_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A client of lobby through this nginx.
    fn client(&self) -> Client {
        Client::new(self.addr)
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// The access log, once a line of it holds `needle` (nginx writes a line
    /// when its request ends).
    async fn access_log_once_it_has(&self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let log = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the access log within {PATIENCE:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where the `http` part of a test's nginx listens and logs.
struct Site {
    listen: String,
    access_log: PathBuf,
}

impl Site {
    /// `deploy/nginx.conf` pointed at lobby on `upstream`: only its addresses
    /// and its log's path are changed.
    fn sample(&self, upstream: String) -> String {
        let replace = |config: String, from: &str, to: &str| {
            assert_eq!(
                config.matches(from).count(),
                1,
                "the sample has {from:?} once"
            );
            config.replace(from, to)
        };
        let config = replace(
            SAMPLE.to_owned(),
            "server 127.0.0.1:3000;",
            &format!("server {upstream};"),
        );
        let config = replace(config, "listen 8080;", &format!("listen {};", self.listen));
        replace(
            config,
            "/var/log/nginx/lobby.access.log",
            &self.access_log.display().to_string(),
        )
    }

    /// The least a proxy can be: nginx's defaults (buffering on, HTTP/1.0 to
    /// lobby, a read timeout of 60 s), and its default log format.
    fn bare(&self, upstream: String) -> String {
        format!(
            "server {{\n\
             listen {listen};\n\
             access_log {log};\n\
             location / {{ proxy_pass http://{upstream}; }}\n\
             }}",
            listen = self.listen,
            log = self.access_log.display(),
        )
    }
}
