//! What a SubscribeMessages stream writes: hub messages encoded once as
//! `chat.Message` and shared by every gRPC subscriber (the first subscriber
//! to send one encodes it; the rest copy the bytes), or a message of the
//! server's own (welcome, shutdown notice). The HTTP/2 layer queues a
//! shared message as it is and writes [`shared_bytes`] behind its gRPC
//! prefix: no copy per subscriber until the bytes go into the write.

use std::sync::Arc;

use protobuf::Message as _;

use super::convert::to_proto;
use crate::hub::{Message, Protocol};
use crate::proto::chat;

/// A hub message as `chat.Message` bytes (registered with the hub, which
/// encodes each message once when it has gRPC subscribers).
pub fn encode(m: &Message) -> Vec<u8> {
    to_proto(m).write_to_bytes().unwrap_or_default()
}

/// The shared encoding of a hub message, made by the first who asks.
pub fn shared_bytes(m: &Message) -> &[u8] {
    m.encoded(Protocol::Grpc, encode)
}

pub enum Outbound {
    Shared(Arc<Message>),
    Own(chat::Message),
}
