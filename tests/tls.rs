//! HTTPS with `--tls-cert` and `--tls-key`: a real TLS handshake with a
//! certificate each test makes itself, HTTP/2 or HTTP/1.1 as ALPN chooses,
//! events over HTTP/2, the connection limits over TLS, and eight tabs of one
//! headless Chromium on one origin, which plain HTTP/1.1 cannot serve (a
//! browser opens six connections per origin, and each tab's stream holds one).

mod common;

use std::time::Duration;

use common::browser::{Chromedriver, submit_join_form};
use common::http2::Http2Connection;
use common::{PATIENCE, TestCert, TestServer, user_in, users_in};
use fantoccini::Client;
use reqwest::Version;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// More tabs than the six HTTP/1.1 connections a browser opens to one origin.
const TABS: usize = 8;

/// How often a wait on a page looks again.
const POLL: Duration = Duration::from_millis(50);

#[tokio::test]
async fn a_client_that_offers_http2_gets_http2() {
    let cert = TestCert::new();
    let server = TestServer::https(&cert, &[]).await;

    let response = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .expect("GET /healthz over HTTPS");

    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_2);
}

#[tokio::test]
async fn a_client_that_asks_for_http1_alone_gets_http1() {
    let cert = TestCert::new();
    let server = TestServer::https(&cert, &[]).await;
    let http1 = cert.https_client().http1_only().build().expect("a client");

    let response = http1
        .get(server.url("/healthz"))
        .send()
        .await
        .expect("GET /healthz over HTTPS");

    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_11);
}

#[tokio::test]
async fn a_join_reaches_a_stream_over_http2() {
    let cert = TestCert::new();
    let server = TestServer::https(&cert, &[]).await;
    let alice = server.join("alice").await;
    let response = server.open_events(&alice.token, None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "a stream, as over HTTP/1.1"
    );
    let mut stream = common::Sse::new(response);
    let snapshot = stream.next_event().await;
    assert_eq!(snapshot.event, "existing_users");
    assert_eq!(users_in(&snapshot), [alice.user()]);

    let bob = server.join("bob").await;

    let event = stream.next_event().await;
    assert_eq!(event.event, "new_user");
    assert_eq!(user_in(&event), bob.user());
}

#[tokio::test]
async fn many_streams_share_one_http2_connection_and_each_gets_every_join() {
    let cert = TestCert::new();
    // One connection at most: every stream and request must share it.
    let server = TestServer::https(&cert, &["--max-connections", "1"]).await;
    let mut streams = Vec::new();
    for n in 0..TABS {
        let (_, stream, _) = server.join_and_subscribe(&format!("tab {n}")).await;
        streams.push(stream);
    }

    let late = server.join("late").await;

    for stream in &mut streams {
        let mut event = stream.next_event().await;
        // Joins that came after this stream opened come first.
        while user_in(&event).name != "late" {
            event = stream.next_event().await;
        }
        assert_eq!(event.event, "new_user");
        assert_eq!(user_in(&event), late.user());
    }
}

#[tokio::test]
async fn a_connection_past_the_limit_is_answered_503_over_tls() {
    let cert = TestCert::new();
    let server = TestServer::https(&cert, &["--max-connections", "1"]).await;
    // The one connection allowed, held by a stream.
    let (_, _stream, _) = server.join_and_subscribe("alice").await;
    // Another client has a connection pool of its own.
    let other = cert.https_client().build().expect("a client");

    let response = other
        .get(server.url("/users"))
        .send()
        .await
        .expect("an answer, not a broken connection");

    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn a_connection_that_never_starts_its_handshake_is_closed_after_the_header_timeout() {
    let cert = TestCert::new();
    let server = TestServer::https(&cert, &["--header-timeout", "300ms"]).await;
    let addr = server.base.trim_start_matches("https://");
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");

    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(PATIENCE, silent.read(&mut buffer))
        .await
        .expect("closed within the patience");

    assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
}

#[tokio::test]
async fn an_http2_connection_with_no_request_open_is_closed_after_the_idle_timeout() {
    let cert = TestCert::new();
    let server = TestServer::https(
        &cert,
        &["--header-timeout", "300ms", "--idle-timeout", "300ms"],
    )
    .await;
    let mut connection = Http2Connection::open(&cert, &server.base).await;
    // Before the request: the server's idle time starts once its answer is sent.
    let asked = Instant::now();
    assert_eq!(connection.get("/healthz").await, 200);

    let closed = connection.closed().await;

    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "closed only once idle for the idle timeout"
    );
    // Cleanly: a client told GOAWAY takes its next request elsewhere; one
    // whose connection is cut loses whatever request it had in flight.
    assert!(
        closed.is_ok(),
        "closed with GOAWAY and close_notify: {closed:?}"
    );
}

