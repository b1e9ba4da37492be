//! The integration tests' harness, in one place: a server on port 0 and
//! bounded waiting here; one client per protocol in the submodules.
//!
//! - [`grpc`]: streamhub's own h2c client with deadlines, and a raw
//!   HTTP/2 subscriber that can be killed the way a crashed client dies.
//! - [`http`]: the one raw HTTP/1.1 client.
//! - [`sse`]: the one event-stream client and WHATWG parser.
//! - [`browser`]: headless Chromium and the page server it loads from.
//! - [`binary`]: the real `streamhub` binary as a child process.
//! - [`proc`]: what this process holds (threads, files, memory).

#![allow(dead_code)]

pub mod binary;
pub mod browser;
pub mod cdp;
pub mod connect_es;
pub mod grpc;
pub mod grpc_web;
pub mod http;
pub mod proc;
pub mod sse;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use streamhub::config::Config;
use streamhub::App;

pub struct Server {
    pub app: App,
    pub grpc_addr: String,
}

/// Starts a server with default settings on 127.0.0.1 port 0.
pub fn start() -> Server {
    start_with(|_| {})
}

/// Starts a server after `tune` adjusted its settings.
pub fn start_with(tune: impl FnOnce(&mut Config)) -> Server {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut config = Config::local();
    config.shutdown_grace = Duration::from_secs(3);
    tune(&mut config);
    let app = App::start(config).expect("server starts");
    let grpc_addr = format!("127.0.0.1:{}", app.grpc_port());
    Server { app, grpc_addr }
}

impl Server {
    pub fn subscribers(&self) -> u64 {
        self.app.hub().stats().subscribers
    }
}

/// Polls `cond` until it holds or `timeout` passes. For state with no
/// signal to wait on (counters inside the server).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs the ignored test `name` alone in a fresh copy of this test binary,
/// so that no other test in the process moves what it measures (resident
/// memory, thread and file counts).
pub fn run_alone(name: &str) {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} failed alone:\n{stdout}\n{stderr}"
    );
}

/// The venv's Python (grpcio, h2), which `make test` creates.
pub fn python() -> PathBuf {
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make test` (or `make py-deps`) to create the venv",
        python.display()
    );
    python
}

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A number no other caller in this process gets (for unique names).
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
