//! Test support shared by the presence core's unit and model tests: the SSE
//! frames a stream writes, parsed as a client reads them, and users as the
//! wire shows them.

use bytes::Bytes;

use super::{EventId, Pieces, UserView};

/// What the wire may hand a test: one buffer or shared pieces.
pub trait Wire {
    fn wire(&self) -> Bytes;
}

impl Wire for [u8] {
    fn wire(&self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

impl Wire for Vec<u8> {
    fn wire(&self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

impl Wire for Bytes {
    fn wire(&self) -> Bytes {
        self.clone()
    }
}

impl Wire for Pieces {
    fn wire(&self) -> Bytes {
        self.to_bytes()
    }
}

/// A user as the wire shows them: (id, name).
pub type Person = (String, String);

/// One parsed Server-Sent Events frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub id: EventId,
    pub event: String,
    pub data: serde_json::Value,
}

/// Splits SSE bytes into frames of `id:`, `event:` and `data:` lines.
pub fn parse_frames(bytes: &(impl Wire + ?Sized)) -> Vec<Frame> {
    let bytes = bytes.wire();
    let text = std::str::from_utf8(&bytes).expect("frames are UTF-8");
    text.split("\n\n")
        .filter(|block| !block.is_empty())
        .map(|block| {
            let (mut id, mut event, mut data) = (None, None, None);
            for line in block.lines() {
                let (field, value) = line.split_once(": ").expect("a `field: value` line");
                match field {
                    "id" => id = Some(value.parse().expect("a decimal id")),
                    "event" => event = Some(value.to_string()),
                    "data" => data = Some(serde_json::from_str(value).expect("JSON data")),
                    other => panic!("unexpected field {other:?} in {block:?}"),
                }
            }
            Frame {
                id: id.expect("an id line"),
                event: event.expect("an event line"),
                data: data.expect("a data line"),
            }
        })
        .collect()
}

pub fn person(value: &serde_json::Value) -> Person {
    let field = |key: &str| value[key].as_str().expect("a string field").to_string();
    (field("id"), field("name"))
}

pub fn people(users: &[UserView]) -> Vec<Person> {
    users
        .iter()
        .map(|u| (u.id.to_string(), u.name.to_string()))
        .collect()
}

/// The people in a JSON array of users, as a join reply carries them.
pub fn people_in_json(users: &(impl Wire + ?Sized)) -> Vec<Person> {
    let list: Vec<serde_json::Value> = serde_json::from_slice(&users.wire()).expect("a JSON array");
    list.iter().map(person).collect()
}
