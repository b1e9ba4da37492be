//! The auth decision without sockets: every refusal issue 12 names, the
//! modes, patterns in tokens, the leeway, and the key files. RS256 and
//! ES256 keys are made by the `openssl` command in a scratch directory;
//! those tests say so and pass when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};

use super::*;

const SECRET: &[u8] = b"streamhub-test-secret-0123456789-abcdef";
/// "Now" in every test: 2027-01-15.
const NOW: u64 = 1_800_000_000;
const HOUR: u64 = 3600;

/// An RSA public key (its private half was thrown away): enough for the
/// HS/RS confusion, which needs no signing.
const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAkrDhsH8h6/p1KBh0iJfz
Bf78NlAkrXdATNTM/hU6D1tIA2gSLhbQIzXxpV5Ld8ArzzgPttVL9ESaG2nAuuDX
GXvUmX5ka0o//aUaWIJCtVF4jJN0FM7/9QzvdIISQ0ndNlfQDbEIqvpkon39nvVf
fJPabjSTvL73Ibh7evpw5zJOaXTZwnEOmGmXqUKCyvBneJ9o/KQZ1HxgwRQmZQwj
ViKlR72I7d6RJOAy31NNblawR0aHvLscoi2bhaexBcWP7ObS8szaoqpUf7cJ0WaB
MXUoSmLc8iazeIjH+2yLFQVAg7ZmGVtm60AOTr4Ls61qDQ/p8hlVqNwPv2d7hYrg
PQIDAQAB
-----END PUBLIC KEY-----
";

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn now() -> SystemTime {
    at(NOW)
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn claims(publish: &[&str], subscribe: &[&str]) -> Claims {
    Claims {
        sub: "alice".into(),
        exp: NOW + HOUR,
        nbf: None,
        streamhub: Permissions {
            publish: strings(publish),
            subscribe: strings(subscribe),
        },
    }
}

fn required(anonymous: &[&str]) -> AuthConfig {
    AuthConfig {
        mode: AuthMode::Required,
        anonymous_subscribe: anonymous.iter().map(|p| p.parse().unwrap()).collect(),
        ..AuthConfig::default()
    }
}

fn hs256(config: &AuthConfig) -> Authorizer {
    Authorizer::new(config, Some(VerifyingKey::hs256(SECRET).unwrap())).unwrap()
}

fn sign(c: &Claims) -> String {
    mint_hs256(SECRET, c).unwrap()
}

/// An HS256 token with any JSON as claims.
fn sign_json(claims: &Value) -> String {
    let key = EncodingKey::from_secret(SECRET).unwrap();
    jsonwebtoken::encode(&Header::new(jsonwebtoken::Algorithm::HS256), claims, &key).unwrap()
}

/// A correctly signed HS256 token from encoded parts, however odd.
fn sign_parts(header: &str, claims: &str) -> String {
    let key = EncodingKey::from_secret(SECRET).unwrap();
    let message = format!("{header}.{claims}");
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
            .unwrap();
    format!("{message}.{signature}")
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The refusal of `token` for `action` in `room`, checked never to
/// repeat any part of the token.
fn refusal(auth: &Authorizer, token: &str, room: &str, action: Action) -> Denied {
    let denied = auth
        .check(Some(token), room, action, now())
        .expect_err("refused");
    let text = denied.to_string();
    for part in token.split('.').filter(|p| p.len() >= 8) {
        assert!(!text.contains(part), "{text:?} repeats the token");
    }
    assert!(text.len() < 100, "{text:?} is not short");
    denied
}

fn unauthenticated(auth: &Authorizer, token: &str) -> Unauthenticated {
    match refusal(auth, token, "lobby", Action::Subscribe) {
        Denied::Unauthenticated(why) => why,
        other => panic!("expected 401, got {other:?}"),
    }
}

#[test]
fn auth_off_allows_everything_and_names_no_user() {
    let auth = Authorizer::new(&AuthConfig::default(), None).unwrap();
    for token in [None, Some("garbage"), Some(&*sign(&claims(&[], &[])))] {
        for action in [Action::Publish, Action::Subscribe] {
            let grant = auth.check(token, "admin", action, now()).unwrap();
            assert_eq!(
                grant,
                Grant {
                    user: None,
                    expires: None
                }
            );
        }
    }
}

#[test]
fn required_without_a_key_is_a_configuration_error() {
    let err = Authorizer::new(&required(&[]), None).unwrap_err();
    assert!(err.to_string().contains("--auth-secret-file"), "{err}");
}

#[test]
fn no_token_may_only_subscribe_to_anonymous_rooms() {
    let auth = hs256(&required(&["lobby", "public.*"]));
    for room in ["lobby", "public.news", "public.a.b"] {
        let grant = auth.check(None, room, Action::Subscribe, now()).unwrap();
        assert_eq!(grant.user, None);
        assert_eq!(grant.expires, None);
    }
    for (room, action) in [
        ("lobby", Action::Publish),
        ("public.news", Action::Publish),
        ("admin", Action::Subscribe),
        ("public", Action::Subscribe),
    ] {
        assert_eq!(
            auth.check(None, room, action, now()),
            Err(Denied::Unauthenticated(Unauthenticated::Missing)),
            "{action} {room}"
        );
    }
}

#[test]
fn a_valid_token_grants_its_rooms_under_its_user_until_expiry_plus_leeway() {
    let auth = hs256(&required(&[]));
    let token = sign(&claims(&["lobby"], &["lobby", "sensors.*"]));
    let grant = auth
        .check(Some(&token), "sensors.t1", Action::Subscribe, now())
        .unwrap();
    assert_eq!(grant.user.as_deref(), Some("alice"));
    assert_eq!(grant.expires, Some(at(NOW + HOUR) + DEFAULT_LEEWAY));
    auth.check(Some(&token), "lobby", Action::Publish, now())
        .unwrap();
}

#[test]
fn a_token_for_another_room_is_forbidden() {
    let auth = hs256(&required(&[]));
    let token = sign(&claims(&["lobby"], &["lobby", "sensors.*"]));
    let denied = refusal(&auth, &token, "admin", Action::Subscribe);
    assert_eq!(
        denied,
        Denied::Forbidden {
            action: Action::Subscribe,
            room: "admin".into()
        }
    );
    assert_eq!(
        denied.to_string(),
        "not allowed to subscribe in room \"admin\""
    );
    // `sensors.*` does not cover `sensors` itself.
    refusal(&auth, &token, "sensors", Action::Subscribe);
    // Subscribing is not publishing.
    assert!(matches!(
        refusal(&auth, &token, "sensors.t1", Action::Publish),
        Denied::Forbidden { .. }
    ));
}

#[test]
fn a_missing_permission_list_grants_nothing() {
    let auth = hs256(&required(&[]));
    let token = sign_json(&json!({"sub": "bob", "exp": NOW + HOUR}));
    for action in [Action::Publish, Action::Subscribe] {
        assert!(matches!(
            refusal(&auth, &token, "lobby", action),
            Denied::Forbidden { .. }
        ));
    }
    let token = sign_json(&json!({"sub": "bob", "exp": NOW + HOUR,
        "streamhub": {"subscribe": ["*"]}}));
    auth.check(Some(&token), "any.room", Action::Subscribe, now())
        .unwrap();
    assert!(matches!(
        refusal(&auth, &token, "lobby", Action::Publish),
        Denied::Forbidden { .. }
    ));
}

#[test]
fn a_token_holder_may_also_read_the_anonymous_rooms() {
    let auth = hs256(&required(&["lobby"]));
    let token = sign(&claims(&[], &[]));
    let grant = auth
        .check(Some(&token), "lobby", Action::Subscribe, now())
        .unwrap();
    assert_eq!(grant.user.as_deref(), Some("alice"));
}

#[test]
fn a_bad_token_is_refused_even_for_an_anonymous_room() {
    let auth = hs256(&required(&["lobby"]));
    assert!(matches!(
        unauthenticated(&auth, "not-a-token"),
        Unauthenticated::Malformed(_)
    ));
}

#[test]
fn malformed_tokens_say_which_part_is_wrong() {
    let auth = hs256(&required(&[]));
    let good = sign(&claims(&["lobby"], &["lobby"]));
    let parts: Vec<&str> = good.split('.').collect();
    let cases: Vec<(String, &str)> = vec![
        ("".into(), "not three dot-separated parts"),
        ("abc".into(), "not three dot-separated parts"),
        (format!("{}.{}", parts[0], parts[1]), "not three"),
        (format!("{good}.x"), "not three"),
        (format!("!!!.{}.{}", parts[1], parts[2]), "not base64url"),
        (
            format!("{}.{}.{}", b64(b"[1]"), parts[1], parts[2]),
            "no alg",
        ),
        (sign_parts(parts[0], "!!!"), "not base64url"),
        (sign_parts(parts[0], &b64(b"not json")), "not JSON"),
        (sign_json(&json!({"exp": NOW + HOUR})), "sub is missing"),
        (
            sign_json(&json!({"sub": 7, "exp": NOW + HOUR})),
            "sub is missing or not a string",
        ),
        (
            sign_json(&json!({"sub": "", "exp": NOW + HOUR})),
            "sub is empty",
        ),
        (
            sign_json(
                &json!({"sub": "x".repeat(crate::hub::MAX_USER_NAME + 1), "exp": NOW + HOUR}),
            ),
            "longer than a user name",
        ),
        (sign_json(&json!({"sub": "a"})), "exp is missing"),
        (
            sign_json(&json!({"sub": "a", "exp": "tomorrow"})),
            "exp is not a time",
        ),
        (
            sign_json(&json!({"sub": "a", "exp": -5})),
            "exp is not a time",
        ),
        (
            sign_json(&json!({"sub": "a", "exp": NOW + HOUR, "nbf": "now"})),
            "nbf is not a time",
        ),
        (
            sign_json(&json!({"sub": "a", "exp": NOW + HOUR, "streamhub": ["lobby"]})),
            "streamhub is not an object",
        ),
        (
            sign_json(&json!({"sub": "a", "exp": NOW + HOUR, "streamhub": {"publish": "lobby"}})),
            "streamhub.publish",
        ),
        (
            sign_json(&json!({"sub": "a", "exp": NOW + HOUR,
                "streamhub": {"subscribe": ["lobby", "a*b"]}})),
            "streamhub.subscribe",
        ),
        (
            sign_json(&json!(["not", "an", "object"])),
            "not JSON objects",
        ),
    ];
    for (token, expected) in cases {
        let why = unauthenticated(&auth, &token);
        assert!(
            matches!(why, Unauthenticated::Malformed(m) if m.contains(expected)),
            "{token:?}: {why:?}, expected {expected:?}"
        );
        assert_eq!(why.label(), "malformed");
    }
}

#[test]
fn a_wrong_signature_is_refused() {
    let auth = hs256(&required(&[]));
    let other = mint_hs256(
        b"another-secret-that-is-32-bytes-long!",
        &claims(&["*"], &["*"]),
    )
    .unwrap();
    assert_eq!(
        unauthenticated(&auth, &other),
        Unauthenticated::BadSignature
    );
    // A good token whose claims were changed (more rooms) after signing.
    let good = sign(&claims(&["lobby"], &["lobby"]));
    let parts: Vec<&str> = good.split('.').collect();
    let wider = b64(&serde_json::to_vec(&claims(&["*"], &["*"])).unwrap());
    let tampered = format!("{}.{wider}.{}", parts[0], parts[2]);
    assert_eq!(
        unauthenticated(&auth, &tampered),
        Unauthenticated::BadSignature
    );
    // No signature at all.
    let stripped = format!("{}.{}.", parts[0], parts[1]);
    assert_eq!(
        unauthenticated(&auth, &stripped),
        Unauthenticated::BadSignature
    );
}

#[test]
fn a_forged_token_learns_nothing_about_its_claims() {
    // Expired and badly formed, but forged: the signature is what is named.
    let auth = hs256(&required(&[]));
    let forged = mint_hs256(
        b"another-secret-that-is-32-bytes-long!",
        &Claims {
            sub: String::new(),
            exp: 1,
            ..claims(&[], &[])
        },
    )
    .unwrap();
    assert_eq!(
        unauthenticated(&auth, &forged),
        Unauthenticated::BadSignature
    );
}

#[test]
fn expiry_is_checked_with_the_leeway() {
    let auth = hs256(&required(&[]));
    let leeway = DEFAULT_LEEWAY.as_secs();
    let with_exp = |exp| {
        sign(&Claims {
            exp,
            ..claims(&[], &["lobby"])
        })
    };
    // Just inside the leeway: accepted.
    auth.check(
        Some(&with_exp(NOW - leeway)),
        "lobby",
        Action::Subscribe,
        now(),
    )
    .unwrap();
    // One second past it: expired.
    let expired = with_exp(NOW - leeway - 1);
    assert_eq!(unauthenticated(&auth, &expired), Unauthenticated::Expired);
    assert_eq!(Unauthenticated::Expired.to_string(), "token has expired");

    let strict = hs256(&AuthConfig {
        leeway: Duration::ZERO,
        ..required(&[])
    });
    let just_expired = with_exp(NOW - 1);
    assert_eq!(
        unauthenticated(&strict, &just_expired),
        Unauthenticated::Expired
    );
    strict
        .check(Some(&with_exp(NOW)), "lobby", Action::Subscribe, now())
        .unwrap();
}

#[test]
fn not_before_is_checked_with_the_leeway() {
    let auth = hs256(&required(&[]));
    let leeway = DEFAULT_LEEWAY.as_secs();
    let with_nbf = |nbf| {
        sign(&Claims {
            nbf: Some(nbf),
            ..claims(&[], &["lobby"])
        })
    };
    auth.check(
        Some(&with_nbf(NOW + leeway)),
        "lobby",
        Action::Subscribe,
        now(),
    )
    .unwrap();
    let early = with_nbf(NOW + leeway + 1);
    assert_eq!(unauthenticated(&auth, &early), Unauthenticated::NotYetValid);
    // Fractional NumericDates are times too.
    let fractional = sign_json(&json!({"sub": "a", "exp": NOW as f64 + 0.5,
        "streamhub": {"subscribe": ["lobby"]}}));
    auth.check(Some(&fractional), "lobby", Action::Subscribe, now())
        .unwrap();
}

#[test]
fn a_call_that_outlives_its_token_is_refused_at_the_next_message() {
    let auth = hs256(&required(&[]));
    let token = sign(&claims(&["lobby"], &[]));
    let identity = auth.authenticate(Some(&token), now()).unwrap();
    let last = at(NOW + HOUR) + DEFAULT_LEEWAY;
    let grant = auth
        .authorize(&identity, "lobby", Action::Publish, last)
        .unwrap();
    assert_eq!(grant.expires, Some(last));
    assert_eq!(
        auth.authorize(
            &identity,
            "lobby",
            Action::Publish,
            last + Duration::from_secs(1)
        ),
        Err(Denied::Unauthenticated(Unauthenticated::Expired))
    );
}

#[test]
fn alg_none_is_refused() {
    let auth = hs256(&required(&[]));
    let body = b64(&serde_json::to_vec(&claims(&["*"], &["*"])).unwrap());
    for alg in ["none", "None", "NONE"] {
        let header = b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
        for signature in ["", "c2ln"] {
            let token = format!("{header}.{body}.{signature}");
            assert_eq!(unauthenticated(&auth, &token), Unauthenticated::Unsigned);
        }
    }
    assert_eq!(Unauthenticated::Unsigned.label(), "wrong_algorithm");
}

#[test]
fn an_hs256_token_signed_with_the_rsa_public_key_is_refused() {
    let key = VerifyingKey::from_public_pem(RSA_PUBLIC_PEM.as_bytes(), None).unwrap();
    assert_eq!(key.algorithm(), Algorithm::RS256);
    let auth = Authorizer::new(&required(&[]), Some(key)).unwrap();
    // The classic confusion: the public key's bytes as an HMAC secret.
    let token = mint_hs256(RSA_PUBLIC_PEM.as_bytes(), &claims(&["*"], &["*"])).unwrap();
    let why = unauthenticated(&auth, &token);
    assert_eq!(
        why,
        Unauthenticated::WrongAlgorithm {
            expected: Algorithm::RS256
        }
    );
    assert_eq!(why.to_string(), "token is not signed with RS256");
    // An HMAC signature under a header that claims RS256 fails the RSA
    // check instead.
    let parts: Vec<&str> = token.split('.').collect();
    let header = b64(br#"{"typ":"JWT","alg":"RS256"}"#);
    let relabelled = format!("{header}.{}.{}", parts[1], parts[2]);
    assert_eq!(
        unauthenticated(&auth, &relabelled),
        Unauthenticated::BadSignature
    );
}

#[test]
fn an_rs256_token_is_refused_by_an_hs256_server() {
    let auth = hs256(&required(&[]));
    let header = b64(br#"{"typ":"JWT","alg":"RS256"}"#);
    let body = b64(&serde_json::to_vec(&claims(&["*"], &["*"])).unwrap());
    let token = format!("{header}.{body}.c2lnbmF0dXJl");
    assert_eq!(
        unauthenticated(&auth, &token),
        Unauthenticated::WrongAlgorithm {
            expected: Algorithm::HS256
        }
    );
}

#[test]
fn a_100_kib_token_is_refused_before_parsing() {
    let auth = hs256(&required(&[]));
    // Validly signed: the size bound comes before the signature check.
    let rooms: Vec<String> = (0..10_000).map(|i| format!("room{i}")).collect();
    let rooms: Vec<&str> = rooms.iter().map(String::as_str).collect();
    let huge = sign(&claims(&rooms, &[]));
    assert!(huge.len() > 100 * 1024, "{}", huge.len());
    assert_eq!(unauthenticated(&auth, &huge), Unauthenticated::TooLarge);
    let junk = "a".repeat(100 * 1024);
    assert_eq!(unauthenticated(&auth, &junk), Unauthenticated::TooLarge);
    assert_eq!(
        Unauthenticated::TooLarge.to_string(),
        "token is larger than 8192 bytes"
    );
    // At the bound it is read (and here found malformed, not too large).
    let at_bound = "a".repeat(MAX_TOKEN_BYTES);
    assert!(matches!(
        unauthenticated(&auth, &at_bound),
        Unauthenticated::Malformed(_)
    ));
}

#[test]
fn the_audience_is_refused_unless_configured_and_then_required() {
    let with_aud = |aud: &str| {
        sign_json(&json!({"sub": "a", "exp": NOW + HOUR, "aud": aud,
            "streamhub": {"subscribe": ["lobby"]}}))
    };
    let without = sign(&claims(&[], &["lobby"]));
    let open = hs256(&required(&[]));
    assert_eq!(
        unauthenticated(&open, &with_aud("streamhub")),
        Unauthenticated::WrongAudience
    );
    let pinned = hs256(&AuthConfig {
        audience: Some("streamhub".into()),
        ..required(&[])
    });
    pinned
        .check(
            Some(&with_aud("streamhub")),
            "lobby",
            Action::Subscribe,
            now(),
        )
        .unwrap();
    assert_eq!(
        unauthenticated(&pinned, &with_aud("billing")),
        Unauthenticated::WrongAudience
    );
    assert_eq!(
        unauthenticated(&pinned, &without),
        Unauthenticated::WrongAudience
    );
}

#[test]
fn bearer_tokens_are_read_from_the_authorization_header() {
    assert_eq!(bearer_token("Bearer abc.def.ghi"), Some("abc.def.ghi"));
    assert_eq!(bearer_token("bearer abc"), Some("abc"));
    assert_eq!(bearer_token("BEARER   abc  "), Some("abc"));
    assert_eq!(bearer_token("Bearer\tabc"), Some("abc"));
    assert_eq!(bearer_token("Bearer"), None);
    assert_eq!(bearer_token("Bearer   "), None);
    assert_eq!(bearer_token("Basic dXNlcjpwYXNz"), None);
    assert_eq!(bearer_token("Bearerabc"), None);
    assert_eq!(bearer_token(""), None);
}

#[test]
fn the_documented_example_token_verifies_with_the_documented_secret() {
    let example = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMCwic3RyZWFtaHViIjp7InB1Ymxpc2giOlsibG9iYnkiXSwic3Vic2NyaWJlIjpbImxvYmJ5Iiwic2Vuc29ycy4qIl19fQ.4vdK3IorHTqZKMY1pWNPjJ0YvseFLjJ_Wo-I4N6bJVo";
    let secret = b"streamhub-example-secret-0123456789";
    let minted = mint_hs256(
        secret,
        &Claims {
            exp: 4_102_444_800,
            ..claims(&["lobby"], &["lobby", "sensors.*"])
        },
    )
    .unwrap();
    assert_eq!(minted, example);
    let auth = Authorizer::new(&required(&[]), Some(VerifyingKey::hs256(secret).unwrap())).unwrap();
    let grant = auth
        .check(Some(example), "sensors.kitchen", Action::Subscribe, now())
        .unwrap();
    assert_eq!(grant.user.as_deref(), Some("alice"));
}

/// A scratch directory, removed when the test ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("streamhub-auth-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn have_openssl(test: &str) -> bool {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("{test}: skipped, the openssl command is missing (Debian package openssl)");
    }
    found
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `<name>.pem` (PKCS#8 private) and `<name>.pub.pem` for `algorithm`
/// (RSA 2048, or an EC curve name).
fn keypair(dir: &Scratch, name: &str, kind: &str) {
    let key = format!("{name}.pem");
    if kind == "RSA" {
        openssl(
            &dir.0,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &key,
            ],
        );
    } else {
        let curve = format!("ec_paramgen_curve:{kind}");
        openssl(
            &dir.0,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                &curve,
                "-out",
                &key,
            ],
        );
    }
    openssl(
        &dir.0,
        &[
            "pkey",
            "-in",
            &key,
            "-pubout",
            "-out",
            &format!("{name}.pub.pem"),
        ],
    );
}

#[test]
fn rs256_and_es256_tokens_verify_with_public_key_files() {
    if !have_openssl("rs256_and_es256_tokens_verify_with_public_key_files") {
        return;
    }
    let dir = Scratch::new("rs-es");
    keypair(&dir, "rsa", "RSA");
    keypair(&dir, "ec", "P-256");
    for (name, algorithm) in [("rsa", Algorithm::RS256), ("ec", Algorithm::ES256)] {
        let signing =
            SigningKey::from_private_pem(&dir.read(&format!("{name}.pem")), None).unwrap();
        assert_eq!(signing.algorithm(), algorithm);
        let token = mint(&signing, &claims(&["lobby"], &[])).unwrap();
        // The algorithm follows the key type when not configured.
        let config = AuthConfig {
            key: Some(KeySource::PublicKeyFile(
                dir.path(&format!("{name}.pub.pem")),
            )),
            ..required(&[])
        };
        let auth = Authorizer::from_config(&config).unwrap();
        let grant = auth
            .check(Some(&token), "lobby", Action::Publish, now())
            .unwrap();
        assert_eq!(grant.user.as_deref(), Some("alice"));
        // A wrong signature under the right algorithm.
        let parts: Vec<&str> = token.split('.').collect();
        let other = mint(&signing, &claims(&["*"], &[])).unwrap();
        let other_sig = other.rsplit('.').next().unwrap();
        let swapped = format!("{}.{}.{other_sig}", parts[0], parts[1]);
        assert_eq!(
            unauthenticated(&auth, &swapped),
            Unauthenticated::BadSignature
        );
        // And an HS256 token made with the public key file as the secret.
        let confused = mint_hs256(
            &dir.read(&format!("{name}.pub.pem")),
            &claims(&["*"], &["*"]),
        )
        .unwrap();
        assert_eq!(
            unauthenticated(&auth, &confused),
            Unauthenticated::WrongAlgorithm {
                expected: algorithm
            }
        );
    }
}

#[test]
fn key_files_of_the_wrong_kind_are_refused_at_start_up() {
    if !have_openssl("key_files_of_the_wrong_kind_are_refused_at_start_up") {
        return;
    }
    let dir = Scratch::new("wrong-kind");
    keypair(&dir, "rsa", "RSA");
    keypair(&dir, "p384", "P-384");
    openssl(
        &dir.0,
        &[
            "req", "-x509", "-key", "rsa.pem", "-subj", "/CN=test", "-days", "1", "-out",
            "cert.pem",
        ],
    );
    openssl(
        &dir.0,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "sec1.pem",
        ],
    );
    let load = |file: &str, algorithm: Option<Algorithm>| {
        let config = AuthConfig {
            key: Some(KeySource::PublicKeyFile(dir.path(file))),
            algorithm,
            ..required(&[])
        };
        Authorizer::from_config(&config).unwrap_err().to_string()
    };
    let err = load("rsa.pem", None);
    assert!(
        err.contains("private key") && err.contains("--auth-public-key-file"),
        "{err}"
    );
    assert!(load("cert.pem", None).contains("certificate"));
    assert!(load("rsa.pub.pem", Some(Algorithm::ES256)).contains("ES256 needs an EC key"));
    assert!(load("rsa.pub.pem", Some(Algorithm::HS256)).contains("secret"));
    assert!(load("p384.pub.pem", None).contains("P-256"));
    assert!(load("missing.pem", None).contains("missing.pem"));
    let sec1 = SigningKey::from_private_pem(&dir.read("sec1.pem"), None).unwrap_err();
    assert!(sec1.to_string().contains("pkcs8 -topk8"), "{sec1}");
}

#[test]
fn the_secret_file_loses_its_line_end_and_must_be_long_enough() {
    let dir = Scratch::new("secret");
    let load = |bytes: &[u8], algorithm: Option<Algorithm>| {
        std::fs::write(dir.path("secret"), bytes).unwrap();
        Authorizer::from_config(&AuthConfig {
            key: Some(KeySource::SecretFile(dir.path("secret"))),
            algorithm,
            ..required(&[])
        })
    };
    let token = sign(&claims(&[], &["lobby"]));
    for file in [
        SECRET.to_vec(),
        [SECRET, b"\n"].concat(),
        [SECRET, b"\r\n"].concat(),
    ] {
        let auth = load(&file, None).unwrap();
        auth.check(Some(&token), "lobby", Action::Subscribe, now())
            .unwrap();
    }
    let empty = load(b"\n", None).unwrap_err().to_string();
    assert!(
        empty.starts_with("--auth-secret-file") && empty.ends_with("the secret is empty"),
        "{empty}"
    );
    let short = load(b"hunter2\n", None).unwrap_err().to_string();
    assert!(
        short.contains("7 bytes") && short.contains("at least 32"),
        "{short}"
    );
    let rs = load(SECRET, Some(Algorithm::RS256))
        .unwrap_err()
        .to_string();
    assert!(rs.contains("--auth-public-key-file"), "{rs}");
    // Mode off still loads the key, so a wrong file shows early.
    let off = Authorizer::from_config(&AuthConfig {
        key: Some(KeySource::SecretFile(dir.path("nope"))),
        ..AuthConfig::default()
    });
    assert!(off.is_err());
}

#[test]
fn the_documented_shell_recipe_mints_the_same_token() {
    if !have_openssl("the_documented_shell_recipe_mints_the_same_token") {
        return;
    }
    let dir = Scratch::new("recipe");
    std::fs::write(dir.path("secret"), b"streamhub-example-secret-0123456789\n").unwrap();
    // The recipe as the module documentation shows it.
    let docs = include_str!("mod.rs");
    let recipe: String = docs
        .split("//! ```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("//! ```\n").next())
        .expect("a sh block in the module docs")
        .lines()
        .map(|line| format!("{}\n", line.trim_start_matches("//! ")))
        .collect();
    let out = Command::new("sh")
        .arg("-c")
        .arg(&recipe)
        .env("EXP", (NOW + HOUR).to_string())
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made = String::from_utf8(out.stdout).unwrap();
    let expected = mint_hs256(
        b"streamhub-example-secret-0123456789",
        &claims(&["lobby"], &["lobby", "sensors.*"]),
    )
    .unwrap();
    assert_eq!(made.trim(), expected);
}

#[test]
fn modes_and_algorithms_parse_from_their_flags() {
    assert_eq!("off".parse::<AuthMode>().unwrap(), AuthMode::Off);
    assert_eq!("required".parse::<AuthMode>().unwrap(), AuthMode::Required);
    assert!("on"
        .parse::<AuthMode>()
        .unwrap_err()
        .to_string()
        .starts_with("--auth:"));
    assert_eq!("rs256".parse::<Algorithm>().unwrap(), Algorithm::RS256);
    assert_eq!("ES256".parse::<Algorithm>().unwrap(), Algorithm::ES256);
    assert!("none".parse::<Algorithm>().is_err());
}

#[test]
fn the_authorizer_can_be_shared_between_threads() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<Authorizer>();
    shared::<Identity>();
    shared::<Denied>();
}
