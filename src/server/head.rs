//! HTTP/1 heads, as far as the transport needs them: where each request on a
//! kept-alive connection begins (to spot a stream request before hyper reads
//! it), a stream request's head made into an `http::Request` for the router,
//! and a response head written for a socket that hyper no longer holds.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, Uri, Version};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// A request head larger than this is refused (431), by hyper.
pub(super) const MAX_HEAD: usize = 8 * 1024;

/// At most this many headers in a request head; more are refused (431).
/// It is hyper's own default, which hyper is therefore not told: given a
/// number, hyper fills a header array for every request it parses, and a
/// kept-alive connection pays for that on each one. A test holds the limit.
pub(super) const MAX_HEADERS: usize = 100;

/// How an HTTP/2 connection without TLS (h2c, prior knowledge) begins.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection's next bytes are.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// A request whose response the transport may write itself: `GET` of a
    /// stream's path. Its head is `len` bytes long.
    Stream,
    /// Any other request, or bytes that are not one (hyper answers those).
    Other,
    /// The HTTP/2 preface.
    H2,
    /// Not enough bytes yet to tell.
    Partial,
}

/// Whether a request with this method and path (without its query) may be
/// answered with a stream: the one rule, for the sniffer and for hyper's requests.
pub(super) fn may_stream(method: &str, path: &str) -> bool {
    let in_room = || {
        path.strip_prefix("/rooms/")
            .and_then(|rest| rest.strip_suffix("/events"))
            .is_some_and(|room| !room.is_empty() && !room.contains('/'))
    };
    method == "GET" && (path == "/events" || in_room())
}

/// Says what `buffer`, the start of a request, is; with a whole request head,
/// also how many bytes the request takes: its head, and its body when the
/// body's length is known (`None`: it is chunked, so where the next request
/// starts is not known without decoding it).
pub(super) fn classify(buffer: &[u8]) -> (Next, Option<usize>) {
    if buffer.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buffer) {
        return (Next::Partial, None);
    }
    if buffer.starts_with(H2_PREFACE) {
        return (Next::H2, None);
    }
    // Every request of a kept-alive connection passes here: the header array
    // is left unfilled for httparse to write, rather than zeroed first.
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let head_len = match request.parse_with_uninit_headers(buffer, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buffer.len() < MAX_HEAD => return (Next::Partial, None),
        // Malformed, too large or too many headers: hyper says so.
        _ => return (Next::Other, None),
    };
    let target = request.path.unwrap_or("");
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    // A target httparse takes but no URI is (`?token=>x`) is hyper's to
    // refuse (400), as for any other request: the router could not be asked.
    if may_stream(request.method.unwrap_or(""), path) && Uri::try_from(target).is_ok() {
        return (Next::Stream, Some(head_len));
    }
    let mut body = Some(0usize);
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            body = std::str::from_utf8(header.value)
                .ok()
                .and_then(|value| value.trim().parse().ok());
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            body = None;
        }
    }
    (Next::Other, body.map(|body| head_len + body))
}

/// A stream request's head (all of `head`) as a request for the router.
pub(super) fn request(head: &[u8]) -> Option<Request<Body>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(head) else {
        return None;
    };
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut request = Request::builder()
        .method(parsed.method?)
        .uri(parsed.path?)
        .version(version);
    for header in parsed.headers.iter() {
        request = request.header(header.name, header.value);
    }
    request.body(Body::empty()).ok()
}

/// The head of `response`, for a socket the transport writes itself, with
/// `extra` (how the body is delimited) after the response's own headers.
pub(super) fn response_head<B>(response: &Response<B>, extra: &[(&str, &str)]) -> Bytes {
    let status = response.status();
    let mut head = BytesMut::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.extend_from_slice(b" ");
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    let own = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()));
    let extra = extra.iter().map(|(n, v)| (*n, v.as_bytes()));
    for (name, value) in own.chain(extra) {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head.freeze()
}

