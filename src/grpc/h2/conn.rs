//! One server-side HTTP/2 connection as a state machine (RFC 9113), with
//! gRPC's framing on top: bytes from the client go in ([`Conn::receive`]),
//! requests and messages come out as [`Event`]s; responses go in
//! ([`Conn::send`], [`Conn::finish`], [`Conn::reset`]) and frames come out
//! within the client's windows ([`Conn::take_output`]). Pure: no socket, no
//! thread, the time is a parameter, so every rule is unit-tested.
//!
//! Who calls it (see `server`): the connection's reader thread feeds it, its
//! writer thread drains it, and each call's stream thread queues its
//! responses; all under the connection's one lock, held for microseconds.
//!
//! Floods are bounded by construction: every frame a client can repeat
//! without making progress (resets, PINGs, SETTINGS, empty frames,
//! WINDOW_UPDATEs, CONTINUATIONs) draws on a token bucket ([`Budget`]); an
//! empty bucket ends the connection with GOAWAY ENHANCE_YOUR_CALM. Memory
//! per stream is bounded by its receive window (inbound) and by what its
//! stream thread may queue (outbound).
//!
//! A stream may also be fed ([`Conn::follow`]): the writer pulls its
//! responses from a [`Feed`] (a subscription to a room's log) itself, as
//! far as the client's windows allow, so a published message costs one
//! wake of each connection's writer, not of every stream's thread (the
//! shape `shared/prototypes/h2-fanout` measured). The stream's thread only
//! waits for the end.
//!
//! This file is longer than most (about 900 lines before its tests): it is
//! one state machine, and splitting the stream table from the frame rules
//! that change it would scatter each rule over two files.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::frame::{self, kind, setting, ErrorCode, Frame, H2Error, Head};
use super::grpc::{self as g, DeframeError, Deframer};
use super::hpack::{self, index, Block, DecodeError};
use crate::grpc::call::{Code, Status};
use crate::hub::Message;

/// Largest stream id.
const MAX_STREAM_ID: u32 = (1 << 31) - 1;
/// CONTINUATION frames one header block may use.
const MAX_CONTINUATIONS: u32 = 64;
/// The longest header block accepted, compressed: beyond it the connection
/// ends (a CONTINUATION flood); below it, a block whose list is over
/// SETTINGS_MAX_HEADER_LIST_SIZE is decoded (the table must stay in step)
/// and only its stream is refused, with RESOURCE_EXHAUSTED, so a client
/// with a 100 KiB token learns why without losing its other calls.
const MAX_BLOCK: usize = 256 * 1024;
/// Streams we reset whose late frames we still recognise and ignore.
const RESET_MEMORY: usize = 256;
/// Bytes of control frames (acks, resets, updates) that may wait for a
/// client that does not read before the connection is given up.
const MAX_CONTROL_BACKLOG: usize = 256 * 1024;
/// One pass of the writer takes at most this much, so one busy stream
/// cannot hold the others' frames back for long.
const MAX_PASS_BYTES: usize = 256 * 1024;
/// A fed stream's queue is topped up to this much at most (and no more
/// than the windows allow): what a stalled client holds is bounded, and the
/// room's slow-consumer rule sees its lag.
const FEED_AHEAD: i64 = 64 * 1024;

/// Responses the writer pulls for a stream itself (see [`Conn::follow`]).
/// Runs under the connection's lock: it must not block.
pub trait Feed: Send + std::any::Any {
    /// Moves responses worth about `budget` bytes to the back of `queue`
    /// (none when `budget` is 0). Returns the bytes it queued, and true once
    /// the feed has ended and nothing more will come of it.
    fn pull(&mut self, budget: usize, queue: &mut VecDeque<Chunk>) -> (usize, bool);
}

/// What a connection allows; from `GrpcConfig`.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_streams: u32,
    pub max_header_list: usize,
    /// Largest gRPC message either way.
    pub max_message: usize,
    /// The window each stream opens with (SETTINGS_INITIAL_WINDOW_SIZE).
    pub stream_window: u32,
    /// The connection's receive window.
    pub conn_window: u32,
    pub keepalive: Duration,
    pub keepalive_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_streams: 2048,
            max_header_list: 16 * 1024,
            max_message: 4 << 20,
            stream_window: 1 << 20,
            conn_window: 8 << 20,
            keepalive: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// A token bucket: `rate` tokens per second up to `burst`.
#[derive(Clone, Debug)]
pub struct Budget {
    tokens: f64,
    burst: f64,
    rate: f64,
    at: Option<Instant>,
}

impl Budget {
    pub fn new(burst: u32, rate: u32) -> Budget {
        Budget {
            tokens: burst as f64,
            burst: burst as f64,
            rate: rate as f64,
            at: None,
        }
    }

    /// Takes one token; false when there is none.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(at) = self.at {
            let earned = now.saturating_duration_since(at).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + earned).min(self.burst);
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Gives `n` tokens back (for frames that turned out useful).
    pub fn earn(&mut self, n: f64) {
        self.tokens = (self.tokens + n).min(self.burst);
    }
}

/// Why a connection was ended for abuse: counted in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flood {
    RapidReset,
    Ping,
    Settings,
    EmptyFrames,
    WindowUpdate,
    Continuation,
    HeaderList,
}

impl Flood {
    pub const ALL: [Flood; 7] = [
        Flood::RapidReset,
        Flood::Ping,
        Flood::Settings,
        Flood::EmptyFrames,
        Flood::WindowUpdate,
        Flood::Continuation,
        Flood::HeaderList,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Flood::RapidReset => "rapid_reset",
            Flood::Ping => "ping",
            Flood::Settings => "settings",
            Flood::EmptyFrames => "empty_frames",
            Flood::WindowUpdate => "window_update",
            Flood::Continuation => "continuation",
            Flood::HeaderList => "header_list",
        }
    }
}

