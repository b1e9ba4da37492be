//! One stored message as bytes: pure encoding and decoding, no files.
//!
//! A record is `len: u32 LE | crc: u32 LE | payload`, where `crc` is the
//! CRC-32 (IEEE, `crc32fast`) of the payload and `len` its length. A `len`
//! of 0 is never written: it marks the unwritten (preallocated, zeroed)
//! rest of a segment. The payload (format 1):
//!
//! ```text
//! kind u8 | seq u64 | micros since the epoch i64 | room u16+bytes
//! | id u16+bytes | user u16+bytes | content u32+bytes
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::hub::{Message, MessageKind};

/// Bytes before a record's payload.
pub const HEADER: usize = 8;
/// Bytes of a payload's fixed fields.
const FIXED: usize = 1 + 8 + 8 + 2 + 2 + 2 + 4;

/// What a look at the bytes at some offset found.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// A whole, intact record of `len` bytes (header included).
    Record(Decoded, usize),
    /// Zeroes: nothing was ever written here.
    End,
    /// A record cut short, or bytes that fail their checksum or do not
    /// parse: what a crash in the middle of a write leaves.
    Torn(&'static str),
}

/// A decoded record, before it becomes a hub [`Message`].
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    pub kind: MessageKind,
    pub seq: u64,
    pub micros: i64,
    pub room: String,
    pub id: String,
    pub user: String,
    pub content: String,
}

impl Decoded {
    pub fn into_message(self) -> Message {
        let timestamp = if self.micros >= 0 {
            UNIX_EPOCH + Duration::from_micros(self.micros as u64)
        } else {
            UNIX_EPOCH
        };
        Message::stored(
            self.id,
            self.seq,
            &self.room,
            self.user,
            self.content,
            self.kind,
            timestamp,
        )
    }

    pub fn timestamp(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.micros.max(0) as u64)
    }
}

/// The size `message` takes as a record, header included.
pub fn size(message: &Message) -> usize {
    HEADER
        + FIXED
        + message.room.len()
        + message.id.len()
        + message.user.len()
        + message.content.len()
}

fn kind_byte(kind: MessageKind) -> u8 {
    match kind {
        MessageKind::Chat => 0,
        MessageKind::Join => 1,
        MessageKind::Leave => 2,
        MessageKind::System => 3,
    }
}

fn kind_of(byte: u8) -> Option<MessageKind> {
    Some(match byte {
        0 => MessageKind::Chat,
        1 => MessageKind::Join,
        2 => MessageKind::Leave,
        3 => MessageKind::System,
        _ => return None,
    })
}

/// Appends `message` as one record to `out`. Room, id and user are short
/// by the hub's rules (64, ~24 and 256 bytes); content is below the
/// message limit (at most 64 MiB), so the length prefixes always fit.
pub fn encode(message: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.push(kind_byte(message.kind));
    out.extend_from_slice(&message.seq.to_le_bytes());
    let micros = message
        .timestamp
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    out.extend_from_slice(&micros.to_le_bytes());
    for short in [&*message.room, message.id.as_str(), message.user.as_str()] {
        out.extend_from_slice(&(short.len() as u16).to_le_bytes());
        out.extend_from_slice(short.as_bytes());
    }
    out.extend_from_slice(&(message.content.len() as u32).to_le_bytes());
    out.extend_from_slice(message.content.as_bytes());
    let payload = &out[start + HEADER..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Looks at the record starting at `bytes[0]`; `bytes` runs to the end of
/// what was read (the segment's end).
pub fn decode(bytes: &[u8]) -> Found {
    if bytes.len() < HEADER {
        return if bytes.iter().all(|&b| b == 0) {
            Found::End
        } else {
            Found::Torn("a header cut short")
        };
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if len == 0 {
        return if crc == 0 {
            Found::End
        } else {
            Found::Torn("a zero length with a checksum")
        };
    }
    let Some(payload) = bytes.get(HEADER..HEADER + len) else {
        return Found::Torn("a record cut short");
    };
    if crc32fast::hash(payload) != crc {
        return Found::Torn("a checksum mismatch");
    }
    match parse(payload) {
        Some(d) => Found::Record(d, HEADER + len),
        None => Found::Torn("a payload that does not parse"),
    }
}

fn parse(p: &[u8]) -> Option<Decoded> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = p.get(at..at + n)?;
        at += n;
        Some(s)
    };
    let kind = kind_of(take(1)?[0])?;
    let seq = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let micros = i64::from_le_bytes(take(8)?.try_into().ok()?);
    let mut text = |wide: bool| -> Option<String> {
        let n = if wide {
            u32::from_le_bytes(take(4)?.try_into().ok()?) as usize
        } else {
            u16::from_le_bytes(take(2)?.try_into().ok()?) as usize
        };
        String::from_utf8(take(n)?.to_vec()).ok()
    };
    let room = text(false)?;
    let id = text(false)?;
    let user = text(false)?;
    let content = text(true)?;
    if seq == 0 || at != p.len() {
        return None;
    }
    Some(Decoded {
        kind,
        seq,
        micros,
        room,
        id,
        user,
        content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(seq: u64, content: &str) -> Message {
        Message::stored(
            format!("msg_{seq}"),
            seq,
            "room-1",
            "ann".into(),
            content.into(),
            MessageKind::Chat,
            UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
        )
    }

    #[test]
    fn a_record_decodes_to_the_message_it_was_made_from() {
        let m = message(41, "héllo");
        let mut out = Vec::new();
        encode(&m, &mut out);
        assert_eq!(out.len(), size(&m));
        let Found::Record(d, len) = decode(&out) else {
            panic!("not a record")
        };
        assert_eq!(len, out.len());
        let back = d.into_message();
        assert_eq!(
            (back.id.as_str(), back.seq, &*back.room, back.user.as_str()),
            ("msg_41", 41, "room-1", "ann")
        );
        assert_eq!(
            (back.content.as_str(), back.kind),
            ("héllo", MessageKind::Chat)
        );
        assert_eq!(back.timestamp, m.timestamp);
    }

    #[test]
    fn zeroes_are_the_end_and_a_cut_or_flipped_record_is_torn() {
        assert_eq!(decode(&[0; 100]), Found::End);
        assert_eq!(decode(&[0; 3]), Found::End);
        let mut out = Vec::new();
        encode(&message(1, "abc"), &mut out);
        for cut in 1..out.len() {
            assert!(
                matches!(decode(&out[..cut]), Found::Torn(_)),
                "cut at {cut}"
            );
        }
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x40;
            assert!(!matches!(decode(&bad), Found::Record(..)), "flip at {i}");
        }
    }

    proptest! {
        #[test]
        fn any_message_round_trips(
            seq in 1u64..u64::MAX,
            room in "[a-z0-9._-]{1,64}",
            user in ".{0,40}",
            content in ".{1,300}",
            kind in 0u8..4,
        ) {
            let m = Message::stored(
                format!("msg_{seq}"), seq, &room, user.clone(), content.clone(),
                kind_of(kind).unwrap(), UNIX_EPOCH + Duration::from_micros(seq % (1 << 50)),
            );
            let mut out = vec![9, 9];
            encode(&m, &mut out);
            let Found::Record(d, len) = decode(&out[2..]) else { panic!("not a record") };
            prop_assert_eq!(len, size(&m));
            prop_assert_eq!((d.seq, d.room, d.user, d.content), (seq, room, user, content));
        }
    }
}
