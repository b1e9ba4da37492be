//! Rooms shared through a real `redis-server` (Debian's package, installed
//! by `make test`; STREAMHUB_REDIS_SERVER names another binary), started
//! on a unix socket of its own: the publish script's ordering and ids seen
//! from two nodes' connections, the Stream read back, the channel; then
//! real `streamhub --cluster` processes sharing it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use streamhub::cluster::{channel, decode_published, RedisRooms};
use streamhub::hub::MessageKind;

use crate::support::binary::{serve, Serve};
use crate::support::http::{get, post, post_raw};
use crate::support::sse::EventStream;
use crate::support::{unique, wait_until};

/// A `redis-server` on a unix socket, killed when dropped.
struct Redis {
    child: Child,
    dir: PathBuf,
    /// How it was started, for [`Redis::start_again`].
    persistence: &'static [&'static str],
}

/// No persistence: a restart loses every room.
const IN_MEMORY: &[&str] = &["--save", "", "--appendonly", "no"];
/// Every write synced to an append-only file, read back at a restart.
const DURABLE: &[&str] = &[
    "--save",
    "",
    "--appendonly",
    "yes",
    "--appendfsync",
    "always",
];

impl Redis {
    fn start() -> Redis {
        Redis::start_with(IN_MEMORY)
    }

