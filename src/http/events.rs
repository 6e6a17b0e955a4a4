//! GET /events: one joined user's Server-Sent Events stream. It starts with a
//! `retry:` line and a snapshot (or a replay after `Last-Event-ID`), then writes
//! each event's shared, pre-encoded bytes; a comment goes out every keep-alive.
//! Dropping the response body (the client went away) closes the stream in presence.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use bytes::BytesMut;
use serde::Deserialize;
use std::sync::Arc;

use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;

use super::api::bearer_token;
use super::{ApiError, AppState};
use crate::presence::{Event, EventId, EventKind, Start, Subscription, Token, UserId};

/// At most this many waiting events are joined into one write.
const MAX_BATCH: usize = 64;

#[derive(Deserialize)]
struct EventsQuery {
    token: Option<String>,
}

pub async fn events(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = token_from(query.as_deref(), &headers)?;
    let last_event_id = last_event_id(&headers);
    let subscription = state.presence.subscribe(&token, last_event_id)?;
    let body = Body::from_stream(stream(subscription, state.heartbeat.clone(), state.retry));
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

fn token_from(query: Option<&str>, headers: &HeaderMap) -> Result<Token, ApiError> {
    let from_query = match query {
        Some(query) => serde_urlencoded::from_str::<EventsQuery>(query)
            .map_err(|err| ApiError::MalformedQuery(err.to_string()))?
            .token
            .filter(|token| !token.trim().is_empty())
            .map(|token| Token::from_client(&token)),
        None => None,
    };
    from_query
        .or_else(|| bearer_token(headers))
        .ok_or(ApiError::MissingToken)
}

/// A `Last-Event-ID` that is not a decimal id is treated as absent: the stream
/// starts with a fresh snapshot, which is always correct.
fn last_event_id(headers: &HeaderMap) -> Option<EventId> {
    headers
        .get("last-event-id")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn stream(
    subscription: Subscription,
    mut heartbeat: watch::Receiver<()>,
    retry: Duration,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    async_stream::stream! {
        // The whole subscription must live inside the stream: when hyper drops
        // the body (the client went away, or the stream ended) presence learns
        // the stream closed. Without this line the block would capture only the
        // fields it uses, and the open-stream guard would drop right away.
        let mut subscription = subscription;
        // A clone remembers the last tick as unseen; wait for the next one instead.
        heartbeat.mark_unchanged();
        let start = std::mem::replace(&mut subscription.start, Start::Resume(Bytes::new()));
        let mut first = BytesMut::from(format!("retry: {}\n\n", retry.as_millis()).as_bytes());
        first.extend_from_slice(&start.into_bytes());
        yield Ok(first.freeze());
        loop {
            tokio::select! {
                received = subscription.events.recv() => match received {
                    Ok(event) => {
                        let (bytes, end) = batch(&mut subscription.events, subscription.user, &event);
                        yield Ok(bytes);
                        if end {
                            break;
                        }
                    }
                    // Fell more than the backlog behind, or the lobby is gone: end
                    // the stream. The client reconnects with Last-Event-ID and
                    // catches up from the history, so nothing is lost.
                    Err(RecvError::Lagged(_) | RecvError::Closed) => break,
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

/// Joins `first` and the events already waiting behind it into one write.
/// Also says whether the stream ends after it: its own user left, or it lagged
/// (a lagged receiver skips ahead, so going on would silently lose events).
fn batch(events: &mut Receiver<Arc<Event>>, user: UserId, first: &Event) -> (Bytes, bool) {
    let mut end = is_leave_of(first, user);
    let mut buffer: Option<BytesMut> = None;
    for _ in 1..MAX_BATCH {
        if end {
            break;
        }
        match events.try_recv() {
            Ok(event) => {
                end = is_leave_of(&event, user);
                buffer
                    .get_or_insert_with(|| BytesMut::from(&first.frame[..]))
                    .extend_from_slice(&event.frame);
            }
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Lagged(_) | TryRecvError::Closed) => end = true,
        }
    }
    let bytes = buffer.map_or_else(|| first.frame.clone(), BytesMut::freeze);
    (bytes, end)
}

fn is_leave_of(event: &Event, user: UserId) -> bool {
    event.kind == EventKind::DisconnectUser && event.user == user
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
