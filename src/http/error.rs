//! Every way a request can fail, the status each one gets (in one exhaustive
//! match), and the JSON body `{"error": "<a sentence a person can act on>"}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::observe::Limit;
use crate::presence::{
    JoinError, MAX_STREAMS_PER_USER, NameError, RoomNameError, StateError, TokenError,
};
use crate::tickets::TicketError;

/// How long a client refused for a full lobby is told to wait.
const FULL_RETRY_AFTER_SECS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "The request body could not be read as {format}: {detail}. Send {{\"name\":\"alice\"}} as JSON or name=alice as a form."
    )]
    MalformedBody {
        format: &'static str,
        detail: String,
    },
    #[error(
        "The request has no name field. Send {{\"name\":\"alice\"}} as JSON or name=alice as a form."
    )]
    MissingName,
    #[error(
        "The form is not UTF-8 once percent-decoded. Percent-encode the UTF-8 bytes of each value (é is %C3%A9), as browsers and curl --data-urlencode do."
    )]
    FormNotUtf8,
    #[error(
        "The request body is not UTF-8 text. Send the token exactly as POST /join returned it."
    )]
    TextNotUtf8,
    #[error("{0}")]
    InvalidName(#[from] NameError),
    #[error("{0}")]
    InvalidRoom(#[from] RoomNameError),
    #[error("{0}")]
    Ticket(#[from] TicketError),
    #[error("{0}")]
    InvalidState(#[from] StateError),
    #[error("No token was given. Send the token from POST /join as Authorization: Bearer ….")]
    MissingBearer,
    #[error(
        "Too many state updates with this token. Wait {} s before the next one.",
        retry_after_secs(*.0)
    )]
    TooManyUpdates(std::time::Duration),
    #[error("The request body is larger than 4 KiB. Send only the name (or the token).")]
    BodyTooLarge,
    #[error("The request body could not be read: {0}.")]
    BodyUnreadable(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("The query string could not be read: {0}. Pass the token as ?token=….")]
    MalformedQuery(String),
    #[error("The lobby is full ({0} people online). Try again in a few seconds.")]
    LobbyFull(usize),
    #[error(
        "No token was given. Pass the token from POST /join as ?token=… or as Authorization: Bearer …."
    )]
    MissingToken,
    #[error("This token is unknown or has expired. Join again with POST /join to get a new one.")]
    UnknownToken,
    #[error(
        "This token belongs to another room. Use it on the room it joined, or join this room to get a token for it."
    )]
    OtherRoomsToken,
    #[error(
        "There are already {0} rooms, the most this lobby keeps. Join a room that has people in it, or try again later."
    )]
    TooManyRooms(usize),
    #[error(
        "Your address already has {0} watcher streams open. Close one before opening another, or join to get a token."
    )]
    TooManyWatchers(usize),
    #[error(
        "This token already has {MAX_STREAMS_PER_USER} open streams. Close one before opening another."
    )]
    TooManyStreams,
    #[error(
        "Too many joins from your address. Wait {} s before joining again.",
        retry_after_secs(*.0)
    )]
    TooManyJoins(std::time::Duration),
    #[error("Too many connections are open. Try again in a few seconds.")]
    TooManyConnections,
    #[error(
        "This lobby node cannot reach its Redis right now, so it cannot record a join or a leave. Try again in a few seconds."
    )]
    StoreUnavailable,
    #[error(
        "Pages from other sites may not use this lobby. Its operator can allow a site with --cors-origin."
    )]
    CrossOrigin,
    #[error(
        "There is nothing at this address. The lobby serves /, /join, /events, /state, /leave, /users and /healthz, and each room's /rooms/NAME/join, /events, /state, /leave and /users."
    )]
    NotFound,
    #[error(
        "{0} is not allowed here. /join, /state and /leave take POST; /, /events, /users and /healthz take GET."
    )]
    MethodNotAllowed(axum::http::Method),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedBody { .. }
            | ApiError::MissingName
            | ApiError::FormNotUtf8
            | ApiError::TextNotUtf8
            | ApiError::BodyUnreadable(_)
            | ApiError::MalformedQuery(_)
            | ApiError::InvalidRoom(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidName(_)
            | ApiError::Ticket(TicketError::BadName(_) | TicketError::BadState(_))
            | ApiError::InvalidState(StateError::NotObject) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::InvalidState(StateError::NotJson(_)) => StatusCode::BAD_REQUEST,
            ApiError::InvalidState(StateError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MissingBearer => StatusCode::UNAUTHORIZED,
            ApiError::TooManyUpdates(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Ticket(_) => StatusCode::UNAUTHORIZED,
            ApiError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::LobbyFull(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::MissingToken | ApiError::UnknownToken => StatusCode::UNAUTHORIZED,
            ApiError::TooManyStreams | ApiError::TooManyJoins(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TooManyConnections | ApiError::StoreUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::CrossOrigin | ApiError::OtherRoomsToken => StatusCode::FORBIDDEN,
            ApiError::TooManyRooms(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyWatchers(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
}

impl From<JoinError> for ApiError {
    fn from(err: JoinError) -> Self {
        match err {
            JoinError::Full(online) => ApiError::LobbyFull(online),
            JoinError::TooManyRooms(rooms) => ApiError::TooManyRooms(rooms),
            JoinError::Unavailable => ApiError::StoreUnavailable,
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::Unknown => ApiError::UnknownToken,
            TokenError::OtherRoom => ApiError::OtherRoomsToken,
            TokenError::TooManyStreams => ApiError::TooManyStreams,
            TokenError::Unavailable => ApiError::StoreUnavailable,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        tracing::debug!(%status, "refused: {self}");
        let mut response = (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        let retry_after = match self {
            ApiError::LobbyFull(_) | ApiError::TooManyConnections | ApiError::TooManyRooms(_) => {
                Some(FULL_RETRY_AFTER_SECS)
            }
            ApiError::TooManyJoins(wait) | ApiError::TooManyUpdates(wait) => {
                Some(retry_after_secs(wait))
            }
            ApiError::StoreUnavailable => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        // For the metrics layer, which counts refusals by limit.
        let limit = match self {
            ApiError::TooManyJoins(_) => Some(Limit::JoinRate),
            ApiError::LobbyFull(_) => Some(Limit::MaxUsers),
            ApiError::TooManyStreams => Some(Limit::StreamsPerToken),
            ApiError::TooManyConnections => Some(Limit::Connections),
            ApiError::TooManyUpdates(_) => Some(Limit::StateRate),
            ApiError::TooManyWatchers(_) => Some(Limit::WatchersPerAddress),
            ApiError::TooManyRooms(_) => Some(Limit::MaxRooms),
            _ => None,
        };
        if let Some(limit) = limit {
            response.extensions_mut().insert(limit);
        }
        response
    }
}

/// Whole seconds, rounded up: `Retry-After` has no fractions, and waiting a
/// little too long is better than being refused again.
fn retry_after_secs(wait: std::time::Duration) -> u32 {
    u32::try_from(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
        .unwrap_or(u32::MAX)
        .max(1)
}
