//! The I/O around the pure HTTP logic: the accept thread, which also reads
//! every request (without blocking, on all connections at once), and the
//! workers, which run complete requests and write responses.
//!
//! A connection moves between threads and is owned by exactly one at a
//! time: `http-accept` while a request is arriving or the connection is
//! idle, a worker while its request runs, an `sse-N` thread for the rest
//! of its life once it becomes an event stream.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::prometheus;
use super::request::{
    framing, head_may_be_complete, parse_head, ChunkedDecoder, Framing, Rejection, Request,
    MAX_HEAD_BYTES,
};
use super::response::Response;
use super::routes::{self, Action};
use super::stream;
use super::sys::PollSet;
use super::Shared;
use crate::threads::Permit;

/// Longest `http-accept` sleeps without checking for shutdown.
const TICK: Duration = Duration::from_millis(100);
/// After an error response, how long the rest of what the client sends is
/// read and discarded before closing. Closing with unread input makes the
/// kernel send a reset, which can destroy the response before the client
/// reads it.
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes discarded while lingering.
const LINGER_DISCARD: usize = 256 * 1024;
/// Most connections lingering at once; past it they close at once.
const MAX_LINGERING: usize = 256;
/// Size of the read buffer of `http-accept`.
const READ_CHUNK: usize = 64 * 1024;

/// Where a connection is in its request cycle.
enum Phase {
    /// Kept alive between requests; nothing of the next one yet.
    Idle,
    /// Reading a head; `scanned` bytes are known to hold no blank line.
    Head { scanned: usize },
    /// Reading a `Content-Length` body of `len` bytes.
    Body { req: Request, len: usize },
    /// Reading a chunked body.
    Chunked {
        req: Request,
        decoder: ChunkedDecoder,
    },
    /// An error response was sent; reading and discarding until the client
    /// closes or the deadline passes.
    Linger { discarded: usize },
}

/// One client connection and what has arrived of its current request.
pub(super) struct Conn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    buf: Vec<u8>,
    phase: Phase,
    deadline: Instant,
    /// The client closed its sending side (or the socket failed).
    eof: bool,
    /// Reading failed: nothing more can be done with this connection.
    broken: bool,
    /// One slot of `--max-http-connections`; `None` for a connection that
    /// is only told it is over the cap.
    _slot: Option<Permit>,
}

/// What to do with a connection after new bytes arrived.
enum Step {
    /// Keep waiting for bytes.
    Wait,
    /// A whole request arrived: run it.
    Dispatch(Request),
    /// Refuse: send this and close.
    Fail(Rejection),
    /// Close without a word.
    Close,
}

impl Conn {
    fn new(stream: TcpStream, peer: SocketAddr, slot: Option<Permit>, deadline: Instant) -> Conn {
        Conn {
            stream,
            peer,
            buf: Vec::new(),
            phase: Phase::Head { scanned: 0 },
            deadline,
            eof: false,
            broken: false,
            _slot: slot,
        }
    }

    /// How many bytes the current phase may still read: never past the head
    /// limit, never past the declared body.
    fn wants(&self) -> usize {
        match &self.phase {
            Phase::Idle | Phase::Head { .. } => MAX_HEAD_BYTES.saturating_sub(self.buf.len()),
            Phase::Body { len, .. } => len.saturating_sub(self.buf.len()),
            Phase::Chunked { .. } | Phase::Linger { .. } => READ_CHUNK,
        }
    }

    fn waiting(&self) -> Step {
        if self.eof {
            Step::Close
        } else {
            Step::Wait
        }
    }

