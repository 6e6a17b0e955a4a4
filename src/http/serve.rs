//! Accepting connections. The first request head of each is read here: a
//! `GET /events` that subscribes is handed to the fan-out as a bare socket,
//! keeping nothing that reading its request needed (no hyper connection, no
//! 8 KiB buffer, no task). Everything else goes to hyper and the router, one
//! request per connection, so that a stream always arrives on a fresh
//! connection and takes the fast path. With TLS there is no fast path: each
//! connection is hyper's, HTTP/2 or HTTP/1.1 as ALPN chose, many requests long.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, header};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use socket2::TcpKeepalive;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::timeout::RequestBodyDeadlineLayer;

use super::events::{last_event_id, token_from};
use super::limits::{ConnectionSlot, Peer};
use super::{Accept, ApiError, AppState};
use crate::observe::Limit;
use crate::presence::{EventId, Token};

/// The head of a stream's response: the body is the stream itself, ended by
/// closing the connection, so it needs neither a length nor chunking.
const EVENTS_HEAD: &str = "HTTP/1.1 200 OK\r\n\
content-type: text/event-stream\r\n\
cache-control: no-cache\r\n\
x-accel-buffering: no\r\n\
x-content-type-options: nosniff\r\n\
referrer-policy: no-referrer\r\n\
connection: close\r\n\r\n";

/// A request head larger than this is left to hyper, which refuses it.
const MAX_HEAD: usize = 8 * 1024;

/// The send buffer of every connection (the kernel doubles it).
const SEND_BUFFER: usize = 512 * 1024;

/// How long a connection refused for being one too many may take to read
/// its answer before it is dropped.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// At most this many refused connections are waited on at once; past that,
/// one is closed without its answer.
const MAX_REFUSALS: usize = 64;

/// How long shutdown waits for unfinished requests once every stream has ended.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

/// Serves `state` on `listener` until `stop` is cancelled, then waits a short
/// while for requests in flight. With `tls`, every connection is HTTPS.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) -> io::Result<()> {
    let router = super::app(state.clone());
    let graceful = GracefulShutdown::new();
    let accept = state.accept.clone();
    let busy = Bytes::from(ApiError::TooManyConnections.raw_response());
    let refusals = Arc::new(AtomicUsize::new(0));
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
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
        let Some(slot) = accept.connections.open() else {
            state.observer.metrics().refused(Limit::Connections);
            refuse(socket, tls.clone(), busy.clone(), &refusals);
            continue;
        };
        configure(&socket, &accept);
        let (state, router, watcher, stop) = (
            state.clone(),
            router.clone(),
            graceful.watcher(),
            stop.clone(),
        );
        match &tls {
            None => tokio::spawn(connection(socket, peer, slot, state, router, watcher, stop)),
            Some(tls) => tokio::spawn(tls_connection(
                socket,
                tls.clone(),
                peer,
                slot,
                state,
                router,
                watcher,
                stop,
            )),
        };
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

/// Socket options for every accepted connection.
fn configure(socket: &TcpStream, accept: &Accept) {
    // Events are small and must not wait for the previous one's ACK.
    let _ = socket.set_nodelay(true);
    let socket = socket2::SockRef::from(socket);
    // A join reply or snapshot lists everyone (a megabyte at 18,000 users);
    // a new connection's send buffer starts at 16 KiB and would take it in
    // dozens of rounds. A stream shrinks it once its snapshot is written.
    let _ = socket.set_send_buffer_size(SEND_BUFFER);
    // A client that vanished (no FIN, no RST) leaves the next keep-alive
    // unacknowledged: the kernel then gives up after this long, and the
    // stream ends like any other.
    let _ = socket.set_tcp_user_timeout(Some(accept.tcp_user_timeout));
    let _ = socket.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(accept.keepalive)
            .with_interval(accept.keepalive)
            .with_retries(1),
    );
}

