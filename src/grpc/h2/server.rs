//! The gRPC port's sockets and threads. Each accepted connection has two:
//!
//! - `h2-read-N` reads the socket, feeds the connection's state machine
//!   ([`Conn`]) and hands what comes out to `dispatch` (unary calls are
//!   answered right there, streaming calls get their own stream thread).
//!   It never writes to the socket, so a client that does not read cannot
//!   stop it from reading.
//! - `h2-write-N` is the connection's one writer: each time it wakes it
//!   takes everything every stream has queued, within the client's windows,
//!   and writes it with one `write` (the shape measured in
//!   `shared/prototypes/h2-fanout`: one write carries many streams' DATA).
//!   It also sends the keepalive PINGs.
//!
//! Stream threads only queue on the connection and wake the writer; a
//! SubscribeMessages stream does not even do that: the writer reads its
//! room's log itself, woken by the room (`hub::Watch`) once per publish
//! for all its streams. No lock is held while writing to or reading from a
//! socket.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::conn::{Conn, Limits, Tick};
use super::dispatch::Dispatch;
use super::tls::{Tls, HANDSHAKE_TIMEOUT};
use crate::access::{Admission, Door as Port};
use crate::error::Error;
use crate::grpc::Shared;
use crate::hub::Watch;
use crate::threads::{Permit, Slots, Threads};

/// Read buffer of a connection: a few of the largest frames.
const READ_BUFFER: usize = 64 * 1024;
/// Stack of a connection's reader, which runs unary handlers (publish,
/// protobuf decoding) and HPACK decoding.
const READER_STACK: usize = 256 * 1024;
/// Stack of a connection's writer (it may encode a message once for all).
const WRITER_STACK: usize = 128 * 1024;
/// A writer's buffer is given back to the allocator above this.
const KEEP_OUTPUT: usize = 1 << 20;

/// What a connection's threads and its calls share.
pub struct ConnShared {
    pub(super) conn: Mutex<Conn>,
    writer: Condvar,
    /// Something may be there to write: set by every wake, cleared by the
    /// writer before it looks (so a wake while it looks is not lost).
    pending: AtomicBool,
    /// The writer is about to wait or waiting on `writer`.
    sleeping: AtomicBool,
    /// What the rooms of its fed streams call (one per connection, so a
    /// room calls it once however many of its streams read the room).
    pub(super) watcher: Arc<dyn Watch>,
    pub(super) peer: String,
    /// The client's address: whose limits its publishes count against
    /// when it sends no token.
    pub(super) ip: IpAddr,
    socket: TcpStream,
    /// TLS state, when the port speaks TLS.
    tls: Option<Tls>,
    /// A slot of `--max-grpc-connections`, given back when the last holder
    /// (reader, writer, a call's thread) lets go.
    _slot: Permit,
    /// Its count against `--max-connections-per-address`, held as long.
    _admission: Admission,
}

impl ConnShared {
    /// Tells the writer there may be something to write. Never call it with
    /// the connection's lock held.
    ///
    /// A wake may come from outside the lock (a room's tail moved): the
    /// flag is set before the writer's state is read, and the writer
    /// announces its sleep before it reads the flag, so one of them sees the
    /// other (SeqCst); the notify is made under the lock, so it cannot fall
    /// between the writer's last look and its wait.
    pub fn wake_writer(&self) {
        self.pending.store(true, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            let _held = self.conn.lock();
            self.writer.notify_one();
        }
    }

    /// Ends the connection now: both threads see it at once.
    fn close(&self) {
        let _ = self.socket.shutdown(Shutdown::Both);
        self.wake_writer();
    }
}

/// The listening server.
pub struct Server {
    port: u16,
    stopped: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<Arc<ConnShared>>>>,
    threads: Threads,
    accept: Option<std::thread::JoinHandle<()>>,
    addr: SocketAddr,
}

