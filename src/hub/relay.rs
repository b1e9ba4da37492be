//! The hub's side of rooms shared with other nodes (`--cluster`; the Redis
//! side is `crate::cluster`, composed in `App::start`). The hub does no
//! I/O itself.
//!
//! With a relay, a publish does not stamp its message here: the relay
//! gives it its sequence and id in the order every node agrees on, and the
//! message comes back into the hub of each node that follows the room (one
//! with subscribers of it: [`Relay::follow`]), this one included, through
//! [`Hub::apply`], called by one thread per node in that same order. So
//! subscribers on every node see a room's messages with the same ids and
//! sequences, in the same order; a publisher's answer may come before its
//! own node's subscribers see the message.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{room_log, CloseReason, Hub, HubConfig, Message, MessageKind};
use crate::error::Error;

/// Where a hub sends its publishes when rooms are shared.
pub trait Relay: Send + Sync {
    /// Publishes a validated message to every node and returns it as
    /// stamped there (id, sequence, timestamp). Runs on the publisher's
    /// thread with no hub lock held; an error means it was not published.
    fn publish(
        &self,
        room: &str,
        user: &str,
        content: &str,
        kind: MessageKind,
    ) -> Result<Arc<Message>, Error>;

    /// Before a subscriber registers on `room`: from now on this node
    /// receives the room's messages (applied through [`Hub::apply`]), and
    /// the room here is up to date with the relay's. Blocks, for a bounded
    /// time; runs with no hub lock held. Each `Ok` is matched by one
    /// [`Relay::unfollow`] when that subscriber leaves.
    fn follow(&self, room: &str) -> Result<(), Error>;

    /// A subscriber of `room` left: once none is left, the node may stop
    /// receiving the room's messages. Never blocks (a room lock may be
    /// held).
    fn unfollow(&self, room: &str);

    /// The last `keep` messages of `room`, oldest first, and the room's
    /// last sequence: what a node that does not have the room yet starts
    /// it from. Runs on a subscriber's thread with no hub lock held.
    fn history(&self, room: &str, keep: usize) -> Result<(Vec<Message>, u64), Error>;

    /// Whether publishes can go through now (health says NOT_SERVING
    /// while they cannot).
    fn available(&self) -> bool;
}

/// What [`Hub::apply`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Appended: the room's next message.
    Appended,
    /// The room already has it (a message read back twice).
    Duplicate,
    /// Messages between the room's last one and this one are missing; the
    /// caller reads them back and applies them first.
    Gap { last: u64 },
}

impl Hub {
    /// A hub whose publishes go through `relay`.
    pub fn with_relay(config: HubConfig, relay: Arc<dyn Relay>) -> Hub {
        let mut hub = Hub::new(config);
        hub.relay = Some(relay);
        hub
    }

    /// The last sequence of `room` here, `None` if this hub does not have
    /// it: where a relay that did not follow it for a while reads it back
    /// from.
    pub fn room_last(&self, room: &str) -> Option<u64> {
        let room = self.rooms.lock().get(room).cloned()?;
        let last = room.state.lock().log.last();
        Some(last)
    }

    /// When this node begins to follow a room it does not have: starts
    /// the room from the relay's history, so that it goes on from the
    /// shared sequence and resuming works on any node. Does nothing for a
    /// room the hub has.
    pub fn prime(&self, name: &str) -> Result<(), Error> {
        let Some(relay) = &self.relay else {
            return Ok(());
        };
        if self.rooms.lock().contains_key(name) {
            return Ok(());
        }
        let (history, last) = relay.history(name, self.config.history)?;
        for message in &history {
            self.seen_id(&message.id);
        }
        loop {
            let room = self.room(name)?;
            let mut state = room.state.lock();
            if state.freed {
                continue;
            }
            // Another thread (the feeder, another subscriber) was first.
            if state.log.last() != 0 || !state.subscribers.is_empty() {
                return Ok(());
            }
            let first = history.first().map_or(last + 1, |m| m.seq);
            state.log = room_log::Log::after(first.saturating_sub(1));
            for message in history {
                if message.seq != state.log.last() + 1 {
                    break;
                }
                let message = Arc::new(Message {
                    room: room.name.clone(),
                    ..message
                });
                self.keep(&mut state, message, true);
            }
            return Ok(());
        }
    }

