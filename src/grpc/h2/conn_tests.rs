//! The connection state machine against hand-made frames: no socket.

use std::time::{Duration, Instant};

use super::*;
use crate::grpc::h2::frame::{flag, put_data_head, put_head, put_headers};

const SEND: &str = "/chat.ChatService/SendMessage";

/// A test client: builds frames, feeds them, reads what comes out.
struct Client {
    conn: Conn,
    now: Instant,
    events: Vec<Event>,
    decoder: hpack::Decoder,
}

/// A frame the server wrote, with decoded headers for HEADERS.
#[derive(Debug)]
struct Out {
    head: Head,
    payload: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl Out {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn goaway_code(&self) -> Option<ErrorCode> {
        (self.head.kind == kind::GOAWAY).then(|| {
            ErrorCode::from_u32(u32::from_be_bytes(self.payload[4..8].try_into().unwrap()))
        })
    }

    fn rst_code(&self) -> Option<ErrorCode> {
        (self.head.kind == kind::RST_STREAM)
            .then(|| ErrorCode::from_u32(u32::from_be_bytes(self.payload[..4].try_into().unwrap())))
    }
}

fn request_block(path: &str) -> Vec<u8> {
    Block::new()
        .indexed(index::METHOD_POST)
        .indexed(index::SCHEME_HTTP)
        .named(index::PATH, path.as_bytes())
        .named(index::AUTHORITY, b"localhost")
        .named(index::CONTENT_TYPE, b"application/grpc")
        .literal(b"te", b"trailers")
        .bytes
}

impl Client {
    fn new() -> Client {
        Client::with(Limits::default())
    }

    fn with(limits: Limits) -> Client {
        let mut c = Client {
            conn: Conn::new(limits),
            now: Instant::now(),
            events: Vec::new(),
            decoder: hpack::Decoder::new(1 << 20),
        };
        let mut b = frame::PREFACE.to_vec();
        frame::put_settings(&mut b, &[]);
        c.feed(&b);
        let out = c.output();
        assert_eq!(out[0].head.kind, kind::SETTINGS);
        assert!(out
            .iter()
            .any(|f| f.head.kind == kind::SETTINGS && f.head.flags == flag::ACK));
        c
    }

    fn feed(&mut self, bytes: &[u8]) {
        let used = self.conn.receive(bytes, self.now, &mut self.events);
        assert_eq!(used, bytes.len(), "whole frames are consumed");
    }

    fn frame(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        let mut b = Vec::new();
        f(&mut b);
        self.feed(&b);
    }

    fn headers(&mut self, stream: u32, path: &str, end_stream: bool) {
        let block = request_block(path);
        self.frame(|b| put_headers(b, stream, &block, end_stream, 16_384));
    }

    fn data(&mut self, stream: u32, bytes: &[u8], end_stream: bool) {
        self.frame(|b| {
            put_data_head(b, stream, bytes.len(), end_stream);
            b.extend_from_slice(bytes);
        });
    }

    fn message(&mut self, stream: u32, message: &[u8], end_stream: bool) {
        let mut m = Vec::new();
        g::put_message(&mut m, message);
        self.data(stream, &m, end_stream);
    }

    fn output(&mut self) -> Vec<Out> {
        let mut bytes = Vec::new();
        self.conn.take_output(&mut bytes);
        let mut frames = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let head = Head::parse(bytes[at..at + 9].try_into().unwrap());
            let payload = bytes[at + 9..at + 9 + head.len as usize].to_vec();
            at += 9 + head.len as usize;
            let mut headers = Vec::new();
            if head.kind == kind::HEADERS {
                self.decoder
                    .decode(&payload, |n, v| {
                        headers.push((
                            String::from_utf8_lossy(n).into_owned(),
                            String::from_utf8_lossy(v).into_owned(),
                        ))
                    })
                    .unwrap();
            }
            frames.push(Out {
                head,
                payload,
                headers,
            });
        }
        frames
    }

    fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

#[test]
fn a_unary_call_goes_request_message_end_then_headers_data_trailers() {
    let mut c = Client::new();
    c.headers(1, SEND, false);
    c.message(1, b"hi", true);
    let events = c.take_events();
    assert!(
        matches!(&events[0], Event::Request { stream: 1, head, end_stream: false } if head.path == SEND)
    );
    assert!(matches!(&events[1], Event::Message { stream: 1, bytes } if bytes == b"hi"));
    assert!(matches!(&events[2], Event::EndOfInput { stream: 1 }));
    assert_eq!(c.conn.send(1, [Chunk::message(b"answer")]), Some(11));
    c.conn.finish(1, &Status::ok());
    let out = c.output();
    let kinds: Vec<u8> = out.iter().map(|f| f.head.kind).collect();
    assert_eq!(kinds, [kind::HEADERS, kind::DATA, kind::HEADERS]);
    assert_eq!(out[0].header(":status"), Some("200"));
    assert_eq!(out[0].header("content-type"), Some("application/grpc"));
    assert_eq!(
        out[1].payload,
        [0, 0, 0, 0, 6, b'a', b'n', b's', b'w', b'e', b'r']
    );
    assert_eq!(out[2].head.flags & flag::END_STREAM, flag::END_STREAM);
    assert_eq!(out[2].header("grpc-status"), Some("0"));
    // Both sides closed: the stream is forgotten.
    assert_eq!(c.conn.open_streams(), 0);
}

#[test]
fn an_error_without_data_is_one_trailers_only_headers_frame() {
    let mut c = Client::new();
    c.headers(1, SEND, true);
    c.conn
        .finish(1, &Status::new(Code::InvalidArgument, "room 50% \"bad\"\n"));
    let out = c.output();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].head.flags & flag::END_STREAM, flag::END_STREAM);
    assert_eq!(out[0].header(":status"), Some("200"));
    assert_eq!(out[0].header("grpc-status"), Some("3"));
    assert_eq!(out[0].header("grpc-message"), Some("room 50%25 \"bad\"%0A"));
}

#[test]
fn data_waits_for_the_clients_window_and_goes_on_after_an_update() {
    let mut c = Client::new();
    c.frame(|b| frame::put_settings(b, &[(setting::INITIAL_WINDOW_SIZE, 10)]));
    c.output();
    c.headers(1, SEND, true);
    c.conn.send(1, [Chunk::message(&[7u8; 20])]);
    let out = c.output();
    assert_eq!(out[1].head.kind, kind::DATA);
    assert_eq!(out[1].payload.len(), 10);
    assert!(!c.conn.has_output());
    c.frame(|b| frame::put_window_update(b, 1, 100));
    let out = c.output();
    assert_eq!(out[0].head.kind, kind::DATA);
    assert_eq!(out[0].payload.len(), 15);
}

#[test]
fn a_new_initial_window_moves_every_window_by_the_difference_even_below_zero() {
    let mut c = Client::new();
    c.frame(|b| frame::put_settings(b, &[(setting::INITIAL_WINDOW_SIZE, 10)]));
    c.headers(1, SEND, true);
    c.conn.send(1, [Chunk::message(&[7u8; 20])]);
    assert_eq!(
        c.output()
            .iter()
            .filter(|f| f.head.kind == kind::DATA)
            .count(),
        1
    );
    // 10 - 10 = 0, then 0 - 10: below zero; an update of 5 leaves it there.
    c.frame(|b| frame::put_settings(b, &[(setting::INITIAL_WINDOW_SIZE, 0)]));
    c.frame(|b| frame::put_window_update(b, 1, 5));
    assert!(c.output().iter().all(|f| f.head.kind != kind::DATA));
    c.frame(|b| frame::put_settings(b, &[(setting::INITIAL_WINDOW_SIZE, 1000)]));
    let out = c.output();
    let data: Vec<&Out> = out.iter().filter(|f| f.head.kind == kind::DATA).collect();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0].payload.len(), 15);
}

#[test]
fn many_messages_share_data_frames_up_to_the_frame_size() {
    let mut c = Client::new();
    c.headers(1, SEND, true);
    let chunks: Vec<Chunk> = (0..1000).map(|_| Chunk::message(&[1u8; 95])).collect();
    c.conn.send(1, chunks);
    let out = c.output();
    let data: Vec<&Out> = out.iter().filter(|f| f.head.kind == kind::DATA).collect();
    // 100,000 bytes in 16 KiB frames, within the 64 KiB default window.
    assert_eq!(data.len(), 4);
    assert!(data.iter().all(|f| f.payload.len() <= 16_384));
    assert_eq!(data.iter().map(|f| f.payload.len()).sum::<usize>(), 65_535);
}

