//! Fan-out: probes join, set their state and leave, one after another,
//! through the prober's server, while every load process times the arrival
//! of each (`new_user`, `user_updated`, `disconnect_user`) on each of its
//! subscribers' streams, on the wall clock they share.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::conn::Conn;
use crate::report::{Report, num};
use crate::setup::Setup;
use crate::sse;
use crate::stream::{STREAM_BUFFER, Stream};
use crate::subscribers::{Shared, Sighting, Slot, wait_for_all};
use crate::target::Target;

/// The source address number of the probe's connections, apart from the
/// subscribers' (which are numbered from 0).
const PROBE_SOURCE: usize = usize::MAX / 2;
/// The room the probes join: its subscribers time the fan-out.
const PROBED_ROOM: usize = 0;

/// Sends the probes and adds the fan-out's rows; returns every process's
/// samples. A failed fan-out fails the report (and gives no samples), or, in a
/// cluster run, the whole run (the others would wait for this process at the
/// next step).
pub async fn phase(setup: &Setup<'_>, report: &mut Report) -> Result<Vec<Samples>> {
    let (args, cluster) = (setup.args, setup.cluster);
    let cpu_0 = setup.meter.cpu();
    let probed = fan_out(&setup.shared, cluster, args.probes as usize, args.timeout).await;
    let (server_cpu, loader_cpu) = setup.meter.cpu().since(cpu_0);
    match probed {
        Ok(samples) => {
            let spreads = samples[cluster.index].spreads();
            fan_out_rows(report, ("", ""), &spreads);
            // Both sides share the machine: a fan-out cannot be faster than the
            // load generator can read N sockets, so show what each spent.
            report.add(
                "fanout_server_cpu_s",
                "fan-out: server CPU, join + update + leave",
                num(server_cpu),
                "s",
            );
            report.add(
                "fanout_loader_cpu_s",
                "fan-out: load generator CPU, join + update + leave",
                num(loader_cpu),
                "s",
            );
            let missing = spreads.join.missing + spreads.update.missing + spreads.leave.missing;
            if missing > 0 {
                report.fail(format!(
                    "fan-out: {} joins, {} updates and {} leaves never arrived within {:?}",
                    spreads.join.missing,
                    spreads.update.missing,
                    spreads.leave.missing,
                    args.timeout
                ));
            }
            Ok(samples)
        }
        Err(err) if cluster.is_many() => Err(err.context("fan-out")),
        Err(err) => {
            report.fail(format!("fan-out: {err:#}"));
            Ok(Vec::new())
        }
    }
}

/// Nearest-rank percentiles of latencies in nanoseconds, as milliseconds.
pub struct Spread {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    pub missing: usize,
}

impl Spread {
    fn of(mut latencies: Vec<u64>, missing: usize) -> Spread {
        latencies.sort_unstable();
        let rank = |q: f64| {
            let n = latencies.len();
            (n > 0).then(|| {
                let at = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
                latencies[at] as f64 / 1e6
            })
        };
        Spread {
            p50: rank(0.50),
            p99: rank(0.99),
            max: rank(1.0),
            missing,
        }
    }
}

/// What one load process saw of one probe, as it tells the others.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Sightings {
    /// When each subscriber saw the probe join, update and leave
    /// (`[join, update, leave]`): wall-clock nanoseconds since the Unix
    /// epoch, 0 for never.
    seen: [Vec<u64>; 3],
    /// When the probe's join, update and leave were sent, on the same clock
    /// (from the prober only).
    sent: Option<[u64; 3]>,
}

/// Latencies in nanoseconds, and how many never arrived.
#[derive(Debug, Default, Clone)]
struct Latencies {
    arrived: Vec<u64>,
    missing: usize,
}

/// One load process's fan-out latencies, over all the probes: of the join,
/// the update and the leave.
#[derive(Debug, Default, Clone)]
pub struct Samples([Latencies; 3]);

