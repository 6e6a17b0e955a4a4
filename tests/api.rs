//! The HTTP API, spoken over real HTTP to a real server the way curl and a
//! browser speak it: the page and its assets, POST /join in both body formats,
//! every error code (and that an error changes nothing), GET /events' refusals
//! and headers, POST /leave in its three forms, GET /users, GET /healthz, names
//! that look like markup, and tokens that never reach anyone but their owner.

mod common;

use std::time::Duration;

use common::{
    Sse, TestServer, UNKNOWN_TOKEN, User, assert_error, read_raw_until, user_in, users_in,
};
use reqwest::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde_json::{Value, json};

/// How long a negative check waits for an event that must not come.
const QUIET: Duration = Duration::from_millis(300);

/// Names that are text, however they look.
const UNUSUAL_NAMES: [&str; 5] = [
    "<script>alert(1)</script>",
    "🦀 crab 👩‍👩‍👧",
    "山田 太郎",
    "a\"b'c&d</li>",
    "<img src=x onerror=alert(1)>",
];

// ---- GET /, /static ----

#[tokio::test]
async fn the_page_is_html_with_the_users_online_already_in_it() {
    let server = TestServer::start().await;
    let [alice, bob] = join_each(&server, ["alice", "bob"]).await;

    let page = served(&server, "/", "text/html").await;

    assert_eq!(
        users_on_page(&page),
        [(alice.id, "alice".to_owned()), (bob.id, "bob".to_owned())]
    );
}

#[tokio::test]
async fn the_page_with_nobody_online_has_an_empty_users_list() {
    let server = TestServer::start().await;

    let page = server.get_text("/").await;

    assert!(page.contains("id=\"users\""), "the page has #users: {page}");
    assert!(users_on_page(&page).is_empty());
}

#[tokio::test]
async fn the_page_has_a_join_form_asking_for_a_name() {
    let server = TestServer::start().await;

    let page = server.get_text("/").await;

    let form = element(&page, "join").expect("the page has an element with id=join");
    assert!(form.starts_with("<form"), "#join is a form: {form}");
    let inputs: Vec<&str> = form
        .match_indices("<input")
        .map(|(at, _)| opening_tag(&form[at..]))
        .collect();
    assert!(
        inputs.iter().any(|tag| tag.contains("name=\"name\"")),
        "form#join has input[name=name]: {form}"
    );
    assert!(page.contains("What is your name?"));
}

#[tokio::test]
async fn the_page_loads_its_script_and_stylesheet() {
    let server = TestServer::start().await;

    let page = server.get_text("/").await;

    assert!(
        page.contains("<script type=\"module\" src=\"/static/app.js\">"),
        "{page}"
    );
    assert!(page.contains("href=\"/static/style.css\""), "{page}");
}

#[tokio::test]
async fn the_script_is_served_as_javascript() {
    let server = TestServer::start().await;

    let script = served(&server, "/static/app.js", "text/javascript").await;
    let client = served(&server, "/lobby.js", "text/javascript").await;

    assert!(
        script.contains("from \"/lobby.js\""),
        "the page runs lobby.js"
    );
    assert!(client.contains("export function join") || client.contains("export const join"));
}

#[tokio::test]
async fn the_stylesheet_is_served_as_css() {
    let server = TestServer::start().await;

    let stylesheet = served(&server, "/static/style.css", "text/css").await;

    assert!(!stylesheet.trim().is_empty());
}

// ---- POST /join ----

