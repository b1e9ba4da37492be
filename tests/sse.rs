//! The HTTP front door over raw sockets: Server-Sent Events parsed by the
//! WHATWG rules, `POST /messages`, metrics, every error status, and hostile
//! clients. Every socket has read and write timeouts; nothing waits on a
//! sleep where a signal exists.

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use streamhub::hub::{CloseReason, Draft};
use streamhub::proto::chat;

use crate::support::browser::{chromium, next_report, Browser, PageServer};
use crate::support::grpc::{next, send, subscribe};
use crate::support::http::{
    assert_healthy, connect, exchange, get, post, post_raw, read_head, read_reply, request,
    IO_TIMEOUT,
};
use crate::support::proc::{resident_bytes, threads};
use crate::support::sse::{probe_until, EventStream, Item};
use crate::support::{self, wait_until, Server};

/// Publishes one message straight to the hub; returns how long it took.
fn timed_publish(server: &Server, room: &str, content: &str) -> Duration {
    let started = Instant::now();
    server
        .app
        .hub()
        .publish(Draft::chat(room, "p", content))
        .unwrap();
    started.elapsed()
}

/// A fixed pseudo-random sequence (xorshift64).
fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

#[test]
fn events_stream_has_sse_headers_connected_retry_then_live_events() {
    let server = support::start();
    let mut stream = EventStream::open(&server, "/events?room=r1", &[]);
    let head = &stream.head;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_eq!(head.header("cache-control"), Some("no-cache"));
    assert_eq!(head.header("x-accel-buffering"), Some("no"));
    assert_eq!(head.header("content-length"), None);
    assert_eq!(stream.item().unwrap(), Item::Comment("connected".into()));
    assert_eq!(stream.item().unwrap(), Item::Retry(3000));
    let sent = post(&server, "r1", "ann", "hello");
    let event = stream.event();
    assert_eq!(event.id.as_deref(), Some("1"));
    assert_eq!(event.event, "chat");
    let data = event.json();
    assert_eq!(data["id"], sent["message_id"]);
    assert_eq!(data["seq"], 1);
    assert_eq!(sent["seq"], 1);
    assert_eq!(data["user"], "ann");
    assert_eq!(data["content"], "hello");
    assert_eq!(data["room"], "r1");
    assert_eq!(data["type"], "chat");
    assert_eq!(data["timestamp"], sent["timestamp"]);
    let ts = data["timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), "2024-01-01T00:00:00.000Z".len(), "{ts}");
    assert!(
        ts.starts_with("20") && ts.ends_with('Z') && &ts[10..11] == "T",
        "{ts}"
    );
    let second = post(&server, "r1", "bob", "again");
    let event = stream.event();
    assert_eq!(event.id.as_deref(), Some("2"));
    assert_eq!(event.json()["id"], second["message_id"]);
}

#[test]
fn no_room_means_the_default_room() {
    let server = support::start();
    let mut stream = EventStream::connected(&server, "/events", &[]);
    server
        .app
        .hub()
        .publish(Draft::chat("", "u", "to default"))
        .unwrap();
    assert_eq!(stream.event().json()["room"], "default");
}

#[test]
fn keep_alive_comment_arrives_while_idle() {
    let server = support::start_with(|c| c.http.sse_keepalive = Duration::from_secs(1));
    let mut stream = EventStream::connected(&server, "/events?room=quiet", &[]);
    let started = Instant::now();
    assert_eq!(stream.item().unwrap(), Item::Comment("keep-alive".into()));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(stream.item().unwrap(), Item::Comment("keep-alive".into()));
}

#[test]
fn multi_line_and_hostile_content_arrives_as_one_intact_event() {
    let server = support::start();
    let mut stream = EventStream::connected(&server, "/events?room=hostile", &[]);
    let contents = [
        "line one\nline two\r\nline three\rline four",
        "\n\nid: 999\nevent: system\ndata: injected\n\n",
        ": not a comment\r\n\r\nretry: 1\n",
        "tab\tnul\u{0}bell\u{7} unicode \u{2028}\u{2029} emoji 🎉",
    ];
    for c in contents {
        post(&server, "hostile", "eve\nil", c);
    }
    for (i, c) in contents.iter().enumerate() {
        let event = stream.event();
        assert_eq!(event.id, Some((i + 1).to_string()));
        assert_eq!(event.event, "chat");
        assert!(!event.data.contains('\n'), "data must be one line");
        let data = event.json();
        assert_eq!(data["content"], *c);
        assert_eq!(data["user"], "eve\nil");
    }
    // Nothing extra was injected between them.
    server
        .app
        .hub()
        .publish(Draft::chat("hostile", "u", "marker"))
        .unwrap();
    assert_eq!(stream.event().json()["content"], "marker");
}

#[test]
fn replay_by_last_event_id_header_continues_live_without_gap_or_duplicate() {
    let server = support::start();
    for i in 1..=5 {
        post(&server, "replay", "u", &format!("m{i}"));
    }
    let mut stream =
        EventStream::connected(&server, "/events?room=replay", &[("Last-Event-ID", "2")]);
    for i in 3..=5 {
        let event = stream.event();
        assert_eq!(event.id, Some(i.to_string()));
        assert_eq!(event.json()["content"], format!("m{i}"));
    }
    post(&server, "replay", "u", "m6");
    assert_eq!(stream.event().id.as_deref(), Some("6"));
}

#[test]
fn replay_by_query_and_header_wins_over_query() {
    let server = support::start();
    for i in 1..=5 {
        post(&server, "q", "u", &format!("m{i}"));
    }
    let mut by_query = EventStream::connected(&server, "/events?room=q&last_event_id=3", &[]);
    assert_eq!(by_query.event().id.as_deref(), Some("4"));
    assert_eq!(by_query.event().id.as_deref(), Some("5"));
    let mut both = EventStream::connected(
        &server,
        "/events?room=q&last_event_id=1",
        &[("Last-Event-ID", "4")],
    );
    assert_eq!(both.event().id.as_deref(), Some("5"));
}

#[test]
fn missed_messages_notice_comes_first_then_what_is_retained() {
    let server = support::start_with(|c| c.hub.history = 3);
    for i in 1..=10 {
        post(&server, "gone", "u", &format!("m{i}"));
    }
    let mut stream =
        EventStream::connected(&server, "/events?room=gone", &[("Last-Event-ID", "2")]);
    let notice = stream.event();
    assert_eq!(notice.event, "system");
    assert_eq!(
        notice.id, None,
        "a notice must not move the resume position"
    );
    let data = notice.json();
    assert_eq!(data["missed"], 5, "3..=7 are no longer retained");
    assert!(
        data["content"]
            .as_str()
            .unwrap()
            .contains("5 messages were missed"),
        "{data}"
    );
    let ids: Vec<_> = (0..3).map(|_| stream.event().id.unwrap()).collect();
    assert_eq!(ids, ["8", "9", "10"]);

    // An id from before a restart (ahead of the room): said so, then
    // everything retained.
    let mut stream =
        EventStream::connected(&server, "/events?room=gone", &[("Last-Event-ID", "500")]);
    let notice = stream.event();
    assert_eq!(notice.event, "system");
    let data = notice.json();
    assert_eq!(data["missed"], 7);
    assert!(
        data["content"].as_str().unwrap().contains("restarted"),
        "{data}"
    );
    assert_eq!(stream.event().id.as_deref(), Some("8"));
}

#[test]
fn type_filter_passes_only_the_listed_types() {
    let server = support::start();
    let mut chat_only = EventStream::connected(&server, "/events?room=f&types=chat", &[]);
    let mut joins = EventStream::connected(&server, "/events?room=f&types=join,leave", &[]);
    let mut bob = EventStream::connected(&server, "/events?room=f&user=bob", &[]);
    // The JOIN is published once bob's stream is open: wait for it.
    assert_eq!(bob.event().event, "join");
    post(&server, "f", "ann", "only chat");
    let event = chat_only.event();
    assert_eq!(
        (event.event.as_str(), event.id.as_deref()),
        ("chat", Some("2"))
    );
    let event = joins.event();
    assert_eq!(event.event, "join");
    assert_eq!(event.json()["user"], "bob");
    server
        .app
        .hub()
        .publish(Draft::chat("f", "u", "after"))
        .unwrap();
    assert_eq!(chat_only.event().json()["content"], "after");
}

#[test]
fn user_parameter_announces_join_on_open_and_leave_on_end() {
    let server = support::start_with(|c| c.http.sse_keepalive = Duration::from_secs(1));
    let mut observer = EventStream::connected(&server, "/events?room=jl", &[]);
    let mut bob = EventStream::connected(&server, "/events?room=jl&user=bob", &[]);
    let join = observer.event();
    assert_eq!(join.event, "join");
    let data = join.json();
    assert_eq!(
        (data["user"].as_str(), data["type"].as_str()),
        (Some("bob"), Some("join"))
    );
    assert_eq!(bob.event().event, "join", "bob sees his own join");
    bob.socket().shutdown(Shutdown::Both).unwrap();
    drop(bob);
    // The server notices the closed socket at its next keep-alive.
    let leave = observer.event();
    assert_eq!(leave.event, "leave");
    assert_eq!(leave.json()["user"], "bob");
    assert!(wait_until(Duration::from_secs(5), || {
        server.app.hub().stats().closed(CloseReason::ClientClosed) >= 1
    }));
}

#[test]
fn grpc_send_message_arrives_on_sse() {
    let server = support::start();
    let mut stream = EventStream::connected(&server, "/events?room=x1", &[]);
    let client = server.client();
    let resp = send(&client, "x1", "grpc-user", "from gRPC").unwrap();
    let event = stream.event();
    let data = event.json();
    assert_eq!(data["id"].as_str(), Some(resp.message_id.as_str()));
    assert_eq!(data["content"], "from gRPC");
    assert_eq!(data["user"], "grpc-user");
}

#[test]
fn post_messages_arrives_on_grpc_subscribe_messages() {
    let server = support::start();
    let client = server.client();
    let mut grpc_stream = subscribe(&client, "x2", "");
    let sent = post(&server, "x2", "http-user", "from HTTP");
    let m = next(&mut grpc_stream).unwrap();
    assert_eq!(m.id, sent["message_id"].as_str().unwrap());
    assert_eq!(
        (m.user.as_str(), m.content.as_str()),
        ("http-user", "from HTTP")
    );
    assert_eq!(m.type_.enum_value_or_default(), chat::MessageType::CHAT);
}

#[test]
fn post_messages_validates_like_send_message() {
    let server = support::start_with(|c| {
        c.http.max_body_bytes = 1024;
        c.hub.max_content_bytes = 1024;
    });
    let cases: &[(&[u8], u16, &str)] = &[
        (b"{not json", 400, "not valid JSON"),
        (b"[]", 400, "JSON object"),
        (br#"{"room":"r","user":"u"}"#, 400, "content"),
        (br#"{"room":"r","content":"x"}"#, 400, "user"),
        (br#"{"user":"u","content":"x"}"#, 400, "room"),
        (
            br#"{"room":"r","user":"","content":"x"}"#,
            400,
            "user is required",
        ),
        (
            br#"{"room":"bad room","user":"u","content":"x"}"#,
            400,
            "room",
        ),
        (
            br#"{"room":"r","user":"u","content":""}"#,
            400,
            "content is required",
        ),
    ];
    for (body, status, needle) in cases {
        let reply = post_raw(&server, body);
        assert_eq!(reply.status, *status, "{}", String::from_utf8_lossy(body));
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let error = reply.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(needle), "{error} should mention {needle}");
    }
    // A body over the limit: refused from its Content-Length.
    let big = serde_json::json!({ "room": "r", "user": "u", "content": "x".repeat(2000) });
    let reply = post_raw(&server, big.to_string().as_bytes());
    assert_eq!(reply.status, 413);
    assert!(reply.json()["error"].as_str().unwrap().contains("1024"));
    assert_healthy(&server);
}

#[test]
fn a_small_event_arrives_within_100_ms() {
    let server = support::start();
    let mut stream = EventStream::connected(&server, "/events?room=fast", &[]);
    // Warm up the path once.
    server
        .app
        .hub()
        .publish(Draft::chat("fast", "u", "warm"))
        .unwrap();
    stream.event();
    let mut took = Vec::new();
    for i in 0..5 {
        let started = Instant::now();
        server
            .app
            .hub()
            .publish(Draft::chat("fast", "u", i.to_string()))
            .unwrap();
        let event = stream.event();
        took.push(started.elapsed());
        assert_eq!(event.json()["content"], i.to_string());
    }
    // The median: buffering would delay every event; one unlucky
    // descheduling on a busy test machine is not what this is about.
    took.sort();
    assert!(took[2] < Duration::from_millis(100), "{took:?}");
}

#[test]
fn a_never_reading_client_is_dropped_while_a_reader_gets_all_20000() {
    const TOTAL: usize = 20_000;
    const BATCH: usize = 250;
    let server = support::start_with(|c| c.http.write_timeout = Duration::from_secs(2));
    let mut stalled = EventStream::connected(&server, "/events?room=flood", &[]);
    let reader = EventStream::connected(&server, "/events?room=flood", &[]);
    let (progress_tx, progress) = crossbeam_channel::unbounded::<usize>();
    let reading = std::thread::spawn(move || {
        let mut reader = reader;
        for n in 1..=TOTAL {
            let event = reader.event();
            assert_eq!(event.id, Some(n.to_string()), "in order, nothing missing");
            if n % BATCH == 0 {
                progress_tx.send(n).unwrap();
            }
        }
    });
    // 2 KiB per message: 40 MB in all, far more than the stalled client's
    // socket buffers hold.
    let content = "x".repeat(2048);
    let mut slowest = Duration::ZERO;
    for batch in 0..TOTAL / BATCH {
        for _ in 0..BATCH {
            slowest = slowest.max(timed_publish(&server, "flood", &content));
        }
        // Pace the publisher to the reader (the hub drops a subscriber
        // whose queue fills, and this one must not be dropped).
        let done = progress.recv_timeout(IO_TIMEOUT).expect("reader keeps up");
        assert_eq!(done, (batch + 1) * BATCH);
    }
    reading.join().unwrap();
    // Blocked on the stalled client, a publish would take the whole write
    // timeout; the margin below it is for a busy test machine.
    assert!(
        slowest < Duration::from_secs(1),
        "a publish took {slowest:?}"
    );
    assert_eq!(
        server.app.hub().stats().closed(CloseReason::SlowConsumer),
        1
    );
    // The stalled client's stream ends once it reads what was buffered.
    let got = stalled.until_closed();
    assert!(got.len() < TOTAL, "the stalled client was cut off");
    let ids: Vec<u64> = got
        .iter()
        .map(|e| e.id.as_ref().unwrap().parse().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] + 1 == w[1]),
        "what it got is in order"
    );
    assert_healthy(&server);
}

#[test]
fn sse_cap_answers_503_with_retry_after_and_spares_open_streams() {
    let server = support::start_with(|c| c.http.max_sse_clients = 2);
    let mut a = EventStream::connected(&server, "/events?room=cap", &[]);
    let mut b = EventStream::connected(&server, "/events?room=cap", &[]);
    let refused = get(&server, "/events?room=cap");
    assert_eq!(refused.status, 503);
    assert!(refused.header("retry-after").is_some());
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("limit 2"));
    server
        .app
        .hub()
        .publish(Draft::chat("cap", "u", "still here"))
        .unwrap();
    assert_eq!(a.event().json()["content"], "still here");
    assert_eq!(b.event().json()["content"], "still here");
    drop(a);
    drop(b);
    // Slots come back when streams end (noticed at the next write).
    assert!(probe_until(&server, "cap", IO_TIMEOUT, |open| open == 0));
    EventStream::connected(&server, "/events?room=cap", &[]);
}

