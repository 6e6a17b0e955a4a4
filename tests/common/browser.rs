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

use fantoccini::{Client, ClientBuilder, Locator};
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
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
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
