//! The grpcio server: its environment, channel options, the services it
//! serves and how it stops.

use std::sync::Arc;
use std::time::Duration;

use grpcio::{ChannelBuilder, EnvBuilder, Environment, ServerBuilder, ServerCredentials};

use super::services::Services;
use crate::config::GrpcConfig;
use crate::error::Error;
use crate::grpc::{Shared, ENVELOPE_BYTES};
use crate::proto::services::{create_chat_service, health, reflection, reflection_v1alpha};

pub struct Server {
    server: grpcio::Server,
    port: u16,
    _env: Arc<Environment>,
}

impl Server {
    /// Binds `config.addr` and starts serving every service.
    pub fn start(config: &GrpcConfig, shared: Arc<Shared>) -> Result<Server, Error> {
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
        let services = Services { shared };
        let mut server = ServerBuilder::new(env.clone())
            .register_service(create_chat_service(services.clone()))
            .register_service(health::create_health(services.clone()))
            .register_service(reflection::create_server_reflection(services.clone()))
            .register_service(reflection_v1alpha::create_server_reflection(services))
            .channel_args(args)
            .build()
            .map_err(|e| Error::Io(format!("gRPC server: {e}")))?;
        let port = server
            .add_listening_port(config.addr.to_string(), ServerCredentials::insecure())
            .map_err(|_| Error::Io(format!("cannot listen on {} (gRPC)", config.addr)))?;
        server.start();
        Ok(Server {
            server,
            port,
            _env: env,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cancels what is left and shuts down, waiting at most `timeout`.
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
