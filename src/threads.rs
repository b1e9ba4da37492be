//! The one place streamhub spawns threads.
//!
//! Every thread is named (the name shows in `top -H`, in panics and in log
//! lines), counted while it runs, and catches its own panic so that a bug in
//! one stream is a logged error, never a dead server. Shutdown waits on
//! [`Threads::wait_idle`] until every tracked thread has returned.

use std::collections::HashMap;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// The CPU priority of a stream thread, set by the thread itself when it
/// starts.
///
/// Why `Idle` is the default for event streams: with a thousand stream
/// threads at normal priority, each woken thread gets the same share of
/// the CPU as the one thread accepting publishes, so publishing crawls and
/// every wake-up carries one message. At SCHED_IDLE (weight 3 against 1,024,
/// and no wake-up preemption of normal threads) the threads that accept
/// publishes run first, messages pile up in the room log, and each wake-up
/// carries hundreds in one write. It is not starvation: idle threads share
/// what normal threads leave, and on an otherwise idle machine that is
/// everything. Measured in `shared/prototypes/sse-fanout` (1,000
/// subscribers, 2 cores): normal 86k deliveries/s, nice 19 1.7M, idle 3.5M;
/// BENCHMARKS.md has streamhub's own figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// Normal while its room is quiet, SCHED_IDLE from the moment the room
    /// publishes faster than [`BUSY_ROOM_PER_SEC`] (see [`BusyRoom`]).
    Auto,
    /// SCHED_IDLE.
    Idle,
    /// Nice 19.
    Low,
    /// Whatever the process runs at.
    Normal,
}

impl Priority {
    pub fn parse(text: &str) -> Option<Priority> {
        match text {
            "auto" => Some(Priority::Auto),
            "idle" => Some(Priority::Idle),
            "low" => Some(Priority::Low),
            "normal" => Some(Priority::Normal),
            _ => None,
        }
    }

    /// Applies this priority to the calling thread. A failure (a sandbox
    /// that forbids it) leaves the thread at normal priority, logged once.
    pub fn apply_to_current_thread(self) {
        use crate::sys::{set_thread_policy, CpuPolicy};
        let policy = match self {
            Priority::Idle => CpuPolicy::Idle,
            Priority::Low => CpuPolicy::Nice(19),
            Priority::Normal | Priority::Auto => return,
        };
        if let Err(e) = set_thread_policy(policy) {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| log::warn!("cannot lower stream thread priority ({self:?}): {e}"));
        }
    }
}

/// Messages per second from which [`Priority::Auto`] treats a room as busy.
/// At normal priority a thousand stream threads hold publishing to about
/// 80-190 msgs/s (the prototype's figures), so a busy room shows itself
/// even before its readers step back.
pub const BUSY_ROOM_PER_SEC: u64 = 50;

/// Decides, for a stream thread at [`Priority::Auto`], when its room is
/// busy enough for the thread to step back to SCHED_IDLE.
///
/// Why not idle from the start: in a quiet room every message is its own
/// wake-up, and an idle thread that writes it is preempted at once by the
/// client thread it woke, then switched back in to park: a switch pair
/// more per delivery than at normal priority, which is what put p50 at 10
/// msgs/s a millisecond behind nchan (BENCHMARKS.md). Why one way only: an
/// unprivileged thread may leave SCHED_IDLE only with CAP_SYS_NICE.
pub struct BusyRoom {
    since: Option<(std::time::Instant, u64)>,
    done: bool,
}

impl BusyRoom {
    pub fn new(priority: Priority) -> BusyRoom {
        BusyRoom {
            since: None,
            done: priority != Priority::Auto,
        }
    }

    /// Called with the sequence of the newest message a burst took, at
    /// `now`; true once (the first time the room's rate over at least a
    /// tenth of a second reaches [`BUSY_ROOM_PER_SEC`]).
    pub fn observe(&mut self, seq: u64, now: std::time::Instant) -> bool {
        if self.done {
            return false;
        }
        let Some((t0, seq0)) = self.since else {
            self.since = Some((now, seq));
            return false;
        };
        let elapsed = now.saturating_duration_since(t0);
        if elapsed < std::time::Duration::from_millis(100) {
            return false;
        }
        let rate = seq.saturating_sub(seq0) as f64 / elapsed.as_secs_f64();
        if rate >= BUSY_ROOM_PER_SEC as f64 {
            self.done = true;
            return true;
        }
        self.since = Some((now, seq));
        false
    }
}

/// A tracked set of named threads. Clones share the set.
#[derive(Clone, Default)]
pub struct Threads {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    live: Mutex<HashMap<u64, String>>,
    finished: Condvar,
    next: AtomicU64,
    /// Numbers the threads [`Threads::spawn_with`] names (`sse-1`, ...).
    next_numbered: AtomicU64,
}

/// Removes a thread from the live set when it ends, panic or not.
struct LiveGuard {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut live = self.inner.live.lock();
        live.remove(&self.id);
        if live.is_empty() {
            self.inner.finished.notify_all();
        }
    }
}

impl Threads {
    pub fn new() -> Threads {
        Threads::default()
    }

