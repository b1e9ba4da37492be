//! The HTTP/1.1 front door: Server-Sent Events, `POST /messages`, metrics
//! and health, on streamhub's own small HTTP layer (no async runtime).
//!
//! Why not tiny_http: it reads a request line or header with no length
//! limit and has no timeouts (measured: one unterminated 200 MiB header grew
//! a bare server by 200 MiB), and it accepts connections itself, leaving no
//! place to add limits. This layer keeps the same synchronous model with a
//! hard bound on every resource a client can make it spend.
//!
//! Threads (all spawned through [`Threads`]):
//! - `http-accept`: accepts connections and reads every request head and
//!   body without blocking, waiting on all unfinished connections at once
//!   with poll(2). It enforces the connection cap, the head deadline and
//!   size limits, and the keep-alive idle timeout, so a slow or hostile
//!   client costs a buffer, never a thread.
//! - `http-worker-N` (`--http-workers`): run a complete request and write
//!   the response (blocking, with the write timeout), then hand a kept-alive
//!   connection back to `http-accept`.
//! - `sse-N` / `sse-metrics-N`: one per open event stream, capped by
//!   `--max-sse-clients`; the only writer of its socket.
//!
//! Capacity, worked out up front: at most `--max-http-connections` open
//! sockets, each holding at most 16 KiB of head or one body of
//! `--max-message-bytes` (with TLS, also a rustls session: a record being
//! received, about 16 KiB of decrypted input, about 64 KiB of records
//! to send); `--http-workers` + `--max-sse-clients` + 1 threads. Past the
//! connection cap a plain client gets a `503`, a TLS client a close (a
//! `503` would first cost the handshake the cap is there to refuse).
//!
//! With `--tls-cert` the port speaks TLS only (rustls, ALPN `http/1.1`, TLS
//! 1.2 and 1.3, the certificate `crate::tls` owns for both ports): the
//! handshake runs on `http-accept` without blocking and within the head
//! deadline, and the session then moves with its connection like the
//! socket (`wire`).
//!
//! Who may do what is asked of [`crate::access`] through [`gate`] (the
//! token a request carries, a refusal as a response): per request, and per
//! connection at accept (`--max-connections-per-address`,
//! `--connect-rate`; a plain client past them gets a 429, a TLS client a
//! close, as at the connection cap).
//!
//! Pure protocol logic lives in [`request`], [`response`], [`routes`],
//! [`gate`], [`sse`] and [`prometheus`], and the connection state machine in `conn`;
//! `server`, `stream` and `wire` are the I/O around it.

mod conn;
mod extension;
pub(crate) mod gate;
pub(crate) mod prometheus;
pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod routes;
mod server;
pub(crate) mod sse;
mod stream;
mod ui;
mod wire;

pub use extension::{Exchange, Extension};
pub use request::Request;
// The one module allowed `unsafe` (poll(2), listen(2)); see its header.

/// Cases per property test of the submodules; `STREAMHUB_STRESS=long`
/// (`make stress`) runs many more.
#[cfg(test)]
fn property_cases() -> u32 {
    if std::env::var("STREAMHUB_STRESS").is_ok_and(|v| v == "long") {
        8192
    } else {
        512
    }
}

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, TryRecvError};

use crate::access::Access;
use crate::config::HttpConfig;
use crate::error::Error;
use crate::hub::{Hub, Protocol};
use crate::metrics::Telemetry;
use crate::threads::{Slots, Threads};

/// Stack of the accept thread and of the workers: enough for serde_json on
/// a nested body (its recursion is capped at 128 levels).
const SERVICE_STACK: usize = 256 * 1024;

/// What every HTTP thread shares.
struct Shared {
    hub: Arc<Hub>,
    /// Who may do what, and how often (shared with the gRPC door).
    access: Arc<Access>,
    telemetry: Arc<Telemetry>,
    threads: Threads,
    config: HttpConfig,
    /// The port's TLS configuration (ALPN http/1.1), when it speaks TLS.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Disconnects when shutdown begins.
    stopping: Receiver<()>,
    /// Connections being served (counted against `--max-http-connections`).
    open_connections: Arc<Slots>,
    /// Event streams open now (counted against `--max-sse-clients`).
    sse_streams: Arc<Slots>,
    /// `http-accept` and the workers while they run.
    service_threads: Arc<Slots>,
    /// Another front door's paths on this port (gRPC-Web), if any.
    extension: Option<Arc<dyn Extension>>,
}

