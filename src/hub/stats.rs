//! The hub's tuning and the counts it reports.

use super::CloseReason;

/// Tuning for the hub; validated by `config`.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Messages queued per subscriber before it counts as slow (memory is
    /// taken only as they queue).
    pub subscriber_queue: usize,
    /// Messages kept per room for resuming subscribers.
    pub history: usize,
    /// Bytes of content retained per room, at most (the oldest go first;
    /// the newest message is always kept).
    pub history_bytes: usize,
    /// Largest accepted `content`, in bytes.
    pub max_content_bytes: usize,
    /// Most rooms that may exist at once.
    pub max_rooms: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            subscriber_queue: 1024,
            history: 1000,
            history_bytes: 4 * 1024 * 1024,
            max_content_bytes: 1024 * 1024,
            max_rooms: 10_000,
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
}

impl ClosedCounts {
    pub fn get(&self, reason: CloseReason) -> u64 {
        match reason {
            CloseReason::ClientClosed => self.client_closed,
            CloseReason::SlowConsumer => self.slow_consumer,
            CloseReason::Shutdown => self.shutdown,
            CloseReason::DeadlineExceeded => self.deadline_exceeded,
            CloseReason::WriteFailed => self.write_failed,
        }
    }

    /// Every ending but the client's own choice: what the server cut.
    pub fn by_server(&self) -> u64 {
        self.slow_consumer + self.shutdown + self.deadline_exceeded + self.write_failed
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
    pub last_seq: u64,
}
