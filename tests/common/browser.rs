//! Headless Chromium for the browser tests: a chromedriver on a free port that
//! starts one browser per person, each with a profile of its own. Where
//! Chromium or chromedriver is missing a test says it was skipped, unless
//! `CI=true`, where it fails.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

const SKIPPED: &str = "SKIPPED: browser test needs chromium and chromedriver (apt-get install chromium chromium-driver)";

/// How often a wait for chromedriver looks again.
const POLL: Duration = Duration::from_millis(50);

/// A chromedriver on a free port of 127.0.0.1, killed together with every
/// browser it started when the test ends, however it ends.
pub struct Chromedriver {
    process: Child,
    url: String,
    chromium: PathBuf,
    /// Every browser's profile lives under here; removed with the guard.
    profiles: PathBuf,
    people: AtomicUsize,
}

impl Chromedriver {
    /// Starts chromedriver, or returns `None` after saying the test is skipped
    /// when Chromium or chromedriver is missing. Under `CI=true` a missing browser fails.
    pub async fn start_or_skip() -> Option<Chromedriver> {
        let (Some(chromedriver), Some(chromium)) = (on_path("chromedriver"), on_path("chromium"))
        else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{SKIPPED}");
            }
            // Straight to stderr, past the test harness's capture, so that
            // `cargo test` shows it; once, however many tests are skipped.
            static SAY_ONCE: Once = Once::new();
            SAY_ONCE.call_once(|| {
                let _ = writeln!(std::io::stderr(), "{SKIPPED}");
            });
            return None;
        };
        let port = super::free_addr().port();
        let process = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that one kill ends the browsers it starts too.
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let profiles =
            std::env::temp_dir().join(format!("lobby-browser-{}-{port}", std::process::id()));
        let mut driver = Chromedriver {
            process,
            url: format!("http://127.0.0.1:{port}"),
            chromium,
            profiles,
            people: AtomicUsize::new(0),
        };
        driver.wait_until_ready().await;
        Some(driver)
    }

    async fn wait_until_ready(&mut self) {
        let status = format!("{}/status", self.url);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(exit)) = self.process.try_wait() {
                panic!("chromedriver exited at start: {exit}");
            }
            if let Ok(response) = reqwest::get(&status).await {
                let body: Value = response.json().await.unwrap_or_default();
                if body["value"]["ready"] == json!(true) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on {status}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// A new browser with a profile of its own and these extra Chromium flags.
    pub async fn browser(&self, extra_args: &[&str]) -> Client {
        self.session(extra_args, json!({})).await
    }

    /// The same, with chromedriver keeping what the pages write to the
    /// console, for [`console`].
    pub async fn browser_keeping_console(&self, extra_args: &[&str]) -> Client {
        let keep = json!({ "goog:loggingPrefs": { "browser": "ALL" } });
        self.session(extra_args, keep).await
    }

    /// A browser with these flags and these capabilities beside Chromium's options.
    async fn session(&self, extra_args: &[&str], extra_capabilities: Value) -> Client {
        let n = self.people.fetch_add(1, Ordering::Relaxed);
        let profile = self.profiles.join(format!("person-{n}"));
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            // Without these, Chromium's own traffic is refused on a closed network.
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--user-data-dir={}", profile.display()),
        ];
        args.extend(extra_args.iter().map(|arg| arg.to_string()));
        let capabilities = json!({
            "goog:chromeOptions": { "binary": self.chromium, "args": args }
        });
        let (Value::Object(mut capabilities), Value::Object(extra)) =
            (capabilities, extra_capabilities)
        else {
            unreachable!("JSON objects")
        };
        capabilities.extend(extra);
        ClientBuilder::rustls()
            .expect("a rustls connector")
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a Chromium session from chromedriver")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The group's id is chromedriver's pid (process_group(0) above).
        let group = format!("-{}", self.process.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.profiles);
    }
}

/// The full path of `program` if it is on PATH, like `command -v`.
fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Types `name` into the page's join form, as a person would, and submits it.
pub async fn submit_join_form(browser: &Client, name: &str) {
    browser
        .find(Locator::Css("form#join input[name=name]"))
        .await
        .expect("the name field")
        .send_keys(name)
        .await
        .expect("type the name");
    browser
        .find(Locator::Css("form#join button[type=submit]"))
        .await
        .expect("the join button")
        .click()
        .await
        .expect("submit the form");
}

/// One line of a page's console, as chromedriver reports it: `level` is
/// `SEVERE` for `console.error` (and for the browser's own errors, such as a
/// refused request), and `message` holds the text, quoted.
#[derive(Debug, Clone, Deserialize)]
pub struct ConsoleEntry {
    pub level: String,
    pub message: String,
}

/// What the pages of `browser` wrote to the console since the last call:
/// chromedriver hands each line out once. The browser must come from
/// [`Chromedriver::browser_keeping_console`].
pub async fn console(browser: &Client) -> Vec<ConsoleEntry> {
    let lines = browser
        .issue_cmd(BrowserLog)
        .await
        .expect("chromedriver's browser log");
    serde_json::from_value(lines).expect("log entries")
}

/// Chromedriver's `POST /session/{id}/se/log` for the `browser` log, which
/// WebDriver itself has no command for.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &reqwest::Url,
        session_id: Option<&str>,
    ) -> Result<reqwest::Url, <reqwest::Url as std::str::FromStr>::Err> {
        let session = session_id.expect("a session");
        base_url.join(&format!("session/{session}/se/log"))
    }

    fn method_and_body(&self, _: &reqwest::Url) -> (reqwest::Method, Option<String>) {
        let body = json!({ "type": "browser" }).to_string();
        (reqwest::Method::POST, Some(body))
    }
}

/// Calls `probe` every `POLL` until it answers `Ok`; its last `Err` (what it
/// saw instead) if that takes longer than `within`.
pub async fn poll_until<T>(
    within: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return Ok(value),
            Err(seen) if Instant::now() >= deadline => return Err(seen),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Calls `probe` every `POLL` until it answers `Ok`; panics with its last
/// `Err` if that takes longer than `within`.
pub async fn eventually<T>(
    within: Duration,
    what: &str,
    probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    poll_until(within, probe)
        .await
        .unwrap_or_else(|seen| panic!("expected {what} within {within:?}; last saw {seen}"))
}

/// Calls `probe` every `POLL` for `during`; panics with what it saw the first
/// time it answers `Err`.
pub async fn holds_for(
    during: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<(), String>,
) {
    let until = Instant::now() + during;
    while Instant::now() < until {
        if let Err(seen) = probe().await {
            panic!("expected {what} for {during:?}; saw {seen}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Stops `server` and starts a fresh lobby with these flags on the address it
/// used, as a restart would: it knows no token. The new lobby stops when the
/// returned server is dropped.
pub async fn restart(mut server: super::TestServer, flags: &[&str]) -> super::TestServer {
    server.start_again(flags).await;
    server
}
