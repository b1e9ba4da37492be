//! A small blocking gRPC client over h2c (HTTP/2 with prior knowledge, on
//! plain TCP): the CLI's, and one the tests and the load tool can share.
//! No async runtime: a [`Channel`] is one TCP connection with one reader
//! thread (`h2c-read`) that demultiplexes frames to its streams; callers
//! block in their own threads, each on its own stream's condition.
//!
//! The protocol is `state` (a pure state machine, unit-tested without
//! sockets) and `head` (what the header blocks say); this file is its
//! shell: the socket, the reader, the waits and deadlines. The calls:
//! [`Channel::unary`], [`Channel::server_streaming`] ([`Stream`]) and
//! [`Channel::open`] ([`Duplex`], client-streaming and bidirectional), in
//! `calls`; [`ChatClient`] on top for `chat.ChatService`, in `typed`.
//! `tests` runs them against a tiny h2c server in the test.
//!
//! Locks: `Shared::writer` (the socket's write half) is taken before
//! `Shared::state`, never after; frames are appended to the state's output
//! under `state` and written in that order by whoever flushes next, so
//! stream ids reach the server in the order they were opened. The reader
//! never holds `state` while it writes, and nothing is held while reading.

mod calls;
mod head;
mod state;
mod typed;

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

pub use self::calls::{Duplex, Recv, Stream};
use self::head::request_head;
use self::state::{ClientConn, Next};
pub use self::typed::{chat_paths, decode, encode, ChatClient, Messages};
use super::grpc as g;
use crate::grpc::call::{Code, Status};

/// Read buffer of a connection: a few of the largest frames.
const READ_BUFFER: usize = 64 * 1024;
/// Stack of a connection's reader (HPACK decoding, no handlers).
const READER_STACK: usize = 256 * 1024;
/// A write the server does not take in this long ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the reader may still read after a write failed (see
/// `Shared::write_failed`).
const DRAIN_AFTER_WRITE_ERROR: Duration = Duration::from_secs(1);
/// gRPC's default limit on a received message.
pub const DEFAULT_MAX_MESSAGE: usize = 4 << 20;

/// How a call is made: its deadline, its metadata, what it accepts.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// Sent as `grpc-timeout` and enforced here too: a call still running
    /// when it passes is cancelled and ends DEADLINE_EXCEEDED.
    pub timeout: Option<Duration>,
    /// Extra request headers (`authorization` and the like); names are
    /// sent lower case.
    pub metadata: Vec<(String, String)>,
    /// The largest message accepted from the server.
    pub max_message: usize,
}

impl Default for CallOptions {
    fn default() -> CallOptions {
        CallOptions {
            timeout: None,
            metadata: Vec::new(),
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }
}

impl CallOptions {
    pub fn timeout(mut self, timeout: Duration) -> CallOptions {
        self.timeout = Some(timeout);
        self
    }

    pub fn metadata(mut self, name: &str, value: &str) -> CallOptions {
        self.metadata.push((name.to_string(), value.to_string()));
        self
    }

    pub fn max_message(mut self, bytes: usize) -> CallOptions {
        self.max_message = bytes;
        self
    }
}

struct Locked {
    conn: ClientConn,
    /// Each open call's condition, woken when its stream may progress.
    waiters: HashMap<u32, Arc<Condvar>>,
}

/// What the callers and the reader thread share.
struct Shared {
    state: Mutex<Locked>,
    /// Callers waiting to open a stream (a free slot, the handshake).
    slots: Condvar,
    writer: Mutex<TcpStream>,
    /// For shutting the socket down from any thread.
    socket: TcpStream,
    /// The first failed write, the connection's end once the reader is done.
    write_error: Mutex<Option<String>>,
    authority: String,
}

impl Shared {
    /// Wakes whoever the last change concerns. Called with `state` held.
    fn wake(&self, locked: &mut Locked) {
        let wakes = locked.conn.take_wakes();
        if wakes.all {
            for cv in locked.waiters.values() {
                cv.notify_all();
            }
            self.slots.notify_all();
            return;
        }
        for id in wakes.streams {
            if let Some(cv) = locked.waiters.get(&id) {
                cv.notify_all();
            }
        }
        if wakes.slots {
            self.slots.notify_all();
        }
    }

