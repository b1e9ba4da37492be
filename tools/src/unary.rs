//! `streamhub-bench unary`: SendMessage as fast as the server answers, with a fixed
//! number of calls in flight spread over N connections (like `h2load -c N
//! -m M`). One thread per connection keeps its share of calls in flight on
//! it (the h2c client starts a call without waiting for it) and takes the
//! answers as they come: it waits on the oldest call (streamhub answers a
//! connection's calls in order) and then looks at all of them, so a
//! wake-up may end many calls; each call's latency is taken when its end
//! is seen.

use std::collections::{BTreeMap, VecDeque};
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
use streamhub::grpc::h2::client::{decode, CallOptions, Recv, Stream};
use streamhub::proto::chat;

/// Most calls in flight.
pub const MAX_CONCURRENCY: u64 = 1_000_000;
/// How long a connection's thread waits on its oldest call before it
/// looks at the others (and at the clock) again.
const CALL_WAIT: Duration = Duration::from_millis(20);

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
    for (c, connection) in connections.into_iter().enumerate() {
        // Spread the calls so the shares differ by at most one.
        let share = plan.concurrency / plan.connections
            + usize::from(c < plan.concurrency % plan.connections);
        let (request, options) = (request.clone(), options.clone());
        let (thread_live, thread_stop) = (live.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("bench-unary-{c}"))
            .spawn(move || {
                let mut conn = ConnectionLoad {
                    connection: &connection,
                    request: &request,
                    options: &options,
                    share,
                    measure_from,
                    end,
                    live: &thread_live,
                    stop: &thread_stop,
                    part: Part::default(),
                };
                conn.run();
                conn.part
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

/// One connection's share of the load.
#[derive(Default)]
struct Part {
    ok: u64,
    errors: BTreeMap<String, u64>,
    latency: Histogram,
}

/// One SendMessage, blocking (the connection made again if it was lost).
fn send(
    connection: &grpc::Connection,
    request: &[u8],
    options: &CallOptions,
) -> Result<chat::SendMessageResponse, Status> {
    let channel = connection.channel()?;
    let response = channel.unary(grpc::chat_paths::SEND_MESSAGE, request, options)?;
    decode(&response)
}

/// A call in flight: a unary call is a stream of one response.
struct Call {
    stream: Stream,
    started: Instant,
    response: Option<Vec<u8>>,
    /// Responses received: one, or the call failed.
    responses: usize,
}

impl Call {
    /// Takes what one wait gave; `Some` once the call is over.
    fn take(&mut self, got: Recv) -> Option<Result<(), Status>> {
        match got {
            Recv::Message(m) => {
                self.responses += 1;
                self.response = Some(m);
                None
            }
            Recv::TimedOut => None,
            Recv::Ended(s) if s.code != Code::Ok => Some(Err(s)),
            Recv::Ended(_) if self.responses != 1 => Some(Err(Status::new(
                Code::Internal,
                format!("{} response messages to a unary call", self.responses),
            ))),
            Recv::Ended(_) => {
                let bytes = self.response.take().unwrap_or_default();
                Some(decode::<chat::SendMessageResponse>(&bytes).map(drop))
            }
        }
    }

    /// The call's end if it is there, without waiting.
    fn poll(&mut self) -> Option<Result<(), Status>> {
        loop {
            match self.stream.recv_timeout(Duration::ZERO) {
                Recv::TimedOut => return None,
                got => {
                    if let Some(end) = self.take(got) {
                        return Some(end);
                    }
                }
            }
        }
    }
}

/// Runs on `bench-unary-N`: keeps `share` calls in flight on one
/// connection until `end`, then lets the last ones finish.
struct ConnectionLoad<'a> {
    connection: &'a grpc::Connection,
    request: &'a [u8],
    options: &'a CallOptions,
    share: usize,
    measure_from: Instant,
    end: Instant,
    live: &'a Live,
    stop: &'a AtomicBool,
    part: Part,
}

impl ConnectionLoad<'_> {
    fn run(&mut self) {
        let mut in_flight: VecDeque<Call> = VecDeque::with_capacity(self.share);
        loop {
            self.fill(&mut in_flight);
            if in_flight.is_empty() {
                if Instant::now() >= self.end || self.stop.load(Ordering::Acquire) {
                    return;
                }
                // Not one call could start: the server is away.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            // The oldest first: its answer is due first.
            let oldest = in_flight.front_mut().expect("not empty");
            let got = oldest.stream.recv_timeout(CALL_WAIT);
            let mut ended = Vec::new();
            if let Some(end) = oldest.take(got) {
                let call = in_flight.pop_front().expect("not empty");
                ended.push((call.started, end));
            }
            // Whatever else ended meanwhile.
            let mut i = 0;
            while i < in_flight.len() {
                match in_flight[i].poll() {
                    Some(end) => {
                        let call = in_flight.remove(i).expect("in range");
                        ended.push((call.started, end));
                    }
                    None => i += 1,
                }
            }
            let now = Instant::now();
            for (started, end) in ended {
                self.count(started, now, end);
            }
        }
    }

    /// Starts calls until `share` are in flight (none after `end`).
    fn fill(&mut self, in_flight: &mut VecDeque<Call>) {
        while in_flight.len() < self.share {
            let started = Instant::now();
            if started >= self.end || self.stop.load(Ordering::Acquire) {
                return;
            }
            let opened = self.connection.channel().and_then(|channel| {
                channel.server_streaming(grpc::chat_paths::SEND_MESSAGE, self.request, self.options)
            });
            match opened {
                Ok(stream) => in_flight.push_back(Call {
                    stream,
                    started,
                    response: None,
                    responses: 0,
                }),
                Err(status) => {
                    self.count(started, Instant::now(), Err(status));
                    // The connection is gone or full: wait for answers.
                    return;
                }
            }
        }
    }

    fn count(&mut self, started: Instant, now: Instant, end: Result<(), Status>) {
        self.live.done.fetch_add(1, Ordering::Relaxed);
        let counted = now >= self.measure_from && now <= self.end;
        match end {
            Ok(()) if counted => {
                self.part.ok += 1;
                self.part.latency.record((now - started).as_micros() as u64);
            }
            Ok(()) => {}
            Err(e) => {
                self.live.failed.fetch_add(1, Ordering::Relaxed);
                if counted {
                    *self.part.errors.entry(grpc::error_name(&e)).or_default() += 1;
                }
            }
        }
    }
}
