//! Request heads and bodies as values, parsed under hard limits.
//!
//! Nothing here touches a socket: the connection loop feeds bytes in and
//! gets a [`Request`], a decision about the body ([`Framing`]) or a
//! [`Rejection`] (an HTTP status and a reason) back. Every limit is checked
//! before memory is spent on it, so what a client sends can never grow a
//! connection past [`MAX_HEAD_BYTES`] plus the body limit.

use std::fmt;

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields accepted in one request.
pub const MAX_HEADERS: usize = 64;
/// Longest chunk-size line (with extensions) in a chunked body.
const MAX_CHUNK_LINE: usize = 1024;

/// A parsed request. Header names are lower-case; the query is decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path of the request target, without the query.
    pub path: String,
    /// Decoded `name=value` pairs of the query, in order.
    pub query: Vec<(String, String)>,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header called `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first query parameter called `name`.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the connection must close after the response: HTTP/1.0
    /// always, HTTP/1.1 when the client says `Connection: close`.
    pub fn wants_close(&self) -> bool {
        self.version == 0
            || self
                .header("connection")
                .is_some_and(|v| has_token(v, "close"))
    }

    /// `Expect: 100-continue`: the client waits for a go-ahead before the body.
    pub fn expects_continue(&self) -> bool {
        self.version >= 1
            && self
                .header("expect")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// Whether a comma-separated header value holds `token` (any case).
fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A request refused before it reached a route: the status to answer with
/// and why. The connection closes after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: String,
}

impl Rejection {
    pub fn new(status: u16, reason: impl Into<String>) -> Rejection {
        Rejection {
            status,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

/// Whether `buf` may hold a whole head: it has a blank line (`\n\n` or
/// `\n\r\n`) at or after `from - 3`, where `from` is how far an earlier
/// call already looked. Lets the reader skip re-parsing a head that cannot be
/// complete yet, so a client sending one byte at a time costs linear work.
pub fn head_may_be_complete(buf: &[u8], from: usize) -> bool {
    let tail = &buf[from.saturating_sub(3).min(buf.len())..];
    tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n")
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)`: incomplete (the caller checks [`MAX_HEAD_BYTES`] against the
/// buffer). `Ok(Some((request, n)))`: the head is the first `n` bytes; the
/// body is left empty. 431 for too many or too large headers, 400 for
/// anything malformed.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, Rejection> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD_BYTES {
                return Err(too_large());
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Rejection::new(
                431,
                format!("more than {MAX_HEADERS} header fields"),
            ))
        }
        Err(e) => return Err(Rejection::new(400, format!("malformed request: {e}"))),
    };
    if len > MAX_HEAD_BYTES {
        return Err(too_large());
    }
    let method = parsed.method.unwrap_or_default().to_string();
    let target = parsed.path.unwrap_or_default();
    let version = parsed.version.unwrap_or(1);
    let (path, query) = split_target(target)?;
    let mut out_headers = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| Rejection::new(400, format!("header {} is not UTF-8", h.name)))?;
        out_headers.push((h.name.to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Some((
        Request {
            method,
            path,
            query,
            version,
            headers: out_headers,
            body: Vec::new(),
        },
        len,
    )))
}

fn too_large() -> Rejection {
    Rejection::new(
        431,
        format!("request head is larger than {MAX_HEAD_BYTES} bytes"),
    )
}

/// Splits a request target into its path and decoded query. Accepts the
/// absolute form (`http://host/path?q`) that proxies send.
fn split_target(target: &str) -> Result<(String, Vec<(String, String)>), Rejection> {
    let mut rest = target;
    for scheme in ["http://", "https://"] {
        if let Some(after) = rest.strip_prefix(scheme) {
            rest = after.find('/').map_or("/", |i| &after[i..]);
        }
    }
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = path.split_once('#').map_or(path, |(p, _)| p);
    if !(path.starts_with('/') || path == "*") {
        return Err(Rejection::new(400, "request target must start with '/'"));
    }
    Ok((path.to_string(), parse_query(query)?))
}

/// Decodes an `application/x-www-form-urlencoded` query string.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, Rejection> {
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(name)?, percent_decode(value)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Result<String, Rejection> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| Rejection::new(400, "bad percent-encoding in the query"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| Rejection::new(400, "the query is not UTF-8"))
}