    /// Writes every frame queued so far, in order. Returns once they are
    /// written (by this thread or the one that took them first).
    fn flush(&self) {
        let mut writer = self.writer.lock();
        let out = {
            let mut locked = self.state.lock();
            if !locked.conn.has_output() {
                return;
            }
            locked.conn.take_output()
        };
        if let Err(e) = writer.write_all(&out) {
            drop(writer);
            self.write_failed(e);
        }
    }

    /// A write failed, most likely because the server closed the
    /// connection: what it said first (a GOAWAY and its reason) may still
    /// be there to read. The reader gets [`DRAIN_AFTER_WRITE_ERROR`] to
    /// read it, then ends the connection with both reasons.
    fn write_failed(&self, e: io::Error) {
        self.write_error
            .lock()
            .get_or_insert_with(|| format!("write failed: {e}"));
        let _ = self.socket.shutdown(Shutdown::Write);
        let _ = self.socket.set_read_timeout(Some(DRAIN_AFTER_WRITE_ERROR));
    }

    /// Ends the connection: every call not over is UNAVAILABLE.
    fn lose(&self, why: &str) {
        {
            let mut locked = self.state.lock();
            locked.conn.lose(why);
            self.wake(&mut locked);
        }
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

/// Closes the connection when the last [`Channel`] clone and the last call
/// on it are gone (the reader thread holds only [`Shared`]).
struct Owner {
    shared: Arc<Shared>,
    /// Calls whose whole request was written (see [`Channel::requests_sent`]).
    requests_sent: std::sync::atomic::AtomicU64,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.state.lock().conn.goodbye();
        self.shared.flush();
        self.shared.lose("the channel was closed");
    }
}

/// One h2c connection to a gRPC server; clones share it. Any number of
/// calls may run on it at once from any threads (up to the server's
/// SETTINGS_MAX_CONCURRENT_STREAMS: past it, new calls wait for a slot).
/// It is closed when the last clone and the last call are dropped.
#[derive(Clone)]
pub struct Channel {
    owner: Arc<Owner>,
}

impl Channel {
    /// Connects to `addr` (`host:port`, `http://` allowed) and waits for
    /// the server's SETTINGS, all within `timeout`.
    pub fn connect(addr: &str, timeout: Duration) -> io::Result<Channel> {
        let deadline = Instant::now() + timeout;
        let authority = addr
            .strip_prefix("http://")
            .unwrap_or(addr)
            .trim_end_matches('/');
        let mut last = io::Error::new(ErrorKind::NotFound, "no address");
        let mut socket = None;
        for a in authority.to_socket_addrs()? {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                last = io::Error::new(ErrorKind::TimedOut, "connecting timed out");
                break;
            }
            match TcpStream::connect_timeout(&a, left) {
                Ok(s) => {
                    socket = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let socket = socket.ok_or(last)?;
        socket.set_nodelay(true)?;
        socket.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(Locked {
                conn: ClientConn::new(),
                waiters: HashMap::new(),
            }),
            slots: Condvar::new(),
            writer: Mutex::new(socket.try_clone()?),
            socket: socket.try_clone()?,
            write_error: Mutex::new(None),
            authority: authority.to_string(),
        });
        let channel = Channel {
            owner: Arc::new(Owner {
                shared: shared.clone(),
                requests_sent: Default::default(),
            }),
        };
        let reader = shared.clone();
        std::thread::Builder::new()
            .name("h2c-read".into())
            .stack_size(READER_STACK)
            .spawn(move || read_loop(&reader, socket))?;
        shared.flush();
        let mut locked = shared.state.lock();
        while !locked.conn.settings_seen() {
            if let Some(why) = locked.conn.lost() {
                return Err(io::Error::new(
                    ErrorKind::ConnectionAborted,
                    why.to_string(),
                ));
            }
            if shared.slots.wait_until(&mut locked, deadline).timed_out() {
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    format!("no HTTP/2 SETTINGS from the server in {timeout:?}"),
                ));
            }
        }
        Ok(channel)
    }

