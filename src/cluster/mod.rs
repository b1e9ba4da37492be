//! Rooms shared by several nodes through Redis (`--cluster`, issue 14's
//! second part), after Centrifugo's design: one Lua script per publish
//! gives the room its next sequence and the message its id, appends it to
//! the room's capped Stream and publishes it on the room's channel, all in
//! one round trip and atomically, so every node sees a room's messages
//! with the same ids and sequences, in the same order.
//!
//! This file is the Redis side (the script, reading a room's Stream back,
//! decoding what the channel carries); `node` wires it to the hub: the
//! hub's [`crate::hub::Relay`] and the one feeder thread per node.
//!
//! Keys: `streamhub:room:{room}` (a hash: `s` the last sequence, `e` the
//! room's epoch, set once), `streamhub:stream:{room}` (the Stream; entry id
//! `seq-0`), `streamhub:ids` (the id counter shared by all rooms) and the
//! channel `streamhub:room:{room}`. The shared counter puts every room's
//! keys on one Redis, not a Redis Cluster (which would need one slot).

mod node;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use node::Node;

use crate::error::Error;
use crate::hub::{message_id, Message, MessageKind};

/// The publish: HINCRBY the sequence, INCR the id, XADD (capped) and
/// PUBLISH `seq:id:epoch:payload`. Returns `{seq, id, epoch}`.
const PUBLISH: &str = r#"
local seq = redis.call('HINCRBY', KEYS[1], 's', 1)
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[3]
  redis.call('HSET', KEYS[1], 'e', epoch)
end
local id = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'i', id, 'd', ARGV[1])
redis.call('PUBLISH', KEYS[1], seq .. ':' .. id .. ':' .. epoch .. ':' .. ARGV[1])
return {seq, id, epoch}
"#;

/// The most a connect, a read or a write to Redis takes.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// A Stream entry as read: its id and its fields, name and value in turn.
type Entry = (String, Vec<Vec<u8>>);

/// Rooms in one Redis.
pub struct RedisRooms {
    client: redis::Client,
    publish: redis::Script,
    /// Entries each room's Stream keeps (about: `MAXLEN ~`).
    keep: usize,
}

/// The key of a room's hash, which is also its channel.
pub fn channel(room: &str) -> String {
    format!("streamhub:room:{room}")
}

fn stream(room: &str) -> String {
    format!("streamhub:stream:{room}")
}

fn unavailable(e: redis::RedisError) -> Error {
    Error::Unavailable(format!("the cluster's Redis is unavailable: {e}"))
}

/// What a message carries besides its sequence and id:
/// `kind u8 | micros i64 | user u16+bytes | content`.
fn encode(kind: MessageKind, at: SystemTime, user: &str, content: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(13 + user.len() + content.len());
    out.push(kind as u8);
    let micros = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    out.extend_from_slice(&micros.to_le_bytes());
    out.extend_from_slice(&(user.len() as u16).to_le_bytes());
    out.extend_from_slice(user.as_bytes());
    out.extend_from_slice(content.as_bytes());
    out
}

fn decode(room: &str, seq: u64, id: u64, bytes: &[u8]) -> Option<Message> {
    let kind = match *bytes.first()? {
        0 => MessageKind::Chat,
        1 => MessageKind::Join,
        2 => MessageKind::Leave,
        3 => MessageKind::System,
        _ => return None,
    };
    let micros = i64::from_le_bytes(bytes.get(1..9)?.try_into().ok()?);
    let user_len = u16::from_le_bytes(bytes.get(9..11)?.try_into().ok()?) as usize;
    let user = std::str::from_utf8(bytes.get(11..11 + user_len)?).ok()?;
    let content = std::str::from_utf8(bytes.get(11 + user_len..)?).ok()?;
    let at = UNIX_EPOCH + Duration::from_micros(micros.max(0) as u64);
    Some(Message::stored(
        message_id(id),
        seq,
        room,
        user.into(),
        content.into(),
        kind,
        at,
    ))
}

/// A message as a room's channel carried it, and the room's epoch.
pub fn decode_published(room: &str, payload: &[u8]) -> Option<(Message, String)> {
    let mut parts = payload.splitn(4, |&b| b == b':');
    let mut number = || std::str::from_utf8(parts.next()?).ok()?.parse::<u64>().ok();
    let (seq, id) = (number()?, number()?);
    let epoch = String::from_utf8(parts.next()?.to_vec()).ok()?;
    Some((decode(room, seq, id, parts.next()?)?, epoch))
}

impl RedisRooms {
    /// `url` is `redis://HOST:PORT` or `redis+unix:///path/to/socket`.
    pub fn open(url: &str, keep: usize) -> Result<RedisRooms, Error> {
        let client = redis::Client::open(url).map_err(|e| {
            let url = crate::config::redacted_url(url);
            Error::Config(format!("--cluster: '{url}' is not a Redis URL ({e})"))
        })?;
        Ok(RedisRooms {
            client,
            publish: redis::Script::new(PUBLISH),
            keep,
        })
    }

