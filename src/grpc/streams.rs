//! The bodies of the streaming calls, one per RPC, each run on the call's
//! own thread (`grpc-sub-N`, `grpc-chat-N`, ...), which is the only writer
//! of its call and owns the call's deadline, cancellation, presence and
//! close reason. They hold no hub lock while writing, and know the
//! transport only through the call interface ([`super::call`]).

use std::task::Poll;
use std::time::{Duration, Instant};

use super::call::{Code, Follow, Interrupted, Received, Reply, Requests, Responses, Status};
use super::convert::{self, system_message};
use super::service::Caller;
use super::{wire, Shared};
use crate::auth::TOKEN_EXPIRED_NOTICE;
use crate::hub::{CloseReason, Draft, Presence, Subscription, MAX_BURST, SHUTDOWN_NOTICE};
use crate::metrics::MetricsSampler;
use crate::proto::chat;

/// Ends a stream because the server is stopping: a last SYSTEM notice, then
/// UNAVAILABLE so that clients retry elsewhere.
fn say_goodbye<T>(shared: &Shared, mut call: impl Responses<T>, notice: T) -> Code {
    call.ignore_stopping();
    let _ = call.send_all([notice], shared.write_timeout());
    say_goodbye_with(call, shared.write_timeout())
}

/// Ends a stream that has no last words with UNAVAILABLE.
pub(super) fn say_goodbye_with<T>(mut call: impl Responses<T>, timeout: Duration) -> Code {
    call.ignore_stopping();
    call.finish(Status::new(Code::Unavailable, SHUTDOWN_NOTICE), timeout);
    Code::Unavailable
}

fn shutdown_notice(room: &str) -> chat::Message {
    system_message(
        "system_shutdown".into(),
        "System",
        room,
        SHUTDOWN_NOTICE.into(),
    )
}

/// The last words of a stream whose token expired.
fn expiry_notice(room: &str) -> chat::Message {
    system_message(
        "system_token_expired".into(),
        "System",
        room,
        TOKEN_EXPIRED_NOTICE.into(),
    )
}

/// Runs on `grpc-sub-N`, which owns the call's lifetime: welcome (and,
/// resuming past a gap, what was `missed`), presence,
/// deadline, close reason and goodbye. The messages themselves do not pass
/// through it: the transport's writer reads them from the room's log
/// ([`Follow`]), so a publish wakes one writer per connection instead of a
/// thread per subscriber (paced at 400 msgs/s to 1,000 subscribers, a wake
/// per subscriber kept p99 at 209 ms; BENCHMARKS.md). This thread sleeps
/// until the hub ends the subscription, the client leaves or the deadline
/// passes, or its token expires (`expires`: then it says so and ends the
/// call UNAUTHENTICATED, for the client to come back with a fresh token).
pub(super) fn run_subscriber<C>(
    shared: &Shared,
    sub: Subscription,
    missed: Option<chat::Message>,
    user: String,
    expires: Option<Instant>,
    mut call: C,
) where
    C: Responses<wire::Outbound> + Follow,
{
    let room = sub.room().clone();
    let peer = call.peer();
    log::info!("SubscribeMessages opened: room={room} user={user:?} peer={peer}");
    // A subscriber learns of shutdown from the hub, after the messages
    // accepted before it: a write must not be cut short by it.
    call.ignore_stopping();
    let timeout = shared.write_timeout();
    let presence = shared.hub.presence(&room, &user);
    let welcome = system_message(
        "system".into(),
        "System",
        &room,
        format!("Welcome to room {room}, {user}!"),
    );
    // A resuming client hears what it missed before the replay.
    let opening = std::iter::once(welcome)
        .chain(missed)
        .map(wire::Outbound::Own);
    let welcomed = call.send_all(opening, timeout).is_ok();
    let followed = if welcomed { call.follow(sub) } else { Err(sub) };
    let sub = match followed {
        Ok(()) => {
            while call.following() {
                if call.wait(expires).is_err() {
                    // The deadline or the token's expiry (shutdown comes
                    // through the hub).
                    break;
                }
            }
            call.unfollow()
        }
        Err(sub) => Some(sub),
    };
    let mut reason = sub
        .as_ref()
        .and_then(|s| s.close_reason())
        .unwrap_or(CloseReason::ClientClosed);
    if reason == CloseReason::ClientClosed && call.deadline_passed() {
        reason = CloseReason::DeadlineExceeded;
    } else if reason == CloseReason::ClientClosed && expired(expires) {
        reason = CloseReason::TokenExpired;
    }
    let code = match reason {
        CloseReason::SlowConsumer => {
            call.finish(
                Status::new(Code::ResourceExhausted, "subscriber too slow"),
                timeout,
            );
            Code::ResourceExhausted
        }
        CloseReason::Shutdown => {
            say_goodbye(shared, call, wire::Outbound::Own(shutdown_notice(&room)))
        }
        CloseReason::DeadlineExceeded => Code::DeadlineExceeded,
        CloseReason::TokenExpired => {
            let notice = expiry_notice(&room);
            let _ = call.send_all([wire::Outbound::Own(notice)], timeout);
            call.finish(
                Status::new(Code::Unauthenticated, TOKEN_EXPIRED_NOTICE),
                timeout,
            );
            Code::Unauthenticated
        }
        // Dropping the call (at the end of this function) cancels what is
        // left of it.
        _ => Code::Cancelled,
    };
    if let Some(sub) = sub {
        sub.set_close_reason(reason);
        // Unregistered first, so the LEAVE is not sent to the one leaving.
        drop(sub);
    }
    drop(presence);
    shared.done("SubscribeMessages", code);
    log::info!("SubscribeMessages closed: room={room} user={user:?} reason={reason}");
}

