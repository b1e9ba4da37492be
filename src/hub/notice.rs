//! Notices: words from this node to every one of its subscribers that are
//! not messages of a room. They have no sequence and no id, are not
//! retained and are not replayed: a subscriber hears the latest notice
//! posted after it subscribed, at its next wake, before the messages it
//! then takes. What the cluster says when its Redis goes away and comes
//! back (`--cluster`) is one; each front door writes a notice as its kind
//! of SYSTEM message.
//!
//! One notice at a time for the whole hub: a subscriber that was asleep
//! through two hears only the second, which is the state now.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use super::Hub;

/// A notice as posted: `key` names it for clients that match on it (a
/// gRPC notice's id is `system_{key}`), `text` is for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub key: &'static str,
    pub text: String,
}

/// The hub's latest notice and its number (0: none yet).
#[derive(Default)]
pub(super) struct Bulletin {
    pub(super) posted: std::sync::atomic::AtomicU64,
    pub(super) latest: Mutex<Option<Arc<Notice>>>,
}

impl Bulletin {
    /// The number of the latest notice: a new subscriber has heard it.
    pub(super) fn number(&self) -> u64 {
        self.posted.load(Ordering::Acquire)
    }

    /// The latest notice if it is newer than `heard`, and its number.
    pub(super) fn newer_than(&self, heard: u64) -> Option<(u64, Arc<Notice>)> {
        if self.number() == heard {
            return None;
        }
        let latest = self.latest.lock();
        Some((self.number(), latest.clone()?))
    }
}

impl Hub {
    /// Whether this hub can take publishes: always, unless its relay is
    /// down (`--cluster`) or its journal failed (`--data-dir`). Health
    /// says NOT_SERVING while it cannot.
    pub fn serving(&self) -> bool {
        self.relay.as_ref().is_none_or(|r| r.available())
            && self.journal.as_ref().is_none_or(|j| j.healthy())
    }

    /// Wakes when [`Hub::serving`] may have changed (health watchers).
    pub fn watch_serving(&self) -> Receiver<()> {
        self.serving_changes.watch()
    }

    /// Called by what publishes depend on (the relay, the journal) when it
    /// went down or came back: every subscriber is told `notice`, and
    /// whoever watches serving looks again.
    pub fn serving_changed(&self, notice: Notice) {
        self.post_notice(notice);
        self.serving_changes.tell();
    }

    /// Tells every subscriber of this hub `notice`, and wakes them to hear
    /// it. Takes each room's lock in turn, briefly, never two at once.
    pub fn post_notice(&self, notice: Notice) {
        {
            let mut latest = self.bulletin.latest.lock();
            *latest = Some(Arc::new(notice));
            self.bulletin.posted.fetch_add(1, Ordering::AcqRel);
        }
        let rooms: Vec<_> = self.rooms.lock().values().cloned().collect();
        for room in rooms {
            let shared = room.state.lock().log.shared().clone();
            shared.wake();
        }
    }
}

/// Threads that want to hear that something changed (whether the hub can
/// take publishes; the server's health). Each watcher has a channel of
/// one slot: changes while it was busy are one wake, and it looks at the
/// state itself.
#[derive(Default)]
pub struct Changes {
    watchers: Mutex<Vec<Sender<()>>>,
}

impl Changes {
    pub fn watch(&self) -> Receiver<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.watchers.lock().push(tx);
        rx
    }

    /// Wakes every watcher; forgets those that are gone.
    pub fn tell(&self) {
        self.watchers.lock().retain(|w| match w.try_send(()) {
            Ok(()) | Err(crossbeam_channel::TrySendError::Full(_)) => true,
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Draft, HubConfig, Protocol, Wait};
    use std::time::{Duration, Instant};

    fn notice(key: &'static str) -> Notice {
        Notice {
            key,
            text: key.to_string(),
        }
    }

    #[test]
    fn a_notice_wakes_every_subscriber_once_and_is_not_a_message() {
        let hub = Arc::new(Hub::new(HubConfig::default()));
        let (mut a, _) = hub.subscribe("a", None, Protocol::Sse).unwrap();
        let (mut b, _) = hub.subscribe("b", None, Protocol::Grpc).unwrap();
        let parked = std::thread::spawn(move || {
            let found = b.wait(Some(Instant::now() + Duration::from_secs(10)));
            (found, b.notice(), b.available(), b)
        });
        hub.post_notice(notice("one"));
        let (found, heard, available, mut b) = parked.join().unwrap();
        assert_eq!(found, Wait::Ready, "the parked subscriber woke");
        assert_eq!(heard.as_deref(), Some(&notice("one")));
        assert_eq!(available, 0, "no message came with it");
        assert_eq!(b.notice(), None, "heard once");
        // Two before a look: the latest one, which is the state now.
        hub.post_notice(notice("two"));
        hub.post_notice(notice("three"));
        assert_eq!(a.check(), Wait::Ready);
        assert_eq!(a.notice().unwrap().key, "three");
        assert_eq!(a.check(), Wait::TimedOut);
        // A new subscriber has not missed it: it is no news to it.
        let (mut c, _) = hub.subscribe("a", None, Protocol::Sse).unwrap();
        assert_eq!(c.notice(), None);
        // A reader of messages only passes over notices.
        hub.post_notice(notice("four"));
        hub.publish(Draft::chat("a", "u", "m")).unwrap();
        assert_eq!(c.recv_timeout(Duration::from_secs(5)).unwrap().content, "m");
        assert_eq!(b.notice().unwrap().key, "four");
    }

    #[test]
    fn watchers_of_changes_hear_each_change_and_gone_ones_are_forgotten() {
        let changes = Changes::default();
        let one = changes.watch();
        let gone = changes.watch();
        drop(gone);
        changes.tell();
        changes.tell();
        assert!(one.try_recv().is_ok());
        assert!(one.try_recv().is_err(), "two while busy are one wake");
        assert_eq!(changes.watchers.lock().len(), 1);
    }
}
