//! The gRPC front door: `chat.ChatService` on grpcio.
//!
//! Split by role: this module is the server's lifecycle (start, options,
//! stop) and the one way a streaming call starts ([`Shared::start_stream`]);
//! `service` holds the handlers, which run on grpcio's completion-queue
//! threads and never block there; `streams` holds the bodies of the
//! streaming calls, each on its own named thread (`grpc-sub-N`,
//! `grpc-chat-N`, `grpc-upload-N`, `grpc-metrics-N`) that blocks on the hub
//! queue and is the only writer of its sink; `driver` drives grpcio's
//! futures from those threads. Every sink is closed or failed explicitly:
//! dropping one cancels the call.

pub mod call;
mod convert;
mod driver;
pub mod health;
pub mod reflection;
mod service;
mod streams;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use grpcio::{
    ChannelBuilder, EnvBuilder, Environment, RpcContext, RpcStatusCode, ServerBuilder,
    ServerCredentials,
};

use crate::config::GrpcConfig;
use crate::error::Error;
use crate::hub::{Hub, SHUTDOWN_NOTICE};
use crate::metrics::Telemetry;
use crate::proto::services::create_chat_service;
use crate::threads::{Permit, Slots, Threads};
pub use convert::code_name;
use convert::status;
use driver::FailSink;
use service::ChatServiceImpl;

/// Extra room above the content limit for the other fields of a message.
const ENVELOPE_BYTES: usize = 64 * 1024;

/// What every handler and stream thread shares.
struct Shared {
    hub: Arc<Hub>,
    telemetry: Arc<Telemetry>,
    threads: Threads,
    config: GrpcConfig,
    /// Streaming calls open now, against `--max-grpc-streams`.
    open_streams: Arc<Slots>,
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
        let limit = self.config.max_streams;
        self.open_streams.take(limit).ok_or_else(|| {
            Error::ResourceExhausted(format!("too many concurrent streams (limit {limit})"))
        })
    }

    /// The one way a streaming call starts: with `permit` (a slot of
    /// `--max-grpc-streams`, from [`Shared::open_stream`], or
    /// [`Shared::open_stream_any_time`] for health watches), then `prepare`
    /// (validation, subscribing), then a named thread (`grpc-KIND-N`) that
    /// owns the call and its sink for its lifetime. Whatever fails on the
    /// way answers the call with its status, counted and logged.
    #[allow(clippy::too_many_arguments)]
    fn start_stream<S, P>(
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
        let shared = self.clone();
        let spawned = self.threads.spawn_with(
            &format!("grpc-{kind}"),
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
    /// Binds `config.addr` and starts serving.
    pub fn start(
        config: &GrpcConfig,
        hub: Arc<Hub>,
        telemetry: Arc<Telemetry>,
        threads: Threads,
        stopping: Receiver<()>,
    ) -> Result<GrpcServer, Error> {
        if config.max_streams_per_connection <= config.max_streams {
            // Measured: with grpc-core clients (C++, Python, grpcio) a
            // connection that goes past the HTTP/2 limit is torn down, every
            // stream on it with it; the RPC-level cap answers cleanly.
            log::warn!(
                "--max-streams-per-connection ({}) is not above --max-grpc-streams ({}): \
                 a client that opens more streams than that on one connection loses all of them",
                config.max_streams_per_connection,
                config.max_streams
            );
        }
        let env = Arc::new(
            EnvBuilder::new()
                .cq_count(config.threads)
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
        hub.set_encoder(crate::hub::Protocol::Grpc, wire::encode);
        let shared = Arc::new(Shared {
            hub,
            telemetry,
            threads,
            config: config.clone(),
            open_streams: Slots::new(),
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
            .add_listening_port(config.addr.to_string(), ServerCredentials::insecure())
            .map_err(|_| Error::Io(format!("cannot listen on {} (gRPC)", config.addr)))?;
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
