//! The client side of one HTTP/2 connection as a state machine, with
//! gRPC's framing and status rules on top: the mirror of the server's
//! `conn`. Bytes from the server go in ([`ClientConn::receive`]); calls
//! open streams, send DATA within the server's windows and take messages
//! and statuses out; frames to write come out of
//! [`ClientConn::take_output`]. Pure: no socket, no thread, no clock, so
//! every rule is unit-tested (`state_tests.rs`). What the header blocks
//! say is `head`'s; the blocking shell around it is `client.rs`.
//!
//! Flow control, receive side: a stream's window is given back as the
//! application takes its messages, so a stream nobody reads holds at most
//! [`STREAM_WINDOW`] bytes, and the connection's window likewise, so one
//! connection holds at most [`CONN_WINDOW`]. Bytes of a message still
//! being assembled are given back at once: a message larger than the
//! window must be able to arrive (it is bounded by the call's
//! `max_message` instead).
//!
//! Longer than most files (about 800 lines before its tests, half of them
//! comments): one state machine, like the server's `conn`; its frame rules
//! and its stream table change each other.

use std::collections::{HashMap, VecDeque};

use super::head::{reset_code, response_head, trailers_status, RequestHead};
use crate::grpc::call::{Code, Status};
use crate::grpc::h2::frame::{self, kind, setting, ErrorCode, Frame, H2Error, Head};
use crate::grpc::h2::grpc::{self as g, DeframeError, Deframer};
use crate::grpc::h2::hpack::{self, DecodeError};

/// What each stream may receive before the application takes some: one
/// subscription that is not read holds at most this much.
pub const STREAM_WINDOW: u32 = 1 << 20;
/// What one connection may receive before the application takes some:
/// the bound on a connection's buffered bytes, 64 of the streams'.
pub const CONN_WINDOW: u32 = 64 << 20;
/// The largest response header list we decode (SETTINGS_MAX_HEADER_LIST_SIZE).
pub const MAX_HEADER_LIST: usize = 64 * 1024;
/// Windows are given back in quarters (grpc-go's ratio): a WINDOW_UPDATE
/// per 256 KiB read on a stream, per 16 MiB on the connection, far inside
/// any server's budget for them and never a stall.
const STREAM_UPDATE_AT: u32 = STREAM_WINDOW / 4;
const CONN_UPDATE_AT: u32 = CONN_WINDOW / 4;
const MAX_STREAM_ID: u32 = (1 << 31) - 1;
/// The debug text of a GOAWAY we keep for the statuses it explains.
const MAX_DEBUG_TEXT: usize = 256;

/// One wait on a call's inbound side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Message(Vec<u8>),
    /// The call is over with this status (OK included); returned again on
    /// every later call.
    End(Status),
    /// Nothing yet.
    Pending,
}

/// Whom a change concerns, for the shell to wake.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Wakes {
    /// Streams whose calls may progress.
    pub streams: Vec<u32>,
    /// Every stream and every waiter (the connection ended, GOAWAY).
    pub all: bool,
    /// A stream slot freed or the server's settings arrived: callers
    /// waiting to open a stream may go on.
    pub slots: bool,
}

struct Partial {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
}

struct StreamState {
    max_message: usize,
    /// The response's first header block arrived.
    response_started: bool,
    deframer: Deframer,
    messages: VecDeque<Vec<u8>>,
    /// Wire bytes of `messages` (prefixes included).
    queued: usize,
    /// Bytes received and not yet given back.
    held: usize,
    /// What the server may still send on the stream.
    recv_window: i64,
    /// Given back and not yet announced.
    unannounced: u32,
    send_window: i64,
    /// How the call ended, once it did.
    status: Option<Status>,
    /// The server sent END_STREAM (or reset the stream).
    remote_closed: bool,
    /// We sent END_STREAM (or will send nothing more).
    local_closed: bool,
    /// Reset either way: nothing more goes on the wire for it.
    reset: bool,
}

