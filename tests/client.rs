//! `<lobby-presence>` as other sites use it: headless Chromium, driven through
//! chromedriver by fantoccini, opens pages of "another site" (a small server on
//! a port of its own, so an origin of its own) that load `/lobby.js` from a
//! real lobby on 127.0.0.1 and embed the element. What the element shows is
//! read from its shadow root and held against what the lobby itself says
//! (`/rooms/{room}/users`, `/metrics`, a stream read by the test). Where
//! Chromium or chromedriver is missing the tests say they were skipped,
//! unless `CI=true`, where they fail.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::get;
use common::browser::{Chromedriver, ConsoleEntry, console, eventually, holds_for, poll_until};
use common::metrics::scrape;
use common::{Came, Joined, Sse, TestServer, User, ticket_with, user_in};
use fantoccini::Client;
use fantoccini::wd::WindowHandle;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long to wait for something the element should do at once.
const WAIT: Duration = Duration::from_secs(5);

/// How long a page may take to get over a restarted lobby: its stream drops,
/// it waits the lobby's retry (1 to 2 s, or its backoff if it found the lobby
/// down), and joins again.
const REJOIN: Duration = Duration::from_secs(10);

/// How long a closed tab may take to reach the server. Well under the grace
/// these tests set, so only the element's own beacon can explain a leave by then.
const UNLOAD: Duration = Duration::from_secs(3);

/// A grace far longer than any test: a person whose stream closed stays
/// online unless their page says they leave.
const LONG_GRACE: &str = "30s";

/// How long a settled view is watched for something that must not come.
const SETTLED_FOR: Duration = Duration::from_secs(1);

/// The room the example page shows.
const ROOM: &str = "doc-42";

/// The secret the site and the lobby share for signed joins.
const SECRET: &str = "a-secret-the-site-and-lobby-share-0123456789";

/// The example of a page of another site, as the project ships it.
const EMBED_PAGE: &str = include_str!("../examples/embed/index.html");

/// Where the example page says the lobby is; the site serves it with the test lobby's address.
const EXAMPLE_LOBBY: &str = "http://127.0.0.1:3000";

/// A page of a site with signed joins: its script gives the element a
/// `getTicket` that asks the site's backend for a fresh ticket, in the task
/// that defines the element, as docs/client.md says a site does.
const SIGNED_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>doc-42 · signed in</title></head>
<body>
  <lobby-presence src="LOBBY" room="doc-42"></lobby-presence>
  <script type="module">
    import "LOBBY/lobby.js";
    document.querySelector("lobby-presence").getTicket = async () => (await fetch("/ticket")).text();
  </script>
</body>
</html>"#;

/// The person the site's tickets are for.
const TICKET_SUB: &str = "ada-1";
const TICKET_NAME: &str = "Ada";

#[tokio::test]
async fn a_page_of_another_site_shows_its_room_s_joins_and_leaves_live_and_no_other_room() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let (site, server) = site_and_lobby(Allow::Site, &[]).await;
    let room = server.in_room(ROOM);
    let ada = driver.visitor().await;
    ada.open(&site.page("/?name=Ada")).await;
    ada.wait_until(WAIT, "Ada's own box", |shown| shown.my_names() == ["Ada"])
        .await;

    // From the terminal: one person in another room, then one in the page's room.
    let (_carol, _carol_stream, _) = server.in_room("other").join_and_subscribe("carol").await;
    let (bob, _bob_stream, _) = room.join_and_subscribe("bob").await;

    let shown = ada
        .wait_until(WAIT, "bob's box beside Ada's", |shown| {
            shown.names() == ["Ada", "bob"]
        })
        .await;
    assert_eq!(shown.count, "2");
    assert_eq!(
        shown.users_online(),
        sorted(room.users().await),
        "the boxes are the room's users, ids and names"
    );

    assert_eq!(room.leave(&bob.token).await, 204);

    let shown = ada
        .wait_until(WAIT, "bob's box gone", |shown| shown.names() == ["Ada"])
        .await;
    assert_eq!(shown.count, "1");
    assert_eq!(shown.users_online(), sorted(room.users().await));
    ada.keeps_showing(
        SETTLED_FOR,
        "Ada alone: carol is in another room",
        |shown| shown.names() == ["Ada"],
    )
    .await;
}

