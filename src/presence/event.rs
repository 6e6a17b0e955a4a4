//! Presence events and their wire form. Each event is encoded once, when it
//! happens, into the exact Server-Sent Events bytes every stream writes, so a
//! fan-out to N streams shares one buffer instead of serializing N times.

use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;

use super::name::{Name, TokenKey, UserId, UserState};
use super::pieces::Pieces;
use super::room::RoomName;

/// An event's position in the lobby's history. Strictly increasing, starting at 1.
pub type EventId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    NewUser,
    DisconnectUser,
    /// A person's state changed (`POST /state`).
    UserUpdated,
    /// The lobby's state was reloaded (a cluster node lost its place in the
    /// shared log): every open stream gets a fresh `existing_users`, or ends
    /// if its own user is no longer online.
    Reset,
    /// One membership of a person who stays online left (another tab of
    /// theirs is still there): its own streams end, and no one else is told.
    Revoked,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::NewUser => "new_user",
            EventKind::DisconnectUser => "disconnect_user",
            EventKind::UserUpdated => "user_updated",
            EventKind::Reset => "reset",
            EventKind::Revoked => "revoked",
        }
    }
}

/// One change to who is online, already encoded as an SSE frame.
#[derive(Debug)]
pub struct Event {
    /// The room it happened in: a stream sees only its own room's events.
    pub room: RoomName,
    pub id: EventId,
    /// Its place among the events of every room, in the order every receiver
    /// of their channel gets them (set as it is sent).
    pub seq: u64,
    pub kind: EventKind,
    pub user: UserId,
    /// The membership a `Revoked` is about.
    pub member: Option<TokenKey>,
    /// `id: …\nevent: …\ndata: {"id":…,"name":…}\n\n`, shared by every stream.
    pub frame: Bytes,
    /// When it happened, so that the fan-out can tell a lone event from a flow.
    pub at: Instant,
}

impl Event {
    /// An event about `user`: their id and name, and their state if it has one.
    pub(crate) fn new(room: &RoomName, id: EventId, kind: EventKind, user: &UserView) -> Event {
        let data = serde_json::to_string(user).unwrap_or_default();
        Event {
            room: room.clone(),
            id,
            seq: 0,
            kind,
            user: user.id.clone(),
            member: None,
            frame: frame(id, kind.as_str(), &data),
            at: Instant::now(),
        }
    }
}

impl Event {
    /// Everyone online as of event `latest`, for every open stream at once.
    pub(crate) fn reset(room: &RoomName, latest: EventId, users: Pieces) -> Event {
        Event {
            room: room.clone(),
            id: latest,
            seq: 0,
            kind: EventKind::Reset,
            user: UserId::nil(),
            member: None,
            // Built once for every stream: one copy is no cost here.
            frame: snapshot_frame(latest, users).to_bytes(),
            at: Instant::now(),
        }
    }

    /// Ends the streams of `member`, whose person stays; written to no one.
    pub(crate) fn revoked(room: &RoomName, latest: EventId, member: TokenKey) -> Event {
        Event {
            room: room.clone(),
            id: latest,
            seq: 0,
            kind: EventKind::Revoked,
            user: UserId::nil(),
            member: Some(member),
            frame: Bytes::new(),
            at: Instant::now(),
        }
    }
}

/// A user as everyone may see them: never the token. `state` only once it
/// was set, so that a user who never set one looks as ever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserView {
    #[serde(serialize_with = "serialize_display")]
    pub id: UserId,
    #[serde(serialize_with = "serialize_display")]
    pub name: Name,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<UserState>,
}

impl UserView {
    pub(crate) fn new(id: UserId, name: &Name) -> UserView {
        UserView {
            id,
            name: name.clone(),
            state: None,
        }
    }
}

fn serialize_display<S: serde::Serializer, T: std::fmt::Display>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// The `existing_users` frame: everyone online as of event `id`, oldest first,
/// around `users`, the JSON array, in the roster's shared pieces.
pub(crate) fn snapshot_frame(id: EventId, users: Pieces) -> Pieces {
    let mut frame = Pieces::with_capacity(users.parts().len() + 2);
    frame.push(Bytes::from(format!(
        "id: {id}\nevent: existing_users\ndata: {{\"users\":"
    )));
    frame.append(users);
    frame.push(Bytes::from_static(b"}\n\n"));
    frame
}

/// One SSE frame. `data` is JSON on one line: serde_json escapes every line
/// break, and names hold no control characters, so no name can split a frame.
fn frame(id: EventId, event: &str, data: &str) -> Bytes {
    // Boxed first, so that the history keeps the frame and not the spare
    // capacity `format!` grew it with.
    let frame = format!("id: {id}\nevent: {event}\ndata: {data}\n\n");
    Bytes::from(frame.into_boxed_str().into_boxed_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_frame_is_one_sse_event_with_id_name_and_json_data() {
        let user = UserId::random();
        let name = Name::parse("a\"b</script>\u{2028}").expect("valid name");
        let view = UserView::new(user.clone(), &name);
        let event = Event::new(&RoomName::lobby(), 7, EventKind::NewUser, &view);
        let text = std::str::from_utf8(&event.frame).expect("utf-8");
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines[0], "id: 7");
        assert_eq!(lines[1], "event: new_user");
        assert!(lines[2].starts_with("data: {"));
        assert_eq!(
            &lines[3..],
            ["", ""],
            "exactly one blank line ends the frame"
        );
        let data: serde_json::Value =
            serde_json::from_str(&lines[2]["data: ".len()..]).expect("json");
        assert_eq!(data["name"], name.as_str());
        assert_eq!(data["id"], user.to_string());
    }
}
