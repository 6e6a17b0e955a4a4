//! Properties of the whole server over a real socket, checked with proptest on
//! generated input: any name the rules accept comes back byte for byte in every
//! reply, event and page, and no name breaks the SSE framing or the HTML; any
//! `Last-Event-ID` gives a well-framed stream that resumes or starts afresh; no
//! request, well-formed or not, gets a 5xx or panics the server, and every
//! refusal is a JSON sentence that changes nothing.
//!
//! Each property runs against one server on a runtime of its own, whose worker
//! threads carry the property's name: tokio swallows a panic in a spawned task,
//! so a panic hook records those threads' panics and the property fails on them.

mod common;

use std::fmt;
use std::sync::{Mutex, Once, PoisonError};
use std::time::Duration;

use common::{Joined, PATIENCE, Sse, TestServer, User};
use eventsource_stream::Event;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::string::string_regex;
use proptest::test_runner::TestRunner;
use reqwest::Method;
use reqwest::header::{ALLOW, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Cases per property: together they run in a few seconds in a debug build.
const NAME_CASES: u32 = 64;
const RESUME_CASES: u32 = 64;
const REQUEST_CASES: u32 = 96;
const RAW_HEAD_CASES: u32 = 128;

/// The flags of every property's server. Nobody times out during a run, so a
/// case that fails halfway leaves the lobby steady for the cases that shrink it.
const STEADY: [&str; 4] = ["--join-timeout", "10m", "--grace", "10m"];

// ---- names ----

#[test]
fn any_name_the_rules_accept_comes_back_byte_for_byte_everywhere_and_any_other_is_refused() {
    let lab = Lab::start("names");
    let nobody = lab.block_on(lab.server.get_text("/"));
    let skeleton = read_page(&nobody).expect("the empty page reads").skeleton;

    lab.check(
        NAME_CASES,
        vec((raw_name(), encoding()), 1..=4),
        async |server: &TestServer, names: Vec<(String, Encoding)>| {
            names_come_back_everywhere(server, &skeleton, names).await;
        },
    );

    lab.finish();
}

/// Joins each name (with a watcher's stream open), then checks the join replies,
/// GET /users, the page, a fresh snapshot, and every frame of the watcher's
/// stream, byte for byte, until everyone has left and the streams have ended.
async fn names_come_back_everywhere(
    server: &TestServer,
    skeleton: &str,
    names: Vec<(String, Encoding)>,
) {
    let before = server.users().await;
    let watcher = server.join("watcher").await;
    let mut watching = Frames::open(server.open_events(&watcher.token, None).await);
    let mut online = [before.clone(), vec![watcher.user()]].concat();
    assert_eq!(watching.next_event().await.users(), online);

    let mut joined: Vec<Joined> = Vec::new();
    for (raw, encoding) in &names {
        let response = join_as(server, raw, *encoding).await;
        match accepted_form(raw) {
            Some(name) => {
                assert_eq!(
                    response.status(),
                    201,
                    "{raw:?} ({encoding:?}) is a valid name"
                );
                let reply: Joined = response.json().await.expect("a join reply");
                assert_eq!(reply.name, name, "the join reply's name, for {raw:?}");
                assert_eq!(reply.users, online, "the join reply's users");
                online.push(reply.user());
                joined.push(reply);
            }
            None => {
                let status = response.status().as_u16();
                let body = response.bytes().await.expect("a refusal's body");
                assert_eq!(status, 422, "{raw:?} ({encoding:?}) breaks the name rules");
                if let Err(problem) = error_body("application/json", &body) {
                    panic!("refusing {raw:?}: {problem}");
                }
            }
        }
        assert_eq!(server.users().await, online, "GET /users after {raw:?}");
    }

    let page = read_page(&server.get_text("/").await).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(page.users, online, "the users on the page");
    assert_eq!(page.count, online.len().to_string(), "#count");
    assert_eq!(page.skeleton, skeleton, "the page around the list");

    let mut late = Frames::open(server.open_events(&watcher.token, None).await);
    assert_eq!(late.next_event().await.users(), online, "a later snapshot");

    for someone in &joined {
        assert_eq!(server.leave(&someone.token).await, 204);
    }
    assert_eq!(server.leave(&watcher.token).await, 204);
    assert_eq!(server.users().await, before);

    let gone = |who: &Joined| ("disconnect_user".to_owned(), who.user());
    let mut expected: Vec<(String, User)> = joined
        .iter()
        .map(|who| ("new_user".to_owned(), who.user()))
        .collect();
    expected.extend(joined.iter().map(gone));
    expected.push(gone(&watcher));
    assert_eq!(
        changes(&watching.rest().await),
        expected,
        "the first stream"
    );
    let later: Vec<_> = joined.iter().map(gone).chain([gone(&watcher)]).collect();
    assert_eq!(changes(&late.rest().await), later, "the later stream");
}

/// The README's name rules, as this file reads them: whitespace trimmed at both
/// ends, then 1 to 32 characters (scalar values), none a control character.
/// `Some` holds what must come back; `None` means the name must be refused.
fn accepted_form(raw: &str) -> Option<&str> {
    let name = raw.trim();
    let length = name.chars().count();
    ((1..=32).contains(&length) && !name.chars().any(char::is_control)).then_some(name)
}

/// How a name goes to POST /join: the README takes both.
#[derive(Debug, Clone, Copy)]
enum Encoding {
    Json,
    Form,
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![Just(Encoding::Json), Just(Encoding::Form)]
}

async fn join_as(server: &TestServer, name: &str, encoding: Encoding) -> reqwest::Response {
    match encoding {
        Encoding::Json => server.post_join(name).await,
        Encoding::Form => server
            .client
            .post(server.url("/join"))
            .form(&[("name", name)])
            .send()
            .await
            .expect("POST /join"),
    }
}

/// Text that has broken escaping, framing or counting somewhere: markup and
/// entities, JSON and SSE syntax, line and paragraph separators, multi-byte
/// and combining text, invisible and bidi characters.
const HARD_PIECES: &[&str] = &[
    "\"",
    "'",
    "\\",
    "\\n",
    "\\u2028",
    "<script>",
    "</script>",
    "<b>",
    "&amp;",
    "&lt;",
    "&#39;",
    "&",
    "</div>",
    "</li>",
    "</ul>",
    "<!--",
    "]]>",
    "\u{2028}",
    "\u{2029}",
    "\u{200b}",
    "\u{200d}",
    "\u{feff}",
    "\u{202e}",
    "\u{fffd}",
    "\u{10ffff}",
    "🦀",
    "👩‍👩‍👧",
    "🇯🇵",
    "𝕏",
    "山田",
    "名",
    "e\u{301}",
    "\u{301}",
    "ñ",
    "data: x",
    "id: 5",
    "event: y",
    "retry: 0",
    ": comment",
    "{\"users\":[]}",
    "%0A",
    "+",
    "=",
    "name=x",
    " ",
    "\u{a0}",
    "\u{3000}",
];

/// Control characters: a name holding one inside must be refused.
const CONTROLS: &[char] = &[
    '\0', '\t', '\n', '\r', '\u{b}', '\u{c}', '\u{1b}', '\u{7f}', '\u{80}', '\u{85}', '\u{9b}',
];

/// Whitespace a name may be padded with, trimmed away (two are also controls).
const PADDING: &[&str] = &[
    " ", "  ", "\t", "\n", "\r\n", "\u{85}", "\u{a0}", "\u{2028}", "\u{3000}",
];

fn raw_name() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => select(HARD_PIECES).prop_map(str::to_owned),
        3 => printable().prop_map(String::from),
        1 => select(CONTROLS).prop_map(String::from),
    ];
    let padding = || vec(select(PADDING), 0..=2).prop_map(|pieces| pieces.concat());
    let composed = (padding(), vec(piece, 1..=5), padding())
        .prop_map(|(left, core, right)| format!("{left}{}{right}", core.concat()));
    let visible = || printable().prop_filter("not whitespace", |c| !c.is_whitespace());
    prop_oneof![
        6 => composed,
        1 => vec(visible(), 32).prop_map(String::from_iter),
        1 => vec(visible(), 33).prop_map(String::from_iter),
    ]
}

