//! Browsers as clients, in headless Chromium: a real gRPC-Web client
//! (Connect-ES, bundled by the test from npm) calling streamhub from
//! another origin, and the built-in page at `/` driven and looked at
//! through the DevTools protocol.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use streamhub::hub::{Protocol, Subscription};
use streamhub::proto::chat;

use crate::support::browser::{chromium, Browser, PageServer};
use crate::support::cdp::Cdp;
use crate::support::connect_es;
use crate::support::grpc::{next, send, subscribe, Messages};
use crate::support::{self, python, root};

/// What a test page reported (its POSTs to a report room), kept in order,
/// so that waiting for one report never loses another.
struct Reports {
    sub: Subscription,
    seen: Vec<String>,
}

impl Reports {
    fn new(server: &support::Server, room: &str) -> Reports {
        let (sub, _) = server
            .app
            .hub()
            .subscribe(room, None, Protocol::Grpc)
            .unwrap();
        Reports {
            sub,
            seen: Vec::new(),
        }
    }

    /// The first report starting with `prefix`, waiting up to `timeout`.
    fn wait(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.seen.iter().find(|r| r.starts_with(prefix)) {
                return found.clone();
            }
            let failed = self.seen.iter().find(|r| r.starts_with("failed"));
            assert!(failed.is_none(), "the page failed: {failed:?}");
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self.sub.recv_timeout(left).unwrap_or_else(|| {
                panic!(
                    "no report '{prefix}' within {timeout:?}; got {:?}",
                    self.seen
                )
            });
            self.seen.push(m.content.clone());
        }
    }
}

/// Reads `stream`'s messages until one has `content`.
fn until_content(stream: &mut Messages<chat::Message>, content: &str) -> chat::Message {
    for _ in 0..100 {
        let m = next(stream).expect("the stream goes on");
        if m.content == content {
            return m;
        }
    }
    panic!("'{content}' never arrived");
}

#[test]
fn connect_es_in_chromium_sends_and_streams_over_grpc_web_across_origins() {
    let Some(chromium) = chromium() else {
        return;
    };
    let Some(bundle) = connect_es::bundle() else {
        return;
    };
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>Connect-ES</title><body><script>{}</script></body>",
        bundle.replace("</script", "<\\/script")
    );
    let page = PageServer::start(Box::leak(html.into_bytes().into_boxed_slice()));
    let origin = format!("http://127.0.0.1:{}", page.port);
    // Only the page's origin: the preflight and the exposed headers must
    // be right for it, and nothing looser is allowed.
    let server = support::start_with(|c| c.http.cors_origins = vec![origin.clone()]);
    let mut reports = Reports::new(&server, "connect-report");
    let client = server.client();
    let mut native = subscribe(&client, "connect", "");
    let url = format!(
        "{origin}/?base=http://127.0.0.1:{}&room=connect&report=connect-report",
        server.app.http_port()
    );
    let browser = Browser::open(&chromium, &url);
    reports.wait("sub ready", Duration::from_secs(60));
    // SubscribeMessages over gRPC-Web gets what a native client sends.
    send(&client, "connect", "grpc", "from native gRPC").unwrap();
    reports.wait("sub from native gRPC", Duration::from_secs(30));
    // SendMessage from the browser reaches a native subscriber, same id.
    send(&client, "connect", "grpc", "send now").unwrap();
    let sent = reports.wait("sent ", Duration::from_secs(30));
    let m = until_content(&mut native, "hello from connect-es");
    assert_eq!(sent, format!("sent {}", m.id));
    assert_eq!(m.user, "browser");
    // A refusal is the native code and message, read by the client from a
    // trailers-only answer across origins (grpc-status exposed).
    let native_error = send(&client, "connect", "", "no user").unwrap_err();
    let refused = reports.wait("refused ", Duration::from_secs(30));
    assert_eq!(
        refused,
        format!(
            "refused {} {}",
            native_error.code.number(),
            native_error.message
        )
    );
    // StreamMetrics over gRPC-Web.
    let metric = reports.wait("metric ", Duration::from_secs(30));
    assert!(metric.ends_with(" chromium"), "{metric}");
    drop(browser);
}

