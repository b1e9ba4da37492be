//! Counters kept by the front doors and real measurements of this process,
//! read from `/proc`. Both StreamMetrics (gRPC) and the HTTP metrics
//! endpoints report from here, so they always agree.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::hub::Hub;

/// Linux reports CPU time in clock ticks of `USER_HZ`, which is 100 on every
/// architecture streamhub targets (x86_64, arm64, armv7).
const USER_HZ: f64 = 100.0;

/// Counters shared by the gRPC and HTTP front doors.
#[derive(Default)]
pub struct Telemetry {
    /// Calls and requests completed, of any kind and outcome.
    completed: AtomicU64,
    /// gRPC calls by (method, status code name).
    grpc_calls: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// HTTP responses by status code.
    http_responses: Mutex<BTreeMap<u16, u64>>,
    /// gRPC connections ended for flooding, by kind of flood.
    grpc_floods: Mutex<BTreeMap<&'static str, u64>>,
}

impl Telemetry {
    pub fn grpc_call_done(&self, method: &'static str, code: &'static str) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        *self.grpc_calls.lock().entry((method, code)).or_default() += 1;
    }

    pub fn grpc_flood(&self, kind: &'static str) {
        *self.grpc_floods.lock().entry(kind).or_default() += 1;
    }

    pub fn grpc_floods(&self) -> Vec<(&'static str, u64)> {
        self.grpc_floods
            .lock()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    pub fn http_response(&self, status: u16) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        *self.http_responses.lock().entry(status).or_default() += 1;
    }

    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    pub fn grpc_calls(&self) -> Vec<((&'static str, &'static str), u64)> {
        self.grpc_calls
            .lock()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    pub fn http_responses(&self) -> Vec<(u16, u64)> {
        self.http_responses
            .lock()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }
}

/// What `/proc/self` says about this process right now.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessSample {
    /// User plus system CPU time since start.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub threads: u64,
    pub open_fds: u64,
}

impl ProcessSample {
    /// Reads `/proc/self`; fields it cannot read stay 0.
    pub fn now() -> ProcessSample {
        ProcessSample::of(std::process::id()).unwrap_or_default()
    }

    /// Reads `/proc/<pid>` (the load tool watches the server with this);
    /// `None` when the process is gone or unreadable.
    pub fn of(pid: u32) -> Option<ProcessSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
        Some(ProcessSample {
            cpu_seconds: parse_stat_cpu_ticks(&stat)? as f64 / USER_HZ,
            resident_bytes: parse_statm_resident(&statm)?,
            threads: parse_stat_threads(&stat)?,
            open_fds: fds as u64,
        })
    }
}

/// The kernel's page size: 4 KiB on every target streamhub builds for
/// (reading smaps for KernelPageSize would cost more than it tells).
const PAGE: u64 = 4096;

/// The fields of `/proc/<pid>/stat` after the command name, which may hold
/// spaces and parentheses: they are counted from the last `)`.
fn stat_fields(stat: &str) -> Option<impl Iterator<Item = &str>> {
    Some(stat.rsplit_once(')')?.1.split_whitespace())
}

/// utime + stime (fields 14 and 15 of `/proc/<pid>/stat`), in ticks.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat_fields(stat)?.skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `num_threads` from `/proc/<pid>/stat`.
pub fn parse_stat_threads(stat: &str) -> Option<u64> {
    stat_fields(stat)?.nth(17)?.parse().ok()
}

/// Resident bytes from `/proc/<pid>/statm` (second field, in pages).
pub fn parse_statm_resident(statm: &str) -> Option<u64> {
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * PAGE)
}

/// The interval rule of both metrics streams (StreamMetrics and
/// `/metrics/events`): 0 means the default of one second, at most an hour.
pub fn stream_interval(seconds: i64) -> Result<Duration, crate::error::Error> {
    match seconds {
        0 => Ok(Duration::from_secs(1)),
        n @ 1..=3600 => Ok(Duration::from_secs(n as u64)),
        n => Err(bad_interval(n)),
    }
}

