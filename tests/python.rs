//! Python's grpcio (from PyPI, in the venv `make test` creates) against the
//! real server: proves a client nobody here wrote works with our proto.

use std::path::Path;
use std::process::Command;

use crate::common;

#[test]
fn python_grpcio_client_runs_all_five_rpcs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make test` (or `make py-deps`) to create the venv",
        python.display()
    );
    let server = common::start();
    let out = std::env::temp_dir().join(format!("streamhub-py-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let output = Command::new(&python)
        .arg(root.join("tests/py/client.py"))
        .arg(&server.grpc_addr)
        .arg(root.join("proto"))
        .arg(&out)
        .output()
        .expect("python runs");
    let _ = std::fs::remove_dir_all(&out);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("all five RPCs OK"), "{stdout}");
}
