//! Event streams: `GET /events` (a room) and `GET /metrics/events`. Each
//! runs on its own named thread that is the only writer of its socket and
//! blocks on the hub queue, a timer and shutdown, never on a lock. On a TLS
//! port the thread also owns the connection's TLS session: it encrypts its
//! events and reads the client's records itself to notice it leaving (a
//! session is never driven by two threads).

use std::cell::RefCell;
use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::Conn;
use super::response::Response;
use super::routes::{error_response, EventsParams, MetricsParams};
use super::sse;
use super::wire::Tls;
use super::Shared;
use crate::auth::TOKEN_EXPIRED_NOTICE;
use crate::hub::{
    CloseReason, Message, MessageKind, Presence, Protocol, Replay, Subscription, Wait, MAX_BURST,
    SHUTDOWN_NOTICE,
};
use crate::metrics::MetricsSampler;
use crate::threads::Permit;

/// A burst stops growing at this many bytes: several socket buffers' worth
/// keeps the socket full, and a smaller burst lets the position move on
/// sooner (large messages would otherwise make one burst megabytes).
const MAX_BURST_BYTES: usize = 128 * 1024;
/// How often a write blocked on a full socket looks up to see whether the
/// hub dropped its subscriber (then it gives up at once).
const GIVE_UP_CHECK: Duration = Duration::from_millis(100);
/// How often an idle event stream checks that its client is still there
/// (a non-blocking peek). Without it a client that left is noticed only at
/// the next keep-alive write, holding a thread and a queue until then.
const LIVENESS_CHECK: Duration = Duration::from_secs(3);
/// "Never", as an instant that can be compared with (a year away).
const FOREVER: Duration = Duration::from_secs(365 * 86_400);
/// Slices per `writev`; under every system's IOV_MAX (1,024 on Linux), and
/// more than a burst, so a burst is one call when the socket takes it.
const MAX_SLICES: usize = MAX_BURST + 1;

/// Which stream a request opens.
pub(super) enum Kind {
    Events(EventsParams),
    Metrics(MetricsParams),
}

/// Everything a stream thread takes over.
struct Opened {
    conn: Conn,
    permit: Permit,
    events: Option<EventsStart>,
}

/// A room stream, made ready on the worker: subscribed, its first bytes
/// made, its presence announced. The one-off work (formatting, logging,
/// the JOIN's encoding) happens here so that the stream thread's stack
/// stays shallow: an idle stream costs the pages its thread ever touched.
struct EventsStart {
    params: EventsParams,
    sub: Subscription,
    opening: Vec<u8>,
    presence: Presence,
}

/// A stream that could not open: its connection and what to answer.
pub(super) type Refused = Box<(Conn, Response)>;

/// Runs on a worker: checks the cap, subscribes (so that the subscription
/// is registered before the client hears anything) and starts the stream's
/// thread. On refusal the connection comes back with the response to send.
pub(super) fn open(
    shared: &Arc<Shared>,
    conn: Conn,
    kind: Kind,
    cors: Vec<(&'static str, String)>,
) -> Result<(), Refused> {
    if shared.is_stopping() {
        return Err(Box::new((conn, Response::unavailable(SHUTDOWN_NOTICE, 1))));
    }
    let Some(permit) = shared.sse_streams.take(shared.config.max_sse_clients) else {
        let limit = shared.config.max_sse_clients;
        let message = format!("too many event streams (limit {limit})");
        return Err(Box::new((conn, Response::unavailable(&message, 5))));
    };
    let (kind, events) = match kind {
        Kind::Events(params) => {
            let (sub, replay) =
                match shared
                    .hub
                    .subscribe(&params.room, params.after_seq, Protocol::Sse)
                {
                    Ok(subscribed) => subscribed,
                    Err(e) => return Err(Box::new((conn, error_response(&e)))),
                };
            let room = sub.room().clone();
            log::info!(
                "SSE opened: room={room} user={:?} after={:?} replaying={} peer={}",
                params.user,
                params.after_seq,
                replay.replayed,
                conn.peer
            );
            let mut opening = preamble(shared, &cors);
            if let Some(notice) = replay_notice(&room, params.after_seq, &replay) {
                if params.types.passes(MessageKind::System) {
                    opening.extend_from_slice(&notice);
                }
            }
            let presence = shared.hub.presence(&room, &params.user);
            (
                None,
                Some(EventsStart {
                    params,
                    sub,
                    opening,
                    presence,
                }),
            )
        }
        Kind::Metrics(params) => (Some(params), None),
    };
    // What the request line and headers needed is done with.
    let mut conn = conn;
    conn.incoming.release();
    let name = if events.is_some() {
        "sse"
    } else {
        "sse-metrics"
    };
    // The connection travels to the new thread; if the thread cannot start
    // it comes back here to be answered.
    let opened = Opened {
        conn,
        permit,
        events,
    };
    let thread_shared = shared.clone();
    let stack = Some(shared.config.stream_stack_bytes);
    let spawned = shared
        .threads
        .spawn_with(name, stack, opened, move |opened| {
            let Opened {
                conn,
                permit,
                events,
            } = opened;
            match (events, kind) {
                (Some(start), _) => run_events(&thread_shared, conn, start),
                (None, Some(params)) => run_metrics(&thread_shared, conn, &cors, params),
                (None, None) => {}
            }
            drop(permit);
        });
    match spawned {
        Ok(()) => {
            shared.telemetry.http_response(200);
            Ok(())
        }
        Err((opened, e)) => {
            log::warn!("cannot start an event stream thread: {e}");
            let response = Response::unavailable("cannot start a stream thread", 1);
            Err(Box::new((opened.conn, response)))
        }
    }
}

/// A stream thread's socket for writing, and its TLS session when the port
/// speaks TLS. The socket's own timeout is short so that a blocked write
/// can look up between tries (has the hub dropped this subscriber?); a
/// write fails only after `timeout` without progress.
pub(super) struct Patient<'a> {
    stream: &'a TcpStream,
    /// Borrowed by one write or liveness check at a time, all on this
    /// thread.
    tls: Option<RefCell<Box<Tls>>>,
    timeout: Duration,
}

