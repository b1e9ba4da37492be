//! Python's grpcio (from PyPI, in the venv `make test` creates) against the
//! real server: proves a client nobody here wrote works with our proto.

use std::process::Command;

use crate::support::{self, binary::lines_of, python, root};

#[test]
fn python_grpcio_client_runs_all_five_rpcs() {
    let root = root();
    let python = python();
    let server = support::start();
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

#[test]
fn python_health_reflection_and_shutdown_drain() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let root = root();
    let python = python();
    let support::Server { app, grpc_addr, .. } =
        support::start_with(|c| c.shutdown_grace = Duration::from_secs(5));
    let out = std::env::temp_dir().join(format!("streamhub-py2-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let mut child = Command::new(&python)
        .arg(root.join("tests/py/service.py"))
        .arg(&grpc_addr)
        .arg(root.join("proto"))
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    let lines = lines_of(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.iter().any(|l: &String| l == "READY") {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                let err = child.wait_with_output().unwrap();
                panic!(
                    "no READY; stdout {seen:?}; stderr {}",
                    String::from_utf8_lossy(&err.stderr)
                );
            }
        }
    }
    for i in 0..50 {
        app.hub()
            .publish(streamhub::hub::Draft::chat("bye", "p", i.to_string()))
            .unwrap();
    }
    let stopped = Instant::now();
    app.shutdown();
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopped.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "python did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    seen.extend(lines.try_iter());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    assert!(status.success(), "stdout {seen:?}\nstderr {stderr}");
    assert!(seen.iter().any(|l| l == "reflection OK"), "{seen:?}");
    assert!(
        seen.iter().any(|l| l == "health and shutdown OK"),
        "{seen:?}"
    );
}
