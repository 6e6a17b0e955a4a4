//! Which room a request is about, and GET /rooms. Every API route and the
//! page exist twice: under `/rooms/{room}`, and without a room, which is the
//! room named `lobby`.

use axum::Json;
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{FromRequestParts, Query, RawPathParams, State};
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};

use super::limits::AllowedSite;
use super::{ApiError, AppState};
use crate::presence::{RoomName, RoomNameError};

/// `GET /rooms` lists this many rooms unless asked for fewer or more…
const LIST_DEFAULT: usize = 100;
/// …and never more than this.
const LIST_MAX: usize = 1000;

/// The room named in the path, or the lobby for a route without one. A name
/// that breaks the rules is refused (400) before anything else is done.
pub struct Room(pub RoomName);

impl FromRequestParts<AppState> for Room {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|err: RawPathParamsRejection| match err {
                // A percent-encoding that is not UTF-8 is no room's name.
                RawPathParamsRejection::InvalidUtf8InPathParam(_) => {
                    ApiError::InvalidRoom(RoomNameError::BadCharacter('\u{fffd}'))
                }
                _ => ApiError::NotFound,
            })?;
        let room = match params.iter().find(|(key, _)| *key == "room") {
            Some((_, raw)) => RoomName::parse(raw)?,
            None => RoomName::lobby(),
        };
        Ok(Room(room))
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
}

#[derive(Serialize)]
pub struct RoomList {
    rooms: Vec<RoomEntry>,
}

#[derive(Serialize)]
struct RoomEntry {
    room: String,
    users: usize,
}

/// GET /rooms (with `--list-rooms`): the rooms with people in them, fullest
/// first, at most `?limit=` (100 unless asked, 1000 at most).
pub async fn list(
    _: AllowedSite,
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RoomList>, ApiError> {
    let Query(query) = query.map_err(|err| ApiError::MalformedQuery(err.body_text()))?;
    let limit = query.limit.unwrap_or(LIST_DEFAULT).min(LIST_MAX);
    let rooms = state.presence.list_rooms(limit).await;
    Ok(Json(RoomList {
        rooms: rooms
            .into_iter()
            .map(|count| RoomEntry {
                room: count.room.to_string(),
                users: count.users,
            })
            .collect(),
    }))
}
