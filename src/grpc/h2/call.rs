//! The call interface ([`crate::grpc::call`]) over streamhub's own HTTP/2
//! connection: [`H2Call`] is one stream of one connection, held by the
//! call's stream thread. Sending queues messages on the connection (the
//! connection's writer thread frames and writes them, for every stream at
//! once); receiving takes what the reader thread put in the call's inbox.
//! The thread sleeps on one channel that the reader and the writer poke
//! when the call may have progressed.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use std::collections::VecDeque;

use super::conn::{Chunk, Feed};
use super::frame::ErrorCode;
use super::server::ConnShared;
use crate::grpc::call::{
    Call, Code, Follow, Interrupted, Received, Reply, Requests, Responses, Status, WriteError,
};
use crate::grpc::wire::{self, Outbound};
use crate::hub::{Subscription, Wait, MAX_BURST};

/// A stream thread that has queued more than this on its stream waits for
/// the writer (a client that reads slowly, or a closed window) before it
/// queues more: the slow-consumer rule then applies in the hub.
const QUEUE_HIGH: usize = 256 * 1024;
/// It goes on once the writer has taken the queue down to this.
const QUEUE_LOW: usize = 64 * 1024;

/// What the reader hands a streaming call's inbox.
pub(super) enum Inbound {
    Message(Vec<u8>),
    Ended,
    Failed(String),
}

/// Turns a response into the bytes queued on the stream.
pub trait Encode {
    fn chunk(self) -> Chunk;
}

impl<M: protobuf::Message> Encode for M {
    fn chunk(self) -> Chunk {
        Chunk::message(&self.write_to_bytes().unwrap_or_default())
    }
}

impl Encode for Outbound {
    fn chunk(self) -> Chunk {
        match self {
            // Encoded once at publish, shared: no copy here.
            Outbound::Shared(m) => Chunk::Shared(m),
            Outbound::Own(m) => m.chunk(),
        }
    }
}

/// One call on one stream.
/// A request's metadata (headers other than gRPC's own), names lower case.
pub(super) type Metadata = Vec<(String, Vec<u8>)>;

pub struct H2Call {
    metadata: Metadata,
    conn: Arc<ConnShared>,
    stream: u32,
    woken: Receiver<()>,
    inbox: Option<Receiver<Inbound>>,
    stopping: Option<Receiver<()>>,
    deadline: Option<Instant>,
    finished: bool,
}

impl H2Call {
    /// A call on `stream`; `waker` is registered with the connection,
    /// `inbox` is where the reader puts inbound messages (streaming
    /// requests only).
    pub(super) fn new(
        metadata: Metadata,
        conn: Arc<ConnShared>,
        stream: u32,
        (waker, woken): (Sender<()>, Receiver<()>),
        inbox: Option<Receiver<Inbound>>,
        stopping: Receiver<()>,
        deadline: Option<Instant>,
    ) -> H2Call {
        conn.conn.lock().set_waker(stream, waker);
        H2Call {
            metadata,
            conn,
            stream,
            woken,
            inbox,
            stopping: Some(stopping),
            deadline,
            finished: false,
        }
    }

    /// `until`, or the deadline if that comes first.
    fn bound(&self, until: Option<Instant>) -> Option<Instant> {
        match (until, self.deadline) {
            (Some(u), Some(d)) => Some(u.min(d)),
            (u, d) => u.or(d),
        }
    }

    fn end(&mut self, status: &Status) {
        self.finished = true;
        let mut conn = self.conn.conn.lock();
        conn.finish(self.stream, status);
        drop(conn);
        self.conn.wake_writer();
    }

    fn take(&mut self, inbound: Inbound) -> Inbound {
        if let Inbound::Message(bytes) = &inbound {
            // The client may send as much again.
            self.conn
                .conn
                .lock()
                .release(self.stream, bytes.len() + super::grpc::PREFIX_LEN);
            self.conn.wake_writer();
        }
        inbound
    }
}

fn decode<T: protobuf::Message>(inbound: Inbound) -> Received<T> {
    match inbound {
        Inbound::Message(bytes) => match T::parse_from_bytes(&bytes) {
            Ok(m) => Received::Message(m),
            Err(e) => Received::Failed(format!("malformed message: {e}")),
        },
        Inbound::Ended => Received::Ended,
        Inbound::Failed(why) => Received::Failed(why),
    }
}

impl Call for H2Call {
    fn wait(&self, until: Option<Instant>) -> Result<(), Interrupted> {
        let never = crossbeam_channel::never();
        let stopping = self.stopping.as_ref().unwrap_or(&never);
        let timeout = match self.bound(until) {
            Some(d) => crossbeam_channel::at(d),
            None => crossbeam_channel::never(),
        };
        crossbeam_channel::select! {
            recv(self.woken) -> _ => Ok(()),
            recv(stopping) -> _ => Err(Interrupted::Stopping),
            recv(timeout) -> _ => Err(Interrupted::TimedOut),
        }
    }

    fn woken(&self) -> &Receiver<()> {
        &self.woken
    }

    fn ignore_stopping(&mut self) {
        self.stopping = None;
    }

    fn peer(&self) -> &str {
        &self.conn.peer
    }

