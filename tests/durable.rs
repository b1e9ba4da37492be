//! Durable rooms (`--data-dir`) with the real binary: kill -9 in the middle
//! of a burst, torn and corrupt records, a full disk, directories that are
//! not ours, resume after a restart.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::binary::{serve, serve_refused, serve_through, signal, wait_exit, Serve};
use crate::support::grpc::{connect, send, Code};
use crate::support::sse::{EventStream, SseEvent};
use crate::support::{unique, wait_until};

/// A data directory of its own, removed when dropped.
struct DataDir(PathBuf);

impl DataDir {
    fn new() -> DataDir {
        let dir = std::env::temp_dir().join(format!(
            "streamhub-durable-{}-{}",
            std::process::id(),
            unique()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        DataDir(dir)
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }

    /// Segment files, oldest first.
    fn segments(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A started server with its HTTP port.
struct Node {
    serve: Serve,
    http: u16,
}

fn start(dir: &DataDir, extra: &[&str]) -> Node {
    let mut args = vec!["--data-dir", dir.arg()];
    args.extend_from_slice(extra);
    let serve = serve(&args);
    let http = serve.http_port();
    Node { serve, http }
}

impl Node {
    /// SIGTERM, and the process exits 0 within 10 s.
    fn stop(mut self) {
        signal(&self.serve.child, "TERM");
        let exited = wait_exit(&mut self.serve.child, Duration::from_secs(10));
        assert!(exited.unwrap().success());
    }
}

/// `POST /messages` that reports failure instead of panicking: the
/// server may die under it. The status and the JSON answer.
fn try_post(port: u16, room: &str, content: &str) -> std::io::Result<(u16, Value)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = serde_json::json!({ "room": room, "user": "ann", "content": content }).to_string();
    write!(
        s,
        "POST /messages HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {reply:?}")))?;
    let json = reply
        .split("\r\n\r\n")
        .nth(1)
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    Ok((status, json))
}

fn post_ok(port: u16, room: &str, content: &str) -> Value {
    let (status, json) = try_post(port, room, content).unwrap();
    assert_eq!(status, 200, "{json}");
    json
}

/// Every event of `room` after `after`, replayed, up to and including
/// sequence `last`.
fn replay(port: u16, room: &str, after: u64, last: u64) -> Vec<SseEvent> {
    let mut stream = EventStream::connected(
        &port,
        &format!("/events?room={room}"),
        &[("Last-Event-ID", &after.to_string())],
    );
    let mut got = Vec::new();
    loop {
        let e = stream.event();
        if e.event == "system" {
            continue;
        }
        let seq = e.json()["seq"].as_u64().unwrap();
        got.push(e);
        if seq >= last {
            return got;
        }
    }
}

/// An acknowledged publish: (seq, id, content).
type Acked = (u64, String, String);

/// Publishes from `threads` threads to `room` until the server dies;
/// returns what was acknowledged.
fn burst_until_killed(
    node: &mut Node,
    room: &str,
    threads: usize,
    kill_after: usize,
) -> Vec<Acked> {
    let acked = Arc::new(Mutex::new(Vec::<Acked>::new()));
    let port = node.http;
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let acked = acked.clone();
            let room = room.to_string();
            std::thread::spawn(move || {
                for i in 0.. {
                    let content = format!("t{t}-{i}");
                    match try_post(port, &room, &content) {
                        Ok((200, json)) => acked.lock().unwrap().push((
                            json["seq"].as_u64().unwrap(),
                            json["message_id"].as_str().unwrap().to_string(),
                            content,
                        )),
                        _ => return,
                    }
                }
            })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(60), || acked.lock().unwrap().len()
            >= kill_after),
        "the burst got going"
    );
    // SIGKILL, with publishes in flight.
    node.serve.child.kill().unwrap();
    node.serve.child.wait().unwrap();
    for w in workers {
        w.join().unwrap();
    }
    let mut acked = acked.lock().unwrap().clone();
    acked.sort();
    acked
}

