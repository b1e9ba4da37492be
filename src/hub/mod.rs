//! The in-process broadcast hub that both front doors share.
//!
//! The hub owns rooms, their subscribers and their recent history. It knows
//! nothing of sockets, protobuf or HTTP: a front door turns its request into
//! a [`Draft`] and publishes it, or subscribes and drains a [`Subscription`]
//! from the thread that serves that stream.
//!
//! Publishing never blocks on a subscriber: each one has a bounded queue, and
//! a subscriber whose queue is full is removed with
//! [`CloseReason::SlowConsumer`] instead of slowing the publisher or anyone
//! else. A subscriber that keeps up sees every message of its room, in order.
//!
//! Locking: one short global lock maps names to rooms; each room has its own
//! lock, held while a message gets its sequence number and is queued to every
//! subscriber, so queue order is sequence order. No lock is ever held while
//! writing to a socket: that happens on the subscriber's own thread.
//!
//! Lock order: the map lock (`Hub::rooms`) and a room lock are never held
//! together. A thread takes the room's `Arc` under the map lock, lets go,
//! then locks the room; a room found `freed` (emptied and about to leave the
//! map) is looked up again. So no thread ever waits for a room while
//! holding up every other room's lookup.

mod message;
mod stats;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;

use crate::error::Error;
pub use message::{
    check_user, normalize_room, CloseReason, Draft, Message, MessageKind, Protocol, DEFAULT_ROOM,
    MAX_BURST, MAX_ROOM_NAME, MAX_USER_NAME, SHUTDOWN_NOTICE,
};
pub use stats::{ClosedCounts, HubConfig, HubStats, RoomStats};

/// What a resuming subscriber gets before live messages.
#[derive(Debug, Default)]
pub struct Replay {
    /// Retained messages after the requested sequence, oldest first.
    pub messages: Vec<Arc<Message>>,
    /// How many messages the client asked for that are no longer retained.
    pub missed: u64,
    /// The requested position is ahead of this room (an id from before a
    /// restart, or made up): everything retained is replayed.
    pub unknown_position: bool,
}

struct Slot {
    id: u64,
    tx: Sender<Arc<Message>>,
    state: Arc<SubscriberState>,
}

struct SubscriberState {
    reason: AtomicU8,
}

impl SubscriberState {
    fn reason(&self) -> Option<CloseReason> {
        CloseReason::from_state(self.reason.load(Ordering::Acquire))
    }

    /// The first reason set wins.
    fn set_reason(&self, reason: CloseReason) {
        let _ =
            self.reason
                .compare_exchange(0, reason.to_state(), Ordering::AcqRel, Ordering::Acquire);
    }
}

struct Room {
    name: Arc<str>,
    last_seq: u64,
    history: VecDeque<Arc<Message>>,
    /// Content bytes in `history`.
    history_bytes: usize,
    subscribers: Vec<Slot>,
    published: u64,
    delivered: u64,
    dropped_slow: u64,
    /// Set when the room is removed from the map: a thread that looked it up
    /// just before must look again instead of using an orphan.
    freed: bool,
}

/// The broadcast hub. Cheap to share: wrap it in an `Arc`.
pub struct Hub {
    config: HubConfig,
    rooms: Mutex<HashMap<Arc<str>, Arc<Mutex<Room>>>>,
    next_message: AtomicU64,
    next_subscriber: AtomicU64,
    subscribers: [AtomicU64; 2],
    published: AtomicU64,
    delivered: AtomicU64,
    /// Indexed by `CloseReason as usize`.
    closed: [AtomicU64; CloseReason::ALL.len()],
    /// Set by [`Hub::close_all`]: no new subscribers from then on.
    closing: std::sync::atomic::AtomicBool,
}

impl Hub {
    pub fn new(config: HubConfig) -> Hub {
        Hub {
            config,
            rooms: Mutex::new(HashMap::new()),
            next_message: AtomicU64::new(1),
            next_subscriber: AtomicU64::new(1),
            subscribers: Default::default(),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            closed: Default::default(),
            closing: Default::default(),
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Checks a draft the way every front door must: the one validation path
    /// shared by gRPC and HTTP.
    /// Returns the room the draft goes to.
    pub fn validate<'a>(&self, draft: &'a Draft) -> Result<&'a str, Error> {
        self.check(&draft.room, &draft.user, &draft.content)
    }

