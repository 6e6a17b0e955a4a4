//! The domain types a request is parsed into before it reaches presence:
//! a [`Name`] that obeys the name rules, a public [`UserId`] and a secret [`Token`].
//! Once one of these exists it is valid; nothing downstream checks again.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::room::RoomName;

/// The most characters (Unicode scalar values) a name may have after trimming.
pub const MAX_NAME_CHARS: usize = 32;

/// Why a name was refused. The messages are shown to people as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("The name is empty. Type at least one character that is not a space.")]
    Empty,
    #[error("The name is {0} characters long. Use at most 32 characters.")]
    TooLong(usize),
    #[error(
        "The name contains a control character (such as a line break or tab). Use printable characters only."
    )]
    ControlCharacter,
}

/// A person's display name: trimmed, 1 to 32 characters, no control characters.
///
/// Held in an `Arc<str>` because the same name is copied into every snapshot and
/// every join reply; cloning it must not copy the text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Name(Arc<str>);

impl Name {
    /// Applies the name rules: trim whitespace at both ends, then 1 to 32
    /// characters, none of them a control character. Everything else is text.
    pub fn parse(raw: &str) -> Result<Name, NameError> {
        let trimmed = raw.trim();
        let chars = trimmed.chars().count();
        if chars == 0 {
            return Err(NameError::Empty);
        }
        if chars > MAX_NAME_CHARS {
            return Err(NameError::TooLong(chars));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(NameError::ControlCharacter);
        }
        Ok(Name(Arc::from(trimmed)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The most characters a person's id from a signed join (`sub`) may have.
pub const MAX_ID_CHARS: usize = 64;

/// Why a signed join's person id (`sub`) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("the person's id (sub) is empty")]
    Empty,
    #[error("the person's id (sub) is {0} characters long, above 64")]
    TooLong(usize),
    #[error("the person's id (sub) contains a space or a control character")]
    Space,
}

/// A person's public id, safe to show to everyone: a random UUID v4 for an
/// open join (kept as its 16 bytes: most ids are these), or the site's own
/// id for the person (`sub`) for a signed one. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Id);

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Id {
    Random(uuid::Uuid),
    Site(Arc<str>),
}

impl UserId {
    pub(crate) fn random() -> UserId {
        UserId(Id::Random(uuid::Uuid::new_v4()))
    }

    /// No one's id: the user of an event that is about no one.
    pub(crate) fn nil() -> UserId {
        UserId(Id::Random(uuid::Uuid::nil()))
    }

    /// Reads an id as [`fmt::Display`] writes it (from another node, through
    /// Redis): a UUID as a random id, anything else as a site's.
    pub fn read(text: &str) -> Result<UserId, IdError> {
        match uuid::Uuid::try_parse(text) {
            Ok(uuid) if uuid.hyphenated().to_string() == text => Ok(UserId(Id::Random(uuid))),
            _ => UserId::parse(text),
        }
    }

    /// A person's id as a site gives it (`sub`): 1 to 64 characters, none of
    /// them a space or a control character, so that it reads the same in a
    /// list, a log line and a Redis key.
    pub fn parse(text: &str) -> Result<UserId, IdError> {
        let chars = text.chars().count();
        if chars == 0 {
            return Err(IdError::Empty);
        }
        if chars > MAX_ID_CHARS {
            return Err(IdError::TooLong(chars));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(IdError::Space);
        }
        Ok(UserId(Id::Site(Arc::from(text))))
    }

    /// Whether a site gave this id (a signed join), rather than lobby.
    pub(crate) fn is_site_s(&self) -> bool {
        matches!(self.0, Id::Site(_))
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Id::Random(uuid) => fmt::Display::fmt(&uuid.hyphenated(), f),
            Id::Site(text) => f.write_str(text),
        }
    }
}

/// The secret that proves a user is who joined: 256 random bits as 64 hex digits,
/// then, for a room other than the lobby, `.` and the room's name (so that a
/// token used in another room can be told from an unknown one). A cluster
/// puts its log's tag in the first digits instead (see `Token::random_in_log`).
///
/// It has no `Display` and its `Debug` is redacted, so it cannot reach a log line
/// by accident; [`Token::expose`] is the one door out, used to answer the joiner.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Token(Box<str>);

impl Token {
    pub(crate) fn random() -> Token {
        let bytes: [u8; 32] = rand::random();
        Token(hex(&bytes).into_boxed_str())
    }

    /// A new token of a user of `room`.
    pub(crate) fn random_in(room: &RoomName) -> Token {
        let secret = Token::random();
        if room.is_lobby() {
            return secret;
        }
        Token(format!("{}.{room}", secret.0).into_boxed_str())
    }

    /// A new token of a user of `room`, given out by the cluster log `log`
    /// (its epoch, hex digits): the token's first [`LOG_TAG`] digits are the
    /// log's, so that a log that began again can tell a token of an earlier
    /// log, whose user a node may yet put back, from one it took back itself.
    /// The other 224 bits stay random.
    pub(crate) fn random_in_log(room: &RoomName, log: &str) -> Token {
        let mut text = String::from(Token::random_in(room).0);
        if let Some(tag) = log.get(..LOG_TAG).filter(|tag| is_hex(tag)) {
            text.replace_range(..LOG_TAG, tag);
        }
        Token(text.into_boxed_str())
    }

    /// The tag of the log that would have given out this token (its first
    /// digits); `None` if it is not a token lobby gives out.
    pub(crate) fn log_tag(&self) -> Option<&str> {
        let secret = self
            .0
            .split_once('.')
            .map_or(&*self.0, |(secret, _)| secret);
        (secret.len() == 64 && is_hex(secret)).then(|| &secret[..LOG_TAG])
    }

    /// The room the token says it belongs to (the lobby, if it names none);
    /// `None` if what it names is no room's name.
    pub(crate) fn room(&self) -> Option<RoomName> {
        match self.0.split_once('.') {
            Some((_, room)) => RoomName::parse(room).ok(),
            None => Some(RoomName::lobby()),
        }
    }

    /// Wraps a token a client sent; whether it is known is for presence to say.
    pub fn from_client(raw: &str) -> Token {
        Token(raw.trim().into())
    }

    /// The token's text, for the join reply to its owner and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the lobby keeps to find this token's user.
    pub fn key(&self) -> TokenKey {
        TokenKey(Sha256::digest(self.0.as_bytes()).into())
    }
}

/// A token's SHA-256. The lobby keeps and looks up tokens by this alone, so
/// neither the timing of a lookup (which compares keys byte by byte) nor the
/// lobby's memory gives away a token: a guess that shares a key's first bytes
/// says nothing about the token's.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    /// 64 hex digits: how the key is stored in Redis. It is not the token.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    pub fn from_hex(text: &str) -> Option<TokenKey> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut key = [0; 32];
        for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(TokenKey(key))
    }
}

