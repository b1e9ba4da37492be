//! streamhub: a small realtime message server. One process, no async
//! runtime: a gRPC `chat.ChatService` and an HTTP/SSE front door share one
//! in-process broadcast [`hub::Hub`]; every stream is served by its own named
//! thread.
//!
//! [`App`] is the whole server: `main` starts it from a [`config::Config`],
//! reloads its certificate on SIGHUP ([`App::reload_tls`]) and stops it on
//! SIGTERM or SIGINT; the integration tests start it on port 0.

#![deny(unsafe_code)]

pub mod access;
pub mod auth;
mod bridge;
pub mod cluster;
pub mod config;
pub mod error;
pub mod grpc;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod proto;
pub mod rate;
pub mod store;
#[allow(unsafe_code)]
pub(crate) mod sys;
pub mod systemd;
pub mod threads;
pub mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use config::Config;
use error::Error;
use hub::{CloseReason, Hub};
use metrics::Telemetry;
use threads::Threads;

/// A running streamhub. Stops (quickly) when dropped; call
/// [`App::shutdown`] for the graceful path.
pub struct App {
    hub: Arc<Hub>,
    telemetry: Arc<Telemetry>,
    threads: Threads,
    grpc: Option<grpc::GrpcServer>,
    http: Option<http::HttpServer>,
    /// The certificate both ports serve, when they speak TLS.
    tls: Option<Arc<tls::Certificates>>,
    /// Dropped to tell every thread that shutdown began.
    stop_tx: Option<Sender<()>>,
    stopping: Receiver<()>,
    grace: Duration,
    /// The durable log (`--data-dir`), closed after both ports.
    store: Option<Arc<store::Store>>,
    /// This node's part of shared rooms (`--cluster`), closed after both
    /// ports.
    cluster: Option<Arc<cluster::Node>>,
}

