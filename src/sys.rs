//! The system calls streamhub needs that std does not offer. This is the
//! only `unsafe` in streamhub.
//!
//! - poll(2): the one thread that accepts connections also waits for request
//!   heads on every connection that has not finished one, so a thousand slow
//!   clients cost no threads.
//! - listen(2) again, with a longer queue: std listens with a backlog of 128,
//!   and when that many connections arrive at once (every EventSource of a
//!   page reconnecting after a restart) the kernel drops the rest of the
//!   handshakes, which the clients retry only after a second.
//! - futex(2) wait and wake on a 32-bit word: a room's log wakes every
//!   parked subscriber with one call, and only when one is parked (std's
//!   parking is per thread, which would cost a call per subscriber).
//! - sched_setscheduler(2) / setpriority(2) on the calling thread: stream
//!   threads give the CPU to the threads that accept publishes (see
//!   `threads::Priority` for the measurement).
//! - SO_SNDBUF: a small send buffer keeps an event stream's queue, and so
//!   its latency, bounded.
//! - posix_fallocate(3): a journal segment gets its disk space when it is
//!   made, so a full disk shows up there, before any message is accepted
//!   into it, and fdatasync need not update the file's size.
//! - SIGXFSZ ignored: past a file size limit (RLIMIT_FSIZE) the kernel
//!   then fails the call with EFBIG instead of killing the process, and the
//!   journal reports a full disk.
//!
//! Types, constants and functions come from the `libc` crate, not from
//! hand-written declarations. The crate
//! denies `unsafe_code`; this module is the one allowance, and each call
//! says why it is sound.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use libc::{c_int, nfds_t, pollfd, POLLERR, POLLHUP, POLLIN, POLLNVAL};

/// Sets the accept queue of a listening socket to `backlog` connections
/// (the kernel caps it at `net.core.somaxconn`).
pub fn set_backlog(listener: &TcpListener, backlog: usize) -> io::Result<()> {
    let backlog = backlog.min(c_int::MAX as usize) as c_int;
    // SAFETY: a plain integer call on a descriptor `listener` owns and keeps
    // open for the duration of the call.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A reusable set of descriptors to wait on for readability.
#[derive(Default)]
pub struct PollSet {
    fds: Vec<pollfd>,
}

impl PollSet {
    pub fn clear(&mut self) {
        self.fds.clear();
    }

    /// Adds `fd`; its index is the number of descriptors added before it.
    pub fn push(&mut self, fd: RawFd) {
        self.fds.push(pollfd {
            fd,
            events: POLLIN,
            revents: 0,
        });
    }

    /// Waits until one descriptor is readable (or hung up, or in error) or
    /// `timeout` passes. Returns how many are ready; an interrupted wait
    /// counts as zero.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<usize> {
        let millis = timeout.as_millis().min(c_int::MAX as u128) as c_int;
        for fd in &mut self.fds {
            fd.revents = 0;
        }
        // SAFETY: `fds` is a valid, exclusively borrowed array of `len`
        // initialized `pollfd`s for the whole call; poll only writes
        // `revents` within it.
        let n = unsafe { libc::poll(self.fds.as_mut_ptr(), self.fds.len() as nfds_t, millis) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }

    /// Whether the descriptor at `index` has something to read, including
    /// end of file or an error (a read will say which).
    pub fn ready(&self, index: usize) -> bool {
        self.fds
            .get(index)
            .is_some_and(|fd| fd.revents & (POLLIN | POLLERR | POLLHUP | POLLNVAL) != 0)
    }
}

/// Sleeps while `word` holds `expected`, at most `timeout`, until
/// [`futex_wake_all`] is called on it. May return early (a signal, a
/// spurious wake): callers re-check their condition.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, aligned 32-bit atomic for the whole call (we
    // hold a reference); the kernel only reads it. `ts` lives on this stack
    // frame for the call. FUTEX_WAIT with a relative timeout touches nothing
    // else; every outcome (woken, value changed, timed out, interrupted) is
    // fine for a caller that re-checks.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

/// Wakes every thread sleeping in [`futex_wait`] on `word`.
pub fn futex_wake_all(word: &AtomicU32) {
    futex_wake(word, i32::MAX as usize);
}

/// Wakes at most `n` threads sleeping on `word`, the longest-waiting first
/// (waiters of equal priority queue in order); returns how many woke.
pub fn futex_wake(word: &AtomicU32, n: usize) -> usize {
    // SAFETY: as in `futex_wait`; FUTEX_WAKE does not even read the word.
    let woken = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n.min(i32::MAX as usize) as libc::c_int,
        )
    };
    woken.max(0) as usize
}

/// The calling thread's CPU policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuPolicy {
    /// SCHED_IDLE: runs when nothing at normal priority wants the CPU.
    Idle,
    /// SCHED_BATCH: normal weight, but its wake-ups never preempt the
    /// thread that woke it.
    Batch,
    /// SCHED_OTHER at nice `n`.
    Nice(i32),
}