/// The spread of each kind of fan-out.
pub struct Spreads {
    pub join: Spread,
    pub update: Spread,
    pub leave: Spread,
}

impl Samples {
    fn add(&mut self, seen: &Sightings, sent: [u64; 3]) {
        for ((latencies, arrivals), sent) in self.0.iter_mut().zip(&seen.seen).zip(sent) {
            for &at in arrivals {
                match at {
                    0 => latencies.missing += 1,
                    at => latencies.arrived.push(at.saturating_sub(sent)),
                }
            }
        }
    }

    /// Every process's samples as one.
    pub fn pooled(all: &[Samples]) -> Samples {
        let mut pool = Samples::default();
        for one in all {
            for (pooled, latencies) in pool.0.iter_mut().zip(&one.0) {
                pooled.arrived.extend_from_slice(&latencies.arrived);
                pooled.missing += latencies.missing;
            }
        }
        pool
    }

    pub fn spreads(&self) -> Spreads {
        let [join, update, leave] = self
            .0
            .clone()
            .map(|latencies| Spread::of(latencies.arrived, latencies.missing));
        Spreads {
            join,
            update,
            leave,
        }
    }
}

/// `probes` probes, one after another, join and then leave through the
/// prober's server while every load process watches its own subscribers.
/// Returns each process's samples, in process order.
async fn fan_out(
    shared: &Arc<Shared>,
    cluster: &Cluster,
    probes: usize,
    timeout: Duration,
) -> Result<Vec<Samples>> {
    let tags: Vec<u64> = (0..probes).map(|_| rand::random::<u64>() | 1).collect();
    // Everyone watches for the prober's tags.
    let mut all_tags = cluster.meet("probe-tags", json!(tags)).await?;
    let tags: Vec<u64> = serde_json::from_value(all_tags.swap_remove(0))?;
    let mut conn = Conn::new(shared.target.clone(), PROBE_SOURCE);
    if cluster.is_prober() {
        conn.connect().await.context("connect for the probe")?;
    }
    let mut samples = vec![Samples::default(); cluster.size];
    for (k, &tag) in tags.iter().enumerate() {
        shared.probe.store(tag, Relaxed);
        cluster
            .meet(&format!("probe-{k}-armed"), Value::Null)
            .await?;
        let mut probe = None;
        if cluster.is_prober() {
            let sent = shared.stamp();
            let joined = conn.join(&format!("probe-{tag:016x}"), PROBED_ROOM).await?;
            // The probe listens too, like any user; its stream ends when it leaves.
            let drain = tokio::spawn(drain(shared.target.clone(), joined.token.clone()));
            probe = Some((sent, joined.token, drain));
        }
        let seen_by_all = |sighting: fn(&Slot) -> &Sighting| {
            let deadline = Instant::now() + timeout;
            wait_for_all(
                shared,
                PROBED_ROOM,
                move |s| sighting(s).of(tag).is_some(),
                deadline,
            )
        };
        seen_by_all(|s| &s.probe_joined).await;
        // The update goes out once every process's subscribers have the join,
        // and the leave once they have the update.
        cluster
            .meet(&format!("probe-{k}-joined"), Value::Null)
            .await?;
        let mut update_sent = None;
        if let Some((_, token, drain)) = &probe {
            update_sent = Some(shared.stamp());
            let updated = conn
                .set_state(token, PROBED_ROOM, &format!("{{\"probe\":{k}}}"))
                .await;
            if updated.is_err() {
                drain.abort();
            }
            updated.context("the probe's state")?;
        }
        seen_by_all(|s| &s.probe_updated).await;
        cluster
            .meet(&format!("probe-{k}-updated"), Value::Null)
            .await?;
        let mut sent = None;
        let mut drained = None;
        if let (Some((join_sent, token, drain)), Some(update_sent)) = (probe, update_sent) {
            let leave_sent = shared.stamp();
            let left = conn.leave(&token, PROBED_ROOM).await;
            if left.is_err() {
                drain.abort();
            }
            left.context("the probe's leave")?;
            sent = Some([join_sent, update_sent, leave_sent].map(|at| shared.wall(at)));
            drained = Some(drain);
        }
        seen_by_all(|s| &s.probe_left).await;
        if let Some(drain) = drained {
            drain.abort();
        }
        let arrivals = |sighting: fn(&Slot) -> &Sighting| {
            shared
                .in_room(PROBED_ROOM)
                .map(|s| sighting(s).of(tag).map_or(0, |at| shared.wall(at)))
                .collect()
        };
        let mine = Sightings {
            seen: [
                arrivals(|s| &s.probe_joined),
                arrivals(|s| &s.probe_updated),
                arrivals(|s| &s.probe_left),
            ],
            sent,
        };
        let all = cluster
            .meet(&format!("probe-{k}-seen"), serde_json::to_value(mine)?)
            .await?;
        let all: Vec<Sightings> = all
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>()?;
        let sent = all[0]
            .sent
            .ok_or_else(|| anyhow!("the prober did not say when it sent probe {k}"))?;
        for (samples, seen) in samples.iter_mut().zip(&all) {
            samples.add(seen, sent);
        }
    }
    shared.probe.store(0, Relaxed);
    Ok(samples)
}

