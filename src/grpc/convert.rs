//! Conversions between hub values and the generated `chat` protobuf types:
//! the only place both meet. (Errors become statuses in `call.rs`.)

use std::time::{SystemTime, UNIX_EPOCH};

use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::MessageField;

use crate::hub::{Message, MessageKind};
use crate::proto::chat;

pub fn timestamp(t: SystemTime) -> MessageField<Timestamp> {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    MessageField::some(ts)
}

pub fn kind_to_proto(kind: MessageKind) -> chat::MessageType {
    match kind {
        MessageKind::Chat => chat::MessageType::CHAT,
        MessageKind::Join => chat::MessageType::JOIN,
        MessageKind::Leave => chat::MessageType::LEAVE,
        MessageKind::System => chat::MessageType::SYSTEM,
    }
}

pub fn to_proto(m: &Message) -> chat::Message {
    let mut out = chat::Message::new();
    out.id = m.id.clone();
    out.user = m.user.clone();
    out.content = m.content.clone();
    out.room = m.room.to_string();
    out.timestamp = timestamp(m.timestamp);
    out.type_ = kind_to_proto(m.kind).into();
    out
}

/// A message from the server itself (welcome, echo, heartbeat, notices).
pub fn system_message(id: String, user: &str, room: &str, content: String) -> chat::Message {
    let mut out = chat::Message::new();
    out.id = id;
    out.user = user.to_string();
    out.content = content;
    out.room = room.to_string();
    out.timestamp = timestamp(SystemTime::now());
    out.type_ = chat::MessageType::SYSTEM.into();
    out
}

/// A hub notice as gRPC clients get it: a SYSTEM message whose id is
/// `system_{key}` (not a room message's `msg_N`, so it is no position to
/// resume from).
pub fn notice_message(room: &str, notice: &crate::hub::Notice) -> chat::Message {
    system_message(
        format!("system_{}", notice.key),
        "System",
        room,
        notice.text.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Enum;

    #[test]
    fn kinds_keep_the_proto_enum_values() {
        let pairs = [
            (MessageKind::Chat, 0),
            (MessageKind::Join, 1),
            (MessageKind::Leave, 2),
            (MessageKind::System, 3),
        ];
        for (kind, value) in pairs {
            assert_eq!(kind_to_proto(kind).value(), value);
        }
    }
}
