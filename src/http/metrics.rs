//! GET /metrics in Prometheus's text format, on the main address or, with
//! `--metrics-bind`, on one of its own. Requests are timed in `around`.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{ApiError, AppState};

/// The content type Prometheus asks for and prometheus-client writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let stats = state.presence.stats();
    let rooms = state.presence.rooms();
    let text = state
        .observer
        .metrics()
        .render(stats.users, stats.streams, rooms);
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
