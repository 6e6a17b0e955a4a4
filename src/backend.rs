//! What the HTTP layer talks to: the rooms, kept in this process or shared by
//! a cluster of nodes through Redis. Both keep the same rules and hand out the
//! same subscriptions; the HTTP layer does not know which one it has.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::cluster::{Cluster, Health};
use crate::presence::{
    Event, EventId, JoinError, Joined, Name, Pieces, PresenceConfig, RoomCount, RoomName, Rooms,
    Stats, Subscription, Token, TokenError, UserId, UserState, UserView,
};

/// Cheap to clone: every clone is a handle to the same lobby.
#[derive(Clone)]
pub enum Backend {
    /// This process keeps every room.
    Local(Rooms),
    /// This process is one node of a lobby kept in Redis.
    Cluster(Cluster),
}

impl Backend {
    pub fn config(&self) -> &PresenceConfig {
        match self {
            Backend::Local(rooms) => rooms.config(),
            Backend::Cluster(cluster) => cluster.config(),
        }
    }

    /// Every event from now on, for the fan-out.
    pub fn events(&self) -> broadcast::Receiver<Arc<Event>> {
        match self {
            Backend::Local(rooms) => rooms.events(),
            Backend::Cluster(cluster) => cluster.events(),
        }
    }

    /// Adds `name` to `room`: a membership of `person` (a signed join's
    /// `sub`), or with `None` someone new.
    pub async fn join(
        &self,
        room: &RoomName,
        person: Option<UserId>,
        name: Name,
        state: Option<UserState>,
    ) -> Result<Joined, JoinError> {
        match self {
            Backend::Local(rooms) => rooms.join(room, person, name, state),
            Backend::Cluster(cluster) => cluster.join(room, person, name, state).await,
        }
    }

    /// Sets the state of the person of `room` holding `token`.
    pub async fn set_state(
        &self,
        room: &RoomName,
        token: &Token,
        state: UserState,
    ) -> Result<(), TokenError> {
        match self {
            Backend::Local(rooms) => rooms.set_state(room, token, state),
            Backend::Cluster(cluster) => cluster.set_state(room, token, state).await,
        }
    }

    pub async fn leave(&self, room: &RoomName, token: &Token) -> Result<UserId, TokenError> {
        match self {
            Backend::Local(rooms) => rooms.leave(room, token),
            Backend::Cluster(cluster) => cluster.leave(room, token).await,
        }
    }

    pub async fn subscribe(
        &self,
        room: &RoomName,
        token: &Token,
        last_event_id: Option<EventId>,
    ) -> Result<Subscription, TokenError> {
        match self {
            Backend::Local(rooms) => rooms.subscribe(room, token, last_event_id),
            Backend::Cluster(cluster) => cluster.subscribe(room, token, last_event_id).await,
        }
    }

    /// A watcher's stream of `room`: its people and events, for no user.
    pub async fn watch(&self, room: &RoomName, last_event_id: Option<EventId>) -> Subscription {
        match self {
            Backend::Local(rooms) => rooms.watch(room, last_event_id),
            Backend::Cluster(cluster) => cluster.watch(room, last_event_id).await,
        }
    }

    pub async fn users(&self, room: &RoomName) -> Vec<UserView> {
        match self {
            Backend::Local(rooms) => rooms.users(room),
            Backend::Cluster(cluster) => cluster.users(room).await,
        }
    }

    pub async fn users_json(&self, room: &RoomName) -> Pieces {
        match self {
            Backend::Local(rooms) => rooms.users_json(room),
            Backend::Cluster(cluster) => cluster.users_json(room).await,
        }
    }

    /// How many rooms have people in them (or emptied within their resume window).
    pub fn rooms(&self) -> usize {
        match self {
            Backend::Local(rooms) => rooms.count(),
            Backend::Cluster(cluster) => cluster.rooms(),
        }
    }

    /// The `limit` fullest rooms, fullest first.
    pub async fn list_rooms(&self, limit: usize) -> Vec<RoomCount> {
        match self {
            Backend::Local(rooms) => rooms.list(limit),
            Backend::Cluster(cluster) => cluster.list_rooms(limit).await,
        }
    }

    /// How many users are online (in every room; in a cluster, the whole
    /// lobby) and how many streams are open (on this node).
    pub fn stats(&self) -> Stats {
        match self {
            Backend::Local(rooms) => rooms.stats(),
            Backend::Cluster(cluster) => cluster.stats(),
        }
    }

    /// The cluster's view of Redis; `None` for a lobby of one process.
    pub fn health(&self) -> Option<Health> {
        match self {
            Backend::Local(_) => None,
            Backend::Cluster(cluster) => Some(cluster.health()),
        }
    }

    /// Called once the server has stopped serving.
    pub async fn stopped(&self) {
        if let Backend::Cluster(cluster) = self {
            cluster.retire().await;
        }
    }
}
