//! The bodies of the streaming calls, one per RPC, each run on the call's
//! own thread (`grpc-sub-N`, `grpc-chat-N`, ...), which is the only writer
//! of its sink and owns the call's deadline, cancellation, presence and
//! close reason. They hold no hub lock while writing.

use std::task::Poll;
use std::time::{Duration, Instant};

use grpcio::{
    ClientStreamingSink, DuplexSink, RequestStream, RpcStatus, RpcStatusCode, ServerStreamingSink,
};

use super::convert::{self, code_name, status, system_message};
use super::driver::{Driver, Interrupted, StreamSink, WriteError};
use super::{wire, Shared};
use crate::hub::{CloseReason, Draft, Presence, Subscription, Wait, MAX_BURST, SHUTDOWN_NOTICE};
use crate::metrics::MetricsSampler;
use crate::proto::chat;

/// How often an idle subscriber asks grpcio whether its client is still
/// there. The room log wakes a subscriber only for messages and closes (one
/// futex for the whole room), not for grpcio's events, so a cancelled call
/// is noticed within this. (The transport issue replaces grpcio; its own
/// HTTP/2 layer tells the stream directly.)
const IDLE_CHECK: Duration = Duration::from_millis(250);

/// Ends a stream because the server is stopping: a last SYSTEM notice, then
/// UNAVAILABLE so that clients retry elsewhere.
fn say_goodbye<T, S: StreamSink<T>>(
    shared: &Shared,
    driver: &mut Driver,
    mut sink: S,
    notice: T,
) -> RpcStatusCode {
    driver.ignore_stopping();
    let _ = driver.send_all(&mut sink, [notice], shared.write_timeout());
    say_goodbye_with(driver, sink, shared.write_timeout())
}

/// Ends a stream that has no last words with UNAVAILABLE.
pub(super) fn say_goodbye_with<T, S: StreamSink<T>>(
    driver: &mut Driver,
    sink: S,
    timeout: Duration,
) -> RpcStatusCode {
    driver.ignore_stopping();
    driver.close_with(
        sink,
        RpcStatus::with_message(RpcStatusCode::UNAVAILABLE, SHUTDOWN_NOTICE.into()),
        timeout,
    );
    RpcStatusCode::UNAVAILABLE
}

fn shutdown_notice(room: &str) -> chat::Message {
    system_message(
        "system_shutdown".into(),
        "System",
        room,
        SHUTDOWN_NOTICE.into(),
    )
}

/// Runs on `grpc-sub-N`: writes the room's messages until the client leaves,
/// falls behind or the server stops. Holds no hub lock while writing.
pub(super) fn run_subscriber(
    shared: &Shared,
    mut sub: Subscription,
    user: String,
    mut sink: ServerStreamingSink<wire::Outbound>,
    peer: String,
    deadline: grpcio::Deadline,
) {
    // SCHED_BATCH: normal weight, but woken with a thousand others for a
    // message it does not preempt grpcio's poll threads, which complete the
    // writes of all of them (at normal policy the herd starved them: p99
    // 69 -> 400-1,900 ms, BENCHMARKS.md).
    if let Err(e) = crate::sys::set_thread_policy(crate::sys::CpuPolicy::Batch) {
        log::debug!("gRPC subscriber stays at normal policy: {e}");
    }
    let room = sub.room().clone();
    log::info!("SubscribeMessages opened: room={room} user={user:?} peer={peer}");
    let mut driver = Driver::new(shared.stopping.clone());
    // A subscriber learns of shutdown from the hub, after the messages
    // accepted before it: a write must not be cut short by it.
    driver.ignore_stopping();
    let timeout = shared.write_timeout();
    let presence = shared.hub.presence(&room, &user);
    let welcome = system_message(
        "system".into(),
        "System",
        &room,
        format!("Welcome to room {room}, {user}!"),
    );
    let mut reason = match driver.send_all(&mut sink, [wire::Outbound::Own(welcome)], timeout) {
        Ok(()) => None,
        Err(_) => Some(CloseReason::ClientClosed),
    };
    while reason.is_none() {
        match sub.wait(Some(Instant::now() + IDLE_CHECK)) {
            Wait::Ready => {
                let burst: Vec<wire::Outbound> = sub
                    .peek(MAX_BURST)
                    .map(|m| wire::Outbound::Shared(m.clone()))
                    .collect();
                // Owned copies: taken before the write.
                sub.advance(burst.len());
                reason = match driver.send_all(&mut sink, burst, timeout) {
                    Ok(()) => None,
                    Err(WriteError::Gone) => Some(CloseReason::ClientClosed),
                    Err(WriteError::Interrupted(_)) => {
                        Some(sub.close_reason().unwrap_or(CloseReason::WriteFailed))
                    }
                };
            }
            Wait::Closed(r) => reason = Some(r),
            Wait::TimedOut => {
                if driver.client_gone(&mut sink) {
                    reason = Some(CloseReason::ClientClosed);
                }
            }
        }
    }
    let mut reason = reason.unwrap_or(CloseReason::ClientClosed);
    if reason == CloseReason::ClientClosed && deadline.exceeded() {
        reason = CloseReason::DeadlineExceeded;
    }
    let code = match reason {
        CloseReason::SlowConsumer => {
            driver.close_with(
                sink,
                RpcStatus::with_message(
                    RpcStatusCode::RESOURCE_EXHAUSTED,
                    "subscriber too slow".into(),
                ),
                timeout,
            );
            RpcStatusCode::RESOURCE_EXHAUSTED
        }
        CloseReason::Shutdown => say_goodbye(
            shared,
            &mut driver,
            sink,
            wire::Outbound::Own(shutdown_notice(&room)),
        ),
        CloseReason::DeadlineExceeded => RpcStatusCode::DEADLINE_EXCEEDED,
        // Dropping the sink cancels what is left of the call.
        _ => RpcStatusCode::CANCELLED,
    };
    sub.set_close_reason(reason);
    // Unregistered first, so the LEAVE is not sent to the one leaving.
    drop(sub);
    drop(presence);
    shared.done("SubscribeMessages", code);
    log::info!("SubscribeMessages closed: room={room} user={user:?} reason={reason}");
}

