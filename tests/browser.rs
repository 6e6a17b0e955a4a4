//! The page in a real browser: headless Chromium, driven through chromedriver by
//! fantoccini, against a real lobby on 127.0.0.1. Every person gets a browser of
//! their own (own profile, own sessionStorage). Where Chromium or chromedriver is
//! missing the tests say they were skipped, unless `CI=true`, where they fail.

mod common;

use std::time::Duration;

use common::browser::{Chromedriver, eventually, holds_for, submit_join_form};
use common::redis::Cluster;
use common::{Sse, TestServer, User};
use fantoccini::Client;
use serde::Deserialize;
use serde_json::{Value, json};

/// How long to wait for something the page should do at once.
const WAIT: Duration = Duration::from_secs(5);

/// How long a reload or a navigation may take to reach the server. Well under the
/// join timeout (10 s) and the grace these tests set (30 s), so only the page's
/// own beacon and join can explain what the server shows by then.
const UNLOAD: Duration = Duration::from_secs(3);

/// A grace far longer than any test: a user whose stream closed stays online
/// unless their page says it leaves.
const LONG_GRACE: &str = "30s";

/// How long a settled view is watched for a late duplicate or a late rejoin.
const SETTLED_FOR: Duration = Duration::from_secs(1);

/// A name that runs script if it is ever inserted as HTML (at most 32 characters).
const MARKUP_NAME: &str = "<img src=x onerror=__pwned=1>";

#[tokio::test]
async fn two_people_who_join_through_the_form_each_see_both_boxes_with_their_own_marked() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let server = TestServer::start().await;
    let alice = driver.person().await;
    let bob = driver.person().await;

    alice.open(&server).await;
    bob.open(&server).await;
    alice.join("alice").await;
    bob.join("bob").await;

    for (person, own_name) in [(&alice, "alice"), (&bob, "bob")] {
        let view = person
            .wait_until(WAIT, "both boxes, one of them marked as mine", |view| {
                view.names() == ["alice", "bob"] && view.my_names() == [own_name]
            })
            .await;
        assert_eq!(
            view.count, "2",
            "{own_name}'s page counts two people online"
        );
        assert_eq!(
            view.users_online(),
            sorted(server.users().await),
            "{own_name}'s boxes carry the ids the server gave"
        );
    }
}

#[tokio::test]
async fn a_joined_page_s_token_cookie_is_hidden_from_scripts_and_its_stream_works() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let server = TestServer::start().await;
    let alice = driver.joined_page(&server, "alice").await;

    // The page's stream (its token in a header, not in the URL) works.
    let _bob = join_from_terminal(&server, "bob").await;
    alice
        .wait_until(WAIT, "bob's box", |view| view.names() == ["alice", "bob"])
        .await;
    let on_the_page = alice.execute("return document.cookie;").await;
    // The cookie's path is the events route: look from a page under it, in
    // another tab, so that the joined page stays.
    let page = alice.client.window().await.expect("the page's tab");
    let tab = alice.client.new_window(true).await.expect("a second tab");
    alice
        .client
        .switch_to_window(tab.handle)
        .await
        .expect("to it");
    alice.open_at(&format!("{}/events/x", server.base)).await;
    let cookie = alice
        .client
        .get_named_cookie("lobby_token")
        .await
        .expect("the browser holds the token's cookie on the events path");
    let under_events = alice.execute("return document.cookie;").await;
    alice.client.switch_to_window(page).await.expect("back");

    for seen in [on_the_page, under_events] {
        assert!(
            !seen.to_string().contains("lobby_token"),
            "a script sees it: {seen}"
        );
    }
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.same_site(), Some(cookie::SameSite::Strict));
    assert_eq!(cookie.path(), Some("/events"));
}

