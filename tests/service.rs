//! Health and reflection over grpcio's client (Python's clients cover the
//! same in tests/python.rs).

use futures_executor::block_on;
use futures_util::{SinkExt, StreamExt};
use grpcio::{ChannelBuilder, EnvBuilder, RpcStatusCode, WriteFlags};
use std::sync::Arc;

use streamhub::proto::health::health_check_response::ServingStatus;
use streamhub::proto::health::HealthCheckRequest;
use streamhub::proto::reflection::server_reflection_request::Message_request;
use streamhub::proto::reflection::server_reflection_response::Message_response;
use streamhub::proto::reflection::ServerReflectionRequest;
use streamhub::proto::services::health::HealthClient;
use streamhub::proto::services::reflection::ServerReflectionClient;

use crate::support;
use crate::support::grpc::{opt, status_code};

fn channel(addr: &str) -> grpcio::Channel {
    let env = Arc::new(EnvBuilder::new().cq_count(1).build());
    ChannelBuilder::new(env).connect(addr)
}

fn check(client: &HealthClient, service: &str) -> grpcio::Result<ServingStatus> {
    let mut req = HealthCheckRequest::new();
    req.service = service.into();
    client
        .check_opt(&req, opt())
        .map(|r| r.status.enum_value_or_default())
}

#[test]
fn health_check_and_watch_follow_shutdown() {
    let support::Server { app, grpc_addr, .. } = support::start();
    let client = HealthClient::new(channel(&grpc_addr));
    assert_eq!(check(&client, "").unwrap(), ServingStatus::SERVING);
    assert_eq!(
        check(&client, "chat.ChatService").unwrap(),
        ServingStatus::SERVING
    );
    let err = check(&client, "no.Such").unwrap_err();
    assert_eq!(status_code(&err), RpcStatusCode::NOT_FOUND);

    let mut req = HealthCheckRequest::new();
    req.service = "chat.ChatService".into();
    let mut watch = client.watch_opt(&req, opt()).unwrap();
    let first = block_on(watch.next()).unwrap().unwrap();
    assert_eq!(first.status.enum_value_or_default(), ServingStatus::SERVING);
    let stopper = std::thread::spawn(move || app.shutdown());
    let mut statuses = Vec::new();
    let end = loop {
        match block_on(watch.next()) {
            Some(Ok(r)) => statuses.push(r.status.enum_value_or_default()),
            Some(Err(e)) => break Some(e),
            None => break None,
        }
    };
    stopper.join().unwrap();
    // grpcio's client may report the final status before the last message
    // (see tests/grpc.rs); whatever arrived says NOT_SERVING.
    assert!(
        statuses.iter().all(|s| *s == ServingStatus::NOT_SERVING),
        "{statuses:?}"
    );
    assert_eq!(
        status_code(&end.expect("a status")),
        RpcStatusCode::UNAVAILABLE
    );
}

#[test]
fn reflection_v1_lists_and_describes_chat_service() {
    let server = support::start();
    let client = ServerReflectionClient::new(channel(&server.grpc_addr));
    let (mut tx, mut rx) = client.server_reflection_info_opt(opt()).unwrap();
    let mut ask = |req: Message_request| {
        let mut r = ServerReflectionRequest::new();
        r.host = "localhost".into();
        r.message_request = Some(req);
        block_on(tx.send((r, WriteFlags::default()))).unwrap();
        let resp = block_on(rx.next()).unwrap().unwrap();
        assert_eq!(resp.valid_host, "localhost");
        resp.message_response.unwrap()
    };
    let Message_response::ListServicesResponse(list) =
        ask(Message_request::ListServices(String::new()))
    else {
        panic!("no list");
    };
    assert!(list.service.iter().any(|s| s.name == "chat.ChatService"));
    let Message_response::FileDescriptorResponse(files) = ask(
        Message_request::FileContainingSymbol("chat.ChatService".into()),
    ) else {
        panic!("no files");
    };
    use protobuf::Message as _;
    let file = protobuf::descriptor::FileDescriptorProto::parse_from_bytes(
        &files.file_descriptor_proto[0],
    )
    .unwrap();
    assert_eq!(file.name(), "chat.proto");
    let methods: Vec<_> = file.service[0]
        .method
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    assert_eq!(
        methods,
        [
            "SendMessage",
            "SubscribeMessages",
            "UploadMessages",
            "Chat",
            "StreamMetrics"
        ]
    );
    let Message_response::ErrorResponse(e) =
        ask(Message_request::FileContainingSymbol("x.Y".into()))
    else {
        panic!("no error");
    };
    assert_eq!(e.error_code, 5);
}
