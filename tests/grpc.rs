//! ChatService over a real gRPC client (streamhub's own h2c client, which
//! shares no code with the server's side of HTTP/2): every RPC, its
//! errors and limits.

use std::time::{Duration, Instant};

use protobuf::Enum;

use streamhub::hub::CloseReason;
use streamhub::proto::chat;

use crate::support::grpc::{
    close_and_recv, next, opt, push, recv, send, subscribe, subscribe_req, CallOptions, Code,
};
use crate::support::{self, wait_until};

fn chat_message(id: &str, room: &str, user: &str, content: &str) -> chat::Message {
    let mut m = chat::Message::new();
    m.id = id.into();
    m.room = room.into();
    m.user = user.into();
    m.content = content.into();
    m
}

#[test]
fn send_message_id_is_the_id_subscribers_see() {
    let server = support::start();
    let client = server.client();
    let mut stream = subscribe(&client, "general", "alice");
    let resp = send(&client, "general", "bob", "hello").unwrap();
    assert!(resp.message_id.starts_with("msg_"));
    assert!(resp.timestamp.seconds > 1_600_000_000);
    let m = next(&mut stream).unwrap();
    assert_eq!(m.id, resp.message_id);
    assert_eq!(
        (m.user.as_str(), m.content.as_str(), m.room.as_str()),
        ("bob", "hello", "general")
    );
    assert_eq!(m.type_.enum_value_or_default(), chat::MessageType::CHAT);
    assert_eq!(m.timestamp.seconds, resp.timestamp.seconds);
}

#[test]
fn welcome_names_room_and_user_and_comes_first() {
    let server = support::start();
    let client = server.client();
    let mut stream = client
        .subscribe_messages(&subscribe_req("lobby", "carol"))
        .unwrap();
    let welcome = next(&mut stream).unwrap();
    assert_eq!(
        welcome.type_.enum_value_or_default(),
        chat::MessageType::SYSTEM
    );
    assert!(
        welcome.content.contains("lobby") && welcome.content.contains("carol"),
        "{}",
        welcome.content
    );
    // The welcome means the subscription is registered: nothing sent after
    // it may be missed.
    let resp = send(&client, "lobby", "dave", "right after").unwrap();
    let mut seen = Vec::new();
    while seen.last() != Some(&resp.message_id) {
        seen.push(next(&mut stream).unwrap().id);
    }
}

#[test]
fn empty_room_is_default_and_rooms_are_separate() {
    let server = support::start();
    let client = server.client();
    let mut default = subscribe(&client, "", "u");
    let mut other = subscribe(&client, "other", "u");
    send(&client, "other", "u", "for other").unwrap();
    send(&client, "", "u", "for default").unwrap();
    let m = next(&mut default).unwrap();
    assert_eq!(
        (m.content.as_str(), m.room.as_str()),
        ("for default", "default")
    );
    let m = next(&mut other).unwrap();
    assert_eq!(m.content, "for other");
}

#[test]
fn send_message_rejects_invalid_arguments() {
    let server = support::start_with(|c| {
        c.grpc.max_message_bytes = 1024;
        c.hub.max_content_bytes = 1024;
    });
    let client = server.client();
    let err = send(&client, "r", "", "x").unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    assert_eq!(err.message, "user is required");
    let err = send(&client, "r", "u", "").unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    assert!(err.message.contains("content"));
    let err = send(&client, "bad room!", "u", "x").unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    assert!(err.message.contains("room"));
    let err = send(&client, "r", "u", &"x".repeat(2000)).unwrap_err();
    assert_eq!(err.code, Code::ResourceExhausted);
    // Far past the limit: the server refuses it as well.
    let err = send(&client, "r", "u", &"x".repeat(200_000)).unwrap_err();
    assert_eq!(err.code, Code::ResourceExhausted);
    // The server is fine afterwards.
    assert!(send(&client, "r", "u", "ok").is_ok());
    assert_eq!(server.app.hub().stats().published, 1);
}

