//! An event-stream client on a raw `TcpStream`: the WHATWG parsing rules
//! as a pure, incremental [`EventParser`], and [`EventStream`], which opens
//! `GET <url>` and feeds what arrives (de-chunked when the server chunks
//! it) to the parser. The load tool runs thousands of these, one thread
//! each, so a read costs one syscall and parsing allocates nothing per
//! event.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use super::http::{self, ChunkedDecoder, HttpUrl, ResponseHead};

/// One dispatched event, borrowed from the parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// The last event ID buffer at dispatch (it persists across events).
    pub id: &'a [u8],
    /// The event type; `message` when the stream named none.
    pub event: &'a [u8],
    pub data: &'a [u8],
}

/// The parser of the "text/event-stream" format as the WHATWG HTML standard
/// specifies it (section 9.2.6): lines end at CRLF, LF or CR (a CRLF split
/// across two reads counts once); a leading BOM is skipped; `data` lines
/// are joined with LF; an `id` holding NUL is ignored; a blank line
/// dispatches, unless no data arrived.
#[derive(Clone, Debug, Default)]
pub struct EventParser {
    line: Vec<u8>,
    /// The previous chunk ended in CR: a LF at the start of the next one
    /// belongs to it.
    after_cr: bool,
    /// Whether the start of the stream (and a possible BOM) is behind us.
    started: bool,
    data: Vec<u8>,
    event: Vec<u8>,
    last_id: Vec<u8>,
    retry: Option<u64>,
    comments: u64,
}

impl EventParser {
    pub fn new() -> EventParser {
        EventParser::default()
    }

    /// The reconnection time the stream asked for, if any.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Comment lines seen so far.
    pub fn comments(&self) -> u64 {
        self.comments
    }

    /// Feeds bytes as they arrive; `on_event` sees each dispatched event.
    pub fn feed(&mut self, input: &[u8], mut on_event: impl FnMut(Event)) {
        if self.started {
            self.feed_lines(input, &mut on_event);
            return;
        }
        // The BOM may itself arrive split: hold bytes until decided.
        const BOM: &[u8] = b"\xEF\xBB\xBF";
        self.line.extend_from_slice(input);
        if self.line.len() < BOM.len() && BOM.starts_with(&self.line) {
            return;
        }
        self.started = true;
        let held = std::mem::take(&mut self.line);
        let held = held.strip_prefix(BOM).unwrap_or(&held);
        self.feed_lines(held, &mut on_event);
    }

    fn feed_lines<F: FnMut(Event)>(&mut self, mut input: &[u8], on_event: &mut F) {
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = input.strip_prefix(b"\n") {
                input = rest;
            }
        }
        while let Some(end) = input.iter().position(|b| *b == b'\n' || *b == b'\r') {
            if self.line.is_empty() {
                self.process_line(&input[..end], on_event);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&input[..end]);
                self.process_line(&line, on_event);
                line.clear();
                self.line = line;
            }
            let skip = if input[end] == b'\r' {
                match input.get(end + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    None => {
                        self.after_cr = true;
                        1
                    }
                }
            } else {
                1
            };
            input = &input[end + skip..];
        }
        self.line.extend_from_slice(input);
    }

    fn process_line<F: FnMut(Event)>(&mut self, line: &[u8], on_event: &mut F) {
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if line[0] == b':' {
            self.comments += 1;
            return;
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            b"data" => {
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"id" if !value.contains(&0) => {
                self.last_id.clear();
                self.last_id.extend_from_slice(value);
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            }
            _ => {}
        }
    }

    fn dispatch<F: FnMut(Event)>(&mut self, on_event: &mut F) {
        if self.data.is_empty() {
            self.event.clear();
            return;
        }
        self.data.pop();
        let event: &[u8] = if self.event.is_empty() {
            b"message"
        } else {
            &self.event
        };
        on_event(Event {
            id: &self.last_id,
            event,
            data: &self.data,
        });
        self.data.clear();
        self.event.clear();
    }
}

/// Why a stream could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Connecting, writing or reading failed.
    Io(io::Error),
    /// The server answered with something other than 200.
    Status(u16),
    /// The answer was not HTTP.
    Protocol(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Io(e) => write!(f, "{e}"),
            OpenError::Status(s) => write!(f, "HTTP {s}"),
            OpenError::Protocol(m) => f.write_str(m),
        }
    }
}

/// An open event stream.
pub struct EventStream {
    /// Shared with whoever may need to end a blocked read (no `dup`: at
    /// 10,000 streams a second descriptor each would double the count).
    stream: Arc<TcpStream>,
    head: ResponseHead,
    /// Body bytes that came with the head, not yet parsed.
    early: Vec<u8>,
    chunked: Option<ChunkedDecoder>,
    dechunked: Vec<u8>,
    buf: Box<[u8]>,
    pub parser: EventParser,
}

