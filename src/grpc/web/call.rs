//! The call interface ([`crate::grpc::call`]) over one gRPC-Web response:
//! [`WebCall`] is held by the call's stream thread, which is also the only
//! writer of the response (HTTP/1.1 has one response per connection at a
//! time, so there is no connection writer to share, unlike HTTP/2).
//!
//! A SubscribeMessages call that [`Follow`]s its subscription does the
//! SSE stream thread's work in [`Call::wait`]: it sleeps on the room log
//! and sends everything up to the tail (at most a burst) as one HTTP chunk,
//! so under load one wake-up carries many messages. The handler's loop
//! (`streams::run_subscriber`) is the same as for native gRPC, and so are
//! its welcome, presence, close reasons and statuses.
//!
//! The first write starts a chunked `200` response; a call that ends
//! before it wrote anything is answered trailers-only (the status in the
//! HTTP headers, no body), as the protocol asks.

use std::io;
use std::task::Poll;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use protobuf::Message as _;

use super::framing::{self, Mode};
use crate::grpc::call::{
    Call, Code, Follow, Interrupted, Received, Reply, Requests, Responses, Status, WriteError,
};
use crate::grpc::h2::grpc as g;
use crate::grpc::wire::{self, Outbound};
use crate::hub::{CloseReason, Subscription, Wait, MAX_BURST};

/// A burst stops growing at this many bytes (as an SSE stream's does).
const MAX_BURST_BYTES: usize = 128 * 1024;
/// How often an idle call looks whether its client is still there. gRPC-Web
/// has no keep-alive frame (an empty data frame would decode as an empty
/// message), so a quiet stream finds a vanished browser this way.
const LIVENESS_CHECK: Duration = Duration::from_secs(3);