/// How the body of a request is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes follow the head.
    Length(usize),
    /// `Transfer-Encoding: chunked`, decoded by a [`ChunkedDecoder`].
    Chunked,
}

/// Decides how the body is framed, refusing what streamhub will not read:
/// a declared length over `max_body` (413), a transfer coding other than
/// plain `chunked` (411: send a Content-Length instead), both at once or a
/// garbled length (400).
pub fn framing(req: &Request, max_body: usize) -> Result<Framing, Rejection> {
    let lengths: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_str())
        .collect();
    let encodings: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n == "transfer-encoding")
        .map(|(_, v)| v.as_str())
        .collect();
    if !encodings.is_empty() {
        if !lengths.is_empty() {
            return Err(Rejection::new(
                400,
                "both Content-Length and Transfer-Encoding are present",
            ));
        }
        let codings: Vec<String> = encodings
            .iter()
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect();
        if req.version == 1 && codings == ["chunked"] {
            return Ok(Framing::Chunked);
        }
        return Err(Rejection::new(
            411,
            "only Content-Length or plain chunked bodies are accepted",
        ));
    }
    let Some(first) = lengths.first() else {
        return Ok(Framing::Empty);
    };
    if lengths.iter().any(|l| l != first) {
        return Err(Rejection::new(400, "conflicting Content-Length headers"));
    }
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::new(400, "Content-Length is not a number"));
    }
    let length: usize = first.parse().unwrap_or(usize::MAX);
    if length > max_body {
        return Err(body_too_large(max_body));
    }
    Ok(match length {
        0 => Framing::Empty,
        n => Framing::Length(n),
    })
}

fn body_too_large(max_body: usize) -> Rejection {
    Rejection::new(
        413,
        format!("request body is larger than the limit of {max_body} bytes"),
    )
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line; holds the line so far.
    Size(Vec<u8>),
    /// Reading chunk data; this many bytes are left.
    Data(usize),
    /// Expecting the CRLF after chunk data; holds how much of it was seen.
    DataEnd(u8),
    /// Reading trailer lines after the last chunk; holds the current line.
    Trailer(Vec<u8>),
    Done,
}

/// An incremental decoder of a chunked body with a limit on the decoded
/// size and on the framing around it. Feed it bytes as they arrive.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    body: Vec<u8>,
    max_body: usize,
    trailer_bytes: usize,
}

impl ChunkedDecoder {
    pub fn new(max_body: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            state: ChunkState::Size(Vec::new()),
            body: Vec::new(),
            max_body,
            trailer_bytes: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// The decoded body, once [`ChunkedDecoder::is_done`].
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// Consumes bytes from `input`; returns how many were used (all of them
    /// unless the body ended inside `input`).
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, Rejection> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match &mut self.state {
                ChunkState::Done => break,
                ChunkState::Size(line) => {
                    i += 1;
                    if b != b'\n' {
                        if line.len() >= MAX_CHUNK_LINE {
                            return Err(Rejection::new(400, "chunk-size line is too long"));
                        }
                        line.push(b);
                        continue;
                    }
                    let size = parse_chunk_size(line)?;
                    if size > self.max_body.saturating_sub(self.body.len()) {
                        return Err(body_too_large(self.max_body));
                    }
                    self.state = if size == 0 {
                        ChunkState::Trailer(Vec::new())
                    } else {
                        self.body.reserve(size);
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    let take = (*left).min(input.len() - i);
                    self.body.extend_from_slice(&input[i..i + take]);
                    i += take;
                    *left -= take;
                    if *left == 0 {
                        self.state = ChunkState::DataEnd(0);
                    }
                }
                ChunkState::DataEnd(seen) => {
                    i += 1;
                    match (b, *seen) {
                        (b'\r', 0) => *seen = 1,
                        (b'\n', _) => self.state = ChunkState::Size(Vec::new()),
                        _ => return Err(Rejection::new(400, "chunk data is not followed by CRLF")),
                    }
                }
                ChunkState::Trailer(line) => {
                    i += 1;
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_HEAD_BYTES {
                        return Err(Rejection::new(431, "chunked trailer is too large"));
                    }
                    if b != b'\n' {
                        line.push(b);
                        continue;
                    }
                    if line.is_empty() || line.as_slice() == b"\r" {
                        self.state = ChunkState::Done;
                    } else {
                        line.clear();
                    }
                }
            }
        }
        Ok(i)
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<usize, Rejection> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let size = line.split(|&b| b == b';').next().unwrap_or_default();
    let size = std::str::from_utf8(size)
        .ok()
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= 16)
        .and_then(|s| usize::from_str_radix(s, 16).ok())
        .ok_or_else(|| Rejection::new(400, "bad chunk size"))?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Request {
        let (req, n) = parse_head(text.as_bytes()).unwrap().unwrap();
        assert_eq!(n, text.len());
        req
    }