#[test]
fn connection_cap_answers_503_with_retry_after() {
    let server = support::start_with(|c| c.http.max_connections = 3);
    let held: Vec<TcpStream> = (0..3).map(|_| connect(&server)).collect();
    let http = server.app.http().unwrap();
    assert!(wait_until(IO_TIMEOUT, || http.open_connections() == 3));
    let refused = get(&server, "/healthz");
    assert_eq!(refused.status, 503);
    assert!(refused.header("retry-after").is_some());
    drop(held);
    assert!(wait_until(IO_TIMEOUT, || http.open_connections() == 0));
    assert_healthy(&server);
}

#[test]
fn every_error_status() {
    let server = support::start_with(|c| {
        c.http.header_timeout = Duration::from_secs(1);
        c.http.max_body_bytes = 100;
    });
    // (request, status); the connection layer's refusals close the
    // connection, a route's answers keep it.
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"GET /nope HTTP/1.1\r\n\r\n".to_vec(), 404),
        (b"DELETE /events HTTP/1.1\r\n\r\n".to_vec(), 405),
        (b"GET /messages HTTP/1.1\r\n\r\n".to_vec(), 405),
        (b"BLAH\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n".to_vec(), 400),
        (b"GET /events?room=%zz HTTP/1.1\r\n\r\n".to_vec(), 400),
        (b"GET /events?types=nope HTTP/1.1\r\n\r\n".to_vec(), 400),
        (
            b"GET /events?last_event_id=x HTTP/1.1\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"POST /messages HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"POST /messages HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            411,
        ),
        (
            b"POST /messages HTTP/1.1\r\nContent-Length: 101\r\n\r\n".to_vec(),
            413,
        ),
        (
            b"POST /messages HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n".to_vec(),
            413,
        ),
        (
            format!("GET / HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(65)).into_bytes(),
            431,
        ),
        (
            format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "b".repeat(17 * 1024)).into_bytes(),
            431,
        ),
        // An unfinished head: 408 after --http-header-timeout-secs.
        (b"GET /healthz HTTP/1.1\r\nHost: t\r\n".to_vec(), 408),
        // A body that never comes.
        (
            b"POST /messages HTTP/1.1\r\nContent-Length: 50\r\n\r\n{".to_vec(),
            408,
        ),
    ];
    for (raw, status) in cases {
        let reply = exchange(&server, &raw);
        assert_eq!(
            reply.status,
            status,
            "{:?} -> {}",
            String::from_utf8_lossy(&raw[..raw.len().min(60)]),
            reply.text()
        );
        let from_route = matches!(status, 404 | 405) || raw.starts_with(b"GET /events?");
        if !from_route {
            assert_eq!(reply.header("connection"), Some("close"), "{status}");
        }
        assert!(
            reply.json()["error"].is_string(),
            "{status}: JSON error body"
        );
        if status == 405 {
            assert!(reply.header("allow").unwrap().contains("OPTIONS"));
        }
    }
    let counted: Vec<u16> = server
        .app
        .telemetry()
        .http_responses()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    for status in [400, 404, 405, 408, 411, 413, 431] {
        assert!(counted.contains(&status), "{status} counted in {counted:?}");
    }
    assert_healthy(&server);
}

