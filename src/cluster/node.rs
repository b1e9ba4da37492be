//! One node of a cluster: the hub's [`Relay`] (publishes go through the
//! Lua script, on a small pool of connections, one per publishing thread
//! at a time) and the node's one feeder thread, which follows every room's
//! channel (`PSUBSCRIBE streamhub:room:*`) and applies each message to the
//! local hub in the order Redis published them. A message that arrives
//! after a gap (the channel is at-most-once) brings the missing ones back
//! from the room's Stream first.
//!
//! Why psubscribe and not a SUBSCRIBE per room with subscribers: one
//! pattern needs no bookkeeping of which rooms to follow and has no window
//! between a room's first subscriber and its channel subscription; the
//! cost is that every node receives every room's messages (fine for the
//! few nodes this is for; per-room subscriptions are the way past that).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{decode_published, RedisRooms};
use crate::error::Error;
use crate::hub::{normalize_room, Applied, Hub, Message, MessageKind, Relay};

/// The pattern of every room's channel (see [`super::channel`]).
const ALL_ROOMS: &str = "streamhub:room:*";
const CHANNEL_PREFIX: &str = "streamhub:room:";
/// How often the feeder looks at `stop` while the channel is quiet.
const READ_TIMEOUT: Duration = Duration::from_millis(500);
/// Reconnect backoff: doubles from the first to the most.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MOST: Duration = Duration::from_secs(5);

/// A node's side of the shared rooms.
pub struct Node {
    rooms: RedisRooms,
    /// Idle publishing connections; a publisher takes one or opens one.
    pool: Mutex<Vec<redis::Connection>>,
    stop: AtomicBool,
    /// Whether the feeder follows the channels now: health, and whether
    /// publishes are tried.
    up: AtomicBool,
    feeder: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Node {
    /// Opens `url` (`--cluster`) and checks that Redis answers: a node
    /// that cannot reach Redis at start refuses to start, naming the flag.
    /// Each room's Stream keeps about `keep` messages.
    pub fn open(url: &str, keep: usize) -> Result<Arc<Node>, Error> {
        let rooms = RedisRooms::open(url, keep.max(1))?;
        let conn = rooms
            .connect()
            .map_err(|e| Error::Config(format!("--cluster {url}: {e}")))?;
        Ok(Arc::new(Node {
            rooms,
            pool: Mutex::new(vec![conn]),
            stop: AtomicBool::new(false),
            up: AtomicBool::new(false),
            feeder: Mutex::new(None),
        }))
    }

    /// Starts the feeder thread, which applies every room's messages to
    /// `hub` until [`Node::close`] (or the hub is gone).
    pub fn start(self: &Arc<Self>, hub: Weak<Hub>) -> Result<(), Error> {
        let node = self.clone();
        let thread = std::thread::Builder::new()
            .name("cluster-feeder".into())
            .spawn(move || node.feed(hub))?;
        *self.feeder.lock() = Some(thread);
        // Publishes wait for the feeder (see `Relay::publish`): give it
        // its first subscription before the ports open.
        let until = Instant::now() + super::IO_TIMEOUT;
        while !self.available() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Stops the feeder (within its read timeout) and waits for it.
    pub fn close(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.feeder.lock().take() {
            let _ = thread.join();
        }
    }

    /// Runs `f` on a pooled connection; one that failed is dropped, not
    /// returned to the pool.
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let pooled = self.pool.lock().pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => self.rooms.connect()?,
        };
        let out = f(&mut conn)?;
        self.pool.lock().push(conn);
        Ok(out)
    }

