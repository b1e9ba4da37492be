//! Tokens, permissions and limits on both ports, with the server's own
//! clients (an HTTP client, an event-stream reader, the h2 gRPC client):
//! every refusal issue 12 names gets its status and leaves the server and
//! the other streams unharmed. Real third-party clients (Python grpcio
//! over TLS, curl, Chromium's EventSource) are in `auth_clients`.

use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use streamhub::auth::{mint_hs256, AuthMode, Claims, KeySource, Permissions};
use streamhub::config::Config;
use streamhub::proto::chat;
use streamhub::proto::health::health_check_response::ServingStatus;
use streamhub::proto::health::{HealthCheckRequest, HealthCheckResponse};
use streamhub::rate::Quota;

use crate::support::grpc::{
    close_and_recv, decode, encode, next, opt, push, subscribe_req, CallOptions, ChatClient, Code,
};
use crate::support::http::{connect, exchange, get, read_reply, HttpPort, Reply, IO_TIMEOUT};
use crate::support::sse::{EventStream, Item};
use crate::support::{self, unique, Server};

pub const SECRET: &str = "streamhub-integration-secret-0123456789";

/// A file holding [`SECRET`], as `--auth-secret-file` reads it.
pub fn secret_file() -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "streamhub-secret-{}-{}",
        std::process::id(),
        unique()
    ));
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    path
}

/// A token for `user`, valid for `ttl` (negative: expired that long ago).
pub fn token_for(user: &str, publish: &[&str], subscribe: &[&str], ttl: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = Claims {
        sub: user.into(),
        exp: (now + ttl) as u64,
        nbf: None,
        streamhub: Permissions {
            publish: publish.iter().map(|s| s.to_string()).collect(),
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        },
    };
    mint_hs256(SECRET.as_bytes(), &claims).unwrap()
}

/// Alice may publish in `lobby` and read `lobby` and `sensors.*`, for an
/// hour.
fn alice() -> String {
    token_for("alice", &["lobby"], &["lobby", "sensors.*"], 3600)
}

fn require_tokens(c: &mut Config) {
    c.access.auth.mode = AuthMode::Required;
    c.access.auth.key = Some(KeySource::SecretFile(secret_file()));
    c.access.auth.anonymous_subscribe = vec!["public.*".parse().unwrap()];
}

