//! The lean writer: writes every event to every stream of its room on a plain
//! HTTP/1 connection. Streams are grouped into shards, each one task: each
//! shard reads the channel of every room's events once, keeps each event in
//! its room's log (one per room with streams in the shard), and writes it to
//! the streams of that room only, so an event costs the streams of its room,
//! not every stream. An idle stream is only its socket, its place in its
//! room's log and a few words. It has no task, timer or buffer of its own.
//!
//! A stream reads its room's log only while its socket takes what it writes;
//! the log keeps what its slowest stream has not read, and a stream that
//! falls a whole backlog behind is ended (its client resumes with
//! `Last-Event-ID`). Nothing waits on a slow socket, and no lock is held
//! while writing.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use slab::Slab;
use tokio::net::TcpStream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::time::Instant;

use super::limits::ConnectionSlot;
use super::stream::{Framing, MAX_BATCH, SizeLine};
use crate::observe::{Metrics, SlowCause};
use crate::presence::{Event, Pieces, RoomName, Subscription, Waiting};

/// While events keep coming (a pass found more than one waiting), a shard
/// waits this many times its last pass's length, at most `MAX_WAIT`, before
/// the next pass, so that each write carries every event that came meanwhile:
/// a thousand events cost each stream tens of writes, not a thousand, and the
/// shard spends a small share of the time writing. Arrivals and closes are
/// served during the wait.
const WAIT_PER_PASS: u32 = 40;
const MAX_WAIT: Duration = Duration::from_millis(300);

/// An event that comes after this long without any is a lone event: it goes
/// out at once, whatever flow came before it.
const QUIET: Duration = Duration::from_millis(50);

/// Once this many events wait, a pass starts however soon: a stream that
/// keeps up then stays far from the backlog (1024 events) past which it would
/// be ended, however fast events come.
const MAX_GATHER: usize = 512;

/// A pass over a shard's streams lets other tasks (joins, leaves) run after
/// this many streams, so a large shard does not hold a worker thread.
const STREAMS_PER_TURN: usize = 256;

/// At shutdown a shard closes its streams in a random order, spread over
/// this long per stream and at most [`StreamLimits::farewell`]: their clients
/// reconnect (to the next process) spread out as much, not thousands in the
/// same instant, while a shard of a few streams closes them at once.
const CLOSE_EACH: Duration = Duration::from_micros(400);

/// A stream's send buffer once its opening is written (the kernel doubles it):
/// room for hundreds of events, and all a stalled reader can hold.
const STREAM_SEND_BUFFER: usize = 32 * 1024;

/// At most this many buffers go into one vectored write (the kernel takes
/// up to 1024); a snapshot of 18,000 users is about 300.
const MAX_SLICES: usize = 512;

/// Hands streams to the shards, in turn.
pub struct Fanout {
    shards: Vec<mpsc::UnboundedSender<Arrival>>,
    next: AtomicUsize,
    /// The shards' tasks, until [`Fanout::closed`] waits for them.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A stream joining a shard: its socket, its subscription, the bytes it
/// opens with (response head, `retry:` and the snapshot or replay, framed),
/// and how its writes are framed.
struct Arrival {
    socket: TcpStream,
    subscription: Subscription,
    opening: Pieces,
    framing: Framing,
    slot: ConnectionSlot,
}

/// When a stream whose reader has stopped reading is ended.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// The socket has taken nothing for this long.
    pub write_timeout: Duration,
    /// The stream is this many events behind (presence's backlog).
    pub backlog: usize,
    /// At shutdown, the most a shard takes to close its streams.
    pub farewell: Duration,
}

