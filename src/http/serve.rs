//! Accepting connections. The first request head of each is read here: a
//! `GET /events` that subscribes is handed to the fan-out as a bare socket,
//! keeping nothing that reading its request needed (no hyper connection, no
//! 8 KiB buffer, no task). Everything else goes to hyper and the router, one
//! request per connection, so that a stream always arrives on a fresh
//! connection and takes the fast path.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::events::{last_event_id, token_from};
use crate::presence::{EventId, Token};

/// The head of a stream's response: the body is the stream itself, ended by
/// closing the connection, so it needs neither a length nor chunking.
const EVENTS_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
content-type: text/event-stream\r\n\
cache-control: no-cache\r\n\
x-accel-buffering: no\r\n\
connection: close\r\n\r\n";

/// A request head larger than this is left to hyper, which refuses it.
const MAX_HEAD: usize = 8 * 1024;

/// The send buffer of every connection (the kernel doubles it).
const SEND_BUFFER: usize = 512 * 1024;

/// How long a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for unfinished requests once every stream has ended.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

/// Serves `state` on `listener` until `stop` is cancelled, then waits a short
/// while for requests in flight.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    stop: CancellationToken,
) -> io::Result<()> {
    let router = super::app(state.clone());
    let graceful = GracefulShutdown::new();
    loop {
        let socket = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(err) => {
                    // Out of file descriptors, or a connection reset before it
                    // was accepted: wait a moment rather than spin.
                    tracing::warn!("accepting a connection failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        // Events are small and must not wait for the previous one's ACK.
        let _ = socket.set_nodelay(true);
        // A join reply or snapshot lists everyone (a megabyte at 18,000 users);
        // a new connection's send buffer starts at 16 KiB and would take it in
        // dozens of rounds. The kernel only uses the memory while bytes wait.
        let _ = socket2::SockRef::from(&socket).set_send_buffer_size(SEND_BUFFER);
        tokio::spawn(connection(
            socket,
            state.clone(),
            router.clone(),
            graceful.watcher(),
            stop.clone(),
        ));
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_DRAIN) => {
            tracing::warn!("stopping with requests still unfinished after {SHUTDOWN_DRAIN:?}");
        }
    }
    Ok(())
}

/// What the first request head asks for.
enum Head {
    /// The client closed (or failed, or was too slow) before sending a request.
    Gone,
    /// `GET /events` with this token and `Last-Event-ID`.
    Events(Token, Option<EventId>),
    /// Anything else, for hyper.
    Other,
}

async fn connection(
    mut socket: TcpStream,
    state: AppState,
    router: Router,
    watcher: Watcher,
    stop: CancellationToken,
) {
    let mut buffer = BytesMut::with_capacity(1024);
    let head = tokio::select! {
        head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut socket, &mut buffer)) => {
            head.unwrap_or(Head::Gone)
        }
        () = stop.cancelled() => Head::Gone,
    };
    match head {
        Head::Gone => return,
        Head::Events(token, last_event_id) => {
            // A refusal (401, 429) is left to the router, which explains it.
            if let Ok(mut subscription) = state.presence.subscribe(&token, last_event_id) {
                tracing::debug!(user = %subscription.user, "stream opened");
                let opening = [
                    Bytes::from_static(EVENTS_HEAD),
                    state.retry_line.clone(),
                    subscription.take_start(),
                ];
                state.fanout.add(socket, subscription, opening);
                return;
            }
        }
        Head::Other => {}
    }
    let io = TokioIo::new(Prefixed {
        prefix: buffer.freeze(),
        io: socket,
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(io, TowerToHyperService::new(router));
    if let Err(err) = watcher.watch(connection).await {
        tracing::debug!("connection ended with an error: {err}");
    }
}

/// Reads until `buffer` holds a whole request head, and says what it asks.
async fn read_head(socket: &mut TcpStream, buffer: &mut BytesMut) -> Head {
    loop {
        match socket.read_buf(buffer).await {
            Ok(0) | Err(_) if buffer.is_empty() => return Head::Gone,
            // Closed halfway through a head: hyper answers what there is.
            Ok(0) | Err(_) => return Head::Other,
            Ok(_) => {}
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(buffer) {
            Ok(httparse::Status::Complete(_)) => return events_request(&request),
            Ok(httparse::Status::Partial) if buffer.len() < MAX_HEAD => {}
            // Malformed, too large or too many headers: hyper says so.
            _ => return Head::Other,
        }
    }
}

fn events_request(request: &httparse::Request<'_, '_>) -> Head {
    let Some(target) = request.path else {
        return Head::Other;
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if request.method != Some("GET") || path != "/events" {
        return Head::Other;
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .and_then(|header| std::str::from_utf8(header.value).ok())
    };
    match token_from(query, header("authorization")) {
        Ok(token) => Head::Events(token, last_event_id(header("last-event-id"))),
        Err(_) => Head::Other,
    }
}

/// A socket whose first bytes were already read: hyper reads those again first.
struct Prefixed {
    prefix: Bytes,
    io: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.has_remaining() {
            let count = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..count]);
            this.prefix.advance(count);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(request: &str) -> Head {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Request::new(&mut headers);
        assert!(
            parsed
                .parse(request.as_bytes())
                .is_ok_and(|s| s.is_complete())
        );
        events_request(&parsed)
    }

    #[test]
    fn a_get_of_events_with_a_token_in_the_query_takes_the_fast_path() {
        let head = head_of("GET /events?token=abc HTTP/1.1\r\nLast-Event-ID: 7\r\n\r\n");
        assert!(matches!(head, Head::Events(token, Some(7)) if token.expose() == "abc"));
    }

    #[test]
    fn a_bearer_token_takes_the_fast_path_too() {
        let head = head_of("GET /events HTTP/1.1\r\nAuthorization: Bearer xyz\r\n\r\n");
        assert!(matches!(head, Head::Events(token, None) if token.expose() == "xyz"));
    }

    #[test]
    fn anything_else_is_left_to_hyper_and_the_router() {
        for request in [
            "GET /events HTTP/1.1\r\n\r\n",
            "POST /events?token=abc HTTP/1.1\r\n\r\n",
            "GET /events/?token=abc HTTP/1.1\r\n\r\n",
            "GET /users HTTP/1.1\r\n\r\n",
            "GET /events?token=a&token=b HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(head_of(request), Head::Other), "{request:?}");
        }
    }
}