    fn start_with(persistence: &'static [&'static str]) -> Redis {
        let dir = std::env::temp_dir().join(format!(
            "streamhub-redis-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Redis::spawn(&dir, persistence);
        Redis {
            child,
            dir,
            persistence,
        }
    }

    fn spawn(dir: &std::path::Path, persistence: &[&str]) -> Child {
        let binary =
            std::env::var("STREAMHUB_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let socket = dir.join("redis.sock");
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(&binary)
            .args(["--port", "0", "--unixsocketperm", "700"])
            .args(persistence)
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{binary} starts ({e}): run `make test`, which installs redis-server")
            });
        // Connected, not just made: the socket exists a moment before
        // redis-server listens on it.
        assert!(
            wait_until(Duration::from_secs(10), || {
                std::os::unix::net::UnixStream::connect(&socket).is_ok()
            }),
            "redis-server listens on its socket"
        );
        child
    }

    /// Kills it (SIGKILL: no goodbye to its clients).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same socket and directory.
    fn start_again(&mut self) {
        self.child = Redis::spawn(&self.dir, self.persistence);
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.dir.join("redis.sock").display())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn two_nodes_publishing_to_one_room_get_one_order_of_sequences_and_ids() {
    let redis = Redis::start();
    let a = RedisRooms::open(&redis.url(), 1000).unwrap();
    let b = RedisRooms::open(&redis.url(), 1000).unwrap();
    let (mut ca, mut cb) = (a.connect().unwrap(), b.connect().unwrap());
    // A subscriber's connection on the room's channel, as a node's.
    let mut sub_conn = a.connect().unwrap();
    let mut pubsub = sub_conn.as_pubsub();
    pubsub.subscribe(channel("lobby")).unwrap();
    pubsub
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    let mut published = Vec::new();
    for i in 0..20 {
        let (node, conn) = if i % 2 == 0 {
            (&a, &mut ca)
        } else {
            (&b, &mut cb)
        };
        let (m, _) = node
            .publish(conn, "lobby", "ann", &format!("m{i}"), MessageKind::Chat)
            .unwrap();
        published.push(m);
    }
    let seqs: Vec<u64> = published.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    let ids: Vec<u64> = published
        .iter()
        .map(|m| m.id.trim_start_matches("msg_").parse().unwrap())
        .collect();
    assert_eq!(
        ids,
        (1..=20).collect::<Vec<_>>(),
        "one id counter for both nodes"
    );
    // Another room's sequence starts at 1, its id goes on from the shared counter.
    let (other, _) = a
        .publish(&mut ca, "other", "bob", "x", MessageKind::Chat)
        .unwrap();
    assert_eq!((other.seq, other.id.as_str()), (1, "msg_21"));

    // Every node's channel sees the same messages in the same order.
    for want in &published {
        let msg = pubsub.get_message().unwrap();
        let (got, epoch) = decode_published("lobby", msg.get_payload_bytes()).unwrap();
        assert_eq!(
            (got.seq, &got.id, &got.content),
            (want.seq, &want.id, &want.content)
        );
        assert!(!epoch.is_empty());
    }
    // Resume: what the Stream holds after sequence 15, read from the other node.
    let after: Vec<(u64, String)> = b
        .after(&mut cb, "lobby", 15)
        .unwrap()
        .into_iter()
        .map(|m| (m.seq, m.id))
        .collect();
    let want: Vec<(u64, String)> = published[15..]
        .iter()
        .map(|m| (m.seq, m.id.clone()))
        .collect();
    assert_eq!(after, want);
}

#[test]
fn a_redis_that_is_gone_is_unavailable_not_a_panic() {
    let redis = Redis::start();
    let rooms = RedisRooms::open(&redis.url(), 10).unwrap();
    let mut conn = rooms.connect().unwrap();
    rooms
        .publish(&mut conn, "r", "u", "before", MessageKind::Chat)
        .unwrap();
    drop(redis);
    let err = rooms
        .publish(&mut conn, "r", "u", "after", MessageKind::Chat)
        .unwrap_err();
    assert!(
        matches!(err, streamhub::error::Error::Unavailable(_)),
        "{err}"
    );
    assert!(matches!(
        rooms.connect(),
        Err(streamhub::error::Error::Unavailable(_))
    ));
    assert!(matches!(
        RedisRooms::open("http://nope", 10),
        Err(streamhub::error::Error::Config(_))
    ));
}

/// A Redis that asks for a password (as one on the boards' network
/// should): a node with it in the URL works; one without, or with a wrong
/// one, refuses to start, naming the flag and not the password.
#[test]
fn a_redis_password_in_the_url_is_used_and_a_wrong_one_refuses_to_start() {
    let redis = Redis::start_with(&["--save", "", "--requirepass", "s3cret"]);
    let with = |pass: &str| format!("{}?pass={pass}", redis.url());
    let server = serve(&["--cluster", &with("s3cret")]);
    let port = server.http_port();
    assert_eq!(post(&port, "r", "ann", "hi")["seq"], 1);
    for url in [redis.url(), with("wrong")] {
        let (code, stderr) = crate::support::binary::serve_refused(&["--cluster", &url]);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("--cluster"), "{stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
    }
}

/// A `streamhub serve --cluster` node and its HTTP port.
fn node(redis: &Redis) -> (Serve, u16) {
    node_with(redis, &[])
}

/// [`node`] with more flags.
fn node_with(redis: &Redis, extra: &[&str]) -> (Serve, u16) {
    let url = redis.url();
    let mut flags = vec!["--cluster", url.as_str()];
    flags.extend_from_slice(extra);
    let server = serve(&flags);
    let port = server.http_port();
    (server, port)
}

/// The next `n` events of `stream` as (seq, id, content).
fn events(stream: &mut EventStream, n: usize) -> Vec<(u64, String, String)> {
    (0..n)
        .map(|_| {
            let data = stream.event().json();
            (
                data["seq"].as_u64().unwrap(),
                data["id"].as_str().unwrap().to_string(),
                data["content"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn messages_published_on_two_nodes_reach_every_node_with_the_same_ids_and_order() {
    let redis = Redis::start();
    let (_a, a) = node(&redis);
    let (_b, b) = node(&redis);
    let mut on_b = EventStream::connected(&b, "/events?room=lobby", &[]);
    let mut on_a = EventStream::connected(&a, "/events?room=lobby", &[]);
    let mut published = Vec::new();
    for i in 0..20 {
        let port = if i % 2 == 0 { a } else { b };
        let answer = post(&port, "lobby", "ann", &format!("m{i}"));
        published.push((
            answer["seq"].as_u64().unwrap(),
            answer["message_id"].as_str().unwrap().to_string(),
            format!("m{i}"),
        ));
    }
    let seqs: Vec<u64> = published.iter().map(|p| p.0).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "one sequence for both");
    assert_eq!(events(&mut on_b, 20), published, "node B");
    assert_eq!(events(&mut on_a, 20), published, "node A");

    // A node that started after those messages and then saw one more:
    // it read the room back from Redis, so resuming after 15 works there.
    let (_c, c) = node(&redis);
    let answer = post(&a, "lobby", "bob", "after");
    published.push((
        21,
        answer["message_id"].as_str().unwrap().into(),
        "after".into(),
    ));
    assert_eq!(events(&mut on_b, 1), published[20..].to_vec());
    let mut on_c = EventStream::connected(&c, "/events?room=lobby", &[("Last-Event-ID", "15")]);
    assert_eq!(events(&mut on_c, 6), published[15..].to_vec(), "node C");
    // And goes on live with what the others publish.
    let answer = post(&b, "lobby", "bob", "live");
    assert_eq!(answer["seq"], 22);
    assert_eq!(events(&mut on_c, 1)[0].0, 22);
}

/// The next `n` room messages of `stream` as (seq, id, content), and the
/// SYSTEM notices that came with them (their content), in order.
fn events_and_notices(
    stream: &mut EventStream,
    n: usize,
) -> (Vec<(u64, String, String)>, Vec<String>) {
    let (mut messages, mut notices) = (Vec::new(), Vec::new());
    while messages.len() < n {
        let event = stream.event();
        let data = event.json();
        let content = data["content"].as_str().unwrap().to_string();
        if event.event == "system" {
            assert_eq!(event.id, None, "a notice is no position: {data}");
            notices.push(content);
        } else {
            let id = data["id"].as_str().unwrap().to_string();
            messages.push((data["seq"].as_u64().unwrap(), id, content));
        }
    }
    (messages, notices)
}

/// Redis killed and started again under two nodes: publishes are refused
/// meanwhile (never lost), `/healthz`, Health.Check and Health.Watch say
/// NOT_SERVING then SERVING, subscribers on both doors stay connected,
/// are told that Redis went away and that it is back, and get every
/// message in order.
#[test]
fn while_redis_is_down_publishes_fail_and_health_says_so_then_nothing_accepted_is_lost() {
    use crate::support::grpc::{connect, encode, next, next_as, subscribe, CallOptions};
    use streamhub::proto::chat::MessageType;
    use streamhub::proto::health::health_check_response::ServingStatus;
    use streamhub::proto::health::{HealthCheckRequest, HealthCheckResponse};
    // The outage and the reconnect's backoff fit in this, with room.
    let long = CallOptions::default().timeout(Duration::from_secs(90));
    let mut redis = Redis::start_with(DURABLE);
    let (_a, a) = node(&redis);
    let (node_b, b) = node(&redis);
    let mut on_b = EventStream::connected(&b, "/events?room=r", &[]);
    let grpc_b = connect(&node_b.grpc_addr).with_options(long.clone());
    let mut grpc_on_b = subscribe(&grpc_b, "r", "");
    let health = crate::support::grpc::channel(&node_b.grpc_addr);
    let mut watch = health
        .server_streaming(
            "/grpc.health.v1.Health/Watch",
            &encode(&HealthCheckRequest::new()).unwrap(),
            &long,
        )
        .unwrap();
    let mut watched = || {
        next_as::<HealthCheckResponse>(&mut watch)
            .unwrap()
            .status
            .enum_value_or_default()
    };
    assert_eq!(watched(), ServingStatus::SERVING);
    let mut published = Vec::new();
    let mut publish = |port: u16, content: String| {
        let answer = post(&port, "r", "ann", &content);
        published.push((
            answer["seq"].as_u64().unwrap(),
            answer["message_id"].as_str().unwrap().to_string(),
            content,
        ));
    };
    for i in 0..5 {
        publish(a, format!("m{i}"));
    }
    let status = |port: u16| get(&port, "/healthz").status;
    assert_eq!((status(a), status(b)), (200, 200));

    redis.kill();
    let body = br#"{"room":"r","user":"ann","content":"lost?"}"#;
    assert!(
        wait_until(Duration::from_secs(10), || post_raw(&a, body).status == 503),
        "a publish while Redis is down is refused, not lost"
    );
    assert!(wait_until(Duration::from_secs(10), || status(b) == 503));
    assert_eq!(watched(), ServingStatus::NOT_SERVING, "Watch hears it");
    // The gRPC subscriber: the five messages, then the notice.
    for i in 0..5 {
        assert_eq!(next(&mut grpc_on_b).unwrap().content, format!("m{i}"));
    }
    let gone = next(&mut grpc_on_b).unwrap();
    assert_eq!(gone.type_.enum_value_or_default(), MessageType::SYSTEM);
    assert_eq!(gone.id, "system_cluster_unavailable", "{gone:?}");

    redis.start_again();
    // Published straight to Redis while the nodes reconnect: B has it from
    // the channel or, if it was not following yet, from the Stream.
    let rooms = RedisRooms::open(&redis.url(), 1000).unwrap();
    // Redis answers LOADING until it has read its append-only file back.
    let mut direct = None;
    assert!(wait_until(Duration::from_secs(10), || {
        direct = rooms
            .connect()
            .and_then(|mut conn| rooms.publish(&mut conn, "r", "ann", "m5", MessageKind::Chat))
            .ok();
        direct.is_some()
    }));
    let (m, _) = direct.unwrap();
    let mut published_directly = vec![(m.seq, m.id.clone(), "m5".to_string())];
    assert!(
        wait_until(Duration::from_secs(15), || status(a) == 200
            && status(b) == 200),
        "both nodes reconnect"
    );
    assert_eq!(watched(), ServingStatus::SERVING, "Watch hears it back");
    for i in 6..10 {
        publish(a, format!("m{i}"));
    }
    published_directly.extend(published.drain(5..));
    let all: Vec<_> = published.into_iter().chain(published_directly).collect();
    let seqs: Vec<u64> = all.iter().map(|p| p.0).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>(), "{all:?}");
    let (messages, notices) = events_and_notices(&mut on_b, 10);
    assert_eq!(messages, all);
    assert_eq!(notices.len(), 2, "{notices:?}");
    assert!(notices[0].contains("unavailable"), "{notices:?}");
    assert!(notices[1].contains("is back"), "{notices:?}");
    // The gRPC subscriber too: the rest, and the notice that Redis is back.
    let mut rest = Vec::new();
    let mut back = None;
    while rest.len() < 5 {
        let m = next(&mut grpc_on_b).unwrap();
        match m.type_.enum_value_or_default() {
            MessageType::SYSTEM => back = Some(m.id),
            _ => rest.push(m.id),
        }
    }
    let ids: Vec<String> = all[5..].iter().map(|m| m.1.clone()).collect();
    assert_eq!(rest, ids);
    assert_eq!(back.as_deref(), Some("system_cluster_recovered"));
}

/// A node follows only the rooms it has subscribers for: it subscribes to
/// a room's channel for its first subscriber and unsubscribes after the
/// last one left (seen from Redis: PUBSUB NUMSUB), and a room it stopped
/// following is caught up when it follows it again.
#[test]
fn a_node_follows_only_the_rooms_it_has_subscribers_for() {
    let redis = Redis::start();
    let (_a, a) = node(&redis);
    let (_b, b) = node(&redis);
    let rooms = RedisRooms::open(&redis.url(), 1000).unwrap();
    let mut conn = rooms.connect().unwrap();
    let mut followers = |room: &str| -> i64 {
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel(room))
            .query::<Vec<(String, i64)>>(&mut conn)
            .unwrap()
            .remove(0);
        n
    };
    // Published with nobody subscribed anywhere: no node follows it.
    post(&a, "quiet", "ann", "q1");
    assert_eq!(followers("quiet"), 0);

    let mut on_b = EventStream::connected(&b, "/events?room=quiet", &[]);
    assert_eq!(followers("quiet"), 1, "followed once B has a subscriber");
    let second = EventStream::connected(&b, "/events?room=quiet", &[]);
    assert_eq!(followers("quiet"), 1, "once per node, not per subscriber");
    let seq = post(&a, "quiet", "ann", "q2")["seq"].as_u64().unwrap();
    assert_eq!(events(&mut on_b, 1)[0].0, seq);
    drop(on_b);
    drop(second);
    assert!(
        wait_until(Duration::from_secs(10), || followers("quiet") == 0),
        "let go once its last subscriber left"
    );
    // Published while B did not follow: B catches up when it does again.
    let missed = post(&a, "quiet", "ann", "q3")["seq"].as_u64().unwrap();
    let mut again = EventStream::connected(
        &b,
        "/events?room=quiet",
        &[("Last-Event-ID", &seq.to_string())],
    );
    assert_eq!(events(&mut again, 1)[0].0, missed);
    assert_eq!(followers("quiet"), 1);
}

/// A node killed (SIGKILL) and started again has lost its memory, not the
/// room: a gRPC subscriber resumes there after a message id that another
/// node gave, and goes on live.
#[test]
fn a_grpc_subscriber_resumes_by_id_on_a_node_killed_and_started_again() {
    use crate::support::grpc::{connect, next, resume, send, send_numbered};
    let redis = Redis::start();
    let (a, _) = node(&redis);
    let a = connect(&a.grpc_addr);
    let ids = send_numbered(&a, "g", 10);
    // Another room between: ids are shared by all rooms.
    send(&a, "other", "ann", "elsewhere").unwrap();
    let (mut b, _) = node(&redis);
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let (b, _) = node(&redis);
    let (_client, mut stream) = resume(&b.grpc_addr, "g", "last-message-id", &ids[5]);
    for want in &ids[6..] {
        assert_eq!(&next(&mut stream).unwrap().id, want);
    }
    let live = send(&a, "g", "ann", "live").unwrap().message_id;
    assert_eq!(next(&mut stream).unwrap().id, live);
}

/// Calls that wait for Redis (here paused with SIGSTOP: they wait until
/// Redis goes on, or their 2 s read timeout) do not hold up the other
/// calls of their connection: a SendMessage, and a SubscribeMessages that
/// is its room's first on this node (the node must follow the room
/// first). A Health.Check sent after both on the same connection is
/// answered before either.
#[test]
fn calls_waiting_for_redis_do_not_hold_up_their_connection() {
    use crate::support::binary::signal;
    use crate::support::grpc::{encode, next, opt, send, subscribe_req, ChatClient};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use streamhub::proto::health::HealthCheckRequest;
    let redis = Redis::start();
    let (server, _) = node(&redis);
    let channel = crate::support::grpc::channel(&server.grpc_addr);
    let client = ChatClient::new(channel.clone()).with_options(opt());
    send(&client, "r", "ann", "warm").unwrap();
    signal(&redis.child, "STOP");
    let order = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (order, client) = (order.clone(), client.clone());
        std::thread::spawn(move || {
            let sent = send(&client, "r", "ann", "held");
            (sent.map(|_| ()), order.fetch_add(1, Ordering::SeqCst))
        })
    };
    let subscriber = {
        let order = order.clone();
        std::thread::spawn(move || {
            let first = client
                .subscribe_messages(&subscribe_req("fresh", ""))
                .and_then(|mut stream| next(&mut stream));
            (first.map(|_| ()), order.fetch_add(1, Ordering::SeqCst))
        })
    };
    // Once both requests are written (the first was "warm").
    assert!(wait_until(Duration::from_secs(10), || {
        channel.requests_sent() == 3
    }));
    let check = channel.unary(
        "/grpc.health.v1.Health/Check",
        &encode(&HealthCheckRequest::new()).unwrap(),
        &opt(),
    );
    let checked = order.fetch_add(1, Ordering::SeqCst);
    signal(&redis.child, "CONT");
    let (sent, published) = publisher.join().unwrap();
    let (welcomed, subscribed) = subscriber.join().unwrap();
    assert!(check.is_ok(), "{check:?}");
    assert_eq!(checked, 0, "the check came first");
    assert!(published > 0 && subscribed > 0);
    // Redis went on before the 2 s read timeout (published, subscribed),
    // or a loaded machine took longer (refused: UNAVAILABLE).
    for status in [sent.err(), welcomed.err()].into_iter().flatten() {
        let unavailable = crate::support::grpc::Code::Unavailable;
        assert_eq!(status.code, unavailable, "{status:?}");
    }
}

/// A node that learnt a room from its Stream (no message of it came on the
/// channel) sees that the room began again when Redis, restarted without
/// persistence, gives it a new epoch: its subscribers there are ended to
/// resume, and the resume says the old position is gone, instead of the
/// new messages being taken for ones it already has.
#[test]
fn a_room_that_began_again_in_redis_is_seen_as_such_by_a_node_that_only_read_it_back() {
    let mut redis = Redis::start();
    let (_a, a) = node(&redis);
    let (_b, b) = node(&redis);
    for i in 1..=5 {
        post(&a, "r", "ann", &format!("old{i}"));
    }
    let mut on_b = EventStream::connected(&b, "/events?room=r", &[("Last-Event-ID", "3")]);
    assert_eq!(
        events(&mut on_b, 2).last().unwrap().0,
        5,
        "read back from the Stream"
    );
    redis.kill();
    let status = |port: u16| get(&port, "/healthz").status;
    assert!(wait_until(Duration::from_secs(10), || status(b) == 503));
    redis.start_again();
    assert!(wait_until(Duration::from_secs(15), || status(a) == 200
        && status(b) == 200));
    assert_eq!(
        post(&a, "r", "ann", "new1")["seq"],
        1,
        "Redis lost the room"
    );
    // B's subscriber is ended (after the notices Redis's outage brought),
    // and is given no message: the new one is no successor of 5.
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            std::time::Instant::now() < until,
            "B's subscriber was not ended"
        );
        match on_b.item() {
            Ok(crate::support::sse::Item::Event(e)) => assert_eq!(e.event, "system", "{e:?}"),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("B's subscriber was not ended: {e}"),
        }
    }
    let mut again = EventStream::connected(&b, "/events?room=r", &[("Last-Event-ID", "5")]);
    let notice = again.event();
    assert_eq!(notice.event, "system");
    assert!(notice.json()["content"]
        .as_str()
        .unwrap()
        .contains("not a position"));
    let (seq, _, content) = events(&mut again, 1).remove(0);
    assert_eq!((seq, content.as_str()), (1, "new1"));
}

