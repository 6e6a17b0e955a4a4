//! What an event stream writes, whichever way it goes out: the response a
//! handler makes for it ([`Handoff`]), its opening (`retry:` in one block with
//! the snapshot or replay), the keep-alive comment, how many events one write
//! carries, and the framing of HTTP/1.1 (chunked) or HTTP/1.0 (until close).
//! The lean writer (`fanout`) and hyper's body ([`body`]) both take them from here.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderValue, Response, header};
use bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use crate::observe::{Metrics, SlowCause};
use crate::presence::{Pieces, Subscription, Waiting};

/// At most this many waiting events go out in one write.
pub(super) const MAX_BATCH: usize = 64;

/// The comment every stream gets once per keep-alive period: it keeps
/// proxies from timing the stream out and finds clients that vanished.
pub(super) const KEEPALIVE: &[u8] = b":\n\n";

/// A stream's subscription, carried from the handler to the transport in its
/// response's extensions. The transport takes it out and writes the stream:
/// on a plain HTTP/1 connection by handing the socket to the lean writer,
/// otherwise (HTTP/2, TLS) as hyper's response body.
#[derive(Clone)]
pub struct Handoff(Arc<Mutex<Option<Subscription>>>);

impl Handoff {
    /// The response to a stream request that subscribed: 200 with the
    /// headers of an event stream. Its body is the transport's to write.
    pub fn response(subscription: Subscription) -> Response<Body> {
        let mut response = Response::new(Body::empty());
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // nginx buffers a proxied response unless told not to.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        response
            .extensions_mut()
            .insert(Handoff(Arc::new(Mutex::new(Some(subscription)))));
        response
    }

    /// The subscription in `response`, if it is a stream's. The router gave
    /// the empty body a length, which the stream's body does not have.
    pub(super) fn take<B>(response: &mut Response<B>) -> Option<Subscription> {
        let handoff = response.extensions_mut().remove::<Handoff>()?;
        response.headers_mut().remove(header::CONTENT_LENGTH);
        let mut slot = handoff
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.take()
    }
}

/// The `retry:` field, as a line of the stream's first block.
pub(super) fn retry_line(retry: std::time::Duration) -> Bytes {
    Bytes::from(format!("retry: {}\n", retry.as_millis()))
}

/// What a stream opens with: its snapshot or replay, the `retry:` line put
/// in the same block as the first event. A block of its own would be read
/// as an event with no data by some clients (httpx-sse). A resume that
/// missed nothing has no event to carry it, and the client keeps the
/// reconnection time it was given when it first connected.
pub(super) fn opening(start: Pieces, retry: &Bytes) -> Pieces {
    if start.is_empty() {
        return start;
    }
    let mut opening = Pieces::with_capacity(start.parts().len() + 1);
    opening.push(retry.clone());
    opening.append(start);
    opening
}

/// How a stream's bytes are delimited on an HTTP/1 connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// HTTP/1.1: each write is one chunk, so a client that reads by chunk
    /// (Python `requests`) or by line gets every event as it comes.
    Chunked,
    /// HTTP/1.0: the bytes as they are; the stream ends when the connection closes.
    Close,
}

/// The end of a chunked body.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

impl Framing {
    /// The headers that say so, for the response head. The lean writer
    /// closes the connection when a stream ends, so even a chunked stream
    /// says `connection: close`: a client that pooled the connection after
    /// the last chunk would lose the request it sent on it next.
    pub(super) fn headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Framing::Chunked => &[("transfer-encoding", "chunked"), ("connection", "close")],
            Framing::Close => &[("connection", "close")],
        }
    }

    /// The bytes before a write of `len` bytes (`size_line` gives a chunk's
    /// size line, so a caller can keep the last one for the next stream).
    pub(super) fn before(self, len: usize, size_line: &mut SizeLine) -> Option<Bytes> {
        match self {
            Framing::Chunked => Some(size_line.of(len)),
            Framing::Close => None,
        }
    }

    pub(super) fn after(self) -> Option<Bytes> {
        match self {
            Framing::Chunked => Some(Bytes::from_static(b"\r\n")),
            Framing::Close => None,
        }
    }

    /// The keep-alive comment, framed.
    pub(super) fn keepalive(self) -> Bytes {
        match self {
            Framing::Chunked => Bytes::from_static(b"3\r\n:\n\n\r\n"),
            Framing::Close => Bytes::from_static(KEEPALIVE),
        }
    }

    /// What ends the body before the connection closes.
    pub(super) fn end(self) -> Option<Bytes> {
        match self {
            Framing::Chunked => Some(Bytes::from_static(LAST_CHUNK)),
            Framing::Close => None,
        }
    }

    /// `pieces` as one framed write.
    pub(super) fn frame(self, pieces: Pieces) -> Pieces {
        let mut framed = Pieces::with_capacity(pieces.parts().len() + 2);
        if pieces.is_empty() {
            return framed;
        }
        if let Some(before) = self.before(pieces.len(), &mut SizeLine::default()) {
            framed.push(before);
        }
        framed.append(pieces);
        if let Some(after) = self.after() {
            framed.push(after);
        }
        framed
    }
}