/// A whole response with a body of known length, for a connection that closes after it.
pub(super) async fn whole_response(response: Response<Body>) -> Bytes {
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    // Every response written this way is a short JSON refusal.
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let length = body.len().to_string();
    let head = response_head(
        &Response::from_parts(parts, ()),
        &[("content-length", &length), ("connection", "close")],
    );
    let mut whole = BytesMut::with_capacity(head.len() + body.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(&body);
    whole.freeze()
}

/// A plain connection as hyper reads it: the bytes pass through untouched,
/// but each request head is looked at first. When the next request is a
/// stream's, it is held back (hyper sees no more bytes), and `found` is set,
/// so that the connection task can take the socket back from hyper, which is
/// idle between requests, and hand it to the lean writer. It also keeps the
/// connection's two waits: for a head once begun (`--header-timeout`), and
/// for the next request (`--idle-timeout`), which hyper cannot tell apart.
pub(super) struct Sniffed {
    socket: TcpStream,
    /// Read from the socket, not yet handed to hyper.
    buffer: BytesMut,
    /// Bytes of the current request (head and body) still to hand over
    /// before the next head; `None` once the boundaries are lost (a chunked
    /// body), after which every byte just passes.
    passing: Option<usize>,
    /// Set when a stream request is held back.
    found: Arc<AtomicBool>,
    timeouts: Timeouts,
    /// What the connection waits for, if anything, and until when; a
    /// request handed to hyper ends the wait, so the next one starts afresh.
    waiting: Option<(Wait, Instant)>,
    /// Goes off at or before the deadline of `waiting`; one for the
    /// connection's life.
    timer: Option<Pin<Box<Sleep>>>,
}

/// How long a client may take to begin its next request, and to finish its head.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    pub(super) idle: Duration,
    pub(super) head: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// For the first byte of the next request.
    Idle,
    /// For the rest of a head.
    Head,
}

impl Sniffed {
    pub(super) fn new(
        socket: TcpStream,
        buffer: BytesMut,
        found: Arc<AtomicBool>,
        timeouts: Timeouts,
    ) -> Sniffed {
        Sniffed {
            socket,
            buffer,
            passing: Some(0),
            found,
            timeouts,
            waiting: None,
            timer: None,
        }
    }

    /// Every byte passes to hyper as it comes, after those already read:
    /// for a connection no stream request will be taken from (HTTP/2).
    pub(super) fn passthrough(socket: TcpStream, buffer: BytesMut) -> Sniffed {
        Sniffed {
            socket,
            buffer,
            passing: None,
            found: Arc::default(),
            // Never used: nothing is waited for between requests here.
            timeouts: Timeouts {
                idle: Duration::MAX,
                head: Duration::MAX,
            },
            waiting: None,
            timer: None,
        }
    }

    /// The socket, and the stream request held back (with anything after it).
    pub(super) fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.socket, self.buffer)
    }

    /// Whether the client took too long to begin its next request, or to
    /// finish the head it began; otherwise the clock is watched (`cx`).
    fn waited_too_long(&mut self, cx: &mut Context<'_>) -> bool {
        let wait = match self.passing {
            Some(0) if self.buffer.is_empty() => Wait::Idle,
            Some(0) => Wait::Head,
            // A body: its own deadline is the router's.
            _ => {
                self.waiting = None;
                return false;
            }
        };
        if self.waiting.is_none_or(|(current, _)| current != wait) {
            let period = match wait {
                Wait::Idle => self.timeouts.idle,
                Wait::Head => self.timeouts.head,
            };
            // A period too long for the clock is as good as none.
            let deadline = Instant::now() + period.min(Duration::from_secs(86_400 * 365));
            self.waiting = Some((wait, deadline));
            match &mut self.timer {
                // The timer is moved only to an earlier deadline: a request
                // on a busy connection then costs no timer of its own, and
                // a timer that goes off early is set again (below).
                Some(timer) if timer.deadline() > deadline => timer.as_mut().reset(deadline),
                Some(_) => {}
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let (Some((_, deadline)), Some(timer)) = (self.waiting, &mut self.timer) else {
            return false;
        };
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if Instant::now() >= deadline {
                return true;
            }
            timer.as_mut().reset(deadline);
        }
    }

    /// Hands hyper what it may have of `self.buffer`: true when something
    /// was handed over, false when more must be read first (or a stream
    /// request was found). A head larger than [`MAX_HEAD`] is not a stream's:
    /// it goes to hyper, which refuses it.
    fn hand_over(&mut self, out: &mut ReadBuf<'_>) -> bool {
        loop {
            if self.buffer.is_empty() || out.remaining() == 0 {
                return false;
            }
            let allowed = match self.passing {
                None => self.buffer.len(),
                Some(0) => match classify(&self.buffer) {
                    (Next::Stream, _) => {
                        self.found.store(true, Ordering::Release);
                        return false;
                    }
                    (Next::Partial, _) => return false,
                    (Next::Other | Next::H2, Some(len)) => {
                        self.passing = Some(len);
                        continue;
                    }
                    (Next::Other | Next::H2, None) => {
                        self.passing = None;
                        continue;
                    }
                },
                Some(left) => left.min(self.buffer.len()),
            };
            let count = allowed.min(out.remaining());
            out.put_slice(&self.buffer[..count]);
            self.buffer.advance(count);
            if let Some(left) = &mut self.passing {
                *left -= count;
            }
            return true;
        }
    }
}

