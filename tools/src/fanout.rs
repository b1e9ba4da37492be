//! `streamhub-bench fanout`: subscribers on one or more rooms, publishers sending to
//! them, and an exact account of what every subscriber received.
//!
//! Every message's content carries a [`Probe`]: run, publisher, sequence
//! number (per publisher and room) and send time. A subscriber records each
//! probe in one [`SeqTracker`] per publisher, so at the end it knows which
//! messages it lost, got twice or got out of order, and the
//! publish-to-receive latency of each. Publisher and subscribers share this
//! process's monotonic clock, so no clock synchronisation is needed.
//!
//! Flat out (`--rate 0`) with a `--window`, publishers pause while the
//! slowest live subscriber is that many messages behind: the result is the
//! highest rate every subscriber keeps up with, instead of a rate at which
//! the server must drop slow subscribers (streamhub disconnects a subscriber
//! whose queue fills up; such subscribers are reported as dropped and
//! left out of the loss count).
//!
//! Over 1,000 lines: the plan, the result's arithmetic and the SSE
//! subscriber and publisher threads of one scenario, which share private
//! state (`Shared`, `Slot`); the gRPC subscribers went to
//! `grpc_subscribers` when they became threads of many streams. It is a
//! tool, not the server; split the rest by role (plan and report / client
//! threads) the next time it grows.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::grpc_web::WebStream;
use super::http::{self, BodyFormat, HttpPublisher, HttpUrl};
use super::proc::Usage;
use super::report::{row, Progress, Report};
use super::sse::{EventStream, OpenError};
use super::stats::{self, Histogram, LatencySummary, Probe, ProbeFinder, SeqTracker};
use super::{grpc, secs};
use streamhub::config::RawArgs;
use streamhub::error::Error;
use streamhub::grpc::h2::client::{Channel, ChatClient};

mod grpc_subscribers;
use grpc_subscribers::{grpc_group, grpc_groups, GroupPlan};

/// Subscribers connecting at once: a burst of thousands would overflow the
/// server's accept backlog and wait out SYN retransmits.
const CONNECTING_AT_ONCE: usize = 64;
/// Stack of a publisher thread (serde_json for HTTP bodies).
const PUBLISHER_STACK: usize = 256 * 1024;
/// How often the window and the progress line look at the subscribers.
const PACER_TICK: Duration = Duration::from_millis(1);

/// How publishers publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishVia {
    /// SendMessage to the gRPC server.
    Grpc,
    /// POST to a URL template (`{room}` replaced).
    Http { url: String, format: BodyFormat },
}

/// What to run.
#[derive(Clone, Debug)]
pub struct FanoutPlan {
    pub grpc_subscribers: usize,
    pub sse_subscribers: usize,
    /// gRPC address, for gRPC subscribers and publishers.
    pub server: String,
    /// Event stream URL template, for SSE subscribers.
    pub sse_url: String,
    /// The "SSE" subscribers subscribe over gRPC-Web at this origin
    /// instead (`--protocol grpc-web`): a thread each, like SSE's.
    pub grpc_web_url: Option<String>,
    pub publish: PublishVia,
    pub rooms: usize,
    pub room_prefix: String,
    pub publishers: usize,
    /// Messages per second from all publishers; 0: flat out.
    pub rate: f64,
    /// Flat out: most messages the slowest subscriber may be behind (0: no
    /// limit).
    pub window: u64,
    /// Messages per publisher; 0: publish for `duration`.
    pub messages: u64,
    pub duration: Duration,
    pub size: usize,
    /// gRPC connections for the subscribers; 0: one per 100.
    pub connections: usize,
    pub drain: Duration,
    pub timeout: Duration,
    /// gRPC subscriber streams one thread of this process reads (1: a
    /// thread per stream).
    pub streams_per_thread: usize,
    pub stack: usize,
    pub server_pid: Option<u32>,
    pub progress: bool,
}