/// Python's grpcio sending lines given to it, as a child process; its
/// answers arrive on a channel (bounded waits, no blocking read).
struct PythonSender {
    child: std::process::Child,
    answers: Receiver<String>,
    _out: std::path::PathBuf,
}

impl PythonSender {
    fn start(grpc_addr: &str, room: &str, user: &str) -> PythonSender {
        let out = std::env::temp_dir().join(format!(
            "streamhub-pysend-{}-{}",
            std::process::id(),
            support::unique()
        ));
        std::fs::create_dir_all(&out).unwrap();
        let mut child = Command::new(python())
            .arg(root().join("tests/py/send.py"))
            .args([grpc_addr])
            .arg(root().join("proto"))
            .arg(&out)
            .args([room, user])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python runs");
        let (tx, answers) = crossbeam_channel::unbounded();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let sender = PythonSender {
            child,
            answers,
            _out: out,
        };
        assert_eq!(sender.answer(), "ready");
        sender
    }

    fn answer(&self) -> String {
        self.answers
            .recv_timeout(Duration::from_secs(60))
            .expect("python answers")
    }

    fn send(&mut self, content: &str) -> String {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{content}").unwrap();
        stdin.flush().unwrap();
        self.answer()
    }
}

impl Drop for PythonSender {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._out);
    }
}

const LIVE: &str = "document.getElementById('state').dataset.state === 'live'";

fn shows(text: &str) -> String {
    format!("document.getElementById('messages').innerText.includes({text:?})")
}

/// Types `text` into the page's box and sends it, as a person would.
fn type_and_send(page: &mut Cdp, text: &str) {
    page.eval(&format!(
        "document.getElementById('content').value = {text:?}; \
         document.getElementById('send').requestSubmit(); true"
    ));
}

#[test]
fn built_in_page_shows_python_messages_within_a_second_sends_to_grpc_and_survives_a_restart() {
    let Some(chromium) = chromium() else {
        return;
    };
    let server = support::start_with(|c| c.http.sse_retry_ms = 200);
    let http_port = server.app.http_port();
    let url = format!("http://127.0.0.1:{http_port}/?room=lobby&user=pat");
    let browser = Browser::open_with(
        &chromium,
        &url,
        &["--remote-debugging-port=0", "--window-size=1100,720"],
    );
    let mut page = Cdp::attach(browser.profile());
    page.eval_until(LIVE, Duration::from_secs(60));
    page.eval_until(&shows("pat joined the room"), Duration::from_secs(10));

    // Messages from a Python gRPC client appear within a second.
    let mut python = PythonSender::start(&server.grpc_addr, "lobby", "py");
    let mut slowest = Duration::ZERO;
    for i in 1..=3 {
        let text = format!("hello {i} from python");
        let started = Instant::now();
        assert!(python.send(&text).starts_with("sent msg_"));
        page.eval_until(&shows(&text), Duration::from_secs(10));
        slowest = slowest.max(started.elapsed());
    }
    assert!(slowest < Duration::from_secs(1), "slowest {slowest:?}");

    // What the page sends (gRPC-Web) reaches a gRPC subscriber.
    let client = server.client();
    let mut native = subscribe(&client, "lobby", "");
    type_and_send(&mut page, "hello from the page");
    let m = until_content(&mut native, "hello from the page");
    assert_eq!(m.user, "pat");
    page.eval_until(&shows("hello from the page"), Duration::from_secs(10));

    // The telemetry plots fill in (deliveries/s takes two samples).
    page.eval_until(
        "[...document.querySelectorAll('.plot b')].every((b) => b.textContent !== '-')",
        Duration::from_secs(10),
    );

    // Not blank: the screenshot is saved for a person to look at, and the
    // browser itself counts its coloured pixels.
    let png = page.screenshot();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("built-in-page.png");
    std::fs::write(&path, &png).unwrap();
    let inked = page.inked_share(&png);
    assert!(inked > 0.02, "{} looks blank ({inked})", path.display());
    eprintln!("screenshot: {} ({inked:.3} inked)", path.display());
    drop(native);
    drop(python);

    // A restart: the page notices, comes back on its own, and shows what
    // the new server gets, from its new beginning.
    let support::Server { app, .. } = server;
    app.shutdown();
    page.eval_until(&format!("!({LIVE})"), Duration::from_secs(10));
    let server = support::start_with(|c| {
        c.http.sse_retry_ms = 200;
        c.http.addr = format!("127.0.0.1:{http_port}").parse().unwrap();
    });
    page.eval_until(LIVE, Duration::from_secs(30));
    let client = server.client();
    send(&client, "lobby", "grpc", "after the restart").unwrap();
    page.eval_until(&shows("after the restart"), Duration::from_secs(10));
    let mut native = subscribe(&client, "lobby", "");
    type_and_send(&mut page, "still here");
    assert_eq!(until_content(&mut native, "still here").user, "pat");
    drop(browser);
}

