//! The gRPC front door: `chat.ChatService` on grpcio.
//!
//! Handlers run on grpcio's completion-queue threads and never block there:
//! unary calls publish and answer at once; every streaming call gets its own
//! named thread (`grpc-sub-N`, `grpc-chat-N`, `grpc-upload-N`,
//! `grpc-metrics-N`) that blocks on the hub queue and is the only writer of
//! its sink. Every sink is closed or failed explicitly: dropping one cancels
//! the call.

mod convert;
mod driver;
pub mod health;
pub mod reflection;
pub mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use grpcio::{
    ChannelBuilder, ClientStreamingSink, DuplexSink, EnvBuilder, Environment, RequestStream,
    RpcContext, RpcStatus, RpcStatusCode, ServerBuilder, ServerCredentials, ServerStreamingSink,
    UnarySink,
};

use crate::config::Config;
use crate::error::Error;
use crate::hub::{
    CloseReason, Draft, Hub, Presence, Protocol, Subscription, MAX_BURST, SHUTDOWN_NOTICE,
};
use crate::metrics::{stream_interval, MetricsSampler, Telemetry};
use crate::proto::chat;
use crate::proto::services::{create_chat_service, ChatService};
use crate::threads::{Permit, Slots, Threads};
pub use convert::code_name;
use convert::{status, system_message};
use driver::{Driver, FailSink, Interrupted, StreamSink, WriteError};

/// Extra room above the content limit for the other fields of a message.
const ENVELOPE_BYTES: usize = 64 * 1024;

/// What every handler and stream thread shares.
struct Shared {
    hub: Arc<Hub>,
    telemetry: Arc<Telemetry>,
    threads: Threads,
    config: Config,
    /// Streaming calls open now, against `--max-grpc-streams`.
    open_streams: Arc<Slots>,
    next_stream: AtomicU64,
    /// Disconnects when shutdown begins.
    stopping: Receiver<()>,
    health: Arc<health::HealthState>,
}