impl FanoutPlan {
    pub fn from_raw(raw: &RawArgs) -> Result<FanoutPlan, Error> {
        let subscribers = raw.number("subscribers", 1, 1_000_000)? as usize;
        let protocol = raw.string("protocol");
        let (grpc_subscribers, sse_subscribers) = match protocol.as_str() {
            "grpc" => (subscribers, 0),
            "sse" | "grpc-web" => (0, subscribers),
            other => {
                return Err(Error::Config(format!(
                    "--protocol: expected grpc, sse or grpc-web, got '{other}'"
                )))
            }
        };
        let grpc_web_url = (protocol == "grpc-web").then(|| raw.string("grpc-web-url"));
        if let Some(url) = &grpc_web_url {
            HttpUrl::parse(url).map_err(|e| Error::Config(format!("--grpc-web-url: {e}")))?;
        }
        let sse_url = raw.string("sse-url");
        if sse_subscribers > 0 && grpc_web_url.is_none() {
            HttpUrl::parse(&sse_url).map_err(|e| Error::Config(format!("--sse-url: {e}")))?;
        }
        let publish = match raw.string("publish-via").as_str() {
            "grpc" => PublishVia::Grpc,
            "http" => {
                let url = raw.string("publish-url");
                HttpUrl::parse(&url).map_err(|e| Error::Config(format!("--publish-url: {e}")))?;
                let format = match raw.string("publish-body").as_str() {
                    "json" => BodyFormat::Json,
                    "raw" => BodyFormat::Raw,
                    other => {
                        return Err(Error::Config(format!(
                            "--publish-body: expected json or raw, got '{other}'"
                        )))
                    }
                };
                PublishVia::Http { url, format }
            }
            other => {
                return Err(Error::Config(format!(
                    "--publish-via: expected grpc or http, got '{other}'"
                )))
            }
        };
        let rate: f64 = raw
            .string("rate")
            .trim()
            .parse()
            .ok()
            .filter(|r: &f64| r.is_finite() && *r >= 0.0)
            .ok_or_else(|| {
                Error::Config("--rate: expected messages per second, 0 or more".into())
            })?;
        Ok(FanoutPlan {
            grpc_subscribers,
            sse_subscribers,
            server: raw.string("server"),
            sse_url,
            grpc_web_url,
            publish,
            rooms: raw.number("rooms", 1, 100_000)? as usize,
            room_prefix: raw.string("room-prefix"),
            publishers: raw.number("publishers", 1, 10_000)? as usize,
            rate,
            window: raw.number("window", 0, u64::MAX)?,
            messages: raw.number("messages", 0, u64::MAX)?,
            duration: secs(raw, "duration-secs", 1)?,
            size: raw.number("size", 1, 64 << 20)? as usize,
            connections: raw.number("connections", 0, 100_000)? as usize,
            drain: secs(raw, "drain-secs", 0)?,
            timeout: secs(raw, "timeout-secs", 1)?,
            streams_per_thread: raw.number("streams-per-thread", 1, 100_000)? as usize,
            stack: raw.number("stack-kib", 16, 16 * 1024)? as usize * 1024,
            server_pid: super::server_pid(raw)?,
            progress: !raw.switch("quiet"),
        })
    }

    /// A plan with the CLI defaults, for callers that set fields directly
    /// (the stress tests).
    pub fn defaults() -> FanoutPlan {
        let raw = RawArgs::parse(super::FANOUT_OPTIONS, &[], |_| None).expect("defaults parse");
        FanoutPlan::from_raw(&raw).expect("defaults are valid")
    }

    pub fn subscribers(&self) -> usize {
        self.grpc_subscribers + self.sse_subscribers
    }

    /// File descriptors this process opens, roughly.
    pub fn sockets(&self) -> usize {
        let publishers = match self.publish {
            PublishVia::Grpc => grpc::FDS_PER_CONNECTION * self.publishers,
            PublishVia::Http { .. } => self.publishers,
        };
        self.sse_subscribers + grpc::FDS_PER_CONNECTION * self.grpc_connections() + publishers + 64
    }

    fn grpc_connections(&self) -> usize {
        match self.connections {
            0 => self.grpc_subscribers.div_ceil(100),
            n => n.min(self.grpc_subscribers.max(1)),
        }
    }

    pub fn room(&self, index: usize) -> String {
        format!("{}-{index}", self.room_prefix)
    }

    fn protocol_name(&self) -> &'static str {
        match (self.grpc_subscribers, self.sse_subscribers) {
            (0, _) if self.grpc_web_url.is_some() => "grpc-web",
            (_, 0) => "grpc",
            (0, _) => "sse",
            _ => "grpc+sse",
        }
    }
}

/// One subscriber's account.
#[derive(Clone, Debug)]
pub struct SubscriberResult {
    pub protocol: &'static str,
    pub room: usize,
    /// Why it could not subscribe (`HTTP 503`, `RESOURCE_EXHAUSTED`, ...).
    pub open_error: Option<String>,
    /// Why it ended before the run did; `None`: it stayed to the end.
    pub ended: Option<String>,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// A digest of the order the probes arrived in: subscribers of one room
    /// that saw the same messages in the same order have equal digests.
    pub order_digest: u64,
}

impl SubscriberResult {
    /// Subscribed and stayed connected to the end.
    pub fn kept_up(&self) -> bool {
        self.open_error.is_none() && self.ended.is_none()
    }

    fn clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0
    }
}