    /// Moves the request forward with what is in the buffer.
    fn advance(&mut self, max_body: usize, header_timeout: Duration, now: Instant) -> Step {
        loop {
            match &mut self.phase {
                Phase::Linger { discarded } => {
                    self.buf.clear();
                    if *discarded > LINGER_DISCARD {
                        return Step::Close;
                    }
                    return self.waiting();
                }
                Phase::Idle => {
                    if self.buf.is_empty() {
                        return self.waiting();
                    }
                    self.phase = Phase::Head { scanned: 0 };
                    self.deadline = now + header_timeout;
                }
                Phase::Head { scanned } => {
                    if !head_may_be_complete(&self.buf, *scanned) {
                        if self.buf.len() >= MAX_HEAD_BYTES {
                            return Step::Fail(head_too_large());
                        }
                        *scanned = self.buf.len();
                        return self.waiting();
                    }
                    let (req, n) = match parse_head(&self.buf) {
                        Err(rejection) => return Step::Fail(rejection),
                        Ok(Some(parsed)) => parsed,
                        Ok(None) => {
                            if self.buf.len() >= MAX_HEAD_BYTES {
                                return Step::Fail(head_too_large());
                            }
                            *scanned = self.buf.len();
                            return self.waiting();
                        }
                    };
                    self.buf.drain(..n);
                    let body = match framing(&req, max_body) {
                        Err(rejection) => return Step::Fail(rejection),
                        Ok(body) => body,
                    };
                    let waits_for_body = match body {
                        Framing::Empty => {
                            self.phase = Phase::Idle;
                            return Step::Dispatch(req);
                        }
                        Framing::Length(len) => self.buf.len() < len,
                        Framing::Chunked => self.buf.is_empty(),
                    };
                    if waits_for_body && req.expects_continue() {
                        // A few bytes into an empty send buffer: never blocks.
                        let _ = (&self.stream).write(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    self.deadline = now + header_timeout;
                    self.phase = match body {
                        Framing::Length(len) => Phase::Body { req, len },
                        _ => Phase::Chunked {
                            req,
                            decoder: ChunkedDecoder::new(max_body),
                        },
                    };
                }
                Phase::Body { len, .. } => {
                    let len = *len;
                    if self.buf.len() < len {
                        return self.waiting();
                    }
                    let Phase::Body { mut req, .. } =
                        std::mem::replace(&mut self.phase, Phase::Idle)
                    else {
                        unreachable!("matched above");
                    };
                    req.body = self.buf.drain(..len).collect();
                    return Step::Dispatch(req);
                }
                Phase::Chunked { decoder, .. } => {
                    let used = match decoder.feed(&self.buf) {
                        Ok(used) => used,
                        Err(rejection) => return Step::Fail(rejection),
                    };
                    self.buf.drain(..used);
                    if !decoder.is_done() {
                        return self.waiting();
                    }
                    let Phase::Chunked { mut req, decoder } =
                        std::mem::replace(&mut self.phase, Phase::Idle)
                    else {
                        unreachable!("matched above");
                    };
                    req.body = decoder.into_body();
                    return Step::Dispatch(req);
                }
            }
        }
    }
}

fn head_too_large() -> Rejection {
    Rejection::new(
        431,
        format!("request head is larger than {MAX_HEAD_BYTES} bytes"),
    )
}

/// A complete request and its connection, for a worker.
pub(super) struct Job {
    conn: Conn,
    req: Request,
}

/// How a worker hands a kept-alive connection back to `http-accept`.
pub(super) struct GiveBack {
    tx: Sender<Conn>,
    wake: Arc<UnixStream>,
}

impl GiveBack {
    pub(super) fn new(tx: Sender<Conn>, wake: Arc<UnixStream>) -> GiveBack {
        GiveBack { tx, wake }
    }

    fn give(&self, conn: Conn) {
        // When `http-accept` has ended, the connection is dropped: closed.
        if self.tx.send(conn).is_ok() {
            let _ = (&*self.wake).write(&[1]);
        }
    }
}

/// The state of `http-accept`.
pub(super) struct Poller {
    shared: Arc<Shared>,
    listener: TcpListener,
    wake: UnixStream,
    back: Receiver<Conn>,
    jobs: Sender<Job>,
    stop: Arc<AtomicBool>,
    /// Connections waiting for bytes (heads, bodies, idle, lingering).
    conns: Vec<Conn>,
    set: PollSet,
    scratch: Vec<u8>,
    /// Accepting failed (out of descriptors): retry after this.
    accept_paused_until: Option<Instant>,
}

impl Poller {
    pub(super) fn new(
        shared: Arc<Shared>,
        listener: TcpListener,
        wake: UnixStream,
        back: Receiver<Conn>,
        jobs: Sender<Job>,
        stop: Arc<AtomicBool>,
    ) -> Poller {
        Poller {
            shared,
            listener,
            wake,
            back,
            jobs,
            stop,
            conns: Vec::new(),
            set: PollSet::default(),
            scratch: vec![0; READ_CHUNK],
            accept_paused_until: None,
        }
    }

    /// Runs on `http-accept` until stop or shutdown. Never blocks except in
    /// poll(2); never writes more than a short error response, without
    /// blocking.
    pub(super) fn run(mut self) {
        log::debug!(
            "accepting on port {}",
            self.listener.local_addr().map_or(0, |a| a.port())
        );
        while !self.stop.load(Ordering::Acquire) && !self.shared.is_stopping() {
            let now = Instant::now();
            while let Ok(conn) = self.back.try_recv() {
                self.settle(conn, now);
            }
            self.expire(now);
            let next = self.conns.iter().map(|c| c.deadline).min();
            let timeout = next
                .map_or(TICK, |d| d.saturating_duration_since(now))
                .min(TICK);
            let listening = !matches!(self.accept_paused_until, Some(t) if now < t);
            self.set.clear();
            self.set.push(self.wake.as_raw_fd());
            // poll(2) skips negative descriptors.
            self.set.push(if listening {
                self.listener.as_raw_fd()
            } else {
                -1
            });
            for conn in &self.conns {
                self.set.push(conn.stream.as_raw_fd());
            }
            if let Err(e) = self.set.wait(timeout) {
                log::error!("poll failed: {e}");
                std::thread::sleep(TICK);
                continue;
            }
            let now = Instant::now();
            // Backwards, so that removing index i (swap_remove) and pushing
            // at the end never moves a connection not yet looked at.
            for i in (0..self.conns.len()).rev() {
                if self.set.ready(i + 2) {
                    let mut conn = self.conns.swap_remove(i);
                    self.fill(&mut conn);
                    self.settle(conn, now);
                }
            }
            if self.set.ready(0) {
                let mut sink = [0u8; 64];
                while matches!((&self.wake).read(&mut sink), Ok(n) if n > 0) {}
            }
            if listening && self.set.ready(1) {
                self.accept(now);
            }
        }
        log::info!(
            "HTTP stopped accepting; closing {} idle or unfinished connections",
            self.conns.len()
        );
    }

    /// Reads what the connection's phase may take, without blocking.
    fn fill(&mut self, conn: &mut Conn) {
        for _ in 0..4 {
            let want = conn.wants().min(self.scratch.len());
            if want == 0 {
                return;
            }
            match (&conn.stream).read(&mut self.scratch[..want]) {
                Ok(0) => {
                    conn.eof = true;
                    return;
                }
                Ok(n) => {
                    if let Phase::Linger { discarded } = &mut conn.phase {
                        *discarded += n;
                    } else {
                        conn.buf.extend_from_slice(&self.scratch[..n]);
                    }
                    if n < want {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    conn.eof = true;
                    conn.broken = true;
                    return;
                }
            }
        }
    }

    /// Decides what happens to a connection that got bytes (or came back
    /// from a worker).
    fn settle(&mut self, mut conn: Conn, now: Instant) {
        if conn.broken {
            return;
        }
        let (max_body, header_timeout) = (
            self.shared.config.max_message_bytes,
            self.shared.config.http_header_timeout,
        );
        match conn.advance(max_body, header_timeout, now) {
            Step::Wait => self.conns.push(conn),
            Step::Close => {}
            Step::Fail(rejection) => {
                log::debug!("{}: {rejection}", conn.peer);
                self.fail(
                    conn,
                    Response::error(rejection.status, &rejection.reason),
                    now,
                );
            }
            // Fails only when the workers are gone: the connection closes.
            Step::Dispatch(req) => drop(self.jobs.send(Job { conn, req })),
        }
    }

    /// Sends a short error response without blocking, then lingers.
    fn fail(&mut self, mut conn: Conn, response: Response, now: Instant) {
        self.shared.telemetry.http_response(response.status);
        let _ = (&conn.stream).write(&response.to_bytes(false, true));
        let _ = conn.stream.shutdown(Shutdown::Write);
        let lingering = self
            .conns
            .iter()
            .filter(|c| matches!(c.phase, Phase::Linger { .. }))
            .count();
        if lingering >= MAX_LINGERING || conn.eof {
            return;
        }
        conn.buf = Vec::new();
        conn.phase = Phase::Linger { discarded: 0 };
        conn.deadline = now + LINGER;
        self.conns.push(conn);
    }

    /// Ends connections whose time is up: an unfinished request gets 408.
    fn expire(&mut self, now: Instant) {
        for i in (0..self.conns.len()).rev() {
            if self.conns[i].deadline > now {
                continue;
            }
            let conn = self.conns.swap_remove(i);
            match conn.phase {
                Phase::Idle | Phase::Linger { .. } => {}
                Phase::Head { .. } | Phase::Body { .. } | Phase::Chunked { .. } => {
                    log::debug!("{}: request not complete in time", conn.peer);
                    let response = Response::error(408, "the request did not arrive in time");
                    self.fail(conn, response, now);
                }
            }
        }
    }

    /// Takes every pending connection; past the cap each gets 503 at once.
    fn accept(&mut self, now: Instant) {
        let shared = self.shared.clone();
        let config = &shared.config;
        loop {
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Usually out of descriptors: the listener stays readable,
                    // so back off instead of spinning.
                    log::warn!("accept failed: {e}");
                    self.accept_paused_until = Some(now + TICK);
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let _ = stream.set_nodelay(true);
            let _ = stream.set_write_timeout(Some(config.write_timeout));
            let deadline = now + config.http_header_timeout;
            let Some(slot) = self
                .shared
                .open_connections
                .take(config.max_http_connections)
            else {
                let conn = Conn::new(stream, peer, None, deadline);
                let response = Response::unavailable(
                    &format!(
                        "too many connections (limit {})",
                        config.max_http_connections
                    ),
                    1,
                );
                self.fail(conn, response, now);
                continue;
            };
            self.conns
                .push(Conn::new(stream, peer, Some(slot), deadline));
        }
    }
}

/// Runs on `http-worker-N` until `http-accept` ends.
pub(super) fn run_worker(shared: &Arc<Shared>, jobs: &Receiver<Job>, back: &GiveBack) {
    for job in jobs.iter() {
        serve(shared, job, back);
    }
}

/// What a request turned into.
enum Outcome {
    Respond(Response),
    Stream(stream::Kind),
}

/// Runs one request. Catches a panic in the handler as a 500.
fn serve(shared: &Arc<Shared>, job: Job, back: &GiveBack) {
    let Job { mut conn, req } = job;
    if conn.stream.set_nonblocking(false).is_err() {
        return;
    }
    let cors = routes::cors_headers(&req, &shared.config.cors_origins);
    let outcome = catch_unwind(AssertUnwindSafe(|| handle(shared, &req)));
    let mut close = req.wants_close() || conn.eof || shared.is_stopping();
    let mut response = match outcome {
        Ok(Outcome::Respond(response)) => response,
        Ok(Outcome::Stream(kind)) => match stream::open(shared, conn, kind, cors.clone()) {
            Ok(()) => return,
            Err(refused) => {
                let (returned, response) = *refused;
                conn = returned;
                response
            }
        },
        Err(_) => {
            log::error!("handler panicked on {} {}", req.method, req.path);
            close = true;
            Response::error(500, "internal error")
        }
    };
    response.headers.extend(cors);
    close |= response.streaming;
    shared.telemetry.http_response(response.status);
    let written = conn
        .stream
        .write_all(&response.to_bytes(req.is_head(), close));
    if written.is_err() || close {
        let _ = conn.stream.shutdown(Shutdown::Both);
        return;
    }
    conn.phase = Phase::Idle;
    conn.deadline = Instant::now() + shared.config.http_idle_timeout;
    if conn.stream.set_nonblocking(true).is_ok() {
        back.give(conn);
    }
}

/// Runs what a request asks for, short of opening a stream.
fn handle(shared: &Shared, req: &Request) -> Outcome {
    let response = match routes::route(req) {
        Action::Respond(response) => response,
        Action::Publish(draft) => routes::publish_response(shared.hub.publish(draft)),
        Action::Prometheus => Response::new(200)
            .header("Content-Type", prometheus::CONTENT_TYPE)
            .body(prometheus::render(&snapshot(shared)).into_bytes()),
        Action::Health if shared.is_stopping() => {
            Response::json(503, &serde_json::json!({ "status": "stopping" }))
        }
        Action::Health => Response::json(200, &serde_json::json!({ "status": "ok" })),
        Action::Events(params) => return Outcome::Stream(stream::Kind::Events(params)),
        Action::MetricsEvents(params) => return Outcome::Stream(stream::Kind::Metrics(params)),
    };
    Outcome::Respond(response)
}

fn snapshot(shared: &Shared) -> prometheus::Snapshot {
    prometheus::Snapshot {
        hub: shared.hub.stats(),
        http_responses: shared.telemetry.http_responses(),
        grpc_calls: shared.telemetry.grpc_calls(),
        http_connections: shared.open_connections.open() as u64,
        sse_streams: shared.sse_streams.open() as u64,
        process: crate::metrics::ProcessSample::now(),
    }
}
