//! The hub's side of durable rooms: what it asks of a journal (the store in
//! `crate::store`, composed in `App::start`), and how messages read back
//! from one become rooms again. The hub does no I/O itself.
//!
//! A message gets its id and sequence under its room's lock, as without a
//! journal, and is handed to the journal under that same lock, so a room's
//! messages reach the journal in sequence order. When the journal holds
//! delivery ([`Journal::holds_delivery`]: `--fsync always` and `batch`), the
//! message goes into the room's log hidden and is shown to subscribers only
//! once the journal has stored it: nobody ever sees a message that a crash
//! could take back, and so a sequence number is never given twice.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{room_log, Hub, Message};
use crate::error::Error;

/// A message's place in the journal's write order.
pub type Ticket = u64;

/// Where a hub with durable rooms sends every accepted message.
pub trait Journal: Send + Sync {
    /// Takes `message` into the write order. Runs with the room's lock
    /// held: it must not wait for the disk, only refuse (a full data
    /// directory: nothing is assigned then, the publish fails).
    fn append(&self, message: &Arc<Message>) -> Result<Ticket, Error>;
    /// Waits, without any hub lock, until the message is stored as far as
    /// the policy promises (or, without a promise, until the writer is not
    /// too far behind). An error means it may not be stored.
    fn wait(&self, ticket: Ticket) -> Result<(), Error>;
    /// Whether subscribers see a message only after [`Journal::wait`].
    fn holds_delivery(&self) -> bool;
    /// Whether it can store messages now: false once a write or sync
    /// failed (publishing stops until a restart; health says so).
    fn healthy(&self) -> bool {
        true
    }
}

impl Hub {
    /// A hub whose rooms are journaled; start it empty, then
    /// [`Hub::restore`] what the journal held, before serving.
    pub fn with_journal(config: super::HubConfig, journal: Arc<dyn Journal>) -> Hub {
        let mut hub = Hub::new(config);
        hub.journal = Some(journal);
        hub
    }

    /// Puts a message read back from the journal into its room, as the
    /// room's history (retention applies as to a publish). Messages come in
    /// the order they were stored. A sequence that does not follow the
    /// room's last one (the room was evicted or emptied and began again, or
    /// a torn segment lost some) starts the room anew from it. Runs at
    /// start, before any subscriber.
    pub fn restore(&self, message: Message) -> Result<(), Error> {
        self.seen_id(&message.id);
        loop {
            let room = self.room(&message.room)?;
            let mut state = room.state.lock();
            if state.freed {
                continue;
            }
            if message.seq != state.log.last() + 1 {
                let bytes = state.log.retained_bytes();
                self.history_total.fetch_sub(bytes, Ordering::Relaxed);
                state.log = room_log::Log::after(message.seq - 1);
            }
            let message = Arc::new(Message {
                room: room.name.clone(),
                ..message
            });
            self.keep(&mut state, message, true);
            return Ok(());
        }
    }