impl EventStream {
    /// Connects, sends `GET` with `Accept: text/event-stream` (and `headers`)
    /// and reads the response head. `timeout` bounds connecting and every
    /// read and write until the head has arrived; reads after it block
    /// without a timeout unless [`EventStream::set_read_timeout`] says so.
    pub fn open(
        url: &HttpUrl,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<EventStream, OpenError> {
        let mut stream = http::connect(url, timeout).map_err(OpenError::Io)?;
        let mut request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n",
            url.target,
            url.host_header()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .map_err(OpenError::Io)?;
        let mut buf = vec![0u8; 16 * 1024].into_boxed_slice();
        let mut pending = Vec::new();
        let (head, len) = loop {
            let n = stream.read(&mut buf).map_err(OpenError::Io)?;
            if n == 0 {
                return Err(OpenError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            pending.extend_from_slice(&buf[..n]);
            if let Some(parsed) =
                http::parse_response_head(&pending).map_err(OpenError::Protocol)?
            {
                break parsed;
            }
        };
        if head.status != 200 {
            return Err(OpenError::Status(head.status));
        }
        stream.set_read_timeout(None).map_err(OpenError::Io)?;
        pending.drain(..len);
        let chunked = head.is_chunked().then(ChunkedDecoder::new);
        Ok(EventStream {
            stream: Arc::new(stream),
            head,
            early: pending,
            chunked,
            dechunked: Vec::new(),
            buf,
            parser: EventParser::new(),
        })
    }

    pub fn head(&self) -> &ResponseHead {
        &self.head
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }

    /// The socket, shared: another thread can end a blocked
    /// [`EventStream::read`] with [`TcpStream::shutdown`].
    pub fn socket(&self) -> Arc<TcpStream> {
        self.stream.clone()
    }

    /// Closes both directions; a thread blocked in `read` sees the end.
    pub fn close(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Whether the server still has the stream open, without blocking (data
    /// waiting to be read counts as open).
    pub fn peek_alive(&self) -> bool {
        if !self.early.is_empty() {
            return true;
        }
        if self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = [0u8; 1];
        let alive = match self.stream.peek(&mut byte) {
            Ok(n) => n > 0,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        };
        alive && self.stream.set_nonblocking(false).is_ok()
    }

    /// One read from the socket, parsed. `Ok(false)` when the server closed
    /// the stream.
    pub fn read(&mut self, on_event: impl FnMut(Event)) -> io::Result<bool> {
        let n = if self.early.is_empty() {
            match (&*self.stream).read(&mut self.buf) {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(e) => return Err(e),
            }
        } else {
            let early = std::mem::take(&mut self.early);
            let n = early.len().min(self.buf.len());
            self.buf[..n].copy_from_slice(&early[..n]);
            self.early = early[n..].to_vec();
            n
        };
        let input = &self.buf[..n];
        match &mut self.chunked {
            None => self.parser.feed(input, on_event),
            Some(decoder) => {
                self.dechunked.clear();
                decoder
                    .feed(input, &mut self.dechunked)
                    .map_err(io::Error::other)?;
                self.parser.feed(&self.dechunked, on_event);
                if decoder.is_done() {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Owned = (String, String, String);

    fn parse_in_pieces(stream: &[u8], piece: usize) -> (Vec<Owned>, EventParser) {
        let mut parser = EventParser::new();
        let mut events = Vec::new();
        for part in stream.chunks(piece.max(1)) {
            parser.feed(part, |e| {
                let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                events.push((s(e.id), s(e.event), s(e.data)));
            });
        }
        (events, parser)
    }

    fn owned(id: &str, event: &str, data: &str) -> Owned {
        (id.into(), event.into(), data.into())
    }

    #[test]
    fn whatwg_examples_in_every_split() {
        let stream = b"\xEF\xBB\xBF: comment\r\nretry: 3000\r\n\r\ndata: first\rdata:second\r\r\
            id: 7\nevent: chat\ndata\ndata:  two spaces\n\n\
            data: no dispatch without blank line";
        for piece in 1..=stream.len() {
            let (events, parser) = parse_in_pieces(stream, piece);
            assert_eq!(
                events,
                vec![
                    owned("", "message", "first\nsecond"),
                    owned("7", "chat", "\n two spaces"),
                ],
                "piece {piece}"
            );
            assert_eq!(parser.retry(), Some(3000));
            assert_eq!(parser.comments(), 1);
        }
    }

    #[test]
    fn id_persists_and_nul_ids_and_empty_data_are_ignored() {
        let stream = b"id: 1\ndata: a\n\ndata: b\n\nid: x\0y\ndata: c\n\nevent: e\n\ndata: d\n\nid\ndata: e\n\n";
        let (events, _) = parse_in_pieces(stream, stream.len());
        assert_eq!(
            events,
            vec![
                owned("1", "message", "a"),
                owned("1", "message", "b"),
                owned("1", "message", "c"),
                // The event type of a dispatch with no data is dropped.
                owned("1", "message", "d"),
                owned("", "message", "e"),
            ]
        );
    }

    #[test]
    fn crlf_split_across_reads_is_one_line_end() {
        let (events, _) = parse_in_pieces(b"data: a\r\n\r\ndata: b\r\r", 8);
        assert_eq!(
            events,
            vec![owned("", "message", "a"), owned("", "message", "b")]
        );
    }
}