#[tokio::test]
async fn a_site_missing_from_cors_origin_sees_an_error_naming_the_flag_in_the_element_and_the_console()
 {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let (site, server) = site_and_lobby(Allow::NoSite, &[]).await;
    let ada = driver.visitor().await;
    let flag = format!("--cors-origin {}", site.origin);

    ada.open(&site.page("/?name=Ada")).await;

    // It gives up at once, saying why, rather than retrying without a word.
    let shown = ada
        .wait_until(WAIT, "an error naming the flag, and giving up", |shown| {
            shown.error.contains(&flag) && shown.status.as_deref() == Some("closed")
        })
        .await;
    assert!(shown.boxes.is_empty(), "{shown:?}");
    let mut said = Vec::new();
    eventually(WAIT, "the element's error in the console", async || {
        said.extend(console(&ada.client).await);
        said.iter()
            .find(|line| {
                // The message is quoted as JSON, `<` as `\u003C`.
                line.level == "SEVERE"
                    && line.message.contains("lobby-presence>: ")
                    && line.message.contains(&flag)
            })
            .map(|_| ())
            .ok_or_else(|| format!("{said:?}"))
    })
    .await;
    assert_eq!(server.in_room(ROOM).users().await, [], "nobody joined");
}

#[tokio::test]
async fn three_tabs_of_one_person_show_the_same_list_from_one_join_and_one_stream() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let tabs = AdaInThreeTabs::open(&driver).await;

    holds_for(
        SETTLED_FOR,
        "one join and one stream for Ada's three tabs",
        async || {
            let (metrics, users) = (tabs.metrics().await, tabs.room.users().await);
            if metrics.one_stream_for_ada() && users.len() == 2 {
                Ok(())
            } else {
                Err(format!("{metrics:?} {users:?}"))
            }
        },
    )
    .await;
    for tab in &tabs.tabs {
        tabs.ada.switch_to(tab).await;
        tabs.ada
            .wait_until(WAIT, "Ada and Grace in every tab", both_live)
            .await;
    }
}

#[tokio::test]
async fn closing_the_leading_tab_hands_the_stream_to_another_tab_and_nobody_sees_a_leave() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let mut tabs = AdaInThreeTabs::open(&driver).await;

    tabs.close(0).await;

    tabs.wait_for_resumes(1).await;
    for tab in &tabs.tabs[1..] {
        tabs.ada.switch_to(tab).await;
        tabs.ada
            .wait_until(WAIT, "the same list in the tabs left", both_live)
            .await;
    }
    no_one_comes_or_goes(&mut tabs.grace_stream).await;
    assert_eq!(tabs.room.users().await.len(), 2);
}

#[tokio::test]
async fn closing_the_last_of_a_person_s_tabs_tells_the_others_at_once() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let mut tabs = AdaInThreeTabs::open(&driver).await;
    tabs.close(0).await;
    tabs.wait_for_resumes(1).await;
    tabs.close(1).await;
    tabs.wait_for_resumes(2).await;
    no_one_comes_or_goes(&mut tabs.grace_stream).await;

    let closed = Instant::now();
    tabs.close(2).await;

    let Some(left) = tabs.grace_stream.next_within(UNLOAD).await else {
        panic!(
            "expected Ada's leave within {UNLOAD:?} of closing her last tab (the grace is \
             {LONG_GRACE}); the lobby still has {:?}",
            tabs.room.users().await
        );
    };
    assert_eq!(
        (left.event.as_str(), user_in(&left)),
        ("disconnect_user", tabs.ada_user.clone()),
        "Grace sees Ada leave"
    );
    assert!(closed.elapsed() < UNLOAD, "by the beacon, not the grace");
    assert_eq!(tabs.room.users().await, [tabs.grace.user()]);
}

