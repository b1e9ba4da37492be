//! A connection's bytes on the wire: plain TCP, or TLS over it when the
//! port speaks TLS (`--tls-cert`; the configuration comes from
//! `crate::tls`, shared with the gRPC port).
//!
//! The TLS session travels with its connection and, like the socket, is
//! driven by exactly one thread at a time (rustls's `ServerConnection` is
//! not to be shared): `http-accept` runs the handshake and reads requests
//! without blocking, a worker writes the response blocking, an `sse-N`
//! thread writes its events and notices the client leaving itself. The
//! handshake is part of the head: it must be done, and the request head
//! arrived, within `--http-header-timeout-secs` of the accept, so a client
//! that connects and never sends a ClientHello costs a buffer until then,
//! never a thread.
//!
//! Two facts shape the accept thread's reads (shared/CAPABILITIES.md 2a):
//! rustls may hold decrypted bytes that poll(2) cannot see (a pipelined
//! request that came in the same record), so [`Conn::has_hidden_input`]
//! makes the poller look again without waiting; and the first byte of a
//! TLS connection is a handshake record (0x16), so a plain HTTP client on
//! the TLS port is told so in clear text ([`Got::NotTls`]) instead of
//! getting an alert it cannot read. The reverse, a TLS client on a plain
//! port, is refused by the request parser (`conn`).

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;

use rustls::{ServerConfig, ServerConnection};

use super::conn::Conn;

/// The first byte of a TLS record that carries a handshake message.
const HANDSHAKE_RECORD: u8 = 0x16;

/// Whether the first byte a client sent can start a TLS connection.
pub(super) fn starts_tls(first: u8) -> bool {
    first == HANDSHAKE_RECORD
}

/// One connection's TLS session.
pub(super) struct Tls {
    session: ServerConnection,
    /// The client's first byte was looked at (see [`starts_tls`]).
    checked: bool,
    /// rustls holds decrypted bytes not read yet (refreshed by
    /// [`Tls::refresh`]).
    hidden: bool,
}

/// What a read without blocking found.
#[derive(Debug, PartialEq)]
pub(super) enum Got {
    /// Bytes of the request (plaintext).
    Bytes(usize),
    /// Nothing now: wait for poll(2).
    Nothing,
    /// The client closed its side.
    Eof,
    /// The connection is unusable (a socket error, a TLS error whose alert
    /// was sent).
    Broken,
    /// A TLS port got a first byte that cannot start TLS: plain HTTP.
    NotTls,
}

impl Tls {
    pub(super) fn new(config: &Arc<ServerConfig>) -> io::Result<Tls> {
        let session = ServerConnection::new(config.clone()).map_err(io::Error::other)?;
        Ok(Tls {
            session,
            checked: false,
            hidden: false,
        })
    }

