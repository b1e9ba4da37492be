//! HTTP/2 floods on the gRPC port, from a raw-frame Python client
//! (`tests/py/flood.py`) against the real binary, while a second client keeps
//! calling SendMessage.
//!
//! Rapid reset (CVE-2023-44487): on grpcio 0.13 every reset stream queued
//! about 17 KiB of work in the C core (3.1 GiB for 200,000 streams, held
//! after the client stopped; BENCHMARKS.md, "Floods"). streamhub's own
//! HTTP/2 layer draws each reset from a budget and ends the connection with
//! GOAWAY ENHANCE_YOUR_CALM when it runs out; here, other clients keep being
//! answered and the server lives on. `conformance.rs` holds the full-size
//! floods (600,000 resets and the rest) to the memory bound.

use std::process::Command;

use serde_json::Value;

use crate::support::binary::{serve, BIN};
use crate::support::proc::resident_kib;
use crate::support::{python, root};

#[test]
fn rapid_reset_flood_leaves_other_clients_answered_and_the_server_alive() {
    let root = root();
    let python = python();
    let server = serve(&[]);
    let pid = server.child.id();
    let before = resident_kib(pid);
    let out = std::env::temp_dir().join(format!("streamhub-flood-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    // 20,000 streams: enough to show the growth, small enough that the
    // core's backlog (about 8 s of one core) does not slow the next test.
    let output = Command::new("timeout")
        .arg("120")
        .arg(&python)
        .arg(root.join("tests/py/flood.py"))
        .arg(&server.grpc_addr)
        .arg(root.join("proto"))
        .arg(&out)
        .args(["rapid-reset", "20000"])
        .output()
        .expect("python runs");
    let _ = std::fs::remove_dir_all(&out);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    let after = resident_kib(pid);
    eprintln!("rapid reset: {report}; resident {before} KiB -> {after} KiB");
    // The offender is told to calm down and disconnected long before its
    // 20,000 streams are out (the HTTP/2 layer's reset budget).
    assert_eq!(report["goaway"], 11, "{report}");
    assert_eq!(report["offender_closed"], true, "{report}");
    assert!(report["streams_sent"].as_u64().unwrap() < 20000, "{report}");
    let victim = &report["victim"];
    assert!(victim["ok"].as_u64().unwrap() >= 10, "{report}");
    assert_eq!(victim["failed"], 0, "{report}");
    assert!(victim["p99_ms"].as_f64().unwrap() < 200.0, "{report}");
    // Still alive and serving once the flood is over.
    let sent = Command::new(BIN)
        .args(["send", "--server", &server.grpc_addr, "--room", "after"])
        .args(["--user", "u", "--timeout-secs", "20", "still", "here"])
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
}
