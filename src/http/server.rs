//! The I/O around the pure HTTP logic: the accept thread, which also reads
//! every request (without blocking, on all connections at once), and the
//! workers, which run complete requests and write responses.
//!
//! A connection moves between threads and is owned by exactly one at a
//! time: `http-accept` while a request is arriving or the connection is
//! idle, a worker while its request runs, an `sse-N` thread for the rest
//! of its life once it becomes an event stream. Its TLS session, when the
//! port speaks TLS, moves with it: the handshake is read and written on
//! `http-accept` like a head, without blocking and within the head
//! deadline (`wire`).

use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};

use super::conn::{Conn, Step, READ_CHUNK};
use super::extension;
use super::gate;
use super::prometheus;
use super::request::Request;
use super::response::Response;
use super::routes::{self, Action};
use super::stream;
use super::ui;
use super::wire::{Got, Tls};
use super::Shared;
use crate::access::{Door, KnownToken};
use crate::sys::PollSet;

/// Longest `http-accept` sleeps without checking for shutdown.
const TICK: Duration = Duration::from_millis(100);
/// After an error response, how long the rest of what the client sends is
/// read and discarded before closing. Closing with unread input makes the
/// kernel send a reset, which can destroy the response before the client
/// reads it.
const LINGER: Duration = Duration::from_secs(1);
/// Most connections lingering at once; past it they close at once.
const MAX_LINGERING: usize = 256;
/// How soon `http-accept` tries again to send TLS records the socket did
/// not take (poll(2) here waits only for input). A handshake flight is a
/// few KiB into an empty send buffer, so this is for pathological clients.
const RETRY_OUTPUT: Duration = Duration::from_millis(10);

/// A complete request and its connection, for a worker.
pub(super) struct Job {
    conn: Conn,
    req: Request,
}

