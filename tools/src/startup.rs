//! `streamhub-bench startup`: how long a streamhub binary takes from `exec` to ready,
//! and what it costs idle. Ready means what systemd is told: the binary
//! sends `READY=1` to `$NOTIFY_SOCKET` once both ports accept connections,
//! so this runs it with `NOTIFY_SOCKET` pointing at a socket of ours.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::proc::Footprint;
use super::report::{row, Report};
use super::stats;
use streamhub::config::RawArgs;
use streamhub::error::Error;

/// What to run.
#[derive(Clone, Debug)]
pub struct StartupPlan {
    pub binary: PathBuf,
    pub runs: usize,
    pub settle: Duration,
    pub server_args: Vec<String>,
}

impl StartupPlan {
    pub fn from_raw(raw: &RawArgs) -> Result<StartupPlan, Error> {
        let binary = match raw.string("binary") {
            b if b.is_empty() => std::env::current_exe()
                .map_err(|e| Error::Config(format!("--binary: cannot find this program: {e}")))?,
            b => PathBuf::from(b),
        };
        Ok(StartupPlan {
            binary,
            runs: raw.number("runs", 1, 1000)? as usize,
            settle: Duration::from_millis(raw.number("settle-ms", 0, 60_000)?),
            server_args: raw.list("server-arg"),
        })
    }
}

/// What was measured.
#[derive(Clone, Debug)]
pub struct StartupResult {
    pub plan: StartupPlan,
    pub binary_bytes: u64,
    /// Start-to-ready of each run, sorted.
    pub ready: Vec<Duration>,
    /// The idle footprint of each run, after `settle`.
    pub idle: Vec<Footprint>,
}

impl StartupResult {
    fn median<T: Copy + Ord>(values: &[T]) -> Option<T> {
        let mut sorted = values.to_vec();
        sorted.sort();
        sorted.get(sorted.len() / 2).copied()
    }

    pub fn report(&self) -> Report {
        let ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
        let median_ready = Self::median(&self.ready).unwrap_or_default();
        let rss: Vec<u64> = self.idle.iter().map(|f| f.resident_bytes).collect();
        let threads: Vec<u64> = self.idle.iter().map(|f| f.threads).collect();
        let fds: Vec<u64> = self.idle.iter().map(|f| f.open_fds).collect();
        let median_rss = Self::median(&rss).unwrap_or_default();
        let mut report = Report::new(
            format!(
                "startup of {} ({} runs)",
                self.plan.binary.display(),
                self.plan.runs
            ),
            serde_json::json!({
                "scenario": "startup",
                "binary": self.plan.binary.display().to_string(),
                "binary_bytes": self.binary_bytes,
                "ready_ms": self.ready.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                "ready_ms_median": ms(median_ready),
                "idle_resident_bytes_median": median_rss,
                "idle_threads_median": Self::median(&threads),
                "idle_open_fds_median": Self::median(&fds),
            }),
        );
        report.section(
            "binary",
            vec![row("size", stats::bytes(self.binary_bytes as i64))],
        );
        report.section(
            "start to ready",
            vec![
                row("min", format!("{:.2} ms", ms(self.ready[0]))),
                row("median", format!("{:.2} ms", ms(median_ready))),
                row(
                    "max",
                    format!(
                        "{:.2} ms",
                        ms(*self.ready.last().expect("one run at least"))
                    ),
                ),
            ],
        );
        report.section(
            "idle (median)",
            vec![
                row("resident", stats::bytes(median_rss as i64)),
                row("threads", Self::median(&threads).unwrap_or_default()),
                row("open fds", Self::median(&fds).unwrap_or_default()),
            ],
        );
        report
    }
}

/// Runs the plan.
pub fn run(plan: &StartupPlan) -> Result<StartupResult, Error> {
    let binary_bytes = std::fs::metadata(&plan.binary)
        .map_err(|e| Error::Config(format!("--binary: {}: {e}", plan.binary.display())))?
        .len();
    let mut ready = Vec::with_capacity(plan.runs);
    let mut idle = Vec::with_capacity(plan.runs);
    for n in 0..plan.runs {
        let (took, footprint) = one_start(plan, n)?;
        ready.push(took);
        idle.extend(footprint);
    }
    ready.sort();
    Ok(StartupResult {
        plan: plan.clone(),
        binary_bytes,
        ready,
        idle,
    })
}

fn one_start(plan: &StartupPlan, n: usize) -> Result<(Duration, Option<Footprint>), Error> {
    let path = std::env::temp_dir().join(format!(
        "streamhub-bench-notify-{}-{n}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path)?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut command = Command::new(&plan.binary);
    command
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .args(&plan.server_args)
        .env("NOTIFY_SOCKET", &path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let started = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|e| Error::Io(format!("cannot start {}: {e}", plan.binary.display())))?;
    let mut buf = [0u8; 512];
    let outcome = loop {
        match socket.recv(&mut buf) {
            Ok(len) if buf[..len].split(|b| *b == b'\n').any(|l| l == b"READY=1") => {
                break Ok(started.elapsed());
            }
            Ok(_) => {}
            Err(e) => break Err(Error::Io(format!("no READY=1 within 10 s: {e}"))),
        }
    };
    let footprint = outcome.as_ref().ok().and_then(|_| {
        std::thread::sleep(plan.settle);
        Footprint::of(child.id())
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&path);
    outcome.map(|took| (took, footprint))
}
