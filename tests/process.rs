//! The real `streamhub` binary: the command-line clients and signals.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_streamhub");

struct Serve {
    child: Child,
    grpc_addr: String,
    /// Log lines after the "listening" one.
    logs: mpsc::Receiver<String>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(extra: &[&str]) -> Serve {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stderr: ChildStderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let grpc_addr = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("server logs its gRPC address");
        if let Some(addr) = line.split("gRPC listening on ").nth(1) {
            break addr.trim().to_string();
        }
    };
    Serve {
        child,
        grpc_addr,
        logs: rx,
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name}");
}

#[test]
fn cli_send_and_subscribe_then_sigterm_exits_zero_with_stream_open() {
    let mut server = serve(&[]);
    let mut sub = Command::new(BIN)
        .args([
            "subscribe",
            "--server",
            &server.grpc_addr,
            "--room",
            "cli",
            "--user",
            "",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = sub.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let welcome = lines
        .recv_timeout(Duration::from_secs(20))
        .expect("welcome");
    assert!(welcome.contains("Welcome to room cli"), "{welcome}");

    let out = Command::new(BIN)
        .args([
            "send",
            "--server",
            &server.grpc_addr,
            "--room",
            "cli",
            "--user",
            "ann",
            "hello",
            "world",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    let id = printed.split_whitespace().nth(1).unwrap().to_string();
    assert!(id.starts_with("msg_"), "{printed}");
    // The CLI subscriber has a user name ($USER or a default): skip its JOIN.
    let got = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("message");
        if !line.contains(" JOIN ") {
            break line;
        }
    };
    assert!(
        got.contains("ann: hello world") && got.contains(&id),
        "{got}"
    );

    let signalled = Instant::now();
    signal(&server.child, "TERM");
    let status = wait_exit(&mut server.child, Duration::from_secs(8)).expect("server exits");
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "{:?}",
        signalled.elapsed()
    );
    let notice = lines
        .recv_timeout(Duration::from_secs(5))
        .expect("shutdown notice");
    assert!(notice.contains("server shutting down"), "{notice}");
    let status = wait_exit(&mut sub, Duration::from_secs(5)).expect("client exits");
    assert!(!status.success(), "subscribe reports the UNAVAILABLE end");
    let logs: Vec<String> = server.logs.try_iter().collect();
    assert!(
        logs.iter()
            .any(|l| l.contains("SubscribeMessages closed") && l.contains("reason=shutdown")),
        "{logs:#?}"
    );
}

#[test]
fn sigint_stops_an_idle_server_with_exit_zero() {
    let mut server = serve(&[]);
    signal(&server.child, "INT");
    let status = wait_exit(&mut server.child, Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{status:?}");
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    let out = Command::new(BIN)
        .args(["serve", "--history", "lots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--history"));
    let out = Command::new(BIN).args(["frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    for cmd in ["serve", "send", "subscribe", "upload", "chat", "metrics"] {
        let out = Command::new(BIN).args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success(), "{cmd} --help");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("--"),
            "{cmd} --help"
        );
    }
}

#[test]
fn cli_upload_reads_stdin_lines() {
    let server = serve(&[]);
    let mut child = Command::new(BIN)
        .args([
            "upload",
            "--server",
            &server.grpc_addr,
            "--room",
            "u",
            "--user",
            "bob",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"one\ntwo\nthree\n").unwrap();
    }
    let status = wait_exit(&mut child, Duration::from_secs(20)).expect("upload ends");
    assert!(status.success());
    let mut printed = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut printed).unwrap();
    assert!(printed.contains("uploaded 3 messages"), "{printed}");
}