#[tokio::test]
async fn a_page_refused_by_a_restarted_lobby_joins_again_by_itself_with_the_same_name() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let (site, server) = site_and_lobby(Allow::Site, &[]).await;
    let ada = driver.visitor().await;
    ada.open(&site.page("/?name=Ada")).await;
    let old = ada
        .wait_until(WAIT, "Ada joined", |shown| shown.my_names() == ["Ada"])
        .await;

    // The restarted lobby knows no token: the element's stream gets 401.
    let restarted = restart_with(server, &site.lobby_args).await;
    let room = restarted.in_room(ROOM);

    let online = eventually(
        REJOIN,
        "Ada online again on the restarted lobby",
        async || match room.users().await.as_slice() {
            [user] if user.name == "Ada" => Ok(user.clone()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    assert_ne!(
        Some(&online.id),
        old.me.as_ref(),
        "a new join, with a new id"
    );
    ada.wait_until(WAIT, "the new box, marked as hers", |shown| {
        shown.users_online() == [online.clone()] && shown.my_names() == ["Ada"]
    })
    .await;
}

#[tokio::test]
async fn a_page_with_signed_joins_refused_by_a_restarted_lobby_joins_again_with_a_fresh_ticket() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let (site, server) = site_and_lobby(Allow::Site, &["--join-secret", SECRET]).await;
    let ada = driver.visitor().await;
    ada.open(&site.page("/signed")).await;
    ada.wait_until(WAIT, "Ada joined by her ticket", |shown| {
        shown.me.as_deref() == Some(TICKET_SUB) && shown.my_names() == [TICKET_NAME]
    })
    .await;
    assert_eq!(site.tickets_given(), 1, "one ticket to join");

    let restarted = restart_with(server, &site.lobby_args).await;
    let room = restarted.in_room(ROOM);

    // Her token is void, so she joins again, with a ticket asked of getTicket.
    eventually(
        REJOIN,
        "a second ticket asked of the site",
        async || match site.tickets_given() {
            2 => Ok(()),
            given => Err(format!(
                "{given} ticket(s) given; the restarted lobby has {:?}; the page shows {:?}",
                room.users().await,
                ada.shown().await
            )),
        },
    )
    .await;
    let ada_user = User {
        id: TICKET_SUB.to_owned(),
        name: TICKET_NAME.to_owned(),
    };
    eventually(WAIT, "Ada online on the restarted lobby", async || {
        let users = room.users().await;
        if users == [ada_user.clone()] {
            Ok(())
        } else {
            Err(format!("{users:?}"))
        }
    })
    .await;
    ada.wait_until(WAIT, "her box, marked as hers", |shown| {
        shown.users_online() == [ada_user.clone()] && shown.my_names() == [TICKET_NAME]
    })
    .await;
}

#[tokio::test]
async fn a_watching_page_shows_joins_and_leaves_live_and_is_never_among_the_users() {
    let Some(driver) = Chromedriver::start_or_skip().await else {
        return;
    };
    let (site, server) = site_and_lobby(Allow::Site, &[]).await;
    let room = server.in_room(ROOM);
    let watcher = driver.visitor().await;
    watcher.open(&site.page("/")).await;
    watcher
        .wait_until(WAIT, "an empty room, live", |shown| {
            shown.status.as_deref() == Some("live") && shown.count == "0"
        })
        .await;

    let (bob, _bob_stream, _) = room.join_and_subscribe("bob").await;

    let shown = watcher
        .wait_until(WAIT, "bob's box", |shown| shown.names() == ["bob"])
        .await;
    assert_eq!(shown.users_online(), [bob.user()]);
    assert_eq!(room.users().await, [bob.user()], "the watcher is no user");
    assert!(
        shown.my_names().is_empty() && shown.me.is_none(),
        "{shown:?}"
    );

    assert_eq!(room.leave(&bob.token).await, 204);

    let shown = watcher
        .wait_until(WAIT, "bob's box gone", |shown| shown.boxes.is_empty())
        .await;
    assert_eq!(shown.count, "0");
    assert_eq!(room.users().await, []);
    assert_eq!(
        server_metrics(&server).await.joins,
        1.0,
        "bob's was the one join"
    );
}

// ---- another site ----

/// Whether the lobby's `--cors-origin` lists the site.
enum Allow {
    Site,
    NoSite,
}

/// Another site, on a port of its own of 127.0.0.1: the example page at `/`,
/// a page with signed joins at `/signed`, `/ticket`, its backend's fresh
/// ticket for `TICKET_SUB`, and no favicon (so the console holds only what
/// the pages say). Stops when dropped.
struct Site {
    origin: String,
    /// The flags its lobby was started with, to start it again with them.
    lobby_args: Vec<String>,
    tickets: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

/// A site and a lobby started with `lobby_args` (plus `--cors-origin` with the
/// site's origin, if allowed). The site's port is taken first: the lobby must
/// know the site's origin, and the site's pages the lobby's address.
async fn site_and_lobby(allow: Allow, lobby_args: &[&str]) -> (Site, TestServer) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port for the site");
    let origin = format!("http://{}", listener.local_addr().expect("its address"));
    let mut args: Vec<String> = lobby_args.iter().map(|arg| arg.to_string()).collect();
    if let Allow::Site = allow {
        args.extend(["--cors-origin".to_owned(), origin.clone()]);
    }
    let server = TestServer::with_args(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;

    assert!(
        EMBED_PAGE.contains(EXAMPLE_LOBBY),
        "the example page names {EXAMPLE_LOBBY}"
    );
    let embed = EMBED_PAGE.replace(EXAMPLE_LOBBY, &server.base);
    let signed = SIGNED_PAGE.replace("LOBBY", &server.base);
    let tickets = Arc::new(AtomicUsize::new(0));
    let given = tickets.clone();
    let router = Router::new()
        .route("/", get(move || async move { Html(embed) }))
        .route("/signed", get(move || async move { Html(signed) }))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/ticket",
            get(move || async move {
                given.fetch_add(1, Ordering::SeqCst);
                fresh_ticket()
            }),
        );
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .await
            .expect("the site serves");
    });
    let site = Site {
        origin,
        lobby_args: args,
        tickets,
        task,
    };
    (site, server)
}

