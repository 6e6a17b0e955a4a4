//! `lobby watch URL [--name NAME | --ticket JWT]`, the friendly version of the curl session: with a
//! name it joins, prints who is online and then a line per join and leave from the
//! event stream, and leaves on Ctrl-C; without one it follows a watcher's stream
//! (GET /events with no token), joining no one. URL is a lobby or one of its
//! rooms (`http://host:3000/rooms/design`). It is a client of the HTTP API only,
//! like any other.

use std::borrow::Cow;
use std::io::Write;
use std::time::Duration;

use eventsource_stream::Eventsource;
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use tokio_stream::StreamExt;

/// `lobby watch`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// The lobby, such as http://127.0.0.1:3000 or https://lobby.example.com/chat/,
    /// or one of its rooms, such as http://127.0.0.1:3000/rooms/design
    /// (http:// is assumed when no scheme is given).
    #[arg(value_name = "URL", value_parser = parse_url)]
    pub url: Url,

    /// Join under this name and follow the event stream (leaving on Ctrl-C).
    /// Without it, follow the stream as a watcher, without joining.
    #[arg(long, value_name = "NAME", conflicts_with = "ticket")]
    pub name: Option<String>,

    /// Join with this ticket (a JWT your site signed, for a lobby started
    /// with --join-secret): who you are is the ticket's. Then as --name.
    #[arg(long, value_name = "JWT")]
    pub ticket: Option<String>,

    /// Without --name, against a lobby too old to have watchers: how often
    /// to ask GET /users instead.
    #[arg(long, default_value = "2s", value_name = "DUR", value_parser = crate::config::parse_positive_duration, conflicts_with_all = ["name", "ticket"])]
    pub every: Duration,
}

/// Why `lobby watch` stopped other than by Ctrl-C or SIGTERM. Each is one line
/// on stderr: what a person needs to act on it.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot reach {url}: {cause}")]
    Unreachable { url: Url, cause: String },
    /// The server's own sentence, from its `{"error": "…"}`.
    #[error("{0}")]
    Refused(String),
    #[error("{url} answered {status}; is it a lobby?")]
    NotALobby { url: Url, status: StatusCode },
    #[error(
        "the lobby no longer knows {name}: it restarted, or this client was away longer than its grace period; run lobby watch again to rejoin"
    )]
    Forgotten { name: String },
    #[error("cannot write to stdout: {0}")]
    Output(#[from] std::io::Error),
}

/// Someone online, as the API shows them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct User {
    pub id: String,
    pub name: String,
    /// What they are doing, once they said (`POST /state`).
    #[serde(default)]
    pub state: Option<serde_json::Value>,
}

/// A stream silent for this long (no event, no keep-alive comment) is taken for
/// dead and reopened: four keep-alives at the server's default of 15 s.
const STREAM_SILENCE: Duration = Duration::from_secs(60);
/// Between failed attempts to reopen the stream, as an EventSource waits.
/// (The server's `retry:` comes in a block of its own, which SSE parsers drop.)
const RETRY: Duration = Duration::from_secs(1);
/// Every request but the stream must be answered within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The leave after Ctrl-C: shorter, since a second Ctrl-C no longer kills the
/// process, and the grace period removes us anyway if the leave is lost.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs `lobby watch` until `shutdown` resolves (then leaves, if it joined) or
/// until something stops it.
pub async fn run(args: WatchArgs, shutdown: impl Future<Output = ()>) -> Result<(), WatchError> {
    let lobby = Lobby::new(args.url);
    let mut out = Printer::new(std::io::stdout());
    let joiner = match (args.name, args.ticket) {
        (Some(name), _) => Some(serde_json::json!({ "name": name })),
        (None, Some(ticket)) => Some(serde_json::json!({ "ticket": ticket })),
        (None, None) => None,
    };
    match joiner {
        Some(joiner) => follow_as(&lobby, &joiner, &mut out, shutdown).await,
        None => {
            tokio::select! {
                result = watch_or_poll(&lobby, args.every, &mut out) => result,
                () = shutdown => Ok(()),
            }
        }
    }
}