    #[test]
    fn parses_method_path_query_version_and_headers() {
        let req = head(
            "GET /events?room=a%20b&types=chat,system&user=x+y HTTP/1.1\r\nHost: h\r\nLast-Event-ID:  42 \r\n\r\n",
        );
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/events");
        assert_eq!(req.query("room"), Some("a b"));
        assert_eq!(req.query("types"), Some("chat,system"));
        assert_eq!(req.query("user"), Some("x y"));
        assert_eq!(req.version, 1);
        assert_eq!(req.header("last-event-id"), Some("42"));
        assert!(!req.wants_close());
    }

    #[test]
    fn partial_head_needs_more_and_complete_head_reports_its_length() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap(), None);
        let text = b"GET / HTTP/1.1\r\n\r\nPOST";
        let (_, n) = parse_head(text).unwrap().unwrap();
        assert_eq!(n, text.len() - 4);
    }

    #[test]
    fn head_terminator_scan_finds_crlf_and_lf_endings() {
        assert!(!head_may_be_complete(b"GET / HTTP/1.1\r\nHost: x\r\n", 0));
        assert!(head_may_be_complete(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            20
        ));
        assert!(head_may_be_complete(b"GET / HTTP/1.1\n\n", 14));
    }

    #[test]
    fn limits_answer_431() {
        let many: String = (0..65).map(|i| format!("X-{i}: y\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_head(text.as_bytes()).unwrap_err().status, 431);
        let huge = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(parse_head(huge.as_bytes()).unwrap_err().status, 431);
        let unterminated = format!("GET /{}", "a".repeat(MAX_HEAD_BYTES + 10));
        assert_eq!(parse_head(unterminated.as_bytes()).unwrap_err().status, 431);
    }

    #[test]
    fn garbage_answers_400() {
        for bad in [
            &b"\x00\x01\x02 / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"GET noslash HTTP/1.1\r\n\r\n",
            b"GET /?a=%zz HTTP/1.1\r\n\r\n",
            b"GET /?a=%ff HTTP/1.1\r\n\r\n",
        ] {
            let err = parse_head(bad).unwrap_err();
            assert_eq!(err.status, 400, "{:?}: {err}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn absolute_form_targets_are_reduced_to_the_path() {
        let req = head("GET http://example.com/healthz?x=1 HTTP/1.1\r\n\r\n");
        assert_eq!(req.path, "/healthz");
        assert_eq!(req.query("x"), Some("1"));
    }

    #[test]
    fn http_1_0_and_connection_close_end_the_connection() {
        assert!(head("GET / HTTP/1.0\r\n\r\n").wants_close());
        assert!(head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").wants_close());
        assert!(head("GET / HTTP/1.1\r\nConnection: Keep-Alive, Close\r\n\r\n").wants_close());
        assert!(head("POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n").expects_continue());
        assert!(!head("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expects_continue());
    }

    #[test]
    fn framing_decisions() {
        let with = |h: &str| head(&format!("POST /m HTTP/1.1\r\n{h}\r\n"));
        assert_eq!(framing(&with(""), 10), Ok(Framing::Empty));
        assert_eq!(
            framing(&with("Content-Length: 0\r\n"), 10),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing(&with("Content-Length: 10\r\n"), 10),
            Ok(Framing::Length(10))
        );
        assert_eq!(
            framing(&with("Content-Length: 11\r\n"), 10)
                .unwrap_err()
                .status,
            413
        );
        assert_eq!(
            framing(&with("Content-Length: 99999999999999999999999\r\n"), 10)
                .unwrap_err()
                .status,
            413
        );
        assert_eq!(
            framing(&with("Content-Length: -1\r\n"), 10)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            framing(&with("Content-Length: 1, 2\r\n"), 10)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            framing(&with("Content-Length: 1\r\nContent-Length: 2\r\n"), 10)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            framing(&with("Transfer-Encoding: chunked\r\n"), 10),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing(&with("Transfer-Encoding: gzip, chunked\r\n"), 10)
                .unwrap_err()
                .status,
            411
        );
        assert_eq!(
            framing(
                &with("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"),
                10
            )
            .unwrap_err()
            .status,
            400
        );
    }

    fn decode_in_pieces(
        input: &[u8],
        piece: usize,
        max: usize,
    ) -> Result<(Vec<u8>, usize), Rejection> {
        let mut d = ChunkedDecoder::new(max);
        let mut used = 0;
        for part in input.chunks(piece) {
            used += d.feed(part)?;
            if d.is_done() {
                return Ok((d.into_body(), used));
            }
        }
        Err(Rejection::new(0, "incomplete"))
    }

    #[test]
    fn chunked_bodies_decode_in_any_split() {
        let input = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: y\r\n\r\nNEXT";
        for piece in [1, 2, 3, 7, 100] {
            let (body, used) = decode_in_pieces(input, piece, 100).unwrap();
            assert_eq!(body, b"hello, world");
            assert_eq!(used, input.len() - 4, "piece {piece}");
        }
        assert_eq!(decode_in_pieces(b"0\r\n\r\n", 1, 0).unwrap().0, b"");
    }

    #[test]
    fn chunked_bodies_stay_within_limits() {
        assert_eq!(
            decode_in_pieces(b"b\r\nhello world\r\n0\r\n\r\n", 4, 10)
                .unwrap_err()
                .status,
            413
        );
        assert_eq!(
            decode_in_pieces(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", 4, 10)
                .unwrap_err()
                .status,
            413
        );
        assert_eq!(decode_in_pieces(b"zz\r\n", 4, 10).unwrap_err().status, 400);
        assert_eq!(
            decode_in_pieces(b"2\r\nhiX\r\n", 4, 10).unwrap_err().status,
            400
        );
        let long_line = format!("1;{}\r\n", "e".repeat(2000));
        assert_eq!(
            decode_in_pieces(long_line.as_bytes(), 64, 10)
                .unwrap_err()
                .status,
            400
        );
        let ffff = b"ffffffffffffffffff\r\n";
        assert_eq!(decode_in_pieces(ffff, 64, 10).unwrap_err().status, 400);
    }
}

/// Properties of the pure functions, over generated input.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::{parse_head, parse_query};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::http::property_cases()))]

        #[test]
        fn percent_encoded_query_pairs_decode_to_themselves(
            pairs in proptest::collection::vec((".{0,12}", ".{0,12}"), 0..6),
            plus_for_space in any::<bool>(),
        ) {
            let encode = |text: &str| -> String {
                text.bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                            (b as char).to_string()
                        }
                        b' ' if plus_for_space => "+".to_string(),
                        _ => format!("%{b:02X}"),
                    })
                    .collect()
            };
            let query = pairs
                .iter()
                .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
                .collect::<Vec<_>>()
                .join("&");
            prop_assert_eq!(parse_query(&query).unwrap(), pairs);
        }

        #[test]
        fn arbitrary_queries_and_heads_never_panic(
            query in ".{0,64}",
            head in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            if let Err(rejection) = parse_query(&query) {
                prop_assert_eq!(rejection.status, 400);
            }
            if let Err(rejection) = parse_head(&head) {
                prop_assert!(rejection.status == 400 || rejection.status == 431);
            }
            let mut request = b"GET /events?".to_vec();
            request.extend_from_slice(query.as_bytes());
            request.extend_from_slice(b" HTTP/1.1\r\nHost: t\r\n\r\n");
            let _ = parse_head(&request);
        }
    }
}
