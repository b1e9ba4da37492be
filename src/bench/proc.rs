//! What `/proc` says about another process (the server under test): its
//! resident memory, threads and open files. The same readings as
//! [`crate::metrics::ProcessSample`], for any pid.

use std::time::{Duration, Instant};

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    pub resident_bytes: u64,
    pub threads: u64,
    pub open_fds: u64,
}

impl Footprint {
    /// Reads `/proc/<pid>`; `None` when the process is gone or unreadable.
    pub fn of(pid: u32) -> Option<Footprint> {
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
        Some(Footprint {
            resident_bytes: parse_statm_resident(&statm)?,
            threads: parse_stat_threads(&stat)?,
            open_fds: fds,
        })
    }

    /// Reads until two readings `quiet` apart agree on threads and files
    /// (the server has finished reacting), or `limit` passes.
    pub fn settled(pid: u32, quiet: Duration, limit: Duration) -> Option<Footprint> {
        let deadline = Instant::now() + limit;
        let mut last = Footprint::of(pid)?;
        loop {
            std::thread::sleep(quiet);
            let now = Footprint::of(pid)?;
            if (now.threads, now.open_fds) == (last.threads, last.open_fds)
                || Instant::now() >= deadline
            {
                return Some(now);
            }
            last = now;
        }
    }

    /// Reads until threads and files are back to `baseline` or `limit`
    /// passes; returns the last reading and how long that took.
    pub fn back_to(
        pid: u32,
        baseline: Footprint,
        limit: Duration,
    ) -> Option<(Footprint, Duration)> {
        let started = Instant::now();
        loop {
            let now = Footprint::of(pid)?;
            let back = now.threads <= baseline.threads && now.open_fds <= baseline.open_fds;
            if back || started.elapsed() >= limit {
                return Some((now, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "resident_bytes": self.resident_bytes,
            "threads": self.threads,
            "open_fds": self.open_fds,
        })
    }
}

/// The kernel's page size: 4 KiB on every target streamhub builds for.
const PAGE: u64 = 4096;

/// Resident bytes from `/proc/<pid>/statm` (second field, in pages).
pub fn parse_statm_resident(statm: &str) -> Option<u64> {
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * PAGE)
}

/// `num_threads` from `/proc/<pid>/stat`. The command name may hold spaces
/// and parentheses, so fields are counted from the last `)`.
pub fn parse_stat_threads(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(17)?.parse().ok()
}

/// The soft limit on open files of this process (`ulimit -n`).
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    soft.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(
            parse_statm_resident("5000 1234 300 10 0 900 0\n"),
            Some(1234 * 4096)
        );
        assert_eq!(parse_statm_resident(""), None);
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 9 0 100 200 300";
        assert_eq!(parse_stat_threads(stat), Some(9));
        assert_eq!(parse_stat_threads("42 (x"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = Footprint::of(std::process::id()).unwrap();
        assert!(me.resident_bytes > 1 << 20, "{me:?}");
        assert!(me.threads >= 1 && me.open_fds >= 3, "{me:?}");
        assert!(open_files_limit().unwrap() >= 64);
        assert_eq!(Footprint::of(u32::MAX), None);
    }
}
