//! The group-commit writer: publishers queue messages (under their room's
//! lock, so without waiting for the disk), one `store-writer` thread takes
//! everything queued at once, writes it with one `pwrite` per segment,
//! syncs as the policy says, and tells the waiting publishers in one go.
//! While it writes or syncs, the next group gathers: under load one sync
//! carries many messages (shared/CAPABILITIES.md section 4: 100 appends per
//! fdatasync ran 40x the rate of one each).
//!
//! Space is reserved when a message is queued: the queue keeps the
//! position the writer will reach, and a message that does not fit in the
//! current segment goes to the spare one, made (preallocated) ahead of
//! time by the writer. Without a spare, the data directory is full and the
//! publish is refused before the hub gives it a sequence number. The
//! writer never needs space that was not reserved, so a full disk cannot
//! fail a write of an accepted message.
//!
//! Locks: `queue` is taken by publishers (after a room lock) and the
//! writer; `progress` by waiting publishers and the writer. Neither is
//! held while the other is taken, nor during I/O.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};

use super::record;
use super::segment::{self, Segment};
use super::Fsync;
use crate::error::Error;
use crate::hub::{Hub, Message, Ticket};

/// With `--fsync batch`, the longest time written messages wait for their
/// sync: what a power cut can lose (a kill -9 loses nothing written).
pub const BATCH_SYNC_EVERY: Duration = Duration::from_millis(100);
/// With `--fsync never`, how many bytes may wait in the queue before a
/// publisher waits for the writer (so a slow disk slows publishers instead
/// of filling memory).
const NEVER_QUEUE_BYTES: usize = 32 << 20;
/// With `--fsync never`, how often the writer writes what gathered, and
/// how much gathers before it is woken sooner.
const NEVER_WRITE_EVERY: Duration = Duration::from_millis(10);
const NEVER_WAKE_BYTES: usize = 1 << 20;
/// How often the writer looks for segments to delete and retries making a
/// spare after a full disk.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

pub(super) struct Queue {
    items: Vec<(Ticket, Arc<Message>)>,
    next: Ticket,
    /// Where the writer will be once it has written everything queued, and
    /// the size of the segment it will be in.
    reserved: u64,
    capacity: u64,
    /// Spare segments made and not yet counted on by a reservation.
    spares: usize,
    /// Why making a spare failed (the disk is full), until one is made.
    full: Option<String>,
    stopping: bool,
}

pub(super) struct Progress {
    /// Every ticket up to this one is written (in the page cache).
    written: Ticket,
    /// ... and up to this one also synced to the disk.
    synced: Ticket,
    /// Set for good when a write or sync failed: nothing more is accepted.
    failed: Option<String>,
}

/// What publishers and the writer share.
pub(super) struct Shared {
    pub(super) queue: Mutex<Queue>,
    work: Condvar,
    progress: Mutex<Progress>,
    done: Condvar,
    queued_bytes: AtomicUsize,
    fsync: Fsync,
    dir: PathBuf,
    segment_bytes: u64,
}

/// A sealed segment and what it holds, for retention.
pub(super) struct Sealed {
    pub(super) number: u64,
    /// The newest message's time.
    pub(super) newest: SystemTime,
    /// The last sequence of each room in it.
    pub(super) rooms: HashMap<Arc<str>, u64>,
}

impl Sealed {
    pub(super) fn new(number: u64) -> Sealed {
        Sealed {
            number,
            newest: SystemTime::UNIX_EPOCH,
            rooms: HashMap::new(),
        }
    }

    pub(super) fn note(&mut self, room: &str, seq: u64, at: SystemTime) {
        self.newest = self.newest.max(at);
        match self.rooms.get_mut(room) {
            Some(last) => *last = (*last).max(seq),
            None => {
                self.rooms.insert(Arc::from(room), seq);
            }
        }
    }
}

impl Shared {
    /// After recovery: the writer goes on at `end` of `current`.
    pub(super) fn new(
        fsync: Fsync,
        dir: PathBuf,
        segment_bytes: u64,
        current: &Segment,
        end: u64,
    ) -> Shared {
        Shared {
            queue: Mutex::new(Queue {
                items: Vec::new(),
                next: 1,
                reserved: end,
                capacity: current.capacity,
                spares: 0,
                full: None,
                stopping: false,
            }),
            work: Condvar::new(),
            progress: Mutex::new(Progress {
                written: 0,
                synced: 0,
                failed: None,
            }),
            done: Condvar::new(),
            queued_bytes: AtomicUsize::new(0),
            fsync,
            dir,
            segment_bytes,
        }
    }

