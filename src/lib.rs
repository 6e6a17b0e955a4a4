//! lobby: a small, fast "who's online" server. A client POSTs /join with a name,
//! then listens on GET /events (Server-Sent Events) for `new_user` and
//! `disconnect_user`; a leave is noticed when its event stream drops.
//!
//! # Layout
//! - [`presence`]: the core. Who is online, the numbered event history, grace and
//!   join timeouts, each event encoded once for every stream. No HTTP in it.
//! - [`http`]: translation only. Parses requests into domain types, calls
//!   presence, writes responses: the JSON API, the SSE stream, the page.
//! - [`config`]: the command line and its environment variables.
//! - `main.rs`: flags, logging, bind, then [`run`].
//! - `static/`: the page's script and style, compiled into the binary.

pub mod config;
pub mod http;
pub mod presence;

use std::future::{Future, IntoFuture};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use presence::Presence;

/// Serves the lobby on `listener` until `shutdown` completes; then every open
/// stream ends, connections close, and this returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stop = CancellationToken::new();
    let presence = Presence::new(config.presence());
    let state = http::AppState::new(presence, &config, stop.clone());
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    let serve = axum::serve(listener, http::app(state))
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .into_future();
    // Streams end at once on shutdown, but a client stalled halfway through
    // sending a request would hold graceful shutdown open for ever: give the
    // rest a short while to finish, then stop regardless.
    let deadline = async {
        stop.cancelled().await;
        tokio::time::sleep(SHUTDOWN_DRAIN).await;
    };
    tokio::select! {
        result = serve => result,
        () = deadline => {
            tracing::warn!("stopping with requests still unfinished after {SHUTDOWN_DRAIN:?}");
            Ok(())
        }
    }
}

/// How long shutdown waits for unfinished requests once every stream has ended.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);
