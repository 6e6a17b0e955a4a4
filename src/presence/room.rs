//! A room's name: which presence set a request is about. The routes without
//! a room (`/join`, `/events`, …) are the room named [`RoomName::LOBBY`].

use std::fmt;
use std::sync::{Arc, LazyLock};

/// The most characters a room's name may have.
pub const MAX_ROOM_CHARS: usize = 64;

/// Why a room's name was refused. The messages are shown to people as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomNameError {
    #[error(
        "The room's name is empty. Name a room with 1 to 64 of the characters A-Z a-z 0-9 . _ ~ -"
    )]
    Empty,
    #[error(
        "The room's name is {0} characters long. Name a room with 1 to 64 of the characters A-Z a-z 0-9 . _ ~ -"
    )]
    TooLong(usize),
    #[error(
        "The room's name contains {0:?}, which a room's name may not. Name a room with 1 to 64 of the characters A-Z a-z 0-9 . _ ~ -"
    )]
    BadCharacter(char),
}

/// 1 to 64 characters from `A–Z a–z 0–9 . _ ~ -`, case-sensitive: the
/// characters a URL path carries as they are. Cheap to clone: every event
/// carries its room's name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

static LOBBY: LazyLock<RoomName> = LazyLock::new(|| RoomName(Arc::from(RoomName::LOBBY)));

impl RoomName {
    /// The room of the routes without a room.
    pub const LOBBY: &'static str = "lobby";

    pub fn lobby() -> RoomName {
        LOBBY.clone()
    }

    pub fn parse(raw: &str) -> Result<RoomName, RoomNameError> {
        if raw.is_empty() {
            return Err(RoomNameError::Empty);
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-')))
        {
            return Err(RoomNameError::BadCharacter(bad));
        }
        // All ASCII now: bytes are characters.
        if raw.len() > MAX_ROOM_CHARS {
            return Err(RoomNameError::TooLong(raw.len()));
        }
        if raw == RoomName::LOBBY {
            return Ok(RoomName::lobby());
        }
        Ok(RoomName(Arc::from(raw)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_lobby(&self) -> bool {
        &*self.0 == RoomName::LOBBY
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_is_named_by_1_to_64_url_safe_characters() {
        for good in ["a", "doc-42", "A.b_c~d-E", &"x".repeat(64), "lobby"] {
            assert_eq!(RoomName::parse(good).expect(good).as_str(), good);
        }
        assert_eq!(RoomName::parse(""), Err(RoomNameError::Empty));
        assert_eq!(
            RoomName::parse(&"x".repeat(65)),
            Err(RoomNameError::TooLong(65))
        );
        for (bad, c) in [("a b", ' '), ("a/b", '/'), ("é", 'é'), ("a%20", '%')] {
            assert_eq!(RoomName::parse(bad), Err(RoomNameError::BadCharacter(c)));
        }
        assert_ne!(RoomName::parse("Lobby").expect("valid"), RoomName::lobby());
    }
}
