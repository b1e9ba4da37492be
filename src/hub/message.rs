//! The values the hub deals in: messages (as offered and as accepted),
//! their kinds, the front doors they come through, why a subscription
//! ended, and the naming rules every front door shares.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use crate::error::Error;

/// The room used when a request names none.
pub const DEFAULT_ROOM: &str = "default";
/// Longest accepted room name, in bytes.
pub const MAX_ROOM_NAME: usize = 64;
/// Longest accepted user name, in bytes.
pub const MAX_USER_NAME: usize = 256;
/// What every stream's last notice and every refusal during shutdown say.
pub const SHUTDOWN_NOTICE: &str = "server shutting down";
/// Most messages a stream thread takes from its queue for one write: bounds
/// the time between its checks for cancellation and close reasons.
pub const MAX_BURST: usize = 256;

/// The user-name rule of every front door (empty is allowed here; a
/// publisher must name one, see [`Hub::validate`]).
pub fn check_user(user: &str) -> Result<(), Error> {
    if user.len() > MAX_USER_NAME {
        return Err(Error::InvalidArgument(format!(
            "user is longer than {MAX_USER_NAME} bytes"
        )));
    }
    Ok(())
}

/// What kind of message this is; the values match `chat.MessageType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Chat,
    Join,
    Leave,
    System,
}

impl MessageKind {
    /// The lower-case name used as the SSE `event:` and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Chat => "chat",
            MessageKind::Join => "join",
            MessageKind::Leave => "leave",
            MessageKind::System => "system",
        }
    }

    pub fn parse(name: &str) -> Option<MessageKind> {
        match name {
            "chat" => Some(MessageKind::Chat),
            "join" => Some(MessageKind::Join),
            "leave" => Some(MessageKind::Leave),
            "system" => Some(MessageKind::System),
            _ => None,
        }
    }
}

/// An accepted message. Shared by every subscriber through an `Arc`.
pub struct Message {
    /// Unique across rooms; what the sender is told and subscribers see.
    pub id: String,
    /// Position in its room: 1, 2, 3, ...
    pub seq: u64,
    pub room: Arc<str>,
    pub user: String,
    pub content: String,
    pub kind: MessageKind,
    pub timestamp: SystemTime,
    /// The message's encoding per [`Protocol`], made once for all its
    /// subscribers.
    pub(super) encoded: [OnceLock<Box<[u8]>>; 2],
}

/// A message's id: `msg_N`, N from one counter shared by every room.
pub fn message_id(n: u64) -> String {
    format!("msg_{n}")
}

/// N of a message id `msg_N`; `None` for anything else.
pub fn id_number(id: &str) -> Option<u64> {
    id.strip_prefix("msg_")?.parse().ok()
}

impl Message {
    /// A message as it was accepted earlier (read back from the journal).
    pub fn stored(
        id: String,
        seq: u64,
        room: &str,
        user: String,
        content: String,
        kind: MessageKind,
        timestamp: SystemTime,
    ) -> Message {
        Message {
            id,
            seq,
            room: Arc::from(room),
            user,
            content,
            kind,
            timestamp,
            encoded: Default::default(),
        }
    }

    /// The message's bytes for `protocol`, made by `encode` the first time
    /// any subscriber asks and shared by all the others.
    pub fn encoded(&self, protocol: Protocol, encode: impl FnOnce(&Message) -> Vec<u8>) -> &[u8] {
        self.encoded[protocol as usize].get_or_init(|| encode(self).into_boxed_slice())
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("seq", &self.seq)
            .field("room", &self.room)
            .field("user", &self.user)
            .field("kind", &self.kind)
            .field("content_len", &self.content.len())
            .finish()
    }
}

/// A message as a client offers it, before validation.
#[derive(Clone, Debug)]
pub struct Draft {
    pub room: String,
    pub user: String,
    pub content: String,
    pub kind: MessageKind,
}

impl Draft {
    /// A CHAT draft; owned strings are moved in, not copied.
    pub fn chat(
        room: impl Into<String>,
        user: impl Into<String>,
        content: impl Into<String>,
    ) -> Draft {
        Draft {
            room: room.into(),
            user: user.into(),
            content: content.into(),
            kind: MessageKind::Chat,
        }
    }
}

/// Which front door a subscriber came through: for metrics, and the wire
/// format whose encoding is cached on each message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc = 0,
    Sse = 1,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Grpc, Protocol::Sse];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Sse => "sse",
        }
    }
}

/// Why a subscription ended. Logged with the stream and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client went away, cancelled, or ended the stream itself.
    ClientClosed = 0,
    /// Its queue filled up: it did not keep up with the room.
    SlowConsumer = 1,
    /// The server is stopping.
    Shutdown = 2,
    /// The client's deadline passed.
    DeadlineExceeded = 3,
    /// Writing to the client failed or timed out.
    WriteFailed = 4,
    /// The client's token expired: it may come back with a fresh one.
    TokenExpired = 5,
}

impl CloseReason {
    pub const ALL: [CloseReason; 6] = [
        CloseReason::ClientClosed,
        CloseReason::SlowConsumer,
        CloseReason::Shutdown,
        CloseReason::DeadlineExceeded,
        CloseReason::WriteFailed,
        CloseReason::TokenExpired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Shutdown => "shutdown",
            CloseReason::DeadlineExceeded => "deadline_exceeded",
            CloseReason::WriteFailed => "write_failed",
            CloseReason::TokenExpired => "token_expired",
        }
    }

    /// 0 means "no reason yet" in [`SubscriberState`].
    pub(super) fn to_state(self) -> u8 {
        self as u8 + 1
    }

    pub(super) fn from_state(v: u8) -> Option<CloseReason> {
        CloseReason::ALL.into_iter().find(|r| r.to_state() == v)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a room name and maps "" to [`DEFAULT_ROOM`].
pub fn normalize_room(room: &str) -> Result<&str, Error> {
    if room.is_empty() {
        return Ok(DEFAULT_ROOM);
    }
    if room.len() > MAX_ROOM_NAME {
        return Err(Error::InvalidArgument(format!(
            "room name is longer than {MAX_ROOM_NAME} bytes"
        )));
    }
    if !room
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(Error::InvalidArgument(
            "room name may only contain A-Z, a-z, 0-9, '.', '_' and '-'".into(),
        ));
    }
    Ok(room)
}