/// The budgets of one connection. The rates are far above what any client
/// library sends (grpc-go resets one stream per cancelled call, pings every
/// keepalive interval, updates windows once per quarter window) and far
/// below what the floods send (27,000 resets/s in the rapid-reset
/// measurement). PINGs and WINDOW_UPDATEs are also earned by the DATA we
/// send: a client that receives much updates its windows often, and
/// gRPC's C core pings to estimate the bandwidth as data arrives (a
/// grpcio publisher making 3,000 calls in a second sent 3,000 updates).
struct Budgets {
    resets: Budget,
    pings: Budget,
    settings: Budget,
    empty: Budget,
    window_updates: Budget,
}

impl Budgets {
    fn new() -> Budgets {
        Budgets {
            resets: Budget::new(1000, 200),
            pings: Budget::new(100, 10),
            // Earned back by each DATA frame sent, a quarter each.
            settings: Budget::new(100, 10),
            empty: Budget::new(200, 20),
            // Earned back by each DATA frame sent (two) and each response
            // begun (one), see take_output: gRPC's C core sends a stream and
            // a connection update for a unary answer, and a grpcio client
            // with 64 calls in flight ran a budget of one per DATA frame
            // dry in a second. An update costs a lookup and writes nothing.
            window_updates: Budget::new(10_000, 5_000),
        }
    }
}

/// A request's headers, as a handler needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub path: String,
    pub content_type: Option<String>,
    /// `grpc-timeout`: `Err` when present but malformed.
    pub timeout: Result<Option<Duration>, ()>,
    pub encoding: Option<String>,
    /// Every other header (`authorization` and the like), names lower case.
    pub metadata: Vec<(String, Vec<u8>)>,
}

/// What the connection tells its server.
#[derive(Debug)]
pub enum Event {
    /// A request's headers are complete on a new stream.
    Request {
        stream: u32,
        head: RequestHead,
        end_stream: bool,
    },
    /// A whole gRPC message arrived.
    Message { stream: u32, bytes: Vec<u8> },
    /// The client closed its side: no more messages on the stream.
    EndOfInput { stream: u32 },
    /// The stream is over before its call finished: the client reset it,
    /// broke a rule, or the connection ended. Whatever still holds the
    /// stream learns it from [`Conn::is_gone`] too.
    Gone { stream: u32, why: String },
}

/// A response message queued on a stream.
pub enum Chunk {
    /// A hub message, encoded once when published and shared by every
    /// subscriber; its gRPC prefix is added as it is written.
    Shared(Arc<Message>),
    /// Bytes with their gRPC prefix.
    Framed(Vec<u8>),
}

impl Chunk {
    /// An owned message, prefixed.
    pub fn message(bytes: &[u8]) -> Chunk {
        let mut v = Vec::with_capacity(bytes.len() + g::PREFIX_LEN);
        g::put_message(&mut v, bytes);
        Chunk::Framed(v)
    }

    fn len(&self) -> usize {
        match self {
            Chunk::Shared(m) => g::PREFIX_LEN + crate::grpc::wire::shared_bytes(m).len(),
            Chunk::Framed(b) => b.len(),
        }
    }

    /// Appends `[from, from + n)` of the chunk's bytes.
    fn copy(&self, out: &mut Vec<u8>, from: usize, n: usize) {
        match self {
            Chunk::Framed(b) => out.extend_from_slice(&b[from..from + n]),
            Chunk::Shared(m) => {
                let body = crate::grpc::wire::shared_bytes(m);
                let prefix = g::prefix(body.len());
                let end = from + n;
                if from < g::PREFIX_LEN {
                    out.extend_from_slice(&prefix[from..end.min(g::PREFIX_LEN)]);
                }
                if end > g::PREFIX_LEN {
                    let start = from.max(g::PREFIX_LEN) - g::PREFIX_LEN;
                    out.extend_from_slice(&body[start..end - g::PREFIX_LEN]);
                }
            }
        }
    }
}

/// A header block being assembled from HEADERS and CONTINUATION frames.
struct Partial {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
    frames: u32,
}

#[derive(Default)]
struct Stream {
    /// The client sent END_STREAM (or we stopped listening).
    remote_closed: bool,
    /// Answered with an error before the client finished sending: what
    /// still arrives is dropped.
    refused: bool,
    /// Not a gRPC request: its body is dropped, and once it is complete the
    /// connection itself answers 415 ([`PLAIN_ANSWER`]).
    plain: bool,
    /// The head of an answer whose queued body ends the stream (the last
    /// DATA frame carries END_STREAM), instead of gRPC trailers.
    plain_head: Option<Vec<u8>>,
    end_with_data: bool,
    /// What the client may still send before we give window back.
    recv_window: i64,
    /// Received bytes not yet given back.
    unreleased: u32,
    /// Bytes of messages handed to the call and not yet taken by it: the
    /// only received bytes whose window waits. A message still arriving
    /// is not held (it could be larger than the window).
    held: usize,
    deframer: Deframer,
    /// `content-length`, if the client sent one, and DATA bytes seen.
    content_length: Option<u64>,
    received: u64,
    send_window: i64,
    headers_sent: bool,
    queue: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    front_sent: usize,
    queued_bytes: usize,
    trailers: Option<Vec<u8>>,
    /// Trailers written: our side is closed.
    local_closed: bool,
    /// Wakes the stream's thread when its queue drains or the stream ends.
    waker: Option<Sender<()>>,
    /// The thread waits for the queue to drain below the mark.
    wake_below: Option<usize>,
    /// In the writer's `ready` queue (so asking again costs no search).
    in_ready: bool,
    /// Where the writer pulls this stream's responses from, if it does.
    feed: Option<Box<dyn Feed>>,
    /// The feed has ended (the stream's thread is woken for it).
    feed_over: bool,
}

impl Stream {
    fn wake(&mut self) {
        if let Some(w) = &self.waker {
            let _ = w.try_send(());
        }
    }
}

/// What [`Conn::tick`] asks of the writer.
#[derive(Debug, PartialEq, Eq)]
pub enum Tick {
    Nothing,
    /// Close the connection: the client did not answer a keepalive PING.
    Close,
}