    /// Calls on this connection whose whole request (headers and message)
    /// has been written: the server has it, or it is on its way.
    pub fn requests_sent(&self) -> u64 {
        self.owner
            .requests_sent
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// True once the connection is over (calls on it fail UNAVAILABLE).
    pub fn is_closed(&self) -> bool {
        self.owner.shared.state.lock().conn.lost().is_some()
    }

    /// A unary call: one request, one response.
    pub fn unary(
        &self,
        path: &str,
        request: &[u8],
        options: &CallOptions,
    ) -> Result<Vec<u8>, Status> {
        let call = self.start(path, Some(request), options)?;
        let response = match call.recv_until(None) {
            Recv::Message(m) => m,
            Recv::Ended(s) if s.code != Code::Ok => return Err(s),
            _ => {
                return Err(Status::new(
                    Code::Internal,
                    "the server sent no response message to a unary call",
                ))
            }
        };
        match call.recv_until(None) {
            Recv::Ended(s) if s.code == Code::Ok => Ok(response),
            Recv::Ended(s) => Err(s),
            _ => Err(Status::new(
                Code::Internal,
                "the server sent more than one response message to a unary call",
            )),
        }
    }

    /// A server-streaming call: one request, then the responses as they
    /// come (see [`Stream`]).
    pub fn server_streaming(
        &self,
        path: &str,
        request: &[u8],
        options: &CallOptions,
    ) -> Result<Stream, Status> {
        Ok(Stream {
            call: self.start(path, Some(request), options)?,
            done: false,
        })
    }

    /// A client-streaming or bidirectional call, with nothing sent yet
    /// (see [`Duplex`]).
    pub fn open(&self, path: &str, options: &CallOptions) -> Result<Duplex, Status> {
        Ok(Duplex {
            call: self.start(path, None, options)?,
        })
    }

    /// Opens a stream (waiting for a slot if the server's limit is
    /// reached) and sends `request` with END_STREAM when there is one.
    fn start(
        &self,
        path: &str,
        request: Option<&[u8]>,
        options: &CallOptions,
    ) -> Result<CallHandle, Status> {
        let shared = &self.owner.shared;
        let deadline = options.timeout.map(|t| Instant::now() + t);
        let mut locked = shared.state.lock();
        let id = loop {
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if timeout.is_some_and(|t| t.is_zero()) {
                return Err(deadline_exceeded());
            }
            let head = request_head(&shared.authority, path, timeout, &options.metadata);
            match locked.conn.open(&head, false, options.max_message)? {
                Some(id) => break id,
                None => match deadline {
                    Some(d) => {
                        shared.slots.wait_until(&mut locked, d);
                    }
                    None => shared.slots.wait(&mut locked),
                },
            }
        };
        let wake = Arc::new(Condvar::new());
        locked.waiters.insert(id, wake.clone());
        drop(locked);
        let call = CallHandle {
            owner: self.owner.clone(),
            id,
            wake,
            deadline,
        };
        match request {
            Some(bytes) => {
                call.send(bytes, true)?;
                let sent = &self.owner.requests_sent;
                sent.fetch_add(1, std::sync::atomic::Ordering::Release);
            }
            None => shared.flush(),
        }
        Ok(call)
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("authority", &self.owner.shared.authority)
            .finish()
    }
}

fn deadline_exceeded() -> Status {
    Status::new(Code::DeadlineExceeded, "deadline exceeded")
}

/// The reader thread: frames in, wakes out, acknowledgements written.
fn read_loop(shared: &Shared, mut socket: TcpStream) {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut have = 0;
    let why = loop {
        match socket.read(&mut buf[have..]) {
            Ok(0) => break "the server closed the connection".to_string(),
            Ok(n) => have += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => break format!("read failed: {e}"),
        }
        let (used, output, lost) = {
            let mut locked = shared.state.lock();
            let used = locked.conn.receive(&buf[..have]);
            shared.wake(&mut locked);
            (used, locked.conn.has_output(), locked.conn.lost().is_some())
        };
        buf.copy_within(used..have, 0);
        have -= used;
        if output {
            shared.flush();
        }
        if lost {
            break String::new();
        }
    };
    // After a protocol error the reason is recorded already; after a
    // failed write, that is the reason.
    let why = shared.write_error.lock().take().unwrap_or(why);
    shared.lose(&why);
}

/// One call's stream, as the call types hold it. Dropping it cancels the
/// call if it is still running.
struct CallHandle {
    owner: Arc<Owner>,
    id: u32,
    wake: Arc<Condvar>,
    deadline: Option<Instant>,
}

impl CallHandle {
    fn shared(&self) -> &Shared {
        &self.owner.shared
    }