#[tokio::test]
async fn a_connection_refused_over_http2_is_closed_cleanly_once_answered() {
    let cert = TestCert::new();
    let server = TestServer::https(&cert, &["--max-connections", "1"]).await;
    // The one connection allowed, held by the server's own client.
    server.get_text("/healthz").await;
    let mut refused = Http2Connection::open(&cert, &server.base).await;

    assert_eq!(refused.get("/healthz").await, 503);

    // Not kept for more 503s until the refusal's time runs out and it is cut.
    let closed = refused.closed().await;
    assert!(
        closed.is_ok(),
        "closed with GOAWAY and close_notify: {closed:?}"
    );
}

#[tokio::test]
async fn eight_tabs_of_one_browser_on_one_https_origin_each_see_all_eight_joins() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let cert = TestCert::new();
    let server = TestServer::https(&cert, &[]).await;
    let browser = driver.browser(&["--ignore-certificate-errors"]).await;
    let mut tabs = vec![browser.window().await.expect("the first tab")];
    for _ in 1..TABS {
        tabs.push(browser.new_window(true).await.expect("a new tab").handle);
    }

    for (n, tab) in tabs.iter().enumerate() {
        browser
            .switch_to_window(tab.clone())
            .await
            .expect("switch tab");
        browser.goto(&server.base).await.expect("open the page");
        join(&browser, &format!("tab {n}")).await;
    }

    let everyone: Vec<String> = (0..TABS).map(|n| format!("tab {n}")).collect();
    for (n, tab) in tabs.iter().enumerate() {
        browser
            .switch_to_window(tab.clone())
            .await
            .expect("switch tab");
        let names = names_when(&browser, |names| names == everyone).await;
        assert_eq!(names, everyone, "tab {n} shows everyone");
        let protocol = browser
            .execute(
                "return performance.getEntriesByType('navigation')[0].nextHopProtocol;",
                vec![],
            )
            .await
            .expect("read the page's protocol");
        assert_eq!(protocol, "h2", "tab {n} was served over HTTP/2");
    }
}

/// Types `name` into the page's form and submits it, and waits until the page
/// shows its own box.
async fn join(browser: &Client, name: &str) {
    submit_join_form(browser, name).await;
    let mine = "return [...document.querySelectorAll('#users .me')].map(box => box.textContent);";
    let deadline = Instant::now() + PATIENCE;
    loop {
        let shown = browser.execute(mine, vec![]).await.expect("read own box");
        if shown == Value::from(vec![name]) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name:?} never saw its own box: {shown}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The names the page lists (sorted), once `ready` holds for them; panics
/// with the last ones seen if it does not within the patience.
async fn names_when(browser: &Client, ready: impl Fn(&[String]) -> bool) -> Vec<String> {
    let read = "return [...document.querySelectorAll('#users [data-user-id]')].map(box => box.textContent);";
    let deadline = Instant::now() + PATIENCE;
    loop {
        let shown = browser.execute(read, vec![]).await.expect("read the list");
        let mut names: Vec<String> = serde_json::from_value(shown).expect("a list of names");
        names.sort();
        if ready(&names) || Instant::now() >= deadline {
            return names;
        }
        tokio::time::sleep(POLL).await;
    }
}
