//! `streamhub-bench hold`: opens N idle streams, keeps them open for a while, and
//! (with `--server-pid`) reads what they cost the server: resident memory,
//! threads and open files before, while held, and after closing.
//!
//! Held streams need no thread here: a few opener threads open them and
//! hand the sockets (SSE) or calls (gRPC) back to the main thread, which
//! only keeps them. So this process holds 10,000 SSE streams with 10,000
//! file descriptors and a few threads; gRPC streams share connections,
//! each with its reader thread (the h2c client's).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::http::{self, HttpUrl};
use super::proc::Footprint;
use super::report::{row, Progress, Report};
use super::sse::{EventStream, OpenError};
use super::stats;
use super::{grpc, secs};
use streamhub::config::RawArgs;
use streamhub::error::Error;
use streamhub::grpc::call::Code;
use streamhub::grpc::h2::client::{Channel, Recv, Stream};

/// Longest wait for the server to release closed streams.
const RELEASE_LIMIT: Duration = Duration::from_secs(40);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Sse,
}

impl Protocol {
    pub fn parse(text: &str) -> Result<Protocol, Error> {
        match text {
            "grpc" => Ok(Protocol::Grpc),
            "sse" => Ok(Protocol::Sse),
            other => Err(Error::Config(format!(
                "--protocol: expected grpc or sse, got '{other}'"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Sse => "sse",
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct HoldPlan {
    pub protocol: Protocol,
    pub server: String,
    pub sse_url: String,
    pub streams: usize,
    pub room: String,
    /// gRPC connections; 0: one per 200 streams.
    pub connections: usize,
    pub duration: Duration,
    pub server_pid: Option<u32>,
    pub openers: usize,
    pub timeout: Duration,
    pub progress: bool,
}

impl HoldPlan {
    pub fn from_raw(raw: &RawArgs) -> Result<HoldPlan, Error> {
        let protocol = Protocol::parse(&raw.string("protocol"))?;
        let sse_url = raw.string("sse-url");
        if protocol == Protocol::Sse {
            HttpUrl::parse(&sse_url).map_err(|e| Error::Config(format!("--sse-url: {e}")))?;
        }
        let server_pid = super::server_pid(raw)?;
        Ok(HoldPlan {
            protocol,
            server: raw.string("server"),
            sse_url,
            streams: raw.number("streams", 1, 10_000_000)? as usize,
            room: raw.string("room"),
            connections: raw.number("connections", 0, 100_000)? as usize,
            duration: secs(raw, "duration-secs", 0)?,
            server_pid,
            openers: raw.number("openers", 1, 1024)? as usize,
            timeout: secs(raw, "timeout-secs", 1)?,
            progress: !raw.switch("quiet"),
        })
    }
}

impl HoldPlan {
    pub fn grpc_connections(&self) -> usize {
        match self.connections {
            0 => self.streams.div_ceil(200),
            n => n,
        }
    }

    /// File descriptors this process opens, roughly.
    pub fn sockets(&self) -> usize {
        64 + match self.protocol {
            Protocol::Sse => self.streams,
            Protocol::Grpc => grpc::FDS_PER_CONNECTION * self.grpc_connections(),
        }
    }
}

/// What was measured.
#[derive(Clone, Debug)]
pub struct HoldResult {
    pub plan: HoldPlan,
    pub opened: usize,
    pub open_errors: BTreeMap<String, u64>,
    pub open_time: Duration,
    /// Streams still open when the hold ended.
    pub alive_at_end: usize,
    /// The server before opening, at the end of the hold, and after closing.
    pub before: Option<Footprint>,
    pub held: Option<Footprint>,
    pub after: Option<Footprint>,
    /// How long the server took to get back (within 1% of the streams) to
    /// its thread and file count after the streams closed (at most 40 s).
    pub release_time: Option<Duration>,
}

impl HoldResult {
    /// Resident bytes, threads and files per open stream.
    pub fn per_stream(&self) -> Option<(f64, f64, f64)> {
        let (before, held) = (self.before?, self.held?);
        let n = self.opened.max(1) as f64;
        Some((
            (held.resident_bytes as f64 - before.resident_bytes as f64) / n,
            (held.threads as f64 - before.threads as f64) / n,
            (held.open_fds as f64 - before.open_fds as f64) / n,
        ))
    }

    pub fn report(&self) -> Report {
        let p = &self.plan;
        let json_fp = |f: &Option<Footprint>| f.map(|f| f.to_json());
        let per_stream = self.per_stream();
        let mut report = Report::new(
            format!(
                "hold {} idle {} streams for {:?}",
                p.streams,
                p.protocol.as_str(),
                p.duration
            ),
            serde_json::json!({
                "scenario": "hold",
                "protocol": p.protocol.as_str(),
                "streams": p.streams,
                "opened": self.opened,
                "open_errors": self.open_errors,
                "open_secs": stats::secs(self.open_time),
                "alive_at_end": self.alive_at_end,
                "server_pid": p.server_pid,
                "before": json_fp(&self.before),
                "held": json_fp(&self.held),
                "after_close": json_fp(&self.after),
                "release_secs": self.release_time.map(stats::secs),
                "per_stream": per_stream.map(|(rss, threads, fds)| serde_json::json!({
                    "resident_bytes": rss.round(),
                    "threads": threads,
                    "open_fds": fds,
                })),
            }),
        );
        report.section(
            "streams",
            vec![
                row("opened", format!("{} of {}", self.opened, p.streams)),
                row("open time", format!("{:.2}s", self.open_time.as_secs_f64())),
                row("still open at the end", self.alive_at_end),
            ],
        );
        if !self.open_errors.is_empty() {
            report.section(
                "open errors",
                self.open_errors.iter().map(|(k, v)| row(k, v)).collect(),
            );
        }
        if let (Some(before), Some(held)) = (self.before, self.held) {
            let fp = |f: Footprint| {
                format!(
                    "{} resident, {} threads, {} fds",
                    stats::bytes(f.resident_bytes as i64),
                    f.threads,
                    f.open_fds
                )
            };
            let mut rows = vec![row("before", fp(before)), row("holding", fp(held))];
            if let (Some(after), Some(took)) = (self.after, self.release_time) {
                rows.push(row(
                    "after closing",
                    format!("{} (after {:.1}s)", fp(after), took.as_secs_f64()),
                ));
            }
            if let Some((rss, threads, fds)) = per_stream {
                rows.push(row(
                    "per stream",
                    format!(
                        "{} resident, {threads:.2} threads, {fds:.2} fds",
                        stats::bytes(rss.round() as i64)
                    ),
                ));
            }
            report.section(
                &format!("server (pid {})", p.server_pid.unwrap_or_default()),
                rows,
            );
        }
        report
    }
}

/// One held stream.
enum Held {
    Sse(Box<EventStream>),
    Grpc(Stream),
}

impl Held {
    /// Whether the server still has it open (without blocking).
    fn alive(&mut self) -> bool {
        match self {
            Held::Sse(stream) => stream.peek_alive(),
            Held::Grpc(stream) => loop {
                match stream.recv_timeout(Duration::ZERO) {
                    Recv::TimedOut => return true,
                    Recv::Message(_) => continue,
                    Recv::Ended(_) => return false,
                }
            },
        }
    }
}

/// Opens `count` streams on one opener thread.
fn open_share(
    plan: &HoldPlan,
    channels: &[Result<Channel, String>],
    first: usize,
    count: usize,
    opened: &AtomicU64,
) -> (Vec<Held>, BTreeMap<String, u64>) {
    let mut held = Vec::with_capacity(count);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    match plan.protocol {
        Protocol::Sse => {
            let url = match HttpUrl::parse(&http::expand(&plan.sse_url, &plan.room)) {
                Ok(url) => url,
                Err(e) => {
                    errors.insert(e, count as u64);
                    return (held, errors);
                }
            };
            for _ in 0..count {
                match EventStream::open(&url, &[], plan.timeout) {
                    Ok(stream) => {
                        held.push(Held::Sse(Box::new(stream)));
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(OpenError::Status(s)) => {
                        *errors.entry(format!("HTTP {s}")).or_default() += 1
                    }
                    Err(e) => *errors.entry(e.to_string()).or_default() += 1,
                }
            }
        }
        Protocol::Grpc => {
            // Open all, then wait for each one's first message (streamhub's
            // welcome: the subscription is registered) within the timeout.
            let request = grpc::encode(&grpc::subscribe_request(&plan.room, ""));
            let options = grpc::options(None);
            let mut pending = Vec::with_capacity(count);
            for i in first..first + count {
                let channel = match &channels[i % channels.len()] {
                    Ok(channel) => channel,
                    Err(why) => {
                        *errors.entry(format!("UNAVAILABLE ({why})")).or_default() += 1;
                        continue;
                    }
                };
                match channel.server_streaming(
                    grpc::chat_paths::SUBSCRIBE_MESSAGES,
                    &request,
                    &options,
                ) {
                    Ok(stream) => pending.push(stream),
                    Err(e) => *errors.entry(grpc::error_name(&e)).or_default() += 1,
                }
            }
            let deadline = Instant::now() + plan.timeout;
            for mut stream in pending {
                match stream.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    // No first message in time: a server without a
                    // welcome; keep it as open.
                    Recv::Message(_) | Recv::TimedOut => {
                        held.push(Held::Grpc(stream));
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                    Recv::Ended(s) if s.code == Code::Ok => {
                        *errors.entry("closed by server".into()).or_default() += 1
                    }
                    Recv::Ended(s) => *errors.entry(grpc::error_name(&s)).or_default() += 1,
                }
            }
        }
    }
    (held, errors)
}

/// Runs the plan.
pub fn run(plan: &HoldPlan) -> Result<HoldResult, Error> {
    let quiet = Duration::from_millis(300);
    let settle_limit = Duration::from_secs(10);
    let sample =
        |pid: Option<u32>| pid.and_then(|pid| Footprint::settled(pid, quiet, settle_limit));
    let before = sample(plan.server_pid);
    let mut progress = Progress::new(plan.progress);
    let channels: Vec<Result<Channel, String>> = match plan.protocol {
        Protocol::Grpc => {
            let n = plan.grpc_connections();
            grpc::connect_many(&plan.server, plan.timeout, n, |k| {
                progress.tick(|| format!("connecting: {k} of {n}"))
            })
        }
        Protocol::Sse => Vec::new(),
    };
    let clients = Arc::new(channels);
    let opened = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let openers = plan.openers.min(plan.streams);
    let mut handles = Vec::with_capacity(openers);
    for o in 0..openers {
        let first = plan.streams * o / openers;
        let count = plan.streams * (o + 1) / openers - first;
        let (plan, clients, opened) = (plan.clone(), clients.clone(), opened.clone());
        let handle = std::thread::Builder::new()
            .name(format!("bench-open-{o}"))
            .spawn(move || open_share(&plan, &clients, first, count, &opened))
            .map_err(|e| Error::Io(format!("cannot start an opener thread: {e}")))?;
        handles.push(handle);
    }
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        progress.tick(|| {
            format!(
                "opening: {} of {}",
                opened.load(Ordering::Relaxed),
                plan.streams
            )
        });
    }
    let mut held = Vec::with_capacity(plan.streams);
    let mut open_errors: BTreeMap<String, u64> = BTreeMap::new();
    for handle in handles {
        let (mut streams, errors) = handle
            .join()
            .map_err(|_| Error::Io("an opener thread panicked".into()))?;
        held.append(&mut streams);
        for (k, v) in errors {
            *open_errors.entry(k).or_default() += v;
        }
    }
    let open_time = started.elapsed();
    let hold_until = Instant::now() + plan.duration;
    while Instant::now() < hold_until {
        std::thread::sleep(Duration::from_millis(100).min(hold_until - Instant::now()));
        progress.tick(|| format!("holding {} streams", held.len()));
    }
    progress.done();
    let held_footprint = sample(plan.server_pid);
    let alive_at_end = held
        .iter_mut()
        .map(Held::alive)
        .filter(|alive| *alive)
        .count();
    let opened = held.len();
    drop(held);
    drop(clients);
    // A server may notice a closed stream only when it next writes to it
    // (an SSE keep-alive): wait a while for it to let go. Thread pools that
    // grew under the load may keep a few threads, hence the 1% slack.
    let slack = (opened as u64 / 100).max(2);
    let released = match (plan.server_pid, before) {
        (Some(pid), Some(before)) => Footprint::back_to(pid, before, slack, RELEASE_LIMIT),
        _ => None,
    };
    Ok(HoldResult {
        plan: plan.clone(),
        opened,
        open_errors,
        open_time,
        alive_at_end,
        before,
        held: held_footprint,
        after: released.map(|(f, _)| f),
        release_time: released.map(|(_, t)| t),
    })
}
