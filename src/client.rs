//! The command-line clients (`send`, `subscribe`, `upload`, `chat`,
//! `metrics`): the same five calls the reference client makes, against any
//! server that speaks `chat.ChatService`.
//!
//! A module of the `streamhub` binary, not of the server library: users run
//! `streamhub send ...` from the one binary they installed, and the
//! library (what the server is made of) carries no client code.

use std::io::{BufRead, Write};
use std::sync::Arc;

use futures_executor::block_on;
use futures_util::{SinkExt, StreamExt};
use grpcio::{CallOption, ChannelBuilder, EnvBuilder, WriteFlags};

use streamhub::config::{opt, usage, OptSpec, RawArgs};
use streamhub::error::Error;
use streamhub::proto::chat;
use streamhub::proto::services::ChatServiceClient;

/// Options every client subcommand shares.
pub const CLIENT_OPTIONS: &[OptSpec] = &[
    opt(
        "server",
        "STREAMHUB_SERVER",
        "127.0.0.1:50051",
        "gRPC address of the streamhub server",
    ),
    opt("room", "", "default", "room to use"),
    opt("user", "STREAMHUB_USER", "", "user name (default: $USER)"),
    opt(
        "timeout-secs",
        "",
        "10",
        "deadline of unary calls and of connecting",
    ),
];

/// Options of `streamhub metrics`.
pub const METRICS_OPTIONS: &[OptSpec] = &[
    opt(
        "server",
        "STREAMHUB_SERVER",
        "127.0.0.1:50051",
        "gRPC address of the streamhub server",
    ),
    opt("instance", "", "streamhub", "instance_id to ask for"),
    opt("interval-secs", "", "1", "seconds between batches"),
    opt("count", "", "0", "stop after this many metrics (0: never)"),
];

/// One-line summaries of the client subcommands, for the top-level help.
pub const COMMANDS: &[(&str, &str, &str)] = &[
    (
        "send",
        "publish one message: the arguments joined by spaces",
        " <CONTENT>...",
    ),
    (
        "subscribe",
        "print every message of a room until interrupted",
        "",
    ),
    (
        "upload",
        "publish each line of standard input as a message",
        "",
    ),
    (
        "chat",
        "send standard input lines on a Chat stream and print the replies",
        "",
    ),
    ("metrics", "print the server's StreamMetrics", ""),
];

fn failure(what: &str, e: grpcio::Error) -> Error {
    match e {
        grpcio::Error::RpcFailure(s) => Error::Io(format!(
            "{what}: {} {}",
            streamhub::grpc::call::Code::from_number(s.code().into()),
            s.message()
        )),
        other => Error::Io(format!("{what}: {other}")),
    }
}

fn connect(server: &str) -> ChatServiceClient {
    let env = Arc::new(
        EnvBuilder::new()
            .cq_count(1)
            .name_prefix("grpc-client")
            .build(),
    );
    ChatServiceClient::new(ChannelBuilder::new(env).connect(server))
}

fn print_message(out: &mut impl Write, m: &chat::Message) -> std::io::Result<()> {
    let kind = format!("{:?}", m.type_.enum_value_or_default());
    writeln!(
        out,
        "[{}] {} {}: {} ({})",
        m.room, kind, m.user, m.content, m.id
    )?;
    out.flush()
}

fn default_user(raw: &RawArgs) -> String {
    let user = raw.string("user");
    if !user.is_empty() {
        return user;
    }
    std::env::var("USER").unwrap_or_else(|_| "streamhub-cli".into())
}

/// Runs client subcommand `command` with its arguments. `Ok(false)` when it
/// is not a client subcommand.
pub fn run(command: &str, args: &[String]) -> Result<bool, Error> {
    let Some((_, summary, positional)) = COMMANDS.iter().find(|(c, _, _)| *c == command) else {
        return Ok(false);
    };
    let specs = if command == "metrics" {
        METRICS_OPTIONS
    } else {
        CLIENT_OPTIONS
    };
    let raw = RawArgs::parse(specs, args, |k| std::env::var(k).ok())?;
    if raw.help {
        print!(
            "{}",
            usage(&format!("streamhub {command}"), summary, positional, specs)
        );
        return Ok(true);
    }
    let client = connect(&raw.string("server"));
    match command {
        "send" => send(&client, &raw)?,
        "subscribe" => subscribe(&client, &raw)?,
        "upload" => upload(&client, &raw)?,
        "chat" => chat(&client, &raw)?,
        _ => metrics(&client, &raw)?,
    }
    Ok(true)
}