#[test]
fn chunked_bodies_are_decoded() {
    let server = support::start();
    let body = r#"{"room":"ch","user":"u","content":"chunked"}"#;
    let (a, b) = body.split_at(10);
    let raw = format!(
        "POST /messages HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let reply = exchange(&server, raw.as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["seq"], 1);
}

#[test]
fn expect_100_continue_over_a_raw_socket() {
    let server = support::start();
    let body = r#"{"room":"e","user":"u","content":"after continue"}"#;
    let mut stream = connect(&server);
    let head = format!(
        "POST /messages HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let interim = read_head(&mut reader).unwrap();
    assert_eq!(interim.status, 100);
    stream.write_all(body.as_bytes()).unwrap();
    let reply = read_reply(&mut reader, false).unwrap();
    assert_eq!(reply.status, 200);
}

#[test]
fn expect_100_continue_with_curl() {
    let server = support::start();
    let content = "y".repeat(4000);
    let body = serde_json::json!({ "room": "curl", "user": "u", "content": content }).to_string();
    let url = format!("http://127.0.0.1:{}/messages", server.app.http_port());
    let started = Instant::now();
    let out = Command::new("curl")
        .args([
            "-sS",
            "-v",
            "--max-time",
            "10",
            "-H",
            "Content-Type: application/json",
        ])
        .args(["-H", "Expect: 100-continue", "--data-binary", &body, &url])
        .output()
        .expect("curl is installed");
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("HTTP/1.1 100 Continue"), "{stderr}");
    // curl gives up waiting for the 100 after one second and sends anyway.
    assert!(elapsed < Duration::from_millis(900), "took {elapsed:?}");
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["seq"], 1);
}

