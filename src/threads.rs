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
            Priority::Normal => return,
        };
        if let Err(e) = set_thread_policy(policy) {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| log::warn!("cannot lower stream thread priority ({self:?}): {e}"));
        }
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