fn printable() -> impl Strategy<Value = char> {
    any::<char>().prop_filter("not a control character", |c| !c.is_control())
}

// ---- Last-Event-ID ----

#[test]
fn any_last_event_id_gives_a_well_framed_stream_that_resumes_or_starts_afresh() {
    let lab = Lab::start("resume");

    lab.check(
        RESUME_CASES,
        resume(),
        async |server: &TestServer, resume| {
            resumes_or_starts_afresh(server, resume).await;
        },
    );

    lab.finish();
}

/// A stream request for a valid token, with a generated `Last-Event-ID` and,
/// at times, extra headers or bytes (a head of up to 8 KiB and 100 headers).
#[derive(Debug, Clone)]
struct Resume {
    last_event_id: Option<Raw>,
    bearer: bool,
    extra_headers: usize,
    padding: usize,
}

/// Opens the stream, leaves, and reads the whole stream: after `retry:` comes a
/// replay of exactly the events after the id asked for (every id of this test's
/// server is still held), or, when the id is not a number or is above the latest,
/// a fresh snapshot; then the resumer's own `disconnect_user`, then the end.
async fn resumes_or_starts_afresh(server: &TestServer, resume: Resume) {
    let resumer = server.join("resumer").await;
    let online = server.users().await;
    let mut request = server
        .client
        .get(server.url("/events"))
        .timeout(Duration::from_secs(3600));
    request = if resume.bearer {
        request.bearer_auth(&resumer.token)
    } else {
        request.query(&[("token", resumer.token.as_str())])
    };
    if let Some(value) = &resume.last_event_id {
        let value = HeaderValue::from_bytes(&value.0).expect("the strategy makes header bytes");
        request = request.header("last-event-id", value);
    }
    for index in 0..resume.extra_headers {
        request = request.header(format!("x-extra-{index}"), "1");
    }
    if resume.padding > 0 {
        request = request.header("x-padding", "p".repeat(resume.padding));
    }

    let stream = Frames::open(request.send().await.expect("GET /events"));
    assert_eq!(server.leave(&resumer.token).await, 204);
    let frames = stream.rest().await;

    let (own, start) = frames
        .split_last()
        .expect("the resumer's own disconnect_user");
    assert_eq!(own.change(), ("disconnect_user".to_owned(), resumer.user()));
    for pair in frames.windows(2) {
        assert_eq!(pair[1].id, pair[0].id + 1, "ids run on with no gap");
    }
    let latest = own.id - 1;
    let asked = resume
        .last_event_id
        .as_ref()
        .and_then(|value| std::str::from_utf8(&value.0).ok())
        .and_then(|text| text.trim().parse::<u64>().ok());
    match asked {
        Some(after) if after <= latest => {
            assert_eq!(frames[0].id, after + 1, "the replay starts after {after}");
            for frame in start {
                // A join or a leave, never a snapshot: `change` checks.
                let _ = frame.change();
            }
            if after < latest {
                let last = start.last().expect("a replay of at least one event");
                assert_eq!(last.change(), ("new_user".to_owned(), resumer.user()));
            }
        }
        _ => {
            assert_eq!(start.len(), 1, "a fresh start is one snapshot: {start:?}");
            assert_eq!(
                start[0].id, latest,
                "the snapshot's id is the latest event's"
            );
            assert_eq!(start[0].users(), online);
        }
    }
}

/// Ids that are numbers, held or not, and text that only looks like one.
const ODD_EVENT_IDS: &[&str] = &[
    "",
    " ",
    "-1",
    "-0",
    "+3",
    "0",
    "00",
    "007",
    "1e3",
    "0x10",
    "3.0",
    "4 5",
    " 4 ",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999999",
    "٣",
    "３",
    "NaN",
    "null",
];

fn resume() -> impl Strategy<Value = Resume> {
    let last_event_id = prop_oneof![
        1 => Just(None),
        3 => (0u64..200).prop_map(|id| Some(Raw::from(id.to_string()))),
        1 => any::<u64>().prop_map(|id| Some(Raw::from(id.to_string()))),
        1 => any::<i64>().prop_map(|id| Some(Raw::from(id.to_string()))),
        2 => select(ODD_EVENT_IDS).prop_map(|id| Some(Raw::from(id))),
        2 => header_bytes().prop_map(Some),
    ];
    // Up to the largest head lobby takes (8 KiB): a larger one is refused
    // with 431, which `a_request_head_over_8_kib_is_refused_with_431` holds.
    let padding = prop_oneof![4 => Just(0usize), 1 => 6_000usize..7_000];
    (last_event_id, any::<bool>(), 0usize..=40, padding).prop_map(
        |(last_event_id, bearer, extra_headers, padding)| Resume {
            last_event_id,
            bearer,
            extra_headers,
            padding,
        },
    )
}

// ---- any request to any route ----

#[test]
fn no_request_gets_a_5xx_and_every_refusal_is_a_json_sentence_that_changes_nothing() {
    let lab = Lab::start("requests");

    lab.check(
        REQUEST_CASES,
        vec(request(), 1..=6),
        async |server: &TestServer, requests: Vec<Fuzzed>| {
            no_request_fails_or_changes_anything(server, requests).await;
        },
    );

    lab.finish();
}

/// Sends each request while an onlooker watches. A request that joins (a
/// generated body can hold a valid name) is left at once; anything else must
/// change nothing: GET /users stays the same after every request, and the
/// onlooker's whole stream holds only the joins and leaves of those joiners.
async fn no_request_fails_or_changes_anything(server: &TestServer, requests: Vec<Fuzzed>) {
    let before = server.users().await;
    let onlooker = server.join("onlooker").await;
    let mut watching = Frames::open(server.open_events(&onlooker.token, None).await);
    let online = [before.clone(), vec![onlooker.user()]].concat();
    assert_eq!(watching.next_event().await.users(), online);

    let mut expected = Vec::new();
    for request in &requests {
        let response = send(server, request).await;
        let status = response.status().as_u16();
        let path = response.url().path().to_owned();
        let headers = response.headers().clone();
        if header(&headers, CONTENT_TYPE.as_str()) == "text/event-stream" {
            // A watcher's stream, which changes nothing; dropped unread.
            assert!(offers_no_token(request), "a stream opened for {request:?}");
            assert_eq!((status, path.as_str()), (200, "/events"), "{request:?}");
            continue;
        }
        let body = tokio::time::timeout(PATIENCE, response.bytes())
            .await
            .unwrap_or_else(|_| panic!("no whole body within {PATIENCE:?} for {request:?}"))
            .expect("a body");
        if status == 201 {
            // Leave before checking anything, so a failure leaves the lobby as it was.
            let joined: Joined = serde_json::from_slice(&body).expect("a join reply");
            assert_eq!(server.leave(&joined.token).await, 204);
            expected.push(("new_user".to_owned(), joined.user()));
            expected.push(("disconnect_user".to_owned(), joined.user()));
        }

        if let Err(problem) = check_answer(request.method, &path, status, &headers, &body) {
            panic!("{request:?} on {path}: {problem}");
        }
        assert_eq!(server.users().await, online, "GET /users after {request:?}");
    }

    assert_eq!(server.leave(&onlooker.token).await, 204);
    expected.push(("disconnect_user".to_owned(), onlooker.user()));
    assert_eq!(
        changes(&watching.rest().await),
        expected,
        "only joins went out"
    );
    assert_eq!(server.users().await, before);
    assert_eq!(server.get_text("/healthz").await, r#"{"status":"ok"}"#);
}

/// Whether `request` is GET /events with no token in any form: a watcher's
/// stream, the one stream a generated request may open.
fn offers_no_token(request: &Fuzzed) -> bool {
    let in_query = request.query.as_deref().is_some_and(|query| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .map_or(true, |pairs| pairs.iter().any(|(key, _)| key == "token"))
    });
    let in_header = request
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("authorization"));
    matches!(request.method, "GET" | "HEAD") && request.path == "/events" && !in_query && !in_header
}