impl StreamLimits {
    /// How often a shard looks for streams past their limits: often enough
    /// to end one within a quarter of the write timeout of it.
    fn sweep_every(&self) -> Duration {
        (self.write_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl Fanout {
    /// Starts `shards` shard tasks. Each wakes on `events` and writes keep-alives
    /// on `heartbeat`; when the heartbeat's sender is dropped (shutdown), every
    /// shard closes its streams and ends.
    pub fn start(
        shards: usize,
        events: &broadcast::Receiver<Arc<Event>>,
        heartbeat: &watch::Receiver<()>,
        limits: StreamLimits,
        metrics: &Arc<Metrics>,
    ) -> Fanout {
        let (shards, tasks) = (0..shards.max(1))
            .map(|_| {
                let (sender, inbox) = mpsc::unbounded_channel();
                let mut heartbeat = heartbeat.clone();
                heartbeat.mark_unchanged();
                let shard = Shard::new(limits, metrics.clone());
                let task = tokio::spawn(shard.run(inbox, events.resubscribe(), heartbeat));
                (sender, task)
            })
            .unzip();
        Fanout {
            shards,
            next: AtomicUsize::new(0),
            tasks: Mutex::new(tasks),
        }
    }

    /// Once shutting down: waits until every shard has closed its streams.
    pub async fn closed(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Takes over `socket`: writes `opening`, then every event of
    /// `subscription`, each write framed by `framing`.
    pub fn add(
        &self,
        socket: TcpStream,
        subscription: Subscription,
        opening: Pieces,
        framing: Framing,
        slot: ConnectionSlot,
    ) {
        let shard = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        // A send fails only while shutting down; the stream then just closes.
        let _ = self.shards[shard].send(Arrival {
            socket,
            subscription,
            opening,
            framing,
            slot,
        });
    }
}

/// Which streams' sockets became readable or writable since the shard last looked.
#[derive(Default)]
struct Ready {
    /// A std mutex: held only to push or swap a Vec, never across an await.
    keys: Mutex<Vec<usize>>,
    notify: Notify,
}

/// Wakes the shard and says which stream: one allocation per stream, at arrival.
struct StreamWaker {
    key: usize,
    ready: Arc<Ready>,
}

impl Wake for StreamWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready
            .keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(self.key);
        self.ready.notify.notify_one();
    }
}

struct Shard {
    streams: Slab<Stream>,
    /// The log of each room that has streams here.
    rooms: HashMap<RoomName, RoomLog>,
    /// The rooms whose logs grew since the last pass.
    dirty: Vec<RoomName>,
    /// The `seq` of the last event put in a log.
    handed: u64,
    limits: StreamLimits,
    ready: Arc<Ready>,
    metrics: Arc<Metrics>,
    /// What this shard sent and ended since it last told `metrics`: told
    /// once per pass, not once per stream.
    tally: Tally,
    /// Reused for every batch, so delivering allocates nothing.
    batch: Vec<Bytes>,
    /// The chunk size line last written, shared by the streams that write
    /// the same batch.
    size_line: SizeLine,
    /// Reused to take the ready keys out from under their lock.
    woken: Vec<usize>,
}

/// The events of one room that not every stream of it in the shard has
/// read, shared by them: a stalled stream holds its room's log, not a queue
/// of its own.
#[derive(Default)]
struct RoomLog {
    /// Oldest first; `events[0]` is number `first` of the events put here.
    events: VecDeque<Arc<Event>>,
    first: u64,
    /// The room's streams, by key, mostly in the order they came (and so in
    /// the order the shard keeps them), each at its `place`.
    streams: Vec<usize>,
    /// Whether the room is in the shard's `dirty` list.
    dirty: bool,
}

impl RoomLog {
    /// The number the next event put here gets.
    fn end(&self) -> u64 {
        self.first + self.events.len() as u64
    }

    /// Forgets the events every stream in `streams` has read.
    fn trim(&mut self, streams: &Slab<Stream>) {
        let read = self
            .streams
            .iter()
            .filter_map(|&key| streams.get(key))
            .filter(|stream| !stream.lagged)
            .map(|stream| stream.cursor)
            .min()
            .unwrap_or(u64::MAX)
            .min(self.end());
        while self.first < read {
            self.events.pop_front();
            self.first += 1;
        }
        if self.events.is_empty() && self.events.capacity() > 0 {
            self.events = VecDeque::new();
        }
    }
}

struct Stream {
    socket: TcpStream,
    subscription: Subscription,
    /// Where it is in its room's list of streams.
    place: usize,
    /// The number in its room's log of the next event it reads.
    cursor: u64,
    /// Its room's events sent after it subscribed and before it joined its
    /// room's log, oldest first; empty (and unallocated) almost always.
    backfill: VecDeque<Arc<Event>>,
    /// It fell a backlog behind, or the shard lost events: it reads no more,
    /// and ends once what it has is written.
    lagged: bool,
    waker: Waker,
    /// What a write left unwritten, sharing the buffers it came from; empty
    /// (and unallocated) while idle.
    pending: VecDeque<Bytes>,
    framing: Framing,
    /// Set when the stream's own user left or it lagged: close once `pending`
    /// is written.
    closing: bool,
    /// Whether the opening (head and snapshot) has been written whole.
    opened: bool,
    /// Since when the socket has taken nothing of `pending`.
    blocked_since: Option<Instant>,
    /// Counts this connection among those open.
    _slot: ConnectionSlot,
}

/// Counted by a shard between two reports to the metrics.
#[derive(Default)]
struct Tally {
    /// Events written to streams.
    sent: u64,
    /// Streams ended for falling a backlog behind.
    lagged: u64,
}

/// Whether a stream goes on after an operation.
#[derive(PartialEq, Eq)]
enum Flow {
    Open,
    Close,
}

/// When a shard's next pass over its streams may start.
#[derive(Debug)]
struct Pace {
    next_pass: Instant,
    /// When the newest event the shard has heard of happened.
    newest: Instant,
    /// How many events have come since the last pass.
    gathered: usize,
}

impl Pace {
    fn new(now: Instant) -> Pace {
        Pace {
            next_pass: now,
            newest: now,
            gathered: 0,
        }
    }

    fn due(&self) -> bool {
        self.gathered > 0
    }

    /// An event that happened at `at` is waiting. After a quiet spell it is a
    /// lone event, and goes out at once whatever flow came before; and once
    /// `MAX_GATHER` wait, the pass starts however soon.
    fn heard(&mut self, at: Instant) {
        let quiet = at.saturating_duration_since(self.newest) >= QUIET;
        self.newest = self.newest.max(at);
        self.gathered += 1;
        if quiet || self.gathered >= MAX_GATHER {
            self.next_pass = self.next_pass.min(at);
        }
    }

    /// The shard missed `count` events (it was not polled for that long):
    /// pass at once.
    fn missed(&mut self, count: u64, now: Instant) {
        self.gathered += usize::try_from(count).unwrap_or(usize::MAX).max(1);
        self.next_pass = self.next_pass.min(now);
    }

    /// A pass started at `started` and ended at `ended`. One event since the
    /// last pass is a lone event; more mean a flow, and then the next pass
    /// waits for more to gather.
    fn passed(&mut self, started: Instant, ended: Instant) {
        self.next_pass = if self.gathered > 1 {
            started + ((ended - started) * WAIT_PER_PASS).min(MAX_WAIT)
        } else {
            ended
        };
        self.gathered = 0;
    }
}

impl Shard {
    fn new(limits: StreamLimits, metrics: Arc<Metrics>) -> Shard {
        Shard {
            metrics,
            tally: Tally::default(),
            streams: Slab::new(),
            rooms: HashMap::new(),
            dirty: Vec::new(),
            handed: 0,
            limits,
            ready: Arc::default(),
            batch: Vec::with_capacity(MAX_BATCH + 3),
            size_line: SizeLine::default(),
            woken: Vec::new(),
        }
    }

    async fn run(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<Arrival>,
        mut events: broadcast::Receiver<Arc<Event>>,
        mut heartbeat: watch::Receiver<()>,
    ) {
        let ready = self.ready.clone();
        let mut pace = Pace::new(Instant::now());
        let mut sweep = tokio::time::interval(self.limits.sweep_every());
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                arrival = inbox.recv() => match arrival {
                    Some(arrival) => self.admit(arrival),
                    None => break,
                },
                woke = events.recv() => match woke {
                    Ok(event) => {
                        let at = event.at;
                        self.hand_out(event);
                        pace.heard(at);
                    }
                    Err(RecvError::Lagged(count)) => {
                        self.missed();
                        pace.missed(count, Instant::now());
                    }
                    Err(RecvError::Closed) => break,
                },
                () = tokio::time::sleep_until(pace.next_pass), if pace.due() => {
                    let started = Instant::now();
                    self.deliver_all().await;
                    pace.passed(started, Instant::now());
                }
                beat = heartbeat.changed() => match beat {
                    Ok(()) => self.keep_alive(),
                    Err(_) => break, // shutting down
                },
                () = ready.notify.notified() => self.serve_ready(),
                _ = sweep.tick() => self.end_stalled(Instant::now()),
            }
        }
        self.close_spread().await;
    }

