//! The server process, seen through /proc: found by the port it listens on,
//! and measured (resident memory, its peak, CPU time) beside this process's
//! own CPU time, since both share the machine.

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

/// A `kB` line of /proc/PID/status: `VmRSS` (resident now) or `VmHWM` (the
/// most it has been resident at once).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| {
        l.strip_prefix(field)
            .is_some_and(|rest| rest.starts_with(':'))
    })?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User plus system CPU time, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
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
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// What the phases read of the server process (when it was found) and of
/// this one.
pub struct Meter {
    pid: Option<u32>,
    /// Clock ticks per second, for CPU times.
    ticks: f64,
}

/// CPU seconds used so far by the server and by this process.
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    server: Option<f64>,
    loader: Option<f64>,
}

impl Meter {
    pub fn new(pid: Option<u32>) -> Meter {
        Meter {
            pid,
            ticks: ticks_per_second(),
        }
    }

    /// The server's resident memory now, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        self.pid.and_then(|pid| status_kib(pid, "VmRSS"))
    }

    /// The most the server has held resident at once so far, in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.pid.and_then(|pid| status_kib(pid, "VmHWM"))
    }

    pub fn cpu(&self) -> Cpu {
        let seconds = |pid: u32| cpu_ticks(pid).map(|t| t as f64 / self.ticks);
        Cpu {
            server: self.pid.and_then(seconds),
            loader: seconds(std::process::id()),
        }
    }
}

impl Cpu {
    /// The server's and this process's CPU seconds from `before` to this.
    pub fn since(self, before: Cpu) -> (Option<f64>, Option<f64>) {
        let spent = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| b - a);
        (
            spent(before.server, self.server),
            spent(before.loader, self.loader),
        )
    }
}
