//! Tokens with clients nobody here wrote: Python's grpcio over TLS with
//! per-call metadata, `curl --cacert`, headless Chromium's EventSource
//! (cookie and `access_token`, across origins), and the command-line
//! `token` and `send`. Certificates are made by `openssl` in the test.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::auth::{secret_file, token_for};
use crate::support;
use crate::support::binary::{cli, serve, serve_refused, BIN};
use crate::support::browser::{chromium, next_report, Browser, PageServer};
use crate::support::grpc::send;
use crate::tls::{certificate, python_tls_client, tls_flags};

fn text(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `streamhub token` with these arguments.
fn mint(args: &[&str]) -> Output {
    Command::new(BIN).arg("token").args(args).output().unwrap()
}

fn curl(ca: &Path) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert"]).arg(ca);
    cmd
}

#[test]
fn a_token_from_the_token_command_works_for_grpcio_and_curl_over_tls() {
    let (dir, cert, key) = certificate();
    let secret = secret_file();
    let secret = secret.to_str().unwrap();
    let token = text(&mint(&[
        "--secret-file",
        secret,
        "--sub",
        "alice",
        "--publish",
        "tls,lobby",
        "--subscribe",
        "tls",
    ]));
    let mut flags = tls_flags(&cert, &key).to_vec();
    flags.extend(["--auth", "required", "--auth-secret-file", secret]);
    let server = serve(&flags);

    // Python's grpcio: ssl_channel_credentials, per-call metadata, and the
    // refusals (no token, forged, another user's name) as its status codes.
    python_tls_client(&server.grpc_addr, &dir, &cert, &[&token, "alice"]);

    // curl: 401 with the challenge, then 200 with the token.
    let http = server.http_addr();
    let url = format!("https://{http}/messages");
    let body = r#"{"room":"lobby","content":"from curl"}"#;
    let refused = curl(&cert)
        .args([
            "-i",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            &url,
        ])
        .output()
        .unwrap();
    let refused = text(&refused);
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(
        refused.contains("WWW-Authenticate: Bearer realm=\"streamhub\""),
        "{refused}"
    );
    assert!(refused.contains(r#"{"error":"a bearer token is required"}"#));
    let published = curl(&cert)
        .args(["-H", "Content-Type: application/json"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-d", body, &url])
        .output()
        .unwrap();
    let published: serde_json::Value = serde_json::from_str(&text(&published)).unwrap();
    assert!(published["message_id"].is_string(), "{published}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_token_command_and_the_clients_token_flag() {
    let secret = secret_file();
    let secret = secret.to_str().unwrap();
    let server = serve(&["--auth", "required", "--auth-secret-file", secret]);
    let token = text(&mint(&[
        "--secret-file",
        secret,
        "--sub",
        "carol",
        "--publish",
        "*",
    ]));
    let sent = cli("send", &server.grpc_addr, "anywhere", "")
        .args(["--token", &token, "hello"])
        .output()
        .unwrap();
    assert!(text(&sent).starts_with("sent "));
    // Without it: the status, and exit code 1.
    let refused = cli("send", &server.grpc_addr, "anywhere", "carol")
        .arg("hello")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("UNAUTHENTICATED") && err.contains("a bearer token is required"),
        "{err}"
    );
    // Bad usage of `token` is exit code 2 and names the flag.
    let no_user = mint(&["--secret-file", secret]);
    assert_eq!(no_user.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_user.stderr).contains("--sub"));
    let bad_room = mint(&["--secret-file", secret, "--sub", "x", "--publish", "a*b"]);
    assert_eq!(bad_room.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_room.stderr).contains("--publish 'a*b'"));
    let short_secret = std::env::temp_dir().join(format!("streamhub-short-{}", std::process::id()));
    std::fs::write(&short_secret, "too short").unwrap();
    let weak = mint(&[
        "--secret-file",
        short_secret.to_str().unwrap(),
        "--sub",
        "x",
    ]);
    assert_eq!(weak.status.code(), Some(2));
    // The server refuses to start with it too, naming the flag.
    let weak_secret = short_secret.to_str().unwrap();
    let (code, err) = serve_refused(&["--auth", "required", "--auth-secret-file", weak_secret]);
    assert_eq!(code, 2);
    assert!(err.contains("--auth-secret-file"), "{err}");
    let (code, err) = serve_refused(&["--auth", "required"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--auth-secret-file or --auth-public-key-file"),
        "{err}"
    );
}

#[test]
fn chromium_event_sources_authenticate_by_cookie_and_access_token_and_renew_at_expiry() {
    let Some(chromium) = chromium() else {
        return;
    };
    let page = PageServer::start(include_bytes!("browser/auth.html"));
    let origin = format!("http://127.0.0.1:{}", page.port);
    let server = support::start_with(|c| {
        c.access.auth.mode = streamhub::auth::AuthMode::Required;
        c.access.auth.key = Some(streamhub::auth::KeySource::SecretFile(secret_file()));
        c.access.auth.leeway = Duration::ZERO;
        c.http.auth_cookie = Some("streamhub_token".into());
        c.http.cors_origins = vec![origin.clone()];
    });
    let (mut reports, _) = server
        .app
        .hub()
        .subscribe("auth-report", None, streamhub::hub::Protocol::Grpc)
        .unwrap();
    let token = token_for("alice", &["auth-report", "secret"], &["secret"], 3600);
    // Long enough for Chromium to start and open both streams (20 s was
    // not, once, on a loaded machine: neither stream opened).
    let short = token_for("alice", &[], &["secret"], 40);
    let url = format!(
        "{origin}/?base=http://127.0.0.1:{}&room=secret&report=auth-report&token={token}&short={short}&cookie=streamhub_token",
        server.app.http_port()
    );
    let browser = Browser::open(&chromium, &url);
    let wait = Duration::from_secs(60);
    let mut opened = vec![
        next_report(&mut reports, "", wait),
        next_report(&mut reports, "", wait),
    ];
    opened.sort();
    assert_eq!(opened, ["cookie open", "query open"]);
    let client = crate::auth::client_with_token(&server, &token);
    send(&client, "secret", "", "for your eyes").unwrap();
    let mut got = vec![
        next_report(&mut reports, "", wait),
        next_report(&mut reports, "", wait),
    ];
    got.sort();
    assert_eq!(got, ["cookie got for your eyes", "query got for your eyes"]);
    // Reports come in as alice: the page's token carried her name.
    assert_eq!(
        next_report(&mut reports, "query expired", wait),
        "query expired"
    );
    next_report(&mut reports, "fresh open", wait);
    send(&client, "secret", "", "after renewal").unwrap();
    next_report(&mut reports, "fresh got after renewal", wait);
    drop(browser);
    assert_eq!(server.app.hub().stats().closed.token_expired, 1);
}

#[test]
fn an_rs256_server_refuses_an_hs256_token_signed_with_its_own_public_key() {
    let dir = std::env::temp_dir().join(format!("streamhub-rs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (private, public) = (dir.join("rs.pem"), dir.join("rs.pub"));
    let made = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&private)
        .status()
        .unwrap()
        .success()
        && Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap()
            .success();
    assert!(made, "openssl makes an RSA key");
    let server = serve(&[
        "--auth",
        "required",
        "--auth-public-key-file",
        public.to_str().unwrap(),
    ]);
    let http = server.http_addr();
    let publish = |token: &str| {
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", " %{http_code}"])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args(["-d", r#"{"room":"lobby","content":"x"}"#])
            .arg(format!("http://{http}/messages"))
            .output()
            .unwrap()
    };
    let args = ["--sub", "alice", "--publish", "lobby"];
    let good = text(&mint(
        &[
            &["--private-key-file", private.to_str().unwrap()],
            &args[..],
        ]
        .concat(),
    ));
    assert!(text(&publish(&good)).ends_with(" 200"));
    // The classic confusion: HMAC keyed with the server's public key.
    let forged = text(&mint(
        &[&["--secret-file", public.to_str().unwrap()], &args[..]].concat(),
    ));
    let refused = text(&publish(&forged));
    assert!(refused.ends_with(" 401"), "{refused}");
    assert!(
        refused.contains("token is not signed with RS256"),
        "{refused}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
