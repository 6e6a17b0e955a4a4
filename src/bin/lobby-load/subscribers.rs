//! What the subscriber tasks share with the controller: a slot per
//! subscriber, written by its task and read by the phases, and the waits
//! that poll them until every stream has caught up.

use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde_json::json;

use crate::cluster::Cluster;
use crate::sse;
use crate::target::Target;

/// How long the streams may take to catch up with the last event after a phase.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the streams of a cluster run settle again when the processes'
/// latest event ids differ.
const SETTLE_ROUNDS: usize = 20;

/// What the controller reads of one subscriber while it runs. Written by its
/// task once per read, so the per-event path touches no shared memory; a cache
/// line each, so that tasks on different threads do not contend for one.
#[derive(Default)]
#[repr(align(64))]
pub struct Slot {
    pub last_id: AtomicU64,
    pub events: AtomicU64,
    /// The latest probe's `new_user`, `user_updated` and `disconnect_user`.
    pub probe_joined: Sighting,
    pub probe_updated: Sighting,
    pub probe_left: Sighting,
    /// Nanoseconds since `Shared::base`, plus one; 0 until seen.
    pub target_at: AtomicU64,
    pub gaps: AtomicU32,
    pub repeats: AtomicU32,
    pub decreases: AtomicU32,
    pub unexpected: AtomicU32,
    pub resumes: AtomicU32,
    /// The stream ended and could not be reopened.
    pub lost: AtomicBool,
}

impl Slot {
    pub fn record(&self, tally: &sse::Tally, at: u64, target: u64) {
        let last = tally.last_id.unwrap_or(0);
        self.last_id.store(last, Relaxed);
        self.events.store(tally.events, Relaxed);
        self.gaps.store(tally.gaps, Relaxed);
        self.repeats.store(tally.repeats, Relaxed);
        self.decreases.store(tally.decreases, Relaxed);
        self.unexpected.store(tally.unexpected, Relaxed);
        self.probe_joined.record(tally.joined_probe, at);
        self.probe_updated.record(tally.updated_probe, at);
        self.probe_left.record(tally.left_probe, at);
        if target != 0 && last >= target && self.target_at.load(Relaxed) == 0 {
            self.target_at.store(at, Relaxed);
        }
    }
}

/// When a stream first showed the event of the probe it saw last. Tagged, so
/// that one probe after another needs no reset that could race with a read.
#[derive(Default)]
pub struct Sighting {
    /// The probe's tag (0: none yet).
    tag: AtomicU64,
    /// Nanoseconds since `Shared::base`, plus one.
    at: AtomicU64,
}

impl Sighting {
    pub fn record(&self, tag: u64, at: u64) {
        if tag != self.tag.load(Relaxed) {
            self.at.store(at, Relaxed);
            // Release: whoever sees the tag sees its time.
            self.tag.store(tag, Release);
        }
    }

    /// When the probe `tag` was seen, if it was.
    pub fn of(&self, tag: u64) -> Option<u64> {
        (self.tag.load(Acquire) == tag).then(|| self.at.load(Relaxed))
    }
}

/// Everything the subscriber tasks share with the controller.
pub struct Shared {
    pub target: Arc<Target>,
    base: Instant,
    /// `base` on the wall clock, in nanoseconds since the Unix epoch: the one
    /// clock the load processes of a cluster run share.
    wall_base: u64,
    pub slots: Box<[Slot]>,
    /// The tag of the probe being watched for (0: none).
    pub probe: AtomicU64,
    /// The event id whose arrival ends the burst (0: none).
    pub target_id: AtomicU64,
    /// Why the first stream that could not go on was lost.
    pub first_loss: std::sync::Mutex<Option<String>>,
}

