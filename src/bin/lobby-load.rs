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
//! Layout: `wire` reads HTTP/1.1 responses (Content-Length or chunked) and picks
//! `id`/`token` out of a join reply without building it; `sse` checks a stream
//! in place, one reused buffer per thread; `server` reads /proc; `Cluster` has
//! the load processes of a cluster run meet; the rest drives the phases. HTTP
//! is written by hand on purpose: a general client would spend more per event
//! than the server under test, and the snapshots are ~1 MB each.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed,
    Ordering::Release,
};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// The longest one ramp step (join, then subscribe until the snapshot) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the streams may take to catch up with the last event after a phase.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Connections the burst's joins and leaves are spread over.
const BURST_CONNECTIONS: usize = 4;
/// Each keep-alive request connection's read buffer; join replies run to ~1 MB.
const CONN_BUFFER: usize = 256 * 1024;
/// The read buffer every subscriber on one runtime thread shares.
const STREAM_BUFFER: usize = 64 * 1024;
/// A stream the server keeps ending is given up after this many reconnects.
const MAX_RESUMES: u32 = 100;
/// How long load processes of a cluster run wait for each other at one step
/// (the longest is the ramp of the slowest).
const MEET_TIMEOUT: Duration = Duration::from_secs(900);
/// How often a waiting load process looks for the others.
const MEET_POLL: Duration = Duration::from_millis(5);
/// How often the streams of a cluster run settle again when the processes'
/// latest event ids differ.
const SETTLE_ROUNDS: usize = 20;

/// Measures a lobby server under N subscribers.
#[derive(Debug, Parser)]
#[command(name = "lobby-load", version)]
struct Args {
    /// The server's base URL (plain http).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,

    /// How many subscribers to open (each one join and one stream).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    subscribers: u32,

    /// The server's process id, for memory and CPU. Without it, the process
    /// listening on the URL's port is used (or the only process named `lobby`).
    #[arg(long)]
    pid: Option<u32>,

    /// How long to measure the server's CPU while every subscriber sits idle.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    idle: Duration,

    /// Joins in the burst; as many leaves follow (0 skips the burst). In a
    /// cluster run, the joins of all the load processes together.
    #[arg(long, default_value_t = 200)]
    burst: usize,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,

    /// Spread connections over this many source addresses: 127.0.0.2, 127.0.0.3, …
    /// (only when the server is on 127.0.0.0/8), so ephemeral ports never run out.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u8).range(1..=254))]
    sources: u8,

    /// Joins (each followed by its subscribe) in flight at once during the ramp.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,

    /// How long to wait for a delivery before counting it missing.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// Probes that join and leave, one after another; fan-out figures pool them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    probes: u32,

    /// Run as one of --cluster-size load processes on this machine, one per
    /// node of a cluster, meeting through files in this directory (empty at
    /// the start). Process 0 sends the probes and prints the figures of all.
    #[arg(long, requires = "cluster_index")]
    cluster_dir: Option<PathBuf>,

    /// How many load processes share --cluster-dir.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    cluster_size: u32,

    /// This process's number, from 0, among --cluster-size.
    #[arg(long, default_value_t = 0)]
    cluster_index: u32,
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
    match run(&args, &cluster).await {
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

/// Where the server is, and how to open a connection to it.
struct Target {
    addr: SocketAddr,
    /// The `Host` header: the URL's authority as written.
    host: String,
    /// Source addresses to bind, in turn; empty when the server is not on loopback.
    sources: Vec<Ipv4Addr>,
}

impl Target {
    async fn from_url(url: &str, sources: u8) -> Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("--url must start with http:// (got {url:?})"))?;
        let host = rest.split('/').next().unwrap_or(rest).to_owned();
        let with_port = if host.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']')) {
            host.clone()
        } else {
            format!("{host}:80")
        };
        // IPv4 first: `localhost` may resolve to ::1 while the server listens on 127.0.0.1.
        let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host(&with_port)
            .await
            .with_context(|| format!("cannot resolve {with_port}"))?
            .collect();
        addrs.sort_by_key(SocketAddr::is_ipv6);
        let addr = *addrs
            .first()
            .ok_or_else(|| anyhow!("{with_port} resolves to no address"))?;
        let sources = match addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => (0..sources)
                .map(|n| Ipv4Addr::new(127, 0, 0, 2 + n))
                .collect(),
            _ => Vec::new(),
        };
        Ok(Target {
            addr,
            host,
            sources,
        })
    }

    /// Opens a connection from source address number `source` (modulo their count).
    async fn connect(&self, source: usize) -> io::Result<TcpStream> {
        let socket = match self.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if !self.sources.is_empty() {
            let ip = self.sources[source % self.sources.len()];
            socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
        }
        let stream = socket.connect(self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    fn join_request(&self, name: &str) -> Vec<u8> {
        let body = format!("{{\"name\":\"{name}\"}}");
        format!(
            "POST /join HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        )
        .into_bytes()
    }

    fn leave_request(&self, token: &str) -> Vec<u8> {
        format!(
            "POST /leave HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n",
            self.host
        )
        .into_bytes()
    }

    fn events_request(&self, token: &str, last_id: Option<u64>) -> Vec<u8> {
        let resume = last_id.map_or_else(String::new, |id| format!("Last-Event-ID: {id}\r\n"));
        format!(
            "GET /events?token={} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n{resume}\r\n",
            query_escape(token),
            self.host
        )
        .into_bytes()
    }
}

fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

async fn read_some(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Ok(n) => return Ok(n),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
}

/// HTTP/1.1 responses, read incrementally: the head, then a body by
/// Content-Length, chunked, or until close, handed on piece by piece.
mod wire {
    /// How a response's body is delimited.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Framing {
        Length(u64),
        Chunked,
        UntilClose,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Head {
        pub status: u16,
        pub framing: Framing,
        /// The server will close the connection after this response.
        pub close: bool,
    }

    /// The head, and its length, once `bytes` hold all of it.
    pub fn parse_head(bytes: &[u8]) -> Result<Option<(Head, usize)>, String> {
        let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            if bytes.len() > 64 * 1024 {
                return Err("a response head over 64 KiB".into());
            }
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&bytes[..end]);
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not an HTTP status line: {status_line:?}"))?;
        let mut close = status_line.starts_with("HTTP/1.0");
        let (mut length, mut chunked) = (None, false);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim(), value.trim().to_ascii_lowercase());
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| format!("bad Content-Length {value:?}"))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.contains("close");
            }
        }
        let framing = if status < 200 || status == 204 || status == 304 {
            Framing::Length(0)
        } else if chunked {
            Framing::Chunked
        } else if let Some(length) = length {
            Framing::Length(length)
        } else {
            close = true;
            Framing::UntilClose
        };
        Ok(Some((
            Head {
                status,
                framing,
                close,
            },
            end + 4,
        )))
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum State {
        Length(u64),
        UntilClose,
        /// Reading a chunk-size line: the size so far, whether a digit came, and
        /// whether we are past the digits (in extensions or the line end).
        Size {
            size: u64,
            digits: bool,
            past: bool,
        },
        Data(u64),
        /// The CRLF after a chunk's data.
        DataEnd,
        /// Trailer lines after the last chunk; `empty` while the line has no bytes.
        Trailer {
            empty: bool,
        },
        Done,
    }

    /// Turns a response body as it arrives into the body's own bytes.
    #[derive(Debug, Clone)]
    pub struct Decoder {
        state: State,
    }

    impl Decoder {
        pub fn new(framing: Framing) -> Decoder {
            let state = match framing {
                Framing::Length(0) => State::Done,
                Framing::Length(n) => State::Length(n),
                Framing::Chunked => State::Size {
                    size: 0,
                    digits: false,
                    past: false,
                },
                Framing::UntilClose => State::UntilClose,
            };
            Decoder { state }
        }

        /// The body is complete (a body that ends at close never is).
        pub fn is_done(&self) -> bool {
            self.state == State::Done
        }

        pub fn ends_at_close(&self) -> bool {
            self.state == State::UntilClose
        }

        /// Hands each piece of body in `input` to `sink`; returns how much of
        /// `input` belonged to this body (all of it unless the body ended).
        pub fn feed(
            &mut self,
            input: &[u8],
            sink: &mut impl FnMut(&[u8]),
        ) -> Result<usize, &'static str> {
            let mut at = 0;
            while at < input.len() {
                match &mut self.state {
                    State::Done => break,
                    State::UntilClose => {
                        sink(&input[at..]);
                        at = input.len();
                    }
                    State::Length(left) | State::Data(left) => {
                        let take = (*left).min((input.len() - at) as u64) as usize;
                        sink(&input[at..at + take]);
                        at += take;
                        *left -= take as u64;
                        if *left == 0 {
                            self.state = match self.state {
                                State::Length(_) => State::Done,
                                _ => State::DataEnd,
                            };
                        }
                    }
                    State::Size { size, digits, past } => {
                        let byte = input[at];
                        at += 1;
                        match byte {
                            b'\n' if !*digits => return Err("a chunk size line without a size"),
                            b'\n' if *size == 0 => self.state = State::Trailer { empty: true },
                            b'\n' => self.state = State::Data(*size),
                            _ if *past => {}
                            b'\r' | b';' | b' ' | b'\t' => *past = true,
                            _ => {
                                let digit = char::from(byte)
                                    .to_digit(16)
                                    .ok_or("a chunk size that is not hexadecimal")?;
                                *size = size
                                    .checked_mul(16)
                                    .map(|s| s + u64::from(digit))
                                    .ok_or("a chunk size too large")?;
                                *digits = true;
                            }
                        }
                    }
                    State::DataEnd => {
                        let byte = input[at];
                        at += 1;
                        match byte {
                            b'\r' => {}
                            b'\n' => {
                                self.state = State::Size {
                                    size: 0,
                                    digits: false,
                                    past: false,
                                }
                            }
                            _ => return Err("chunk data longer than its size"),
                        }
                    }
                    State::Trailer { empty } => {
                        let byte = input[at];
                        at += 1;
                        match byte {
                            b'\n' if *empty => self.state = State::Done,
                            b'\n' => *empty = true,
                            b'\r' => {}
                            _ => *empty = false,
                        }
                    }
                }
            }
            Ok(at)
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Key {
        Id,
        Token,
        Other,
    }

    /// Picks the top-level `"id"` and `"token"` strings out of a join reply as it
    /// streams past, without building the (up to ~1 MB) `users` list; nested
    /// `"id"`s are skipped by tracking depth. Stops looking once it has both.
    #[derive(Debug, Clone)]
    pub struct JoinScan {
        depth: u32,
        in_string: bool,
        escaped: bool,
        expect_key: bool,
        key: Key,
        text: Vec<u8>,
        pub id: Option<String>,
        pub token: Option<String>,
    }

    impl Default for JoinScan {
        fn default() -> Self {
            JoinScan {
                depth: 0,
                in_string: false,
                escaped: false,
                expect_key: false,
                key: Key::Other,
                text: Vec::new(),
                id: None,
                token: None,
            }
        }
    }

    impl JoinScan {
        pub fn found(&self) -> bool {
            self.id.is_some() && self.token.is_some()
        }

        pub fn feed(&mut self, bytes: &[u8]) {
            if self.found() {
                return;
            }
            for &byte in bytes {
                if self.in_string {
                    let top = self.depth == 1;
                    if self.escaped {
                        self.escaped = false;
                    } else if byte == b'\\' {
                        self.escaped = true;
                    } else if byte == b'"' {
                        self.in_string = false;
                        if top {
                            self.end_string();
                            if self.found() {
                                return;
                            }
                        }
                        continue;
                    }
                    if top && self.text.len() < 1024 {
                        self.text.push(byte);
                    }
                    continue;
                }
                match byte {
                    b'"' => {
                        self.in_string = true;
                        self.text.clear();
                    }
                    b'{' | b'[' => {
                        self.depth += 1;
                        if self.depth == 1 {
                            self.expect_key = true;
                        }
                    }
                    b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                    b':' if self.depth == 1 => self.expect_key = false,
                    b',' if self.depth == 1 => {
                        self.expect_key = true;
                        self.key = Key::Other;
                    }
                    _ => {}
                }
            }
        }

        fn end_string(&mut self) {
            let text = String::from_utf8_lossy(&self.text).into_owned();
            if self.expect_key {
                self.key = match text.as_str() {
                    "id" => Key::Id,
                    "token" => Key::Token,
                    _ => Key::Other,
                };
                return;
            }
            match self.key {
                Key::Id => self.id = Some(text),
                Key::Token => self.token = Some(text),
                Key::Other => {}
            }
            self.key = Key::Other;
        }
    }
}