#[tokio::test]
async fn joining_with_json_replies_201_with_id_name_token_and_users() {
    let server = TestServer::start().await;

    let response = send(join_request(&server, JSON, r#"{"name":"alice"}"#)).await;

    assert_eq!(response.status(), 201);
    assert!(content_type(response.headers()).starts_with("application/json"));
    let reply: Value = response.json().await.expect("JSON reply");
    assert_eq!(keys(&reply), ["id", "name", "token", "users"]);
    assert_eq!(reply["name"], "alice");
    assert_eq!(reply["users"], json!([]));
}

#[tokio::test]
async fn joining_with_a_form_body_works_like_curl_dash_d() {
    let server = TestServer::start().await;

    let response = send(join_request(&server, FORM, "name=alice")).await;

    assert_eq!(response.status(), 201);
    let reply: Value = response.json().await.expect("JSON reply");
    assert_eq!(keys(&reply), ["id", "name", "token", "users"]);
    assert_eq!(reply["name"], "alice");
    assert_eq!(
        server.users().await,
        [User {
            id: string(&reply["id"]),
            name: "alice".into()
        }]
    );
}

#[tokio::test]
async fn a_form_name_is_percent_decoded() {
    let server = TestServer::start().await;
    let form = [("name", "山田 & <b>")];

    let response = send(server.client.post(server.url("/join")).form(&form)).await;

    assert_eq!(response.status(), 201);
    let reply: Value = response.json().await.expect("JSON reply");
    assert_eq!(reply["name"], "山田 & <b>");
}

#[tokio::test]
async fn a_json_content_type_with_a_charset_is_accepted() {
    let server = TestServer::start().await;
    let utf8_json = Some("application/json; charset=utf-8");

    let response = send(join_request(&server, utf8_json, r#"{"name":"alice"}"#)).await;

    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn the_id_is_a_uuid_v4() {
    let server = TestServer::start().await;

    let alice = server.join("alice").await;

    let id = uuid::Uuid::parse_str(&alice.id).expect("the id is a UUID");
    assert_eq!(id.get_version(), Some(uuid::Version::Random));
    assert_eq!(
        alice.id,
        id.hyphenated().to_string(),
        "the id is in the usual hyphenated form"
    );
}

#[tokio::test]
async fn the_token_is_at_least_128_bits_of_hex_and_is_not_the_id() {
    let server = TestServer::start().await;

    let alice = server.join("alice").await;

    assert!(
        alice.token.len() >= 32,
        "at least 128 bits: {} hex digits",
        alice.token.len()
    );
    assert!(
        alice.token.bytes().all(|b| b.is_ascii_hexdigit()),
        "hex: {}",
        alice.token
    );
    assert_ne!(alice.token, alice.id);
    assert_ne!(alice.token, alice.id.replace('-', ""));
}

#[tokio::test]
async fn every_join_gets_a_different_token() {
    let server = TestServer::start().await;

    let (a, b) = (server.join("alice").await, server.join("bob").await);

    assert_ne!(a.token, b.token);
}

#[tokio::test]
async fn the_join_reply_lists_those_online_before_oldest_first_without_the_joiner() {
    let server = TestServer::start().await;
    let [alice, bob] = join_each(&server, ["alice", "bob"]).await;

    let carol = server.join("carol").await;

    assert_eq!(carol.users, [alice.user(), bob.user()]);
}

#[tokio::test]
async fn a_join_announces_new_user_to_every_open_stream() {
    let server = TestServer::start().await;
    let (_, mut alice_stream, _) = server.join_and_subscribe("alice").await;
    let (_, mut bob_stream, _) = server.join_and_subscribe("bob").await;
    alice_stream.next_event().await; // bob's new_user

    let carol = server.join("carol").await;

    for stream in [&mut alice_stream, &mut bob_stream] {
        let event = stream.next_event().await;
        assert_eq!(event.event, "new_user");
        assert_eq!(user_in(&event), carol.user());
        assert_eq!(
            keys(&serde_json::from_str(&event.data).expect("JSON")),
            ["id", "name"]
        );
    }
}

#[tokio::test]
async fn a_name_is_trimmed_at_both_ends() {
    let server = TestServer::start().await;
    let (_, mut watcher, _) = server.join_and_subscribe("watcher").await;

    let alice = server.join(" \t alice \n ").await;

    assert_eq!(alice.name, "alice");
    assert_eq!(server.users().await[1].name, "alice");
    assert_eq!(user_in(&watcher.next_event().await).name, "alice");
}

#[tokio::test]
async fn a_name_is_counted_after_trimming() {
    let server = TestServer::start().await;
    let name = "a".repeat(32);

    let joined = server.join(&format!("   {name}   ")).await;

    assert_eq!(joined.name, name);
}

#[tokio::test]
async fn a_name_of_32_characters_is_accepted_however_many_bytes_they_take() {
    let server = TestServer::start().await;
    let name = "名".repeat(32);

    let joined = server.join(&name).await;

    assert_eq!(joined.name, name);
}

#[tokio::test]
async fn two_users_with_the_same_name_get_different_ids() {
    let server = TestServer::start().await;

    let (first, second) = (server.join("alice").await, server.join("alice").await);

    assert_ne!(first.id, second.id);
    assert_ne!(first.token, second.token);
    assert_eq!(server.users().await, [first.user(), second.user()]);
}

#[tokio::test]
async fn a_body_of_exactly_4_kib_is_not_too_large() {
    let server = TestServer::start().await;
    let body = json_of_length(4096);

    let response = send(join_request(&server, JSON, body)).await;

    assert_eq!(response.status(), 201);
}

// ---- POST /join: errors, each of which changes nothing ----

#[tokio::test]
async fn malformed_json_is_refused_with_400_and_changes_nothing() {
    assert_joins_refused(400, [(JSON, r#"{"name":"#), (JSON, "name=alice")]).await;
}

#[tokio::test]
async fn a_json_body_that_is_not_an_object_is_refused_with_400_and_changes_nothing() {
    let bodies = [
        r#"["arr"]"#,
        r#"[{"name":"alice"}]"#,
        "[]",
        r#""x""#,
        "3",
        "null",
        "true",
    ];

    let sentences = assert_joins_refused(400, bodies.map(|body| (JSON, body))).await;

    for sentence in sentences {
        assert!(sentence.contains("must be an object"), "{sentence}");
        assert!(sentence.contains(r#"{"name":"alice"}"#), "{sentence}");
    }
}

#[tokio::test]
async fn a_form_that_is_not_utf8_once_percent_decoded_is_refused_with_400_and_changes_nothing() {
    let bodies: [&'static [u8]; 4] = [
        b"name=%ff%fe",
        b"name=al%C3ice",
        b"name=\xff\xfe",
        b"nome=%ff&name=alice",
    ];

    let sentences = assert_joins_refused(400, bodies.map(|body| (FORM, body))).await;

    for sentence in sentences {
        assert!(sentence.contains("UTF-8"), "{sentence}");
    }
}

#[tokio::test]
async fn a_body_without_a_name_field_is_refused_with_400_and_changes_nothing() {
    assert_joins_refused(400, [(JSON, r#"{"nome":"alice"}"#), (FORM, "nome=alice")]).await;
}

#[tokio::test]
async fn an_empty_body_is_refused_with_400_and_changes_nothing() {
    assert_joins_refused(400, [(JSON, ""), (FORM, "")]).await;
}

#[tokio::test]
async fn an_empty_name_is_refused_with_422_and_changes_nothing() {
    assert_joins_refused(422, [(JSON, r#"{"name":""}"#), (FORM, "name=")]).await;
}

#[tokio::test]
async fn a_blank_name_is_refused_with_422_and_changes_nothing() {
    let json = r#"{"name":" \t\n\u3000 "}"#;

    assert_joins_refused(422, [(JSON, json), (FORM, "name=+++")]).await;
}

#[tokio::test]
async fn a_name_of_33_characters_is_refused_with_422_and_changes_nothing() {
    let names = ["a".repeat(33), "名".repeat(33)];

    assert_joins_refused(422, names.map(|name| (JSON, json_name(&name)))).await;
}

#[tokio::test]
async fn a_name_with_a_control_character_is_refused_with_422_and_changes_nothing() {
    let names = [
        "al\nice",
        "al\tice",
        "al\u{0}ice",
        "\u{7}bell",
        "al\u{7f}ice",
        "al\u{9b}ice",
    ];
    let in_a_form = (FORM, "name=al%0Aice".to_owned());

    let requests = names.map(|name| (JSON, json_name(name)));
    assert_joins_refused(422, requests.into_iter().chain([in_a_form])).await;
}

#[tokio::test]
async fn a_body_over_4_kib_is_refused_with_413_and_changes_nothing() {
    let form = format!("name=alice&pad={}", "x".repeat(5000));

    assert_joins_refused(413, [(JSON, json_of_length(4097)), (FORM, form)]).await;
}

#[tokio::test]
async fn a_chunked_body_over_4_kib_is_refused_with_413_and_changes_nothing() {
    let mut chunks = vec![br#"{"name":"alice","pad":""#.to_vec()];
    chunks.extend(std::iter::repeat_n(vec![b'x'; 1024], 5));
    chunks.push(br#""}"#.to_vec());
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
        chunks.into_iter().map(Ok::<_, std::io::Error>),
    ));

    assert_joins_refused(413, [(JSON, body)]).await;
}

#[tokio::test]
async fn another_content_type_is_refused_with_415_and_changes_nothing() {
    let content_types = [
        "text/plain",
        "text/html",
        "application/xml",
        "multipart/form-data; boundary=x",
    ];

    let requests = content_types.map(|content_type| (Some(content_type), r#"{"name":"alice"}"#));
    assert_joins_refused(415, requests).await;
}

#[tokio::test]
async fn a_body_without_a_content_type_is_refused_with_415_and_changes_nothing() {
    assert_joins_refused(415, [(None, "name=alice")]).await;
}

#[tokio::test]
async fn a_join_to_a_full_lobby_is_refused_with_503_and_retry_after_and_changes_nothing() {
    let server = TestServer::with_args(&["--max-users", "1"]).await;
    let mut onlooker = Onlooker::arrive(&server).await;

    let response = server.post_join("alice").await;

    let retry_after = response.headers().get(RETRY_AFTER).cloned();
    assert_error(response, 503).await;
    let retry_after = retry_after.expect("a 503 has Retry-After");
    let seconds: u64 = retry_after
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("Retry-After in seconds");
    assert!(seconds >= 1, "Retry-After: {seconds}");
    onlooker.sees_nothing_changed(&server).await;
}

#[tokio::test]
async fn a_seat_freed_by_a_leave_can_be_taken_again() {
    let server = TestServer::with_args(&["--max-users", "1"]).await;
    join_and_leave(&server, "alice").await;

    let response = server.post_join("bob").await;

    assert_eq!(response.status(), 201);
}

// ---- GET /events ----

#[tokio::test]
async fn events_with_an_unknown_token_is_refused_with_401_json_and_changes_nothing() {
    // (With no token at all, it is a watcher's stream: tests/rooms.rs.)
    let server = TestServer::start().await;
    let events = || server.client.get(server.url("/events"));

    let requests = [
        (
            "an unknown token",
            events().query(&[("token", UNKNOWN_TOKEN)]),
        ),
        (
            "an unknown Bearer token",
            events().bearer_auth(UNKNOWN_TOKEN),
        ),
    ];
    assert_refused_changing_nothing(&server, 401, requests).await;
}

#[tokio::test]
async fn events_with_the_token_of_someone_who_left_is_refused_with_401_json() {
    let server = TestServer::start().await;
    let alice = join_and_leave(&server, "alice").await;

    let response = server.open_events(&alice.token, None).await;

    assert_error(response, 401).await;
}

#[tokio::test]
async fn events_accepts_the_token_as_a_bearer_header() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;
    let bearer = format!("Bearer {}", alice.token);

    let response = send(
        server
            .client
            .get(server.url("/events"))
            .header(AUTHORIZATION, bearer)
            .timeout(Duration::from_secs(3600)),
    )
    .await;

    assert_eq!(response.status(), 200);
    let snapshot = Sse::new(response).next_event().await;
    assert_eq!(snapshot.event, "existing_users");
    assert_eq!(users_in(&snapshot), [alice.user()]);
}

#[tokio::test]
async fn events_answers_with_headers_that_keep_the_stream_unbuffered() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;

    let response = server.open_events(&alice.token, None).await;

    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(content_type(headers), "text/event-stream");
    assert_eq!(header(headers, CACHE_CONTROL.as_str()), "no-cache");
    assert_eq!(header(headers, "x-accel-buffering"), "no");
}

#[tokio::test]
async fn the_stream_starts_with_a_retry_line_then_existing_users() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;
    let mut response = server.open_events(&alice.token, None).await;

    let text = read_raw_until(&mut response, common::PATIENCE, |text| {
        text.contains("data:")
    })
    .await;

    let first = text.lines().next().expect("a first line");
    let millis = first
        .strip_prefix("retry: ")
        .expect("the first line is retry: <ms>");
    assert!(
        millis.parse::<u64>().is_ok(),
        "retry is a number of ms: {first}"
    );
    let event_at = text
        .find("event: existing_users")
        .expect("then existing_users");
    assert!(
        !text[..event_at].contains("event:"),
        "existing_users is the first event: {text}"
    );
}

// ---- POST /leave ----

#[tokio::test]
async fn leaving_with_the_token_as_bearer_form_or_beacon_text_replies_204_and_announces_disconnect_user()
 {
    let server = TestServer::start().await;
    let (_, mut bob_stream, _) = server.join_and_subscribe("bob").await;

    for way in [TokenIn::Bearer, TokenIn::Form, TokenIn::BeaconText] {
        let (alice, _alice_stream, _) = server.join_and_subscribe("alice").await;
        assert_eq!(user_in(&bob_stream.next_event().await), alice.user());

        let response = send(leave_request(&server, way, &alice.token)).await;

        assert_eq!(response.status(), 204, "{way:?}");
        assert_disconnect(&mut bob_stream, &alice).await;
    }
}

#[tokio::test]
async fn leaving_takes_the_user_off_the_users_list_at_once() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;
    let bob = server.join("bob").await;

    assert_eq!(server.leave(&alice.token).await, 204);

    assert_eq!(server.users().await, [bob.user()]);
}

#[tokio::test]
async fn leaving_ends_the_leavers_own_stream_after_their_disconnect_user() {
    let server = TestServer::start().await;
    let (alice, mut alice_stream, _) = server.join_and_subscribe("alice").await;

    assert_eq!(server.leave(&alice.token).await, 204);

    assert_disconnect(&mut alice_stream, &alice).await;
    alice_stream.expect_end().await;
}

#[tokio::test]
async fn leaving_with_no_token_or_an_unknown_one_is_refused_with_401_and_changes_nothing() {
    let server = TestServer::start().await;
    let ways = [
        TokenIn::Bearer,
        TokenIn::Form,
        TokenIn::BeaconText,
        TokenIn::Nowhere,
    ];

    let requests = ways.map(|way| {
        (
            format!("{way:?}"),
            leave_request(&server, way, UNKNOWN_TOKEN),
        )
    });
    assert_refused_changing_nothing(&server, 401, requests).await;
}

#[tokio::test]
async fn a_leave_body_that_is_not_utf8_is_refused_with_400_and_changes_nothing() {
    let server = TestServer::start().await;
    let leave = |content_type, body: &'static [u8]| post(&server, "/leave", content_type, body);

    let requests = [
        ("a form, percent-encoded", leave(FORM, b"token=%ff%fe")),
        ("a form, raw", leave(FORM, b"token=\xff")),
        ("beacon text", leave(BEACON_TEXT, b"\xff\xfe")),
    ];
    let sentences = assert_refused_changing_nothing(&server, 400, requests).await;

    for sentence in sentences {
        assert!(sentence.contains("UTF-8"), "{sentence}");
    }
}

#[tokio::test]
async fn leaving_twice_is_refused_the_second_time_with_401() {
    let server = TestServer::start().await;
    let alice = join_and_leave(&server, "alice").await;

    let response = send(leave_request(&server, TokenIn::Bearer, &alice.token)).await;

    assert_error(response, 401).await;
}

// ---- GET /users, GET /healthz ----

#[tokio::test]
async fn users_lists_everyone_online_oldest_first() {
    let server = TestServer::start().await;
    let [alice, bob, carol] = join_each(&server, ["alice", "bob", "carol"]).await;

    let body = served(&server, "/users", "application/json").await;

    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(keys(&body), ["users"]);
    let users: Vec<User> = serde_json::from_value(body["users"].clone()).expect("users");
    assert_eq!(users, [alice.user(), bob.user(), carol.user()]);
}

#[tokio::test]
async fn users_is_an_empty_list_when_nobody_is_online() {
    let server = TestServer::start().await;

    let body: Value = server.get_text("/users").await.parse().expect("JSON");

    assert_eq!(body, json!({ "users": [] }));
}

#[tokio::test]
async fn healthz_answers_200_while_serving() {
    let server = TestServer::start().await;

    let response = get(&server, "/healthz").await;

    assert_eq!(response.status(), 200);
}

// ---- names that look like markup, emoji, CJK ----

#[tokio::test]
async fn unusual_names_come_back_byte_for_byte_in_the_join_reply_and_users() {
    let server = TestServer::start().await;

    let joined = join_each(&server, UNUSUAL_NAMES).await;

    let names: Vec<String> = joined.iter().map(|j| j.name.clone()).collect();
    assert_eq!(names, UNUSUAL_NAMES);
    let listed: Vec<String> = server.users().await.into_iter().map(|u| u.name).collect();
    assert_eq!(listed, UNUSUAL_NAMES);
}

#[tokio::test]
async fn unusual_names_come_back_byte_for_byte_in_every_event() {
    let server = TestServer::start().await;
    let (_, mut watcher, _) = server.join_and_subscribe("watcher").await;
    let joined = join_each(&server, UNUSUAL_NAMES).await;

    let mut late = server.subscribe(&joined[0].token, None).await;
    for someone in &joined {
        assert_eq!(server.leave(&someone.token).await, 204);
    }

    let snapshot = late.next_event().await;
    let names: Vec<String> = users_in(&snapshot)
        .into_iter()
        .skip(1)
        .map(|u| u.name)
        .collect();
    assert_eq!(names, UNUSUAL_NAMES, "existing_users");
    for (kind, someone) in joined
        .iter()
        .map(|j| ("new_user", j))
        .chain(joined.iter().map(|j| ("disconnect_user", j)))
    {
        let event = watcher.next_event().await;
        assert_eq!(event.event, kind);
        assert_eq!(user_in(&event), someone.user(), "{kind}");
    }
}

#[tokio::test]
async fn unusual_names_are_shown_on_the_page_as_escaped_text() {
    let server = TestServer::start().await;
    let joined = join_each(&server, UNUSUAL_NAMES).await;

    let page = server.get_text("/").await;

    let expected: Vec<(String, String)> = joined
        .iter()
        .map(|j| (j.id.clone(), j.name.clone()))
        .collect();
    assert_eq!(users_on_page(&page), expected);
    assert!(
        !page.contains("<script>alert(1)"),
        "the name is not markup: {page}"
    );
    assert!(!page.contains("<img"), "the name is not markup: {page}");
}

// ---- tokens never leak ----

#[tokio::test]
async fn a_token_never_appears_in_users_or_the_page() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;
    let _alice_stream = server.subscribe(&alice.token, None).await;

    for path in ["/users", "/"] {
        let text = server.get_text(path).await;

        assert!(!text.contains(&alice.token), "{path}: {text}");
    }
}

#[tokio::test]
async fn a_token_never_appears_in_another_users_join_reply() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;

    let response = server.post_join("bob").await;

    let reply = response.text().await.expect("reply");
    assert!(!reply.contains(&alice.token), "{reply}");
    let reply: Value = serde_json::from_str(&reply).expect("JSON");
    for listed in reply["users"].as_array().expect("users") {
        assert_eq!(keys(listed), ["id", "name"]);
    }
}

#[tokio::test]
async fn a_token_never_appears_in_any_event_on_any_stream() {
    let server = TestServer::start().await;
    let alice = server.join("alice").await;
    let mut alice_raw = server.open_events(&alice.token, None).await;
    let bob = server.join("bob").await;
    let mut bob_raw = server.open_events(&bob.token, None).await;
    let carol = server.join("carol").await;
    let mut carol_raw = server.open_events(&carol.token, None).await;

    assert_eq!(server.leave(&bob.token).await, 204);
    assert_eq!(server.leave(&carol.token).await, 204);

    let seen_by_alice = read_raw_until(&mut alice_raw, common::PATIENCE, |t| {
        t.matches("disconnect_user").count() == 2
    })
    .await;
    let seen_by_bob = read_raw_until(&mut bob_raw, common::PATIENCE, |_| false).await;
    let seen_by_carol = read_raw_until(&mut carol_raw, common::PATIENCE, |_| false).await;
    assert_eq!(
        seen_by_alice.matches("event: ").count(),
        5,
        "snapshot, 2 new, 2 gone: {seen_by_alice}"
    );
    assert!(seen_by_bob.contains("disconnect_user"), "{seen_by_bob}");
    for (who, seen) in [
        ("alice", &seen_by_alice),
        ("bob", &seen_by_bob),
        ("carol", &seen_by_carol),
    ] {
        for token in [&alice.token, &bob.token, &carol.token] {
            assert!(
                !seen.contains(token.as_str()),
                "a token in {who}'s stream: {seen}"
            );
        }
    }
}

#[tokio::test]
async fn a_token_never_appears_in_an_error_reply() {
    let server = TestServer::start().await;
    let alice = join_and_leave(&server, "alice").await;

    let events = server.open_events(&alice.token, None).await;
    let leave = send(leave_request(&server, TokenIn::Form, &alice.token)).await;

    let events = events.text().await.expect("body");
    let leave = leave.text().await.expect("body");
    assert!(!events.contains(&alice.token), "{events}");
    assert!(!leave.contains(&alice.token), "{leave}");
}

// ---- helpers local to this file ----

const JSON: Option<&str> = Some("application/json");
const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
/// What `navigator.sendBeacon` sends a string as.
const BEACON_TEXT: Option<&str> = Some("text/plain;charset=UTF-8");

/// A joined user with an open stream who watches a request that must change nothing.
struct Onlooker {
    stream: Sse,
    before: Vec<User>,
}

impl Onlooker {
    async fn arrive(server: &TestServer) -> Onlooker {
        let (_, stream, _) = server.join_and_subscribe("onlooker").await;
        Onlooker {
            stream,
            before: server.users().await,
        }
    }

    /// GET /users is what it was, and no event reached the onlooker's stream.
    async fn sees_nothing_changed(&mut self, server: &TestServer) {
        assert_eq!(server.users().await, self.before, "GET /users changed");
        let event = self.stream.next_within(QUIET).await;
        assert!(event.is_none(), "an event went out: {event:?}");
    }
}

/// Sends each `(content type, body)` to POST /join of a fresh server, which
/// must refuse each with `status` and change nothing. Returns the sentences.
async fn assert_joins_refused<'a, B: Into<reqwest::Body> + std::fmt::Debug>(
    status: u16,
    requests: impl IntoIterator<Item = (Option<&'a str>, B)>,
) -> Vec<String> {
    let server = TestServer::start().await;
    let requests = requests.into_iter().map(|(content_type, body)| {
        let label = format!("{content_type:?} {body:?}");
        (label, join_request(&server, content_type, body))
    });
    assert_refused_changing_nothing(&server, status, requests).await
}

/// Sends each labelled request with an onlooker watching; asserts that each
/// is refused with `status` and a JSON sentence, and that nothing changed.
/// Returns the sentences.
async fn assert_refused_changing_nothing(
    server: &TestServer,
    status: u16,
    requests: impl IntoIterator<Item = (impl std::fmt::Display, reqwest::RequestBuilder)>,
) -> Vec<String> {
    let mut onlooker = Onlooker::arrive(server).await;
    let mut sentences = Vec::new();
    for (label, request) in requests {
        let response = send(request).await;

        assert_eq!(response.status(), status, "{label}");
        sentences.push(assert_error(response, status).await);
    }
    onlooker.sees_nothing_changed(server).await;
    sentences
}

/// Joins these names one after another, so that the first is the oldest.
async fn join_each<const N: usize>(server: &TestServer, names: [&str; N]) -> [common::Joined; N] {
    let mut joined = Vec::with_capacity(N);
    for name in names {
        joined.push(server.join(name).await);
    }
    joined.try_into().expect("one reply a name")
}

/// Where POST /leave carries the token.
#[derive(Debug, Clone, Copy)]
enum TokenIn {
    /// `Authorization: Bearer …`.
    Bearer,
    /// A form `token=…`.
    Form,
    /// A `text/plain` body holding only the token, as `navigator.sendBeacon` sends it.
    BeaconText,
    /// Nowhere at all: no header and no body.
    Nowhere,
}

fn leave_request(server: &TestServer, way: TokenIn, token: &str) -> reqwest::RequestBuilder {
    let leave = || server.client.post(server.url("/leave"));
    match way {
        TokenIn::Bearer => leave().header(AUTHORIZATION, format!("Bearer {token}")),
        TokenIn::Form => leave().form(&[("token", token)]),
        TokenIn::BeaconText => post(server, "/leave", BEACON_TEXT, token.to_owned()),
        TokenIn::Nowhere => leave(),
    }
}

/// POST /join with this body, and this `Content-Type` if any.
fn join_request(
    server: &TestServer,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> reqwest::RequestBuilder {
    post(server, "/join", content_type, body)
}

/// POST `path` with this body, and this `Content-Type` if any.
fn post(
    server: &TestServer,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> reqwest::RequestBuilder {
    let request = server.client.post(server.url(path)).body(body);
    match content_type {
        Some(content_type) => request.header(CONTENT_TYPE, content_type),
        None => request,
    }
}

/// Joins, then leaves with the token as Bearer: the token is now unknown.
async fn join_and_leave(server: &TestServer, name: &str) -> common::Joined {
    let joined = server.join(name).await;
    assert_eq!(
        server.leave(&joined.token).await,
        204,
        "leaving as {name:?}"
    );
    joined
}

/// GET `path`, whatever the reply.
async fn get(server: &TestServer, path: &str) -> reqwest::Response {
    send(server.client.get(server.url(path))).await
}

/// GET `path`, which must answer 200 with this media type; its body as text.
async fn served(server: &TestServer, path: &str, media_type: &str) -> String {
    let response = get(server, path).await;
    assert_eq!(response.status(), 200, "GET {path}");
    let got = content_type(response.headers());
    assert!(got.starts_with(media_type), "GET {path}: {got}");
    response.text().await.expect("body")
}

/// Sends the request, whatever the reply; panics only if there is no reply.
async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    request.send().await.expect("the server replies")
}

/// `{"name":<name>}`, the way `Client::post_join` sends it.
fn json_name(name: &str) -> String {
    json!({ "name": name }).to_string()
}

async fn assert_disconnect(stream: &mut Sse, who: &common::Joined) {
    let event = stream.next_event().await;
    assert_eq!(event.event, "disconnect_user");
    assert_eq!(user_in(&event), who.user());
}

fn content_type(headers: &HeaderMap) -> &str {
    header(headers, CONTENT_TYPE.as_str())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .map_or("", |value| value.to_str().expect("ASCII header"))
}

/// The keys of a JSON object, sorted.
fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

fn string(value: &Value) -> String {
    value.as_str().expect("a string").to_owned()
}

/// `{"name":"alice","pad":"xxx…"}`, exactly `length` bytes long.
fn json_of_length(length: usize) -> String {
    let empty = r#"{"name":"alice","pad":""}"#;
    format!(
        r#"{{"name":"alice","pad":"{}"}}"#,
        "x".repeat(length - empty.len())
    )
}

/// The opening tag at the start of `html`, up to and including its `>`.
fn opening_tag(html: &str) -> &str {
    &html[..=html.find('>').expect("a tag ends")]
}

/// The element with `id="<id>"`, from its opening tag to its closing tag.
fn element<'a>(page: &'a str, id: &str) -> Option<&'a str> {
    let attribute = page.find(&format!(" id=\"{id}\""))?;
    let start = page[..attribute].rfind('<')?;
    let tag: String = page[start + 1..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    let end = start + page[start..].find(&format!("</{tag}>"))? + tag.len() + 3;
    Some(&page[start..end])
}

/// The `(data-user-id, text)` of every element inside `#users`, in page order,
/// with the text's HTML escapes undone. Text holding a raw `<` would end early
/// and so not match: a name must be escaped to come back whole.
fn users_on_page(page: &str) -> Vec<(String, String)> {
    let list = element(page, "users").expect("the page has #users");
    list.match_indices("data-user-id=\"")
        .map(|(at, attribute)| {
            let rest = &list[at + attribute.len()..];
            let id = &rest[..rest.find('"').expect("the id ends")];
            let text_start = rest.find('>').expect("the tag ends") + 1;
            let text = &rest[text_start..];
            let text = &text[..text.find('<').expect("the element ends")];
            (id.to_owned(), unescape_html(text))
        })
        .collect()
}

fn unescape_html(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}