#[tokio::test]
async fn the_page_s_own_script_and_style_run_under_its_policy_and_injected_script_does_not() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let server = TestServer::start().await;
    let alice = driver.person().await;
    alice.open(&server).await;
    // The page's own script runs: joining through the form works.
    alice.join("alice").await;
    // Its own style sheet applied.
    let styled = alice
        .execute(
            "return [...document.styleSheets].some(sheet => \
             sheet.href && sheet.href.endsWith('/static/style.css') && sheet.cssRules.length > 0);",
        )
        .await;
    assert_eq!(styled, Value::Bool(true), "style.css is applied");

    // A script injected into the page (as a successful injection would) is
    // refused by the browser, which reports the policy it broke.
    alice
        .execute(
            "window.__violations = []; \
             document.addEventListener('securitypolicyviolation', \
               event => window.__violations.push(event.effectiveDirective)); \
             const script = document.createElement('script'); \
             script.textContent = 'window.__injected = true'; \
             document.body.appendChild(script); \
             return null;",
        )
        .await;
    let violations = eventually(WAIT, "a reported violation", async || {
        match alice.execute("return window.__violations;").await {
            Value::Array(list) if !list.is_empty() => Ok(list),
            other => Err(other.to_string()),
        }
    })
    .await;
    assert!(
        violations.iter().any(|directive| directive
            .as_str()
            .is_some_and(|d| d.starts_with("script-src"))),
        "{violations:?}"
    );
    assert_eq!(
        alice.execute("return window.__injected === true;").await,
        Value::Bool(false),
        "the injected script did not run"
    );
}

#[tokio::test]
async fn a_name_that_looks_like_markup_shows_as_text_and_runs_nothing() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let server = TestServer::start().await;
    let bob = driver.person().await;
    let mallory = driver.person().await;
    let watcher = driver.person().await;

    bob.open(&server).await;
    bob.join("bob").await;
    mallory.open(&server).await;
    mallory.join(MARKUP_NAME).await;
    // Server-rendered boxes, as opposed to the script's ones in the other two pages.
    watcher.open(&server).await;

    for (person, who) in [
        (&bob, "bob's page, from new_user"),
        (&mallory, "mallory's own page"),
        (&watcher, "a page rendered with the name in it"),
    ] {
        let view = person
            .wait_until(WAIT, "a box whose text is the name", |view| {
                view.names().contains(&MARKUP_NAME)
            })
            .await;
        assert_eq!(view.images, 0, "{who}: no img element inside #users");
        let pwned = person.execute("return typeof window.__pwned;").await;
        assert_eq!(
            pwned,
            json!("undefined"),
            "{who}: the onerror handler never ran"
        );
    }
}

/// The page's tab hidden (emulated: the page is told its document is hidden,
/// as a browser tells it when another tab is in front) for the page's away
/// delay: its box shows as away on the other page, and not once it is shown.
#[tokio::test]
async fn a_page_whose_tab_stays_hidden_shows_as_away_on_the_other_page_and_back_when_shown() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let server = TestServer::start().await;
    let alice = driver.person().await;
    let bob = driver.person().await;
    alice.open(&server).await;
    bob.open(&server).await;
    alice.join("alice").await;
    bob.join("bob").await;
    let alice_is = |away: bool| {
        move |view: &View| {
            view.boxes
                .iter()
                .any(|user| user.name == "alice" && user.away == away)
        }
    };
    bob.wait_until(WAIT, "alice, not away", alice_is(false))
        .await;

    alice
        .execute(SET_VISIBILITY.replace("STATE", "hidden").as_str())
        .await;
    // The page's away delay is 5 s.
    bob.wait_until(Duration::from_secs(15), "alice away", alice_is(true))
        .await;
    let users: Value = server
        .client
        .get(server.url("/users"))
        .send()
        .await
        .expect("GET /users")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        users["users"][0]["state"],
        serde_json::json!({"status": "away"})
    );

    alice
        .execute(SET_VISIBILITY.replace("STATE", "visible").as_str())
        .await;
    bob.wait_until(WAIT, "alice back", alice_is(false)).await;
}

/// Makes the page's document say it is STATE (hidden or visible) and tells it so.
const SET_VISIBILITY: &str = r#"
    Object.defineProperty(document, "visibilityState", { value: "STATE", configurable: true });
    document.dispatchEvent(new Event("visibilitychange"));
"#;