/// Server-Sent Events, checked in place as they stream past: only the `id:` and
/// `event:` lines are read, and `data:` only when looking for the probe.
mod sse {
    /// The most of one line kept when it spans two reads; enough for every
    /// field name and for the data of a `new_user` or `disconnect_user`.
    const LINE_CAP: usize = 256;

    /// The first byte `\n` in `haystack`, eight bytes at a time: the snapshot's
    /// data line is ~1 MB at N = 18,000 and only its end matters.
    pub fn find_newline(haystack: &[u8]) -> Option<usize> {
        const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
        const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
        const NEWLINES: u64 = u64::from_ne_bytes([b'\n'; 8]);
        let words = haystack.chunks_exact(8);
        let tail = haystack.len() - words.remainder().len();
        for (n, word) in words.enumerate() {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(word);
            let x = u64::from_ne_bytes(bytes) ^ NEWLINES;
            if x.wrapping_sub(ONES) & !x & HIGHS != 0 {
                return word.iter().position(|&b| b == b'\n').map(|p| n * 8 + p);
            }
        }
        haystack[tail..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|p| tail + p)
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    enum Kind {
        #[default]
        None,
        Snapshot,
        NewUser,
        DisconnectUser,
        Other,
    }

    /// The fields of the event being read.
    #[derive(Debug, Clone, Copy, Default)]
    struct Block {
        id: Option<u64>,
        kind: Kind,
        data: bool,
        /// The probe's tag, if the data names it.
        probe: u64,
    }

    /// What one stream has shown so far.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Tally {
        /// The last event id seen.
        pub last_id: Option<u64>,
        /// `existing_users` snapshots (more than one only after a reconnect).
        pub snapshots: u32,
        /// `new_user` and `disconnect_user` events.
        pub events: u64,
        /// Events whose id skipped ahead (some event missing).
        pub gaps: u32,
        /// Events with the same id as the one before.
        pub repeats: u32,
        /// Events with a lower id than the one before.
        pub decreases: u32,
        /// Events with no id, or of a kind the contract does not have.
        pub unexpected: u32,
        /// The tag of the last probe whose `new_user`, and whose
        /// `disconnect_user`, has been seen (0: none yet).
        pub joined_probe: u64,
        pub left_probe: u64,
    }

    #[derive(Debug, Clone)]
    pub struct Parser {
        /// The start of a line that began in an earlier read.
        partial: [u8; LINE_CAP],
        partial_len: usize,
        /// The partial line is longer than what was kept.
        partial_long: bool,
        block: Block,
        pub tally: Tally,
    }

    impl Default for Parser {
        fn default() -> Self {
            Parser {
                partial: [0; LINE_CAP],
                partial_len: 0,
                partial_long: false,
                block: Block::default(),
                tally: Tally::default(),
            }
        }
    }

    impl Parser {
        /// The same stream's parser on a new connection: what was seen is kept,
        /// a half-read line or event is dropped (the server sends it again).
        pub fn reconnected(self) -> Parser {
            Parser {
                tally: self.tally,
                ..Parser::default()
            }
        }

        /// Reads the next bytes of the stream. `probe` is the tag in the name
        /// `probe-<16 hex digits>` of the user being watched for, or 0.
        pub fn feed(&mut self, mut input: &[u8], probe: u64) {
            while let Some(end) = find_newline(input) {
                let line = &input[..end];
                if self.partial_len == 0 && !self.partial_long {
                    line_of(&mut self.block, &mut self.tally, line, probe);
                } else {
                    let keep = line.len().min(LINE_CAP - self.partial_len);
                    self.partial[self.partial_len..self.partial_len + keep]
                        .copy_from_slice(&line[..keep]);
                    self.partial_len += keep;
                    let long = self.partial_long || keep < line.len();
                    let line = &self.partial[..self.partial_len];
                    // A line cut short is only read for its field name.
                    let probe = if long { 0 } else { probe };
                    line_of(&mut self.block, &mut self.tally, line, probe);
                    self.partial_len = 0;
                    self.partial_long = false;
                }
                input = &input[end + 1..];
            }
            let keep = input.len().min(LINE_CAP - self.partial_len);
            self.partial[self.partial_len..self.partial_len + keep].copy_from_slice(&input[..keep]);
            self.partial_len += keep;
            self.partial_long |= keep < input.len();
        }
    }