/// The size line of the last chunk asked for: every stream of a shard that
/// is up to date writes the same batch, so they share one buffer.
#[derive(Default)]
pub(super) struct SizeLine {
    last: Option<(usize, Bytes)>,
}

impl SizeLine {
    fn of(&mut self, len: usize) -> Bytes {
        match &self.last {
            Some((size, line)) if *size == len => line.clone(),
            _ => {
                let line = Bytes::from(format!("{len:x}\r\n"));
                self.last = Some((len, line.clone()));
                line
            }
        }
    }
}

/// The stream as hyper's response body, for connections hyper keeps
/// (HTTP/2 and TLS): the same opening, batches and keep-alives, framed by hyper.
/// Dropping the body (the client went away) drops the subscription, which is
/// how presence learns the stream closed.
pub(super) fn body(
    subscription: Subscription,
    mut heartbeat: watch::Receiver<()>,
    retry: Bytes,
    metrics: Arc<Metrics>,
) -> Body {
    Body::from_stream(async_stream::stream! {
        // The whole subscription must live inside the stream; without this
        // line the block would capture only the fields it uses.
        let mut subscription = subscription;
        // A clone remembers the last tick as unseen; wait for the next one instead.
        heartbeat.mark_unchanged();
        for part in opening(subscription.take_start(), &retry).into_parts() {
            yield Ok::<_, Infallible>(part);
        }
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            tokio::select! {
                received = subscription.recv() => {
                    batch.clear();
                    let waiting = match received {
                        Ok(event) => match subscription.accept(&event, &mut batch) {
                            Waiting::Open => subscription.read_waiting(&mut batch, MAX_BATCH),
                            ended => ended,
                        },
                        // Fell more than the backlog behind: the client
                        // resumes with Last-Event-ID, so nothing is lost.
                        Err(RecvError::Lagged(_)) => Waiting::Lagged,
                        Err(RecvError::Closed) => break,
                    };
                    metrics.events_sent(batch.len() as u64);
                    if waiting == Waiting::Lagged {
                        metrics.slow_streams_ended(SlowCause::Backlog, 1);
                    }
                    for frame in batch.drain(..) {
                        yield Ok(frame);
                    }
                    if waiting != Waiting::Open {
                        break;
                    }
                }
                beat = heartbeat.changed() => match beat {
                    Ok(()) => yield Ok(Bytes::from_static(KEEPALIVE)),
                    // The server is shutting down.
                    Err(_) => break,
                },
            }
        }
    })
}

/// One task ticks for every stream. The receiver it returns reports a change
/// every `period`, and an error once `stop` is cancelled.
pub(super) fn start_heartbeat(
    period: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) -> watch::Receiver<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_line_opens_the_first_block_and_is_not_a_block_of_its_own() {
        let retry = retry_line(std::time::Duration::from_millis(1500));
        let opening = opening(
            Pieces::from("id: 3\nevent: existing_users\ndata: {}\n\n"),
            &retry,
        );
        assert_eq!(
            opening.to_bytes(),
            Bytes::from_static(b"retry: 1500\nid: 3\nevent: existing_users\ndata: {}\n\n")
        );
        assert!(super::opening(Pieces::default(), &retry).is_empty());
    }

    #[test]
    fn a_chunked_write_is_one_chunk_and_an_http_1_0_write_is_bare() {
        let framed = Framing::Chunked.frame(Pieces::from("data: x\n\n"));
        assert_eq!(
            framed.to_bytes(),
            Bytes::from_static(b"9\r\ndata: x\n\n\r\n")
        );
        let bare = Framing::Close.frame(Pieces::from("data: x\n\n"));
        assert_eq!(bare.to_bytes(), Bytes::from_static(b"data: x\n\n"));
        assert_eq!(
            Framing::Chunked.keepalive(),
            Framing::Chunked.frame(Pieces::from(":\n\n")).to_bytes()
        );
    }
}