#[tokio::test]
async fn a_page_left_open_stays_online_for_longer_than_the_grace_period() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let grace = Duration::from_secs(1);
    let server = TestServer::with_args(&["--grace", "1s"]).await;
    let alice = driver.person().await;
    alice.open(&server).await;
    let alice_id = alice.join("alice").await;

    // Staying is the behaviour: watch it for twice the grace period.
    holds_for(
        2 * grace,
        "alice, her page open, still online",
        async || {
            let online = server.users().await;
            if online.iter().any(|user| user.id == alice_id) {
                Ok(())
            } else {
                Err(format!("{online:?}"))
            }
        },
    )
    .await;
    let view = alice.view().await;
    assert_eq!(
        view.my_names(),
        ["alice"],
        "her page still shows her own box"
    );
    assert!(!view.form_shown, "her page was not sent back to the form");
}

#[tokio::test]
async fn closing_a_page_removes_its_box_from_the_other_page_within_the_grace_period() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let grace = Duration::from_secs(1);
    let server = TestServer::with_args(&["--grace", "1s"]).await;
    let alice = driver.person().await;
    let bob = driver.person().await;
    alice.open(&server).await;
    alice.join("alice").await;
    bob.open(&server).await;
    let bob_id = bob.join("bob").await;
    alice
        .wait_until(WAIT, "bob's box", |view| view.has(&bob_id))
        .await;

    bob.close_page().await;

    let view = alice
        .wait_until(grace + Duration::from_secs(2), "bob's box gone", |view| {
            !view.has(&bob_id)
        })
        .await;
    assert_eq!(view.count, "1");
    let online = server.users().await;
    assert!(
        online.iter().all(|user| user.id != bob_id),
        "GET /users no longer lists bob: {online:?}"
    );
}

#[tokio::test]
async fn closing_a_page_tells_the_server_at_once_rather_than_after_the_grace_period() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    // A grace far longer than the wait below: only the beacon can remove the box in time.
    let server = TestServer::with_args(&["--grace", "60s"]).await;
    let alice = driver.person().await;
    let bob = driver.person().await;
    alice.open(&server).await;
    alice.join("alice").await;
    bob.open(&server).await;
    let bob_id = bob.join("bob").await;
    alice
        .wait_until(WAIT, "bob's box", |view| view.has(&bob_id))
        .await;

    bob.close_page().await;

    alice
        .wait_until(WAIT, "bob's box gone by his beacon", |view| {
            !view.has(&bob_id)
        })
        .await;
}

#[tokio::test]
async fn someone_who_has_not_joined_sees_who_is_online_as_soon_as_the_page_loads() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let server = TestServer::start().await;
    let (bob, _bob_stream) = join_from_terminal(&server, "bob").await;
    let watcher = driver.person().await;

    watcher.open(&server).await;

    // No wait: the box must be in the page as served, before any refresh.
    let view = watcher.view().await;
    assert_eq!(
        view.users_online(),
        vec![bob],
        "the served page holds bob's box"
    );
    assert_eq!(view.count, "1");
    assert!(view.my_names().is_empty(), "no box is marked as mine");
    assert!(view.form_shown, "the page still asks for a name");
}

#[tokio::test]
async fn someone_who_has_not_joined_sees_a_later_join_appear() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let server = TestServer::start().await;
    let watcher = driver.person().await;
    watcher.open(&server).await;

    let (carol, _carol_stream) = join_from_terminal(&server, "carol").await;

    // Live, through a watcher's stream: no polling interval to wait out.
    let view = watcher
        .wait_until(WAIT, "carol's box", |view| view.has(&carol.id))
        .await;
    assert_eq!(view.users_online(), vec![carol]);
    assert_eq!(view.count, "1");
    assert!(view.form_shown, "watching joins no one");
    assert_eq!(server.users().await.len(), 1);
}