/// A feed over a shared list: the test plays the room.
struct ListFeed(Arc<parking_lot::Mutex<(VecDeque<Vec<u8>>, bool)>>);

impl Feed for ListFeed {
    fn pull(&mut self, budget: usize, queue: &mut VecDeque<Chunk>) -> (usize, bool) {
        let mut room = self.0.lock();
        let mut taken = 0;
        while taken < budget {
            let Some(m) = room.0.pop_front() else { break };
            taken += m.len() + g::PREFIX_LEN;
            queue.push_back(Chunk::message(&m));
        }
        (taken, room.1 && room.0.is_empty())
    }
}

#[test]
fn a_fed_stream_is_written_from_its_feed_within_the_window_and_its_thread_woken_at_the_end() {
    let mut c = Client::new();
    c.frame(|b| frame::put_settings(b, &[(setting::INITIAL_WINDOW_SIZE, 100)]));
    c.output();
    c.headers(1, SEND, true);
    let room = Arc::new(parking_lot::Mutex::new((VecDeque::new(), false)));
    let (waker, woken) = crossbeam_channel::bounded(1);
    c.conn.set_waker(1, waker);
    c.conn.send(1, [Chunk::message(b"welcome")]);
    assert!(c.conn.follow(1, Box::new(ListFeed(room.clone()))).is_ok());
    assert!(c.conn.following(1));
    // A second feed on the same stream is given back.
    assert!(c.conn.follow(1, Box::new(ListFeed(room.clone()))).is_err());
    room.lock().0.extend((0..20u8).map(|i| vec![i; 15]));
    let out = c.output();
    let data: Vec<&Out> = out.iter().filter(|f| f.head.kind == kind::DATA).collect();
    // The welcome first, then messages up to the 100-byte window; the rest
    // stays in the room (the feed is pulled no further than the window).
    assert_eq!(&data[0].payload[5..12], b"welcome");
    assert_eq!(data.iter().map(|f| f.payload.len()).sum::<usize>(), 100);
    assert!(room.lock().0.len() >= 14, "{} left", room.lock().0.len());
    assert!(woken.try_recv().is_err());
    // The window opens: the writer takes the rest without anyone queueing.
    c.frame(|b| frame::put_window_update(b, 1, 10_000));
    let more: usize = c
        .output()
        .iter()
        .filter(|f| f.head.kind == kind::DATA)
        .map(|f| f.payload.len())
        .sum();
    assert_eq!(12 + 20 * 20, 100 + more);
    assert!(room.lock().0.is_empty());
    // The room ends the feed: the stream's thread is woken and takes it back.
    room.lock().1 = true;
    c.output();
    assert!(woken.try_recv().is_ok());
    assert!(!c.conn.following(1));
    assert!(c.conn.unfollow(1).is_some());
    c.conn.finish(1, &Status::ok());
    let out = c.output();
    assert_eq!(out[0].header("grpc-status"), Some("0"));
}

#[test]
fn a_fed_stream_reset_by_the_client_drops_its_feed_and_wakes_its_thread() {
    let mut c = Client::new();
    c.headers(1, SEND, true);
    let room = Arc::new(parking_lot::Mutex::new((VecDeque::new(), false)));
    let (waker, woken) = crossbeam_channel::bounded(1);
    c.conn.set_waker(1, waker);
    assert!(c.conn.follow(1, Box::new(ListFeed(room.clone()))).is_ok());
    c.frame(|b| frame::put_rst_stream(b, 1, ErrorCode::Cancel));
    assert!(woken.try_recv().is_ok());
    assert!(!c.conn.following(1));
    assert!(c.conn.unfollow(1).is_none());
    // The feed went with the stream.
    assert_eq!(Arc::strong_count(&room), 1);
    room.lock().0.push_back(b"late".to_vec());
    assert!(c.output().iter().all(|f| f.head.kind != kind::DATA));
}

#[test]
fn rapid_reset_ends_the_connection_with_enhance_your_calm() {
    let mut c = Client::new();
    let mut stream = 1;
    while !c.conn.is_closing() {
        assert!(stream < 20_000, "never calmed");
        c.headers(stream, SEND, false);
        c.frame(|b| frame::put_rst_stream(b, stream, ErrorCode::Cancel));
        stream += 2;
    }
    assert_eq!(c.conn.flood, Some(Flood::RapidReset));
    let out = c.output();
    assert_eq!(
        out.last().unwrap().goaway_code(),
        Some(ErrorCode::EnhanceYourCalm)
    );
    assert_eq!(c.conn.open_streams(), 0);
}

