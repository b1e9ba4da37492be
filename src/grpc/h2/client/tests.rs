//! The client over real sockets, against a tiny h2c server in the test: a
//! thread per connection that answers a few paths, built from `frame`,
//! `hpack` and `grpc` and nothing of the real server.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::*;
use crate::grpc::h2::frame::{self, flag, kind, ErrorCode, Frame, Head};
use crate::grpc::h2::grpc::Deframer;
use crate::grpc::h2::hpack::{self, index, Block};

const WAIT: Duration = Duration::from_secs(10);

/// Starts the tiny server; returns its address.
fn tiny_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let socket = socket.unwrap();
            std::thread::spawn(move || TinyConn::new(socket).run());
        }
    });
    addr
}

struct TinyStream {
    path: String,
    metadata: Vec<(String, String)>,
    deframer: Deframer,
    requests: Vec<Vec<u8>>,
    headers_sent: bool,
}

struct TinyConn {
    socket: TcpStream,
    decoder: hpack::Decoder,
    streams: HashMap<u32, TinyStream>,
}

impl TinyConn {
    fn new(socket: TcpStream) -> TinyConn {
        TinyConn {
            socket,
            decoder: hpack::Decoder::new(64 * 1024),
            streams: HashMap::new(),
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        let _ = self.socket.write_all(bytes);
    }

    fn run(mut self) {
        let mut preface = [0u8; 24];
        if self.socket.read_exact(&mut preface).is_err() || &preface != frame::PREFACE {
            return;
        }
        let mut out = Vec::new();
        frame::put_settings(&mut out, &[(frame::setting::MAX_CONCURRENT_STREAMS, 1000)]);
        self.write(&out);
        loop {
            let mut head = [0u8; frame::HEADER_LEN];
            if self.socket.read_exact(&mut head).is_err() {
                return;
            }
            let head = Head::parse(&head);
            let mut payload = vec![0u8; head.len as usize];
            if self.socket.read_exact(&mut payload).is_err() {
                return;
            }
            if !self.frame(&head, &payload) {
                return;
            }
        }
    }

    /// False: the connection is to end.
    fn frame(&mut self, head: &Head, payload: &[u8]) -> bool {
        let mut out = Vec::new();
        match frame::parse(head, payload).expect("the client writes valid frames") {
            Frame::Settings { ack: false, .. } => frame::put_settings_ack(&mut out),
            Frame::Ping { ack: false, data } => frame::put_ping(&mut out, true, data),
            Frame::GoAway { .. } => return false,
            Frame::RstStream { stream, .. } => {
                self.streams.remove(&stream);
            }
            Frame::Headers {
                stream,
                end_stream,
                end_headers,
                block,
                ..
            } => {
                assert!(end_headers, "the test's header blocks fit one frame");
                let mut fields = Vec::new();
                self.decoder
                    .decode(block, |n, v| {
                        fields.push((
                            String::from_utf8_lossy(n).into_owned(),
                            String::from_utf8_lossy(v).into_owned(),
                        ))
                    })
                    .unwrap();
                let path = fields.iter().find(|(n, _)| n == ":path").unwrap().1.clone();
                if path == "/test/Drop" {
                    let _ = self.socket.shutdown(Shutdown::Both);
                    return false;
                }
                self.streams.insert(
                    stream,
                    TinyStream {
                        path,
                        metadata: fields,
                        deframer: Deframer::default(),
                        requests: Vec::new(),
                        headers_sent: false,
                    },
                );
                if end_stream {
                    self.answer(stream, &mut out);
                }
            }
            Frame::Data {
                stream,
                end_stream,
                data,
                flow_len,
            } => {
                if flow_len > 0 {
                    frame::put_window_update(&mut out, 0, flow_len);
                }
                if let Some(s) = self.streams.get_mut(&stream) {
                    if flow_len > 0 && !end_stream {
                        frame::put_window_update(&mut out, stream, flow_len);
                    }
                    s.deframer.push(data);
                    while let Some(m) = s.deframer.next(usize::MAX).unwrap() {
                        s.requests.push(m);
                    }
                    if s.path == "/test/Echo" {
                        // Bidirectional: each message back at once.
                        let echoes: Vec<Vec<u8>> = s.requests.drain(..).collect();
                        for m in echoes {
                            self.message(stream, &m, &mut out);
                        }
                    }
                    if end_stream {
                        self.answer(stream, &mut out);
                    }
                }
            }
            _ => {}
        }
        self.write(&out);
        true
    }

    fn message(&mut self, stream: u32, bytes: &[u8], out: &mut Vec<u8>) {
        let s = self.streams.get_mut(&stream).unwrap();
        if !s.headers_sent {
            s.headers_sent = true;
            let block = Block::new()
                .indexed(index::STATUS_200)
                .named(index::CONTENT_TYPE, b"application/grpc");
            frame::put_headers(out, stream, &block.bytes, false, 16_384);
        }
        let mut framed = Vec::new();
        g::put_message(&mut framed, bytes);
        for chunk in framed.chunks(16_384) {
            frame::put_data_head(out, stream, chunk.len(), false);
            out.extend_from_slice(chunk);
        }
    }

    fn trailers(&mut self, stream: u32, code: Code, message: &str, out: &mut Vec<u8>) {
        let s = self.streams.remove(&stream).unwrap();
        let mut block = Block::new();
        if !s.headers_sent {
            block = block
                .indexed(index::STATUS_200)
                .named(index::CONTENT_TYPE, b"application/grpc");
        }
        block = block.literal(b"grpc-status", code.number().to_string().as_bytes());
        if !message.is_empty() {
            block = block.literal(b"grpc-message", g::percent_encode(message).as_bytes());
        }
        frame::put_headers(out, stream, &block.bytes, true, 16_384);
    }

    /// The client closed its side: the answer by path.
    fn answer(&mut self, stream: u32, out: &mut Vec<u8>) {
        let s = &self.streams[&stream];
        let requests = s.requests.clone();
        match s.path.as_str() {
            "/test/Unary" => {
                self.message(stream, &requests[0], out);
                self.trailers(stream, Code::Ok, "", out);
            }
            "/test/Many" => {
                let n: usize = String::from_utf8_lossy(&requests[0]).parse().unwrap();
                for i in 0..n {
                    self.message(stream, format!("message {i}").as_bytes(), out);
                }
                self.trailers(stream, Code::Ok, "", out);
            }
            "/test/Count" => {
                let n = requests.len().to_string();
                self.message(stream, n.as_bytes(), out);
                self.trailers(stream, Code::Ok, "", out);
            }
            "/test/Meta" => {
                let text: Vec<String> = s
                    .metadata
                    .iter()
                    .filter(|(n, _)| n == "authorization" || n == "grpc-timeout")
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect();
                self.message(stream, text.join(",").as_bytes(), out);
                self.trailers(stream, Code::Ok, "", out);
            }
            "/test/Fail" => self.trailers(stream, Code::NotFound, "no room \"caf\u{e9}\"", out),
            "/test/Echo" => self.trailers(stream, Code::Ok, "", out),
            "/test/Slow" => {}
            _ => self.trailers(stream, Code::Unimplemented, "unknown path", out),
        }
    }
}

fn connect(addr: &str) -> Channel {
    Channel::connect(addr, WAIT).unwrap()
}

#[test]
fn unary_server_streaming_and_errors_over_a_socket() {
    let channel = connect(&tiny_server());
    let opts = CallOptions::default().timeout(WAIT);
    assert_eq!(
        channel.unary("/test/Unary", b"hello", &opts).unwrap(),
        b"hello"
    );
    // Larger than the server's initial windows and its frame size: the
    // client waits for the server's WINDOW_UPDATEs.
    let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    assert_eq!(channel.unary("/test/Unary", &big, &opts).unwrap(), big);

    let got: Vec<Vec<u8>> = channel
        .server_streaming("/test/Many", b"3", &opts)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        got,
        vec![
            b"message 0".to_vec(),
            b"message 1".to_vec(),
            b"message 2".to_vec()
        ]
    );