#[tokio::test]
async fn pages_of_two_rooms_each_see_only_their_room_and_a_visitor_sees_it_live() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let server = TestServer::start().await;
    let design = format!("{}/rooms/design", server.base);
    let ops = format!("{}/rooms/ops", server.base);
    let mut people = Vec::new();
    for (page, name) in [
        (&design, "ada"),
        (&design, "al"),
        (&ops, "bob"),
        (&ops, "bea"),
    ] {
        let person = driver.person().await;
        person.open_at(page).await;
        person.join(name).await;
        people.push((person, page));
    }

    for (person, page) in &people {
        let room: [&str; 2] = if *page == &design {
            ["ada", "al"]
        } else {
            ["bea", "bob"]
        };
        person
            .wait_until(WAIT, &format!("{room:?} and no one else"), |view| {
                view.names() == room
            })
            .await;
    }
    let visitor = driver.person().await;
    visitor.open_at(&design).await;
    let (cy, _cy_stream) = {
        let (joined, stream, _) = server.in_room("design").join_and_subscribe("cy").await;
        (joined.user(), stream)
    };
    let view = visitor
        .wait_until(WAIT, "cy's box, live", |view| view.has(&cy.id))
        .await;
    assert_eq!(view.names(), ["ada", "al", "cy"]);
    assert!(view.form_shown, "the visitor has not joined");
    let (bob, _) = &people[2];
    holds_for(SETTLED_FOR, "ops without cy", async || {
        let view = bob.view().await;
        if view.names() == ["bea", "bob"] {
            Ok(())
        } else {
            Err(format!("{:?}", view.names()))
        }
    })
    .await;
    assert_eq!(server.users().await, [], "the lobby is a room of its own");
}

#[tokio::test]
async fn a_page_refused_by_a_restarted_server_joins_again_with_the_same_name() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let first = TestServer::start().await;
    let base = first.base.clone();
    let alice = driver.person().await;
    alice.open(&first).await;
    let old_id = alice.join("alice").await;

    // The restarted server knows no token, so the page's reconnecting stream gets 401.
    let _restarted = common::browser::restart(first, &[]).await;

    let online = eventually(
        WAIT,
        "alice online again on the restarted server",
        async || {
            let users = users_at(&base).await;
            match users.as_slice() {
                [user] if user.name == "alice" => Ok(user.clone()),
                _ => Err(format!("{users:?}")),
            }
        },
    )
    .await;
    assert_ne!(online.id, old_id, "a new join, with a new id");
    let view = alice
        .wait_until(WAIT, "her new box marked as hers", |view| {
            view.users_online() == [online.clone()] && view.my_names() == ["alice"]
        })
        .await;
    assert!(!view.form_shown, "she was not asked for her name again");
}