#[test]
fn a_client_that_resets_now_and_then_is_served() {
    let mut c = Client::new();
    for i in 0..5_000u32 {
        let stream = 2 * i + 1;
        c.headers(stream, SEND, false);
        c.frame(|b| frame::put_rst_stream(b, stream, ErrorCode::Cancel));
        c.now += Duration::from_millis(10);
    }
    assert!(!c.conn.is_closing());
}

#[test]
fn ping_settings_and_empty_frame_floods_are_calmed() {
    type Write = fn(&mut Vec<u8>, u32);
    let floods: [(Flood, Write); 4] = [
        (Flood::Ping, |b, _| frame::put_ping(b, false, [0; 8])),
        (Flood::Settings, |b, _| frame::put_settings(b, &[])),
        (Flood::EmptyFrames, |b, _| put_data_head(b, 1, 0, false)),
        (Flood::WindowUpdate, |b, _| {
            frame::put_window_update(b, 0, 1)
        }),
    ];
    for (flood, write) in floods {
        let mut c = Client::new();
        c.headers(1, SEND, false);
        let mut n = 0;
        while !c.conn.is_closing() {
            assert!(n < 100_000, "{flood:?} never calmed");
            c.frame(|b| write(b, n));
            n += 1;
            // Answers do not pile up: the writer takes them.
            if n % 64 == 0 {
                c.output();
            }
        }
        assert_eq!(c.conn.flood, Some(flood), "{flood:?}");
        assert_eq!(
            c.output().last().unwrap().goaway_code(),
            Some(ErrorCode::EnhanceYourCalm)
        );
    }
}

#[test]
fn an_endless_continuation_is_cut_off() {
    let mut c = Client::new();
    let block = request_block(SEND);
    c.frame(|b| {
        put_head(b, block.len(), kind::HEADERS, 0, 1);
        b.extend_from_slice(&block);
    });
    let mut n = 0;
    while !c.conn.is_closing() {
        assert!(n <= MAX_CONTINUATIONS);
        c.frame(|b| {
            put_head(b, 16_000, kind::CONTINUATION, 0, 1);
            b.extend_from_slice(&[0x40; 16_000]);
        });
        n += 1;
    }
    assert_eq!(c.conn.flood, Some(Flood::Continuation));
    // Empty CONTINUATION frames are counted too.
    let mut c = Client::new();
    c.frame(|b| {
        put_head(b, block.len(), kind::HEADERS, 0, 1);
        b.extend_from_slice(&block);
    });
    for _ in 0..=MAX_CONTINUATIONS {
        c.frame(|b| put_head(b, 0, kind::CONTINUATION, 0, 1));
    }
    assert!(c.conn.is_closing());
}

#[test]
fn headers_larger_than_the_limit_get_resource_exhausted() {
    let mut c = Client::new();
    let big = "t".repeat(20_000);
    let mut block = request_block(SEND);
    block.extend(Block::new().literal(b"authorization", big.as_bytes()).bytes);
    // Sent in frames of 10,000: decoded, and only the stream refused.
    c.frame(|b| put_headers(b, 1, &block, true, 10_000));
    assert_eq!(c.output().last().unwrap().header("grpc-status"), Some("8"));
    assert!(!c.conn.is_closing());

    let mut c = Client::new();
    // A small block that decodes to a large list (an HPACK bomb).
    let mut bomb = request_block(SEND);
    bomb.extend(Block::new().bytes);
    let mut add = vec![0x40];
    add.push(4);
    add.extend_from_slice(b"bomb");
    add.extend_from_slice(&[0x7f, 0xa1, 0x1e]); // 4,000
    add.extend(std::iter::repeat_n(b'b', 4000));
    bomb.extend_from_slice(&add);
    bomb.extend(std::iter::repeat_n(0x80 | 62, 10));
    c.frame(|b| put_headers(b, 1, &bomb, true, 16_384));
    let out = c.output();
    let last = out.last().unwrap();
    assert_eq!(last.header("grpc-status"), Some("8"), "{out:?}");
    assert!(!c.conn.is_closing());
    // The table stayed in step: the next request decodes.
    c.headers(3, SEND, true);
    assert!(c
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::Request { stream: 3, .. })));
}