/// How a worker hands a kept-alive connection back to `http-accept`.
#[derive(Clone)]
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
            let next = self.conns.iter().map(|c| c.incoming.deadline).min();
            let mut timeout = next
                .map_or(TICK, |d| d.saturating_duration_since(now))
                .min(TICK);
            for conn in &self.conns {
                if conn.has_hidden_input() {
                    timeout = Duration::ZERO;
                } else if conn.has_pending_output() {
                    timeout = timeout.min(RETRY_OUTPUT);
                }
            }
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
                let conn = &self.conns[i];
                if self.set.ready(i + 2) || conn.has_hidden_input() || conn.has_pending_output() {
                    let mut conn = self.conns.swap_remove(i);
                    if self.fill(&mut conn) == Got::NotTls {
                        self.refuse_plain(conn, now);
                    } else {
                        self.settle(conn, now);
                    }
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

    /// Reads what the connection's phase may take, without blocking
    /// (through TLS: the handshake too). Returns what the last read found.
    fn fill(&mut self, conn: &mut Conn) -> Got {
        for _ in 0..4 {
            let want = conn.incoming.wants().min(self.scratch.len());
            if want == 0 {
                return Got::Nothing;
            }
            match conn.read_now(&mut self.scratch[..want]) {
                Got::Bytes(n) => {
                    conn.incoming.received(&self.scratch[..n]);
                    // A short plain read emptied the socket; a TLS read
                    // stops at a record's end.
                    if n < want && !conn.is_tls() {
                        return Got::Bytes(n);
                    }
                }
                Got::Eof => {
                    conn.incoming.eof = true;
                    return Got::Eof;
                }
                Got::Broken => {
                    conn.incoming.eof = true;
                    conn.incoming.broken = true;
                    return Got::Broken;
                }
                other => return other,
            }
        }
        Got::Nothing
    }

    /// Plain HTTP on the TLS port: a `400` in clear text the client can
    /// read (an alert it could not), and the connection closes.
    fn refuse_plain(&mut self, mut conn: Conn, now: Instant) {
        log::debug!("{}: plain HTTP on the TLS port", conn.peer);
        conn.tls = None;
        let response = Response::error(
            400,
            "this port speaks TLS only: use https:// (plain HTTP is not served here)",
        );
        self.fail(conn, response, now);
    }

    /// Decides what happens to a connection that got bytes (or came back
    /// from a worker).
    fn settle(&mut self, mut conn: Conn, now: Instant) {
        if conn.incoming.broken {
            return;
        }
        let (max_body, header_timeout) = (
            self.shared.config.max_body_bytes,
            self.shared.config.header_timeout,
        );
        let step = conn.incoming.advance(max_body, header_timeout, now);
        if conn.incoming.take_continue() {
            // A few bytes into an empty send buffer: never blocks.
            conn.send_now(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        conn.refresh();
        match step {
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
        conn.send_last_now(&response.to_bytes(false, true));
        let lingering = self
            .conns
            .iter()
            .filter(|c| c.incoming.is_lingering())
            .count();
        if lingering >= MAX_LINGERING || conn.incoming.eof {
            return;
        }
        conn.incoming.linger(now + LINGER);
        self.conns.push(conn);
    }

    /// Ends connections whose time is up: an unfinished request gets 408.
    fn expire(&mut self, now: Instant) {
        for i in (0..self.conns.len()).rev() {
            if self.conns[i].incoming.deadline > now {
                continue;
            }
            let mut conn = self.conns.swap_remove(i);
            if conn.is_handshaking() {
                // Nothing can be said before the handshake: just close.
                log::debug!("{}: TLS handshake not done in time", conn.peer);
            } else if conn.incoming.mid_request() {
                log::debug!("{}: request not complete in time", conn.peer);
                let response = Response::error(408, "the request did not arrive in time");
                self.fail(conn, response, now);
            } else if conn.is_tls() {
                // Idle past the keep-alive: a TLS client is told the session
                // ended (close_notify), not left to find a dead socket.
                conn.send_last_now(&[]);
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
            // The handshake counts against the head's deadline.
            let deadline = now + config.header_timeout;
            let admission = match shared.access.admit(Door::Http, peer.ip(), now) {
                Ok(admission) => admission,
                Err(refusal) => {
                    log::debug!("{peer}: {refusal}");
                    if shared.tls.is_none() {
                        let conn = Conn::new(stream, peer, None, deadline);
                        self.fail(conn, gate::refusal_response(&refusal), now);
                    }
                    continue;
                }
            };
            let Some(slot) = self.shared.open_connections.take(config.max_connections) else {
                if self.shared.tls.is_some() {
                    // A 503 would need a handshake first, the work the cap
                    // is there to refuse: the client sees the close.
                    continue;
                }
                let conn = Conn::new(stream, peer, None, deadline);
                let response = Response::unavailable(
                    &format!("too many connections (limit {})", config.max_connections),
                    1,
                );
                self.fail(conn, response, now);
                continue;
            };
            let mut conn = Conn::new(stream, peer, Some(slot), deadline).admitted(admission);
            if let Some(tls) = &shared.tls {
                match Tls::new(tls) {
                    Ok(tls) => conn.tls = Some(Box::new(tls)),
                    Err(e) => {
                        log::warn!("TLS session not made: {e}");
                        continue;
                    }
                }
            }
            self.conns.push(conn);
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
    if let Some(ext) = shared.extension.as_deref().filter(|e| e.claims(&req.path)) {
        return extension::serve(shared, ext, conn, req, back);
    }
    let cors = routes::cors_headers(&req, &shared.config.cors_origins);
    let ip = conn.peer.ip();
    let known = &mut conn.known;
    let outcome = catch_unwind(AssertUnwindSafe(|| handle(shared, &req, ip, known)));
    let mut close = req.wants_close() || conn.incoming.eof || shared.is_stopping();
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
    answer(shared, conn, response, req.is_head(), close, back);
}

/// Writes a whole response on a worker, then closes the connection or
/// hands it back to `http-accept` for the next request.
pub(super) fn answer(
    shared: &Shared,
    mut conn: Conn,
    response: Response,
    head_only: bool,
    close: bool,
    back: &GiveBack,
) {
    let close = close || response.streaming;
    shared.telemetry.http_response(response.status);
    let written = conn.write_all(&response.to_bytes(head_only, close));
    if written.is_err() || close {
        conn.finish();
        return;
    }
    conn.incoming
        .rest(Instant::now() + shared.config.idle_timeout);
    if conn.stream.set_nonblocking(true).is_ok() {
        back.give(conn);
    }
}

/// Runs what a request asks for, short of opening a stream: routing (pure),
/// then the gate (who may, how often), then the hub.
fn handle(shared: &Shared, req: &Request, ip: IpAddr, known: &mut KnownToken) -> Outcome {
    // The page and its files are public: the page asks for a token itself.
    if let Some(page) = shared.config.ui.then(|| ui::asset(req)).flatten() {
        return Outcome::Respond(page);
    }
    let action = routes::route(req);
    if matches!(action, Action::Respond(_) | Action::Health) {
        // Health stays open with auth on: systemd and load balancers ask.
        return Outcome::Respond(respond(shared, action));
    }
    let access = &shared.access;
    let now = SystemTime::now();
    let identity = gate::token_of(req, shared.config.auth_cookie.as_deref())
        .map_err(|denied| access.refuse(denied))
        .and_then(|token| access.identify_on(known, token, now));
    let allowed = identity.and_then(|identity| match action {
        Action::Publish(mut draft) => {
            access.publish(&identity, ip, &mut draft, now, Instant::now())?;
            Ok(Action::Publish(draft))
        }
        Action::Events(mut params) => {
            let allowed = access.subscribe(&identity, &params.room, &params.user, now)?;
            params.user = allowed.user;
            params.expires = allowed.expires;
            Ok(Action::Events(params))
        }
        Action::MetricsEvents(_) | Action::Prometheus => {
            access.measurements(&identity)?;
            Ok(action)
        }
        action => Ok(action),
    });
    match allowed {
        Ok(Action::Events(params)) => Outcome::Stream(stream::Kind::Events(params)),
        Ok(Action::MetricsEvents(params)) => Outcome::Stream(stream::Kind::Metrics(params)),
        Ok(action) => Outcome::Respond(respond(shared, action)),
        Err(refusal) => Outcome::Respond(gate::refusal_response(&refusal)),
    }
}

/// The answer to an allowed request that is not a stream.
fn respond(shared: &Shared, action: Action) -> Response {
    match action {
        Action::Respond(response) => response,
        Action::Publish(draft) => routes::publish_response(shared.hub.publish(draft)),
        Action::Prometheus => Response::new(200)
            .header("Content-Type", prometheus::CONTENT_TYPE)
            .body(prometheus::render(&snapshot(shared)).into_bytes()),
        Action::Health if shared.is_stopping() => {
            Response::json(503, &serde_json::json!({ "status": "stopping" }))
        }
        // No publishes: the cluster's Redis is down (`--cluster`) or the
        // data directory failed (`--data-dir`).
        Action::Health if !shared.hub.serving() => {
            Response::json(503, &serde_json::json!({ "status": "unavailable" }))
        }
        Action::Health => Response::json(200, &serde_json::json!({ "status": "ok" })),
        Action::Events(_) | Action::MetricsEvents(_) => {
            Response::error(500, "a stream is not a response")
        }
    }
}

fn snapshot(shared: &Shared) -> prometheus::Snapshot {
    prometheus::Snapshot {
        hub: shared.hub.stats(),
        http_responses: shared.telemetry.http_responses(),
        grpc_calls: shared.telemetry.grpc_calls(),
        grpc_floods: shared.telemetry.grpc_floods(),
        refusals: shared.access.refusals(),
        http_connections: shared.open_connections.open() as u64,
        sse_streams: shared.sse_streams.open() as u64,
        process: crate::metrics::ProcessSample::now(),
    }
}