    /// Puts a message stamped by the relay into its room. Messages must
    /// come in the relay's order, from one thread (the node's feeder).
    /// A room that has no messages here yet starts at this one. With
    /// `anew`, a message that does not follow (a gap the shared history
    /// cannot fill, or a history that began again) starts the room anew
    /// from it; its subscribers are ended as too slow, so that their
    /// clients resume and are told what they missed.
    ///
    /// Waits like a publish (at most `publish_stall`) for a subscriber a
    /// window behind.
    pub fn apply(&self, message: Message, anew: bool) -> Result<Applied, Error> {
        self.seen_id(&message.id);
        let room_name = message.room.clone();
        let applied = self.with_space(&room_name, |room, state| {
            let last = state.log.last();
            if message.seq <= last && !anew {
                return Ok((Applied::Duplicate, None));
            }
            if message.seq != last + 1 {
                if last != 0 && !anew {
                    return Ok((Applied::Gap { last }, None));
                }
                // Their readers are in the old log: end them.
                while !state.subscribers.is_empty() {
                    let index = state.subscribers.len() - 1;
                    self.remove_slot(room, state, index, CloseReason::SlowConsumer);
                    state.dropped_slow += 1;
                }
                let bytes = state.log.retained_bytes();
                self.history_total.fetch_sub(bytes, Ordering::Relaxed);
                let after = message.seq.saturating_sub(1);
                let old = std::mem::replace(&mut state.log, room_log::Log::after(after));
                old.shared().wake();
            }
            let message = Arc::new(Message {
                room: room.name.clone(),
                ..message
            });
            self.encode_for(state, &message);
            self.keep(state, message, true);
            state.published += 1;
            self.published.fetch_add(1, Ordering::Relaxed);
            Ok((Applied::Appended, Some(state.log.shared().clone())))
        })?;
        if let (_, Some(shared)) = &applied {
            self.appended(shared.clone());
        }
        Ok(applied.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Protocol;
    use std::time::{Duration, SystemTime};

    fn stamped(id: u64, seq: u64) -> Message {
        Message::stored(
            format!("msg_{id}"),
            seq,
            "r",
            "u".into(),
            format!("c{seq}"),
            MessageKind::Chat,
            SystemTime::now(),
        )
    }

    #[test]
    fn applied_messages_keep_their_ids_and_sequences_and_gaps_are_reported() {
        let hub = std::sync::Arc::new(Hub::new(HubConfig::default()));
        // A room new here starts at the first message it is given.
        assert_eq!(hub.apply(stamped(39, 6), false), Ok(Applied::Appended));
        let (mut sub, _) = hub.subscribe("r", None, Protocol::Sse).unwrap();
        assert_eq!(hub.apply(stamped(40, 7), false), Ok(Applied::Appended));
        assert_eq!(hub.apply(stamped(41, 8), false), Ok(Applied::Appended));
        assert_eq!(hub.apply(stamped(41, 8), false), Ok(Applied::Duplicate));
        assert_eq!(
            hub.apply(stamped(50, 10), false),
            Ok(Applied::Gap { last: 8 })
        );
        let got: Vec<(u64, String)> = (0..2)
            .map(|_| sub.recv_timeout(Duration::from_secs(5)).unwrap())
            .map(|m| (m.seq, m.id.clone()))
            .collect();
        assert_eq!(got, vec![(7, "msg_40".into()), (8, "msg_41".into())]);
        // A gap that cannot be filled: the room starts anew, its
        // subscribers are ended so that they resume.
        assert_eq!(hub.apply(stamped(50, 10), true), Ok(Applied::Appended));
        assert_eq!(hub.room_stats("r").unwrap().last_seq, 10);
        assert_eq!(hub.room_stats("r").unwrap().subscribers, 0);
    }
}