/// Whether an answer is one the README allows: never a 5xx; 404 off the
/// routes; 405 with `Allow` for a method a route does not take; on a route,
/// one of the statuses it documents; and every 4xx (bar a HEAD's, which has
/// no body) a JSON `{"error": "<a sentence>"}`.
fn check_answer(
    method: &str,
    path: &str,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    if !(200..500).contains(&status) {
        return Err(format!("status {status}"));
    }
    match route(path) {
        None if status != 404 => {
            return Err(format!("{status} where nothing is served, not 404"));
        }
        None => {}
        Some((methods, _)) if !methods.contains(&method) => {
            if status != 405 {
                return Err(format!(
                    "{status} for a method the route does not take, not 405"
                ));
            }
            if !headers.contains_key(ALLOW) {
                return Err("405 without Allow".to_owned());
            }
        }
        Some((_, statuses)) if !statuses.contains(&status) => {
            return Err(format!("{status}, not one of {statuses:?}"));
        }
        Some(_) => {}
    }
    if status >= 400 && method != "HEAD" {
        error_body(header(headers, CONTENT_TYPE.as_str()), body)?;
    }
    Ok(())
}

/// The methods a path takes and the statuses it may answer them with (for
/// the generated requests here), or `None` where lobby serves nothing.
fn route(path: &str) -> Option<(&'static [&'static str], &'static [u16])> {
    const GET: &[&str] = &["GET", "HEAD"];
    match path {
        "/"
        | "/users"
        | "/healthz"
        | "/static/app.js"
        | "/lobby.js"
        | "/lobby.d.ts"
        | "/static/style.css"
        | "/static/favicon.svg" => Some((GET, &[200])),
        // A generated token is never one that was handed out.
        "/events" => Some((GET, &[400, 401])),
        "/join" => Some((&["POST"], &[201, 400, 413, 415, 422])),
        "/leave" => Some((&["POST"], &[400, 401, 413, 415])),
        _ => None,
    }
}

/// One generated request. Header values and bodies are bytes, not all UTF-8.
#[derive(Debug, Clone)]
struct Fuzzed {
    method: &'static str,
    path: &'static str,
    query: Option<String>,
    headers: Vec<(String, Raw)>,
    body: Option<Raw>,
    chunked: bool,
}

async fn send(server: &TestServer, request: &Fuzzed) -> reqwest::Response {
    let method = Method::from_bytes(request.method.as_bytes()).expect("a method token");
    let mut url = server.url(request.path);
    if let Some(query) = &request.query {
        url = format!("{url}?{query}");
    }
    let mut builder = server.client.request(method, url);
    for (name, value) in &request.headers {
        let value = HeaderValue::from_bytes(&value.0).expect("the strategy makes header bytes");
        builder = builder.header(name.as_str(), value);
    }
    if let Some(body) = &request.body {
        builder = if request.chunked {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
                .0
                .chunks(1000)
                .map(|chunk| Ok(chunk.to_vec()))
                .collect();
            builder.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
        } else {
            builder.body(body.0.clone())
        };
    }
    builder
        .send()
        .await
        .unwrap_or_else(|err| panic!("no answer to {request:?}: {err:?}"))
}

const ROUTES: &[&str] = &[
    "/",
    "/join",
    "/leave",
    "/events",
    "/users",
    "/healthz",
    "/static/app.js",
    "/lobby.js",
    "/lobby.d.ts",
    "/static/style.css",
    "/static/favicon.svg",
];

const ODD_PATHS: &[&str] = &[
    "/join/",
    "/JOIN",
    "//join",
    "/events/",
    "/%6Aoin",
    "/static/",
    "/static/../Cargo.toml",
    "/%2e%2e/users",
    "/users%00",
    "/é",
    "/%ff%fe",
    "/*",
    "/index.html",
];

const ODD_QUERIES: &[&str] = &[
    "",
    "token",
    "token=",
    "token=&token=",
    "token=a&token=b",
    "token=%ff%fe",
    "token=%00",
    "token=%zz",
    "token=%",
    "=&=&",
    "&&&",
    "token=+++",
    "token=é",
    "token[]=x",
    "x=1&token=abc",
    "token=0000000000000000000000000000000000000000000000000000000000000000",
];

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "application/json;",
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=latin1",
    "text/plain",
    "text/plain;charset=UTF-8",
    "multipart/form-data; boundary=x",
    "application/xml",
    ";",
    "",
];

const AUTHORIZATIONS: &[&str] = &[
    "Bearer x",
    "Bearer",
    "Bearer ",
    "bearer abc",
    "BEARER abc",
    "Bearer a b",
    "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
    "Token abc",
    "",
    "Bearer 0000000000000000000000000000000000000000000000000000000000000000",
];

/// Bodies that have tripped parsers: duplicate or odd fields, a lone surrogate,
/// a byte-order mark, trailing bytes, bad percent escapes, invalid UTF-8.
const ODD_BODIES: &[&[u8]] = &[
    br#"{"name":"a","name":"b"}"#,
    br#"{"name":"\ud800"}"#,
    br#"{"name":"\u0000"}"#,
    b"\xef\xbb\xbf{\"name\":\"bom\"}",
    br#"{"name":"a"} trailing"#,
    br#"{"name":null}"#,
    br#"{"name":["a"]}"#,
    br#"{"Name":"a"}"#,
    b"{\"name\":\"\xff\xfe\"}",
    b"name=%ff%fe",
    b"name=%",
    b"name=a&name=b",
    b"name",
    b"=",
    b"&name=a",
    b"name=a%00b",
    b"token=x",
    b"token=a&token=b",
    b"null",
    b"[]",
];

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "BREW", "get",
];

fn request() -> impl Strategy<Value = Fuzzed> {
    // Mostly a route with its own method, so that most requests reach a handler.
    let path = prop_oneof![
        4 => Just("/join"),
        3 => Just("/leave"),
        3 => Just("/events"),
        3 => select(ROUTES),
        2 => select(ODD_PATHS),
    ];
    let path_and_method = path.prop_flat_map(|path| {
        let own = route(path).map_or("GET", |(methods, _)| methods[0]);
        (
            Just(path),
            prop_oneof![3 => Just(own), 1 => select(METHODS)],
        )
    });
    let query = prop_oneof![
        3 => Just(None),
        2 => string_regex("[a-z0-9=&%+;._~-]{0,24}").expect("a regex").prop_map(Some),
        2 => select(ODD_QUERIES).prop_map(|query| Some(query.to_owned())),
    ];
    let authorization = prop_oneof![
        3 => Just(None),
        2 => select(AUTHORIZATIONS).prop_map(|value| Some(Raw::from(value))),
        1 => header_bytes().prop_map(|token| Some(Raw([b"Bearer ".as_slice(), &token.0].concat()))),
    ];
    let last_event_id = prop_oneof![
        3 => Just(None),
        1 => select(ODD_EVENT_IDS).prop_map(|value| Some(Raw::from(value))),
        1 => header_bytes().prop_map(Some),
    ];
    let extra = vec(
        (
            string_regex("x-[a-z]{1,8}").expect("a regex"),
            header_bytes(),
        ),
        0..=3,
    );
    (
        path_and_method,
        query,
        payload(),
        authorization,
        last_event_id,
        extra,
        any::<bool>(),
    )
        .prop_map(
            |(
                (path, method),
                query,
                (content_type, body),
                authorization,
                last_event_id,
                extra,
                chunked,
            )| {
                let named = [
                    ("content-type", content_type),
                    ("authorization", authorization),
                    ("last-event-id", last_event_id),
                ];
                let headers = named
                    .into_iter()
                    .filter_map(|(name, value)| Some((name.to_owned(), value?)))
                    .chain(extra)
                    .collect();
                Fuzzed {
                    method,
                    path,
                    query,
                    headers,
                    body,
                    chunked,
                }
            },
        )
}

