//! The two system calls the HTTP layer needs that std does not offer, from
//! the C library std already links (declaring them here saves a crate).
//! This is the only `unsafe` in streamhub.
//!
//! - poll(2): the one thread that accepts connections also waits for request
//!   heads on every connection that has not finished one, so a thousand slow
//!   clients cost no threads.
//! - listen(2) again, with a longer queue: std listens with a backlog of 128,
//!   and when that many connections arrive at once (every EventSource of a
//!   page reconnecting after a restart) the kernel drops the rest of the
//!   handshakes, which the clients retry only after a second.
//!
//! Types, constants and functions come from the `libc` crate (already in
//! the tree through grpcio), not from hand-written declarations. The crate
//! denies `unsafe_code`; this module is the one allowance, and each call
//! says why it is sound.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
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