    /// Shutting down: closes every stream, in a random order, spread over
    /// [`CLOSE_EACH`] a stream, at most the farewell.
    async fn close_spread(&mut self) {
        use rand::seq::SliceRandom;

        let mut keys: Vec<usize> = self.streams.iter().map(|(key, _)| key).collect();
        keys.shuffle(&mut rand::rng());
        let count = keys.len();
        let over = CLOSE_EACH
            .saturating_mul(u32::try_from(count).unwrap_or(u32::MAX))
            .min(self.limits.farewell);
        let start = Instant::now();
        for (closed, key) in keys.into_iter().enumerate() {
            let at = start + over.mul_f64(closed as f64 / count as f64);
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            self.remove(key);
        }
    }

    fn admit(&mut self, arrival: Arrival) {
        let entry = self.streams.vacant_entry();
        let waker = Waker::from(Arc::new(StreamWaker {
            key: entry.key(),
            ready: self.ready.clone(),
        }));
        let key = entry.key();
        let mut subscription = arrival.subscription;
        // What was sent since it subscribed and already put in the logs comes
        // from its own receiver; from its room's log, all that comes later.
        let (backfill, lagged) = since_subscribed(&mut subscription, self.handed);
        let log = self.rooms.entry(subscription.room.clone()).or_default();
        log.streams.push(key);
        entry.insert(Stream {
            socket: arrival.socket,
            subscription,
            place: log.streams.len() - 1,
            cursor: log.end(),
            backfill,
            lagged,
            waker,
            pending: VecDeque::new(),
            framing: arrival.framing,
            closing: false,
            opened: false,
            blocked_since: None,
            _slot: arrival.slot,
        });
        let stream = &mut self.streams[key];
        let mut flow = stream.write(arrival.opening.parts());
        if flow == Flow::Open {
            let log = self.rooms.get(&stream.subscription.room);
            flow = stream.deliver(log, &mut self.batch, &mut self.size_line, &mut self.tally);
        }
        if flow == Flow::Open {
            flow = stream.watch_for_close();
        }
        if flow == Flow::Close {
            self.remove(key);
        }
        self.report();
    }

