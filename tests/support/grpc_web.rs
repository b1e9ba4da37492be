//! The one gRPC-Web client of the Rust tests, over a raw HTTP/1.1 socket
//! (with read and write timeouts): a request in either mode, the response
//! head, then its frames as they arrive, chunk by chunk. The browser and
//! Node tests use a real client library (Connect-ES); this one can also
//! send what no library would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use base64::Engine as _;
use streamhub::grpc::call::{Code, Status};

use super::http::{connect, read_head, HttpPort, Reply};

/// One frame of a response body.
#[derive(Debug, PartialEq)]
pub enum Frame {
    Message(Vec<u8>),
    /// The trailer frame, parsed: lower-case names.
    Trailer(Vec<(String, String)>),
}

/// A data frame holding `message`.
pub fn frame(message: &impl protobuf::Message) -> Vec<u8> {
    let bytes = message.write_to_bytes().unwrap();
    let mut out = vec![0];
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&bytes);
    out
}

/// A POST of `body` to `/chat.ChatService/<method>` with `content_type`
/// and `extra` header lines (each ending in CRLF).
pub fn raw_request(method: &str, content_type: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST /chat.ChatService/{method} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n\
         X-Grpc-Web: 1\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

/// A response being read: its head, then frames.
pub struct WebResponse {
    pub head: Reply,
    reader: BufReader<TcpStream>,
    text: bool,
    chunked: bool,
    /// Body bytes not yet made into frames (decoded, in text mode).
    buf: Vec<u8>,
    /// The body has ended.
    done: bool,
}

impl WebResponse {
    /// Sends `raw` on a new connection and reads the response head.
    pub fn send(server: &impl HttpPort, raw: &[u8]) -> WebResponse {
        let mut stream = connect(server);
        stream.write_all(raw).unwrap();
        WebResponse::read(stream)
    }

    /// Reads a response head from `stream`.
    pub fn read(stream: TcpStream) -> WebResponse {
        let mut reader = BufReader::new(stream);
        let head = read_head(&mut reader).expect("a response head");
        let text = head
            .header("content-type")
            .is_some_and(|t| t.contains("grpc-web-text"));
        let chunked = head
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        let mut response = WebResponse {
            head,
            reader,
            text,
            chunked,
            buf: Vec::new(),
            done: false,
        };
        if !response.chunked {
            let len: usize = response
                .head
                .header("content-length")
                .expect("a length or chunks")
                .parse()
                .unwrap();
            let mut body = vec![0; len];
            response.reader.read_exact(&mut body).unwrap();
            response.take(body);
            response.done = true;
        }
        response
    }

    fn take(&mut self, bytes: Vec<u8>) {
        if self.text {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(&bytes)
                .expect("each chunk is base64 on its own");
            self.buf.extend(decoded);
        } else {
            self.buf.extend(bytes);
        }
    }

    /// Reads one chunk; false at the body's end.
    fn read_chunk(&mut self) -> bool {
        if self.done {
            return false;
        }
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("a chunk size line");
        let size = usize::from_str_radix(line.trim(), 16)
            .unwrap_or_else(|_| panic!("chunk size line {line:?}"));
        let mut chunk = vec![0; size + 2];
        self.reader.read_exact(&mut chunk).expect("a whole chunk");
        assert_eq!(&chunk[size..], b"\r\n", "a chunk ends with CRLF");
        chunk.truncate(size);
        if size == 0 {
            self.done = true;
            return false;
        }
        self.take(chunk);
        true
    }

    /// The next frame; `None` at the end of the body.
    pub fn frame(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() >= 5 + len {
                    let flag = self.buf[0];
                    let payload = self.buf[5..5 + len].to_vec();
                    self.buf.drain(..5 + len);
                    return Some(match flag {
                        0 => Frame::Message(payload),
                        0x80 => Frame::Trailer(parse_trailer(&payload)),
                        other => panic!("unexpected frame flag {other:#x}"),
                    });
                }
            }
            if !self.read_chunk() {
                assert!(self.buf.is_empty(), "the body ended inside a frame");
                return None;
            }
        }
    }

    /// The next message, decoded; the status if the call ended instead.
    pub fn message<T: protobuf::Message>(&mut self) -> Result<T, Status> {
        match self.frame() {
            Some(Frame::Message(bytes)) => Ok(T::parse_from_bytes(&bytes).unwrap()),
            Some(Frame::Trailer(t)) => Err(status_of(&t)),
            None => Err(self.status()),
        }
    }

    /// How the call ended: the trailer frame (reading up to it), or the
    /// head of a trailers-only answer. Checks the body ends after it.
    pub fn finish(mut self) -> Status {
        if !self.chunked && self.buf.is_empty() {
            return self.status();
        }
        loop {
            match self.frame() {
                Some(Frame::Message(_)) => {}
                Some(Frame::Trailer(t)) => {
                    assert_eq!(self.frame(), None, "the trailer frame is the last");
                    return status_of(&t);
                }
                None => return self.status(),
            }
        }
    }

    /// The status in the head (trailers-only).
    pub fn status(&self) -> Status {
        let headers: Vec<(String, String)> = self
            .head
            .headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .collect();
        status_of(&headers)
    }
}

fn parse_trailer(block: &[u8]) -> Vec<(String, String)> {
    let text = std::str::from_utf8(block).expect("trailers are text");
    assert!(text.ends_with("\r\n"), "{text:?}");
    text.split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').expect("name: value");
            (n.to_string(), v.trim().to_string())
        })
        .collect()
}

fn status_of(headers: &[(String, String)]) -> Status {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let code = get("grpc-status")
        .unwrap_or_else(|| panic!("no grpc-status in {headers:?}"))
        .parse()
        .unwrap();
    let message =
        streamhub::grpc::h2::grpc::percent_decode(get("grpc-message").unwrap_or("").as_bytes());
    Status::new(Code::from_number(code), message)
}

/// A whole unary call in binary mode: the response or the status.
pub fn unary<Resp: protobuf::Message>(
    server: &impl HttpPort,
    method: &str,
    request: &impl protobuf::Message,
) -> Result<Resp, Status> {
    let raw = raw_request(method, "application/grpc-web+proto", "", &frame(request));
    let mut response = WebResponse::send(server, &raw);
    assert_eq!(response.head.status, 200);
    let first = response.message::<Resp>();
    match first {
        Ok(resp) => {
            let status = response.finish();
            assert_eq!(status.code, Code::Ok, "{status:?}");
            Ok(resp)
        }
        Err(st) => Err(st),
    }
}
