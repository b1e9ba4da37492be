//! The one place streamhub spawns threads.
//!
//! Every thread is named (the name shows in `top -H`, in panics and in log
//! lines), counted while it runs, and catches its own panic so that a bug in
//! one stream is a logged error, never a dead server. Shutdown waits on
//! [`Threads::wait_idle`] until every tracked thread has returned.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

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
