//! TLS on the gRPC port: a certificate made here with `openssl`, the real
//! binary, Python's grpcio with `ssl_channel_credentials`, and clients
//! that speak the wrong thing. The HTTP port's TLS and the SIGHUP reload
//! are in `tls_http`, with the helpers here.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::binary::serve;
use crate::support::{python, root, unique};

/// A self-signed certificate for `localhost` and 127.0.0.1, and its key
/// (EC P-256, PKCS#8), in a directory of their own.
pub fn certificate() -> (PathBuf, PathBuf, PathBuf) {
    let dir =
        std::env::temp_dir().join(format!("streamhub-tls-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    make_certificate(&cert, &key);
    (dir, cert, key)
}

/// Writes a new self-signed certificate and key to `cert` and `key`
/// (replacing what is there: a renewal).
pub fn make_certificate(cert: &Path, key: &Path) {
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs (Debian's openssl package)");
    assert!(status.success());
}

pub fn tls_flags<'a>(cert: &'a Path, key: &'a Path) -> [&'a str; 4] {
    [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]
}

/// Runs Python's grpcio over TLS against `addr` (tests/py/tls_client.py,
/// its stubs made in `dir`, `extra` its further arguments: a token and
/// the user it names) and checks that it succeeded; what it printed.
pub(crate) fn python_tls_client(addr: &str, dir: &Path, cert: &Path, extra: &[&str]) -> String {
    let out = dir.join("stubs");
    std::fs::create_dir_all(&out).unwrap();
    let output = Command::new("timeout")
        .arg("60")
        .arg(python())
        .arg(root().join("tests/py/tls_client.py"))
        .arg(addr)
        .arg(cert)
        .arg(root().join("proto"))
        .arg(&out)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Python's grpcio, over TLS, calls SendMessage and SubscribeMessages and
/// health at `addr` (tests/py/tls_client.py); cleans `dir` up.
fn tls_client_is_served(addr: &str, dir: &Path, cert: &Path) {
    let printed = python_tls_client(addr, dir, cert, &[]);
    let _ = std::fs::remove_dir_all(dir);
    assert!(printed.contains("\"ok\": true"));
}

#[test]
fn python_grpcio_calls_over_tls_with_alpn_h2() {
    let (dir, cert, key) = certificate();
    let server = serve(&tls_flags(&cert, &key));
    tls_client_is_served(&server.grpc_addr, &dir, &cert);
}

#[test]
fn a_plain_client_on_the_tls_port_is_closed_and_others_are_served() {
    let (dir, cert, key) = certificate();
    let server = serve(&tls_flags(&cert, &key));
    // h2c with prior knowledge, to a port that speaks TLS: rustls refuses
    // the first bytes and the connection ends at once.
    let mut plain = TcpStream::connect(&server.grpc_addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let read = plain.read_to_end(&mut got);
    assert!(read.is_ok(), "closed, not timed out: {read:?}");
    // Whatever came back is a TLS alert record (content type 21), not HTTP/2.
    assert!(got.is_empty() || got[0] == 21, "{got:?}");
    // A client that connects and never says anything is dropped after the
    // handshake deadline; meanwhile a TLS client is served.
    let _silent = TcpStream::connect(&server.grpc_addr).unwrap();
    tls_client_is_served(&server.grpc_addr, &dir, &cert);
}

#[test]
fn a_missing_or_unpaired_certificate_is_a_clear_startup_error() {
    // `serve` with `tls`: its exit code and what it said.
    let serve_with = |tls: &[&str]| {
        let (code, err) = crate::support::binary::serve_refused(tls);
        (Some(code), err)
    };
    let (code, err) = serve_with(&[
        "--tls-cert",
        "/nonexistent/cert.pem",
        "--tls-key",
        "/nonexistent/key.pem",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--tls-cert /nonexistent/cert.pem"), "{err}");
    let (code, err) = serve_with(&["--tls-cert", "/tmp/x.pem"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("go together"), "{err}");
}