impl AsyncRead for Sniffed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.found.load(Ordering::Acquire) {
                // Held back for good: the connection task lets hyper go.
                return Poll::Pending;
            }
            if this.hand_over(out) {
                this.waiting = None;
                return Poll::Ready(Ok(()));
            }
            if this.found.load(Ordering::Acquire) {
                // Just found: wake the connection task (which polls hyper,
                // which polls this) so that it sees the flag.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if this.buffer.capacity() - this.buffer.len() < 1024 {
                this.buffer.reserve(4096);
            }
            let before = this.buffer.len();
            let read =
                tokio_util::io::poll_read_buf(Pin::new(&mut this.socket), cx, &mut this.buffer);
            match read {
                Poll::Pending => {
                    if this.waited_too_long(cx) {
                        return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                // Closed: hyper gets what there is, then the end.
                Poll::Ready(Ok(0)) if this.buffer.len() == before => {
                    if this.buffer.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    this.passing = None;
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }
}

impl AsyncWrite for Sniffed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_get_of_events_is_a_stream_whatever_its_query_or_headers() {
        for head in [
            "GET /events?token=abc HTTP/1.1\r\nLast-Event-ID: 7\r\n\r\n",
            "GET /events HTTP/1.1\r\nAuthorization: Bearer xyz\r\n\r\n",
            "GET /events HTTP/1.0\r\n\r\n",
        ] {
            assert_eq!(classify(head.as_bytes()).0, Next::Stream, "{head:?}");
        }
    }

    /// Found by the raw-head property test: httparse takes `>` in a target,
    /// no URI does, and the router cannot be asked; hyper answers it (400).
    #[test]
    fn a_stream_request_whose_target_is_no_uri_is_left_to_hyper() {
        let head = "GET /events?token=>yU4 HTTP/1.0\r\n\r\n";
        assert_eq!(classify(head.as_bytes()).0, Next::Other);
        assert!(request(head.as_bytes()).is_none());
    }

    #[test]
    fn other_requests_say_how_long_they_are() {
        let post = "POST /join HTTP/1.1\r\ncontent-length: 10\r\n\r\nname=alice";
        assert_eq!(classify(post.as_bytes()), (Next::Other, Some(post.len())));
        let get = "GET /users HTTP/1.1\r\n\r\n";
        assert_eq!(classify(get.as_bytes()), (Next::Other, Some(get.len())));
        let chunked = "POST /join HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(classify(chunked.as_bytes()), (Next::Other, None));
        assert_eq!(classify(b"GET /events/ HTTP/1.1\r\n\r\n").0, Next::Other);
        assert_eq!(classify(b"POST /events HTTP/1.1\r\n\r\n").0, Next::Other);
    }

    #[test]
    fn the_http2_preface_is_told_apart_from_a_request() {
        assert_eq!(classify(b"PRI * HT").0, Next::Partial);
        assert_eq!(classify(H2_PREFACE).0, Next::H2);
        assert_eq!(classify(b"GET /users HT").0, Next::Partial);
        assert_eq!(classify(&[b'x'; MAX_HEAD + 1]).0, Next::Other);
    }

    #[test]
    fn a_response_head_carries_the_status_and_every_header_once() {
        let response = Response::builder()
            .status(401)
            .header("content-type", "application/json")
            .body(())
            .expect("a response");
        let head = response_head(&response, &[("connection", "close")]);
        assert_eq!(
            head,
            Bytes::from_static(
                b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
            )
        );
    }
}