    let err = channel.unary("/test/Fail", b"", &opts).unwrap_err();
    assert_eq!(err, Status::new(Code::NotFound, "no room \"caf\u{e9}\""));
    let mut stream = channel.server_streaming("/test/Fail", b"", &opts).unwrap();
    assert_eq!(stream.next().unwrap().unwrap_err().code, Code::NotFound);
    assert!(stream.next().is_none());

    let meta = channel
        .unary(
            "/test/Meta",
            b"",
            &CallOptions::default()
                .timeout(Duration::from_secs(20))
                .metadata("Authorization", "Bearer xyz"),
        )
        .unwrap();
    // The time left when the call starts, in milliseconds.
    let meta = String::from_utf8(meta).unwrap();
    let (timeout, auth) = meta.split_once(',').unwrap();
    let ms: u64 = timeout
        .strip_prefix("grpc-timeout=")
        .unwrap()
        .strip_suffix('m')
        .unwrap()
        .parse()
        .unwrap();
    assert!((19_000..=20_000).contains(&ms), "{meta}");
    assert_eq!(auth, "authorization=Bearer xyz");
}

#[test]
fn client_streaming_and_bidirectional_calls() {
    let channel = connect(&tiny_server());
    let upload = channel
        .open("/test/Count", &CallOptions::default())
        .unwrap();
    for i in 0..50 {
        upload.send(format!("line {i}").as_bytes()).unwrap();
    }
    assert_eq!(upload.close_and_recv().unwrap(), b"50");

    let echo = channel.open("/test/Echo", &CallOptions::default()).unwrap();
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut got = Vec::new();
            while let Some(m) = echo.recv() {
                got.push(m.unwrap());
            }
            got
        });
        for i in 0..100 {
            echo.send(format!("{i}").as_bytes()).unwrap();
        }
        echo.close_send();
        let got = reader.join().unwrap();
        assert_eq!(got.len(), 100);
        assert_eq!(got[99], b"99");
    });
    assert_eq!(echo.finish(), Status::ok());

    let quiet = channel.open("/test/Echo", &CallOptions::default()).unwrap();
    assert_eq!(
        quiet.recv_timeout(Duration::from_millis(50)),
        Recv::TimedOut
    );
    quiet.send(b"x").unwrap();
    assert_eq!(quiet.recv_timeout(WAIT), Recv::Message(b"x".to_vec()));
}

