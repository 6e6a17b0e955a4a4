//! What the HTTP layer talks to: one lobby, kept in this process or shared by
//! a cluster of nodes through Redis. Both keep the same rules and hand out the
//! same subscriptions; the HTTP layer does not know which one it has.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::cluster::{Cluster, Health};
use crate::presence::{
    Event, EventId, JoinError, Joined, Name, Pieces, Presence, PresenceConfig, Stats, Subscription,
    Token, TokenError, UserId, UserView,
};

/// Cheap to clone: every clone is a handle to the same lobby.
#[derive(Clone)]
pub enum Backend {
    /// This process is the whole lobby.
    Local(Presence),
    /// This process is one node of a lobby kept in Redis.
    Cluster(Cluster),
}

impl Backend {
    pub fn config(&self) -> &PresenceConfig {
        match self {
            Backend::Local(presence) => presence.config(),
            Backend::Cluster(cluster) => cluster.config(),
        }
    }

    /// Every event from now on, for the fan-out.
    pub fn events(&self) -> broadcast::Receiver<Arc<Event>> {
        match self {
            Backend::Local(presence) => presence.events(),
            Backend::Cluster(cluster) => cluster.events(),
        }
    }

    pub async fn join(&self, name: Name) -> Result<Joined, JoinError> {
        match self {
            Backend::Local(presence) => presence.join(name),
            Backend::Cluster(cluster) => cluster.join(name).await,
        }
    }

    pub async fn leave(&self, token: &Token) -> Result<UserId, TokenError> {
        match self {
            Backend::Local(presence) => presence.leave(token),
            Backend::Cluster(cluster) => cluster.leave(token).await,
        }
    }

    pub async fn subscribe(
        &self,
        token: &Token,
        last_event_id: Option<EventId>,
    ) -> Result<Subscription, TokenError> {
        match self {
            Backend::Local(presence) => presence.subscribe(token, last_event_id),
            Backend::Cluster(cluster) => cluster.subscribe(token, last_event_id).await,
        }
    }

    pub async fn users(&self) -> Vec<UserView> {
        match self {
            Backend::Local(presence) => presence.users(),
            Backend::Cluster(cluster) => cluster.users().await,
        }
    }

    pub async fn users_json(&self) -> Pieces {
        match self {
            Backend::Local(presence) => presence.users_json(),
            Backend::Cluster(cluster) => cluster.users_json().await,
        }
    }

    /// How many users are online (in the whole lobby) and how many streams
    /// are open (on this node).
    pub fn stats(&self) -> Stats {
        match self {
            Backend::Local(presence) => presence.stats(),
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
