//! The JSON API: POST /join, POST /leave, GET /users, GET /healthz.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{AppendHeaders, IntoResponse, Response};
use http_body_util::LengthLimitError;
use hyper::body::{Frame, SizeHint};
use percent_encoding::percent_decode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::cookie;
use super::limits::{AllowedSite, Client};
use super::rooms::Room;
use super::{ApiError, AppState};
use crate::presence::{Joined, Name, Pieces, Token, UserState};
use crate::tickets::TicketError;

#[derive(Deserialize)]
struct JoinBody {
    name: Option<String>,
    /// A signed join's ticket (a JWT), with `--join-secret`.
    ticket: Option<String>,
}

#[derive(Deserialize)]
struct LeaveForm {
    token: Option<String>,
}

/// The body formats lobby reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyFormat {
    Json,
    Form,
    Text,
}

pub async fn join(
    _: AllowedSite,
    Room(room): Room,
    Client(client): Client,
    State(state): State<AppState>,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    // Counted before anything else is done: a flood costs a lookup each.
    state.joins.check(client)?;
    let path = request.uri().path().to_owned();
    let secure = state.over_https(request.headers());
    let (format, body) = read_body(request, &[BodyFormat::Json, BodyFormat::Form]).await?;
    let parsed: JoinBody = match format {
        BodyFormat::Json => parse_json_object(&body)?,
        BodyFormat::Form | BodyFormat::Text => parse_form(&body)?,
    };
    let (person, name, user_state) = match &state.tickets {
        // A name sent beside a ticket is not the site's word: it is ignored.
        Some(tickets) => {
            let ticket = parsed.ticket.ok_or(TicketError::Missing)?;
            let ticket = tickets.check(&ticket, &room)?;
            (Some(ticket.person), ticket.name, ticket.state)
        }
        None => {
            let name = Name::parse(&parsed.name.ok_or(ApiError::MissingName)?)?;
            (None, name, None)
        }
    };
    let joined = state.presence.join(&room, person, name, user_state).await?;
    let cookies = cookie::joined(&joined.token, &path, secure);
    Ok((
        StatusCode::CREATED,
        set_cookies(cookies),
        json_body(join_reply(joined)),
    ))
}

/// `Set-Cookie` headers, for a response.
fn set_cookies(
    cookies: Vec<HeaderValue>,
) -> AppendHeaders<impl IntoIterator<Item = (header::HeaderName, HeaderValue)>> {
    AppendHeaders(
        cookies
            .into_iter()
            .map(|cookie| (header::SET_COOKIE, cookie)),
    )
}

/// `{"id","name","token","users":[…]}`, written around the users list that
/// presence hands over already encoded, in shared pieces (at thousands of
/// users, re-encoding it for every join would cost more than everything else
/// a join does, and copying it would cost a megabyte per reply in flight).
fn join_reply(joined: Joined) -> Pieces {
    #[derive(Serialize)]
    struct Head<'a> {
        id: String,
        name: &'a str,
        token: &'a str,
        users: [(); 0],
    }
    let head = Head {
        id: joined.id.to_string(),
        name: joined.name.as_str(),
        token: joined.token.expose(),
        users: [],
    };
    // Serializing a struct of strings cannot fail.
    let mut head = serde_json::to_vec(&head).unwrap_or_default();
    // `…,"users":[]}` becomes `…,"users":` + the list + `}`.
    head.truncate(head.len().saturating_sub(3));
    let mut body = Pieces::with_capacity(joined.users.parts().len() + 2);
    body.push(Bytes::from(head));
    body.append(joined.users);
    body.push(Bytes::from_static(b"}"));
    body
}

/// A JSON body as `T`, which must be an object: serde also fills a struct from
/// an array (`["alice"]` would join "alice"), and the contract is an object.
fn parse_json_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let parsed = serde_json::from_slice(body).map_err(json_error)?;
    // serde_json has just read the body as JSON, so its first byte that is not
    // JSON white space opens the value.
    let opening = body
        .iter()
        .find(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | b'\r'));
    match opening {
        Some(b'{') => Ok(parsed),
        _ => Err(json_of_the_wrong_shape()),
    }
}

/// Says where the JSON breaks, or that it is JSON of the wrong shape; never
/// the name of a Rust type.
fn json_error(err: serde_json::Error) -> ApiError {
    match err.classify() {
        serde_json::error::Category::Data => json_of_the_wrong_shape(),
        _ => ApiError::MalformedBody {
            format: "JSON",
            detail: err.to_string(),
        },
    }
}

fn json_of_the_wrong_shape() -> ApiError {
    ApiError::MalformedBody {
        format: "JSON",
        detail: "it must be an object whose \"name\" is a string".to_owned(),
    }
}

/// A form body as `T`. serde_urlencoded (through form_urlencoded) replaces
/// bytes that are not UTF-8 with U+FFFD, so `name=%ff%fe` would join as "��"
/// and a token would become another one: such a body is refused first. `&`,
/// `=` and `+` are ASCII, so the whole body decodes to UTF-8 exactly when
/// every name and value in it does.
fn parse_form<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if percent_decode(body).decode_utf8().is_err() {
        return Err(ApiError::FormNotUtf8);
    }
    serde_urlencoded::from_bytes(body).map_err(|err| ApiError::MalformedBody {
        format: "a form",
        detail: err.to_string(),
    })
}

