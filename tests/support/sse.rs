//! The one event-stream client of the tests, parsing by the WHATWG rules
//! line by line, stricter than a browser: a CR anywhere on the wire fails
//! the test (streamhub sends LF only), and each event reports its own `id`
//! field, not the last one seen, so a test can tell which events move the
//! resume position.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use streamhub::hub::Draft;

use super::http::{connect, read_head, HttpPort, Reply};
use super::{wait_until, Server};

#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// This event's `id` field, if it had one.
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Comment(String),
    Retry(u64),
    Event(SseEvent),
}

/// A client of an event stream.
pub struct EventStream {
    reader: BufReader<TcpStream>,
    pub head: Reply,
    id: Option<String>,
    name: String,
    data: Option<String>,
}

impl EventStream {
    /// Sends `GET target` with `Accept: text/event-stream` (and `headers`)
    /// and reads the response head, whatever its status.
    pub fn open(server: &impl HttpPort, target: &str, headers: &[(&str, &str)]) -> EventStream {
        let mut stream = connect(server);
        let mut raw = format!("GET {target} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n");
        for (n, v) in headers {
            raw.push_str(&format!("{n}: {v}\r\n"));
        }
        raw.push_str("\r\n");
        stream.write_all(raw.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        let head = read_head(&mut reader).expect("response head");
        EventStream {
            reader,
            head,
            id: None,
            name: String::new(),
            data: None,
        }
    }

    /// Opens a stream and takes `: connected` and `retry`, after which the
    /// subscription is registered.
    pub fn connected(
        server: &impl HttpPort,
        target: &str,
        headers: &[(&str, &str)],
    ) -> EventStream {
        let mut s = EventStream::open(server, target, headers);
        assert_eq!(s.head.status, 200, "{target}: {:?}", s.head);
        assert_eq!(s.item().unwrap(), Item::Comment("connected".into()));
        assert!(matches!(s.item().unwrap(), Item::Retry(_)));
        s
    }

    /// The socket (to shut down, peek or change its timeouts).
    pub fn socket(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// One line. The format allows CRLF, LF or CR as line ends; streamhub
    /// sends LF only, and a CR anywhere would mean a value broke out of its
    /// field, so it fails the test.
    fn line(&mut self) -> io::Result<String> {
        let mut bytes = Vec::new();
        if self.reader.read_until(b'\n', &mut bytes)? == 0 || bytes.last() != Some(&b'\n') {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        bytes.pop();
        assert!(
            !bytes.contains(&b'\r'),
            "CR on the wire: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The next comment, retry field or dispatched event.
    pub fn item(&mut self) -> io::Result<Item> {
        loop {
            let line = self.line()?;
            if line.is_empty() {
                let name = std::mem::take(&mut self.name);
                if let Some(data) = self.data.take() {
                    let event = if name.is_empty() {
                        "message".into()
                    } else {
                        name
                    };
                    return Ok(Item::Event(SseEvent {
                        id: self.id.take(),
                        event,
                        data,
                    }));
                }
                self.id = None;
                continue;
            }
            if let Some(comment) = line.strip_prefix(':') {
                return Ok(Item::Comment(
                    comment.strip_prefix(' ').unwrap_or(comment).into(),
                ));
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_string();
            match field {
                "event" => self.name = value,
                "data" => match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(&value);
                    }
                    None => self.data = Some(value),
                },
                "id" if !value.contains('\0') => self.id = Some(value),
                "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                    return Ok(Item::Retry(value.parse().unwrap()))
                }
                _ => {}
            }
        }
    }

    /// The next event, skipping comments.
    pub fn event(&mut self) -> SseEvent {
        loop {
            match self.item().expect("next event") {
                Item::Event(e) => return e,
                Item::Comment(_) | Item::Retry(_) => {}
            }
        }
    }

    /// Reads until the server closes the stream; returns the events seen.
    pub fn until_closed(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        loop {
            match self.item() {
                Ok(Item::Event(e)) => events.push(e),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return events,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return events,
                Err(e) => panic!("stream did not close: {e}"),
            }
        }
    }
}

/// A stream's end is noticed at its next write: publishes a probe to `room`
/// until `done` holds for the event streams open, or `timeout` passes.
pub fn probe_until(
    server: &Server,
    room: &str,
    timeout: Duration,
    done: impl Fn(usize) -> bool,
) -> bool {
    let http = server.app.http().unwrap();
    wait_until(timeout, || {
        server
            .app
            .hub()
            .publish(Draft::chat(room, "u", "probe"))
            .unwrap();
        done(http.sse_streams())
    })
}
