//! `lobby-load`: a load generator for any server that speaks the lobby contract
//! (POST /join, GET /events, POST /leave). It opens N subscribers and measures the
//! ramp, the server's memory per subscriber, fan-out latency of one join and one
//! leave, a burst of joins and leaves, and the server's CPU while idle, checking all
//! the while that every stream's ids are consecutive (nothing missing, nothing twice).
//!
//! Run it next to a server, e.g.
//! `lobby --bind 127.0.0.1:3100 & lobby-load --url http://127.0.0.1:3100 --subscribers 1000`.
//! It prints a table (or one JSON object with `--json`) and exits non-zero on any
//! correctness violation, missing delivery or failed request.
//!
//! Against a cluster, one lobby-load per node, all on one machine, run as one
//! (`--cluster-dir`, as `make bench-cluster` does): they meet before each phase
//! through files in a shared directory, process 0 sends the probes through its
//! node, every process times their arrival on the wall clock, and process 0
//! adds the cluster's figures (`cluster:` rows) to its table.
//!
//! HTTP is written by hand on purpose: a general client would spend more per
//! event than the server under test (both share the machine's cores), and the
//! snapshots are ~1 MB each.
//!
//! # Layout
//! - `target`: where the server is; opening connections and writing requests.
//! - `wire`: HTTP/1.1 responses, read incrementally (Content-Length, chunked,
//!   or until close), and a join reply's `id`/`token` picked out as it passes.
//! - `sse`: the one SSE scanner, which checks every stream in place.
//! - `stream`: one subscriber's GET /events, decoded by `wire` and scanned by
//!   `sse`; every stream lobby-load reads is one of these.
//! - `conn`: a keep-alive connection for joins and leaves.
//! - `subscribers`: what each subscriber's task shares with the controller,
//!   the tasks that follow the streams, and waiting for them to settle.
//! - `server`: the server process's memory and CPU, read from /proc.
//! - `cluster`: the load processes of a cluster run, meeting through files.
//! - `run`: the phases in order, each given the same `setup`; `ramp`,
//!   `fanout` and `burst` are three of them, each adding its own rows.
//! - `report`: the figures, as a table or JSON; `gathered`: a cluster's own.

mod burst;
mod cluster;
mod conn;
mod fanout;
mod gathered;
mod ramp;
mod report;
mod run;
mod server;
mod setup;
mod sse;
mod stream;
mod subscribers;
mod target;
mod wire;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use cluster::Cluster;

/// Measures a lobby server under N subscribers.
#[derive(Debug, Parser)]
#[command(name = "lobby-load", version)]
pub struct Args {
    /// The server's base URL (plain http).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub url: String,

    /// How many subscribers to open (each one join and one stream).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub subscribers: u32,

    /// The server's process id, for memory and CPU. Without it, the process
    /// listening on the URL's port is used (or the only process named `lobby`).
    #[arg(long)]
    pub pid: Option<u32>,

    /// How long to measure the server's CPU while every subscriber sits idle.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle: Duration,

    /// Spread the subscribers over this many rooms (/rooms/r0, /rooms/r1, …),
    /// dealt out in turn; the probes join room r0. With 1, the lobby's own
    /// routes. More than 1 leaves the burst out.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub rooms: u32,

    /// Joins in the burst; as many leaves follow (0 skips the burst). In a
    /// cluster run, the joins of all the load processes together.
    #[arg(long, default_value_t = 200)]
    pub burst: usize,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Spread connections over this many source addresses: 127.0.0.2, 127.0.0.3, …
    /// (only when the server is on 127.0.0.0/8), so ephemeral ports never run out.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub sources: u8,

    /// Joins (each followed by its subscribe) in flight at once during the ramp.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,

    /// How long to wait for a delivery before counting it missing.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Probes that join and leave, one after another; fan-out figures pool them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub probes: u32,

    /// Run as one of --cluster-size load processes on this machine, one per
    /// node of a cluster, meeting through files in this directory (empty at
    /// the start). Process 0 sends the probes and prints the figures of all.
    #[arg(long, requires = "cluster_index")]
    pub cluster_dir: Option<PathBuf>,

    /// How many load processes share --cluster-dir.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub cluster_size: u32,

    /// This process's number, from 0, among --cluster-size.
    #[arg(long, default_value_t = 0)]
    pub cluster_index: u32,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let cluster = match Cluster::of(&args) {
        Ok(cluster) => cluster,
        Err(err) => {
            eprintln!("lobby-load: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    match run::run(&args, &cluster).await {
        Ok(report) => {
            if args.json {
                println!("{}", report.json());
            } else {
                print!("{}", report.table());
            }
            if report.failed {
                eprintln!("{}: FAILED: {}", cluster.who(), report.failures.join("; "));
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(err) => {
            eprintln!("{}: {err:#}", cluster.who());
            cluster.give_up(&format!("{err:#}"));
            ExitCode::FAILURE
        }
    }
}