#[test]
fn default_message_limit_is_one_mebibyte() {
    let server = support::start();
    let client = server.client();
    assert!(send(&client, "r", "u", &"x".repeat(1024 * 1024)).is_ok());
    let err = send(&client, "r", "u", &"x".repeat(1024 * 1024 + 1)).unwrap_err();
    assert_eq!(err.code, Code::ResourceExhausted);
}

#[test]
fn twenty_subscribers_get_500_messages_in_order() {
    let server = support::start();
    let clients: Vec<_> = (0..4).map(|_| server.client()).collect();
    let streams: Vec<_> = (0..20)
        .map(|i| subscribe(&clients[i % 4], "fanout", ""))
        .collect();
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            std::thread::spawn(move || {
                (0..500)
                    .map(|_| next(&mut stream).unwrap().content)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let publisher = server.client();
    for i in 0..500 {
        send(&publisher, "fanout", "p", &i.to_string()).unwrap();
    }
    let want: Vec<String> = (0..500).map(|i| i.to_string()).collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), want);
    }
}

#[test]
fn hundred_cancelled_streams_unregister_within_a_second() {
    let server = support::start();
    let client = server.client();
    let streams: Vec<_> = (0..100).map(|_| subscribe(&client, "churn", "")).collect();
    assert_eq!(server.subscribers(), 100);
    // Dropping a call that is still running cancels it (RST_STREAM CANCEL).
    let cancelled = Instant::now();
    drop(streams);
    assert!(
        wait_until(Duration::from_secs(1), || server.subscribers() == 0),
        "{} subscribers left after {:?}",
        server.subscribers(),
        cancelled.elapsed()
    );
    assert!(wait_until(Duration::from_secs(2), || server
        .app
        .stream_threads()
        == 0));
    assert_eq!(
        server.app.hub().stats().closed(CloseReason::ClientClosed),
        100
    );
}

#[test]
fn deadline_ends_the_stream_and_unregisters() {
    let server = support::start();
    let client = server
        .client()
        .with_options(CallOptions::default().timeout(Duration::from_millis(300)));
    let mut stream = client
        .subscribe_messages(&subscribe_req("late", ""))
        .unwrap();
    next(&mut stream).unwrap();
    let err = next(&mut stream).unwrap_err();
    assert_eq!(err.code, Code::DeadlineExceeded);
    assert!(wait_until(Duration::from_secs(1), || server.subscribers() == 0));
}