#[test]
fn keep_alive_reuses_one_connection_and_http_1_0_closes() {
    let server = support::start_with(|c| c.http.idle_timeout = Duration::from_secs(1));
    let stream = connect(&server);
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    for i in 0..3 {
        let body = format!(r#"{{"room":"ka","user":"u","content":"{i}"}}"#);
        let raw = format!(
            "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nPOST /messages HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        // Two pipelined requests at a time.
        writer.write_all(raw.as_bytes()).unwrap();
        let health = read_reply(&mut reader, false).unwrap();
        assert_eq!(health.status, 200);
        assert_eq!(health.header("connection"), None);
        let posted = read_reply(&mut reader, false).unwrap();
        assert_eq!(posted.status, 200);
        assert_eq!(posted.json()["seq"], i + 1);
    }
    assert_eq!(server.app.http().unwrap().open_connections(), 1);
    // Idle past --http-idle-timeout-secs: closed.
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).unwrap(), 0);

    let mut old = connect(&server);
    old.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    let mut reader = BufReader::new(old);
    let reply = read_reply(&mut reader, false).unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("connection"), Some("close"));
    let mut rest = Vec::new();
    assert_eq!(
        reader.read_to_end(&mut rest).unwrap(),
        0,
        "closed after the response"
    );
}