#[test]
fn a_hundred_concurrent_streams_share_one_connection() {
    let channel = connect(&tiny_server());
    let opts = CallOptions::default().timeout(WAIT);
    // All open at once, then all read.
    let streams: Vec<Duplex> = (0..100)
        .map(|_| channel.open("/test/Echo", &opts).unwrap())
        .collect();
    for (i, s) in streams.iter().enumerate() {
        s.send(format!("stream {i}").as_bytes()).unwrap();
    }
    for (i, s) in streams.iter().enumerate() {
        assert_eq!(s.recv().unwrap().unwrap(), format!("stream {i}").as_bytes());
    }
    for s in streams {
        assert_eq!(s.finish(), Status::ok());
    }
    // And from many threads at once.
    std::thread::scope(|scope| {
        for t in 0..16 {
            let (channel, opts) = (&channel, &opts);
            scope.spawn(move || {
                for _ in 0..20 {
                    let n = channel
                        .server_streaming("/test/Many", b"5", opts)
                        .unwrap()
                        .count();
                    assert_eq!(n, 5);
                    let m = format!("thread {t}");
                    assert_eq!(
                        channel.unary("/test/Unary", m.as_bytes(), opts).unwrap(),
                        m.as_bytes()
                    );
                }
            });
        }
    });
}

