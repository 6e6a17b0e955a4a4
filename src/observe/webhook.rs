//! `--webhook`: every join and leave this node decides is POSTed as JSON to
//! the application's backend, signed with HMAC-SHA256 of `--webhook-secret`.
//! Presence only puts the event in a bounded queue (`try_send`, never a wait);
//! one task delivers the queue in order, each event with a timeout and a few
//! retries with backoff. A full queue drops the event, counts it and says so
//! once, so a slow or dead backend never slows the lobby.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::mpsc;

use super::metrics::{Metrics, WebhookOutcome};
use crate::presence::{EventId, LeaveReason, RoomName, UserState};

/// How many times one event is tried before it is given up.
pub const ATTEMPTS: u32 = 5;

/// The wait before the first retry; it doubles after each.
pub const FIRST_RETRY: Duration = Duration::from_millis(200);

/// The header that carries the signature: `sha256=<hex>` of the raw body.
pub const SIGNATURE_HEADER: &str = "x-lobby-signature";

/// The header that names one event, the same on each of its retries, so the
/// backend can tell a retry from a new event.
pub const DELIVERY_HEADER: &str = "x-lobby-delivery";

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: reqwest::Url,
    pub secret: String,
    /// How long one attempt may take, answer included.
    pub timeout: Duration,
    /// How many events may wait; past that, new ones are dropped.
    pub queue: usize,
}

/// One join, leave or update, as the backend is told of it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub room: RoomName,
    pub id: String,
    pub name: Box<str>,
    pub what: What,
    pub event_id: Option<EventId>,
    pub at: SystemTime,
}

/// What happened to the person a delivery is about.
#[derive(Debug, Clone)]
pub enum What {
    Join,
    Leave(LeaveReason),
    /// Their state is now this.
    Update(UserState),
}

/// The JSON body: never a token, since presence does not hand one over.
#[derive(Serialize)]
struct Body<'a> {
    event: &'static str,
    room: &'a str,
    id: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'a UserState>,
    at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<EventId>,
}