/// Whether a token's expiry has come.
fn expired(expires: Option<Instant>) -> bool {
    expires.is_some_and(|t| Instant::now() >= t)
}

/// Runs on `grpc-upload-N`: publishes each streamed message in order, each
/// checked by the gate (the caller's token and publish rate).
/// Whatever `type` a client sets, its messages are published as CHAT:
/// JOIN, LEAVE and SYSTEM come from the server only, so none can be forged.
pub(super) fn run_upload<C>(shared: &Shared, caller: &Caller, mut call: C)
where
    C: Requests<chat::Message> + Reply<chat::UploadResponse>,
{
    const METHOD: &str = "UploadMessages";
    log::info!("UploadMessages opened");
    let timeout = shared.write_timeout();
    let expires = caller.expires();
    let mut count: i32 = 0;
    let outcome: Result<(), Status> = loop {
        match call.next(expires) {
            Err(_) if expired(expires) => {
                break Err(Status::new(Code::Unauthenticated, TOKEN_EXPIRED_NOTICE))
            }
            Err(_) => break Err(Status::new(Code::Unavailable, SHUTDOWN_NOTICE)),
            Ok(Received::Ended) => break Ok(()),
            Ok(Received::Failed(e)) => {
                break Err(Status::new(Code::Cancelled, format!("receive failed: {e}")))
            }
            Ok(Received::Message(m)) => {
                let mut draft = Draft::chat(m.room, m.user, m.content);
                let published = caller
                    .publish(shared, &mut draft)
                    .and_then(|()| shared.hub.publish(draft).map_err(|e| Status::from(&e)));
                if let Err(st) = published {
                    let message = format!("message at index {count}: {}", st.message);
                    break Err(Status::new(st.code, message));
                }
                count += 1;
            }
        }
    };
    let (code, answer) = match outcome {
        Ok(()) => {
            let mut resp = chat::UploadResponse::new();
            resp.message_count = count;
            resp.success = true;
            (Code::Ok, Ok(resp))
        }
        Err(st) => (st.code, Err(st)),
    };
    call.reply(answer, timeout);
    shared.done(METHOD, code);
    log::info!("UploadMessages closed: {count} messages published, status {code}");
}

/// Runs on `grpc-chat-N`, the only writer of its call: reads inbound
/// messages, echoes and publishes each, and sends the heartbeat.
pub(super) fn run_chat<C>(shared: &Shared, caller: &Caller, call: C)
where
    C: Requests<chat::Message> + Responses<chat::Message>,
{
    let peer = call.peer().to_string();
    log::info!("Chat opened: peer={peer}");
    let mut chat = ChatCall {
        shared,
        caller,
        joined: None,
        received: 0,
    };
    let code = chat.serve(call);
    let received = chat.received;
    // LEAVE, after the call's last write.
    drop(chat);
    shared.done("Chat", code);
    log::info!("Chat closed: peer={peer} messages={received} status={code}");
}

/// What one round of reading a Chat stream came to.
enum Inbound {
    /// Replies to send; the stream is still open.
    Replies(Vec<chat::Message>),
    /// The client closed its side after these replies.
    Ended(Vec<chat::Message>),
    /// A message was refused: these replies, then this status.
    Refused(Vec<chat::Message>, Status),
    /// The client went away.
    Gone,
}

/// A Chat call's state while it runs (the call itself is lent to each
/// step).
struct ChatCall<'a> {
    shared: &'a Shared,
    caller: &'a Caller,
    /// The participant's room and presence, from their first message.
    joined: Option<(String, Presence)>,
    received: u64,
}

