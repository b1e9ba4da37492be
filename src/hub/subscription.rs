//! A subscriber's side of the hub: its position in the room log, how it
//! waits, takes and lets go; what it shares with the hub (its close reason
//! and position); and the presence guard (JOIN now, LEAVE on drop).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::room_log::{self, Watch};
use super::{CloseReason, Hub, Message, MessageKind, Protocol, Room};

/// Where a new subscriber starts reading: the replayed part comes through
/// the [`Subscription`] like live messages, before them.
#[derive(Debug, Default)]
pub struct Replay {
    /// Retained messages the subscription reads before live ones.
    pub replayed: u64,
    /// Sequence of the first of them.
    pub first_seq: u64,
    /// How many messages the client asked for that are no longer retained.
    pub missed: u64,
    /// The requested position is ahead of this room (an id from before a
    /// restart, or made up): everything retained is replayed.
    pub unknown_position: bool,
    /// Resuming by id: messages from before the replay are no longer
    /// retained and some of them may have come after the client's id; how
    /// many is not known.
    pub missed_unknown: bool,
}

impl Replay {
    /// What a client that resumed at `position` (as it asked for it:
    /// "last event id 41") is told when its replay has a gap, and how many
    /// messages it missed, if that is known; `None`: nothing was missed.
    pub fn gap_notice(&self, room: &str, position: &str) -> Option<(String, u64)> {
        if self.unknown_position {
            // The room restarted its sequence (a server restart without
            // a data directory) or the position was made up: what came
            // before the retained messages is gone.
            let missed = if self.replayed > 0 {
                self.first_seq - 1
            } else {
                0
            };
            let content = format!(
                "{position} is not a position in room {room} (the server may have restarted); \
                 {missed} earlier messages are no longer retained, replaying the {} that are",
                self.replayed
            );
            return Some((content, missed));
        }
        if self.missed_unknown {
            let content = format!(
                "messages of room {room} before sequence {} are no longer retained: \
                 some after {position} may have been missed",
                self.first_seq
            );
            return Some((content, 0));
        }
        (self.missed > 0).then(|| {
            let content = format!(
                "{} messages were missed: they are no longer retained",
                self.missed
            );
            (content, self.missed)
        })
    }
}

pub(super) struct Slot {
    pub(super) id: u64,
    pub(super) protocol: Protocol,
    pub(super) state: Arc<SubscriberState>,
}

/// What the hub and one subscriber's thread share.
pub(super) struct SubscriberState {
    pub(super) reason: AtomicU8,
    /// The last sequence this subscriber took (for the publisher's lag check).
    pub(super) taken: AtomicU64,
    /// The tail when it subscribed: what came before is replay, not lag.
    pub(super) joined: u64,
    /// After a shutdown close, the last sequence it still reads.
    pub(super) end: AtomicU64,
}

impl SubscriberState {
    pub(super) fn reason(&self) -> Option<CloseReason> {
        CloseReason::from_state(self.reason.load(Ordering::Acquire))
    }

    /// The first reason set wins.
    pub(super) fn set_reason(&self, reason: CloseReason) {
        let _ =
            self.reason
                .compare_exchange(0, reason.to_state(), Ordering::AcqRel, Ordering::Acquire);
    }

    /// The position lag is measured from.
    pub(super) fn position(&self) -> u64 {
        self.taken.load(Ordering::Acquire).max(self.joined)
    }
}

/// A stream's presence in a room: JOIN was announced when it was made, LEAVE
/// is announced when it drops (after the stream's last write, so the LEAVE
/// is the last thing the room hears of it).
pub struct Presence {
    pub(super) hub: Arc<Hub>,
    pub(super) room: String,
    pub(super) user: String,
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.hub
            .announce(&self.room, &self.user, MessageKind::Leave);
    }
}

/// What [`Subscription::wait`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Messages are there to take, or a notice to hear
    /// ([`Subscription::notice`]).
    Ready,
    /// The deadline passed with nothing to take.
    TimedOut,
    /// The subscription is over, and everything it still had to read was
    /// read (a slow consumer ends at once: what it trails would only keep a
    /// stuck writer busy; the client resumes by id).
    Closed(CloseReason),
}

/// One subscriber's end of the hub: its position in the room's log.
/// Unregisters when dropped.
pub struct Subscription {
    pub(super) hub: Arc<Hub>,
    pub(super) room: Arc<Room>,
    pub(super) id: u64,
    pub(super) protocol: Protocol,
    pub(super) reader: room_log::Reader,
    pub(super) state: Arc<SubscriberState>,
    /// Who is woken for this subscription instead of a parked thread.
    pub(super) watcher: Option<Arc<dyn Watch>>,
    /// The number of the last notice this subscriber heard.
    pub(super) heard: u64,
}

