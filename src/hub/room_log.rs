//! A room's log: every accepted message in order, appended by publishers
//! under the room's lock and read by any number of subscriber threads
//! without it.
//!
//! The log is a chain of chunks. A chunk has a fixed number of slots, each
//! set once (`OnceLock`) and never changed or cleared, and a link to the next
//! chunk, also set once. The publisher fills a slot (or links a new chunk),
//! then publishes the new tail with a release store; a reader loads the tail
//! with acquire and reads only slots at or below it, so everything it reads
//! is complete and immutable. There is no `unsafe` here: soundness comes from
//! `OnceLock` and `Arc`, not from an argument.
//!
//! A reader keeps the chunk it is in alive through an `Arc`, so the room may
//! drop old chunks from its history while a reader still sends from them;
//! memory is bounded because a reader that trails the tail by more than its
//! window is evicted (see `Hub::publish`).
//!
//! Readers borrow messages (`&Arc<Message>`) from the slots: taking a batch
//! touches no reference count, so a thousand readers of one room share the
//! slots' cache lines read-only. (The prototype in
//! `shared/prototypes/sse-fanout` measured per-message `Arc` clones under a
//! lock that a thousand threads contend for at 0.1x of a read-only log.)
//!
//! Waking: readers with nothing to read park on the log's futex word; a
//! publisher bumps the word after the tail and calls the kernel only when
//! some reader is parked: one call wakes them all, however many.
//!
//! A reader that is not a thread of its own (a gRPC connection's writer
//! reads for all its streams, `grpc::h2`) registers a [`Watch`] instead:
//! the same wakes call it, once per watcher however many of its streams
//! read the room.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::message::Message;
use crate::sys;

/// Parked readers woken per futex call by [`Shared::wake_now`].
const WAKE_BATCH: usize = 128;
/// Slots per chunk.
const CHUNK_SLOTS: usize = 64;
/// A chunk takes no more messages once its content reaches this size, so a
/// chunk kept alive past its messages' retention holds little memory.
const CHUNK_BYTES: usize = 64 * 1024;

pub(super) struct Chunk {
    /// Sequence number of the first slot.
    first: u64,
    slots: Box<[OnceLock<Arc<Message>>]>,
    next: OnceLock<Arc<Chunk>>,
}

impl Chunk {
    fn new(first: u64) -> Arc<Chunk> {
        Arc::new(Chunk {
            first,
            slots: (0..CHUNK_SLOTS).map(|_| OnceLock::new()).collect(),
            next: OnceLock::new(),
        })
    }

    /// The message with sequence `seq` if this chunk holds it.
    fn get(&self, seq: u64) -> Option<&Arc<Message>> {
        let index = seq.checked_sub(self.first)? as usize;
        self.slots.get(index)?.get()
    }
}

/// Drops the chain behind a chunk one link at a time. The default drop
/// recurses through `next`: a reader a million messages behind (evicted,
/// its thread not yet done) holds 15,000 chunks, and letting go of them
/// overflowed the dropping thread's stack (seen in a debug-build test).
impl Drop for Chunk {
    fn drop(&mut self) {
        let mut next = self.next.take();
        while let Some(chunk) = next {
            next = match Arc::into_inner(chunk) {
                Some(mut only) => only.next.take(),
                // Someone else (a reader, the log) still holds the rest.
                None => None,
            };
        }
    }
}

/// What readers share without the room lock: the tail and the wake word.
pub(super) struct Shared {
    /// Sequence of the last published message (0: none yet).
    tail: AtomicU64,
    /// Bumped after every publish and close: what parked readers sleep on.
    word: AtomicU32,
    /// Readers parked (or about to park) on `word`.
    parked: AtomicU32,
    /// A wake is on its way (see [`Shared::announce`]): later publishes
    /// need not ask for another.
    wake_pending: AtomicBool,
    /// Watchers called with every wake, each once, with how many readers
    /// registered it; `watching` is their number, read without the lock.
    pub(super) watchers: Mutex<Vec<(Arc<dyn Watch>, usize)>>,
    watching: AtomicU32,
}

/// Something that reads the log for others and wants to hear when it moves
/// or a reader is closed (instead of parking on the futex). Called from the
/// thread that wakes: it must only signal, never block or take a lock that
/// a publisher holds.
pub trait Watch: Send + Sync {
    fn wake(&self);
}

