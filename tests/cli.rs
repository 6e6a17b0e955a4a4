//! The real `lobby` binary, run as a person runs it: the line it logs, a clean
//! stop on SIGTERM and SIGINT (streams end, exit 0, port freed), one-line errors
//! for a bad flag or a taken port, `--help` and `--version`, every `LOBBY_*`
//! environment variable, and no token in its output even at RUST_LOG=debug.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{Client, Sse, free_addr, read_raw_until};
use tokio::time::Instant;

/// How long the binary may take to start answering, or to exit.
const STARTUP: Duration = Duration::from_secs(10);
/// "Exits within a few seconds" of a signal.
const EXIT: Duration = Duration::from_secs(5);
/// How often a poll with a deadline looks again.
const POLL: Duration = Duration::from_millis(20);

// ---- where it listens ----

#[tokio::test]
async fn it_logs_one_line_with_the_listen_address_and_the_url_to_open() {
    let lobby = Lobby::start(&[], &[]).await;
    let addr = lobby.addr;

    let finished = lobby.stop("TERM").await;

    let output = finished.output();
    let mentions: Vec<&str> = output
        .lines()
        .filter(|line| line.contains(&addr.to_string()))
        .collect();
    assert_eq!(
        mentions.len(),
        1,
        "one line says where it listens: {mentions:?}"
    );
    assert!(
        mentions[0].contains(&format!("http://{addr}")),
        "the line has a URL to open: {:?}",
        mentions[0]
    );
}

// ---- stopping ----

#[tokio::test]
async fn sigterm_ends_open_streams_exits_0_and_frees_the_port() {
    let lobby = Lobby::start(&[], &[]).await;
    let (_, mut stream, _) = lobby.join_and_subscribe("alice").await;
    let addr = lobby.addr;

    let finished = lobby.stop_expecting_end_of("TERM", &mut stream).await;

    assert_eq!(finished.status.code(), Some(0), "{}", finished.output());
    assert!(TcpListener::bind(addr).is_ok(), "{addr} is free again");
}

#[tokio::test]
async fn sigint_ends_open_streams_exits_0_and_frees_the_port() {
    let lobby = Lobby::start(&[], &[]).await;
    let (_, mut stream, _) = lobby.join_and_subscribe("alice").await;
    let addr = lobby.addr;

    let finished = lobby.stop_expecting_end_of("INT", &mut stream).await;

    assert_eq!(finished.status.code(), Some(0), "{}", finished.output());
    assert!(TcpListener::bind(addr).is_ok(), "{addr} is free again");
}

#[tokio::test]
async fn sigterm_exits_within_a_few_seconds_even_while_a_client_stalls_mid_request() {
    let lobby = Lobby::start(&[], &[]).await;
    let mut stalled = TcpStream::connect(lobby.addr).expect("connect");
    stalled
        .write_all(b"GET /users HTTP/1.1\r\nHost: lobby\r\n")
        .expect("send half a request head");

    let finished = lobby.stop("TERM").await;

    assert_eq!(finished.status.code(), Some(0), "{}", finished.output());
    drop(stalled);
}

#[tokio::test]
async fn sigterm_with_nobody_online_exits_0() {
    let lobby = Lobby::start(&[], &[]).await;

    let finished = lobby.stop("TERM").await;

    assert_eq!(finished.status.code(), Some(0), "{}", finished.output());
}

#[tokio::test]
async fn a_stopped_lobby_can_be_started_again_on_the_same_port() {
    let first = Lobby::start(&[], &[]).await;
    let addr = first.addr;
    let (_, mut stream, _) = first.join_and_subscribe("alice").await;
    first.stop_expecting_end_of("TERM", &mut stream).await;

    let second = Lobby::start_on(addr, &[], &[]).await;

    assert!(second.users().await.is_empty());
}

// ---- refusing to start ----

#[tokio::test]
async fn a_duration_without_a_unit_exits_2_with_one_line_naming_the_flag() {
    let finished = run_to_end(&["--bind", "127.0.0.1:0", "--grace", "5"], &[]).await;

    finished.assert_flag_error_mentioning("--grace");
}