impl Subscription {
    pub fn room(&self) -> &Arc<str> {
        &self.room.name
    }

    /// Messages there to take now.
    pub fn available(&self) -> u64 {
        let end = self.state.end.load(Ordering::Acquire);
        let before_end = end.saturating_add(1).saturating_sub(self.reader.next());
        self.reader.available().min(before_end)
    }

    /// What [`Subscription::wait`] would find now, without waiting
    /// (`TimedOut`: nothing to take yet).
    pub fn check(&self) -> Wait {
        match self.state.reason() {
            Some(CloseReason::SlowConsumer) => Wait::Closed(CloseReason::SlowConsumer),
            Some(reason) if self.available() == 0 => Wait::Closed(reason),
            _ if self.available() > 0 || self.notice_waiting() => Wait::Ready,
            _ => Wait::TimedOut,
        }
    }

    /// Has `watcher` called, instead of a parked thread woken, whenever
    /// this subscription may have something to take or has ended: for a
    /// reader that reads for many subscriptions at once (a connection's
    /// writer). Replaces an earlier watcher.
    pub fn watch(&mut self, watcher: Arc<dyn Watch>) {
        let shared = self.reader.shared();
        if let Some(old) = self.watcher.take() {
            shared.unwatch(&old);
        }
        shared.watch(&watcher);
        self.watcher = Some(watcher);
    }

    /// Blocks until there is something to take, the subscription ends, or
    /// `deadline` passes. Spurious returns do not happen: `Ready` means
    /// [`Subscription::peek`] has messages.
    pub fn wait(&self, deadline: Option<Instant>) -> Wait {
        loop {
            match self.check() {
                Wait::TimedOut => {}
                found => return found,
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Wait::TimedOut;
            }
            self.reader.shared().park(deadline, || {
                self.available() > 0 || self.state.reason().is_some() || self.notice_waiting()
            });
        }
    }

    /// Whether a notice this subscriber has not heard was posted.
    fn notice_waiting(&self) -> bool {
        self.hub.bulletin.number() != self.heard
    }

    /// The notice posted since this subscriber last heard one, if any
    /// (see [`super::Notice`]); it is heard once. A reader that found
    /// [`Wait::Ready`] asks for it before it takes messages.
    pub fn notice(&mut self) -> Option<Arc<super::Notice>> {
        let (number, notice) = self.hub.bulletin.newer_than(self.heard)?;
        self.heard = number;
        Some(notice)
    }

    /// Up to `max` of the messages there to take, oldest first, borrowed
    /// from the log (no copy, no reference count touched). Taking them is
    /// [`Subscription::advance`].
    pub fn peek(&self, max: usize) -> impl Iterator<Item = &Arc<Message>> + '_ {
        let max = (self.available() as usize).min(max);
        self.reader.peek(max)
    }

    /// Says that the next `n` messages are taken, before they are written
    /// (the borrowed ones are still in use): the lag check measures from
    /// here, so a writer busy with a burst does not count as behind by it.
    /// A writer blocked for good still stops claiming, falls a window behind
    /// and is dropped.
    pub fn claim(&self, n: usize) {
        self.state
            .taken
            .store(self.reader.next() - 1 + n as u64, Ordering::Release);
    }

    /// Takes the next `n` messages (after they were sent).
    pub fn advance(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.reader.advance(n as u64);
        self.state
            .taken
            .store(self.reader.next() - 1, Ordering::Release);
        self.room.delivered.fetch_add(n as u64, Ordering::Relaxed);
        self.hub.delivered.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Takes one message, waiting at most `timeout`; `None` on timeout or
    /// once the subscription is over. (Clones the `Arc`: for tests and
    /// simple readers.)
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<Arc<Message>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.wait(Some(deadline)) {
                Wait::Ready => {
                    let m = self.peek(1).next().cloned();
                    if m.is_some() {
                        self.advance(1);
                        return m;
                    }
                    // Only a notice, which this reader has no use for.
                    self.notice();
                }
                _ => return None,
            }
        }
    }

    /// Takes everything there to take now.
    pub fn drain(&mut self) -> Vec<Arc<Message>> {
        let all: Vec<Arc<Message>> = self.peek(usize::MAX).cloned().collect();
        self.advance(all.len());
        all
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
        if let Some(w) = self.watcher.take() {
            self.reader.shared().unwatch(&w);
        }
        self.hub.unregister(self);
    }
}