/// The connection.
pub struct Conn {
    limits: Limits,
    preface_seen: usize,
    settings_seen: bool,
    decoder: hpack::Decoder,
    partial: Option<Partial>,
    streams: HashMap<u32, Stream>,
    /// Highest stream id the client has opened.
    last_stream: u32,
    recently_reset: VecDeque<u32>,
    conn_recv_window: i64,
    conn_unreleased: u32,
    conn_send_window: i64,
    peer_initial_window: i64,
    peer_max_frame: usize,
    budgets: Budgets,
    /// Control frames (acks, resets, updates, GOAWAY) waiting to be written.
    control: Vec<u8>,
    /// Streams with something to write, in the order they asked.
    ready: VecDeque<u32>,
    /// Streams with a live feed.
    fed: Vec<u32>,
    /// GOAWAY sent: the last stream id we will serve.
    goaway: Option<u32>,
    draining: bool,
    /// The connection is over once the output is written.
    closing: bool,
    /// Why it closed, for the log.
    pub close_reason: Option<String>,
    /// The flood that closed it, if one did.
    pub flood: Option<Flood>,
    last_heard: Option<Instant>,
    ping_sent: Option<Instant>,
}

impl Conn {
    pub fn new(limits: Limits) -> Conn {
        let mut control = Vec::new();
        frame::put_settings(
            &mut control,
            &[
                (setting::MAX_CONCURRENT_STREAMS, limits.max_streams),
                (setting::INITIAL_WINDOW_SIZE, limits.stream_window),
                (setting::MAX_HEADER_LIST_SIZE, limits.max_header_list as u32),
                (setting::ENABLE_PUSH, 0),
            ],
        );
        let extra = limits.conn_window.saturating_sub(frame::DEFAULT_WINDOW);
        if extra > 0 {
            frame::put_window_update(&mut control, 0, extra);
        }
        Conn {
            decoder: hpack::Decoder::new(limits.max_header_list),
            conn_recv_window: limits.conn_window as i64,
            limits,
            preface_seen: 0,
            settings_seen: false,
            partial: None,
            streams: HashMap::new(),
            last_stream: 0,
            recently_reset: VecDeque::new(),
            conn_unreleased: 0,
            conn_send_window: frame::DEFAULT_WINDOW as i64,
            peer_initial_window: frame::DEFAULT_WINDOW as i64,
            peer_max_frame: frame::DEFAULT_MAX_FRAME as usize,
            budgets: Budgets::new(),
            control,
            ready: VecDeque::new(),
            fed: Vec::new(),
            goaway: None,
            draining: false,
            closing: false,
            close_reason: None,
            flood: None,
            last_heard: None,
            ping_sent: None,
        }
    }

    /// True once nothing more will be read or written after the output.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// True when the stream no longer takes responses.
    pub fn is_gone(&self, stream: u32) -> bool {
        self.closing
            || self
                .streams
                .get(&stream)
                .is_none_or(|s| s.local_closed || s.trailers.is_some())
    }