    /// A new connection (each thread that talks to Redis has its own),
    /// checked with a PING. Connecting, and each read and write, ends
    /// within [`IO_TIMEOUT`]: a
    /// Redis that hangs fails publishes instead of holding them.
    pub fn connect(&self) -> Result<redis::Connection, Error> {
        let mut conn = self
            .client
            .get_connection_with_timeout(IO_TIMEOUT)
            .map_err(unavailable)?;
        conn.set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|_| conn.set_write_timeout(Some(IO_TIMEOUT)))
            .map_err(unavailable)?;
        // Connecting sends nothing without a password in the URL: a Redis
        // that wants one answers NOAUTH only to the first command, and a
        // SUBSCRIBE's error is not reported by the client (seen: a node
        // "following" with no subscription). Asked here, it fails the
        // start, or the reconnect, with Redis's own words.
        redis::cmd("PING")
            .query::<String>(&mut conn)
            .map_err(unavailable)?;
        Ok(conn)
    }

    /// Publishes in one round trip; the message as every node sees it, and
    /// its room's epoch (which changes only if Redis lost the room).
    pub fn publish(
        &self,
        conn: &mut redis::Connection,
        room: &str,
        user: &str,
        content: &str,
        kind: MessageKind,
    ) -> Result<(Message, String), Error> {
        let now = SystemTime::now();
        let payload = encode(kind, now, user, content);
        let fresh_epoch = format!(
            "{:x}",
            now.duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        );
        let (seq, id, epoch): (u64, u64, String) = self
            .publish
            .key(channel(room))
            .key(stream(room))
            .key("streamhub:ids")
            .arg(&payload)
            .arg(self.keep)
            .arg(fresh_epoch)
            .invoke(conn)
            .map_err(unavailable)?;
        let message = decode(room, seq, id, &payload).expect("our own encoding decodes");
        Ok((message, epoch))
    }

    /// The room's epoch (`None`: Redis has no such room, or has lost it).
    pub fn epoch(&self, conn: &mut redis::Connection, room: &str) -> Result<Option<String>, Error> {
        redis::cmd("HGET")
            .arg(channel(room))
            .arg("e")
            .query(conn)
            .map_err(unavailable)
    }

    /// The messages of `room` that its Stream still holds after `seq`, in
    /// order (XRANGE with an exclusive start: Redis 6.2 or later).
    pub fn after(
        &self,
        conn: &mut redis::Connection,
        room: &str,
        seq: u64,
    ) -> Result<Vec<Message>, Error> {
        let entries: Vec<Entry> = redis::cmd("XRANGE")
            .arg(stream(room))
            .arg(format!("({seq}-0"))
            .arg("+")
            .query(conn)
            .map_err(unavailable)?;
        Ok(messages(room, entries))
    }

    /// The last `keep` messages the room's Stream holds, oldest first, and
    /// the room's last sequence (0: never published), read together.
    pub fn history(
        &self,
        conn: &mut redis::Connection,
        room: &str,
        keep: usize,
    ) -> Result<(Vec<Message>, u64), Error> {
        let (mut entries, last): (Vec<Entry>, Option<u64>) = redis::pipe()
            .atomic()
            .cmd("XREVRANGE")
            .arg(stream(room))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(keep.max(1))
            .cmd("HGET")
            .arg(channel(room))
            .arg("s")
            .query(conn)
            .map_err(unavailable)?;
        entries.truncate(keep);
        entries.reverse();
        Ok((messages(room, entries), last.unwrap_or(0)))
    }
}

/// Stream entries (`seq-0`, fields `i` and `d`) as messages; an entry that
/// does not decode is skipped, and logged.
fn messages(room: &str, entries: Vec<Entry>) -> Vec<Message> {
    let mut out = Vec::with_capacity(entries.len());
    for (entry, fields) in entries {
        let seq = entry.split('-').next().and_then(|s| s.parse().ok());
        let field = |name: &[u8]| {
            fields
                .chunks(2)
                .find(|kv| kv.len() == 2 && kv[0] == name)
                .map(|kv| kv[1].as_slice())
        };
        let id = field(b"i").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
        let message = match (seq, id, field(b"d")) {
            (Some(seq), Some(id), Some(d)) => decode(room, seq, id, d),
            _ => None,
        };
        match message {
            Some(m) => out.push(m),
            None => log::warn!("room {room}: Stream entry {entry} does not decode; skipped"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_payload_decodes_to_the_message() {
        let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_001);
        let mut payload = b"12:345:e1:".to_vec();
        payload.extend(encode(MessageKind::Join, at, "ann:x", "hi: there"));
        let (m, epoch) = decode_published("r", &payload).unwrap();
        assert_eq!(
            (m.seq, m.id.as_str(), epoch.as_str()),
            (12, "msg_345", "e1")
        );
        assert_eq!(
            (m.user.as_str(), m.content.as_str(), m.kind),
            ("ann:x", "hi: there", MessageKind::Join)
        );
        assert_eq!(m.timestamp, at);
        assert!(decode_published("r", b"12:x:e:").is_none());
        assert!(decode_published("r", b"garbage").is_none());
    }
}
