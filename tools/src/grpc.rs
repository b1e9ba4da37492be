//! gRPC of the load tool, on streamhub's blocking h2c client
//! ([`streamhub::grpc::h2::client`]): a [`Channel`] is one TCP connection
//! with one reader thread, so a connection of its own is just another
//! `Channel::connect`. Here: connections that come back after a loss
//! (grpcio's did on their own), status codes by name, the requests, and
//! the content of a received `chat.Message` read without decoding it.

use std::time::Duration;

use parking_lot::Mutex;

use streamhub::grpc::call::{Code, Status};
use streamhub::grpc::h2::client::{CallOptions, Channel};
use streamhub::proto::chat;

pub use streamhub::grpc::h2::client::chat_paths;

/// The largest message the load tool accepts from a server (as it did
/// with grpcio).
pub const MAX_MESSAGE: usize = 64 << 20;

/// A connection of its own to `server`, within `timeout`.
pub fn connect(server: &str, timeout: Duration) -> Result<Channel, Status> {
    Channel::connect(server, timeout).map_err(|e| {
        Status::new(
            Code::Unavailable,
            format!("cannot connect to {server}: {e}"),
        )
    })
}

/// File descriptors of one [`Channel`]: its socket and two duplicates
/// (the writer's and the one that shuts it down), for the fd warnings.
pub const FDS_PER_CONNECTION: usize = 3;
/// [`connect_many`] stops trying after this many failures in a row.
const FAILURES_TO_GIVE_UP: usize = 3;

/// `n` connections of their own, one after the other (a burst of
/// thousands would overflow the server's accept backlog); `each` is
/// called before each. One that fails is the reason; after
/// [`FAILURES_TO_GIVE_UP`] failures in a row the rest are not tried (a
/// server that accepts no more would cost a timeout each).
pub fn connect_many(
    server: &str,
    timeout: Duration,
    n: usize,
    mut each: impl FnMut(usize),
) -> Vec<Result<Channel, String>> {
    let mut failed_in_a_row = 0;
    let mut last_error = String::new();
    (0..n)
        .map(|k| {
            if failed_in_a_row >= FAILURES_TO_GIVE_UP {
                return Err(format!(
                    "not tried after {FAILURES_TO_GIVE_UP} failures in a row: {last_error}"
                ));
            }
            each(k);
            let result = connect(server, timeout).map_err(|s| s.message);
            match &result {
                Ok(_) => failed_in_a_row = 0,
                Err(why) => {
                    failed_in_a_row += 1;
                    last_error = why.clone();
                }
            }
            result
        })
        .collect()
}

/// One connection slot that reconnects on the next call after the
/// connection was lost (the server closed it, a GOAWAY): calls in flight
/// then fail, later ones go on, as with grpcio's channels. Clones of the
/// [`Channel`] it hands out share the connection.
pub struct Connection {
    server: String,
    timeout: Duration,
    current: Mutex<Option<Channel>>,
}

impl Connection {
    /// Not connected yet: the first [`Connection::channel`] connects.
    pub fn new(server: &str, timeout: Duration) -> Connection {
        Connection {
            server: server.to_string(),
            timeout,
            current: Mutex::new(None),
        }
    }

    /// The connection, made again if it is gone.
    pub fn channel(&self) -> Result<Channel, Status> {
        let mut current = self.current.lock();
        if let Some(channel) = current.as_ref().filter(|c| !c.is_closed()) {
            return Ok(channel.clone());
        }
        *current = None;
        let channel = connect(&self.server, self.timeout)?;
        *current = Some(channel.clone());
        Ok(channel)
    }
}

/// Call options of the load tool: `timeout` as the call's deadline (none
/// for subscriptions, which last the run) and [`MAX_MESSAGE`].
pub fn options(timeout: Option<Duration>) -> CallOptions {
    CallOptions {
        timeout,
        ..CallOptions::default()
    }
    .max_message(MAX_MESSAGE)
}

/// The name of a failed call's status (`UNAVAILABLE`), as the reports
/// count errors.
pub fn error_name(status: &Status) -> String {
    status.code.name().to_string()
}

pub fn send_request(room: &str, user: &str, content: String) -> chat::SendMessageRequest {
    let mut req = chat::SendMessageRequest::new();
    req.room = room.to_string();
    req.user = user.to_string();
    req.content = content;
    req
}