    fn line_of(block: &mut Block, tally: &mut Tally, line: &[u8], probe: u64) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            dispatch(std::mem::take(block), tally);
            return;
        }
        // The usual spellings first, so most lines cost one comparison.
        let (field, value): (&[u8], &[u8]) = if let Some(value) = line.strip_prefix(b"id: ") {
            (b"id", value)
        } else if let Some(value) = line.strip_prefix(b"event: ") {
            (b"event", value)
        } else if let Some(value) = line.strip_prefix(b"data: ") {
            (b"data", value)
        } else if line[0] == b':' {
            return;
        } else {
            field_and_value(line)
        };
        match field {
            b"id" => block.id = parse_u64(value),
            b"event" => {
                block.kind = match value {
                    b"existing_users" => Kind::Snapshot,
                    b"new_user" => Kind::NewUser,
                    b"disconnect_user" => Kind::DisconnectUser,
                    _ => Kind::Other,
                }
            }
            b"data" => {
                block.data = true;
                if probe != 0 && probe_tag(value) == Some(probe) {
                    block.probe = probe;
                }
            }
            _ => {}
        }
    }

    fn field_and_value(line: &[u8]) -> (&[u8], &[u8]) {
        match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        }
    }

    fn dispatch(block: Block, tally: &mut Tally) {
        // A block with neither data nor an event name (a lone `retry:` or `id:`)
        // dispatches nothing, as in a browser.
        if !block.data && block.kind == Kind::None {
            return;
        }
        let Some(id) = block.id else {
            tally.unexpected += 1;
            return;
        };
        match (block.kind, tally.last_id) {
            (_, None) => {}
            (_, Some(last)) if id == last + 1 => {}
            // A snapshot after a reconnect stands for everything up to its id.
            (Kind::Snapshot, Some(last)) if id >= last => {}
            (_, Some(last)) if id == last => tally.repeats += 1,
            (_, Some(last)) if id < last => tally.decreases += 1,
            (_, Some(_)) => tally.gaps += 1,
        }
        tally.last_id = Some(id);
        match block.kind {
            Kind::Snapshot => tally.snapshots += 1,
            Kind::NewUser => {
                tally.events += 1;
                if block.probe != 0 {
                    tally.joined_probe = block.probe;
                }
            }
            Kind::DisconnectUser => {
                tally.events += 1;
                if block.probe != 0 {
                    tally.left_probe = block.probe;
                }
            }
            Kind::None | Kind::Other => tally.unexpected += 1,
        }
    }

    fn parse_u64(text: &[u8]) -> Option<u64> {
        if text.is_empty() || text.len() > 19 {
            return None;
        }
        text.iter().try_fold(0u64, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
        })
    }

    /// The tag of a `"name":"probe-<16 hex digits>"` in an event's JSON data.
    pub fn probe_tag(data: &[u8]) -> Option<u64> {
        const KEY: &[u8] = b"\"name\":\"probe-";
        let at = data.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
        let hex = data.get(at..at + 16)?;
        if data.get(at + 16) != Some(&b'"') {
            return None;
        }
        let text = std::str::from_utf8(hex).ok()?;
        u64::from_str_radix(text, 16).ok()
    }
}

/// The server process, seen through /proc.
mod server {
    use std::collections::HashSet;
    use std::fs;

    /// The process listening on `port`, else the only process whose executable is
    /// named `lobby`.
    pub fn find_pid(port: u16) -> Option<u32> {
        listening_pid(port).or_else(only_lobby)
    }

    fn pids() -> impl Iterator<Item = u32> {
        fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
    }

    fn listening_pid(port: u16) -> Option<u32> {
        let mut inodes = HashSet::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let Ok(text) = fs::read_to_string(table) else {
                continue;
            };
            for line in text.lines().skip(1) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (Some(local), Some(&"0A"), Some(inode)) =
                    (fields.get(1), fields.get(3), fields.get(9))
                else {
                    continue;
                };
                let listens_here = local
                    .rsplit_once(':')
                    .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok())
                    == Some(port);
                if listens_here {
                    inodes.insert(format!("socket:[{inode}]"));
                }
            }
        }
        if inodes.is_empty() {
            return None;
        }
        pids().find(|pid| {
            fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| {
                    fs::read_link(fd.path())
                        .is_ok_and(|link| inodes.contains(link.to_string_lossy().as_ref()))
                })
        })
    }

    fn only_lobby() -> Option<u32> {
        let mut found = pids().filter(|pid| {
            fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
                let name = exe.file_name().map(|n| n.to_string_lossy().into_owned());
                matches!(name.as_deref(), Some("lobby" | "lobby (deleted)"))
            })
        });
        let pid = found.next()?;
        found.next().is_none().then_some(pid)
    }

    /// Resident memory in KiB (`VmRSS`).
    pub fn rss_kib(pid: u32) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// User plus system CPU time, in clock ticks.
    pub fn cpu_ticks(pid: u32) -> Option<u64> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses: count from the last ')'.
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 of stat(5); `rest` starts at field 3.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(utime + stime)
    }

    /// Clock ticks per second, from `getconf CLK_TCK` (100 if that fails).
    pub fn ticks_per_second() -> f64 {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    }
}