/// What a gRPC-Web call needs of the HTTP connection it answers on. The
/// HTTP layer implements it (wired in `crate::bridge`): the gRPC side never
/// names the HTTP layer's types, nor it ours.
pub trait Sink: Send + 'static {
    /// The client's address.
    fn peer(&self) -> String;
    /// Answers the whole request at once: `200`, these headers (CORS is the
    /// HTTP layer's) and `body` with a length. The connection may serve
    /// the next request.
    fn respond(self: Box<Self>, headers: Vec<(&'static str, String)>, body: Vec<u8>);
    /// Answers with an HTTP error (`status`, a JSON `{"error"}` body): for a
    /// request that is not gRPC-Web at all.
    fn refuse(self: Box<Self>, status: u16, message: &str);
    /// Starts a chunked `200` response with these headers.
    fn begin(&mut self, headers: Vec<(&'static str, String)>) -> io::Result<()>;
    /// Sends `pieces` as one chunk. A write blocked on a full socket fails
    /// once `give_up` holds, or after the write timeout without progress.
    fn chunk(&mut self, pieces: &[&[u8]], give_up: &dyn Fn() -> bool) -> io::Result<()>;
    /// Ends the response and closes the connection: with `last` (the
    /// trailer), a last chunk and the chunked body's end; without, only the
    /// close (a write failed: the body is broken and must not be ended as
    /// if whole). A blocked write gives up once `give_up` holds.
    fn end(self: Box<Self>, last: Option<&[u8]>, give_up: &dyn Fn() -> bool);
    /// True once the client closed its end. Never blocks.
    fn client_gone(&mut self) -> bool;
    /// A room stream's burst was taken, up to sequence `newest`: the
    /// stream thread's CPU priority follows the room's rate as an SSE
    /// stream thread's does (`--stream-priority`).
    fn room_burst(&mut self, newest: u64);
}

/// One gRPC-Web call on one HTTP connection.
pub struct WebCall {
    sink: Option<Box<dyn Sink>>,
    mode: Mode,
    peer: String,
    /// Never receives: `Call::woken` has nothing to say on this transport.
    woken: Receiver<()>,
    stopping: Option<Receiver<()>>,
    deadline: Option<Instant>,
    /// The response head is out (a chunked body has begun).
    begun: bool,
    /// A write failed or the client left.
    gone: bool,
    /// The subscription this call follows, while it does.
    sub: Option<Subscription>,
    /// The hub ended the followed subscription.
    sub_ended: bool,
    /// ... because its client fell a window behind: it is not reading, so
    /// the trailer gets one try, not the write timeout.
    evicted: bool,
    next_check: Instant,
    /// Prefixes of the burst being written, and the burst's messages and
    /// pieces: one allocation each for the call's life, not one per burst
    /// (why it matters at SCHED_IDLE: `http::stream`'s loop says).
    prefixes: Vec<[u8; g::PREFIX_LEN]>,
    spare_messages: Vec<&'static [u8]>,
    spare_pieces: Vec<&'static [u8]>,
    /// The request's headers, as a native call's metadata (a resuming
    /// subscriber's `last-message-id`, for one).
    metadata: Vec<(String, Vec<u8>)>,
}

/// An empty vector with the allocation of `v`, whatever the lifetime of
/// what `v` pointed into (`collect` of a vector's own iterator reuses its
/// buffer, and an empty one maps nothing).
fn recycle<'b>(mut v: Vec<&'_ [u8]>) -> Vec<&'b [u8]> {
    v.clear();
    v.into_iter().map(|_| unreachable!("empty")).collect()
}

impl WebCall {
    pub fn new(
        sink: Box<dyn Sink>,
        mode: Mode,
        stopping: Receiver<()>,
        deadline: Option<Instant>,
    ) -> WebCall {
        let peer = sink.peer();
        WebCall {
            sink: Some(sink),
            mode,
            peer,
            woken: crossbeam_channel::never(),
            stopping: Some(stopping),
            deadline,
            begun: false,
            gone: false,
            sub: None,
            sub_ended: false,
            evicted: false,
            next_check: Instant::now() + LIVENESS_CHECK,
            prefixes: Vec::new(),
            spare_messages: Vec::new(),
            spare_pieces: Vec::new(),
            metadata: Vec::new(),
        }
    }

    /// The request's headers (names lower case), for [`Call::metadata`].
    pub fn with_metadata(mut self, metadata: Vec<(String, Vec<u8>)>) -> WebCall {
        self.metadata = metadata;
        self
    }

    /// `until`, or the deadline if that comes first.
    fn bound(&self, until: Option<Instant>) -> Option<Instant> {
        match (until, self.deadline) {
            (Some(u), Some(d)) => Some(u.min(d)),
            (u, d) => u.or(d),
        }
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("Content-Type", self.mode.content_type().to_string()),
            ("Cache-Control", "no-cache".to_string()),
            ("X-Accel-Buffering", "no".to_string()),
        ]
    }

    /// Writes data frames (each a prefix and a message) as one chunk,
    /// starting the response first if needed.
    fn write_frames(&mut self, messages: &[&[u8]], give_up: &dyn Fn() -> bool) -> io::Result<()> {
        let headers = (!self.begun).then(|| self.headers());
        let sink = self.sink.as_mut().ok_or(io::ErrorKind::NotConnected)?;
        if let Some(headers) = headers {
            sink.begin(headers)?;
            self.begun = true;
        }
        match self.mode {
            Mode::Binary => {
                self.prefixes.clear();
                self.prefixes
                    .extend(messages.iter().map(|m| g::prefix(m.len())));
                let mut pieces = recycle(std::mem::take(&mut self.spare_pieces));
                for (prefix, m) in self.prefixes.iter().zip(messages) {
                    pieces.push(prefix);
                    pieces.push(m);
                }
                let written = sink.chunk(&pieces, give_up);
                self.spare_pieces = recycle(pieces);
                written
            }
            Mode::Text => {
                let mut frames = Vec::new();
                for m in messages {
                    framing::put_message(&mut frames, m);
                }
                sink.chunk(&[&Mode::Text.encode(frames)], give_up)
            }
        }
    }

    /// Ends the call with `status`: trailers-only before any message, else
    /// the trailer frame and the end of the body (just the close after a
    /// failed write).
    fn end(&mut self, status: &Status) {
        let Some(sink) = self.sink.take() else {
            return;
        };
        if !self.begun {
            let mut headers = self.headers();
            headers.extend(framing::status_headers(status));
            sink.respond(headers, Vec::new());
            return;
        }
        if self.gone {
            sink.end(None, &|| true);
            return;
        }
        let trailer = self.mode.encode(framing::trailer_frame(status));
        let stuck = self.evicted;
        sink.end(Some(&trailer), &|| stuck);
    }

    /// The followed subscription's burst: everything up to the tail (at
    /// most [`MAX_BURST`] messages and [`MAX_BURST_BYTES`]) in one chunk.
    fn send_burst(&mut self) {
        let Some(mut sub) = self.sub.take() else {
            return;
        };
        let (mut taken, mut bytes) = (0, 0);
        // A notice goes before the messages taken with it.
        let notice = sub.notice().map(|n| {
            let message = crate::grpc::convert::notice_message(sub.room(), &n);
            message.write_to_bytes().unwrap_or_default()
        });
        let mut messages = recycle(std::mem::take(&mut self.spare_messages));
        if let Some(notice) = &notice {
            messages.push(notice);
        }
        let mut newest = 0;
        for m in sub.peek(MAX_BURST) {
            if bytes >= MAX_BURST_BYTES {
                break;
            }
            let encoded = wire::shared_bytes(m);
            bytes += encoded.len() + g::PREFIX_LEN;
            messages.push(encoded);
            newest = m.seq;
            taken += 1;
        }
        sub.claim(taken);
        if let Some(sink) = self.sink.as_mut() {
            sink.room_burst(newest);
        }
        // A write blocked on a client that stopped reading gives up as
        // soon as the hub drops it, not at the write timeout.
        let evicted = || sub.close_reason() == Some(CloseReason::SlowConsumer);
        let written = self.write_frames(&messages, &evicted);
        self.spare_messages = recycle(messages);
        if written.is_err() {
            self.gone = true;
        } else {
            sub.advance(taken);
        }
        self.sub = Some(sub);
    }

    fn check_client(&mut self) {
        let now = Instant::now();
        if now >= self.next_check {
            self.next_check = now + LIVENESS_CHECK;
            if let Some(sink) = self.sink.as_mut() {
                self.gone |= sink.client_gone();
            }
        }
    }
}

