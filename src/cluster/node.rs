//! One node of a cluster: the hub's [`Relay`] (publishes go through the
//! Lua script, on a small pool of connections, one per publishing thread
//! at a time) and the node's one feeder thread, which SUBSCRIBEs to the
//! channel of each room this node has subscribers for and applies the
//! room's messages to the local hub in the order Redis published them. A
//! message that arrives after a gap (the channel is at-most-once) brings
//! the missing ones back from the room's Stream first.
//!
//! Following a room (Centrifugo's way): a room's first subscriber here
//! asks the feeder to follow it and waits until it has: the feeder
//! subscribes to the channel first, then reads the room's Stream after
//! the last message this node has of it, so nothing published in between
//! is missed (what comes twice is a duplicate, dropped). The feeder is
//! woken for it by a word on this node's own channel, as it may be
//! waiting on the pub/sub connection. When a room's last subscriber
//! leaves, the feeder unsubscribes (lazily, at its next wake): a node
//! receives only the rooms its subscribers read, and a room it stopped
//! following is caught up from the Stream when it is followed again.
//!
//! When Redis goes away, subscribers stay connected: they are told so
//! (a hub notice), publishes fail, the feeder reconnects with backoff,
//! follows its rooms again, reads back what they missed, and tells the
//! subscribers it is back.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{channel, decode_published, RedisRooms};
use crate::error::Error;
use crate::hub::{Applied, Hub, Message, MessageKind, Notice, Relay};

const CHANNEL_PREFIX: &str = "streamhub:room:";
/// How often the feeder looks at `stop` and at rooms no longer followed
/// while the channels are quiet.
const READ_TIMEOUT: Duration = Duration::from_millis(500);
/// Reconnect backoff: doubles from the first to the most.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MOST: Duration = Duration::from_secs(5);
/// The most a room's first subscriber waits for the feeder to follow it.
const FOLLOW_WAIT: Duration = Duration::from_secs(4);

/// What subscribers are told when the node loses Redis, and when it has
/// it back.
fn gone_notice() -> Notice {
    Notice {
        key: "cluster_unavailable",
        text: "the cluster's Redis is unavailable: publishing fails until it is back; \
               this stream stays open and will get what is published meanwhile"
            .into(),
    }
}

fn back_notice() -> Notice {
    Notice {
        key: "cluster_recovered",
        text: "the cluster's Redis is back; what was published meanwhile has been delivered".into(),
    }
}

/// Which rooms this node follows, and for whom.
#[derive(Default)]
struct Following {
    /// Local subscribers of each room: a room is followed while it has one.
    wanted: HashMap<String, usize>,
    /// Rooms the feeder follows and has caught up: their subscribers need
    /// not wait. (Kept through an outage: they are followed again, and
    /// caught up, as soon as Redis is back.)
    ready: HashSet<String>,
    /// `wanted` changed since the feeder last looked.
    dirty: bool,
}

impl Following {
    /// One subscriber of `room` fewer.
    fn forget(&mut self, room: &str) {
        if let Some(n) = self.wanted.get_mut(room) {
            *n -= 1;
            if *n == 0 {
                self.wanted.remove(room);
                self.dirty = true;
            }
        }
    }
}

