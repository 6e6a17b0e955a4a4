//! Transport: accepting connections, how many may be open, their socket
//! options, the protocols (HTTP/1.1 kept alive, HTTP/2 without TLS by prior
//! knowledge, HTTPS with HTTP/2 or HTTP/1.1 by ALPN), and the lean writer that
//! event streams on plain HTTP/1 are handed to. What a request means is the
//! router's (`http`), which this module sees only as a service; a response
//! that carries a [`Handoff`] is a stream, and is written from here.
//!
//! - `plain`: one plain TCP connection: hyper with keep-alive, h2c, and the
//!   hand-over of a stream request to the lean writer.
//! - `head`: where each request begins, and heads written without hyper.
//! - `stream`: what every stream writes, whichever way it goes out.
//! - `fanout`: the lean writer, shards of streams with no task of their own.
//! - `tls`: the certificate, and one HTTPS connection.
//! - `limits`: connections open at once.

mod fanout;
mod head;
mod limits;
mod plain;
mod served;
mod stream;
pub mod tls;
mod unread;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use socket2::TcpKeepalive;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, broadcast, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::timeout::RequestBodyDeadlineLayer;

use crate::observe::{Limit, Metrics};
use crate::presence::Event;
use fanout::{Fanout, StreamLimits};
pub use limits::ConnectionSlot;
use limits::Connections;
pub use stream::Handoff;

/// The send buffer of every connection (the kernel doubles it).
const SEND_BUFFER: usize = 512 * 1024;

/// How long a connection refused for being one too many may take to read
/// its answer before it is dropped.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// At most this many refused connections are waited on at once; past that,
/// one is closed without its answer.
const MAX_REFUSALS: usize = 64;

/// How long shutdown waits for unfinished requests, and for the fan-out to
/// close its streams (spread over at most the `retry:`, under this).
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

/// How the transport behaves: the flags that concern connections and streams.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_connections: usize,
    /// A request head (and a TLS handshake) must come within this, once begun.
    pub header_timeout: Duration,
    /// A connection with no request open for this long is closed.
    pub idle_timeout: Duration,
    /// How long the kernel waits for a vanished client's acknowledgement.
    pub tcp_user_timeout: Duration,
    /// How often every stream gets a comment, and idle sockets a TCP probe.
    pub keepalive: Duration,
    /// A stream whose socket takes nothing for this long is ended.
    pub write_timeout: Duration,
    /// The reconnection time every stream tells its client.
    pub retry: Duration,
    /// How many events a stream may fall behind before it is ended.
    pub backlog: usize,
}

/// What the transport serves.
pub struct Server {
    pub settings: Settings,
    /// Every request goes here.
    pub app: Router,
    /// The answer to a connection past `max_connections`.
    pub busy: fn() -> Response<Body>,
    /// Wakes the lean writer for each event.
    pub events: broadcast::Receiver<Arc<Event>>,
    pub metrics: Arc<Metrics>,
    /// HTTPS on every connection, or plain HTTP.
    pub tls: Option<TlsAcceptor>,
}

/// What every connection task shares.
struct Shared {
    settings: Settings,
    app: Router,
    /// Ticks once per keep-alive period for every stream at once; its sender
    /// is dropped at shutdown, which is how open streams learn to end.
    heartbeat: watch::Receiver<()>,
    /// `retry: <ms>`, the first line of every stream's first block.
    retry: Bytes,
    fanout: Fanout,
    metrics: Arc<Metrics>,
}

impl Server {
    /// Serves on `listener` until `stop` is cancelled, then waits a short
    /// while for requests in flight.
    pub async fn serve(self, listener: TcpListener, stop: CancellationToken) -> io::Result<()> {
        let settings = self.settings;
        let heartbeat = stream::start_heartbeat(settings.keepalive, stop.clone());
        // A few shards per core: each wake-up is short, and the cores share the work.
        let shards = std::thread::available_parallelism().map_or(4, |cores| cores.get() * 4);
        let limits = StreamLimits {
            write_timeout: settings.write_timeout,
            backlog: settings.backlog,
            farewell: settings.retry,
        };
        let fanout = Fanout::start(shards, &self.events, &heartbeat, limits, &self.metrics);
        drop(self.events);
        let shared = Arc::new(Shared {
            retry: stream::retry_line(settings.retry),
            settings,
            app: self.app,
            heartbeat,
            fanout,
            metrics: self.metrics,
        });
        let connections = Connections::new(shared.settings.max_connections);
        let graceful = GracefulShutdown::new();
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
            let Some(slot) = connections.open() else {
                shared.metrics.refused(Limit::Connections);
                refuse(socket, self.tls.clone(), self.busy, &refusals);
                continue;
            };
            configure(&socket, &shared.settings);
            let connection = Connection {
                peer,
                slot,
                shared: shared.clone(),
                _watcher: graceful.watcher(),
                // A token of its own: the connection's task looks at it each
                // time it runs, and a clone would share one lock with every
                // other connection's.
                stop: stop.child_token(),
            };
            match &self.tls {
                None => tokio::spawn(plain::serve(socket, connection)),
                Some(tls) => tokio::spawn(tls::serve(socket, tls.clone(), connection)),
            };
        }
        drop(listener);
        let closed = async {
            tokio::join!(graceful.shutdown(), shared.fanout.closed());
        };
        tokio::select! {
            () = closed => {}
            () = tokio::time::sleep(SHUTDOWN_DRAIN) => {
                tracing::warn!("stopping with requests still unfinished after {SHUTDOWN_DRAIN:?}");
            }
        }
        Ok(())
    }
}

