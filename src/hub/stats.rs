//! The hub's tuning and the counts it reports.

use std::time::Duration;

use super::CloseReason;

/// Tuning for the hub; validated by `config`.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// How far (in messages) a subscriber may trail its room's newest
    /// message: its window. One more and a publisher stalls, then drops it.
    pub subscriber_queue: usize,
    /// Longest a publish waits for a subscriber a window behind before that
    /// subscriber is dropped as slow (zero: drop at once).
    pub publish_stall: Duration,
    /// Messages kept per room for resuming subscribers.
    pub history: usize,
    /// Bytes of content retained per room, at most (the oldest go first;
    /// the newest message is always kept).
    pub history_bytes: usize,
    /// Largest accepted `content`, in bytes.
    pub max_content_bytes: usize,
    /// Most rooms that may exist at once (rooms without subscribers make
    /// way, least recently used first).
    pub max_rooms: usize,
    /// Content bytes retained by all rooms together; over it, the least
    /// recently used rooms forget their oldest messages.
    pub history_total_bytes: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            subscriber_queue: 1024,
            publish_stall: Duration::from_millis(10),
            history: 1000,
            history_bytes: 4 * 1024 * 1024,
            max_content_bytes: 1024 * 1024,
            max_rooms: 10_000,
            history_total_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Totals since start, plus the current gauges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HubStats {
    pub rooms: u64,
    pub subscribers: u64,
    pub subscribers_by_protocol: [u64; 2],
    pub published: u64,
    pub delivered: u64,
    /// Content bytes retained by all rooms.
    pub history_bytes: u64,
    /// Publishes that waited for a lagging subscriber, and how long in all.
    pub publish_stalls: u64,
    pub publish_stall_micros: u64,
    /// Rooms removed at the room limit to make way for new ones.
    pub rooms_evicted: u64,
    /// Subscriptions ended since start, by reason.
    pub closed: ClosedCounts,
}

impl HubStats {
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed.get(reason)
    }
}

/// How many subscriptions ended, for each [`CloseReason`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClosedCounts {
    pub client_closed: u64,
    pub slow_consumer: u64,
    pub shutdown: u64,
    pub deadline_exceeded: u64,
    pub write_failed: u64,
    pub token_expired: u64,
}

impl ClosedCounts {
    pub fn get(&self, reason: CloseReason) -> u64 {
        match reason {
            CloseReason::ClientClosed => self.client_closed,
            CloseReason::SlowConsumer => self.slow_consumer,
            CloseReason::Shutdown => self.shutdown,
            CloseReason::DeadlineExceeded => self.deadline_exceeded,
            CloseReason::WriteFailed => self.write_failed,
            CloseReason::TokenExpired => self.token_expired,
        }
    }

    /// Every ending but the client's own choice: what the server cut.
    pub fn by_server(&self) -> u64 {
        self.slow_consumer
            + self.shutdown
            + self.deadline_exceeded
            + self.write_failed
            + self.token_expired
    }
}

/// Counts for one room.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomStats {
    pub subscribers: u64,
    pub published: u64,
    pub delivered: u64,
    pub dropped_slow: u64,
    pub retained: u64,
    pub retained_bytes: u64,
    pub last_seq: u64,
}