    /// Like [`Hub::subscribe`], resuming after the message with id
    /// `msg_<after_id>` (what a gRPC client saw: its messages carry ids,
    /// not sequences). Ids grow with sequences within a room, and across
    /// restarts with a journal, so the room's messages after it are those
    /// with a larger id; an id this hub never gave is an unknown position.
    pub fn subscribe_after_id(
        self: &Arc<Self>,
        room: &str,
        after_id: u64,
        protocol: super::Protocol,
    ) -> Result<(super::Subscription, super::Replay), Error> {
        // Whether messages the client never saw may have been forgotten
        // before the first one replayed: ids are shared by every room, so
        // an id alone does not say how many of this room's came after it.
        let uncertain = std::cell::Cell::new(false);
        let (sub, mut replay) = self.subscribe_at(room, protocol, |log| {
            // Read here, after a shared room was primed (`relay`).
            let issued = self.next_message.load(Ordering::Relaxed);
            if after_id >= issued {
                return Some(log.tail() + 1);
            }
            let id_of = |seq| log.get(seq).and_then(|m| super::id_number(&m.id));
            // The first retained sequence whose id is larger: a binary
            // search, ids growing with sequences.
            let (mut lo, mut hi) = (log.first_retained(), log.tail() + 1);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if id_of(mid).is_some_and(|id| id > after_id) {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            uncertain.set(lo == log.first_retained() && lo > 1 && id_of(lo) != Some(after_id + 1));
            Some(lo - 1)
        })?;
        replay.missed_unknown = uncertain.get() && !replay.unknown_position;
        Ok((sub, replay))
    }

    /// Whether `room` still retains its message `seq` (the journal may
    /// drop a segment once no room retains anything in it).
    pub fn retains(&self, room: &str, seq: u64) -> bool {
        let Some(room) = self.rooms.lock().get(room).cloned() else {
            return false;
        };
        let state = room.state.lock();
        seq >= state.log.first_retained() && seq <= state.log.last()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Draft, HubConfig, MessageKind, Protocol};
    use parking_lot::{Condvar, Mutex};
    use std::time::{Duration, SystemTime};

    /// A journal that stores a ticket only when the test says so.
    #[derive(Default)]
    struct Gate {
        next: Mutex<Ticket>,
        stored: Mutex<Ticket>,
        moved: Condvar,
    }

    impl Journal for Gate {
        fn append(&self, _: &Arc<Message>) -> Result<Ticket, Error> {
            let mut n = self.next.lock();
            *n += 1;
            Ok(*n)
        }
        fn wait(&self, ticket: Ticket) -> Result<(), Error> {
            let mut s = self.stored.lock();
            while *s < ticket {
                self.moved.wait(&mut s);
            }
            Ok(())
        }
        fn holds_delivery(&self) -> bool {
            true
        }
    }

    /// A journal whose disk failed.
    struct Broken;

    impl Journal for Broken {
        fn append(&self, _: &Arc<Message>) -> Result<Ticket, Error> {
            Err(Error::Unavailable("writing failed".into()))
        }
        fn wait(&self, _: Ticket) -> Result<(), Error> {
            Ok(())
        }
        fn holds_delivery(&self) -> bool {
            true
        }
        fn healthy(&self) -> bool {
            false
        }
    }

    #[test]
    fn a_hub_whose_journal_failed_is_not_serving() {
        assert!(Hub::with_journal(HubConfig::default(), Arc::new(Gate::default())).serving());
        let hub = Hub::with_journal(HubConfig::default(), Arc::new(Broken));
        assert!(!hub.serving());
        assert!(hub.publish(Draft::chat("r", "u", "x")).is_err());
    }

    #[test]
    fn a_subscriber_sees_a_message_only_once_the_journal_stored_it() {
        let gate = Arc::new(Gate::default());
        let hub = Arc::new(Hub::with_journal(HubConfig::default(), gate.clone()));
        let (mut sub, _) = hub.subscribe("r", None, Protocol::Sse).unwrap();
        let publisher = {
            let hub = hub.clone();
            std::thread::spawn(move || hub.publish(Draft::chat("r", "u", "x")).unwrap().seq)
        };
        while *gate.next.lock() == 0 {
            std::thread::yield_now();
        }
        assert!(
            sub.recv_timeout(Duration::from_millis(50)).is_none(),
            "not stored yet"
        );
        *gate.stored.lock() = 1;
        gate.moved.notify_all();
        assert_eq!(publisher.join().unwrap(), 1);
        assert_eq!(sub.recv_timeout(Duration::from_secs(5)).unwrap().seq, 1);
    }

    #[test]
    fn resuming_by_an_id_older_than_the_history_says_messages_may_be_missed() {
        let hub = Arc::new(Hub::new(HubConfig {
            history: 3,
            ..HubConfig::default()
        }));
        for i in 0..10 {
            // Another room's message between: ids are shared.
            hub.publish(Draft::chat("other", "u", "x")).unwrap();
            hub.publish(Draft::chat("r", "u", i.to_string())).unwrap();
        }
        // r holds sequences 8..10 (ids 16, 18, 20).
        let (_s, replay) = hub.subscribe_after_id("r", 2, Protocol::Grpc).unwrap();
        assert!(replay.missed_unknown && replay.first_seq == 8);
        let (text, _) = replay.gap_notice("r", "last-message-id msg_2").unwrap();
        assert!(text.contains("before sequence 8"), "{text}");
        // Just before the oldest one kept: nothing can have been missed.
        let (_s, replay) = hub.subscribe_after_id("r", 15, Protocol::Grpc).unwrap();
        assert!(!replay.missed_unknown && replay.first_seq == 8);
        assert_eq!(replay.gap_notice("r", "x"), None);
        // Inside the history: nothing missed.
        let (_s, replay) = hub.subscribe_after_id("r", 18, Protocol::Grpc).unwrap();
        assert_eq!((replay.first_seq, replay.missed_unknown), (10, false));
        // From the future: an unknown position, everything kept replayed.
        let (_s, replay) = hub.subscribe_after_id("r", 99, Protocol::Grpc).unwrap();
        assert!(replay.unknown_position && !replay.missed_unknown);
    }

    #[test]
    fn restored_rooms_go_on_with_their_sequences_and_ids_and_resume_by_id() {
        let hub = Arc::new(Hub::new(HubConfig::default()));
        let stored = |id: u64, seq: u64, room: &str| {
            Message::stored(
                format!("msg_{id}"),
                seq,
                room,
                "u".into(),
                format!("c{id}"),
                MessageKind::Chat,
                SystemTime::now(),
            )
        };
        for (id, seq) in [(3, 7), (5, 8), (9, 9)] {
            hub.restore(stored(id, seq, "a")).unwrap();
        }
        hub.restore(stored(10, 1, "b")).unwrap();
        let m = hub.publish(Draft::chat("a", "u", "new")).unwrap();
        assert_eq!((m.seq, m.id.as_str()), (10, "msg_11"));
        assert_eq!(hub.room_stats("a").unwrap().retained, 4);
        let (mut s, replay) = hub.subscribe_after_id("a", 5, Protocol::Grpc).unwrap();
        let seqs: Vec<u64> = s.drain().iter().map(|m| m.seq).collect();
        assert_eq!((seqs, replay.unknown_position), (vec![9, 10], false));
        // An id from another room in between: the next one of this room.
        let (mut s, _) = hub.subscribe_after_id("a", 6, Protocol::Grpc).unwrap();
        assert_eq!(s.drain()[0].seq, 9);
        let (_, replay) = hub.subscribe_after_id("a", 99, Protocol::Grpc).unwrap();
        assert!(replay.unknown_position);
        // A sequence that does not follow starts the room anew.
        hub.restore(stored(20, 1, "b")).unwrap();
        assert_eq!(hub.room_stats("b").unwrap().retained, 1);
    }
}
