//! The Prometheus metrics served at GET /metrics. Every counter is an atomic
//! made once, at start: counting is an add, with no lock and no label lookup
//! (a route's latency histogram is looked up on its first request only). The
//! fan-out counts the events it sends per pass over its streams, not per write.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::presence::LeaveReason;

/// A request refused because a limit was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `--join-rate` and `--join-burst` for one address (429).
    JoinRate,
    /// `--max-users` (503).
    MaxUsers,
    /// Four streams for one token (429).
    StreamsPerToken,
    /// `--max-connections` (503).
    Connections,
    /// `--state-rate` and `--state-burst` for one token (429).
    StateRate,
    /// `--max-watchers-per-address` (429).
    WatchersPerAddress,
    /// `--max-rooms` (503).
    MaxRooms,
}

impl Limit {
    const ALL: [Limit; 7] = [
        Limit::JoinRate,
        Limit::MaxUsers,
        Limit::StreamsPerToken,
        Limit::Connections,
        Limit::StateRate,
        Limit::WatchersPerAddress,
        Limit::MaxRooms,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Limit::JoinRate => "join_rate",
            Limit::MaxUsers => "max_users",
            Limit::StreamsPerToken => "streams_per_token",
            Limit::Connections => "connections",
            Limit::StateRate => "state_rate",
            Limit::WatchersPerAddress => "watchers_per_address",
            Limit::MaxRooms => "max_rooms",
        }
    }

    /// What the refused client did, and what sets the limit: the operator's
    /// line when a limit is first hit.
    fn explained(self) -> &'static str {
        match self {
            Limit::JoinRate => {
                "a client address joined too often; --join-rate and --join-burst set how often it may"
            }
            Limit::MaxUsers => {
                "a join found the lobby full; --max-users sets how many may be online"
            }
            Limit::StreamsPerToken => {
                "a token asked for a fifth stream; four per token is fixed, not a flag"
            }
            Limit::Connections => {
                "a connection came past the most open at once; --max-connections sets it (by default the open-file limit less 100)"
            }
            Limit::StateRate => {
                "a token updated its state too often; --state-rate and --state-burst set how often it may"
            }
            Limit::WatchersPerAddress => {
                "a client address opened too many watcher streams; --max-watchers-per-address sets how many"
            }
            Limit::MaxRooms => {
                "a join would have made one room too many; --max-rooms sets how many rooms are kept"
            }
        }
    }
}

/// When each limit was last logged, so that a flood of refusals writes a
/// line a minute rather than one per refusal: atomics, as the counters are,
/// since every refusal passes here.
struct RefusalLog {
    start: Instant,
    /// In the order of [`Limit::ALL`]: milliseconds from `start` to the
    /// last line, plus one (0: never logged).
    logged: [AtomicU64; Limit::ALL.len()],
}

/// A limit is logged at most this often.
const LOG_LIMIT_EVERY: Duration = Duration::from_secs(60);

impl RefusalLog {
    fn new() -> RefusalLog {
        RefusalLog {
            start: Instant::now(),
            logged: Default::default(),
        }
    }

    /// Whether the refusal at `now` of the limit at `index` is to be logged,
    /// and if so, notes it (of two threads at once, one logs).
    fn due(&self, index: usize, now: Instant) -> bool {
        let millis = |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let now = millis(now.saturating_duration_since(self.start)).saturating_add(1);
        let logged = &self.logged[index];
        let last = logged.load(Ordering::Relaxed);
        (last == 0 || now >= last.saturating_add(millis(LOG_LIMIT_EVERY)))
            && logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// A route, as the latency histogram labels it: a fixed label for each, so
/// that a label never holds what a client wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Page,
    Join,
    Leave,
    Users,
    Events,
    Healthz,
    Metrics,
    Static,
    Other,
}

impl Route {
    const ALL: [Route; 9] = [
        Route::Page,
        Route::Join,
        Route::Leave,
        Route::Users,
        Route::Events,
        Route::Healthz,
        Route::Metrics,
        Route::Static,
        Route::Other,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Route::Page => "/",
            Route::Join => "/join",
            Route::Leave => "/leave",
            Route::Users => "/users",
            Route::Events => "/events",
            Route::Healthz => "/healthz",
            Route::Metrics => "/metrics",
            Route::Static => "/static",
            Route::Other => "other",
        }
    }
}