impl StreamState {
    /// Counts against the server's SETTINGS_MAX_CONCURRENT_STREAMS.
    fn is_open(&self) -> bool {
        !(self.reset || (self.local_closed && self.remote_closed))
    }
}

struct GoAway {
    code: ErrorCode,
    debug: String,
}

/// The connection.
pub struct ClientConn {
    decoder: hpack::Decoder,
    partial: Option<Partial>,
    streams: HashMap<u32, StreamState>,
    next_stream: u32,
    settings_seen: bool,
    conn_send_window: i64,
    conn_recv_window: i64,
    conn_unannounced: u32,
    peer_initial_window: i64,
    peer_max_frame: usize,
    peer_max_streams: u32,
    peer_max_header_list: usize,
    goaway: Option<GoAway>,
    lost: Option<String>,
    output: Vec<u8>,
    wakes: Wakes,
    /// Streams that found no window to send in.
    window_waiters: Vec<u32>,
}

impl Default for ClientConn {
    fn default() -> ClientConn {
        ClientConn::new()
    }
}

impl ClientConn {
    /// A connection whose output starts with the preface, our SETTINGS and
    /// the connection window's growth to [`CONN_WINDOW`].
    pub fn new() -> ClientConn {
        let mut output = frame::PREFACE.to_vec();
        frame::put_settings(
            &mut output,
            &[
                (setting::ENABLE_PUSH, 0),
                (setting::INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (setting::MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST as u32),
            ],
        );
        frame::put_window_update(&mut output, 0, CONN_WINDOW - frame::DEFAULT_WINDOW);
        ClientConn {
            decoder: hpack::Decoder::new(MAX_HEADER_LIST),
            partial: None,
            streams: HashMap::new(),
            next_stream: 1,
            settings_seen: false,
            conn_send_window: frame::DEFAULT_WINDOW as i64,
            conn_recv_window: CONN_WINDOW as i64,
            conn_unannounced: 0,
            peer_initial_window: frame::DEFAULT_WINDOW as i64,
            peer_max_frame: frame::DEFAULT_MAX_FRAME as usize,
            peer_max_streams: u32::MAX,
            peer_max_header_list: usize::MAX,
            goaway: None,
            lost: None,
            output,
            wakes: Wakes::default(),
            window_waiters: Vec::new(),
        }
    }

    /// True once the server's first SETTINGS arrived: it speaks HTTP/2.
    pub fn settings_seen(&self) -> bool {
        self.settings_seen
    }

    /// Why the connection is over, once it is.
    pub fn lost(&self) -> Option<&str> {
        self.lost.as_deref()
    }

    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// The frames to write, in order.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Who to wake for what changed since the last call.
    pub fn take_wakes(&mut self) -> Wakes {
        std::mem::take(&mut self.wakes)
    }

    // ---- calls ----

    /// Opens a stream with the request headers `head` (see
    /// [`request_head`]). `Ok(None)`: the server's stream limit is
    /// reached, try again when a slot frees. `Err`: the call cannot start:
    /// its headers are over the server's limit (a server may end the whole
    /// connection for them), or no stream can be opened on this connection
    /// any more.
    pub fn open(
        &mut self,
        head: &RequestHead,
        end_stream: bool,
        max_message: usize,
    ) -> Result<Option<u32>, Status> {
        if let Some(why) = &self.lost {
            return Err(Status::new(
                Code::Unavailable,
                format!("connection lost: {why}"),
            ));
        }
        if let Some(g) = &self.goaway {
            return Err(Status::new(
                Code::Unavailable,
                format!(
                    "the server is going away (GOAWAY {}{})",
                    g.code,
                    debug_suffix(&g.debug)
                ),
            ));
        }
        if head.list_size > self.peer_max_header_list {
            return Err(Status::new(
                Code::ResourceExhausted,
                format!(
                    "request headers of {} bytes are larger than the server's limit of {}",
                    head.list_size, self.peer_max_header_list
                ),
            ));
        }
        let open = self.streams.values().filter(|s| s.is_open()).count();
        if open >= self.peer_max_streams as usize {
            return Ok(None);
        }
        let id = self.next_stream;
        if id > MAX_STREAM_ID {
            return Err(Status::new(
                Code::Unavailable,
                "this connection has used all its stream ids",
            ));
        }
        self.next_stream += 2;
        frame::put_headers(
            &mut self.output,
            id,
            &head.block,
            end_stream,
            self.peer_max_frame,
        );
        self.streams.insert(
            id,
            StreamState {
                max_message,
                response_started: false,
                deframer: Deframer::default(),
                messages: VecDeque::new(),
                queued: 0,
                held: 0,
                recv_window: STREAM_WINDOW as i64,
                unannounced: 0,
                send_window: self.peer_initial_window,
                status: None,
                remote_closed: false,
                local_closed: end_stream,
                reset: false,
            },
        );
        Ok(Some(id))
    }

    /// Queues DATA carrying as much of `data` as the windows allow, with
    /// END_STREAM on the frame that carries its last byte when `end`.
    /// Returns the bytes taken: fewer than `data.len()` when a window is
    /// shut (the stream is woken when it opens). An empty `data` with
    /// `end` closes our side. `Err`: the call is over, with this status
    /// (OK when the server ended it while we were still sending).
    pub fn send_data(&mut self, stream: u32, data: &[u8], end: bool) -> Result<usize, Status> {
        let Some(s) = self.streams.get_mut(&stream) else {
            return Err(Status::new(Code::Cancelled, "the call was cancelled"));
        };
        if let Some(status) = &s.status {
            return Err(status.clone());
        }
        if s.local_closed {
            return Err(Status::new(
                Code::Internal,
                "send after the request was closed",
            ));
        }
        if data.is_empty() {
            if end {
                frame::put_data_head(&mut self.output, stream, 0, true);
                s.local_closed = true;
            }
            return Ok(0);
        }
        let mut sent = 0;
        while sent < data.len() {
            let window = s.send_window.min(self.conn_send_window);
            if window <= 0 {
                if !self.window_waiters.contains(&stream) {
                    self.window_waiters.push(stream);
                }
                break;
            }
            let n = (window as usize)
                .min(self.peer_max_frame)
                .min(data.len() - sent);
            let last = sent + n == data.len();
            frame::put_data_head(&mut self.output, stream, n, end && last);
            self.output.extend_from_slice(&data[sent..sent + n]);
            s.send_window -= n as i64;
            self.conn_send_window -= n as i64;
            sent += n;
            if end && last {
                s.local_closed = true;
            }
        }
        Ok(sent)
    }

    /// The stream's next message, or how it ended, or nothing yet. Taking
    /// a message gives its bytes back to the server.
    pub fn next(&mut self, stream: u32) -> Next {
        let Some(s) = self.streams.get_mut(&stream) else {
            return Next::End(Status::new(Code::Cancelled, "the call was cancelled"));
        };
        if let Some(m) = s.messages.pop_front() {
            s.queued -= g::PREFIX_LEN + m.len();
            self.give_back_excess(stream);
            return Next::Message(m);
        }
        match &s.status {
            Some(status) => Next::End(status.clone()),
            None => Next::Pending,
        }
    }

    /// Ends a call from our side with `status` (a deadline, a message we
    /// refuse): RST_STREAM CANCEL unless the stream is closed already.
    /// Messages already received stay readable before the status.
    pub fn cancel(&mut self, stream: u32, status: Status) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        s.status.get_or_insert(status);
        if s.is_open() {
            frame::put_rst_stream(&mut self.output, stream, ErrorCode::Cancel);
            self.wakes.slots = true;
        }
        s.reset = true;
        s.local_closed = true;
        s.remote_closed = true;
        self.wakes.streams.push(stream);
    }