#[test]
fn streams_past_the_limit_are_refused() {
    let mut c = Client::with(Limits {
        max_streams: 2,
        ..Limits::default()
    });
    c.headers(1, SEND, false);
    c.headers(3, SEND, false);
    c.headers(5, SEND, false);
    let out = c.output();
    assert_eq!(
        out.last().unwrap().rst_code(),
        Some(ErrorCode::RefusedStream)
    );
    assert_eq!(out.last().unwrap().head.stream, 5);
    assert_eq!(c.conn.open_streams(), 2);
}

#[test]
fn stream_state_rules() {
    // DATA on a stream never opened: connection error.
    let mut c = Client::new();
    c.data(1, b"x", false);
    assert_eq!(
        c.output().last().unwrap().goaway_code(),
        Some(ErrorCode::ProtocolError)
    );
    // DATA after END_STREAM: STREAM_CLOSED.
    let mut c = Client::new();
    c.headers(1, SEND, true);
    c.data(1, b"x", false);
    assert_eq!(
        c.output().last().unwrap().rst_code(),
        Some(ErrorCode::StreamClosed)
    );
    // Even ids, and ids that go backwards.
    let mut c = Client::new();
    c.headers(2, SEND, true);
    assert_eq!(
        c.output().last().unwrap().goaway_code(),
        Some(ErrorCode::ProtocolError)
    );
    let mut c = Client::new();
    c.headers(5, SEND, true);
    c.headers(3, SEND, true);
    assert!(c.conn.is_closing());
    // Another frame in the middle of a header block.
    let mut c = Client::new();
    let block = request_block(SEND);
    c.frame(|b| {
        put_head(b, block.len(), kind::HEADERS, 0, 1);
        b.extend_from_slice(&block);
    });
    c.frame(|b| frame::put_ping(b, false, [0; 8]));
    assert_eq!(
        c.output().last().unwrap().goaway_code(),
        Some(ErrorCode::ProtocolError)
    );
    // DATA on a stream both sides ended: a stream error, not the
    // connection's.
    let mut c = Client::new();
    c.headers(1, SEND, true);
    c.conn.finish(1, &Status::ok());
    c.output();
    c.data(1, b"late", false);
    assert_eq!(
        c.output().last().unwrap().rst_code(),
        Some(ErrorCode::StreamClosed)
    );
    assert!(!c.conn.is_closing());
    // Frames on a stream we reset are ignored.
    let mut c = Client::new();
    c.headers(1, SEND, false);
    c.conn.reset(1, ErrorCode::Cancel);
    c.data(1, b"late", false);
    assert!(!c.conn.is_closing());
    assert_eq!(
        c.output().last().unwrap().rst_code(),
        Some(ErrorCode::Cancel)
    );
}

#[test]
fn malformed_requests_are_stream_errors() {
    let cases: Vec<Vec<u8>> = vec![
        // Upper-case name.
        Block::new()
            .indexed(index::METHOD_POST)
            .indexed(index::SCHEME_HTTP)
            .named(index::PATH, b"/x")
            .literal(b"Foo", b"1")
            .bytes,
        // No :path.
        Block::new()
            .indexed(index::METHOD_POST)
            .indexed(index::SCHEME_HTTP)
            .bytes,
        // A pseudo-header after a regular one.
        Block::new()
            .indexed(index::METHOD_POST)
            .literal(b"foo", b"1")
            .indexed(index::SCHEME_HTTP)
            .named(index::PATH, b"/x")
            .bytes,
        // A connection-specific header.
        Block::new()
            .indexed(index::METHOD_POST)
            .indexed(index::SCHEME_HTTP)
            .named(index::PATH, b"/x")
            .literal(b"connection", b"close")
            .bytes,
        // te other than trailers.
        Block::new()
            .indexed(index::METHOD_POST)
            .indexed(index::SCHEME_HTTP)
            .named(index::PATH, b"/x")
            .literal(b"te", b"gzip")
            .bytes,
        // An unknown pseudo-header.
        Block::new()
            .indexed(index::METHOD_POST)
            .indexed(index::SCHEME_HTTP)
            .named(index::PATH, b"/x")
            .literal(b":foo", b"1")
            .bytes,
    ];
    for block in cases {
        let mut c = Client::new();
        c.frame(|b| put_headers(b, 1, &block, true, 16_384));
        let out = c.output();
        assert_eq!(
            out.last().unwrap().rst_code(),
            Some(ErrorCode::ProtocolError),
            "{block:?}"
        );
        assert!(!c.conn.is_closing());
    }
}