impl Call for WebCall {
    fn metadata(&self, name: &str) -> Option<&[u8]> {
        self.metadata
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Following a subscription: sleeps on it and sends what arrives.
    /// Otherwise: sleeps until `until`, the deadline, shutdown or the next
    /// look at the client (then `Ok`, so that the caller asks
    /// [`Responses::client_gone`]).
    fn wait(&self, until: Option<Instant>) -> Result<(), Interrupted> {
        if self.sub.is_some() {
            // `Follow::following` did the waiting (on the room log).
            return match self.deadline_passed() {
                true => Err(Interrupted::TimedOut),
                false => Ok(()),
            };
        }
        let never = crossbeam_channel::never();
        let stopping = self.stopping.as_ref().unwrap_or(&never);
        let bound = self.bound(until);
        let wake = bound.map_or(self.next_check, |b| b.min(self.next_check));
        crossbeam_channel::select! {
            recv(stopping) -> _ => Err(Interrupted::Stopping),
            default(wake.saturating_duration_since(Instant::now())) => {
                if bound.is_some_and(|b| Instant::now() >= b) {
                    Err(Interrupted::TimedOut)
                } else {
                    Ok(())
                }
            }
        }
    }

    fn woken(&self) -> &Receiver<()> {
        &self.woken
    }

    fn ignore_stopping(&mut self) {
        self.stopping = None;
    }

    fn peer(&self) -> &str {
        &self.peer
    }

    fn deadline_passed(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// What a response message is as bytes.
pub trait Encode {
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R;
}

impl Encode for Outbound {
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            Outbound::Shared(m) => f(wire::shared_bytes(m)),
            Outbound::Own(m) => f(&m.write_to_bytes().unwrap_or_default()),
        }
    }
}

impl<M: protobuf::Message> Encode for M {
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(&self.write_to_bytes().unwrap_or_default())
    }
}

