//! What the world outside the lobby learns of it: Prometheus metrics
//! ([`metrics`]) and webhooks to the application's backend ([`webhook`]).
//! Presence and the cluster tell an [`Observer`] of each join and leave, at
//! the one place it is decided (so in a cluster, once, by the node that made
//! it); telling it costs a few atomic adds and, with a webhook, one `try_send`.

pub mod metrics;
pub mod webhook;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

pub use metrics::{Limit, Metrics, SlowCause};
pub use webhook::{Delivery, WebhookConfig, Webhooks};

use crate::presence::EventId;

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

    /// As the cluster's Lua scripts write it ("grace expired", …).
    pub fn from_script(text: &str) -> Option<LeaveReason> {
        LeaveReason::ALL
            .into_iter()
            .find(|reason| reason.as_str().replace('_', " ") == text)
    }
}

impl fmt::Display for LeaveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Told of every join and leave this node decides, and of the streams it
/// serves. Cheap to clone.
#[derive(Clone, Default)]
pub struct Observer {
    metrics: Arc<Metrics>,
    webhooks: Option<Webhooks>,
}

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observer")
            .field("webhooks", &self.webhooks.is_some())
            .finish_non_exhaustive()
    }
}

impl Observer {
    pub fn new(metrics: Arc<Metrics>, webhooks: Option<Webhooks>) -> Observer {
        Observer { metrics, webhooks }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// `id` joined as `name`; `event` is their `new_user`, where known.
    pub fn joined(&self, id: impl fmt::Display, name: &str, event: Option<EventId>) {
        tracing::info!(%id, name, "joined");
        self.metrics.joined();
        if let Some(webhooks) = &self.webhooks {
            webhooks.send(Delivery {
                id: id.to_string(),
                name: name.into(),
                reason: None,
                event_id: event,
                at: SystemTime::now(),
            });
        }
    }

    /// `id` (`name`) went offline for `reason`; `event` is their `disconnect_user`.
    pub fn left(
        &self,
        id: impl fmt::Display,
        name: &str,
        reason: LeaveReason,
        event: Option<EventId>,
    ) {
        tracing::info!(%id, name, %reason, "left");
        self.metrics.left(reason);
        if let Some(webhooks) = &self.webhooks {
            webhooks.send(Delivery {
                id: id.to_string(),
                name: name.into(),
                reason: Some(reason),
                event_id: event,
                at: SystemTime::now(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_the_cluster_scripts_write_is_understood() {
        for (text, reason) in [
            ("grace expired", LeaveReason::GraceExpired),
            ("join timeout", LeaveReason::JoinTimeout),
            ("node lost", LeaveReason::NodeLost),
        ] {
            assert_eq!(LeaveReason::from_script(text), Some(reason));
        }
        assert_eq!(LeaveReason::from_script("bored"), None);
    }
}
