//! The command line: every flag also reads a `LOBBY_*` environment variable.
//! Durations are written the way people write them: `5s`, `500ms`, `2m`.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::observe::WebhookConfig;
use crate::presence::PresenceConfig;
use crate::tickets::Tickets;

/// A small, fast "who's online" server: POST /join, then listen on GET /events.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "lobby",
    version,
    about,
    long_about = None,
    after_help = "Durations are written like 5s, 500ms or 2m. Every flag can also be set by the \
                  environment variable shown with it (a flag wins over its variable)."
)]
pub struct Config {
    /// Address and port to listen on. Default: 127.0.0.1:3000, or
    /// 0.0.0.0:PORT when PORT is set (see --port).
    #[arg(long, env = "LOBBY_BIND", value_name = "ADDR")]
    pub bind: Option<SocketAddr>,

    /// Listen on every interface (0.0.0.0) on this port, as hosting platforms
    /// ask by setting PORT. --bind (or LOBBY_BIND) wins over it.
    #[arg(long, env = "PORT", value_name = "PORT", value_parser = parse_port)]
    pub port: Option<u16>,

    /// How long a user whose last stream closed stays online, waiting for it to reopen.
    #[arg(long, env = "LOBBY_GRACE", default_value = "5s", value_name = "DUR", value_parser = parse_duration)]
    pub grace: Duration,

    /// How long a user who joined has to open their first stream before being dropped.
    #[arg(long, env = "LOBBY_JOIN_TIMEOUT", default_value = "10s", value_name = "DUR", value_parser = parse_duration)]
    pub join_timeout: Duration,

    /// How often every stream gets a comment line, so proxies keep it open.
    #[arg(long, env = "LOBBY_KEEPALIVE", default_value = "15s", value_name = "DUR", value_parser = parse_positive_duration)]
    pub keepalive: Duration,

