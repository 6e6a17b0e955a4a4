//! HTTP, and only translation: requests are parsed into presence's domain types,
//! presence is called, and its answers are written out as JSON, SSE or HTML.

mod api;
mod error;
mod events;
mod page;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use axum::routing::{get, post};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

use crate::config::Config;
use crate::presence::Presence;

/// Bodies larger than this are refused with 413 before they are read whole.
pub const MAX_BODY_BYTES: usize = 4 * 1024;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    presence: Presence,
    /// Ticks once per keep-alive period for every stream at once; its sender is
    /// dropped at shutdown, which is how open streams learn to end.
    heartbeat: watch::Receiver<()>,
    retry: Duration,
}

impl AppState {
    /// Starts the shared keep-alive ticker; it stops when `stop` is cancelled.
    pub fn new(presence: Presence, config: &Config, stop: CancellationToken) -> AppState {
        AppState {
            presence,
            heartbeat: events::start_heartbeat(config.keepalive, stop),
            retry: config.retry(),
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