#[test]
fn the_page_is_served_from_the_binary_and_ui_off_turns_it_off() {
    let on = support::start();
    let page = crate::support::http::get(&on, "/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.text().contains("<script src=\"/ui/app.js\">"));
    for (path, kind) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ] {
        let asset = crate::support::http::get(&on, path);
        assert_eq!(asset.status, 200, "{path}");
        assert!(asset.header("content-type").unwrap().starts_with(kind));
        assert!(!asset.body.is_empty());
        assert!(
            !asset.text().contains("http"),
            "{path} loads nothing from elsewhere"
        );
    }
    // The page is all there is: no CDN, no other origin.
    assert!(
        !page.text().contains("http"),
        "the page loads nothing from elsewhere"
    );
    let off = support::start_with(|c| c.http.ui = false);
    assert_eq!(crate::support::http::get(&off, "/").status, 404);
    assert_eq!(crate::support::http::get(&off, "/ui/app.js").status, 404);
    assert_eq!(crate::support::http::get(&off, "/healthz").status, 200);
}

#[test]
fn with_a_token_the_page_sends_and_announces_as_the_tokens_user() {
    let Some(chromium) = chromium() else {
        return;
    };
    let server = support::start_with(|c| {
        c.access.auth.mode = streamhub::auth::AuthMode::Required;
        c.access.auth.key = Some(streamhub::auth::KeySource::SecretFile(
            crate::auth::secret_file(),
        ));
    });
    let token = crate::auth::token_for("alice", &["lobby"], &["lobby"], 3600);
    let url = format!(
        "http://127.0.0.1:{}/?room=lobby&user=guest",
        server.app.http_port()
    );
    let browser = Browser::open_with(&chromium, &url, &["--remote-debugging-port=0"]);
    let mut page = Cdp::attach(browser.profile());
    // Without a token the stream is refused; with one, the page joins as
    // the token's user, whatever name was typed.
    page.eval_until(
        "document.getElementById('state').dataset.state !== 'connecting'",
        Duration::from_secs(60),
    );
    page.eval(&format!(
        "document.getElementById('token').value = {token:?}; \
         document.getElementById('join').requestSubmit(); true"
    ));
    page.eval_until(LIVE, Duration::from_secs(30));
    page.eval_until(&shows("alice joined the room"), Duration::from_secs(10));
    assert_eq!(
        page.eval("document.getElementById('user').value"),
        serde_json::json!("alice")
    );
    let watcher = crate::auth::client_with_token(&server, &token);
    let mut native = watcher
        .subscribe_messages(&crate::support::grpc::subscribe_req("lobby", ""))
        .unwrap();
    // The welcome: the subscription is registered.
    let welcome = next(&mut native).expect("welcome");
    assert!(welcome.content.contains("Welcome"), "{}", welcome.content);
    type_and_send(&mut page, "signed in");
    assert_eq!(until_content(&mut native, "signed in").user, "alice");
    drop(browser);
}