#[test]
fn stuck_subscriber_is_dropped_while_others_get_everything() {
    let server = support::start_with(|c| {
        c.hub.subscriber_queue = 32;
        c.grpc.write_timeout = Duration::from_secs(1);
    });
    let stuck_client = server.client();
    let mut stuck = subscribe(&stuck_client, "busy", "");
    let good_client = server.client();
    let mut good = subscribe(&good_client, "busy", "");
    const N: usize = 3000;
    let reader = std::thread::spawn(move || {
        (0..N)
            .map(|_| next(&mut good).unwrap().content)
            .collect::<Vec<_>>()
    });
    let publisher = server.client();
    // 60 MB in all: more than a grpc-core client buffers for a stream it
    // does not read (its windows grow with its bandwidth estimate).
    let body = "y".repeat(20_000);
    let mut slowest = Duration::ZERO;
    for i in 0..N {
        let started = Instant::now();
        send(&publisher, "busy", "p", &format!("{i} {body}")).unwrap();
        slowest = slowest.max(started.elapsed());
        if i % 100 == 0 {
            // Let the good reader keep up; the stuck one never reads.
            wait_until(Duration::from_secs(5), || {
                server
                    .app
                    .hub()
                    .room_stats("busy")
                    .is_some_and(|s| s.delivered >= i as u64)
            });
        }
    }
    assert!(
        slowest < Duration::from_millis(100),
        "slowest publish took {slowest:?}"
    );
    let got = reader.join().unwrap();
    assert_eq!(got.len(), N);
    for (i, content) in got.iter().enumerate() {
        assert!(content.starts_with(&format!("{i} ")));
    }
    assert_eq!(
        server.app.hub().stats().closed(CloseReason::SlowConsumer),
        1
    );
    // The stuck client, reading at last, finds the reason after what it was sent.
    let err = loop {
        match next(&mut stuck) {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(err.code, Code::ResourceExhausted);
    assert_eq!(err.message, "subscriber too slow");
}

#[test]
fn upload_publishes_each_message_and_counts() {
    let server = support::start();
    let client = server.client();
    let mut stream = subscribe(&client, "up", "watcher");
    let upload = client.upload_messages().unwrap();
    for i in 0..5 {
        push(
            &upload,
            &chat_message(&format!("batch_{i}"), "up", "bob", &format!("m{i}")),
        )
        .unwrap();
    }
    let resp: chat::UploadResponse = close_and_recv(upload).unwrap();
    assert_eq!(resp.message_count, 5);
    assert!(resp.success);
    for i in 0..5 {
        let m = next(&mut stream).unwrap();
        assert_eq!(m.content, format!("m{i}"));
        assert!(m.id.starts_with("msg_"), "server-assigned id, got {}", m.id);
    }
}

#[test]
fn upload_stops_at_first_invalid_message_naming_its_index() {
    let server = support::start();
    let client = server.client();
    let upload = client.upload_messages().unwrap();
    let messages = [
        chat_message("a", "up", "bob", "one"),
        chat_message("b", "up", "bob", "two"),
        chat_message("c", "up", "", "three"),
        chat_message("d", "up", "bob", "four"),
    ];
    for m in messages {
        if push(&upload, &m).is_err() {
            break;
        }
    }
    let err = close_and_recv::<chat::UploadResponse>(upload).unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    assert!(err.message.contains("index 2"), "{}", err.message);
    assert!(err.message.contains("user is required"));
    assert_eq!(server.app.hub().room_stats("up").unwrap().published, 2);
}

#[test]
fn chat_echoes_publishes_and_sends_heartbeats() {
    let server = support::start_with(|c| c.grpc.chat_heartbeat = Duration::from_secs(1));
    let client = server.client();
    let mut watcher = subscribe(&client, "talk", "watcher");
    let call = client.chat().unwrap();
    push(
        &call,
        &chat_message("client_1", "talk", "charlie", "hi there"),
    )
    .unwrap();
    let echo: chat::Message = recv(&call).unwrap();
    assert_eq!(echo.id, "echo_client_1");
    assert_eq!(echo.content, "Echo: hi there");
    assert_eq!(
        echo.type_.enum_value_or_default(),
        chat::MessageType::SYSTEM
    );
    // The original reaches the room (after charlie's JOIN).
    let mut published = next(&mut watcher).unwrap();
    if published.type_.enum_value_or_default() == chat::MessageType::JOIN {
        published = next(&mut watcher).unwrap();
    }
    assert_eq!(
        (published.user.as_str(), published.content.as_str()),
        ("charlie", "hi there")
    );
    // A heartbeat arrives on its own.
    let beat: chat::Message = recv(&call).unwrap();
    assert_eq!(beat.content, "Server is alive!");
    assert_eq!(
        beat.type_.enum_value_or_default(),
        chat::MessageType::SYSTEM
    );
    // Closing our side ends the call cleanly: whatever else arrives, the
    // status is OK.
    call.close_send();
    let end = loop {
        if let Err(status) = recv::<chat::Message>(&call) {
            break status;
        }
    };
    assert_eq!(end.code, Code::Ok, "{end:?}");
}

#[test]
fn chat_rejects_an_invalid_message() {
    let server = support::start();
    let client = server.client();
    let call = client.chat().unwrap();
    // The server may end the call with its status before this write is
    // done, which fails the send: the status below is what counts.
    let _ = push(&call, &chat_message("x", "talk", "u", ""));
    let err = loop {
        if let Err(status) = recv::<chat::Message>(&call) {
            break status;
        }
    };
    assert_eq!(err.code, Code::InvalidArgument);
    assert!(err.message.contains("content is required"));
}

#[test]
fn stream_metrics_sends_real_measurements() {
    let server = support::start();
    let client = server.client();
    let _sub = subscribe(&client, "m", "");
    send(&client, "m", "u", "x").unwrap();
    let mut req = chat::MetricsRequest::new();
    req.instance_id = "node-7".into();
    req.interval_seconds = 1;
    let mut stream = client.stream_metrics(&req).unwrap();
    let batch: Vec<chat::Metric> = (0..8).map(|_| next(&mut stream).unwrap()).collect();
    let value = |name: &str| {
        batch
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .value
    };
    for m in &batch {
        assert_eq!(m.labels.get("instance").map(String::as_str), Some("node-7"));
        assert!(m.timestamp.seconds > 0);
    }
    assert!(value("memory_usage") > 1_000_000.0);
    assert!(value("cpu_usage") >= 0.0);
    assert!(value("requests_per_second") >= 0.0);
    assert_eq!(value("subscribers"), 1.0);
    assert_eq!(value("rooms"), 1.0);
    assert_eq!(value("messages_published"), 1.0);
    // The subscriber's one message (a total: the page plots its rate).
    assert_eq!(value("messages_delivered"), 1.0);
    assert_eq!(value("subscribers_dropped"), 0.0);
}

#[test]
fn stream_metrics_rejects_bad_intervals() {
    let server = support::start();
    let client = server.client();
    for bad in [-1, 3601] {
        let mut req = chat::MetricsRequest::new();
        req.interval_seconds = bad;
        let mut stream = client.stream_metrics(&req).unwrap();
        let err = next(&mut stream).unwrap_err();
        assert_eq!(err.code, Code::InvalidArgument, "{bad}");
    }
    let _ = chat::MessageType::CHAT.value();
}

#[test]
fn stream_cap_answers_resource_exhausted() {
    let server = support::start_with(|c| c.grpc.max_streams = 3);
    let client = server.client();
    let _open: Vec<_> = (0..3)
        .map(|i| subscribe(&client, "cap", &format!("u{i}")))
        .collect();
    let mut refused = client
        .subscribe_messages(&subscribe_req("cap", "extra"))
        .unwrap();
    let err = next(&mut refused).unwrap_err();
    assert_eq!(err.code, Code::ResourceExhausted);
    // Unary calls are not streams and still work.
    assert!(send(&client, "cap", "u", "still fine").is_ok());
}

#[test]
fn shutdown_says_goodbye_with_unavailable_after_delivering_accepted_messages() {
    let server = support::start();
    let client = server.client();
    let mut stream = subscribe(&client, "bye", "u");
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(
            send(&client, "bye", "p", &i.to_string())
                .unwrap()
                .message_id,
        );
    }
    let started = Instant::now();
    let support::Server { app, .. } = server;
    let stopper = std::thread::spawn(move || app.shutdown());
    let mut got = Vec::new();
    let err = loop {
        match next(&mut stream) {
            Ok(m) => got.push(m),
            Err(e) => break e,
        }
    };
    stopper.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Every accepted message, in order, then the notice, then the status.
    let (notice, data) = got.split_last().expect("the notice arrives");
    assert_eq!(notice.content, "server shutting down");
    assert_eq!(
        notice.type_.enum_value_or_default(),
        chat::MessageType::SYSTEM
    );
    let data: Vec<String> = data.iter().map(|m| m.id.clone()).collect();
    assert_eq!(data, ids);
    assert_eq!(err.code, Code::Unavailable);
}

#[test]
fn join_and_leave_are_published_for_named_subscribers() {
    let server = support::start();
    let client = server.client();
    let mut watcher = subscribe(&client, "jl", "");
    let alice = subscribe(&client, "jl", "alice");
    let join = next(&mut watcher).unwrap();
    assert_eq!(join.type_.enum_value_or_default(), chat::MessageType::JOIN);
    assert_eq!(join.user, "alice");
    drop(alice);
    let leave = next(&mut watcher).unwrap();
    assert_eq!(
        leave.type_.enum_value_or_default(),
        chat::MessageType::LEAVE
    );
    assert_eq!(leave.user, "alice");
}

#[test]
fn clients_cannot_publish_system_join_or_leave_messages() {
    let server = support::start();
    let client = server.client();
    let mut watcher = subscribe(&client, "forge", "");
    let upload = client.upload_messages().unwrap();
    for kind in [
        chat::MessageType::SYSTEM,
        chat::MessageType::JOIN,
        chat::MessageType::LEAVE,
    ] {
        let mut m = chat_message("x", "forge", "mallory", "server shutting down");
        m.type_ = kind.into();
        push(&upload, &m).unwrap();
    }
    let resp: chat::UploadResponse = close_and_recv(upload).unwrap();
    assert_eq!(resp.message_count, 3);
    for _ in 0..3 {
        let m = next(&mut watcher).unwrap();
        assert_eq!(m.type_.enum_value_or_default(), chat::MessageType::CHAT);
        assert_eq!(m.user, "mallory");
    }
}

#[test]
fn streams_past_the_cap_on_one_connection_are_refused_and_the_open_ones_live_on() {
    // More than the old per-connection default (256) on one connection:
    // the RPC-level cap must answer, not the HTTP/2 limit, which makes
    // grpc-core clients drop the whole connection.
    let server = support::start_with(|c| c.grpc.max_streams = 300);
    let client = server.client();
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..400 {
        let mut s = client
            .subscribe_messages(&subscribe_req("many", ""))
            .unwrap();
        match next(&mut s) {
            Ok(_) => open.push(s),
            Err(e) => {
                assert_eq!(e.code, Code::ResourceExhausted);
                refused += 1;
            }
        }
    }
    assert_eq!((open.len(), refused), (300, 100));
    let resp = send(&client, "many", "u", "to all 300").unwrap();
    for s in &mut open {
        assert_eq!(next(s).unwrap().id, resp.message_id);
    }
    assert_eq!(server.subscribers(), 300);
}

#[test]
fn subscribe_and_chat_reject_bad_room_names() {
    let server = support::start();
    let client = server.client();
    let mut stream = client
        .subscribe_messages(&subscribe_req("no spaces please", "u"))
        .unwrap();
    let err = next(&mut stream).unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    assert!(err.message.contains("room"), "{}", err.message);

    let call = client.chat().unwrap();
    push(&call, &chat_message("1", &"r".repeat(65), "u", "hi")).unwrap();
    let err = loop {
        if let Err(status) = recv::<chat::Message>(&call) {
            break status;
        }
    };
    assert_eq!(err.code, Code::InvalidArgument);
    assert!(err.message.contains("index 0"), "{}", err.message);
    assert_eq!(server.subscribers(), 0);
}

#[test]
fn a_second_server_on_the_same_grpc_port_fails_to_start() {
    let first = support::start();
    let mut config = streamhub::config::Config::local();
    config.grpc.addr = first.grpc_addr.parse().unwrap();
    match streamhub::App::start(config) {
        Ok(_) => panic!("two servers share {}", first.grpc_addr),
        Err(e) => assert!(
            e.to_string().contains("cannot listen on") && e.to_string().contains("gRPC"),
            "{e}"
        ),
    }
    // The first one is unharmed.
    assert!(send(&first.client(), "r", "u", "still mine").is_ok());
}

#[test]
fn cancelled_metrics_chat_and_upload_streams_end_their_threads() {
    let server = support::start();
    let client = server.client();
    let mut metrics = Vec::new();
    let mut chats = Vec::new();
    let mut uploads = Vec::new();
    for _ in 0..20 {
        let mut req = chat::MetricsRequest::new();
        req.interval_seconds = 3600;
        metrics.push(client.stream_metrics(&req).unwrap());
        chats.push(client.chat().unwrap());
        uploads.push(client.upload_messages().unwrap());
    }
    assert!(
        wait_until(Duration::from_secs(5), || server.app.stream_threads() == 60),
        "{} stream threads",
        server.app.stream_threads()
    );
    // Dropping a running call cancels it.
    drop(metrics);
    drop(chats);
    drop(uploads);
    assert!(
        wait_until(Duration::from_secs(1), || server.app.stream_threads() == 0),
        "{} stream threads left",
        server.app.stream_threads()
    );
}

#[test]
fn chat_participant_joins_the_room_before_their_first_message() {
    let server = support::start();
    let client = server.client();
    let mut watcher = subscribe(&client, "order", "watcher");
    let call = client.chat().unwrap();
    for i in 1..=2 {
        push(
            &call,
            &chat_message("", "order", "charlie", &format!("message #{i}")),
        )
        .unwrap();
        recv::<chat::Message>(&call).unwrap();
    }
    call.finish();
    let seen: Vec<(chat::MessageType, String)> = (0..4)
        .map(|_| {
            let m = next(&mut watcher).unwrap();
            (m.type_.enum_value_or_default(), m.content)
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                chat::MessageType::JOIN,
                "charlie joined the room".to_string()
            ),
            (chat::MessageType::CHAT, "message #1".to_string()),
            (chat::MessageType::CHAT, "message #2".to_string()),
            (
                chat::MessageType::LEAVE,
                "charlie left the room".to_string()
            ),
        ]
    );
}

