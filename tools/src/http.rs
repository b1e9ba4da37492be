//! Just enough HTTP/1.1 client for the load tool, on a raw `TcpStream`: URL
//! templates, response heads, chunked bodies, and a keep-alive publisher.
//! The parsing is pure and unit-tested; no HTTP crate is involved, so the
//! client costs what a socket costs.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use streamhub::error::Error;

/// Most bytes of a response head the client accepts.
const MAX_HEAD: usize = 64 * 1024;

/// An `http://` URL split into what a request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host as written (brackets kept for IPv6), for the `Host` header.
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub target: String,
}

impl HttpUrl {
    /// Parses `http://host[:port][/path][?query]`. `https` is refused: the
    /// tool speaks plain TCP.
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("'{url}' is not an http:// URL"))?;
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (inside, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("'{url}': unclosed '[' in the host"))?;
            (format!("[{inside}]"), after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty() || host == "[]" {
            return Err(format!("'{url}' has no host"));
        }
        let port = match port {
            None | Some("") => 80,
            Some(p) => p
                .parse()
                .map_err(|_| format!("'{url}': '{p}' is not a port"))?,
        };
        Ok(HttpUrl { host, port, target })
    }

    /// `host:port` for connecting (brackets removed).
    pub fn connect_addr(&self) -> String {
        let bare = self.host.trim_start_matches('[').trim_end_matches(']');
        if bare.contains(':') {
            format!("[{bare}]:{}", self.port)
        } else {
            format!("{bare}:{}", self.port)
        }
    }

    /// The `Host` header value.
    pub fn host_header(&self) -> String {
        if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Puts `room` wherever the template says `{room}`.
pub fn expand(template: &str, room: &str) -> String {
    template.replace("{room}", room)
}

/// A response head: status and headers (names lower-case).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length")?.trim().parse().ok()
    }
}

/// Parses a response head at the start of `buf`: `Ok(None)` while it is
/// incomplete, else the head and its length in bytes.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let head = ResponseHead {
                status: response.code.unwrap_or(0),
                headers: response
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).trim().to_string(),
                        )
                    })
                    .collect(),
            };
            Ok(Some((head, len)))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            Err(format!("response head larger than {MAX_HEAD} bytes"))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(format!("malformed response head: {e}")),
    }
}

/// Decodes a `Transfer-Encoding: chunked` body fed in pieces of any size.
#[derive(Clone, Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size_line: Vec<u8>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line.
    #[default]
    Size,
    /// This many payload bytes left in the chunk.
    Data(u64),
    /// The CRLF after a chunk's payload.
    DataEnd,
    /// After the last chunk: trailer lines up to a blank one.
    Trailer,
    Done,
}

impl ChunkedDecoder {
    pub fn new() -> ChunkedDecoder {
        ChunkedDecoder::default()
    }

    /// Whether the last chunk and its trailer were read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Appends the payload in `input` to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        while !input.is_empty() {
            match self.state {
                ChunkState::Size | ChunkState::Trailer | ChunkState::DataEnd => {
                    let Some(nl) = input.iter().position(|b| *b == b'\n') else {
                        self.push_line(input)?;
                        return Ok(());
                    };
                    self.push_line(&input[..nl])?;
                    input = &input[nl + 1..];
                    let line = std::mem::take(&mut self.size_line);
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    self.end_line(line)?;
                }
                ChunkState::Data(left) => {
                    let n = (left as usize).min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if n as u64 == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n as u64)
                    };
                }
                ChunkState::Done => return Ok(()),
            }
        }
        Ok(())
    }

    fn push_line(&mut self, part: &[u8]) -> Result<(), String> {
        if self.size_line.len() + part.len() > 4096 {
            return Err("chunk line longer than 4096 bytes".into());
        }
        self.size_line.extend_from_slice(part);
        Ok(())
    }

    fn end_line(&mut self, line: &[u8]) -> Result<(), String> {
        self.state = match self.state {
            ChunkState::Size => {
                let digits = line.split(|b| *b == b';').next().unwrap_or_default();
                let text = std::str::from_utf8(digits).unwrap_or("").trim();
                let size = u64::from_str_radix(text, 16)
                    .map_err(|_| format!("bad chunk size '{}'", text.escape_debug()))?;
                if size == 0 {
                    ChunkState::Trailer
                } else {
                    ChunkState::Data(size)
                }
            }
            ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
            ChunkState::DataEnd => return Err("chunk payload not followed by CRLF".into()),
            ChunkState::Trailer if line.is_empty() => ChunkState::Done,
            other => other,
        };
        Ok(())
    }
}

/// Connects to `url` with `timeout` on the connect, reads and writes.
pub fn connect(url: &HttpUrl, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in url.connect_addr().to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(timeout))?;
                stream.set_write_timeout(Some(timeout))?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// How a publisher's body looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// streamhub's `POST /messages`: `{"room","user","content"}`.
    Json,
    /// The content itself as `text/plain` (nchan and most pub/sub servers).
    Raw,
}

/// Publishes over one keep-alive HTTP connection, reconnecting when the
/// server closes it.
pub struct HttpPublisher {
    url_template: String,
    format: BodyFormat,
    timeout: Duration,
    conn: Option<(HttpUrl, TcpStream)>,
    buf: Vec<u8>,
}

