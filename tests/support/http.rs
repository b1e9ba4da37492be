//! The one raw HTTP/1.1 client: requests written byte for byte, responses
//! read off the wire, every socket with read and write timeouts.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

use super::Server;

/// Every socket read or write of these clients ends within this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Whatever knows a server's HTTP port: a [`Server`], or the bare port for
/// client threads (a `Server` cannot be shared between threads).
pub trait HttpPort {
    fn http_port(&self) -> u16;
}

impl HttpPort for Server {
    fn http_port(&self) -> u16 {
        self.app.http_port()
    }
}

impl HttpPort for u16 {
    fn http_port(&self) -> u16 {
        *self
    }
}

/// A new connection whose reads and writes time out.
pub fn connect(server: &impl HttpPort) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", server.http_port())).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// One HTTP response as read off the wire.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads a status line and headers.
pub fn read_head(r: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, line.clone()))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').expect("header line");
        headers.push((n.to_string(), v.trim().to_string()));
    }
    Ok(Reply {
        status,
        headers,
        body: Vec::new(),
    })
}

/// Reads one whole response (`head_only`: the answer to a HEAD).
pub fn read_reply(r: &mut impl BufRead, head_only: bool) -> io::Result<Reply> {
    let mut reply = read_head(r)?;
    if head_only {
        return Ok(reply);
    }
    if let Some(len) = reply.header("content-length") {
        let mut body = vec![0; len.parse().unwrap()];
        r.read_exact(&mut body)?;
        reply.body = body;
    } else {
        r.read_to_end(&mut reply.body)?;
    }
    Ok(reply)
}

/// A request head as text, for a server the test plays (bounded).
pub fn read_request_head(r: &mut impl BufRead) -> io::Result<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 || head.len() > 64 * 1024 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if line.trim_end().is_empty() {
            return Ok(head);
        }
        head.push_str(&line);
    }
}

/// Sends raw bytes on a new connection and reads one response.
pub fn exchange(server: &impl HttpPort, raw: &[u8]) -> Reply {
    let mut stream = connect(server);
    stream.write_all(raw).unwrap();
    let mut r = BufReader::new(stream);
    read_reply(&mut r, raw.starts_with(b"HEAD ")).expect("a response")
}

pub fn request(server: &impl HttpPort, method: &str, target: &str) -> Reply {
    let raw = format!("{method} {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    exchange(server, raw.as_bytes())
}

pub fn get(server: &impl HttpPort, target: &str) -> Reply {
    request(server, "GET", target)
}

pub fn post_raw(server: &impl HttpPort, body: &[u8]) -> Reply {
    let mut raw = format!(
        "POST /messages HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    exchange(server, &raw)
}

/// `POST /messages`, which must succeed; its JSON answer.
pub fn post(server: &impl HttpPort, room: &str, user: &str, content: &str) -> Value {
    let body = serde_json::json!({ "room": room, "user": user, "content": content });
    let reply = post_raw(server, body.to_string().as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

/// The server answers normally.
pub fn assert_healthy(server: &impl HttpPort) {
    let reply = get(server, "/healthz");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["status"], "ok");
}
