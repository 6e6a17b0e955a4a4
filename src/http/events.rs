//! GET /events (and /rooms/{room}/events): a room's Server-Sent Events
//! stream, a joined user's with their token, or else a watcher's, who is in
//! no one's list. The request is parsed here, once, whichever way the
//! connection came (the transport hands a stream request on a plain
//! connection to the router like any other); the handler subscribes and
//! answers with a [`Handoff`], and the transport writes the stream. A refusal
//! (400, 401, 403, 429, 503) is an ordinary JSON answer.

use axum::extract::{FromRequestParts, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use serde::Deserialize;

use super::api::bearer;
use super::cookie;
use super::limits::{AllowedSite, Client};
use super::rooms::Room;
use super::{ApiError, AppState};
use crate::presence::{EventId, Token};
use crate::server::Handoff;

/// What a stream request asks for.
pub struct EventsRequest {
    /// `None`: a watcher's stream.
    pub token: Option<Token>,
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
    /// The token from `?token=…`, or else from `Authorization: Bearer …`,
    /// or else from the cookie a join set (for a browser's `EventSource`; a
    /// token given outright wins, since two tabs of one browser joined as
    /// two people share one cookie); and `Last-Event-ID`. A request that
    /// offers none is a watcher's; one that offers a token it does not give
    /// (`?token=`, a header that is not a bearer token) is refused.
    fn parse(query: Option<&str>, headers: &HeaderMap) -> Result<EventsRequest, ApiError> {
        let header = |name| headers.get(name).and_then(|value| value.to_str().ok());
        #[derive(Deserialize)]
        struct Query {
            token: Option<String>,
        }
        let in_query = match query {
            Some(query) => {
                serde_urlencoded::from_str::<Query>(query)
                    .map_err(|err| ApiError::MalformedQuery(err.to_string()))?
                    .token
            }
            None => None,
        };
        let offered = in_query.is_some() || headers.contains_key(header::AUTHORIZATION);
        let token = in_query
            .filter(|token| !token.trim().is_empty())
            .map(|token| Token::from_client(&token))
            .or_else(|| header(header::AUTHORIZATION.as_str()).and_then(bearer));
        if offered && token.is_none() {
            return Err(ApiError::MissingToken);
        }
        let token = token.or_else(|| cookie::token(headers));
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
    Room(room): Room,
    Client(client): Client,
    State(state): State<AppState>,
    request: EventsRequest,
) -> Result<Response, ApiError> {
    let presence = &state.presence;
    let subscription = match &request.token {
        Some(token) => {
            presence
                .subscribe(&room, token, request.last_event_id)
                .await?
        }
        None => {
            let slot = state.watchers.open(client)?;
            let mut watching = presence.watch(&room, request.last_event_id).await;
            watching.hold(slot);
            watching
        }
    };
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
        let token = |request: &EventsRequest| request.token.as_ref().map(|t| t.expose().to_owned());
        assert_eq!(
            (token(&request).as_deref(), request.last_event_id),
            (Some("abc"), Some(7))
        );
        let request = parse(None, &[("authorization", "Bearer xyz")]).expect("parsed");
        assert_eq!(
            (token(&request).as_deref(), request.last_event_id),
            (Some("xyz"), None)
        );
        let request = parse(Some("token="), &[("authorization", "Bearer xyz")]).expect("parsed");
        assert_eq!(token(&request).as_deref(), Some("xyz"));
    }

    #[test]
    fn the_cookie_is_the_token_only_when_neither_the_query_nor_the_header_gives_one() {
        let token = |request: EventsRequest| request.token.map(|t| t.expose().to_owned());
        let cookie = ("cookie", "lobby_token=from-cookie");
        let only = parse(None, &[cookie]).expect("parsed");
        assert_eq!(token(only).as_deref(), Some("from-cookie"));
        let query = parse(Some("token=abc"), &[cookie]).expect("parsed");
        assert_eq!(token(query).as_deref(), Some("abc"));
        let header = parse(None, &[cookie, ("authorization", "Bearer xyz")]).expect("parsed");
        assert_eq!(token(header).as_deref(), Some("xyz"));
        assert!(matches!(
            parse(Some("token="), &[cookie]),
            Err(ApiError::MissingToken)
        ));
    }

    #[test]
    fn no_token_is_a_watcher_an_empty_or_repeated_one_is_refused_and_a_bad_last_event_id_is_ignored()
     {
        assert!(parse(None, &[]).expect("parsed").token.is_none());
        assert!(parse(Some("x=1"), &[]).expect("parsed").token.is_none());
        assert!(matches!(
            parse(Some("token="), &[]),
            Err(ApiError::MissingToken)
        ));
        assert!(matches!(
            parse(None, &[("authorization", "Basic abc")]),
            Err(ApiError::MissingToken)
        ));
        assert!(matches!(
            parse(Some("token=a&token=b"), &[]),
            Err(ApiError::MalformedQuery(_))
        ));
        let request = parse(Some("token=a"), &[("last-event-id", "soon")]).expect("parsed");
        assert_eq!(request.last_event_id, None);
    }
}