/// Answers a connection past `--max-connections` with 503 at once, reading
/// (and dropping) what it sent so that closing does not reset the answer away.
/// Over TLS the answer needs the handshake first, and hyper to speak whichever
/// protocol ALPN chose. Over HTTP/2 the first answer also starts a graceful
/// close (GOAWAY, then close_notify): a client would otherwise keep the
/// connection for its next requests, get 503 on each, and see it cut without
/// close_notify when the refusal's time runs out, failing a request in flight.
fn refuse(
    socket: TcpStream,
    tls: Option<TlsAcceptor>,
    response: Bytes,
    refusals: &Arc<AtomicUsize>,
) {
    if refusals.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSALS {
        refusals.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let refusals = refusals.clone();
    tokio::spawn(async move {
        let mut socket = socket;
        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
            let Some(tls) = tls else {
                socket.write_all(&response).await?;
                socket.shutdown().await?;
                let mut sink = [0u8; 1024];
                while socket.read(&mut sink).await? > 0 {}
                return Ok(());
            };
            let stream = tls.accept(socket).await?;
            let answered = Arc::new(Notify::new());
            let busy = hyper::service::service_fn({
                let answered = answered.clone();
                move |_| {
                    answered.notify_one();
                    std::future::ready(Ok::<_, Infallible>(
                        ApiError::TooManyConnections.into_response(),
                    ))
                }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().keep_alive(false);
            let connection = builder.serve_connection(TokioIo::new(stream), busy);
            tokio::pin!(connection);
            // Not before the first request: until hyper has read which
            // protocol it speaks, a graceful close just drops the connection.
            tokio::select! {
                ended = connection.as_mut() => return ended.map_err(io::Error::other),
                () = answered.notified() => connection.as_mut().graceful_shutdown(),
            }
            connection.await.map_err(io::Error::other)
        })
        .await;
        refusals.fetch_sub(1, Ordering::AcqRel);
    });
}

/// What the first request head asks for.
enum Head {
    /// The client closed (or failed, or was too slow) before sending a request.
    Gone,
    /// `GET /events` with this token and `Last-Event-ID`, and the headers that
    /// say which site's page asks.
    Events(Token, Option<EventId>, HeaderMap),
    /// Anything else, for hyper.
    Other,
}

async fn connection(
    mut socket: TcpStream,
    peer: SocketAddr,
    slot: ConnectionSlot,
    state: AppState,
    router: Router,
    watcher: Watcher,
    stop: CancellationToken,
) {
    let accepted = tokio::time::Instant::now();
    let mut buffer = BytesMut::with_capacity(1024);
    let head = tokio::select! {
        head = tokio::time::timeout(state.accept.header_timeout, read_head(&mut socket, &mut buffer)) => {
            head.unwrap_or(Head::Gone)
        }
        () = stop.cancelled() => Head::Gone,
    };
    match head {
        Head::Gone => return,
        Head::Events(token, last_event_id, site) => {
            // A refusal (401, 403, 429) is left to the router, which explains it.
            if let Ok(allow) = state.origins.check(&site)
                && let Ok(mut subscription) = state.presence.subscribe(&token, last_event_id).await
            {
                tracing::debug!(user = %subscription.user, "stream opened");
                let opening = [
                    events_head(allow.as_ref()),
                    state.retry_line.clone(),
                    subscription.take_start(),
                ];
                state.fanout.add(socket, subscription, opening, slot);
                return;
            }
        }
        Head::Other => {}
    }
    let io = TokioIo::new(Prefixed {
        prefix: buffer.freeze(),
        io: socket,
    });
    let service = routed(router, peer, state.accept.header_timeout);
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .timer(TokioTimer::new())
        // What is left of the head's time, not a fresh period.
        .header_read_timeout(
            state
                .accept
                .header_timeout
                .saturating_sub(accepted.elapsed())
                .max(Duration::from_millis(1)),
        )
        .serve_connection(io, TowerToHyperService::new(service));
    if let Err(err) = watcher.watch(connection).await {
        tracing::debug!("connection ended with an error: {err}");
    }
    drop(slot);
}

/// The router as one connection's hyper sees it: each request knows its
/// client's address, and its body (4 KiB at most) gets as long again as the
/// head had, so a client that trickles it does not hold the connection for ever.
fn routed(
    router: Router,
    peer: SocketAddr,
    body_deadline: Duration,
) -> impl Service<Request<Incoming>, Response = Response, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        .layer(RequestBodyDeadlineLayer::new(body_deadline))
        .map_request(move |mut request: Request<_>| {
            request.extensions_mut().insert(Peer(peer));
            request
        })
        .service(router)
}

