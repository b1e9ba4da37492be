//! The seam through which another front door serves requests on the HTTP
//! port: gRPC-Web today. `http` and `grpc` never import each other, so the
//! HTTP layer offers an [`Extension`] (a path prefix it does not route
//! itself, the CORS headers its clients need, and a handler for the POSTs)
//! and an [`Exchange`] (the connection, to answer once or to stream a
//! chunked body); the composition root (`crate::bridge`) wires gRPC's half
//! to it.
//!
//! What stays here: the request was read like any other (head deadline,
//! size limits, TLS); OPTIONS (the CORS preflight) and wrong methods are
//! answered here with the same `--cors-origin` rule as every other path;
//! an answer keeps the connection alive like any response; a streamed body
//! is chunked, each chunk one `writev` through the same patient writer
//! the SSE threads use (write timeout, giving up early when the caller
//! says so, TLS), and ends with the connection.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::conn::Conn;
use super::request::Request;
use super::response::Response;
use super::routes::cors_headers;
use super::server::{answer, GiveBack};
use super::stream::{write_pieces, Patient};
use super::Shared;

/// A front door borrowing the HTTP port.
pub trait Extension: Send + Sync + 'static {
    /// Whether `path` is this extension's (every method on it then is).
    fn claims(&self, path: &str) -> bool;
    /// Request headers its cross-origin clients send, besides
    /// `Content-Type` (the CORS preflight allows them).
    fn cors_allow_headers(&self) -> &'static str;
    /// Response headers its cross-origin clients must read.
    fn cors_expose_headers(&self) -> &'static str;
    /// Runs a POST on a worker; must not block it for long (a stream goes
    /// on a thread of its own, taking the exchange with it).
    fn serve(&self, req: Request, exchange: Exchange);
}

/// One request's connection, handed to an extension: answered once
/// ([`Exchange::respond`]) or streamed ([`Exchange::begin`],
/// [`Exchange::chunk`], [`Exchange::end`]).
pub struct Exchange {
    shared: Arc<Shared>,
    conn: Conn,
    back: GiveBack,
    cors: Vec<(&'static str, String)>,
    /// The client asked for the connection to close after this request.
    close: bool,
    /// A room stream's priority (`--stream-priority`), set at its first
    /// burst: `None` until then (a metrics stream never has one).
    busy: Option<crate::threads::BusyRoom>,
    /// The pieces of the chunk being written (see [`recycle`]).
    spare: Vec<&'static [u8]>,
}

impl Exchange {
    pub fn peer(&self) -> String {
        self.conn.peer.to_string()
    }

    /// The client's address.
    pub fn ip(&self) -> std::net::IpAddr {
        self.conn.peer.ip()
    }