/// A keep-alive connection for requests, with its own reused read buffer.
struct Conn {
    target: Arc<Target>,
    source: usize,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Conn {
    fn new(target: Arc<Target>, source: usize) -> Conn {
        Conn {
            target,
            source,
            stream: None,
            buf: vec![0; CONN_BUFFER],
            start: 0,
            end: 0,
        }
    }

    /// Opens the connection now, so that a measured request does not include it.
    async fn connect(&mut self) -> Result<()> {
        if self.stream.is_none() {
            let stream = self
                .target
                .connect(self.source)
                .await
                .with_context(|| format!("cannot connect to {}", self.target.addr))?;
            self.stream = Some(stream);
            (self.start, self.end) = (0, 0);
        }
        Ok(())
    }

    /// Sends `request` and hands the response body to `sink`; returns the status.
    /// A reused connection the server had closed before answering is reopened
    /// once, as browsers do.
    async fn request(&mut self, request: &[u8], sink: &mut impl FnMut(&[u8])) -> Result<u16> {
        let reused = self.stream.is_some();
        match self.try_request(request, sink).await {
            Err(Failure::Unanswered(_)) if reused => {
                self.stream = None;
                self.try_request(request, sink)
                    .await
                    .map_err(Failure::into_error)
            }
            result => result.map_err(Failure::into_error),
        }
    }

    async fn try_request(
        &mut self,
        request: &[u8],
        sink: &mut impl FnMut(&[u8]),
    ) -> Result<u16, Failure> {
        self.connect().await.map_err(Failure::Broken)?;
        let result = self.exchange(request, sink).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange(
        &mut self,
        request: &[u8],
        sink: &mut impl FnMut(&[u8]),
    ) -> Result<u16, Failure> {
        let Some(stream) = &self.stream else {
            return Err(Failure::Broken(anyhow!("not connected")));
        };
        write_all(stream, request)
            .await
            .map_err(|err| Failure::Unanswered(err.into()))?;
        let head = loop {
            if let Some((head, len)) = wire::parse_head(&self.buf[self.start..self.end])
                .map_err(|e| Failure::Broken(anyhow!(e)))?
            {
                self.start += len;
                break head;
            }
            if self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            }
            let n = read_some(stream, &mut self.buf[self.end..])
                .await
                .map_err(|err| Failure::Unanswered(err.into()))?;
            if n == 0 {
                return Err(Failure::Unanswered(anyhow!(
                    "the server closed the connection"
                )));
            }
            self.end += n;
        };
        let mut decoder = wire::Decoder::new(head.framing);
        loop {
            let used = decoder
                .feed(&self.buf[self.start..self.end], sink)
                .map_err(|e| Failure::Broken(anyhow!(e)))?;
            self.start += used;
            if decoder.is_done() {
                break;
            }
            (self.start, self.end) = (0, 0);
            let n = read_some(stream, &mut self.buf)
                .await
                .map_err(|err| Failure::Broken(err.into()))?;
            if n == 0 {
                if decoder.ends_at_close() {
                    break;
                }
                return Err(Failure::Broken(anyhow!(
                    "the server closed the connection mid-body"
                )));
            }
            self.end = n;
        }
        if head.close || !decoder.is_done() {
            self.stream = None;
        }
        Ok(head.status)
    }

    /// POST /join; returns the new user's token (the reply must also hold its id).
    async fn join(&mut self, name: &str) -> Result<Joined> {
        let request = self.target.join_request(name);
        let mut scan = wire::JoinScan::default();
        let mut error = Vec::new();
        let mut bytes = 0u64;
        let status = self
            .request(&request, &mut |piece| {
                bytes += piece.len() as u64;
                scan.feed(piece);
                let room = 300usize.saturating_sub(error.len()).min(piece.len());
                error.extend_from_slice(&piece[..room]);
            })
            .await?;
        if status != 201 {
            bail!(
                "POST /join answered {status}: {}",
                String::from_utf8_lossy(&error)
            );
        }
        match (scan.id, scan.token) {
            (Some(_id), Some(token)) => Ok(Joined { token, bytes }),
            _ => bail!("POST /join answered 201 without a top-level \"id\" and \"token\""),
        }
    }

    /// POST /leave with the token as Bearer.
    async fn leave(&mut self, token: &str) -> Result<()> {
        let request = self.target.leave_request(token);
        let status = self.request(&request, &mut |_| {}).await?;
        if status != 204 {
            bail!("POST /leave answered {status}");
        }
        Ok(())
    }
}

/// Why a request failed: before any answer (safe to retry on a fresh
/// connection) or after.
enum Failure {
    Unanswered(anyhow::Error),
    Broken(anyhow::Error),
}

impl Failure {
    fn into_error(self) -> anyhow::Error {
        match self {
            Failure::Unanswered(err) | Failure::Broken(err) => err,
        }
    }
}

struct Joined {
    token: String,
    /// The reply's body size.
    bytes: u64,
}

/// What the controller reads of one subscriber while it runs. Written by its
/// task once per read, so the per-event path touches no shared memory; a cache
/// line each, so that tasks on different threads do not contend for one.
#[derive(Default)]
#[repr(align(64))]
struct Slot {
    last_id: AtomicU64,
    events: AtomicU64,
    /// The latest probe's `new_user` and `disconnect_user`.
    probe_joined: Sighting,
    probe_left: Sighting,
    /// Nanoseconds since `Shared::base`, plus one; 0 until seen.
    target_at: AtomicU64,
    gaps: AtomicU32,
    repeats: AtomicU32,
    decreases: AtomicU32,
    unexpected: AtomicU32,
    resumes: AtomicU32,
    /// The stream ended and could not be reopened.
    lost: AtomicBool,
}

impl Slot {
    fn record(&self, tally: &sse::Tally, at: u64, target: u64) {
        let last = tally.last_id.unwrap_or(0);
        self.last_id.store(last, Relaxed);
        self.events.store(tally.events, Relaxed);
        self.gaps.store(tally.gaps, Relaxed);
        self.repeats.store(tally.repeats, Relaxed);
        self.decreases.store(tally.decreases, Relaxed);
        self.unexpected.store(tally.unexpected, Relaxed);
        self.probe_joined.record(tally.joined_probe, at);
        self.probe_left.record(tally.left_probe, at);
        if target != 0 && last >= target && self.target_at.load(Relaxed) == 0 {
            self.target_at.store(at, Relaxed);
        }
    }
}

/// When a stream first showed the event of the probe it saw last. Tagged, so
/// that one probe after another needs no reset that could race with a read.
#[derive(Default)]
struct Sighting {
    /// The probe's tag (0: none yet).
    tag: AtomicU64,
    /// Nanoseconds since `Shared::base`, plus one.
    at: AtomicU64,
}

impl Sighting {
    fn record(&self, tag: u64, at: u64) {
        if tag != self.tag.load(Relaxed) {
            self.at.store(at, Relaxed);
            // Release: whoever sees the tag sees its time.
            self.tag.store(tag, Release);
        }
    }

    /// When the probe `tag` was seen, if it was.
    fn of(&self, tag: u64) -> Option<u64> {
        (self.tag.load(Acquire) == tag).then(|| self.at.load(Relaxed))
    }
}

/// Everything the subscriber tasks share with the controller.
struct Shared {
    target: Arc<Target>,
    base: Instant,
    /// `base` on the wall clock, in nanoseconds since the Unix epoch: the one
    /// clock the load processes of a cluster run share.
    wall_base: u64,
    slots: Box<[Slot]>,
    /// The tag of the probe being watched for (0: none).
    probe: AtomicU64,
    /// The event id whose arrival ends the burst (0: none).
    target_id: AtomicU64,
    /// Why the first stream that could not go on was lost.
    first_loss: std::sync::Mutex<Option<String>>,
}

impl Shared {
    /// Now, as nanoseconds since `base` plus one (so 0 can mean "never").
    fn stamp(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64 + 1
    }

    /// A stamp on the wall clock.
    fn wall(&self, stamp: u64) -> u64 {
        self.wall_base + stamp.saturating_sub(1)
    }

    /// The latest event id any live stream has seen.
    fn latest_id(&self) -> u64 {
        self.live()
            .map(|s| s.last_id.load(Relaxed))
            .max()
            .unwrap_or(0)
    }

    /// Marks `slot` lost, keeping the reason if it is the first.
    fn lose(&self, slot: &Slot, why: impl FnOnce() -> String) {
        slot.lost.store(true, Relaxed);
        let mut first = self
            .first_loss
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        first.get_or_insert_with(why);
    }

    fn live(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().filter(|s| !s.lost.load(Relaxed))
    }
}

/// The load processes of one run against a cluster, one per node, all on this
/// machine: they meet at named steps through files in a directory they share,
/// each leaving a JSON payload for the others. A run against one server is a
/// cluster of one, whose meetings return at once.
struct Cluster {
    /// `None` for a cluster of one.
    dir: Option<PathBuf>,
    size: usize,
    /// This process's number; number 0, the prober, sends the probes.
    index: usize,
}

impl Cluster {
    fn of(args: &Args) -> Result<Cluster> {
        let Some(dir) = &args.cluster_dir else {
            return Ok(Cluster {
                dir: None,
                size: 1,
                index: 0,
            });
        };
        let (size, index) = (args.cluster_size as usize, args.cluster_index as usize);
        if index >= size {
            bail!("--cluster-index {index} must be below --cluster-size {size}");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Cluster {
            dir: Some(dir.clone()),
            size,
            index,
        })
    }

    fn is_prober(&self) -> bool {
        self.index == 0
    }

    fn is_many(&self) -> bool {
        self.size > 1
    }

    /// Leaves `payload` at `step` and returns everyone's, in process order,
    /// once all have arrived; fails if one of them has given up.
    async fn meet(&self, step: &str, payload: Value) -> Result<Vec<Value>> {
        let Some(dir) = &self.dir else {
            return Ok(vec![payload]);
        };
        let path = |index: usize| dir.join(format!("{step}.{index}.json"));
        // Written aside and renamed, so that no one reads half of it.
        let aside = dir.join(format!(".{step}.{}.json", self.index));
        std::fs::write(&aside, serde_json::to_vec(&payload)?)
            .and_then(|()| std::fs::rename(&aside, path(self.index)))
            .with_context(|| format!("cannot write {}", path(self.index).display()))?;
        let mut all: Vec<Option<Value>> = vec![None; self.size];
        let deadline = Instant::now() + MEET_TIMEOUT;
        loop {
            for (index, slot) in all.iter_mut().enumerate() {
                if slot.is_none() {
                    *slot = match std::fs::read(path(index)) {
                        Ok(bytes) => Some(serde_json::from_slice(&bytes)?),
                        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
                        Err(err) => return Err(err.into()),
                    };
                }
            }
            if all.iter().all(Option::is_some) {
                return Ok(all.into_iter().flatten().collect());
            }
            for index in 0..self.size {
                if let Ok(why) = std::fs::read_to_string(dir.join(format!("failed.{index}"))) {
                    bail!("load process {index} failed: {}", why.trim());
                }
            }
            if Instant::now() > deadline {
                let late: Vec<usize> = (0..self.size).filter(|&i| all[i].is_none()).collect();
                bail!("load processes {late:?} did not reach {step:?} within {MEET_TIMEOUT:?}");
            }
            tokio::time::sleep(MEET_POLL).await;
        }
    }

