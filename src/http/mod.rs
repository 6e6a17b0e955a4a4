//! HTTP, and only translation: requests are parsed into presence's domain types,
//! presence is called, and its answers are written out as JSON, SSE or HTML.

mod api;
mod error;
mod events;
mod fanout;
mod page;
mod serve;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use axum::routing::{get, post};
use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

pub use error::ApiError;
pub use serve::serve;

use crate::config::Config;
use crate::presence::Presence;
use fanout::Fanout;

/// Bodies larger than this are refused with 413 before they are read whole.
pub const MAX_BODY_BYTES: usize = 4 * 1024;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    presence: Presence,
    /// Ticks once per keep-alive period for every stream at once; its sender is
    /// dropped at shutdown, which is how open streams learn to end.
    heartbeat: watch::Receiver<()>,
    /// `retry: <ms>`, the line every stream opens with.
    retry_line: Bytes,
    /// Writes events to the streams opened on the fast path.
    fanout: Arc<Fanout>,
}

impl AppState {
    /// Starts the shared keep-alive ticker and the fan-out shards; both stop
    /// when `stop` is cancelled.
    pub fn new(presence: Presence, config: &Config, stop: CancellationToken) -> AppState {
        let heartbeat = events::start_heartbeat(config.keepalive, stop);
        // A few shards per core: each wake-up is short, and the cores share the work.
        let shards = std::thread::available_parallelism().map_or(4, |cores| cores.get() * 4);
        let fanout = Fanout::start(shards, &presence.events(), &heartbeat);
        AppState {
            presence,
            heartbeat,
            retry_line: events::retry_line(config.retry()),
            fanout: Arc::new(fanout),
        }
    }
}

/// The whole service, for `run` and for tests that want it without a socket.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/static/app.js", get(page::script))
        .route("/static/style.css", get(page::style))
        .route("/static/favicon.svg", get(page::favicon))
        .route("/join", post(api::join))
        .route("/leave", post(api::leave))
        .route("/users", get(api::users))
        .route("/healthz", get(api::healthz))
        .route("/events", get(events::events))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(
            // The span names the path only: a query string may hold a token.
            TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
            }),
        )
        .with_state(state)
}
