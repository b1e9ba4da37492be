//! The command-line clients (`send`, `subscribe`, `upload`, `chat`,
//! `metrics`): the same five calls the reference client makes, against any
//! server that speaks `chat.ChatService`.
//!
//! A module of the `streamhub` binary: users run `streamhub send ...` from
//! the one binary they installed. The commands live here; the calls go
//! through the library's blocking h2c client (`grpc::h2::client`), which
//! the tests and the load tool share.

use std::io::{BufRead, Write};
use std::time::Duration;

use streamhub::config::{opt, usage, OptSpec, RawArgs};
use streamhub::error::Error;
use streamhub::grpc::call::{Code, Status};
use streamhub::grpc::h2::client::{decode, encode, CallOptions, Channel, ChatClient, Duplex};
use streamhub::proto::chat;

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
    opt(
        "token",
        "STREAMHUB_TOKEN",
        "",
        "bearer token sent as authorization metadata (see 'streamhub token')",
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
    opt(
        "token",
        "STREAMHUB_TOKEN",
        "",
        "bearer token sent as authorization metadata (see 'streamhub token')",
    ),
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

/// How long `metrics`, which has no `--timeout-secs`, waits to connect.
const METRICS_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn failure(what: &str, s: Status) -> Error {
    Error::Io(format!("{what}: {} {}", s.code, s.message))
}

/// The options of every call: the token, when there is one.
fn call_options(raw: &RawArgs) -> CallOptions {
    let token = raw.string("token");
    let options = CallOptions::default();
    if token.is_empty() {
        options
    } else {
        options.metadata("authorization", &format!("Bearer {token}"))
    }
}

/// One connection for the command's one call; failing to connect is
/// reported as the call's UNAVAILABLE, as a gRPC client would.
fn connect(
    what: &str,
    server: &str,
    timeout: Duration,
    raw: &RawArgs,
) -> Result<ChatClient, Error> {
    Channel::connect(server, timeout)
        .map(|channel| ChatClient::new(channel).with_options(call_options(raw)))
        .map_err(|e| {
            failure(
                what,
                Status::new(
                    Code::Unavailable,
                    format!("cannot connect to {server}: {e}"),
                ),
            )
        })
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
    if !user.is_empty() || !raw.string("token").is_empty() {
        // With a token the server takes the user from it.
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
    let server = raw.string("server");
    if command == "metrics" {
        let client = connect("StreamMetrics", &server, METRICS_CONNECT_TIMEOUT, &raw)?;
        return metrics(&client, &raw).map(|()| true);
    }
    let timeout = raw.secs("timeout-secs", 1, 3600)?;
    match command {
        "send" => send(
            &connect("SendMessage", &server, timeout, &raw)?,
            &raw,
            timeout,
        )?,
        "subscribe" => subscribe(&connect("SubscribeMessages", &server, timeout, &raw)?, &raw)?,
        "upload" => upload(&connect("UploadMessages", &server, timeout, &raw)?, &raw)?,
        _ => chat(&connect("Chat", &server, timeout, &raw)?, &raw)?,
    }
    Ok(true)
}

fn send(client: &ChatClient, raw: &RawArgs, timeout: Duration) -> Result<(), Error> {
    let mut req = chat::SendMessageRequest::new();
    req.user = default_user(raw);
    req.room = raw.string("room");
    req.content = raw.positional.join(" ");
    let resp = client
        .clone()
        .with_options(call_options(raw).timeout(timeout))
        .send_message(&req)
        .map_err(|e| failure("SendMessage", e))?;
    let ts = resp.timestamp.seconds;
    println!("sent {} at {}", resp.message_id, ts);
    Ok(())
}

fn subscribe(client: &ChatClient, raw: &RawArgs) -> Result<(), Error> {
    let mut req = chat::SubscribeRequest::new();
    req.user = default_user(raw);
    req.room = raw.string("room");
    let stream = client
        .subscribe_messages(&req)
        .map_err(|e| failure("SubscribeMessages", e))?;
    let mut out = std::io::stdout().lock();
    for m in stream {
        let m = m.map_err(|e| failure("SubscribeMessages", e))?;
        if print_message(&mut out, &m).is_err() {
            break;
        }
    }
    Ok(())
}

/// Sends each line of standard input as a `chat::Message` (ids from
/// `id`), then closes the sending side, also when reading fails; stops
/// early when the server ended the call (its status comes from the
/// receiving side).
fn send_lines(call: &Duplex, raw: &RawArgs, id: impl Fn(usize) -> String) -> Result<(), Error> {
    let user = default_user(raw);
    let room = raw.string("room");
    let mut sent = Ok(());
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                sent = Err(e.into());
                break;
            }
        };
        let mut m = chat::Message::new();
        m.id = id(i);
        m.user = user.clone();
        m.room = room.clone();
        m.content = line;
        // A proto3 message always encodes.
        let Ok(bytes) = encode(&m) else { continue };
        if call.send(&bytes).is_err() {
            break;
        }
    }
    call.close_send();
    sent
}

fn upload(client: &ChatClient, raw: &RawArgs) -> Result<(), Error> {
    let call = client
        .upload_messages()
        .map_err(|e| failure("UploadMessages", e))?;
    send_lines(&call, raw, |i| format!("upload_{i}"))?;
    let resp: chat::UploadResponse = call
        .close_and_recv()
        .and_then(|bytes| decode(&bytes))
        .map_err(|e| failure("UploadMessages", e))?;
    println!(
        "uploaded {} messages (success={})",
        resp.message_count, resp.success
    );
    Ok(())
}

fn chat(client: &ChatClient, raw: &RawArgs) -> Result<(), Error> {
    let call = client.chat().map_err(|e| failure("Chat", e))?;
    std::thread::scope(|scope| {
        let printer = std::thread::Builder::new()
            .name("chat-replies".into())
            .spawn_scoped(scope, || -> Result<(), Error> {
                let mut out = std::io::stdout().lock();
                while let Some(m) = call.recv() {
                    let m: chat::Message = m
                        .and_then(|bytes| decode(&bytes))
                        .map_err(|e| failure("Chat", e))?;
                    if print_message(&mut out, &m).is_err() {
                        break;
                    }
                }
                Ok(())
            })?;
        let sent = send_lines(&call, raw, |i| format!("cli_{}", i + 1));
        let printed = printer
            .join()
            .map_err(|_| Error::Io("reply printer panicked".into()))?;
        sent.and(printed)
    })
}

fn metrics(client: &ChatClient, raw: &RawArgs) -> Result<(), Error> {
    let mut req = chat::MetricsRequest::new();
    req.instance_id = raw.string("instance");
    req.interval_seconds = raw.number("interval-secs", 0, 3600)? as i32;
    let count = raw.number("count", 0, u64::MAX)?;
    let stream = client
        .stream_metrics(&req)
        .map_err(|e| failure("StreamMetrics", e))?;
    let mut seen = 0;
    let mut out = std::io::stdout().lock();
    for m in stream {
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
