//! `streamhub-bench unary`: SendMessage as fast as the server answers, with a fixed
//! number of calls in flight spread over N connections (like `h2load -c N
//! -m M`). Each call in flight is a thread of its own making blocking calls
//! one after another on its connection (the h2c client multiplexes them),
//! so every call's latency is its own, however the answers interleave.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::proc::Usage;
use super::report::{row, Progress, Report};
use super::stats::{self, Histogram};
use super::{grpc, secs};
use streamhub::config::RawArgs;
use streamhub::error::Error;
use streamhub::grpc::call::{Code, Status};
use streamhub::grpc::h2::client::{decode, CallOptions};
use streamhub::proto::chat;

/// Most calls in flight: each is a thread.
pub const MAX_CONCURRENCY: u64 = 20_000;
/// Stack of a caller thread (encoding and decoding small messages).
const CALLER_STACK: usize = 128 * 1024;

/// What to run.
#[derive(Clone, Debug)]
pub struct UnaryPlan {
    pub server: String,
    pub connections: usize,
    pub concurrency: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub size: usize,
    pub room: String,
    pub user: String,
    pub timeout: Duration,
    pub server_pid: Option<u32>,
    pub progress: bool,
}

impl UnaryPlan {
    pub fn from_raw(raw: &RawArgs) -> Result<UnaryPlan, Error> {
        let connections = raw.number("connections", 1, 10_000)? as usize;
        let concurrency = raw.number("concurrency", 1, MAX_CONCURRENCY)? as usize;
        if concurrency < connections {
            return Err(Error::Config(format!(
                "--concurrency {concurrency} is less than --connections {connections}: \
                 every connection needs a call in flight"
            )));
        }
        Ok(UnaryPlan {
            server: raw.string("server"),
            connections,
            concurrency,
            duration: secs(raw, "duration-secs", 1)?,
            warmup: secs(raw, "warmup-secs", 0)?,
            size: raw.number("size", 1, 64 << 20)? as usize,
            room: raw.string("room"),
            user: raw.string("user"),
            timeout: secs(raw, "timeout-secs", 1)?,
            server_pid: super::server_pid(raw)?,
            progress: !raw.switch("quiet"),
        })
    }
}

/// What was measured.
#[derive(Clone, Debug)]
pub struct UnaryResult {
    pub plan: UnaryPlan,
    /// Calls that succeeded within the measured window.
    pub ok: u64,
    /// Failed calls within the window, by status name.
    pub errors: BTreeMap<String, u64>,
    /// Length of the measured window.
    pub window: Duration,
    /// Latency of the successful calls, in microseconds.
    pub latency: Histogram,
    /// What the measured window cost the server (with `--server-pid`) and
    /// this process.
    pub server_usage: Option<Usage>,
    pub client_usage: Option<Usage>,
}

impl UnaryResult {
    pub fn requests_per_sec(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64().max(1e-9)
    }

    pub fn report(&self) -> Report {
        let p = &self.plan;
        let l = self.latency.summary();
        let errors: u64 = self.errors.values().sum();
        let mut report = Report::new(
            format!(
                "unary SendMessage to {}: {} connections, {} in flight, {} bytes, {:?}",
                p.server, p.connections, p.concurrency, p.size, p.duration
            ),
            serde_json::json!({
                "scenario": "unary",
                "server": p.server,
                "connections": p.connections,
                "concurrency": p.concurrency,
                "size": p.size,
                "duration_secs": stats::secs(self.window),
                "ok": self.ok,
                "errors": self.errors,
                "requests_per_sec": self.requests_per_sec().round(),
                "latency": l.to_json(),
                "server_cost": self.server_usage.map(|u| u.per(self.ok + errors)),
                "client_cost": self.client_usage.map(|u| u.per(self.ok + errors)),
            }),
        );
        report.section(
            "throughput",
            vec![
                row("requests ok", self.ok),
                row("errors", errors),
                row("requests/s", stats::rate(self.requests_per_sec())),
            ],
        );
        report.section(
            "latency",
            vec![
                row("p50", stats::micros(l.p50)),
                row("p90", stats::micros(l.p90)),
                row("p99", stats::micros(l.p99)),
                row("p99.9", stats::micros(l.p999)),
                row("max", stats::micros(l.max)),
            ],
        );
        let mut cost = Vec::new();
        if let Some(u) = self.server_usage {
            cost.push(row("server", u.per_text(self.ok + errors)));
        }
        if let Some(u) = self.client_usage {
            cost.push(row("load tool", u.per_text(self.ok + errors)));
        }
        if !cost.is_empty() {
            report.section("cost per request", cost);
        }
        if !self.errors.is_empty() {
            report.section(
                "errors by status",
                self.errors.iter().map(|(k, v)| row(k, v)).collect(),
            );
        }
        report
    }
}

/// Counts shared with the progress line.
#[derive(Default)]
struct Live {
    done: AtomicU64,
    failed: AtomicU64,
}