    /// Answers `200` with `headers` and `body`; the connection then serves
    /// the next request.
    pub fn respond(self, headers: Vec<(&'static str, String)>, body: Vec<u8>) {
        let mut response = Response::new(200).body(body);
        response.headers = headers;
        self.answer(response);
    }

    /// Answers with an HTTP error (JSON body).
    pub fn refuse(self, status: u16, message: &str) {
        self.answer(Response::error(status, message));
    }

    fn answer(self, mut response: Response) {
        response.headers.extend(self.cors);
        answer(
            &self.shared,
            self.conn,
            response,
            false,
            self.close,
            &self.back,
        );
    }

    /// Starts a chunked `200` response that runs until [`Exchange::end`]
    /// (then the connection closes). Sets the socket up like an event
    /// stream's: its send buffer and a short write timeout for patient
    /// writes.
    pub fn begin(&mut self, headers: Vec<(&'static str, String)>) -> io::Result<()> {
        let config = &self.shared.config;
        if config.sse_send_buffer > 0 {
            let _ = crate::sys::set_send_buffer(&self.conn.stream, config.sse_send_buffer);
        }
        self.conn.incoming.release();
        let mut head = Response {
            streaming: true,
            ..Response::new(200)
        };
        head.headers = headers;
        head.headers.extend(self.cors.iter().cloned());
        head.headers.push(("Transfer-Encoding", "chunked".into()));
        self.shared.telemetry.http_response(200);
        let bytes = head.head_bytes(true);
        let tls = self.conn.tls.take();
        let out = Patient::new(&self.conn.stream, tls, config.write_timeout);
        let written = write_pieces(out.plain(), &[&bytes]);
        self.conn.tls = out.into_tls();
        written
    }

    /// Sends `pieces` as one chunk with one `writev` when the socket takes
    /// it; a blocked write fails once `give_up` holds or after the write
    /// timeout without progress.
    pub fn chunk(&mut self, pieces: &[&[u8]], give_up: &dyn Fn() -> bool) -> io::Result<()> {
        let size: usize = pieces.iter().map(|p| p.len()).sum();
        if size == 0 {
            // A zero-size chunk would end the body.
            return Ok(());
        }
        let mut line = [0u8; CHUNK_LINE_MAX];
        let line = chunk_line(size, &mut line);
        // One allocation for the stream's life, not one per chunk.
        let mut all = recycle(std::mem::take(&mut self.spare));
        all.push(line);
        all.extend_from_slice(pieces);
        all.push(b"\r\n");
        let written = self.write(&all, give_up);
        self.spare = recycle(all);
        written
    }

    /// Ends the body (after `last`, a chunk of its own) and closes; with
    /// no `last`, only closes: the body was broken by a failed write.
    pub fn end(mut self, last: Option<&[u8]>, give_up: &dyn Fn() -> bool) {
        if let Some(last) = last {
            let mut line = [0u8; CHUNK_LINE_MAX];
            let line = chunk_line(last.len(), &mut line);
            let pieces: [&[u8]; 4] = [line, last, b"\r\n", LAST_CHUNK];
            let _ = self.write(&pieces[..], give_up);
        }
        let tls = self.conn.tls.take();
        Patient::again(&self.conn.stream, tls, self.shared.config.write_timeout).close();
    }

    /// True once the client closed its end (a read without blocking).
    pub fn client_gone(&mut self) -> bool {
        let tls = self.conn.tls.take();
        let out = Patient::again(&self.conn.stream, tls, self.shared.config.write_timeout);
        let gone = out.client_gone();
        self.conn.tls = out.into_tls();
        gone
    }

    /// A room stream took a burst up to `newest`: the thread's CPU
    /// priority follows the room's rate, as an SSE stream thread's does
    /// (`--stream-priority`; `threads::Priority` says why).
    pub fn room_burst(&mut self, newest: u64) {
        let priority = self.shared.config.stream_priority;
        let busy = self.busy.get_or_insert_with(|| {
            priority.apply_to_current_thread();
            crate::threads::BusyRoom::new(priority)
        });
        if busy.observe(newest, std::time::Instant::now()) {
            crate::threads::Priority::Idle.apply_to_current_thread();
        }
    }

    fn write(&mut self, pieces: &[&[u8]], give_up: &dyn Fn() -> bool) -> io::Result<()> {
        let tls = self.conn.tls.take();
        let out = Patient::again(&self.conn.stream, tls, self.shared.config.write_timeout);
        let written = write_pieces(out.giving_up_when(give_up), pieces);
        self.conn.tls = out.into_tls();
        written
    }
}

/// The end of a chunked body (no trailers: gRPC-Web's are in a frame).
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Longest chunk size line: 16 hex digits and CRLF.
const CHUNK_LINE_MAX: usize = 18;

/// A chunk's size line, written into `buf`.
fn chunk_line(size: usize, buf: &mut [u8; CHUNK_LINE_MAX]) -> &[u8] {
    let digits = (usize::BITS - size.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, digit) in buf[..digits].iter_mut().enumerate() {
        let nibble = (size >> (4 * (digits - 1 - i))) & 0xf;
        *digit = b"0123456789abcdef"[nibble];
    }
    buf[digits..digits + 2].copy_from_slice(b"\r\n");
    &buf[..digits + 2]
}

/// An empty vector with the allocation of `v`, whatever the lifetime of
/// what `v` pointed into (as `stream::recycle` does for slices).
fn recycle<'b>(mut v: Vec<&'_ [u8]>) -> Vec<&'b [u8]> {
    v.clear();
    v.into_iter().map(|_| unreachable!("empty")).collect()
}

/// The CORS headers of a request to an extension's path: the same origin
/// rule as every path; a preflight allows POST and the extension's request
/// headers, any other response exposes its response headers.
fn cors(req: &Request, origins: &[String], ext: &dyn Extension) -> Vec<(&'static str, String)> {
    let mut out = cors_headers(req, origins);
    if !out.iter().any(|(n, _)| *n == "Access-Control-Allow-Origin") {
        return out;
    }
    if req.method == "OPTIONS" {
        if req.header("access-control-request-method").is_some() {
            out.push(("Access-Control-Allow-Methods", ALLOW.into()));
            let headers = format!("Content-Type, {}", ext.cors_allow_headers());
            out.push(("Access-Control-Allow-Headers", headers));
            out.push(("Access-Control-Max-Age", "600".into()));
        }
    } else {
        out.push((
            "Access-Control-Expose-Headers",
            ext.cors_expose_headers().into(),
        ));
    }
    out
}

const ALLOW: &str = "POST, OPTIONS";

/// Runs on a worker: a request to an extension's path.
pub(super) fn serve(
    shared: &Arc<Shared>,
    ext: &dyn Extension,
    conn: Conn,
    req: Request,
    back: &GiveBack,
) {
    let cors = cors(&req, &shared.config.cors_origins, ext);
    let close = req.wants_close() || conn.incoming.eof || shared.is_stopping();
    let plain = |response: Response| {
        let mut response = response.header("Allow", ALLOW);
        response.headers.extend(cors.iter().cloned());
        response
    };
    match req.method.as_str() {
        "POST" => {}
        "OPTIONS" => return answer(shared, conn, plain(Response::new(204)), false, close, back),
        other => {
            let shown: String = other.chars().take(20).collect();
            let message = format!("method {shown} is not allowed on {}", req.path);
            let response = plain(Response::error(405, &message));
            return answer(shared, conn, response, req.is_head(), close, back);
        }
    }
    let (method, path) = (req.method.clone(), req.path.clone());
    let exchange = Exchange {
        shared: shared.clone(),
        conn,
        back: back.clone(),
        cors,
        close,
        busy: None,
        spare: Vec::new(),
    };
    // A panic drops the exchange, which closes the connection.
    if catch_unwind(AssertUnwindSafe(|| ext.serve(req, exchange))).is_err() {
        log::error!("handler panicked on {method} {path}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse_head;

    struct Door;

    impl Extension for Door {
        fn claims(&self, path: &str) -> bool {
            path.starts_with("/door/")
        }
        fn cors_allow_headers(&self) -> &'static str {
            "x-grpc-web, grpc-timeout"
        }
        fn cors_expose_headers(&self) -> &'static str {
            "grpc-status, grpc-message"
        }
        fn serve(&self, _req: Request, _exchange: Exchange) {}
    }

    fn req(text: &str) -> Request {
        parse_head(text.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn a_preflight_allows_post_and_the_extensions_headers() {
        let origins = vec!["http://a.example".to_string()];
        let r = req("OPTIONS /door/x HTTP/1.1\r\nOrigin: http://a.example\r\nAccess-Control-Request-Method: POST\r\n\r\n");
        let h = cors(&r, &origins, &Door);
        assert!(h.contains(&("Access-Control-Allow-Origin", "http://a.example".into())));
        assert!(h.contains(&("Access-Control-Allow-Methods", "POST, OPTIONS".into())));
        assert!(h.contains(&(
            "Access-Control-Allow-Headers",
            "Content-Type, x-grpc-web, grpc-timeout".into()
        )));
        let r = req("POST /door/x HTTP/1.1\r\nOrigin: http://a.example\r\n\r\n");
        let h = cors(&r, &origins, &Door);
        assert!(h.contains(&(
            "Access-Control-Expose-Headers",
            "grpc-status, grpc-message".into()
        )));
    }

    #[test]
    fn an_origin_not_listed_gets_no_cors_headers() {
        let origins = vec!["http://a.example".to_string()];
        let r = req("OPTIONS /door/x HTTP/1.1\r\nOrigin: http://evil.example\r\nAccess-Control-Request-Method: POST\r\n\r\n");
        let h = cors(&r, &origins, &Door);
        assert!(h.iter().all(|(n, _)| n.starts_with("Vary")), "{h:?}");
        assert!(cors(&r, &[], &Door).is_empty());
    }

    #[test]
    fn chunk_lines_are_hex() {
        let mut buf = [0; CHUNK_LINE_MAX];
        for n in [0usize, 1, 15, 16, 255, 4096, 0x1234_5678, usize::MAX] {
            assert_eq!(chunk_line(n, &mut buf), format!("{n:x}\r\n").as_bytes());
        }
    }
}