/// How many of a cluster token's first hex digits are its log's tag.
const LOG_TAG: usize = 8;

/// Whether `text` is lowercase hex digits, as [`hex`] writes them.
fn is_hex(text: &str) -> bool {
    text.bytes()
        .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lower-case hex, two digits a byte.
fn hex(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte & 0x0f)]));
    }
    hex
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The most bytes a person's state may take, encoded as compact JSON.
pub const MAX_STATE_BYTES: usize = 256;

/// Why a state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("The state is not JSON ({0}). Send a JSON object such as {{\"status\":\"away\"}}.")]
    NotJson(String),
    #[error(
        "The state must be a JSON object, such as {{\"status\":\"away\"}} or {{\"typing\":true}}."
    )]
    NotObject,
    #[error("The state is {0} bytes as compact JSON. Keep it to 256 bytes.")]
    TooLarge(usize),
}

/// What a person is doing, as their site or page says: a JSON object of at
/// most 256 bytes, kept as compact JSON with its keys in order, so that the
/// same state sent twice is seen to be the same. Cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct UserState(Arc<str>);

impl UserState {
    pub fn parse(body: &[u8]) -> Result<UserState, StateError> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|err| StateError::NotJson(err.to_string()))?;
        UserState::from_value(&value)
    }

    pub fn from_value(value: &serde_json::Value) -> Result<UserState, StateError> {
        if !value.is_object() {
            return Err(StateError::NotObject);
        }
        let compact = value.to_string();
        if compact.len() > MAX_STATE_BYTES {
            return Err(StateError::TooLarge(compact.len()));
        }
        Ok(UserState(Arc::from(compact)))
    }

    /// The compact JSON object.
    pub fn as_json(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for UserState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The text is JSON lobby encoded itself: it reads back as it is.
        let raw: &serde_json::value::RawValue =
            serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_a_small_json_object_kept_compact_with_its_keys_in_order() {
        let state = UserState::parse(br#" { "typing": true, "status" : "away" } "#);
        assert_eq!(
            state.as_ref().map(UserState::as_json),
            Ok(r#"{"status":"away","typing":true}"#)
        );
        assert_eq!(
            state,
            UserState::parse(br#"{"typing":true,"status":"away"}"#)
        );
        assert_eq!(UserState::parse(b"[1]"), Err(StateError::NotObject));
        assert_eq!(UserState::parse(b"\"away\""), Err(StateError::NotObject));
        assert!(matches!(
            UserState::parse(b"{"),
            Err(StateError::NotJson(_))
        ));
        let big = format!(r#"{{"s":"{}"}}"#, "x".repeat(250));
        assert_eq!(
            UserState::parse(big.as_bytes()),
            Err(StateError::TooLarge(258))
        );
        let json = serde_json::to_string(&state.expect("valid")).expect("serializes");
        assert_eq!(json, r#"{"status":"away","typing":true}"#);
    }

    #[test]
    fn a_name_is_trimmed_at_both_ends() {
        assert_eq!(
            Name::parse("  alice \t").map(|n| n.to_string()),
            Ok("alice".into())
        );
    }

    #[test]
    fn an_empty_or_blank_name_is_rejected() {
        assert_eq!(Name::parse(""), Err(NameError::Empty));
        assert_eq!(Name::parse(" \n\t "), Err(NameError::Empty));
    }

    #[test]
    fn a_name_of_32_characters_is_accepted_and_33_is_rejected() {
        let cjk32 = "名".repeat(32);
        assert!(
            Name::parse(&cjk32).is_ok(),
            "32 three-byte characters are 32 characters"
        );
        assert_eq!(Name::parse(&"a".repeat(33)), Err(NameError::TooLong(33)));
    }

    #[test]
    fn a_name_with_a_control_character_inside_is_rejected() {
        assert_eq!(Name::parse("al\nice"), Err(NameError::ControlCharacter));
        assert_eq!(Name::parse("al\u{7f}ice"), Err(NameError::ControlCharacter));
        assert_eq!(Name::parse("al\u{0}ice"), Err(NameError::ControlCharacter));
    }

    #[test]
    fn markup_and_emoji_are_ordinary_text() {
        for raw in [
            "<script>alert(1)</script>",
            "🦀 crab",
            "山田 太郎",
            "a\"b'c&d",
        ] {
            assert_eq!(Name::parse(raw).map(|n| n.to_string()), Ok(raw.to_string()));
        }
    }

    #[test]
    fn tokens_are_64_hex_digits_and_differ_each_time() {
        let (a, b) = (Token::random(), Token::random());
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn a_cluster_token_carries_its_log_s_tag_and_its_room() {
        let log = "0123abcd4567ef890123abcd4567ef89";
        let design = RoomName::parse("design").expect("a room name");
        let (a, b) = (
            Token::random_in_log(&design, log),
            Token::random_in_log(&design, log),
        );
        assert_ne!(a, b);
        assert_eq!(a.log_tag(), Some("0123abcd"));
        assert_eq!(a.room(), Some(design));
        assert_eq!(
            Token::random_in_log(&RoomName::lobby(), log).log_tag(),
            Some("0123abcd")
        );
        // A log whose id is not hex digits tags nothing: the token is random.
        assert_ne!(
            Token::random_in_log(&RoomName::lobby(), "NOT-HEX!").log_tag(),
            Some("NOT-HEX!")
        );
        assert_eq!(Token::from_client("not-a-token").log_tag(), None);
        assert_eq!(Token::from_client(&"A".repeat(64)).log_tag(), None);
    }

    #[test]
    fn a_token_s_key_is_its_sha256_and_a_client_s_copy_finds_it() {
        let token = Token::random();
        let copy = Token::from_client(&format!(" {} ", token.expose()));
        assert_eq!(token.key(), copy.key());
        assert_ne!(token.key(), Token::random().key());
        let expected: [u8; 32] = Sha256::digest(token.expose().as_bytes()).into();
        assert_eq!(token.key(), TokenKey(expected));
    }

    #[test]
    fn a_token_names_its_room_unless_it_is_the_lobby_s() {
        let design = RoomName::parse("doc.42-x").expect("a room");
        let token = Token::random_in(&design);
        assert_eq!(token.room(), Some(design));
        let lobby = Token::random_in(&RoomName::lobby());
        assert_eq!(
            lobby.expose().len(),
            64,
            "the lobby's tokens are as they were"
        );
        assert_eq!(lobby.room(), Some(RoomName::lobby()));
        assert_eq!(Token::from_client("abc.no room").room(), None);
    }

    #[test]
    fn a_token_never_shows_in_debug_output() {
        let token = Token::random();
        assert!(!format!("{token:?}").contains(token.expose()));
    }

    #[test]
    fn a_token_key_and_a_user_id_survive_their_text_form() {
        let key = Token::random().key();
        assert_eq!(TokenKey::from_hex(&key.to_hex()), Some(key));
        assert_eq!(TokenKey::from_hex("zz"), None);
        assert_eq!(TokenKey::from_hex(&"g".repeat(64)), None);
        let id = UserId::random();
        assert_eq!(UserId::read(&id.to_string()), Ok(id.clone()));
        assert!(!id.is_site_s());
        assert!(UserId::read("user-42").is_ok_and(|id| id.is_site_s()));
        assert_eq!(
            UserId::parse("user-42@example.com").map(|id| id.to_string()),
            Ok("user-42@example.com".to_owned())
        );
        assert_eq!(UserId::parse(""), Err(IdError::Empty));
        assert_eq!(UserId::parse("two words"), Err(IdError::Space));
        assert_eq!(UserId::parse(&"x".repeat(65)), Err(IdError::TooLong(65)));
        assert!(UserId::parse(&"山".repeat(64)).is_ok());
    }
}