impl Delivery {
    fn body(&self) -> Vec<u8> {
        let (event, reason, state) = match &self.what {
            What::Join => ("join", None, None),
            What::Leave(reason) => ("leave", Some(reason.as_str()), None),
            What::Update(state) => ("update", None, Some(state)),
        };
        let body = Body {
            event,
            room: self.room.as_str(),
            id: &self.id,
            name: &self.name,
            reason,
            state,
            at: humantime::format_rfc3339_millis(self.at).to_string(),
            event_id: self.event_id,
        };
        // A struct of strings and numbers always serializes.
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

/// `sha256=<hex>`: HMAC-SHA256 of `body` keyed with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut text = String::with_capacity(7 + 2 * digest.len());
    text.push_str("sha256=");
    for byte in digest {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// The queue's sending end. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    queue: mpsc::Sender<Delivery>,
    metrics: Arc<Metrics>,
    /// Set while the queue is full, so a drop is logged once per overflow.
    overflowing: Arc<AtomicBool>,
}

impl Webhooks {
    /// Starts the task that delivers the queue; it ends once every handle
    /// is dropped and the queue is empty.
    pub fn start(config: WebhookConfig, metrics: Arc<Metrics>) -> Webhooks {
        let (queue, pending) = mpsc::channel(config.queue.max(1));
        tokio::spawn(deliver(config, pending, metrics.clone()));
        Webhooks {
            queue,
            metrics,
            overflowing: Arc::default(),
        }
    }

    /// Queues `delivery`, or drops it if the queue is full. Never waits.
    pub fn send(&self, delivery: Delivery) {
        match self.queue.try_send(delivery) {
            Ok(()) => {
                if self.overflowing.load(Ordering::Relaxed)
                    && self.overflowing.swap(false, Ordering::Relaxed)
                {
                    tracing::info!("the webhook queue has room again");
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.webhook(WebhookOutcome::Dropped);
                if !self.overflowing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "the webhook queue is full (its backend is slow or down): dropping joins and leaves until it has room; lobby_webhooks_total{{outcome=\"dropped\"}} counts them"
                    );
                }
            }
            // The delivering task is gone: the lobby is stopping.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Delivers the queue in order, one event at a time.
async fn deliver(
    config: WebhookConfig,
    mut pending: mpsc::Receiver<Delivery>,
    metrics: Arc<Metrics>,
) {
    let client = match reqwest::Client::builder().timeout(config.timeout).build() {
        Ok(client) => client,
        Err(err) => {
            tracing::error!("cannot make the webhook client: {err}; no webhook will be sent");
            return;
        }
    };
    let secret = config.secret.as_bytes();
    // Whether the last event was given up: failures are logged once per outage.
    let mut failing = false;
    while let Some(delivery) = pending.recv().await {
        let body = delivery.body();
        let signed = signature(secret, &body);
        let name = uuid::Uuid::new_v4().to_string();
        let mut wait = FIRST_RETRY;
        let mut problem = String::new();
        let mut delivered = false;
        for attempt in 1..=ATTEMPTS {
            let sent = client
                .post(config.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, &signed)
                .header(DELIVERY_HEADER, &name)
                .body(body.clone())
                .send()
                .await;
            let retry = match sent {
                Ok(response) if response.status().is_success() => {
                    delivered = true;
                    break;
                }
                Ok(response) => {
                    let status = response.status();
                    problem = format!("the backend answered {status}");
                    // A refusal that a retry cannot change is not retried.
                    status.is_server_error()
                        || status == reqwest::StatusCode::REQUEST_TIMEOUT
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                }
                Err(err) => {
                    problem = if err.is_timeout() {
                        format!("no answer within {:?}", config.timeout)
                    } else {
                        format!("cannot reach the backend: {err}")
                    };
                    true
                }
            };
            tracing::debug!(attempt, "webhook not delivered: {problem}");
            if !retry || attempt == ATTEMPTS {
                break;
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        if delivered {
            metrics.webhook(WebhookOutcome::Delivered);
            if std::mem::take(&mut failing) {
                tracing::info!("webhooks are delivered again");
            }
        } else {
            metrics.webhook(WebhookOutcome::Failed);
            if !std::mem::replace(&mut failing, true) {
                tracing::warn!(
                    url = %config.url,
                    "a webhook was given up ({problem}); lobby_webhooks_total{{outcome=\"failed\"}} counts those that follow"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_join_has_no_reason_and_a_leave_has_one() {
        let join = Delivery {
            room: RoomName::parse("doc-42").expect("a room"),
            id: "u1".into(),
            name: "alice".into(),
            what: What::Join,
            event_id: Some(3),
            at: SystemTime::UNIX_EPOCH,
        };
        let body: serde_json::Value = serde_json::from_slice(&join.body()).expect("JSON");
        assert_eq!(
            body,
            serde_json::json!({"event":"join","room":"doc-42","id":"u1","name":"alice","at":"1970-01-01T00:00:00.000Z","event_id":3})
        );
        let leave = Delivery {
            what: What::Leave(LeaveReason::GraceExpired),
            event_id: None,
            ..join.clone()
        };
        let body: serde_json::Value = serde_json::from_slice(&leave.body()).expect("JSON");
        assert_eq!(body["event"], "leave");
        assert_eq!(body["reason"], "grace_expired");
        assert!(body.get("event_id").is_none());
        let away = UserState::parse(br#"{"status":"away"}"#).expect("a state");
        let update = Delivery {
            what: What::Update(away),
            ..join
        };
        let body: serde_json::Value = serde_json::from_slice(&update.body()).expect("JSON");
        assert_eq!(body["event"], "update");
        assert_eq!(body["state"], serde_json::json!({"status":"away"}));
        assert!(body.get("reason").is_none());
    }
}