/// Why a stream was ended for being slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowCause {
    /// Its socket took nothing for `--write-timeout`.
    WriteTimeout,
    /// It fell more than the backlog (1024 events) behind.
    Backlog,
}

/// What a webhook delivery came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// The backend answered 2xx.
    Delivered,
    /// Every attempt failed; the event was given up.
    Failed,
    /// The queue was full (the backend is slow or down); never sent.
    Dropped,
}

type Labels = Vec<(&'static str, &'static str)>;

pub struct Metrics {
    registry: Registry,
    users_online: Gauge,
    open_streams: Gauge,
    rooms: Gauge,
    joins: Counter,
    /// In the order of [`LeaveReason::ALL`].
    leaves: [Counter; 4],
    events_sent: Counter,
    resumes_replayed: Counter,
    resumes_snapshot: Counter,
    slow_write_timeout: Counter,
    slow_backlog: Counter,
    /// In the order of [`Limit::ALL`].
    refused: [Counter; Limit::ALL.len()],
    refusals_logged: RefusalLog,
    latency: Family<Labels, Histogram>,
    /// Each route's histogram of `latency`, in the order of [`Route::ALL`],
    /// looked up once: a request then costs no lookup in the family. Made
    /// on a route's first request, so that /metrics lists only routes asked.
    latency_by_route: [OnceLock<Histogram>; Route::ALL.len()],
    webhooks: [Counter; 3],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A counter with one label, made and registered in `family` at once.
fn labelled(family: &Family<Labels, Counter>, name: &'static str, value: &'static str) -> Counter {
    family.get_or_create(&vec![(name, value)]).clone()
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("lobby");
        let users_online = Gauge::default();
        registry.register(
            "users_online",
            "Users online in the whole lobby",
            users_online.clone(),
        );
        let open_streams = Gauge::default();
        registry.register(
            "open_streams",
            "Event streams open on this node",
            open_streams.clone(),
        );
        let rooms = Gauge::default();
        registry.register(
            "rooms",
            "Rooms with people in them, or emptied within their resume window",
            rooms.clone(),
        );
        let joins = Counter::default();
        registry.register("joins", "Joins this node made", joins.clone());
        let leaves_family = Family::<Labels, Counter>::default();
        let leaves = LeaveReason::ALL.map(|r| labelled(&leaves_family, "reason", r.as_str()));
        registry.register(
            "leaves",
            "Users this node took offline, by reason",
            leaves_family,
        );
        let events_sent = Counter::default();
        registry.register(
            "events_sent",
            "Events written to streams (one per event per stream), after each stream's opening",
            events_sent.clone(),
        );
        let resumes = Family::<Labels, Counter>::default();
        let resumes_replayed = labelled(&resumes, "outcome", "replayed");
        let resumes_snapshot = labelled(&resumes, "outcome", "snapshot");
        registry.register(
            "resumes",
            "Streams opened with Last-Event-ID: replayed from the history, or given a snapshot",
            resumes,
        );
        let slow = Family::<Labels, Counter>::default();
        let slow_write_timeout = labelled(&slow, "cause", "write_timeout");
        let slow_backlog = labelled(&slow, "cause", "backlog");
        registry.register(
            "slow_streams_ended",
            "Streams ended because their reader stopped reading",
            slow,
        );
        let refused_family = Family::<Labels, Counter>::default();
        let refused = Limit::ALL.map(|l| labelled(&refused_family, "limit", l.as_str()));
        registry.register(
            "requests_refused",
            "Requests refused because a limit was reached",
            refused_family,
        );
        // 0.5 ms to 16 s.
        let latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time to answer a request (to the response head, for a stream), by route",
            latency.clone(),
        );
        let webhooks_family = Family::<Labels, Counter>::default();
        let webhooks = ["delivered", "failed", "dropped"]
            .map(|outcome| labelled(&webhooks_family, "outcome", outcome));
        registry.register(
            "webhooks",
            "Webhook events: delivered, failed after every retry, or dropped for a full queue",
            webhooks_family,
        );
        Metrics {
            registry,
            users_online,
            open_streams,
            rooms,
            joins,
            leaves,
            events_sent,
            resumes_replayed,
            resumes_snapshot,
            slow_write_timeout,
            slow_backlog,
            refused,
            refusals_logged: RefusalLog::new(),
            latency,
            latency_by_route: Default::default(),
            webhooks,
        }
    }

    pub fn joined(&self) {
        self.joins.inc();
    }

    pub fn left(&self, reason: LeaveReason) {
        let index = LeaveReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or_default();
        self.leaves[index].inc();
    }

    pub fn events_sent(&self, count: u64) {
        if count > 0 {
            self.events_sent.inc_by(count);
        }
    }

    pub fn resumed(&self, replayed: bool) {
        if replayed {
            self.resumes_replayed.inc();
        } else {
            self.resumes_snapshot.inc();
        }
    }

    pub fn slow_streams_ended(&self, cause: SlowCause, count: u64) {
        let counter = match cause {
            SlowCause::WriteTimeout => &self.slow_write_timeout,
            SlowCause::Backlog => &self.slow_backlog,
        };
        if count > 0 {
            counter.inc_by(count);
        }
    }

    /// Counts a refusal; the first of each limit in a minute is also logged,
    /// naming the flag that sets it (every refusal, from the router or from
    /// the transport, comes here: the one place for that rule).
    pub fn refused(&self, limit: Limit) {
        let index = Limit::ALL
            .iter()
            .position(|l| *l == limit)
            .unwrap_or_default();
        self.refused[index].inc();
        if self.refusals_logged.due(index, Instant::now()) {
            tracing::warn!(
                limit = limit.as_str(),
                "refused: {} (logged at most once a minute; lobby_requests_refused_total counts every refusal)",
                limit.explained()
            );
        }
    }

    pub fn answered(&self, route: Route, seconds: f64) {
        let index = Route::ALL
            .iter()
            .position(|r| *r == route)
            .unwrap_or_default();
        self.latency_by_route[index]
            .get_or_init(|| {
                self.latency
                    .get_or_create(&vec![("route", route.as_str())])
                    .clone()
            })
            .observe(seconds);
    }

    pub fn webhook(&self, outcome: WebhookOutcome) {
        let index = match outcome {
            WebhookOutcome::Delivered => 0,
            WebhookOutcome::Failed => 1,
            WebhookOutcome::Dropped => 2,
        };
        self.webhooks[index].inc();
    }

    /// The text exposition format, with the gauges set to `users`, `streams`
    /// and `rooms` first.
    pub fn render(&self, users: usize, streams: usize, rooms: usize) -> String {
        let gauge = |count: usize| i64::try_from(count).unwrap_or(i64::MAX);
        self.users_online.set(gauge(users));
        self.open_streams.set(gauge(streams));
        self.rooms.set(gauge(rooms));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_is_logged_at_its_first_refusal_then_at_most_once_a_minute() {
        let log = RefusalLog::new();
        let at = |secs: u64| log.start + Duration::from_secs(secs);
        assert!(log.due(0, at(0)), "the first refusal");
        assert!(!log.due(0, at(1)), "a second in the same minute");
        assert!(log.due(1, at(1)), "another limit has a minute of its own");
        assert!(!log.due(0, at(59)));
        assert!(log.due(0, at(60)), "a minute later");
        assert!(!log.due(0, at(61)));
    }
}
