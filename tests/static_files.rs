//! The static files compiled into the binary, over HTTP: each with an ETag and
//! a cache policy that makes browsers revalidate it, a 304 for a copy that is
//! still current, and the page itself never cached. The binary serves them
//! from a directory with nothing in it.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Client, PATIENCE, TestServer, free_addr};
use reqwest::header::{CACHE_CONTROL, ETAG, HeaderMap, IF_NONE_MATCH};
use tokio::time::Instant;

const ASSETS: [(&str, &str); 5] = [
    ("/static/app.js", include_str!("../static/app.js")),
    ("/lobby.js", include_str!("../static/lobby.js")),
    ("/lobby.d.ts", include_str!("../static/lobby.d.ts")),
    ("/static/style.css", include_str!("../static/style.css")),
    ("/static/favicon.svg", include_str!("../static/favicon.svg")),
];

#[tokio::test]
async fn every_static_file_has_a_quoted_etag_and_is_revalidated_before_use() {
    let server = TestServer::start().await;

    for (path, content) in ASSETS {
        let response = get(&server, path, None).await;

        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        let etag = header(&headers, ETAG.as_str());
        assert!(
            etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'),
            "{path}: {etag}"
        );
        assert_eq!(
            header(&headers, CACHE_CONTROL.as_str()),
            "no-cache",
            "{path}"
        );
        assert_eq!(response.text().await.expect("body"), content, "{path}");
    }
}

#[tokio::test]
async fn a_static_file_asked_with_its_current_etag_is_answered_304_without_a_body() {
    let server = TestServer::start().await;

    for (path, _) in ASSETS {
        let etag = etag_of(&server, path).await;

        let response = get(&server, path, Some(&etag)).await;

        assert_eq!(response.status(), 304, "{path}");
        assert_eq!(header(response.headers(), ETAG.as_str()), etag, "{path}");
        assert_eq!(
            header(response.headers(), CACHE_CONTROL.as_str()),
            "no-cache"
        );
        assert!(response.bytes().await.expect("body").is_empty(), "{path}");
    }
}

#[tokio::test]
async fn a_weak_etag_in_a_list_matches_too() {
    let server = TestServer::start().await;
    let etag = etag_of(&server, "/static/app.js").await;

    let response = get(
        &server,
        "/static/app.js",
        Some(&format!("\"old\", W/{etag}")),
    )
    .await;

    assert_eq!(response.status(), 304);
}

#[tokio::test]
async fn a_static_file_asked_with_another_etag_is_sent_whole() {
    let server = TestServer::start().await;

    let response = get(&server, "/static/app.js", Some("\"0123456789abcdef\"")).await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), ASSETS[0].1);
}

#[tokio::test]
async fn each_static_file_has_its_own_etag_and_every_server_gives_the_same() {
    let (one, two) = (TestServer::start().await, TestServer::start().await);

    let mut tags = Vec::new();
    for (path, _) in ASSETS {
        let etag = etag_of(&one, path).await;
        assert_eq!(etag_of(&two, path).await, etag, "{path}");
        tags.push(etag);
    }

    tags.sort();
    tags.dedup();
    assert_eq!(tags.len(), ASSETS.len(), "{tags:?}");
}

#[tokio::test]
async fn the_page_is_never_cached_and_has_no_etag() {
    let server = TestServer::start().await;

    let response = get(&server, "/", Some("*")).await;

    assert_eq!(response.status(), 200);
    assert_eq!(
        header(response.headers(), CACHE_CONTROL.as_str()),
        "no-store"
    );
    assert!(response.headers().get(ETAG).is_none());
}

#[tokio::test]
async fn the_binary_serves_its_static_files_from_an_empty_directory() {
    let empty = std::env::temp_dir().join(format!("lobby-empty-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&empty).expect("create an empty directory");
    let addr = free_addr();
    let _lobby = KilledOnDrop(
        Command::new(env!("CARGO_BIN_EXE_lobby"))
            .arg("--bind")
            .arg(addr.to_string())
            .current_dir(&empty)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn lobby"),
    );
    let client = Client::new(addr);

    let deadline = Instant::now() + PATIENCE;
    let script = loop {
        if let Ok(response) = client.client.get(client.url("/static/app.js")).send().await {
            break response.text().await.expect("body");
        }
        assert!(Instant::now() < deadline, "lobby did not answer on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let page = client.get_text("/").await;
    let _ = std::fs::remove_dir(&empty);

    assert_eq!(script, ASSETS[0].1);
    assert!(page.contains("/static/app.js"), "{page}");
}

/// A child process, killed (by its own pid) when the test ends, passed or not.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET `path`, with `If-None-Match` when given.
/// The client (`/lobby.js`, `/lobby.d.ts`) loads on any site's page, listed in
/// `--cors-origin` or not (a module script is fetched with CORS), so that on a
/// site that is not listed it can say so; the API itself still refuses that site.
#[tokio::test]
async fn the_client_is_readable_by_any_site_and_the_api_only_by_the_listed_ones() {
    const LISTED: &str = "https://listed.example";
    const OTHER: &str = "https://other.example";
    for flags in [&[][..], &["--cors-origin", LISTED][..]] {
        let server = TestServer::with_args(flags).await;
        for path in ["/lobby.js", "/lobby.d.ts"] {
            for origin in [LISTED, OTHER] {
                let response = server
                    .client
                    .get(server.url(path))
                    .header("origin", origin)
                    .header("sec-fetch-site", "cross-site")
                    .send()
                    .await
                    .expect("GET");
                assert_eq!(response.status(), 200, "{path} for {origin} {flags:?}");
                let allowed: Vec<_> = response
                    .headers()
                    .get_all("access-control-allow-origin")
                    .iter()
                    .collect();
                assert!(
                    allowed == ["*"] || (allowed == [origin] && origin == LISTED),
                    "{path} for {origin} with {flags:?}: {allowed:?}"
                );
            }
        }
        let refused = server
            .client
            .get(server.url("/users"))
            .header("origin", OTHER)
            .header("sec-fetch-site", "cross-site")
            .send()
            .await
            .expect("GET /users");
        assert_eq!(refused.status(), 403, "{flags:?}");
        assert!(
            refused
                .headers()
                .get("access-control-allow-origin")
                .is_none()
        );
    }
}

async fn get(server: &Client, path: &str, if_none_match: Option<&str>) -> reqwest::Response {
    let mut request = server.client.get(server.url(path));
    if let Some(tags) = if_none_match {
        request = request.header(IF_NONE_MATCH, tags);
    }
    request.send().await.expect("GET")
}

async fn etag_of(server: &Client, path: &str) -> String {
    let response = get(server, path, None).await;
    assert_eq!(response.status(), 200, "{path}");
    header(response.headers(), ETAG.as_str()).to_owned()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("a {name} header"))
        .to_str()
        .expect("an ASCII header")
}