fn send(client: &ChatServiceClient, raw: &RawArgs) -> Result<(), Error> {
    let mut req = chat::SendMessageRequest::new();
    req.user = default_user(raw);
    req.room = raw.string("room");
    req.content = raw.positional.join(" ");
    let timeout = raw.secs("timeout-secs", 1, 3600)?;
    let resp = client
        .send_message_opt(&req, CallOption::default().timeout(timeout))
        .map_err(|e| failure("SendMessage", e))?;
    let ts = resp.timestamp.seconds;
    println!("sent {} at {}", resp.message_id, ts);
    Ok(())
}

fn subscribe(client: &ChatServiceClient, raw: &RawArgs) -> Result<(), Error> {
    let mut req = chat::SubscribeRequest::new();
    req.user = default_user(raw);
    req.room = raw.string("room");
    let mut stream = client
        .subscribe_messages(&req)
        .map_err(|e| failure("SubscribeMessages", e))?;
    let mut out = std::io::stdout().lock();
    while let Some(m) = block_on(stream.next()) {
        let m = m.map_err(|e| failure("SubscribeMessages", e))?;
        if print_message(&mut out, &m).is_err() {
            break;
        }
    }
    Ok(())
}

fn upload(client: &ChatServiceClient, raw: &RawArgs) -> Result<(), Error> {
    let (mut sender, receiver) = client
        .upload_messages()
        .map_err(|e| failure("UploadMessages", e))?;
    let user = default_user(raw);
    let room = raw.string("room");
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line?;
        let mut m = chat::Message::new();
        m.id = format!("upload_{i}");
        m.user = user.clone();
        m.room = room.clone();
        m.content = line;
        if block_on(sender.send((m, WriteFlags::default()))).is_err() {
            // The server ended the call; its status comes from the receiver.
            break;
        }
    }
    let _ = block_on(sender.close());
    let resp = block_on(receiver).map_err(|e| failure("UploadMessages", e))?;
    println!(
        "uploaded {} messages (success={})",
        resp.message_count, resp.success
    );
    Ok(())
}

fn chat(client: &ChatServiceClient, raw: &RawArgs) -> Result<(), Error> {
    let (mut sender, mut receiver) = client.chat().map_err(|e| failure("Chat", e))?;
    let printer = std::thread::Builder::new()
        .name("chat-replies".into())
        .spawn(move || -> Result<(), Error> {
            let mut out = std::io::stdout().lock();
            while let Some(m) = block_on(receiver.next()) {
                let m = m.map_err(|e| failure("Chat", e))?;
                if print_message(&mut out, &m).is_err() {
                    break;
                }
            }
            Ok(())
        })?;
    let user = default_user(raw);
    let room = raw.string("room");
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line?;
        let mut m = chat::Message::new();
        m.id = format!("cli_{}", i + 1);
        m.user = user.clone();
        m.room = room.clone();
        m.content = line;
        if block_on(sender.send((m, WriteFlags::default()))).is_err() {
            break;
        }
    }
    let _ = block_on(sender.close());
    printer
        .join()
        .map_err(|_| Error::Io("reply printer panicked".into()))?
}

fn metrics(client: &ChatServiceClient, raw: &RawArgs) -> Result<(), Error> {
    let mut req = chat::MetricsRequest::new();
    req.instance_id = raw.string("instance");
    req.interval_seconds = raw.number("interval-secs", 0, 3600)? as i32;
    let count = raw.number("count", 0, u64::MAX)?;
    let mut stream = client
        .stream_metrics(&req)
        .map_err(|e| failure("StreamMetrics", e))?;
    let mut seen = 0;
    let mut out = std::io::stdout().lock();
    while let Some(m) = block_on(stream.next()) {
        let m = m.map_err(|e| failure("StreamMetrics", e))?;
        let mut labels: Vec<_> = m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        if writeln!(out, "{} {} {{{}}}", m.name, m.value, labels.join(",")).is_err() {
            break;
        }
        seen += 1;
        if count > 0 && seen >= count {
            break;
        }
    }
    let _ = out.flush();
    Ok(())
}