impl Shared {
    /// `n` subscribers' slots, with the clocks starting now.
    pub fn new(target: Arc<Target>, n: usize) -> Shared {
        let wall_base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64);
        Shared {
            target,
            base: Instant::now(),
            wall_base,
            slots: (0..n).map(|_| Slot::default()).collect(),
            probe: AtomicU64::new(0),
            target_id: AtomicU64::new(0),
            first_loss: std::sync::Mutex::new(None),
        }
    }

    /// Now, as nanoseconds since `base` plus one (so 0 can mean "never").
    pub fn stamp(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64 + 1
    }

    /// A stamp on the wall clock.
    pub fn wall(&self, stamp: u64) -> u64 {
        self.wall_base + stamp.saturating_sub(1)
    }

    /// The latest event id any live stream has seen.
    pub fn latest_id(&self) -> u64 {
        self.live()
            .map(|s| s.last_id.load(Relaxed))
            .max()
            .unwrap_or(0)
    }

    /// Marks `slot` lost, keeping the reason if it is the first.
    pub fn lose(&self, slot: &Slot, why: impl FnOnce() -> String) {
        slot.lost.store(true, Relaxed);
        let mut first = self
            .first_loss
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        first.get_or_insert_with(why);
    }

    pub fn live(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().filter(|s| !s.lost.load(Relaxed))
    }

    /// Which room subscriber `index` is in: they are dealt out in turn.
    pub fn room_of(&self, index: usize) -> usize {
        index % self.target.rooms()
    }

    /// The subscribers of room number `room`, lost or not.
    pub fn in_room(&self, room: usize) -> impl Iterator<Item = &Slot> {
        self.slots.iter().skip(room).step_by(self.target.rooms())
    }
}

/// Waits until every live stream has seen the same, latest event and nothing
/// new has come for a moment. Returns how long that took and how many streams
/// were still behind at the deadline.
async fn settle(shared: &Shared) -> (Duration, usize) {
    let started = Instant::now();
    let mut last_max = 0;
    let mut steady_since = Instant::now();
    loop {
        // Each room has its own latest event; the newest of all says whether
        // anything is still coming.
        let mut maxima = vec![0; shared.target.rooms()];
        for (index, slot) in shared.slots.iter().enumerate() {
            if !slot.lost.load(Relaxed) {
                let room = &mut maxima[shared.room_of(index)];
                *room = (*room).max(slot.last_id.load(Relaxed));
            }
        }
        let max = maxima.iter().copied().max().unwrap_or(0);
        let behind = shared
            .slots
            .iter()
            .enumerate()
            .filter(|(index, s)| {
                !s.lost.load(Relaxed) && s.last_id.load(Relaxed) < maxima[shared.room_of(*index)]
            })
            .count();
        if max != last_max {
            last_max = max;
            steady_since = Instant::now();
        }
        if behind == 0 && steady_since.elapsed() >= Duration::from_millis(200) {
            return (started.elapsed(), 0);
        }
        if started.elapsed() > SETTLE_TIMEOUT {
            return (started.elapsed(), behind);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `settle`, then, in a cluster run, again until every load process's streams
/// stand at the same latest event id (ids mean the same on every node). Returns
/// how long that took, the streams still behind here, and each process's
/// latest id (they differ only if the nodes never agreed).
pub async fn settle_all(
    shared: &Shared,
    cluster: &Cluster,
    step: &str,
) -> Result<(Duration, usize, Vec<u64>)> {
    let started = Instant::now();
    let mut round = 0;
    loop {
        let (_, behind) = settle(shared).await;
        let latest = json!(shared.latest_id());
        let all = cluster.meet(&format!("{step}-{round}"), latest).await?;
        let ids: Vec<u64> = all.iter().map(|id| id.as_u64().unwrap_or(0)).collect();
        round += 1;
        if ids.iter().all(|&id| id == ids[0]) || round == SETTLE_ROUNDS {
            return Ok((started.elapsed(), behind, ids));
        }
    }
}

/// Polls until `seen` is set on every slot of `room` whose stream is not lost
/// (a lost one never will be; it is counted missing) or `deadline` passes.
pub async fn wait_for_all(
    shared: &Shared,
    room: usize,
    seen: impl Fn(&Slot) -> bool,
    deadline: Instant,
) {
    let all_seen = || {
        shared
            .in_room(room)
            .filter(|s| !s.lost.load(Relaxed))
            .all(&seen)
    };
    while Instant::now() < deadline && !all_seen() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