impl App {
    /// Binds both ports and starts serving.
    pub fn start(config: Config) -> Result<App, Error> {
        let (hub, store) = match &config.store {
            Some(durable) => {
                let (hub, store) = store::open_hub(config.hub.clone(), durable.clone())?;
                (hub, Some(store))
            }
            None => (Arc::new(Hub::new(config.hub.clone())), None),
        };
        // Shared rooms (`--cluster`; config refuses it with --data-dir).
        let (hub, cluster) = match &config.cluster {
            Some(url) => {
                let node = cluster::Node::open(url, config.hub.history)?;
                let hub = Arc::new(Hub::with_relay(config.hub.clone(), node.clone()));
                node.start(Arc::downgrade(&hub))?;
                log::info!(
                    "cluster: rooms shared through {}",
                    config::redacted_url(url)
                );
                (hub, Some(node))
            }
            None => (hub, None),
        };
        // Reads the key file: a wrong one stops the start, naming the flag.
        let access = Arc::new(access::Access::from_config(&config.access)?);
        let telemetry = Arc::new(Telemetry::default());
        let threads = Threads::new();
        let (stop_tx, stopping) = crossbeam_channel::bounded::<()>(0);
        // One certificate store for both ports, each with its own ALPN.
        let tls = config
            .tls
            .as_ref()
            .map(tls::Certificates::load)
            .transpose()?;
        let door = |alpn| tls.as_ref().map(|t| t.server_config(alpn)).transpose();
        let grpc = grpc::GrpcServer::start(
            &config.grpc,
            door(tls::ALPN_H2)?,
            hub.clone(),
            access.clone(),
            telemetry.clone(),
            threads.clone(),
            stopping.clone(),
        )?;
        log::info!(
            "gRPC listening on {}:{}",
            config.grpc.addr.ip(),
            grpc.port()
        );
        // gRPC-Web on the HTTP port (`bridge`).
        let grpc_web: Arc<dyn http::Extension> = Arc::new(bridge::GrpcWebDoor(grpc.web()));
        let http = http::HttpServer::start(
            &config.http,
            door(tls::ALPN_HTTP1)?,
            Some(grpc_web),
            hub.clone(),
            access.clone(),
            telemetry.clone(),
            threads.clone(),
            stopping.clone(),
        )?;
        log::info!(
            "HTTP listening on {}:{}",
            config.http.addr.ip(),
            http.port()
        );
        match access.mode() {
            auth::AuthMode::Off => log::info!("auth off: anyone may publish and subscribe"),
            auth::AuthMode::Required => log::info!("auth required: bearer tokens on both ports"),
        }
        if let Some(tls) = &tls {
            log::info!(
                "both ports speak TLS only (gRPC ALPN h2, HTTP http/1.1): {} sha256 {}",
                tls.cert_path().display(),
                tls.fingerprint()
            );
        }
        Ok(App {
            hub,
            telemetry,
            threads,
            grpc: Some(grpc),
            http: Some(http),
            tls,
            stop_tx: Some(stop_tx),
            stopping,
            grace: config.shutdown_grace,
            store,
            cluster,
        })
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The bound gRPC port (useful with port 0).
    pub fn grpc_port(&self) -> u16 {
        self.grpc.as_ref().map_or(0, |g| g.port())
    }

    /// The bound HTTP port (useful with port 0).
    pub fn http_port(&self) -> u16 {
        self.http.as_ref().map_or(0, |h| h.port())
    }

    /// The HTTP server (connection and stream counts), while running.
    pub fn http(&self) -> Option<&http::HttpServer> {
        self.http.as_ref()
    }

    /// Stream threads running now (not the HTTP accept thread and workers,
    /// which live as long as the server).
    pub fn stream_threads(&self) -> usize {
        let service = self.http.as_ref().map_or(0, |h| h.service_threads());
        self.threads.live().saturating_sub(service)
    }

    /// Calls `ping` every `every` from a `watchdog` thread, after checking
    /// that the hub answers (a deadlocked hub stops the pings, and systemd
    /// restarts the service). Stops when shutdown begins.
    pub fn start_watchdog(
        &self,
        every: Duration,
        ping: impl Fn() + Send + 'static,
    ) -> Result<(), Error> {
        let hub = self.hub.clone();
        let stopping = self.stopping.clone();
        self.threads.spawn("watchdog".into(), None, move || loop {
            let _ = hub.stats();
            ping();
            if let Err(crossbeam_channel::RecvTimeoutError::Disconnected) =
                stopping.recv_timeout(every)
            {
                break;
            }
        })?;
        Ok(())
    }

    /// Reads `--tls-cert` and `--tls-key` again (SIGHUP): new connections on
    /// both ports get the new certificate, open ones keep theirs. A bad file
    /// keeps the old certificate; the log says why either way.
    pub fn reload_tls(&self) {
        let Some(tls) = &self.tls else {
            log::info!("no certificate to reload: the ports speak no TLS (no --tls-cert)");
            return;
        };
        let before = tls.fingerprint();
        match tls.reload() {
            Ok(()) => log::info!(
                "TLS certificate reloaded: sha256 {} (was {before}); open connections keep theirs",
                tls.fingerprint()
            ),
            Err(e) => {
                log::warn!("TLS certificate not reloaded, still serving sha256 {before}: {e}")
            }
        }
    }

    /// A receiver that disconnects when shutdown begins.
    pub fn stopping(&self) -> Receiver<()> {
        self.stopping.clone()
    }

    /// Stops gracefully: refuses new streams, lets subscribers drain what was
    /// accepted, says goodbye on every stream, and waits for stream threads
    /// up to the grace period before cancelling what is left.
    pub fn shutdown(mut self) {
        self.stop(self.grace);
    }

    fn stop(&mut self, grace: Duration) {
        let Some(stop_tx) = self.stop_tx.take() else {
            return;
        };
        let started = Instant::now();
        log::info!("shutting down (grace {grace:?})");
        if let Some(grpc) = &self.grpc {
            grpc.set_not_serving();
        }
        drop(stop_tx);
        self.hub.close_all(CloseReason::Shutdown);
        let left = self.threads.wait_idle(started + grace);
        if !left.is_empty() {
            log::warn!(
                "{} stream threads still running after the grace period: {left:?}",
                left.len()
            );
        }
        if let Some(grpc) = self.grpc.take() {
            grpc.stop(Duration::from_secs(2));
        }
        if let Some(http) = self.http.take() {
            http.stop(Duration::from_secs(2));
        }
        if let Some(store) = self.store.take() {
            store.close();
        }
        if let Some(node) = self.cluster.take() {
            node.close();
        }
        let left = self
            .threads
            .wait_idle(Instant::now() + Duration::from_secs(2));
        if !left.is_empty() {
            log::warn!("threads that did not end: {left:?}");
        }
        log::info!("stopped in {:?}", started.elapsed());
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(1));
    }
}
