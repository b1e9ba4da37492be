//! The real `streamhub` binary: the command-line clients and signals.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::binary::{cli, lines_of, serve, serve_with_env, signal, wait_exit, BIN};

#[test]
fn cli_send_and_subscribe_then_sigterm_exits_zero_with_stream_open() {
    let mut server = serve(&[]);
    let mut sub = cli("subscribe", &server.grpc_addr, "cli", "")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(sub.stdout.take().unwrap());
    let welcome = lines
        .recv_timeout(Duration::from_secs(20))
        .expect("welcome");
    assert!(welcome.contains("Welcome to room cli"), "{welcome}");

    let out = cli("send", &server.grpc_addr, "cli", "ann")
        .args(["hello", "world"])
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
    // The notice sent just ahead of the UNAVAILABLE status is printed.
    let notice = lines
        .recv_timeout(Duration::from_secs(5))
        .expect("the notice");
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
    let mut child = cli("upload", &server.grpc_addr, "u", "bob")
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

#[test]
fn systemd_notify_ready_after_both_ports_answer_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let path = std::env::temp_dir().join(format!("streamhub-notify-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut server = serve_with_env(
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let http_addr = server.http_addr();
    let recv = |socket: &UnixDatagram| {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a notify message");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(recv(&socket), "READY=1");
    // READY means both ports already accept.
    for addr in [&server.grpc_addr, &http_addr] {
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("port answers");
    }
    // Half of WATCHDOG_USEC: at least two pings arrive quickly.
    assert_eq!(recv(&socket), "WATCHDOG=1");
    assert_eq!(recv(&socket), "WATCHDOG=1");
    signal(&server.child, "TERM");
    let stopping = loop {
        let m = recv(&socket);
        if m != "WATCHDOG=1" {
            break m;
        }
    };
    assert_eq!(stopping, "STOPPING=1");
    let status = wait_exit(&mut server.child, Duration::from_secs(10)).expect("exits");
    assert!(status.success());
    let _ = std::fs::remove_file(&path);
}

#[test]
fn print_config_takes_flags_over_env_over_defaults() {
    let out = Command::new(BIN)
        .args(["serve", "--print-config", "--subscriber-queue", "9"])
        .env("STREAMHUB_SUBSCRIBER_QUEUE", "5")
        .env("STREAMHUB_HISTORY", "7")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("# --subscriber-queue (from flag)\nSTREAMHUB_SUBSCRIBER_QUEUE=9\n"),
        "{text}"
    );
    assert!(
        text.contains("# --history (from environment)\nSTREAMHUB_HISTORY=7\n"),
        "{text}"
    );
    assert!(
        text.contains("# --max-rooms (from default)\nSTREAMHUB_MAX_ROOMS=10000\n"),
        "{text}"
    );
}

#[test]
fn journald_logs_have_priorities_and_no_timestamps() {
    let mut server = serve_with_env(&[], &[("JOURNAL_STREAM", "8:1234")]);
    let line = server.http_log_line();
    assert!(line.starts_with("<6>["), "{line}");
    signal(&server.child, "TERM");
    assert!(wait_exit(&mut server.child, Duration::from_secs(10))
        .expect("exits")
        .success());
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let root = env!("CARGO_MANIFEST_DIR");
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIPPED: systemd-analyze is not installed (Debian package 'systemd')");
        return;
    };
    assert!(probe.status.success());
    let unit = std::fs::read_to_string(format!("{root}/systemd/streamhub.service")).unwrap();
    // verify checks that ExecStart exists: point it at the built binary.
    let unit = unit.replace("/usr/local/bin/streamhub", BIN);
    let dir = std::env::temp_dir().join(format!("streamhub-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("streamhub.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn make_install_and_uninstall_honour_destdir_and_prefix() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dest = std::env::temp_dir().join(format!("streamhub-dest-{}", std::process::id()));
    let make = |target: &str| {
        // -o build: the binary under test is already built, and BIN says
        // where (not target/ when CARGO_TARGET_DIR points elsewhere).
        Command::new("make")
            .args(["-s", "-C", root, "-o", "build", target, "PREFIX=/usr"])
            .arg(format!("BIN={BIN}"))
            .arg(format!("DESTDIR={}", dest.display()))
            .output()
            .unwrap()
    };
    let out = make("install");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = std::fs::read_to_string(dest.join("etc/systemd/system/streamhub.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/streamhub serve"));
    assert!(dest.join("usr/bin/streamhub").exists());
    assert!(dest.join("etc/default/streamhub").exists());
    let out = make("uninstall");
    assert!(out.status.success());
    assert!(!dest.join("usr/bin/streamhub").exists());
    assert!(!dest.join("etc/systemd/system/streamhub.service").exists());
    assert!(!dest.join("etc/default/streamhub").exists());
    let _ = std::fs::remove_dir_all(&dest);
}

#[test]
fn sigterm_with_open_sse_and_grpc_streams_delivers_everything_then_exits_zero() {
    use std::io::{Read, Write};
    let mut server = serve_with_env(&["--shutdown-grace-secs", "5"], &[]);
    let http_addr = server.http_addr();
    let mut sse = std::net::TcpStream::connect(&http_addr).unwrap();
    sse.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    sse.write_all(b"GET /events?room=term HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(": connected") {
        let n = sse.read(&mut buf).unwrap();
        assert!(n > 0, "stream closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    // A gRPC subscriber through the CLI (its h2c client).
    let mut sub = cli("subscribe", &server.grpc_addr, "term", "")
        .env("USER", "")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(sub.stdout.take().unwrap());
    assert!(lines
        .recv_timeout(Duration::from_secs(20))
        .unwrap()
        .contains("Welcome"));
    let mut ids = Vec::new();
    for i in 0..20 {
        let out = cli("send", &server.grpc_addr, "term", "ann")
            .arg(format!("message {i}"))
            .output()
            .unwrap();
        assert!(out.status.success());
        ids.push(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .nth(1)
                .unwrap()
                .to_string(),
        );
    }
    // Everything was accepted before the signal.
    let signalled = Instant::now();
    signal(&server.child, "TERM");
    let status = wait_exit(&mut server.child, Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "{:?}",
        signalled.elapsed()
    );
    // SSE: every message in order, then the notice, then the end of stream.
    loop {
        let n = sse.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    let mut last = 0;
    for id in &ids {
        let at = text[last..]
            .find(&format!("\"id\":\"{id}\""))
            .map(|p| p + last);
        last = at.unwrap_or_else(|| panic!("{id} missing or out of order in\n{text}"));
    }
    let notice = text.rfind("server shutting down").expect("shutdown notice");
    assert!(notice > last, "the notice comes last");
    // gRPC: every message in order, then the notice, then the end.
    let status = wait_exit(&mut sub, Duration::from_secs(10)).expect("client exits");
    assert!(!status.success(), "subscribe reports the UNAVAILABLE end");
    let mut printed = Vec::new();
    loop {
        match lines.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => printed.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("the CLI's output did not end: {e}"),
        }
    }
    let (notice, messages) = printed.split_last().expect("the CLI printed");
    assert!(notice.contains("server shutting down"), "{printed:#?}");
    assert_eq!(messages.len(), ids.len(), "{printed:#?}");
    for (line, id) in messages.iter().zip(&ids) {
        assert!(line.contains(id.as_str()), "{line} vs {id}");
    }
}

#[test]
fn a_second_signal_exits_at_once_while_shutdown_waits_for_a_stuck_stream() {
    use std::io::{Read, Write};
    let mut server = serve_with_env(
        &["--shutdown-grace-secs", "60", "--write-timeout-secs", "60"],
        &[],
    );
    let http_addr = server.http_addr();
    // An SSE client that stops reading: its stream thread blocks in a write
    // once the socket buffers are full, which holds shutdown up.
    let mut stuck = std::net::TcpStream::connect(&http_addr).unwrap();
    stuck
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stuck
        .write_all(b"GET /events?room=stuck HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 512];
    let n = stuck.read(&mut head).unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).contains("200"));
    let big = "z".repeat(60_000);
    let body = format!(r#"{{"room":"stuck","user":"u","content":"{big}"}}"#);
    for _ in 0..200 {
        let mut c = std::net::TcpStream::connect(&http_addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            c,
            "POST /messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
    signal(&server.child, "TERM");
    // The first signal alone does not end it: the stuck stream holds on.
    assert!(wait_exit(&mut server.child, Duration::from_millis(500)).is_none());
    let second = Instant::now();
    signal(&server.child, "TERM");
    let status = wait_exit(&mut server.child, Duration::from_secs(5)).expect("exits at once");
    assert!(
        second.elapsed() < Duration::from_secs(2),
        "{:?}",
        second.elapsed()
    );
    assert!(
        !status.success(),
        "an interrupted drain is not a clean exit: {status:?}"
    );
    drop(stuck);
}

/// The syscalls `systemd-analyze syscall-filter` lists for `name` (a group
/// such as `@system-service`, expanded through its subgroups, or a call).
fn syscalls_in(name: &str, seen: &mut std::collections::HashSet<String>) -> Vec<String> {
    if !name.starts_with('@') {
        return vec![name.to_string()];
    }
    if !seen.insert(name.to_string()) {
        return Vec::new();
    }
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze syscall-filter {name}"
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .flat_map(|l| syscalls_in(l, seen))
        .collect()
}

#[test]
fn systemd_units_syscall_filter_lets_stream_threads_lower_their_priority() {
    // --stream-priority idle|low calls sched_setscheduler(SCHED_IDLE) or
    // setpriority on each event-stream thread, and the room log parks on a
    // futex: the hardened unit must allow all three. (RestrictRealtime=
    // only forbids the real-time policies, which streamhub never asks for.)
    let root = env!("CARGO_MANIFEST_DIR");
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed (Debian package 'systemd')");
        return;
    }
    let unit = std::fs::read_to_string(format!("{root}/systemd/streamhub.service")).unwrap();
    let (mut allowed, mut denied) = (Vec::new(), Vec::new());
    let mut seen = std::collections::HashSet::new();
    for line in unit.lines() {
        let Some(value) = line.trim().strip_prefix("SystemCallFilter=") else {
            continue;
        };
        let (list, names) = match value.strip_prefix('~') {
            Some(rest) => (&mut denied, rest),
            None => (&mut allowed, value),
        };
        for name in names.split_whitespace() {
            seen.clear();
            list.extend(syscalls_in(name, &mut seen));
        }
    }
    assert!(!allowed.is_empty(), "the unit has an allow-list");
    for call in ["sched_setscheduler", "setpriority", "futex"] {
        assert!(allowed.iter().any(|c| c == call), "{call} is not allowed");
        assert!(!denied.iter().any(|c| c == call), "{call} is denied");
    }
}
