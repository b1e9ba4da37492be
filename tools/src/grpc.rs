//! gRPC clients of the load tool, on grpcio: separate connections on
//! demand (grpcio shares one connection between channels with equal
//! settings, which would put every stream behind one HTTP/2 flow-control
//! window and one server-side stream limit), and status codes by name.

use std::ffi::CString;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use grpcio::{ChannelBuilder, EnvBuilder, Environment};

use streamhub::proto::chat;
use streamhub::proto::services::ChatServiceClient;

/// The client side of grpcio: completion-queue threads that do the HTTP/2
/// work for every channel made from it.
pub fn environment(threads: usize) -> Arc<Environment> {
    Arc::new(
        EnvBuilder::new()
            .cq_count(threads.max(1))
            .name_prefix("bench-grpc")
            .build(),
    )
}

/// A client on a connection of its own.
pub fn connect(env: &Arc<Environment>, server: &str) -> ChatServiceClient {
    static NEXT: AtomicI32 = AtomicI32::new(1);
    let unique = NEXT.fetch_add(1, Ordering::Relaxed);
    let channel = ChannelBuilder::new(env.clone())
        .raw_cfg_int(
            CString::new("grpc.use_local_subchannel_pool").expect("no NUL"),
            1,
        )
        // An argument grpcio does not know still makes the channel's key
        // differ, so it gets its own subchannel (and TCP connection).
        .raw_cfg_int(
            CString::new("streamhub.bench.connection").expect("no NUL"),
            unique,
        )
        .max_receive_message_len(64 << 20)
        .connect(server);
    ChatServiceClient::new(channel)
}

/// The name of a failed call's status (`UNAVAILABLE`), or of what failed
/// before there was one.
pub fn error_name(e: &grpcio::Error) -> String {
    match e {
        grpcio::Error::RpcFailure(status) => {
            // grpcio writes codes as `8-RESOURCE_EXHAUSTED`.
            let text = format!("{:?}", status.code());
            match text.split_once('-') {
                Some((_, name)) => name.to_string(),
                None => text,
            }
        }
        grpcio::Error::RemoteStopped => "REMOTE_STOPPED".into(),
        other => {
            let text = format!("{other:?}");
            text.split(['(', ' ', '{'])
                .next()
                .unwrap_or("ERROR")
                .to_string()
        }
    }
}

pub fn send_request(room: &str, user: &str, content: String) -> chat::SendMessageRequest {
    let mut req = chat::SendMessageRequest::new();
    req.room = room.to_string();
    req.user = user.to_string();
    req.content = content;
    req
}

pub fn subscribe_request(room: &str, user: &str) -> chat::SubscribeRequest {
    let mut req = chat::SubscribeRequest::new();
    req.room = room.to_string();
    req.user = user.to_string();
    req
}

/// A SendMessage request as `h2load` sends it in a DATA frame: the gRPC
/// length-prefixed message (flag byte 0: not compressed, then the length as
/// four big-endian bytes, then the protobuf bytes).
pub fn framed_send_request(room: &str, user: &str, content: String) -> Vec<u8> {
    use protobuf::Message as _;
    let body = send_request(room, user, content)
        .write_to_bytes()
        .expect("a message of strings always encodes");
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_request_is_prefix_plus_protobuf() {
        let framed = framed_send_request("r", "u", "hi".into());
        // Fields 1 (user), 2 (content), 3 (room) as length-delimited strings.
        let body = [0x0a, 1, b'u', 0x12, 2, b'h', b'i', 0x1a, 1, b'r'];
        assert_eq!(framed[0], 0);
        assert_eq!(&framed[1..5], &(body.len() as u32).to_be_bytes());
        assert_eq!(&framed[5..], &body);
    }

    #[test]
    fn error_names() {
        let status = grpcio::RpcStatus::new(grpcio::RpcStatusCode::RESOURCE_EXHAUSTED);
        assert_eq!(
            error_name(&grpcio::Error::RpcFailure(status)),
            "RESOURCE_EXHAUSTED"
        );
        assert_eq!(error_name(&grpcio::Error::RemoteStopped), "REMOTE_STOPPED");
    }
}