    /// Joins are refused (503) while this many users are online.
    #[arg(
        long,
        env = "LOBBY_MAX_USERS",
        default_value_t = 100_000,
        value_name = "N"
    )]
    pub max_users: usize,

    /// Rooms kept at once: a join that would make one more gets 503 (joins to
    /// rooms that have people in them go on).
    #[arg(long, env = "LOBBY_MAX_ROOMS", default_value = "100000", value_name = "N", value_parser = parse_at_least_one::<NonZeroUsize>)]
    pub max_rooms: NonZeroUsize,

    /// Serve GET /rooms, the rooms with people in them and how many, fullest
    /// first. Off by default: a room's name may be private (a document's id).
    #[arg(long, env = "LOBBY_LIST_ROOMS", value_parser = clap::builder::BoolishValueParser::new())]
    pub list_rooms: bool,

    /// Watcher streams (GET /events with no token) one client address may
    /// hold open at once; past that, another gets 429.
    #[arg(long, env = "LOBBY_MAX_WATCHERS_PER_ADDRESS", default_value = "32", value_name = "N", value_parser = parse_at_least_one::<NonZeroUsize>)]
    pub max_watchers_per_address: NonZeroUsize,

    /// Joins each client address may make per second, on average; past that
    /// (and the burst) a join gets 429 with Retry-After.
    // 100 a second and 500 at once: a test suite on one machine joins a few
    // hundred people at once and must not be refused, while a flood from one
    // address holds at most 500 + 100 × --join-timeout (10 s) joiners who
    // never open a stream, about 1,500 (some 8 MB, at 5 KiB each), until
    // their timeout.
    #[arg(long, env = "LOBBY_JOIN_RATE", default_value = "100", value_name = "N", value_parser = parse_at_least_one::<NonZeroU32>)]
    pub join_rate: NonZeroU32,

    /// Joins a client address may make at once before the rate applies.
    #[arg(long, env = "LOBBY_JOIN_BURST", default_value = "500", value_name = "N", value_parser = parse_at_least_one::<NonZeroU32>)]
    pub join_burst: NonZeroU32,

    /// State updates (POST /state) each token may make per second, on
    /// average; past that (and the burst) an update gets 429 with Retry-After.
    #[arg(long, env = "LOBBY_STATE_RATE", default_value = "5", value_name = "N", value_parser = parse_at_least_one::<NonZeroU32>)]
    pub state_rate: NonZeroU32,

    /// State updates a token may make at once before the rate applies.
    #[arg(long, env = "LOBBY_STATE_BURST", default_value = "10", value_name = "N", value_parser = parse_at_least_one::<NonZeroU32>)]
    pub state_burst: NonZeroU32,

    /// Take each client's address from the last X-Forwarded-For entry, which
    /// the proxy in front of lobby wrote. Only behind a proxy you run: anyone
    /// else can write that header.
    #[arg(long, env = "LOBBY_TRUST_PROXY", value_parser = clap::builder::BoolishValueParser::new())]
    pub trust_proxy: bool,

    /// Connections open at once (streams included); past this, new ones get 503
    /// at once. Default: the open-file limit less 100.
    #[arg(long, env = "LOBBY_MAX_CONNECTIONS", value_name = "N", value_parser = parse_at_least_one::<NonZeroUsize>)]
    pub max_connections: Option<NonZeroUsize>,

    /// How long a client has to send its request head, and then its body.
    #[arg(long, env = "LOBBY_HEADER_TIMEOUT", default_value = "5s", value_name = "DUR", value_parser = parse_positive_duration)]
    pub header_timeout: Duration,

    /// How long a kept-alive connection may wait, with no request open, for
    /// its next request. Longer than the 60 s that nginx and load balancers
    /// keep an idle upstream connection, so that they close first: a server
    /// that closes a connection just as a request is sent on it fails that
    /// request.
    #[arg(long, env = "LOBBY_IDLE_TIMEOUT", default_value = "75s", value_name = "DUR", value_parser = parse_positive_duration)]
    pub idle_timeout: Duration,

    /// How long a stream's socket may take nothing before the stream is ended
    /// (its reader has stopped reading; it resumes with Last-Event-ID if it comes back).
    #[arg(long, env = "LOBBY_WRITE_TIMEOUT", default_value = "30s", value_name = "DUR", value_parser = parse_positive_duration)]
    pub write_timeout: Duration,

    /// How long sent bytes may go unacknowledged before a connection counts as
    /// dead (TCP_USER_TIMEOUT). A client that vanished is noticed within the
    /// keep-alive period plus this.
    #[arg(long, env = "LOBBY_TCP_USER_TIMEOUT", default_value = "10s", value_name = "DUR", value_parser = parse_positive_duration)]
    pub tcp_user_timeout: Duration,

    /// An origin whose pages may use /join, /events, /state, /leave and /users, such as
    /// https://app.example.com. Repeat it, or separate origins with commas.
    /// Without it, other sites' pages are refused.
    #[arg(long = "cors-origin", env = "LOBBY_CORS_ORIGIN", value_name = "ORIGIN", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_origins: Vec<String>,

    /// Run as one node of a lobby shared through this Redis, such as
    /// redis://127.0.0.1:6379/. Every node then shows the same people and
    /// sends every stream the same events. Without it, lobby is one process.
    #[arg(long, env = "LOBBY_REDIS", value_name = "URL", value_parser = parse_redis_url)]
    pub redis: Option<String>,

    /// Keep who is online across a restart of this process: written here at
    /// shutdown (mode 0600, tokens only as their SHA-256) and read back at
    /// start, so that clients resuming within the grace period see no one
    /// leave. A cluster keeps this in Redis instead.
    #[arg(
        long,
        env = "LOBBY_STATE_FILE",
        value_name = "FILE",
        conflicts_with = "redis"
    )]
    pub state_file: Option<PathBuf>,

    /// With --redis: a node whose heartbeat is older than this is taken for
    /// dead, and its users start their grace period (from its last heartbeat).
    #[arg(long, env = "LOBBY_NODE_TIMEOUT", default_value = "3s", value_name = "DUR", value_parser = parse_positive_duration)]
    pub node_timeout: Duration,

    /// Serve the Prometheus metrics (GET /metrics) on this address instead of
    /// the main one, which then has no /metrics.
    #[arg(long, env = "LOBBY_METRICS_BIND", value_name = "ADDR")]
    pub metrics_bind: Option<SocketAddr>,

    /// POST a signed JSON body to this URL for every join, every leave and every state update
    /// (with its reason), such as https://app.example.com/lobby-events.
    #[arg(long, env = "LOBBY_WEBHOOK", value_name = "URL", value_parser = parse_webhook_url, requires = "webhook_secret")]
    pub webhook: Option<reqwest::Url>,

    /// The shared secret that signs each webhook: X-Lobby-Signature is
    /// sha256=<hex HMAC-SHA256 of the body>.
    #[arg(
        long,
        env = "LOBBY_WEBHOOK_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<String>,

    /// Take signed joins only: every join carries a ticket, a JWT that the
    /// site's backend signs (HS256) with this secret.
    #[arg(
        long,
        env = "LOBBY_JOIN_SECRET",
        value_name = "SECRET",
        hide_env_values = true,
        conflicts_with = "join_secret_file"
    )]
    pub join_secret: Option<String>,

    /// --join-secret, read from this file (a trailing line break is not part of it).
    #[arg(long, env = "LOBBY_JOIN_SECRET_FILE", value_name = "FILE")]
    pub join_secret_file: Option<PathBuf>,

    /// How long one webhook attempt may take before it is retried.
    #[arg(long, env = "LOBBY_WEBHOOK_TIMEOUT", default_value = "5s", value_name = "DUR", value_parser = parse_positive_duration)]
    pub webhook_timeout: Duration,

    /// How many webhook events may wait for a slow backend; past that, new
    /// ones are dropped (and counted) rather than slow the lobby.
    #[arg(long, env = "LOBBY_WEBHOOK_QUEUE", default_value = "1000", value_name = "N", value_parser = parse_at_least_one::<NonZeroUsize>)]
    pub webhook_queue: NonZeroUsize,

    /// Serve HTTPS, with HTTP/2 and HTTP/1.1 by ALPN, with this certificate
    /// chain (PEM, the server's own certificate first). Needs --tls-key.
    #[arg(
        long,
        env = "LOBBY_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert's certificate (PEM). Needs --tls-cert.
    #[arg(
        long,
        env = "LOBBY_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

