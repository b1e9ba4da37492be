//! The gRPC subscribers of `fanout`: one thread reads many subscriptions
//! of one room (`--streams-per-thread`), so a wake-up carries many
//! deliveries. Split from `fanout.rs` by role; it shares that file's
//! private state (`Shared`, `Slot`, `Recorder`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use streamhub::grpc::call::{Code, Status};
use streamhub::grpc::h2::client::{Channel, Recv, Stream};

use super::{grpc, FanoutPlan, Outcome, Recorder, Shared, CONNECTING};

/// How long a gRPC subscriber thread waits on one of its streams before it
/// looks at all of them again (and at the stop flag).
const GROUP_WAIT: Duration = Duration::from_millis(20);

/// One gRPC subscriber of a subscriber thread.
struct Member<'a> {
    index: usize,
    rec: Recorder<'a>,
    /// The call, until it is over.
    stream: Option<Stream>,
    open_error: Option<String>,
    ended: Option<String>,
    /// A message arrived: the server registered the call (streamhub's
    /// welcome).
    answered: bool,
}

impl Member<'_> {
    /// Answered, or counted as subscribed by the main thread (a server
    /// that sends no welcome).
    fn ready(&self) -> bool {
        self.answered || self.rec.slot.state.load(Ordering::Acquire) != CONNECTING
    }

    /// Takes note of what one wait gave; false when it gave nothing.
    fn take(&mut self, got: Recv, stopping: bool) -> bool {
        match got {
            Recv::Message(message) => {
                if !self.answered {
                    self.answered = true;
                    self.rec.ready();
                }
                if let Some(content) = grpc::message_content(&message) {
                    self.rec.content(content);
                }
                true
            }
            Recv::Ended(status) => {
                self.stream = None;
                if !self.answered && status.code != Code::Ok {
                    self.open_error = Some(grpc::error_name(&status));
                } else if !stopping {
                    self.ended = Some(ended_reason(&status));
                }
                // Now, not when the thread's other streams end too.
                self.rec.settle(self.open_error.is_some());
                true
            }
            Recv::TimedOut => false,
        }
    }

    /// Everything its stream holds now, without waiting.
    fn drain(&mut self, stopping: bool) {
        loop {
            let got = match self.stream.as_mut() {
                Some(stream) => stream.recv_timeout(Duration::ZERO),
                None => return,
            };
            if !self.take(got, stopping) {
                return;
            }
        }
    }
}

/// Why a subscription ended before the run did.
fn ended_reason(status: &Status) -> String {
    if status.code == Code::Ok {
        "closed by server".to_string()
    } else {
        grpc::error_name(status)
    }
}

/// The stream a subscriber thread waits on: one that still expects its
/// first message, else the first of those that received the fewest
/// probes. A thread's streams are on one room, so they all get the same
/// messages; one that got fewer has more coming, and when none is
/// behind, the first (on streamhub, the first the server writes to)
/// hears of the next message first. Whatever else arrived meanwhile is
/// taken right after, by [`Member::drain`].
///
/// Members are given as (live, ready, probes received); `None` when none
/// is live.
fn wait_target(members: impl Iterator<Item = (bool, bool, u64)> + Clone) -> Option<usize> {
    let live = members.enumerate().filter(|(_, (live, _, _))| *live);
    if let Some((i, _)) = live.clone().find(|(_, (_, ready, _))| !ready) {
        return Some(i);
    }
    live.min_by_key(|(_, (_, _, received))| *received)
        .map(|(i, _)| i)
}

/// gRPC subscribers that one thread reads, and what they subscribe on.
pub(super) struct GroupPlan {
    /// (subscriber index, its connection or why there is none)
    pub(super) members: Vec<(usize, Result<Channel, String>)>,
    pub(super) room: String,
}

/// The gRPC subscribers of each thread: a room's subscribers, in the
/// order of their connections, in runs of `--streams-per-thread`; with
/// the defaults, each thread reads the streams of one connection.
pub(super) fn grpc_groups(plan: &FanoutPlan) -> Vec<Vec<usize>> {
    let connections = plan.grpc_connections().max(1);
    let mut groups = Vec::new();
    for room in 0..plan.rooms {
        let mut members: Vec<usize> = (room..plan.grpc_subscribers).step_by(plan.rooms).collect();
        members.sort_by_key(|&i| (i % connections, i));
        groups.extend(
            members
                .chunks(plan.streams_per_thread.max(1))
                .map(<[usize]>::to_vec),
        );
    }
    groups
}

