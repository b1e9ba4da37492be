//! One client connection, and the state machine that turns the bytes it
//! sends into requests: idle, head, body (by length or chunked), linger.
//!
//! [`Incoming`] is pure: bytes go in through [`Incoming::received`], a
//! [`Step`] comes out of [`Incoming::advance`], and nothing here touches a
//! socket, so the limits (head size, body size, deadlines) are unit-tested
//! without one. `server` owns the I/O around it: reading without blocking on
//! `http-accept`, writing responses on a worker; `wire` reads and writes
//! the bytes, through TLS when the port speaks it.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::request::{
    framing, head_may_be_complete, parse_head, ChunkedDecoder, Framing, Rejection, Request,
    MAX_HEAD_BYTES,
};
use super::wire::{starts_tls, Tls};
use crate::access::{Admission, KnownToken};
use crate::threads::Permit;

/// After an error response, most bytes read and discarded before closing.
const LINGER_DISCARD: usize = 256 * 1024;
/// Most bytes one read may take while the amount is not bounded by the
/// request itself (chunked bodies, lingering).
pub(super) const READ_CHUNK: usize = 64 * 1024;

/// Where a connection is in its request cycle.
#[derive(Debug)]
enum Phase {
    /// Kept alive between requests; nothing of the next one yet.
    Idle,
    /// Reading a head; `scanned` bytes are known to hold no blank line.
    Head { scanned: usize },
    /// Reading a `Content-Length` body of `len` bytes.
    Body { req: Request, len: usize },
    /// Reading a chunked body.
    Chunked {
        req: Request,
        decoder: ChunkedDecoder,
    },
    /// An error response was sent; reading and discarding until the client
    /// closes or the deadline passes.
    Linger { discarded: usize },
}

/// What to do with a connection after new bytes arrived.
#[derive(Debug)]
pub(super) enum Step {
    /// Keep waiting for bytes.
    Wait,
    /// A whole request arrived: run it.
    Dispatch(Request),
    /// Refuse: send this and close.
    Fail(Rejection),
    /// Close without a word.
    Close,
}

/// What has arrived of a connection's current request, and its deadline.
#[derive(Debug)]
pub(super) struct Incoming {
    buf: Vec<u8>,
    phase: Phase,
    /// When the current phase runs out of time.
    pub deadline: Instant,
    /// The client closed its sending side (or the socket failed).
    pub eof: bool,
    /// Reading failed: nothing more can be done with this connection.
    pub broken: bool,
    /// The client asked for `100 Continue` before sending its body, and
    /// has not been sent one yet.
    continue_due: bool,
}

impl Incoming {
    /// A new connection, expecting a head by `deadline`.
    pub fn new(deadline: Instant) -> Incoming {
        Incoming {
            buf: Vec::new(),
            phase: Phase::Head { scanned: 0 },
            deadline,
            eof: false,
            broken: false,
            continue_due: false,
        }
    }

    /// How many bytes the current phase may still read: never past the head
    /// limit, never past the declared body.
    pub fn wants(&self) -> usize {
        match &self.phase {
            Phase::Idle | Phase::Head { .. } => MAX_HEAD_BYTES.saturating_sub(self.buf.len()),
            Phase::Body { len, .. } => len.saturating_sub(self.buf.len()),
            Phase::Chunked { .. } | Phase::Linger { .. } => READ_CHUNK,
        }
    }