const JSON_TYPES: &[&str] = &[
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "application/json;",
];

const FORM_TYPES: &[&str] = &[
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=latin1",
];

const TEXT_TYPES: &[&str] = &["text/plain", "text/plain;charset=UTF-8"];

/// A content type and a body: mostly a body of that type, sometimes any body
/// under any type (or none).
fn payload() -> impl Strategy<Value = (Option<Raw>, Option<Raw>)> {
    let typed = |types: &'static [&'static str], body: BoxedStrategy<Raw>| {
        (select(types), body)
            .prop_map(|(content_type, body)| (Some(Raw::from(content_type)), Some(body)))
    };
    let token = prop_oneof![
        string_regex("[0-9a-f]{64}")
            .expect("a regex")
            .prop_map(Raw::from),
        header_bytes(),
    ];
    let content_type = prop_oneof![
        1 => Just(None),
        4 => select(CONTENT_TYPES).prop_map(|value| Some(Raw::from(value))),
        1 => header_bytes().prop_map(Some),
    ];
    let body = prop_oneof![
        1 => Just(None),
        3 => any_body().prop_map(Some),
    ];
    prop_oneof![
        3 => typed(JSON_TYPES, prop_oneof![4 => json_body(), 1 => sized_json()].boxed()),
        2 => typed(FORM_TYPES, form_body().boxed()),
        1 => typed(TEXT_TYPES, token.boxed()),
        3 => (content_type, body),
    ]
}

fn json_body() -> impl Strategy<Value = Raw> {
    let name = prop_oneof![
        3 => raw_name().prop_map(Value::from),
        1 => json_value(),
    ];
    prop_oneof![
        3 => name.prop_map(|name| serde_json::json!({ "name": name })),
        1 => json_value(),
    ]
    .prop_map(|value| Raw(value.to_string().into_bytes()))
}

fn form_body() -> impl Strategy<Value = Raw> {
    prop_oneof![
        3 => raw_name().prop_map(|name| {
            serde_urlencoded::to_string([("name", name)]).expect("a form")
        }),
        1 => string_regex("[a-z=&%+0-9A-F]{0,30}").expect("a regex"),
        1 => string_regex("token=[0-9a-f]{64}").expect("a regex"),
    ]
    .prop_map(Raw::from)
}

/// Any body: JSON, a form, odd or random bytes, bodies about 4 KiB, deep nesting.
fn any_body() -> impl Strategy<Value = Raw> {
    prop_oneof![
        2 => json_body(),
        2 => form_body(),
        2 => select(ODD_BODIES).prop_map(|body| Raw(body.to_vec())),
        1 => vec(any::<u8>(), 0..64).prop_map(Raw),
        1 => sized_json(),
        1 => (100usize..3_000).prop_map(|depth| Raw::from("[".repeat(depth))),
    ]
}