#[test]
fn compressed_and_oversized_messages_get_their_status() {
    let mut c = Client::with(Limits {
        max_message: 10,
        ..Limits::default()
    });
    c.headers(1, SEND, false);
    c.data(1, &[1, 0, 0, 0, 1, 0], false);
    let out = c.output();
    assert_eq!(out[0].header("grpc-status"), Some("12"));
    c.headers(3, SEND, false);
    c.message(3, &[0; 11], true);
    let out = c.output();
    assert_eq!(out[0].header("grpc-status"), Some("8"));
}

#[test]
fn drain_sends_goaway_twice_and_closes_when_streams_are_done() {
    let mut c = Client::new();
    c.headers(1, SEND, true);
    c.conn.drain();
    let out = c.output();
    let goaway = out.iter().find(|f| f.head.kind == kind::GOAWAY).unwrap();
    assert_eq!(&goaway.payload[..4], &MAX_STREAM_ID.to_be_bytes());
    let ping = out.iter().find(|f| f.head.kind == kind::PING).unwrap();
    // A stream opened before the client saw the GOAWAY is still served.
    c.headers(3, SEND, true);
    let data: [u8; 8] = ping.payload[..].try_into().unwrap();
    c.frame(|b| frame::put_ping(b, true, data));
    let out = c.output();
    let goaway = out.iter().find(|f| f.head.kind == kind::GOAWAY).unwrap();
    assert_eq!(&goaway.payload[..4], &3u32.to_be_bytes());
    // Streams after the last are refused.
    c.headers(5, SEND, true);
    assert_eq!(
        c.output().last().unwrap().rst_code(),
        Some(ErrorCode::RefusedStream)
    );
    assert!(!c.conn.is_closing());
    c.conn.finish(1, &Status::ok());
    c.conn.finish(3, &Status::ok());
    c.output();
    assert!(c.conn.is_closing());
}

#[test]
fn keepalive_pings_and_gives_up_on_silence() {
    let mut c = Client::with(Limits {
        keepalive: Duration::from_secs(10),
        keepalive_timeout: Duration::from_secs(5),
        ..Limits::default()
    });
    let t0 = c.now;
    assert_eq!(c.conn.tick(t0), Tick::Nothing);
    assert_eq!(c.conn.tick(t0 + Duration::from_secs(11)), Tick::Nothing);
    assert!(c.output().iter().any(|f| f.head.kind == kind::PING));
    assert_eq!(c.conn.tick(t0 + Duration::from_secs(17)), Tick::Close);
}

#[test]
fn client_streams_get_window_back_as_their_call_takes_messages() {
    let mut c = Client::with(Limits {
        stream_window: 100,
        ..Limits::default()
    });
    c.headers(1, "/chat.ChatService/UploadMessages", false);
    c.message(1, &[0; 95], false);
    // The call has not taken it: the window is spent.
    c.message(1, &[0; 1], false);
    assert_eq!(
        c.output().last().unwrap().rst_code(),
        Some(ErrorCode::FlowControlError)
    );
    let mut c = Client::with(Limits {
        stream_window: 100,
        ..Limits::default()
    });
    c.headers(1, "/chat.ChatService/UploadMessages", false);
    c.message(1, &[0; 95], false);
    c.conn.release(1, 100);
    let out = c.output();
    assert!(out
        .iter()
        .any(|f| f.head.kind == kind::WINDOW_UPDATE && f.head.stream == 1));
    c.message(1, &[0; 95], false);
    assert!(!c.conn.is_closing());
}

#[test]
fn a_message_larger_than_the_window_still_arrives() {
    let mut c = Client::with(Limits {
        stream_window: 100,
        ..Limits::default()
    });
    c.headers(1, SEND, false);
    c.output();
    let mut m = Vec::new();
    g::put_message(&mut m, &[9; 295]);
    let pieces: Vec<&[u8]> = m.chunks(50).collect();
    for (i, piece) in pieces.iter().enumerate() {
        c.data(1, piece, false);
        // Each piece of an unfinished message is given back at once; the
        // last completes it, and its window waits for the call.
        let updated = c
            .output()
            .iter()
            .any(|f| f.head.kind == kind::WINDOW_UPDATE && f.head.stream == 1);
        assert_eq!(updated, i + 1 < pieces.len(), "piece {i}");
    }
    let events = c.take_events();
    assert!(matches!(&events[1], Event::Message { bytes, .. } if bytes.len() == 295));
    assert!(!c.conn.is_closing());
}