    /// Spawns `f` on a new thread called `name` with `stack` bytes of stack
    /// (`None`: the Rust default). A panic in `f` is logged and swallowed.
    pub fn spawn<F>(
        &self,
        name: String,
        stack: Option<usize>,
        f: F,
    ) -> std::io::Result<JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        self.inner.live.lock().insert(id, name.clone());
        let guard = LiveGuard {
            inner: self.inner.clone(),
            id,
        };
        let mut builder = std::thread::Builder::new().name(name);
        if let Some(bytes) = stack {
            builder = builder.stack_size(bytes);
        }
        builder.spawn(move || {
            let _guard = guard;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                log::error!("thread panicked: {what}");
            }
        })
        // On failure the closure (and the guard in it) is dropped, which
        // takes the entry out of the live set again.
    }

    /// Runs `body(payload)` on a new thread called `KIND-N` (N counts every
    /// thread started this way). If no thread can be started, the payload
    /// comes back with the error, so that what it holds (a connection, a
    /// call) can still be answered.
    pub fn spawn_with<T, F>(
        &self,
        kind: &str,
        stack: Option<usize>,
        payload: T,
        body: F,
    ) -> Result<(), (T, io::Error)>
    where
        T: Send + 'static,
        F: FnOnce(T) + Send + 'static,
    {
        let n = self.inner.next_numbered.fetch_add(1, Ordering::Relaxed) + 1;
        let name = format!("{kind}-{n}");
        let slot = Arc::new(Mutex::new(Some(payload)));
        let thread_slot = slot.clone();
        let spawned = self.spawn(name, stack, move || {
            if let Some(payload) = thread_slot.lock().take() {
                body(payload);
            }
        });
        match spawned {
            Ok(_) => Ok(()),
            Err(e) => match slot.lock().take() {
                Some(payload) => Err((payload, e)),
                // Unreachable: a thread that never started took nothing.
                None => Ok(()),
            },
        }
    }

    /// How many tracked threads are running now.
    pub fn live(&self) -> usize {
        self.inner.live.lock().len()
    }

    /// Waits until no tracked thread runs or `deadline` passes; returns the
    /// names of the ones still running.
    pub fn wait_idle(&self, deadline: Instant) -> Vec<String> {
        let mut live = self.inner.live.lock();
        while !live.is_empty() {
            if self
                .inner
                .finished
                .wait_until(&mut live, deadline)
                .timed_out()
            {
                break;
            }
        }
        let mut names: Vec<String> = live.values().cloned().collect();
        names.sort();
        names
    }
}

/// A count of things open now (streams, connections, service threads),
/// taken against a limit. Each [`Permit`] holds one until dropped.
#[derive(Debug, Default)]
pub struct Slots {
    open: AtomicUsize,
}

/// One slot of a [`Slots`], given back on drop.
#[derive(Debug)]
pub struct Permit(Arc<Slots>);

impl Slots {
    pub fn new() -> Arc<Slots> {
        Arc::default()
    }

    /// How many permits are held now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// A permit if fewer than `limit` are held.
    pub fn take(self: &Arc<Self>, limit: usize) -> Option<Permit> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        let permit = Permit(self.clone());
        (before < limit).then_some(permit)
    }

    /// A permit whatever the count (for what is only counted, not capped).
    pub fn hold(self: &Arc<Self>) -> Permit {
        self.open.fetch_add(1, Ordering::AcqRel);
        Permit(self.clone())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_room_counts_as_busy_from_fifty_messages_a_second_over_a_tenth_of_one() {
        use std::time::{Duration, Instant};
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let mut quiet = BusyRoom::new(Priority::Auto);
        assert!(!quiet.observe(1, t));
        // 10 msgs/s for two seconds: never busy.
        for i in 1..=20 {
            assert!(!quiet.observe(1 + i, ms(100 * i)));
        }
        let mut busy = BusyRoom::new(Priority::Auto);
        assert!(!busy.observe(100, t));
        assert!(!busy.observe(200, ms(50)), "not before a tenth of a second");
        assert!(busy.observe(200, ms(150)), "100 in 0.15 s is 667/s");
        assert!(!busy.observe(900, ms(300)), "once only");
        let mut fixed = BusyRoom::new(Priority::Idle);
        assert!(!fixed.observe(1, t) && !fixed.observe(10_000, ms(200)));
    }

    use super::*;
    use std::time::Duration;

    #[test]
    fn panicking_thread_is_logged_and_untracked() {
        let threads = Threads::new();
        threads
            .spawn("boom".into(), None, || panic!("on purpose"))
            .unwrap();
        let left = threads.wait_idle(Instant::now() + Duration::from_secs(5));
        assert!(left.is_empty());
        assert_eq!(threads.live(), 0);
    }

    #[test]
    fn permits_are_capped_and_given_back_on_drop() {
        let slots = Slots::new();
        let a = slots.take(2).unwrap();
        let b = slots.take(2).unwrap();
        assert!(slots.take(2).is_none(), "a third is over the limit");
        assert_eq!(slots.open(), 2, "a refused take holds nothing");
        drop(a);
        let _c = slots.take(2).unwrap();
        let _d = slots.hold();
        assert_eq!(slots.open(), 3);
        drop(b);
        assert_eq!(slots.open(), 2);
    }

    #[test]
    fn spawn_with_hands_the_payload_to_the_thread() {
        let threads = Threads::new();
        let (tx, rx) = crossbeam_channel::bounded(1);
        threads
            .spawn_with("with", None, 42, move |n| tx.send(n).unwrap())
            .map_err(|(_, e)| e)
            .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(42));
        // A stack no system can give: the payload comes back.
        let refused = threads.spawn_with("huge", Some(usize::MAX / 2), 7, |_| {});
        assert_eq!(refused.map_err(|(n, _)| n), Err(7));
    }

    #[test]
    fn wait_idle_names_stragglers() {
        let threads = Threads::new();
        let (tx, rx) = crossbeam_channel::bounded::<()>(0);
        threads
            .spawn("straggler".into(), Some(64 * 1024), move || {
                let _ = rx.recv();
            })
            .unwrap();
        let left = threads.wait_idle(Instant::now() + Duration::from_millis(50));
        assert_eq!(left, vec!["straggler".to_string()]);
        drop(tx);
        assert!(threads
            .wait_idle(Instant::now() + Duration::from_secs(5))
            .is_empty());
    }
}
