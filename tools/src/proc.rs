//! What `/proc` says about another process (the server under test): its
//! resident memory, threads and open files (through
//! [`streamhub::metrics::ProcessSample::of`]), and its CPU time and context
//! switches.

use std::time::{Duration, Instant};

use streamhub::metrics::{parse_stat_cpu_ticks, ProcessSample};

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
        let sample = ProcessSample::of(pid)?;
        Some(Footprint {
            resident_bytes: sample.resident_bytes,
            threads: sample.threads,
            open_fds: sample.open_fds,
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

    /// Reads until threads and files are back within `slack` of
    /// `baseline`, or `limit` passes; returns the last reading and how long
    /// that took.
    pub fn back_to(
        pid: u32,
        baseline: Footprint,
        slack: u64,
        limit: Duration,
    ) -> Option<(Footprint, Duration)> {
        let started = Instant::now();
        loop {
            let now = Footprint::of(pid)?;
            let back = now.threads <= baseline.threads + slack
                && now.open_fds <= baseline.open_fds + slack;
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

/// CPU time and context switches of a process so far: the difference of
/// two readings says what a stretch of work cost it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// User plus system time of all its threads, living and ended.
    pub cpu_secs: f64,
    /// Voluntary and involuntary switches of its living threads.
    pub context_switches: u64,
}

impl Usage {
    pub fn of(pid: u32) -> Option<Usage> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let mut switches = 0;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
                switches += parse_status_switches(&status);
            }
        }
        Some(Usage {
            cpu_secs: parse_stat_cpu_ticks(&stat)? as f64 / USER_HZ,
            context_switches: switches,
        })
    }

    /// This process.
    pub fn own() -> Option<Usage> {
        Usage::of(std::process::id())
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Usage) -> Usage {
        Usage {
            cpu_secs: (self.cpu_secs - earlier.cpu_secs).max(0.0),
            context_switches: self
                .context_switches
                .saturating_sub(earlier.context_switches),
        }
    }

    /// CPU microseconds and context switches per unit of `work`, as JSON.
    pub fn per(&self, work: u64) -> serde_json::Value {
        let work = work.max(1) as f64;
        serde_json::json!({
            "cpu_secs": (self.cpu_secs * 100.0).round() / 100.0,
            "context_switches": self.context_switches,
            "cpu_us_per_op": (self.cpu_secs * 1e6 / work * 10.0).round() / 10.0,
            "context_switches_per_op": (self.context_switches as f64 / work * 100.0).round() / 100.0,
        })
    }

    /// The same as a table cell.
    pub fn per_text(&self, work: u64) -> String {
        let work = work.max(1) as f64;
        format!(
            "{:.1} us CPU, {:.2} context switches ({:.1} CPU-s in all)",
            self.cpu_secs * 1e6 / work,
            self.context_switches as f64 / work,
            self.cpu_secs
        )
    }
}

/// Linux reports CPU time in ticks of `USER_HZ`: 100 on every target.
const USER_HZ: f64 = 100.0;

/// Voluntary plus involuntary context switches from a task's `status`.
pub fn parse_status_switches(status: &str) -> u64 {
    status
        .lines()
        .filter(|l| {
            l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches")
        })
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
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
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t40\nnonvoluntary_ctxt_switches:\t2\n";
        assert_eq!(parse_status_switches(status), 42);
    }

    #[test]
    fn reads_this_process() {
        let me = Footprint::of(std::process::id()).unwrap();
        assert!(me.resident_bytes > 1 << 20, "{me:?}");
        assert!(me.threads >= 1 && me.open_fds >= 3, "{me:?}");
        assert!(open_files_limit().unwrap() >= 64);
        assert_eq!(Footprint::of(u32::MAX), None);
        let before = Usage::own().unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(30) {
            std::hint::black_box(started.elapsed());
        }
        let mine =
            || parse_status_switches(&std::fs::read_to_string("/proc/thread-self/status").unwrap());
        let switches_before = mine();
        std::thread::sleep(Duration::from_millis(5));
        let spent = Usage::own().unwrap().since(&before);
        assert!(spent.cpu_secs > 0.0, "{spent:?}");
        // This thread's own count: the process's sums living threads, and a
        // thread of an earlier test ending in between takes its switches
        // with it.
        assert!(mine() > switches_before, "a sleep is a switch");
    }
}
