//! The client state machine's rules, driven with frames a server would
//! write (built with `frame` and `hpack`), no socket.

use super::*;
use crate::grpc::h2::client::head::{request_head, USER_AGENT};
use crate::grpc::h2::frame::{flag, HEADER_LEN};
use crate::grpc::h2::hpack::{index, Block};
use std::time::Duration;

// ---- what a server writes ----

fn settings(params: &[(u16, u32)]) -> Vec<u8> {
    let mut b = Vec::new();
    frame::put_settings(&mut b, params);
    b
}

fn head_block() -> Block {
    Block::new()
        .indexed(index::STATUS_200)
        .named(index::CONTENT_TYPE, b"application/grpc")
}

fn trailer_block(code: Code, message: &str) -> Block {
    let mut b = Block::new().literal(b"grpc-status", code.number().to_string().as_bytes());
    if !message.is_empty() {
        b = b.literal(b"grpc-message", g::percent_encode(message).as_bytes());
    }
    b
}

fn headers(stream: u32, block: Block, end_stream: bool) -> Vec<u8> {
    let mut b = Vec::new();
    frame::put_headers(&mut b, stream, &block.bytes, end_stream, 16_384);
    b
}

fn data(stream: u32, bytes: &[u8], end_stream: bool) -> Vec<u8> {
    let mut b = Vec::new();
    frame::put_data_head(&mut b, stream, bytes.len(), end_stream);
    b.extend_from_slice(bytes);
    b
}

fn message(bytes: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    g::put_message(&mut b, bytes);
    b
}

fn rst(stream: u32, code: ErrorCode) -> Vec<u8> {
    let mut b = Vec::new();
    frame::put_rst_stream(&mut b, stream, code);
    b
}

/// The frames of `bytes` (after the preface, if it starts with one).
fn frames(mut bytes: &[u8]) -> Vec<(Head, Vec<u8>)> {
    if bytes.starts_with(frame::PREFACE) {
        bytes = &bytes[frame::PREFACE.len()..];
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let head = Head::parse(bytes[..HEADER_LEN].try_into().unwrap());
        let end = HEADER_LEN + head.len as usize;
        out.push((head, bytes[HEADER_LEN..end].to_vec()));
        bytes = &bytes[end..];
    }
    out
}

fn kinds(c: &mut ClientConn) -> Vec<(u8, u32)> {
    frames(&c.take_output())
        .iter()
        .map(|(h, _)| (h.kind, h.stream))
        .collect()
}

/// Feeds all of `input`, which must be whole frames.
fn feed(c: &mut ClientConn, input: &[u8]) {
    assert_eq!(c.receive(input), input.len());
}

/// A connection past the handshake, its output taken.
fn ready(server: &[(u16, u32)]) -> ClientConn {
    let mut c = ClientConn::new();
    c.take_output();
    feed(&mut c, &settings(server));
    assert!(c.settings_seen());
    c.take_output();
    c.take_wakes();
    c
}

fn open(c: &mut ClientConn) -> u32 {
    let id = c
        .open(&request_head("h:1", "/s/M", None, &[]), false, 1 << 20)
        .unwrap()
        .unwrap();
    c.take_output();
    id
}

fn status(c: &mut ClientConn, id: u32) -> Status {
    match c.next(id) {
        Next::End(s) => s,
        other => panic!("{other:?}"),
    }
}

// ---- tests ----

#[test]
fn the_preface_announces_our_windows_and_no_push() {
    let mut c = ClientConn::new();
    let out = c.take_output();
    assert!(out.starts_with(frame::PREFACE));
    let f = frames(&out);
    assert_eq!(f[0].0.kind, kind::SETTINGS);
    let parsed = frame::parse(&f[0].0, &f[0].1).unwrap();
    let Frame::Settings { params, .. } = parsed else {
        panic!("{parsed:?}")
    };
    assert!(params.contains(&(setting::ENABLE_PUSH, 0)));
    assert!(params.contains(&(setting::INITIAL_WINDOW_SIZE, STREAM_WINDOW)));
    assert_eq!(
        frame::parse(&f[1].0, &f[1].1).unwrap(),
        Frame::WindowUpdate {
            stream: 0,
            increment: CONN_WINDOW - frame::DEFAULT_WINDOW
        }
    );
}

