//! The ramp: all N subscribers join and open their streams, `--concurrency`
//! at a time (in a cluster run, every process's at once), each stream handed
//! to a follower task once its snapshot has arrived. Then the streams catch up
//! and the server's memory is read with everyone idle.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::conn::{CONN_BUFFER, Conn};

use crate::report::{Report, num, secs};
use crate::setup::Setup;
use crate::sse;
use crate::stream::{Stream, close, follow};
use crate::subscribers::{Shared, settle_all};

/// The longest one ramp step (join, then subscribe until the snapshot) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

/// Totals from the ramp workers.
#[derive(Default)]
struct RampTotals {
    join_wait: Duration,
    subscribe_wait: Duration,
    reply_bytes: u64,
    snapshot_bytes: u64,
}

/// What the ramp leaves for the rest of the run.
pub struct Ramped {
    /// Every subscriber's follower task.
    pub followers: Vec<JoinHandle<()>>,
    /// The server's resident memory before the ramp.
    pub rss_before: Option<u64>,
    /// Each load process's latest event id once the streams caught up.
    pub ids: Vec<u64>,
}

/// Runs the ramp and adds its rows.
pub async fn phase(setup: &Setup<'_>, report: &mut Report) -> Result<Ramped> {
    let (args, cluster, shared) = (setup.args, setup.cluster, setup.shared.clone());
    let n = shared.slots.len();
    let who = cluster.who();
    cluster.meet("start", Value::Null).await?;
    let rss_before = setup.meter.rss_kib();
    let cpu_0 = setup.meter.cpu();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers: Vec<_> = (0..args.concurrency as usize)
        .map(|w| tokio::spawn(ramp_worker(shared.clone(), w, next.clone(), done.clone())))
        .collect();
    let progress = {
        let (done, who) = (done.clone(), who.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                eprintln!(
                    "{who}: ramp {}/{n} after {:.0} s",
                    done.load(Relaxed),
                    started.elapsed().as_secs_f64()
                );
            }
        })
    };
    let mut followers = Vec::with_capacity(n);
    let mut totals = RampTotals::default();
    let mut ramp_error = None;
    for worker in workers.drain(..) {
        match worker.await {
            Ok(Ok((handles, t))) => {
                followers.extend(handles);
                totals.join_wait += t.join_wait;
                totals.subscribe_wait += t.subscribe_wait;
                totals.reply_bytes += t.reply_bytes;
                totals.snapshot_bytes += t.snapshot_bytes;
            }
            Ok(Err(err)) => {
                next.store(usize::MAX / 2, Relaxed);
                ramp_error.get_or_insert(err);
            }
            Err(err) => {
                ramp_error.get_or_insert(anyhow!(err));
            }
        }
    }
    progress.abort();
    let ramp = started.elapsed();
    if let Some(err) = ramp_error {
        close(followers).await;
        return Err(err.context("the ramp failed"));
    }
    // The other processes' joins reach these streams too: catch up once every
    // ramp is over.
    cluster.meet("ramped", Value::Null).await?;
    let (caught_up, behind, ids) = settle_all(&shared, cluster, "ramp-settled").await?;
    let (server_cpu, loader_cpu) = setup.meter.cpu().since(cpu_0);
    let rss_after = setup.meter.rss_kib();
    report.add("ramp_s", "ramp: all N join and subscribe", secs(ramp), "s");
    report.add(
        "ramp_settle_s",
        "ramp: then until every stream is caught up",
        secs(caught_up),
        "s",
    );
    report.add(
        "ramp_join_ms_avg",
        "ramp: join reply wait, mean",
        num(Some(totals.join_wait.as_secs_f64() * 1e3 / n as f64)),
        "ms",
    );
    report.add(
        "ramp_subscribe_ms_avg",
        "ramp: stream open until snapshot, mean",
        num(Some(totals.subscribe_wait.as_secs_f64() * 1e3 / n as f64)),
        "ms",
    );
    report.add(
        "ramp_reply_mib",
        "ramp: join reply bytes",
        num(Some(totals.reply_bytes as f64 / 1048576.0)),
        "MiB",
    );
    report.add(
        "ramp_snapshot_mib",
        "ramp: stream bytes until snapshot",
        num(Some(totals.snapshot_bytes as f64 / 1048576.0)),
        "MiB",
    );
    report.add(
        "ramp_server_cpu_s",
        "ramp: server CPU",
        num(server_cpu),
        "s",
    );
    report.add(
        "ramp_loader_cpu_s",
        "ramp: load generator CPU",
        num(loader_cpu),
        "s",
    );
    report.add("ramp_behind", "ramp: streams not caught up", behind, "");
    if behind > 0 {
        report.fail(format!("{behind} streams never caught up after the ramp"));
    }
    report.add("rss_before_kib", "server RSS before", rss_before, "KiB");
    report.add(
        "rss_after_kib",
        "server RSS after ramp (idle)",
        rss_after,
        "KiB",
    );
    report.add(
        "kib_per_subscriber_after_ramp",
        "server RSS per subscriber, after ramp",
        num(rss_before
            .zip(rss_after)
            .map(|(a, b)| (b as f64 - a as f64) / n as f64)),
        "KiB",
    );
    Ok(Ramped {
        followers,
        rss_before,
        ids,
    })
}

/// Joins and subscribes subscribers until none are left; each one's stream is
/// handed to its own `follow` task once its snapshot has arrived.
async fn ramp_worker(
    shared: Arc<Shared>,
    worker: usize,
    next: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
) -> Result<(Vec<JoinHandle<()>>, RampTotals)> {
    let mut conn = Conn::new(shared.target.clone(), worker);
    let mut buf = vec![0; CONN_BUFFER];
    let mut followers = Vec::new();
    let mut totals = RampTotals::default();
    loop {
        let index = next.fetch_add(1, Relaxed);
        if index >= shared.slots.len() {
            return Ok((followers, totals));
        }
        let step = async {
            let started = Instant::now();
            let room = shared.room_of(index);
            let joined = conn.join(&format!("load-{index}"), room).await?;
            let subscribing = Instant::now();
            let (mut stream, mut bytes) = Stream::open(
                &shared.target,
                index,
                room,
                &joined.token,
                None,
                &mut buf,
                sse::Parser::default(),
            )
            .await?;
            while stream.parser.tally.snapshots == 0 {
                let n = stream.read(&mut buf, 0).await?;
                if n == 0 {
                    bail!("GET /events ended before its existing_users event");
                }
                bytes += n as u64;
            }
            shared.slots[index].record(&stream.parser.tally, shared.stamp(), 0);
            totals.join_wait += subscribing - started;
            totals.subscribe_wait += subscribing.elapsed();
            totals.reply_bytes += joined.bytes;
            totals.snapshot_bytes += bytes;
            Ok((joined.token, stream))
        };
        let (token, stream) = tokio::time::timeout(STEP_TIMEOUT, step)
            .await
            .map_err(|_| {
                anyhow!("subscriber {index}: join + subscribe took over {STEP_TIMEOUT:?}")
            })?
            .with_context(|| format!("subscriber {index}"))?;
        followers.push(tokio::spawn(follow(shared.clone(), index, token, stream)));
        done.fetch_add(1, Relaxed);
    }
}