#[tokio::test]
async fn an_unknown_flag_exits_2_with_one_line_naming_it() {
    let finished = run_to_end(&["--bind", "127.0.0.1:0", "--bogus"], &[]).await;

    finished.assert_flag_error_mentioning("--bogus");
}

#[tokio::test]
async fn a_max_users_that_is_not_a_number_exits_2_with_one_line_naming_the_flag() {
    let finished = run_to_end(&["--bind", "127.0.0.1:0", "--max-users", "lots"], &[]).await;

    finished.assert_flag_error_mentioning("--max-users");
}

#[tokio::test]
async fn a_bind_address_that_is_not_an_address_exits_2_with_one_line_naming_the_flag() {
    let finished = run_to_end(&["--bind", "localhost"], &[]).await;

    finished.assert_flag_error_mentioning("--bind");
}

#[tokio::test]
async fn a_bad_duration_in_an_environment_variable_exits_2_with_one_line_naming_the_value() {
    let finished = run_to_end(&["--bind", "127.0.0.1:0"], &[("LOBBY_GRACE", "soon")]).await;

    finished.assert_flag_error_mentioning("soon");
}

#[tokio::test]
async fn a_bad_number_in_an_environment_variable_exits_2_with_one_line_naming_the_value() {
    let finished = run_to_end(&["--bind", "127.0.0.1:0"], &[("LOBBY_MAX_USERS", "abc")]).await;

    finished.assert_flag_error_mentioning("abc");
}

#[tokio::test]
async fn a_port_already_taken_exits_non_zero_with_one_line_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port to take");
    let addr = taken.local_addr().expect("its address");

    let finished = run_to_end(&["--bind", &addr.to_string()], &[]).await;

    assert!(!finished.status.success(), "{}", finished.output());
    let line = finished.the_one_error_line();
    assert!(line.contains(&addr.to_string()), "it names {addr}: {line}");
    drop(taken);
}

#[tokio::test]
async fn a_tls_certificate_without_its_key_exits_2_with_one_line_naming_the_missing_flag() {
    let finished = run_to_end(&["--bind", "127.0.0.1:0", "--tls-cert", "cert.pem"], &[]).await;

    finished.assert_flag_error_mentioning("--tls-key");
}

#[tokio::test]
async fn a_tls_certificate_that_cannot_be_read_exits_1_with_one_line_naming_the_file() {
    let missing = "/nonexistent/lobby-test/cert.pem";
    let finished = run_to_end(
        &[
            "--bind",
            "127.0.0.1:0",
            "--tls-cert",
            missing,
            "--tls-key",
            missing,
        ],
        &[],
    )
    .await;

    assert_eq!(finished.status.code(), Some(1), "{}", finished.output());
    let line = finished.the_one_error_line();
    assert!(line.contains(missing), "it names {missing}: {line}");
}

// ---- asking it about itself ----

