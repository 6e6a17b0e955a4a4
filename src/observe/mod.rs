//! What the world outside the lobby learns of it: Prometheus metrics
//! ([`metrics`]) and webhooks to the application's backend ([`webhook`]).
//! [`Observer`] implements presence's [`Observe`]: presence and the cluster
//! tell it of each join and leave, at the one place it is decided (so in a
//! cluster, once, by the node that made it); telling it costs a few atomic
//! adds and, with a webhook, one `try_send`.

pub mod metrics;
pub mod webhook;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

pub use metrics::{Limit, Metrics, Route, SlowCause};
pub use webhook::{Delivery, WebhookConfig, Webhooks, What};

use crate::presence::{EventId, LeaveReason, Name, Observe, RoomName, UserId, UserState};

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

    /// Queues the join, leave or update for the webhook, if there is one.
    fn deliver(&self, room: &RoomName, id: UserId, name: &str, what: What, event: Option<EventId>) {
        if let Some(webhooks) = &self.webhooks {
            webhooks.send(Delivery {
                room: room.clone(),
                id: id.to_string(),
                name: name.into(),
                what,
                event_id: event,
                at: SystemTime::now(),
            });
        }
    }
}

/// Each join and leave is logged, counted and (with `--webhook`) queued for
/// the backend; each resume is counted.
impl Observe for Observer {
    fn joined(&self, room: &RoomName, id: UserId, name: &Name, event: Option<EventId>) {
        let name = name.as_str();
        tracing::info!(%room, %id, name, "joined");
        self.metrics.joined();
        self.deliver(room, id, name, What::Join, event);
    }

    fn left(
        &self,
        room: &RoomName,
        id: UserId,
        name: &Name,
        reason: LeaveReason,
        event: Option<EventId>,
    ) {
        let name = name.as_str();
        tracing::info!(%room, %id, name, %reason, "left");
        self.metrics.left(reason);
        self.deliver(room, id, name, What::Leave(reason), event);
    }

    fn updated(
        &self,
        room: &RoomName,
        id: UserId,
        name: &Name,
        state: &UserState,
        event: Option<EventId>,
    ) {
        let name = name.as_str();
        tracing::debug!(%room, %id, name, ?state, "updated");
        self.deliver(room, id, name, What::Update(state.clone()), event);
    }

    fn resumed(&self, replayed: bool) {
        self.metrics.resumed(replayed);
    }
}