/// A node's side of the shared rooms.
pub struct Node {
    rooms: RedisRooms,
    /// Idle publishing connections; a publisher takes one or opens one.
    pool: Mutex<Vec<redis::Connection>>,
    stop: AtomicBool,
    /// Whether the feeder follows the channels now: health, and whether
    /// publishes are tried.
    up: AtomicBool,
    following: Mutex<Following>,
    /// Signalled when the feeder is up, made rooms ready, or lost Redis.
    followed: Condvar,
    /// This node's own channel: a word on it wakes the feeder.
    wake_channel: String,
    feeder: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Node {
    /// Opens `url` (`--cluster`) and checks that Redis answers: a node
    /// that cannot reach Redis at start refuses to start, naming the flag.
    /// Each room's Stream keeps about `keep` messages.
    pub fn open(url: &str, keep: usize) -> Result<Arc<Node>, Error> {
        let rooms = RedisRooms::open(url, keep.max(1))?;
        let conn = rooms.connect().map_err(|e| {
            let url = crate::config::redacted_url(url);
            Error::Config(format!("--cluster {url}: {e}"))
        })?;
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Ok(Arc::new(Node {
            rooms,
            pool: Mutex::new(vec![conn]),
            stop: AtomicBool::new(false),
            up: AtomicBool::new(false),
            following: Mutex::new(Following::default()),
            followed: Condvar::new(),
            wake_channel: format!("streamhub:node:{}-{started:x}", std::process::id()),
            feeder: Mutex::new(None),
        }))
    }

    /// Starts the feeder thread, which applies followed rooms' messages to
    /// `hub` until [`Node::close`] (or the hub is gone).
    pub fn start(self: &Arc<Self>, hub: Weak<Hub>) -> Result<(), Error> {
        let node = self.clone();
        let thread = std::thread::Builder::new()
            .name("cluster-feeder".into())
            .spawn(move || node.feed(hub))?;
        *self.feeder.lock() = Some(thread);
        // Publishes wait for the feeder (see `Relay::publish`): give it
        // its first connection before the ports open.
        let until = Instant::now() + super::IO_TIMEOUT;
        let mut following = self.following.lock();
        while !self.available() {
            if self.followed.wait_until(&mut following, until).timed_out() {
                break;
            }
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

    /// The feeder thread: follows the rooms, reconnecting with backoff
    /// when Redis goes away, and tells the subscribers when it does and
    /// when it is back.
    fn feed(&self, hub: Weak<Hub>) {
        let mut backoff = BACKOFF_FIRST;
        // Each room's epoch as last seen: a new one means Redis lost the
        // room (a restart without persistence) and it began again.
        let mut epochs = HashMap::new();
        let mut outage = false;
        while !self.stop.load(Ordering::Acquire) {
            let started = Instant::now();
            let followed = self.follow(&hub, &mut epochs, &mut outage);
            if self.up.swap(false, Ordering::AcqRel) {
                outage = true;
                if let Some(hub) = hub.upgrade() {
                    hub.serving_changed(gone_notice());
                }
            }
            // Subscribers waiting for a room to be followed give up.
            self.followed.notify_all();
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

    /// Follows the wanted rooms' channels until stopped (`Ok`) or Redis
    /// fails. Once connected, follows every room wanted again and reads
    /// back what it missed while it did not (the channel keeps nothing).
    fn follow(
        &self,
        hub: &Weak<Hub>,
        epochs: &mut HashMap<String, String>,
        outage: &mut bool,
    ) -> Result<(), Error> {
        let unavailable = |e: redis::RedisError| super::unavailable(e);
        let mut reads = self.rooms.connect()?;
        let mut channel = self.rooms.connect()?;
        let mut pubsub = channel.as_pubsub();
        pubsub
            .set_read_timeout(Some(READ_TIMEOUT))
            .map_err(unavailable)?;
        pubsub.subscribe(&self.wake_channel).map_err(unavailable)?;
        // Channels this connection is subscribed to.
        let mut subscribed = HashSet::new();
        self.following.lock().dirty = true;
        self.reconcile(hub, &mut pubsub, &mut reads, &mut subscribed, epochs)?;
        // Connections pooled before an outage would fail their first
        // publish (a broken pipe); a publish is not retried, because one
        // whose answer was lost may have gone through.
        self.pool.lock().clear();
        self.up.store(true, Ordering::Release);
        // Under the lock: `start` looks at `up` under it before it waits.
        drop(self.following.lock());
        self.followed.notify_all();
        log::info!("cluster: following {} rooms", subscribed.len());
        if std::mem::take(outage) {
            if let Some(hub) = hub.upgrade() {
                hub.serving_changed(back_notice());
            }
        }
        loop {
            if self.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            let msg = match pubsub.get_message() {
                Ok(msg) => Some(msg),
                Err(e) if e.is_timeout() => None,
                Err(e) => return Err(unavailable(e)),
            };
            let Some(hub_now) = hub.upgrade() else {
                return Ok(());
            };
            if let Some(msg) = msg {
                // Anyone who can write to Redis can publish on a channel:
                // only the rooms followed here are taken.
                let room = msg.get_channel_name().strip_prefix(CHANNEL_PREFIX);
                if let Some(room) = room.filter(|r| subscribed.contains(*r)) {
                    match decode_published(room, msg.get_payload_bytes()) {
                        Some((message, epoch)) => {
                            let began_again = note_epoch(epochs, room, &epoch);
                            if began_again {
                                log::warn!("cluster: room {room} began again in Redis (epoch {epoch}); its subscribers here resume");
                            }
                            self.deliver(&hub_now, &mut reads, message, began_again)?;
                        }
                        None => log::warn!("cluster: room {room}: a message that does not decode"),
                    }
                }
            }
            drop(hub_now);
            self.reconcile(hub, &mut pubsub, &mut reads, &mut subscribed, epochs)?;
        }
    }

    /// Subscribes to the rooms wanted and not followed (each caught up
    /// from its Stream, then ready), unsubscribes from those no longer
    /// wanted. Only Redis errors are returned.
    fn reconcile(
        &self,
        hub: &Weak<Hub>,
        pubsub: &mut redis::PubSub<'_>,
        reads: &mut redis::Connection,
        subscribed: &mut HashSet<String>,
        epochs: &mut HashMap<String, String>,
    ) -> Result<(), Error> {
        let unavailable = |e: redis::RedisError| super::unavailable(e);
        loop {
            let (add, remove) = {
                let mut following = self.following.lock();
                if !std::mem::take(&mut following.dirty) {
                    return Ok(());
                }
                let add: Vec<String> = following
                    .wanted
                    .keys()
                    .filter(|r| !subscribed.contains(*r))
                    .cloned()
                    .collect();
                let remove: Vec<String> = subscribed
                    .iter()
                    .filter(|r| !following.wanted.contains_key(*r))
                    .cloned()
                    .collect();
                for room in &remove {
                    following.ready.remove(room);
                }
                (add, remove)
            };
            for room in remove {
                pubsub.unsubscribe(channel(&room)).map_err(unavailable)?;
                subscribed.remove(&room);
            }
            if add.is_empty() {
                continue;
            }
            for room in &add {
                // Subscribed before it is read back: what is published
                // after the read comes on the channel.
                pubsub.subscribe(channel(room)).map_err(unavailable)?;
                subscribed.insert(room.clone());
                if let Some(hub) = hub.upgrade() {
                    self.catch_up(&hub, reads, room, epochs)?;
                }
            }
            let mut following = self.following.lock();
            for room in add {
                if following.wanted.contains_key(&room) {
                    following.ready.insert(room);
                }
            }
            drop(following);
            self.followed.notify_all();
        }
    }

    /// Brings `room` here up to date with its Stream: a room this hub does
    /// not have starts from the Stream's history (so that a subscriber can
    /// resume from before now); one it has gets what it missed, or, if the
    /// room began again in Redis meanwhile (a new epoch: Redis lost it),
    /// starts anew from the Stream's history. The room's epoch is noted in
    /// `epochs` here, so that a message of a later epoch is seen as one
    /// even if the channel brought none of this one.
    fn catch_up(
        &self,
        hub: &Hub,
        reads: &mut redis::Connection,
        room: &str,
        epochs: &mut HashMap<String, String>,
    ) -> Result<(), Error> {
        // `None`: Redis has no room (yet, or any more); a message of a
        // new epoch will say so when it comes.
        let began_again = match self.rooms.epoch(reads, room)? {
            Some(epoch) => note_epoch(epochs, room, &epoch),
            None => false,
        };
        let Some(last) = hub.room_last(room) else {
            return match hub.prime(room) {
                Err(Error::Unavailable(e)) => Err(Error::Unavailable(e)),
                Err(e) => {
                    log::debug!("cluster: room {room} not read back: {e}");
                    Ok(())
                }
                Ok(()) => Ok(()),
            };
        };
        let missed = if began_again {
            log::warn!("cluster: room {room} began again in Redis; its subscribers here resume");
            self.rooms.history(reads, room, self.rooms.keep)?.0
        } else {
            self.rooms.after(reads, room, last)?
        };
        let mut anew = began_again || missed.first().is_some_and(|m| m.seq != last + 1);
        for message in missed {
            let _ = hub.apply(message, anew);
            anew = false;
        }
        Ok(())
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
        let (room, seq) = (message.room.to_string(), message.seq);
        // Nearly every message follows the room's last one here and is
        // applied as it is. (This thread is the only one that applies, so
        // the room's last sequence holds until it does.)
        let gap_after = hub
            .room_last(&room)
            .filter(|&last| !anew && last != 0 && seq > last + 1);
        let Some(last) = gap_after else {
            match hub.apply(message, anew) {
                Ok(Applied::Gap { last }) => {
                    log::debug!("cluster: room {room}: message {seq} after {last} not applied")
                }
                Ok(_) => {}
                Err(e) => log::debug!("cluster: room {room}: message {seq} not applied: {e}"),
            }
            return Ok(());
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

/// Notes `epoch` as `room`'s; whether the room had another one before
/// (it began again in Redis). Allocates only when the epoch is new here:
/// this runs for every message the channel brings.
fn note_epoch(epochs: &mut HashMap<String, String>, room: &str, epoch: &str) -> bool {
    match epochs.get_mut(room) {
        Some(known) if known == epoch => false,
        Some(known) => {
            *known = epoch.to_string();
            true
        }
        None => {
            epochs.insert(room.to_string(), epoch.to_string());
            false
        }
    }
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

    fn follow(&self, room: &str) -> Result<(), Error> {
        let unavailable = || {
            Error::Unavailable(format!(
                "the cluster's Redis is unavailable: room {room} cannot be followed now"
            ))
        };
        let mut following = self.following.lock();
        *following.wanted.entry(room.to_string()).or_default() += 1;
        if following.ready.contains(room) {
            return Ok(());
        }
        if !self.available() {
            following.forget(room);
            return Err(unavailable());
        }
        following.dirty = true;
        drop(following);
        let woken = self.with_conn(|conn| {
            redis::cmd("PUBLISH")
                .arg(&self.wake_channel)
                .arg("follow")
                .query::<i64>(conn)
                .map_err(super::unavailable)
        });
        let until = Instant::now() + FOLLOW_WAIT;
        let mut following = self.following.lock();
        while !following.ready.contains(room) {
            let gave_up = woken.is_err()
                || !self.available()
                || self.followed.wait_until(&mut following, until).timed_out();
            if gave_up && !following.ready.contains(room) {
                following.forget(room);
                return Err(unavailable());
            }
        }
        Ok(())
    }

    fn unfollow(&self, room: &str) {
        self.following.lock().forget(room);
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