#[test]
fn request_headers_are_what_grpc_servers_expect() {
    let metadata = [
        ("Authorization".to_string(), "Bearer t".to_string()),
        (":path".to_string(), "/evil".to_string()),
        ("te".to_string(), "gzip".to_string()),
    ];
    let head = request_head(
        "example:50051",
        "/chat.ChatService/Chat",
        Some(Duration::from_millis(1500)),
        &metadata,
    );
    let mut fields = Vec::new();
    hpack::Decoder::new(4096)
        .decode(&head.block, |n, v| {
            fields.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        })
        .unwrap();
    let want = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/chat.ChatService/Chat"),
        (":authority", "example:50051"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", USER_AGENT),
        ("grpc-timeout", "1500m"),
        ("authorization", "Bearer t"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let list_size: usize = want.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
    assert_eq!(fields, want);
    assert_eq!(head.list_size, list_size);
}

#[test]
fn headers_over_the_servers_list_limit_are_not_sent() {
    // streamhub, for one, ends the whole connection for a header block
    // that needs CONTINUATION frames past its limit.
    let mut c = ready(&[(setting::MAX_HEADER_LIST_SIZE, 1000)]);
    let small = [("x-a".to_string(), "v".repeat(600))];
    assert!(c
        .open(&request_head("h:1", "/s/M", None, &small), true, 1024)
        .unwrap()
        .is_some());
    c.take_output();
    let big = [("x-a".to_string(), "v".repeat(1000))];
    let refused = c
        .open(&request_head("h:1", "/s/M", None, &big), true, 1024)
        .unwrap_err();
    assert_eq!(refused.code, Code::ResourceExhausted);
    assert!(refused.message.contains("limit of 1000"), "{refused:?}");
    assert!(!c.has_output());
}

#[test]
fn a_unary_exchange_ends_ok_after_its_message() {
    let mut c = ready(&[]);
    let id = c
        .open(&request_head("h:1", "/s/M", None, &[]), false, 1024)
        .unwrap()
        .unwrap();
    assert_eq!(id, 1);
    assert_eq!(c.send_data(id, &message(b"ping"), true), Ok(9));
    let out = frames(&c.take_output());
    assert_eq!(
        (out[0].0.kind, out[0].0.flags & flag::END_STREAM),
        (kind::HEADERS, 0)
    );
    assert_eq!(
        (out[1].0.kind, out[1].0.flags),
        (kind::DATA, flag::END_STREAM)
    );
    assert_eq!(out[1].1, message(b"ping"));
    assert_eq!(c.next(id), Next::Pending);

    let mut input = headers(id, head_block(), false);
    input.extend(data(id, &message(b"pong"), false));
    input.extend(headers(id, trailer_block(Code::Ok, ""), true));
    feed(&mut c, &input);
    assert!(c.take_wakes().streams.contains(&id));
    assert_eq!(c.next(id), Next::Message(b"pong".to_vec()));
    assert_eq!(status(&mut c, id), Status::ok());
    // Closed both ways: letting go of it sends nothing.
    c.forget(id);
    assert!(!c.has_output());
}

#[test]
fn a_message_split_over_frames_and_headers_over_continuations_arrive_whole() {
    let mut c = ready(&[]);
    let id = open(&mut c);
    let mut input = Vec::new();
    frame::put_headers(&mut input, id, &head_block().bytes, false, 3);
    assert!(frames(&input).len() > 1);
    let m = message(&[7u8; 100]);
    input.extend(data(id, &m[..3], false));
    input.extend(data(id, &m[3..50], false));
    feed(&mut c, &input);
    assert_eq!(c.next(id), Next::Pending);
    let mut rest = data(id, &m[50..], false);
    frame::put_headers(&mut rest, id, &trailer_block(Code::Ok, "").bytes, true, 4);
    feed(&mut c, &rest);
    assert_eq!(c.next(id), Next::Message(vec![7u8; 100]));
    assert_eq!(status(&mut c, id).code, Code::Ok);
}

#[test]
fn trailers_only_errors_carry_their_decoded_message() {
    let mut c = ready(&[]);
    let id = open(&mut c);
    let block = head_block().literal(b"grpc-status", b"5").literal(
        b"grpc-message",
        g::percent_encode("no room \"caf\u{e9}\" 100%").as_bytes(),
    );
    feed(&mut c, &headers(id, block, true));
    assert_eq!(
        status(&mut c, id),
        Status::new(Code::NotFound, "no room \"caf\u{e9}\" 100%")
    );
    // A status is returned again on every later call.
    assert_eq!(status(&mut c, id).code, Code::NotFound);
    c.forget(id);
    assert!(!c.has_output());
}

#[test]
fn an_http_status_without_grpc_status_maps_as_grpc_does() {
    for (http, code) in [
        (415, Code::Unknown),
        (400, Code::Internal),
        (401, Code::Unauthenticated),
        (404, Code::Unimplemented),
        (503, Code::Unavailable),
        (500, Code::Unknown),
    ] {
        let mut c = ready(&[]);
        let id = open(&mut c);
        let block = Block::new().named(index::STATUS_200, http.to_string().as_bytes());
        feed(&mut c, &headers(id, block, true));
        let s = status(&mut c, id);
        assert_eq!(s.code, code, "{http}");
        assert!(s.message.contains(&http.to_string()), "{s:?}");
    }
    // 200 that is not gRPC, with a body coming: the call fails and the
    // stream is reset.
    let mut c = ready(&[]);
    let id = open(&mut c);
    let block = Block::new()
        .indexed(index::STATUS_200)
        .named(index::CONTENT_TYPE, b"text/html");
    feed(&mut c, &headers(id, block, false));
    assert_eq!(kinds(&mut c), vec![(kind::RST_STREAM, id)]);
    let s = status(&mut c, id);
    assert_eq!(s.code, Code::Unknown);
    assert!(s.message.contains("text/html"), "{s:?}");
    // What was in flight is ignored.
    feed(&mut c, &data(id, b"<html>", true));
    assert!(!c.has_output());
}

#[test]
fn resets_map_to_cancelled_unavailable_and_internal() {
    for (rst_code, code) in [
        (ErrorCode::Cancel, Code::Cancelled),
        (ErrorCode::RefusedStream, Code::Unavailable),
        (ErrorCode::ProtocolError, Code::Internal),
        (ErrorCode::NoError, Code::Internal),
        (ErrorCode::EnhanceYourCalm, Code::ResourceExhausted),
    ] {
        let mut c = ready(&[]);
        let id = open(&mut c);
        feed(&mut c, &rst(id, rst_code));
        let s = status(&mut c, id);
        assert_eq!(s.code, code, "{rst_code}");
        assert!(s.message.contains(&rst_code.to_string()));
        // Reset by the server: nothing to reset back.
        c.forget(id);
        assert!(!c.has_output());
    }
    // After the trailers a reset changes nothing (grpc-go and streamhub
    // reset a stream whose client has not finished sending).
    let mut c = ready(&[]);
    let id = open(&mut c);
    let mut input = headers(id, head_block().literal(b"grpc-status", b"0"), true);
    input.extend(rst(id, ErrorCode::NoError));
    feed(&mut c, &input);
    assert_eq!(status(&mut c, id).code, Code::Ok);
    assert_eq!(c.send_data(id, &message(b"late"), false), Err(Status::ok()));
}

#[test]
fn goaway_fails_only_the_calls_it_did_not_process_and_stops_new_ones() {
    let mut c = ready(&[]);
    let (a, b) = (open(&mut c), open(&mut c));
    let mut goaway = Vec::new();
    frame::put_goaway(&mut goaway, a, ErrorCode::NoError, b"draining");
    feed(&mut c, &goaway);
    assert!(c.take_wakes().all);
    assert_eq!(c.next(a), Next::Pending);
    let s = status(&mut c, b);
    assert_eq!(s.code, Code::Unavailable);
    assert!(s.message.contains("draining"), "{s:?}");
    let refused = c.open(&request_head("h:1", "/s/M", None, &[]), false, 1024);
    assert_eq!(refused.unwrap_err().code, Code::Unavailable);
    // The call it processed still ends normally.
    feed(
        &mut c,
        &headers(a, head_block().literal(b"grpc-status", b"0"), true),
    );
    assert_eq!(status(&mut c, a).code, Code::Ok);
}

#[test]
fn a_lost_connection_makes_running_calls_unavailable() {
    let mut c = ready(&[]);
    let id = open(&mut c);
    let mut goaway = Vec::new();
    frame::put_goaway(
        &mut goaway,
        id,
        ErrorCode::EnhanceYourCalm,
        b"too many pings",
    );
    feed(&mut c, &goaway);
    c.lose("the server closed the connection");
    assert!(c.take_wakes().all);
    let s = status(&mut c, id);
    assert_eq!(s.code, Code::Unavailable);
    assert!(
        s.message.contains("EnhanceYourCalm: too many pings"),
        "{s:?}"
    );
    assert_eq!(
        c.send_data(id, b"x", false).unwrap_err().code,
        Code::Unavailable
    );
    c.forget(id);
    assert!(!c.has_output(), "nothing is written on a lost connection");
}

#[test]
fn a_peer_that_is_not_http2_is_refused() {
    let mut c = ClientConn::new();
    c.take_output();
    let reply = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
    assert_eq!(c.receive(reply), reply.len());
    assert!(
        c.lost().unwrap().contains("not an HTTP/2 server"),
        "{:?}",
        c.lost()
    );
    assert_eq!(kinds(&mut c), vec![(kind::GOAWAY, 0)]);
}

#[test]
fn settings_and_pings_are_acknowledged_and_window_changes_apply_to_open_streams() {
    let mut c = ready(&[(setting::INITIAL_WINDOW_SIZE, 10)]);
    let id = open(&mut c);
    assert_eq!(c.send_data(id, &[1u8; 30], false), Ok(10));
    c.take_output();
    assert_eq!(c.send_data(id, &[1u8; 20], false), Ok(0));
    // A larger initial window gives the open stream the difference.
    feed(&mut c, &settings(&[(setting::INITIAL_WINDOW_SIZE, 25)]));
    assert!(c.take_wakes().streams.contains(&id));
    let mut ping = Vec::new();
    frame::put_ping(&mut ping, false, *b"12345678");
    feed(&mut c, &ping);
    let out = frames(&c.take_output());
    assert_eq!((out[0].0.kind, out[0].0.flags), (kind::SETTINGS, flag::ACK));
    assert_eq!((out[1].0.kind, out[1].0.flags), (kind::PING, flag::ACK));
    assert_eq!(out[1].1, b"12345678");
    assert_eq!(c.send_data(id, &[1u8; 20], false), Ok(15));
}

#[test]
fn data_goes_within_the_servers_windows_and_frame_size() {
    let mut c = ready(&[(setting::INITIAL_WINDOW_SIZE, 40_000)]);
    let id = open(&mut c);
    let payload = vec![9u8; 100_000];
    assert_eq!(c.send_data(id, &payload, true), Ok(40_000));
    let out = frames(&c.take_output());
    let lens: Vec<u32> = out.iter().map(|(h, _)| h.len).collect();
    assert_eq!(lens, vec![16_384, 16_384, 7_232]);
    assert!(out.iter().all(|(h, _)| h.flags & flag::END_STREAM == 0));
    // The stream's window is shut; an update wakes it.
    let mut update = Vec::new();
    frame::put_window_update(&mut update, id, 60_000);
    feed(&mut c, &update);
    assert_eq!(c.take_wakes().streams, vec![id]);
    // Now the connection's window (65,535) is what limits.
    assert_eq!(c.send_data(id, &payload[40_000..], true), Ok(25_535));
    c.take_output();
    let mut update = Vec::new();
    frame::put_window_update(&mut update, 0, 100_000);
    feed(&mut c, &update);
    assert_eq!(
        c.take_wakes().streams,
        vec![id],
        "a stream waiting on the connection's window is woken"
    );
    assert_eq!(c.send_data(id, &payload[65_535..], true), Ok(34_465));
    let out = frames(&c.take_output());
    assert_eq!(
        out.last().unwrap().0.flags & flag::END_STREAM,
        flag::END_STREAM
    );
    assert_eq!(
        c.send_data(id, b"more", false),
        Err(Status::new(
            Code::Internal,
            "send after the request was closed"
        ))
    );
}

#[test]
fn windows_are_given_back_as_the_application_reads() {
    let mut c = ready(&[]);
    let id = open(&mut c);
    feed(&mut c, &headers(id, head_block(), false));
    // 32 messages of 16 KiB fill half the stream's window.
    let m = message(&[1u8; 16_379]);
    for _ in 0..32 {
        feed(&mut c, &data(id, &m, false));
    }
    assert!(
        !c.has_output(),
        "nothing given back before the application reads"
    );
    for _ in 0..15 {
        assert!(matches!(c.next(id), Next::Message(_)));
    }
    assert!(!c.has_output());
    assert!(matches!(c.next(id), Next::Message(_)));
    let out = frames(&c.take_output());
    assert_eq!(out.len(), 1);
    assert_eq!(
        frame::parse(&out[0].0, &out[0].1).unwrap(),
        Frame::WindowUpdate {
            stream: id,
            increment: 16 * 16_384
        }
    );
}

#[test]
fn a_stream_nobody_reads_holds_no_more_than_its_window() {
    let mut c = ready(&[]);
    let id = open(&mut c);
    feed(&mut c, &headers(id, head_block(), false));
    let m = message(&[1u8; 16_379]);
    for _ in 0..64 {
        feed(&mut c, &data(id, &m, false));
    }
    assert!(!c.has_output());
    // One byte past the window is the server's error on that stream.
    feed(&mut c, &data(id, &[0], false));
    assert_eq!(kinds(&mut c), vec![(kind::RST_STREAM, id)]);
    for _ in 0..64 {
        assert!(matches!(c.next(id), Next::Message(_)));
    }
    assert_eq!(status(&mut c, id).code, Code::Internal);
}

#[test]
fn the_connection_window_comes_back_as_streams_are_read() {
    let mut c = ready(&[]);
    let m = message(&[1u8; 16_379]);
    let mut ids = Vec::new();
    // 17 streams of 1 MiB each: past a quarter of the connection's window.
    for _ in 0..17 {
        let id = open(&mut c);
        feed(&mut c, &headers(id, head_block(), false));
        for _ in 0..64 {
            feed(&mut c, &data(id, &m, false));
        }
        ids.push(id);
    }
    assert!(!c.has_output());
    let mut conn_updates = 0;
    for id in ids {
        while let Next::Message(_) = c.next(id) {}
        for (h, p) in frames(&c.take_output()) {
            if let Frame::WindowUpdate {
                stream: 0,
                increment,
            } = frame::parse(&h, &p).unwrap()
            {
                assert_eq!(increment, CONN_WINDOW / 4);
                conn_updates += 1;
            }
        }
    }
    assert_eq!(conn_updates, 1);
}

#[test]
fn a_message_larger_than_the_window_still_arrives() {
    let mut c = ready(&[]);
    let id = c
        .open(&request_head("h:1", "/s/M", None, &[]), true, 4 << 20)
        .unwrap()
        .unwrap();
    c.take_output();
    feed(&mut c, &headers(id, head_block(), false));
    let big = message(&vec![3u8; (1 << 20) + (1 << 19)]);
    let mut sent = 0;
    let mut window = STREAM_WINDOW as usize;
    while sent < big.len() {
        let n = (big.len() - sent).min(16_384).min(window);
        assert!(n > 0, "the client stopped giving window back at {sent}");
        feed(&mut c, &data(id, &big[sent..sent + n], false));
        sent += n;
        window -= n;
        for (h, p) in frames(&c.take_output()) {
            if let Frame::WindowUpdate { stream, increment } = frame::parse(&h, &p).unwrap() {
                if stream == id {
                    window += increment as usize;
                }
            }
        }
    }
    match c.next(id) {
        Next::Message(m) => assert_eq!(m.len(), (1 << 20) + (1 << 19)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn oversized_and_compressed_messages_fail_the_call() {
    let mut c = ready(&[]);
    let id = c
        .open(&request_head("h:1", "/s/M", None, &[]), true, 10)
        .unwrap()
        .unwrap();
    c.take_output();
    let mut input = headers(id, head_block(), false);
    input.extend(data(id, &message(b"small"), false));
    input.extend(data(id, &message(&[0u8; 11]), false));
    feed(&mut c, &input);
    assert_eq!(kinds(&mut c), vec![(kind::RST_STREAM, id)]);
    assert_eq!(c.next(id), Next::Message(b"small".to_vec()));
    let s = status(&mut c, id);
    assert_eq!(s.code, Code::ResourceExhausted);
    assert!(s.message.contains("11 bytes"), "{s:?}");

    let id = open(&mut c);
    let mut input = headers(id, head_block(), false);
    input.extend(data(id, &[1, 0, 0, 0, 1, 0], false));
    feed(&mut c, &input);
    assert_eq!(status(&mut c, id).code, Code::Internal);
}

#[test]
fn the_servers_stream_limit_holds_new_calls_back() {
    let mut c = ready(&[(setting::MAX_CONCURRENT_STREAMS, 1)]);
    let head = request_head("h:1", "/s/M", None, &[]);
    let first = c.open(&head, true, 1024).unwrap().unwrap();
    assert_eq!(c.open(&head, true, 1024), Ok(None));
    feed(
        &mut c,
        &headers(first, head_block().literal(b"grpc-status", b"0"), true),
    );
    assert!(c.take_wakes().slots);
    // Ended but not yet let go of: it no longer counts.
    assert_eq!(c.open(&head, true, 1024), Ok(Some(3)));
}

#[test]
fn letting_go_of_a_running_call_resets_it_and_frees_what_it_held() {
    let mut c = ready(&[]);
    let id = open(&mut c);
    feed(&mut c, &headers(id, head_block(), false));
    for _ in 0..60 {
        feed(&mut c, &data(id, &message(&[0u8; 16_379]), false));
    }
    c.forget(id);
    assert_eq!(kinds(&mut c), vec![(kind::RST_STREAM, id)]);
    assert!(c.take_wakes().slots);
    // Frames already in flight are dropped, their bytes counted back.
    feed(&mut c, &data(id, &message(&[0u8; 16_379]), false));
    assert!(!c.has_output());
    assert!(c.lost().is_none());
}

#[test]
fn a_deadline_cancels_the_call_after_what_already_arrived() {
    let mut c = ready(&[]);
    let id = open(&mut c);
    let mut input = headers(id, head_block(), false);
    input.extend(data(id, &message(b"early"), false));
    feed(&mut c, &input);
    c.cancel(id, Status::new(Code::DeadlineExceeded, "deadline exceeded"));
    assert_eq!(kinds(&mut c), vec![(kind::RST_STREAM, id)]);
    assert_eq!(c.next(id), Next::Message(b"early".to_vec()));
    assert_eq!(status(&mut c, id).code, Code::DeadlineExceeded);
    // The server's late status does not replace it.
    feed(&mut c, &headers(id, trailer_block(Code::Ok, ""), true));
    assert_eq!(status(&mut c, id).code, Code::DeadlineExceeded);
    c.forget(id);
    assert!(!c.has_output());
}

#[test]
fn protocol_errors_by_the_server_end_the_call_or_the_connection() {
    // DATA before the response headers: that stream.
    let mut c = ready(&[]);
    let id = open(&mut c);
    feed(&mut c, &data(id, &message(b"x"), false));
    assert_eq!(kinds(&mut c), vec![(kind::RST_STREAM, id)]);
    assert_eq!(status(&mut c, id).code, Code::Internal);
    // Trailers without END_STREAM: that stream.
    let id = open(&mut c);
    feed(&mut c, &headers(id, head_block(), false));
    feed(&mut c, &headers(id, trailer_block(Code::Ok, ""), false));
    assert_eq!(kinds(&mut c), vec![(kind::RST_STREAM, id)]);
    assert_eq!(status(&mut c, id).code, Code::Internal);
    // A stream ended without trailers.
    let id = open(&mut c);
    feed(&mut c, &headers(id, head_block(), false));
    feed(&mut c, &data(id, &message(b"x"), true));
    assert_eq!(c.next(id), Next::Message(b"x".to_vec()));
    assert_eq!(status(&mut c, id).code, Code::Internal);
    // DATA on a stream never opened: the connection.
    feed(&mut c, &data(101, b"x", false));
    assert!(c.lost().unwrap().contains("idle stream"));
    assert_eq!(kinds(&mut c), vec![(kind::GOAWAY, 0)]);
    assert_eq!(
        status(&mut c, id).code,
        Code::Internal,
        "a call over keeps its status"
    );
}
