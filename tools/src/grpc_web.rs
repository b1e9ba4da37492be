//! A gRPC-Web subscriber on a raw `TcpStream`, for the load tool: `POST
//! /chat.ChatService/SubscribeMessages` with one framed request, then the
//! chunked body de-chunked and cut into frames as it arrives (each data
//! frame's message handed on as bytes, undecoded, the way the SSE client
//! hands on an event's data); the trailer frame (flag 0x80) ends it. One
//! read costs one syscall; nothing is allocated per message.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as _;
use streamhub::proto::chat;

use super::http::{self, ChunkedDecoder, HttpUrl};
use super::sse::OpenError;

/// An open SubscribeMessages call over gRPC-Web.
pub struct WebStream {
    stream: Arc<TcpStream>,
    chunked: ChunkedDecoder,
    /// Body bytes not yet cut into frames.
    body: Vec<u8>,
    /// Where the next frame starts in `body`.
    start: usize,
    early: Vec<u8>,
    buf: Box<[u8]>,
}

/// The request body: one data frame holding a `SubscribeRequest`.
pub fn subscribe_body(room: &str, user: &str) -> Vec<u8> {
    let mut req = chat::SubscribeRequest::new();
    req.room = room.into();
    req.user = user.into();
    let message = req.write_to_bytes().unwrap_or_default();
    let mut body = vec![0];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    body
}

impl WebStream {
    /// Connects to `base` (the HTTP port's origin), subscribes to `room`
    /// and reads the response head. `timeout` bounds connecting and every
    /// read and write until the head has arrived.
    pub fn open(base: &HttpUrl, room: &str, timeout: Duration) -> Result<WebStream, OpenError> {
        let mut stream = http::connect(base, timeout).map_err(OpenError::Io)?;
        let body = subscribe_body(room, "");
        let mut request = format!(
            "POST /chat.ChatService/SubscribeMessages HTTP/1.1\r\nHost: {}\r\n\
             Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nContent-Length: {}\r\n\r\n",
            base.host_header(),
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        stream.write_all(&request).map_err(OpenError::Io)?;
        let mut buf = vec![0u8; 64 * 1024].into_boxed_slice();
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
        if !head.is_chunked() {
            // Trailers-only: the call was refused.
            let status = head.header("grpc-status").unwrap_or("?").to_string();
            return Err(OpenError::Protocol(format!("grpc-status {status}")));
        }
        stream.set_read_timeout(None).map_err(OpenError::Io)?;
        pending.drain(..len);
        Ok(WebStream {
            stream: Arc::new(stream),
            chunked: ChunkedDecoder::new(),
            body: Vec::new(),
            start: 0,
            early: pending,
            buf,
        })
    }

    /// The socket, shared: another thread can end a blocked read.
    pub fn socket(&self) -> Arc<TcpStream> {
        self.stream.clone()
    }

    /// One read from the socket; `on_message` sees each data frame's
    /// message. `Ok(false)` once the call ended (the trailer frame, or the
    /// server closed).
    pub fn read(&mut self, mut on_message: impl FnMut(&[u8])) -> io::Result<bool> {
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
        if self.start > 0 {
            self.body.drain(..self.start);
            self.start = 0;
        }
        self.chunked
            .feed(&self.buf[..n], &mut self.body)
            .map_err(io::Error::other)?;
        loop {
            let rest = &self.body[self.start..];
            if rest.len() < 5 {
                break;
            }
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            if rest.len() < 5 + len {
                break;
            }
            if rest[0] & 0x80 != 0 {
                return Ok(false);
            }
            on_message(&rest[5..5 + len]);
            self.start += 5 + len;
        }
        Ok(!self.chunked.is_done())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_one_frame_of_a_subscribe_request() {
        let body = subscribe_body("r", "");
        assert_eq!(body[0], 0);
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, body.len() - 5);
        let req = chat::SubscribeRequest::parse_from_bytes(&body[5..]).unwrap();
        assert_eq!(req.room, "r");
    }
}
