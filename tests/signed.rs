//! Signed joins (`--join-secret`), through HTTP and SSE on a real socket: a
//! join carries a ticket (a JWT the site signs with HS256), its `sub` becomes
//! the presence id, every bad ticket is refused with a sentence that never
//! holds it, and one person's several joins (tabs, browsers) are one entry:
//! announced with the first, gone with the last.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    Client, Joined, PATIENCE, Sse, TestServer, User, assert_error, ticket_with, user_in, users_in,
};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

const SECRET: &str = "a-secret-the-site-and-lobby-share-0123456789";
const QUIET: Duration = Duration::from_millis(300);

async fn signed(args: &[&str]) -> TestServer {
    let mut all = vec!["--join-secret", SECRET];
    all.extend_from_slice(args);
    TestServer::with_args(&all).await
}

fn now() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    i64::try_from(since.as_secs()).expect("a small number")
}

/// A good ticket for `sub` named `name`, good for a minute.
fn mint(sub: &str, name: &str) -> String {
    ticket_with(
        SECRET,
        Algorithm::HS256,
        &json!({"sub": sub, "name": name, "exp": now() + 60}),
    )
}

async fn post_ticket(client: &Client, body: Value) -> reqwest::Response {
    client.post_join_body(&body).await
}

async fn join_with(client: &Client, ticket: &str) -> Joined {
    let response = post_ticket(client, json!({ "ticket": ticket })).await;
    assert_eq!(response.status(), 201);
    response.json().await.expect("a join reply")
}

fn person(id: &str, name: &str) -> User {
    User {
        id: id.to_owned(),
        name: name.to_owned(),
    }
}

#[tokio::test]
async fn a_good_ticket_joins_as_its_sub_and_name_and_a_name_beside_it_is_ignored() {
    let server = signed(&[]).await;
    let ticket = mint("user-42", "Ada Lovelace");
    let response = post_ticket(&server, json!({"ticket": ticket, "name": "mallory"})).await;
    assert_eq!(response.status(), 201);
    let joined: Joined = response.json().await.expect("JSON");
    assert_eq!(
        (joined.id.as_str(), joined.name.as_str()),
        ("user-42", "Ada Lovelace")
    );
    assert_eq!(server.users().await, [person("user-42", "Ada Lovelace")]);

    // As a form, too; and the token works as any token does.
    let form = server
        .client
        .post(server.url("/join"))
        .form(&[("ticket", mint("user-7", "Bob").as_str())])
        .send()
        .await
        .expect("POST /join");
    assert_eq!(form.status(), 201);
    let bob: Joined = form.json().await.expect("JSON");
    let mut stream = server.subscribe(&bob.token, None).await;
    assert_eq!(
        users_in(&stream.next_event().await),
        [person("user-42", "Ada Lovelace"), person("user-7", "Bob")]
    );

    // An id is the site's text, escaped like a name wherever it goes.
    let odd = r#"q"\<b>x</b>"#;
    join_with(&server, &mint(odd, "Cy")).await;
    let event = stream.next_event().await;
    assert_eq!(user_in(&event), person(odd, "Cy"));
    assert_eq!(server.users().await[2], person(odd, "Cy"));
    let page = server.get_text("/").await;
    assert!(
        page.contains("data-user-id=\"q&quot;\\&lt;b&gt;x&lt;/b&gt;\""),
        "{page}"
    );
}