    /// Queues `message` (with its room's lock held: no waiting here).
    pub(super) fn append(&self, message: &Arc<Message>) -> Result<Ticket, Error> {
        let len = record::size(message) as u64;
        let mut q = self.queue.lock();
        if q.stopping {
            return Err(Error::Unavailable(crate::hub::SHUTDOWN_NOTICE.into()));
        }
        if q.reserved + len > q.capacity {
            if q.spares == 0 {
                let why = q.full.as_deref().unwrap_or("no spare segment is ready yet");
                return Err(Error::StorageFull(format!(
                    "the data directory is full, message not accepted ({why}; --data-dir {})",
                    self.dir.display()
                )));
            }
            q.spares -= 1;
            q.capacity = self.segment_bytes;
            q.reserved = segment::HEADER;
        }
        q.reserved += len;
        let ticket = q.next;
        q.next += 1;
        let first = q.items.is_empty();
        q.items.push((ticket, message.clone()));
        drop(q);
        let len = len as usize;
        let queued = self.queued_bytes.fetch_add(len, Ordering::Relaxed) + len;
        // Wake the writer only for the first message of a group (it takes
        // them all), and with `never` only once enough has gathered: it
        // writes on a timer otherwise. A wake per publish cost `never` two
        // thirds of its rate (BENCHMARKS.md, issue 14).
        let wake = match self.fsync {
            Fsync::Never => queued > NEVER_WAKE_BYTES && queued - len <= NEVER_WAKE_BYTES,
            _ => first,
        };
        if wake {
            self.work.notify_one();
        }
        Ok(ticket)
    }

    /// Waits until `ticket` is as stored as the policy promises.
    pub(super) fn wait(&self, ticket: Ticket) -> Result<(), Error> {
        let synced = match self.fsync {
            Fsync::Always => true,
            Fsync::Batch => false,
            Fsync::Never => {
                if self.queued_bytes.load(Ordering::Relaxed) <= NEVER_QUEUE_BYTES {
                    return Ok(());
                }
                false
            }
        };
        let reached = |p: &Progress| {
            if synced {
                p.synced >= ticket
            } else {
                p.written >= ticket
            }
        };
        let mut p = self.progress.lock();
        while !reached(&p) {
            if let Some(why) = &p.failed {
                return Err(Error::Unavailable(format!(
                    "the message may not be stored: writing to --data-dir {} failed ({why})",
                    self.dir.display()
                )));
            }
            self.done.wait(&mut p);
        }
        Ok(())
    }

    pub(super) fn stop(&self) {
        self.queue.lock().stopping = true;
        self.work.notify_one();
    }

    /// Whether a write or sync failed (for good).
    pub(super) fn failed(&self) -> bool {
        self.progress.lock().failed.is_some()
    }

    pub(super) fn fail(&self, why: String) {
        log::error!(
            "writing to --data-dir {} failed, no more messages are accepted: {why}",
            self.dir.display()
        );
        let mut p = self.progress.lock();
        p.failed = Some(why);
        drop(p);
        self.done.notify_all();
    }
}

/// The writer thread's own state.
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) current: Segment,
    pub(super) position: u64,
    pub(super) sealed: VecDeque<Sealed>,
    pub(super) open: Sealed,
    /// Spare segments made, in order; the queue may already count on them.
    pub(super) spares: VecDeque<Segment>,
    pub(super) retention_age: Option<Duration>,
    pub(super) hub: Weak<Hub>,
}

impl Writer {
    /// Runs on `store-writer` until the store stops; then writes and syncs
    /// what is queued.
    pub(super) fn run(mut self) {
        let shared = self.shared.clone();
        let mut buf = Vec::new();
        let mut dirty_since: Option<Instant> = None;
        let mut housekept = Instant::now() - HOUSEKEEPING_EVERY;
        let mut spare_failed: Option<Instant> = None;
        loop {
            // A spare as soon as a reservation counts on the last one, so
            // the queue has the next segment before it needs it; after a
            // failure, once per housekeeping period.
            let want_spare = shared.queue.lock().spares == 0;
            if want_spare && spare_failed.is_none_or(|at| at.elapsed() >= HOUSEKEEPING_EVERY) {
                spare_failed = (!self.make_spare()).then(Instant::now);
            }
            if housekept.elapsed() >= HOUSEKEEPING_EVERY {
                self.delete_old_segments();
                housekept = Instant::now();
            }
            let (items, stopping) = {
                let mut q = shared.queue.lock();
                let idle = !q.stopping && (q.spares > 0 || spare_failed.is_some());
                if idle && shared.fsync == Fsync::Never {
                    if shared.queued_bytes.load(Ordering::Relaxed) <= NEVER_WAKE_BYTES {
                        shared.work.wait_for(&mut q, NEVER_WRITE_EVERY);
                    }
                } else if idle && q.items.is_empty() {
                    let wait = match dirty_since {
                        Some(since) => BATCH_SYNC_EVERY.saturating_sub(since.elapsed()),
                        None => HOUSEKEEPING_EVERY,
                    };
                    shared.work.wait_for(&mut q, wait);
                }
                (std::mem::take(&mut q.items), q.stopping)
            };
            if !items.is_empty() {
                if let Err(e) = self.write(&items, &mut buf) {
                    shared.fail(e.to_string());
                    return;
                }
                let last = items.last().map_or(0, |(t, _)| *t);
                let bytes: usize = items.iter().map(|(_, m)| record::size(m)).sum();
                shared.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                if shared.fsync == Fsync::Always {
                    if let Err(e) = self.current.file.sync_data() {
                        shared.fail(e.to_string());
                        return;
                    }
                    self.progress(last, true);
                } else {
                    self.progress(last, false);
                    dirty_since.get_or_insert_with(Instant::now);
                }
            }
            let due = dirty_since.is_some_and(|s| s.elapsed() >= BATCH_SYNC_EVERY);
            if (due && shared.fsync == Fsync::Batch) || (stopping && dirty_since.is_some()) {
                if let Err(e) = self.current.file.sync_data() {
                    shared.fail(e.to_string());
                    return;
                }
                let written = shared.progress.lock().written;
                self.progress(written, true);
                dirty_since = None;
            }
            if stopping && shared.queue.lock().items.is_empty() {
                return;
            }
        }
    }

