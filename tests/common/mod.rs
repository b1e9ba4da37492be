//! Setup shared by the integration tests: a server on port 0, clients with
//! deadlines, and bounded waiting.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_executor::block_on;
use futures_util::StreamExt;
use grpcio::{CallOption, ChannelBuilder, EnvBuilder, Environment};

use streamhub::config::Config;
use streamhub::proto::chat;
use streamhub::proto::services::ChatServiceClient;
use streamhub::App;

/// Every call a test makes ends within this, whatever the server does.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Server {
    pub app: App,
    pub grpc_addr: String,
    env: Arc<Environment>,
}

/// Starts a server with default settings on 127.0.0.1 port 0.
pub fn start() -> Server {
    start_with(|_| {})
}

/// Starts a server after `tune` adjusted its settings.
pub fn start_with(tune: impl FnOnce(&mut Config)) -> Server {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut config = Config::local();
    config.shutdown_grace = Duration::from_secs(3);
    tune(&mut config);
    let app = App::start(config).expect("server starts");
    let grpc_addr = format!("127.0.0.1:{}", app.grpc_port());
    let env = Arc::new(
        EnvBuilder::new()
            .cq_count(1)
            .name_prefix("test-client")
            .build(),
    );
    Server {
        app,
        grpc_addr,
        env,
    }
}

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
                next_id(),
            )
            .connect(&self.grpc_addr);
        ChatServiceClient::new(channel)
    }

    pub fn subscribers(&self) -> u64 {
        self.app.hub().stats().subscribers
    }
}

fn next_id() -> i32 {
    use std::sync::atomic::{AtomicI32, Ordering};
    static NEXT: AtomicI32 = AtomicI32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
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

/// Polls `cond` until it holds or `timeout` passes. For state with no
/// signal to wait on (counters inside the server).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs the ignored test `name` alone in a fresh copy of this test binary,
/// so that no other test in the process moves what it measures (resident
/// memory, thread and file counts).
pub fn run_alone(name: &str) {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} failed alone:\n{stdout}\n{stderr}"
    );
}