impl Shared {
    fn is_stopping(&self) -> bool {
        matches!(self.stopping.try_recv(), Err(TryRecvError::Disconnected))
    }
}

/// The running HTTP server.
pub struct HttpServer {
    shared: Arc<Shared>,
    port: u16,
    /// Set by [`HttpServer::stop`]; `http-accept` checks it on every wake.
    stop: Arc<AtomicBool>,
    /// Writing a byte wakes `http-accept` at once.
    wake: Arc<UnixStream>,
    accept: Option<JoinHandle<()>>,
    /// Disconnects when the last worker has returned.
    workers_done: Receiver<()>,
}

impl HttpServer {
    /// Binds `config.addr` (port 0 picks a free port) and starts the
    /// accept thread and the workers; with `tls` (from `crate::tls`), every
    /// connection speaks TLS only; `extension` serves the paths it claims.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        config: &HttpConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
        extension: Option<Arc<dyn Extension>>,
        hub: Arc<Hub>,
        access: Arc<Access>,
        telemetry: Arc<Telemetry>,
        threads: Threads,
        stopping: Receiver<()>,
    ) -> Result<HttpServer, Error> {
        let listener = TcpListener::bind(config.addr)
            .map_err(|e| Error::Io(format!("cannot listen on {} (HTTP): {e}", config.addr)))?;
        listener.set_nonblocking(true)?;
        crate::sys::set_backlog(&listener, config.max_connections)?;
        let port = listener.local_addr()?.port();
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let wake = Arc::new(wake_tx);
        hub.set_encoder(Protocol::Sse, sse::encode_message);
        let shared = Arc::new(Shared {
            hub,
            access,
            telemetry,
            threads: threads.clone(),
            config: config.clone(),
            tls,
            stopping,
            open_connections: Slots::new(),
            sse_streams: Slots::new(),
            service_threads: Slots::new(),
            extension,
        });
        let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded();
        let (back_tx, back_rx) = crossbeam_channel::unbounded();
        let (alive_tx, workers_done) = crossbeam_channel::bounded::<()>(0);
        for n in 1..=config.workers {
            let shared = shared.clone();
            let jobs = jobs_rx.clone();
            let back = server::GiveBack::new(back_tx.clone(), wake.clone());
            let alive = alive_tx.clone();
            let counted = shared.service_threads.hold();
            threads.spawn(format!("http-worker-{n}"), Some(SERVICE_STACK), move || {
                let _alive = (alive, counted);
                server::run_worker(&shared, &jobs, &back);
            })?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let poller = server::Poller::new(
            shared.clone(),
            listener,
            wake_rx,
            back_rx,
            jobs_tx,
            stop.clone(),
        );
        let counted = shared.service_threads.hold();
        let accept = threads.spawn("http-accept".into(), Some(SERVICE_STACK), move || {
            let _counted = counted;
            poller.run()
        })?;
        Ok(HttpServer {
            shared,
            port,
            stop,
            wake,
            accept: Some(accept),
            workers_done,
        })
    }

    /// The bound port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// HTTP connections open now, event streams included.
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.open()
    }

    /// Event streams open now.
    pub fn sse_streams(&self) -> usize {
        self.shared.sse_streams.open()
    }

    /// The accept thread and workers running now: threads that live as long
    /// as the server, unlike stream threads.
    pub fn service_threads(&self) -> usize {
        self.shared.service_threads.open()
    }

    /// Stops accepting, closes idle and unfinished connections, joins the
    /// accept thread and waits up to `timeout` for the workers to finish the
    /// requests they are writing. Event streams end on their own when the
    /// hub closes their subscriptions.
    pub fn stop(mut self, timeout: Duration) {
        self.halt(timeout);
    }

    fn halt(&mut self, timeout: Duration) {
        self.stop.store(true, Ordering::Release);
        let _ = (&*self.wake).write(&[1]);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
            // Nothing is ever sent: this returns when the last worker drops
            // its sender, or at the timeout.
            let _ = self.workers_done.recv_timeout(timeout);
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.halt(Duration::from_secs(1));
    }
}