impl<T: Encode> Responses<T> for WebCall {
    fn send_all(
        &mut self,
        items: impl IntoIterator<Item = T>,
        _timeout: Duration,
    ) -> Result<(), WriteError> {
        if self.gone || self.deadline_passed() {
            return Err(WriteError::Gone);
        }
        let owned: Vec<Vec<u8>> = items
            .into_iter()
            .map(|item| item.with_bytes(<[u8]>::to_vec))
            .collect();
        let messages: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        // The write timeout is the HTTP layer's (`--write-timeout-secs`).
        if self.write_frames(&messages, &|| false).is_err() {
            self.gone = true;
            return Err(WriteError::Gone);
        }
        Ok(())
    }

    fn client_gone(&mut self) -> bool {
        self.next_check = Instant::now();
        self.check_client();
        self.gone || self.deadline_passed()
    }

    fn finish(mut self, status: Status, _timeout: Duration) {
        self.end(&status);
    }
}

impl Follow for WebCall {
    fn follow(&mut self, sub: Subscription) -> Result<(), Subscription> {
        if self.gone {
            return Err(sub);
        }
        self.sub = Some(sub);
        Ok(())
    }

    /// Also does the following: waits on the room log (until the next look
    /// at the client or the deadline) and sends what it finds.
    fn following(&mut self) -> bool {
        if self.gone || self.sub_ended || self.deadline_passed() {
            return false;
        }
        let Some(sub) = self.sub.as_ref() else {
            return false;
        };
        let until = self.bound(Some(self.next_check));
        match sub.wait(until) {
            Wait::Ready => self.send_burst(),
            Wait::Closed(reason) => {
                self.sub_ended = true;
                self.evicted = reason == CloseReason::SlowConsumer;
            }
            Wait::TimedOut => self.check_client(),
        }
        !(self.gone || self.sub_ended)
    }

    fn unfollow(&mut self) -> Option<Subscription> {
        self.sub.take()
    }
}

/// Client streaming cannot reach this transport (answered UNIMPLEMENTED
/// before any handler); these keep the handler traits' bounds whole.
impl<T> Requests<T> for WebCall {
    fn poll_next(&mut self) -> Poll<Received<T>> {
        Poll::Ready(Received::Ended)
    }

    fn next(&mut self, _until: Option<Instant>) -> Result<Received<T>, Interrupted> {
        Ok(Received::Ended)
    }
}

impl<T: Encode> Reply<T> for WebCall {
    fn reply(mut self, answer: Result<T, Status>, timeout: Duration) {
        match answer {
            Ok(resp) => {
                let _ = Responses::send_all(&mut self, [resp], timeout);
                self.end(&Status::ok());
            }
            Err(st) => self.end(&st),
        }
    }
}