    /// Wakes the stream's thread (a message arrived for it).
    pub fn wake(&mut self, stream: u32) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.wake();
        }
    }

    /// Registers the channel that wakes the stream's thread.
    pub fn set_waker(&mut self, stream: u32, waker: Sender<()>) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.waker = Some(waker);
        }
    }

    // ---- input ----

    /// Consumes as many whole frames of `input` as there are; returns how
    /// many bytes it used. Events go to `events`; after an error the
    /// connection is closing and the rest is ignored.
    pub fn receive(&mut self, input: &[u8], now: Instant, events: &mut Vec<Event>) -> usize {
        let mut used = 0;
        if self.preface_seen < frame::PREFACE.len() {
            let want = &frame::PREFACE[self.preface_seen..];
            let n = want.len().min(input.len());
            if input[..n] != want[..n] {
                self.fail(
                    ErrorCode::ProtocolError,
                    "not an HTTP/2 client preface",
                    events,
                );
                return input.len();
            }
            self.preface_seen += n;
            used = n;
        }
        while !self.closing {
            let rest = &input[used..];
            if rest.len() < frame::HEADER_LEN {
                break;
            }
            let head = Head::parse(rest[..frame::HEADER_LEN].try_into().expect("9 bytes"));
            if head.len > frame::DEFAULT_MAX_FRAME {
                self.fail(
                    ErrorCode::FrameSizeError,
                    "frame larger than SETTINGS_MAX_FRAME_SIZE",
                    events,
                );
                return input.len();
            }
            let total = frame::HEADER_LEN + head.len as usize;
            if rest.len() < total {
                break;
            }
            self.last_heard = Some(now);
            self.frame(&head, &rest[frame::HEADER_LEN..total], now, events);
            used += total;
        }
        if self.closing {
            return input.len();
        }
        used
    }

    /// The bytes [`Conn::receive`] may need at most to make progress: a
    /// frame header and the largest payload.
    pub fn max_frame_bytes(&self) -> usize {
        frame::HEADER_LEN + frame::DEFAULT_MAX_FRAME as usize
    }

    fn frame(&mut self, head: &Head, payload: &[u8], now: Instant, events: &mut Vec<Event>) {
        if !self.settings_seen && head.kind != kind::SETTINGS {
            return self.fail(
                ErrorCode::ProtocolError,
                "the preface must be followed by SETTINGS",
                events,
            );
        }
        if let Some(p) = &self.partial {
            if head.kind != kind::CONTINUATION || head.stream != p.stream {
                return self.fail(ErrorCode::ProtocolError, "header block interrupted", events);
            }
        }
        let f = match frame::parse(head, payload) {
            Ok(f) => f,
            Err(H2Error::Connection(code, why)) => return self.fail(code, why, events),
            Err(H2Error::Stream(stream, code)) => return self.stream_error(stream, code, events),
        };
        match f {
            Frame::Data {
                stream,
                end_stream,
                data,
                flow_len,
            } => self.on_data(stream, end_stream, data, flow_len, now, events),
            Frame::Headers {
                stream,
                end_stream,
                end_headers,
                block,
                ..
            } => {
                if block.is_empty() && !end_headers && !self.budgets.empty.take(now) {
                    return self.calm(Flood::EmptyFrames, events);
                }
                self.partial = Some(Partial {
                    stream,
                    end_stream,
                    block: block.to_vec(),
                    frames: 1,
                });
                if end_headers {
                    self.header_block(events, now);
                }
            }
            Frame::Continuation {
                end_headers, block, ..
            } => {
                let Some(p) = self.partial.as_mut() else {
                    return self.fail(
                        ErrorCode::ProtocolError,
                        "CONTINUATION without HEADERS",
                        events,
                    );
                };
                p.frames += 1;
                p.block.extend_from_slice(block);
                // The compressed block can only be smaller than the list
                // it decodes to, so this bounds it without decoding.
                if p.frames > MAX_CONTINUATIONS || p.block.len() > MAX_BLOCK {
                    return self.calm(Flood::Continuation, events);
                }
                if end_headers {
                    self.header_block(events, now);
                }
            }
            Frame::Priority { .. } | Frame::Unknown => {}
            Frame::RstStream { stream, .. } => {
                if stream > self.last_stream {
                    return self.fail(
                        ErrorCode::ProtocolError,
                        "RST_STREAM on an idle stream",
                        events,
                    );
                }
                if !self.budgets.resets.take(now) {
                    return self.calm(Flood::RapidReset, events);
                }
                if let Some(mut s) = self.streams.remove(&stream) {
                    s.wake();
                    events.push(Event::Gone {
                        stream,
                        why: "cancelled by the client".into(),
                    });
                }
            }
            Frame::Settings { ack, params } => {
                if ack {
                    return;
                }
                if self.settings_seen && !self.budgets.settings.take(now) {
                    return self.calm(Flood::Settings, events);
                }
                self.settings_seen = true;
                for (id, value) in params {
                    match id {
                        setting::INITIAL_WINDOW_SIZE => {
                            let delta = value as i64 - self.peer_initial_window;
                            self.peer_initial_window = value as i64;
                            for (&id, s) in self.streams.iter_mut() {
                                s.send_window += delta;
                                if s.send_window > frame::MAX_WINDOW as i64 {
                                    return self.fail(
                                        ErrorCode::FlowControlError,
                                        "window overflow",
                                        events,
                                    );
                                }
                                if delta > 0 && !s.queue.is_empty() && !s.in_ready {
                                    s.in_ready = true;
                                    self.ready.push_back(id);
                                }
                            }
                        }
                        setting::MAX_FRAME_SIZE => self.peer_max_frame = value as usize,
                        _ => {}
                    }
                }
                frame::put_settings_ack(&mut self.control);
            }
            Frame::PushPromise => unreachable!("refused by frame::parse"),
            Frame::Ping { ack, data } => {
                if ack {
                    self.ping_sent = None;
                    // The drain's first GOAWAY was answered: now the real one.
                    if self.draining && data == DRAIN_PING && self.goaway == Some(MAX_STREAM_ID) {
                        self.goaway = Some(self.last_stream);
                        frame::put_goaway(
                            &mut self.control,
                            self.last_stream,
                            ErrorCode::NoError,
                            b"",
                        );
                        self.close_if_drained();
                    }
                    return;
                }
                if !self.budgets.pings.take(now) {
                    return self.calm(Flood::Ping, events);
                }
                frame::put_ping(&mut self.control, true, data);
            }
            Frame::GoAway { .. } => {
                // The client will open no more streams; the open ones finish.
                self.draining = true;
                self.close_if_drained();
            }
            Frame::WindowUpdate { stream, increment } => {
                if !self.budgets.window_updates.take(now) {
                    return self.calm(Flood::WindowUpdate, events);
                }
                if stream == 0 {
                    let was_open = self.conn_send_window > 0;
                    self.conn_send_window += increment as i64;
                    if self.conn_send_window > frame::MAX_WINDOW as i64 {
                        return self.fail(
                            ErrorCode::FlowControlError,
                            "connection window overflow",
                            events,
                        );
                    }
                    if was_open {
                        // Nothing waited for the connection's window: an
                        // update costs no walk over the streams.
                        return;
                    }
                    // Every stream that waits for window may go now.
                    let waiting: Vec<u32> = self
                        .streams
                        .iter()
                        .filter(|(_, s)| !s.queue.is_empty() || s.trailers.is_some())
                        .map(|(&id, _)| id)
                        .collect();
                    for id in waiting {
                        self.mark_ready(id);
                    }
                } else if stream > self.last_stream {
                    self.fail(
                        ErrorCode::ProtocolError,
                        "WINDOW_UPDATE on an idle stream",
                        events,
                    );
                } else if let Some(s) = self.streams.get_mut(&stream) {
                    s.send_window += increment as i64;
                    if s.send_window > frame::MAX_WINDOW as i64 {
                        return self.stream_error(stream, ErrorCode::FlowControlError, events);
                    }
                    self.mark_ready(stream);
                }
            }
        }
    }

    fn on_data(
        &mut self,
        stream: u32,
        end_stream: bool,
        data: &[u8],
        flow_len: u32,
        now: Instant,
        events: &mut Vec<Event>,
    ) {
        // Connection flow control counts every DATA frame, whatever its
        // stream's state.
        self.conn_recv_window -= flow_len as i64;
        if self.conn_recv_window < 0 {
            return self.fail(
                ErrorCode::FlowControlError,
                "connection window exceeded",
                events,
            );
        }
        self.release_conn(flow_len);
        if flow_len == 0 && !end_stream && !self.budgets.empty.take(now) {
            return self.calm(Flood::EmptyFrames, events);
        }
        if stream > self.last_stream {
            return self.fail(ErrorCode::ProtocolError, "DATA on an idle stream", events);
        }
        let max_message = self.limits.max_message;
        let Some(s) = self.streams.get_mut(&stream) else {
            return self.on_closed_stream(stream, now, events);
        };
        if s.refused {
            return;
        }
        if s.remote_closed {
            return self.stream_error(stream, ErrorCode::StreamClosed, events);
        }
        s.recv_window -= flow_len as i64;
        if s.recv_window < 0 {
            return self.stream_error(stream, ErrorCode::FlowControlError, events);
        }
        s.unreleased += flow_len;
        s.received += data.len() as u64;
        if s.content_length.is_some_and(|cl| s.received > cl)
            || (end_stream && s.content_length.is_some_and(|cl| s.received != cl))
        {
            return self.stream_error(stream, ErrorCode::ProtocolError, events);
        }
        if s.plain {
            self.give_back(stream);
            if end_stream {
                self.answer_plain(stream);
            }
            return;
        }
        s.deframer.push(data);
        loop {
            match s.deframer.next(max_message) {
                Ok(Some(bytes)) => {
                    s.held += bytes.len() + g::PREFIX_LEN;
                    events.push(Event::Message { stream, bytes })
                }
                Ok(None) => break,
                Err(e) => {
                    let status = match e {
                        DeframeError::Compressed => Status::new(
                            Code::Unimplemented,
                            "compressed messages are not accepted (grpc-accept-encoding: identity)",
                        ),
                        DeframeError::TooLarge { len, max } => Status::new(
                            Code::ResourceExhausted,
                            format!("message of {len} bytes is larger than the limit of {max}"),
                        ),
                    };
                    return self.refuse(stream, status, events);
                }
            }
        }
        self.give_back(stream);
        if end_stream {
            self.end_of_input(stream, events);
        }
    }

    fn end_of_input(&mut self, stream: u32, events: &mut Vec<Event>) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        s.remote_closed = true;
        if s.deframer.pending() > 0 {
            return self.refuse(
                stream,
                Status::new(Code::Internal, "the stream ended inside a message"),
                events,
            );
        }
        events.push(Event::EndOfInput { stream });
        self.forget_if_closed(stream);
    }

    /// A complete header block: a new request, or trailers on an open one.
    fn header_block(&mut self, events: &mut Vec<Event>, now: Instant) {
        let Partial {
            stream,
            end_stream,
            block,
            ..
        } = self.partial.take().expect("a block in progress");
        // Decoded whatever becomes of the stream: the table must stay in
        // step with the client's.
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let decoded = self
            .decoder
            .decode(&block, |n, v| fields.push((n.to_vec(), v.to_vec())));
        let too_large = match decoded {
            Ok(()) => false,
            Err(DecodeError::TooLarge) => true,
            Err(DecodeError::Compression(_)) => {
                return self.fail(ErrorCode::CompressionError, "invalid header block", events)
            }
        };
        if stream <= self.last_stream {
            // Trailers (or a HEADERS frame where none may be).
            let Some(s) = self.streams.get(&stream) else {
                // Trailers still in flight are a closed stream's business;
                // a request on an id already used is the connection's
                // error (RFC 9113 5.1.1).
                let trailers = end_stream && !fields.iter().any(|(n, _)| n.starts_with(b":"));
                if trailers || self.recently_reset.contains(&stream) {
                    return self.on_closed_stream(stream, now, events);
                }
                return self.fail(
                    ErrorCode::ProtocolError,
                    "HEADERS on a stream id already used",
                    events,
                );
            };
            if s.remote_closed {
                return self.stream_error(stream, ErrorCode::StreamClosed, events);
            }
            if !end_stream || fields.iter().any(|(n, _)| n.starts_with(b":")) {
                return self.stream_error(stream, ErrorCode::ProtocolError, events);
            }
            if s.plain {
                return self.answer_plain(stream);
            }
            return self.end_of_input(stream, events);
        }
        if stream % 2 == 0 {
            return self.fail(
                ErrorCode::ProtocolError,
                "even stream id from a client",
                events,
            );
        }
        self.last_stream = stream;
        if self.goaway.is_some_and(|last| stream > last) {
            // After GOAWAY: not served, the client may retry elsewhere.
            return self.reset_quietly(stream, ErrorCode::RefusedStream);
        }
        if self.streams.len() >= self.limits.max_streams as usize {
            if !self.budgets.resets.take(now) {
                return self.calm(Flood::RapidReset, events);
            }
            return self.reset_quietly(stream, ErrorCode::RefusedStream);
        }
        let head = match request_head(&fields) {
            Ok(h) => h,
            Err(()) => return self.reset_quietly(stream, ErrorCode::ProtocolError),
        };
        let content_length = match content_length(&fields) {
            Ok(cl) => cl,
            Err(()) => return self.reset_quietly(stream, ErrorCode::ProtocolError),
        };
        self.streams.insert(
            stream,
            Stream {
                recv_window: self.limits.stream_window as i64,
                send_window: self.peer_initial_window,
                content_length,
                // Refused below or not, a stream that ended says so.
                remote_closed: end_stream && too_large,
                ..Stream::default()
            },
        );
        if too_large {
            let max = self.limits.max_header_list;
            let status = Status::new(
                Code::ResourceExhausted,
                format!("request headers larger than {max} bytes"),
            );
            if !self.budgets.empty.take(now) {
                return self.calm(Flood::HeaderList, events);
            }
            return self.refuse(stream, status, events);
        }
        if end_stream && content_length.is_some_and(|cl| cl != 0) {
            return self.stream_error(stream, ErrorCode::ProtocolError, events);
        }
        let grpc = head
            .content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("application/grpc"));
        if !grpc {
            self.streams.get_mut(&stream).expect("inserted above").plain = true;
            if end_stream {
                self.answer_plain(stream);
            }
            return;
        }
        events.push(Event::Request {
            stream,
            head,
            end_stream,
        });
        self.give_back(stream);
        if end_stream {
            self.end_of_input(stream, events);
        }
    }

    /// DATA or HEADERS on a stream that is over. After our RST_STREAM the
    /// client may still have frames in flight: ignored (RFC 9113 5.1), as
    /// long as we remember the reset; otherwise a stream error
    /// STREAM_CLOSED, never the whole connection. Each answer draws on the
    /// budget of frames that make no progress.
    fn on_closed_stream(&mut self, stream: u32, now: Instant, events: &mut Vec<Event>) {
        if self.recently_reset.contains(&stream) {
            return;
        }
        if !self.budgets.empty.take(now) {
            return self.calm(Flood::EmptyFrames, events);
        }
        self.reset_quietly(stream, ErrorCode::StreamClosed);
    }

    // ---- errors ----

    /// Ends the connection: GOAWAY with `code`, then close.
    fn fail(&mut self, code: ErrorCode, why: &str, events: &mut Vec<Event>) {
        if self.closing {
            return;
        }
        frame::put_goaway(&mut self.control, self.last_stream, code, why.as_bytes());
        self.close_reason = Some(format!("{code}: {why}"));
        self.closing = true;
        self.partial = None;
        for (stream, mut s) in self.streams.drain() {
            s.wake();
            events.push(Event::Gone {
                stream,
                why: format!("connection error {code}"),
            });
        }
    }

    /// Ends the connection of a client that floods.
    fn calm(&mut self, flood: Flood, events: &mut Vec<Event>) {
        self.flood = Some(flood);
        let why = match flood {
            Flood::RapidReset => "too many streams reset",
            Flood::Ping => "too many PINGs",
            Flood::Settings => "too many SETTINGS",
            Flood::EmptyFrames => "too many empty frames",
            Flood::WindowUpdate => "too many WINDOW_UPDATEs",
            Flood::Continuation => "header block too long",
            Flood::HeaderList => "too many oversized header lists",
        };
        self.fail(ErrorCode::EnhanceYourCalm, why, events);
    }

    /// Ends one stream with RST_STREAM; its call is gone.
    fn stream_error(&mut self, stream: u32, code: ErrorCode, events: &mut Vec<Event>) {
        if stream > self.last_stream && stream % 2 == 1 {
            // An error on a stream never opened still uses its id.
            self.last_stream = stream;
        }
        if let Some(mut s) = self.streams.remove(&stream) {
            s.wake();
            events.push(Event::Gone {
                stream,
                why: format!("stream error {code}"),
            });
        }
        self.reset_quietly(stream, code);
    }

    fn reset_quietly(&mut self, stream: u32, code: ErrorCode) {
        frame::put_rst_stream(&mut self.control, stream, code);
        self.remember_reset(stream);
    }

    fn remember_reset(&mut self, stream: u32) {
        if self.recently_reset.len() == RESET_MEMORY {
            self.recently_reset.pop_front();
        }
        self.recently_reset.push_back(stream);
    }

    /// Answers a stream with an error status at once (trailers-only when
    /// nothing was sent) and stops listening to it.
    fn refuse(&mut self, stream: u32, status: Status, events: &mut Vec<Event>) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.queue.clear();
            s.queued_bytes = 0;
            s.refused = true;
            s.wake();
            events.push(Event::Gone {
                stream,
                why: status.message.clone(),
            });
        }
        self.finish(stream, &status);
    }

    // ---- flow control, receive side ----

    fn release_conn(&mut self, n: u32) {
        self.conn_unreleased += n;
        // Given back in big steps: one WINDOW_UPDATE per half window.
        if self.conn_unreleased as i64 >= self.limits.conn_window as i64 / 2 {
            frame::put_window_update(&mut self.control, 0, self.conn_unreleased);
            self.conn_recv_window += self.conn_unreleased as i64;
            self.conn_unreleased = 0;
        }
    }

    /// The stream's call has taken `n` bytes of messages: the client may
    /// send that much more.
    pub fn release(&mut self, stream: u32, n: usize) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.held = s.held.saturating_sub(n);
        }
        self.give_back(stream);
    }

    /// Gives the client window back for what arrived, unless the call has
    /// not taken half a window of messages yet: that bounds what a stream
    /// buffers to about one window, and a message larger than the window
    /// still arrives.
    fn give_back(&mut self, stream: u32) {
        let window = self.limits.stream_window as usize;
        if let Some(s) = self.streams.get_mut(&stream) {
            let worth_it = s.unreleased as usize >= (window / 4).min(16 * 1024);
            if !s.remote_closed && worth_it && s.held <= window / 2 {
                frame::put_window_update(&mut self.control, stream, s.unreleased);
                s.recv_window += s.unreleased as i64;
                s.unreleased = 0;
            }
        }
    }

    // ---- output ----

    fn mark_ready(&mut self, stream: u32) {
        if let Some(s) = self.streams.get_mut(&stream) {
            if !s.in_ready {
                s.in_ready = true;
                self.ready.push_back(stream);
            }
        }
    }

    /// Queues response messages on a stream. Returns the bytes now queued
    /// on it, or `None` when the stream is gone.
    pub fn send(&mut self, stream: u32, chunks: impl IntoIterator<Item = Chunk>) -> Option<usize> {
        if self.closing {
            return None;
        }
        let s = self.streams.get_mut(&stream)?;
        if s.local_closed || s.trailers.is_some() {
            return None;
        }
        for c in chunks {
            s.queued_bytes += c.len();
            s.queue.push_back(c);
        }
        let queued = s.queued_bytes;
        self.mark_ready(stream);
        Some(queued)
    }

    /// Bytes queued on the stream and not yet written (`None`: gone).
    pub fn queued(&self, stream: u32) -> Option<usize> {
        let s = self.streams.get(&stream)?;
        if self.closing || s.local_closed {
            return None;
        }
        Some(s.queued_bytes)
    }

    /// Asks to be woken once the stream's queue is at or below `mark`.
    pub fn wake_below(&mut self, stream: u32, mark: usize) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.wake_below = Some(mark);
        }
    }

    /// From now on the writer pulls the stream's responses from `feed`
    /// (after what is queued). Gives the feed back if the stream is gone.
    pub fn follow(&mut self, stream: u32, feed: Box<dyn Feed>) -> Result<(), Box<dyn Feed>> {
        if self.closing {
            return Err(feed);
        }
        match self.streams.get_mut(&stream) {
            Some(s) if !s.local_closed && s.trailers.is_none() && s.feed.is_none() => {
                s.feed = Some(feed);
                s.feed_over = false;
                self.fed.push(stream);
                Ok(())
            }
            _ => Err(feed),
        }
    }

    /// True while the stream is open and its feed has not ended.
    pub fn following(&self, stream: u32) -> bool {
        !self.closing
            && self
                .streams
                .get(&stream)
                .is_some_and(|s| s.feed.is_some() && !s.feed_over && !s.local_closed)
    }

    /// Takes the stream's feed back (what it already gave stays queued).
    pub fn unfollow(&mut self, stream: u32) -> Option<Box<dyn Feed>> {
        self.fed.retain(|&id| id != stream);
        self.streams.get_mut(&stream)?.feed.take()
    }

    /// Tops up every fed stream's queue from its feed, within the windows,
    /// and notices feeds that ended (their threads are woken). A stream
    /// whose window is shut pulls nothing: it falls behind in the room, and
    /// the room's slow-consumer rule ends its feed.
    fn pull_feeds(&mut self) {
        let conn_window = self.conn_send_window;
        let mut i = 0;
        while i < self.fed.len() {
            let id = self.fed[i];
            let Some(s) = self.streams.get_mut(&id) else {
                self.fed.swap_remove(i);
                continue;
            };
            let Some(feed) = s.feed.as_mut() else {
                self.fed.swap_remove(i);
                continue;
            };
            let budget = s.send_window.min(conn_window).min(FEED_AHEAD) - s.queued_bytes as i64;
            let (pulled, over) = feed.pull(budget.max(0) as usize, &mut s.queue);
            if pulled > 0 {
                s.queued_bytes += pulled;
                if !s.in_ready {
                    s.in_ready = true;
                    self.ready.push_back(id);
                }
            }
            if over {
                s.feed_over = true;
                s.wake();
                self.fed.swap_remove(i);
                continue;
            }
            i += 1;
        }
    }

    /// Ends a stream with `status` after what is queued (trailers, or one
    /// trailers-only HEADERS when nothing was sent). A feed still attached
    /// is let go: nothing may follow the trailers.
    pub fn finish(&mut self, stream: u32, status: &Status) {
        if self.closing {
            return;
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.local_closed || s.trailers.is_some() {
            return;
        }
        s.feed = None;
        let mut block = Block::new();
        if !s.headers_sent && s.queue.is_empty() {
            block = response_headers(block);
        }
        block = block.literal(b"grpc-status", status.code.number().to_string().as_bytes());
        if !status.message.is_empty() {
            block = block.literal(
                b"grpc-message",
                g::percent_encode(&status.message).as_bytes(),
            );
        }
        s.trailers = Some(block.bytes);
        self.mark_ready(stream);
    }

    /// Answers a complete request that is not gRPC: 415, as the gRPC spec
    /// asks, with a line that says where plain HTTP goes.
    fn answer_plain(&mut self, stream: u32) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.remote_closed = true;
            let head = Block::new()
                .named(index::STATUS_200, b"415")
                .named(index::CONTENT_TYPE, b"text/plain; charset=utf-8")
                .bytes;
            s.plain_head = Some(head);
            s.queue.push_back(Chunk::Framed(PLAIN_ANSWER.to_vec()));
            s.queued_bytes += PLAIN_ANSWER.len();
            s.end_with_data = true;
            self.mark_ready(stream);
        }
    }

    /// Ends a stream at once with RST_STREAM (a call dropped unfinished).
    pub fn reset(&mut self, stream: u32, code: ErrorCode) {
        if self.closing {
            return;
        }
        if let Some(s) = self.streams.remove(&stream) {
            if !s.local_closed {
                self.reset_quietly(stream, code);
            }
        }
        self.close_if_drained();
    }

    /// Graceful shutdown, as grpc-go does it: a GOAWAY that admits every
    /// stream and a PING; when the PING is answered, the GOAWAY with the
    /// last stream served (see the PING handler). The connection closes
    /// once its streams are done.
    pub fn drain(&mut self) {
        if self.draining || self.closing {
            return;
        }
        self.draining = true;
        self.goaway = Some(MAX_STREAM_ID);
        frame::put_goaway(&mut self.control, MAX_STREAM_ID, ErrorCode::NoError, b"");
        frame::put_ping(&mut self.control, false, DRAIN_PING);
    }

    fn close_if_drained(&mut self) {
        if self.draining && self.streams.is_empty() && self.goaway != Some(MAX_STREAM_ID) {
            self.close_reason.get_or_insert_with(|| "drained".into());
            self.closing = true;
        }
    }

    /// Forgets a stream both sides have closed.
    fn forget_if_closed(&mut self, stream: u32) {
        if let Some(s) = self.streams.get(&stream) {
            if s.local_closed && s.remote_closed {
                self.streams.remove(&stream);
                self.close_if_drained();
            }
        }
    }

    /// Keepalive: a PING when the client has been silent for the interval,
    /// and the end when one goes unanswered.
    pub fn tick(&mut self, now: Instant) -> Tick {
        if let Some(sent) = self.ping_sent {
            if now.saturating_duration_since(sent) >= self.limits.keepalive_timeout {
                self.close_reason = Some("keepalive PING not answered".into());
                self.closing = true;
                return Tick::Close;
            }
            return Tick::Nothing;
        }
        let heard = *self.last_heard.get_or_insert(now);
        if now.saturating_duration_since(heard) >= self.limits.keepalive {
            frame::put_ping(&mut self.control, false, *b"keepaliv");
            self.ping_sent = Some(now);
        }
        Tick::Nothing
    }

    /// When [`Conn::tick`] should run next.
    pub fn next_tick(&self, now: Instant) -> Instant {
        match self.ping_sent {
            Some(sent) => sent + self.limits.keepalive_timeout,
            None => self.last_heard.unwrap_or(now) + self.limits.keepalive,
        }
    }

    /// True when a client that does not read has let control frames pile
    /// up past the bound: the connection should be given up.
    pub fn backlogged(&self) -> bool {
        self.control.len() > MAX_CONTROL_BACKLOG
    }

    /// Moves what may be written now into `out`: control frames first,
    /// then each ready stream's headers, DATA within the windows, and
    /// trailers. Wakes stream threads whose queues drained.
    pub fn take_output(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.control);
        if !self.fed.is_empty() {
            self.pull_feeds();
        }
        let max_frame = self.peer_max_frame;
        let mut rounds = self.ready.len();
        while rounds > 0 && out.len() < MAX_PASS_BYTES {
            rounds -= 1;
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            s.in_ready = false;
            if s.local_closed {
                continue;
            }
            let mut reset = false;
            if let Some(head) = s.plain_head.take() {
                frame::put_headers(out, id, &head, false, max_frame);
                s.headers_sent = true;
            }
            if !s.headers_sent && (!s.queue.is_empty() || s.trailers.is_some()) {
                if s.queue.is_empty() {
                    // Trailers-only: the block already holds :status.
                    s.headers_sent = true;
                } else {
                    frame::put_headers(
                        out,
                        id,
                        &response_headers(Block::new()).bytes,
                        false,
                        max_frame,
                    );
                    s.headers_sent = true;
                }
                self.budgets.window_updates.earn(1.0);
            }
            // DATA frames: as many messages per frame as fit.
            while !s.queue.is_empty() && out.len() < MAX_PASS_BYTES {
                let window = s.send_window.min(self.conn_send_window);
                if window <= 0 {
                    break;
                }
                let room = (window as usize).min(max_frame);
                let at = out.len();
                frame::put_data_head(out, id, 0, false);
                let mut n = 0;
                while n < room {
                    let Some(front) = s.queue.front() else {
                        break;
                    };
                    let left = front.len() - s.front_sent;
                    let take = left.min(room - n);
                    front.copy(out, s.front_sent, take);
                    n += take;
                    if take == left {
                        s.queue.pop_front();
                        s.front_sent = 0;
                    } else {
                        s.front_sent += take;
                    }
                }
                let len = (n as u32).to_be_bytes();
                out[at..at + 3].copy_from_slice(&len[1..]);
                if s.end_with_data && s.queue.is_empty() {
                    out[at + 4] |= frame::flag::END_STREAM;
                    s.local_closed = true;
                }
                s.queued_bytes -= n;
                s.send_window -= n as i64;
                self.conn_send_window -= n as i64;
                self.budgets.window_updates.earn(2.0);
                self.budgets.pings.earn(0.25);
            }
            if s.queue.is_empty() {
                if let Some(block) = s.trailers.take() {
                    frame::put_headers(out, id, &block, true, max_frame);
                    s.local_closed = true;
                    if !s.remote_closed {
                        // The client may still be sending: we are done
                        // listening (as grpc-go does).
                        frame::put_rst_stream(out, id, ErrorCode::NoError);
                        s.remote_closed = true;
                        reset = true;
                    }
                    s.wake();
                }
            } else if s.send_window.min(self.conn_send_window) > 0 {
                // Left over because the pass was full: next pass.
                s.in_ready = true;
                self.ready.push_back(id);
            }
            if s.wake_below.is_some_and(|m| s.queued_bytes <= m) {
                s.wake_below = None;
                s.wake();
            }
            let closed = s.local_closed;
            if reset {
                self.remember_reset(id);
            }
            if closed {
                self.forget_if_closed(id);
            }
        }
    }

    /// True when [`Conn::take_output`] would write something.
    pub fn has_output(&self) -> bool {
        if !self.control.is_empty() {
            return true;
        }
        self.ready.iter().any(|id| {
            self.streams.get(id).is_some_and(|s| {
                s.trailers.is_some()
                    || (!s.queue.is_empty() && s.send_window.min(self.conn_send_window) > 0)
            })
        })
    }

    /// The connection ended (socket error or closed): every stream is gone.
    pub fn lost(&mut self, why: &str, events: &mut Vec<Event>) {
        self.closing = true;
        self.close_reason.get_or_insert_with(|| why.to_string());
        for (stream, mut s) in self.streams.drain() {
            s.wake();
            events.push(Event::Gone {
                stream,
                why: why.to_string(),
            });
        }
    }
}

