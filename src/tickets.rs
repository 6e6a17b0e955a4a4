//! Signed joins (`--join-secret`): a join carries a ticket, a JWT that the
//! site's own backend signs with HS256 and the shared secret, saying who the
//! person is (`sub`, which becomes their presence id), their display name and
//! until when the ticket is good (`exp`; `nbf` and `iat` too when present,
//! with 30 s of leeway for clocks), and maybe which room it is for.
//!
//! The JWT itself is read by `jsonwebtoken`; this module sets what it checks
//! and turns each way a ticket can fail into one sentence. No sentence, and
//! no log line, ever holds the ticket.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::presence::{IdError, Name, NameError, RoomName, StateError, UserId, UserState};

/// How far the site's clock and lobby's may disagree, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// What checks tickets: the secret, and the rules every ticket must meet.
#[derive(Clone)]
pub struct Tickets {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tickets(<secret redacted>)")
    }
}

/// Who a good ticket says is joining, and what they are doing if it says.
#[derive(Debug)]
pub struct Ticket {
    pub person: UserId,
    pub name: Name,
    pub state: Option<UserState>,
}

/// The claims lobby reads; `exp` and `nbf` are checked by `jsonwebtoken`.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    name: String,
    room: Option<String>,
    iat: Option<u64>,
    state: Option<serde_json::Value>,
}

/// Why a join's ticket was refused, as the person or site reading it needs it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error(
        "This lobby takes signed joins only: send the ticket your site gives you (a JWT) as \"ticket\"."
    )]
    Missing,
    #[error(
        "The ticket is not a JWT signed with HS256 and this lobby's join secret. Ask the site for a new one."
    )]
    BadlySigned,
    #[error("The ticket has expired (its exp has passed). Ask the site for a fresh one.")]
    Expired,
    #[error(
        "The ticket is not valid yet (its nbf or iat is in the future). Check the site's clock."
    )]
    NotYet,
    #[error(
        "The ticket has no exp claim (a number: seconds since 1970); this lobby takes only tickets that expire."
    )]
    NoExpiry,
    #[error(
        "The ticket's claims cannot be read ({0}). It needs sub and name as strings, and exp as a number."
    )]
    Claims(String),
    #[error("The ticket's sub is not a person's id: {0}. Use 1 to 64 characters with no spaces.")]
    BadPerson(IdError),
    #[error(
        "The ticket is for the room \"{0}\", not this one. Ask the site for a ticket for this room."
    )]
    OtherRoom(String),
    #[error("The ticket's name is not a valid name: {0}")]
    BadName(NameError),
    #[error("The ticket's state is not a valid state: {0}")]
    BadState(StateError),
}

impl Tickets {
    /// Checks tickets signed with `secret`; fails only on a secret the JWT
    /// library will not take.
    pub fn new(secret: &[u8]) -> Result<Tickets, String> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // A site may address its tickets to lobby by `aud`; lobby has no
        // name of its own to check it against.
        validation.validate_aud = false;
        let key = DecodingKey::from_secret(secret)
            .map_err(|err| format!("the join secret cannot be used: {err}"))?;
        Ok(Tickets { key, validation })
    }

    /// Checks `ticket` for a join to `room`.
    pub fn check(&self, ticket: &str, room: &RoomName) -> Result<Ticket, TicketError> {
        let ticket = ticket.trim();
        // A header lobby cannot read (`alg: none`, or no JWT at all) is not
        // signed as lobby takes; only past it is a JSON error the claims'.
        jsonwebtoken::decode_header(ticket).map_err(|_| TicketError::BadlySigned)?;
        let claims = jsonwebtoken::decode::<Claims>(ticket, &self.key, &self.validation)
            .map_err(|err| refusal(err.kind()))?
            .claims;
        if claims
            .iat
            .is_some_and(|iat| iat > unix_now().saturating_add(LEEWAY_SECS))
        {
            return Err(TicketError::NotYet);
        }
        if let Some(wanted) = claims.room
            && wanted != room.as_str()
        {
            return Err(TicketError::OtherRoom(wanted));
        }
        let person = UserId::parse(&claims.sub).map_err(TicketError::BadPerson)?;
        let name = Name::parse(&claims.name).map_err(TicketError::BadName)?;
        let state = claims
            .state
            .as_ref()
            .map(UserState::from_value)
            .transpose()
            .map_err(TicketError::BadState)?;
        Ok(Ticket {
            person,
            name,
            state,
        })
    }
}

fn refusal(kind: &ErrorKind) -> TicketError {
    match kind {
        ErrorKind::ExpiredSignature => TicketError::Expired,
        ErrorKind::ImmatureSignature => TicketError::NotYet,
        ErrorKind::MissingRequiredClaim(_) => TicketError::NoExpiry,
        // Read only once the signature is good: the site signed claims
        // lobby cannot read. Which field is missing is said; a value never is.
        ErrorKind::Json(err) => TicketError::Claims(match err.classify() {
            serde_json::error::Category::Data if err.to_string().starts_with("missing field") => {
                err.to_string()
            }
            _ => "a claim is not of the type lobby reads".to_owned(),
        }),
        _ => TicketError::BadlySigned,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}