fn kill_9_mid_burst_then_restart_keeps_every_acknowledged_message(fsync: &str) {
    let dir = DataDir::new();
    let flags = ["--fsync", fsync, "--history", "100000"];
    let mut node = start(&dir, &flags);
    let acked = burst_until_killed(&mut node, "burst", 4, 400);
    let node = start(&dir, &flags);
    let last = acked.last().unwrap().0;
    let events = replay(node.http, "burst", 0, last);
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e.json()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "in order, no gap");
    for (seq, id, content) in &acked {
        let e = &events[*seq as usize - 1].json();
        assert_eq!(
            (e["id"].as_str().unwrap(), e["content"].as_str().unwrap()),
            (id.as_str(), content.as_str())
        );
    }
    // Sequences and ids go on from the stored ones.
    let next = post_ok(node.http, "burst", "after the restart");
    let stored_last = replay(node.http, "burst", last, next["seq"].as_u64().unwrap());
    assert!(next["seq"].as_u64().unwrap() > last);
    let id_number = |id: &str| id.trim_start_matches("msg_").parse::<u64>().unwrap();
    let max_acked = acked.iter().map(|a| id_number(&a.1)).max().unwrap();
    assert!(id_number(next["message_id"].as_str().unwrap()) > max_acked);
    assert_eq!(
        stored_last.last().unwrap().json()["content"],
        "after the restart"
    );
}

#[test]
fn kill_9_mid_burst_loses_no_acknowledged_message_with_fsync_always() {
    kill_9_mid_burst_then_restart_keeps_every_acknowledged_message("always");
}

/// `batch` answers once the message is written to the file: a dead
/// process loses nothing answered (only a power cut can, up to 100 ms).
#[test]
fn kill_9_mid_burst_loses_no_acknowledged_message_with_fsync_batch() {
    kill_9_mid_burst_then_restart_keeps_every_acknowledged_message("batch");
}