/// The same watcher: one allocation, compared by address.
fn same(a: &Arc<dyn Watch>, b: &Arc<dyn Watch>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

impl Shared {
    pub(super) fn tail(&self) -> u64 {
        self.tail.load(Ordering::Acquire)
    }

    /// Shows readers every message up to `seq`, appended hidden earlier
    /// (by this thread or, for smaller sequences, by a publisher whose
    /// room lock this thread took since). Needs no room lock: the slots are
    /// set, and the tail only moves forward.
    pub(super) fn reveal(&self, seq: u64) {
        // Release: as in `Log::append`.
        self.tail.fetch_max(seq, Ordering::Release);
    }

    /// Wakes every parked reader and watcher now (after a close).
    pub(super) fn wake(&self) {
        self.word.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) > 0 {
            sys::futex_wake_all(&self.word);
        }
        self.call_watchers();
    }

    /// Registers a watcher (again: it is counted, and called once).
    pub(super) fn watch(&self, watcher: &Arc<dyn Watch>) {
        let mut list = self.watchers.lock();
        match list.iter_mut().find(|(w, _)| same(w, watcher)) {
            Some((_, n)) => *n += 1,
            None => {
                list.push((watcher.clone(), 1));
                self.watching.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Takes back one registration of `watcher`.
    pub(super) fn unwatch(&self, watcher: &Arc<dyn Watch>) {
        let mut list = self.watchers.lock();
        if let Some(i) = list.iter().position(|(w, _)| same(w, watcher)) {
            list[i].1 -= 1;
            if list[i].1 == 0 {
                list.swap_remove(i);
                self.watching.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Calls every watcher, without the list's lock held: a watcher may
    /// take its own lock, under which readers are dropped (and unwatch).
    fn call_watchers(&self) {
        if self.watching.load(Ordering::SeqCst) == 0 {
            return;
        }
        let list: Vec<Arc<dyn Watch>> = self
            .watchers
            .lock()
            .iter()
            .map(|(w, _)| w.clone())
            .collect();
        for w in list {
            w.wake();
        }
    }

    /// After a publish: tells readers that the tail moved. Returns true when
    /// some reader is parked or watched and no wake is pending yet: then the caller
    /// makes sure [`Shared::wake_now`] runs soon. Until it has, later
    /// publishes ask for nothing, so one wake carries all of them.
    ///
    /// No reader misses a wake: a publisher that finds a wake pending moved
    /// the word before it looked, and the pending wake clears the flag
    /// before it calls the kernel, so that call comes after the word moved
    /// (all SeqCst); a reader that parks later sees the new tail or the new
    /// word and does not sleep.
    pub(super) fn announce(&self) -> bool {
        self.word.fetch_add(1, Ordering::SeqCst);
        let someone =
            self.parked.load(Ordering::SeqCst) > 0 || self.watching.load(Ordering::SeqCst) > 0;
        someone && !self.wake_pending.swap(true, Ordering::SeqCst)
    }

    /// The wake [`Shared::announce`] asked for: the readers parked now, in
    /// calls of at most [`WAKE_BATCH`].
    ///
    /// Why in calls: the kernel wakes a futex's waiters with its hash bucket
    /// locked and preemption off, so one call for ten thousand would keep
    /// that CPU from anything else for milliseconds (publish p99 16 ms at
    /// 10,000 subscribers). Why no more than were parked: a woken reader
    /// that takes its message parks again at the back of the queue, and
    /// calls until one wakes fewer than a batch would wake it again and
    /// again for nothing (measured: 8 futex calls and 23 switches per
    /// delivery with readers at normal priority). Waiters queue in order, so
    /// the first `parked` woken are the ones that parked before the word
    /// moved; later ones saw the new word.
    pub(super) fn wake_now(&self) {
        self.wake_pending.store(false, Ordering::SeqCst);
        // Watchers first: each is one signal that carries many streams.
        self.call_watchers();
        let mut left = self.parked.load(Ordering::SeqCst) as usize;
        while left > 0 {
            let woke = sys::futex_wake(&self.word, left.min(WAKE_BATCH));
            if woke == 0 {
                break;
            }
            left = left.saturating_sub(woke);
        }
    }

    /// Parks until `ready()` holds, a wake, or `deadline`. Returns at once
    /// when `ready()` already holds. May return early; callers re-check.
    pub(super) fn park(&self, deadline: Option<Instant>, ready: impl Fn() -> bool) {
        if ready() {
            return;
        }
        let word = self.word.load(Ordering::SeqCst);
        self.parked.fetch_add(1, Ordering::SeqCst);
        // Checked again after announcing the park: a publisher that moved
        // the tail before seeing `parked` is seen here, and one that moves it
        // after bumps `word`, which makes the futex return at once.
        if !ready() {
            let timeout = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if !timeout.is_zero() {
                sys::futex_wait(&self.word, word, timeout);
            }
        }
        self.parked.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The writer's side, owned by the room under its lock.
pub(super) struct Log {
    shared: Arc<Shared>,
    /// Chunks from the oldest retained message's to the one being filled.
    chunks: VecDeque<Arc<Chunk>>,
    /// Messages and content bytes in the last chunk.
    back_len: usize,
    back_bytes: usize,
    /// Sequence of the oldest retained message (`tail + 1` when none is).
    first_retained: u64,
    retained_bytes: usize,
    /// Sequence of the last message appended, shown to readers or not
    /// (see [`Log::append_hidden`]); the tail when none is hidden.
    last: u64,
}

impl Log {
    pub(super) fn new() -> Log {
        Log::after(0)
    }

    /// An empty log whose first message will be `last + 1`: a room
    /// restored from the journal goes on where it was.
    pub(super) fn after(last: u64) -> Log {
        Log {
            shared: Arc::new(Shared {
                tail: AtomicU64::new(last),
                word: AtomicU32::new(0),
                parked: AtomicU32::new(0),
                wake_pending: AtomicBool::new(false),
                watchers: Mutex::new(Vec::new()),
                watching: AtomicU32::new(0),
            }),
            chunks: VecDeque::from([Chunk::new(last + 1)]),
            back_len: 0,
            back_bytes: 0,
            first_retained: last + 1,
            retained_bytes: 0,
            last,
        }
    }

    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Sequence of the last message appended.
    pub(super) fn tail(&self) -> u64 {
        self.shared.tail.load(Ordering::Relaxed)
    }

    pub(super) fn retained(&self) -> u64 {
        self.tail() + 1 - self.first_retained
    }

    pub(super) fn first_retained(&self) -> u64 {
        self.first_retained
    }

    pub(super) fn retained_bytes(&self) -> usize {
        self.retained_bytes
    }

    /// Sequence of the last message appended, hidden or not.
    pub(super) fn last(&self) -> u64 {
        self.last
    }

    /// Appends `message` (its `seq` must be `last + 1`) and publishes it to
    /// readers. The caller wakes them with [`Shared::wake`] after it lets go
    /// of the room lock.
    pub(super) fn append(&mut self, message: Arc<Message>) {
        let seq = message.seq;
        self.append_hidden(message);
        // Release: a reader that sees this tail sees the slot (and a new
        // chunk's link) set in `append_hidden`.
        self.shared.tail.store(seq, Ordering::Release);
    }

    /// Appends `message` (its `seq` must be `last + 1`) without showing it
    /// to readers: [`Shared::reveal`] does, once the journal holds it. Every
    /// hidden message is revealed in sequence order, because the journal
    /// stores a room's messages in the order they were appended here.
    pub(super) fn append_hidden(&mut self, message: Arc<Message>) {
        let seq = message.seq;
        debug_assert_eq!(seq, self.last + 1);
        self.last = seq;
        let bytes = message.content.len();
        if self.back_len == CHUNK_SLOTS || self.back_bytes >= CHUNK_BYTES {
            let chunk = Chunk::new(seq);
            let back = self.chunks.back().expect("a log always has a chunk");
            let _ = back.next.set(chunk.clone());
            self.chunks.push_back(chunk);
            self.back_len = 0;
            self.back_bytes = 0;
        }
        let back = self.chunks.back().expect("a log always has a chunk");
        let _ = back.slots[self.back_len].set(message);
        self.back_len += 1;
        self.back_bytes += bytes;
        self.retained_bytes += bytes;
    }

    /// Forgets the oldest retained message, if any; returns its size.
    pub(super) fn forget_oldest(&mut self) -> Option<usize> {
        if self.first_retained > self.tail() {
            return None;
        }
        let bytes = self
            .chunks
            .front()
            .and_then(|c| c.get(self.first_retained))
            .map_or(0, |m| m.content.len());
        self.first_retained += 1;
        self.retained_bytes -= bytes;
        // A chunk whose messages are all forgotten leaves (readers inside it
        // keep it alive until they move on); the last chunk always stays.
        while self.chunks.len() > 1 && self.chunks[1].first <= self.first_retained {
            self.chunks.pop_front();
        }
        Some(bytes)
    }

    /// The retained message with sequence `seq`, shown or hidden.
    pub(super) fn get(&self, seq: u64) -> Option<&Arc<Message>> {
        if seq < self.first_retained {
            return None;
        }
        let i = self
            .chunks
            .partition_point(|c| c.first <= seq)
            .checked_sub(1)?;
        self.chunks[i].get(seq)
    }

    /// Forgets every retained message.
    pub(super) fn forget_all(&mut self) {
        while self.forget_oldest().is_some() {}
    }

    /// A reader positioned to read `from` next, which must be retained or
    /// `tail + 1`.
    pub(super) fn reader(&self, from: u64) -> Reader {
        let from = from.clamp(self.first_retained, self.tail() + 1);
        let chunk = self
            .chunks
            .iter()
            .rev()
            .find(|c| c.first <= from)
            .or(self.chunks.front())
            .expect("a log always has a chunk")
            .clone();
        Reader {
            shared: self.shared.clone(),
            chunk,
            next: from,
        }
    }
}

/// One reader's position in a log. Reads without any lock.
pub(super) struct Reader {
    shared: Arc<Shared>,
    /// The chunk that holds (or precedes) `next`.
    chunk: Arc<Chunk>,
    /// Sequence of the next message to read.
    next: u64,
}

impl Reader {
    pub(super) fn next(&self) -> u64 {
        self.next
    }

    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// How many messages are published past this reader's position.
    pub(super) fn available(&self) -> u64 {
        (self.shared.tail() + 1).saturating_sub(self.next)
    }

    /// Up to `max` messages from the position on, without moving it.
    pub(super) fn peek(&self, max: usize) -> impl Iterator<Item = &Arc<Message>> + '_ {
        let end = (self.shared.tail() + 1).min(self.next.saturating_add(max as u64));
        let mut chunk: &Chunk = &self.chunk;
        (self.next..end).map_while(move |seq| loop {
            if let Some(m) = chunk.get(seq) {
                return Some(m);
            }
            // Not in this chunk: it is in a later one, linked before the
            // tail that covers it was published.
            chunk = chunk.next.get()?;
        })
    }

    /// Moves the position `n` messages on (after they were sent), letting
    /// go of chunks left behind.
    pub(super) fn advance(&mut self, n: u64) {
        self.next += n;
        while self.chunk.get(self.next).is_none() {
            match self.chunk.next.get() {
                Some(next) if next.first <= self.next => {
                    let next = next.clone();
                    self.chunk = next;
                }
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::message::MessageKind;
    use std::time::SystemTime;

    fn message(seq: u64, bytes: usize) -> Arc<Message> {
        Arc::new(Message {
            id: format!("msg_{seq}"),
            seq,
            room: Arc::from("r"),
            user: "u".into(),
            content: "x".repeat(bytes),
            kind: MessageKind::Chat,
            timestamp: SystemTime::now(),
            encoded: Default::default(),
        })
    }

    fn seqs<'a>(it: impl Iterator<Item = &'a Arc<Message>>) -> Vec<u64> {
        it.map(|m| m.seq).collect()
    }

    #[test]
    fn a_reader_sees_everything_in_order_across_chunks() {
        let mut log = Log::new();
        let mut reader = log.reader(1);
        for seq in 1..=500 {
            log.append(message(seq, 10));
        }
        let mut got = Vec::new();
        while reader.available() > 0 {
            let batch = seqs(reader.peek(37));
            reader.advance(batch.len() as u64);
            got.extend(batch);
        }
        assert_eq!(got, (1..=500).collect::<Vec<_>>());
    }

    #[test]
    fn a_reader_far_behind_lets_go_of_its_chunks_without_recursing() {
        let mut log = Log::new();
        let reader = log.reader(1);
        for seq in 1..=2_000_000 {
            log.append(message(seq, 0));
            log.forget_oldest();
        }
        // 31,250 chunks hang off the reader's: dropping it must not take
        // a stack frame per chunk (a 64 KiB stack is plenty).
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || drop(reader))
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn large_messages_seal_a_chunk_early() {
        let mut log = Log::new();
        let reader = log.reader(1);
        for seq in 1..=10 {
            log.append(message(seq, 40 * 1024));
        }
        assert!(log.chunks.len() >= 5, "{} chunks", log.chunks.len());
        assert_eq!(seqs(reader.peek(100)), (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn forgetting_drops_chunks_but_not_from_a_reader() {
        let mut log = Log::new();
        let reader = log.reader(1);
        for seq in 1..=300 {
            log.append(message(seq, 1));
        }
        for _ in 0..290 {
            log.forget_oldest();
        }
        assert_eq!(log.retained(), 10);
        assert_eq!(log.first_retained(), 291);
        assert_eq!(log.retained_bytes(), 10);
        assert!(log.chunks.len() <= 2);
        // The early reader still reads everything from its own chunks.
        assert_eq!(seqs(reader.peek(1000)).len(), 300);
        // A new reader starts no earlier than what is retained.
        assert_eq!(
            seqs(log.reader(5).peek(1000)),
            (291..=300).collect::<Vec<_>>()
        );
        log.forget_all();
        assert_eq!(log.retained(), 0);
        assert_eq!(log.reader(1).next(), 301);
        log.append(message(301, 1));
        assert_eq!(seqs(log.reader(1).peek(10)), vec![301]);
    }

    #[test]
    fn a_parked_reader_wakes_on_append_and_times_out_without_one() {
        let log = Arc::new(parking_lot::Mutex::new(Log::new()));
        let mut reader = log.lock().reader(1);
        let started = Instant::now();
        let shared = reader.shared().clone();
        shared.park(Some(started + Duration::from_millis(20)), || {
            reader.available() > 0
        });
        assert!(started.elapsed() >= Duration::from_millis(15));
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let mut got = 0;
            tx.send(()).unwrap();
            while got < 1000 {
                let deadline = Some(Instant::now() + Duration::from_secs(10));
                shared.park(deadline, || reader.available() > 0);
                let n = reader.available();
                reader.advance(n);
                got += n;
            }
            reader.next()
        });
        rx.recv().unwrap();
        for seq in 1..=1000 {
            let shared = {
                let mut log = log.lock();
                log.append(message(seq, 1));
                log.shared().clone()
            };
            shared.wake();
        }
        assert_eq!(handle.join().unwrap(), 1001);
    }

    /// Many readers, one writer, random batch sizes: each reader sees
    /// exactly the sequence 1..=N, whatever the interleaving.
    #[test]
    fn concurrent_readers_see_one_total_order() {
        let log = Arc::new(parking_lot::Mutex::new(Log::new()));
        let total = 20_000u64;
        let readers: Vec<_> = (0..4)
            .map(|i| {
                let mut reader = log.lock().reader(1);
                std::thread::spawn(move || {
                    let mut expected = 1;
                    let max = 1 + i * 50;
                    while expected <= total {
                        let deadline = Some(Instant::now() + Duration::from_secs(10));
                        reader
                            .shared()
                            .clone()
                            .park(deadline, || reader.available() > 0);
                        let batch = seqs(reader.peek(max));
                        for seq in &batch {
                            assert_eq!(*seq, expected);
                            expected += 1;
                        }
                        reader.advance(batch.len() as u64);
                    }
                })
            })
            .collect();
        for seq in 1..=total {
            let shared = {
                let mut log = log.lock();
                log.append(message(seq, 3));
                if log.retained() > 100 {
                    log.forget_oldest();
                }
                log.shared().clone()
            };
            shared.wake();
        }
        for r in readers {
            r.join().unwrap();
        }
    }
}
