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
    /// Open HTTP connections.
    pub http_connections: AtomicU64,
}

impl Telemetry {
    pub fn grpc_call_done(&self, method: &'static str, code: &'static str) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        *self.grpc_calls.lock().entry((method, code)).or_default() += 1;
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
        let mut sample = ProcessSample::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // The command name may hold spaces and parentheses: fields are
            // counted from the last ')'.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let fields: Vec<&str> = rest.split_whitespace().collect();
                // After ')': state(0) ... utime(11) stime(12) ... num_threads(17)
                let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
                let ticks = field(11).unwrap_or(0) + field(12).unwrap_or(0);
                sample.cpu_seconds = ticks as f64 / USER_HZ;
                sample.threads = field(17).unwrap_or(0);
            }
        }
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
            let pages: u64 = statm
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            sample.resident_bytes = pages * page_size();
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            sample.open_fds = dir.count() as u64;
        }
        sample
    }
}

fn page_size() -> u64 {
    // The kernel's page size shows in /proc/self/smaps' KernelPageSize; 4 KiB
    // is right for every target we build, and reading smaps costs more.
    4096
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
        let dropped: u64 = stats.closed_by_reason.iter().sum::<u64>()
            - stats.closed(crate::hub::CloseReason::ClientClosed);
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
            m("subscribers_dropped", dropped as f64),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::HubConfig;

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
                "subscribers_dropped"
            ]
        );
        assert!(batch[1].value > 1e6);
        assert!(batch[2].value > 0.0);
    }
}