/// The rows of a fan-out, their keys and labels after the prefixes given
/// (empty for this process's own).
pub fn fan_out_rows(report: &mut Report, (key, label): (&str, &str), spreads: &Spreads) {
    let kinds = [
        ("join", "a join", &spreads.join),
        ("update", "a state update", &spreads.update),
        ("leave", "a leave", &spreads.leave),
    ];
    for (what, named, spread) in kinds {
        report.add(
            format!("{key}fanout_{what}_p50_ms"),
            format!("{label}fan-out of {named}, p50"),
            num(spread.p50),
            "ms",
        );
        report.add(
            format!("{key}fanout_{what}_p99_ms"),
            format!("{label}fan-out of {named}, p99"),
            num(spread.p99),
            "ms",
        );
        report.add(
            format!("{key}fanout_{what}_max_ms"),
            format!("{label}fan-out of {named}, max"),
            num(spread.max),
            "ms",
        );
        report.add(
            format!("{key}fanout_{what}_missing"),
            format!("{label}fan-out of {named}, missing"),
            spread.missing,
            "",
        );
    }
}

/// Holds a stream open for `token`, reading it through the same decoder and
/// scanner as every other stream, until it ends or is aborted.
async fn drain(target: Arc<Target>, token: String) {
    let mut buf = vec![0; STREAM_BUFFER];
    let opened = Stream::open(
        &target,
        PROBE_SOURCE,
        PROBED_ROOM,
        &token,
        None,
        &mut buf,
        sse::Parser::default(),
    )
    .await;
    let Ok((mut stream, _)) = opened else {
        return;
    };
    while matches!(stream.read(&mut buf, 0).await, Ok(n) if n > 0) {}
}

#[cfg(test)]
mod tests {
    use super::{Samples, Sightings};

    #[test]
    fn fan_out_samples_count_from_the_send_and_count_who_never_saw_it() {
        let seen = Sightings {
            seen: [
                vec![1_005, 0, 1_002],
                vec![1_507, 1_501, 0],
                vec![2_001, 2_003, 2_009],
            ],
            sent: None,
        };
        let mut samples = Samples::default();
        samples.add(&seen, [1_000, 1_500, 2_000]);
        let [joins, updates, leaves] = &samples.0;
        assert_eq!((&joins.arrived, joins.missing), (&vec![5, 2], 1), "joins");
        assert_eq!(
            (&updates.arrived, updates.missing),
            (&vec![7, 1], 1),
            "updates"
        );
        assert_eq!(
            (&leaves.arrived, leaves.missing),
            (&vec![1, 3, 9], 0),
            "leaves"
        );
    }
}