/// A valid join of about 4 KiB, on either side of the limit.
fn sized_json() -> impl Strategy<Value = Raw> {
    select(&[3_000usize, 4_095, 4_096, 4_097, 6_000][..]).prop_map(|length| {
        let pad = "x".repeat(length - r#"{"name":"alice","pad":""}"#.len());
        Raw::from(format!(r#"{{"name":"alice","pad":"{pad}"}}"#))
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        raw_name().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::from),
            vec(
                (select(&["name", "nome", "token", "", " name"][..]), inner),
                0..4
            )
            .prop_map(|fields| {
                Value::Object(
                    fields
                        .into_iter()
                        .map(|(key, value)| (key.to_owned(), value))
                        .collect(),
                )
            }),
        ]
    })
}

/// Bytes a header value may hold on the wire: tab, visible ASCII, and the
/// obs-text bytes above 0x7f, which are not UTF-8 on their own.
fn header_bytes() -> impl Strategy<Value = Raw> {
    vec(
        prop_oneof![4 => 0x20u8..=0x7e, 2 => 0x80u8..=0xff, 1 => Just(b'\t')],
        0..=24,
    )
    .prop_map(Raw)
}

// ---- raw request heads ----

#[test]
fn no_raw_request_head_gets_a_5xx_or_stops_the_server_answering() {
    let lab = Lab::start("raw-heads");

    lab.check(
        RAW_HEAD_CASES,
        raw_head(),
        async |server: &TestServer, head| {
            let before = server.users().await;
            let then = if answerable(&head.0) {
                Then::Wait
            } else {
                Then::Close
            };
            let reply = exchange_raw(server, &head.0, then).await;
            match raw_reply(&reply) {
                Err(problem) => panic!("{head:?}: {problem}"),
                Ok(None) if then == Then::Wait => panic!("no answer to the whole head {head:?}"),
                Ok(_) => {}
            }
            assert_eq!(server.get_text("/healthz").await, r#"{"status":"ok"}"#);
            assert_eq!(server.users().await, before);
        },
    );

    lab.finish();
}

#[test]
fn hand_made_malformed_heads_get_an_answer_or_a_close_and_never_stop_the_server() {
    let lab = Lab::start("hand-made-heads");
    let many_headers = |count: usize| {
        let mut head = b"GET /events?token=abc HTTP/1.1\r\n".to_vec();
        for index in 0..count {
            head.extend_from_slice(format!("X-Header-{index}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        head
    };
    let long_header = [
        b"GET /events?token=abc HTTP/1.1\r\nX-Long: ".as_slice(),
        &[b'a'; 9_000],
        b"\r\n\r\n",
    ]
    .concat();
    // Some(status): a whole head the router answers as the README says. None: a
    // malformed one, which gets any answer under 500 if it is whole (hyper's
    // own, not JSON), and may get none if it is unfinished.
    let heads: Vec<(Vec<u8>, Option<u16>)> = vec![
        (b"GET /healthz HTTP/1.1\r\n\r\n".to_vec(), Some(200)),
        (
            b"GET /events?token=abc HTTP/1.1\r\nLast-Event-ID: 99999999999999999999999\r\n\r\n"
                .to_vec(),
            Some(401),
        ),
        (
            b"GET /events?token=abc HTTP/1.1\r\nLast-Event-ID: -1\r\n\r\n".to_vec(),
            Some(401),
        ),
        (
            b"GET /events HTTP/1.1\r\nAuthorization: Bearer \xff\xfe\r\nLast-Event-ID: \xff\r\n\r\n"
                .to_vec(),
            Some(401),
        ),
        (b"GET /events?token=abc&token=def HTTP/1.1\r\n\r\n".to_vec(), Some(400)),
        (b"GET /events?token=%zz%ff HTTP/1.1\r\n\r\n".to_vec(), Some(401)),
        (b"GET /events?token=abc HTTP/1.1\n\n".to_vec(), Some(401)),
        (many_headers(33), Some(401)),
        // Over 8 KiB: hyper's own 431, with no JSON body.
        (long_header, None),
        (
            b"GET /events?token=abc HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n".to_vec(),
            Some(401),
        ),
        (many_headers(200), None),
        (many_headers(5_000), None),
        (b"GET /events?token=\xff\xfe HTTP/1.1\r\n\r\n".to_vec(), None),
        (b"GET /events?token=abc HTTP/1.1\r\nBad Header: x\r\n\r\n".to_vec(), None),
        (b"GET /events?token=abc HTTP/1.1\r\nX: a\0b\r\n\r\n".to_vec(), None),
        (b"GET /events?token=abc HTTP/1.1\r\nLast-Event-ID: 5".to_vec(), None),
        (
            b"GET /events?token=abc HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n"
                .to_vec(),
            None,
        ),
        (
            b"POST /join HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"na"
                .to_vec(),
            None,
        ),
        (
            b"POST /join HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
                .to_vec(),
            None,
        ),
        (b"GARBAGE\r\n\r\n".to_vec(), None),
        (b"GET /events HTTP/2.0\r\n\r\n".to_vec(), None),
        // (The HTTP/2 preface is h2c's: tests/transport.rs holds it.)
        (b"\r\n\r\n".to_vec(), None),
        (b"\xff\xfe\xfd\r\n\r\n".to_vec(), None),
        (Vec::new(), None),
    ];

    lab.block_on(async {
        let server = &lab.server;
        let before = server.users().await;
        for (head, expected) in &heads {
            let then = if answerable(head) {
                Then::Wait
            } else {
                Then::Close
            };
            let reply = exchange_raw(server, head, then).await;
            let answer = raw_reply(&reply)
                .unwrap_or_else(|problem| panic!("{:?}: {problem}", Raw(head.clone())));
            if then == Then::Wait && answer.is_none() {
                panic!("no answer to the whole head {:?}", Raw(head.clone()));
            }
            if let (Some(expected), Some((status, content_type, body))) = (expected, answer) {
                assert_eq!(status, *expected, "{:?}", Raw(head.clone()));
                if status >= 400
                    && let Err(problem) = error_body(&content_type, &body)
                {
                    panic!("{:?}: {problem}", Raw(head.clone()));
                }
            }
            assert_eq!(server.get_text("/healthz").await, r#"{"status":"ok"}"#);
        }
        assert_eq!(server.users().await, before);
    });

    lab.finish();
}

/// A `Last-Event-ID` of bytes that are not UTF-8 (obs-text, which a header
/// may carry) is no id, so the stream starts afresh. (This used to tell
/// lobby's fast path from hyper's by the stream's framing; the framing no
/// longer tells them apart, and the rule holds on either.)
#[test]
fn a_last_event_id_of_bytes_that_are_not_utf8_starts_the_stream_afresh() {
    let lab = Lab::start("raw-stream");

    lab.block_on(async {
        let server = &lab.server;
        let alice = server.join("alice").await;
        let not_utf8 = HeaderValue::from_bytes(b"\xff\xfe").expect("obs-text is a header value");
        let response = server
            .client
            .get(server.url("/events"))
            .query(&[("token", alice.token.as_str())])
            .header("last-event-id", not_utf8)
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .expect("GET /events");
        let mut stream = Frames::open(response);
        let snapshot = stream.next_event().await;

        assert_eq!(server.leave(&alice.token).await, 204);
        let rest = stream.rest().await;
        assert_eq!(snapshot.users(), [alice.user()]);
        let [gone] = &rest[..] else {
            panic!("a snapshot, then a disconnect_user: {snapshot:?} then {rest:?}");
        };
        assert_eq!(gone.change(), ("disconnect_user".to_owned(), alice.user()));
    });

    lab.finish();
}

/// After sending a raw request: close the sending side at once, for a head
/// the server would otherwise wait on (part of one, or one promising a body),
/// or wait for the answer, for a whole head the server must answer. (Hyper
/// drops a connection that half-closes mid-request, answered or not.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    Close,
    Wait,
}

/// Sends `request` on a fresh connection and returns what came back before the
/// server closed, or until a whole answer came on a connection it keeps open.
/// A failed write or a reset counts as the server's answer: it may refuse a
/// head before reading all of it.
async fn exchange_raw(server: &TestServer, request: &[u8], then: Then) -> Vec<u8> {
    let addr = server.base.strip_prefix("http://").expect("an http URL");
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    let _ = socket.write_all(request).await;
    if then == Then::Close {
        let _ = socket.shutdown().await;
    }
    let mut reply = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, read_reply(&mut socket, request, &mut reply)).await;
    assert!(
        closed.is_ok(),
        "the server neither answered nor closed within {PATIENCE:?}: {:?}",
        Raw(request.to_vec())
    );
    reply
}

/// Reads until the server closes, or, on a connection it keeps open, until
/// `reply` holds a whole answer to `request`.
async fn read_reply(socket: &mut TcpStream, request: &[u8], reply: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    while !whole_reply(request, reply) {
        match socket.read(&mut chunk).await {
            Ok(read @ 1..) => reply.extend_from_slice(&chunk[..read]),
            _ => return,
        }
    }
}

/// Whether `reply` holds a whole final answer to `request`: its head (past
/// any interim 1xx), then the body the head gives: none to HEAD and for 204
/// or 304, Content-Length bytes, or chunks up to the last. A body that runs
/// until the server closes is never whole here, bar an event stream's (a
/// watcher's, for a request with no token), whose head is the whole answer.
fn whole_reply(request: &[u8], reply: &[u8]) -> bool {
    let mut rest = reply;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head)) = response.parse(rest) else {
            return false;
        };
        let status = response.code.unwrap_or_default();
        if (100..200).contains(&status) {
            rest = &rest[head..];
            continue;
        }
        let body = &rest[head..];
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|header| header.name.eq_ignore_ascii_case(name))
                .map(|header| header.value)
        };
        let stream = header("content-type").is_some_and(|kind| kind == b"text/event-stream");
        if request.starts_with(b"HEAD ") || status == 204 || status == 304 || stream {
            return true;
        }
        if let Some(length) = header("content-length") {
            return std::str::from_utf8(length)
                .ok()
                .and_then(|length| length.trim().parse::<usize>().ok())
                .is_some_and(|length| body.len() >= length);
        }
        return header("transfer-encoding")
            .is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"))
            && body.ends_with(b"0\r\n\r\n");
    }
}

/// What a raw reply says: nothing (the server closed without answering), or a
/// status under 500 with its content type and body (past any interim 1xx).
/// Anything else is an error.
fn raw_reply(reply: &[u8]) -> Result<Option<(u16, String, Vec<u8>)>, String> {
    let mut rest = reply;
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let parsed = response
            .parse(rest)
            .map_err(|err| format!("not an HTTP response ({err}): {:?}", Raw(reply.to_vec())))?;
        let httparse::Status::Complete(head) = parsed else {
            return Err(format!("a partial response: {:?}", Raw(reply.to_vec())));
        };
        let status = response.code.unwrap_or_default();
        if (100..200).contains(&status) {
            rest = &rest[head..];
            continue;
        }
        if !(200..500).contains(&status) {
            return Err(format!("status {status}: {:?}", Raw(reply.to_vec())));
        }
        let content_type = response
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case("content-type"))
            .map(|header| String::from_utf8_lossy(header.value).into_owned())
            .unwrap_or_default();
        return Ok(Some((status, content_type, rest[head..].to_vec())));
    }
    Ok(None)
}

const RAW_METHODS: &[&str] = &["GET", "GET", "GET", "POST", "HEAD", "CONNECT", "get"];

const RAW_TARGETS: &[&str] = &[
    "/events",
    "/events?token=",
    "/events?token=zzz",
    "/events?token=%ff",
    "/events?token=a&token=b",
    "/events?token=%00",
    "/users",
    "/join",
    "/",
    "*",
    "http://x/events?token=a",
];

const RAW_VERSIONS: &[&str] = &[
    "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0",
];