/// The missed-count notice on any node: a node started after the messages
/// (so also one killed and started again) keeps `--history` of them, and
/// a client resuming before those is told how many it missed (SSE) or
/// that it may have missed some (gRPC, by id), then gets the rest.
#[test]
fn a_resume_past_the_history_is_told_what_was_missed_on_another_node() {
    use crate::support::grpc::{connect, next, resume, send_numbered};
    let redis = Redis::start();
    let (a, _) = node(&redis);
    let ids = send_numbered(&connect(&a.grpc_addr), "h", 10);
    let (b, b_port) = node_with(&redis, &["--history", "3"]);
    let mut sse = EventStream::connected(&b_port, "/events?room=h", &[("Last-Event-ID", "2")]);
    let notice = sse.event();
    assert_eq!(notice.event, "system");
    assert_eq!(notice.json()["missed"], 5, "{}", notice.data);
    let replay: Vec<u64> = events(&mut sse, 3).iter().map(|e| e.0).collect();
    assert_eq!(replay, [8, 9, 10]);
    let (_client, mut stream) = resume(&b.grpc_addr, "h", "last-message-id", &ids[1]);
    let missed = next(&mut stream).unwrap();
    assert_eq!(missed.id, "system_missed", "{missed:?}");
    let replay: Vec<String> = (0..3).map(|_| next(&mut stream).unwrap().id).collect();
    assert_eq!(replay, ids[7..]);
}

/// `redis://HOST:PORT`, the form for a Redis on another board: a node on
/// TCP and a node on the unix socket share a room.
#[test]
fn a_node_reaches_redis_over_tcp() {
    let redis = Redis::start();
    // Redis listens on a free port as well (its socket stays).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut conn = RedisRooms::open(&redis.url(), 10)
        .unwrap()
        .connect()
        .unwrap();
    for (name, value) in [
        ("bind", "127.0.0.1".to_string()),
        ("port", port.to_string()),
    ] {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query::<()>(&mut conn)
            .unwrap();
    }
    let a = serve(&["--cluster", &format!("redis://127.0.0.1:{port}")]);
    let (_b, b) = node(&redis);
    let mut on_b = EventStream::connected(&b, "/events?room=t", &[]);
    let answer = post(&a.http_port(), "t", "ann", "over tcp");
    assert_eq!(
        events(&mut on_b, 1),
        [(
            1,
            answer["message_id"].as_str().unwrap().to_string(),
            "over tcp".to_string()
        )]
    );
}
