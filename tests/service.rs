//! Health and reflection over streamhub's own h2c client, by method path
//! (Python's clients cover the same in tests/python.rs).

use streamhub::proto::health::health_check_response::ServingStatus;
use streamhub::proto::health::{HealthCheckRequest, HealthCheckResponse};
use streamhub::proto::reflection::server_reflection_request::Message_request;
use streamhub::proto::reflection::server_reflection_response::Message_response;
use streamhub::proto::reflection::{ServerReflectionRequest, ServerReflectionResponse};

use crate::support;
use crate::support::grpc::{
    channel, decode, encode, next_as, opt, push, recv, Channel, Code, Status,
};

const CHECK: &str = "/grpc.health.v1.Health/Check";
const WATCH: &str = "/grpc.health.v1.Health/Watch";
const REFLECTION: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";

fn check(channel: &Channel, service: &str) -> Result<ServingStatus, Status> {
    let mut req = HealthCheckRequest::new();
    req.service = service.into();
    let resp = channel.unary(CHECK, &encode(&req)?, &opt())?;
    Ok(decode::<HealthCheckResponse>(&resp)?
        .status
        .enum_value_or_default())
}

#[test]
fn health_check_and_watch_follow_shutdown() {
    let support::Server { app, grpc_addr, .. } = support::start();
    let client = channel(&grpc_addr);
    assert_eq!(check(&client, "").unwrap(), ServingStatus::SERVING);
    assert_eq!(
        check(&client, "chat.ChatService").unwrap(),
        ServingStatus::SERVING
    );
    let err = check(&client, "no.Such").unwrap_err();
    assert_eq!(err.code, Code::NotFound);

    let mut req = HealthCheckRequest::new();
    req.service = "chat.ChatService".into();
    let mut watch = client
        .server_streaming(WATCH, &encode(&req).unwrap(), &opt())
        .unwrap();
    let first: HealthCheckResponse = next_as(&mut watch).unwrap();
    assert_eq!(first.status.enum_value_or_default(), ServingStatus::SERVING);
    let stopper = std::thread::spawn(move || app.shutdown());
    let mut statuses = Vec::new();
    let end = loop {
        match next_as::<HealthCheckResponse>(&mut watch) {
            Ok(r) => statuses.push(r.status.enum_value_or_default()),
            Err(status) => break status,
        }
    };
    stopper.join().unwrap();
    // The change, then the end.
    assert_eq!(statuses, [ServingStatus::NOT_SERVING]);
    assert_eq!(end.code, Code::Unavailable, "{end:?}");
}

#[test]
fn reflection_v1_lists_and_describes_chat_service() {
    let server = support::start();
    let client = server.channel();
    let call = client.open(REFLECTION, &opt()).unwrap();
    let ask = |req: Message_request| {
        let mut r = ServerReflectionRequest::new();
        r.host = "localhost".into();
        r.message_request = Some(req);
        push(&call, &r).unwrap();
        let resp: ServerReflectionResponse = recv(&call).unwrap();
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