#[test]
fn head_works_for_every_get() {
    let server = support::start();
    for target in ["/healthz", "/metrics", "/events?room=h", "/metrics/events"] {
        let get_reply = if target.contains("events") {
            None
        } else {
            Some(get(&server, target))
        };
        let head = request(&server, "HEAD", target);
        assert_eq!(head.status, 200, "{target}");
        assert!(head.body.is_empty());
        if let Some(get_reply) = get_reply {
            assert!(head.header("content-length").is_some(), "{target}");
            assert_eq!(
                head.header("content-type"),
                get_reply.header("content-type")
            );
        } else {
            assert_eq!(head.header("content-type"), Some("text/event-stream"));
        }
    }
    assert_eq!(
        server.app.hub().stats().subscribers,
        0,
        "HEAD opens no stream"
    );
}

#[test]
fn healthz_and_json_404() {
    let server = support::start();
    assert_healthy(&server);
    let reply = get(&server, "/no/such/thing");
    assert_eq!(reply.status, 404);
    assert!(reply.json()["error"]
        .as_str()
        .unwrap()
        .contains("/no/such/thing"));
}

#[test]
fn prometheus_metrics_cover_hub_http_grpc_and_process() {
    let server = support::start();
    let mut stream = EventStream::connected(&server, "/events?room=pm", &[]);
    post(&server, "pm", "u", "counted");
    send(&server.client(), "pm", "u", "via grpc").unwrap();
    assert_eq!(stream.event().json()["content"], "counted");
    assert_eq!(stream.event().json()["content"], "via grpc");
    // Counted once the stream thread moves its position on, just after the
    // write the client has now seen (a counter with no signal: polled).
    assert!(wait_until(Duration::from_secs(5), || server
        .app
        .hub()
        .stats()
        .delivered
        >= 2));
    get(&server, "/nope");
    let reply = get(&server, "/metrics");
    assert_eq!(reply.status, 200);
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = reply.text();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
    };
    assert_eq!(value(r#"streamhub_subscribers{protocol="sse"}"#), 1.0);
    assert_eq!(value(r#"streamhub_subscribers{protocol="grpc"}"#), 0.0);
    assert_eq!(value("streamhub_messages_published_total"), 2.0);
    assert!(value("streamhub_messages_delivered_total") >= 2.0);
    assert_eq!(value("streamhub_rooms"), 1.0);
    assert_eq!(
        value(r#"streamhub_subscribers_closed_total{reason="slow_consumer"}"#),
        0.0
    );
    assert!(value(r#"streamhub_http_responses_total{code="200"}"#) >= 2.0);
    assert_eq!(value(r#"streamhub_http_responses_total{code="404"}"#), 1.0);
    assert_eq!(
        value(r#"streamhub_grpc_calls_total{method="SendMessage",code="OK"}"#),
        1.0
    );
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_cpu_seconds_total") >= 0.0);
    assert!(value("process_threads") >= 2.0);
    assert!(
        value("streamhub_http_connections") >= 2.0,
        "the stream and this request"
    );
    assert_eq!(value("streamhub_sse_streams"), 1.0);
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        assert!(text.contains(&format!("# HELP {name} ")), "{name}");
    }
}

#[test]
fn metrics_events_stream_one_json_event_per_metric() {
    let server = support::start();
    let mut stream = EventStream::connected(
        &server,
        "/metrics/events?instance=i1&interval_seconds=1",
        &[],
    );
    let names: Vec<String> = (0..8)
        .map(|_| {
            let event = stream.event();
            assert_eq!(event.event, "metric");
            let data = event.json();
            assert_eq!(data["labels"]["instance"], "i1");
            assert!(data["value"].is_number(), "{data}");
            assert!(data["timestamp"].as_str().unwrap().ends_with('Z'));
            data["name"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "cpu_usage",
            "memory_usage",
            "requests_per_second",
            "subscribers",
            "rooms",
            "messages_published",
            "messages_delivered",
            "subscribers_dropped"
        ]
    );
    assert_eq!(
        get(&server, "/metrics/events?interval_seconds=99999").status,
        400
    );
}

#[test]
fn cors_headers_only_when_configured() {
    let off = support::start();
    let reply = exchange(
        &off,
        b"GET /healthz HTTP/1.1\r\nOrigin: http://a.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(reply.header("access-control-allow-origin"), None);
    let preflight = b"OPTIONS /messages HTTP/1.1\r\nOrigin: http://a.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\nConnection: close\r\n\r\n";
    let reply = exchange(&off, preflight);
    assert_eq!(reply.status, 204);
    assert_eq!(reply.header("allow"), Some("POST, OPTIONS"));
    assert_eq!(reply.header("access-control-allow-origin"), None);

    let on = support::start_with(|c| c.http.cors_origins = vec!["http://a.example".into()]);
    let reply = exchange(&on, preflight);
    assert_eq!(reply.status, 204);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("http://a.example")
    );
    assert!(reply
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert!(reply
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase()
        .contains("content-type"));
    let stream = EventStream::open(&on, "/events?room=c", &[("Origin", "http://a.example")]);
    assert_eq!(
        stream.head.header("access-control-allow-origin"),
        Some("http://a.example")
    );
    let reply = exchange(
        &on,
        b"GET /healthz HTTP/1.1\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(reply.header("access-control-allow-origin"), None);
}

#[test]
fn shutdown_ends_streams_with_a_system_event_after_queued_messages() {
    let server = support::start();
    let mut stream = EventStream::connected(&server, "/events?room=bye", &[]);
    server
        .app
        .hub()
        .publish(Draft::chat("bye", "u", "last words"))
        .unwrap();
    let Server { app, .. } = server;
    let stopping = std::thread::spawn(move || app.shutdown());
    let events = stream.until_closed();
    stopping.join().unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].json()["content"], "last words");
    assert_eq!(events[1].event, "system");
    assert_eq!(
        events[1].id, None,
        "the client resumes from the last message"
    );
    assert_eq!(events[1].json()["content"], "server shutting down");
}

#[test]
fn random_bytes_get_400_or_a_close_and_the_server_stays_healthy() {
    let server = support::start();
    for seed in 1..=3u64 {
        let mut stream = connect(&server);
        // The server may close before taking everything: a failed write is
        // a fine outcome.
        let _ = stream.write_all(&random_bytes(64 * 1024, seed));
        let mut reader = BufReader::new(stream);
        if let Ok(reply) = read_reply(&mut reader, false) {
            assert!(matches!(reply.status, 400 | 431), "{reply:?}");
        }
        assert_healthy(&server);
    }
}

#[test]
fn an_unterminated_200_mib_header_is_cut_off_and_memory_stays_flat() {
    support::run_alone("sse::alone_unterminated_header");
}

#[test]
#[ignore = "run by an_unterminated_200_mib_header_is_cut_off_and_memory_stays_flat in a fresh process"]
fn alone_unterminated_header() {
    let server = support::start();
    assert_healthy(&server);
    let chunk = vec![b'a'; 64 * 1024];
    let before = resident_bytes();
    let mut stream = connect(&server);
    stream.write_all(b"GET / HTTP/1.1\r\nX-Endless: ").unwrap();
    let mut sent: u64 = 0;
    let outcome = loop {
        if sent >= 200 << 20 {
            break None;
        }
        match stream.write(&chunk) {
            Ok(n) => sent += n as u64,
            Err(e) => break Some(e),
        }
    };
    let grown = resident_bytes().saturating_sub(before);
    assert!(outcome.is_some(), "the server took all 200 MiB");
    assert!(
        sent < 32 << 20,
        "the server read {sent} bytes before closing"
    );
    assert!(grown < 1 << 20, "resident memory grew by {grown} bytes");
    assert_healthy(&server);
}

#[test]
fn a_thousand_unfinished_requests_are_closed_at_the_deadline_without_threads() {
    support::run_alone("sse::alone_thousand_unfinished_requests");
}

#[test]
#[ignore = "run by a_thousand_unfinished_requests_are_closed_at_the_deadline_without_threads in a fresh process"]
fn alone_thousand_unfinished_requests() {
    let server = support::start_with(|c| c.http.header_timeout = Duration::from_secs(2));
    assert_healthy(&server);
    let baseline = threads();
    let started = Instant::now();
    let mut clients: Vec<TcpStream> = (0..1000)
        .map(|i| {
            let mut s = connect(&server);
            if i % 2 == 0 {
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
                    .unwrap();
            }
            s
        })
        .collect();
    let http = server.app.http().unwrap();
    assert!(wait_until(IO_TIMEOUT, || http.open_connections() == 1000));
    assert!(
        threads() <= baseline,
        "{} threads with 1000 pending connections, {baseline} before",
        threads()
    );
    for client in &mut clients {
        let mut reader = BufReader::new(&*client);
        let reply = read_reply(&mut reader, false).expect("a 408, then the close");
        assert_eq!(reply.status, 408);
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2),
        "closed before the deadline: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(8), "closed late: {elapsed:?}");
    drop(clients);
    assert!(wait_until(IO_TIMEOUT, || http.open_connections() == 0));
    assert!(wait_until(IO_TIMEOUT, || threads() <= baseline));
    assert_healthy(&server);
}

#[test]
fn browser_eventsource_gets_grpc_messages_and_resumes_after_the_server_closes_the_stream() {
    let Some(chromium) = chromium() else {
        return;
    };
    // A small queue, so that a burst makes the hub drop the browser's
    // subscription: the server closes the stream mid-flow. Room enough for
    // the five messages before it.
    let server = support::start_with(|c| {
        c.http.cors_origins = vec!["*".into()];
        c.http.sse_retry_ms = 200;
        c.hub.subscriber_queue = 16;
        // Dropped at once, not after a stall it might catch up in.
        c.hub.publish_stall = Duration::ZERO;
    });
    let hub = server.app.hub().clone();
    let (mut reports, _) = hub
        .subscribe("browser-report", None, streamhub::hub::Protocol::Grpc)
        .unwrap();
    let page = PageServer::start(include_bytes!("browser/eventsource.html"));
    let url = format!(
        "http://127.0.0.1:{}/?base=http://127.0.0.1:{}&room=browser&report=browser-report",
        page.port,
        server.app.http_port()
    );
    let browser = Browser::open(&chromium, &url);
    next_report(&mut reports, "open 1", Duration::from_secs(60));

    let client = server.client();
    let mut expected: Vec<String> = Vec::new();
    for i in 1..=5 {
        let content = format!("m{i}");
        send(&client, "browser", "grpc", &content).unwrap();
        expected.push(content);
    }
    // The page must hold a position (a Last-Event-ID) before the burst drops
    // it: a stream dropped before it delivered anything resumes live.
    next_report(&mut reports, "got m5", Duration::from_secs(30));
    let mut burst = 0;
    while hub.stats().closed(CloseReason::SlowConsumer) == 0 {
        assert!(
            burst < 800,
            "the hub never dropped the browser's subscription"
        );
        for _ in 0..20 {
            burst += 1;
            let content = format!("b{burst}");
            hub.publish(Draft::chat("browser", "burst", &content))
                .unwrap();
            expected.push(content);
        }
    }
    next_report(&mut reports, "open 2", Duration::from_secs(30));
    for content in ["m6", "m7", "m8", "done"] {
        send(&client, "browser", "grpc", content).unwrap();
        expected.push(content.to_string());
    }
    let summary: Value =
        serde_json::from_str(&next_report(&mut reports, "{", Duration::from_secs(30))).unwrap();
    drop(browser);
    let seqs: Vec<u64> = serde_json::from_value(summary["seqs"].clone()).unwrap();
    let contents: Vec<String> = serde_json::from_value(summary["contents"].clone()).unwrap();
    assert_eq!(
        seqs,
        (1..=expected.len() as u64).collect::<Vec<_>>(),
        "every message once, in order: {summary}"
    );
    assert_eq!(contents, expected);
    assert_eq!(summary["idMismatches"], 0);
    assert!(summary["opens"].as_u64().unwrap() >= 2, "{summary}");
    assert!(summary["errors"].as_u64().unwrap() >= 1, "{summary}");
}

#[test]
fn a_client_that_leaves_while_idle_is_let_go_before_the_next_keep_alive() {
    // Keep-alive every 60 s: only the liveness check can notice in time.
    let server = support::start_with(|c| c.http.sse_keepalive = Duration::from_secs(60));
    let stream = EventStream::connected(&server, "/events?room=gone", &[]);
    assert_eq!(server.subscribers(), 1);
    let left = Instant::now();
    drop(stream);
    assert!(
        wait_until(Duration::from_secs(6), || server.subscribers() == 0),
        "still subscribed after {:?}",
        left.elapsed()
    );
    assert_eq!(
        server.app.hub().stats().closed(CloseReason::ClientClosed),
        1
    );
}

/// The CPU policy (field 41 of /proc/.../stat: 0 normal, 5 SCHED_IDLE) and
/// nice value (field 19) of this process's threads named `sse-N`.
fn sse_thread_policies() -> Vec<(String, u32, i32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = entry.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let comm = comm.trim().to_string();
        let numbered = comm
            .strip_prefix("sse-")
            .is_some_and(|n| n.parse::<u64>().is_ok());
        if !numbered {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // Fields after the parenthesised name start at field 3.
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        out.push((
            comm,
            fields[38].parse().unwrap(),
            fields[16].parse().unwrap(),
        ));
    }
    out
}

#[test]
fn event_stream_threads_run_at_the_configured_priority() {
    // Alone: other tests' event streams would show up in /proc too.
    support::run_alone("sse::event_stream_threads_run_at_the_configured_priority_alone");
}

#[test]
#[ignore = "run alone by event_stream_threads_run_at_the_configured_priority"]
fn event_stream_threads_run_at_the_configured_priority_alone() {
    use streamhub::threads::Priority;
    // The nice value the tests run at (`nice make test` raises it): threads
    // inherit it, and only `low` changes it.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let base: i32 = fields[16].parse().unwrap();
    for (priority, policy, nice) in [
        (Priority::Idle, 5, base),
        (Priority::Low, 0, 19),
        (Priority::Normal, 0, base),
        (Priority::Auto, 0, base),
    ] {
        let server = support::start_with(|c| c.http.stream_priority = priority);
        let _a = EventStream::connected(&server, "/events?room=prio", &[]);
        let _b = EventStream::connected(&server, "/events?room=prio2", &[]);
        let found = sse_thread_policies();
        assert_eq!(found.len(), 2, "{priority:?}: {found:?}");
        for (name, p, n) in found {
            assert_eq!((p, n), (policy, nice), "{priority:?}: {name}");
        }
    }
    // Auto: a busy room sends its streams to SCHED_IDLE, a quiet one not.
    let server = support::start_with(|c| c.http.stream_priority = Priority::Auto);
    let mut busy = EventStream::connected(&server, "/events?room=busy", &[]);
    let _quiet = EventStream::connected(&server, "/events?room=quiet", &[]);
    server
        .app
        .hub()
        .publish(Draft::chat("quiet", "u", "one"))
        .unwrap();
    let started = Instant::now();
    let mut sent = 0u64;
    // About 1,000 msgs/s, read as they come, until the stream steps back.
    while started.elapsed() < Duration::from_secs(10) {
        for _ in 0..10 {
            sent += 1;
            server
                .app
                .hub()
                .publish(Draft::chat("busy", "u", sent.to_string()))
                .unwrap();
        }
        for _ in 0..10 {
            busy.event();
        }
        let policies: Vec<u32> = sse_thread_policies().iter().map(|(_, p, _)| *p).collect();
        if policies.contains(&5) {
            assert_eq!(
                policies.iter().filter(|p| **p == 5).count(),
                1,
                "only the busy room's"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the busy room's stream never stepped back ({sent} messages)");
}

#[test]
fn a_client_that_stops_reading_holds_a_publisher_no_longer_than_the_stall() {
    let stall = Duration::from_millis(100);
    let server = support::start_with(|c| {
        c.hub.publish_stall = stall;
        c.hub.subscriber_queue = 64;
    });
    // Reads nothing after the preamble: its socket buffers fill, its stream
    // thread blocks in a write and its position stops.
    let stuck = EventStream::connected(&server, "/events?room=stall", &[]);
    let mut reader = EventStream::connected(&server, "/events?room=stall", &[]);
    // 8 MB in all: far more than the stuck client's socket buffers hold.
    let content = "x".repeat(4096);
    let total = 2000u64;
    let reading = std::thread::spawn(move || {
        for n in 1..=total {
            assert_eq!(
                reader.event().id,
                Some(n.to_string()),
                "the reader loses nothing"
            );
        }
        reader
    });
    let mut slowest = Duration::ZERO;
    for _ in 0..total {
        slowest = slowest.max(timed_publish(&server, "stall", &content));
    }
    let _reader = reading.join().unwrap();
    let stats = server.app.hub().stats();
    assert_eq!(stats.closed(CloseReason::SlowConsumer), 1);
    assert!(stats.publish_stalls >= 1);
    // Bounded by the stall; the margin is for a busy test machine, far
    // below the 10 s write timeout a blocked write would take.
    assert!(slowest < stall * 5, "a publish took {slowest:?}");
    let metrics = String::from_utf8_lossy(&get(&server, "/metrics").body).to_string();
    assert!(
        metrics.contains("streamhub_publish_stalls_total "),
        "{metrics}"
    );
    // The dropped stream's thread gives up its write and ends promptly.
    assert!(
        wait_until(Duration::from_secs(5), || server.subscribers() == 1),
        "{:?}",
        server.app.hub().stats()
    );
    drop(stuck);
}
