//! The run: the phases in order, every subscriber's stream open and checked
//! throughout (ramp, fan-out, burst, idle), then the correctness figures of
//! the whole run. In a cluster run every process goes through the same steps,
//! meeting the others before each.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::{Context, Result, bail};

use crate::cluster::Cluster;
use crate::gathered::{Gathered, cluster_rows};
use crate::report::{Report, num};
use crate::server::{self, Meter};
use crate::setup::Setup;
use crate::stream::close;
use crate::subscribers::{Shared, Slot, settle_all};
use crate::target::Target;
use crate::{Args, burst, fanout, ramp};

pub async fn run(args: &Args, cluster: &Cluster) -> Result<Report> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("raise the open file limit")?;
    let n = args.subscribers as usize;
    let needed = n as u64 + u64::from(args.concurrency) + burst::CONNECTIONS as u64 + 64;
    if needed > limit {
        bail!("{n} subscribers need about {needed} open files, but this process may open {limit}");
    }
    let target = Arc::new(Target::from_url(&args.url, args.sources, args.rooms as usize).await?);
    let pid = args.pid.or_else(|| server::find_pid(target.addr.port()));
    if pid.is_none() {
        eprintln!(
            "{}: no server process found (pass --pid): memory and CPU are not measured",
            cluster.who()
        );
    }
    let setup = Setup {
        args,
        cluster,
        shared: Arc::new(Shared::new(target, n)),
        meter: Meter::new(pid),
    };
    let mut report = Report::default();
    report.add("url", "server", args.url.clone(), "");
    report.add("pid", "server pid", pid, "");
    report.add("subscribers", "subscribers", n, "");
    if args.rooms > 1 {
        report.add(
            "rooms",
            "rooms (subscribers dealt out in turn)",
            args.rooms,
            "",
        );
    }
    // What only the prober of a cluster run needs, for the cluster's figures.
    let mut gathered = Gathered::default();

    let ramped = ramp::phase(&setup, &mut report).await?;
    gathered.note_ids("after the ramp", &ramped.ids);
    gathered.samples = fanout::phase(&setup, &mut report).await?;
    // The burst's joins and leaves all go to one room and wait for every
    // stream: a run over many rooms leaves it out.
    if args.burst > 0 && args.rooms == 1 {
        let bursted = burst::phase(&setup, &mut report).await?;
        gathered.note_ids("before the burst", &bursted.ids);
        gathered.bursts = bursted.all;
    }
    let ids = idle(&setup, ramped.rss_before, &mut report).await?;
    gathered.note_ids("before the idle period", &ids);
    correctness(&setup.shared, &mut report);

    // Every process keeps its streams open until all are done: a closed
    // stream goes offline, and every node's streams would hear of it.
    let reports = cluster.meet("end", report.json()).await?;
    if cluster.is_many() && cluster.is_prober() {
        cluster_rows(&mut report, args, &gathered, &reports);
    }
    close(ramped.followers).await;
    Ok(report)
}

/// The server's CPU while every subscriber sits idle, then its memory: the
/// peak the ramp, probes and burst took it to, and what it settles at.
/// Returns each load process's latest event id before the idle period.
async fn idle(setup: &Setup<'_>, rss_before: Option<u64>, report: &mut Report) -> Result<Vec<u64>> {
    let (args, n) = (setup.args, setup.shared.slots.len());
    let (_, _, ids) = settle_all(&setup.shared, setup.cluster, "idle-settled").await?;
    let rss_peak = setup.meter.peak_rss_kib();
    let before = setup.meter.cpu();
    tokio::time::sleep(args.idle).await;
    let (server_cpu, _) = setup.meter.cpu().since(before);
    let idle = args.idle.as_secs_f64();
    report.add("idle_s", "idle: measured over", num(Some(idle)), "s");
    report.add(
        "idle_cpu_percent",
        "idle: server CPU, % of one core",
        num(server_cpu
            .filter(|_| idle > 0.0)
            .map(|seconds| seconds / idle * 100.0)),
        "%",
    );
    // What an idle subscriber costs: measured once the N streams have sat
    // idle, when what the ramp needed only for a moment (megabyte join replies
    // and snapshots) has been handed back by the allocator.
    let rss_idle = setup.meter.rss_kib();
    report.add(
        "rss_end_kib",
        "server RSS after the idle period",
        rss_idle,
        "KiB",
    );
    report.add(
        "kib_per_subscriber",
        "server RSS per idle subscriber",
        num(rss_before
            .zip(rss_idle)
            .map(|(a, b)| (b as f64 - a as f64) / n as f64)),
        "KiB",
    );
    // The whole process over N, not the growth from before: a container
    // must be sized for all of it, and at the peak (a join storm), not only
    // for what it settles at.
    let per_subscriber = |kib: Option<u64>| num(kib.map(|kib| kib as f64 / n as f64));
    report.add(
        "rss_peak_kib",
        "server peak RSS (VmHWM), after ramp, probes and burst",
        rss_peak,
        "KiB",
    );
    report.add(
        "peak_kib_per_subscriber",
        "server peak RSS per subscriber (VmHWM / N)",
        per_subscriber(rss_peak),
        "KiB",
    );
    report.add(
        "settled_kib_per_subscriber",
        "server settled RSS per subscriber (VmRSS at the end / N)",
        per_subscriber(rss_idle),
        "KiB",
    );
    Ok(ids)
}

/// The checks of every stream over the whole run; fails the report on any.
fn correctness(shared: &Shared, report: &mut Report) {
    let count = |f: &dyn Fn(&Slot) -> bool| shared.slots.iter().filter(|s| f(s)).count();
    let gaps = count(&|s| s.gaps.load(Relaxed) > 0);
    let repeats = count(&|s| s.repeats.load(Relaxed) > 0);
    let decreases = count(&|s| s.decreases.load(Relaxed) > 0);
    let unexpected = count(&|s| s.unexpected.load(Relaxed) > 0);
    let lost = count(&|s| s.lost.load(Relaxed));
    let resumes: u64 = shared
        .slots
        .iter()
        .map(|s| u64::from(s.resumes.load(Relaxed)))
        .sum();
    let events: u64 = shared.slots.iter().map(|s| s.events.load(Relaxed)).sum();
    report.add("events_checked", "events checked, all streams", events, "");
    report.add("streams_with_gap", "streams with a gap in ids", gaps, "");
    report.add(
        "streams_with_repeat",
        "streams with a repeated id",
        repeats,
        "",
    );
    report.add(
        "streams_with_decrease",
        "streams with a decreasing id",
        decreases,
        "",
    );
    report.add(
        "streams_with_unexpected",
        "streams with an unexpected event",
        unexpected,
        "",
    );
    report.add("streams_lost", "streams ended and not reopened", lost, "");
    report.add(
        "stream_resumes",
        "streams reopened with Last-Event-ID",
        resumes,
        "",
    );
    let violations = gaps + repeats + decreases + unexpected + lost;
    report.add("violations", "violations (streams)", violations, "");
    if violations > 0 {
        report.fail(format!(
            "{violations} stream violations: {gaps} gaps, {repeats} repeats, {decreases} decreases, {unexpected} unexpected, {lost} lost{}",
            shared
                .first_loss
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .as_ref()
                .map_or_else(String::new, |why| format!(" (the first: {why})"))
        ));
    }
}
