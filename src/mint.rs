//! `streamhub token`: makes a bearer token for `--auth required`, for
//! trying a server out and for scripts; an application backend would make
//! its own with any JWT library (the claim format is in the library's
//! `auth` module and the README). Signs with the HS256 secret file the
//! server reads, or with the private half of its RS256/ES256 key.

use std::time::{SystemTime, UNIX_EPOCH};

use streamhub::auth::{mint, trim_line_end, Claims, Pattern, Permissions, SigningKey};
use streamhub::config::{opt, usage, OptSpec, RawArgs};
use streamhub::error::Error;

pub const SUMMARY: &str =
    "print a bearer token for --auth required (HS256 secret or RS256/ES256 private key)";

pub const OPTIONS: &[OptSpec] = &[
    opt(
        "secret-file",
        "STREAMHUB_AUTH_SECRET_FILE",
        "",
        "the HS256 secret file the server reads (--auth-secret-file)",
    ),
    opt(
        "private-key-file",
        "",
        "",
        "PEM private key (PKCS#8, or PKCS#1 RSA) whose public half the server reads (--auth-public-key-file)",
    ),
    opt("sub", "", "", "the user (required)"),
    opt(
        "publish",
        "",
        "",
        "rooms the token may publish in, comma-separated ('*', 'sensors.*' allowed)",
    ),
    opt(
        "subscribe",
        "",
        "",
        "rooms the token may subscribe to, comma-separated",
    ),
    opt("ttl-secs", "", "3600", "seconds until it expires"),
];

/// Runs `streamhub token`; prints the token on standard output.
pub fn run(args: &[String]) -> Result<(), Error> {
    let raw = RawArgs::parse(OPTIONS, args, |k| std::env::var(k).ok())?;
    if raw.help {
        print!("{}", usage("streamhub token", SUMMARY, "", OPTIONS));
        return Ok(());
    }
    let key = signing_key(&raw)?;
    let sub = raw.string("sub");
    if sub.is_empty() {
        return Err(Error::Config("--sub: a token needs a user".into()));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        sub,
        exp: now + raw.number("ttl-secs", 1, 10 * 365 * 86_400)?,
        nbf: None,
        streamhub: Permissions {
            publish: rooms(&raw, "publish")?,
            subscribe: rooms(&raw, "subscribe")?,
        },
    };
    println!("{}", mint(&key, &claims)?);
    Ok(())
}

fn signing_key(raw: &RawArgs) -> Result<SigningKey, Error> {
    let read = |flag: &str, path: &str| {
        std::fs::read(path).map_err(|e| Error::Config(format!("--{flag} {path}: {e}")))
    };
    match (raw.string("secret-file"), raw.string("private-key-file")) {
        (s, p) if !s.is_empty() && p.is_empty() => {
            let bytes = read("secret-file", &s)?;
            SigningKey::hs256(trim_line_end(&bytes))
                .map_err(|e| Error::Config(format!("--secret-file {s}: {e}")))
        }
        (s, p) if s.is_empty() && !p.is_empty() => {
            SigningKey::from_private_pem(&read("private-key-file", &p)?, None)
                .map_err(|e| Error::Config(format!("--private-key-file {p}: {e}")))
        }
        _ => Err(Error::Config(
            "give one of --secret-file and --private-key-file".into(),
        )),
    }
}

/// A comma-separated list of room patterns, each checked as the server
/// would (a bad one would make the whole token refused).
fn rooms(raw: &RawArgs, flag: &str) -> Result<Vec<String>, Error> {
    raw.string(flag)
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| {
            r.parse::<Pattern>()
                .map(|_| r.to_string())
                .map_err(|e| Error::Config(format!("--{flag} '{r}': {e}")))
        })
        .collect()
}