impl HttpPublisher {
    pub fn new(url_template: &str, format: BodyFormat, timeout: Duration) -> HttpPublisher {
        HttpPublisher {
            url_template: url_template.to_string(),
            format,
            timeout,
            conn: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Publishes one message; returns the response status.
    pub fn publish(&mut self, room: &str, user: &str, content: &str) -> Result<u16, Error> {
        let url = HttpUrl::parse(&expand(&self.url_template, room)).map_err(Error::Config)?;
        let (body, content_type) = match self.format {
            BodyFormat::Json => (
                serde_json::json!({"room": room, "user": user, "content": content}).to_string(),
                "application/json",
            ),
            BodyFormat::Raw => (content.to_string(), "text/plain"),
        };
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            url.target,
            url.host_header(),
            body.len()
        );
        // A kept-alive connection the server has since closed fails on the
        // first write or read: try once more on a fresh one.
        for attempt in 0..2 {
            let reuse = self
                .conn
                .as_ref()
                .is_some_and(|(u, _)| u.connect_addr() == url.connect_addr());
            if !reuse {
                let stream = connect(&url, self.timeout)?;
                self.conn = Some((url.clone(), stream));
            }
            let (_, stream) = self.conn.as_mut().expect("connected above");
            match exchange(stream, request.as_bytes(), &mut self.buf) {
                Ok((status, close)) => {
                    if close {
                        self.conn = None;
                    }
                    return Ok(status);
                }
                Err(e) => {
                    self.conn = None;
                    if attempt == 1 || !reuse {
                        return Err(Error::Io(format!("POST {}: {e}", url.target)));
                    }
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }
}

/// Writes a request and reads its whole response; returns the status and
/// whether the server will close the connection.
fn exchange(stream: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> io::Result<(u16, bool)> {
    stream.write_all(request)?;
    buf.clear();
    let (head, head_len) = loop {
        if let Some(parsed) = parse_response_head(buf).map_err(io::Error::other)? {
            break parsed;
        }
        read_more(stream, buf)?;
    };
    let close = head
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    if head.is_chunked() {
        let mut decoder = ChunkedDecoder::new();
        let mut sink = Vec::new();
        decoder
            .feed(&buf[head_len..], &mut sink)
            .map_err(io::Error::other)?;
        while !decoder.is_done() {
            let from = buf.len();
            read_more(stream, buf)?;
            decoder
                .feed(&buf[from..], &mut sink)
                .map_err(io::Error::other)?;
        }
    } else if let Some(len) = head.content_length() {
        while buf.len() < head_len + len {
            read_more(stream, buf)?;
        }
    } else {
        // Neither length nor chunks: the body runs to the close.
        return Ok((head.status, true));
    }
    Ok((head.status, close))
}

fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk)?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = HttpUrl::parse("http://127.0.0.1:8080/events?room={room}").unwrap();
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, 8080);
        assert_eq!(u.target, "/events?room={room}");
        assert_eq!(u.connect_addr(), "127.0.0.1:8080");
        assert_eq!(u.host_header(), "127.0.0.1:8080");
        let u = HttpUrl::parse("http://example.org").unwrap();
        assert_eq!((u.port, u.target.as_str()), (80, "/"));
        assert_eq!(u.host_header(), "example.org");
        let u = HttpUrl::parse("http://h?x=1").unwrap();
        assert_eq!(u.target, "/?x=1");
        let u = HttpUrl::parse("http://[::1]:9/p").unwrap();
        assert_eq!(u.host, "[::1]");
        assert_eq!(u.connect_addr(), "[::1]:9");
        assert!(HttpUrl::parse("https://h/").is_err());
        assert!(HttpUrl::parse("http://h:x/").is_err());
        assert!(HttpUrl::parse("http:///p").is_err());
        assert_eq!(
            expand("/sub?id={room}&r={room}", "a-1"),
            "/sub?id=a-1&r=a-1"
        );
    }

    #[test]
    fn response_heads() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nrest";
        assert_eq!(parse_response_head(&raw[..20]).unwrap(), None);
        let (head, len) = parse_response_head(raw).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(&raw[len..], b"rest");
        assert_eq!(head.header("content-type"), Some("text/event-stream"));
        assert!(head.is_chunked());
        assert_eq!(head.content_length(), None);
        assert!(parse_response_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn chunked_bodies_in_any_split() {
        let body =
            b"4\r\nWiki\r\n6;ext=1\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\n";
        for split in 1..body.len() {
            let mut d = ChunkedDecoder::new();
            let mut out = Vec::new();
            for part in body.chunks(split) {
                d.feed(part, &mut out).unwrap();
            }
            assert!(d.is_done(), "split {split}");
            assert_eq!(out, b"Wikipedia in \r\n\r\nchunks.", "split {split}");
        }
        let mut d = ChunkedDecoder::new();
        assert!(d.feed(b"zz\r\n", &mut Vec::new()).is_err());
        let mut d = ChunkedDecoder::new();
        assert!(d.feed(b"1\r\nab\r\n", &mut Vec::new()).is_err());
    }
}
