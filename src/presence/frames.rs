//! Test support shared by the presence core's unit and model tests: the SSE
//! frames a stream writes, parsed as a client reads them, and users as the
//! wire shows them.

use bytes::Bytes;
use eventsource_stream::Eventsource;

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

/// Reads SSE bytes into frames as a client's EventSource reads them, with
/// the SSE reader the rest of the crate and its tests use (eventsource-stream),
/// and holds each frame to what presence writes: whole (the bytes end with a
/// blank line), an `event:` line, JSON data, and an `id:` of its own. The
/// reader hands an event without an `id:` line the id before it, as a browser
/// does, so ids that must rise frame by frame catch a missing one.
pub fn parse_frames(bytes: &(impl Wire + ?Sized)) -> Vec<Frame> {
    use futures_util::{FutureExt, StreamExt};

    let bytes = &bytes.wire()[..];
    assert!(
        bytes.is_empty() || bytes.ends_with(b"\n\n"),
        "frames end with a blank line: {:?}",
        String::from_utf8_lossy(bytes)
    );
    let read = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(bytes)])
        .eventsource()
        .collect::<Vec<_>>()
        .now_or_never()
        .expect("bytes in hand are read at once");
    let mut last: Option<EventId> = None;
    read.into_iter()
        .map(|event| {
            let event = event.expect("frames are UTF-8 SSE");
            let id: EventId = event.id.parse().expect("a decimal id");
            assert!(
                last.is_none_or(|last| id > last),
                "each frame has an id of its own, above the one before: {id} after {last:?}"
            );
            last = Some(id);
            assert_ne!(event.event, "message", "a frame names its event: {event:?}");
            Frame {
                id,
                data: serde_json::from_str(&event.data).expect("JSON data"),
                event: event.event,
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
