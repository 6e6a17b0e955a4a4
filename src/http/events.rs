//! GET /events: one joined user's Server-Sent Events stream. The request is
//! parsed here, once, whichever way the connection came (the transport hands
//! a stream request on a plain connection to the router like any other); the
//! handler subscribes and answers with a [`Handoff`], and the transport writes
//! the stream. A refusal (401, 403, 429, 503) is an ordinary JSON answer.

use axum::extract::{FromRequestParts, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use serde::Deserialize;

use super::api::bearer;
use super::limits::AllowedSite;
use super::{ApiError, AppState};
use crate::presence::{EventId, Token};
use crate::server::Handoff;

/// What a stream request asks for.
pub struct EventsRequest {
    pub token: Token,
    /// Where a reconnecting client left off.
    pub last_event_id: Option<EventId>,
}

impl<S: Send + Sync> FromRequestParts<S> for EventsRequest {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let RawQuery(query) = RawQuery::from_request_parts(parts, state)
            .await
            .unwrap_or(RawQuery(None));
        EventsRequest::parse(query.as_deref(), &parts.headers)
    }
}

impl EventsRequest {
    /// The token from `?token=…`, or else from `Authorization: Bearer …`;
    /// and `Last-Event-ID`.
    fn parse(query: Option<&str>, headers: &HeaderMap) -> Result<EventsRequest, ApiError> {
        let header = |name| headers.get(name).and_then(|value| value.to_str().ok());
        #[derive(Deserialize)]
        struct Query {
            token: Option<String>,
        }
        let from_query = match query {
            Some(query) => serde_urlencoded::from_str::<Query>(query)
                .map_err(|err| ApiError::MalformedQuery(err.to_string()))?
                .token
                .filter(|token| !token.trim().is_empty())
                .map(|token| Token::from_client(&token)),
            None => None,
        };
        let token = from_query
            .or_else(|| header(header::AUTHORIZATION.as_str()).and_then(bearer))
            .ok_or(ApiError::MissingToken)?;
        Ok(EventsRequest {
            token,
            last_event_id: last_event_id(header("last-event-id")),
        })
    }
}

/// A `Last-Event-ID` that is not a decimal id is treated as absent: the stream
/// starts with a fresh snapshot, which is always correct.
fn last_event_id(value: Option<&str>) -> Option<EventId> {
    value?.trim().parse().ok()
}

pub async fn events(
    _: AllowedSite,
    State(state): State<AppState>,
    request: EventsRequest,
) -> Result<Response, ApiError> {
    let subscription = state
        .presence
        .subscribe(&request.token, request.last_event_id)
        .await?;
    Ok(Handoff::response(subscription))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn parse(
        query: Option<&str>,
        headers: &[(&'static str, &'static str)],
    ) -> Result<EventsRequest, ApiError> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_static(value));
        }
        EventsRequest::parse(query, &map)
    }

    #[test]
    fn the_token_comes_from_the_query_or_else_the_bearer_header() {
        let request = parse(Some("token=abc"), &[("last-event-id", "7")]).expect("parsed");
        assert_eq!(
            (request.token.expose(), request.last_event_id),
            ("abc", Some(7))
        );
        let request = parse(None, &[("authorization", "Bearer xyz")]).expect("parsed");
        assert_eq!(
            (request.token.expose(), request.last_event_id),
            ("xyz", None)
        );
        let request = parse(Some("token="), &[("authorization", "Bearer xyz")]).expect("parsed");
        assert_eq!(request.token.expose(), "xyz");
    }

    #[test]
    fn no_token_or_a_repeated_one_is_refused_and_a_bad_last_event_id_is_ignored() {
        assert!(matches!(parse(None, &[]), Err(ApiError::MissingToken)));
        assert!(matches!(
            parse(Some("token=a&token=b"), &[]),
            Err(ApiError::MalformedQuery(_))
        ));
        let request = parse(Some("token=a"), &[("last-event-id", "soon")]).expect("parsed");
        assert_eq!(request.last_event_id, None);
    }
}
