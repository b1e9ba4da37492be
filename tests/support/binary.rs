//! The real `streamhub` binary as a child process: started on port 0,
//! its log lines followed, signalled, and waited for.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_streamhub");

/// A `streamhub serve`, killed when dropped.
pub struct Serve {
    pub child: Child,
    pub grpc_addr: String,
    /// Log lines after the "listening" one.
    pub logs: mpsc::Receiver<String>,
    /// Log lines before it (what start-up said).
    pub early: Vec<String>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines `reader` produces, as they come, from a thread of their own.
pub fn lines_of(reader: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `streamhub serve` on port 0 with `extra` flags.
pub fn serve(extra: &[&str]) -> Serve {
    serve_with_env(extra, &[])
}

/// `streamhub serve` on port 0 with `extra` flags and `env` variables; returns
/// once it logged its gRPC address.
pub fn serve_with_env(extra: &[&str], env: &[(&str, &str)]) -> Serve {
    spawn(Command::new(BIN), extra, env)
}

/// `streamhub serve` on port 0 started by `wrapper` (a command and its
/// arguments, such as `prlimit --fsize=N`, that runs the binary it is
/// given last).
pub fn serve_through(wrapper: &[&str], extra: &[&str]) -> Serve {
    let mut cmd = Command::new(wrapper[0]);
    cmd.args(&wrapper[1..]).arg(BIN);
    spawn(cmd, extra, &[])
}

fn spawn(mut cmd: Command, extra: &[&str], env: &[(&str, &str)]) -> Serve {
    cmd.args([
        "serve",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ])
    .args(extra)
    .env("RUST_LOG", "info")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("binary starts");
    let stderr: ChildStderr = child.stderr.take().unwrap();
    let rx = lines_of(stderr);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut early = Vec::new();
    let grpc_addr = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("server logs its gRPC address");
        if let Some(addr) = line.split("gRPC listening on ").nth(1) {
            break addr.trim().to_string();
        }
        early.push(line);
    };
    Serve {
        child,
        grpc_addr,
        logs: rx,
        early,
    }
}

impl Serve {
    /// The log line that gives the HTTP address (it comes after the gRPC one).
    pub fn http_log_line(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let line = self
                .logs
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("server logs its HTTP address");
            if line.contains("HTTP listening on ") {
                return line;
            }
        }
    }

    /// The HTTP address, from the logs.
    pub fn http_addr(&self) -> String {
        let line = self.http_log_line();
        let addr = line.split("HTTP listening on ").nth(1).unwrap();
        addr.trim().to_string()
    }

    /// The HTTP port, from the logs.
    pub fn http_port(&self) -> u16 {
        let addr = self.http_addr();
        let port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
        port.expect("an HTTP port")
    }
}

/// `streamhub serve` on port 0 with `extra`, for a start that must fail:
/// its exit code (-1 for a signal) and what it said on stderr.
/// A server that starts instead is killed after 20 s, and the test fails.
pub fn serve_refused<S: AsRef<std::ffi::OsStr>>(extra: &[S]) -> (i32, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--grpc-addr", "127.0.0.1:0"])
        .args(["--http-addr", "127.0.0.1:0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let said = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut { stderr }, &mut text);
        text
    });
    let Some(status) = wait_exit(&mut child, Duration::from_secs(20)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the server started instead of refusing: {}",
            said.join().unwrap()
        );
    };
    (status.code().unwrap_or(-1), said.join().unwrap())
}

/// Waits up to `timeout` for `child` to exit.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Sends signal `name` (`TERM`, `INT`) to `child`.
pub fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name}");
}

/// A command-line client run: `streamhub <command> --server <server>
/// --room <room> --user <user>`, more arguments to follow.
pub fn cli(command: &str, server: &str, room: &str, user: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args([command, "--server", server, "--room", room, "--user", user]);
    cmd
}