impl Config {
    /// The defaults, as if `lobby` were run with no flags (environment included).
    pub fn from_env() -> Result<Config, clap::Error> {
        Config::try_parse_from(["lobby"])
    }

    /// `--webhook` and its settings, if it was given.
    pub fn webhook(&self) -> Option<WebhookConfig> {
        Some(WebhookConfig {
            url: self.webhook.clone()?,
            secret: self.webhook_secret.clone().unwrap_or_default(),
            timeout: self.webhook_timeout,
            queue: self.webhook_queue.get(),
        })
    }

    /// What checks signed joins' tickets, with `--join-secret` (or its
    /// file); `None` for open joins. Fails on a file that cannot be read, or
    /// an empty secret.
    pub fn tickets(&self) -> Result<Option<Tickets>, String> {
        let secret = match (&self.join_secret, &self.join_secret_file) {
            (Some(secret), _) => secret.clone().into_bytes(),
            (None, Some(file)) => {
                let mut secret = std::fs::read(file).map_err(|err| {
                    format!("cannot read the join secret from {}: {err}", file.display())
                })?;
                while secret
                    .last()
                    .is_some_and(|byte| matches!(byte, b'\n' | b'\r'))
                {
                    secret.pop();
                }
                secret
            }
            (None, None) => return Ok(None),
        };
        if secret.is_empty() {
            return Err("the join secret is empty; give a long random one".to_owned());
        }
        Tickets::new(&secret).map(Some)
    }

    pub fn presence(&self) -> PresenceConfig {
        PresenceConfig {
            grace: self.grace,
            join_timeout: self.join_timeout,
            max_users: self.max_users,
            ..PresenceConfig::default()
        }
    }

    /// The `retry:` a stream tells its browser: reconnect well within the grace
    /// period, so a dropped connection comes back before anyone sees a leave.
    pub fn retry(&self) -> Duration {
        (self.grace / 2).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }
}

/// Where to listen, and why there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// `--bind` or `LOBBY_BIND`.
    Bind(SocketAddr),
    /// `--port` or `PORT`, on every interface.
    Port(SocketAddr),
    /// Neither: this machine only, port 3000.
    Default(SocketAddr),
}

impl Listen {
    pub fn addr(self) -> SocketAddr {
        match self {
            Listen::Bind(addr) | Listen::Port(addr) | Listen::Default(addr) => addr,
        }
    }
}

impl Config {
    /// `--bind`, else every interface on `--port` (PORT), else 127.0.0.1:3000.
    pub fn listen(&self) -> Listen {
        match (self.bind, self.port) {
            (Some(addr), _) => Listen::Bind(addr),
            (None, Some(port)) => Listen::Port(SocketAddr::from(([0, 0, 0, 0], port))),
            (None, None) => Listen::Default(SocketAddr::from(([127, 0, 0, 1], 3000))),
        }
    }

    /// `--max-connections`, or the open-file limit less some for the listener,
    /// logs and whatever else the process opens.
    pub fn max_connections(&self) -> usize {
        self.max_connections.map_or_else(
            || {
                let limit =
                    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
                usize::try_from(limit)
                    .unwrap_or(usize::MAX)
                    .saturating_sub(100)
                    .max(1)
            },
            NonZeroUsize::get,
        )
    }
}

/// A URL the Redis client can open: redis:// or redis+unix:// (TLS, rediss://,
/// is not built in).
fn parse_redis_url(text: &str) -> Result<String, String> {
    let text = text.trim();
    redis::Client::open(text)
        .map(|_| text.to_owned())
        .map_err(|err| format!("not a Redis URL ({err}); write it as redis://HOST:PORT/"))
}

/// An http:// or https:// URL.
fn parse_webhook_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text.trim())
        .map_err(|err| format!("not a URL ({err}); write it as https://HOST/PATH"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        _ => Err("a webhook URL starts with http:// or https://".into()),
    }
}