const RAW_HEADER_NAMES: &[&str] = &[
    "Last-Event-ID",
    "Last-Event-ID",
    "Authorization",
    "Host",
    "Connection",
    "Content-Type",
    "Content-Length",
    "Transfer-Encoding",
    "Expect",
    "X-Y",
];

const RAW_HEADER_VALUES: &[&[u8]] = &[
    b"Bearer ",
    b"Bearer \xff\xfe",
    b"Bearer abc",
    b"-1",
    b"18446744073709551616",
    b"99999999999999999999999",
    b"chunked",
    b"close",
    b"100-continue",
    b"0",
    b"5",
    b"\xff",
];

/// A change to a well-formed head, at a position given as a fraction of it.
#[derive(Debug, Clone)]
enum Mutation {
    Insert(prop::sample::Index, u8),
    Replace(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
}

/// A well-formed head (whose values need not be UTF-8), sometimes with many
/// headers or a body, and then zero to two byte-sized mutations.
fn raw_head() -> impl Strategy<Value = Raw> {
    let target = prop_oneof![
        5 => select(RAW_TARGETS).prop_map(|target| target.as_bytes().to_vec()),
        1 => header_bytes().prop_map(|bytes| {
            let bytes: Vec<u8> = bytes.0.into_iter().filter(|byte| *byte > b' ').collect();
            [b"/events?token=".as_slice(), &bytes].concat()
        }),
    ];
    let request_line = (select(RAW_METHODS), target, select(RAW_VERSIONS)).prop_map(
        |(method, target, version)| {
            [method.as_bytes(), b" ", &target, b" ", version.as_bytes()].concat()
        },
    );
    let value = prop_oneof![
        3 => header_bytes().prop_map(|value| value.0),
        1 => select(RAW_HEADER_VALUES).prop_map(<[u8]>::to_vec),
    ];
    let header = (select(RAW_HEADER_NAMES), value)
        .prop_map(|(name, value)| [name.as_bytes(), b": ", &value].concat());
    let burst =
        prop_oneof![6 => Just(0usize), 1 => 30usize..40, 1 => 90usize..120, 1 => Just(3_000)];
    let body = prop_oneof![4 => Just(Vec::new()), 1 => vec(any::<u8>(), 1..64)];
    let mutation = prop_oneof![
        2 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert(at, byte)),
        2 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Replace(at, byte)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
    ];
    let mutations = prop_oneof![
        3 => Just(Vec::new()),
        2 => vec(mutation.clone(), 1),
        1 => vec(mutation, 2),
    ];
    (
        request_line,
        vec(header, 0..=6),
        burst,
        body,
        any::<bool>(),
        mutations,
    )
        .prop_map(|(request_line, headers, burst, body, crlf, mutations)| {
            let newline: &[u8] = if crlf { b"\r\n" } else { b"\n" };
            let mut lines = vec![request_line];
            lines.extend(headers);
            lines.extend((0..burst).map(|index| format!("X-{index}: v").into_bytes()));
            let mut head = lines.join(newline);
            head.extend_from_slice(newline);
            head.extend_from_slice(newline);
            head.extend_from_slice(&body);
            for mutation in mutations {
                match mutation {
                    Mutation::Insert(at, byte) => head.insert(at.index(head.len() + 1), byte),
                    Mutation::Replace(at, byte) if !head.is_empty() => {
                        let at = at.index(head.len());
                        head[at] = byte;
                    }
                    Mutation::Replace(..) => {}
                    Mutation::Truncate(at) => head.truncate(at.index(head.len() + 1)),
                }
            }
            Raw(head)
        })
}

/// Whether the server can answer `request` without another byte: its head ends
/// (a blank line; past lobby's own parser, hyper reads a head until one comes,
/// however malformed what came before) and it names no header that promises a
/// body. Such a request must get an answer; any other may be dropped, once the
/// sending side is closed. So may HTTP/2's preface: lobby speaks HTTP/1.1 only.
fn answerable(request: &[u8]) -> bool {
    if request.starts_with(b"PRI * HTTP/2.0") {
        return false;
    }
    let start = request
        .iter()
        .position(|byte| !b"\r\n".contains(byte))
        .unwrap_or(request.len());
    let request = request[start..].to_ascii_lowercase();
    let has = |needle: &[u8]| request.windows(needle.len()).any(|window| window == needle);
    let ends = has(b"\n\n") || has(b"\n\r\n");
    ends && !has(b"content-length") && !has(b"transfer-encoding") && !has(b"expect")
}

// ---- the oracles can fail ----

#[test]
fn the_name_rules_as_this_file_reads_them_match_the_readme() {
    assert_eq!(accepted_form("  alice \t"), Some("alice"));
    assert_eq!(
        accepted_form("\u{3000}\n山田 太郎\u{2028}"),
        Some("山田 太郎")
    );
    assert_eq!(
        accepted_form(&"名".repeat(32)),
        Some("名".repeat(32).as_str())
    );
    assert_eq!(accepted_form(&"a".repeat(33)), None);
    assert_eq!(accepted_form(" \n\t "), None);
    assert_eq!(accepted_form("al\nice"), None);
    assert_eq!(accepted_form("al\u{85}ice"), None);
    assert_eq!(
        accepted_form("<script>\u{2028}</script>"),
        Some("<script>\u{2028}</script>")
    );
}

#[test]
fn the_frame_check_refuses_anything_a_name_could_break_a_frame_with() {
    let stream = |block: &str| format!("retry: 1000\n\n{block}\n\n").into_bytes();
    let name = |frame: Frame| frame.change().1.name;
    let good = r#"id: 1
event: new_user
data: {"id":"x","name":"a\nb"}"#;
    assert_eq!(one_frame(&stream(good)).map(name), Ok("a\nb".to_owned()));
    let retry_in_its_block = format!("retry: 1000\n{good}\n\n");
    assert_eq!(
        one_frame(retry_in_its_block.as_bytes()).map(name),
        Ok("a\nb".to_owned())
    );
    let after_a_comment = stream(&format!(":\n\n{good}"));
    assert_eq!(one_frame(&after_a_comment).map(name), Ok("a\nb".to_owned()));

    // Names as a server that forgot to escape them would write them: none
    // passes as the name it was.
    for careless in ["a\nb", "a\rb", "a\"}\ndata: x", "a\"}\nid: 5\nx: {\""] {
        let block =
            format!("id: 1\nevent: new_user\ndata: {{\"id\":\"x\",\"name\":\"{careless}\"}}");
        let read = one_frame(&stream(&block));
        assert!(
            read.as_ref()
                .map_or(true, |frame| frame.data["name"].as_str() != Some(careless)),
            "{careless:?} passed in {block:?}"
        );
    }
    for broken in [
        "id: 1\nevent: new_user\ndata: {\"id\":\"x\",\"name\":\"a\"}\ndata: x",
        "id: 1\nevent: y\ndata: {\"id\":\"x\",\"name\":\"a\"}",
        "event: new_user\ndata: {\"id\":\"x\",\"name\":\"a\"}",
        "id: -1\nevent: new_user\ndata: {\"id\":\"x\",\"name\":\"a\"}",
        "id: 1\nevent: new_user\ndata: {\"id\":\"x\",\"name\":",
        "",
    ] {
        assert!(one_frame(&stream(broken)).is_err(), "{broken:?}");
    }
    for broken in [
        b"retry: 1000\n\nid: 1\nevent: new_user\ndata: {\"id\":\"x\",\"name\":\"\xff\"}\n\n"
            .as_slice(),
        b"retry: 1000\n\nid: 1\nevent: new_user\ndata: {\"id\":\"x\",\"name\":\"a\"}\n",
        // A snapshot always carries retry: (only a resume that missed
        // nothing opens with its next event).
        b"id: 1\nevent: existing_users\ndata: {\"users\":[]}\n\n",
    ] {
        assert!(one_frame(broken).is_err(), "{:?}", Raw(broken.to_vec()));
    }
}