impl Server {
    /// Binds and serves; with `tls`, every connection speaks TLS only.
    pub fn start(
        shared: Arc<Shared>,
        limits: Limits,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Server, Error> {
        let addr = shared.config.addr;
        let listener = TcpListener::bind(addr)
            .map_err(|e| Error::Io(format!("cannot listen on {addr} (gRPC): {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::Io(format!("gRPC listener: {e}")))?;
        let stopped = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<Arc<ConnShared>>>> = Arc::default();
        // Not the stream threads' set: shutdown waits for those to finish
        // their goodbyes while connections stay open to carry them.
        let threads = Threads::new();
        let accept = {
            let (stopped, conns, threads) = (stopped.clone(), conns.clone(), threads.clone());
            std::thread::Builder::new()
                .name("grpc-accept".into())
                .spawn(move || {
                    let door = Door {
                        shared,
                        limits,
                        tls,
                        open: Slots::new(),
                    };
                    accept_loop(listener, door, stopped, conns, threads)
                })
                .map_err(|e| Error::Io(format!("cannot start the gRPC accept thread: {e}")))?
        };
        Ok(Server {
            port: local.port(),
            stopped,
            conns,
            threads,
            accept: Some(accept),
            addr: local,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Graceful shutdown's first step: GOAWAY on every connection (open
    /// calls go on; new ones go elsewhere).
    pub fn drain(&self) {
        for c in self.conns.lock().iter() {
            c.conn.lock().drain();
            c.wake_writer();
        }
    }

    /// Stops accepting, closes every connection and waits for their
    /// threads, at most `timeout`.
    pub fn stop(mut self, timeout: Duration) {
        self.stopped.store(true, Ordering::SeqCst);
        // Wakes the accept thread's blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        // Whatever was queued is written first (all connections at once,
        // within one short deadline), then the sockets close.
        let conns: Vec<Arc<ConnShared>> = self.conns.lock().drain(..).collect();
        for c in &conns {
            c.conn.lock().drain();
            c.wake_writer();
        }
        let flushed = Instant::now() + Duration::from_millis(200);
        while Instant::now() < flushed && conns.iter().any(|c| c.conn.lock().has_output()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        for c in &conns {
            c.conn.lock().lost("server stopped", &mut Vec::new());
            c.close();
        }
        let left = self.threads.wait_idle(Instant::now() + timeout);
        if !left.is_empty() {
            log::warn!("gRPC connection threads still running: {left:?}");
        }
    }
}

/// What every connection of the port is served with.
struct Door {
    shared: Arc<Shared>,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections open now, against `--max-grpc-connections`.
    open: Arc<Slots>,
}

fn accept_loop(
    listener: TcpListener,
    door: Door,
    stopped: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<Arc<ConnShared>>>>,
    threads: Threads,
) {
    let mut next = 0u64;
    let mut refused = 0u64;
    for socket in listener.incoming() {
        if stopped.load(Ordering::SeqCst) {
            break;
        }
        let socket = match socket {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                log::warn!("gRPC accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        next += 1;
        let Ok(ip) = socket.peer_addr().map(|a| a.ip()) else {
            continue;
        };
        let admission = match door.shared.access.admit(Port::Grpc, ip, Instant::now()) {
            Ok(admission) => admission,
            Err(refusal) => {
                log::debug!("gRPC connection from {ip} refused: {refusal}");
                turn_away(
                    socket,
                    door.tls.is_none(),
                    b"too many connections from this address",
                );
                continue;
            }
        };
        let limit = door.shared.config.max_connections;
        let Some(slot) = door.open.take(limit) else {
            refused += 1;
            // Every connection costs two threads and their memory maps: past
            // the cap it is turned away at once, before it costs anything
            // (6,000 single-stream connections exhausted this machine's
            // memory maps and aborted the process).
            if refused % 1000 == 1 {
                log::warn!(
                    "gRPC connection refused: {limit} open (--max-grpc-connections); \
                     {refused} refused so far"
                );
            }
            turn_away(socket, door.tls.is_none(), b"too many connections");
            continue;
        };
        if let Err(e) = serve(socket, next, &door, (slot, admission), &conns, &threads) {
            log::warn!("gRPC connection not served: {e}");
        }
    }
}

/// Closes a connection past the cap; on h2c, with SETTINGS and GOAWAY
/// first, so an HTTP/2 client knows to go elsewhere.
fn turn_away(mut socket: TcpStream, h2c: bool, why: &[u8]) {
    if h2c {
        let mut out = Vec::new();
        super::frame::put_settings(&mut out, &[]);
        super::frame::put_goaway(&mut out, 0, super::frame::ErrorCode::RefusedStream, why);
        let _ = socket.set_write_timeout(Some(Duration::from_millis(100)));
        let _ = socket.write_all(&out);
    }
    let _ = socket.shutdown(Shutdown::Both);
}

/// Starts a connection's reader and writer.
fn serve(
    socket: TcpStream,
    n: u64,
    door: &Door,
    (slot, admission): (Permit, Admission),
    conns: &Arc<Mutex<Vec<Arc<ConnShared>>>>,
    threads: &Threads,
) -> std::io::Result<()> {
    let (shared, limits) = (&door.shared, &door.limits);
    let _ = socket.set_nodelay(true);
    let tls = match &door.tls {
        Some(config) => {
            socket.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
            Some(Tls::new(config)?)
        }
        None => None,
    };
    socket.set_write_timeout(Some(shared.config.write_timeout))?;
    let addr = socket.peer_addr()?;
    let peer = format!("ipv{}:{addr}", if addr.is_ipv4() { 4 } else { 6 });
    let conn = Arc::new_cyclic(|me| ConnShared {
        conn: Mutex::new(Conn::new(limits.clone())),
        writer: Condvar::new(),
        pending: AtomicBool::new(false),
        sleeping: AtomicBool::new(false),
        watcher: Arc::new(WriterWatch(me.clone())),
        peer,
        ip: addr.ip(),
        // The one descriptor of the connection: the reader and the writer
        // use it through `&TcpStream` (a connection costs one fd).
        socket,
        tls,
        _slot: slot,
        _admission: admission,
    });
    {
        // Its writer takes it out again when the connection ends.
        conns.lock().push(conn.clone());
    }
    let w = conn.clone();
    let list = conns.clone();
    threads.spawn(format!("h2-write-{n}"), Some(WRITER_STACK), move || {
        write_loop(&w);
        // Forgotten as soon as it is over, not at the next accept: the list
        // holds the socket (closed connections kept their descriptors).
        list.lock().retain(|c| !Arc::ptr_eq(c, &w));
    })?;
    let r = conn.clone();
    let shared = shared.clone();
    let spawned = threads.spawn(format!("h2-read-{n}"), Some(READER_STACK), move || {
        read_loop(&r, &shared)
    });
    if let Err(e) = spawned {
        conn.close();
        return Err(e);
    }
    Ok(())
}

/// Wakes a connection's writer for its rooms. Weak: a room's list of
/// watchers must not keep a closed connection alive.
struct WriterWatch(Weak<ConnShared>);

impl Watch for WriterWatch {
    fn wake(&self) {
        if let Some(conn) = self.0.upgrade() {
            conn.wake_writer();
        }
    }
}

fn read_loop(conn: &Arc<ConnShared>, shared: &Arc<Shared>) {
    let mut socket = &conn.socket;
    let mut buf = vec![0u8; READ_BUFFER];
    // Ciphertext, read before rustls decrypts it into `buf`.
    let mut raw = if conn.tls.is_some() {
        vec![0u8; 16 * 1024 + 512]
    } else {
        Vec::new()
    };
    let mut have = 0;
    let mut events = Vec::new();
    let mut dispatch = Dispatch::new(shared.clone(), conn.clone());
    let why = loop {
        let read = match &conn.tls {
            None => socket.read(&mut buf[have..]),
            Some(tls) => tls.read(socket, &mut raw, &mut buf[have..], || conn.wake_writer()),
        };
        let n = match read {
            Ok(0) => break "client closed the connection".to_string(),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => break format!("read failed: {e}"),
        };
        have += n;
        let (used, closing) = {
            let mut c = conn.conn.lock();
            let used = c.receive(&buf[..have], Instant::now(), &mut events);
            (used, c.is_closing())
        };
        conn.wake_writer();
        buf.copy_within(used..have, 0);
        have -= used;
        for event in events.drain(..) {
            dispatch.handle(event);
        }
        conn.wake_writer();
        if closing {
            break "closed by the server".to_string();
        }
    };
    let flood = {
        let mut c = conn.conn.lock();
        c.lost(&why, &mut events);
        c.flood
    };
    for event in events.drain(..) {
        dispatch.handle(event);
    }
    dispatch.close();
    if let Some(f) = flood {
        shared.telemetry.grpc_flood(f.as_str());
        log::warn!(
            "gRPC connection from {} ended: {} flood",
            conn.peer,
            f.as_str()
        );
    }
    conn.wake_writer();
}

/// Writes `out` (HTTP/2 frames) to the socket, through TLS when the port
/// speaks it (with whatever records rustls has, handshake included).
fn send(
    conn: &ConnShared,
    mut socket: &TcpStream,
    out: &[u8],
    records: &mut Vec<u8>,
) -> std::io::Result<()> {
    match &conn.tls {
        None if out.is_empty() => Ok(()),
        None => socket.write_all(out),
        Some(tls) => {
            records.clear();
            tls.seal(out, records)?;
            socket.write_all(records)?;
            if records.capacity() > KEEP_OUTPUT {
                *records = Vec::new();
            }
            Ok(())
        }
    }
}

fn write_loop(conn: &ConnShared) {
    let socket = &conn.socket;
    let mut out = Vec::with_capacity(16 * 1024);
    let mut records = Vec::new();
    loop {
        let closing = {
            let mut c = conn.conn.lock();
            loop {
                conn.pending.store(false, Ordering::SeqCst);
                let now = Instant::now();
                if c.tick(now) == Tick::Close {
                    break;
                }
                c.take_output(&mut out);
                let handshake = conn.tls.as_ref().is_some_and(|t| t.wants_write());
                if !out.is_empty() || c.is_closing() || handshake {
                    break;
                }
                let next = c.next_tick(now);
                conn.sleeping.store(true, Ordering::SeqCst);
                if !conn.pending.load(Ordering::SeqCst) {
                    conn.writer.wait_until(&mut c, next);
                }
                conn.sleeping.store(false, Ordering::SeqCst);
            }
            c.is_closing()
        };
        if send(conn, socket, &out, &mut records).is_err() {
            let mut events = Vec::new();
            conn.conn.lock().lost("write failed", &mut events);
            break;
        }
        out.clear();
        if out.capacity() > KEEP_OUTPUT {
            out = Vec::with_capacity(16 * 1024);
        }
        if closing && !conn.conn.lock().has_output() {
            // close_notify goes last: a client stops reading at it.
            if let Some(tls) = &conn.tls {
                tls.close();
                let _ = send(conn, socket, &[], &mut records);
            }
            break;
        }
    }
    let why = conn.conn.lock().close_reason.clone();
    log::debug!("gRPC connection from {} closed: {why:?}", conn.peer);
    linger_close(conn);
}

/// How long a closing connection keeps reading what the client still sends.
const LINGER: Duration = Duration::from_secs(1);

/// Ends the connection after its last frames: our side first, then what
/// the client still sends is read and dropped for a moment. Closing a
/// socket with unread bytes makes the kernel answer with a reset, which can
/// destroy the GOAWAY still in flight: the rapid-reset test saw "broken
/// pipe" and no GOAWAY in 1 run of 6.
fn linger_close(conn: &ConnShared) {
    let _ = conn.socket.shutdown(Shutdown::Write);
    let _ = conn
        .socket
        .set_read_timeout(Some(Duration::from_millis(100)));
    let until = Instant::now() + LINGER;
    let mut scratch = [0u8; 4096];
    while Instant::now() < until {
        match (&conn.socket).read(&mut scratch) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    conn.close();
}