/// A deploy with `--state-file`: the lobby stops (SIGTERM's path: every
/// stream ends, the file is written) and starts again on the same address.
/// The pages resume with `Last-Event-ID` inside the grace period: nobody's
/// box goes, and nobody joins again (the server lists the same ids).
#[tokio::test]
async fn a_restart_with_a_state_file_is_invisible_to_joined_pages() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let file = std::env::temp_dir().join(format!("lobby-browser-state-{}", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let path = file.display().to_string();
    let flags = ["--state-file", path.as_str(), "--grace", "10s"];
    let server = TestServer::with_args(&flags).await;
    let base = server.base.clone();
    let alice = driver.person().await;
    let bob = driver.person().await;
    alice.open(&server).await;
    bob.open(&server).await;
    let alice_id = alice.join("alice").await;
    let bob_id = bob.join("bob").await;
    bob.wait_until(WAIT, "alice's box", |view| view.has(&alice_id))
        .await;
    let online = sorted(server.users().await);

    let (_restarted, ()) = tokio::join!(
        common::browser::restart(server, &flags),
        bob.keeps_showing(
            Duration::from_secs(4),
            "alice's box and his own throughout the restart",
            |view| view.has(&alice_id) && view.my_ids() == [bob_id.as_str()],
        ),
    );

    for (person, id, name) in [(&alice, &alice_id, "alice"), (&bob, &bob_id, "bob")] {
        let view = person
            .wait_until(WAIT, &format!("{name}'s page live again"), |view| {
                view.status == format!("You are {name}.")
            })
            .await;
        assert_eq!(
            view.my_ids(),
            [id.as_str()],
            "{name} is still who they were"
        );
        assert!(!view.form_shown);
    }
    holds_for(
        SETTLED_FOR,
        "the same people, no one joined again",
        async || {
            let users = sorted(users_at(&base).await);
            if users == online {
                Ok(())
            } else {
                Err(format!("{users:?}, not {online:?}"))
            }
        },
    )
    .await;
    let _ = std::fs::remove_file(&file);
}

/// A deploy of a cluster: each node in turn stopped (SIGTERM's path: its
/// streams end) and started again on its address, the next once the one
/// before is in step with Redis. Redis holds who is online, so each page
/// resumes with `Last-Event-ID` inside grace: nobody's box goes, and nobody
/// joins again (every node lists the same ids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_a_cluster_is_invisible_to_joined_pages() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let flags = ["--grace", "10s", "--node-timeout", "2s"];
    let mut cluster = Cluster::start(2, &flags).await;
    let bases: Vec<String> = cluster.nodes().map(|node| node.base.clone()).collect();
    let alice = driver.person().await;
    let bob = driver.person().await;
    alice.open_at(&bases[0]).await;
    bob.open_at(&bases[1]).await;
    let alice_id = alice.join("alice").await;
    let bob_id = bob.join("bob").await;
    for (person, other) in [(&alice, &bob_id), (&bob, &alice_id)] {
        person
            .wait_until(WAIT, "the other's box", |view| view.has(other))
            .await;
    }
    let online = sorted(users_at(&bases[0]).await);

    let restarts = async {
        for index in 0..bases.len() {
            cluster.restart_node(index, &flags).await;
        }
    };
    let during = Duration::from_secs(6);
    let ((), (), ()) = tokio::join!(
        restarts,
        alice.keeps_showing(during, "bob's box and her own throughout", |view| {
            view.has(&bob_id) && view.my_ids() == [alice_id.as_str()]
        }),
        bob.keeps_showing(during, "alice's box and his own throughout", |view| {
            view.has(&alice_id) && view.my_ids() == [bob_id.as_str()]
        }),
    );

    for (person, name) in [(&alice, "alice"), (&bob, "bob")] {
        person
            .wait_until(WAIT, &format!("{name}'s page live again"), |view| {
                view.status == format!("You are {name}.") && !view.form_shown
            })
            .await;
    }
    holds_for(SETTLED_FOR, "the same people on every node", async || {
        for base in &bases {
            let users = sorted(users_at(base).await);
            if users != online {
                return Err(format!("{base}: {users:?}, not {online:?}"));
            }
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn reloading_a_joined_page_never_shows_its_person_twice_to_the_others() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let server = TestServer::with_args(&["--grace", LONG_GRACE]).await;
    let alice = driver.person().await;
    let watcher = driver.person().await;
    alice.open(&server).await;
    let old_id = alice.join("alice").await;
    watcher.open(&server).await;
    watcher.join("watcher").await;
    watcher
        .wait_until(WAIT, "alice's box", |view| view.has(&old_id))
        .await;
    let alice_at_most_once = |view: &View| -> Vec<String> {
        let shown = view.ids_named("alice");
        assert!(shown.len() <= 1, "alice is never shown twice: {view:?}");
        shown
    };

    // The watcher looks while the reload happens, not only after it.
    let ((), settled) = tokio::join!(
        alice.reload(),
        watcher.wait_until(
            UNLOAD,
            "one box for alice, from her reloaded page",
            |view| { matches!(alice_at_most_once(view).as_slice(), [id] if *id != old_id) }
        ),
    );

    let new_id = settled.ids_named("alice").remove(0);
    watcher
        .keeps_showing(SETTLED_FOR, "alice's one new box, and no other", |view| {
            alice_at_most_once(view) == [new_id.as_str()]
        })
        .await;
}

#[tokio::test]
async fn reloading_a_joined_page_leaves_and_joins_again_on_the_server_at_once() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let server = TestServer::with_args(&["--grace", LONG_GRACE]).await;
    let alice = driver.person().await;
    alice.open(&server).await;
    let old_id = alice.join("alice").await;

    alice.reload().await;

    // The old user goes by the beacon: the grace would keep it for 30 s.
    let online = eventually(UNLOAD, "one alice on the server, a new one", async || {
        let users = server.users().await;
        match users
            .iter()
            .filter(|user| user.name == "alice")
            .collect::<Vec<_>>()[..]
        {
            [user] if user.id != old_id => Ok(user.clone()),
            _ => Err(format!("{users:?}")),
        }
    })
    .await;
    // Her box is marked from the join's reply, and the form hidden once her
    // stream is live, a request later: wait for both (a loaded machine shows
    // the moment between).
    alice
        .wait_until(
            WAIT,
            "her page marking the new user as hers, not asking her name again",
            |view| view.my_ids() == [online.id.as_str()] && !view.form_shown,
        )
        .await;
}

#[tokio::test]
async fn navigating_a_joined_page_elsewhere_leaves_at_once_and_joins_nobody() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let server = TestServer::with_args(&["--grace", LONG_GRACE]).await;
    // Where Chromium can keep the page in its back-forward cache, the page is
    // frozen and its stream closes after `pagehide`. Without the cache (a page
    // that is not eligible, another browser) the stream closes first, as in a reload.
    let alice = driver.person_without_back_forward_cache().await;
    let watcher = driver.person().await;
    alice.open(&server).await;
    let alice_id = alice.join("alice").await;
    watcher.open(&server).await;
    watcher.join("watcher").await;
    watcher
        .wait_until(WAIT, "alice's box", |view| view.has(&alice_id))
        .await;

    alice.go_to("about:blank").await;

    watcher
        .wait_until(UNLOAD, "alice's box gone by her beacon", |view| {
            !view.has(&alice_id)
        })
        .await;
    holds_for(SETTLED_FOR, "nobody named alice online", async || {
        let users = server.users().await;
        if users.iter().any(|user| user.name == "alice") {
            Err(format!("{users:?}"))
        } else {
            Ok(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_joined_page_says_it_is_reconnecting_when_the_server_stops() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let server = TestServer::start().await;
    let alice = driver.joined_page(&server, "alice").await;
    alice
        .wait_until(WAIT, "her status saying who she is", |view| {
            view.status == "You are alice."
        })
        .await;

    server.shutdown().await;

    alice
        .wait_until(WAIT, "a status saying it reconnects", |view| {
            view.status.contains("Reconnecting")
        })
        .await;
}

// ---- people and their pages ----

/// One person: a browser of their own, showing lobby's page in one tab.
struct Person {
    client: Client,
}

/// What a page shows, read in one go so that it is consistent.
#[derive(Debug, Deserialize)]
struct View {
    boxes: Vec<UserBox>,
    count: String,
    images: usize,
    form_shown: bool,
    /// The status line's text, or empty while it is hidden.
    status: String,
}

#[derive(Debug, Deserialize)]
struct UserBox {
    id: String,
    name: String,
    me: bool,
    /// Shown as away (dimmed).
    away: bool,
}

const READ_VIEW: &str = r#"
    const list = document.getElementById("users");
    return {
        boxes: [...list.querySelectorAll("[data-user-id]")].map((element) => ({
            id: element.dataset.userId,
            name: element.textContent,
            me: element.classList.contains("me"),
            away: element.classList.contains("away"),
        })),
        count: document.getElementById("count").textContent,
        images: list.querySelectorAll("img").length,
        form_shown: !document.getElementById("join").hidden,
        status: (({ hidden, textContent }) => hidden ? "" : textContent)(
            document.getElementById("status"),
        ),
    };
"#;

impl Person {
    async fn open(&self, server: &TestServer) {
        self.open_at(&server.base).await;
    }

    async fn open_at(&self, url: &str) {
        self.client.goto(url).await.expect("open the page");
    }

    /// Types the name into the form as a person would, submits it, and waits
    /// until the page shows the person's own box. Returns its id.
    async fn join(&self, name: &str) -> String {
        submit_join_form(&self.client, name).await;
        let view = self
            .wait_until(WAIT, &format!("{name:?} joined"), |view| {
                view.my_names() == [name]
            })
            .await;
        view.boxes
            .into_iter()
            .find(|user| user.me)
            .map(|user| user.id)
            .expect("a box marked as mine")
    }

    /// Reloads the page as a person does (F5), and waits until it has loaded.
    async fn reload(&self) {
        self.client.refresh().await.expect("reload the page");
    }

    /// Leaves lobby's page for another address in the same tab.
    async fn go_to(&self, url: &str) {
        self.client.goto(url).await.expect("navigate elsewhere");
    }

    async fn view(&self) -> View {
        serde_json::from_value(self.execute(READ_VIEW).await).expect("a view of the page")
    }

    async fn execute(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .expect("run a script in the page")
    }

    /// Polls the page until `ready` holds; panics with the last view if it does not within `within`.
    async fn wait_until(
        &self,
        within: Duration,
        what: &str,
        ready: impl Fn(&View) -> bool,
    ) -> View {
        eventually(within, what, async || {
            let view = self.view().await;
            if ready(&view) {
                Ok(view)
            } else {
                Err(format!("{view:?}"))
            }
        })
        .await
    }

    /// Polls the page for `during`; panics with the view the first time `holds` does not.
    async fn keeps_showing(&self, during: Duration, what: &str, holds: impl Fn(&View) -> bool) {
        holds_for(during, what, async || {
            let view = self.view().await;
            if holds(&view) {
                Ok(())
            } else {
                Err(format!("{view:?}"))
            }
        })
        .await
    }

    /// Closes the page's tab the way a person does; the browser stays open on a
    /// blank tab, so it has time to send what the page queued while closing.
    async fn close_page(&self) {
        let page = self.client.window().await.expect("the page's tab");
        let blank = self.client.new_window(true).await.expect("a blank tab");
        self.client
            .switch_to_window(page)
            .await
            .expect("back to the page");
        self.client
            .close_window()
            .await
            .expect("close the page's tab");
        self.client
            .switch_to_window(blank.handle)
            .await
            .expect("switch to the blank tab");
    }
}

impl View {
    fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.boxes.iter().map(|user| user.name.as_str()).collect();
        names.sort_unstable();
        names
    }

    fn my_names(&self) -> Vec<&str> {
        self.boxes
            .iter()
            .filter(|user| user.me)
            .map(|user| user.name.as_str())
            .collect()
    }

    fn my_ids(&self) -> Vec<&str> {
        self.boxes
            .iter()
            .filter(|user| user.me)
            .map(|user| user.id.as_str())
            .collect()
    }

    /// The ids of the boxes that show `name`.
    fn ids_named(&self, name: &str) -> Vec<String> {
        self.boxes
            .iter()
            .filter(|user| user.name == name)
            .map(|user| user.id.clone())
            .collect()
    }

    fn has(&self, id: &str) -> bool {
        self.boxes.iter().any(|user| user.id == id)
    }

    /// The boxes as users, sorted by id, to compare with GET /users.
    fn users_online(&self) -> Vec<User> {
        sorted(
            self.boxes
                .iter()
                .map(|user| User {
                    id: user.id.clone(),
                    name: user.name.clone(),
                })
                .collect(),
        )
    }
}

fn sorted(mut users: Vec<User>) -> Vec<User> {
    users.sort_by(|a, b| a.id.cmp(&b.id));
    users
}

/// Someone joined with curl, holding a stream open so they stay online.
async fn join_from_terminal(server: &TestServer, name: &str) -> (User, Sse) {
    let (joined, stream, _) = server.join_and_subscribe(name).await;
    (
        User {
            id: joined.id,
            name: joined.name,
        },
        stream,
    )
}

// ---- a restarted server ----

async fn users_at(base: &str) -> Vec<User> {
    #[derive(Deserialize)]
    struct Users {
        users: Vec<User>,
    }
    let response = reqwest::get(format!("{base}/users"))
        .await
        .expect("GET /users");
    assert_eq!(response.status(), 200);
    response.json::<Users>().await.expect("users JSON").users
}

// ---- people's browsers ----

impl Chromedriver {
    /// A new browser with a profile of its own.
    async fn person(&self) -> Person {
        Person {
            client: self.browser(&[]).await,
        }
    }

    /// A new browser on `server`'s page, joined through its form as `name`.
    async fn joined_page(&self, server: &TestServer, name: &str) -> Person {
        let person = self.person().await;
        person.open(server).await;
        person.join(name).await;
        person
    }

    /// A new browser that keeps no page in its back-forward cache, so that a
    /// page navigated away from is unloaded rather than frozen.
    async fn person_without_back_forward_cache(&self) -> Person {
        Person {
            client: self.browser(&["--disable-back-forward-cache"]).await,
        }
    }
}
