//! gRPC-Web on the HTTP port, from a raw client (`support::grpc_web`): the
//! same answers as native gRPC for the same calls, streams in chunks that
//! end with a trailer frame, CORS, grpc-timeout, text mode, shutdown, and
//! every kind of bad input answered with a status or an HTTP error, never
//! a hang. The browser tests (a real Connect-ES client in Chromium) are in
//! `browser.rs`.

use std::io::Write;
use std::time::{Duration, Instant};

use base64::Engine as _;
use streamhub::hub::{CloseReason, Draft};
use streamhub::proto::chat;

use crate::support::grpc::{next, send, subscribe, subscribe_req, Code, Status};
use crate::support::grpc_web::{frame, raw_request, unary, WebResponse};
use crate::support::http::{connect, exchange, read_reply};
use crate::support::{self, wait_until};

const PROTO: &str = "application/grpc-web+proto";

fn send_req(room: &str, user: &str, content: &str) -> chat::SendMessageRequest {
    let mut req = chat::SendMessageRequest::new();
    req.room = room.into();
    req.user = user.into();
    req.content = content.into();
    req
}

fn web_send(
    server: &support::Server,
    room: &str,
    user: &str,
    content: &str,
) -> Result<chat::SendMessageResponse, Status> {
    unary(server, "SendMessage", &send_req(room, user, content))
}

/// Opens SubscribeMessages over gRPC-Web and takes the welcome (and the
/// own JOIN, with a user), as `support::grpc::subscribe` does natively.
fn web_subscribe(server: &support::Server, room: &str, user: &str, extra: &str) -> WebResponse {
    let raw = raw_request(
        "SubscribeMessages",
        PROTO,
        extra,
        &frame(&subscribe_req(room, user)),
    );
    let mut stream = WebResponse::send(server, &raw);
    assert_eq!(stream.head.status, 200);
    assert_eq!(stream.head.header("transfer-encoding"), Some("chunked"));
    let welcome: chat::Message = stream.message().expect("welcome");
    assert_eq!(
        welcome.type_.enum_value_or_default(),
        chat::MessageType::SYSTEM
    );
    assert!(
        welcome.content.starts_with("Welcome to room"),
        "{welcome:?}"
    );
    if !user.is_empty() {
        let join: chat::Message = stream.message().expect("own JOIN");
        assert_eq!(join.type_.enum_value_or_default(), chat::MessageType::JOIN);
    }
    stream
}

#[test]
fn grpc_web_send_message_publishes_and_a_native_subscriber_receives_it() {
    let server = support::start();
    let client = server.client();
    let mut native = subscribe(&client, "web", "");
    let resp = web_send(&server, "web", "ann", "from the web").unwrap();
    assert!(resp.message_id.starts_with("msg_"), "{resp:?}");
    let m = next(&mut native).unwrap();
    assert_eq!(
        (m.id.as_str(), m.user.as_str(), m.content.as_str()),
        (resp.message_id.as_str(), "ann", "from the web")
    );
    assert_eq!(m.timestamp, resp.timestamp);
}

#[test]
fn grpc_web_errors_are_the_native_codes_and_messages() {
    let server = support::start_with(|c| c.hub.max_content_bytes = 100);
    let client = server.client();
    let long = "x".repeat(101);
    for (room, user, content) in [
        ("r", "", "no user"),
        ("bad room!", "u", "x"),
        ("r", "u", ""),
        ("r", "u", long.as_str()),
    ] {
        let native = send(&client, room, user, content).unwrap_err();
        let web = web_send(&server, room, user, content).unwrap_err();
        assert_eq!(web, native, "{room:?} {user:?}");
        assert_ne!(web.code, Code::Ok);
    }
}

#[test]
fn grpc_web_unary_answers_keep_the_connection_for_the_next_call() {
    let server = support::start();
    let mut stream = connect(&server);
    let raw = raw_request("SendMessage", PROTO, "", &frame(&send_req("k", "u", "one")));
    for _ in 0..3 {
        stream.write_all(&raw).unwrap();
        let mut reader = std::io::BufReader::new(&stream);
        let reply = read_reply(&mut reader, false).unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("connection"), None);
        assert!(reply.body.ends_with(b"grpc-status: 0\r\n"), "{reply:?}");
    }
    assert_eq!(server.app.hub().stats().published, 3);
}