    fn metadata(&self, name: &str) -> Option<&[u8]> {
        self.metadata
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    fn deadline_passed(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

impl<T: Encode> Responses<T> for H2Call {
    fn send_all(
        &mut self,
        items: impl IntoIterator<Item = T>,
        timeout: Duration,
    ) -> Result<(), WriteError> {
        let chunks: Vec<Chunk> = items.into_iter().map(Encode::chunk).collect();
        let queued = self.conn.conn.lock().send(self.stream, chunks);
        self.conn.wake_writer();
        match queued {
            None => return Err(WriteError::Gone),
            Some(q) if q <= QUEUE_HIGH => return Ok(()),
            Some(_) => {}
        }
        let until = Instant::now() + timeout;
        loop {
            {
                // Looked at and asked under one lock: a drain in between
                // cannot be missed.
                let mut conn = self.conn.conn.lock();
                match conn.queued(self.stream) {
                    None => return Err(WriteError::Gone),
                    Some(q) if q <= QUEUE_LOW => return Ok(()),
                    Some(_) => conn.wake_below(self.stream, QUEUE_LOW),
                }
            }
            if self.deadline_passed() {
                return Err(WriteError::Gone);
            }
            self.wait(Some(until)).map_err(WriteError::Interrupted)?;
        }
    }

    fn client_gone(&mut self) -> bool {
        self.deadline_passed() || self.conn.conn.lock().is_gone(self.stream)
    }

    fn finish(mut self, status: Status, _timeout: Duration) {
        self.end(&status);
    }
}

/// A subscription as a stream's feed: the writer takes the messages from
/// the room's log itself, each as the shared encoding made once per
/// publish.
struct RoomFeed {
    sub: Subscription,
}

impl Feed for RoomFeed {
    fn pull(&mut self, budget: usize, queue: &mut VecDeque<Chunk>) -> (usize, bool) {
        match self.sub.check() {
            Wait::Closed(_) => return (0, true),
            Wait::TimedOut => return (0, false),
            Wait::Ready if budget == 0 => return (0, false),
            Wait::Ready => {}
        }
        let (mut bytes, mut n) = (0, 0);
        // A notice goes before the messages taken with it.
        if let Some(notice) = self.sub.notice() {
            let message = crate::grpc::convert::notice_message(self.sub.room(), &notice);
            let chunk = Encode::chunk(message);
            if let Chunk::Framed(framed) = &chunk {
                bytes += framed.len();
            }
            queue.push_back(chunk);
        }
        for m in self.sub.peek(MAX_BURST) {
            if bytes >= budget {
                break;
            }
            bytes += super::grpc::PREFIX_LEN + wire::shared_bytes(m).len();
            queue.push_back(Chunk::Shared(m.clone()));
            n += 1;
        }
        self.sub.advance(n);
        (bytes, false)
    }
}

impl Follow for H2Call {
    fn follow(&mut self, mut sub: Subscription) -> Result<(), Subscription> {
        sub.watch(self.conn.watcher.clone());
        let fed = self
            .conn
            .conn
            .lock()
            .follow(self.stream, Box::new(RoomFeed { sub }));
        self.conn.wake_writer();
        fed.map_err(|feed| into_subscription(feed).expect("the feed given"))
    }

    fn following(&mut self) -> bool {
        !self.deadline_passed() && self.conn.conn.lock().following(self.stream)
    }

    fn unfollow(&mut self) -> Option<Subscription> {
        let feed = self.conn.conn.lock().unfollow(self.stream)?;
        into_subscription(feed)
    }
}

fn into_subscription(feed: Box<dyn Feed>) -> Option<Subscription> {
    let any: Box<dyn std::any::Any> = feed;
    any.downcast::<RoomFeed>().ok().map(|f| f.sub)
}

impl<T: protobuf::Message> Requests<T> for H2Call {
    fn poll_next(&mut self) -> Poll<Received<T>> {
        let Some(inbox) = &self.inbox else {
            return Poll::Ready(Received::Ended);
        };
        match inbox.try_recv() {
            Ok(inbound) => Poll::Ready(decode(self.take(inbound))),
            Err(crossbeam_channel::TryRecvError::Empty) => Poll::Pending,
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                Poll::Ready(Received::Failed("connection closed".into()))
            }
        }
    }

    fn next(&mut self, until: Option<Instant>) -> Result<Received<T>, Interrupted> {
        let Some(inbox) = self.inbox.clone() else {
            return Ok(Received::Ended);
        };
        let never = crossbeam_channel::never();
        let stopping = self.stopping.clone();
        let stopping = stopping.as_ref().unwrap_or(&never);
        let timeout = match self.bound(until) {
            Some(d) => crossbeam_channel::at(d),
            None => crossbeam_channel::never(),
        };
        crossbeam_channel::select! {
            recv(inbox) -> m => Ok(match m {
                Ok(inbound) => decode(self.take(inbound)),
                Err(_) => Received::Failed("connection closed".into()),
            }),
            recv(stopping) -> _ => Err(Interrupted::Stopping),
            recv(timeout) -> _ => {
                if self.deadline_passed() {
                    Ok(Received::Failed("deadline exceeded".into()))
                } else {
                    Err(Interrupted::TimedOut)
                }
            }
        }
    }
}

impl<T: Encode> Reply<T> for H2Call {
    fn reply(mut self, answer: Result<T, Status>, _timeout: Duration) {
        match answer {
            Ok(resp) => {
                self.conn.conn.lock().send(self.stream, [resp.chunk()]);
                self.end(&Status::ok());
            }
            Err(st) => self.end(&st),
        }
    }
}

impl Drop for H2Call {
    /// A call dropped unfinished is cancelled, or ended with
    /// DEADLINE_EXCEEDED if that is why.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut conn = self.conn.conn.lock();
        if self.deadline_passed() {
            conn.finish(
                self.stream,
                &Status::new(Code::DeadlineExceeded, "deadline exceeded"),
            );
        } else {
            conn.reset(self.stream, ErrorCode::Cancel);
        }
        drop(conn);
        self.conn.wake_writer();
    }
}
