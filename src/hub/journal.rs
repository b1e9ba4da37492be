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
        if let Some(n) = message
            .id
            .strip_prefix("msg_")
            .and_then(|n| n.parse::<u64>().ok())
        {
            self.next_message.fetch_max(n + 1, Ordering::Relaxed);
        }
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
