//! HTTP, and only translation: axum handlers parse requests into presence's
//! domain types, call the backend, and answer with JSON or HTML; a stream's
//! answer is a [`Handoff`](crate::server::Handoff) that the transport
//! (`server`) writes. No sockets here.

mod api;
mod around;
mod cookie;
mod error;
mod events;
mod limits;
mod metrics;
mod page;
mod rooms;

use std::hash::Hash;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, Method, header};
use axum::response::Response;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use error::ApiError;
pub use metrics::serve_metrics;

use crate::backend::Backend;
use crate::config::Config;
use crate::observe::Observer;
use crate::tickets::Tickets;
use around::AroundLayer;
use limits::{Buckets, JoinLimiter, Origins, StateLimiter, Watchers};

/// Bodies larger than this are refused with 413 before they are read whole.
pub const MAX_BODY_BYTES: usize = 4 * 1024;

/// What every handler shares. Cloned for every request (axum hands each
/// handler and middleware its own), so it is one reference count.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// What [`AppState`] points to.
pub struct Shared {
    presence: Backend,
    /// Joins per client address.
    joins: Arc<JoinLimiter>,
    /// State updates per token.
    updates: Arc<StateLimiter>,
    /// Watcher streams per client address.
    watchers: Watchers,
    /// Whether a client's address is the one the proxy in front names.
    trust_proxy: bool,
    /// Whether lobby itself serves HTTPS (`--tls-cert`).
    tls: bool,
    /// Whether a forwarded request has been warned of (without `trust_proxy`).
    proxy_warned: AtomicBool,
    /// Which other sites' pages may use the API.
    origins: Origins,
    /// The metrics (and webhooks) of this node.
    observer: Observer,
    /// Whether GET /metrics is served here (no `--metrics-bind`).
    metrics_here: bool,
    /// Whether GET /rooms is served (`--list-rooms`).
    list_rooms: bool,
    /// What checks signed joins' tickets; `None` for open joins.
    tickets: Option<Tickets>,
}

impl AppState {
    /// Starts the task that forgets quiet clients' join buckets; it stops
    /// when `stop` is cancelled.
    pub fn new(
        presence: Backend,
        config: &Config,
        tickets: Option<Tickets>,
        observer: Observer,
        stop: CancellationToken,
    ) -> AppState {
        let joins = Arc::new(JoinLimiter::new(config.join_rate, config.join_burst));
        tokio::spawn(forget_idle_clients(Arc::downgrade(&joins), stop.clone()));
        let updates = Arc::new(StateLimiter::new(config.state_rate, config.state_burst));
        tokio::spawn(forget_idle_clients(Arc::downgrade(&updates), stop.clone()));
        AppState(Arc::new(Shared {
            presence,
            joins,
            updates,
            watchers: Watchers::new(config.max_watchers_per_address.get()),
            trust_proxy: config.trust_proxy,
            tls: config.tls_cert.is_some(),
            proxy_warned: AtomicBool::new(false),
            list_rooms: config.list_rooms,
            origins: Origins::new(&config.cors_origins),
            observer,
            metrics_here: config.metrics_bind.is_none(),
            tickets,
        }))
    }
}

impl AppState {
    /// Whether a request with these headers came over HTTPS (so its cookies are `Secure`).
    fn over_https(&self, headers: &axum::http::HeaderMap) -> bool {
        cookie::over_https(self.tls, self.trust_proxy, headers)
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Now and then, forgets the buckets of clients (or tokens) that have been quiet.
async fn forget_idle_clients<K: Hash + Eq + Clone>(
    buckets: Weak<Buckets<K>>,
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(limits::FORGET_EVERY);
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => match buckets.upgrade() {
                Some(buckets) => buckets.forget_idle(),
                None => break,
            },
            () = stop.cancelled() => break,
        }
    }
}

/// The whole service, for `run` and for tests that want it without a socket.
pub fn app(state: AppState) -> Router {
    // Other sites' pages are refused on the API (`limits::AllowedSite`), unless allowed.
    let mut router = Router::new()
        .route("/", get(page::index))
        .route("/static/app.js", get(page::script))
        .route("/static/style.css", get(page::style))
        .route("/static/favicon.svg", get(page::favicon))
        .route("/lobby.js", get(page::client))
        .route("/lobby.d.ts", get(page::client_types))
        .route("/healthz", get(api::healthz))
        .route("/join", post(api::join))
        .route("/leave", post(api::leave))
        .route("/state", post(api::set_state))
        .route("/users", get(api::users))
        .route("/events", get(events::events))
        .route("/rooms/{room}", get(page::index))
        .route("/rooms/{room}/join", post(api::join))
        .route("/rooms/{room}/leave", post(api::leave))
        .route("/rooms/{room}/state", post(api::set_state))
        .route("/rooms/{room}/users", get(api::users))
        .route("/rooms/{room}/events", get(events::events));
    if state.list_rooms {
        router = router.route("/rooms", get(rooms::list));
    }
    if state.metrics_here {
        router = router.route("/metrics", get(metrics::metrics));
    }
    router = router
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed);
    if !state.origins.allowed().is_empty() {
        // Outside the routes, so that it answers preflights (OPTIONS), which
        // no route takes.
        router = router.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(state.origins.allowed().iter().cloned()))
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    HeaderName::from_static("last-event-id"),
                ])
                .max_age(Duration::from_secs(600)),
        );
    }
    router
        .layer(AroundLayer::new(state.observer.metrics().clone()))
        .with_state(state)
}

/// The answer to a connection past `--max-connections`.
pub fn too_many_connections() -> Response {
    axum::response::IntoResponse::into_response(ApiError::TooManyConnections)
}
