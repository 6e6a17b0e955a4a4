//! What the prober of a cluster run gathers from every load process, and the
//! figures of the whole cluster (the `cluster:` rows) it adds from them.

use std::time::Duration;

use serde_json::Value;

use crate::Args;
use crate::burst::{Burst, BurstFigures, burst_rows};
use crate::fanout::{Samples, Spread, fan_out_rows};
use crate::report::{Report, num};

/// What the prober of a cluster run gathers from every load process, in
/// process order, for the cluster's figures.
#[derive(Default)]
pub struct Gathered {
    pub samples: Vec<Samples>,
    pub bursts: Vec<Burst>,
    /// Where the processes' latest event ids still differed after settling.
    disagreements: Vec<String>,
}

impl Gathered {
    pub fn note_ids(&mut self, when: &str, ids: &[u64]) {
        if ids.iter().any(|&id| id != ids[0]) {
            self.disagreements.push(format!("{when}: {ids:?}"));
        }
    }
}

/// The prober's rows for the whole cluster run, from what it gathered and
/// every load process's own report (`reports`, in process order).
pub fn cluster_rows(report: &mut Report, args: &Args, gathered: &Gathered, reports: &[Value]) {
    let subscribers: u64 = reports
        .iter()
        .filter_map(|r| r["subscribers"].as_u64())
        .sum();
    let sum = |key: &str| -> u64 { reports.iter().filter_map(|r| r[key].as_u64()).sum() };
    let slowest_ramp = reports
        .iter()
        .filter_map(|r| r["ramp_s"].as_f64())
        .reduce(f64::max);
    report.add(
        "cluster_processes",
        "cluster: load processes, one per node",
        reports.len(),
        "",
    );
    report.add(
        "cluster_subscribers",
        "cluster: subscribers, all nodes",
        subscribers,
        "",
    );
    report.add(
        "cluster_ramp_s",
        "cluster: ramp: all N join and subscribe, slowest",
        num(slowest_ramp),
        "s",
    );
    if !gathered.samples.is_empty() {
        report.add("cluster_probes", "cluster: probes", args.probes, "");
        let spreads = Samples::pooled(&gathered.samples).spreads();
        fan_out_rows(report, ("cluster_", "cluster: "), &spreads);
        let by_node = |pick: fn(&Spread) -> Option<f64>| {
            let each: Vec<String> = gathered
                .samples
                .iter()
                .map(|s| pick(&s.spreads().join).map_or("n/a".to_owned(), |ms| format!("{ms:.3}")))
                .collect();
            format!("{} ms", each.join(" / "))
        };
        report.add(
            "cluster_fanout_join_p50_by_node",
            "cluster: fan-out of a join, p50, node by node",
            by_node(|s| s.p50),
            "",
        );
        report.add(
            "cluster_fanout_join_p99_by_node",
            "cluster: fan-out of a join, p99, node by node",
            by_node(|s| s.p99),
            "",
        );
    }
    if !gathered.bursts.is_empty() {
        let bursts = &gathered.bursts;
        let sent = bursts.iter().map(|b| b.sent).min().unwrap_or(0);
        let answered = bursts.iter().map(|b| b.answered).max().unwrap_or(0);
        let done: Option<Vec<u64>> = bursts.iter().map(|b| b.done).collect();
        let span = |end: u64| (end > sent).then(|| Duration::from_nanos(end - sent));
        let errors: Vec<String> = bursts.iter().flat_map(|b| b.errors.clone()).collect();
        burst_rows(
            report,
            ("cluster_", "cluster: "),
            &BurstFigures {
                joins: args.burst,
                time: done.and_then(|d| d.into_iter().max()).and_then(span),
                deliveries: subscribers * 2 * args.burst as u64,
                cpu: None,
                missing: bursts.iter().map(|b| b.missing).sum(),
                errors: &errors,
            },
        );
        report.add(
            "cluster_burst_answered_per_s",
            "cluster: burst: joins and leaves answered per second",
            span(answered).map(|t| (2.0 * args.burst as f64 / t.as_secs_f64()).round() as u64),
            "/s",
        );
    }
    report.add(
        "cluster_events_checked",
        "cluster: events checked, all streams",
        sum("events_checked"),
        "",
    );
    report.add(
        "cluster_violations",
        "cluster: violations (streams)",
        sum("violations"),
        "",
    );
    report.add(
        "cluster_id_disagreements",
        "cluster: settles with the nodes at different ids",
        gathered.disagreements.len(),
        "",
    );
    if !gathered.disagreements.is_empty() {
        report.fail(format!(
            "the nodes' latest event ids differed once the streams had settled ({})",
            gathered.disagreements.join("; ")
        ));
    }
    for (index, other) in reports.iter().enumerate().skip(1) {
        if other["ok"] != Value::Bool(true) {
            report.fail(format!("load process {index}: {}", other["failures"]));
        }
    }
}