impl<'a> Patient<'a> {
    pub(super) fn new(
        stream: &'a TcpStream,
        tls: Option<Box<Tls>>,
        timeout: Duration,
    ) -> Patient<'a> {
        let _ = stream.set_write_timeout(Some(GIVE_UP_CHECK.min(timeout)));
        Patient::again(stream, tls, timeout)
    }

    /// The writer of a socket [`Patient::new`] already set up, for a
    /// thread that keeps the connection (and its TLS session) between
    /// writes.
    pub(super) fn again(
        stream: &'a TcpStream,
        tls: Option<Box<Tls>>,
        timeout: Duration,
    ) -> Patient<'a> {
        Patient {
            stream,
            tls: tls.map(RefCell::new),
            timeout,
        }
    }

    /// Gives the TLS session back to the connection that keeps it.
    pub(super) fn into_tls(self) -> Option<Box<Tls>> {
        self.tls.map(RefCell::into_inner)
    }

    /// Whether the client closed its end (see [`client_gone`]).
    pub(super) fn client_gone(&self) -> bool {
        match &self.tls {
            None => client_gone(self.stream),
            Some(tls) => tls.borrow_mut().client_gone(self.stream),
        }
    }

    /// The stream's end: close_notify on TLS (one try: a client that does
    /// not read gets no more of our time), then both directions.
    pub(super) fn close(&self) {
        if let Some(tls) = &self.tls {
            let mut tls = tls.borrow_mut();
            tls.close_notify();
            let _ = tls.write_records(self.stream);
        }
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    pub(super) fn plain(&self) -> PatientWrite<'_> {
        self.giving_up_when(&|| false)
    }

    /// Writes that also fail, at their next look, once `give_up` holds.
    pub(super) fn giving_up_when<'b>(&'b self, give_up: &'b dyn Fn() -> bool) -> PatientWrite<'b> {
        PatientWrite {
            stream: self.stream,
            tls: self.tls.as_ref(),
            timeout: self.timeout,
            give_up,
        }
    }
}

pub(super) struct PatientWrite<'b> {
    stream: &'b TcpStream,
    tls: Option<&'b RefCell<Box<Tls>>>,
    timeout: Duration,
    give_up: &'b dyn Fn() -> bool,
}

impl PatientWrite<'_> {
    fn retry(&self, mut f: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
        let until = Instant::now() + self.timeout;
        loop {
            match f() {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) && !(self.give_up)()
                        && Instant::now() < until => {}
                other => return other,
            }
        }
    }
}

impl PatientWrite<'_> {
    /// Sends every record the session holds, patiently.
    fn send_records(&self, tls: &mut Tls) -> io::Result<()> {
        while tls.wants_write() {
            if self.retry(|| tls.write_records(self.stream))? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }
}

