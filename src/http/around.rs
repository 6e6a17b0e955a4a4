//! What every request gets, in one layer: a debug span naming its method and
//! path, its time to the response head in the route's latency histogram, a
//! refusal for a limit counted (which [`ApiError`](super::ApiError) marks on
//! its response), and the headers every response carries. One layer rather
//! than one per concern: each layer costs every request of a kept-alive
//! connection a clone and a future of its own, and these four together cost
//! more than the route they wrap.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::MatchedPath;
use axum::http::{HeaderValue, Request, header};
use axum::response::Response;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::observe::{Limit, Metrics, Route};

/// Wraps each route of the router in [`Around`].
#[derive(Clone)]
pub struct AroundLayer {
    metrics: Arc<Metrics>,
}

impl AroundLayer {
    pub fn new(metrics: Arc<Metrics>) -> AroundLayer {
        AroundLayer { metrics }
    }
}

impl<S> Layer<S> for AroundLayer {
    type Service = Around<S>;

    fn layer(&self, inner: S) -> Around<S> {
        Around {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Around<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Service<Request<Body>> for Around<S>
where
    S: Service<Request<Body>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Answering<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // Only a route's requests are timed; what no route matched is not.
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map(|path| route_of(path.as_str()));
        // The span names the path only: a query string may hold a token.
        let span = tracing::debug_span!("request", method = %request.method(), path = %request.uri().path());
        let inner = span.in_scope(|| self.inner.call(request));
        Answering {
            inner,
            timed: route.map(|route| (route, Instant::now(), self.metrics.clone())),
            span,
        }
    }
}

pin_project! {
    /// A response on its way through [`Around`].
    pub struct Answering<F> {
        #[pin]
        inner: F,
        timed: Option<(Route, Instant, Arc<Metrics>)>,
        span: tracing::Span,
    }
}

impl<F, E> Future for Answering<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answered = {
            let _entered = this.span.enter();
            std::task::ready!(this.inner.poll(cx))
        };
        let Ok(mut response) = answered else {
            return Poll::Ready(answered);
        };
        if let Some((route, started, metrics)) = this.timed.take() {
            let elapsed = started.elapsed();
            metrics.answered(route, elapsed.as_secs_f64());
            if let Some(limit) = response.extensions().get::<Limit>() {
                metrics.refused(*limit);
            }
            let _entered = this.span.enter();
            tracing::debug!(status = response.status().as_u16(), ?elapsed, "answered");
        }
        // No response is to be read as anything but what it says it is, and
        // no page of the lobby tells another site where its visitors came from.
        let headers = response.headers_mut();
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        Poll::Ready(Ok(response))
    }
}

/// The label of the route that matched `path`. A room's routes count with
/// the lobby's: the rooms are unbounded, the labels must not be.
fn route_of(path: &str) -> Route {
    match path {
        "/" | "/rooms/{room}" => Route::Page,
        "/join" | "/rooms/{room}/join" => Route::Join,
        "/leave" | "/rooms/{room}/leave" => Route::Leave,
        "/users" | "/rooms/{room}/users" => Route::Users,
        "/events" | "/rooms/{room}/events" => Route::Events,
        "/healthz" => Route::Healthz,
        "/metrics" => Route::Metrics,
        path if path.starts_with("/static/") => Route::Static,
        _ => Route::Other,
    }
}