    fn check<'a>(&self, room: &'a str, user: &str, content: &str) -> Result<&'a str, Error> {
        if user.is_empty() {
            return Err(Error::InvalidArgument("user is required".into()));
        }
        check_user(user)?;
        if content.is_empty() {
            return Err(Error::InvalidArgument("content is required".into()));
        }
        if content.len() > self.config.max_content_bytes {
            return Err(Error::TooLarge(format!(
                "content is {} bytes, more than the limit of {}",
                content.len(),
                self.config.max_content_bytes
            )));
        }
        normalize_room(room)
    }

    /// Runs `f` on the live room called `name`, creating it if needed.
    fn with_room<T>(&self, name: &str, f: impl FnOnce(&mut Room) -> T) -> Result<T, Error> {
        loop {
            let room = self.room(name)?;
            let mut guard = room.lock();
            if !guard.freed {
                return Ok(f(&mut guard));
            }
        }
    }

    fn room(&self, name: &str) -> Result<Arc<Mutex<Room>>, Error> {
        let mut rooms = self.rooms.lock();
        if let Some(room) = rooms.get(name) {
            return Ok(room.clone());
        }
        if rooms.len() >= self.config.max_rooms {
            return Err(Error::ResourceExhausted(format!(
                "too many rooms (limit {})",
                self.config.max_rooms
            )));
        }
        let name: Arc<str> = Arc::from(name);
        let room = Arc::new(Mutex::new(Room {
            name: name.clone(),
            last_seq: 0,
            history: VecDeque::new(),
            history_bytes: 0,
            subscribers: Vec::new(),
            published: 0,
            delivered: 0,
            dropped_slow: 0,
            freed: false,
        }));
        rooms.insert(name, room.clone());
        Ok(room)
    }

    /// Validates and publishes a message to every subscriber of its room.
    /// Never blocks on a subscriber. Runs on any thread.
    pub fn publish(&self, draft: Draft) -> Result<Arc<Message>, Error> {
        let Draft {
            room,
            user,
            content,
            kind,
        } = draft;
        // The name validation returns; no copy of it on this path.
        let name = self.check(&room, &user, &content)?;
        self.with_room(name, |r| self.publish_locked(r, user, content, kind))
    }

    /// Runs with the room's lock held.
    fn publish_locked(
        &self,
        room: &mut Room,
        user: String,
        content: String,
        kind: MessageKind,
    ) -> Arc<Message> {
        room.last_seq += 1;
        let message = Arc::new(Message {
            id: format!("msg_{}", self.next_message.fetch_add(1, Ordering::Relaxed)),
            seq: room.last_seq,
            room: room.name.clone(),
            user,
            content,
            kind,
            timestamp: SystemTime::now(),
            encoded: Default::default(),
        });
        if self.config.history > 0 {
            room.history_bytes += message.content.len();
            room.history.push_back(message.clone());
            while room.history.len() > self.config.history
                || (room.history_bytes > self.config.history_bytes && room.history.len() > 1)
            {
                if let Some(old) = room.history.pop_front() {
                    room.history_bytes -= old.content.len();
                }
            }
        }
        let mut delivered = 0u64;
        let mut i = 0;
        let capacity = self.config.subscriber_queue;
        while i < room.subscribers.len() {
            let tx = &room.subscribers[i].tx;
            // Only publish sends, and only under this room's lock, so the
            // length cannot grow between the check and the send.
            let sent = if tx.len() >= capacity {
                Err(TrySendError::Full(()))
            } else {
                tx.try_send(message.clone()).map_err(|e| match e {
                    TrySendError::Full(_) => TrySendError::Full(()),
                    TrySendError::Disconnected(_) => TrySendError::Disconnected(()),
                })
            };
            match sent {
                Ok(()) => {
                    delivered += 1;
                    i += 1;
                }
                Err(TrySendError::Full(())) => {
                    let slot = room.subscribers.swap_remove(i);
                    slot.state.set_reason(CloseReason::SlowConsumer);
                    room.dropped_slow += 1;
                    self.count_close(&slot);
                }
                Err(TrySendError::Disconnected(())) => {
                    // Its Subscription is being dropped and will unregister.
                    i += 1;
                }
            }
        }
        room.published += 1;
        room.delivered += delivered;
        self.published.fetch_add(1, Ordering::Relaxed);
        self.delivered.fetch_add(delivered, Ordering::Relaxed);
        message
    }

    /// Publishes a JOIN or LEAVE for a stream opened with a user name (no-op
    /// without one). Failure (say, the room limit) only costs the notice.
    pub fn announce(&self, room: &str, user: &str, kind: MessageKind) {
        if user.is_empty() {
            return;
        }
        let verb = if kind == MessageKind::Join {
            "joined"
        } else {
            "left"
        };
        let draft = Draft {
            room: room.to_string(),
            user: user.to_string(),
            content: format!("{user} {verb} the room"),
            kind,
        };
        if let Err(e) = self.publish(draft) {
            log::debug!("cannot announce {user} in {room}: {e}");
        }
    }

    /// Announces `user` in `room` (JOIN now, LEAVE when the guard drops),
    /// for a stream that opened with a user name; without one, nothing.
    pub fn presence(self: &Arc<Self>, room: &str, user: &str) -> Presence {
        self.announce(room, user, MessageKind::Join);
        Presence {
            hub: self.clone(),
            room: room.to_string(),
            user: user.to_string(),
        }
    }

    /// Registers a subscriber on `room` ("" means the default room). With
    /// `after_seq`, the retained messages with a larger sequence come back in
    /// the [`Replay`]; registration and the replay cut happen under one lock,
    /// so there is no gap and no duplicate between replay and live messages.
    pub fn subscribe(
        self: &Arc<Self>,
        room: &str,
        after_seq: Option<u64>,
        protocol: Protocol,
    ) -> Result<(Subscription, Replay), Error> {
        let name = normalize_room(room)?;
        if self.closing.load(Ordering::Acquire) {
            return Err(Error::Unavailable(SHUTDOWN_NOTICE.into()));
        }
        // The queue is bounded by `publish` (see there), not by the channel:
        // a crossbeam `bounded` channel allocates every slot up front, 16 KiB
        // per subscriber at the default 1024, most of an idle stream's cost.
        // The list flavour grows in blocks of 31 as messages queue up.
        let (tx, rx) = crossbeam_channel::unbounded();
        let state = Arc::new(SubscriberState {
            reason: AtomicU8::new(0),
        });
        let id = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let (room_name, replay) = self.with_room(name, |guard| {
            let mut replay = Replay::default();
            if let Some(after) = after_seq {
                if after > guard.last_seq {
                    replay.unknown_position = true;
                    replay.messages = guard.history.iter().cloned().collect();
                } else {
                    let oldest = guard
                        .history
                        .front()
                        .map(|m| m.seq)
                        .unwrap_or(guard.last_seq + 1);
                    replay.missed = oldest.saturating_sub(after + 1);
                    replay.messages = guard
                        .history
                        .iter()
                        .filter(|m| m.seq > after)
                        .cloned()
                        .collect();
                }
            }
            guard.subscribers.push(Slot {
                id,
                tx,
                state: state.clone(),
            });
            (guard.name.clone(), replay)
        })?;
        self.subscribers[protocol as usize].fetch_add(1, Ordering::Relaxed);
        let subscription = Subscription {
            hub: self.clone(),
            room: room_name,
            id,
            protocol,
            rx,
            state,
        };
        Ok((subscription, replay))
    }

    fn count_close(&self, slot: &Slot) {
        let reason = slot.state.reason().unwrap_or(CloseReason::ClientClosed);
        self.closed[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn unregister(&self, sub: &Subscription) {
        self.subscribers[sub.protocol as usize].fetch_sub(1, Ordering::Relaxed);
        let Some(room) = self.rooms.lock().get(&sub.room).cloned() else {
            return;
        };
        let freed = {
            let mut guard = room.lock();
            if let Some(pos) = guard.subscribers.iter().position(|s| s.id == sub.id) {
                let slot = guard.subscribers.swap_remove(pos);
                self.count_close(&slot);
            }
            // Marked under the room's lock, removed from the map after it:
            // a thread that finds the room freed in between looks again.
            let empty = !guard.freed && guard.subscribers.is_empty() && guard.history.is_empty();
            guard.freed |= empty;
            empty
        };
        if freed {
            let mut rooms = self.rooms.lock();
            if rooms.get(&sub.room).is_some_and(|r| Arc::ptr_eq(r, &room)) {
                rooms.remove(&sub.room);
            }
        }
    }

    /// Marks every subscriber as closing for `reason` and removes it; their
    /// threads see the end of their queue after draining what was accepted.
    pub fn close_all(&self, reason: CloseReason) {
        self.closing.store(true, Ordering::Release);
        let rooms: Vec<_> = self.rooms.lock().values().cloned().collect();
        for room in rooms {
            let mut guard = room.lock();
            for slot in guard.subscribers.drain(..) {
                slot.state.set_reason(reason);
                self.count_close(&slot);
            }
        }
    }

    pub fn stats(&self) -> HubStats {
        let mut stats = HubStats {
            rooms: self.rooms.lock().len() as u64,
            published: self.published.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            ..HubStats::default()
        };
        for p in Protocol::ALL {
            let n = self.subscribers[p as usize].load(Ordering::Relaxed);
            stats.subscribers_by_protocol[p as usize] = n;
            stats.subscribers += n;
        }
        let closed = |r: CloseReason| self.closed[r as usize].load(Ordering::Relaxed);
        stats.closed = ClosedCounts {
            client_closed: closed(CloseReason::ClientClosed),
            slow_consumer: closed(CloseReason::SlowConsumer),
            shutdown: closed(CloseReason::Shutdown),
            deadline_exceeded: closed(CloseReason::DeadlineExceeded),
            write_failed: closed(CloseReason::WriteFailed),
        };
        stats
    }

    /// Counts for one room, or `None` when it does not exist.
    pub fn room_stats(&self, room: &str) -> Option<RoomStats> {
        let room = self.rooms.lock().get(room).cloned()?;
        let r = room.lock();
        Some(RoomStats {
            subscribers: r.subscribers.len() as u64,
            published: r.published,
            delivered: r.delivered,
            dropped_slow: r.dropped_slow,
            retained: r.history.len() as u64,
            last_seq: r.last_seq,
        })
    }
}

/// A stream's presence in a room: JOIN was announced when it was made, LEAVE
/// is announced when it drops (after the stream's last write, so the LEAVE
/// is the last thing the room hears of it).
pub struct Presence {
    hub: Arc<Hub>,
    room: String,
    user: String,
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.hub
            .announce(&self.room, &self.user, MessageKind::Leave);
    }
}