impl Write for PatientWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let stream = self.stream;
        let Some(tls) = self.tls else {
            return self.retry(|| (&*stream).write_vectored(bufs));
        };
        // rustls takes up to its buffer limit (64 KiB) of plaintext, and
        // what it took is on the wire before this returns, like a socket
        // write.
        let mut tls = tls.borrow_mut();
        self.send_records(&mut tls)?;
        let n = tls.queue(bufs)?;
        self.send_records(&mut tls)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes every piece, in order, with as few `writev` calls as the socket
/// allows. The pieces are cached encodings shared by all subscribers, so
/// nothing is copied.
pub(super) fn write_pieces(out: impl Write, pieces: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<IoSlice> = pieces.iter().map(|p| IoSlice::new(p)).collect();
    write_slices(out, &mut slices)
}

/// Writes every slice, in order, with as few `writev` calls as the socket
/// allows ([`MAX_SLICES`] at most each). Allocates nothing: the stream loop
/// calls it for every burst.
pub(super) fn write_slices(mut out: impl Write, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let n = slices.len().min(MAX_SLICES);
        match out.write_vectored(&slices[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut slices, written),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An empty vector of slices with the allocation of `v`, whatever the
/// lifetime of what `v` pointed into. The stream loop's burst borrows from
/// the subscription, which must be free again (to move on) before the next
/// burst; this keeps one allocation for the stream's whole life. (`collect`
/// of a vector's own iterator reuses its buffer, and an empty one maps
/// nothing.)
fn recycle<'b>(mut v: Vec<IoSlice<'_>>) -> Vec<IoSlice<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!("empty")).collect()
}

/// Why writing failed: a timeout means the client stopped reading.
fn write_failure(e: &io::Error) -> CloseReason {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CloseReason::WriteFailed,
        _ => CloseReason::ClientClosed,
    }
}

/// Whether the client closed its end: a read without blocking sees end of
/// file. (Writes notice it only one write late.)
fn client_gone(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut byte = [0u8; 1];
    let gone = match stream.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    };
    gone || stream.set_nonblocking(false).is_err()
}