/// Runs on `bench-grpc-N`: subscribes its members, then reads all their
/// streams until the run stops. One thread for many streams: a wake-up
/// takes whatever every stream holds, so the tool spends little per
/// delivery (a thread per stream pays a wake-up for about every one).
pub(super) fn grpc_group(shared: &Shared, plan: GroupPlan) -> Vec<(usize, Outcome)> {
    let request = grpc::encode(&grpc::subscribe_request(&plan.room, ""));
    let options = grpc::options(None);
    let mut group: Vec<Member> = plan
        .members
        .into_iter()
        .map(|(index, channel)| {
            let mut member = Member {
                index,
                rec: Recorder::new(shared, &shared.slots[index]),
                stream: None,
                open_error: None,
                ended: None,
                answered: false,
            };
            match channel {
                Ok(c) => match c.server_streaming(
                    grpc::chat_paths::SUBSCRIBE_MESSAGES,
                    &request,
                    &options,
                ) {
                    Ok(stream) => member.stream = Some(stream),
                    Err(status) => member.open_error = Some(grpc::error_name(&status)),
                },
                Err(why) => member.open_error = Some(format!("UNAVAILABLE ({why})")),
            }
            if member.open_error.is_some() {
                member.rec.settle(true);
            }
            member
        })
        .collect();
    while !shared.stopping() {
        for member in group.iter_mut() {
            member.drain(shared.stopping());
        }
        let states = group
            .iter()
            .map(|m| (m.stream.is_some(), m.ready(), m.rec.received));
        let Some(target) = wait_target(states) else {
            break;
        };
        let member = &mut group[target];
        if let Some(stream) = member.stream.as_mut() {
            let got = stream.recv_timeout(GROUP_WAIT);
            member.take(got, shared.stopping());
        }
    }
    group
        .into_iter()
        .map(|m| {
            drop(m.stream);
            (m.index, m.rec.finish("grpc", m.open_error, m.ended))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Probe;

    #[test]
    fn subscriber_threads_read_one_room_and_by_default_one_connection() {
        let mut plan = FanoutPlan::defaults();
        plan.grpc_subscribers = 1000;
        let groups = grpc_groups(&plan);
        assert_eq!(groups.len(), 10);
        for g in &groups {
            assert_eq!(g.len(), 100);
            assert!(g.iter().all(|i| i % 10 == g[0] % 10), "one connection");
        }
        for (rooms, connections, per_thread) in
            [(3, 0, 100), (1, 1000, 100), (7, 13, 1), (2, 1, 64)]
        {
            plan.rooms = rooms;
            plan.connections = connections;
            plan.streams_per_thread = per_thread;
            let groups = grpc_groups(&plan);
            let mut all: Vec<usize> = groups.concat();
            all.sort_unstable();
            assert_eq!(all, (0..1000).collect::<Vec<_>>(), "each subscriber once");
            for g in &groups {
                assert!(!g.is_empty() && g.len() <= per_thread);
                assert!(g.iter().all(|i| i % rooms == g[0] % rooms), "one room");
            }
        }
    }

    #[test]
    fn a_subscriber_thread_waits_where_the_next_message_is_due() {
        let pick = |m: &[(bool, bool, u64)]| wait_target(m.iter().copied());
        // Still subscribing: the first not answered.
        assert_eq!(
            pick(&[(true, true, 0), (false, false, 0), (true, false, 0)]),
            Some(2)
        );
        // All even: the first live one.
        assert_eq!(
            pick(&[(false, true, 9), (true, true, 5), (true, true, 5)]),
            Some(1)
        );
        // One behind: it has more coming.
        assert_eq!(
            pick(&[(true, true, 5), (true, true, 4), (true, true, 4)]),
            Some(1)
        );
        assert_eq!(pick(&[(false, true, 0), (false, false, 0)]), None);
        assert_eq!(pick(&[]), None);
    }

    #[test]
    fn received_content_is_found_without_decoding() {
        let probe = Probe {
            run: 77,
            publisher: 2,
            seq: 40,
            sent_micros: 123_456,
        };
        let mut m = streamhub::proto::chat::Message::new();
        m.id = "01HX".into();
        m.user = "bench-pub-2".into();
        m.room = "bench-0".into();
        m.content = probe.content(100);
        let bytes = grpc::encode(&m);
        let content = grpc::message_content(&bytes).unwrap();
        assert_eq!(Probe::find(content, 77), Some(probe));
    }
}
