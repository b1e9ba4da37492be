//! gRPC helpers over streamhub's own blocking h2c client
//! (`streamhub::grpc::h2::client`): a client per connection, every call
//! under [`CALL_TIMEOUT`] and every wait bounded, messages typed, and a
//! raw HTTP/2 subscriber that can be killed the way a crashed client dies.
//! A call's end is a [`Status`]: its `code` and `message` are the status
//! accessors.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub use streamhub::grpc::call::{Code, Status};
pub use streamhub::grpc::h2::client::{
    decode, encode, CallOptions, Channel, ChatClient, Duplex, Messages, Recv, Stream,
};
use streamhub::proto::chat;

use super::Server;

/// Every call a test makes ends within this, whatever the server does: it
/// is each call's deadline (sent as `grpc-timeout` and enforced by the
/// client too), and no single wait lasts longer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

impl Server {
    /// A client on its own connection, its calls under [`CALL_TIMEOUT`].
    pub fn client(&self) -> ChatClient {
        connect(&self.grpc_addr)
    }

    /// A connection of its own, for calls of any service.
    pub fn channel(&self) -> Channel {
        channel(&self.grpc_addr)
    }
}

/// A new connection to `addr` (`host:port`), set up within [`CALL_TIMEOUT`].
pub fn channel(addr: &str) -> Channel {
    Channel::connect(addr, CALL_TIMEOUT).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// A `ChatService` client on a new connection to `addr`, its calls under
/// [`CALL_TIMEOUT`].
pub fn connect(addr: &str) -> ChatClient {
    ChatClient::new(channel(addr)).with_options(opt())
}

/// The options of every call: the deadline [`CALL_TIMEOUT`].
pub fn opt() -> CallOptions {
    CallOptions::default().timeout(CALL_TIMEOUT)
}

pub fn send(
    client: &ChatClient,
    room: &str,
    user: &str,
    content: &str,
) -> Result<chat::SendMessageResponse, Status> {
    let mut req = chat::SendMessageRequest::new();
    req.room = room.into();
    req.user = user.into();
    req.content = content.into();
    client.send_message(&req)
}

/// Sends `m1` ... `mN` to `room` as `ann`; their ids, in order.
pub fn send_numbered(client: &ChatClient, room: &str, n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| {
            let sent = send(client, room, "ann", &format!("m{i}"));
            sent.unwrap_or_else(|e| panic!("m{i}: {e:?}")).message_id
        })
        .collect()
}

/// A SubscribeMessages to `room` on a new connection to `addr` that
/// resumes with the metadata `key: value` (`last-message-id`,
/// `last-event-id`), once its welcome came; the client is returned with
/// the stream (dropping it ends the call).
pub fn resume(
    addr: &str,
    room: &str,
    key: &str,
    value: &str,
) -> (ChatClient, Messages<chat::Message>) {
    let client = ChatClient::new(channel(addr)).with_options(opt().metadata(key, value));
    let mut stream = client
        .subscribe_messages(&subscribe_req(room, ""))
        .expect("subscribe");
    let welcome = next(&mut stream).expect("welcome arrives");
    assert!(welcome.content.contains("Welcome"), "{}", welcome.content);
    (client, stream)
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
pub fn subscribe(client: &ChatClient, room: &str, user: &str) -> Messages<chat::Message> {
    let mut stream = client
        .subscribe_messages(&subscribe_req(room, user))
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

/// The next message of a server-streaming call, or the status it ended
/// with (OK included, so `unwrap_err` reads any end). Panics when nothing
/// arrives within [`CALL_TIMEOUT`] (the call's deadline passes first).
pub fn next<T: protobuf::Message>(stream: &mut Messages<T>) -> Result<T, Status> {
    next_as(stream.stream_mut())
}

/// [`next`] for an untyped [`Stream`] (services other than `ChatService`).
pub fn next_as<T: protobuf::Message>(stream: &mut Stream) -> Result<T, Status> {
    received(stream.recv_timeout(CALL_TIMEOUT))
}

/// Sends one message on a client-streaming or bidirectional call; `Err`
/// once the call is over (see [`Duplex::send`]).
pub fn push(call: &Duplex, message: &impl protobuf::Message) -> Result<(), Status> {
    call.send(&encode(message).expect("a message encodes"))
}

/// The next response of a bidirectional call, or the status it ended with
/// (OK included). Panics when nothing arrives within [`CALL_TIMEOUT`].
pub fn recv<T: protobuf::Message>(call: &Duplex) -> Result<T, Status> {
    received(call.recv_timeout(CALL_TIMEOUT))
}

/// The typed response of a client-streaming call, once our side is closed.
pub fn close_and_recv<T: protobuf::Message>(call: Duplex) -> Result<T, Status> {
    call.close_and_recv().and_then(|bytes| decode(&bytes))
}

fn received<T: protobuf::Message>(got: Recv) -> Result<T, Status> {
    match got {
        Recv::Message(bytes) => Ok(decode(&bytes).expect("a response decodes")),
        Recv::Ended(status) => Err(status),
        Recv::TimedOut => panic!("nothing arrived in {CALL_TIMEOUT:?}"),
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
