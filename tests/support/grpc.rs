//! gRPC helpers: grpcio clients with deadlines on connections of their
//! own, status accessors, and a raw HTTP/2 subscriber.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use futures_executor::block_on;
use futures_util::StreamExt;
use grpcio::{CallOption, ChannelBuilder};

use streamhub::proto::chat;
use streamhub::proto::services::ChatServiceClient;

use super::Server;

/// Every call a test makes ends within this, whatever the server does.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

impl Server {
    /// A client on its own connection.
    pub fn client(&self) -> ChatServiceClient {
        let channel = ChannelBuilder::new(self.env.clone())
            // Separate connections per client, so one stuck stream's flow
            // control does not hold up the others.
            .raw_cfg_int(
                std::ffi::CString::new("grpc.use_local_subchannel_pool").unwrap(),
                1,
            )
            .raw_cfg_int(
                std::ffi::CString::new("streamhub.test.unique").unwrap(),
                super::unique() as i32,
            )
            .connect(&self.grpc_addr);
        ChatServiceClient::new(channel)
    }
}

pub fn opt() -> CallOption {
    CallOption::default().timeout(CALL_TIMEOUT)
}

pub fn send(
    client: &ChatServiceClient,
    room: &str,
    user: &str,
    content: &str,
) -> grpcio::Result<chat::SendMessageResponse> {
    let mut req = chat::SendMessageRequest::new();
    req.room = room.into();
    req.user = user.into();
    req.content = content.into();
    client.send_message_opt(&req, opt())
}

pub fn subscribe_req(room: &str, user: &str) -> chat::SubscribeRequest {
    let mut req = chat::SubscribeRequest::new();
    req.room = room.into();
    req.user = user.into();
    req
}

/// Subscribes and waits for the welcome, after which the subscription is
/// registered (the server sends it only then); with a user name, also takes
/// the subscriber's own JOIN.
pub fn subscribe(
    client: &ChatServiceClient,
    room: &str,
    user: &str,
) -> grpcio::ClientSStreamReceiver<chat::Message> {
    let mut stream = client
        .subscribe_messages_opt(&subscribe_req(room, user), opt())
        .expect("subscribe");
    let welcome = next(&mut stream).expect("welcome arrives");
    assert_eq!(
        welcome.type_.enum_value_or_default(),
        chat::MessageType::SYSTEM
    );
    if !user.is_empty() {
        let join = next(&mut stream).expect("own JOIN arrives");
        assert_eq!(join.type_.enum_value_or_default(), chat::MessageType::JOIN);
        assert_eq!(join.user, user);
    }
    stream
}

/// The next message of a stream; the call's deadline bounds the wait.
pub fn next<T>(stream: &mut grpcio::ClientSStreamReceiver<T>) -> grpcio::Result<T> {
    match block_on(stream.next()) {
        Some(r) => r,
        None => Err(grpcio::Error::RemoteStopped),
    }
}

pub fn status_code(e: &grpcio::Error) -> grpcio::RpcStatusCode {
    match e {
        grpcio::Error::RpcFailure(s) => s.code(),
        other => panic!("expected a status, got {other:?}"),
    }
}

pub fn status_message(e: &grpcio::Error) -> String {
    match e {
        grpcio::Error::RpcFailure(s) => s.message().to_string(),
        other => panic!("expected a status, got {other:?}"),
    }
}

/// A gRPC SubscribeMessages call over a raw HTTP/2 connection, so that it
/// can be killed the way a crashed client dies: the socket simply goes.
pub struct RawGrpcSubscriber {
    pub socket: TcpStream,
}

impl RawGrpcSubscriber {
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + payload.len());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// HPACK "literal header field without indexing, new name", lengths
    /// under 127 and no Huffman coding.
    fn header(out: &mut Vec<u8>, name: &str, value: &str) {
        out.push(0);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }

    /// Opens the call and reads until `messages` messages have arrived
    /// (the welcome is the first).
    pub fn subscribe(port: u16, room: &str, messages: usize) -> RawGrpcSubscriber {
        let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
        socket.set_read_timeout(Some(CALL_TIMEOUT)).unwrap();
        socket.set_write_timeout(Some(CALL_TIMEOUT)).unwrap();
        let mut headers = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/chat.ChatService/SubscribeMessages"),
            (":authority", "127.0.0.1"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            Self::header(&mut headers, name, value);
        }
        // SubscribeRequest { room } as protobuf, behind the gRPC prefix.
        let mut request = vec![0x0a, room.len() as u8];
        request.extend_from_slice(room.as_bytes());
        let mut body = vec![0];
        body.extend_from_slice(&(request.len() as u32).to_be_bytes());
        body.extend_from_slice(&request);
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(Self::frame(4, 0, 0, &[]));
        out.extend(Self::frame(1, 0x4, 1, &headers));
        out.extend(Self::frame(0, 0x1, 1, &body));
        socket.write_all(&out).unwrap();
        let mut seen = 0;
        while seen < messages {
            let mut head = [0u8; 9];
            socket.read_exact(&mut head).expect("a frame");
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            socket.read_exact(&mut payload).expect("a frame payload");
            match head[3] {
                // DATA: messages may share a frame or span two; small ones
                // here come one per frame.
                0 => seen += 1,
                // RST_STREAM or GOAWAY: refused.
                3 | 7 => panic!("the server refused the call: frame {head:?} {payload:?}"),
                // SETTINGS without ACK: acknowledge.
                4 if head[4] & 1 == 0 => socket.write_all(&Self::frame(4, 1, 0, &[])).unwrap(),
                _ => {}
            }
        }
        RawGrpcSubscriber { socket }
    }
}