#[test]
fn last_event_id_resumes_exactly_after_it_across_a_restart() {
    let dir = DataDir::new();
    let node = start(&dir, &[]);
    let mut ids = vec![String::new()];
    for i in 1..=60 {
        ids.push(
            post_ok(node.http, "resume", &format!("m{i}"))["message_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    node.stop();
    let node = start(&dir, &[]);
    let events = replay(node.http, "resume", 41, 60);
    let first = events[0].json();
    assert_eq!(
        (first["seq"].as_u64(), first["id"].as_str()),
        (Some(42), Some(ids[42].as_str()))
    );
    assert_eq!(events[0].id.as_deref(), Some("42"));
    assert_eq!(events.len(), 19);
    // Not an unknown position: no notice before the replay.
    let mut stream = EventStream::connected(
        &node.http,
        "/events?room=resume",
        &[("Last-Event-ID", "41")],
    );
    assert_eq!(stream.event().id.as_deref(), Some("42"));
}

/// Byte offset just past the last non-zero byte of `path`.
fn written_end(path: &Path) -> usize {
    let bytes = std::fs::read(path).unwrap();
    bytes.iter().rposition(|&b| b != 0).unwrap() + 1
}

fn damaged_last_record_is_dropped(damage: impl Fn(&Path, usize)) {
    let dir = DataDir::new();
    let node = start(&dir, &[]);
    for i in 1..=10 {
        post_ok(node.http, "torn", &format!("m{i}"));
    }
    node.stop();
    let segment = dir
        .segments()
        .into_iter()
        .find(|s| written_end(s) > 16)
        .unwrap();
    damage(&segment, written_end(&segment));
    let node = start(&dir, &[]);
    let line = node
        .serve
        .early
        .iter()
        .find(|l| l.contains("dropped a torn or corrupt record"))
        .unwrap_or_else(|| panic!("no log line about the record: {:?}", node.serve.early));
    assert!(line.contains("9 records before it are kept"), "{line}");
    let events = replay(node.http, "torn", 0, 9);
    assert_eq!(events.len(), 9);
    // The next message takes the dropped one's place, and a restart reads
    // a clean log.
    assert_eq!(post_ok(node.http, "torn", "new")["seq"], 10);
    drop(node);
    let node = start(&dir, &[]);
    assert_eq!(replay(node.http, "torn", 9, 10)[0].json()["content"], "new");
}

#[test]
fn a_truncated_last_record_is_dropped_with_a_log_line_and_the_rest_survives() {
    damaged_last_record_is_dropped(|path, end| {
        // A crash in the middle of the last write: its last 5 bytes never
        // reached the file.
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.set_len(end as u64 - 5).unwrap();
    });
}

#[test]
fn a_corrupted_last_record_is_dropped_with_a_log_line_and_the_rest_survives() {
    damaged_last_record_is_dropped(|path, end| {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[end - 3] ^= 0x55;
        std::fs::write(path, bytes).unwrap();
    });
}

/// The exit code and stderr of a `serve` that must refuse to start.
fn refused(dir: &Path) -> (i32, String) {
    serve_refused(&[std::ffi::OsStr::new("--data-dir"), dir.as_os_str()])
}

#[test]
fn a_data_dir_of_another_version_or_with_garbage_is_refused_with_exit_code_2() {
    let dir = DataDir::new();
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(dir.0.join("notes.txt"), "mine").unwrap();
    let (code, err) = refused(&dir.0);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--data-dir")
            && err.contains("not a streamhub data directory")
            && err.contains("notes.txt"),
        "{err}"
    );

    let dir = DataDir::new();
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(dir.0.join("streamhub-store"), "streamhub store format 9\n").unwrap();
    let (code, err) = refused(&dir.0);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("format 9") && err.contains("format 1"),
        "{err}"
    );

    // Our marker, but a segment that is not ours (with one after it).
    let dir = DataDir::new();
    drop(start(&dir, &[]));
    let first = dir.segments()[0].clone();
    std::fs::write(&first, "garbage, not a segment at all").unwrap();
    let (code, err) = refused(&dir.0);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a streamhub segment"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_second_server_on_the_same_data_dir_is_refused() {
    let dir = DataDir::new();
    let _first = start(&dir, &[]);
    let (code, err) = refused(&dir.0);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("another streamhub is using this directory"),
        "{err}"
    );
}

/// RLIMIT_FSIZE limits each file, not the disk: the server first runs with
/// small segments (the current one and a spare, both under the limit),
/// then restarts with a segment size above the limit, so that once the
/// spare is full the next segment cannot be made, as on a full disk
/// (EFBIG here, ENOSPC there: the same failed fallocate).
#[test]
fn a_full_disk_gives_507_and_resource_exhausted_and_loses_nothing_stored() {
    let dir = DataDir::new();
    let small = [
        "--segment-bytes",
        "65536",
        "--max-message-bytes",
        "4096",
        "--history",
        "100000",
    ];
    drop(start(&dir, &small));
    let prlimit = Command::new("prlimit").arg("--version").output();
    assert!(
        prlimit.is_ok_and(|o| o.status.success()),
        "prlimit (util-linux) is needed"
    );
    // Started through prlimit: the limit applies to the server only.
    let serve = serve_through(
        &["prlimit", "--fsize=100000"],
        &[
            "--data-dir",
            dir.arg(),
            "--segment-bytes",
            "131072",
            "--max-message-bytes",
            "4096",
            "--history",
            "100000",
        ],
    );
    let http: u16 = serve
        .http_addr()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let content = "x".repeat(1000);
    let mut stored = Vec::new();
    let refusal = loop {
        let (status, json) = try_post(http, "full", &content).unwrap();
        if status != 200 {
            break (status, json);
        }
        stored.push(json["seq"].as_u64().unwrap());
        assert!(stored.len() < 1000, "never full");
    };
    assert_eq!(refusal.0, 507, "{}", refusal.1);
    assert!(
        refusal.1["error"].as_str().unwrap().contains("full"),
        "{}",
        refusal.1
    );
    let client = connect(&serve.grpc_addr);
    let status = send(&client, "full", "ann", &content).unwrap_err();
    assert_eq!(status.code, Code::ResourceExhausted, "{}", status.message);
    // Still serving, and refused publishes took no sequence number.
    assert_eq!(
        replay(http, "full", 0, *stored.last().unwrap()).len(),
        stored.len()
    );
    drop(serve);
    let node = start(&dir, &small);
    let last = *stored.last().unwrap();
    assert_eq!(replay(node.http, "full", 0, last).len() as u64, last);
    assert_eq!(
        post_ok(node.http, "full", "room again")["seq"].as_u64(),
        Some(last + 1)
    );
}