/// The body of the answer to a request that is not gRPC.
const PLAIN_ANSWER: &[u8] =
    b"streamhub: this port speaks gRPC (content-type: application/grpc); Server-Sent Events, HTTP publish, health and metrics are on the HTTP port\n";

/// The PING payload of a drain (see [`Conn::drain`]).
const DRAIN_PING: [u8; 8] = *b"drain\0\0\0";

/// `:status: 200` and the content type, first in every response.
fn response_headers(block: Block) -> Block {
    block
        .indexed(index::STATUS_200)
        .named(index::CONTENT_TYPE, b"application/grpc")
        .literal(b"grpc-accept-encoding", b"identity")
}

/// Headers an HTTP/2 request may not carry (RFC 9113 section 8.2.2).
const CONNECTION_SPECIFIC: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"upgrade",
];

/// Checks a request's fields (RFC 9113 section 8.3.1) and picks out what
/// gRPC needs. `Err` is a malformed request (a stream error).
fn request_head(fields: &[(Vec<u8>, Vec<u8>)]) -> Result<RequestHead, ()> {
    let mut head = RequestHead {
        path: String::new(),
        content_type: None,
        timeout: Ok(None),
        encoding: None,
        metadata: Vec::new(),
    };
    let (mut method, mut scheme, mut path) = (None, None, None);
    let mut regular_seen = false;
    for (name, value) in fields {
        if name.iter().any(|b| b.is_ascii_uppercase()) || name.is_empty() {
            return Err(());
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if regular_seen {
                return Err(());
            }
            let slot = match pseudo {
                b"method" => &mut method,
                b"scheme" => &mut scheme,
                b"path" => &mut path,
                b"authority" => continue,
                _ => return Err(()),
            };
            if slot.replace(value.clone()).is_some() {
                return Err(());
            }
            continue;
        }
        regular_seen = true;
        if CONNECTION_SPECIFIC.contains(&name.as_slice()) {
            return Err(());
        }
        let text = || String::from_utf8_lossy(value).into_owned();
        match name.as_slice() {
            b"te" if value != b"trailers" => return Err(()),
            b"te" => {}
            b"content-type" => head.content_type = Some(text()),
            b"grpc-timeout" => head.timeout = g::parse_timeout(value).map(Some).ok_or(()),
            b"grpc-encoding" => head.encoding = Some(text()),
            _ => head
                .metadata
                .push((String::from_utf8_lossy(name).into_owned(), value.clone())),
        }
    }
    let (Some(_method), Some(_scheme), Some(path)) = (method, scheme, path) else {
        return Err(());
    };
    if path.is_empty() {
        return Err(());
    }
    head.path = String::from_utf8_lossy(&path).into_owned();
    Ok(head)
}

fn content_length(fields: &[(Vec<u8>, Vec<u8>)]) -> Result<Option<u64>, ()> {
    match fields.iter().find(|(n, _)| n == b"content-length") {
        None => Ok(None),
        Some((_, v)) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or(()),
    }
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