impl Drop for WebCall {
    /// A call dropped unfinished: DEADLINE_EXCEEDED if that is why (the
    /// same as native gRPC), else the client left and the connection just
    /// closes.
    fn drop(&mut self) {
        if self.sink.is_none() {
            return;
        }
        if self.deadline_passed() && !self.gone {
            self.end(&Status::new(Code::DeadlineExceeded, "deadline exceeded"));
        } else if let Some(sink) = self.sink.take() {
            // The client went away (cancelled): there is no one to tell.
            sink.end(None, &|| true);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::grpc::call::Code;
    use crate::proto::chat;

    /// Headers and body of a whole answer.
    type Answer = (Vec<(&'static str, String)>, Vec<u8>);

    /// What a call did to its connection.
    #[derive(Debug, Default)]
    struct Wire {
        answered: Option<Answer>,
        begun: bool,
        chunks: Vec<Vec<u8>>,
        ended_with: Option<Option<Vec<u8>>>,
    }

    /// A connection that records, and fails writes when told to.
    struct Recorder(Arc<Mutex<Wire>>, bool);

    impl Sink for Recorder {
        fn peer(&self) -> String {
            "test".into()
        }
        fn respond(self: Box<Self>, headers: Vec<(&'static str, String)>, body: Vec<u8>) {
            self.0.lock().unwrap().answered = Some((headers, body));
        }
        fn refuse(self: Box<Self>, _status: u16, _message: &str) {}
        fn begin(&mut self, _headers: Vec<(&'static str, String)>) -> io::Result<()> {
            self.0.lock().unwrap().begun = true;
            Ok(())
        }
        fn chunk(&mut self, pieces: &[&[u8]], _give_up: &dyn Fn() -> bool) -> io::Result<()> {
            if self.1 {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            self.0.lock().unwrap().chunks.push(pieces.concat());
            Ok(())
        }
        fn end(self: Box<Self>, last: Option<&[u8]>, _give_up: &dyn Fn() -> bool) {
            self.0.lock().unwrap().ended_with = Some(last.map(<[u8]>::to_vec));
        }
        fn client_gone(&mut self) -> bool {
            false
        }
        fn room_burst(&mut self, _newest: u64) {}
    }

    fn call(mode: Mode, deadline: Option<Instant>, failing: bool) -> (WebCall, Arc<Mutex<Wire>>) {
        let wire = Arc::new(Mutex::new(Wire::default()));
        let sink = Box::new(Recorder(wire.clone(), failing));
        let call = WebCall::new(sink, mode, crossbeam_channel::never(), deadline);
        (call, wire)
    }

    fn metric(name: &str) -> chat::Metric {
        let mut m = chat::Metric::new();
        m.name = name.into();
        m
    }

    #[test]
    fn an_end_before_any_message_is_trailers_only() {
        let (call, wire) = call(Mode::Binary, None, false);
        let st = Status::new(Code::InvalidArgument, "room: bad");
        Responses::<chat::Metric>::finish(call, st, Duration::ZERO);
        let wire = wire.lock().unwrap();
        let (headers, body) = wire.answered.as_ref().expect("answered at once");
        assert!(body.is_empty() && !wire.begun);
        assert!(headers.contains(&("grpc-status", "3".into())));
        assert!(headers.contains(&("grpc-message", "room: bad".into())));
    }

    #[test]
    fn messages_go_as_one_chunk_per_burst_then_the_trailer_ends_the_body() {
        let (mut call, wire) = call(Mode::Binary, None, false);
        call.send_all([metric("a"), metric("b")], Duration::ZERO)
            .unwrap();
        Responses::<chat::Metric>::finish(call, Status::ok(), Duration::ZERO);
        let wire = wire.lock().unwrap();
        assert!(wire.begun);
        assert_eq!(wire.chunks.len(), 1, "one burst, one chunk");
        let mut expected = Vec::new();
        for name in ["a", "b"] {
            framing::put_message(&mut expected, &metric(name).write_to_bytes().unwrap());
        }
        assert_eq!(wire.chunks[0], expected);
        let last = wire.ended_with.clone().unwrap().unwrap();
        assert_eq!(last, framing::trailer_frame(&Status::ok()));
    }

    #[test]
    fn text_mode_sends_each_chunk_in_base64_of_its_own() {
        let (mut call, wire) = call(Mode::Text, None, false);
        call.send_all([metric("a")], Duration::ZERO).unwrap();
        call.send_all([metric("b")], Duration::ZERO).unwrap();
        drop(call);
        let wire = wire.lock().unwrap();
        let mut frames = Vec::new();
        framing::put_message(&mut frames, &metric("b").write_to_bytes().unwrap());
        assert_eq!(framing::decode_text(&wire.chunks[1]), Some(frames));
    }

    #[test]
    fn a_failed_write_ends_the_call_without_a_trailer() {
        let (mut call, wire) = call(Mode::Binary, None, true);
        assert_eq!(
            call.send_all([metric("a")], Duration::ZERO),
            Err(WriteError::Gone)
        );
        assert!(Responses::<chat::Metric>::client_gone(&mut call));
        Responses::<chat::Metric>::finish(call, Status::ok(), Duration::ZERO);
        assert_eq!(wire.lock().unwrap().ended_with, Some(None));
    }

    #[test]
    fn a_call_dropped_past_its_deadline_ends_with_deadline_exceeded() {
        let (call, wire) = call(Mode::Binary, Some(Instant::now()), false);
        assert_eq!(call.wait(None), Err(Interrupted::TimedOut));
        drop(call);
        let wire = wire.lock().unwrap();
        let (headers, _) = wire.answered.as_ref().expect("trailers-only");
        assert!(headers.contains(&("grpc-status", "4".into())));
    }
}
