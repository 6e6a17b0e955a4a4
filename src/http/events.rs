//! GET /events: one joined user's Server-Sent Events stream. It starts with a
//! `retry:` line and a snapshot (or a replay after `Last-Event-ID`), then writes
//! each event's shared, pre-encoded bytes; a comment goes out every keep-alive.
//! Dropping the response body (the client went away) closes the stream in presence.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use bytes::BytesMut;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;

use super::api::bearer;
use super::{ApiError, AppState};
use crate::observe::{Metrics, SlowCause};
use crate::presence::{EventId, Subscription, Token, Waiting};

/// At most this many waiting events are joined into one write.
pub(super) const MAX_BATCH: usize = 64;

#[derive(Deserialize)]
struct EventsQuery {
    token: Option<String>,
}

pub async fn events(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let header = |name| headers.get(name).and_then(|value| value.to_str().ok());
    let token = token_from(query.as_deref(), header(header::AUTHORIZATION.as_str()))?;
    let last_event_id = last_event_id(header("last-event-id"));
    let subscription = state.presence.subscribe(&token, last_event_id).await?;
    let body = Body::from_stream(stream(
        subscription,
        state.heartbeat.clone(),
        state.retry_line.clone(),
        state.observer.metrics().clone(),
    ));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The token from `?token=…`, or else from `Authorization: Bearer …`.
pub(super) fn token_from(
    query: Option<&str>,
    authorization: Option<&str>,
) -> Result<Token, ApiError> {
    let from_query = match query {
        Some(query) => serde_urlencoded::from_str::<EventsQuery>(query)
            .map_err(|err| ApiError::MalformedQuery(err.to_string()))?
            .token
            .filter(|token| !token.trim().is_empty())
            .map(|token| Token::from_client(&token)),
        None => None,
    };
    from_query
        .or_else(|| authorization.and_then(bearer))
        .ok_or(ApiError::MissingToken)
}

/// A `Last-Event-ID` that is not a decimal id is treated as absent: the stream
/// starts with a fresh snapshot, which is always correct.
pub(super) fn last_event_id(value: Option<&str>) -> Option<EventId> {
    value?.trim().parse().ok()
}

/// The `retry:` line every stream opens with.
pub(super) fn retry_line(retry: Duration) -> Bytes {
    Bytes::from(format!("retry: {}\n\n", retry.as_millis()))
}

fn stream(
    subscription: Subscription,
    mut heartbeat: watch::Receiver<()>,
    retry_line: Bytes,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    async_stream::stream! {
        // The whole subscription must live inside the stream: when hyper drops
        // the body (the client went away, or the stream ended) presence learns
        // the stream closed. Without this line the block would capture only the
        // fields it uses, and the open-stream guard would drop right away.
        let mut subscription = subscription;
        // A clone remembers the last tick as unseen; wait for the next one instead.
        heartbeat.mark_unchanged();
        yield Ok(concat(&[retry_line, subscription.take_start()]));
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            tokio::select! {
                received = subscription.events.recv() => match received {
                    Ok(event) => {
                        batch.clear();
                        let mut waiting = subscription.accept(&event, &mut batch);
                        if waiting == Waiting::Open {
                            waiting = subscription.read_waiting(&mut batch, MAX_BATCH);
                        }
                        metrics.events_sent(batch.len() as u64);
                        if waiting == Waiting::Lagged {
                            metrics.slow_streams_ended(SlowCause::Backlog, 1);
                        }
                        yield Ok(concat(&batch));
                        if waiting != Waiting::Open {
                            break;
                        }
                    }
                    // Fell more than the backlog behind, or the lobby is gone: end
                    // the stream. The client reconnects with Last-Event-ID and
                    // catches up from the history, so nothing is lost.
                    Err(RecvError::Lagged(_)) => {
                        metrics.slow_streams_ended(SlowCause::Backlog, 1);
                        break;
                    }
                    Err(RecvError::Closed) => break,
                },
                beat = heartbeat.changed() => match beat {
                    Ok(()) => yield Ok(Bytes::from_static(b":\n\n")),
                    // The server is shutting down.
                    Err(_) => break,
                },
            }
        }
    }
}

/// One buffer for one write; no copy when there is only one.
fn concat(bufs: &[Bytes]) -> Bytes {
    match bufs {
        [one] => one.clone(),
        _ => {
            let mut joined = BytesMut::with_capacity(bufs.iter().map(Bytes::len).sum());
            for buf in bufs {
                joined.extend_from_slice(buf);
            }
            joined.freeze()
        }
    }
}

/// One task ticks for every stream. The receiver it returns reports a change
/// every `period`, and an error once `stop` is cancelled.
pub(super) fn start_heartbeat(period: Duration, stop: CancellationToken) -> watch::Receiver<()> {
    let (sender, receiver) = watch::channel(());
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => sender.send_replace(()),
                () = stop.cancelled() => return,
            };
        }
    });
    receiver
}