/// What was measured.
#[derive(Clone, Debug)]
pub struct FanoutResult {
    pub plan: FanoutPlan,
    /// Messages the server accepted, per room.
    pub published: Vec<u64>,
    pub publish_errors: BTreeMap<String, u64>,
    /// From the first publish to the last publish.
    pub publish_time: Duration,
    /// From the first publish to the last delivery.
    pub delivery_time: Duration,
    pub deliveries: u64,
    /// Publish-to-receive, microseconds, over every delivery.
    pub latency: LatencySummary,
    pub subscribers: Vec<SubscriberResult>,
    /// Every live subscriber had everything before the drain time ran out.
    pub drained: bool,
    /// Deliveries while the publishers ran, and what they cost the server
    /// (with `--server-pid`) and this process.
    pub publishing_deliveries: u64,
    pub server_usage: Option<Usage>,
    pub client_usage: Option<Usage>,
}

impl FanoutResult {
    pub fn published_total(&self) -> u64 {
        self.published.iter().sum()
    }

    pub fn deliveries_per_sec(&self) -> f64 {
        self.deliveries as f64 / self.delivery_time.as_secs_f64().max(1e-9)
    }

    pub fn kept_up(&self) -> usize {
        self.subscribers.iter().filter(|s| s.kept_up()).count()
    }

    /// Sums of (lost, duplicated, out of order) over subscribers that kept up.
    pub fn anomalies(&self) -> (u64, u64, u64) {
        self.subscribers
            .iter()
            .filter(|s| s.kept_up())
            .fold((0, 0, 0), |(l, d, o), s| {
                (l + s.lost, d + s.duplicated, o + s.out_of_order)
            })
    }

    /// Per room, how many different arrival orders the subscribers that
    /// kept up saw: 1 when they all saw the room in the same order.
    pub fn orders_per_room(&self) -> Vec<usize> {
        let mut digests = vec![std::collections::BTreeSet::new(); self.plan.rooms];
        for s in self.subscribers.iter().filter(|s| s.kept_up()) {
            digests[s.room].insert(s.order_digest);
        }
        digests.iter().map(|d| d.len()).collect()
    }

    fn reasons(
        &self,
        pick: impl Fn(&SubscriberResult) -> Option<&String>,
    ) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for reason in self.subscribers.iter().filter_map(pick) {
            *out.entry(reason.clone()).or_default() += 1;
        }
        out
    }

    pub fn report(&self) -> Report {
        let p = &self.plan;
        let (lost, duplicated, out_of_order) = self.anomalies();
        let orders = self.orders_per_room().into_iter().max().unwrap_or(0);
        let failed_open = self.reasons(|s| s.open_error.as_ref());
        let dropped = self.reasons(|s| s.ended.as_ref());
        let rate = if p.rate > 0.0 {
            format!("{} msg/s", p.rate)
        } else if p.window > 0 {
            format!("flat out (window {})", p.window)
        } else {
            "flat out (no window)".into()
        };
        let publish_via = match &p.publish {
            PublishVia::Grpc => "grpc".to_string(),
            PublishVia::Http { url, .. } => url.clone(),
        };
        let publish_rate =
            self.published_total() as f64 / self.publish_time.as_secs_f64().max(1e-9);
        let anomalous: Vec<serde_json::Value> = self
            .subscribers
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.kept_up() || !s.clean())
            .take(100)
            .map(|(i, s)| {
                serde_json::json!({
                    "index": i, "protocol": s.protocol, "room": p.room(s.room),
                    "open_error": s.open_error, "ended": s.ended, "received": s.received,
                    "lost": s.lost, "duplicated": s.duplicated, "out_of_order": s.out_of_order,
                })
            })
            .collect();
        let mut report = Report::new(
            format!(
                "fanout over {}: {} subscribers on {} room(s), {} publisher(s) via {publish_via}, {rate}, {} bytes",
                p.protocol_name(),
                p.subscribers(),
                p.rooms,
                p.publishers,
                p.size
            ),
            serde_json::json!({
                "scenario": "fanout",
                "protocol": p.protocol_name(),
                "subscribers": p.subscribers(),
                "rooms": p.rooms,
                "publishers": p.publishers,
                "publish_via": publish_via,
                "rate": p.rate,
                "window": p.window,
                "size": p.size,
                "published": self.published_total(),
                "publish_errors": self.publish_errors,
                "publish_secs": stats::secs(self.publish_time),
                "publish_per_sec": publish_rate.round(),
                "deliveries": self.deliveries,
                "delivery_secs": stats::secs(self.delivery_time),
                "deliveries_per_sec": self.deliveries_per_sec().round(),
                "latency": self.latency.to_json(),
                "kept_up": self.kept_up(),
                "failed_to_subscribe": failed_open,
                "dropped": dropped,
                "drained": self.drained,
                "lost": lost,
                "duplicated": duplicated,
                "out_of_order": out_of_order,
                "orders_per_room_max": orders,
                "anomalous_subscribers": anomalous,
                "server_cost": self.server_usage.map(|u| u.per(self.publishing_deliveries)),
                "client_cost": self.client_usage.map(|u| u.per(self.publishing_deliveries)),
            }),
        );
        report.section(
            "publishing",
            vec![
                row("messages published", self.published_total()),
                row("publish errors", self.publish_errors.values().sum::<u64>()),
                row("messages/s", stats::rate(publish_rate)),
            ],
        );
        report.section(
            "delivery",
            vec![
                row("deliveries", self.deliveries),
                row("deliveries/s", stats::rate(self.deliveries_per_sec())),
                row("latency p50", stats::micros(self.latency.p50)),
                row("latency p99", stats::micros(self.latency.p99)),
                row("latency max", stats::micros(self.latency.max)),
            ],
        );
        let mut subs = vec![
            row(
                "kept up",
                format!("{} of {}", self.kept_up(), p.subscribers()),
            ),
            row("lost (kept up)", lost),
            row("duplicated (kept up)", duplicated),
            row("out of order (kept up)", out_of_order),
            row("different orders in a room", orders),
            row(
                "all delivered",
                if self.drained {
                    "yes"
                } else {
                    "no (drain timed out)"
                },
            ),
        ];
        for (reason, n) in &failed_open {
            subs.push(row(&format!("failed to subscribe: {reason}"), n));
        }
        for (reason, n) in &dropped {
            subs.push(row(&format!("ended early: {reason}"), n));
        }
        report.section("subscribers", subs);
        let mut cost = Vec::new();
        if let Some(u) = self.server_usage {
            cost.push(row("server", u.per_text(self.publishing_deliveries)));
        }
        if let Some(u) = self.client_usage {
            cost.push(row("load tool", u.per_text(self.publishing_deliveries)));
        }
        if !cost.is_empty() {
            report.section("cost per delivery (while publishing)", cost);
        }
        if !self.publish_errors.is_empty() {
            report.section(
                "publish errors by status",
                self.publish_errors.iter().map(|(k, v)| row(k, v)).collect(),
            );
        }
        report
    }
}

