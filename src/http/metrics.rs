//! GET /metrics in Prometheus's text format, on the main address or, with
//! `--metrics-bind`, on one of its own; and the layer that times every
//! request and counts those refused for a limit.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, State};
use axum::http::{Request, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ApiError, AppState};
use crate::observe::{Limit, Metrics};

/// The content type Prometheus asks for and prometheus-client writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let stats = state.presence.stats();
    let text = state.observer.metrics().render(stats.users, stats.streams);
    ([(header::CONTENT_TYPE, OPENMETRICS)], text)
}

/// Serves GET /metrics alone on `listener` until `stop` is cancelled.
pub async fn serve_metrics(listener: TcpListener, state: AppState, stop: CancellationToken) {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NotFound })
        .with_state(state);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("metrics at http://{addr}/metrics");
    }
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(err) = served {
        tracing::warn!("the metrics server stopped: {err}");
    }
}

/// Times each request to its response head, by route, and counts a refusal
/// for a limit, which [`ApiError`] marks on its response.
pub async fn track(
    State(metrics): State<Arc<Metrics>>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |path| route_label(path.as_str()));
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.answered(route, started.elapsed().as_secs_f64());
    if let Some(limit) = response.extensions().get::<Limit>() {
        metrics.refused(*limit);
    }
    response
}

/// A fixed label for each route: a label never holds what a client wrote.
fn route_label(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/join" => "/join",
        "/leave" => "/leave",
        "/users" => "/users",
        "/events" => "/events",
        "/healthz" => "/healthz",
        "/metrics" => "/metrics",
        path if path.starts_with("/static/") => "/static",
        _ => "other",
    }
}