    /// Takes bytes the client sent (counted, not kept, while lingering).
    pub fn received(&mut self, bytes: &[u8]) {
        if let Phase::Linger { discarded } = &mut self.phase {
            *discarded += bytes.len();
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// After an error response: discard what still comes until `until`.
    pub fn linger(&mut self, until: Instant) {
        self.buf = Vec::new();
        self.phase = Phase::Linger { discarded: 0 };
        self.deadline = until;
    }

    pub fn is_lingering(&self) -> bool {
        matches!(self.phase, Phase::Linger { .. })
    }

    /// Part of a request has arrived (so running out of time earns a 408).
    pub fn mid_request(&self) -> bool {
        matches!(
            self.phase,
            Phase::Head { .. } | Phase::Body { .. } | Phase::Chunked { .. }
        )
    }

    /// A response was written: keep the connection for the next request
    /// until `until`.
    /// Frees the read buffer of a connection that becomes a stream (nothing
    /// more is read from it): an idle stream should hold no request bytes.
    pub fn release(&mut self) {
        self.buf = Vec::new();
    }

    pub fn rest(&mut self, until: Instant) {
        self.phase = Phase::Idle;
        self.deadline = until;
    }

    /// Whether `100 Continue` should be written now (once per request).
    pub fn take_continue(&mut self) -> bool {
        std::mem::take(&mut self.continue_due)
    }

    fn waiting(&self) -> Step {
        if self.eof {
            Step::Close
        } else {
            Step::Wait
        }
    }

    /// Moves the request forward with what is in the buffer.
    pub fn advance(&mut self, max_body: usize, header_timeout: Duration, now: Instant) -> Step {
        loop {
            match &mut self.phase {
                Phase::Linger { discarded } => {
                    self.buf.clear();
                    if *discarded > LINGER_DISCARD {
                        return Step::Close;
                    }
                    return self.waiting();
                }
                Phase::Idle => {
                    if self.buf.is_empty() {
                        return self.waiting();
                    }
                    self.phase = Phase::Head { scanned: 0 };
                    self.deadline = now + header_timeout;
                }
                Phase::Head { scanned } => {
                    // A TLS client on a plain port: refused at its first
                    // byte, not after the head deadline (no request line
                    // starts with it, and a ClientHello has no blank line).
                    if self.buf.first().is_some_and(|b| starts_tls(*b)) {
                        return Step::Fail(Rejection::new(400, NOT_PLAIN));
                    }
                    let parsed = if head_may_be_complete(&self.buf, *scanned) {
                        parse_head(&self.buf)
                    } else {
                        Ok(None)
                    };
                    let (req, n) = match parsed {
                        Err(rejection) => return Step::Fail(rejection),
                        Ok(Some(parsed)) => parsed,
                        Ok(None) => {
                            // The one check of the head limit: `wants` never
                            // reads past it, so this is where it is reached.
                            if self.buf.len() >= MAX_HEAD_BYTES {
                                return Step::Fail(head_too_large());
                            }
                            *scanned = self.buf.len();
                            return self.waiting();
                        }
                    };
                    self.buf.drain(..n);
                    let body = match framing(&req, max_body) {
                        Err(rejection) => return Step::Fail(rejection),
                        Ok(body) => body,
                    };
                    let waits_for_body = match body {
                        Framing::Empty => {
                            self.phase = Phase::Idle;
                            return Step::Dispatch(req);
                        }
                        Framing::Length(len) => self.buf.len() < len,
                        Framing::Chunked => self.buf.is_empty(),
                    };
                    self.continue_due = waits_for_body && req.expects_continue();
                    self.deadline = now + header_timeout;
                    self.phase = match body {
                        Framing::Length(len) => Phase::Body { req, len },
                        _ => Phase::Chunked {
                            req,
                            decoder: ChunkedDecoder::new(max_body),
                        },
                    };
                }
                Phase::Body { len, .. } => {
                    let len = *len;
                    if self.buf.len() < len {
                        return self.waiting();
                    }
                    let Phase::Body { mut req, .. } =
                        std::mem::replace(&mut self.phase, Phase::Idle)
                    else {
                        unreachable!("matched above");
                    };
                    req.body = self.buf.drain(..len).collect();
                    return Step::Dispatch(req);
                }
                Phase::Chunked { decoder, .. } => {
                    let used = match decoder.feed(&self.buf) {
                        Ok(used) => used,
                        Err(rejection) => return Step::Fail(rejection),
                    };
                    self.buf.drain(..used);
                    if !decoder.is_done() {
                        return self.waiting();
                    }
                    let Phase::Chunked { mut req, decoder } =
                        std::mem::replace(&mut self.phase, Phase::Idle)
                    else {
                        unreachable!("matched above");
                    };
                    req.body = decoder.into_body();
                    return Step::Dispatch(req);
                }
            }
        }
    }
}

/// The answer to a TLS handshake on a plain HTTP port (the client's TLS
/// library reports it as a protocol error; a person may read it in a dump).
const NOT_PLAIN: &str =
    "this port speaks plain HTTP, not TLS: use http://, or start streamhub with --tls-cert";

fn head_too_large() -> Rejection {
    Rejection::new(
        431,
        format!("request head is larger than {MAX_HEAD_BYTES} bytes"),
    )
}

/// One client connection and what has arrived of its current request.
pub(super) struct Conn {
    pub stream: TcpStream,
    /// The TLS session over `stream`, when the port speaks TLS (its I/O is
    /// in `wire`).
    pub tls: Option<Box<Tls>>,
    pub peer: SocketAddr,
    pub incoming: Incoming,
    /// One slot of `--max-http-connections`; `None` for a connection that
    /// is only told it is over the cap.
    _slot: Option<Permit>,
    /// Its count against `--max-connections-per-address`.
    _admission: Option<Admission>,
    /// The last token verified on it: a keep-alive client sends the same
    /// one with every request.
    pub known: KnownToken,
}

impl Conn {
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        slot: Option<Permit>,
        deadline: Instant,
    ) -> Conn {
        Conn {
            stream,
            tls: None,
            peer,
            incoming: Incoming::new(deadline),
            _slot: slot,
            _admission: None,
            known: KnownToken::default(),
        }
    }

    /// Counts the connection against its address's cap while it lives.
    pub fn admitted(mut self, admission: Admission) -> Conn {
        self._admission = Some(admission);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_BODY: usize = 1024;
    const TIMEOUT: Duration = Duration::from_secs(10);

    fn feed(incoming: &mut Incoming, bytes: &[u8]) -> Step {
        incoming.received(bytes);
        incoming.advance(MAX_BODY, TIMEOUT, Instant::now())
    }

    fn fresh() -> Incoming {
        Incoming::new(Instant::now() + TIMEOUT)
    }

    #[test]
    fn a_head_in_pieces_dispatches_once_whole_and_the_connection_goes_idle() {
        let mut c = fresh();
        assert!(matches!(feed(&mut c, b"GET /healthz HT"), Step::Wait));
        assert!(c.mid_request());
        let Step::Dispatch(req) = feed(&mut c, b"TP/1.1\r\nHost: x\r\n\r\n") else {
            panic!("a whole head is a request");
        };
        assert_eq!(req.path, "/healthz");
        assert!(!c.mid_request(), "idle after the request");
        // The next request on the same connection.
        assert!(matches!(
            feed(&mut c, b"GET / HTTP/1.1\r\n\r\n"),
            Step::Dispatch(_)
        ));
    }

    #[test]
    fn a_body_by_length_and_a_chunked_body_arrive_whole() {
        let mut c = fresh();
        let head = b"POST /messages HTTP/1.1\r\nContent-Length: 5\r\n\r\nhe";
        assert!(matches!(feed(&mut c, head), Step::Wait));
        let Step::Dispatch(req) = feed(&mut c, b"llo") else {
            panic!("the body completes the request");
        };
        assert_eq!(req.body, b"hello");

        let mut c = fresh();
        let head = b"POST /messages HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(feed(&mut c, head), Step::Wait));
        let Step::Dispatch(req) = feed(&mut c, b"3\r\nabc\r\n0\r\n\r\n") else {
            panic!("the last chunk completes the request");
        };
        assert_eq!(req.body, b"abc");
    }

    #[test]
    fn the_head_limit_is_reached_exactly_at_max_head_bytes() {
        let mut c = fresh();
        let mut head = b"GET / HTTP/1.1\r\nX: ".to_vec();
        head.resize(MAX_HEAD_BYTES - 1, b'a');
        assert!(matches!(feed(&mut c, &head), Step::Wait));
        assert_eq!(c.wants(), 1, "never reads past the limit");
        let Step::Fail(rejection) = feed(&mut c, b"a") else {
            panic!("a head of MAX_HEAD_BYTES without its end is refused");
        };
        assert_eq!(rejection.status, 431);
    }

    #[test]
    fn a_declared_body_over_the_limit_is_refused_before_it_is_read() {
        let mut c = fresh();
        let head = format!(
            "POST /messages HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let Step::Fail(rejection) = feed(&mut c, head.as_bytes()) else {
            panic!("too large");
        };
        assert_eq!(rejection.status, 413);
    }

    #[test]
    fn expect_continue_is_due_only_while_the_body_is_missing() {
        let mut c = fresh();
        let head = b"POST /m HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n";
        assert!(matches!(feed(&mut c, head), Step::Wait));
        assert!(c.take_continue());
        assert!(!c.take_continue(), "once per request");
        let mut c = fresh();
        let whole = b"POST /m HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nok";
        assert!(matches!(feed(&mut c, whole), Step::Dispatch(_)));
        assert!(!c.take_continue(), "the body is already here");
    }

    #[test]
    fn end_of_file_closes_and_lingering_discards_up_to_its_bound() {
        let mut c = fresh();
        c.eof = true;
        assert!(matches!(feed(&mut c, b""), Step::Close));

        let mut c = fresh();
        c.linger(Instant::now() + TIMEOUT);
        assert!(c.is_lingering());
        assert!(matches!(feed(&mut c, &[0; 1000]), Step::Wait));
        assert!(matches!(
            feed(&mut c, &vec![0; LINGER_DISCARD]),
            Step::Close
        ));
    }

    #[test]
    fn a_tls_client_hello_on_a_plain_port_is_refused_at_its_first_byte() {
        let mut c = fresh();
        // The first five bytes of a ClientHello record, nowhere near a
        // blank line.
        let Step::Fail(rejection) = feed(&mut c, b"\x16\x03\x01\x02\x00") else {
            panic!("a handshake record is refused at once");
        };
        assert_eq!(rejection.status, 400);
        assert!(rejection.reason.contains("not TLS"), "{}", rejection.reason);
        // A keep-alive connection's next request too.
        let mut c = fresh();
        assert!(matches!(
            feed(&mut c, b"GET / HTTP/1.1\r\n\r\n"),
            Step::Dispatch(_)
        ));
        assert!(matches!(feed(&mut c, b"\x16"), Step::Fail(_)));
    }

    #[test]
    fn garbage_gets_a_400() {
        let mut c = fresh();
        let Step::Fail(rejection) = feed(&mut c, b"\x16\x03\x01 not http\r\n\r\n") else {
            panic!("garbage is refused");
        };
        assert_eq!(rejection.status, 400);
    }
}
