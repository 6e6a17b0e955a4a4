//! The burst: `--burst` joins, then as many leaves, from a few connections at
//! once (in a cluster run, each process sends its share to its own node),
//! timed until every stream has every event.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::conn::Conn;
use crate::report::{Report, num};
use crate::setup::Setup;
use crate::subscribers::{Shared, settle_all, wait_for_all};

/// Connections the burst's joins and leaves are spread over.
pub const CONNECTIONS: usize = 4;

/// What the burst leaves for the cluster's figures.
pub struct Bursted {
    /// Each load process's latest event id before the burst.
    pub ids: Vec<u64>,
    /// Each load process's part of it.
    pub all: Vec<Burst>,
}

/// Runs the burst once the streams have settled, and adds its rows.
pub async fn phase(setup: &Setup<'_>, report: &mut Report) -> Result<Bursted> {
    let (args, cluster, shared) = (setup.args, setup.cluster, setup.shared.clone());
    let (_, _, ids) = settle_all(&shared, cluster, "burst-settled").await?;
    let latest = ids.iter().copied().max().unwrap_or(0);
    let numbers = (cluster.index..args.burst).step_by(cluster.size).collect();
    let cpu_0 = setup.meter.cpu();
    let result = burst(
        &shared,
        numbers,
        latest + 2 * args.burst as u64,
        args.timeout.max(Duration::from_secs(60)),
    )
    .await;
    let (server_cpu, loader_cpu) = setup.meter.cpu().since(cpu_0);
    burst_rows(
        report,
        ("", ""),
        &BurstFigures {
            joins: args.burst,
            time: result.time(),
            deliveries: shared.slots.len() as u64 * 2 * args.burst as u64,
            cpu: Some((num(server_cpu), num(loader_cpu))),
            missing: result.missing,
            errors: &result.errors,
        },
    );
    let all = cluster
        .meet("burst-done", serde_json::to_value(&result)?)
        .await?;
    let all = all
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()?;
    Ok(Bursted { ids, all })
}

/// How one load process's part of a burst went, on the wall clock
/// (nanoseconds since the Unix epoch).
#[derive(Debug, Serialize, Deserialize)]
pub struct Burst {
    /// When its first join went out.
    pub sent: u64,
    /// When its last request was answered.
    pub answered: u64,
    /// When the last of its streams had every event of the burst (`None`:
    /// some never did).
    pub done: Option<u64>,
    /// Its streams that never had every event.
    pub missing: usize,
    pub errors: Vec<String>,
}

impl Burst {
    pub fn time(&self) -> Option<Duration> {
        self.done
            .filter(|&done| done > self.sent)
            .map(|done| Duration::from_nanos(done - self.sent))
    }
}

/// The joins numbered `numbers`, then as many leaves, from a few connections
/// at once; waits until every stream has seen the event `target_id`.
async fn burst(
    shared: &Arc<Shared>,
    numbers: Vec<usize>,
    target_id: u64,
    timeout: Duration,
) -> Burst {
    shared.target_id.store(target_id, Relaxed);
    let numbers: Arc<[usize]> = numbers.into();
    let barrier = Arc::new(tokio::sync::Barrier::new(CONNECTIONS));
    let sent = shared.stamp();
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|worker| {
            let (target, barrier) = (shared.target.clone(), barrier.clone());
            let numbers = numbers.clone();
            tokio::spawn(async move {
                let mut conn = Conn::new(target, worker);
                let mut errors = Vec::new();
                let mut tokens = Vec::new();
                for n in numbers.iter().skip(worker).step_by(CONNECTIONS) {
                    match conn.join(&format!("burst-{n}"), 0).await {
                        Ok(joined) => tokens.push(joined.token),
                        Err(err) => errors.push(format!("{err:#}")),
                    }
                }
                barrier.wait().await;
                for token in tokens {
                    if let Err(err) = conn.leave(&token, 0).await {
                        errors.push(format!("{err:#}"));
                    }
                }
                errors
            })
        })
        .collect();
    let mut errors = Vec::new();
    for worker in workers {
        match worker.await {
            Ok(errs) => errors.extend(errs),
            Err(err) => errors.push(err.to_string()),
        }
    }
    let answered = shared.stamp();
    // Only runs with one room (`run`), room 0.
    wait_for_all(
        shared,
        0,
        |s| s.target_at.load(Relaxed) != 0,
        Instant::now() + timeout,
    )
    .await;
    shared.target_id.store(0, Relaxed);
    let arrivals: Vec<u64> = shared
        .slots
        .iter()
        .map(|s| s.target_at.load(Relaxed))
        .collect();
    let missing = arrivals.iter().filter(|&&t| t == 0).count();
    let last = arrivals.iter().copied().max().unwrap_or(0);
    Burst {
        sent: shared.wall(sent),
        answered: shared.wall(answered),
        done: (missing == 0).then(|| shared.wall(last)),
        missing,
        errors,
    }
}

/// What the rows of a burst say, for one load process or for the cluster.
pub struct BurstFigures<'a> {
    /// All the joins of the burst (as many leaves follow).
    pub joins: usize,
    pub time: Option<Duration>,
    pub deliveries: u64,
    /// The server's and the load generator's CPU seconds, for one process.
    pub cpu: Option<(Value, Value)>,
    pub missing: usize,
    pub errors: &'a [String],
}

/// The rows of a burst, their keys and labels after the prefixes given; fails
/// the report if a stream or a request did.
pub fn burst_rows(report: &mut Report, (key, label): (&str, &str), burst: &BurstFigures) {
    report.add(
        format!("{key}burst_joins"),
        format!("{label}burst: joins, then as many leaves"),
        burst.joins,
        "",
    );
    report.add(
        format!("{key}burst_s"),
        format!("{label}burst: until every stream has every event"),
        num(burst.time.map(|t| t.as_secs_f64())),
        "s",
    );
    report.add(
        format!("{key}burst_deliveries"),
        format!("{label}burst: deliveries"),
        burst.deliveries,
        "",
    );
    report.add(
        format!("{key}burst_deliveries_per_s"),
        format!("{label}burst: deliveries per second"),
        burst
            .time
            .map(|t| (burst.deliveries as f64 / t.as_secs_f64()).round() as u64),
        "/s",
    );
    if let Some((server, loader)) = &burst.cpu {
        report.add(
            format!("{key}burst_server_cpu_s"),
            format!("{label}burst: server CPU"),
            server.clone(),
            "s",
        );
        report.add(
            format!("{key}burst_loader_cpu_s"),
            format!("{label}burst: load generator CPU"),
            loader.clone(),
            "s",
        );
    }
    report.add(
        format!("{key}burst_missing"),
        format!("{label}burst: streams missing events"),
        burst.missing,
        "",
    );
    report.add(
        format!("{key}burst_errors"),
        format!("{label}burst: failed requests"),
        burst.errors.len(),
        "",
    );
    if burst.missing > 0 {
        report.fail(format!(
            "{label}burst: {} streams never saw every event",
            burst.missing
        ));
    }
    if let Some(first) = burst.errors.first() {
        report.fail(format!(
            "{label}burst: {} requests failed, first: {first}",
            burst.errors.len()
        ));
    }
}