/// One accepted connection, as its task holds it.
struct Connection {
    peer: SocketAddr,
    /// Counts it among those open, until dropped.
    slot: ConnectionSlot,
    shared: Arc<Shared>,
    /// Held until the connection is done, so shutdown can wait for it.
    _watcher: hyper_util::server::graceful::Watcher,
    stop: CancellationToken,
}

impl Connection {
    /// The router as this connection's hyper sees it: each request knows its
    /// client's address, its body (4 KiB at most) gets as long again as the
    /// head had, so a client that trickles it does not hold the connection
    /// for ever, an answer that left the body unread closes the connection
    /// (`unread`), and a stream's response gets its body.
    fn service(
        &self,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = Infallible,
        Future = BoxedResponse,
    > + Clone
    + Send
    + 'static {
        let shared = self.shared.clone();
        let peer = self.peer;
        let service = ServiceBuilder::new()
            .layer(RequestBodyDeadlineLayer::new(
                shared.settings.header_timeout,
            ))
            .map_request(move |mut request: Request<_>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            })
            .service(shared.app.clone());
        hyper::service::service_fn(move |request: Request<Incoming>| {
            // Only a stream's answer needs the transport's settings after it.
            let shared = head::may_stream(request.method().as_str(), request.uri().path())
                .then(|| shared.clone());
            let (request, unread) = unread::watch(request);
            let response = service.clone().oneshot(request);
            Box::pin(async move {
                let mut response = response.await?;
                unread.mark(&mut response);
                if let (Some(shared), Some(subscription)) = (shared, Handoff::take(&mut response)) {
                    *response.body_mut() = stream::body(
                        subscription,
                        shared.heartbeat.clone(),
                        shared.retry.clone(),
                        shared.metrics.clone(),
                    );
                }
                Ok(response)
            }) as BoxedResponse
        })
    }
}

/// A response on its way, boxed so that hyper may hold it without pinning.
type BoxedResponse = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// How hyper serves HTTP/1 on every connection, plain or TLS.
fn http1(settings: &Settings) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper's timer would also close a kept-alive connection after this
        // long idle; over TLS the idle wait is `served`'s, and on a plain
        // connection the sniffer keeps both.
        .header_read_timeout(settings.header_timeout)
        .max_header_size(head::MAX_HEAD);
    builder
}

/// How hyper serves HTTP/2 on every connection, h2c or TLS.
fn http2(settings: &Settings) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // Pings find a vanished client even on a connection whose streams are
    // all quiet, as TCP keep-alive does under it.
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(head::MAX_HEAD).unwrap_or(u32::MAX))
        .keep_alive_interval(settings.keepalive)
        .keep_alive_timeout(settings.tcp_user_timeout);
    builder
}

/// Socket options for every accepted connection.
fn configure(socket: &TcpStream, settings: &Settings) {
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
    let _ = socket.set_tcp_user_timeout(Some(settings.tcp_user_timeout));
    let _ = socket.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(settings.keepalive)
            .with_interval(settings.keepalive)
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
    busy: fn() -> Response<Body>,
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
                socket
                    .write_all(&head::whole_response(busy()).await)
                    .await?;
                socket.shutdown().await?;
                let mut sink = [0u8; 1024];
                while socket.read(&mut sink).await? > 0 {}
                return Ok(());
            };
            let stream = tls.accept(socket).await?;
            let h2 = tls::speaks_h2(&stream);
            let answered = Arc::new(Notify::new());
            let busy = hyper::service::service_fn({
                let answered = answered.clone();
                move |_| {
                    answered.notify_one();
                    std::future::ready(Ok::<_, Infallible>(busy()))
                }
            });
            let io = TokioIo::new(stream);
            let served = if h2 {
                let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                let connection = builder.serve_connection(io, busy);
                tokio::pin!(connection);
                // Not before the first request: until then a graceful close
                // just drops the connection.
                tokio::select! {
                    ended = connection.as_mut() => return ended.map_err(io::Error::other),
                    () = answered.notified() => connection.as_mut().graceful_shutdown(),
                }
                connection.await
            } else {
                hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(io, busy)
                    .await
            };
            served.map_err(io::Error::other)
        })
        .await;
        refusals.fetch_sub(1, Ordering::AcqRel);
    });
}