    /// The application let go of the call: it is cancelled if still open,
    /// and what it held is given back to the connection.
    pub fn forget(&mut self, stream: u32) {
        let Some(s) = self.streams.remove(&stream) else {
            return;
        };
        if s.is_open() && self.lost.is_none() {
            frame::put_rst_stream(&mut self.output, stream, ErrorCode::Cancel);
        }
        self.window_waiters.retain(|&w| w != stream);
        self.give_back_conn(s.held);
        self.wakes.slots = true;
    }

    /// The connection ended (socket closed, write failed): every call not
    /// over yet is UNAVAILABLE.
    pub fn lose(&mut self, why: &str) {
        if self.lost.is_some() {
            return;
        }
        let why = match &self.goaway {
            Some(g) if g.code != ErrorCode::NoError => {
                format!("{why} (after GOAWAY {}{})", g.code, debug_suffix(&g.debug))
            }
            _ => why.to_string(),
        };
        for s in self.streams.values_mut() {
            s.status.get_or_insert_with(|| {
                Status::new(Code::Unavailable, format!("connection lost: {why}"))
            });
            s.reset = true;
            s.local_closed = true;
            s.remote_closed = true;
        }
        self.lost = Some(why);
        self.window_waiters.clear();
        self.wakes.all = true;
    }

