//! TLS on the HTTP port and the SIGHUP reload of the certificate both ports
//! serve: the real binary, a certificate made with `openssl`, and real
//! clients (`curl --cacert`, `openssl s_client`, raw TCP for the wrong
//! protocol). Every wait is bounded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::support::binary::{lines_of, serve, signal, Serve};
use crate::support::{python, root};
use crate::tls::{certificate, make_certificate, tls_flags};

/// `curl` over TLS, trusting `ca`, with a deadline.
fn curl(ca: &Path) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert"]).arg(ca);
    cmd
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "curl failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `curl -N` on an event stream, its output as lines as they come.
struct CurlStream {
    child: Child,
    lines: Receiver<String>,
}

impl CurlStream {
    fn open(ca: &Path, url: &str) -> CurlStream {
        let mut child = curl(ca)
            .args(["-N", "--max-time", "60", url])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = lines_of(child.stdout.take().unwrap());
        let stream = CurlStream { child, lines };
        stream.wait_for(": connected");
        stream
    }

    /// Waits up to 10 s for a line containing `text`.
    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line with {text:?} on the event stream: {e}"),
            }
        }
    }
}

impl Drop for CurlStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes over TLS with curl (the body on its stdin: it may be larger
/// than an argument may be); returns the response body.
fn publish(ca: &Path, http: &str, room: &str, content: &str) -> String {
    let body = format!(r#"{{"room":"{room}","user":"tls","content":"{content}"}}"#);
    let mut child = curl(ca)
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
        ])
        .arg(format!("https://{http}/messages"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    stdout(&child.wait_with_output().unwrap())
}

/// Waits up to 10 s for a log line of `server` containing `text`.
fn log_line(server: &Serve, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.logs.recv_timeout(left) {
            Ok(line) if line.contains(text) => return line,
            Ok(_) => {}
            Err(e) => panic!("no log line with {text:?}: {e}"),
        }
    }
}

/// The SHA-256 fingerprint of the certificate `addr` presents in a new
/// handshake (with ALPN `alpn`), as `openssl x509 -fingerprint` prints it.
fn served_fingerprint(addr: &str, alpn: &str) -> String {
    let shown = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect", addr])
        .args(["-servername", "localhost", "-alpn", alpn])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    x509.stdin.take().unwrap().write_all(&shown.stdout).unwrap();
    let out = x509.wait_with_output().unwrap();
    fingerprint_of(&String::from_utf8_lossy(&out.stdout))
}

/// The fingerprint of a certificate file.
fn file_fingerprint(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    fingerprint_of(&String::from_utf8_lossy(&out.stdout))
}

/// `sha256 Fingerprint=AB:CD:...` -> `AB:CD:...`
fn fingerprint_of(printed: &str) -> String {
    let fp = printed.trim().rsplit('=').next().unwrap_or("").to_string();
    assert_eq!(fp.len(), 95, "a SHA-256 fingerprint: {printed:?}");
    fp
}

#[test]
fn curl_gets_health_and_metrics_and_publishes_over_tls_1_2_and_1_3() {
    let (dir, cert, key) = certificate();
    let server = serve(&tls_flags(&cert, &key));
    let http = server.http_addr();
    for version in [
        ["--tlsv1.2", "--tls-max", "1.2"],
        ["--tlsv1.3", "--tls-max", "1.3"],
    ] {
        let out = curl(&cert)
            .args(version)
            .args(["-w", "\n%{http_code} %{http_version}"])
            .arg(format!("https://{http}/healthz"))
            .output()
            .unwrap();
        let text = stdout(&out);
        assert!(text.contains(r#""status":"ok""#), "{text}");
        assert!(text.ends_with("\n200 1.1"), "ALPN http/1.1: {text}");
    }
    // The name in the certificate works as well as the address.
    let port = http.rsplit(':').next().unwrap();
    let text = stdout(
        &curl(&cert)
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .arg(format!("https://localhost:{port}/metrics"))
            .output()
            .unwrap(),
    );
    assert!(text.contains("streamhub_"), "{text}");
    let published = publish(&cert, &http, "tls-http", "over https");
    let reply: serde_json::Value = serde_json::from_str(&published).unwrap();
    assert_eq!(reply["seq"], 1, "{published}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_event_stream_over_tls_receives_what_is_published_meanwhile() {
    let (dir, cert, key) = certificate();
    let server = serve(&tls_flags(&cert, &key));
    let http = server.http_addr();
    let events = CurlStream::open(&cert, &format!("https://{http}/events?room=tls-sse"));
    for i in 0..3 {
        publish(&cert, &http, "tls-sse", &format!("secret {i}"));
        events.wait_for(&format!("secret {i}"));
    }
    // A large message crosses several TLS records.
    let big = "x".repeat(200_000);
    publish(&cert, &http, "tls-sse", &big);
    let line = events.wait_for("xxxxxxxx");
    assert!(
        line.contains(&big),
        "the whole message, {} bytes",
        line.len()
    );
    // The stream thread reads the client's records itself: it notices the
    // client leaving within its liveness check (3 s).
    drop(events);
    let closed = log_line(&server, "SSE closed: room=tls-sse");
    assert!(closed.contains("reason=client"), "{closed}");
    // On SIGTERM a stream gets its goodbye through TLS.
    let events = CurlStream::open(&cert, &format!("https://{http}/events?room=tls-sse"));
    signal(&server.child, "TERM");
    events.wait_for("server shutting down");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn pipelined_requests_over_tls_are_all_answered_and_an_idle_session_ends_with_close_notify() {
    let (dir, cert, key) = certificate();
    let mut flags = tls_flags(&cert, &key).to_vec();
    flags.extend(["--http-idle-timeout-secs", "1"]);
    let server = serve(&flags);
    let http = server.http_addr();
    let out = Command::new("timeout")
        .arg("30")
        .arg(python())
        .arg(root().join("tests/py/tls_pipeline.py"))
        .arg(&http)
        .arg(&cert)
        .arg("1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(r#""ok": true"#),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn plain_http_on_the_tls_port_gets_a_clear_400_and_others_are_served() {
    let (dir, cert, key) = certificate();
    let server = serve(&tls_flags(&cert, &key));
    let http = server.http_addr();
    let started = Instant::now();
    let mut plain = TcpStream::connect(&http).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let read = plain.read_to_end(&mut got);
    assert!(read.is_ok(), "closed, not timed out: {read:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("speaks TLS"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(2), "at once");
    let out = curl(&cert)
        .arg(format!("https://{http}/healthz"))
        .output()
        .unwrap();
    assert!(stdout(&out).contains("ok"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_tls_client_on_a_plain_port_fails_at_once_and_others_are_served() {
    let (dir, cert, _key) = certificate();
    let server = serve(&[]);
    let http = server.http_addr();
    let started = Instant::now();
    let out = curl(&cert)
        .arg(format!("https://{http}/healthz"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    // 35: the TLS handshake failed (curl's CURLE_SSL_CONNECT_ERROR).
    assert_eq!(
        out.status.code(),
        Some(35),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "not after the head deadline: {:?}",
        started.elapsed()
    );
    let ok = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://{http}/healthz"))
        .output()
        .unwrap();
    assert!(stdout(&ok).contains("ok"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn clients_that_never_send_a_client_hello_are_dropped_at_the_head_deadline() {
    let (dir, cert, key) = certificate();
    let mut flags = tls_flags(&cert, &key).to_vec();
    flags.extend(["--http-header-timeout-secs", "1"]);
    let server = serve(&flags);
    let http = server.http_addr();
    let silent: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(&http).unwrap())
        .collect();
    // They cost the accept thread nothing: a TLS client is served at once.
    let started = Instant::now();
    let out = curl(&cert)
        .arg(format!("https://{http}/healthz"))
        .output()
        .unwrap();
    assert!(stdout(&out).contains("ok"));
    assert!(started.elapsed() < Duration::from_secs(1));
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        let read = s.read(&mut buf);
        assert!(
            matches!(read, Ok(0))
                || read.is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
            "closed by the server, nothing said"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sighup_serves_a_renewed_certificate_to_new_connections_and_keeps_open_streams() {
    let (dir, cert, key) = certificate();
    let server = serve(&tls_flags(&cert, &key));
    let http = server.http_addr();
    let old = file_fingerprint(&cert);
    assert_eq!(served_fingerprint(&http, "http/1.1"), old);
    assert_eq!(served_fingerprint(&server.grpc_addr, "h2"), old);
    // A stream opened before the renewal, trusting the old certificate.
    let old_ca = dir.join("old.pem");
    std::fs::copy(&cert, &old_ca).unwrap();
    let events = CurlStream::open(&old_ca, &format!("https://{http}/events?room=renewal"));

    make_certificate(&cert, &key);
    let new = file_fingerprint(&cert);
    let new_ca = dir.join("new.pem");
    std::fs::copy(&cert, &new_ca).unwrap();
    assert_ne!(new, old);
    signal(&server.child, "HUP");
    let logged = log_line(&server, "TLS certificate reloaded");
    assert!(logged.contains(&new), "{logged}");
    // Both ports, new connections: the new certificate.
    assert_eq!(served_fingerprint(&http, "http/1.1"), new);
    assert_eq!(served_fingerprint(&server.grpc_addr, "h2"), new);
    // The old stream goes on, with the keys it agreed on.
    publish(&cert, &http, "renewal", "after the renewal");
    events.wait_for("after the renewal");

    // A renewal caught half-written: the certificate in use stays.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    signal(&server.child, "HUP");
    let logged = log_line(&server, "TLS certificate not reloaded");
    assert!(
        logged.contains(&new),
        "names the certificate kept: {logged}"
    );
    assert!(logged.contains("--tls-cert"), "names the file: {logged}");
    assert_eq!(served_fingerprint(&http, "http/1.1"), new);
    publish(&new_ca, &http, "renewal", "still served");
    events.wait_for("still served");
    let _ = std::fs::remove_dir_all(dir);
}