/// Runs the plan.
pub fn run(plan: &UnaryPlan) -> Result<UnaryResult, Error> {
    let content = "x".repeat(plan.size);
    let request = grpc::encode(&grpc::send_request(&plan.room, &plan.user, content));
    let options = grpc::options(Some(plan.timeout));
    // One call first: a server that is not there is an error, not a run
    // full of UNAVAILABLE.
    let first = grpc::Connection::new(&plan.server, plan.timeout);
    send(&first, &request, &options).map_err(|e| {
        Error::Io(format!(
            "SendMessage to {} failed: {}: {}",
            plan.server,
            grpc::error_name(&e),
            e.message
        ))
    })?;
    drop(first);
    let connections: Vec<Arc<grpc::Connection>> = (0..plan.connections)
        .map(|_| Arc::new(grpc::Connection::new(&plan.server, plan.timeout)))
        .collect();
    let started = Instant::now();
    let measure_from = started + plan.warmup;
    let end = measure_from + plan.duration;
    let live = Arc::new(Live::default());
    let stop = Arc::new(AtomicBool::new(false));
    let request = Arc::new(request);
    let mut workers = Vec::new();
    // Call k goes to connection k % connections: the shares differ by at
    // most one.
    for k in 0..plan.concurrency {
        let connection = connections[k % plan.connections].clone();
        let (request, options) = (request.clone(), options.clone());
        let (thread_live, thread_stop) = (live.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("bench-unary-{k}"))
            .stack_size(CALLER_STACK)
            .spawn(move || {
                caller(
                    &connection,
                    &request,
                    &options,
                    (measure_from, end),
                    &thread_live,
                    &thread_stop,
                )
            });
        match spawned {
            Ok(handle) => workers.push(handle),
            Err(e) => {
                stop.store(true, Ordering::Release);
                return Err(Error::Io(format!("cannot start a load thread: {e}")));
            }
        }
    }
    let mut progress = Progress::new(plan.progress);
    let mut usage_from: Option<(Option<Usage>, Option<Usage>)> = None;
    while Instant::now() < end {
        if usage_from.is_none() && Instant::now() >= measure_from {
            usage_from = Some((plan.server_pid.and_then(Usage::of), Usage::own()));
        }
        std::thread::sleep(Duration::from_millis(100).min(end - Instant::now()));
        progress.tick(|| {
            let done = live.done.load(Ordering::Relaxed);
            let rate = done as f64 / started.elapsed().as_secs_f64();
            format!(
                "{done} calls ({}/s), {} failed",
                stats::rate(rate),
                live.failed.load(Ordering::Relaxed)
            )
        });
    }
    progress.done();
    let (server_from, client_from) = usage_from.unwrap_or_default();
    let server_usage = plan
        .server_pid
        .and_then(Usage::of)
        .zip(server_from)
        .map(|(now, from)| now.since(&from));
    let client_usage = Usage::own()
        .zip(client_from)
        .map(|(now, from)| now.since(&from));
    let mut result = UnaryResult {
        plan: plan.clone(),
        ok: 0,
        errors: BTreeMap::new(),
        window: plan.duration,
        latency: Histogram::new(),
        server_usage,
        client_usage,
    };
    for worker in workers {
        let part = worker
            .join()
            .map_err(|_| Error::Io("a load thread panicked".into()))?;
        result.ok += part.ok;
        result.latency.merge(&part.latency);
        for (code, n) in part.errors {
            *result.errors.entry(code).or_default() += n;
        }
    }
    Ok(result)
}

/// One caller's share of the load.
struct Part {
    ok: u64,
    errors: BTreeMap<String, u64>,
    latency: Histogram,
}

/// One SendMessage (the connection made again if it was lost).
fn send(
    connection: &grpc::Connection,
    request: &[u8],
    options: &CallOptions,
) -> Result<chat::SendMessageResponse, Status> {
    let channel = connection.channel()?;
    let response = channel.unary(grpc::chat_paths::SEND_MESSAGE, request, options)?;
    decode(&response)
}

/// Runs on `bench-unary-N`: one call after another until `end`.
fn caller(
    connection: &grpc::Connection,
    request: &[u8],
    options: &CallOptions,
    (measure_from, end): (Instant, Instant),
    live: &Live,
    stop: &AtomicBool,
) -> Part {
    let mut part = Part {
        ok: 0,
        errors: BTreeMap::new(),
        latency: Histogram::new(),
    };
    loop {
        let started = Instant::now();
        if started >= end || stop.load(Ordering::Acquire) {
            return part;
        }
        let result = send(connection, request, options);
        let now = Instant::now();
        live.done.fetch_add(1, Ordering::Relaxed);
        let counted = now >= measure_from && now <= end;
        match result {
            Ok(_) if counted => {
                part.ok += 1;
                part.latency.record((now - started).as_micros() as u64);
            }
            Ok(_) => {}
            Err(e) => {
                live.failed.fetch_add(1, Ordering::Relaxed);
                if counted {
                    *part.errors.entry(grpc::error_name(&e)).or_default() += 1;
                }
                if e.code == Code::Unavailable {
                    // No spin while the server is away.
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}