impl Site {
    fn page(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    /// How many tickets the site's backend has given.
    fn tickets_given(&self) -> usize {
        self.tickets.load(Ordering::SeqCst)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A ticket for `TICKET_SUB`, good for a minute, as a site mints one per request.
fn fresh_ticket() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let claims = json!({"sub": TICKET_SUB, "name": TICKET_NAME, "exp": now + 60});
    ticket_with(SECRET, jsonwebtoken::Algorithm::HS256, &claims)
}

// ---- the lobby ----

/// Stops `server` and starts a fresh lobby with the same flags on its address.
async fn restart_with(server: TestServer, args: &[String]) -> TestServer {
    let flags: Vec<&str> = args.iter().map(String::as_str).collect();
    common::browser::restart(server, &flags).await
}

/// What `/metrics` says of joins and streams.
#[derive(Debug)]
struct Metrics {
    joins: f64,
    open_streams: f64,
    /// Streams opened with Last-Event-ID, replayed or given a snapshot.
    resumes: f64,
}

async fn server_metrics(server: &TestServer) -> Metrics {
    let scrape = scrape(server).await;
    Metrics {
        joins: scrape.get("lobby_joins_total"),
        open_streams: scrape.get("lobby_open_streams"),
        resumes: scrape.get("lobby_resumes_total{outcome=\"replayed\"}")
            + scrape.get("lobby_resumes_total{outcome=\"snapshot\"}"),
    }
}

impl Metrics {
    /// Two joins (Grace's and Ada's) and two streams: Ada's tabs share one.
    fn one_stream_for_ada(&self) -> bool {
        self.joins == 2.0 && self.open_streams == 2.0
    }
}

/// The next event of `stream`, which must be `name`'s join; returns them.
async fn expect_join(stream: &mut Sse, name: &str) -> User {
    let event = stream.next_event().await;
    let user = user_in(&event);
    assert_eq!(
        (event.event.as_str(), user.name.as_str()),
        ("new_user", name)
    );
    user
}

/// Reads `stream` for `SETTLED_FOR`; panics on a join or a leave (a state
/// update, such as away, may come).
async fn no_one_comes_or_goes(stream: &mut Sse) {
    let until = Instant::now() + SETTLED_FOR;
    loop {
        match stream.try_next_until(until).await {
            Ok(Came::Quiet) => return,
            Ok(Came::Event(event)) if event.event == "user_updated" => {}
            Ok(Came::Event(event)) => panic!("nobody joins or leaves, but {event:?}"),
            Ok(Came::End) => panic!("the stream ended"),
            Err(why) => panic!("{why}"),
        }
    }
}

// ---- one person in three tabs ----

/// Ada's browser with three tabs of the example page, `?name=Ada`, each live
/// before the next opens (so the first holds the lock and leads), beside
/// Grace, who joined from the terminal and whose stream shows what everyone
/// sees of Ada. The lobby's grace is long: only a beacon makes Ada leave soon.
struct AdaInThreeTabs {
    _site: Site,
    server: TestServer,
    room: common::Client,
    ada: Visitor,
    tabs: Vec<WindowHandle>,
    ada_user: User,
    grace: Joined,
    grace_stream: Sse,
}

/// Ada and Grace, Ada's box marked as hers, the list live.
fn both_live(shown: &Shown) -> bool {
    shown.names() == ["Ada", "Grace"]
        && shown.my_names() == ["Ada"]
        && shown.status.as_deref() == Some("live")
}

impl AdaInThreeTabs {
    async fn open(driver: &Chromedriver) -> AdaInThreeTabs {
        let (site, server) = site_and_lobby(Allow::Site, &["--grace", LONG_GRACE]).await;
        let room = server.in_room(ROOM);
        let (grace, mut grace_stream, _) = room.join_and_subscribe("Grace").await;
        let ada = driver.visitor().await;
        let page = site.page("/?name=Ada");
        let mut tabs = Vec::new();
        for _ in 0..3 {
            tabs.push(ada.open_tab(&page).await);
            ada.wait_until(WAIT, "Ada and Grace, Ada's marked as hers", both_live)
                .await;
        }
        let ada_user = expect_join(&mut grace_stream, "Ada").await;
        AdaInThreeTabs {
            _site: site,
            server,
            room,
            ada,
            tabs,
            ada_user,
            grace,
            grace_stream,
        }
    }

    async fn close(&self, tab: usize) {
        self.ada.close_tab(&self.tabs[tab]).await;
    }

    async fn metrics(&self) -> Metrics {
        server_metrics(&self.server).await
    }

    /// Waits until Ada's stream has been resumed by `count` tabs, with one
    /// join and one stream for her still.
    async fn wait_for_resumes(&self, count: u32) {
        let what = format!("{count} tab(s) resuming Ada's stream");
        eventually(WAIT, &what, async || {
            let metrics = self.metrics().await;
            if metrics.one_stream_for_ada() && metrics.resumes == f64::from(count) {
                Ok(())
            } else {
                Err(format!("{metrics:?}"))
            }
        })
        .await;
    }
}

// ---- a visitor's browser and what the element shows ----

/// One person's browser (a profile of its own) on pages of the site.
struct Visitor {
    client: Client,
    /// The tab the browser opened with, which stays open.
    first_tab: WindowHandle,
}

/// What a page's `<lobby-presence>` shows, read in one go from its shadow
/// root, and where its presence stands.
#[derive(Debug, Deserialize)]
struct Shown {
    boxes: Vec<UserBox>,
    /// The count part's number.
    count: String,
    /// The error part's text, or empty while it is hidden.
    error: String,
    /// `presence.status`, or none before the element has a presence.
    status: Option<String>,
    /// `presence.me.id`, once joined.
    me: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UserBox {
    id: String,
    name: String,
    me: bool,
}

const READ_ELEMENT: &str = r#"
    const element = document.querySelector("lobby-presence");
    const root = element?.shadowRoot;
    if (!root) return { boxes: [], count: "", error: "", status: null, me: null };
    const error = root.querySelector("[part=error]");
    return {
        boxes: [...root.querySelectorAll("[part=list] > li")].map((box) => ({
            id: box.dataset.userId,
            name: box.querySelector(".name").textContent,
            me: box.classList.contains("me"),
        })),
        count: root.querySelector("[part=count] span").textContent,
        error: error.hidden ? "" : error.textContent,
        status: element.presence?.status ?? null,
        me: element.presence?.me?.id ?? null,
    };
"#;

impl Chromedriver {
    async fn visitor(&self) -> Visitor {
        let client = self.browser_keeping_console(&[]).await;
        let first_tab = client.window().await.expect("the first tab");
        Visitor { client, first_tab }
    }
}

impl Visitor {
    async fn open(&self, url: &str) {
        self.client.goto(url).await.expect("open the page");
    }

    /// Opens `url` in a new tab of this browser, which becomes the current one.
    async fn open_tab(&self, url: &str) -> WindowHandle {
        let tab = self
            .client
            .new_window(true)
            .await
            .expect("a new tab")
            .handle;
        self.switch_to(&tab).await;
        self.open(url).await;
        tab
    }

    async fn switch_to(&self, tab: &WindowHandle) {
        self.client
            .switch_to_window(tab.clone())
            .await
            .expect("switch tabs");
    }

    /// Closes `tab` the way a person does. The browser stays open on its
    /// first tab, so it has time to send what the page queued while closing.
    async fn close_tab(&self, tab: &WindowHandle) {
        self.switch_to(tab).await;
        self.client.close_window().await.expect("close the tab");
        self.switch_to(&self.first_tab).await;
    }

    async fn shown(&self) -> Shown {
        let read = self
            .client
            .execute(READ_ELEMENT, vec![])
            .await
            .expect("read the element");
        serde_json::from_value(read).expect("what the element shows")
    }

    /// The Web Locks the tab's origin holds and waits for, by name: which
    /// stream a tab leads, or waits to lead.
    async fn locks(&self) -> Value {
        self.client
            .execute(
                "return navigator.locks.query().then(({ held, pending }) => \
                 ({ held: held.map((lock) => lock.name), pending: pending.map((lock) => lock.name) }));",
                vec![],
            )
            .await
            .expect("query the Web Locks")
    }

    /// Polls the current tab until `ready` holds; panics with what it showed
    /// last, and the console, if it does not within `within`.
    async fn wait_until(
        &self,
        within: Duration,
        what: &str,
        ready: impl Fn(&Shown) -> bool,
    ) -> Shown {
        let waited = poll_until(within, async || {
            let shown = self.shown().await;
            if ready(&shown) {
                Ok(shown)
            } else {
                Err(format!("{shown:?}"))
            }
        })
        .await;
        match waited {
            Ok(shown) => shown,
            Err(seen) => {
                let said: Vec<ConsoleEntry> = console(&self.client).await;
                let locks = self.locks().await;
                panic!(
                    "expected {what} within {within:?}; last saw {seen}; the console said \
                     {said:?}; the page's Web Locks: {locks}"
                )
            }
        }
    }

    /// Polls the current tab for `during`; panics the first time `holds` does not.
    async fn keeps_showing(&self, during: Duration, what: &str, holds: impl Fn(&Shown) -> bool) {
        holds_for(during, what, async || {
            let shown = self.shown().await;
            if holds(&shown) {
                Ok(())
            } else {
                Err(format!("{shown:?}"))
            }
        })
        .await
    }
}

impl Shown {
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

    /// The boxes as users, sorted by id, to compare with the lobby's users.
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