pub fn subscribe_request(room: &str, user: &str) -> chat::SubscribeRequest {
    let mut req = chat::SubscribeRequest::new();
    req.room = room.to_string();
    req.user = user.to_string();
    req
}

/// A message of strings, encoded.
pub fn encode(message: &impl protobuf::Message) -> Vec<u8> {
    message
        .write_to_bytes()
        .expect("a message of strings always encodes")
}

/// A SendMessage request as `h2load` sends it in a DATA frame: the gRPC
/// length-prefixed message (flag byte 0: not compressed, then the length as
/// four big-endian bytes, then the protobuf bytes).
pub fn framed_send_request(room: &str, user: &str, content: String) -> Vec<u8> {
    let body = encode(&send_request(room, user, content));
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Field number of `content` in `chat.Message`.
const CONTENT_FIELD: u64 = 3;

/// The `content` of an encoded `chat.Message`, found by walking its
/// top-level fields instead of decoding all of them (id, user, room and
/// timestamp would be allocated and dropped on every delivery). As a
/// decoder would, the last occurrence wins; `None` when the bytes are not
/// a well-formed message or carry no content.
pub fn message_content(bytes: &[u8]) -> Option<&[u8]> {
    let mut at = 0;
    let mut content = None;
    while at < bytes.len() {
        let key = varint(bytes, &mut at)?;
        match key & 7 {
            0 => {
                varint(bytes, &mut at)?;
            }
            1 => at = at.checked_add(8)?,
            2 => {
                let len = usize::try_from(varint(bytes, &mut at)?).ok()?;
                let end = at.checked_add(len)?;
                if key >> 3 == CONTENT_FIELD {
                    content = Some(bytes.get(at..end)?);
                }
                at = end;
            }
            5 => at = at.checked_add(4)?,
            _ => return None,
        }
        if at > bytes.len() {
            return None;
        }
    }
    content
}

/// A base-128 varint at `*at`, which moves past it.
fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_request_is_prefix_plus_protobuf() {
        let framed = framed_send_request("r", "u", "hi".into());
        // Fields 1 (user), 2 (content), 3 (room) as length-delimited strings.
        let body = [0x0a, 1, b'u', 0x12, 2, b'h', b'i', 0x1a, 1, b'r'];
        assert_eq!(framed[0], 0);
        assert_eq!(&framed[1..5], &(body.len() as u32).to_be_bytes());
        assert_eq!(&framed[5..], &body);
    }

    #[test]
    fn error_names() {
        let status = Status::new(Code::ResourceExhausted, "full");
        assert_eq!(error_name(&status), "RESOURCE_EXHAUSTED");
        assert_eq!(
            error_name(&Status::new(Code::Unavailable, "")),
            "UNAVAILABLE"
        );
    }

    #[test]
    fn content_of_an_encoded_message() {
        let mut m = chat::Message::new();
        m.id = "id-1".into();
        m.user = "someone".into();
        m.content = "x".repeat(300);
        m.room = "room".into();
        m.type_ = chat::MessageType::SYSTEM.into();
        let mut t = protobuf::well_known_types::timestamp::Timestamp::new();
        t.seconds = 1_700_000_000;
        t.nanos = 123;
        m.timestamp = protobuf::MessageField::some(t);
        let bytes = encode(&m);
        assert_eq!(message_content(&bytes), Some(m.content.as_bytes()));

        // No content: proto3 leaves the empty string out.
        m.content.clear();
        assert_eq!(message_content(&encode(&m)), None);
        // The last occurrence wins, as when decoding.
        let mut twice = encode(&send_request("", "", String::new()));
        twice.extend_from_slice(&[0x1a, 1, b'a', 0x1a, 2, b'b', b'c']);
        assert_eq!(message_content(&twice), Some(&b"bc"[..]));
        // Cut short, or a field of an unknown wire type: not a message.
        let bytes = encode(&chat::Message {
            content: "abc".into(),
            ..Default::default()
        });
        assert_eq!(message_content(&bytes[..bytes.len() - 1]), None);
        assert_eq!(message_content(&[0x1f]), None);
        assert_eq!(message_content(&[0x1a, 0xff]), None);
        assert_eq!(message_content(&[]), None);
    }
}