/// Sets the calling thread's CPU policy (Linux applies both per thread).
/// Lowering one's own priority needs no privilege.
pub fn set_thread_policy(policy: CpuPolicy) -> io::Result<()> {
    // SAFETY: plain integer calls on the calling thread (0 and our own tid);
    // `param` lives on this stack frame for the call.
    let rc = unsafe {
        match policy {
            CpuPolicy::Idle | CpuPolicy::Batch => {
                let param = libc::sched_param { sched_priority: 0 };
                let policy = if policy == CpuPolicy::Idle {
                    libc::SCHED_IDLE
                } else {
                    libc::SCHED_BATCH
                };
                libc::sched_setscheduler(0, policy, &param)
            }
            CpuPolicy::Nice(n) => {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, n)
            }
        }
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks the kernel for a send buffer of about `bytes` on `stream` (Linux
/// doubles the value for its bookkeeping and enforces a minimum).
pub fn set_send_buffer(stream: &TcpStream, bytes: usize) -> io::Result<()> {
    let value = bytes.min(c_int::MAX as usize) as c_int;
    // SAFETY: `value` lives on this stack frame for the call and its size is
    // passed with it; the descriptor is owned by `stream`, open for the call.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &value as *const c_int as *const libc::c_void,
            std::mem::size_of::<c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn reports_readable_descriptors_only() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let (c, _d) = UnixStream::pair().unwrap();
        let mut set = PollSet::default();
        set.push(a.as_raw_fd());
        set.push(c.as_raw_fd());
        assert_eq!(set.wait(Duration::from_millis(10)).unwrap(), 0);
        b.write_all(b"x").unwrap();
        assert_eq!(set.wait(Duration::from_secs(5)).unwrap(), 1);
        assert!(set.ready(0));
        assert!(!set.ready(1));
        drop(b);
        set.clear();
        set.push(c.as_raw_fd());
        set.push(a.as_raw_fd());
        set.wait(Duration::from_secs(5)).unwrap();
        assert!(set.ready(1), "end of file counts as readable");
    }

    #[test]
    fn futex_wait_returns_on_wake_on_a_changed_word_and_on_timeout() {
        use std::sync::atomic::Ordering;
        use std::sync::Arc;
        let word = Arc::new(AtomicU32::new(0));
        // A changed word: returns at once.
        let started = std::time::Instant::now();
        futex_wait(&word, 1, Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(4));
        // Timeout.
        let started = std::time::Instant::now();
        futex_wait(&word, 0, Duration::from_millis(20));
        assert!(started.elapsed() >= Duration::from_millis(15));
        // Woken by another thread.
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let word = word.clone();
            std::thread::spawn(move || {
                tx.send(()).unwrap();
                while word.load(Ordering::SeqCst) == 0 {
                    futex_wait(&word, 0, Duration::from_secs(10));
                }
            })
        };
        rx.recv().unwrap();
        word.store(1, Ordering::SeqCst);
        futex_wake_all(&word);
        waiter.join().unwrap();
    }

    #[test]
    fn a_thread_can_lower_its_own_policy() {
        std::thread::spawn(|| {
            set_thread_policy(CpuPolicy::Nice(19)).unwrap();
            set_thread_policy(CpuPolicy::Idle).unwrap();
            // SAFETY-free check through /proc: policy 5 is SCHED_IDLE.
            let tid = std::fs::read_link("/proc/thread-self").unwrap();
            let stat =
                std::fs::read_to_string(std::path::Path::new("/proc").join(tid).join("stat"))
                    .unwrap();
            let fields: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap()
                .split_whitespace()
                .collect();
            // Field 41 of stat is the policy; after the comm it is index 38.
            assert_eq!(fields[38], "5", "{stat}");
        })
        .join()
        .unwrap();
    }
}

#[cfg(test)]
mod backlog_tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn a_longer_backlog_takes_a_burst_of_connections_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        set_backlog(&listener, 1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let started = std::time::Instant::now();
        // Nobody accepts: with std's 128 the 130th connect would wait for a
        // retransmitted handshake, a second later.
        let held: Vec<TcpStream> = (0..300)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(held.len(), 300);
    }
}

/// Gives `file` disk space for its first `len` bytes (zeroes where nothing
/// was written). Fails with the errno of a full disk (ENOSPC) or a file
/// size limit (EFBIG).
pub fn preallocate(file: &std::fs::File, len: u64) -> io::Result<()> {
    let len =
        libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain integers; the descriptor is owned by `file`, open for
    // the call.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Makes a write past RLIMIT_FSIZE fail with EFBIG instead of killing the
/// process (SIGXFSZ's default action).
pub fn ignore_file_size_signal() {
    // SAFETY: SIG_IGN installs no handler code; changing SIGXFSZ's
    // disposition touches no memory of ours.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}