#[tokio::test]
async fn the_page_check_refuses_a_name_left_unescaped_or_markup_added() {
    let server = TestServer::start().await;
    let skeleton = read_page(&server.get_text("/").await)
        .expect("the empty page reads")
        .skeleton;
    let alice = server.join("a&b<i>\"c").await;

    let page = server.get_text("/").await;

    let read = read_page(&page).expect("the page reads");
    assert_eq!(read.users, [alice.user()]);
    assert_eq!(read.skeleton, skeleton);
    let escaped = "a&amp;b&lt;i&gt;&quot;c";
    assert!(page.contains(escaped), "{page}");
    for unescaped in [
        "a&b&lt;i&gt;&quot;c",
        "a&amp;b<i>&quot;c",
        "a&amp;b&lt;i&gt;\"c",
    ] {
        assert!(
            read_page(&page.replace(escaped, unescaped)).is_err(),
            "{unescaped}"
        );
    }
    let added = read_page(&page.replace("<main>", "<main><script>")).expect("still reads");
    assert_ne!(added.skeleton, skeleton);
}

#[test]
fn the_error_check_refuses_what_is_not_a_json_sentence() {
    assert!(error_body("application/json", br#"{"error":"Do this."}"#).is_ok());
    for (content_type, body) in [
        ("text/plain", br#"{"error":"Do this."}"#.as_slice()),
        ("application/json", br#"{"error":""}"#),
        ("application/json", br#"{"error":"nope"}"#),
        ("application/json", br#"{"error":"Do this.","token":"x"}"#),
        ("application/json", br#"{"error":1}"#),
        ("application/json", b"[]"),
        ("application/json", b""),
    ] {
        assert!(
            error_body(content_type, body).is_err(),
            "{content_type} {body:?}"
        );
    }
}

#[test]
fn the_answer_check_holds_each_route_to_its_documented_statuses() {
    let json = |allow: bool| {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if allow {
            headers.insert(ALLOW, HeaderValue::from_static("POST"));
        }
        headers
    };
    let error = br#"{"error":"Do this."}"#.as_slice();
    assert!(check_answer("PUT", "/join", 405, &json(true), error).is_ok());
    assert!(check_answer("GET", "/nowhere", 404, &json(false), error).is_ok());
    assert!(check_answer("GET", "/users", 500, &json(false), error).is_err());
    assert!(check_answer("GET", "/nowhere", 200, &json(false), b"").is_err());
    assert!(check_answer("PUT", "/join", 405, &json(false), error).is_err());
    assert!(check_answer("GET", "/events", 200, &json(false), b"").is_err());
    assert!(check_answer("POST", "/join", 400, &HeaderMap::new(), error).is_err());
    assert!(raw_reply(b"HTTP/1.1 500 Internal Server Error\r\n\r\n").is_err());
    assert!(raw_reply(b"garbage").is_err());
    assert!(raw_reply(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 500 Oops\r\n\r\n").is_err());
    assert!(matches!(
        raw_reply(b"HTTP/1.1 400 Bad Request\r\n\r\n"),
        Ok(Some((400, _, _)))
    ));
}

#[test]
fn the_panic_watch_sees_a_panic_in_a_server_task() {
    let lab = Lab::start("panic-watch");

    // This panic is on purpose: it is what the watch must see.
    let task = lab.block_on(async { tokio::spawn(async { panic!("a deliberate panic") }).await });

    assert!(task.is_err());
    assert_eq!(lab.panics().len(), 1, "{:?}", lab.panics());
}

// ---- the lab: a server, its runtime, and its panics ----

/// Threads of a property's runtime are named this, then the property.
const THREADS: &str = "lobby-property-";

/// `(thread, message)` of every panic on a property runtime's threads.
static SERVER_PANICS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// One server, on a runtime of its own, for every case of one property.
struct Lab {
    server: TestServer,
    runtime: tokio::runtime::Runtime,
    threads: String,
}

impl Lab {
    fn start(property: &str) -> Lab {
        watch_for_panics();
        let threads = format!("{THREADS}{property}");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(&threads)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let server = runtime.block_on(TestServer::with_args(&STEADY));
        Lab {
            server,
            runtime,
            threads,
        }
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Runs `case` on `cases` generated values, then fails on the server's
    /// panics or the smallest failing value proptest found.
    fn check<S: Strategy>(
        &self,
        cases: u32,
        strategy: S,
        case: impl AsyncFn(&TestServer, S::Value),
    ) {
        let mut runner = TestRunner::new(ProptestConfig {
            cases,
            failure_persistence: None,
            max_shrink_iters: 100,
            ..ProptestConfig::default()
        });
        let outcome = runner.run(&strategy, |value| {
            self.block_on(case(&self.server, value));
            Ok(())
        });
        let panics = self.panics();
        assert!(panics.is_empty(), "the server panicked: {panics:#?}");
        if let Err(failure) = outcome {
            panic!("{failure}");
        }
    }

    fn panics(&self) -> Vec<String> {
        panics_on(&self.threads)
    }

    /// Stops the server as SIGTERM does: it must stop cleanly, having never panicked.
    fn finish(self) {
        let Lab {
            server,
            runtime,
            threads,
        } = self;
        runtime.block_on(server.shutdown());
        let panics = panics_on(&threads);
        assert!(panics.is_empty(), "the server panicked: {panics:#?}");
    }
}

fn panics_on(threads: &str) -> Vec<String> {
    SERVER_PANICS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|(thread, _)| thread == threads)
        .map(|(_, message)| message.clone())
        .collect()
}

fn watch_for_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            if let Some(name) = thread.name().filter(|name| name.starts_with(THREADS)) {
                SERVER_PANICS
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((name.to_owned(), info.to_string()));
            }
            previous(info);
        }));
    });
}

// ---- reading a stream ----

/// An event stream read by the tests' one SSE reader (which checks that ids
/// rise), each event held to what lobby writes by [`frame_of`], and the
/// stream's bytes to [`wire_check`] once it has ended.
struct Frames {
    sse: Sse,
}

#[derive(Debug)]
struct Frame {
    id: u64,
    event: String,
    data: Value,
}

impl Frames {
    /// Checks that the response is a stream.
    fn open(response: reqwest::Response) -> Frames {
        assert_eq!(response.status(), 200, "GET /events");
        assert_eq!(
            header(response.headers(), CONTENT_TYPE.as_str()),
            "text/event-stream"
        );
        Frames {
            sse: Sse::keeping_bytes(response),
        }
    }

    async fn next_event(&mut self) -> Frame {
        self.next_event_or_end()
            .await
            .expect("an event, not the end")
    }

    /// The next event, or `None` once the server has ended the stream (when
    /// its bytes, all of them now, are checked too).
    async fn next_event_or_end(&mut self) -> Option<Frame> {
        let first = self.sse.last_id.is_none();
        let Some(event) = self.sse.event_or_end().await else {
            wire_check(&self.sse.wire()).unwrap_or_else(|err| panic!("{err}"));
            return None;
        };
        if !first {
            assert_eq!(event.retry, None, "retry: after the stream's start");
        }
        Some(frame_of(&event).unwrap_or_else(|err| panic!("{err}")))
    }

    /// Every event until the server ends the stream.
    async fn rest(mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next_event_or_end().await {
            frames.push(frame);
        }
        frames
    }
}

/// Holds one event, as the reader gives it, to what lobby writes: an id (the
/// reader has checked it is decimal), a kind lobby sends, and data that is
/// one `data:` line of JSON (the reader joins several with a newline, which
/// JSON on one line cannot hold). A name that broke out of its line would
/// leave data that is not JSON, or JSON with another name in it.
fn frame_of(event: &Event) -> Result<Frame, String> {
    if !["existing_users", "new_user", "disconnect_user"].contains(&event.event.as_str()) {
        return Err(format!("an unknown event {:?}: {event:?}", event.event));
    }
    if event.data.contains('\n') {
        return Err(format!("data on more than one line: {event:?}"));
    }
    Ok(Frame {
        id: event
            .id
            .parse()
            .map_err(|err| format!("the id {:?}: {err}", event.id))?,
        event: event.event.clone(),
        data: serde_json::from_str(&event.data)
            .map_err(|err| format!("the data is not JSON ({err}): {event:?}"))?,
    })
}

/// Holds a whole stream's bytes to what lobby writes beyond what a reader
/// shows: it opens with `retry:`, and has no CR (which a browser takes for a
/// line break, so one inside a name would split its line).
fn wire_check(wire: &[u8]) -> Result<(), String> {
    // `retry:` rides in the first block with a snapshot or a replay; a resume
    // that missed nothing has no block to carry it (a block of its own would
    // be an event with no data to some clients), so its first block is the
    // next event.
    let snapshot = wire.starts_with(b"id: ")
        && wire.split(|&b| b == b'\n').nth(1) == Some(b"event: existing_users");
    let resumed_with_nothing_missed = wire.starts_with(b"id: ") && !snapshot;
    if !wire.starts_with(b"retry: ") && !resumed_with_nothing_missed {
        return Err(format!(
            "a stream opens with retry:, not {:?}",
            Raw(wire.to_vec())
        ));
    }
    if wire.contains(&b'\r') {
        return Err(format!("a CR would split a line: {:?}", Raw(wire.to_vec())));
    }
    Ok(())
}

/// The one frame in `bytes`, read and checked as a stream's are.
fn one_frame(bytes: &[u8]) -> Result<Frame, String> {
    wire_check(bytes)?;
    match &common::events_in(bytes)?[..] {
        [event] => frame_of(event),
        other => Err(format!("{} events, not one", other.len())),
    }
}

impl Frame {
    /// The users of an `existing_users`, each exactly `{"id","name"}`.
    fn users(&self) -> Vec<User> {
        assert_eq!(self.event, "existing_users", "{self:?}");
        assert_eq!(keys(&self.data), ["users"], "{self:?}");
        let users = self.data["users"].as_array().expect("a list of users");
        users.iter().map(user_of).collect()
    }

    /// The kind and user of a `new_user` or `disconnect_user`.
    fn change(&self) -> (String, User) {
        assert_ne!(
            self.event, "existing_users",
            "a join or leave, not {self:?}"
        );
        (self.event.clone(), user_of(&self.data))
    }
}

fn changes(frames: &[Frame]) -> Vec<(String, User)> {
    frames.iter().map(Frame::change).collect()
}

fn user_of(value: &Value) -> User {
    assert_eq!(
        keys(value),
        ["id", "name"],
        "a user is exactly id and name: {value}"
    );
    serde_json::from_value(value.clone()).expect("a user")
}

// ---- reading the page ----

/// The page as far as names are concerned.
struct Page {
    /// The text of `#count`.
    count: String,
    /// `ul#users`, one `li` per user, its text unescaped.
    users: Vec<User>,
    /// The page with the list emptied and the count taken out: the same
    /// whoever is online, so no name changed anything outside the list.
    skeleton: String,
}

/// Reads the page strictly: `ul#users` holds nothing but `li` elements, each
/// with a `data-user-id` and text with no raw `<` or `"`, and no `&` that does
/// not start an entity (so the text is exactly the escaped name).
fn read_page(page: &str) -> Result<Page, String> {
    let count_start = find_after(page, 0, "<span id=\"count\">")?;
    let count_end = find_at(page, count_start, "</span>")?;
    let list_tag = find_at(page, count_end, "<ul id=\"users\"")?;
    let list_start = find_after(page, list_tag, ">")?;
    let list_end = find_at(page, list_start, "</ul>")?;

    let mut users = Vec::new();
    let mut rest = &page[list_start..list_end];
    while !rest.is_empty() {
        let tag_end = find_after(rest, 0, ">")?;
        let tag = &rest[..tag_end];
        if !tag.starts_with("<li ") {
            return Err(format!("not an li in #users: {tag:?}"));
        }
        let id_start = find_after(tag, 0, "data-user-id=\"")?;
        let id = &tag[id_start..find_at(tag, id_start, "\"")?];
        let text_end = find_at(rest, tag_end, "</li>")?;
        let text = &rest[tag_end..text_end];
        if text.contains(['<', '"']) {
            return Err(format!("raw markup in a name: {text:?}"));
        }
        users.push(User {
            id: id.to_owned(),
            name: unescape(text)?,
        });
        rest = &rest[text_end + "</li>".len()..];
    }
    Ok(Page {
        count: page[count_start..count_end].to_owned(),
        users,
        skeleton: [
            &page[..count_start],
            &page[count_end..list_start],
            &page[list_end..],
        ]
        .concat(),
    })
}

/// Where `needle` starts in `text`, at or after `from`.
fn find_at(text: &str, from: usize, needle: &str) -> Result<usize, String> {
    text[from..]
        .find(needle)
        .map(|at| from + at)
        .ok_or_else(|| format!("no {needle:?} in {:?}", &text[from..]))
}

/// Where `needle` ends in `text`, looking from `from`.
fn find_after(text: &str, from: usize, needle: &str) -> Result<usize, String> {
    find_at(text, from, needle).map(|at| at + needle.len())
}

/// HTML text with its character references replaced; a `&` that starts none is an error.
fn unescape(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let end = rest[at..]
            .find(';')
            .filter(|&end| end <= 10)
            .ok_or_else(|| format!("a bare & in {text:?}"))?;
        let reference = &rest[at + 1..at + end];
        let decoded = match reference {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => reference
                .strip_prefix("#x")
                .or_else(|| reference.strip_prefix("#X"))
                .map(|hex| u32::from_str_radix(hex, 16))
                .or_else(|| reference.strip_prefix('#').map(str::parse))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        out.push(decoded.ok_or_else(|| format!("&{reference}; in {text:?}"))?);
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

// ---- small helpers ----

/// Bytes that show as an escaped byte string, so a failing case reads well.
#[derive(Clone, PartialEq, Eq)]
struct Raw(Vec<u8>);

impl fmt::Debug for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

impl From<&str> for Raw {
    fn from(text: &str) -> Raw {
        Raw(text.as_bytes().to_vec())
    }
}

impl From<String> for Raw {
    fn from(text: String) -> Raw {
        Raw(text.into_bytes())
    }
}

/// Whether a refusal's body is `{"error": "<a sentence>"}` and nothing else.
fn error_body(content_type: &str, body: &[u8]) -> Result<(), String> {
    if !content_type.starts_with("application/json") {
        return Err(format!("an error as {content_type:?}, not JSON"));
    }
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        format!(
            "an error body that is not JSON ({err}): {:?}",
            Raw(body.to_vec())
        )
    })?;
    let Some(object) = value.as_object() else {
        return Err(format!("an error body that is not an object: {value}"));
    };
    let sentence = object
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let is_sentence =
        sentence.trim() == sentence && sentence.ends_with('.') && sentence.contains(' ');
    if object.len() != 1 || !is_sentence {
        return Err(format!("not {{\"error\": \"<a sentence>\"}}: {value}"));
    }
    Ok(())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
}

/// The keys of a JSON object, sorted.
fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .map(|object| object.keys().map(String::as_str).collect())
        .unwrap_or_default();
    keys.sort_unstable();
    keys
}