/// Runs on `grpc-upload-N`: publishes each streamed message in order.
/// Whatever `type` a client sets, its messages are published as CHAT:
/// JOIN, LEAVE and SYSTEM come from the server only, so none can be forged.
pub(super) fn run_upload(
    shared: &Shared,
    mut stream: RequestStream<chat::Message>,
    sink: ClientStreamingSink<chat::UploadResponse>,
) {
    const METHOD: &str = "UploadMessages";
    log::info!("UploadMessages opened");
    let driver = Driver::new(shared.stopping.clone());
    let timeout = shared.write_timeout();
    let mut count: i32 = 0;
    let outcome: Result<(), RpcStatus> = loop {
        let next = driver.block_on(|cx| driver_poll_next(&mut stream, cx), None);
        match next {
            Err(_) => {
                break Err(RpcStatus::with_message(
                    RpcStatusCode::UNAVAILABLE,
                    SHUTDOWN_NOTICE.into(),
                ))
            }
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => {
                break Err(RpcStatus::with_message(
                    RpcStatusCode::CANCELLED,
                    format!("receive failed: {e}"),
                ))
            }
            Ok(Some(Ok(m))) => {
                let draft = Draft::chat(m.room, m.user, m.content);
                if let Err(e) = shared.hub.publish(draft) {
                    let st = status(&e);
                    break Err(RpcStatus::with_message(
                        st.code(),
                        format!("message at index {count}: {e}"),
                    ));
                }
                count += 1;
            }
        }
    };
    let code = match outcome {
        Ok(()) => {
            let mut resp = chat::UploadResponse::new();
            resp.message_count = count;
            resp.success = true;
            let _ = driver.finish(sink.success(resp), timeout);
            RpcStatusCode::OK
        }
        Err(st) => {
            let code = st.code();
            let _ = driver.finish(sink.fail(st), timeout);
            code
        }
    };
    shared.done(METHOD, code);
    log::info!(
        "UploadMessages closed: {count} messages published, status {}",
        code_name(code)
    );
}

fn driver_poll_next(
    stream: &mut RequestStream<chat::Message>,
    cx: &mut std::task::Context<'_>,
) -> Poll<Option<grpcio::Result<chat::Message>>> {
    futures_util::StreamExt::poll_next_unpin(stream, cx)
}

/// Runs on `grpc-chat-N`, the only writer of its sink: reads inbound
/// messages, echoes and publishes each, and sends the heartbeat.
pub(super) fn run_chat(
    shared: &Shared,
    stream: RequestStream<chat::Message>,
    sink: DuplexSink<chat::Message>,
    peer: String,
) {
    log::info!("Chat opened: peer={peer}");
    let mut chat = ChatCall {
        shared,
        driver: Driver::new(shared.stopping.clone()),
        stream,
        joined: None,
        received: 0,
    };
    let code = chat.serve(sink);
    let received = chat.received;
    // LEAVE, after the call's last write.
    drop(chat);
    shared.done("Chat", code);
    log::info!(
        "Chat closed: peer={peer} messages={received} status={}",
        code_name(code)
    );
}

/// What one round of reading a Chat stream came to.
enum Inbound {
    /// Replies to send; the stream is still open.
    Replies(Vec<chat::Message>),
    /// The client closed its side after these replies.
    Ended(Vec<chat::Message>),
    /// A message was refused: these replies, then this status.
    Refused(Vec<chat::Message>, RpcStatus),
    /// The client went away.
    Gone,
}