impl Shared {
    fn is_stopping(&self) -> bool {
        matches!(
            self.stopping.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    /// Takes a stream slot, or says why not.
    fn open_stream(&self) -> Result<Permit, Error> {
        if self.is_stopping() {
            return Err(Error::Unavailable(SHUTDOWN_NOTICE.into()));
        }
        self.open_stream_any_time()
    }

    /// Takes a stream slot even while stopping (health watches).
    fn open_stream_any_time(&self) -> Result<Permit, Error> {
        let limit = self.config.max_grpc_streams;
        self.open_streams.take(limit).ok_or_else(|| {
            Error::ResourceExhausted(format!("too many concurrent streams (limit {limit})"))
        })
    }

    /// The one way a streaming call starts: a slot of `--max-grpc-streams`,
    /// then `prepare` (validation, subscribing), then a named thread
    /// (`grpc-KIND-N`) that owns the call and its sink for its lifetime.
    /// Whatever fails on the way answers the call with its status, counted
    /// and logged.
    fn start_stream<S, P>(
        self: &Arc<Self>,
        ctx: &RpcContext,
        method: &'static str,
        kind: &str,
        sink: S,
        prepare: impl FnOnce() -> Result<P, Error>,
        body: impl FnOnce(&Shared, S, P) + Send + 'static,
    ) where
        S: FailSink + Send + 'static,
        P: Send + 'static,
    {
        let permit = self.open_stream();
        self.start_stream_with(permit, ctx, method, kind, sink, prepare, body)
    }

    /// [`Shared::start_stream`] with the slot already asked for (health
    /// watches take theirs even while stopping).
    #[allow(clippy::too_many_arguments)]
    fn start_stream_with<S, P>(
        self: &Arc<Self>,
        permit: Result<Permit, Error>,
        ctx: &RpcContext,
        method: &'static str,
        kind: &str,
        sink: S,
        prepare: impl FnOnce() -> Result<P, Error>,
        body: impl FnOnce(&Shared, S, P) + Send + 'static,
    ) where
        S: FailSink + Send + 'static,
        P: Send + 'static,
    {
        let started = permit.and_then(|permit| Ok((permit, prepare()?)));
        let (permit, prepared) = match started {
            Ok(v) => v,
            Err(e) => return refuse(ctx, self, method, sink, &e),
        };
        let n = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let shared = self.clone();
        let spawned = self.threads.spawn_with(
            format!("grpc-{kind}-{n}"),
            Some(self.config.stream_stack_bytes),
            (sink, prepared, permit),
            move |(sink, prepared, permit)| {
                body(&shared, sink, prepared);
                drop(permit);
            },
        );
        if let Err(((sink, _, _), e)) = spawned {
            let e = Error::ResourceExhausted(format!("cannot start a stream thread: {e}"));
            refuse(ctx, self, method, sink, &e);
        }
    }

    fn done(&self, method: &'static str, code: RpcStatusCode) {
        self.telemetry.grpc_call_done(method, code_name(code));
    }

    fn write_timeout(&self) -> Duration {
        self.config.write_timeout
    }
}

/// The running gRPC server.
pub struct GrpcServer {
    server: grpcio::Server,
    shared: Arc<Shared>,
    port: u16,
    _env: Arc<Environment>,
}

impl GrpcServer {
    /// Binds `config.grpc_addr` and starts serving.
    pub fn start(
        config: &Config,
        hub: Arc<Hub>,
        telemetry: Arc<Telemetry>,
        threads: Threads,
        stopping: Receiver<()>,
    ) -> Result<GrpcServer, Error> {
        if config.max_streams_per_connection <= config.max_grpc_streams {
            // Measured: with grpc-core clients (C++, Python, grpcio) a
            // connection that goes past the HTTP/2 limit is torn down, every
            // stream on it with it; the RPC-level cap answers cleanly.
            log::warn!(
                "--max-streams-per-connection ({}) is not above --max-grpc-streams ({}): \
                 a client that opens more streams than that on one connection loses all of them",
                config.max_streams_per_connection,
                config.max_grpc_streams
            );
        }
        let env = Arc::new(
            EnvBuilder::new()
                .cq_count(config.grpc_threads)
                .name_prefix("grpc-poll")
                .build(),
        );
        let max_len = (config.max_message_bytes + ENVELOPE_BYTES).min(i32::MAX as usize) as i32;
        let args = ChannelBuilder::new(env.clone())
            .max_concurrent_stream(config.max_streams_per_connection as i32)
            .max_receive_message_len(max_len)
            .max_send_message_len(max_len)
            .keepalive_time(config.keepalive)
            .keepalive_timeout(config.keepalive_timeout)
            .keepalive_permit_without_calls(true)
            // gRPC's core sets SO_REUSEPORT by default, so a second server on
            // the same port would start and silently share the traffic.
            .reuse_port(false)
            .http2_max_ping_strikes(0)
            .build_args();
        let shared = Arc::new(Shared {
            hub,
            telemetry,
            threads,
            config: config.clone(),
            open_streams: Slots::new(),
            next_stream: AtomicU64::new(1),
            stopping,
            health: Arc::default(),
        });
        let chat = create_chat_service(ChatServiceImpl {
            shared: shared.clone(),
        });
        let health = crate::proto::services::health::create_health(health::HealthService {
            shared: shared.clone(),
        });
        let reflection = reflection::ReflectionService {
            shared: shared.clone(),
        };
        let mut server = ServerBuilder::new(env.clone())
            .register_service(chat)
            .register_service(health)
            .register_service(
                crate::proto::services::reflection::create_server_reflection(reflection.clone()),
            )
            .register_service(
                crate::proto::services::reflection_v1alpha::create_server_reflection(reflection),
            )
            .channel_args(args)
            .build()
            .map_err(|e| Error::Io(format!("gRPC server: {e}")))?;
        let port = server
            .add_listening_port(config.grpc_addr.to_string(), ServerCredentials::insecure())
            .map_err(|_| Error::Io(format!("cannot listen on {} (gRPC)", config.grpc_addr)))?;
        server.start();
        Ok(GrpcServer {
            server,
            shared,
            port,
            _env: env,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Health turns NOT_SERVING (the first step of shutdown).
    pub fn set_not_serving(&self) {
        self.shared.health.set_not_serving();
    }

    /// Cancels what is left and stops the server. Call after the stream
    /// threads had their chance to say goodbye.
    pub fn stop(mut self, timeout: Duration) {
        self.server.cancel_all_calls();
        let done = futures_executor::block_on(async {
            let shutdown = self.server.shutdown();
            let (tx, rx) = crossbeam_channel::bounded(1);
            std::thread::Builder::new()
                .name("grpc-shutdown".into())
                .spawn(move || {
                    let _ = tx.send(futures_executor::block_on(shutdown));
                })
                .ok()
                .and_then(|_| rx.recv_timeout(timeout).ok())
        });
        if done.is_none() {
            log::warn!("gRPC server did not shut down within {timeout:?}");
        }
    }
}

#[derive(Clone)]
struct ChatServiceImpl {
    shared: Arc<Shared>,
}

/// Answers a streaming call that could not start.
fn refuse<S: FailSink>(
    ctx: &RpcContext,
    shared: &Shared,
    method: &'static str,
    sink: S,
    e: &Error,
) {
    let st = status(e);
    shared.done(method, st.code());
    log::warn!("{method} refused: {e}");
    let f = sink.fail_with(st);
    ctx.spawn(async move {
        let _ = f.await;
    });
}

impl ChatService for ChatServiceImpl {
    fn send_message(
        &mut self,
        ctx: RpcContext,
        req: chat::SendMessageRequest,
        sink: UnarySink<chat::SendMessageResponse>,
    ) {
        let draft = Draft::chat(req.room, req.user, req.content);
        let shared = self.shared.clone();
        let reply = match shared.hub.publish(draft) {
            Ok(m) => {
                let mut resp = chat::SendMessageResponse::new();
                resp.message_id = m.id.clone();
                resp.timestamp = convert::timestamp(m.timestamp);
                shared.done("SendMessage", RpcStatusCode::OK);
                sink.success(resp)
            }
            Err(e) => {
                let st = status(&e);
                shared.done("SendMessage", st.code());
                sink.fail(st)
            }
        };
        ctx.spawn(async move {
            let _ = reply.await;
        });
    }

    fn subscribe_messages(
        &mut self,
        ctx: RpcContext,
        req: chat::SubscribeRequest,
        sink: ServerStreamingSink<wire::Outbound>,
    ) {
        let (peer, deadline) = (ctx.peer(), ctx.deadline());
        let hub = self.shared.hub.clone();
        self.shared.start_stream(
            &ctx,
            "SubscribeMessages",
            "sub",
            sink,
            move || Ok((hub.subscribe(&req.room, None, Protocol::Grpc)?.0, req.user)),
            move |shared, sink, (sub, user)| {
                run_subscriber(shared, sub, user, sink, peer, deadline)
            },
        );
    }

    fn upload_messages(
        &mut self,
        ctx: RpcContext,
        stream: RequestStream<chat::Message>,
        sink: ClientStreamingSink<chat::UploadResponse>,
    ) {
        self.shared.start_stream(
            &ctx,
            "UploadMessages",
            "upload",
            sink,
            || Ok(stream),
            |shared, sink, stream| run_upload(shared, stream, sink),
        );
    }

    fn chat(
        &mut self,
        ctx: RpcContext,
        stream: RequestStream<chat::Message>,
        sink: DuplexSink<chat::Message>,
    ) {
        let peer = ctx.peer();
        self.shared.start_stream(
            &ctx,
            "Chat",
            "chat",
            sink,
            || Ok(stream),
            move |shared, sink, stream| run_chat(shared, stream, sink, peer),
        );
    }

    fn stream_metrics(
        &mut self,
        ctx: RpcContext,
        req: chat::MetricsRequest,
        sink: ServerStreamingSink<chat::Metric>,
    ) {
        self.shared.start_stream(
            &ctx,
            "StreamMetrics",
            "metrics",
            sink,
            || {
                Ok((
                    stream_interval(req.interval_seconds.into())?,
                    req.instance_id,
                ))
            },
            |shared, sink, (interval, instance)| run_metrics(shared, instance, interval, sink),
        );
    }
}

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
fn say_goodbye_with<T, S: StreamSink<T>>(
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
fn run_subscriber(
    shared: &Shared,
    sub: Subscription,
    user: String,
    mut sink: ServerStreamingSink<wire::Outbound>,
    peer: String,
    deadline: grpcio::Deadline,
) {
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
        crossbeam_channel::select! {
            recv(sub.receiver()) -> first => match first {
                Ok(first) => {
                    let burst: Vec<wire::Outbound> = std::iter::once(first)
                        .chain(sub.receiver().try_iter().take(MAX_BURST - 1))
                        .map(wire::Outbound::Shared)
                        .collect();
                    reason = match driver.send_all(&mut sink, burst, timeout) {
                        Ok(()) => None,
                        Err(WriteError::Gone) => Some(CloseReason::ClientClosed),
                        Err(WriteError::Interrupted(_)) => Some(
                            sub.close_reason().unwrap_or(CloseReason::WriteFailed),
                        ),
                    };
                }
                Err(_) => reason = Some(sub.close_reason().unwrap_or(CloseReason::Shutdown)),
            },
            recv(driver.woken()) -> _ => {
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
fn run_upload(
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
fn run_chat(
    shared: &Shared,
    mut stream: RequestStream<chat::Message>,
    mut sink: DuplexSink<chat::Message>,
    peer: String,
) {
    const METHOD: &str = "Chat";
    log::info!("Chat opened: peer={peer}");
    let mut driver = Driver::new(shared.stopping.clone());
    let timeout = shared.write_timeout();
    let heartbeat = shared.config.chat_heartbeat;
    let mut next_heartbeat = Instant::now() + heartbeat;
    // The room and presence of the participant, from their first message.
    let mut joined: Option<(String, Presence)> = None;
    let mut received = 0u64;
    let code = 'serve: loop {
        // Everything that is there now, answered in one burst.
        let mut replies = Vec::new();
        let mut ended = false;
        let mut failure = None;
        loop {
            match driver.poll_next(&mut stream) {
                Poll::Pending => break,
                Poll::Ready(None) => {
                    ended = true;
                    break;
                }
                Poll::Ready(Some(Err(_))) => break 'serve RpcStatusCode::CANCELLED,
                Poll::Ready(Some(Ok(m))) => {
                    let draft = Draft::chat(m.room, m.user, m.content);
                    if joined.is_none() {
                        // JOIN reaches the room before the first message.
                        if let Ok(room) = shared.hub.validate(&draft) {
                            let presence = shared.hub.presence(room, &draft.user);
                            joined = Some((room.to_string(), presence));
                        }
                    }
                    match shared.hub.publish(draft) {
                        Ok(published) => {
                            let id = if m.id.is_empty() {
                                &published.id
                            } else {
                                &m.id
                            };
                            replies.push(system_message(
                                format!("echo_{id}"),
                                "Server",
                                &published.room,
                                format!("Echo: {}", published.content),
                            ));
                        }
                        Err(e) => {
                            let st = status(&e);
                            failure = Some(RpcStatus::with_message(
                                st.code(),
                                format!("message at index {received}: {e}"),
                            ));
                            break;
                        }
                    }
                    received += 1;
                    if replies.len() >= MAX_BURST {
                        break;
                    }
                }
            }
        }
        if !replies.is_empty() && driver.send_all(&mut sink, replies, timeout).is_err() {
            break 'serve RpcStatusCode::CANCELLED;
        }
        if let Some(st) = failure {
            let code = st.code();
            driver.close_with(sink, st, timeout);
            break 'serve code;
        }
        if ended {
            driver.close_ok(sink, timeout);
            break 'serve RpcStatusCode::OK;
        }
        if Instant::now() >= next_heartbeat {
            let beat = system_message(
                format!(
                    "server_{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs()
                ),
                "Server",
                "",
                "Server is alive!".into(),
            );
            if driver.send_all(&mut sink, [beat], timeout).is_err() {
                break 'serve RpcStatusCode::CANCELLED;
            }
            next_heartbeat += heartbeat;
            continue;
        }
        match driver.wait(Some(next_heartbeat)) {
            Ok(()) | Err(Interrupted::TimedOut) => {}
            Err(Interrupted::Stopping) => {
                let room = joined.as_ref().map(|(r, _)| r.as_str()).unwrap_or("");
                break 'serve say_goodbye(shared, &mut driver, sink, shutdown_notice(room));
            }
        }
    };
    drop(joined);
    shared.done(METHOD, code);
    log::info!(
        "Chat closed: peer={peer} messages={received} status={}",
        code_name(code)
    );
}

/// Runs on `grpc-metrics-N`: a batch of measurements every interval.
fn run_metrics(
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
