//! The gRPC front door: `chat.ChatService`, health and reflection.
//!
//! Split by role: this module is the server's lifecycle (start, stop) and
//! the one way a streaming call starts ([`Shared::start_stream`]); `service`
//! (and `health`, `reflection`) hold the handlers, which run on the
//! transport's receiving threads and never block there; `streams` holds the
//! bodies of the streaming calls, each on its own named thread
//! (`grpc-sub-N`, `grpc-chat-N`, `grpc-upload-N`, `grpc-metrics-N`) that
//! blocks on the hub and is the only writer of its call. All of them talk
//! to the transport through `call` only; `h2` is the transport, streamhub's
//! own HTTP/2 layer. Every call is finished explicitly: dropping one
//! cancels it.

pub mod call;
mod convert;
pub mod h2;
pub mod health;
mod publishers;
pub mod reflection;
mod resume;
mod service;
mod streams;
pub mod web;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::access::Access;
use crate::config::GrpcConfig;
use crate::error::Error;
use crate::hub::{Hub, SHUTDOWN_NOTICE};
use crate::metrics::Telemetry;
use crate::threads::{Permit, Slots, Threads};
use call::{Code, Refused, Started, Status};

/// Extra room above the content limit for the other fields of a message.
const ENVELOPE_BYTES: usize = 64 * 1024;

/// What every handler and stream thread shares.
struct Shared {
    hub: Arc<Hub>,
    /// Who may do what, and how often (shared with the HTTP door).
    access: Arc<Access>,
    telemetry: Arc<Telemetry>,
    threads: Threads,
    config: GrpcConfig,
    /// Streaming calls open now, against `--max-grpc-streams`.
    open_streams: Arc<Slots>,
    /// Disconnects when shutdown begins.
    stopping: Receiver<()>,
    health: Arc<health::HealthState>,
    /// Where SendMessage runs when a publish waits (`publishers`); none:
    /// on the connection's reader.
    publishers: Option<publishers::Publishers>,
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
    /// owns the call for its lifetime. Whatever fails on the way is
    /// counted and logged, and handed back with its status for the
    /// transport to answer at once.
    fn start_stream<C, P>(
        self: &Arc<Self>,
        permit: Result<Permit, Error>,
        method: &'static str,
        kind: &str,
        call: C,
        prepare: impl FnOnce() -> Result<P, Error>,
        body: impl FnOnce(&Shared, C, P) + Send + 'static,
    ) -> Started<C>
    where
        C: Send + 'static,
        P: Send + 'static,
    {
        let started = permit.and_then(|permit| Ok((permit, prepare()?)));
        let (permit, prepared) = match started {
            Ok(v) => v,
            Err(e) => return Err(self.refuse(method, call, Status::from(&e))),
        };
        let shared = self.clone();
        let spawned = self.threads.spawn_with(
            &format!("grpc-{kind}"),
            Some(self.config.stream_stack_bytes),
            (call, prepared, permit),
            move |(call, prepared, permit)| {
                body(&shared, call, prepared);
                drop(permit);
            },
        );
        if let Err(((call, _, _), e)) = spawned {
            let e = Error::ResourceExhausted(format!("cannot start a stream thread: {e}"));
            return Err(self.refuse(method, call, Status::from(&e)));
        }
        Ok(())
    }

    /// A streaming call that could not start, counted and logged.
    fn refuse<C>(&self, method: &'static str, call: C, status: Status) -> Refused<C> {
        self.done(method, status.code);
        log::warn!("{method} refused: {}", status.message);
        Refused { call, status }
    }

    fn done(&self, method: &'static str, code: Code) {
        self.telemetry.grpc_call_done(method, code.name());
    }

    fn write_timeout(&self) -> Duration {
        self.config.write_timeout
    }
}

/// The running gRPC server.
pub struct GrpcServer {
    server: h2::server::Server,
    shared: Arc<Shared>,
}

impl GrpcServer {
    /// Binds `config.addr` and starts serving; with `tls` (ALPN h2, from
    /// `crate::tls`), every connection speaks TLS only.
    pub fn start(
        config: &GrpcConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
        hub: Arc<Hub>,
        access: Arc<Access>,
        telemetry: Arc<Telemetry>,
        threads: Threads,
        stopping: Receiver<()>,
    ) -> Result<GrpcServer, Error> {
        hub.set_encoder(crate::hub::Protocol::Grpc, wire::encode);
        let publishers = match hub.publish_waits() {
            true => Some(publishers::Publishers::start(config.publish_threads)?),
            false => None,
        };
        let shared = Arc::new(Shared {
            publishers,
            hub,
            access,
            telemetry,
            threads,
            config: config.clone(),
            open_streams: Slots::new(),
            stopping,
            health: Arc::default(),
        });
        let limits = h2::conn::Limits {
            max_streams: config.max_streams_per_connection as u32,
            max_header_list: config.max_header_list_bytes,
            max_message: config.max_message_bytes + ENVELOPE_BYTES,
            keepalive: config.keepalive,
            keepalive_timeout: config.keepalive_timeout,
            ..h2::conn::Limits::default()
        };
        let server = h2::server::Server::start(shared.clone(), limits, tls)?;
        Ok(GrpcServer { server, shared })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The gRPC-Web door, for the HTTP port (see [`web`]).
    pub fn web(&self) -> web::GrpcWeb {
        web::GrpcWeb::new(self.shared.clone())
    }

    /// Health turns NOT_SERVING and every connection gets its first
    /// GOAWAY (the first step of shutdown): open calls go on, new ones are
    /// sent elsewhere.
    pub fn set_not_serving(&self) {
        self.shared.health.set_not_serving();
        self.server.drain();
    }

    /// Cancels what is left and stops the server. Call after the stream
    /// threads had their chance to say goodbye.
    pub fn stop(self, timeout: Duration) {
        self.server.stop(timeout);
    }
}