impl ChatCall<'_> {
    /// Answers what arrives and beats the heart until the call ends; says
    /// how it ended.
    fn serve<C>(&mut self, mut call: C) -> Code
    where
        C: Requests<chat::Message> + Responses<chat::Message>,
    {
        let timeout = self.shared.write_timeout();
        let heartbeat = self.shared.config.chat_heartbeat;
        let mut next_heartbeat = Instant::now() + heartbeat;
        let expires = self.caller.expires();
        loop {
            if expired(expires) {
                let room = self.joined.as_ref().map_or("", |(r, _)| r.as_str());
                let _ = call.send_all([expiry_notice(room)], timeout);
                let status = Status::new(Code::Unauthenticated, TOKEN_EXPIRED_NOTICE);
                call.finish(status, timeout);
                return Code::Unauthenticated;
            }
            let (replies, end) = match self.read_available(&mut call) {
                Inbound::Gone => return Code::Cancelled,
                Inbound::Replies(r) => (r, None),
                Inbound::Ended(r) => (r, Some(Status::ok())),
                Inbound::Refused(r, st) => (r, Some(st)),
            };
            if !replies.is_empty() && call.send_all(replies, timeout).is_err() {
                return Code::Cancelled;
            }
            if let Some(st) = end {
                let code = st.code;
                call.finish(st, timeout);
                return code;
            }
            if Instant::now() >= next_heartbeat {
                if call.send_all([heartbeat_message()], timeout).is_err() {
                    return Code::Cancelled;
                }
                next_heartbeat += heartbeat;
                continue;
            }
            let until = expires.map_or(next_heartbeat, |t| t.min(next_heartbeat));
            match call.wait(Some(until)) {
                Ok(()) | Err(Interrupted::TimedOut) => {}
                Err(Interrupted::Stopping) => {
                    let room = self.joined.as_ref().map_or("", |(r, _)| r.as_str());
                    let notice = shutdown_notice(room);
                    return say_goodbye(self.shared, call, notice);
                }
            }
        }
    }

    /// Takes every message that is there now (at most a burst), publishing
    /// each and making its echo. Never blocks.
    fn read_available(&mut self, call: &mut impl Requests<chat::Message>) -> Inbound {
        let mut replies = Vec::new();
        while replies.len() < MAX_BURST {
            match call.poll_next() {
                Poll::Pending => break,
                Poll::Ready(Received::Ended) => return Inbound::Ended(replies),
                Poll::Ready(Received::Failed(_)) => return Inbound::Gone,
                Poll::Ready(Received::Message(m)) => match self.publish(m) {
                    Ok(echo) => replies.push(echo),
                    Err(st) => return Inbound::Refused(replies, st),
                },
            }
        }
        Inbound::Replies(replies)
    }

    /// Publishes one inbound message (JOIN first if it is the participant's
    /// first) and returns its echo, or the status that refuses it.
    fn publish(&mut self, m: chat::Message) -> Result<chat::Message, Status> {
        let hub = &self.shared.hub;
        let index = self.received;
        let mut draft = Draft::chat(m.room, m.user, m.content);
        self.caller.publish(self.shared, &mut draft).map_err(|st| {
            Status::new(st.code, format!("message at index {index}: {}", st.message))
        })?;
        if self.joined.is_none() {
            // JOIN reaches the room before the first message.
            if let Ok(room) = hub.validate(&draft) {
                let presence = hub.presence(room, &draft.user);
                self.joined = Some((room.to_string(), presence));
            }
        }
        let published = hub
            .publish(draft)
            .map_err(|e| Status::new(Code::from(&e), format!("message at index {index}: {e}")))?;
        self.received += 1;
        let id = if m.id.is_empty() {
            &published.id
        } else {
            &m.id
        };
        Ok(system_message(
            format!("echo_{id}"),
            "Server",
            &published.room,
            format!("Echo: {}", published.content),
        ))
    }
}

/// The SYSTEM heartbeat of a Chat stream.
fn heartbeat_message() -> chat::Message {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    system_message(
        format!("server_{}", now.as_secs()),
        "Server",
        "",
        "Server is alive!".into(),
    )
}

/// Runs on `grpc-metrics-N`: a batch of measurements every interval.
pub(super) fn run_metrics(
    shared: &Shared,
    instance: String,
    interval: Duration,
    mut call: impl Responses<chat::Metric>,
) {
    const METHOD: &str = "StreamMetrics";
    log::info!("StreamMetrics opened: instance={instance:?} interval={interval:?}");
    let timeout = shared.write_timeout();
    let mut sampler = MetricsSampler::new(&shared.telemetry);
    let mut next = Instant::now() + interval;
    // Registers the waker, so a cancel wakes us between batches.
    let mut gone = call.client_gone();
    let code = loop {
        if gone {
            break Code::Cancelled;
        }
        match call.wait(Some(next)) {
            Ok(()) => {
                gone = call.client_gone();
                continue;
            }
            Err(Interrupted::Stopping) => break say_goodbye_with(call, timeout),
            Err(Interrupted::TimedOut) => {}
        }
        next += interval;
        let batch: Vec<chat::Metric> = sampler
            .sample(&shared.hub, &shared.telemetry)
            .into_iter()
            .map(|m| {
                let mut metric = chat::Metric::new();
                metric.name = m.name.to_string();
                metric.value = m.value;
                metric.timestamp = convert::timestamp(m.timestamp);
                metric.labels.insert("instance".into(), instance.clone());
                metric
            })
            .collect();
        gone = call.send_all(batch, timeout).is_err();
    };
    shared.done(METHOD, code);
    log::info!("StreamMetrics closed: instance={instance:?} status={code}");
}