    /// Plaintext that arrived, without blocking: what rustls holds first,
    /// else what the socket's next records decrypt to. Handshake messages
    /// and alerts rustls wants to send go out on the way.
    fn read_now(&mut self, mut socket: &TcpStream, buf: &mut [u8]) -> Got {
        loop {
            match self.session.reader().read(buf) {
                Ok(0) => return Got::Eof,
                Ok(n) => return Got::Bytes(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // TCP closed without close_notify: the same to us.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Got::Eof,
                Err(_) => return Got::Broken,
            }
            if !self.checked {
                let mut first = [0u8; 1];
                match socket.peek(&mut first) {
                    Ok(0) => return Got::Eof,
                    Ok(_) if !starts_tls(first[0]) => return Got::NotTls,
                    Ok(_) => self.checked = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Got::Nothing,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return Got::Broken,
                }
            }
            match self.session.read_tls(&mut socket) {
                Ok(0) => return Got::Eof,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Got::Nothing,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Got::Broken,
            }
            let processed = self.session.process_new_packets();
            // Handshake messages, session tickets, or the alert of an error.
            self.flush_now(socket);
            if let Err(e) = processed {
                log::debug!(
                    "TLS error from {}: {e}",
                    socket
                        .peer_addr()
                        .map_or_else(|_| "?".into(), |a| a.to_string())
                );
                return Got::Broken;
            }
        }
    }

    /// Writes what rustls has to send, as far as the socket takes it now.
    /// What it does not take stays queued ([`Tls::refresh`] notices).
    fn flush_now(&mut self, mut socket: &TcpStream) {
        while self.session.wants_write() {
            match self.session.write_tls(&mut socket) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Writes all of `bytes` and every record they make (blocking, within
    /// the socket's write timeout).
    fn write_all(&mut self, mut socket: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
        loop {
            // rustls takes at most its buffer limit (64 KiB) at a time.
            let n = self.session.writer().write(bytes)?;
            bytes = &bytes[n..];
            while self.session.wants_write() {
                if self.session.write_tls(&mut socket)? == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
            }
            if bytes.is_empty() {
                return Ok(());
            }
        }
    }

    /// Updates what [`Conn::has_hidden_input`] and
    /// [`Conn::has_pending_output`] report.
    fn refresh(&mut self) {
        self.hidden = self
            .session
            .process_new_packets()
            .is_ok_and(|state| state.plaintext_bytes_to_read() > 0);
    }

    /// Queues as much of `bufs` as rustls takes (its buffer limit) as
    /// records; [`Tls::write_records`] sends them.
    pub(super) fn queue(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.session.writer().write_vectored(bufs)
    }

    /// Records wait to be sent.
    pub(super) fn wants_write(&self) -> bool {
        self.session.wants_write()
    }

    /// Sends queued records: one socket write (which may block, within the
    /// socket's write timeout, and may take only part).
    pub(super) fn write_records(&mut self, mut socket: &TcpStream) -> io::Result<usize> {
        self.session.write_tls(&mut socket)
    }

    /// Queues close_notify: the last record of the connection.
    pub(super) fn close_notify(&mut self) {
        self.session.send_close_notify();
    }

    /// For a stream thread: whether the client closed (TCP end of file,
    /// close_notify) or broke the session. Reads without blocking whatever
    /// the client sent and drops the plaintext (an event stream reads no
    /// more requests); a plain peek would see the same unread record
    /// forever.
    pub(super) fn client_gone(&mut self, mut socket: &TcpStream) -> bool {
        if socket.set_nonblocking(true).is_err() {
            return true;
        }
        let mut sink = [0u8; 4096];
        let gone = loop {
            match self.session.read_tls(&mut socket) {
                Ok(0) => break true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break true,
            }
            match self.session.process_new_packets() {
                Err(_) => break true,
                Ok(state) if state.peer_has_closed() => break true,
                Ok(_) => {}
            }
            while matches!(self.session.reader().read(&mut sink), Ok(n) if n > 0) {}
        };
        gone || socket.set_nonblocking(false).is_err()
    }
}

impl Conn {
    /// Whether the port speaks TLS on this connection.
    pub(super) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Still in the TLS handshake: nothing can be said to the client yet.
    pub(super) fn is_handshaking(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.session.is_handshaking())
    }

    /// rustls holds request bytes that poll(2) will not announce.
    pub(super) fn has_hidden_input(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.hidden)
    }

    /// rustls holds records the socket did not take (a handshake flight
    /// larger than the free send buffer): poll(2) only waits for input, so
    /// the poller tries again shortly.
    pub(super) fn has_pending_output(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.session.wants_write())
    }

    /// On `http-accept`, after the connection was read or came back from a
    /// worker: notes what [`Conn::has_hidden_input`] needs to know, and
    /// sends what rustls still holds.
    pub(super) fn refresh(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.flush_now(&self.stream);
            tls.refresh();
        }
    }

    /// Reads request bytes without blocking (the socket is non-blocking).
    pub(super) fn read_now(&mut self, buf: &mut [u8]) -> Got {
        match &mut self.tls {
            Some(tls) => tls.read_now(&self.stream, buf),
            None => loop {
                return match (&self.stream).read(buf) {
                    Ok(0) => Got::Eof,
                    Ok(n) => Got::Bytes(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Got::Nothing,
                    Err(_) => Got::Broken,
                };
            },
        }
    }

    /// Writes a few bytes without blocking (`100 Continue`): into an empty
    /// send buffer they all go. Nothing while handshaking.
    pub(super) fn send_now(&mut self, bytes: &[u8]) {
        match &mut self.tls {
            None => {
                let _ = (&self.stream).write(bytes);
            }
            Some(tls) if tls.session.is_handshaking() => {}
            Some(tls) => {
                let _ = tls.session.writer().write_all(bytes);
                tls.flush_now(&self.stream);
            }
        }
    }

    /// The last bytes of the connection, without blocking (an error
    /// response on `http-accept`), then our side closes: close_notify on
    /// TLS, then a TCP half-close. The session is done with: what the
    /// client still sends is discarded unread.
    pub(super) fn send_last_now(&mut self, bytes: &[u8]) {
        self.send_now(bytes);
        if let Some(mut tls) = self.tls.take() {
            if !tls.session.is_handshaking() {
                tls.close_notify();
                tls.flush_now(&self.stream);
            }
        }
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Writes a whole response (blocking, within the write timeout).
    pub(super) fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            None => (&self.stream).write_all(bytes),
            Some(tls) => tls.write_all(&self.stream, bytes),
        }
    }

    /// Ends the connection from a worker: close_notify on TLS (one try
    /// within the write timeout), then both directions.
    pub(super) fn finish(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.close_notify();
            let _ = tls.write_all(&self.stream, &[]);
        }
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_handshake_record_starts_tls() {
        assert!(starts_tls(0x16));
        for first in [b'G', b'P', b'H', b'O', b'\r', 0x15, 0x17, 0x80] {
            assert!(!starts_tls(first), "{first:#x}");
        }
    }
}