#[test]
fn deadlines_are_enforced_here_and_a_dropped_connection_is_unavailable() {
    let addr = tiny_server();
    let channel = connect(&addr);
    let started = Instant::now();
    let err = channel
        .unary(
            "/test/Slow",
            b"",
            &CallOptions::default().timeout(Duration::from_millis(100)),
        )
        .unwrap_err();
    assert_eq!(err.code, Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_secs(5));
    // The connection is still good for the next call.
    assert_eq!(
        channel
            .unary("/test/Unary", b"ok", &CallOptions::default())
            .unwrap(),
        b"ok"
    );

    let slow = channel
        .server_streaming("/test/Slow", b"", &CallOptions::default())
        .unwrap();
    let err = channel
        .unary("/test/Drop", b"", &CallOptions::default())
        .unwrap_err();
    assert_eq!(err.code, Code::Unavailable, "{err:?}");
    let mut slow = slow;
    assert_eq!(slow.next().unwrap().unwrap_err().code, Code::Unavailable);
    assert!(channel.is_closed());
    assert_eq!(
        channel
            .unary("/test/Unary", b"", &CallOptions::default())
            .unwrap_err()
            .code,
        Code::Unavailable
    );
}

#[test]
fn connecting_to_what_is_not_an_h2c_server_fails() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let (mut first, _) = listener.accept().unwrap();
        let _ = first.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        // The second one never answers.
        let (_second, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_secs(2));
    });
    let err = Channel::connect(&addr, WAIT).unwrap_err();
    assert!(err.to_string().contains("not an HTTP/2 server"), "{err}");
    let err = Channel::connect(&addr, Duration::from_millis(200)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
}

#[test]
fn chat_paths_are_the_generated_methods() {
    use crate::proto::services::chat::ChatServiceMethod;
    for (path, client_streams, server_streams) in [
        (chat_paths::SEND_MESSAGE, false, false),
        (chat_paths::SUBSCRIBE_MESSAGES, false, true),
        (chat_paths::UPLOAD_MESSAGES, true, false),
        (chat_paths::CHAT, true, true),
        (chat_paths::STREAM_METRICS, false, true),
    ] {
        let method = ChatServiceMethod::of(path).unwrap_or_else(|| panic!("{path}"));
        assert_eq!(method.client_streams(), client_streams, "{path}");
        assert_eq!(method.server_streams(), server_streams, "{path}");
    }
    assert_eq!(ChatServiceMethod::ALL.len(), 5);
}

#[test]
fn frames_of_one_call_are_written_in_order() {
    // HEADERS reach the server in stream id order even when many threads
    // open calls at once (a server must reject a lower id after a higher).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut preface = [0u8; 24];
        s.read_exact(&mut preface).unwrap();
        let mut out = Vec::new();
        frame::put_settings(&mut out, &[]);
        s.write_all(&out).unwrap();
        let mut last = 0;
        let mut opened = 0;
        while opened < 400 {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).unwrap();
            let head = Head::parse(&head);
            let mut payload = vec![0u8; head.len as usize];
            s.read_exact(&mut payload).unwrap();
            if head.kind == kind::HEADERS {
                assert!(head.stream > last, "stream {} after {last}", head.stream);
                assert_eq!(head.flags & flag::END_HEADERS, flag::END_HEADERS);
                last = head.stream;
                opened += 1;
            }
        }
        let mut out = Vec::new();
        frame::put_goaway(&mut out, last, ErrorCode::NoError, b"");
        s.write_all(&out).unwrap();
    });
    let channel = connect(&addr);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                let calls: Vec<Duplex> = (0..50)
                    .map(|_| channel.open("/x/Y", &CallOptions::default()).unwrap())
                    .collect();
                drop(calls);
            });
        }
    });
    server.join().unwrap();
}