    /// The feeder thread: follows the channels, reconnecting with backoff
    /// when Redis goes away.
    fn feed(&self, hub: Weak<Hub>) {
        let mut backoff = BACKOFF_FIRST;
        // Each room's epoch as last seen: a new one means Redis lost the
        // room (a restart without persistence) and it began again.
        let mut epochs = HashMap::new();
        while !self.stop.load(Ordering::Acquire) {
            let started = Instant::now();
            let followed = self.follow(&hub, &mut epochs);
            self.up.store(false, Ordering::Release);
            match followed {
                Ok(()) => return,
                Err(e) => log::warn!("cluster: {e}; reconnecting in {backoff:?}"),
            }
            // A connection that lasted resets the backoff.
            if started.elapsed() > BACKOFF_MOST {
                backoff = BACKOFF_FIRST;
            }
            let until = Instant::now() + backoff;
            while Instant::now() < until && !self.stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(20));
            }
            backoff = (backoff * 2).min(BACKOFF_MOST);
        }
    }

    /// Follows every room's channel until stopped (`Ok`) or Redis fails.
    /// Once subscribed, reads back what each room this node has missed
    /// while it was not (the channel keeps nothing for it).
    fn follow(&self, hub: &Weak<Hub>, epochs: &mut HashMap<String, String>) -> Result<(), Error> {
        let unavailable = |e: redis::RedisError| super::unavailable(e);
        let mut reads = self.rooms.connect()?;
        let mut channel = self.rooms.connect()?;
        let mut pubsub = channel.as_pubsub();
        pubsub
            .set_read_timeout(Some(READ_TIMEOUT))
            .map_err(unavailable)?;
        pubsub.psubscribe(ALL_ROOMS).map_err(unavailable)?;
        if let Some(hub) = hub.upgrade() {
            for (room, last) in hub.room_tails() {
                let missed = self.rooms.after(&mut reads, &room, last)?;
                let mut anew = missed.first().is_some_and(|m| m.seq != last + 1);
                for message in missed {
                    let _ = hub.apply(message, anew);
                    anew = false;
                }
            }
        }
        // Connections pooled before an outage would fail their first
        // publish (a broken pipe); a publish is not retried, because one
        // whose answer was lost may have gone through.
        self.pool.lock().clear();
        self.up.store(true, Ordering::Release);
        log::info!("cluster: following every room's channel");
        loop {
            if self.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            let msg = match pubsub.get_message() {
                Ok(msg) => msg,
                Err(e) if e.is_timeout() => continue,
                Err(e) => return Err(unavailable(e)),
            };
            let Some(hub) = hub.upgrade() else {
                return Ok(());
            };
            // Anyone who can write to Redis can publish on a channel: only
            // names a client could have used make rooms here.
            let Some(room) = msg.get_channel_name().strip_prefix(CHANNEL_PREFIX) else {
                continue;
            };
            if normalize_room(room).ok() != Some(room) {
                log::warn!("cluster: a channel for no valid room name; ignored");
                continue;
            }
            let Some((message, epoch)) = decode_published(room, msg.get_payload_bytes()) else {
                log::warn!("cluster: room {room}: a message that does not decode");
                continue;
            };
            let known = epochs.insert(room.to_string(), epoch.clone());
            let began_again = known.is_some_and(|known| known != epoch);
            if began_again {
                log::warn!("cluster: room {room} began again in Redis (epoch {epoch}); its subscribers here resume");
            }
            self.deliver(&hub, &mut reads, message, began_again)?;
        }
    }

    /// Applies `message` to the hub (`anew`: whether or not it follows);
    /// after a gap, the missing messages from the room's Stream first.
    /// Only Redis errors are returned.
    fn deliver(
        &self,
        hub: &Hub,
        conn: &mut redis::Connection,
        message: Message,
        anew: bool,
    ) -> Result<(), Error> {
        let (copy, message) = copy(&message);
        let (room, seq) = (message.room.to_string(), message.seq);
        // A room new here starts from its Stream, not from this message,
        // so that a subscriber can resume from before it.
        if let Err(e) = hub.prime(&room) {
            log::debug!("cluster: room {room} not read back: {e}");
        }
        let last = match hub.apply(copy, anew) {
            Ok(Applied::Gap { last }) => last,
            Ok(_) => return Ok(()),
            Err(e) => {
                log::debug!("cluster: room {room}: message {seq} not applied: {e}");
                return Ok(());
            }
        };
        let missing = self.rooms.after(conn, &room, last)?;
        // The Stream lost some (trimmed, or Redis restarted): start anew.
        let mut anew = missing.first().is_none_or(|m| m.seq != last + 1);
        let mut reached = false;
        for m in missing.into_iter().take_while(|m| m.seq <= seq) {
            reached |= m.seq == seq;
            let _ = hub.apply(m, anew);
            anew = false;
        }
        if !reached {
            let _ = hub.apply(message, true);
        }
        Ok(())
    }
}

/// Two of `message` (a hub message is not `Clone`: it caches encodings):
/// one to apply, one kept should the Stream not hold it.
fn copy(message: &Message) -> (Message, Message) {
    let one = || {
        Message::stored(
            message.id.clone(),
            message.seq,
            &message.room,
            message.user.clone(),
            message.content.clone(),
            message.kind,
            message.timestamp,
        )
    };
    (one(), one())
}

impl Relay for Node {
    fn publish(
        &self,
        room: &str,
        user: &str,
        content: &str,
        kind: MessageKind,
    ) -> Result<Arc<Message>, Error> {
        if !self.available() {
            return Err(Error::Unavailable(
                "the cluster's Redis is unavailable; the node is reconnecting".into(),
            ));
        }
        let (message, _epoch) =
            self.with_conn(|conn| self.rooms.publish(conn, room, user, content, kind))?;
        Ok(Arc::new(message))
    }

    fn history(&self, room: &str, keep: usize) -> Result<(Vec<Message>, u64), Error> {
        self.with_conn(|conn| self.rooms.history(conn, room, keep))
    }

    fn available(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}
