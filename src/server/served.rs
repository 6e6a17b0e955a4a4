//! A connection hyper serves to its end: HTTP/2 (h2c or over TLS) and HTTPS
//! with HTTP/1.1. Its streams are hyper's response bodies. What a plain
//! connection gets applies here too: every request head must come within
//! `--header-timeout`, and a connection with no request open for
//! `--idle-timeout` is closed, so an idle or silent client cannot hold one
//! of the `--max-connections` for ever.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::rt::{Read, Write};
use tokio::sync::watch;

use super::Connection;

/// Which protocol hyper speaks on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    Http1,
    Http2,
}

pub(super) async fn serve<I>(io: I, protocol: Protocol, connection: Connection)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let settings = &connection.shared.settings;
    let header_timeout = settings.header_timeout;
    let (open, mut requests) = watch::channel(0usize);
    let open = Arc::new(open);
    let service = connection.service();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let request_open = OpenRequest::new(&open);
        let response = hyper::service::Service::call(&service, request);
        async move {
            let response = response.await?;
            Ok::<_, Infallible>(response.map(|body| Tracked {
                body,
                _open: request_open,
            }))
        }
    });
    let io = hyper_util::rt::TokioIo::new(io);
    let served: Pin<Box<dyn Served>> = match protocol {
        Protocol::Http1 => Box::pin(super::http1(settings).serve_connection(io, service)),
        Protocol::Http2 => Box::pin(super::http2(settings).serve_connection(io, service)),
    };
    let mut served = served;
    // Once closing, HTTP/2 says GOAWAY and waits for the client to answer a
    // ping; a client that never does is dropped after one more period.
    let mut closing: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            ended = served.as_mut() => {
                if let Err(err) = ended {
                    tracing::debug!("connection ended with an error: {err}");
                }
                break;
            }
            () = connection.stop.cancelled(), if closing.is_none() => {
                served.as_mut().graceful_shutdown();
                closing = Some(tokio::time::Instant::now() + header_timeout);
            }
            () = idle_for(&mut requests, settings.idle_timeout), if closing.is_none() => {
                served.as_mut().graceful_shutdown();
                closing = Some(tokio::time::Instant::now() + header_timeout);
            }
            () = tokio::time::sleep_until(closing.unwrap_or_else(tokio::time::Instant::now)), if closing.is_some() => break,
        }
    }
}

/// hyper's HTTP/1 and HTTP/2 connections, as one type.
trait Served: Future<Output = hyper::Result<()>> + Send {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S> Served for hyper::server::conn::http1::Connection<I, S>
where
    I: Read + Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Tracked> + Send,
    S::Future: Send,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::Connection::graceful_shutdown(self);
    }
}

impl<I, S> Served for hyper::server::conn::http2::Connection<I, S, hyper_util::rt::TokioExecutor>
where
    I: Read + Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Tracked> + Send,
    S::Future: Send + 'static,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self);
    }
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

/// One request open on the connection, from its head until its response
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