    /// We are done with the connection: GOAWAY NO_ERROR (we accept no
    /// streams, so its last stream is 0).
    pub fn goodbye(&mut self) {
        if self.lost.is_none() {
            frame::put_goaway(&mut self.output, 0, ErrorCode::NoError, b"");
        }
    }

    // ---- input ----

    /// Consumes as many whole frames of `input` as there are; returns how
    /// many bytes it used. After a connection error the connection is lost
    /// (its GOAWAY is in the output) and the rest is ignored.
    pub fn receive(&mut self, input: &[u8]) -> usize {
        let mut used = 0;
        while self.lost.is_none() {
            let rest = &input[used..];
            if rest.len() < frame::HEADER_LEN {
                break;
            }
            let head = Head::parse(rest[..frame::HEADER_LEN].try_into().expect("9 bytes"));
            if !self.settings_seen && head.kind != kind::SETTINGS {
                // Before the length: an HTTP/1 answer reads as a huge frame.
                let why = "not an HTTP/2 server: its first frame is not SETTINGS";
                frame::put_goaway(
                    &mut self.output,
                    0,
                    ErrorCode::ProtocolError,
                    why.as_bytes(),
                );
                self.lose(why);
                break;
            }
            if head.len > frame::DEFAULT_MAX_FRAME {
                self.fail(
                    ErrorCode::FrameSizeError,
                    "frame larger than SETTINGS_MAX_FRAME_SIZE",
                );
                break;
            }
            let total = frame::HEADER_LEN + head.len as usize;
            if rest.len() < total {
                break;
            }
            self.frame(&head, &rest[frame::HEADER_LEN..total]);
            used += total;
        }
        if self.lost.is_some() {
            return input.len();
        }
        used
    }

    /// The highest stream id we have opened.
    fn last_opened(&self) -> u32 {
        self.next_stream.saturating_sub(2)
    }

