//! TLS for the gRPC port's connections. The configuration (ALPN `h2`, TLS
//! 1.2 and 1.3, the certificate that SIGHUP reloads) comes from
//! `crate::tls`, which the HTTP port shares. A connection's TLS state sits
//! behind its own lock, shared by the connection's reader and writer: the
//! reader feeds it the bytes it read from the socket and takes the
//! plaintext out, the writer puts plaintext in and takes the records out;
//! neither does socket I/O while holding it (the pattern in
//! shared/CAPABILITIES.md section 2a). A client that does not finish its
//! handshake within [`HANDSHAKE_TIMEOUT`] is dropped.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rustls::{ServerConfig, ServerConnection};

/// How long a new connection may take to finish its handshake (the time a
/// half-open TLS client may hold a connection's two threads).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection's TLS state.
pub struct Tls {
    conn: Mutex<ServerConnection>,
}

impl Tls {
    pub fn new(config: &Arc<ServerConfig>) -> io::Result<Tls> {
        let mut conn = ServerConnection::new(config.clone()).map_err(io::Error::other)?;
        // What the writer hands over is bounded by the connection's own
        // output pass; rustls's default cap would make writes partial.
        conn.set_buffer_limit(None);
        Ok(Tls {
            conn: Mutex::new(conn),
        })
    }

    /// Reads plaintext into `buf`: what rustls holds already, or else what
    /// the next bytes from the socket decrypt to. `Ok(0)`: the client
    /// closed. A TLS error is returned after its alert is queued (the
    /// writer sends it). `wake` is called when rustls has records to send
    /// (handshake messages).
    pub fn read(
        &self,
        mut socket: &TcpStream,
        raw: &mut [u8],
        buf: &mut [u8],
        wake: impl Fn(),
    ) -> io::Result<usize> {
        loop {
            {
                let mut c = self.conn.lock();
                match c.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            let n = socket.read(raw)?;
            if n == 0 {
                return Ok(0);
            }
            let mut c = self.conn.lock();
            let mut input = &raw[..n];
            let mut failed = None;
            while !input.is_empty() {
                if let Err(e) = c.read_tls(&mut input) {
                    failed = Some(e);
                    break;
                }
                if let Err(e) = c.process_new_packets() {
                    failed = Some(io::Error::new(io::ErrorKind::InvalidData, e));
                    break;
                }
            }
            let handshaking = c.is_handshaking();
            let wants_write = c.wants_write();
            drop(c);
            if wants_write {
                wake();
            }
            if let Some(e) = failed {
                return Err(e);
            }
            if !handshaking {
                // Done: from now on only keepalive watches the client.
                socket.set_read_timeout(None)?;
            }
        }
    }

    /// True when rustls has records to send (handshake, alerts).
    pub fn wants_write(&self) -> bool {
        self.conn.lock().wants_write()
    }

    /// Encrypts `plain` and appends every record rustls has to `records`.
    pub fn seal(&self, plain: &[u8], records: &mut Vec<u8>) -> io::Result<()> {
        let mut c = self.conn.lock();
        if !plain.is_empty() {
            c.writer().write_all(plain)?;
        }
        while c.wants_write() {
            c.write_tls(records)?;
        }
        Ok(())
    }

    /// Queues close_notify: the last record the writer sends.
    pub fn close(&self) {
        self.conn.lock().send_close_notify();
    }
}