    /// Cancels the call if its deadline passed. Called with `state` held.
    fn check_deadline(&self, locked: &mut MutexGuard<'_, Locked>) -> bool {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            locked.conn.cancel(self.id, deadline_exceeded());
            self.shared().wake(locked);
            return true;
        }
        false
    }

    /// Sends one message (END_STREAM after it when `end`), waiting for
    /// flow-control window as needed.
    fn send(&self, message: &[u8], end: bool) -> Result<(), Status> {
        let mut framed = Vec::with_capacity(g::PREFIX_LEN + message.len());
        g::put_message(&mut framed, message);
        self.send_bytes(&framed, end)
    }

    fn send_bytes(&self, bytes: &[u8], end: bool) -> Result<(), Status> {
        let shared = self.shared();
        let mut at = 0;
        loop {
            let result = {
                let mut locked = shared.state.lock();
                let mut result = locked.conn.send_data(self.id, &bytes[at..], end);
                if result == Ok(0) && at < bytes.len() {
                    // No window: wait for the server to give some.
                    if self.check_deadline(&mut locked) {
                        result = Err(deadline_exceeded());
                    } else if let Some(d) = self.deadline {
                        self.wake.wait_until(&mut locked, d);
                    } else {
                        self.wake.wait(&mut locked);
                    }
                }
                result
            };
            shared.flush();
            at += result?;
            if at == bytes.len() {
                return Ok(());
            }
        }
    }

    fn close_send(&self) {
        let shared = self.shared();
        let _ = shared.state.lock().conn.send_data(self.id, &[], true);
        shared.flush();
    }

    /// The next message or the end, waiting until `until` at most (and
    /// the call's deadline).
    fn recv_until(&self, until: Option<Instant>) -> Recv {
        let shared = self.shared();
        let mut locked = shared.state.lock();
        let got = loop {
            match locked.conn.next(self.id) {
                Next::Message(m) => break Recv::Message(m),
                Next::End(s) => break Recv::Ended(s),
                Next::Pending => {}
            }
            if self.check_deadline(&mut locked) {
                continue;
            }
            let limit = match (until, self.deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match limit {
                Some(l) => {
                    if until.is_some_and(|u| Instant::now() >= u) {
                        break Recv::TimedOut;
                    }
                    self.wake.wait_until(&mut locked, l);
                }
                None => self.wake.wait(&mut locked),
            }
        };
        let output = locked.conn.has_output();
        drop(locked);
        if output {
            shared.flush();
        }
        got
    }

    /// Waits for the call's status, dropping messages not read.
    fn status(&self) -> Status {
        loop {
            if let Recv::Ended(s) = self.recv_until(None) {
                return s;
            }
        }
    }
}

impl Drop for CallHandle {
    fn drop(&mut self) {
        let shared = self.shared();
        {
            let mut locked = shared.state.lock();
            locked.conn.forget(self.id);
            locked.waiters.remove(&self.id);
            shared.wake(&mut locked);
        }
        shared.flush();
    }
}

#[cfg(test)]
mod tests;