#[test]
fn segments_no_room_retains_are_deleted() {
    let dir = DataDir::new();
    let flags = [
        "--segment-bytes",
        "65536",
        "--max-message-bytes",
        "4096",
        "--history",
        "5",
    ];
    let node = start(&dir, &flags);
    let content = "y".repeat(1000);
    for _ in 0..400 {
        post_ok(node.http, "busy", &content);
    }
    // 400 KB went through 64 KiB segments; five messages are retained.
    assert!(
        wait_until(Duration::from_secs(10), || dir.segments().len() <= 3),
        "segments left: {:?}",
        dir.segments()
    );
    drop(node);
    let node = start(&dir, &flags);
    let events = replay(node.http, "busy", 395, 400);
    assert_eq!(events.len(), 5);
}

/// gRPC messages carry ids, not sequences: a subscriber resumes with
/// `last-message-id` metadata (or `last-event-id`, a sequence, as SSE).
#[test]
fn a_grpc_subscriber_resumes_after_a_message_id_across_a_restart() {
    use crate::support::grpc::{next, opt, resume, send_numbered, subscribe_req};
    use streamhub::grpc::h2::client::ChatClient;
    let dir = DataDir::new();
    let node = start(&dir, &[]);
    let client = connect(&node.serve.grpc_addr);
    let ids = send_numbered(&client, "g", 10);
    // Another room's message between: ids are shared by all rooms.
    send(&client, "other", "ann", "elsewhere").unwrap();
    drop(client);
    node.stop();
    let node = start(&dir, &[]);
    let addr = &node.serve.grpc_addr;
    let (_c, mut stream) = resume(addr, "g", "last-message-id", &ids[5]);
    for want in &ids[6..] {
        let got = next(&mut stream).unwrap();
        assert_eq!(&got.id, want);
    }
    let (_c, mut stream) = resume(addr, "g", "last-event-id", "8");
    assert_eq!(next(&mut stream).unwrap().id, ids[8]);
    // A malformed position is refused, naming the key.
    let channel = crate::support::grpc::channel(&node.serve.grpc_addr);
    let client = ChatClient::new(channel).with_options(opt().metadata("last-message-id", "41"));
    let mut stream = client.subscribe_messages(&subscribe_req("g", "")).unwrap();
    let status = next(&mut stream).unwrap_err();
    assert_eq!(status.code, Code::InvalidArgument);
    assert!(
        status.message.contains("last-message-id"),
        "{}",
        status.message
    );
}

/// `never` writes behind, but a clean stop (SIGTERM) writes and syncs
/// everything accepted before the process exits.
#[test]
fn fsync_never_keeps_everything_across_a_clean_stop() {
    let dir = DataDir::new();
    let flags = ["--fsync", "never"];
    let node = start(&dir, &flags);
    for i in 1..=200 {
        post_ok(node.http, "never", &format!("m{i}"));
    }
    node.stop();
    let node = start(&dir, &flags);
    let events = replay(node.http, "never", 0, 200);
    assert_eq!(events.len(), 200);
    assert_eq!(events[199].json()["content"], "m200");
}
