//! HTTP, and only translation: axum handlers parse requests into presence's
//! domain types, call the backend, and answer with JSON or HTML; a stream's
//! answer is a [`Handoff`](crate::server::Handoff) that the transport
//! (`server`) writes. No sockets here.

mod api;
mod error;
mod events;
mod limits;
mod metrics;
mod page;

use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue, Method, Request, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

pub use error::ApiError;
pub use metrics::serve_metrics;

use crate::backend::Backend;
use crate::config::Config;
use crate::observe::Observer;
use limits::{JoinLimiter, Origins};

/// Bodies larger than this are refused with 413 before they are read whole.
pub const MAX_BODY_BYTES: usize = 4 * 1024;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    presence: Backend,
    /// Joins per client address.
    joins: Arc<JoinLimiter>,
    /// Which other sites' pages may use the API.
    origins: Origins,
    /// The metrics (and webhooks) of this node.
    observer: Observer,
    /// Whether GET /metrics is served here (no `--metrics-bind`).
    metrics_here: bool,
}

impl AppState {
    /// Starts the task that forgets quiet clients' join buckets; it stops
    /// when `stop` is cancelled.
    pub fn new(
        presence: Backend,
        config: &Config,
        observer: Observer,
        stop: CancellationToken,
    ) -> AppState {
        let joins = Arc::new(JoinLimiter::new(
            config.join_rate,
            config.join_burst,
            config.trust_proxy,
        ));
        tokio::spawn(forget_idle_clients(Arc::downgrade(&joins), stop.clone()));
        AppState {
            presence,
            joins,
            origins: Origins::new(&config.cors_origins),
            observer,
            metrics_here: config.metrics_bind.is_none(),
        }
    }
}

/// Now and then, forgets the join buckets of clients that have been quiet.
async fn forget_idle_clients(joins: Weak<JoinLimiter>, stop: CancellationToken) {
    let mut every = tokio::time::interval(limits::FORGET_EVERY);
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => match joins.upgrade() {
                Some(joins) => joins.forget_idle(),
                None => break,
            },
            () = stop.cancelled() => break,
        }
    }
}

/// The whole service, for `run` and for tests that want it without a socket.
pub fn app(state: AppState) -> Router {
    // Other sites' pages are refused on the API, unless allowed.
    let api = Router::new()
        .route("/join", post(api::join))
        .route("/leave", post(api::leave))
        .route("/users", get(api::users))
        .route("/events", get(events::events))
        .route_layer(middleware::from_fn_with_state(
            state.origins.clone(),
            refuse_other_sites,
        ));
    let mut router = Router::new()
        .route("/", get(page::index))
        .route("/static/app.js", get(page::script))
        .route("/static/style.css", get(page::style))
        .route("/static/favicon.svg", get(page::favicon))
        .route("/healthz", get(api::healthz))
        .merge(api);
    if state.metrics_here {
        router = router.route("/metrics", get(metrics::metrics));
    }
    router = router
        .route_layer(middleware::from_fn_with_state(
            state.observer.metrics().clone(),
            metrics::track,
        ))
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
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // No response is to be read as anything but what it says it is, and
        // no page of the lobby tells another site where its visitors came from.
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(
            // The span names the path only: a query string may hold a token.
            // A refusal is answered, not a fault of lobby's: a 503 while
            // Redis is away (which the cluster logs once) would otherwise be
            // an ERROR line for every request a load balancer sends.
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
                })
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .with_state(state)
}

/// The answer to a connection past `--max-connections`.
pub fn too_many_connections() -> Response {
    axum::response::IntoResponse::into_response(ApiError::TooManyConnections)
}

/// Refuses a request from another site's page unless its origin is allowed.
async fn refuse_other_sites(
    State(origins): State<Origins>,
    request: Request<Body>,
    next: Next,
) -> Result<Response, ApiError> {
    origins.check(request.headers())?;
    Ok(next.run(request).await)
}