/// The token may come as `Authorization: Bearer`, as a form `token=…`, or as a
/// `text/plain` body holding only the token (what `navigator.sendBeacon` sends).
pub async fn leave(
    _: AllowedSite,
    Room(room): Room,
    State(state): State<AppState>,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    // Whether to clear the token's cookie, read before the body takes the request.
    let path = request.uri().path().to_owned();
    let secure = state.over_https(request.headers());
    let key_cookie = cookie::sent_key(request.headers());
    let token = match bearer_token(request.headers()) {
        Some(token) => token,
        // Nothing at all to go on: say what is missing, not what type it lacks.
        None if !request.headers().contains_key(header::CONTENT_TYPE) => {
            return Err(ApiError::MissingToken);
        }
        None => {
            let (format, body) = read_body(request, &[BodyFormat::Form, BodyFormat::Text]).await?;
            let text = match format {
                BodyFormat::Form => parse_form::<LeaveForm>(&body)?.token.unwrap_or_default(),
                // Not replaced lossily: U+FFFD in place of a byte is another token.
                BodyFormat::Text | BodyFormat::Json => std::str::from_utf8(&body)
                    .map_err(|_| ApiError::TextNotUtf8)?
                    .to_owned(),
            };
            if text.trim().is_empty() {
                return Err(ApiError::MissingToken);
            }
            Token::from_client(&text)
        }
    };
    state.presence.leave(&room, &token).await?;
    let cleared = cookie::left(key_cookie.as_deref(), &token, &path, secure);
    Ok((StatusCode::NO_CONTENT, set_cookies(cleared)))
}

/// `POST /state`: the token as `Authorization: Bearer`, the body a JSON
/// object of at most 256 bytes. 204, and every stream of the room gets
/// `user_updated` (unless it is the state already).
pub async fn set_state(
    _: AllowedSite,
    Room(room): Room,
    State(state): State<AppState>,
    request: Request,
) -> Result<StatusCode, ApiError> {
    let token = bearer_token(request.headers()).ok_or(ApiError::MissingBearer)?;
    state.updates.check(&token)?;
    let (_, body) = read_body(request, &[BodyFormat::Json]).await?;
    let user_state = UserState::parse(&body)?;
    state.presence.set_state(&room, &token, user_state).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn users(
    _: AllowedSite,
    Room(room): Room,
    State(state): State<AppState>,
) -> impl IntoResponse {
    let users = state.presence.users_json(&room).await;
    let mut body = Pieces::with_capacity(users.parts().len() + 2);
    body.push(Bytes::from_static(b"{\"users\":"));
    body.append(users);
    body.push(Bytes::from_static(b"}"));
    json_body(body)
}

/// A JSON response whose body is written piece by piece, with its length.
fn json_body(body: Pieces) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::new(PiecesBody {
            remaining: body.len() as u64,
            parts: body.into_parts().into_iter(),
        }),
    )
        .into_response()
}

/// A body of shared pieces: hyper writes them with vectored writes, and
/// knows the length up front.
struct PiecesBody {
    parts: std::vec::IntoIter<Bytes>,
    remaining: u64,
}

impl hyper::body::Body for PiecesBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        Poll::Ready(this.parts.next().map(|part| {
            this.remaining -= part.len() as u64;
            Ok(Frame::data(part))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// `{"status":"ok"}`; a cluster node adds whether Redis is up and its node
/// id, and answers 503 while Redis is down.
pub async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    match state.presence.health() {
        None => (StatusCode::OK, Json(serde_json::json!({ "status": "ok" }))),
        Some(health) if health.redis_up => (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "ok", "redis": "up", "node": health.node })),
        ),
        Some(health) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "degraded", "redis": "down", "node": health.node })),
        ),
    }
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::MethodNotAllowed(method)
}

/// The token from `Authorization: Bearer …`, if the header is there.
fn bearer_token(headers: &HeaderMap) -> Option<Token> {
    bearer(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
}

/// The token in an `Authorization` value, if it is `Bearer …`.
pub(super) fn bearer(authorization: &str) -> Option<Token> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| Token::from_client(token))
}

/// Checks the content type against those `accepted`, then reads the body
/// (refusing it past the body limit with 413 without reading the rest).
async fn read_body(
    request: Request,
    accepted: &[BodyFormat],
) -> Result<(BodyFormat, Bytes), ApiError> {
    let media_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            value
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let format = match media_type.as_deref() {
        Some("application/json") => Some(BodyFormat::Json),
        Some("application/x-www-form-urlencoded") => Some(BodyFormat::Form),
        Some("text/plain") => Some(BodyFormat::Text),
        _ => None,
    };
    let format = format
        .filter(|format| accepted.contains(format))
        .ok_or_else(|| unsupported(media_type.as_deref(), accepted))?;
    // A body declared too large is refused before any of it is read: the
    // limit below would otherwise wait for its first 4 KiB.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > super::MAX_BODY_BYTES as u64) {
        return Err(ApiError::BodyTooLarge);
    }
    // Read here, with the limit, rather than by an extractor told the limit
    // by a layer, which every request would pass through.
    let body = axum::body::to_bytes(request.into_body(), super::MAX_BODY_BYTES)
        .await
        .map_err(|err| {
            let err = err.into_inner();
            if err.is::<LengthLimitError>() {
                ApiError::BodyTooLarge
            } else {
                ApiError::BodyUnreadable(err.to_string())
            }
        })?;
    Ok((format, body))
}

fn unsupported(got: Option<&str>, accepted: &[BodyFormat]) -> ApiError {
    let names: Vec<&str> = accepted
        .iter()
        .map(|format| match format {
            BodyFormat::Json => "application/json",
            BodyFormat::Form => "application/x-www-form-urlencoded",
            BodyFormat::Text => "text/plain",
        })
        .collect();
    let got = match got {
        Some(media_type) => format!("the request said {media_type}"),
        None => "the request had no Content-Type".to_owned(),
    };
    ApiError::UnsupportedMediaType(format!("Send the body as {}; {got}.", names.join(" or ")))
}