    fn frame(&mut self, head: &Head, payload: &[u8]) {
        if let Some(p) = &self.partial {
            if head.kind != kind::CONTINUATION || head.stream != p.stream {
                return self.fail(ErrorCode::ProtocolError, "header block interrupted");
            }
        }
        if head.kind == kind::PUSH_PROMISE {
            return self.fail(ErrorCode::ProtocolError, "PUSH_PROMISE with push disabled");
        }
        let f = match frame::parse(head, payload) {
            Ok(f) => f,
            Err(H2Error::Connection(code, why)) => return self.fail(code, why),
            Err(H2Error::Stream(stream, code)) => return self.stream_error(stream, code),
        };
        match f {
            Frame::Data {
                stream,
                end_stream,
                data,
                flow_len,
            } => self.on_data(stream, end_stream, data, flow_len),
            Frame::Headers {
                stream,
                end_stream,
                end_headers,
                block,
                ..
            } => {
                self.partial = Some(Partial {
                    stream,
                    end_stream,
                    block: block.to_vec(),
                });
                if end_headers {
                    self.header_block();
                }
            }
            Frame::Continuation {
                end_headers, block, ..
            } => {
                let Some(p) = self.partial.as_mut() else {
                    return self.fail(ErrorCode::ProtocolError, "CONTINUATION without HEADERS");
                };
                p.block.extend_from_slice(block);
                // A compressed block is never larger than the list it
                // decodes to.
                if p.block.len() > MAX_HEADER_LIST {
                    return self.fail(ErrorCode::ProtocolError, "header block too long");
                }
                if end_headers {
                    self.header_block();
                }
            }
            Frame::Priority { .. } | Frame::Unknown | Frame::PushPromise => {}
            Frame::RstStream { stream, code } => self.on_reset(stream, code),
            Frame::Settings { ack, params } => {
                if !ack {
                    self.settings(&params);
                }
            }
            Frame::Ping { ack, data } => {
                if !ack {
                    frame::put_ping(&mut self.output, true, data);
                }
            }
            Frame::GoAway { last_stream, code } => self.on_goaway(last_stream, code, &payload[8..]),
            Frame::WindowUpdate { stream, increment } => self.on_window_update(stream, increment),
        }
    }

    fn on_reset(&mut self, stream: u32, code: ErrorCode) {
        if stream > self.last_opened() {
            return self.fail(ErrorCode::ProtocolError, "RST_STREAM on an idle stream");
        }
        if let Some(s) = self.streams.get_mut(&stream) {
            s.status.get_or_insert_with(|| {
                Status::new(
                    reset_code(code),
                    format!("stream reset by the server ({code})"),
                )
            });
            s.reset = true;
            s.local_closed = true;
            s.remote_closed = true;
            self.wakes.streams.push(stream);
            self.wakes.slots = true;
        }
    }

    fn on_window_update(&mut self, stream: u32, increment: u32) {
        if stream == 0 {
            self.conn_send_window += increment as i64;
            if self.conn_send_window > frame::MAX_WINDOW as i64 {
                return self.fail(ErrorCode::FlowControlError, "connection window overflow");
            }
            self.wakes.streams.append(&mut self.window_waiters);
        } else if stream > self.last_opened() {
            self.fail(ErrorCode::ProtocolError, "WINDOW_UPDATE on an idle stream");
        } else if let Some(s) = self.streams.get_mut(&stream) {
            s.send_window += increment as i64;
            if s.send_window > frame::MAX_WINDOW as i64 {
                return self.stream_error(stream, ErrorCode::FlowControlError);
            }
            self.wakes.streams.push(stream);
        }
    }

    fn settings(&mut self, params: &[(u16, u32)]) {
        for &(id, value) in params {
            match id {
                setting::INITIAL_WINDOW_SIZE => {
                    let delta = value as i64 - self.peer_initial_window;
                    self.peer_initial_window = value as i64;
                    for s in self.streams.values_mut() {
                        s.send_window += delta;
                        if s.send_window > frame::MAX_WINDOW as i64 {
                            return self
                                .fail(ErrorCode::FlowControlError, "stream window overflow");
                        }
                    }
                    if delta > 0 {
                        self.wakes.streams.append(&mut self.window_waiters);
                    }
                }
                setting::MAX_FRAME_SIZE => self.peer_max_frame = value as usize,
                setting::MAX_CONCURRENT_STREAMS => self.peer_max_streams = value,
                setting::MAX_HEADER_LIST_SIZE => self.peer_max_header_list = value as usize,
                // Our encoder uses no dynamic table: any table size suits it.
                _ => {}
            }
        }
        frame::put_settings_ack(&mut self.output);
        self.settings_seen = true;
        self.wakes.slots = true;
    }