    fn progress(&self, ticket: Ticket, synced: bool) {
        let mut p = self.shared.progress.lock();
        p.written = p.written.max(ticket);
        if synced {
            p.synced = p.synced.max(ticket);
        }
        drop(p);
        self.shared.done.notify_all();
    }

    /// Writes one group: one `pwrite` per segment it touches.
    fn write(
        &mut self,
        items: &[(Ticket, Arc<Message>)],
        buf: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        buf.clear();
        for (_, m) in items {
            let len = record::size(m) as u64;
            if self.position + buf.len() as u64 + len > self.current.capacity {
                self.current.file.write_all_at(buf, self.position)?;
                buf.clear();
                self.rotate()?;
            }
            record::encode(m, buf);
            self.open.note(&m.room, m.seq, m.timestamp);
        }
        self.current.file.write_all_at(buf, self.position)?;
        self.position += buf.len() as u64;
        Ok(())
    }

    /// Seals the current segment (synced unless `--fsync never`) and goes
    /// on in the spare, which the queue's reservation already counted on.
    fn rotate(&mut self) -> std::io::Result<()> {
        let next = self
            .spares
            .pop_front()
            .ok_or_else(|| std::io::Error::other("no spare segment where one was reserved"))?;
        if self.shared.fsync != Fsync::Never {
            self.current.file.sync_data()?;
        }
        let old = std::mem::replace(&mut self.current, next);
        let sealed = std::mem::replace(&mut self.open, Sealed::new(self.current.number));
        log::debug!(
            "segment {} sealed, now writing {}",
            old.number,
            self.current.number
        );
        self.sealed.push_back(sealed);
        self.position = segment::HEADER;
        Ok(())
    }

    /// Makes a segment ahead of time; on failure (a full disk), says why
    /// to the queue, which then refuses what does not fit. Returns whether
    /// it made one.
    fn make_spare(&mut self) -> bool {
        let number = self.spares.back().unwrap_or(&self.current).number + 1;
        match Segment::create(&self.shared.dir, number, self.shared.segment_bytes) {
            Ok(segment) => {
                self.spares.push_back(segment);
                let mut q = self.shared.queue.lock();
                q.spares += 1;
                if q.full.take().is_some() {
                    log::info!("--data-dir {} has room again", self.shared.dir.display());
                }
                true
            }
            Err(e) => {
                let mut q = self.shared.queue.lock();
                if q.full.is_none() {
                    log::warn!(
                        "cannot make the next segment in --data-dir {} ({e}): publishes will be refused once segment {} is full",
                        self.shared.dir.display(),
                        self.current.number
                    );
                }
                q.full = Some(e.to_string());
                false
            }
        }
    }

    /// Deletes the oldest sealed segments that no room retains anything
    /// of, or whose newest message is older than `--retention-age`.
    fn delete_old_segments(&mut self) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        let now = SystemTime::now();
        while let Some(oldest) = self.sealed.front() {
            let expired = self
                .retention_age
                .is_some_and(|age| oldest.newest + age < now);
            let unneeded = || {
                oldest
                    .rooms
                    .iter()
                    .all(|(room, seq)| !hub.retains(room, *seq))
            };
            if !expired && !unneeded() {
                break;
            }
            let path = segment::path(&self.shared.dir, oldest.number);
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!("cannot delete {}: {e}", path.display());
                break;
            }
            log::debug!("deleted {} (expired: {expired})", path.display());
            self.sealed.pop_front();
            let _ = segment::sync_dir(&self.shared.dir);
        }
    }
}
