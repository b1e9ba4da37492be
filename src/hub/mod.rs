//! The in-process broadcast hub that both front doors share.
//!
//! The hub owns rooms, their subscribers and their recent history. It knows
//! nothing of sockets, protobuf or HTTP: a front door turns its request into
//! a [`Draft`] and publishes it, or subscribes and reads a [`Subscription`]
//! from the thread that serves that stream.
//!
//! Each room has one log ([`room_log`]), which is also its history: `publish`
//! appends the message, moves the tail and wakes the parked subscribers with
//! one call, only when some are parked. There is no per-subscriber queue and
//! no per-subscriber work on the publish path. Each subscriber has its own
//! position in the log and, when it wakes, takes everything between its
//! position and the tail (at most [`MAX_BURST`]) for one write, so under load
//! one wake-up carries many messages.
//!
//! Flow control: a subscriber may trail the tail by `subscriber_queue`
//! messages (its window). A publish that would put one past its window waits
//! at most `publish_stall` for it to catch up, then removes it with
//! [`CloseReason::SlowConsumer`]. Subscribers that keep up lose nothing; a
//! stuck one holds publishers for at most the stall, once.
//!
//! Locking: one short global lock maps names to rooms; each room has its own
//! lock, held while a message gets its sequence number and is appended, so
//! log order is sequence order. Readers take no lock at all. No lock is ever
//! held while writing to a socket or while a publisher stalls.
//!
//! Lock order: the map lock (`Hub::rooms`) and a room lock are never held
//! together. A thread takes the room's `Arc` under the map lock, lets go,
//! then locks the room; a room found `freed` (emptied or evicted, about to
//! leave the map) is looked up again. So no thread ever waits for a room
//! while holding up every other room's lookup. With a journal
//! (`--data-dir`), a publisher hands its message to the journal with the
//! room lock held; the journal's own lock is taken after a room lock, never
//! before one, and the journal never calls into the hub while holding it.
//! With a relay (`--cluster`), no hub lock is held while the relay talks
//! to Redis (`relay`): publishes and following a room call it first,
//! then lock.

mod journal;
mod message;
mod notice;
mod relay;
mod room_log;
mod rooms;
mod stats;
mod subscription;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::error::Error;
pub use journal::{Journal, Ticket};
pub use message::{
    check_user, id_number, message_id, normalize_room, CloseReason, Draft, Message, MessageKind,
    Protocol, DEFAULT_ROOM, MAX_BURST, MAX_ROOM_NAME, MAX_USER_NAME, SHUTDOWN_NOTICE,
};
pub use notice::{Changes, Notice};
pub use relay::{Applied, Relay};
pub use room_log::Watch;
pub use stats::{ClosedCounts, HubConfig, HubStats, RoomStats};
pub use subscription::{Presence, Replay, Subscription, Wait};
use subscription::{Slot, SubscriberState};

/// How long a stalled publisher sleeps between looks at the laggards.
const STALL_POLL: Duration = Duration::from_micros(100);

struct Room {
    name: Arc<str>,
    /// Deliveries made by this room's subscribers (counted as they take).
    delivered: AtomicU64,
    /// Subscribers now, readable without the lock (for room eviction).
    subscribers: AtomicUsize,
    /// The hub's clock when the room was last looked up.
    last_used: AtomicU64,
    state: Mutex<RoomState>,
}

struct RoomState {
    log: room_log::Log,
    subscribers: Vec<Slot>,
    /// Subscribers by protocol: which encodings a publish makes.
    by_protocol: [usize; 2],
    /// A lower bound of every subscriber's position: the lag check looks at
    /// the subscribers only when the tail is a window past it.
    slowest: u64,
    published: u64,
    dropped_slow: u64,
    /// Set when the room is removed from the map: a thread that looked it up
    /// just before must look again instead of using an orphan.
    freed: bool,
}

/// The broadcast hub. Cheap to share: wrap it in an `Arc`.
pub struct Hub {
    config: HubConfig,
    rooms: Mutex<HashMap<Arc<str>, Arc<Room>>>,
    next_message: AtomicU64,
    next_subscriber: AtomicU64,
    /// Ticks on every room lookup: orders rooms by last use.
    clock: AtomicU64,
    subscribers: [AtomicU64; 2],
    published: AtomicU64,
    delivered: AtomicU64,
    /// Content bytes retained by all rooms together.
    history_total: AtomicUsize,
    publish_stalls: AtomicU64,
    stall_micros: AtomicU64,
    rooms_evicted: AtomicU64,
    /// Indexed by `CloseReason as usize`.
    closed: [AtomicU64; CloseReason::ALL.len()],
    /// Set by [`Hub::close_all`]: no new subscribers from then on.
    closing: AtomicBool,
    /// Each front door's encoding of a message, registered at its start.
    encoders: [OnceLock<Encoder>; 2],
    /// Where publishes send the rooms whose parked readers need waking
    /// (see [`Hub::wake_later`]); `None` if the thread could not start.
    waker: Option<crossbeam_channel::Sender<Arc<room_log::Shared>>>,
    /// Where accepted messages are stored (`--data-dir`); none: memory only.
    journal: Option<Arc<dyn Journal>>,
    /// Where publishes go when rooms are shared with other nodes
    /// (`--cluster`); none: this hub stamps them itself.
    relay: Option<Arc<dyn Relay>>,
    /// What every subscriber is told outside the rooms' messages.
    bulletin: notice::Bulletin,
    /// Told when [`Hub::serving`] may have changed.
    serving_changes: Changes,
}

/// Makes a message's bytes for one protocol (see [`Hub::set_encoder`]).
pub type Encoder = fn(&Message) -> Vec<u8>;