/// The refusal of an interval outside [`stream_interval`]'s rule, showing
/// what the client sent (a number, or text that is not one).
pub fn bad_interval(sent: impl std::fmt::Display) -> crate::error::Error {
    crate::error::Error::InvalidArgument(format!(
        "interval_seconds must be a whole number from 0 to 3600, got {sent}"
    ))
}

/// One named measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub name: &'static str,
    pub value: f64,
    pub timestamp: SystemTime,
}

/// Turns two samples an interval apart into the StreamMetrics batch.
pub struct MetricsSampler {
    last: ProcessSample,
    last_completed: u64,
    last_at: Instant,
}

impl MetricsSampler {
    pub fn new(telemetry: &Telemetry) -> MetricsSampler {
        MetricsSampler {
            last: ProcessSample::now(),
            last_completed: telemetry.completed(),
            last_at: Instant::now(),
        }
    }

    /// Measures since the previous call (or since `new`).
    pub fn sample(&mut self, hub: &Hub, telemetry: &Telemetry) -> Vec<Measurement> {
        let now = ProcessSample::now();
        let completed = telemetry.completed();
        let elapsed = self
            .last_at
            .elapsed()
            .max(Duration::from_millis(1))
            .as_secs_f64();
        let cpu = (now.cpu_seconds - self.last.cpu_seconds).max(0.0) / elapsed * 100.0;
        let rps = completed.saturating_sub(self.last_completed) as f64 / elapsed;
        self.last = now;
        self.last_completed = completed;
        self.last_at = Instant::now();
        let stats = hub.stats();
        let dropped = stats.closed.by_server();
        let timestamp = SystemTime::now();
        let m = |name, value| Measurement {
            name,
            value,
            timestamp,
        };
        vec![
            m("cpu_usage", cpu),
            m("memory_usage", now.resident_bytes as f64),
            m("requests_per_second", rps),
            m("subscribers", stats.subscribers as f64),
            m("rooms", stats.rooms as f64),
            m("messages_published", stats.published as f64),
            m("messages_delivered", stats.delivered as f64),
            m("subscribers_dropped", dropped as f64),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::HubConfig;

    #[test]
    fn stream_interval_defaults_zero_and_caps_at_an_hour() {
        assert_eq!(stream_interval(0), Ok(Duration::from_secs(1)));
        assert_eq!(stream_interval(3600), Ok(Duration::from_secs(3600)));
        for bad in [-1, 3601] {
            let e = stream_interval(bad).unwrap_err().to_string();
            assert!(e.starts_with("interval_seconds must be"), "{e}");
        }
    }

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
        assert_eq!(parse_stat_cpu_ticks(stat), Some(11));
        assert!(ProcessSample::of(u32::MAX).is_none());
    }

    #[test]
    fn process_sample_reads_real_values() {
        let s = ProcessSample::now();
        assert!(s.resident_bytes > 1024 * 1024, "{s:?}");
        assert!(s.threads >= 1);
        assert!(s.open_fds >= 3);
    }

    #[test]
    fn sampler_reports_every_metric_and_rates() {
        let hub = Hub::new(HubConfig::default());
        let telemetry = Telemetry::default();
        let mut sampler = MetricsSampler::new(&telemetry);
        for _ in 0..10 {
            telemetry.http_response(200);
        }
        // Burn a little CPU so cpu_usage is measurably above zero.
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        let batch = sampler.sample(&hub, &telemetry);
        let names: Vec<_> = batch.iter().map(|m| m.name).collect();
        assert_eq!(
            names,
            vec![
                "cpu_usage",
                "memory_usage",
                "requests_per_second",
                "subscribers",
                "rooms",
                "messages_published",
                "messages_delivered",
                "subscribers_dropped"
            ]
        );
        assert!(batch[1].value > 1e6);
        assert!(batch[2].value > 0.0);
    }
}
