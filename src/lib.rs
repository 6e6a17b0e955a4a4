//! lobby: a small, fast "who's online" server. A client POSTs /join with a name,
//! then listens on GET /events (Server-Sent Events) for `new_user` and
//! `disconnect_user`; a leave is noticed when its event stream drops. Any
//! number of rooms live side by side under /rooms/{room}/…, and a stream with
//! no token watches a room without joining it.
//!
//! # Layout
//! - [`presence`]: the core. Who is online, the numbered event history, grace and
//!   join timeouts, each event encoded once for every stream, and the users list
//!   kept encoded in pieces. No HTTP in it. One shared core, two kinds of lobby:
//!   `Presence` (one room that this process decides) and `Replica` (a
//!   cluster's log decides); `Rooms` holds a process's rooms and `Replicas` a
//!   cluster node's, each sharing one `Outlet` (one event channel, and ids
//!   numbered across every room).
//!   It owns its words (`EventId`, `LeaveReason`) and defines what it tells an
//!   observer (`Observe`); it imports nothing from the rest of the crate.
//! - [`server`]: transport. Accepts connections (their number, socket
//!   options), speaks HTTP/1.1 with keep-alive, HTTP/2 without TLS (h2c) and
//!   HTTPS with HTTP/2 by ALPN, and writes event streams: on a plain HTTP/1
//!   connection the socket goes to the lean writer (`fanout`: shards of
//!   streams with no task, parser or buffer of their own, each event kept in
//!   its room's log and written to that room's streams only), otherwise the
//!   stream is hyper's response body. Every request, streams included, goes
//!   through the router once.
//! - [`http`]: translation only: axum handlers for the JSON API, the page and
//!   GET /events (which answers with a [`server::Handoff`]). `limits` holds
//!   what one client may ask: joins per address, and which other sites' pages
//!   may use the API.
//! - [`cluster`]: with `--redis`, the rooms are shared by several nodes: each
//!   follows one log in Redis into its `presence::Replicas`, and deadlines and
//!   dead nodes are handled in Redis scripts.
//! - [`backend`]: what HTTP talks to, one process's rooms or a cluster node.
//! - [`observe`]: implements presence's `Observe`, so it is told of each join
//!   and leave where it is decided (presence, or the cluster node that made
//!   it): Prometheus metrics and `--webhook`.
//! - [`config`]: the command line and its environment variables.
//! - [`state_file`]: `--state-file`, one process's rooms kept across a
//!   restart (presence's `Saved`, written at shutdown, read at start).
//! - [`tickets`]: signed joins (`--join-secret`): a join's ticket, a JWT the
//!   site signs, checked with jsonwebtoken; who it says is joining.
//! - [`watch`]: `lobby watch`, a terminal client of the HTTP API (reqwest and
//!   an SSE parser), which knows nothing of the server's insides.
//! - `main.rs`: flags, logging, bind, then [`run`].
//! - `bin/lobby-load/`: the load generator behind `make bench`, in modules.
//! - `static/`: the page's script, style and icon, compiled into the binary.

pub mod backend;
pub mod cluster;
pub mod config;
pub mod http;
pub mod observe;
pub mod presence;
pub mod server;
pub mod state_file;
pub mod tickets;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use backend::Backend;
use cluster::{Cluster, ClusterConfig};
pub use config::Config;
use observe::{Metrics, Observer, Webhooks};
use presence::Rooms;

/// Serves the lobby on `listener` until `shutdown` completes; then every open
/// stream ends, connections close, and this returns. With `--tls-cert` and
/// `--tls-key` it serves HTTPS, and fails at once if they cannot be used.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = tls(&config).map_err(std::io::Error::other)?;
    run_with_tls(listener, config, tls, shutdown).await
}

/// `--tls-cert` and `--tls-key` read into what serves HTTPS, or `None` for
/// plain HTTP. `main` calls it before binding, so a bad file is told at once.
pub fn tls(config: &Config) -> Result<Option<TlsAcceptor>, server::tls::TlsError> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => server::tls::acceptor(cert, key).map(Some),
        // The flags require each other, so one alone never gets here.
        _ => Ok(None),
    }
}

/// [`run`] with the TLS already read (by [`tls`]); `None` serves plain HTTP.
pub async fn run_with_tls(
    listener: TcpListener,
    config: Config,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tickets = config.tickets().map_err(std::io::Error::other)?;
    let stop = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let webhooks = config
        .webhook()
        .map(|webhook| Webhooks::start(webhook, metrics.clone()));
    let observer = Observer::new(metrics.clone(), webhooks);
    // Bound before anything is served, so a taken port fails the start.
    let metrics_listener = match config.metrics_bind {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|err| {
            std::io::Error::new(
                err.kind(),
                format!("cannot listen on {addr} for metrics: {err}"),
            )
        })?),
        None => None,
    };
    let backend = match &config.redis {
        None => {
            let rooms = Rooms::new(config.presence(), config.max_rooms.get(), observer.clone());
            if let Some(path) = &config.state_file {
                state_file::load(path, &rooms, config.grace);
            }
            Backend::Local(rooms)
        }
        Some(url) => {
            let config = ClusterConfig {
                presence: config.presence(),
                max_rooms: config.max_rooms.get(),
                node_timeout: config.node_timeout,
                observer: observer.clone(),
            };
            let cluster = Cluster::start(url, config).map_err(std::io::Error::other)?;
            Backend::Cluster(cluster)
        }
    };
    let state = http::AppState::new(backend.clone(), &config, tickets, observer, stop.clone());
    if let Some(listener) = metrics_listener {
        tokio::spawn(http::serve_metrics(listener, state.clone(), stop.clone()));
    }
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    let server = server::Server {
        settings: server::Settings {
            max_connections: config.max_connections(),
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
            tcp_user_timeout: config.tcp_user_timeout,
            keepalive: config.keepalive,
            write_timeout: config.write_timeout,
            retry: config.retry(),
            backlog: backend.config().backlog,
        },
        app: http::app(state),
        busy: http::too_many_connections,
        events: backend.events(),
        metrics,
        tls,
    };
    let served = server.serve(listener, stop).await;
    // Written as soon as the streams have ended, while every membership still
    // has its grace: the next process puts them back with what is left of it.
    if let (Some(path), Backend::Local(rooms)) = (&config.state_file, &backend)
        && let Err(err) = state_file::save(path, rooms)
    {
        tracing::error!(path = %path.display(), %err, "cannot write the state file: who is online is lost");
    }
    backend.stopped().await;
    served
}