    /// Tells the others that this process has failed, so they stop waiting.
    fn give_up(&self, why: &str) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::write(dir.join(format!("failed.{}", self.index)), why);
        }
    }

    /// How this process signs what it prints to stderr.
    fn who(&self) -> String {
        if self.is_many() {
            format!("lobby-load {}/{}", self.index, self.size)
        } else {
            "lobby-load".to_owned()
        }
    }
}

/// One subscriber's stream: the body decoder and the SSE check.
struct Stream {
    decoder: wire::Decoder,
    parser: sse::Parser,
}

impl Stream {
    /// Reads more of the stream; `Ok(true)` once the body has ended.
    fn feed(&mut self, bytes: &[u8], probe: u64) -> Result<bool, &'static str> {
        let parser = &mut self.parser;
        self.decoder
            .feed(bytes, &mut |piece| parser.feed(piece, probe))?;
        Ok(self.decoder.is_done())
    }
}

/// Opens GET /events for `token` (resuming after `last_id` if given) and feeds
/// what came with the response head to `stream`. Returns the connection.
async fn open_events(
    target: &Target,
    source: usize,
    token: &str,
    last_id: Option<u64>,
    buf: &mut [u8],
    parser: sse::Parser,
) -> Result<(TcpStream, Stream, u64)> {
    let conn = target
        .connect(source)
        .await
        .context("connect for GET /events")?;
    write_all(&conn, &target.events_request(token, last_id)).await?;
    let mut end = 0;
    let (head, len) = loop {
        if let Some(found) = wire::parse_head(&buf[..end]).map_err(|e| anyhow!(e))? {
            break found;
        }
        if end == buf.len() {
            bail!("GET /events: response head too long");
        }
        let n = read_some(&conn, &mut buf[end..]).await?;
        if n == 0 {
            bail!("GET /events: the server closed the connection");
        }
        end += n;
    };
    if head.status != 200 {
        bail!(
            "GET /events answered {}: {}",
            head.status,
            String::from_utf8_lossy(&buf[len..end.min(len + 300)])
        );
    }
    let mut stream = Stream {
        decoder: wire::Decoder::new(head.framing),
        parser,
    };
    stream
        .feed(&buf[len..end], 0)
        .map_err(|e| anyhow!("GET /events: {e}"))?;
    Ok((conn, stream, (end - len) as u64))
}

thread_local! {
    /// One read buffer per runtime thread, shared by every subscriber it runs:
    /// an idle subscriber holds no buffer at all.
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; STREAM_BUFFER].into_boxed_slice());
}

/// Follows one subscriber's stream until aborted, reopening it with
/// `Last-Event-ID` (as a browser would) when the server ends it.
async fn follow(
    shared: Arc<Shared>,
    index: usize,
    token: String,
    mut conn: TcpStream,
    mut stream: Stream,
) {
    let slot = &shared.slots[index];
    loop {
        let ended = read_until_end(&shared, slot, &conn, &mut stream).await;
        if let Err(Some(why)) = ended {
            // Garbled framing: reconnecting would not make it right.
            shared.lose(slot, || why.to_string());
            return;
        }
        let resumes = slot.resumes.fetch_add(1, Relaxed) + 1;
        if resumes > MAX_RESUMES {
            shared.lose(slot, || format!("ended more than {MAX_RESUMES} times"));
            return;
        }
        let mut buf = vec![0; 16 * 1024];
        let last = stream.parser.tally.last_id;
        let parser = std::mem::take(&mut stream.parser).reconnected();
        match open_events(&shared.target, index, &token, last, &mut buf, parser).await {
            Ok((new_conn, new_stream, _)) => (conn, stream) = (new_conn, new_stream),
            Err(err) => {
                shared.lose(slot, || format!("reopening failed: {err:#}"));
                return;
            }
        }
    }
}

/// Reads until the server ends the stream: `Err(None)` for a close or I/O
/// error, `Err(Some(_))` for a framing error.
async fn read_until_end(
    shared: &Shared,
    slot: &Slot,
    conn: &TcpStream,
    stream: &mut Stream,
) -> Result<(), Option<&'static str>> {
    loop {
        conn.readable().await.map_err(|_| None)?;
        let ended = READ_BUF.with_borrow_mut(|buf| {
            let probe = shared.probe.load(Relaxed);
            let mut ended = false;
            let mut read = false;
            loop {
                match conn.try_read(buf) {
                    Ok(0) => {
                        ended = true;
                        break;
                    }
                    Ok(n) => {
                        read = true;
                        if stream.feed(&buf[..n], probe).map_err(Some)? {
                            ended = true;
                            break;
                        }
                        if n < buf.len() {
                            break;
                        }
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        ended = true;
                        break;
                    }
                }
            }
            if read {
                let target = shared.target_id.load(Relaxed);
                slot.record(&stream.parser.tally, shared.stamp(), target);
            }
            Ok::<bool, Option<&'static str>>(ended)
        })?;
        if ended {
            return Err(None);
        }
    }
}