/// A TCP port to listen on, 1 to 65535.
fn parse_port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err("PORT (or --port) must be a port number from 1 to 65535".to_owned()),
    }
}

/// A whole number of at least 1.
fn parse_at_least_one<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.trim()
        .parse()
        .map_err(|_| "write a whole number of at least 1".to_owned())
}

/// An origin as browsers send it: scheme, host and maybe port, nothing else.
fn parse_origin(text: &str) -> Result<String, String> {
    let text = text.trim();
    let (scheme, host) = ["https://", "http://"]
        .into_iter()
        .find_map(|scheme| Some((scheme, text.strip_prefix(scheme)?)))
        .ok_or("an origin starts with http:// or https://, as in https://app.example.com")?;
    let host = host.trim_end_matches('/');
    if host.is_empty() {
        return Err(
            "an origin names a host after its scheme, as in https://app.example.com".into(),
        );
    }
    if host.contains(['/', '?', '#', ' ']) {
        return Err("an origin is a scheme and a host (and maybe a port), as in https://app.example.com, with no path".into());
    }
    Ok(format!("{scheme}{host}").to_ascii_lowercase())
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|err| format!("{err}; write a duration like 5s, 500ms or 2m"))
}

pub(crate) fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("must be longer than zero".into()),
        duration => Ok(duration),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("lobby").chain(args.iter().copied()))
    }

    #[test]
    fn durations_are_written_as_people_write_them() -> Result<(), clap::Error> {
        let config = parse(&[
            "--grace",
            "500ms",
            "--join-timeout",
            "2m",
            "--keepalive",
            "5s",
        ])?;
        assert_eq!(config.grace, Duration::from_millis(500));
        assert_eq!(config.join_timeout, Duration::from_secs(120));
        assert_eq!(config.keepalive, Duration::from_secs(5));
        Ok(())
    }

    #[test]
    fn a_duration_without_a_unit_is_refused() {
        assert!(parse(&["--grace", "5"]).is_err());
    }

    #[test]
    fn origins_are_repeatable_or_comma_separated_and_must_be_origins() -> Result<(), clap::Error> {
        let config = parse(&[
            "--cors-origin",
            "https://a.example",
            "--cors-origin",
            "http://b.example:8080/,https://C.example",
        ])?;
        assert_eq!(
            config.cors_origins,
            [
                "https://a.example",
                "http://b.example:8080",
                "https://c.example"
            ]
        );
        assert!(parse(&["--cors-origin", "a.example"]).is_err());
        assert!(parse(&["--cors-origin", "https://a.example/path"]).is_err());
        Ok(())
    }

    #[test]
    fn a_zero_rate_burst_or_connection_limit_is_refused_with_a_sentence() {
        for flag in ["--join-rate", "--join-burst", "--max-connections"] {
            let err = parse(&[flag, "0"])
                .expect_err("zero is refused")
                .to_string();
            assert!(err.contains("at least 1"), "{flag}: {err}");
        }
    }

    #[test]
    fn a_webhook_needs_a_secret_and_an_http_url() {
        assert!(parse(&["--webhook", "http://127.0.0.1:9/hook"]).is_err());
        assert!(parse(&["--webhook", "ftp://x/", "--webhook-secret", "s"]).is_err());
        let config = parse(&[
            "--webhook",
            "http://127.0.0.1:9/hook",
            "--webhook-secret",
            "s",
        ])
        .expect("valid flags");
        assert!(config.webhook().is_some());
    }

    #[test]
    fn bind_wins_over_port_which_listens_on_every_interface() -> Result<(), clap::Error> {
        assert_eq!(parse(&[])?.listen().addr().to_string(), "127.0.0.1:3000");
        assert_eq!(
            parse(&["--port", "8080"])?.listen(),
            Listen::Port("0.0.0.0:8080".parse().expect("an address"))
        );
        assert_eq!(
            parse(&["--port", "8080", "--bind", "127.0.0.1:9"])?.listen(),
            Listen::Bind("127.0.0.1:9".parse().expect("an address"))
        );
        for bad in ["0", "65536", "http"] {
            let err = parse(&["--port", bad]).expect_err("refused").to_string();
            assert!(err.contains("1 to 65535"), "{bad}: {err}");
        }
        Ok(())
    }

    #[test]
    fn a_zero_keepalive_is_refused() {
        assert!(parse(&["--keepalive", "0s"]).is_err());
    }

    #[test]
    fn the_retry_hint_is_well_inside_the_grace_period() -> Result<(), clap::Error> {
        assert_eq!(parse(&[])?.retry(), Duration::from_secs(1));
        assert_eq!(
            parse(&["--grace", "600ms"])?.retry(),
            Duration::from_millis(300)
        );
        Ok(())
    }
}