#[test]
fn grpc_web_subscribe_streams_live_messages_in_chunks_and_honours_grpc_timeout() {
    let server = support::start();
    let started = Instant::now();
    let mut stream = web_subscribe(&server, "live", "bea", "grpc-timeout: 1500m\r\n");
    let client = server.client();
    for i in 0..3 {
        send(&client, "live", "cal", &format!("m{i}")).unwrap();
    }
    for i in 0..3 {
        let m: chat::Message = stream.message().unwrap();
        assert_eq!((m.user.as_str(), m.content), ("cal", format!("m{i}")));
    }
    // The deadline ends the stream with DEADLINE_EXCEEDED in a trailer
    // frame, the last frame, then the chunked body's end.
    let status = stream.finish();
    assert_eq!(
        status,
        Status::new(Code::DeadlineExceeded, "deadline exceeded")
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(wait_until(Duration::from_secs(5), || server.subscribers() == 0));
}

#[test]
fn grpc_web_a_burst_reaches_a_subscriber_whole_and_in_order() {
    let server = support::start();
    let mut stream = web_subscribe(&server, "burst", "", "");
    let hub = server.app.hub().clone();
    for i in 0..2000 {
        hub.publish(Draft::chat("burst", "p", format!("b{i}")))
            .unwrap();
    }
    for i in 0..2000 {
        let m: chat::Message = stream.message().unwrap();
        assert_eq!(m.content, format!("b{i}"));
    }
}

#[test]
fn grpc_web_stream_metrics_sends_measurements_labelled_with_the_instance() {
    let server = support::start();
    let mut req = chat::MetricsRequest::new();
    req.instance_id = "web-1".into();
    req.interval_seconds = 1;
    let raw = raw_request("StreamMetrics", PROTO, "", &frame(&req));
    let mut stream = WebResponse::send(&server, &raw);
    assert_eq!(stream.head.status, 200);
    let mut names = Vec::new();
    while names.len() < 8 {
        let m: chat::Metric = stream.message().unwrap();
        assert_eq!(m.labels.get("instance").map(String::as_str), Some("web-1"));
        names.push(m.name);
    }
    assert!(names.contains(&"subscribers".to_string()), "{names:?}");
    assert!(names.contains(&"cpu_usage".to_string()), "{names:?}");
    // A bad interval is the native INVALID_ARGUMENT, trailers-only.
    req.interval_seconds = -1;
    let raw = raw_request("StreamMetrics", PROTO, "", &frame(&req));
    let refused = WebResponse::send(&server, &raw).finish();
    let native = server
        .client()
        .stream_metrics(&req)
        .and_then(|mut s| crate::support::grpc::next::<chat::Metric>(&mut s).map(|_| ()))
        .unwrap_err();
    assert_eq!(refused, native);
    assert_eq!(refused.code, Code::InvalidArgument);
}

#[test]
fn grpc_web_text_mode_round_trips_base64_per_chunk() {
    let server = support::start();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let body = b64(&frame(&subscribe_req("text", "")));
    let raw = raw_request(
        "SubscribeMessages",
        "application/grpc-web-text",
        "Accept: application/grpc-web-text\r\n",
        body.as_bytes(),
    );
    let mut stream = WebResponse::send(&server, &raw);
    assert_eq!(
        stream.head.header("content-type"),
        Some("application/grpc-web-text+proto")
    );
    let welcome: chat::Message = stream.message().unwrap();
    assert_eq!(
        welcome.type_.enum_value_or_default(),
        chat::MessageType::SYSTEM
    );
    let body = b64(&frame(&send_req("text", "tia", "in base64")));
    let raw = raw_request(
        "SendMessage",
        "application/grpc-web-text",
        "",
        body.as_bytes(),
    );
    let mut answer = WebResponse::send(&server, &raw);
    let resp: chat::SendMessageResponse = answer.message().unwrap();
    assert_eq!(answer.finish().code, Code::Ok);
    let m: chat::Message = stream.message().unwrap();
    assert_eq!((m.id, m.content.as_str()), (resp.message_id, "in base64"));
}

#[test]
fn grpc_web_bad_input_gets_a_status_or_an_http_error_never_a_hang() {
    let server = support::start_with(|c| {
        c.http.max_body_bytes = 1024;
        c.grpc.max_message_bytes = 1024;
    });
    let good = frame(&send_req("bad", "u", "x"));
    let status = |method: &str, content_type: &str, extra: &str, body: &[u8]| {
        let started = Instant::now();
        let raw = raw_request(method, content_type, extra, body);
        let st = WebResponse::send(&server, &raw).finish();
        assert!(started.elapsed() < Duration::from_secs(5));
        st
    };
    let internal = |m: &str| Status::new(Code::Internal, m);
    // Truncated: a prefix announcing more than the body holds.
    assert_eq!(
        status("SendMessage", PROTO, "", &good[..good.len() - 2]),
        internal("the stream ended inside a message")
    );
    assert_eq!(
        status("SendMessage", PROTO, "", &good[..3]),
        internal("the stream ended inside a message")
    );
    assert_eq!(
        status("SendMessage", PROTO, "", b""),
        internal("the request has no message")
    );
    // A frame announcing more than the limit: RESOURCE_EXHAUSTED at once.
    let mut huge = vec![0, 0x7f, 0xff, 0xff, 0xff];
    huge.extend_from_slice(b"abc");
    assert_eq!(
        status("SendMessage", PROTO, "", &huge).code,
        Code::ResourceExhausted
    );
    // The compressed flag.
    let mut compressed = good.clone();
    compressed[0] = 1;
    assert_eq!(
        status("SendMessage", PROTO, "", &compressed),
        Status::new(
            Code::Unimplemented,
            "compressed messages are not accepted (grpc-accept-encoding: identity)"
        )
    );
    // Garbage protobuf.
    let garbage = [0, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff];
    let st = status("SubscribeMessages", PROTO, "", &garbage);
    assert_eq!(st.code, Code::Internal);
    assert!(
        st.message.starts_with("malformed request message"),
        "{st:?}"
    );
    // Two messages for a method that takes one.
    let two = [good.clone(), good.clone()].concat();
    assert_eq!(
        status("SendMessage", PROTO, "", &two).code,
        Code::Unimplemented
    );
    // Malformed grpc-timeout, as native gRPC answers it.
    assert_eq!(
        status("SendMessage", PROTO, "grpc-timeout: soon\r\n", &good),
        internal("malformed grpc-timeout")
    );
    // Not base64 in text mode.
    assert_eq!(
        status("SendMessage", "application/grpc-web-text", "", b"*&^%").code,
        Code::Internal
    );
    // Client streaming cannot work from a browser: UNIMPLEMENTED, saying so.
    for method in ["UploadMessages", "Chat"] {
        let st = status(method, PROTO, "", b"");
        assert_eq!(st.code, Code::Unimplemented);
        assert!(st.message.contains("native gRPC"), "{st:?}");
    }
    assert_eq!(
        status("Nope", PROTO, "", &good),
        Status::new(
            Code::Unimplemented,
            "unknown method Nope for service chat.ChatService"
        )
    );
    // Not gRPC-Web at all: HTTP errors.
    let raw = raw_request("SendMessage", "application/json", "", b"{}");
    assert_eq!(exchange(&server, &raw).status, 415);
    let big = vec![0u8; 2000];
    let raw = raw_request("SendMessage", PROTO, "", &big);
    assert_eq!(exchange(&server, &raw).status, 413);
    let reply = exchange(
        &server,
        b"GET /chat.ChatService/SendMessage HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("POST, OPTIONS"));
    // Nothing of it hurt: a good call still works, no thread was lost.
    assert!(unary::<chat::SendMessageResponse>(
        &server,
        "SendMessage",
        &send_req("bad", "u", "ok")
    )
    .is_ok());
    assert_eq!(server.app.stream_threads(), 0);
}

#[test]
fn grpc_web_cors_preflight_allows_its_headers_for_listed_origins_only() {
    let server = support::start_with(|c| c.http.cors_origins = vec!["http://page.example".into()]);
    let preflight = |origin: &str| {
        exchange(
            &server,
            format!(
                "OPTIONS /chat.ChatService/SubscribeMessages HTTP/1.1\r\nHost: t\r\nOrigin: {origin}\r\n\
                 Access-Control-Request-Method: POST\r\n\
                 Access-Control-Request-Headers: content-type,x-grpc-web,x-user-agent,grpc-timeout\r\n\
                 Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
    };
    let ok = preflight("http://page.example");
    assert_eq!(ok.status, 204);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("http://page.example")
    );
    assert_eq!(
        ok.header("access-control-allow-methods"),
        Some("POST, OPTIONS")
    );
    let allowed = ok
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    for h in [
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
        "authorization",
    ] {
        assert!(allowed.contains(h), "{h} in {allowed}");
    }
    let other = preflight("http://evil.example");
    assert_eq!(other.header("access-control-allow-origin"), None);
    let raw = raw_request(
        "SendMessage",
        PROTO,
        "Origin: http://page.example\r\n",
        &frame(&send_req("c", "", "x")),
    );
    let refused = WebResponse::send(&server, &raw);
    assert_eq!(
        refused.head.header("access-control-expose-headers"),
        Some("grpc-status, grpc-message")
    );
    assert_eq!(refused.status().code, Code::InvalidArgument);
}

#[test]
fn grpc_web_subscriber_gets_the_shutdown_notice_then_unavailable() {
    let server = support::start();
    let mut stream = web_subscribe(&server, "bye", "", "");
    server
        .app
        .hub()
        .publish(Draft::chat("bye", "p", "before"))
        .unwrap();
    let started = Instant::now();
    let support::Server { app, .. } = server;
    let stopper = std::thread::spawn(move || app.shutdown());
    let m: chat::Message = stream.message().unwrap();
    assert_eq!(m.content, "before");
    let notice: chat::Message = stream.message().unwrap();
    assert_eq!(notice.content, streamhub::hub::SHUTDOWN_NOTICE);
    let status = stream.finish();
    assert_eq!(
        status,
        Status::new(Code::Unavailable, streamhub::hub::SHUTDOWN_NOTICE)
    );
    stopper.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn grpc_web_subscriber_that_leaves_is_noticed_and_its_thread_ends() {
    let server = support::start();
    let stream = web_subscribe(&server, "gone", "dee", "");
    assert_eq!(server.subscribers(), 1);
    drop(stream);
    // Dropping the response closes the socket; the quiet stream notices at
    // its next look (every 3 s), says LEAVE and ends its thread.
    assert!(wait_until(Duration::from_secs(8), || server.subscribers() == 0));
    assert!(wait_until(Duration::from_secs(2), || server
        .app
        .stream_threads()
        == 0));
    assert_eq!(
        server.app.hub().stats().closed(CloseReason::ClientClosed),
        1
    );
}

#[test]
fn grpc_web_subscriber_that_stops_reading_is_dropped_as_slow() {
    let server = support::start_with(|c| {
        c.hub.subscriber_queue = 16;
        c.hub.publish_stall = Duration::ZERO;
        c.http.sse_send_buffer = 4096;
    });
    let stream = web_subscribe(&server, "slow", "", "");
    let hub = server.app.hub().clone();
    let content = "y".repeat(1000);
    let mut sent = 0;
    while hub.stats().closed(CloseReason::SlowConsumer) == 0 {
        assert!(sent < 100_000, "never dropped");
        hub.publish(Draft::chat("slow", "p", &content)).unwrap();
        sent += 1;
    }
    assert!(wait_until(Duration::from_secs(5), || server
        .app
        .stream_threads()
        == 0));
    drop(stream);
}