    fn on_goaway(&mut self, last_stream: u32, code: ErrorCode, debug: &[u8]) {
        let mut debug = String::from_utf8_lossy(debug).into_owned();
        if debug.len() > MAX_DEBUG_TEXT {
            let mut cut = MAX_DEBUG_TEXT;
            while !debug.is_char_boundary(cut) {
                cut -= 1;
            }
            debug.truncate(cut);
        }
        // Streams above `last_stream` were not processed: safe to retry.
        for (&id, s) in self.streams.iter_mut() {
            if id > last_stream && s.status.is_none() {
                s.status = Some(Status::new(
                    Code::Unavailable,
                    format!(
                        "the server is going away and did not process the call (GOAWAY {code}{})",
                        debug_suffix(&debug)
                    ),
                ));
                s.reset = true;
                s.local_closed = true;
                s.remote_closed = true;
            }
        }
        self.goaway = Some(GoAway { code, debug });
        self.wakes.all = true;
    }

    fn on_data(&mut self, stream: u32, end_stream: bool, data: &[u8], flow_len: u32) {
        // The connection's window counts every DATA frame, whatever its
        // stream's state.
        self.conn_recv_window -= flow_len as i64;
        if self.conn_recv_window < 0 {
            return self.fail(ErrorCode::FlowControlError, "connection window exceeded");
        }
        if stream > self.last_opened() {
            return self.fail(ErrorCode::ProtocolError, "DATA on an idle stream");
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            // A call the application let go of: the frame was in flight.
            return self.give_back_conn(flow_len as usize);
        };
        if s.reset {
            return self.give_back_conn(flow_len as usize);
        }
        if s.remote_closed {
            self.give_back_conn(flow_len as usize);
            return self.stream_error(stream, ErrorCode::StreamClosed);
        }
        if !s.response_started {
            self.give_back_conn(flow_len as usize);
            return self.stream_error(stream, ErrorCode::ProtocolError);
        }
        s.recv_window -= flow_len as i64;
        if s.recv_window < 0 {
            self.give_back_conn(flow_len as usize);
            return self.stream_error(stream, ErrorCode::FlowControlError);
        }
        // Padding is held until the excess is given back below.
        s.held += flow_len as usize;
        s.deframer.push(data);
        let mut refused = None;
        loop {
            match s.deframer.next(s.max_message) {
                Ok(Some(m)) => {
                    s.queued += g::PREFIX_LEN + m.len();
                    s.messages.push_back(m);
                }
                Ok(None) => break,
                Err(DeframeError::Compressed) => {
                    refused = Some(Status::new(
                        Code::Internal,
                        "the server sent a compressed message; none was asked for",
                    ));
                    break;
                }
                Err(DeframeError::TooLarge { len, max }) => {
                    refused = Some(Status::new(
                        Code::ResourceExhausted,
                        format!(
                            "received a message of {len} bytes, larger than the limit of {max}"
                        ),
                    ));
                    break;
                }
            }
        }
        self.wakes.streams.push(stream);
        self.give_back_excess(stream);
        if let Some(status) = refused {
            return self.cancel(stream, status);
        }
        if end_stream {
            self.remote_end(
                stream,
                Status::new(
                    Code::Internal,
                    "the server ended the stream without trailers",
                ),
            );
        }
    }