    /// Puts `event` in its room's log, if its room has streams here.
    fn hand_out(&mut self, event: Arc<Event>) {
        self.handed = event.seq;
        let Some(log) = self.rooms.get_mut(&event.room) else {
            return;
        };
        if !log.dirty {
            log.dirty = true;
            self.dirty.push(event.room.clone());
        }
        log.events.push_back(event);
    }

    /// The shard fell so far behind the channel that it missed events: every
    /// stream may lack some, so each ends after what it has written (its
    /// client resumes with `Last-Event-ID`).
    fn missed(&mut self) {
        for (_, stream) in &mut self.streams {
            stream.lagged = true;
        }
        for (room, log) in &mut self.rooms {
            log.first = log.end();
            log.events.clear();
            if !log.dirty {
                log.dirty = true;
                self.dirty.push(room.clone());
            }
        }
    }

    /// Forgets a stream, which closes its socket.
    fn remove(&mut self, key: usize) {
        let Some(stream) = self.streams.try_remove(key) else {
            return;
        };
        let room = &stream.subscription.room;
        if let Some(log) = self.rooms.get_mut(room) {
            log.streams.swap_remove(stream.place);
            if let Some(&moved) = log.streams.get(stream.place) {
                self.streams[moved].place = stream.place;
            }
            if log.streams.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// Tells the metrics what the shard sent and ended since it last did.
    fn report(&mut self) {
        let tally = std::mem::take(&mut self.tally);
        self.metrics.events_sent(tally.sent);
        self.metrics
            .slow_streams_ended(SlowCause::Backlog, tally.lagged);
    }

    /// Writes what came to the logs of the rooms that had events since the
    /// last pass to their streams, then forgets what all of them have read.
    async fn deliver_all(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        let mut closed = Vec::new();
        let mut served = 0;
        for room in &dirty {
            let Shard {
                rooms,
                streams,
                batch,
                size_line,
                tally,
                limits,
                ..
            } = self;
            let Some(log) = rooms.get_mut(room) else {
                continue;
            };
            log.dirty = false;
            let log = &*log;
            for &key in &log.streams {
                let Some(stream) = streams.get_mut(key) else {
                    continue;
                };
                if !stream.lagged && log.end() - stream.cursor > limits.backlog as u64 {
                    stream.lagged = true;
                }
                if stream.deliver(Some(log), batch, size_line, tally) == Flow::Close {
                    closed.push(key);
                }
                served += 1;
                if served % STREAMS_PER_TURN == 0 {
                    tokio::task::yield_now().await;
                }
            }
            if let Some(log) = self.rooms.get_mut(room) {
                log.trim(&self.streams);
            }
        }
        self.remove_all(closed);
        self.report();
    }

    fn keep_alive(&mut self) {
        let mut closed = Vec::new();
        for log in self.rooms.values_mut() {
            log.trim(&self.streams);
        }
        for (key, stream) in &mut self.streams {
            // A stream with bytes still pending is not idle: skip it.
            if stream.pending.is_empty()
                && stream.write(&[stream.framing.keepalive()]) == Flow::Close
            {
                closed.push(key);
            }
        }
        self.remove_all(closed);
    }

    /// Ends the streams whose reader has stopped reading: the socket has taken
    /// nothing for the write timeout, or the stream fell past the backlog. Its
    /// pending batch is freed at once, its kernel buffer when the kernel gives
    /// up on the closed socket (`--tcp-user-timeout`); if the reader comes
    /// back, it resumes with `Last-Event-ID`.
    fn end_stalled(&mut self, now: Instant) {
        let limits = self.limits;
        let timed_out = |stream: &Stream| {
            stream
                .blocked_since
                .is_some_and(|since| now.saturating_duration_since(since) >= limits.write_timeout)
        };
        let (mut by_timeout, mut by_backlog) = (0, 0);
        let stalled: Vec<usize> = self
            .streams
            .iter()
            .filter(|(_, stream)| {
                if timed_out(stream) {
                    by_timeout += 1;
                } else if stream.lagged && !stream.pending.is_empty() {
                    by_backlog += 1;
                } else {
                    return false;
                }
                true
            })
            .map(|(key, _)| key)
            .collect();
        self.metrics
            .slow_streams_ended(SlowCause::WriteTimeout, by_timeout);
        self.metrics
            .slow_streams_ended(SlowCause::Backlog, by_backlog);
        if !stalled.is_empty() {
            tracing::debug!(count = stalled.len(), "ending streams that stopped reading");
        }
        self.remove_all(stalled);
    }

    fn serve_ready(&mut self) {
        // Swap the keys out so the lock is held for a swap, not for the work.
        let mut woken = std::mem::take(&mut self.woken);
        std::mem::swap(
            &mut woken,
            &mut self
                .ready
                .keys
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for key in woken.drain(..) {
            // A key may be stale (its stream already gone, even reused): then
            // the checks below find nothing to do.
            let Some(stream) = self.streams.get_mut(key) else {
                continue;
            };
            let mut flow = stream.watch_for_close();
            if flow == Flow::Open && !stream.pending.is_empty() {
                flow = stream.flush();
                if flow == Flow::Open && stream.pending.is_empty() {
                    let log = self.rooms.get(&stream.subscription.room);
                    flow =
                        stream.deliver(log, &mut self.batch, &mut self.size_line, &mut self.tally);
                }
            }
            if flow == Flow::Close {
                self.remove(key);
            }
        }
        self.woken = woken;
        self.report();
    }

    fn remove_all(&mut self, keys: Vec<usize>) {
        for key in keys {
            self.remove(key);
        }
    }
}

/// Takes the events of its room waiting in `subscription`'s own receiver
/// that the shard has put in the logs already (up to `handed`); the shard
/// puts the later ones in its room's log. `true` if the receiver fell behind
/// (events were lost). Then the subscription lets go of its receiver.
fn since_subscribed(subscription: &mut Subscription, handed: u64) -> (VecDeque<Arc<Event>>, bool) {
    let mut backfill = VecDeque::new();
    loop {
        let lagged = match subscription.try_recv() {
            Ok(event) => {
                if event.seq <= handed && event.room == subscription.room {
                    backfill.push_back(event);
                }
                continue;
            }
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => {
                false
            }
            Err(broadcast::error::TryRecvError::Lagged(_)) => true,
        };
        subscription.stop_receiving();
        return (backfill, lagged);
    }
}

impl Stream {
    /// Writes the events of its room's `log` it has not read, a batch at a
    /// time, while the socket takes them. A stream that ends (its user left,
    /// or it lagged) writes the end of its body after its last batch.
    fn deliver(
        &mut self,
        log: Option<&RoomLog>,
        batch: &mut Vec<Bytes>,
        size_line: &mut SizeLine,
        tally: &mut Tally,
    ) -> Flow {
        while self.pending.is_empty() && !self.closing {
            batch.clear();
            // Room for the chunk's size line, pushed to the front once the
            // batch's length is known.
            batch.push(Bytes::new());
            let waiting = self.read(log, batch, MAX_BATCH + 1);
            self.closing = waiting != Waiting::Open;
            tally.lagged += u64::from(waiting == Waiting::Lagged);
            let events = batch.len() - 1;
            if events > 0 {
                let len = batch[1..].iter().map(Bytes::len).sum();
                batch[0] = self.framing.before(len, size_line).unwrap_or_default();
                batch.extend(self.framing.after());
            }
            if self.closing {
                batch.extend(self.framing.end());
            }
            if batch.iter().all(Bytes::is_empty) {
                break;
            }
            if self.write(batch) == Flow::Close {
                return Flow::Close;
            }
            tally.sent += events as u64;
            if events < MAX_BATCH {
                break;
            }
        }
        self.close_if_done()
    }

    /// Moves the events it has not read into `batch` (its backfill, then
    /// its room's log), until it holds `max`, so that a stream that missed
    /// many writes them at once.
    fn read(&mut self, log: Option<&RoomLog>, batch: &mut Vec<Bytes>, max: usize) -> Waiting {
        while batch.len() < max {
            let Some(event) = self.backfill.pop_front() else {
                break;
            };
            if self.subscription.accept(&event, batch) == Waiting::Left {
                return Waiting::Left;
            }
        }
        if self.lagged {
            return if self.backfill.is_empty() {
                Waiting::Lagged
            } else {
                Waiting::Open
            };
        }
        let Some(log) = log else {
            return Waiting::Open;
        };
        while batch.len() < max && self.cursor < log.end() {
            let event = &log.events[(self.cursor - log.first) as usize];
            self.cursor += 1;
            // A shard behind the channel puts in the log, after the stream
            // came, events from before it subscribed.
            if event.seq <= self.subscription.since {
                continue;
            }
            if self.subscription.accept(event, batch) == Waiting::Left {
                return Waiting::Left;
            }
        }
        Waiting::Open
    }

    /// Writes `bufs` as far as the socket takes them; keeps the rest pending
    /// (sharing their buffers) and asks to be woken when the socket can take more.
    fn write(&mut self, bufs: &[Bytes]) -> Flow {
        debug_assert!(self.pending.is_empty());
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let mut count = 0;
        for buf in bufs.iter().filter(|buf| !buf.is_empty()).take(MAX_SLICES) {
            slices[count] = IoSlice::new(buf);
            count += 1;
        }
        let result = match count {
            0 => Ok(0),
            1 => self.socket.try_write(&slices[0]),
            _ => self.socket.try_write_vectored(&slices[..count]),
        };
        let written = match result {
            Ok(written) => written,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => return Flow::Close,
        };
        keep_unwritten(&mut self.pending, bufs, written);
        if self.pending.is_empty() {
            self.written_all();
            return self.close_if_done();
        }
        if written > 0 || self.blocked_since.is_none() {
            self.blocked_since = Some(Instant::now());
        }
        self.watch_for_writable()
    }

    /// Everything handed to the socket so far is in it.
    fn written_all(&mut self) {
        self.blocked_since = None;
        if self.pending.capacity() > 0 {
            // Release the queue's memory now, not at the next write.
            self.pending = VecDeque::new();
        }
        if !self.opened {
            // The opening (a snapshot can be a megabyte) needed a large send
            // buffer; events need little, and a reader that stops must not
            // hold a megabyte of kernel memory.
            self.opened = true;
            let _ = socket2::SockRef::from(&self.socket).set_send_buffer_size(STREAM_SEND_BUFFER);
        }
    }

    /// Writes what is pending, when the socket said it can take more.
    fn flush(&mut self) -> Flow {
        loop {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let count = self.pending.len().min(MAX_SLICES);
            for (slice, buf) in slices.iter_mut().zip(&self.pending) {
                *slice = IoSlice::new(buf);
            }
            match self.socket.try_write_vectored(&slices[..count]) {
                Ok(written) => {
                    advance(&mut self.pending, written);
                    if self.pending.is_empty() {
                        self.written_all();
                        return self.close_if_done();
                    }
                    self.blocked_since = Some(Instant::now());
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    return self.watch_for_writable();
                }
                Err(_) => return Flow::Close,
            }
        }
    }

    fn watch_for_writable(&mut self) -> Flow {
        let mut cx = Context::from_waker(&self.waker);
        match self.socket.poll_write_ready(&mut cx) {
            Poll::Pending => Flow::Open,
            Poll::Ready(Ok(())) => self.flush(),
            Poll::Ready(Err(_)) => Flow::Close,
        }
    }

    /// Asks to be woken when the client sends anything, which for a stream
    /// means it closed (anything else it sends is read and ignored).
    fn watch_for_close(&mut self) -> Flow {
        let mut cx = Context::from_waker(&self.waker);
        let mut sink = [0u8; 256];
        loop {
            match self.socket.poll_read_ready(&mut cx) {
                Poll::Pending => return Flow::Open,
                Poll::Ready(Err(_)) => return Flow::Close,
                Poll::Ready(Ok(())) => match self.socket.try_read(&mut sink) {
                    Ok(0) => return Flow::Close,
                    Ok(_) => {}
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Flow::Close,
                },
            }
        }
    }

    fn close_if_done(&self) -> Flow {
        if self.closing && self.pending.is_empty() {
            Flow::Close
        } else {
            Flow::Open
        }
    }
}

/// Puts into `pending` what is left of `bufs` after their first `written`
/// bytes, sharing their buffers (a megabyte snapshot is never copied).
fn keep_unwritten(pending: &mut VecDeque<Bytes>, bufs: &[Bytes], mut written: usize) {
    for buf in bufs {
        if written >= buf.len() {
            written -= buf.len();
        } else {
            pending.push_back(buf.slice(written..));
            written = 0;
        }
    }
}

/// Drops the first `written` bytes of `pending`.
fn advance(pending: &mut VecDeque<Bytes>, mut written: usize) {
    while let Some(front) = pending.front_mut() {
        if written < front.len() {
            let _ = front.split_to(written);
            return;
        }
        written -= front.len();
        pending.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unwritten(bufs: &[Bytes], written: usize) -> Vec<Bytes> {
        let mut pending = VecDeque::new();
        keep_unwritten(&mut pending, bufs, written);
        pending.into()
    }

    #[test]
    fn what_a_write_leaves_is_kept_as_slices_of_the_same_buffers() {
        let bufs = [Bytes::from_static(b"head"), Bytes::from_static(b"snapshot")];
        assert_eq!(unwritten(&bufs, 6), [Bytes::from_static(b"apshot")]);
        assert!(unwritten(&bufs, 12).is_empty());
        let three = [
            Bytes::from_static(b"ab"),
            Bytes::from_static(b"cd"),
            Bytes::from_static(b"ef"),
        ];
        assert_eq!(unwritten(&three, 1), [&b"b"[..], b"cd", b"ef"]);
    }

    #[test]
    fn advancing_drops_written_buffers_and_cuts_the_first_unwritten_one() {
        let mut pending: VecDeque<Bytes> =
            [Bytes::from_static(b"ab"), Bytes::from_static(b"cde")].into();
        advance(&mut pending, 3);
        assert_eq!(pending, [Bytes::from_static(b"de")]);
        advance(&mut pending, 2);
        assert!(pending.is_empty());
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn a_lone_event_goes_out_at_once() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        assert!(!pace.due());
        pace.heard(t0 + ms(1000));
        assert!(pace.due());
        assert!(pace.next_pass <= t0 + ms(1000));
        pace.passed(t0 + ms(1000), t0 + ms(1002));
        assert_eq!(pace.next_pass, t0 + ms(1002));
        assert!(!pace.due());
    }

    #[test]
    fn under_a_flow_the_next_pass_waits_in_proportion_to_the_last() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        pace.heard(t0);
        pace.heard(t0 + ms(1));
        pace.passed(t0 + ms(1), t0 + ms(3));
        assert_eq!(pace.next_pass, t0 + ms(1) + ms(2) * WAIT_PER_PASS);
        pace.heard(t0 + ms(5)); // more of the flow: it waits
        assert_eq!(pace.next_pass, t0 + ms(1) + ms(2) * WAIT_PER_PASS);
        pace.heard(t0 + ms(6));
        pace.passed(t0 + ms(90), t0 + ms(190));
        assert_eq!(pace.next_pass, t0 + ms(90) + MAX_WAIT);
    }

    #[test]
    fn an_event_after_a_quiet_spell_does_not_wait_for_the_flow_before_it() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        pace.heard(t0);
        pace.heard(t0);
        pace.passed(t0, t0 + ms(7)); // a flow: the next pass would wait 280 ms
        let lone = t0 + QUIET + ms(10);
        pace.heard(lone);
        assert_eq!(pace.next_pass, lone);
    }

    #[test]
    fn a_pass_starts_at_once_when_enough_events_wait() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        pace.heard(t0);
        pace.heard(t0);
        pace.passed(t0, t0 + ms(7));
        let waits_until = pace.next_pass;
        for _ in 1..MAX_GATHER {
            pace.heard(t0 + ms(10));
        }
        assert_eq!(pace.next_pass, waits_until);
        pace.heard(t0 + ms(11));
        assert_eq!(pace.next_pass, t0 + ms(11));
    }

    #[test]
    fn missed_events_start_a_pass_at_once() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        pace.heard(t0);
        pace.heard(t0);
        pace.passed(t0, t0 + ms(7));
        pace.missed(3000, t0 + ms(8));
        assert!(pace.due());
        assert_eq!(pace.next_pass, t0 + ms(8));
    }
}