#[tokio::test]
async fn version_prints_the_name_and_the_version_and_exits_0() {
    let finished = run_to_end(&["--version"], &[]).await;

    assert_eq!(finished.status.code(), Some(0), "{}", finished.output());
    assert_eq!(
        finished.stdout.trim_end(),
        format!("lobby {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn help_exits_0_and_lists_every_flag_with_its_environment_variable() {
    let finished = run_to_end(&["--help"], &[]).await;

    assert_eq!(finished.status.code(), Some(0), "{}", finished.output());
    for (flag, variable) in [
        ("--bind", "LOBBY_BIND"),
        ("--grace", "LOBBY_GRACE"),
        ("--join-timeout", "LOBBY_JOIN_TIMEOUT"),
        ("--keepalive", "LOBBY_KEEPALIVE"),
        ("--max-users", "LOBBY_MAX_USERS"),
    ] {
        let entry = help_entry(&finished.stdout, flag)
            .unwrap_or_else(|| panic!("--help lists {flag}: {}", finished.stdout));
        assert!(
            entry.contains(variable),
            "--help gives {variable} for {flag}: {entry}"
        );
    }
}

#[tokio::test]
async fn help_fits_in_100_columns_and_says_how_to_write_a_duration() {
    let finished = run_to_end(&["--help"], &[]).await;

    // Read through a pipe (`lobby --help | less`): no terminal width to go by.
    for line in finished.stdout.lines() {
        assert!(
            line.chars().count() <= 100,
            "a line over 100 columns: {line:?}"
        );
    }
    assert!(
        finished.stdout.contains("5s, 500ms or 2m"),
        "{}",
        finished.stdout
    );
}

// ---- environment variables ----

#[tokio::test]
async fn lobby_bind_chooses_the_address() {
    let addr = free_addr();

    let lobby = Lobby::start_with_env_bind(addr).await;

    assert_eq!(lobby.addr, addr);
    assert!(lobby.users().await.is_empty());
}

#[tokio::test]
async fn port_without_bind_listens_on_every_interface_and_says_why() {
    let port = free_addr().port();
    let port_text = port.to_string();
    // Another loopback address answers only if every interface is listened on.
    let elsewhere = SocketAddr::from(([127, 0, 0, 2], port));

    let lobby = Lobby::spawn(elsewhere, &[], &[("PORT", &port_text)]).await;
    let finished = lobby.stop("TERM").await;

    let output = finished.output();
    let listening: Vec<&str> = output
        .lines()
        .filter(|line| line.contains("listening"))
        .collect();
    let [line] = listening[..] else {
        panic!("one line says where it listens: {output}");
    };
    assert!(
        line.contains(&format!("0.0.0.0:{port}")) && line.contains("PORT"),
        "the line names the address and why: {line}"
    );
}

#[tokio::test]
async fn bind_and_lobby_bind_win_over_port() {
    let port = free_addr().port().to_string();
    let addr = free_addr();
    let addr_text = addr.to_string();

    for (args, env) in [
        (
            vec!["--bind", addr_text.as_str()],
            vec![("PORT", port.as_str())],
        ),
        (
            vec![],
            vec![("PORT", port.as_str()), ("LOBBY_BIND", addr_text.as_str())],
        ),
    ] {
        let lobby = Lobby::spawn(addr, &args, &env).await;
        let on_port = TcpStream::connect(("127.0.0.1", port.parse::<u16>().expect("a port")));
        assert!(
            on_port.is_err(),
            "nothing listens on PORT ({args:?}, {env:?})"
        );
        lobby.stop("TERM").await;
    }
}

#[tokio::test]
async fn a_port_that_is_not_a_port_number_exits_2_with_one_line_saying_so() {
    for bad in ["http", "0", "70000"] {
        let finished = run_to_end(&[], &[("PORT", bad)]).await;

        finished.assert_flag_error_mentioning("PORT");
        assert!(finished.stderr.contains(bad), "{}", finished.stderr);
    }
}

#[tokio::test]
async fn lobby_max_users_refuses_joins_beyond_it() {
    let lobby = Lobby::start(&[], &[("LOBBY_MAX_USERS", "1")]).await;
    lobby.join("alice").await;

    let response = lobby.post_join("bob").await;

    assert_eq!(response.status(), 503);
}

#[tokio::test]
async fn lobby_trust_proxy_reads_yes_and_no_as_people_write_them() {
    for (value, trusted) in [("yes", true), ("1", true), ("no", false), ("false", false)] {
        let env = [
            ("LOBBY_TRUST_PROXY", value),
            ("LOBBY_JOIN_RATE", "1"),
            ("LOBBY_JOIN_BURST", "1"),
        ];
        let lobby = Lobby::start(&[], &env).await;
        let join_from = async |ip: &str| {
            lobby
                .client
                .post(lobby.url("/join"))
                .header("X-Forwarded-For", ip)
                .form(&[("name", "someone")])
                .send()
                .await
                .expect("POST /join")
                .status()
        };
        assert_eq!(join_from("203.0.113.1").await, 201);
        let second = join_from("203.0.113.2").await;
        assert_eq!(
            second == 201,
            trusted,
            "LOBBY_TRUST_PROXY={value}: a second address's join got {second}"
        );
    }
}

#[tokio::test]
async fn a_flag_wins_over_its_environment_variable() {
    let lobby = Lobby::start(&["--max-users", "2"], &[("LOBBY_MAX_USERS", "1")]).await;
    lobby.join("alice").await;

    let response = lobby.post_join("bob").await;

    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn lobby_grace_sets_how_long_a_closed_stream_keeps_its_user_online() {
    let lobby = Lobby::start(&[], &[("LOBBY_GRACE", "200ms")]).await;
    let (_, stream, _) = lobby.join_and_subscribe("alice").await;

    drop(stream);

    // The default grace is 5s: gone well before that means the variable was read.
    lobby
        .wait_until_nobody_is_online(Duration::from_secs(3))
        .await;
}

#[tokio::test]
async fn lobby_join_timeout_sets_how_long_a_joiner_has_to_open_a_stream() {
    let lobby = Lobby::start(&[], &[("LOBBY_JOIN_TIMEOUT", "200ms")]).await;

    lobby.join("alice").await;

    // The default join timeout is 10s.
    lobby
        .wait_until_nobody_is_online(Duration::from_secs(3))
        .await;
}

#[tokio::test]
async fn lobby_keepalive_sets_how_often_a_comment_goes_out() {
    let lobby = Lobby::start(&[], &[("LOBBY_KEEPALIVE", "100ms")]).await;
    let alice = lobby.join("alice").await;
    let mut response = lobby.open_events(&alice.token, &[]).await;

    // The default keepalive is 15s.
    let text = read_raw_until(&mut response, Duration::from_secs(3), has_comment_line).await;

    assert!(
        has_comment_line(&text),
        "a comment line within 3s: {text:?}"
    );
}

// ---- secrets ----

#[tokio::test]
async fn no_token_appears_in_the_output_even_at_debug_level() {
    let lobby = Lobby::start(&[], &[("RUST_LOG", "debug")]).await;
    let alice = lobby.join("alice").await;
    let bob = lobby.join("bob").await;
    let carol = lobby.join("carol").await;
    let mut alice_stream = lobby.subscribe(&alice.token, &[]).await;
    let _bob_stream = lobby
        .subscribe("", &[("authorization", &format!("Bearer {}", bob.token))])
        .await;
    alice_stream.next_event().await;

    lobby.leave_with_form(&alice.token).await;
    lobby.leave_with_text(&bob.token).await;
    lobby.leave_with_bearer(&carol.token).await;
    let refused = lobby.open_events(&alice.token, &[]).await;
    assert_eq!(refused.status(), 401);
    let finished = lobby.stop("TERM").await;

    let output = finished.output();
    assert!(output.contains("DEBUG"), "debug logging was on: {output}");
    for token in [&alice.token, &bob.token, &carol.token] {
        assert!(
            !output.contains(token.as_str()),
            "a token in the output: {output}"
        );
    }
}

#[tokio::test]
async fn neither_the_join_secret_nor_a_ticket_appears_in_the_output_even_at_debug_level() {
    let secret = "the-join-secret-of-this-test-0123456789";
    let env = [("RUST_LOG", "debug"), ("LOBBY_JOIN_SECRET", secret)];
    let lobby = Lobby::start(&[], &env).await;
    let ticket = common::ticket(secret, "u1", "Ada");
    let joined = lobby
        .post_join_body(&serde_json::json!({ "ticket": ticket }))
        .await;
    assert_eq!(joined.status(), 201);
    let forged = format!("{ticket}x");
    let refused = lobby
        .post_join_body(&serde_json::json!({ "ticket": forged }))
        .await;
    assert_eq!(refused.status(), 401);
    let finished = lobby.stop("TERM").await;

    let output = finished.output();
    assert!(output.contains("DEBUG"), "debug logging was on: {output}");
    assert!(
        !output.contains(secret),
        "the secret in the output: {output}"
    );
    let signature = ticket.rsplit('.').next().expect("a signature");
    assert!(
        !output.contains(signature),
        "a ticket in the output: {output}"
    );
}

#[tokio::test]
async fn a_join_secret_file_that_cannot_be_read_exits_1_with_one_line_naming_it() {
    let missing = "/nonexistent/lobby-test/join-secret";
    let finished = run_to_end(
        &["--bind", "127.0.0.1:0", "--join-secret-file", missing],
        &[],
    )
    .await;

    assert_eq!(finished.status.code(), Some(1), "{}", finished.output());
    assert!(finished.the_one_error_line().contains(missing));
}

// ---- helpers local to this file ----

/// The `lobby` binary, running, answering on `addr`. Killed if dropped.
struct Lobby {
    process: Process,
    addr: SocketAddr,
    api: Client,
}

impl std::ops::Deref for Lobby {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.api
    }
}

impl Lobby {
    /// Starts the binary on a free port of 127.0.0.1 and waits until it answers.
    async fn start(args: &[&str], env: &[(&str, &str)]) -> Lobby {
        Lobby::start_on(free_addr(), args, env).await
    }

    async fn start_on(addr: SocketAddr, args: &[&str], env: &[(&str, &str)]) -> Lobby {
        let addr_text = addr.to_string();
        let args: Vec<&str> = ["--bind", addr_text.as_str()]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        Lobby::spawn(addr, &args, env).await
    }

    /// Starts the binary with no `--bind`, only `LOBBY_BIND`.
    async fn start_with_env_bind(addr: SocketAddr) -> Lobby {
        Lobby::spawn(addr, &[], &[("LOBBY_BIND", &addr.to_string())]).await
    }

    async fn spawn(addr: SocketAddr, args: &[&str], env: &[(&str, &str)]) -> Lobby {
        let mut lobby = Lobby {
            process: Process::spawn(args, env),
            addr,
            api: Client::new(addr),
        };
        lobby.wait_until_ready().await;
        lobby
    }

    /// Polls GET /healthz until it answers 200, with a deadline.
    async fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Ok(response) = self.client.get(self.url("/healthz")).send().await
                && response.status() == 200
            {
                return;
            }
            if let Some(status) = self.process.exit_status() {
                panic!("lobby exited with {status} before answering");
            }
            assert!(
                Instant::now() < deadline,
                "lobby did not answer on {} within {STARTUP:?}",
                self.addr
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends the signal (`TERM`, `INT`) with `kill` and waits for the exit.
    async fn stop(self, signal: &str) -> Finished {
        let pid = self.process.id();
        let killed = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(killed.success(), "kill -{signal} {pid}");
        self.process.wait_for_exit(EXIT).await
    }

    /// Sends the signal, and checks `stream` ends while the process stops.
    async fn stop_expecting_end_of(self, signal: &str, stream: &mut Sse) -> Finished {
        let (finished, ()) = tokio::join!(self.stop(signal), stream.expect_end());
        finished
    }

    /// GET /events, with `?token=` unless `token` is empty, and these headers.
    async fn open_events(&self, token: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self
            .client
            .get(self.url("/events"))
            .timeout(Duration::from_secs(3600));
        if !token.is_empty() {
            request = request.query(&[("token", token)]);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("GET /events")
    }

    async fn subscribe(&self, token: &str, headers: &[(&str, &str)]) -> Sse {
        let response = self.open_events(token, headers).await;
        assert_eq!(response.status(), 200, "GET /events");
        Sse::new(response)
    }

    async fn leave_with_form(&self, token: &str) {
        let request = self
            .client
            .post(self.url("/leave"))
            .form(&[("token", token)]);
        assert_eq!(request.send().await.expect("POST /leave").status(), 204);
    }

    async fn leave_with_text(&self, token: &str) {
        let request = self
            .client
            .post(self.url("/leave"))
            .header("content-type", "text/plain;charset=UTF-8")
            .body(token.to_owned());
        assert_eq!(request.send().await.expect("POST /leave").status(), 204);
    }

    async fn leave_with_bearer(&self, token: &str) {
        let request = self.client.post(self.url("/leave")).bearer_auth(token);
        assert_eq!(request.send().await.expect("POST /leave").status(), 204);
    }

    /// Polls GET /users until it is empty, with a deadline.
    async fn wait_until_nobody_is_online(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let users = self.users().await;
            if users.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still online after {within:?}: {users:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Finished {
    /// Everything the process wrote, stdout then stderr.
    fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// A refusal to start: a non-zero exit, no panic, and exactly one line on
    /// stderr, `lobby: <what is wrong>`. Returns that line.
    fn the_one_error_line(&self) -> &str {
        assert!(!self.status.success(), "exit status {}", self.status);
        assert!(!self.output().contains("panicked"), "{}", self.output());
        let lines: Vec<&str> = self.stderr.lines().collect();
        let [line] = lines[..] else {
            panic!("exactly one line on stderr: {:?}", self.stderr);
        };
        assert!(
            line.starts_with("lobby: "),
            "the line starts with \"lobby: \": {line:?}"
        );
        line
    }

    /// A bad flag or environment variable: exit code 2, as for any usage error,
    /// and one error line that mentions `what`.
    fn assert_flag_error_mentioning(&self, what: &str) {
        assert_eq!(self.status.code(), Some(2), "{}", self.output());
        let line = self.the_one_error_line();
        assert!(line.contains(what), "the line mentions {what}: {line:?}");
    }
}

/// Runs the binary until it exits by itself (within a deadline).
async fn run_to_end(args: &[&str], env: &[(&str, &str)]) -> Finished {
    Process::spawn(args, env).wait_for_exit(STARTUP).await
}

/// A child process of the `lobby` binary whose output is collected in the
/// background. Killed (by its own pid) if dropped while running.
struct Process {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

/// What a run of the binary left behind.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Process {
    /// The binary with these flags, its output piped, and no `LOBBY_*`,
    /// `RUST_LOG` or `PORT` from the test's own environment, only those in `env`.
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lobby"));
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("LOBBY_") || name == "RUST_LOG" || name == "PORT"
            {
                command.env_remove(name);
            }
        }
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("spawn lobby");
        let stdout = collect(child.stdout.take().expect("piped stdout"));
        let stderr = collect(child.stderr.take().expect("piped stderr"));
        Process {
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if it has exited.
    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("check on lobby")
    }

    /// Polls for the exit with a deadline, then gathers what it wrote.
    async fn wait_for_exit(mut self, within: Duration) -> Finished {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.exit_status() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "lobby did not exit within {within:?}"
            );
            tokio::time::sleep(POLL).await;
        };
        let read = |pipe: &mut Option<JoinHandle<String>>| {
            pipe.take()
                .expect("read once")
                .join()
                .expect("the reader does not panic")
        };
        Finished {
            status,
            stdout: read(&mut self.stdout),
            stderr: read(&mut self.stderr),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads a pipe to its end on a thread of its own.
fn collect(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// What `--help` says about `flag`: its line and any lines that continue it,
/// up to the next option.
fn help_entry(help: &str, flag: &str) -> Option<String> {
    let lines: Vec<&str> = help.lines().collect();
    // An option's line starts with its names, then two spaces, then its text.
    let names = |line: &str| {
        line.trim_start()
            .split("  ")
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let start = lines.iter().position(|line| {
        line.trim_start().starts_with('-') && names(line).split([' ', ',']).any(|word| word == flag)
    })?;
    let continued = lines[start + 1..]
        .iter()
        .take_while(|line| !line.trim_start().starts_with('-') && !line.trim().is_empty());
    Some(
        std::iter::once(&lines[start])
            .chain(continued)
            .map(|line| line.trim())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Whether an SSE text holds a comment line (one starting with `:`).
fn has_comment_line(text: &str) -> bool {
    text.lines().any(|line| line.starts_with(':'))
}
