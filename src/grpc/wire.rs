//! What a SubscribeMessages stream writes: hub messages encoded once as
//! `chat.Message` and shared by every gRPC subscriber (the first subscriber
//! to send one encodes it; the rest copy the bytes), or a message of the
//! server's own (welcome, shutdown notice). build.rs registers this type as
//! the method's server-side response type.

use std::sync::Arc;

use grpcio::{GrpcSlice, MessageReader};
use protobuf::Message as _;

use super::convert::to_proto;
use crate::hub::{Message, Protocol};
use crate::proto::chat;

/// A hub message as `chat.Message` bytes (registered with the hub, which
/// encodes each message once when it has gRPC subscribers).
pub fn encode(m: &Message) -> Vec<u8> {
    to_proto(m).write_to_bytes().unwrap_or_default()
}

pub enum Outbound {
    Shared(Arc<Message>),
    Own(chat::Message),
}

impl Outbound {
    /// The grpcio serializer: a copy of the cached encoding.
    pub fn ser(out: &Outbound, buf: &mut GrpcSlice) -> grpcio::Result<()> {
        match out {
            Outbound::Shared(m) => {
                let bytes = m.encoded(Protocol::Grpc, encode);
                *buf = GrpcSlice::from(bytes);
                Ok(())
            }
            Outbound::Own(m) => grpcio::pb_ser(m, buf),
        }
    }

    /// Never called: the server only sends this type.
    pub fn de(_: MessageReader) -> grpcio::Result<Outbound> {
        Err(grpcio::Error::Codec("Outbound is never received".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Draft, Hub, HubConfig};

    #[test]
    fn shared_encoding_decodes_to_the_same_message() {
        let hub = Hub::new(HubConfig::default());
        let m = hub.publish(Draft::chat("r", "u", "hello")).unwrap();
        let mut buf = GrpcSlice::default();
        Outbound::ser(&Outbound::Shared(m.clone()), &mut buf).unwrap();
        let decoded = chat::Message::parse_from_bytes(buf.as_slice()).unwrap();
        assert_eq!(decoded, to_proto(&m));
        // The second subscriber gets the cached bytes.
        let mut again = GrpcSlice::default();
        Outbound::ser(&Outbound::Shared(m), &mut again).unwrap();
        assert_eq!(again.as_slice(), buf.as_slice());
    }
}
