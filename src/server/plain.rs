//! One plain TCP connection. Its first bytes say what it is: the HTTP/2
//! preface (h2c, served by hyper), a stream request (handed at once to the
//! lean writer), or anything else, served by hyper with keep-alive. A stream
//! request that comes later on a kept-alive connection is held back from
//! hyper; hyper, idle between two requests, is let go, and the socket goes to
//! the lean writer all the same. Once streaming, a connection keeps no
//! parser, buffer or task of its own, however it began.

use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::ConnectInfo;
use axum::http::Version;
use bytes::BytesMut;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

use super::head::{self, Next, Sniffed, Timeouts};
use super::stream::{self, Framing, Handoff};
use super::{Connection, served};
use crate::presence::Pieces;

pub(super) async fn serve(mut socket: TcpStream, connection: Connection) {
    let mut buffer = BytesMut::with_capacity(1024);
    let timeout = connection.shared.settings.header_timeout;
    let first = tokio::select! {
        first = tokio::time::timeout(timeout, first_request(&mut socket, &mut buffer)) => {
            first.unwrap_or(None)
        }
        () = connection.stop.cancelled() => None,
    };
    match first {
        None => {}
        Some(Next::H2) => {
            let io = Sniffed::passthrough(socket, buffer);
            served::serve(io, served::Protocol::Http2, connection).await;
        }
        Some(Next::Stream) => take_stream(socket, buffer, connection).await,
        Some(Next::Other | Next::Partial) => {
            if let Some((socket, buffer)) = serve_http1(socket, buffer, &connection).await {
                take_stream(socket, buffer, connection).await;
            }
        }
    }
}

/// Reads until `buffer` says what the connection is; `None` when the client
/// closed (or failed) before sending anything.
async fn first_request(socket: &mut TcpStream, buffer: &mut BytesMut) -> Option<Next> {
    loop {
        match socket.read_buf(buffer).await {
            Ok(0) | Err(_) if buffer.is_empty() => return None,
            // Closed halfway through a head: hyper answers what there is.
            Ok(0) | Err(_) => return Some(Next::Other),
            Ok(_) => {}
        }
        match head::classify(buffer).0 {
            Next::Partial => {}
            next => return Some(next),
        }
    }
}

/// Serves HTTP/1 requests with hyper until the client closes, or until a
/// stream request comes: then the socket and that request come back.
async fn serve_http1(
    socket: TcpStream,
    buffer: BytesMut,
    connection: &Connection,
) -> Option<(TcpStream, BytesMut)> {
    let settings = &connection.shared.settings;
    let found = Arc::new(AtomicBool::new(false));
    let timeouts = Timeouts {
        idle: settings.idle_timeout,
        head: settings.header_timeout,
    };
    let io = TokioIo::new(Sniffed::new(socket, buffer, found.clone(), timeouts));
    let mut served = super::http1(settings)
        // The sniffer keeps the head's wait and the idle wait apart.
        .header_read_timeout(None)
        .serve_connection(io, connection.service());
    let mut stop = pin!(connection.stop.cancelled());
    let mut closing = false;
    let ended = poll_fn(|cx| {
        if !closing && (found.load(Ordering::Acquire) || stop.as_mut().poll(cx).is_ready()) {
            // Idle between requests (a stream request is held back until
            // the response before it is written), hyper ends at once.
            Pin::new(&mut served).graceful_shutdown();
            closing = true;
        }
        served.poll_without_shutdown(cx)
    })
    .await;
    if let Err(err) = ended {
        tracing::debug!("connection ended with an error: {err}");
        return None;
    }
    if !found.load(Ordering::Acquire) {
        return None;
    }
    Some(served.into_parts().io.into_inner().into_parts())
}

/// Answers the stream request at the start of `buffer` through the router;
/// a stream's socket then goes to the lean writer, and a refusal is written
/// and the connection closed.
async fn take_stream(mut socket: TcpStream, buffer: BytesMut, connection: Connection) {
    let Some(mut request) = head::request(&buffer) else {
        return;
    };
    request
        .extensions_mut()
        .insert(ConnectInfo(connection.peer));
    let framing = match request.version() {
        Version::HTTP_10 => Framing::Close,
        _ => Framing::Chunked,
    };
    let shared = &connection.shared;
    let Ok(mut response) = shared.app.clone().oneshot(request).await;
    let Some(mut subscription) = Handoff::take(&mut response) else {
        let whole = head::whole_response(response).await;
        if socket.write_all(&whole).await.is_ok() {
            let _ = socket.shutdown().await;
        }
        return;
    };
    tracing::debug!(user = ?subscription.user, room = %subscription.room, "stream opened");
    let mut opening = Pieces::from(head::response_head(&response, framing.headers()));
    opening.append(framing.frame(stream::opening(subscription.take_start(), &shared.retry)));
    shared
        .fanout
        .add(socket, subscription, opening, framing, connection.slot);
}