/// A subscriber's life, as the pacer and the progress line see it.
const CONNECTING: u8 = 0;
const READY: u8 = 1;
const ENDED: u8 = 2;
const FAILED: u8 = 3;

struct Slot {
    room: usize,
    /// Probes of this run received.
    received: AtomicU64,
    state: AtomicU8,
}

/// What all threads of a run share.
struct Shared {
    run: u32,
    /// Finds this run's probes.
    probes: ProbeFinder,
    publishers: usize,
    stop: AtomicBool,
    /// Messages sent per room (accepted or not).
    sent: Vec<AtomicU64>,
    slots: Vec<Slot>,
    /// Most messages any live subscriber is behind.
    max_lag: AtomicU64,
    sse_sockets: Mutex<Vec<Arc<TcpStream>>>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Ends every subscriber's blocking read (gRPC subscriber threads see
    /// the flag within `grpc_subscribers::GROUP_WAIT`).
    fn stop_subscribers(&self) {
        self.stop.store(true, Ordering::Release);
        for socket in self.sse_sockets.lock().drain(..) {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    /// (live subscribers, settled subscribers, largest lag)
    fn survey(&self) -> (usize, usize, u64) {
        let (mut live, mut settled, mut lag) = (0, 0, 0);
        for slot in &self.slots {
            match slot.state.load(Ordering::Acquire) {
                READY => {
                    live += 1;
                    settled += 1;
                    let sent = self.sent[slot.room].load(Ordering::Acquire);
                    lag = lag.max(sent.saturating_sub(slot.received.load(Ordering::Acquire)));
                }
                CONNECTING => {}
                _ => settled += 1,
            }
        }
        (live, settled, lag)
    }
}

/// What a subscriber thread takes note of.
struct Recorder<'a> {
    shared: &'a Shared,
    slot: &'a Slot,
    trackers: Vec<SeqTracker>,
    latency: Histogram,
    received: u64,
    last_micros: u64,
    order: OrderDigest,
}

/// FNV-1a over (publisher, sequence) in arrival order.
struct OrderDigest(u64);

impl OrderDigest {
    fn new() -> OrderDigest {
        OrderDigest(0xcbf2_9ce4_8422_2325)
    }