#[tokio::test]
async fn every_bad_ticket_gets_its_sentence_never_holds_the_ticket_and_changes_nothing() {
    let server = signed(&["--grace", "60s"]).await;
    let mut watcher = server.watch(None).await;
    assert_eq!(users_in(&watcher.next_event().await), []);
    let t = now();
    let good = |extra: Value| {
        let mut claims = json!({"sub": "u1", "name": "Ada", "exp": t + 60});
        for (key, value) in extra.as_object().expect("an object") {
            claims[key] = value.clone();
        }
        claims
    };
    let cases: Vec<(String, u16, &str)> = vec![
        (String::new(), 401, "signed joins only"),
        (
            ticket_with("another secret", Algorithm::HS256, &good(json!({}))),
            401,
            "HS256",
        ),
        (
            ticket_with(SECRET, Algorithm::HS512, &good(json!({}))),
            401,
            "HS256",
        ),
        ("not.a.jwt".to_owned(), 401, "HS256"),
        // alg: none, unsigned, with good claims.
        (
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1MSIsIm5hbWUiOiJBZGEiLCJleHAiOjQwMDAwMDAwMDB9."
                .to_owned(),
            401,
            "HS256",
        ),
        (
            ticket_with(SECRET, Algorithm::HS256, &good(json!({"exp": t - 120}))),
            401,
            "expired",
        ),
        (
            ticket_with(SECRET, Algorithm::HS256, &good(json!({"nbf": t + 120}))),
            401,
            "not valid yet",
        ),
        (
            ticket_with(SECRET, Algorithm::HS256, &good(json!({"iat": t + 120}))),
            401,
            "not valid yet",
        ),
        (
            ticket_with(
                SECRET,
                Algorithm::HS256,
                &json!({"sub": "u1", "name": "Ada"}),
            ),
            401,
            "no exp",
        ),
        (
            ticket_with(
                SECRET,
                Algorithm::HS256,
                &json!({"sub": "u1", "exp": t + 60}),
            ),
            401,
            "missing field `name`",
        ),
        (
            ticket_with(SECRET, Algorithm::HS256, &good(json!({"room": "ops"}))),
            401,
            "\"ops\"",
        ),
        (
            ticket_with(SECRET, Algorithm::HS256, &good(json!({"sub": "two words"}))),
            401,
            "sub",
        ),
        (
            ticket_with(SECRET, Algorithm::HS256, &good(json!({"sub": ""}))),
            401,
            "sub",
        ),
        (
            ticket_with(SECRET, Algorithm::HS256, &good(json!({"name": "  "}))),
            422,
            "name",
        ),
        (
            ticket_with(SECRET, Algorithm::HS256, &good(json!({"name": 5}))),
            401,
            "type",
        ),
    ];
    for (ticket, status, says) in &cases {
        let body = if ticket.is_empty() {
            json!({"name": "Ada"})
        } else {
            json!({"ticket": ticket, "name": "Ada"})
        };
        let sentence = assert_error(post_ticket(&server, body).await, *status).await;
        assert!(sentence.contains(says), "{says:?} not in {sentence:?}");
        for part in ticket.split('.').filter(|part| part.len() > 8) {
            assert!(!sentence.contains(part), "the ticket is echoed: {sentence}");
        }
    }
    assert_eq!(server.users().await, []);

    // Within the 30 s of leeway, a ticket just past its exp (or just before
    // its nbf) is still good; the watcher's next event is that join.
    let leeway = good(json!({"exp": t - 10, "nbf": t + 10, "iat": t + 10}));
    let joined = join_with(&server, &ticket_with(SECRET, Algorithm::HS256, &leeway)).await;
    let event = watcher.next_event().await;
    assert_eq!(
        (event.event.as_str(), user_in(&event)),
        ("new_user", person("u1", "Ada"))
    );
    assert_eq!(joined.id, "u1");
}

#[tokio::test]
async fn a_ticket_for_a_room_is_good_in_that_room_only() {
    let server = signed(&[]).await;
    let claims = json!({"sub": "u1", "name": "Ada", "room": "design", "exp": now() + 60});
    let ticket = ticket_with(SECRET, Algorithm::HS256, &claims);
    let design = server.in_room("design");
    join_with(&design, &ticket).await;
    let sentence = assert_error(post_ticket(&server, json!({"ticket": ticket})).await, 401).await;
    assert!(sentence.contains("\"design\""), "{sentence}");
    assert_eq!(design.users().await, [person("u1", "Ada")]);
    assert_eq!(server.users().await, []);
}

/// Two tabs (or browsers) of one person: two tokens, one entry, one
/// `new_user`; the first to leave sends nothing and ends only its own
/// streams; the last sends `disconnect_user`.
#[tokio::test]
async fn one_person_in_two_tabs_is_listed_once_and_leaves_once() {
    let server = signed(&["--grace", "60s"]).await;
    let mut watcher = server.watch(None).await;
    watcher.next_event().await;

    let first = join_with(&server, &mint("u1", "Ada")).await;
    let second = join_with(&server, &mint("u1", "Ada")).await;
    assert_ne!(first.token, second.token);
    assert_eq!((first.id.as_str(), second.id.as_str()), ("u1", "u1"));
    assert_eq!(second.users, [person("u1", "Ada")], "she was in already");
    let event = watcher.next_event().await;
    assert_eq!(
        (event.event.as_str(), user_in(&event)),
        ("new_user", person("u1", "Ada"))
    );
    assert_eq!(
        watcher.next_within(QUIET).await,
        None,
        "one new_user for both"
    );
    assert_eq!(server.users().await, [person("u1", "Ada")]);

    let mut first_tab = server.subscribe(&first.token, None).await;
    let mut second_tab = server.subscribe(&second.token, None).await;
    assert_eq!(
        users_in(&first_tab.next_event().await),
        [person("u1", "Ada")]
    );
    second_tab.next_event().await;

    assert_eq!(server.leave(&first.token).await, 204);
    assert_eq!(
        first_tab.event_or_end().await,
        None,
        "the left tab's stream ends"
    );
    assert_eq!(watcher.next_within(QUIET).await, None, "no one is told");
    assert_eq!(second_tab.next_within(QUIET).await, None);
    assert_eq!(server.users().await, [person("u1", "Ada")]);
    assert_eq!(
        server.leave(&first.token).await,
        401,
        "that token is void now"
    );

    assert_eq!(server.leave(&second.token).await, 204);
    let event = watcher.next_event().await;
    assert_eq!(
        (event.event.as_str(), user_in(&event)),
        ("disconnect_user", person("u1", "Ada"))
    );
    assert_eq!(server.users().await, []);
}