fn auth_server(tune: impl FnOnce(&mut Config)) -> Server {
    support::start_with(|c| {
        require_tokens(c);
        tune(c);
    })
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `POST /messages` with extra header lines.
fn post_with(server: &impl HttpPort, headers: &[(&str, &str)], body: &serde_json::Value) -> Reply {
    let body = body.to_string();
    let mut raw = format!(
        "POST /messages HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    raw.push_str(&body);
    exchange(server, raw.as_bytes())
}

fn message(room: &str, user: &str, content: &str) -> serde_json::Value {
    serde_json::json!({ "room": room, "user": user, "content": content })
}

pub fn client_with_token(server: &Server, token: &str) -> ChatClient {
    server
        .client()
        .with_options(opt().metadata("authorization", &bearer(token)))
}

fn send(client: &ChatClient, room: &str, user: &str, content: &str) -> Result<String, Code> {
    let mut req = chat::SendMessageRequest::new();
    req.room = room.into();
    req.user = user.into();
    req.content = content.into();
    client
        .send_message(&req)
        .map(|r| r.message_id)
        .map_err(|st| st.code)
}

/// The next chat event of an event stream, skipping comments and notices.
fn next_chat(stream: &mut EventStream) -> serde_json::Value {
    loop {
        let event = stream.event();
        if event.event == "chat" {
            return event.json();
        }
    }
}

fn metric(server: &Server, series: &str) -> f64 {
    let text = get(server, "/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

#[test]
fn http_publish_needs_a_token_that_grants_the_room_and_carries_its_user() {
    let server = auth_server(|_| {});
    // A reader with its own token sees what gets through, and only that.
    let auth = bearer(&alice());
    let mut reader =
        EventStream::connected(&server, "/events?room=lobby", &[("Authorization", &auth)]);

    let none = post_with(&server, &[], &message("lobby", "", "no token"));
    assert_eq!(none.status, 401, "{}", none.text());
    assert_eq!(
        none.header("www-authenticate"),
        Some(r#"Bearer realm="streamhub""#)
    );
    assert_eq!(none.json()["error"], "a bearer token is required");

    let expired = token_for("alice", &["lobby"], &[], -3600);
    let not_yet = not_yet_valid();
    // Each bad Authorization value, and what the 401 says.
    let cases = [
        ("Bearer x.y.z".to_string(), "malformed"),
        ("Basic YWxpY2U6eA==".to_string(), "Bearer"),
        (bearer(&format!("{}x", alice())), "signature"),
        (bearer(&expired), "expired"),
        (bearer(&not_yet), "not valid yet"),
        (bearer(&unsigned_token()), "alg none"),
    ];
    for (value, says) in &cases {
        let reply = post_with(
            &server,
            &[("Authorization", value)],
            &message("lobby", "", "bad"),
        );
        assert_eq!(reply.status, 401, "{value}: {}", reply.text());
        let error = reply.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(says), "{value}: {error}");
        assert!(reply
            .header("www-authenticate")
            .unwrap()
            .contains(r#"error="invalid_token""#));
    }

    let other_room = post_with(
        &server,
        &[("Authorization", &auth)],
        &message("vip", "", "x"),
    );
    assert_eq!(other_room.status, 403, "{}", other_room.text());
    assert_eq!(
        other_room.json()["error"],
        "not allowed to publish in room \"vip\""
    );
    let impersonation = post_with(
        &server,
        &[("Authorization", &auth)],
        &message("lobby", "bob", "I am bob"),
    );
    assert_eq!(impersonation.status, 403);
    assert_eq!(
        impersonation.json()["error"],
        "user \"bob\" is not the token's user \"alice\""
    );

    // The same token, its user left out or repeated: published as alice.
    for user in ["", "alice"] {
        let ok = post_with(
            &server,
            &[("Authorization", &auth)],
            &message("lobby", user, "hi"),
        );
        assert_eq!(ok.status, 200, "{}", ok.text());
        let got = next_chat(&mut reader);
        assert_eq!(
            (got["user"].as_str(), got["content"].as_str()),
            (Some("alice"), Some("hi"))
        );
    }
    assert_eq!(
        metric(&server, r#"streamhub_auth_refused_total{reason="missing"}"#),
        1.0
    );
    assert_eq!(
        metric(&server, r#"streamhub_auth_refused_total{reason="expired"}"#),
        1.0
    );
    assert_eq!(
        metric(
            &server,
            r#"streamhub_auth_refused_total{reason="forbidden"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &server,
            r#"streamhub_auth_refused_total{reason="wrong_user"}"#
        ),
        1.0
    );
}

/// Alice's token, valid from an hour from now (`nbf`).
fn not_yet_valid() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = Claims {
        sub: "alice".into(),
        exp: now + 7200,
        nbf: Some(now + 3600),
        streamhub: Permissions {
            publish: vec!["lobby".into()],
            subscribe: vec![],
        },
    };
    mint_hs256(SECRET.as_bytes(), &claims).unwrap()
}

/// `{"alg":"none"}` with alice's claims and no signature.
fn unsigned_token() -> String {
    let signed = alice();
    let claims = signed.split('.').nth(1).unwrap();
    // {"typ":"JWT","alg":"none"}
    format!("eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.{claims}.")
}

#[test]
fn an_oversized_token_gets_a_clear_error_and_the_server_carries_on() {
    let server = auth_server(|_| {});
    let huge = format!("Bearer {}", "a".repeat(100 * 1024));
    let reply = post_with(
        &server,
        &[("Authorization", &huge)],
        &message("lobby", "", "x"),
    );
    assert_eq!(reply.status, 431, "{}", reply.text());
    assert!(reply.json()["error"]
        .as_str()
        .unwrap()
        .contains("larger than"));
    // 9 KiB fits the head but not a token.
    let big = format!("Bearer {}", "a".repeat(9 * 1024));
    let reply = post_with(
        &server,
        &[("Authorization", &big)],
        &message("lobby", "", "x"),
    );
    assert_eq!(reply.status, 401);
    assert!(reply.json()["error"]
        .as_str()
        .unwrap()
        .contains("larger than"));
    let client = server
        .client()
        .with_options(opt().metadata("authorization", &format!("Bearer {}", "a".repeat(9 * 1024))));
    assert_eq!(send(&client, "lobby", "", "x"), Err(Code::Unauthenticated));
    let ok = post_with(
        &server,
        &[("Authorization", &bearer(&alice()))],
        &message("lobby", "", "still here"),
    );
    assert_eq!(ok.status, 200);
}

#[test]
fn event_streams_take_the_token_from_the_header_the_cookie_or_the_query() {
    let server = auth_server(|c| c.http.auth_cookie = Some("sh_token".into()));
    let token = alice();
    let cookie = format!("theme=dark; sh_token={token}");
    let query = format!("/events?room=sensors.a&access_token={token}");
    let mut by_query = EventStream::connected(&server, &query, &[]);
    let mut by_cookie =
        EventStream::connected(&server, "/events?room=sensors.a", &[("Cookie", &cookie)]);
    // Anonymous: only the rooms --anonymous-subscribe names.
    let mut anonymous = EventStream::connected(&server, "/events?room=public.news", &[]);
    let refused = EventStream::open(&server, "/events?room=sensors.a", &[]);
    assert_eq!(refused.head.status, 401);
    let wrong_room = EventStream::open(
        &server,
        &format!("/events?room=vip&access_token={token}"),
        &[],
    );
    assert_eq!(wrong_room.head.status, 403);
    let anonymous_user = EventStream::open(&server, "/events?room=public.news&user=alice", &[]);
    assert_eq!(anonymous_user.head.status, 401);
    let hub = server.app.hub();
    hub.publish(streamhub::hub::Draft::chat("sensors.a", "probe", "21.5"))
        .unwrap();
    hub.publish(streamhub::hub::Draft::chat("public.news", "desk", "extra"))
        .unwrap();
    assert_eq!(next_chat(&mut by_query)["content"], "21.5");
    assert_eq!(next_chat(&mut by_cookie)["content"], "21.5");
    assert_eq!(next_chat(&mut anonymous)["content"], "extra");
}

#[test]
fn an_event_stream_ends_when_its_token_expires_with_a_system_notice() {
    let server = auth_server(|c| c.access.auth.leeway = Duration::ZERO);
    let short = token_for("alice", &[], &["lobby"], 2);
    let mut stream = EventStream::connected(
        &server,
        &format!("/events?room=lobby&access_token={short}"),
        &[],
    );
    stream
        .socket()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let notice = loop {
        match stream.item().expect("the notice before the end") {
            Item::Event(e) if e.event == "system" => break e.json(),
            _ => {}
        }
    };
    assert_eq!(
        notice["content"],
        "token has expired: reconnect with a fresh token"
    );
    assert!(stream.item().is_err(), "the stream ends after the notice");
    assert!(support::wait_until(Duration::from_secs(5), || {
        server.app.hub().stats().closed.token_expired == 1
    }));
    // A reconnect with the same token is refused; with a fresh one it works.
    let again = EventStream::open(
        &server,
        &format!("/events?room=lobby&access_token={short}"),
        &[],
    );
    assert_eq!(again.head.status, 401);
    let fresh = alice();
    EventStream::connected(
        &server,
        &format!("/events?room=lobby&access_token={fresh}"),
        &[],
    );
}

#[test]
fn grpc_calls_need_authorization_metadata_with_the_right_permission() {
    let server = auth_server(|_| {});
    let alice_client = client_with_token(&server, &alice());
    let mut watcher = alice_client
        .subscribe_messages(&subscribe_req("lobby", "alice"))
        .unwrap();
    assert_eq!(
        next(&mut watcher).unwrap().type_.enum_value_or_default(),
        chat::MessageType::SYSTEM
    );

    assert_eq!(
        send(&server.client(), "lobby", "", "x"),
        Err(Code::Unauthenticated)
    );
    let garbage = server
        .client()
        .with_options(opt().metadata("authorization", "Bearer garbage"));
    assert_eq!(send(&garbage, "lobby", "", "x"), Err(Code::Unauthenticated));
    let basic = server
        .client()
        .with_options(opt().metadata("authorization", "Basic eA=="));
    assert_eq!(send(&basic, "lobby", "", "x"), Err(Code::Unauthenticated));
    let expired = client_with_token(&server, &token_for("alice", &["lobby"], &[], -60));
    assert_eq!(send(&expired, "lobby", "", "x"), Err(Code::Unauthenticated));
    assert_eq!(
        send(&alice_client, "vip", "", "x"),
        Err(Code::PermissionDenied)
    );
    assert_eq!(
        send(&alice_client, "lobby", "bob", "x"),
        Err(Code::PermissionDenied)
    );
    // A subscribe outside the token's rooms, or as someone else.
    let refused = alice_client.subscribe_messages(&subscribe_req("vip", "alice"));
    assert_eq!(
        refused.and_then(|mut s| next(&mut s)).unwrap_err().code,
        Code::PermissionDenied
    );
    let refused = alice_client.subscribe_messages(&subscribe_req("lobby", "mallory"));
    assert_eq!(
        refused.and_then(|mut s| next(&mut s)).unwrap_err().code,
        Code::PermissionDenied
    );

    // What gets through carries the token's user, on a stream that lived
    // through all of the above.
    let id = send(&alice_client, "lobby", "", "hello").unwrap();
    let got = loop {
        let m = next(&mut watcher).unwrap();
        if m.type_.enum_value_or_default() == chat::MessageType::CHAT {
            break m;
        }
    };
    assert_eq!((got.id.as_str(), got.user.as_str()), (id.as_str(), "alice"));
}

#[test]
fn grpc_streams_check_every_message_and_end_at_the_tokens_expiry() {
    let server = auth_server(|c| c.access.auth.leeway = Duration::ZERO);
    let client = client_with_token(&server, &alice());
    // Upload: the second message is for a room the token does not grant.
    let upload = client.upload_messages().unwrap();
    let mut ok = chat::Message::new();
    ok.room = "lobby".into();
    ok.content = "one".into();
    let mut vip = ok.clone();
    vip.room = "vip".into();
    push(&upload, &ok).unwrap();
    push(&upload, &vip).unwrap();
    let status = close_and_recv::<chat::UploadResponse>(upload).unwrap_err();
    assert_eq!(status.code, Code::PermissionDenied);
    assert_eq!(
        status.message,
        "message at index 1: not allowed to publish in room \"vip\""
    );

    // A subscriber whose token expires in 2 s: a SYSTEM notice, then
    // UNAUTHENTICATED.
    let short = client_with_token(&server, &token_for("alice", &[], &["lobby"], 2));
    let mut stream = short
        .subscribe_messages(&subscribe_req("lobby", ""))
        .unwrap();
    let welcome = next(&mut stream).unwrap();
    assert!(welcome.content.starts_with("Welcome"), "{welcome:?}");
    let notice = next(&mut stream).unwrap();
    assert_eq!(
        notice.type_.enum_value_or_default(),
        chat::MessageType::SYSTEM
    );
    assert_eq!(
        notice.content,
        "token has expired: reconnect with a fresh token"
    );
    let end = next(&mut stream).unwrap_err();
    assert_eq!(end.code, Code::Unauthenticated);
    assert!(support::wait_until(Duration::from_secs(5), || {
        server.app.hub().stats().closed.token_expired == 1
    }));
}

#[test]
fn health_and_reflection_stay_open_and_metrics_close_with_the_switch() {
    let open = auth_server(|_| {});
    assert_eq!(get(&open, "/healthz").status, 200);
    assert_eq!(get(&open, "/metrics").status, 200);
    let closed = auth_server(|c| c.access.metrics_need_token = true);
    assert_eq!(get(&closed, "/healthz").status, 200);
    assert_eq!(get(&closed, "/metrics").status, 401);
    assert_eq!(
        EventStream::open(&closed, "/metrics/events", &[])
            .head
            .status,
        401
    );
    let token = alice();
    let with = exchange(
        &closed,
        format!("GET /metrics HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(with.status, 200);
    let mut req = chat::MetricsRequest::new();
    req.interval_seconds = 1;
    let refused = closed.client().stream_metrics(&req);
    assert_eq!(
        refused.and_then(|mut s| next(&mut s)).unwrap_err().code,
        Code::Unauthenticated
    );
    let mut metrics = client_with_token(&closed, &token)
        .stream_metrics(&req)
        .unwrap();
    assert!(!next(&mut metrics).unwrap().name.is_empty());
    // gRPC health answers without a token.
    let mut check = HealthCheckRequest::new();
    check.service = String::new();
    let resp = closed
        .channel()
        .unary(
            "/grpc.health.v1.Health/Check",
            &encode(&check).unwrap(),
            &opt(),
        )
        .unwrap();
    let status = decode::<HealthCheckResponse>(&resp).unwrap().status;
    assert_eq!(status.enum_value_or_default(), ServingStatus::SERVING);
}

#[test]
fn publishes_past_the_rate_get_429_or_resource_exhausted_per_user() {
    let server = auth_server(|c| c.access.limits.publish = Quota::new(0.5, 2));
    let alice_auth = bearer(&alice());
    let post = |auth: &str| {
        post_with(
            &server,
            &[("Authorization", auth)],
            &message("lobby", "", "x"),
        )
    };
    assert_eq!(post(&alice_auth).status, 200);
    assert_eq!(post(&alice_auth).status, 200);
    let limited = post(&alice_auth);
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert_eq!(limited.header("retry-after"), Some("2"));
    assert!(limited.json()["error"]
        .as_str()
        .unwrap()
        .contains("rate limit"));
    // The budget is alice's, whichever door she uses.
    assert_eq!(
        send(&client_with_token(&server, &alice()), "lobby", "", "x"),
        Err(Code::ResourceExhausted)
    );
    // Bob has his own.
    let bob = bearer(&token_for("bob", &["lobby"], &[], 3600));
    assert_eq!(post(&bob).status, 200);
    assert_eq!(
        metric(
            &server,
            r#"streamhub_rate_limited_total{reason="publish_rate"}"#
        ),
        2.0
    );
}

#[test]
fn without_tokens_the_publish_rate_is_per_address() {
    let server = support::start_with(|c| c.access.limits.publish = Quota::new(0.5, 1));
    let post =
        || crate::support::http::post_raw(&server, message("r", "u", "x").to_string().as_bytes());
    assert_eq!(post().status, 200);
    assert_eq!(post().status, 429);
    let client = server.client();
    assert_eq!(send(&client, "r", "u", "x"), Err(Code::ResourceExhausted));
}

#[test]
fn one_address_cannot_hold_more_connections_than_its_cap_on_either_port() {
    let server = support::start_with(|c| c.access.limits.connections_per_address = 3);
    // Three idle HTTP connections from 127.0.0.1 (half-open requests).
    let held: Vec<_> = (0..3)
        .map(|_| {
            let mut s = connect(&server);
            s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    let mut fourth = connect(&server);
    fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let reply = read_reply(&mut BufReader::new(fourth), false).unwrap();
    assert_eq!(reply.status, 429);
    assert_eq!(
        reply.json()["error"],
        "too many open connections from this address"
    );
    drop(held);
    assert!(support::wait_until(IO_TIMEOUT, || get(&server, "/healthz")
        .status
        == 200));
    // gRPC: three connections, the fourth turned away with GOAWAY.
    let clients: Vec<_> = (0..3).map(|_| server.client()).collect();
    for c in &clients {
        send(c, "r", "u", "x").unwrap();
    }
    let fourth = streamhub::grpc::h2::client::Channel::connect(&server.grpc_addr, IO_TIMEOUT)
        .map(|ch| ChatClient::new(ch).with_options(opt()));
    let refused = fourth
        .map_err(|_| Code::Unavailable)
        .and_then(|c| send(&c, "r", "u", "x"));
    assert!(refused.is_err(), "{refused:?}");
    drop(clients);
    assert_eq!(
        metric(
            &server,
            r#"streamhub_rate_limited_total{reason="connections_per_address"}"#
        ),
        2.0
    );
}

#[test]
fn new_connections_per_second_are_limited_per_address() {
    let server = support::start_with(|c| c.access.limits.connect = Quota::new(1.0, 2));
    assert_eq!(get(&server, "/healthz").status, 200);
    assert_eq!(get(&server, "/healthz").status, 200);
    let third = get(&server, "/healthz");
    assert_eq!(third.status, 429);
    assert_eq!(third.header("retry-after"), Some("1"));
}

#[test]
fn tokens_reach_the_same_call_options_on_every_call_of_a_connection() {
    // One connection, the token verified once and reused; a second
    // token on the same connection is verified on its own.
    let server = auth_server(|_| {});
    let channel = server.channel();
    let as_alice = ChatClient::new(channel.clone()).with_options(
        CallOptions::default()
            .timeout(IO_TIMEOUT)
            .metadata("authorization", &bearer(&alice())),
    );
    let bob_token = token_for("bob", &["lobby"], &[], 3600);
    let as_bob = ChatClient::new(channel).with_options(
        CallOptions::default()
            .timeout(IO_TIMEOUT)
            .metadata("authorization", &bearer(&bob_token)),
    );
    for _ in 0..3 {
        assert!(send(&as_alice, "lobby", "alice", "a").is_ok());
        assert_eq!(
            send(&as_bob, "lobby", "alice", "b"),
            Err(Code::PermissionDenied)
        );
        assert!(send(&as_bob, "lobby", "bob", "b").is_ok());
    }
}

#[test]
fn grpc_web_calls_take_the_token_from_the_authorization_header() {
    use crate::support::grpc_web::{frame, raw_request, WebResponse};
    const PROTO: &str = "application/grpc-web+proto";
    let server = auth_server(|_| {});
    let mut req = chat::SendMessageRequest::new();
    req.room = "lobby".into();
    req.content = "from a browser".into();
    let call = |extra: &str| {
        let raw = raw_request("SendMessage", PROTO, extra, &frame(&req));
        let mut response = WebResponse::send(&server, &raw);
        assert_eq!(response.head.status, 200);
        match response.message::<chat::SendMessageResponse>() {
            Ok(_) => response.finish(),
            Err(status) => status,
        }
    };
    let none = call("");
    assert_eq!(
        (none.code, none.message.as_str()),
        (Code::Unauthenticated, "a bearer token is required")
    );
    assert_eq!(
        call("Authorization: Bearer nope\r\n").code,
        Code::Unauthenticated
    );
    let bob = token_for("bob", &["elsewhere"], &[], 3600);
    assert_eq!(
        call(&format!("Authorization: Bearer {bob}\r\n")).code,
        Code::PermissionDenied
    );
    // Alice's token: published under her name, seen by a native subscriber.
    let watcher = client_with_token(&server, &alice());
    let mut stream = watcher
        .subscribe_messages(&subscribe_req("lobby", ""))
        .unwrap();
    next(&mut stream).unwrap();
    assert_eq!(
        call(&format!("Authorization: Bearer {}\r\n", alice())).code,
        Code::Ok
    );
    let got = next(&mut stream).unwrap();
    assert_eq!(
        (got.user.as_str(), got.content.as_str()),
        ("alice", "from a browser")
    );
    // A subscriber without a token is refused trailers-only.
    let raw = raw_request(
        "SubscribeMessages",
        PROTO,
        "",
        &frame(&subscribe_req("lobby", "")),
    );
    let refused = WebResponse::send(&server, &raw);
    assert_eq!(refused.status().code, Code::Unauthenticated);
}
