//! A request body the router may leave unread. Refusals are answered without
//! reading what came with them (a 413 for a body declared too large, a 401
//! for a leave whose token was in its header, a 404). hyper then drains the
//! rest of that body before the connection's next request, or, when the rest
//! has not all arrived yet, closes the connection right after the answer,
//! which said nothing of it; a client that sent its next request on it in that
//! moment gets a reset. So an HTTP/1 answer that leaves a body unread says
//! `connection: close`, as HTTP/1.1 asks (RFC 9112, 9.6), and no client
//! reuses the connection.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::http::{HeaderValue, Request, Response, Version, header};
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// A request's body, telling whether it was read to its end (`read_all`
    /// is `None` for a body that is empty, as most are: nothing to watch).
    pub(super) struct Watched {
        #[pin]
        body: Incoming,
        read_all: Option<Arc<AtomicBool>>,
    }
}

/// Watches `request`'s body; the answer goes through [`Unread::mark`].
pub(super) fn watch(request: Request<Incoming>) -> (Request<Watched>, Unread) {
    let watched = request.version() < Version::HTTP_2 && !request.body().is_end_stream();
    let read_all = watched.then(|| Arc::new(AtomicBool::new(false)));
    let unread = Unread(read_all.clone());
    (request.map(|body| Watched { body, read_all }), unread)
}

impl Body for Watched {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        if frame.is_none()
            && let Some(read_all) = this.read_all
        {
            read_all.store(true, Ordering::Release);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Whether a request's body was left unread, once it is answered.
pub(super) struct Unread(Option<Arc<AtomicBool>>);

impl Unread {
    /// Says `connection: close` on `response` when the body was left unread.
    pub(super) fn mark<B>(self, response: &mut Response<B>) {
        if self
            .0
            .is_some_and(|read_all| !read_all.load(Ordering::Acquire))
        {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
}