/// One HTTPS connection: the handshake, then hyper with HTTP/2 or HTTP/1.1
/// (keep-alive on: there is no fast path to keep connections fresh for).
/// What a plain connection gets applies here too: the handshake and then every
/// request head must come within `--header-timeout`, and a connection with no
/// request open for that long is closed, so an idle or silent client cannot
/// hold one of the `--max-connections` for ever.
#[allow(clippy::too_many_arguments)]
async fn tls_connection(
    socket: TcpStream,
    tls: TlsAcceptor,
    peer: SocketAddr,
    slot: ConnectionSlot,
    state: AppState,
    router: Router,
    watcher: Watcher,
    stop: CancellationToken,
) {
    let header_timeout = state.accept.header_timeout;
    let stream = tokio::select! {
        handshake = tokio::time::timeout(header_timeout, tls.accept(socket)) => match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                tracing::debug!("TLS handshake failed: {err}");
                return;
            }
            Err(_) => return,
        },
        () = stop.cancelled() => return,
    };
    let (open, mut requests) = watch::channel(0usize);
    let open = Arc::new(open);
    let service = routed(router, peer, header_timeout);
    let service = tower::service_fn(move |request: Request<Incoming>| {
        let request_open = OpenRequest::new(&open);
        let response = service.clone().oneshot(request);
        async move {
            let response = response.await?;
            Ok::<_, Infallible>(response.map(|body| Tracked {
                body,
                _open: request_open,
            }))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    // Pings find a vanished client even on a connection whose streams are
    // all quiet, as TCP keep-alive does under it.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(state.accept.keepalive)
        .keep_alive_timeout(state.accept.tcp_user_timeout);
    let connection =
        builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(connection);
    // Once closing, HTTP/2 says GOAWAY and waits for the client to answer a
    // ping; a client that never does is dropped after one more period.
    let mut closing: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(err) = ended {
                    tracing::debug!("connection ended with an error: {err}");
                }
                break;
            }
            () = stop.cancelled(), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                closing = Some(tokio::time::Instant::now() + header_timeout);
            }
            () = idle_for(&mut requests, header_timeout), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                closing = Some(tokio::time::Instant::now() + header_timeout);
            }
            () = tokio::time::sleep_until(closing.unwrap_or_else(tokio::time::Instant::now)), if closing.is_some() => break,
        }
    }
    // Held until here so that shutdown waits for this connection as it does
    // for those hyper's graceful watcher wraps.
    drop(watcher);
    drop(slot);
}

/// Completes once no request has been open on the connection for `period`.
async fn idle_for(requests: &mut watch::Receiver<usize>, period: Duration) {
    loop {
        if requests.wait_for(|open| *open == 0).await.is_err() {
            return std::future::pending().await;
        }
        match tokio::time::timeout(period, requests.changed()).await {
            Err(_) => return,
            Ok(Ok(())) => {}
            Ok(Err(_)) => return std::future::pending().await,
        }
    }
}

/// One request open on an HTTPS connection, from its head until its response
/// body (a stream's, for as long as the stream lasts) is done with.
struct OpenRequest(Arc<watch::Sender<usize>>);

impl OpenRequest {
    fn new(open: &Arc<watch::Sender<usize>>) -> OpenRequest {
        open.send_modify(|count| *count += 1);
        OpenRequest(open.clone())
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.send_modify(|count| *count -= 1);
    }
}

/// A response body that keeps its request counted as open.
struct Tracked {
    body: Body,
    _open: OpenRequest,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A stream's response head; it names the origin of an allowed site's page.
fn events_head(allow: Option<&HeaderValue>) -> Bytes {
    let Some(origin) = allow else {
        return Bytes::from_static(EVENTS_HEAD.as_bytes());
    };
    let mut head = BytesMut::from(EVENTS_HEAD.strip_suffix("\r\n").unwrap_or(EVENTS_HEAD));
    head.extend_from_slice(b"access-control-allow-origin: ");
    head.extend_from_slice(origin.as_bytes());
    head.extend_from_slice(b"\r\nvary: origin\r\n\r\n");
    head.freeze()
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
    let Ok(token) = token_from(query, header("authorization")) else {
        return Head::Other;
    };
    let mut site = HeaderMap::new();
    for name in [header::ORIGIN, HeaderName::from_static("sec-fetch-site")] {
        if let Some(value) = header(name.as_str()).and_then(|v| HeaderValue::from_str(v).ok()) {
            site.insert(name, value);
        }
    }
    Head::Events(token, last_event_id(header("last-event-id")), site)
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
        assert!(matches!(head, Head::Events(token, Some(7), _) if token.expose() == "abc"));
    }

    #[test]
    fn a_bearer_token_takes_the_fast_path_too() {
        let head = head_of("GET /events HTTP/1.1\r\nAuthorization: Bearer xyz\r\n\r\n");
        assert!(matches!(head, Head::Events(token, None, _) if token.expose() == "xyz"));
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