    fn add(&mut self, publisher: u32, seq: u64) {
        for byte in publisher.to_le_bytes().into_iter().chain(seq.to_le_bytes()) {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

impl Recorder<'_> {
    fn new<'a>(shared: &'a Shared, slot: &'a Slot) -> Recorder<'a> {
        Recorder {
            shared,
            slot,
            trackers: vec![SeqTracker::default(); shared.publishers],
            latency: Histogram::new(),
            received: 0,
            last_micros: 0,
            order: OrderDigest::new(),
        }
    }

    fn ready(&self) {
        let _ = self.slot.state.compare_exchange(
            CONNECTING,
            READY,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Takes note of one message's content (or of the SSE data holding it).
    fn content(&mut self, text: &[u8]) {
        let Some(probe) = self.shared.probes.find(text) else {
            return;
        };
        let Some(tracker) = self.trackers.get_mut(probe.publisher as usize) else {
            return;
        };
        let now = stats::now_micros();
        tracker.record(probe.seq);
        self.order.add(probe.publisher, probe.seq);
        self.latency.record(now.saturating_sub(probe.sent_micros));
        self.received += 1;
        self.last_micros = now;
        self.slot.received.fetch_add(1, Ordering::Release);
    }

    /// The subscription is over (`failed`: it never was): the pacer, the
    /// drain and the progress line stop waiting for it.
    fn settle(&self, failed: bool) {
        let state = if failed { FAILED } else { ENDED };
        self.slot.state.store(state, Ordering::Release);
    }

    fn finish(
        self,
        protocol: &'static str,
        open_error: Option<String>,
        ended: Option<String>,
    ) -> Outcome {
        self.settle(open_error.is_some());
        Outcome {
            protocol,
            room: self.slot.room,
            open_error,
            ended,
            trackers: self.trackers,
            latency: self.latency,
            received: self.received,
            last_micros: self.last_micros,
            order_digest: self.order.0,
        }
    }
}

/// A subscriber thread's result.
struct Outcome {
    protocol: &'static str,
    room: usize,
    open_error: Option<String>,
    ended: Option<String>,
    trackers: Vec<SeqTracker>,
    latency: Histogram,
    received: u64,
    last_micros: u64,
    order_digest: u64,
}

/// Runs on `bench-sse-N` until the server ends the stream or the run stops.
fn sse_subscriber(shared: &Shared, slot: &Slot, url: &HttpUrl, timeout: Duration) -> Outcome {
    let mut rec = Recorder::new(shared, slot);
    let mut stream = match EventStream::open(url, &[], timeout) {
        Ok(stream) => stream,
        Err(e) => {
            let reason = match e {
                OpenError::Status(s) => format!("HTTP {s}"),
                other => other.to_string(),
            };
            return rec.finish("sse", Some(reason), None);
        }
    };
    shared.sse_sockets.lock().push(stream.socket());
    // streamhub registers the subscription before it answers: the head
    // means the subscriber is in the room.
    rec.ready();
    let ended = loop {
        if shared.stopping() {
            break None;
        }
        match stream.read(|event| rec.content(event.data)) {
            Ok(true) => {}
            Ok(false) if shared.stopping() => break None,
            Ok(false) => break Some("closed by server".to_string()),
            Err(_) if shared.stopping() => break None,
            Err(e) => break Some(format!("{:?}", e.kind())),
        }
    };
    rec.finish("sse", None, ended)
}

/// Runs on `bench-web-N`: SubscribeMessages over gRPC-Web until the server
/// ends the call or the run stops.
fn web_subscriber(
    shared: &Shared,
    slot: &Slot,
    base: &HttpUrl,
    room: &str,
    timeout: Duration,
) -> Outcome {
    let mut rec = Recorder::new(shared, slot);
    let mut stream = match WebStream::open(base, room, timeout) {
        Ok(stream) => stream,
        Err(e) => return rec.finish("grpc-web", Some(e.to_string()), None),
    };
    shared.sse_sockets.lock().push(stream.socket());
    // The head comes once the subscription is registered (the welcome
    // follows it in the first chunk).
    rec.ready();
    let ended = loop {
        if shared.stopping() {
            break None;
        }
        match stream.read(|message| rec.content(message)) {
            Ok(true) => {}
            Ok(false) if shared.stopping() => break None,
            Ok(false) => break Some("closed by server".to_string()),
            Err(_) if shared.stopping() => break None,
            Err(e) => break Some(format!("{:?}", e.kind())),
        }
    };
    rec.finish("grpc-web", None, ended)
}

/// What one publisher sent, per room: how many sequence numbers it used
/// and which of them failed to publish.
struct SendLog {
    sent: Vec<u64>,
    failed: Vec<Vec<u64>>,
}

/// A publisher's result.
struct Published {
    /// Messages the server accepted, per room.
    ok: Vec<u64>,
    /// Sequence numbers whose publish failed, per room: they may or may not
    /// have been delivered, so they count neither as sent nor as lost.
    failed: Vec<Vec<u64>>,
    errors: BTreeMap<String, u64>,
    /// Sequence numbers used per room.
    sent: Vec<u64>,
    first: Option<Instant>,
    last: Option<Instant>,
}

enum Sender {
    /// A connection of its own, made again if the server closes it.
    Grpc(grpc::Connection, Duration),
    Http(HttpPublisher),
}

impl Sender {
    fn send(&mut self, room: &str, user: &str, content: String) -> Result<(), String> {
        match self {
            Sender::Grpc(connection, timeout) => connection
                .channel()
                .and_then(|channel| {
                    ChatClient::new(channel)
                        .with_options(grpc::options(Some(*timeout)))
                        .send_message(&grpc::send_request(room, user, content))
                })
                .map(drop)
                .map_err(|e| grpc::error_name(&e)),
            Sender::Http(publisher) => match publisher.publish(room, user, &content) {
                Ok(status) if (200..300).contains(&status) => Ok(()),
                Ok(status) => Err(format!("HTTP {status}")),
                Err(e) => Err(format!("I/O: {e}")),
            },
        }
    }
}

/// Runs on `bench-pub-N`.
fn publisher(
    shared: &Shared,
    plan: &FanoutPlan,
    index: usize,
    mut sender: Sender,
    started: Instant,
) -> Published {
    let rooms = plan.rooms;
    let mut out = Published {
        ok: vec![0; rooms],
        failed: vec![Vec::new(); rooms],
        errors: BTreeMap::new(),
        sent: vec![0; rooms],
        first: None,
        last: None,
    };
    let user = format!("bench-pub-{index}");
    let end = started + plan.duration;
    // Each publisher's share of the rate, its sends staggered against the
    // others'.
    let interval =
        (plan.rate > 0.0).then(|| Duration::from_secs_f64(plan.publishers as f64 / plan.rate));
    let offset = interval.map(|i| i.mul_f64(index as f64 / plan.publishers as f64));
    let mut k: u64 = 0;
    loop {
        if shared.stopping()
            || (plan.messages > 0 && k >= plan.messages)
            || (plan.messages == 0 && Instant::now() >= end)
        {
            break;
        }
        match (interval, offset) {
            (Some(interval), Some(offset)) => {
                stats::sleep_until(started + offset + interval.mul_f64(k as f64))
            }
            _ if plan.window > 0 => {
                while shared.max_lag.load(Ordering::Acquire) >= plan.window && !shared.stopping() {
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
            _ => {}
        }
        let room = (index + k as usize) % rooms;
        let seq = out.sent[room];
        out.sent[room] += 1;
        shared.sent[room].fetch_add(1, Ordering::AcqRel);
        let probe = Probe {
            run: shared.run,
            publisher: index as u32,
            seq,
            sent_micros: stats::now_micros(),
        };
        let now = Instant::now();
        out.first.get_or_insert(now);
        match sender.send(&plan.room(room), &user, probe.content(plan.size)) {
            Ok(()) => out.ok[room] += 1,
            Err(code) => {
                out.failed[room].push(seq);
                *out.errors.entry(code).or_default() += 1;
            }
        }
        out.last = Some(Instant::now());
        k += 1;
    }
    out
}

fn spawn<T: Send + 'static>(
    name: String,
    stack: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, Error> {
    std::thread::Builder::new()
        .name(name.clone())
        .stack_size(stack)
        .spawn(f)
        .map_err(|e| Error::Io(format!("cannot start thread {name}: {e}")))
}

/// A run identifier unlikely to repeat, so that messages of an earlier run
/// still in a room's history are not counted.
fn run_id() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    (nanos ^ std::process::id().rotate_left(16)) % 1_000_000_000
}

/// Runs the plan.
pub fn run(plan: &FanoutPlan) -> Result<FanoutResult, Error> {
    let total = plan.subscribers();
    if total == 0 {
        return Err(Error::Config(
            "--subscribers: at least one is needed".into(),
        ));
    }
    stats::epoch();
    let run = run_id();
    let shared = Arc::new(Shared {
        run,
        probes: ProbeFinder::new(run),
        publishers: plan.publishers,
        stop: AtomicBool::new(false),
        sent: (0..plan.rooms).map(|_| AtomicU64::new(0)).collect(),
        slots: (0..total)
            .map(|i| Slot {
                room: i % plan.rooms,
                received: AtomicU64::new(0),
                state: AtomicU8::new(CONNECTING),
            })
            .collect(),
        max_lag: AtomicU64::new(0),
        sse_sockets: Mutex::new(Vec::new()),
    });
    let mut progress = Progress::new(plan.progress);
    let connections = connect_all(plan, &mut progress);
    let result = subscribe_and_publish(plan, &shared, &connections, &mut progress);
    shared.stop_subscribers();
    progress.done();
    result
}

/// The subscribers' connections (see [`grpc::connect_many`]).
fn connect_all(plan: &FanoutPlan, progress: &mut Progress) -> Vec<Result<Channel, String>> {
    let n = plan.grpc_connections();
    grpc::connect_many(&plan.server, plan.timeout, n, |k| {
        progress.tick(|| format!("connecting: {k} of {n}"))
    })
}

/// The subscribers' threads: a gRPC one reads many subscribers, an SSE
/// one its own.
type SubscriberThread = JoinHandle<Vec<(usize, Outcome)>>;

fn subscribe_and_publish(
    plan: &FanoutPlan,
    shared: &Arc<Shared>,
    connections: &[Result<Channel, String>],
    progress: &mut Progress,
) -> Result<FanoutResult, Error> {
    let total = plan.subscribers();
    // Subscribers: gRPC first, then SSE; at most CONNECTING_AT_ONCE at a
    // time (a gRPC thread's streams all at once).
    let mut subscribers: Vec<SubscriberThread> = Vec::new();
    let mut started: Vec<usize> = Vec::with_capacity(total);
    let open_deadline = |since: Instant| since + plan.timeout + Duration::from_secs(1);
    let throttle = |started: &[usize], progress: &mut Progress| {
        let mut waiting_since = Instant::now();
        loop {
            let (_, settled, _) = shared.survey();
            if started.len() < settled + CONNECTING_AT_ONCE {
                break;
            }
            if Instant::now() > open_deadline(waiting_since) {
                // A server that sends nothing on subscribing (no welcome):
                // count those as subscribed and go on.
                for &i in started {
                    let _ = shared.slots[i].state.compare_exchange(
                        CONNECTING,
                        READY,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
                waiting_since = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(1));
            progress.tick(|| format!("subscribing: {settled} of {total}"));
        }
    };
    for (g, members) in grpc_groups(plan).into_iter().enumerate() {
        throttle(&started, progress);
        started.extend_from_slice(&members);
        let group = GroupPlan {
            room: plan.room(members[0] % plan.rooms),
            members: members
                .into_iter()
                .map(|i| (i, connections[i % connections.len()].clone()))
                .collect(),
        };
        let thread_shared = shared.clone();
        subscribers.push(spawn(format!("bench-grpc-{g}"), plan.stack, move || {
            grpc_group(&thread_shared, group)
        })?);
    }
    for i in plan.grpc_subscribers..total {
        throttle(&started, progress);
        started.push(i);
        let thread_shared = shared.clone();
        let room = plan.room(i % plan.rooms);
        let timeout = plan.timeout;
        if let Some(base) = &plan.grpc_web_url {
            let base = HttpUrl::parse(base).map_err(Error::Config)?;
            subscribers.push(spawn(format!("bench-web-{i}"), plan.stack, move || {
                let slot = &thread_shared.slots[i];
                vec![(
                    i,
                    web_subscriber(&thread_shared, slot, &base, &room, timeout),
                )]
            })?);
            continue;
        }
        let url = HttpUrl::parse(&http::expand(&plan.sse_url, &room)).map_err(Error::Config)?;
        subscribers.push(spawn(format!("bench-sse-{i}"), plan.stack, move || {
            let slot = &thread_shared.slots[i];
            vec![(i, sse_subscriber(&thread_shared, slot, &url, timeout))]
        })?);
    }
    let since = Instant::now();
    loop {
        let (_, settled, _) = shared.survey();
        if settled == total {
            break;
        }
        if Instant::now() > open_deadline(since) {
            for slot in &shared.slots {
                let _ = slot.state.compare_exchange(
                    CONNECTING,
                    READY,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
        progress.tick(|| format!("subscribing: {settled} of {total}"));
    }
    let (live, _, _) = shared.survey();
    if live == 0 {
        let outcomes = join_subscribers(shared, subscribers, total)?;
        let reason = outcomes
            .iter()
            .find_map(|o| o.open_error.clone().or(o.ended.clone()))
            .unwrap_or_default();
        return Err(Error::Io(format!(
            "no subscriber could subscribe: {reason}"
        )));
    }

    // Publishers.
    let started = Instant::now() + Duration::from_millis(10);
    let mut publishers = Vec::with_capacity(plan.publishers);
    for index in 0..plan.publishers {
        let sender = match &plan.publish {
            PublishVia::Grpc => Sender::Grpc(
                grpc::Connection::new(&plan.server, plan.timeout),
                plan.timeout,
            ),
            PublishVia::Http { url, format } => {
                Sender::Http(HttpPublisher::new(url, *format, plan.timeout))
            }
        };
        let (thread_shared, thread_plan) = (shared.clone(), plan.clone());
        publishers.push(spawn(
            format!("bench-pub-{index}"),
            PUBLISHER_STACK,
            move || {
                stats::sleep_until(started);
                publisher(&thread_shared, &thread_plan, index, sender, started)
            },
        )?);
    }
    let sent_total = || {
        shared
            .sent
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let received_total = || {
        shared
            .slots
            .iter()
            .map(|s| s.received.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let line = |phase: &str| {
        let (live, _, lag) = shared.survey();
        let elapsed = started.elapsed().as_secs_f64().max(1e-3);
        format!(
            "{phase}: sent {} ({}/s), delivered {} ({}/s), live {live}/{total}, max lag {lag}",
            sent_total(),
            stats::rate(sent_total() as f64 / elapsed),
            received_total(),
            stats::rate(received_total() as f64 / elapsed),
        )
    };
    let usage_from = (plan.server_pid.and_then(Usage::of), Usage::own());
    while !publishers.iter().all(|p| p.is_finished()) {
        let (_, _, lag) = shared.survey();
        shared.max_lag.store(lag, Ordering::Release);
        std::thread::sleep(PACER_TICK);
        progress.tick(|| line("publishing"));
    }
    let publishing_deliveries = received_total();
    let server_usage = plan
        .server_pid
        .and_then(Usage::of)
        .zip(usage_from.0)
        .map(|(now, from)| now.since(&from));
    let client_usage = Usage::own()
        .zip(usage_from.1)
        .map(|(now, from)| now.since(&from));
    let mut published = vec![0u64; plan.rooms];
    let mut logs: Vec<SendLog> = Vec::with_capacity(plan.publishers);
    let mut publish_errors = BTreeMap::new();
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    for handle in publishers {
        let p = handle
            .join()
            .map_err(|_| Error::Io("a publisher thread panicked".into()))?;
        for (room, n) in p.ok.iter().enumerate() {
            published[room] += n;
        }
        for (code, n) in p.errors {
            *publish_errors.entry(code).or_default() += n;
        }
        first = match (first, p.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last = last.max(p.last);
        logs.push(SendLog {
            sent: p.sent,
            failed: p.failed,
        });
    }

    // Drain: wait until every live subscriber has what was accepted.
    let drain_until = Instant::now() + plan.drain;
    let drained = loop {
        let behind = shared.slots.iter().any(|slot| {
            slot.state.load(Ordering::Acquire) == READY
                && slot.received.load(Ordering::Acquire) < published[slot.room]
        });
        if !behind {
            break true;
        }
        if Instant::now() >= drain_until {
            break false;
        }
        std::thread::sleep(Duration::from_millis(2));
        progress.tick(|| line("draining"));
    };
    let outcomes = join_subscribers(shared, subscribers, total)?;

    let mut latency = Histogram::new();
    let mut deliveries = 0;
    let mut last_delivery = 0;
    let results = outcomes
        .into_iter()
        .map(|o| {
            latency.merge(&o.latency);
            deliveries += o.received;
            last_delivery = last_delivery.max(o.last_micros);
            let (mut lost, mut duplicated, mut out_of_order) = (0, 0, 0);
            for (log, tracker) in logs.iter().zip(&o.trackers) {
                // A failed publish may or may not have been delivered:
                // its sequence number is never counted as lost.
                let failed = &log.failed[o.room];
                let unseen_failed = failed.iter().filter(|s| !tracker.seen(**s)).count() as u64;
                lost += tracker.lost(log.sent[o.room]) - unseen_failed;
                duplicated += tracker.duplicated();
                out_of_order += tracker.out_of_order();
            }
            SubscriberResult {
                protocol: o.protocol,
                room: o.room,
                open_error: o.open_error,
                ended: o.ended,
                received: o.received,
                lost,
                duplicated,
                out_of_order,
                order_digest: o.order_digest,
            }
        })
        .collect();
    let first = first.unwrap_or(started);
    let publish_time = last.map_or(Duration::ZERO, |l| l.saturating_duration_since(first));
    let first_micros = first.saturating_duration_since(stats::epoch()).as_micros() as u64;
    let delivery_time = Duration::from_micros(last_delivery.saturating_sub(first_micros));
    Ok(FanoutResult {
        plan: plan.clone(),
        published,
        publish_errors,
        publish_time,
        delivery_time,
        deliveries,
        latency: latency.summary(),
        subscribers: results,
        drained,
        publishing_deliveries,
        server_usage,
        client_usage,
    })
}

/// Stops the subscribers and collects their outcomes, in subscriber order.
fn join_subscribers(
    shared: &Shared,
    handles: Vec<SubscriberThread>,
    total: usize,
) -> Result<Vec<Outcome>, Error> {
    shared.stop_subscribers();
    let mut outcomes: Vec<Option<Outcome>> = (0..total).map(|_| None).collect();
    for handle in handles {
        let part = handle
            .join()
            .map_err(|_| Error::Io("a subscriber thread panicked".into()))?;
        for (i, outcome) in part {
            outcomes[i] = Some(outcome);
        }
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.expect("every subscriber has a thread"))
        .collect())
}