/// A browser that closes (its stream drops) while the person's other
/// browser stays changes nothing anyone sees; once both are gone, the
/// person leaves once, after grace.
#[tokio::test]
async fn one_person_in_two_browsers_stays_while_either_streams_and_goes_once() {
    let server = signed(&["--grace", "300ms"]).await;
    let (_, mut watcher) = watcher_of(&server).await;
    let laptop = join_with(&server, &mint("u1", "Ada")).await;
    let phone = join_with(&server, &mint("u1", "Ada")).await;
    let laptop_stream = server.subscribe(&laptop.token, None).await;
    let phone_stream = server.subscribe(&phone.token, None).await;
    assert_eq!(watcher.next_event().await.event, "new_user");

    drop(laptop_stream);
    assert_eq!(watcher.next_within(Duration::from_secs(1)).await, None);
    let both = [person("observer", "Observer"), person("u1", "Ada")];
    assert_eq!(server.users().await, both);

    drop(phone_stream);
    let event = watcher.next_within(PATIENCE).await.expect("she goes");
    assert_eq!(
        (event.event.as_str(), user_in(&event)),
        ("disconnect_user", person("u1", "Ada"))
    );
    assert_eq!(watcher.next_within(QUIET).await, None, "once");
}

/// A watcher, and someone else in the room to keep it company.
async fn watcher_of(server: &TestServer) -> (Joined, Sse) {
    let other = join_with(server, &mint("observer", "Observer")).await;
    let mut watcher = server.subscribe(&other.token, None).await;
    watcher.next_event().await;
    (other, watcher)
}

#[tokio::test]
async fn with_signed_joins_the_page_has_no_name_form() {
    let server = signed(&[]).await;
    let page = server.get_text("/").await;
    assert!(!page.contains("<form"), "{page}");
    assert!(page.contains("signed"), "the page says why: {page}");
    let open = TestServer::with_args(&[]).await;
    assert!(open.get_text("/").await.contains("<form"));
}

/// The README's Python example mints a ticket lobby takes, as a site's
/// backend would run it (PyJWT; Debian's python3-jwt, which `.ci/run`
/// installs). Without PyJWT it says SKIPPED, except under `CI=true`.
#[tokio::test]
async fn the_readme_s_python_example_mints_a_ticket_lobby_takes() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("the README");
    let script = readme
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a python block in the README");
    let Some(python) = ["python3", "/usr/bin/python3"].into_iter().find(|python| {
        std::process::Command::new(python)
            .args(["-c", "import jwt"])
            .output()
            .is_ok_and(|out| out.status.success())
    }) else {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true, yet no python3 with PyJWT (apt install python3-jwt)"
        );
        eprintln!("SKIPPED: no python3 with PyJWT (apt install python3-jwt)");
        return;
    };
    let minted = std::process::Command::new(python)
        .args(["-c", script])
        .env("LOBBY_JOIN_SECRET", SECRET)
        .output()
        .expect("python runs");
    assert!(minted.status.success(), "{minted:?}");
    let ticket = String::from_utf8(minted.stdout).expect("text");

    let server = signed(&[]).await;
    let joined = join_with(&server.in_room("doc-42"), ticket.trim()).await;
    assert_eq!(
        (joined.id.as_str(), joined.name.as_str()),
        ("42", "Ada Lovelace")
    );
}

/// A ticket may say what the person is doing (`state`); either of their
/// tabs may change it, and the last change from any of them wins.
#[tokio::test]
async fn a_ticket_s_state_shows_at_once_and_any_of_a_person_s_tabs_may_change_it() {
    let server = signed(&[]).await;
    let (_, mut watcher) = watcher_of(&server).await;
    let claims =
        json!({"sub": "u1", "name": "Ada", "state": {"status": "busy"}, "exp": now() + 60});
    let first = join_with(&server, &ticket_with(SECRET, Algorithm::HS256, &claims)).await;
    let event = watcher.next_event().await;
    let data: Value = serde_json::from_str(&event.data).expect("JSON");
    assert_eq!(
        data,
        json!({"id": "u1", "name": "Ada", "state": {"status": "busy"}})
    );

    let second = join_with(&server, &mint("u1", "Ada")).await;
    for (token, status) in [(&second.token, "away"), (&first.token, "here")] {
        let response = server
            .client
            .post(server.url("/state"))
            .bearer_auth(token)
            .json(&json!({ "status": status }))
            .send()
            .await
            .expect("POST /state");
        assert_eq!(response.status(), 204);
        let event = watcher.next_event().await;
        assert_eq!(event.event, "user_updated");
        let data: Value = serde_json::from_str(&event.data).expect("JSON");
        assert_eq!(data["state"], json!({ "status": status }));
    }

    let bad = json!({"sub": "u2", "name": "Bob", "state": ["away"], "exp": now() + 60});
    let refused = post_ticket(
        &server,
        json!({"ticket": ticket_with(SECRET, Algorithm::HS256, &bad)}),
    );
    let sentence = assert_error(refused.await, 422).await;
    assert!(sentence.contains("state"), "{sentence}");
}
