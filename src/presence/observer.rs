//! What presence tells the world outside it, in its own words: each join and
//! leave where it is decided, and each stream that resumes. Presence defines
//! [`Observe`] and never names who listens; `observe/` (metrics, webhooks)
//! implements it, so the arrow runs from there to here and not back.

use std::fmt;

use super::event::EventId;
use super::name::{Name, UserId, UserState};
use super::room::RoomName;

/// Why a user went offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaveReason {
    /// They said so: `POST /leave`.
    Leave,
    /// Their last stream closed and did not reopen within `--grace`.
    GraceExpired,
    /// They never opened a stream within `--join-timeout`.
    JoinTimeout,
    /// In a cluster, the node holding their streams was taken for dead.
    NodeLost,
}

impl LeaveReason {
    pub const ALL: [LeaveReason; 4] = [
        LeaveReason::Leave,
        LeaveReason::GraceExpired,
        LeaveReason::JoinTimeout,
        LeaveReason::NodeLost,
    ];

    /// As logs, metrics and webhooks spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Leave => "leave",
            LeaveReason::GraceExpired => "grace_expired",
            LeaveReason::JoinTimeout => "join_timeout",
            LeaveReason::NodeLost => "node_lost",
        }
    }
}

impl fmt::Display for LeaveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Told of every join and leave a lobby decides (in a cluster, by the node
/// that made it, never by the replicas that apply it), and of every stream
/// that asks to resume. Called on the hot path, outside the lobby's lock: it
/// must return at once (count, log, queue), never wait.
pub trait Observe: fmt::Debug + Send + Sync + 'static {
    /// `id` joined `room` as `name`; `event` is their `new_user`, where known.
    fn joined(&self, room: &RoomName, id: UserId, name: &Name, event: Option<EventId>);

    /// `id` (`name`) went offline from `room` for `reason`; `event` is their
    /// `disconnect_user`, where known.
    fn left(
        &self,
        room: &RoomName,
        id: UserId,
        name: &Name,
        reason: LeaveReason,
        event: Option<EventId>,
    );

    /// `id` (`name`) in `room` set their state to `state`; `event` is the
    /// `user_updated`, where known.
    fn updated(
        &self,
        room: &RoomName,
        id: UserId,
        name: &Name,
        state: &UserState,
        event: Option<EventId>,
    );

    /// A stream came with a `Last-Event-ID`: `replayed` if the history still
    /// held what came since, otherwise it got a snapshot.
    fn resumed(&self, replayed: bool);
}

/// Tells no one: a lobby that nobody outside watches (unit tests, tools).
#[derive(Debug)]
pub(super) struct Unobserved;

impl Observe for Unobserved {
    fn joined(&self, _: &RoomName, _: UserId, _: &Name, _: Option<EventId>) {}

    fn left(&self, _: &RoomName, _: UserId, _: &Name, _: LeaveReason, _: Option<EventId>) {}

    fn updated(&self, _: &RoomName, _: UserId, _: &Name, _: &UserState, _: Option<EventId>) {}

    fn resumed(&self, _: bool) {}
}