    /// A complete header block: a response's headers, or its trailers.
    fn header_block(&mut self) {
        let Partial {
            stream,
            end_stream,
            block,
        } = self.partial.take().expect("a block in progress");
        // Decoded whatever becomes of the stream: the table must stay in
        // step with the server's.
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let too_large = match self
            .decoder
            .decode(&block, |n, v| fields.push((n.to_vec(), v.to_vec())))
        {
            Ok(()) => false,
            Err(DecodeError::TooLarge) => true,
            Err(DecodeError::Compression(_)) => {
                return self.fail(ErrorCode::CompressionError, "invalid header block")
            }
        };
        if stream > self.last_opened() || stream % 2 == 0 {
            return self.fail(
                ErrorCode::ProtocolError,
                "HEADERS on a stream we did not open",
            );
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.reset {
            return;
        }
        if s.remote_closed {
            return self.stream_error(stream, ErrorCode::StreamClosed);
        }
        if too_large {
            return self.cancel(
                stream,
                Status::new(
                    Code::Internal,
                    format!("response headers larger than {MAX_HEADER_LIST} bytes"),
                ),
            );
        }
        if !s.response_started {
            s.response_started = true;
            if let Err(status) = response_head(&fields, end_stream) {
                return self.cancel(stream, status);
            }
            if !end_stream {
                return;
            }
        } else if !end_stream {
            return self.stream_error(stream, ErrorCode::ProtocolError);
        }
        let mut status = trailers_status(&fields);
        if status.code == Code::Ok && s.deframer.pending() > 0 {
            status = Status::new(Code::Internal, "the stream ended inside a message");
        }
        self.remote_end(stream, status);
    }

    /// The server closed its side; `status` is the call's unless it has
    /// one. Our side is considered closed too: once a call has its status
    /// nothing we send matters, and the server resets the stream if it
    /// still waits for us (RFC 9113 section 8.1; grpc-go and ours do).
    fn remote_end(&mut self, stream: u32, status: Status) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        s.status.get_or_insert(status);
        s.remote_closed = true;
        s.local_closed = true;
        self.window_waiters.retain(|&w| w != stream);
        self.wakes.streams.push(stream);
        self.wakes.slots = true;
    }

    // ---- errors ----

    /// A connection error by the server: GOAWAY, and the connection is over.
    fn fail(&mut self, code: ErrorCode, why: &str) {
        if self.lost.is_some() {
            return;
        }
        frame::put_goaway(&mut self.output, 0, code, why.as_bytes());
        self.partial = None;
        self.lose(&format!("HTTP/2 error by the server: {code}: {why}"));
    }

    /// A stream error by the server: RST_STREAM, and the call is INTERNAL.
    fn stream_error(&mut self, stream: u32, code: ErrorCode) {
        let Some(s) = self.streams.get_mut(&stream) else {
            frame::put_rst_stream(&mut self.output, stream, code);
            return;
        };
        s.status.get_or_insert_with(|| {
            Status::new(
                Code::Internal,
                format!("HTTP/2 stream error by the server: {code}"),
            )
        });
        if !s.reset {
            frame::put_rst_stream(&mut self.output, stream, code);
        }
        s.reset = true;
        s.local_closed = true;
        s.remote_closed = true;
        self.wakes.streams.push(stream);
        self.wakes.slots = true;
    }

    // ---- flow control, receive side ----

    /// Gives back what the stream holds beyond its queued messages.
    fn give_back_excess(&mut self, stream: u32) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.held <= s.queued {
            return;
        }
        let n = s.held - s.queued;
        s.held = s.queued;
        if !s.remote_closed && !s.reset {
            s.unannounced += n as u32;
            if s.unannounced >= STREAM_UPDATE_AT {
                frame::put_window_update(&mut self.output, stream, s.unannounced);
                s.recv_window += s.unannounced as i64;
                s.unannounced = 0;
            }
        }
        self.give_back_conn(n);
    }

    fn give_back_conn(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.conn_unannounced += n as u32;
        if self.conn_unannounced >= CONN_UPDATE_AT {
            if self.lost.is_none() {
                frame::put_window_update(&mut self.output, 0, self.conn_unannounced);
            }
            self.conn_recv_window += self.conn_unannounced as i64;
            self.conn_unannounced = 0;
        }
    }
}

fn debug_suffix(debug: &str) -> String {
    if debug.is_empty() {
        String::new()
    } else {
        format!(": {debug}")
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