/// A Chat call while it runs.
struct ChatCall<'a> {
    shared: &'a Shared,
    driver: Driver,
    stream: RequestStream<chat::Message>,
    /// The participant's room and presence, from their first message.
    joined: Option<(String, Presence)>,
    received: u64,
}

impl ChatCall<'_> {
    /// Answers what arrives and beats the heart until the call ends; says
    /// how it ended.
    fn serve(&mut self, mut sink: DuplexSink<chat::Message>) -> RpcStatusCode {
        let timeout = self.shared.write_timeout();
        let heartbeat = self.shared.config.chat_heartbeat;
        let mut next_heartbeat = Instant::now() + heartbeat;
        loop {
            let (replies, end) = match self.read_available() {
                Inbound::Gone => return RpcStatusCode::CANCELLED,
                Inbound::Replies(r) => (r, None),
                Inbound::Ended(r) => (r, Some(RpcStatus::ok())),
                Inbound::Refused(r, st) => (r, Some(st)),
            };
            if !replies.is_empty() && self.driver.send_all(&mut sink, replies, timeout).is_err() {
                return RpcStatusCode::CANCELLED;
            }
            if let Some(st) = end {
                let code = st.code();
                if code == RpcStatusCode::OK {
                    self.driver.close_ok(sink, timeout);
                } else {
                    self.driver.close_with(sink, st, timeout);
                }
                return code;
            }
            if Instant::now() >= next_heartbeat {
                if self
                    .driver
                    .send_all(&mut sink, [heartbeat_message()], timeout)
                    .is_err()
                {
                    return RpcStatusCode::CANCELLED;
                }
                next_heartbeat += heartbeat;
                continue;
            }
            match self.driver.wait(Some(next_heartbeat)) {
                Ok(()) | Err(Interrupted::TimedOut) => {}
                Err(Interrupted::Stopping) => {
                    let room = self.joined.as_ref().map_or("", |(r, _)| r.as_str());
                    let notice = shutdown_notice(room);
                    return say_goodbye(self.shared, &mut self.driver, sink, notice);
                }
            }
        }
    }

    /// Takes every message that is there now (at most a burst), publishing
    /// each and making its echo. Never blocks.
    fn read_available(&mut self) -> Inbound {
        let mut replies = Vec::new();
        while replies.len() < MAX_BURST {
            match self.driver.poll_next(&mut self.stream) {
                Poll::Pending => break,
                Poll::Ready(None) => return Inbound::Ended(replies),
                Poll::Ready(Some(Err(_))) => return Inbound::Gone,
                Poll::Ready(Some(Ok(m))) => match self.publish(m) {
                    Ok(echo) => replies.push(echo),
                    Err(st) => return Inbound::Refused(replies, st),
                },
            }
        }
        Inbound::Replies(replies)
    }

    /// Publishes one inbound message (JOIN first if it is the participant's
    /// first) and returns its echo, or the status that refuses it.
    fn publish(&mut self, m: chat::Message) -> Result<chat::Message, RpcStatus> {
        let hub = &self.shared.hub;
        let draft = Draft::chat(m.room, m.user, m.content);
        if self.joined.is_none() {
            // JOIN reaches the room before the first message.
            if let Ok(room) = hub.validate(&draft) {
                let presence = hub.presence(room, &draft.user);
                self.joined = Some((room.to_string(), presence));
            }
        }
        let index = self.received;
        let published = hub.publish(draft).map_err(|e| {
            let st = status(&e);
            RpcStatus::with_message(st.code(), format!("message at index {index}: {e}"))
        })?;
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
    mut sink: ServerStreamingSink<chat::Metric>,
) {
    const METHOD: &str = "StreamMetrics";
    log::info!("StreamMetrics opened: instance={instance:?} interval={interval:?}");
    let mut driver = Driver::new(shared.stopping.clone());
    let timeout = shared.write_timeout();
    let mut sampler = MetricsSampler::new(&shared.telemetry);
    let mut next = Instant::now() + interval;
    // Registers the waker, so a cancel wakes us between batches.
    let mut gone = driver.client_gone(&mut sink);
    let code = loop {
        if gone {
            break RpcStatusCode::CANCELLED;
        }
        match driver.wait(Some(next)) {
            Ok(()) => {
                gone = driver.client_gone(&mut sink);
                continue;
            }
            Err(Interrupted::Stopping) => break say_goodbye_with(&mut driver, sink, timeout),
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
        gone = driver.send_all(&mut sink, batch, timeout).is_err();
    };
    shared.done(METHOD, code);
    log::info!(
        "StreamMetrics closed: instance={instance:?} status={}",
        code_name(code)
    );
}