#[test]
fn a_request_that_is_not_grpc_gets_415_once_it_is_complete() {
    let mut c = Client::new();
    let block = Block::new()
        .indexed(2) // :method GET
        .indexed(index::SCHEME_HTTP)
        .named(index::PATH, b"/")
        .bytes;
    c.frame(|b| put_headers(b, 1, &block, false, 16_384));
    // Not answered while the request is still open: it counts as open.
    assert!(c.output().is_empty());
    assert_eq!(c.conn.open_streams(), 1);
    c.data(1, b"any body at all", true);
    let out = c.output();
    assert_eq!(out[0].header(":status"), Some("415"));
    assert_eq!(out[1].head.kind, kind::DATA);
    assert_eq!(out[1].head.flags & flag::END_STREAM, flag::END_STREAM);
    assert!(String::from_utf8_lossy(&out[1].payload).contains("HTTP port"));
    assert!(c.take_events().is_empty(), "the server never sees it");
    assert_eq!(c.conn.open_streams(), 0);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A frame a client might send, good or bad.
    fn any_frame() -> impl Strategy<Value = Vec<u8>> {
        (
            0u8..12,
            any::<u8>(),
            0u32..12,
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(kind, flags, stream, payload)| {
                let mut b = Vec::new();
                put_head(&mut b, payload.len(), kind, flags, stream);
                b.extend_from_slice(&payload);
                b
            })
    }

    /// A frame that is likely valid, so sequences get deep into the state
    /// machine.
    fn good_frame() -> impl Strategy<Value = Vec<u8>> {
        (
            0u8..8,
            0u32..6,
            proptest::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(|(what, s, body)| {
                let stream = 2 * s + 1;
                let mut b = Vec::new();
                match what {
                    0 => put_headers(&mut b, stream, &request_block(SEND), false, 16_384),
                    1 => put_headers(&mut b, stream, &request_block(SEND), true, 16_384),
                    2 => {
                        let mut m = Vec::new();
                        g::put_message(&mut m, &body);
                        put_data_head(&mut b, stream, m.len(), body.len() % 2 == 0);
                        b.extend_from_slice(&m);
                    }
                    3 => frame::put_rst_stream(&mut b, stream, ErrorCode::Cancel),
                    4 => frame::put_window_update(&mut b, stream % 3, 1 + body.len() as u32),
                    5 => frame::put_ping(&mut b, false, [0; 8]),
                    6 => frame::put_settings(
                        &mut b,
                        &[(setting::INITIAL_WINDOW_SIZE, body.len() as u32)],
                    ),
                    _ => frame::put_head(&mut b, 0, kind::PRIORITY, 0, stream),
                }
                b
            })
    }

    proptest! {
        #[test]
        fn random_frames_never_panic_and_buffers_stay_bounded(
            frames in proptest::collection::vec(prop_oneof![any_frame(), good_frame(), good_frame()], 0..200),
            answer in any::<bool>(),
        ) {
            let mut c = Client::new();
            let mut input = Vec::new();
            for f in &frames {
                input.extend_from_slice(f);
            }
            // Fed in uneven pieces, as a socket would.
            let mut at = 0;
            let mut pending: Vec<u8> = Vec::new();
            while at < input.len() {
                let n = (input.len() - at).min(7 + at % 50);
                pending.extend_from_slice(&input[at..at + n]);
                at += n;
                let used = c.conn.receive(&pending, c.now, &mut c.events);
                pending.drain(..used);
                prop_assert!(pending.len() < c.conn.max_frame_bytes());
                for e in c.events.drain(..) {
                    if let (Event::Request { stream, .. }, true) = (&e, answer) {
                        c.conn.send(*stream, [Chunk::message(b"r")]);
                        c.conn.finish(*stream, &Status::ok());
                    }
                }
                let mut out = Vec::new();
                c.conn.take_output(&mut out);
                prop_assert!(out.len() <= 2 * MAX_PASS_BYTES);
                prop_assert!(c.conn.open_streams() <= Limits::default().max_streams as usize);
            }
        }
    }
}