/// One subscriber's end of the hub. Unregisters when dropped.
pub struct Subscription {
    hub: Arc<Hub>,
    room: Arc<str>,
    id: u64,
    protocol: Protocol,
    rx: Receiver<Arc<Message>>,
    state: Arc<SubscriberState>,
}

impl Subscription {
    pub fn room(&self) -> &Arc<str> {
        &self.room
    }

    /// The queue to block on. It reports disconnection once the hub removed
    /// this subscriber and everything queued before that was taken.
    pub fn receiver(&self) -> &Receiver<Arc<Message>> {
        &self.rx
    }

    /// Why the hub removed this subscriber, if it did, or the reason set by
    /// [`Subscription::set_close_reason`].
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.state.reason()
    }

    /// Records why this stream is ending (the first reason set wins).
    pub fn set_close_reason(&self, reason: CloseReason) {
        self.state.set_reason(reason);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unregister(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;
    use std::time::{Duration, Instant};

    fn hub_with(queue: usize, history: usize) -> Arc<Hub> {
        Arc::new(Hub::new(HubConfig {
            subscriber_queue: queue,
            history,
            ..HubConfig::default()
        }))
    }

    fn drain(sub: &Subscription) -> Vec<Arc<Message>> {
        sub.receiver().try_iter().collect()
    }

    #[test]
    fn messages_arrive_in_order_with_room_sequence_and_unique_ids() {
        let hub = hub_with(16, 10);
        let (a, _) = hub.subscribe("a", None, Protocol::Grpc).unwrap();
        let (b, _) = hub.subscribe("b", None, Protocol::Sse).unwrap();
        let mut ids = std::collections::HashSet::new();
        for i in 0..5 {
            let m = hub.publish(Draft::chat("a", "u", format!("a{i}"))).unwrap();
            assert!(ids.insert(m.id.clone()));
            let m = hub.publish(Draft::chat("b", "u", format!("b{i}"))).unwrap();
            assert!(ids.insert(m.id.clone()));
        }
        let got: Vec<_> = drain(&a)
            .iter()
            .map(|m| (m.seq, m.content.clone()))
            .collect();
        let want: Vec<_> = (0..5).map(|i| (i as u64 + 1, format!("a{i}"))).collect();
        assert_eq!(got, want);
        assert!(drain(&b).iter().all(|m| &*m.room == "b"));
    }

    #[test]
    fn empty_room_means_default_and_bad_names_are_refused() {
        let hub = hub_with(4, 4);
        let m = hub.publish(Draft::chat("", "u", "x")).unwrap();
        assert_eq!(&*m.room, DEFAULT_ROOM);
        for bad in ["has space", "slash/", &"x".repeat(65), "ümlaut"] {
            let err = hub.publish(Draft::chat(bad, "u", "x")).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad}: {err}");
        }
        assert!(hub.publish(Draft::chat("x".repeat(64), "u", "x")).is_ok());
    }

    #[test]
    fn validation_names_the_field() {
        let hub = hub_with(4, 4);
        let err = hub.publish(Draft::chat("r", "", "x")).unwrap_err();
        assert_eq!(err.to_string(), "user is required");
        let err = hub.publish(Draft::chat("r", "u", "")).unwrap_err();
        assert_eq!(err.to_string(), "content is required");
        let small = Arc::new(Hub::new(HubConfig {
            max_content_bytes: 3,
            ..HubConfig::default()
        }));
        assert!(matches!(
            small.publish(Draft::chat("r", "u", "abcd")),
            Err(Error::TooLarge(_))
        ));
    }

    #[test]
    fn slow_subscriber_is_dropped_publisher_never_blocks() {
        let hub = hub_with(8, 0);
        let (slow, _) = hub.subscribe("r", None, Protocol::Grpc).unwrap();
        let (fast, _) = hub.subscribe("r", None, Protocol::Grpc).unwrap();
        let mut got = Vec::new();
        for i in 0..100 {
            let started = Instant::now();
            hub.publish(Draft::chat("r", "u", i.to_string())).unwrap();
            assert!(started.elapsed() < Duration::from_millis(100));
            got.extend(drain(&fast));
        }
        assert_eq!(got.len(), 100);
        assert!(got.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
        assert_eq!(slow.close_reason(), Some(CloseReason::SlowConsumer));
        // The slow one still gets what was queued before removal, then the end.
        assert_eq!(drain(&slow).len(), 8);
        assert!(slow.receiver().recv().is_err());
        assert_eq!(hub.stats().closed(CloseReason::SlowConsumer), 1);
        assert_eq!(hub.room_stats("r").unwrap().subscribers, 1);
    }

    #[test]
    fn replay_returns_retained_messages_after_sequence_and_counts_missed() {
        let hub = hub_with(16, 5);
        for i in 1..=8 {
            hub.publish(Draft::chat("r", "u", i.to_string())).unwrap();
        }
        // Retained: 4..=8.
        let (_s, replay) = hub.subscribe("r", Some(5), Protocol::Sse).unwrap();
        assert_eq!(replay.missed, 0);
        let seqs: Vec<_> = replay.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![6, 7, 8]);

        let (_s, replay) = hub.subscribe("r", Some(3), Protocol::Sse).unwrap();
        assert_eq!(replay.missed, 0);
        assert_eq!(replay.messages.len(), 5);

        let (_s, replay) = hub.subscribe("r", Some(1), Protocol::Sse).unwrap();
        assert_eq!(replay.missed, 2, "2 and 3 are gone");
        assert_eq!(replay.messages[0].seq, 4);

        let (_s, replay) = hub.subscribe("r", Some(8), Protocol::Sse).unwrap();
        assert!(replay.messages.is_empty());
        assert!(!replay.unknown_position);

        let (_s, replay) = hub.subscribe("r", Some(99), Protocol::Sse).unwrap();
        assert!(replay.unknown_position);
        assert_eq!(replay.messages.len(), 5);
    }

    #[test]
    fn history_is_bounded_in_bytes_too() {
        let hub = Arc::new(Hub::new(HubConfig {
            history: 100,
            history_bytes: 1000,
            ..HubConfig::default()
        }));
        for i in 0..10 {
            hub.publish(Draft::chat("r", "u", format!("{i}").repeat(300)))
                .unwrap();
        }
        // 300 bytes each: three fit in 1000.
        assert_eq!(hub.room_stats("r").unwrap().retained, 3);
        let (_s, replay) = hub.subscribe("r", Some(0), Protocol::Sse).unwrap();
        assert_eq!(replay.missed, 7);
        assert_eq!(replay.messages[0].seq, 8);
        // One message larger than the budget is still kept on its own.
        hub.publish(Draft::chat("r", "u", "x".repeat(5000)))
            .unwrap();
        assert_eq!(hub.room_stats("r").unwrap().retained, 1);
    }

    #[test]
    fn replay_then_live_has_no_gap_and_no_duplicate() {
        let hub = hub_with(4096, 5000);
        let publisher = {
            let hub = hub.clone();
            thread::spawn(move || {
                for i in 0..2000 {
                    hub.publish(Draft::chat("r", "u", i.to_string())).unwrap();
                }
            })
        };
        // Subscribe mid-stream, resuming after whatever was first seen.
        while hub.room_stats("r").map(|s| s.last_seq).unwrap_or(0) < 100 {
            thread::yield_now();
        }
        let (sub, replay) = hub.subscribe("r", Some(50), Protocol::Sse).unwrap();
        publisher.join().unwrap();
        let mut seqs: Vec<u64> = replay.messages.iter().map(|m| m.seq).collect();
        seqs.extend(drain(&sub).iter().map(|m| m.seq));
        assert!(seqs == (51..=2000).collect::<Vec<_>>(), "gap or duplicate");
    }

    #[test]
    fn dropping_subscription_unregisters_and_frees_empty_room() {
        let hub = hub_with(4, 0);
        let (sub, _) = hub.subscribe("gone", None, Protocol::Grpc).unwrap();
        assert_eq!(hub.stats().subscribers, 1);
        assert_eq!(hub.stats().rooms, 1);
        drop(sub);
        let stats = hub.stats();
        assert_eq!(stats.subscribers, 0);
        assert_eq!(stats.rooms, 0);
        assert_eq!(stats.closed(CloseReason::ClientClosed), 1);
    }

    #[test]
    fn room_limit_is_enforced() {
        let hub = Arc::new(Hub::new(HubConfig {
            max_rooms: 2,
            ..HubConfig::default()
        }));
        hub.publish(Draft::chat("a", "u", "x")).unwrap();
        hub.publish(Draft::chat("b", "u", "x")).unwrap();
        assert!(matches!(
            hub.publish(Draft::chat("c", "u", "x")),
            Err(Error::ResourceExhausted(_))
        ));
        assert!(hub.publish(Draft::chat("a", "u", "y")).is_ok());
    }

    #[test]
    fn many_publishers_and_subscribers_at_once() {
        let hub = hub_with(100_000, 10);
        let subs: Vec<_> = (0..8)
            .map(|_| hub.subscribe("r", None, Protocol::Grpc).unwrap().0)
            .collect();
        let publishers: Vec<_> = (0..4)
            .map(|p| {
                let hub = hub.clone();
                thread::spawn(move || {
                    for i in 0..5000 {
                        hub.publish(Draft::chat("r", format!("p{p}"), i.to_string()))
                            .unwrap();
                    }
                })
            })
            .collect();
        let readers: Vec<_> = subs
            .into_iter()
            .map(|sub| {
                thread::spawn(move || {
                    let mut last = 0;
                    let mut per_publisher = [0u32; 4];
                    for _ in 0..20_000 {
                        let m = sub.receiver().recv().unwrap();
                        assert_eq!(m.seq, last + 1);
                        last = m.seq;
                        let p: usize = m.user[1..].parse().unwrap();
                        // Each publisher's own messages stay in its order.
                        assert_eq!(m.content, per_publisher[p].to_string());
                        per_publisher[p] += 1;
                    }
                    last
                })
            })
            .collect();
        for p in publishers {
            p.join().unwrap();
        }
        for r in readers {
            assert_eq!(r.join().unwrap(), 20_000);
        }
        assert_eq!(hub.stats().published, 20_000);
        assert_eq!(hub.stats().delivered, 160_000);
    }

    #[test]
    fn encoding_is_made_once_and_shared() {
        let hub = hub_with(4, 4);
        let m = hub.publish(Draft::chat("r", "u", "x")).unwrap();
        let mut calls = 0;
        let a = m.encoded(Protocol::Sse, |_| {
            calls += 1;
            b"one".to_vec()
        });
        assert_eq!(a, b"one");
        let b = m.encoded(Protocol::Sse, |_| b"two".to_vec());
        assert_eq!(b, b"one");
        assert_eq!(calls, 1);
    }
}
