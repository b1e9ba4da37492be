//! The hub's map of rooms: finding and making them, the room limit (the
//! least recently used room without subscribers makes way) and the global
//! history budget (the least recently used rooms forget first).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{room_log, Hub, Room, RoomState};
use crate::error::Error;

/// When all history together is over its budget, the least recently used
/// rooms give up history until it is this share of the budget (so shedding
/// runs once per tenth of the budget, not once per message).
const SHED_TO_PERCENT: usize = 90;

impl Hub {
    /// The live room called `name`, made if needed. At the room limit the
    /// least recently used room without subscribers makes way (with its
    /// history); when every room has subscribers, the limit holds.
    pub(super) fn room(&self, name: &str) -> Result<Arc<Room>, Error> {
        // Each pass evicts one room; another thread may take the place
        // freed, so a few passes before giving up.
        for _ in 0..8 {
            let victim = {
                let mut rooms = self.rooms.lock();
                if let Some(room) = rooms.get(name) {
                    self.touch(room);
                    return Ok(room.clone());
                }
                if rooms.len() < self.config.max_rooms {
                    let room = self.new_room(name);
                    rooms.insert(room.name.clone(), room.clone());
                    return Ok(room);
                }
                rooms
                    .values()
                    .filter(|r| r.subscribers.load(Ordering::Relaxed) == 0)
                    .min_by_key(|r| r.last_used.load(Ordering::Relaxed))
                    .cloned()
            };
            match victim {
                Some(victim) => self.evict_room(&victim),
                None => break,
            }
        }
        Err(Error::ResourceExhausted(format!(
            "too many rooms with subscribers (limit {})",
            self.config.max_rooms
        )))
    }

    fn new_room(&self, name: &str) -> Arc<Room> {
        Arc::new(Room {
            name: Arc::from(name),
            delivered: AtomicU64::new(0),
            subscribers: AtomicUsize::new(0),
            last_used: AtomicU64::new(self.clock.fetch_add(1, Ordering::Relaxed)),
            state: Mutex::new(RoomState {
                log: room_log::Log::new(),
                subscribers: Vec::new(),
                by_protocol: [0; 2],
                slowest: 0,
                published: 0,
                dropped_slow: 0,
                freed: false,
            }),
        })
    }

    pub(super) fn touch(&self, room: &Room) {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        room.last_used.store(now, Ordering::Relaxed);
    }

    /// Removes `room` if it still has no subscribers, history and all.
    fn evict_room(&self, room: &Arc<Room>) {
        let evicted = {
            let mut state = room.state.lock();
            if state.freed || !state.subscribers.is_empty() {
                false
            } else {
                state.freed = true;
                let bytes = state.log.retained_bytes();
                state.log.forget_all();
                self.history_total.fetch_sub(bytes, Ordering::Relaxed);
                true
            }
        };
        if evicted {
            self.forget_room(room);
            self.rooms_evicted.fetch_add(1, Ordering::Relaxed);
            log::debug!("room {} evicted to make way for a new one", room.name);
        }
    }

    /// Takes a room marked `freed` out of the map (unless it was replaced).
    pub(super) fn forget_room(&self, room: &Arc<Room>) {
        let mut rooms = self.rooms.lock();
        if rooms.get(&room.name).is_some_and(|r| Arc::ptr_eq(r, room)) {
            rooms.remove(&room.name);
        }
    }

    /// All retained history is over its budget: the least recently used
    /// rooms forget their oldest messages until it is back under.
    pub(super) fn shed_history(&self) {
        let target = self.config.history_total_bytes / 100 * SHED_TO_PERCENT;
        let mut rooms: Vec<Arc<Room>> = self.rooms.lock().values().cloned().collect();
        rooms.sort_by_key(|r| r.last_used.load(Ordering::Relaxed));
        for room in rooms {
            if self.history_total.load(Ordering::Relaxed) <= target {
                break;
            }
            let mut state = room.state.lock();
            let mut forgotten = 0;
            while self.history_total.load(Ordering::Relaxed) - forgotten > target {
                match state.log.forget_oldest() {
                    Some(bytes) => forgotten += bytes,
                    None => break,
                }
            }
            self.history_total.fetch_sub(forgotten, Ordering::Relaxed);
        }
    }
}