/// The head of an event stream and its opening lines: `: connected` and
/// the reconnection delay.
fn preamble(shared: &Shared, cors: &[(&'static str, String)]) -> Vec<u8> {
    let mut head = Response::event_stream();
    head.headers.extend(cors.iter().cloned());
    let mut out = head.head_bytes(true);
    sse::write_comment(&mut out, "connected");
    sse::write_retry(&mut out, shared.config.sse_retry_ms);
    out
}

/// The notice that comes before a replay with a gap in it.
fn replay_notice(room: &str, after: Option<u64>, replay: &Replay) -> Option<Vec<u8>> {
    let position = format!("last event id {}", after.unwrap_or_default());
    let (content, missed) = replay.gap_notice(room, &position)?;
    Some(sse::system_notice(room, &content, Some(("missed", missed))))
}

fn encoded(m: &Message) -> &[u8] {
    m.encoded(Protocol::Sse, sse::encode_message)
}

/// Runs on `sse-N`: the room's messages as events until the client leaves,
/// falls behind or the server stops. Takes no lock: it reads the room log
/// from its own position and sends everything up to the tail (at most a
/// burst) with one `writev`.
fn run_events(shared: &Shared, mut conn: Conn, start: EventsStart) {
    let EventsStart {
        params,
        mut sub,
        opening,
        presence,
    } = start;
    // Room streams yield the CPU to the threads that accept publishes (see
    // `threads::Priority`); metrics streams, few and light, do not.
    shared.config.stream_priority.apply_to_current_thread();
    let send_buffer = shared.config.sse_send_buffer;
    if send_buffer > 0 {
        if let Err(e) = crate::sys::set_send_buffer(&conn.stream, send_buffer) {
            log::debug!("cannot set an event stream's send buffer: {e}");
        }
    }
    let room = sub.room().clone();
    let tls = conn.tls.take();
    let stream = &conn.stream;
    let types = params.types;
    let user = params.user.as_str();
    let out = Patient::new(stream, tls, shared.config.write_timeout);
    let mut reason = write_pieces(out.plain(), &[&opening])
        .err()
        .map(|e| write_failure(&e));
    drop(opening);
    let keepalive = shared.config.sse_keepalive;
    let mut next_beat = Instant::now() + keepalive;
    let mut next_check = Instant::now() + LIVENESS_CHECK;
    // The token's expiry, by the monotonic clock; far away without one.
    let expires = params
        .expires
        .map_or(next_check + FOREVER, crate::access::expiry_instant);
    // Why no allocation per burst: with a thousand stream threads at
    // SCHED_IDLE, malloc's arena locks are shared by many of them, and one
    // preempted while holding a lock stalls every thread that needs that
    // arena until a CPU is free (the profile showed the lock waits; p99 at
    // 400 msgs/s was 3-4x the prototype's, which allocates nothing here).
    // Empty until the first burst: an idle stream holds no buffer.
    let mut spare: Vec<IoSlice<'static>> = Vec::new();
    let mut busy = crate::threads::BusyRoom::new(shared.config.stream_priority);
    while reason.is_none() {
        match sub.wait(Some(next_beat.min(next_check).min(expires))) {
            Wait::Ready => {
                let (mut taken, mut bytes, mut newest) = (0, 0, 0);
                // A notice (no id: the resume position stays where it is)
                // goes before the messages taken with it.
                let notice = sub
                    .notice()
                    .filter(|_| types.passes(MessageKind::System))
                    .map(|n| sse::system_notice(&room, &n.text, None));
                let mut pieces = recycle(std::mem::take(&mut spare));
                if let Some(notice) = &notice {
                    pieces.push(IoSlice::new(notice));
                }
                for m in sub.peek(MAX_BURST) {
                    if bytes >= MAX_BURST_BYTES {
                        break;
                    }
                    taken += 1;
                    newest = m.seq;
                    if types.passes(m.kind) {
                        let piece = encoded(m);
                        bytes += piece.len();
                        pieces.push(IoSlice::new(piece));
                    }
                }
                sub.claim(taken);
                if busy.observe(newest, Instant::now()) {
                    crate::threads::Priority::Idle.apply_to_current_thread();
                }
                // A writer blocked on a client that stopped reading gives up
                // as soon as the hub drops it, not at the write timeout.
                let evicted = || sub.close_reason() == Some(CloseReason::SlowConsumer);
                reason = write_slices(out.giving_up_when(&evicted), &mut pieces)
                    .err()
                    .map(|e| {
                        sub.close_reason()
                            .filter(|r| *r == CloseReason::SlowConsumer)
                            .unwrap_or_else(|| write_failure(&e))
                    });
                // The borrowed pieces go before the position moves.
                spare = recycle(pieces);
                sub.advance(taken);
                next_beat = Instant::now() + keepalive;
            }
            Wait::Closed(r) => reason = Some(r),
            Wait::TimedOut => {
                let now = Instant::now();
                if now >= expires {
                    reason = Some(CloseReason::TokenExpired);
                } else if now >= next_beat {
                    reason = keep_alive(&out);
                    next_beat = now + keepalive;
                    next_check = now + LIVENESS_CHECK;
                } else if now >= next_check {
                    if out.client_gone() {
                        reason = Some(CloseReason::ClientClosed);
                    }
                    next_check = now + LIVENESS_CHECK;
                }
            }
        }
    }
    let reason = reason.unwrap_or(CloseReason::ClientClosed);
    let last_words = match reason {
        CloseReason::Shutdown => Some(SHUTDOWN_NOTICE),
        // The client's EventSource reconnects on its own: the page gives it
        // a fresh token (a new URL or cookie) when it sees this.
        CloseReason::TokenExpired => Some(TOKEN_EXPIRED_NOTICE),
        _ => None,
    };
    if let Some(words) = last_words.filter(|_| types.passes(MessageKind::System)) {
        let goodbye = sse::system_notice(&room, words, None);
        let _ = write_pieces(out.plain(), &[&goodbye]);
    }
    sub.set_close_reason(reason);
    // Unregistered first, so the LEAVE is not sent to the one leaving.
    drop(sub);
    drop(presence);
    out.close();
    log::info!("SSE closed: room={room} user={user:?} reason={reason}");
}

/// The keep-alive comment, after checking that the client is still there.
fn keep_alive(out: &Patient) -> Option<CloseReason> {
    if out.client_gone() {
        return Some(CloseReason::ClientClosed);
    }
    let mut beat = Vec::new();
    sse::write_comment(&mut beat, "keep-alive");
    write_pieces(out.plain(), &[&beat])
        .err()
        .map(|e| write_failure(&e))
}

/// The JSON of one measurement.
fn metric_json(m: &crate::metrics::Measurement, instance: &str) -> String {
    serde_json::json!({
        "name": m.name,
        "value": m.value,
        "timestamp": sse::rfc3339(m.timestamp),
        "labels": { "instance": instance },
    })
    .to_string()
}

/// Runs on `sse-metrics-N`: one `metric` event per measurement every
/// interval, the same measurements StreamMetrics sends.
fn run_metrics(
    shared: &Shared,
    mut conn: Conn,
    cors: &[(&'static str, String)],
    params: MetricsParams,
) {
    let tls = conn.tls.take();
    let out = Patient::new(&conn.stream, tls, shared.config.write_timeout);
    let MetricsParams { instance, interval } = params;
    log::info!(
        "SSE metrics opened: instance={instance:?} interval={interval:?} peer={}",
        conn.peer
    );
    let mut sampler = MetricsSampler::new(&shared.telemetry);
    let keepalive = shared.config.sse_keepalive;
    let mut next_batch = Instant::now() + interval;
    let mut next_beat = Instant::now() + keepalive;
    let mut reason = write_pieces(out.plain(), &[&preamble(shared, cors)])
        .err()
        .map(|e| write_failure(&e));
    while reason.is_none() {
        let wake = next_batch.min(next_beat);
        crossbeam_channel::select! {
            recv(shared.stopping) -> _ => reason = Some(CloseReason::Shutdown),
            default(wake.saturating_duration_since(Instant::now())) => {
                let now = Instant::now();
                if now >= next_batch {
                    next_batch += interval;
                    let mut batch = Vec::new();
                    for m in sampler.sample(&shared.hub, &shared.telemetry) {
                        let data = metric_json(&m, &instance);
                        sse::write_event(&mut batch, &sse::Event { id: None, event: Some("metric"), data: &data });
                    }
                    reason = write_pieces(out.plain(), &[&batch]).err().map(|e| write_failure(&e));
                    next_beat = now + keepalive;
                } else if now >= next_beat {
                    reason = keep_alive(&out);
                    next_beat = now + keepalive;
                }
            }
        }
    }
    let reason = reason.unwrap_or(CloseReason::ClientClosed);
    if reason == CloseReason::Shutdown {
        let goodbye = sse::system_notice("", SHUTDOWN_NOTICE, None);
        let _ = write_pieces(out.plain(), &[&goodbye]);
    }
    out.close();
    log::info!("SSE metrics closed: instance={instance:?} reason={reason}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts at most `step` bytes per call, like a socket with a small
    /// buffer.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut left = self.step;
            for b in bufs {
                let n = b.len().min(left);
                self.out.extend_from_slice(&b[..n]);
                left -= n;
                if left == 0 {
                    break;
                }
            }
            Ok(self.step - left)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn pieces_are_written_whole_and_in_order_whatever_the_socket_takes() {
        let owned: Vec<Vec<u8>> = (0..200)
            .map(|i| format!("piece {i};").into_bytes())
            .chain([Vec::new(), b"end".to_vec()])
            .collect();
        let pieces: Vec<&[u8]> = owned.iter().map(|p| p.as_slice()).collect();
        let want: Vec<u8> = owned.concat();
        for step in [1, 3, 7, 64, 100_000] {
            let mut w = Trickle {
                out: Vec::new(),
                step,
            };
            write_pieces(&mut w, &pieces).unwrap();
            assert_eq!(w.out, want, "step {step}");
        }
    }

    #[test]
    fn a_socket_that_takes_nothing_is_an_error() {
        let mut w = Trickle {
            out: Vec::new(),
            step: 0,
        };
        let err = write_pieces(&mut w, &[b"x"]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WriteZero);
        assert_eq!(write_failure(&err), CloseReason::ClientClosed);
        let timeout = io::Error::from(io::ErrorKind::WouldBlock);
        assert_eq!(write_failure(&timeout), CloseReason::WriteFailed);
    }

    #[test]
    fn replay_notice_counts_what_was_missed() {
        let hub = Arc::new(crate::hub::Hub::new(crate::hub::HubConfig {
            history: 3,
            ..Default::default()
        }));
        for i in 0..10 {
            hub.publish(crate::hub::Draft::chat("r", "u", i.to_string()))
                .unwrap();
        }
        let (_s, replay) = hub.subscribe("r", Some(2), Protocol::Sse).unwrap();
        let text = String::from_utf8(replay_notice("r", Some(2), &replay).unwrap()).unwrap();
        assert!(text.contains("\"missed\":5"), "{text}");
        let (_s, replay) = hub.subscribe("r", Some(8), Protocol::Sse).unwrap();
        assert!(replay_notice("r", Some(8), &replay).is_none());
        let (_s, replay) = hub.subscribe("r", Some(50), Protocol::Sse).unwrap();
        let text = String::from_utf8(replay_notice("r", Some(50), &replay).unwrap()).unwrap();
        assert!(
            text.contains("\"missed\":7") && text.contains("restarted"),
            "{text}"
        );
    }
}