impl Hub {
    pub fn new(config: HubConfig) -> Hub {
        let (tx, rx) = crossbeam_channel::unbounded::<Arc<room_log::Shared>>();
        // Ends when the hub (the only sender) is dropped.
        let waker = std::thread::Builder::new()
            .name("hub-waker".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                // SCHED_BATCH: a publisher that hands it a room is not
                // preempted on the spot by the thousand wake-ups it then
                // makes (measured: publish p99 at 1,000 subscribers 3.2 ms
                // at normal policy; see BENCHMARKS.md, publish cost).
                if let Err(e) = crate::sys::set_thread_policy(crate::sys::CpuPolicy::Batch) {
                    log::debug!("hub-waker stays at normal policy: {e}");
                }
                for room in rx {
                    room.wake_now();
                }
            })
            .map_err(|e| log::warn!("no hub-waker thread ({e}): publishers wake readers"))
            .ok()
            .map(|_| tx);
        Hub {
            waker,
            journal: None,
            relay: None,
            config,
            rooms: Mutex::new(HashMap::new()),
            next_message: AtomicU64::new(1),
            next_subscriber: AtomicU64::new(1),
            clock: AtomicU64::new(0),
            subscribers: Default::default(),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            history_total: AtomicUsize::new(0),
            publish_stalls: AtomicU64::new(0),
            stall_micros: AtomicU64::new(0),
            rooms_evicted: AtomicU64::new(0),
            closed: Default::default(),
            closing: Default::default(),
            encoders: Default::default(),
            bulletin: Default::default(),
            serving_changes: Default::default(),
        }
    }

    /// Registers how `protocol` encodes a message. From then on `publish`
    /// encodes each message once for that protocol, before its subscribers
    /// see it, when the room has one: a thousand subscriber threads that
    /// meet a message not yet encoded would otherwise queue behind the
    /// first one's encoding.
    pub fn set_encoder(&self, protocol: Protocol, encode: Encoder) {
        let _ = self.encoders[protocol as usize].set(encode);
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

    /// Whether [`Hub::publish`] waits for more than the room: for the
    /// journal to store the message (`--fsync always|batch`) or for the
    /// relay (`--cluster`).
    pub fn publish_waits(&self) -> bool {
        self.relay.is_some() || self.journal.as_ref().is_some_and(|j| j.holds_delivery())
    }

    /// Whether [`Hub::subscribe`] may wait for more than the room: for
    /// the relay to follow a room new to this node (`--cluster`).
    pub fn subscribe_waits(&self) -> bool {
        self.relay.is_some()
    }

    /// Notes a message id given elsewhere (the journal, the relay): ids
    /// this hub gives from now on come after it.
    fn seen_id(&self, id: &str) {
        if let Some(n) = id_number(id) {
            self.next_message.fetch_max(n + 1, Ordering::Relaxed);
        }
    }

    /// Validates and publishes a message to every subscriber of its room.
    /// Waits at most `publish_stall` (for a subscriber a window behind),
    /// never on a socket. Runs on any thread.
    pub fn publish(&self, draft: Draft) -> Result<Arc<Message>, Error> {
        let Draft {
            room,
            user,
            content,
            kind,
        } = draft;
        // The name validation returns; no copy of it on this path.
        let name = self.check(&room, &user, &content)?;
        if let Some(relay) = &self.relay {
            // Shared rooms: the relay's order is the room's order; the
            // message comes back into this hub through `Hub::apply`.
            return relay.publish(name, &user, &content, kind);
        }
        let (message, ticket, shared) = self.with_space(name, |room, state| {
            let message = self.stamp(room, state, user, content, kind);
            // Under the room lock, so that the journal gets a room's
            // messages in sequence order (see `journal`).
            let ticket = match &self.journal {
                Some(journal) => Some((journal, journal.append(&message)?)),
                None => None,
            };
            let hold = ticket.is_some_and(|(j, _)| j.holds_delivery());
            self.keep(state, message.clone(), !hold);
            state.published += 1;
            self.published.fetch_add(1, Ordering::Relaxed);
            Ok((message, ticket, state.log.shared().clone()))
        })?;
        if let Some((journal, ticket)) = ticket {
            journal.wait(ticket)?;
            if journal.holds_delivery() {
                shared.reveal(message.seq);
            }
        }
        self.appended(shared);
        Ok(message)
    }

    /// Runs `append` on the room `name`, under its lock, once one more
    /// message fits every subscriber's window: waits at most
    /// `publish_stall` for a laggard, then removes it. Called with no lock
    /// held.
    fn with_space<T>(
        &self,
        name: &str,
        append: impl FnOnce(&Room, &mut RoomState) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut stalled: Option<Instant> = None;
        loop {
            let room = self.room(name)?;
            let mut state = room.state.lock();
            if state.freed {
                continue;
            }
            if self.has_laggard(&mut state) {
                let since = *stalled.get_or_insert_with(Instant::now);
                let waited = since.elapsed();
                if waited < self.config.publish_stall {
                    // Let go of the room while the laggard catches up.
                    drop(state);
                    std::thread::sleep(STALL_POLL.min(self.config.publish_stall - waited));
                    continue;
                }
                self.evict_laggards(&room, &mut state);
            }
            if let Some(since) = stalled {
                self.publish_stalls.fetch_add(1, Ordering::Relaxed);
                let micros = since.elapsed().as_micros() as u64;
                self.stall_micros.fetch_add(micros, Ordering::Relaxed);
            }
            return append(&room, &mut state);
        }
    }

    /// After a message is appended (no lock held): wakes the room's
    /// readers and keeps all history under its budget.
    fn appended(&self, shared: Arc<room_log::Shared>) {
        if shared.announce() {
            self.wake_later(shared);
        }
        if self.history_total.load(Ordering::Relaxed) > self.config.history_total_bytes {
            self.shed_history();
        }
    }

    /// Hands the wake of a room's parked readers to the `hub-waker` thread.
    ///
    /// Why not wake them here: waking a thousand parked threads is one call
    /// but a thousand wake-ups in the kernel, and the publisher (an HTTP
    /// worker, a gRPC call) would pay for it before it answers its client;
    /// publish cost would grow with the subscribers. Handed off, a publish
    /// costs the same at 1 and 10,000 subscribers (BENCHMARKS.md), and while
    /// the waker works, further publishes ride on the same wake.
    fn wake_later(&self, room: Arc<room_log::Shared>) {
        match &self.waker {
            Some(waker) => {
                if let Err(e) = waker.send(room) {
                    e.0.wake_now();
                }
            }
            None => room.wake_now(),
        }
    }

    /// Whether appending one more message would put a subscriber more than
    /// its window behind. Looks at the subscribers only when the cached lower
    /// bound says one may be.
    fn has_laggard(&self, state: &mut RoomState) -> bool {
        let next = state.log.tail() + 1;
        if !self.behind(next, state.slowest) {
            return false;
        }
        state.slowest = slowest(&state.subscribers, next);
        self.behind(next, state.slowest)
    }

    /// Whether a subscriber at `position` would be more than its window
    /// behind once message `next` is appended: the one lag rule.
    fn behind(&self, next: u64, position: u64) -> bool {
        next - position.min(next) > self.config.subscriber_queue as u64
    }

    fn evict_laggards(&self, room: &Room, state: &mut RoomState) {
        let next = state.log.tail() + 1;
        let mut i = 0;
        while i < state.subscribers.len() {
            if self.behind(next, state.subscribers[i].state.position()) {
                self.remove_slot(room, state, i, CloseReason::SlowConsumer);
                state.dropped_slow += 1;
            } else {
                i += 1;
            }
        }
        state.slowest = slowest(&state.subscribers, next);
    }

    /// Takes subscriber `index` out of the room, records why (the first
    /// reason set wins) and counts the close: the one way a slot leaves.
    fn remove_slot(&self, room: &Room, state: &mut RoomState, index: usize, reason: CloseReason) {
        let slot = state.subscribers.swap_remove(index);
        state.by_protocol[slot.protocol as usize] -= 1;
        room.subscribers.fetch_sub(1, Ordering::Relaxed);
        slot.state.set_reason(reason);
        let counted = slot.state.reason().unwrap_or(reason);
        self.closed[counted as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Gives a message its id and sequence. Runs with the room's lock held.
    fn stamp(
        &self,
        room: &Room,
        state: &RoomState,
        user: String,
        content: String,
        kind: MessageKind,
    ) -> Arc<Message> {
        let message = Arc::new(Message {
            id: message_id(self.next_message.fetch_add(1, Ordering::Relaxed)),
            seq: state.log.last() + 1,
            room: room.name.clone(),
            user,
            content,
            kind,
            timestamp: SystemTime::now(),
            encoded: Default::default(),
        });
        self.encode_for(state, &message);
        message
    }

    /// Encodes `message` once for each protocol the room has subscribers
    /// of. Runs with the room's lock held.
    fn encode_for(&self, state: &RoomState, message: &Message) {
        for p in Protocol::ALL {
            if let Some(encode) = self.encoders[p as usize].get() {
                if state.by_protocol[p as usize] > 0 {
                    message.encoded(p, encode);
                }
            }
        }
    }

    /// Appends a stamped message to its room's log (`visible`: shown to
    /// subscribers now) and applies the room's retention. Runs with the
    /// room's lock held.
    fn keep(&self, state: &mut RoomState, message: Arc<Message>, visible: bool) {
        self.history_total
            .fetch_add(message.content.len(), Ordering::Relaxed);
        if visible {
            state.log.append(message);
        } else {
            state.log.append_hidden(message);
        }
        // The log keeps what readers still need on its own; retention is
        // about what a new subscriber can replay.
        let mut forgotten = 0;
        while state.log.retained() > self.config.history as u64
            || (state.log.retained_bytes() > self.config.history_bytes && state.log.retained() > 1)
        {
            forgotten += state.log.forget_oldest().unwrap_or(0);
        }
        self.history_total.fetch_sub(forgotten, Ordering::Relaxed);
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
    /// `after_seq`, the subscription first reads the retained messages with a
    /// larger sequence (see [`Replay`]); registration and the replay cut
    /// happen under one lock, so there is no gap and no duplicate between
    /// replay and live messages.
    pub fn subscribe(
        self: &Arc<Self>,
        room: &str,
        after_seq: Option<u64>,
        protocol: Protocol,
    ) -> Result<(Subscription, Replay), Error> {
        self.subscribe_at(room, protocol, |_| after_seq)
    }

    /// [`Hub::subscribe`] after the sequence `after` picks from the room's
    /// log, under the room's lock (`Some(tail + 1)`: an unknown position).
    fn subscribe_at(
        self: &Arc<Self>,
        room: &str,
        protocol: Protocol,
        after: impl Fn(&room_log::Log) -> Option<u64>,
    ) -> Result<(Subscription, Replay), Error> {
        let name = normalize_room(room)?;
        if self.closing.load(Ordering::Acquire) {
            return Err(Error::Unavailable(SHUTDOWN_NOTICE.into()));
        }
        // Shared rooms: this node follows the room from now on, and has
        // it up to date, before the subscriber takes its position.
        if let Some(relay) = &self.relay {
            relay.follow(name)?;
        }
        let registered = self.register(name, protocol, after);
        if let (Err(_), Some(relay)) = (&registered, &self.relay) {
            relay.unfollow(name);
        }
        registered
    }

    /// The registering part of [`Hub::subscribe_at`].
    fn register(
        self: &Arc<Self>,
        name: &str,
        protocol: Protocol,
        after: impl Fn(&room_log::Log) -> Option<u64>,
    ) -> Result<(Subscription, Replay), Error> {
        let id = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        loop {
            let room = self.room(name)?;
            let mut guard = room.state.lock();
            if guard.freed {
                continue;
            }
            let tail = guard.log.tail();
            let oldest = guard.log.first_retained();
            let mut replay = Replay::default();
            let from = match after(&guard.log) {
                None => tail + 1,
                Some(after) if after > tail => {
                    replay.unknown_position = true;
                    oldest
                }
                Some(after) => {
                    replay.missed = oldest.saturating_sub(after + 1);
                    (after + 1).max(oldest)
                }
            };
            replay.first_seq = from;
            replay.replayed = tail + 1 - from;
            let state = Arc::new(SubscriberState {
                reason: AtomicU8::new(0),
                taken: AtomicU64::new(from - 1),
                joined: tail,
                end: AtomicU64::new(u64::MAX),
            });
            let reader = guard.log.reader(from);
            guard.subscribers.push(Slot {
                id,
                protocol,
                state: state.clone(),
            });
            guard.by_protocol[protocol as usize] += 1;
            room.subscribers.fetch_add(1, Ordering::Relaxed);
            drop(guard);
            self.subscribers[protocol as usize].fetch_add(1, Ordering::Relaxed);
            let subscription = Subscription {
                hub: self.clone(),
                room,
                id,
                protocol,
                reader,
                state,
                watcher: None,
                heard: self.bulletin.number(),
            };
            return Ok((subscription, replay));
        }
    }

    fn unregister(&self, sub: &Subscription) {
        self.subscribers[sub.protocol as usize].fetch_sub(1, Ordering::Relaxed);
        let room = &sub.room;
        let freed = {
            let mut guard = room.state.lock();
            if let Some(pos) = guard.subscribers.iter().position(|s| s.id == sub.id) {
                // Its own reason, if the stream set one, comes first.
                self.remove_slot(room, &mut guard, pos, CloseReason::ClientClosed);
            }
            // Marked under the room's lock, removed from the map after it:
            // a thread that finds the room freed in between looks again.
            let empty = !guard.freed && guard.subscribers.is_empty() && guard.log.retained() == 0;
            guard.freed |= empty;
            empty
        };
        if freed {
            self.forget_room(room);
        }
        if let Some(relay) = &self.relay {
            relay.unfollow(&room.name);
        }
    }

    /// Marks every subscriber as closing for `reason` and removes it; their
    /// threads read what was published before this, then see the end.
    pub fn close_all(&self, reason: CloseReason) {
        self.closing.store(true, Ordering::Release);
        let rooms: Vec<_> = self.rooms.lock().values().cloned().collect();
        for room in rooms {
            let shared = {
                let mut guard = room.state.lock();
                let tail = guard.log.tail();
                while let Some(last) = guard.subscribers.len().checked_sub(1) {
                    // `end` first: a reader that sees the reason sees it.
                    guard.subscribers[last]
                        .state
                        .end
                        .store(tail, Ordering::Release);
                    self.remove_slot(&room, &mut guard, last, reason);
                }
                guard.log.shared().clone()
            };
            shared.wake();
        }
    }

    pub fn stats(&self) -> HubStats {
        let mut stats = HubStats {
            rooms: self.rooms.lock().len() as u64,
            published: self.published.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            history_bytes: self.history_total.load(Ordering::Relaxed) as u64,
            publish_stalls: self.publish_stalls.load(Ordering::Relaxed),
            publish_stall_micros: self.stall_micros.load(Ordering::Relaxed),
            rooms_evicted: self.rooms_evicted.load(Ordering::Relaxed),
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
            token_expired: closed(CloseReason::TokenExpired),
        };
        stats
    }

    /// Counts for one room, or `None` when it does not exist.
    pub fn room_stats(&self, room: &str) -> Option<RoomStats> {
        let room = self.rooms.lock().get(room).cloned()?;
        let r = room.state.lock();
        Some(RoomStats {
            subscribers: r.subscribers.len() as u64,
            published: r.published,
            delivered: room.delivered.load(Ordering::Relaxed),
            dropped_slow: r.dropped_slow,
            retained: r.log.retained(),
            retained_bytes: r.log.retained_bytes() as u64,
            last_seq: r.log.tail(),
        })
    }
}

/// The lowest position of `subscribers`, or `next` when there are none.
fn slowest(subscribers: &[Slot], next: u64) -> u64 {
    subscribers
        .iter()
        .map(|s| s.state.position())
        .min()
        .unwrap_or(next)
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

    fn drain(sub: &mut Subscription) -> Vec<Arc<Message>> {
        sub.drain()
    }

    /// What a new subscription reads before anything else is published.
    fn replay_of(sub: &mut Subscription) -> Vec<Arc<Message>> {
        sub.drain()
    }

    #[test]
    fn messages_arrive_in_order_with_room_sequence_and_unique_ids() {
        let hub = hub_with(16, 10);
        let (mut a, _) = hub.subscribe("a", None, Protocol::Grpc).unwrap();
        let (mut b, _) = hub.subscribe("b", None, Protocol::Sse).unwrap();
        let mut ids = std::collections::HashSet::new();
        for i in 0..5 {
            let m = hub.publish(Draft::chat("a", "u", format!("a{i}"))).unwrap();
            assert!(ids.insert(m.id.clone()));
            let m = hub.publish(Draft::chat("b", "u", format!("b{i}"))).unwrap();
            assert!(ids.insert(m.id.clone()));
        }
        let got: Vec<_> = drain(&mut a)
            .iter()
            .map(|m| (m.seq, m.content.clone()))
            .collect();
        let want: Vec<_> = (0..5).map(|i| (i as u64 + 1, format!("a{i}"))).collect();
        assert_eq!(got, want);
        assert!(drain(&mut b).iter().all(|m| &*m.room == "b"));
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

    fn hub_stalling(queue: usize, stall: Duration) -> Arc<Hub> {
        Arc::new(Hub::new(HubConfig {
            subscriber_queue: queue,
            publish_stall: stall,
            history: 0,
            ..HubConfig::default()
        }))
    }

    #[test]
    fn slow_subscriber_is_dropped_publisher_never_blocks() {
        let hub = hub_stalling(8, Duration::ZERO);
        let (mut slow, _) = hub.subscribe("r", None, Protocol::Grpc).unwrap();
        let (mut fast, _) = hub.subscribe("r", None, Protocol::Grpc).unwrap();
        let mut got = Vec::new();
        for i in 0..100 {
            let started = Instant::now();
            hub.publish(Draft::chat("r", "u", i.to_string())).unwrap();
            assert!(started.elapsed() < Duration::from_millis(100));
            got.extend(drain(&mut fast));
        }
        assert_eq!(got.len(), 100);
        assert!(got.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
        assert_eq!(slow.close_reason(), Some(CloseReason::SlowConsumer));
        // A slow consumer ends at once: what it trails is not sent.
        assert_eq!(slow.wait(None), Wait::Closed(CloseReason::SlowConsumer));
        assert!(slow.recv_timeout(Duration::from_millis(1)).is_none());
        assert_eq!(hub.stats().closed(CloseReason::SlowConsumer), 1);
        assert_eq!(hub.room_stats("r").unwrap().subscribers, 1);
        assert_eq!(hub.room_stats("r").unwrap().dropped_slow, 1);
        drop(slow);
        assert_eq!(hub.stats().subscribers, 1, "the dropped one is gone");
        assert_eq!(
            hub.stats().closed(CloseReason::SlowConsumer),
            1,
            "counted once"
        );
    }

    #[test]
    fn a_subscriber_exactly_its_window_behind_stays_and_one_more_goes() {
        let hub = hub_stalling(5, Duration::ZERO);
        let (mut sub, _) = hub.subscribe("r", None, Protocol::Sse).unwrap();
        for i in 0..5 {
            hub.publish(Draft::chat("r", "u", i.to_string())).unwrap();
        }
        assert_eq!(
            sub.close_reason(),
            None,
            "five behind with a window of five"
        );
        // Taking two makes room for two more.
        let first: Vec<u64> = sub.peek(2).map(|m| m.seq).collect();
        assert_eq!(first, vec![1, 2]);
        sub.advance(2);
        for i in 5..7 {
            hub.publish(Draft::chat("r", "u", i.to_string())).unwrap();
        }
        assert_eq!(sub.close_reason(), None);
        assert_eq!(sub.available(), 5);
        hub.publish(Draft::chat("r", "u", "one too many")).unwrap();
        assert_eq!(sub.close_reason(), Some(CloseReason::SlowConsumer));
    }

    #[test]
    fn a_stuck_subscriber_holds_a_publisher_for_the_stall_at_most_once() {
        let stall = Duration::from_millis(50);
        let hub = hub_stalling(4, stall);
        let (mut keeps_up, _) = hub.subscribe("r", None, Protocol::Sse).unwrap();
        let (stuck, _) = hub.subscribe("r", None, Protocol::Sse).unwrap();
        let mut slowest = Duration::ZERO;
        for i in 0..50 {
            let started = Instant::now();
            hub.publish(Draft::chat("r", "u", i.to_string())).unwrap();
            let took = started.elapsed();
            slowest = slowest.max(took);
            assert_eq!(keeps_up.drain().len(), 1);
        }
        assert_eq!(stuck.close_reason(), Some(CloseReason::SlowConsumer));
        assert!(slowest >= stall, "the publisher waited {slowest:?}");
        // Bounded by the stall plus one look (the machine may be busy).
        assert!(slowest < stall * 10, "the publisher waited {slowest:?}");
        let stats = hub.stats();
        assert_eq!(stats.publish_stalls, 1);
        assert!(stats.publish_stall_micros >= stall.as_micros() as u64);
        assert_eq!(stats.delivered, 50);
    }

    #[test]
    fn a_stuck_subscriber_that_reconnects_holds_each_publish_for_the_stall_at_most() {
        let stall = Duration::from_millis(30);
        let hub = hub_stalling(4, stall);
        let mut slowest = Duration::ZERO;
        for round in 0..5 {
            // A new stuck subscription each round, as a client that
            // reconnects and again reads nothing.
            let (stuck, _) = hub.subscribe("r", None, Protocol::Sse).unwrap();
            for i in 0..6 {
                let started = Instant::now();
                hub.publish(Draft::chat("r", "u", format!("{round}.{i}")))
                    .unwrap();
                slowest = slowest.max(started.elapsed());
            }
            assert_eq!(stuck.close_reason(), Some(CloseReason::SlowConsumer));
        }
        assert_eq!(hub.stats().publish_stalls, 5, "one stall per reconnect");
        assert!(slowest < stall * 10, "a publish waited {slowest:?}");
    }

    #[test]
    fn a_registered_encoding_is_made_by_the_publisher_only_for_rooms_that_need_it() {
        let hub = hub_with(16, 4);
        hub.set_encoder(Protocol::Sse, |m| m.content.clone().into_bytes());
        let (_sse, _) = hub.subscribe("with", None, Protocol::Sse).unwrap();
        let (_grpc, _) = hub.subscribe("without", None, Protocol::Grpc).unwrap();
        let m = hub.publish(Draft::chat("with", "u", "x")).unwrap();
        assert_eq!(
            m.encoded(Protocol::Sse, |_| panic!("encoded already")),
            b"x"
        );
        let m = hub.publish(Draft::chat("without", "u", "y")).unwrap();
        assert_eq!(m.encoded(Protocol::Sse, |_| b"later".to_vec()), b"later");
    }

    #[test]
    fn a_stalled_publisher_goes_on_as_soon_as_the_laggard_catches_up() {
        let hub = hub_stalling(4, Duration::from_secs(30));
        let (mut sub, _) = hub.subscribe("r", None, Protocol::Sse).unwrap();
        for i in 0..4 {
            hub.publish(Draft::chat("r", "u", i.to_string())).unwrap();
        }
        let publisher = {
            let hub = hub.clone();
            thread::spawn(move || hub.publish(Draft::chat("r", "u", "fifth")).unwrap().seq)
        };
        // The publisher is stalled on us (or about to be) until we read one.
        let got = sub.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got.seq, 1);
        let started = Instant::now();
        assert_eq!(publisher.join().unwrap(), 5);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not the whole stall"
        );
        assert_eq!(sub.close_reason(), None);
        let rest: Vec<u64> = sub.drain().iter().map(|m| m.seq).collect();
        assert_eq!(rest, vec![2, 3, 4, 5]);
    }

    #[test]
    fn shutdown_delivers_what_was_published_before_it_then_ends() {
        let hub = hub_with(100, 0);
        let (mut sub, _) = hub.subscribe("r", None, Protocol::Sse).unwrap();
        for i in 0..3 {
            hub.publish(Draft::chat("r", "u", i.to_string())).unwrap();
        }
        hub.close_all(CloseReason::Shutdown);
        hub.publish(Draft::chat("r", "u", "after")).unwrap();
        assert_eq!(sub.drain().len(), 3);
        assert_eq!(sub.wait(None), Wait::Closed(CloseReason::Shutdown));
        assert!(hub.subscribe("r", None, Protocol::Sse).is_err());
    }

    #[test]
    fn a_parked_subscriber_wakes_for_a_publish_from_another_thread() {
        let hub = hub_with(100, 0);
        let (mut sub, _) = hub.subscribe("r", None, Protocol::Sse).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = thread::spawn(move || {
            tx.send(()).unwrap();
            sub.recv_timeout(Duration::from_secs(10)).map(|m| m.seq)
        });
        rx.recv().unwrap();
        hub.publish(Draft::chat("r", "u", "x")).unwrap();
        assert_eq!(reader.join().unwrap(), Some(1));
    }

    /// A watcher that counts its wakes and lets a test wait for one.
    struct Counter(std::sync::Mutex<u64>, std::sync::Condvar);

    impl Watch for Counter {
        fn wake(&self) {
            *self.0.lock().unwrap() += 1;
            self.1.notify_all();
        }
    }

    impl Counter {
        fn wait_past(&self, n: u64) -> u64 {
            let guard = self.0.lock().unwrap();
            let (guard, _) = self
                .1
                .wait_timeout_while(guard, Duration::from_secs(10), |c| *c <= n)
                .unwrap();
            *guard
        }
    }

    #[test]
    fn a_watcher_is_called_once_per_wake_for_all_its_subscriptions_and_at_a_close() {
        let hub = hub_stalling(4, Duration::ZERO);
        let counter = Arc::new(Counter(Default::default(), Default::default()));
        let watcher: Arc<dyn Watch> = counter.clone();
        let mut subs: Vec<Subscription> = (0..3)
            .map(|_| hub.subscribe("r", None, Protocol::Grpc).unwrap().0)
            .collect();
        for s in &mut subs {
            s.watch(watcher.clone());
        }
        hub.publish(Draft::chat("r", "u", "x")).unwrap();
        // One call for three subscriptions (made by the hub-waker thread).
        assert!(counter.wait_past(0) >= 1);
        assert_eq!(subs[0].check(), Wait::Ready);
        for s in &mut subs[1..] {
            s.drain();
        }
        // Nobody reads subs[0]: the publish past its window closes it, and
        // the watcher hears of that too.
        let before = *counter.0.lock().unwrap();
        for i in 0..4 {
            hub.publish(Draft::chat("r", "u", i.to_string())).unwrap();
            for s in &mut subs[1..] {
                s.drain();
            }
        }
        assert!(counter.wait_past(before) > before);
        assert_eq!(subs[0].check(), Wait::Closed(CloseReason::SlowConsumer));
        // Registered once, counted three times; dropped subscriptions take
        // their registrations with them.
        let room = hub.room("r").unwrap();
        let log = room.state.lock().log.shared().clone();
        assert_eq!(log.watchers.lock()[0].1, 3);
        drop(subs);
        assert_eq!(log.watchers.lock().len(), 0);
    }

    #[test]
    fn replay_returns_retained_messages_after_sequence_and_counts_missed() {
        let hub = hub_with(16, 5);
        for i in 1..=8 {
            hub.publish(Draft::chat("r", "u", i.to_string())).unwrap();
        }
        // Retained: 4..=8.
        let (mut s, replay) = hub.subscribe("r", Some(5), Protocol::Sse).unwrap();
        assert_eq!(replay.missed, 0);
        let seqs: Vec<_> = replay_of(&mut s).iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![6, 7, 8]);
        assert_eq!((replay.replayed, replay.first_seq), (3, 6));

        let (mut s, replay) = hub.subscribe("r", Some(3), Protocol::Sse).unwrap();
        assert_eq!(replay.missed, 0);
        assert_eq!(replay_of(&mut s).len(), 5);

        let (mut s, replay) = hub.subscribe("r", Some(1), Protocol::Sse).unwrap();
        assert_eq!(replay.missed, 2, "2 and 3 are gone");
        assert_eq!(replay_of(&mut s)[0].seq, 4);

        let (mut s, replay) = hub.subscribe("r", Some(8), Protocol::Sse).unwrap();
        assert!(replay_of(&mut s).is_empty());
        assert!(!replay.unknown_position);

        let (mut s, replay) = hub.subscribe("r", Some(99), Protocol::Sse).unwrap();
        assert!(replay.unknown_position);
        assert_eq!(replay_of(&mut s).len(), 5);
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
        let (mut s, replay) = hub.subscribe("r", Some(0), Protocol::Sse).unwrap();
        assert_eq!(replay.missed, 7);
        assert_eq!(replay_of(&mut s)[0].seq, 8);
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
        let (mut sub, _) = hub.subscribe("r", Some(50), Protocol::Sse).unwrap();
        publisher.join().unwrap();
        let seqs: Vec<u64> = drain(&mut sub).iter().map(|m| m.seq).collect();
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
    fn at_the_room_limit_the_least_recently_used_idle_room_makes_way() {
        let hub = Arc::new(Hub::new(HubConfig {
            max_rooms: 2,
            ..HubConfig::default()
        }));
        hub.publish(Draft::chat("a", "u", "x")).unwrap();
        hub.publish(Draft::chat("b", "u", "x")).unwrap();
        hub.publish(Draft::chat("a", "u", "y")).unwrap();
        // b is the least recently used: it goes, history and all.
        hub.publish(Draft::chat("c", "u", "x")).unwrap();
        assert!(hub.room_stats("b").is_none());
        assert_eq!(hub.room_stats("a").unwrap().retained, 2);
        assert_eq!(hub.stats().rooms, 2);
        assert_eq!(hub.stats().rooms_evicted, 1);
        assert_eq!(hub.stats().history_bytes, 3);
        // Rooms with subscribers never make way: then the limit holds.
        let (_a, _) = hub.subscribe("a", None, Protocol::Sse).unwrap();
        let (_c, _) = hub.subscribe("c", None, Protocol::Sse).unwrap();
        assert!(matches!(
            hub.publish(Draft::chat("d", "u", "x")),
            Err(Error::ResourceExhausted(_))
        ));
        assert!(hub.publish(Draft::chat("a", "u", "z")).is_ok());
    }

    #[test]
    fn touching_ten_thousand_room_names_does_not_lock_out_new_rooms() {
        let hub = Arc::new(Hub::new(HubConfig {
            max_rooms: 100,
            ..HubConfig::default()
        }));
        for i in 0..10_000 {
            hub.publish(Draft::chat(format!("r{i}"), "u", "x")).unwrap();
        }
        assert_eq!(hub.stats().rooms, 100);
        assert!(hub.subscribe("fresh", None, Protocol::Sse).is_ok());
    }

    #[test]
    fn all_history_together_stays_under_its_budget_oldest_rooms_first() {
        let hub = Arc::new(Hub::new(HubConfig {
            history: 1000,
            history_bytes: 1 << 20,
            history_total_bytes: 10_000,
            ..HubConfig::default()
        }));
        for i in 0..40 {
            hub.publish(Draft::chat("old", "u", format!("{i:0>100}")))
                .unwrap();
        }
        for i in 0..60 {
            hub.publish(Draft::chat("new", "u", format!("{i:0>100}")))
                .unwrap();
        }
        assert_eq!(hub.stats().history_bytes, 10_000);
        // One more: over budget, so the least recently used room gives up
        // its history first, down to 90% of the budget.
        hub.publish(Draft::chat("new", "u", "x".repeat(100)))
            .unwrap();
        let stats = hub.stats();
        assert_eq!(stats.history_bytes, 9_000);
        let old = hub.room_stats("old").unwrap();
        let new = hub.room_stats("new").unwrap();
        assert_eq!(old.retained, 29, "the old room gave up its oldest 11");
        assert_eq!(new.retained, 61, "the new one kept everything");
        assert_eq!(old.retained_bytes + new.retained_bytes, stats.history_bytes);
        // A subscriber resuming in the old room is told what it missed.
        let (_s, replay) = hub.subscribe("old", Some(0), Protocol::Sse).unwrap();
        assert_eq!(replay.missed, 11);
        assert_eq!(replay.replayed, 29);
        // Shedding more than a room holds moves on to the next room.
        hub.publish(Draft::chat("new", "u", "y".repeat(5_000)))
            .unwrap();
        assert_eq!(hub.room_stats("old").unwrap().retained, 0);
        assert!(hub.stats().history_bytes <= 9_000);
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
                let mut sub = sub;
                thread::spawn(move || {
                    let mut last = 0;
                    let mut per_publisher = [0u32; 4];
                    for _ in 0..20_000 {
                        let m = sub.recv_timeout(Duration::from_secs(30)).unwrap();
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

    /// A reader thread that takes everything in bursts, checking order.
    fn reader(
        mut sub: Subscription,
        total: u64,
        pause_every: Option<u64>,
    ) -> thread::JoinHandle<(u64, Option<CloseReason>)> {
        thread::spawn(move || {
            let mut expected = 1;
            while expected <= total {
                match sub.wait(Some(Instant::now() + Duration::from_secs(30))) {
                    Wait::Ready => {
                        let mut n = 0;
                        for m in sub.peek(MAX_BURST) {
                            assert_eq!(m.seq, expected, "in order, nothing missing");
                            expected += 1;
                            n += 1;
                        }
                        sub.advance(n);
                        if let Some(every) = pause_every {
                            if expected % every < n as u64 {
                                // Stops reading for far longer than the
                                // window lasts at this publish rate.
                                thread::sleep(Duration::from_millis(500));
                            }
                        }
                    }
                    Wait::Closed(r) => return (expected - 1, Some(r)),
                    Wait::TimedOut => panic!("nothing for 30 s at {expected}"),
                }
            }
            (expected - 1, None)
        })
    }

    #[test]
    fn a_million_messages_through_one_room_with_a_slow_and_a_fast_subscriber() {
        const TOTAL: u64 = 1_000_000;
        let hub = Arc::new(Hub::new(HubConfig {
            subscriber_queue: 1 << 16,
            publish_stall: Duration::from_millis(20),
            history: 100,
            ..HubConfig::default()
        }));
        let fast = reader(
            hub.subscribe("r", None, Protocol::Sse).unwrap().0,
            TOTAL,
            None,
        );
        let slow = reader(
            hub.subscribe("r", None, Protocol::Sse).unwrap().0,
            TOTAL,
            Some(100_000),
        );
        for i in 0..TOTAL {
            hub.publish(Draft::chat("r", "u", i.to_string())).unwrap();
        }
        assert_eq!(fast.join().unwrap(), (TOTAL, None), "the fast one got all");
        let (got, reason) = slow.join().unwrap();
        assert!(got < TOTAL);
        assert_eq!(reason, Some(CloseReason::SlowConsumer));
        let stats = hub.stats();
        assert_eq!(stats.closed(CloseReason::SlowConsumer), 1);
        assert_eq!(stats.delivered, TOTAL + got);
        // The log held what readers needed, no more: history is 100.
        assert_eq!(hub.room_stats("r").unwrap().retained, 100);
    }

    #[test]
    fn many_rooms_published_concurrently_keep_their_own_order() {
        const ROOMS: usize = 8;
        const EACH: u64 = 5_000;
        let hub = hub_with(1 << 16, 10);
        let readers: Vec<_> = (0..ROOMS)
            .flat_map(|r| {
                let hub = &hub;
                (0..2).map(move |_| {
                    reader(
                        hub.subscribe(&format!("room{r}"), None, Protocol::Sse)
                            .unwrap()
                            .0,
                        EACH * 2,
                        None,
                    )
                })
            })
            .collect();
        let publishers: Vec<_> = (0..4)
            .map(|p| {
                let hub = hub.clone();
                thread::spawn(move || {
                    for i in 0..EACH {
                        for r in 0..ROOMS {
                            if (r + p) % 2 == 0 {
                                hub.publish(Draft::chat(format!("room{r}"), "u", i.to_string()))
                                    .unwrap();
                            }
                        }
                    }
                })
            })
            .collect();
        for p in publishers {
            p.join().unwrap();
        }
        for r in readers {
            assert_eq!(r.join().unwrap(), (EACH * 2, None));
        }
        assert_eq!(hub.stats().published, ROOMS as u64 * EACH * 2);
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

/// The hub against a model a few lines long: random publishes, subscribes
/// (live and resuming), takes and drops in two rooms, with a small window
/// and history and no stall, so that every eviction is deterministic.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    const WINDOW: u64 = 4;
    const HISTORY: u64 = 5;

    #[derive(Debug, Clone)]
    enum Op {
        Publish(usize),
        Subscribe(usize, Option<u64>),
        Take(usize, usize),
        Drop(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..2usize).prop_map(Op::Publish),
            1 => (0..2usize, proptest::option::of(0..30u64)).prop_map(|(r, a)| Op::Subscribe(r, a)),
            3 => (0..8usize, 1..6usize).prop_map(|(s, n)| Op::Take(s, n)),
            1 => (0..8usize).prop_map(Op::Drop),
        ]
    }

    struct ModelSub {
        room: usize,
        next: u64,
        joined: u64,
        evicted: bool,
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn the_hub_behaves_like_its_model(ops in proptest::collection::vec(op(), 1..120)) {
            let hub = Arc::new(Hub::new(HubConfig {
                subscriber_queue: WINDOW as usize,
                publish_stall: Duration::ZERO,
                history: HISTORY as usize,
                ..HubConfig::default()
            }));
            let names = ["a", "b"];
            let mut tails = [0u64; 2];
            let mut subs: Vec<(Subscription, ModelSub)> = Vec::new();
            for op in ops {
                match op {
                    Op::Publish(r) => {
                        let next = tails[r] + 1;
                        for (_, m) in subs.iter_mut().filter(|(_, m)| m.room == r && !m.evicted) {
                            if next - (m.next - 1).max(m.joined) > WINDOW {
                                m.evicted = true;
                            }
                        }
                        let got = hub.publish(Draft::chat(names[r], "u", "x")).unwrap();
                        prop_assert_eq!(got.seq, next);
                        tails[r] = next;
                    }
                    Op::Subscribe(r, after) => {
                        if subs.len() >= 8 {
                            continue;
                        }
                        let tail = tails[r];
                        let oldest = tail.saturating_sub(HISTORY) + 1;
                        let (sub, replay) = hub.subscribe(names[r], after, Protocol::Sse).unwrap();
                        let from = match after {
                            None => tail + 1,
                            Some(a) if a > tail => {
                                prop_assert!(replay.unknown_position);
                                oldest
                            }
                            Some(a) => {
                                prop_assert_eq!(replay.missed, oldest.saturating_sub(a + 1));
                                (a + 1).max(oldest)
                            }
                        };
                        prop_assert_eq!(replay.replayed, tail + 1 - from);
                        subs.push((sub, ModelSub { room: r, next: from, joined: tail, evicted: false }));
                    }
                    Op::Take(i, max) => {
                        let Some((sub, m)) = subs.get_mut(i) else { continue };
                        if m.evicted {
                            prop_assert_eq!(sub.close_reason(), Some(CloseReason::SlowConsumer));
                            prop_assert_eq!(sub.wait(None), Wait::Closed(CloseReason::SlowConsumer));
                            continue;
                        }
                        prop_assert_eq!(sub.close_reason(), None);
                        let end = (m.next + max as u64).min(tails[m.room] + 1);
                        let got: Vec<u64> = sub.peek(max).map(|x| x.seq).collect();
                        prop_assert_eq!(got, (m.next..end).collect::<Vec<_>>());
                        sub.advance((end - m.next) as usize);
                        m.next = end;
                        prop_assert_eq!(sub.available(), tails[m.room] + 1 - m.next);
                    }
                    Op::Drop(i) => {
                        if i < subs.len() {
                            subs.swap_remove(i);
                        }
                    }
                }
            }
            let stats = hub.stats();
            prop_assert_eq!(stats.subscribers, subs.len() as u64);
        }
    }
}