/// Follows a watcher's stream; a lobby that refuses one (401: it has no
/// watchers) is asked GET /users every `every` instead.
async fn watch_or_poll(
    lobby: &Lobby,
    every: Duration,
    out: &mut Printer<impl Write>,
) -> Result<(), WatchError> {
    match follow(lobby, None, out).await {
        Err(WatchError::Forgotten { .. }) => poll_users(lobby, every, out).await,
        other => other,
    }
}

/// Joins (`joiner`: a name or a ticket, as the join's JSON body), follows
/// the stream until shutdown, then leaves.
async fn follow_as(
    lobby: &Lobby,
    joiner: &serde_json::Value,
    out: &mut Printer<impl Write>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WatchError> {
    tokio::pin!(shutdown);
    let joined = tokio::select! {
        joined = lobby.join(joiner) => joined?,
        () = &mut shutdown => return Ok(()),
    };
    let following = tokio::select! {
        result = follow(lobby, Some(&joined), out) => Some(result),
        () = &mut shutdown => None,
    };
    match following {
        // Forgotten or unable to print: the stream is over either way; a leave
        // is harmless, and spares the others the grace period if we were not forgotten.
        Some(Err(err)) => {
            let _ = lobby.leave(&joined.token).await;
            Err(err)
        }
        Some(Ok(())) | None => lobby.leave(&joined.token).await,
    }
}

/// Reads the event stream, `joined`'s or a watcher's, reopening it with
/// `Last-Event-ID` whenever it drops, as an EventSource does. Returns only on
/// an error.
async fn follow(
    lobby: &Lobby,
    joined: Option<&Joined>,
    out: &mut Printer<impl Write>,
) -> Result<(), WatchError> {
    let mut roster = Roster::new(joined.map(|joined| joined.id.clone()));
    let token = joined.map(|joined| joined.token.as_str());
    let mut last_id: Option<String> = None;
    let mut failing = false;
    // Before the first stream, a failure is a wrong URL or a server that is
    // not there, and ends the watch; after it, one that may pass.
    let mut opened_once = false;
    loop {
        let response = match lobby.open_events(token, last_id.as_deref()).await {
            Ok(response) => response,
            Err(StreamRefusal::Forgotten) => {
                return Err(WatchError::Forgotten {
                    name: joined
                        .map_or_else(String::new, |joined| printable(&joined.name).into_owned()),
                });
            }
            Err(StreamRefusal::Other(err)) if !opened_once => return Err(err),
            Err(StreamRefusal::Other(err)) => {
                if !failing {
                    eprintln!(
                        "lobby watch: {err}; trying again every {}s",
                        RETRY.as_secs()
                    );
                    failing = true;
                }
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        opened_once = true;
        if failing {
            eprintln!("lobby watch: reconnected");
            failing = false;
        }
        let opened = tokio::time::Instant::now();
        let mut events = response.bytes_stream().eventsource();
        // Until the stream ends, breaks, or falls silent: then reopen it at once.
        while let Ok(Some(Ok(event))) = tokio::time::timeout(STREAM_SILENCE, events.next()).await {
            if !event.id.is_empty() {
                last_id = Some(event.id.clone());
            }
            match event.event.as_str() {
                "existing_users" => {
                    let Ok(Snapshot { users }) = serde_json::from_str(&event.data) else {
                        continue;
                    };
                    roster.replace(users, out)?;
                }
                "new_user" => {
                    if let Ok(user) = serde_json::from_str(&event.data) {
                        roster.add(user, out)?;
                    }
                }
                "disconnect_user" => {
                    if let Ok(user) = serde_json::from_str::<User>(&event.data) {
                        roster.remove(&user.id, out)?;
                    }
                }
                "user_updated" => {
                    if let Ok(user) = serde_json::from_str(&event.data) {
                        roster.update(user, out)?;
                    }
                }
                _ => {}
            }
        }
        // A stream that ends as soon as it opens (a proxy that answers 200 and
        // closes) must not be reopened in a tight loop.
        if opened.elapsed() < RETRY {
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// Polls GET /users every `every`, printing who joined and who left in between.
/// Returns only on an error: the first poll's (a wrong URL, a server that is
/// not there), or stdout's.
async fn poll_users(
    lobby: &Lobby,
    every: Duration,
    out: &mut Printer<impl Write>,
) -> Result<(), WatchError> {
    let mut roster = Roster::new(None);
    roster.replace(lobby.users().await?, out)?;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut failing = false;
    loop {
        ticker.tick().await;
        match lobby.users().await {
            Ok(users) => {
                if failing {
                    eprintln!("lobby watch: reachable again");
                    failing = false;
                }
                roster.replace(users, out)?;
            }
            Err(err) => {
                if !failing {
                    eprintln!("lobby watch: {err}; trying again every {every:?}");
                    failing = true;
                }
            }
        }
    }
}

/// Who is online as far as this client knows, and what to print as it changes.
struct Roster {
    users: Vec<User>,
    /// Our own id, when we joined: marked "(you)" in the list.
    me: Option<String>,
    /// Whether the first list has been printed; after it, only changes are.
    shown: bool,
}

impl Roster {
    fn new(me: Option<String>) -> Roster {
        Roster {
            users: Vec::new(),
            me,
            shown: false,
        }
    }

    /// A full list (a snapshot, or GET /users): printed whole the first time,
    /// then as the joins and leaves that turn what we knew into it.
    fn replace(&mut self, users: Vec<User>, out: &mut Printer<impl Write>) -> std::io::Result<()> {
        if !self.shown {
            self.shown = true;
            match users.len() {
                0 => out.line("nobody online")?,
                n => out.line(&format!("{n} online:"))?,
            }
            for user in &users {
                out.line(&format!("  {}", self.label(user)))?;
            }
            self.users = users;
            return Ok(());
        }
        let gone: Vec<User> = self
            .users
            .iter()
            .filter(|old| !users.iter().any(|new| new.id == old.id))
            .cloned()
            .collect();
        for user in gone {
            self.remove(&user.id, out)?;
        }
        for user in users {
            self.add(user, out)?;
        }
        Ok(())
    }

    fn add(&mut self, user: User, out: &mut Printer<impl Write>) -> std::io::Result<()> {
        if self.users.iter().any(|known| known.id == user.id) {
            return Ok(());
        }
        out.line(&format!("+ {}", self.label(&user)))?;
        self.users.push(user);
        Ok(())
    }

    /// `~ alice away`: the state's `status` when it is a string, otherwise
    /// the state as JSON.
    fn update(&mut self, user: User, out: &mut Printer<impl Write>) -> std::io::Result<()> {
        let Some(known) = self.users.iter_mut().find(|known| known.id == user.id) else {
            return Ok(());
        };
        known.state.clone_from(&user.state);
        let state = match &user.state {
            Some(serde_json::Value::Object(fields)) => match fields.get("status") {
                Some(serde_json::Value::String(status)) => status.clone(),
                _ => serde_json::Value::Object(fields.clone()).to_string(),
            },
            _ => return Ok(()),
        };
        out.line(&format!("~ {} {}", self.label(&user), printable(&state)))
    }

    fn remove(&mut self, id: &str, out: &mut Printer<impl Write>) -> std::io::Result<()> {
        let Some(at) = self.users.iter().position(|known| known.id == id) else {
            return Ok(());
        };
        let user = self.users.remove(at);
        out.line(&format!("- {}", self.label(&user)))
    }

    fn label(&self, user: &User) -> String {
        let name = printable(&user.name);
        if self.me.as_deref() == Some(user.id.as_str()) {
            format!("{name} (you)")
        } else {
            name.into_owned()
        }
    }
}

/// A name as text on a terminal: the server refuses control characters, but a
/// server is not to be trusted with the terminal, so any that come are written
/// as escapes (`\u{1b}`) instead of being sent to it.
fn printable(name: &str) -> Cow<'_, str> {
    if !name.chars().any(char::is_control) {
        return Cow::Borrowed(name);
    }
    Cow::Owned(
        name.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// One line at a time to stdout, flushed at once so a pipe reader sees each as it happens.
struct Printer<W: Write> {
    out: W,
}

impl<W: Write> Printer<W> {
    fn new(out: W) -> Printer<W> {
        Printer { out }
    }

    fn line(&mut self, text: &str) -> std::io::Result<()> {
        writeln!(self.out, "{text}")?;
        self.out.flush()
    }
}

#[derive(Deserialize)]
struct Joined {
    id: String,
    name: String,
    token: String,
}

#[derive(Deserialize)]
struct Snapshot {
    users: Vec<User>,
}

enum StreamRefusal {
    /// 401: the token is unknown, so joining again is the only way back.
    Forgotten,
    /// Anything else, which may pass: unreachable, 429, 503, a proxy's 502.
    Other(WatchError),
}

/// The lobby's HTTP API at one base URL.
struct Lobby {
    base: Url,
    http: reqwest::Client,
}

impl Lobby {
    fn new(base: Url) -> Lobby {
        let http = reqwest::Client::builder()
            .connect_timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("lobby-watch/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Lobby { base, http }
    }

    fn url(&self, path: &str) -> Url {
        self.base.join(path).unwrap_or_else(|_| self.base.clone())
    }

    fn unreachable(&self, err: &reqwest::Error) -> WatchError {
        WatchError::Unreachable {
            url: self.base.clone(),
            cause: root_cause(err),
        }
    }

    async fn join(&self, joiner: &serde_json::Value) -> Result<Joined, WatchError> {
        let response = self
            .http
            .post(self.url("join"))
            .timeout(REQUEST_TIMEOUT)
            .json(joiner)
            .send()
            .await
            .map_err(|err| self.unreachable(&err))?;
        let response = self.check(response).await?;
        response.json().await.map_err(|err| self.unreachable(&err))
    }

    async fn leave(&self, token: &str) -> Result<(), WatchError> {
        let response = self
            .http
            .post(self.url("leave"))
            .timeout(LEAVE_TIMEOUT)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|err| self.unreachable(&err))?;
        match response.status() {
            // 401: already gone, which is all a leave asks.
            StatusCode::UNAUTHORIZED => Ok(()),
            _ => self.check(response).await.map(drop),
        }
    }

    async fn users(&self) -> Result<Vec<User>, WatchError> {
        let response = self
            .http
            .get(self.url("users"))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|err| self.unreachable(&err))?;
        let status = response.status();
        let response = self.check(response).await?;
        let Snapshot { users } = response.json().await.map_err(|_| WatchError::NotALobby {
            url: self.base.clone(),
            status,
        })?;
        Ok(users)
    }

    /// GET /events with the token as a Bearer header (not in the URL, where
    /// proxies log it), or with none for a watcher's stream, resuming after
    /// `last_id` when there is one.
    async fn open_events(
        &self,
        token: Option<&str>,
        last_id: Option<&str>,
    ) -> Result<reqwest::Response, StreamRefusal> {
        let mut request = self
            .http
            .get(self.url("events"))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(id) = last_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request
            .send()
            .await
            .map_err(|err| StreamRefusal::Other(self.unreachable(&err)))?;
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(StreamRefusal::Forgotten);
        }
        self.check(response).await.map_err(StreamRefusal::Other)
    }

    /// The response if it succeeded; otherwise the server's sentence.
    async fn check(&self, response: reqwest::Response) -> Result<reqwest::Response, WatchError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        #[derive(Deserialize)]
        struct Refusal {
            error: String,
        }
        match response.json::<Refusal>().await {
            Ok(Refusal { error }) => Err(WatchError::Refused(printable(&error).into_owned())),
            Err(_) => Err(WatchError::NotALobby {
                url: self.base.clone(),
                status,
            }),
        }
    }
}

/// The innermost cause of a request error ("Connection refused (os error 111)"),
/// which says more than reqwest's own "error sending request".
fn root_cause(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return "no answer in time".to_owned();
    }
    let mut cause: &dyn std::error::Error = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// A lobby's base URL: http or https, `http://` assumed when no scheme is
/// written, and a path that ends in `/` so that `join` lands beside it.
fn parse_url(text: &str) -> Result<Url, String> {
    let text = text.trim();
    let with_scheme = if text.contains("://") {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(format!("http://{text}"))
    };
    let mut url =
        Url::parse(&with_scheme).map_err(|err| format!("{err}; write it as http://HOST:PORT/"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("lobby speaks http:// and https:// only".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("write the lobby's address without ? or #, as in http://HOST:PORT/".into());
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, name: &str) -> User {
        User {
            id: id.into(),
            name: name.into(),
            state: None,
        }
    }

    fn printed(run: impl FnOnce(&mut Printer<&mut Vec<u8>>)) -> String {
        let mut bytes = Vec::new();
        run(&mut Printer::new(&mut bytes));
        String::from_utf8(bytes).expect("UTF-8")
    }

    #[test]
    fn a_url_gets_a_scheme_and_a_trailing_slash_so_paths_land_beside_it() {
        let url = parse_url("127.0.0.1:3000").expect("valid");
        assert_eq!(
            url.join("join").expect("joins").as_str(),
            "http://127.0.0.1:3000/join"
        );
        let url = parse_url("https://example.com/chat").expect("valid");
        assert_eq!(
            url.join("users").expect("joins").as_str(),
            "https://example.com/chat/users"
        );
    }

    #[test]
    fn a_url_that_is_not_http_is_refused_with_a_sentence() {
        assert!(parse_url("ftp://example.com/").is_err());
        assert!(parse_url("http://").is_err());
        assert!(parse_url("http://example.com/?token=1").is_err());
    }

    #[test]
    fn a_state_change_prints_a_tilde_line_with_its_status() {
        let text = printed(|out| {
            let mut roster = Roster::new(None);
            roster
                .replace(vec![user("1", "alice")], out)
                .expect("printed");
            let mut away = user("1", "alice");
            away.state = Some(serde_json::json!({"status": "away"}));
            roster.update(away, out).expect("printed");
            let mut typing = user("1", "alice");
            typing.state = Some(serde_json::json!({"typing": true}));
            roster.update(typing, out).expect("printed");
        });
        assert_eq!(
            text,
            "1 online:\n  alice\n~ alice away\n~ alice {\"typing\":true}\n"
        );
    }

    #[test]
    fn control_characters_in_a_name_are_written_as_escapes() {
        assert_eq!(printable("alice"), "alice");
        assert_eq!(printable("é 🎉 <b>"), "é 🎉 <b>");
        assert_eq!(printable("\u{1b}[2Jbob\n"), "\\u{1b}[2Jbob\\u{a}");
        assert_eq!(printable("\u{9b}x"), "\\u{9b}x");
    }

    #[test]
    fn the_first_list_is_printed_whole_with_our_own_name_marked() {
        let text = printed(|out| {
            let mut roster = Roster::new(Some("2".into()));
            roster
                .replace(vec![user("1", "alice"), user("2", "bob")], out)
                .expect("prints");
        });
        assert_eq!(text, "2 online:\n  alice\n  bob (you)\n");
    }

    #[test]
    fn an_empty_lobby_says_nobody_is_online() {
        let text = printed(|out| {
            Roster::new(None).replace(vec![], out).expect("prints");
        });
        assert_eq!(text, "nobody online\n");
    }

    #[test]
    fn a_later_list_is_printed_as_the_leaves_and_joins_between() {
        let text = printed(|out| {
            let mut roster = Roster::new(None);
            roster
                .replace(vec![user("1", "alice"), user("2", "bob")], out)
                .expect("prints");
            roster
                .replace(vec![user("2", "bob"), user("3", "carol")], out)
                .expect("prints");
            roster
                .replace(vec![user("2", "bob"), user("3", "carol")], out)
                .expect("prints");
        });
        assert_eq!(text, "2 online:\n  alice\n  bob\n- alice\n+ carol\n");
    }

    #[test]
    fn a_join_or_leave_seen_twice_is_printed_once() {
        let text = printed(|out| {
            let mut roster = Roster::new(None);
            roster.replace(vec![], out).expect("prints");
            roster.add(user("1", "alice"), out).expect("prints");
            roster.add(user("1", "alice"), out).expect("prints");
            roster.remove("1", out).expect("prints");
            roster.remove("1", out).expect("prints");
        });
        assert_eq!(text, "nobody online\n+ alice\n- alice\n");
    }

    #[test]
    fn two_people_with_one_name_are_told_apart_by_id() {
        let text = printed(|out| {
            let mut roster = Roster::new(None);
            roster.replace(vec![user("1", "sam")], out).expect("prints");
            roster.add(user("2", "sam"), out).expect("prints");
            roster.remove("1", out).expect("prints");
        });
        assert_eq!(text, "1 online:\n  sam\n+ sam\n- sam\n");
    }
}