/// Totals from the ramp workers.
#[derive(Default)]
struct RampTotals {
    join_wait: Duration,
    subscribe_wait: Duration,
    reply_bytes: u64,
    snapshot_bytes: u64,
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
            let joined = conn.join(&format!("load-{index}")).await?;
            let subscribing = Instant::now();
            let (tcp, mut stream, mut bytes) = open_events(
                &shared.target,
                index,
                &joined.token,
                None,
                &mut buf,
                sse::Parser::default(),
            )
            .await?;
            while stream.parser.tally.snapshots == 0 {
                let n = read_some(&tcp, &mut buf).await?;
                if n == 0 {
                    bail!("GET /events ended before its existing_users event");
                }
                bytes += n as u64;
                stream
                    .feed(&buf[..n], 0)
                    .map_err(|e| anyhow!("GET /events: {e}"))?;
            }
            shared.slots[index].record(&stream.parser.tally, shared.stamp(), 0);
            totals.join_wait += subscribing - started;
            totals.subscribe_wait += subscribing.elapsed();
            totals.reply_bytes += joined.bytes;
            totals.snapshot_bytes += bytes;
            Ok((joined.token, tcp, stream))
        };
        let (token, tcp, stream) = tokio::time::timeout(STEP_TIMEOUT, step)
            .await
            .map_err(|_| {
                anyhow!("subscriber {index}: join + subscribe took over {STEP_TIMEOUT:?}")
            })?
            .with_context(|| format!("subscriber {index}"))?;
        followers.push(tokio::spawn(follow(
            shared.clone(),
            index,
            token,
            tcp,
            stream,
        )));
        done.fetch_add(1, Relaxed);
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
        let max = shared
            .live()
            .map(|s| s.last_id.load(Relaxed))
            .max()
            .unwrap_or(0);
        let behind = shared
            .live()
            .filter(|s| s.last_id.load(Relaxed) < max)
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
async fn settle_all(
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

/// Polls until `seen` is set on every slot whose stream is not lost (a lost
/// one never will be; it is counted missing) or `deadline` passes.
async fn wait_for_all(shared: &Shared, seen: impl Fn(&Slot) -> bool, deadline: Instant) {
    while Instant::now() < deadline && !shared.live().all(&seen) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Nearest-rank percentiles of latencies in nanoseconds, as milliseconds.
struct Spread {
    p50: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
    missing: usize,
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
struct Sightings {
    /// When each subscriber saw the probe join, and leave: wall-clock
    /// nanoseconds since the Unix epoch, 0 for never.
    joined: Vec<u64>,
    left: Vec<u64>,
    /// When the probe's join and leave were sent, on the same clock (from the
    /// prober only).
    sent: Option<(u64, u64)>,
}

/// One load process's fan-out latencies in nanoseconds, over all the probes.
#[derive(Debug, Default, Clone)]
struct Samples {
    joins: Vec<u64>,
    joins_missing: usize,
    leaves: Vec<u64>,
    leaves_missing: usize,
}

impl Samples {
    fn add(&mut self, seen: &Sightings, (join_sent, leave_sent): (u64, u64)) {
        for (arrivals, sent, latencies, missing) in [
            (
                &seen.joined,
                join_sent,
                &mut self.joins,
                &mut self.joins_missing,
            ),
            (
                &seen.left,
                leave_sent,
                &mut self.leaves,
                &mut self.leaves_missing,
            ),
        ] {
            for &at in arrivals {
                match at {
                    0 => *missing += 1,
                    at => latencies.push(at.saturating_sub(sent)),
                }
            }
        }
    }

    /// Every process's samples as one.
    fn pooled(all: &[Samples]) -> Samples {
        let mut pool = Samples::default();
        for one in all {
            pool.joins.extend_from_slice(&one.joins);
            pool.joins_missing += one.joins_missing;
            pool.leaves.extend_from_slice(&one.leaves);
            pool.leaves_missing += one.leaves_missing;
        }
        pool
    }

    fn spreads(&self) -> (Spread, Spread) {
        (
            Spread::of(self.joins.clone(), self.joins_missing),
            Spread::of(self.leaves.clone(), self.leaves_missing),
        )
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
    let mut conn = Conn::new(shared.target.clone(), usize::MAX / 2);
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
            let joined = conn.join(&format!("probe-{tag:016x}")).await?;
            // The probe listens too, like any user; its stream ends when it leaves.
            let drain = tokio::spawn(drain(shared.target.clone(), joined.token.clone()));
            probe = Some((sent, joined.token, drain));
        }
        let seen_by_all = |sighting: fn(&Slot) -> &Sighting| {
            let deadline = Instant::now() + timeout;
            wait_for_all(shared, move |s| sighting(s).of(tag).is_some(), deadline)
        };
        seen_by_all(|s| &s.probe_joined).await;
        // The leave goes out once every process's subscribers have the join.
        cluster
            .meet(&format!("probe-{k}-joined"), Value::Null)
            .await?;
        let mut sent = None;
        let mut drained = None;
        if let Some((join_sent, token, drain)) = probe {
            let leave_sent = shared.stamp();
            let left = conn.leave(&token).await;
            if left.is_err() {
                drain.abort();
            }
            left.context("the probe's leave")?;
            sent = Some((shared.wall(join_sent), shared.wall(leave_sent)));
            drained = Some(drain);
        }
        seen_by_all(|s| &s.probe_left).await;
        if let Some(drain) = drained {
            drain.abort();
        }
        let arrivals = |sighting: fn(&Slot) -> &Sighting| {
            shared
                .slots
                .iter()
                .map(|s| sighting(s).of(tag).map_or(0, |at| shared.wall(at)))
                .collect()
        };
        let mine = Sightings {
            joined: arrivals(|s| &s.probe_joined),
            left: arrivals(|s| &s.probe_left),
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

/// Holds a stream open for `token`, reading and discarding it.
async fn drain(target: Arc<Target>, token: String) {
    let Ok(conn) = target.connect(usize::MAX / 2).await else {
        return;
    };
    if write_all(&conn, &target.events_request(&token, None))
        .await
        .is_err()
    {
        return;
    }
    let mut buf = vec![0; STREAM_BUFFER];
    while matches!(read_some(&conn, &mut buf).await, Ok(n) if n > 0) {}
}

/// How one load process's part of a burst went, on the wall clock
/// (nanoseconds since the Unix epoch).
#[derive(Debug, Serialize, Deserialize)]
struct Burst {
    /// When its first join went out.
    sent: u64,
    /// When its last request was answered.
    answered: u64,
    /// When the last of its streams had every event of the burst (`None`:
    /// some never did).
    done: Option<u64>,
    /// Its streams that never had every event.
    missing: usize,
    errors: Vec<String>,
}

impl Burst {
    fn time(&self) -> Option<Duration> {
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
    let barrier = Arc::new(tokio::sync::Barrier::new(BURST_CONNECTIONS));
    let sent = shared.stamp();
    let workers: Vec<_> = (0..BURST_CONNECTIONS)
        .map(|worker| {
            let (target, barrier) = (shared.target.clone(), barrier.clone());
            let numbers = numbers.clone();
            tokio::spawn(async move {
                let mut conn = Conn::new(target, worker);
                let mut errors = Vec::new();
                let mut tokens = Vec::new();
                for n in numbers.iter().skip(worker).step_by(BURST_CONNECTIONS) {
                    match conn.join(&format!("burst-{n}")).await {
                        Ok(joined) => tokens.push(joined.token),
                        Err(err) => errors.push(format!("{err:#}")),
                    }
                }
                barrier.wait().await;
                for token in tokens {
                    if let Err(err) = conn.leave(&token).await {
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
    wait_for_all(
        shared,
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

/// The results: figures in order, rendered as a table or as JSON.
struct Report {
    rows: Vec<(Cow<'static, str>, Cow<'static, str>, Value, &'static str)>,
    failed: bool,
    failures: Vec<String>,
}

impl Report {
    fn add(
        &mut self,
        key: impl Into<Cow<'static, str>>,
        label: impl Into<Cow<'static, str>>,
        value: impl Into<Value>,
        unit: &'static str,
    ) {
        self.rows
            .push((key.into(), label.into(), value.into(), unit));
    }

    fn fail(&mut self, why: String) {
        self.failed = true;
        self.failures.push(why);
    }

    fn json(&self) -> Value {
        let mut object = serde_json::Map::new();
        for (key, _, value, _) in &self.rows {
            object.insert(key.to_string(), value.clone());
        }
        object.insert("ok".into(), Value::Bool(!self.failed));
        object.insert("failures".into(), json!(self.failures));
        Value::Object(object)
    }

    fn table(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|(_, l, _, _)| l.len())
            .max()
            .unwrap_or(0);
        let mut out = format!("{:width$}  value\n", "figure");
        for (_, label, value, unit) in &self.rows {
            let value = match value {
                Value::Null => "n/a".to_owned(),
                Value::String(s) => s.clone(),
                other => format!("{other} {unit}").trim_end().to_owned(),
            };
            out.push_str(&format!("{label:width$}  {value}\n"));
        }
        out.push_str(&format!(
            "{:width$}  {}\n",
            "result",
            if self.failed { "FAILED" } else { "ok" }
        ));
        out
    }
}

/// Rounds to 3 decimals, or null.
fn num(value: Option<f64>) -> Value {
    value.map_or(Value::Null, |v| json!((v * 1000.0).round() / 1000.0))
}

fn secs(duration: Duration) -> Value {
    num(Some(duration.as_secs_f64()))
}

fn own_cpu_s(ticks: f64) -> Option<f64> {
    server::cpu_ticks(std::process::id()).map(|t| t as f64 / ticks)
}

/// Now on the wall clock, in nanoseconds since the Unix epoch.
fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

/// The rows of a fan-out, their keys and labels after the prefixes given
/// (empty for this process's own).
fn fan_out_rows(report: &mut Report, (key, label): (&str, &str), joins: &Spread, leaves: &Spread) {
    for (what, spread) in [("join", joins), ("leave", leaves)] {
        report.add(
            format!("{key}fanout_{what}_p50_ms"),
            format!("{label}fan-out of a {what}, p50"),
            num(spread.p50),
            "ms",
        );
        report.add(
            format!("{key}fanout_{what}_p99_ms"),
            format!("{label}fan-out of a {what}, p99"),
            num(spread.p99),
            "ms",
        );
        report.add(
            format!("{key}fanout_{what}_max_ms"),
            format!("{label}fan-out of a {what}, max"),
            num(spread.max),
            "ms",
        );
        report.add(
            format!("{key}fanout_{what}_missing"),
            format!("{label}fan-out of a {what}, missing"),
            spread.missing,
            "",
        );
    }
}

/// What the rows of a burst say, for one load process or for the cluster.
struct BurstFigures<'a> {
    /// All the joins of the burst (as many leaves follow).
    joins: usize,
    time: Option<Duration>,
    deliveries: u64,
    /// The server's and the load generator's CPU seconds, for one process.
    cpu: Option<(Value, Value)>,
    missing: usize,
    errors: &'a [String],
}

/// The rows of a burst, their keys and labels after the prefixes given; fails
/// the report if a stream or a request did.
fn burst_rows(report: &mut Report, (key, label): (&str, &str), burst: &BurstFigures) {
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

/// What the prober of a cluster run gathers from every load process, in
/// process order, for the cluster's figures.
#[derive(Default)]
struct Gathered {
    samples: Vec<Samples>,
    bursts: Vec<Burst>,
    /// Where the processes' latest event ids still differed after settling.
    disagreements: Vec<String>,
}

impl Gathered {
    fn note_ids(&mut self, when: &str, ids: &[u64]) {
        if ids.iter().any(|&id| id != ids[0]) {
            self.disagreements.push(format!("{when}: {ids:?}"));
        }
    }
}

/// The prober's rows for the whole cluster run, from what it gathered and
/// every load process's own report (`reports`, in process order).
fn cluster_rows(report: &mut Report, args: &Args, gathered: &Gathered, reports: &[Value]) {
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
        let (joins, leaves) = Samples::pooled(&gathered.samples).spreads();
        fan_out_rows(report, ("cluster_", "cluster: "), &joins, &leaves);
        let by_node = |pick: fn(&Spread) -> Option<f64>| {
            let each: Vec<String> = gathered
                .samples
                .iter()
                .map(|s| pick(&s.spreads().0).map_or("n/a".to_owned(), |ms| format!("{ms:.3}")))
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

async fn run(args: &Args, cluster: &Cluster) -> Result<Report> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("raise the open file limit")?;
    let n = args.subscribers as usize;
    let needed = n as u64 + u64::from(args.concurrency) + BURST_CONNECTIONS as u64 + 64;
    if needed > limit {
        bail!("{n} subscribers need about {needed} open files, but this process may open {limit}");
    }
    let target = Arc::new(Target::from_url(&args.url, args.sources).await?);
    let pid = args.pid.or_else(|| server::find_pid(target.addr.port()));
    let who = cluster.who();
    if pid.is_none() {
        eprintln!("{who}: no server process found (pass --pid): memory and CPU are not measured");
    }
    let ticks = server::ticks_per_second();
    let server_cpu = || pid.and_then(server::cpu_ticks).map(|t| t as f64 / ticks);
    let (base, wall_base) = (Instant::now(), wall_clock_ns());
    let shared = Arc::new(Shared {
        target: target.clone(),
        base,
        wall_base,
        slots: (0..n).map(|_| Slot::default()).collect(),
        probe: AtomicU64::new(0),
        target_id: AtomicU64::new(0),
        first_loss: std::sync::Mutex::new(None),
    });
    let mut report = Report {
        rows: Vec::new(),
        failed: false,
        failures: Vec::new(),
    };
    report.add("url", "server", args.url.clone(), "");
    report.add("pid", "server pid", pid, "");
    report.add("subscribers", "subscribers", n, "");
    // What only the prober of a cluster run needs, for the cluster's figures.
    let mut gathered = Gathered::default();

    // Ramp (in a cluster run, every process's at once).
    cluster.meet("start", Value::Null).await?;
    let rss_before = pid.and_then(server::rss_kib);
    let (server_cpu_0, own_cpu_0) = (server_cpu(), own_cpu_s(ticks));
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
    gathered.note_ids("after the ramp", &ids);
    let (server_cpu_1, own_cpu_1) = (server_cpu(), own_cpu_s(ticks));
    let rss_after = pid.and_then(server::rss_kib);
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
        num(server_cpu_0.zip(server_cpu_1).map(|(a, b)| b - a)),
        "s",
    );
    report.add(
        "ramp_loader_cpu_s",
        "ramp: load generator CPU",
        num(own_cpu_0.zip(own_cpu_1).map(|(a, b)| b - a)),
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

    // Fan-out of one join and one leave.
    let (server_cpu_0, own_cpu_0) = (server_cpu(), own_cpu_s(ticks));
    let probed = fan_out(&shared, cluster, args.probes as usize, args.timeout).await;
    let (server_cpu_1, own_cpu_1) = (server_cpu(), own_cpu_s(ticks));
    match probed {
        Ok(samples) => {
            let (joins, leaves) = samples[cluster.index].spreads();
            fan_out_rows(&mut report, ("", ""), &joins, &leaves);
            // Both sides share the machine: a fan-out cannot be faster than the
            // load generator can read N sockets, so show what each spent.
            report.add(
                "fanout_server_cpu_s",
                "fan-out: server CPU, join + leave",
                num(server_cpu_0.zip(server_cpu_1).map(|(a, b)| b - a)),
                "s",
            );
            report.add(
                "fanout_loader_cpu_s",
                "fan-out: load generator CPU, join + leave",
                num(own_cpu_0.zip(own_cpu_1).map(|(a, b)| b - a)),
                "s",
            );
            if joins.missing + leaves.missing > 0 {
                report.fail(format!(
                    "fan-out: {} joins and {} leaves never arrived within {:?}",
                    joins.missing, leaves.missing, args.timeout
                ));
            }
            gathered.samples = samples;
        }
        // The others would wait for this process at the next step.
        Err(err) if cluster.is_many() => return Err(err.context("fan-out")),
        Err(err) => report.fail(format!("fan-out: {err:#}")),
    }

    // Burst (in a cluster run, each process sends its share on its node).
    if args.burst > 0 {
        let (_, _, ids) = settle_all(&shared, cluster, "burst-settled").await?;
        gathered.note_ids("before the burst", &ids);
        let latest = ids.iter().copied().max().unwrap_or(0);
        let numbers = (cluster.index..args.burst).step_by(cluster.size).collect();
        let (server_cpu_0, own_cpu_0) = (server_cpu(), own_cpu_s(ticks));
        let result = burst(
            &shared,
            numbers,
            latest + 2 * args.burst as u64,
            args.timeout.max(Duration::from_secs(60)),
        )
        .await;
        let (server_cpu_1, own_cpu_1) = (server_cpu(), own_cpu_s(ticks));
        burst_rows(
            &mut report,
            ("", ""),
            &BurstFigures {
                joins: args.burst,
                time: result.time(),
                deliveries: n as u64 * 2 * args.burst as u64,
                cpu: Some((
                    num(server_cpu_0.zip(server_cpu_1).map(|(a, b)| b - a)),
                    num(own_cpu_0.zip(own_cpu_1).map(|(a, b)| b - a)),
                )),
                missing: result.missing,
                errors: &result.errors,
            },
        );
        let all = cluster
            .meet("burst-done", serde_json::to_value(&result)?)
            .await?;
        gathered.bursts = all
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>()?;
    }

    // Idle CPU.
    let (_, _, ids) = settle_all(&shared, cluster, "idle-settled").await?;
    gathered.note_ids("before the idle period", &ids);
    let before = pid.and_then(server::cpu_ticks);
    tokio::time::sleep(args.idle).await;
    let after = pid.and_then(server::cpu_ticks);
    let idle = args.idle.as_secs_f64();
    report.add("idle_s", "idle: measured over", num(Some(idle)), "s");
    report.add(
        "idle_cpu_percent",
        "idle: server CPU, % of one core",
        num(before
            .zip(after)
            .filter(|_| idle > 0.0)
            .map(|(a, b)| (b - a) as f64 / ticks / idle * 100.0)),
        "%",
    );
    // What an idle subscriber costs: measured once the N streams have sat
    // idle, when what the ramp needed only for a moment (megabyte join replies
    // and snapshots) has been handed back by the allocator.
    let rss_idle = pid.and_then(server::rss_kib);
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

    // Correctness, over the whole run.
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

    // Every process keeps its streams open until all are done: a closed
    // stream goes offline, and every node's streams would hear of it.
    let reports = cluster.meet("end", report.json()).await?;
    if cluster.is_many() && cluster.is_prober() {
        cluster_rows(&mut report, args, &gathered, &reports);
    }
    close(followers).await;
    Ok(report)
}

/// Closes every subscriber's connection (the server takes them offline after its grace).
async fn close(followers: Vec<JoinHandle<()>>) {
    for follower in &followers {
        follower.abort();
    }
    for follower in followers {
        let _ = follower.await;
    }
}

#[cfg(test)]
mod tests {
    use super::sse::{Parser, Tally, find_newline, probe_tag};
    use super::wire::{Decoder, Framing, JoinScan, parse_head};
    use super::{Cluster, Samples, Sightings};
    use serde_json::{Value, json};

    /// `size` load processes meeting in a fresh directory.
    fn cluster_of(size: usize) -> Vec<Cluster> {
        let dir = std::env::temp_dir().join(format!(
            "lobby-load-test-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        (0..size)
            .map(|index| Cluster {
                dir: Some(dir.clone()),
                size,
                index,
            })
            .collect()
    }

    #[tokio::test]
    async fn processes_that_meet_each_get_every_payload_in_process_order() {
        let cluster = cluster_of(3);
        std::fs::create_dir_all(cluster[0].dir.as_ref().expect("a dir")).expect("a temp dir");
        let met = futures_util::future::join_all(
            cluster
                .iter()
                .rev()
                .map(|c| c.meet("step", json!(c.index * 10))),
        )
        .await;
        let _ = std::fs::remove_dir_all(cluster[0].dir.as_ref().expect("a dir"));
        for all in met {
            assert_eq!(
                all.expect("everyone came"),
                [json!(0), json!(10), json!(20)]
            );
        }
    }

    #[tokio::test]
    async fn a_meeting_ends_in_an_error_once_another_process_has_given_up() {
        let cluster = cluster_of(2);
        std::fs::create_dir_all(cluster[0].dir.as_ref().expect("a dir")).expect("a temp dir");
        cluster[1].give_up("no server");
        let err = cluster[0]
            .meet("step", Value::Null)
            .await
            .expect_err("process 1 is gone");
        let _ = std::fs::remove_dir_all(cluster[0].dir.as_ref().expect("a dir"));
        assert!(err.to_string().contains("load process 1 failed: no server"));
    }

    #[test]
    fn fan_out_samples_count_from_the_send_and_count_who_never_saw_it() {
        let seen = Sightings {
            joined: vec![1_005, 0, 1_002],
            left: vec![2_001, 2_003, 2_009],
            sent: None,
        };
        let mut samples = Samples::default();
        samples.add(&seen, (1_000, 2_000));
        assert_eq!(
            (samples.joins, samples.joins_missing),
            (vec![5, 2], 1),
            "joins"
        );
        assert_eq!(
            (samples.leaves, samples.leaves_missing),
            (vec![1, 3, 9], 0),
            "leaves"
        );
    }

    fn decode_in_pieces(framing: Framing, body: &[u8], piece: usize) -> (Vec<u8>, bool) {
        let mut decoder = Decoder::new(framing);
        let mut out = Vec::new();
        for part in body.chunks(piece) {
            decoder
                .feed(part, &mut |bytes| out.extend_from_slice(bytes))
                .expect("valid body");
        }
        (out, decoder.is_done())
    }

    #[test]
    fn a_chunked_body_decodes_the_same_however_it_is_split() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n";
        for piece in 1..wire.len() {
            let (body, done) = decode_in_pieces(Framing::Chunked, wire, piece);
            assert_eq!(body, b"hello, world", "split every {piece} bytes");
            assert!(done);
        }
    }

    #[test]
    fn a_content_length_body_stops_at_its_length_and_leaves_the_rest() {
        let mut decoder = Decoder::new(Framing::Length(3));
        let mut out = Vec::new();
        let used = decoder
            .feed(b"abcHTTP/1.1", &mut |b| out.extend_from_slice(b))
            .expect("valid");
        assert_eq!(
            (used, out.as_slice(), decoder.is_done()),
            (3, &b"abc"[..], true)
        );
    }

    #[test]
    fn a_chunk_longer_than_its_size_is_an_error() {
        let mut decoder = Decoder::new(Framing::Chunked);
        assert!(decoder.feed(b"2\r\nabc\r\n", &mut |_| {}).is_err());
    }

    #[test]
    fn a_head_gives_status_framing_and_length() {
        let bytes = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nrest";
        let (head, len) = parse_head(bytes).expect("valid").expect("complete");
        assert_eq!(
            (head.status, head.framing, head.close),
            (200, Framing::Chunked, false)
        );
        assert_eq!(&bytes[len..], b"rest");
        assert!(
            parse_head(b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n")
                .expect("valid")
                .is_none()
        );
        let (head, _) = parse_head(b"HTTP/1.1 204 No Content\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(head.framing, Framing::Length(0));
    }

    #[test]
    fn a_join_reply_gives_its_top_level_id_and_token_not_a_users_id() {
        let reply =
            br#"{"users":[{"id":"nested","name":"x\"y"}],"id":"top","name":"a","token":"secret"}"#;
        for piece in 1..reply.len() {
            let mut scan = JoinScan::default();
            reply.chunks(piece).for_each(|p| scan.feed(p));
            assert_eq!(scan.id.as_deref(), Some("top"), "split every {piece} bytes");
            assert_eq!(scan.token.as_deref(), Some("secret"));
        }
    }

    #[test]
    fn newlines_are_found_at_every_offset() {
        for len in 0..40 {
            for at in 0..len {
                let mut hay = vec![b'x'; len];
                hay[at] = b'\n';
                assert_eq!(find_newline(&hay), Some(at));
            }
            assert_eq!(find_newline(&vec![b'x'; len]), None);
        }
    }

    fn parse(stream: &[u8], piece: usize, probe: u64) -> Tally {
        let mut parser = Parser::default();
        stream.chunks(piece).for_each(|p| parser.feed(p, probe));
        parser.tally
    }

    const SNAPSHOT: &[u8] = b"retry: 500\n\nid: 3\nevent: existing_users\ndata: {\"users\":[]}\n\n";

    #[test]
    fn consecutive_events_after_a_snapshot_are_clean_however_split() {
        let mut stream = SNAPSHOT.to_vec();
        stream.extend_from_slice(
            b":\n\nid: 4\r\nevent: new_user\r\ndata: {\"id\":\"u\",\"name\":\"a\"}\r\n\r\n",
        );
        stream.extend_from_slice(
            b"id: 5\nevent: disconnect_user\ndata: {\"id\":\"u\",\"name\":\"a\"}\n\n",
        );
        for piece in 1..stream.len() {
            let tally = parse(&stream, piece, 0);
            let expected = Tally {
                last_id: Some(5),
                snapshots: 1,
                events: 2,
                ..Tally::default()
            };
            assert_eq!(tally, expected, "split every {piece} bytes");
        }
    }

    #[test]
    fn a_gap_a_repeat_and_a_decrease_are_each_counted() {
        let mut stream = SNAPSHOT.to_vec();
        for id in [5, 5, 4] {
            stream
                .extend_from_slice(format!("id: {id}\nevent: new_user\ndata: {{}}\n\n").as_bytes());
        }
        let tally = parse(&stream, 7, 0);
        assert_eq!((tally.gaps, tally.repeats, tally.decreases), (1, 1, 1));
    }

    #[test]
    fn a_long_snapshot_line_split_across_reads_is_skipped_whole() {
        let users = "{\"id\":\"x\",\"name\":\"n\"},".repeat(5000);
        let mut stream =
            format!("id: 9\nevent: existing_users\ndata: {{\"users\":[{users}]}}\n\n").into_bytes();
        stream.extend_from_slice(b"id: 10\nevent: new_user\ndata: {}\n\n");
        let tally = parse(&stream, 4096, 0);
        assert_eq!(
            (tally.last_id, tally.snapshots, tally.events, tally.gaps),
            (Some(10), 1, 1, 0)
        );
    }

    #[test]
    fn a_reconnect_drops_a_half_read_event_and_resumes_after_the_last_id() {
        let mut parser = Parser::default();
        parser.feed(SNAPSHOT, 0);
        parser.feed(b"id: 4\nevent: new_user\ndata: {\"na", 0);
        let mut parser = parser.reconnected();
        parser.feed(b"retry: 500\n\nid: 4\nevent: new_user\ndata: {}\n\n", 0);
        let tally = parser.tally;
        assert_eq!(
            (tally.last_id, tally.events, tally.gaps, tally.repeats),
            (Some(4), 1, 0, 0)
        );
    }

    #[test]
    fn the_probe_is_recognised_by_the_tag_in_its_name() {
        let mut stream = SNAPSHOT.to_vec();
        stream.extend_from_slice(
            b"id: 4\nevent: new_user\ndata: {\"id\":\"u\",\"name\":\"probe-00000000000000ab\"}\n\n",
        );
        assert_eq!(parse(&stream, 5, 0xab).joined_probe, 0xab);
        assert_eq!(parse(&stream, 5, 0xac).joined_probe, 0);
        assert_eq!(probe_tag(b"{\"name\":\"probe-00000000000000ab2\"}"), None);
    }
}