#[test]
fn unknown_methods_and_compressed_requests_are_unimplemented() {
    let server = support::start();
    let channel = server.channel();
    let err = channel
        .unary("/chat.ChatService/Nope", &[], &opt())
        .unwrap_err();
    assert_eq!(err.code, Code::Unimplemented);
    assert_eq!(
        err.message,
        "unknown method Nope for service chat.ChatService"
    );
    let err = channel.unary("/pkg.Other/Call", &[], &opt()).unwrap_err();
    assert_eq!(err.code, Code::Unimplemented);
    assert_eq!(err.message, "unknown service pkg.Other");
    // Only identity: a request that says it is gzip-compressed is refused,
    // naming what is accepted.
    let mut gzip = opt();
    gzip.metadata.push(("grpc-encoding".into(), "gzip".into()));
    let err = channel
        .unary("/chat.ChatService/SendMessage", &[], &gzip)
        .unwrap_err();
    assert_eq!(err.code, Code::Unimplemented);
    assert!(
        err.message.contains("grpc-accept-encoding: identity"),
        "{}",
        err.message
    );
    assert_eq!(server.app.hub().stats().published, 0);
}

/// A subscriber that resumes past what the room still holds is told so,
/// before the replay, as SSE's clients are: by message id (ids are shared
/// by every room, so how many were missed is not known) or by sequence.
#[test]
fn a_resume_past_the_history_hears_what_was_missed_first() {
    use crate::support::grpc::resume;
    let server = support::start_with(|c| c.hub.history = 3);
    let client = server.client();
    let mut ids = Vec::new();
    for i in 1..=10 {
        send(&client, "other", "ann", "between").unwrap();
        let sent = send(&client, "g", "ann", &format!("m{i}")).unwrap();
        ids.push(sent.message_id);
    }
    let missed_after = |key: &str, value: &str| {
        let (_client, mut stream) = resume(&server.grpc_addr, "g", key, value);
        let notice = next(&mut stream).unwrap();
        let kind = notice.type_.enum_value_or_default();
        assert_eq!(
            (kind, notice.id.as_str()),
            (chat::MessageType::SYSTEM, "system_missed")
        );
        let replay: Vec<String> = (0..3).map(|_| next(&mut stream).unwrap().id).collect();
        assert_eq!(replay, ids[7..]);
        notice.content
    };
    let by_id = missed_after("last-message-id", &ids[1]);
    assert!(by_id.contains("before sequence 8"), "{by_id}");
    let by_seq = missed_after("last-event-id", "2");
    assert!(by_seq.starts_with("5 messages were missed"), "{by_seq}");
}
