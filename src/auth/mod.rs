//! Who may publish and subscribe where: the auth decision both front doors
//! call. It owns the policy ([`AuthConfig`] -> [`Authorizer`]), the bearer
//! tokens ([`token`]) and room patterns ([`pattern`]); it knows nothing of
//! sockets, HTTP or gRPC, takes the time as a parameter, and answers with a
//! [`Grant`] or a [`Denied`] that a front door maps to its status:
//! [`Denied::Unauthenticated`] to HTTP 401 (with `WWW-Authenticate: Bearer`)
//! or gRPC UNAUTHENTICATED, [`Denied::Forbidden`] to 403 or
//! PERMISSION_DENIED.
//!
//! A front door verifies the token once per connection or call
//! ([`Authorizer::authenticate`], ~164 us for RS256) and checks each room
//! and action against the result ([`Authorizer::authorize`], a few string
//! comparisons); [`Authorizer::check`] does both for one-shot requests.
//!
//! # Modes
//! - `off` (the default): everything is allowed, tokens are ignored and
//!   the user is whatever the client says, as before tokens existed.
//! - `required`: a publish needs a token that grants the room. A subscribe
//!   needs one too, unless the room matches `anonymous_subscribe`
//!   (`--anonymous-subscribe`). A token that is present but bad is refused
//!   even for such rooms: a client with a broken token should learn so.
//!
//! # Tokens
//! JWTs (RFC 7519) signed with the one algorithm the server is configured
//! for: HS256 with a shared secret (`--auth-secret-file`), or RS256/ES256
//! with the issuer's public key (`--auth-public-key-file`), so that an
//! application backend issues tokens and streamhub only verifies. The
//! algorithm never comes from the token: `alg: none` and HS256 tokens
//! against an RSA key are refused. At most [`MAX_TOKEN_BYTES`].
//!
//! Claims:
//! ```json
//! {
//!   "sub": "alice",
//!   "exp": 4102444800,
//!   "nbf": 1767225600,
//!   "streamhub": {
//!     "publish": ["lobby"],
//!     "subscribe": ["lobby", "sensors.*"]
//!   }
//! }
//! ```
//! - `sub` (required): the user, 1 to [`crate::hub::MAX_USER_NAME`] bytes.
//!   Messages published with the token carry it; the client cannot choose
//!   another name.
//! - `exp` (required) and `nbf` (optional): seconds since the Unix epoch,
//!   checked with a leeway for clock skew ([`DEFAULT_LEEWAY`]). A stream
//!   ends when its token expires ([`Grant::expires`]).
//! - `streamhub.publish`, `streamhub.subscribe`: room patterns
//!   ([`Pattern`]): a room name, `*` for every room, or a prefix ending in
//!   `*` (`sensors.*` covers `sensors.a` and `sensors.a.b`, not `sensors`).
//!   A missing list grants nothing; a list with a bad pattern refuses the
//!   whole token.
//! - `aud`: refused unless the server is configured with an audience, in
//!   which case it is required to match. `iat`, `jti`, `iss` and other
//!   claims are ignored.
//!
//! An example, HS256 with the secret `streamhub-example-secret-0123456789`
//! (claims as above without `nbf`; expires in 2100):
//! ```text
//! eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMCwic3RyZWFtaHViIjp7InB1Ymxpc2giOlsibG9iYnkiXSwic3Vic2NyaWJlIjpbImxvYmJ5Iiwic2Vuc29ycy4qIl19fQ.4vdK3IorHTqZKMY1pWNPjJ0YvseFLjJ_Wo-I4N6bJVo
//! ```
//! made by this shell recipe (the secret in the file `secret`; `EXP` the
//! expiry, e.g. `$(( $(date +%s) + 3600 ))`), which needs only `openssl`:
//! ```sh
//! b64() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
//! header=$(printf '{"typ":"JWT","alg":"HS256"}' | b64)
//! claims=$(printf '{"sub":"alice","exp":%d,"streamhub":{"publish":["lobby"],"subscribe":["lobby","sensors.*"]}}' "$EXP" | b64)
//! sig=$(printf '%s.%s' "$header" "$claims" | openssl dgst -sha256 -hmac "$(cat secret)" -binary | b64)
//! echo "$header.$claims.$sig"
//! ```
//! In Rust, [`mint_hs256`] (or [`mint`] with a [`SigningKey`] from a PEM
//! private key) makes the same token; a test pins that both agree.

pub mod pattern;
pub mod token;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use crate::error::Error;
pub use pattern::Pattern;
use token::Verifier;
pub use token::{
    mint, mint_hs256, Algorithm, Claims, Permissions, SigningKey, VerifiedToken, VerifyingKey,
    MAX_TOKEN_BYTES, MIN_SECRET_BYTES,
};

/// Tolerated clock skew between the token's issuer and this server, for
/// `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// What a stream's last notice says when its token expires (both doors).
pub const TOKEN_EXPIRED_NOTICE: &str = "token has expired: reconnect with a fresh token";

/// Whether tokens are required (`--auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Everything allowed, no user from tokens: the behaviour without auth.
    #[default]
    Off,
    /// Tokens required, except to subscribe to the anonymous rooms.
    Required,
}

impl FromStr for AuthMode {
    type Err = Error;

    fn from_str(text: &str) -> Result<AuthMode, Error> {
        match text {
            "off" => Ok(AuthMode::Off),
            "required" => Ok(AuthMode::Required),
            _ => Err(Error::Config(format!(
                "--auth: expected off or required, got '{text}'"
            ))),
        }
    }
}

/// Where the verifying key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `--auth-secret-file`: an HS256 secret; one trailing newline (or
    /// several, and `\r`) is not part of it.
    SecretFile(PathBuf),
    /// `--auth-public-key-file`: a PEM public key for RS256 or ES256.
    PublicKeyFile(PathBuf),
}

impl KeySource {
    /// Reads the file into a key; errors name the flag and the path.
    pub fn load(&self, algorithm: Option<Algorithm>) -> Result<VerifyingKey, Error> {
        let (flag, path) = match self {
            KeySource::SecretFile(path) => ("--auth-secret-file", path),
            KeySource::PublicKeyFile(path) => ("--auth-public-key-file", path),
        };
        let named = |e: Error| Error::Config(format!("{flag} {}: {e}", path.display()));
        let bytes = std::fs::read(path).map_err(|e| named(Error::from(e)))?;
        match self {
            KeySource::SecretFile(_) => {
                if let Some(other) = algorithm.filter(|a| *a != Algorithm::HS256) {
                    return Err(named(Error::Config(format!(
                        "--auth-algorithm {other} verifies with --auth-public-key-file"
                    ))));
                }
                VerifyingKey::hs256(trim_line_end(&bytes)).map_err(named)
            }
            KeySource::PublicKeyFile(_) => {
                VerifyingKey::from_public_pem(&bytes, algorithm).map_err(named)
            }
        }
    }
}

/// The auth settings, as the configuration gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Required with [`AuthMode::Required`]; with `Off` a given key is
    /// still loaded, so a wrong file shows before auth is switched on.
    pub key: Option<KeySource>,
    /// `--auth-algorithm`; by default HS256 for a secret and by key type
    /// for a public key (RSA: RS256, EC: ES256).
    pub algorithm: Option<Algorithm>,
    /// Tolerated clock skew for `exp` and `nbf`.
    pub leeway: Duration,
    /// Rooms anyone may subscribe to without a token.
    pub anonymous_subscribe: Vec<Pattern>,
    /// When set, tokens must name it in `aud`; when not, tokens with an
    /// `aud` are refused.
    pub audience: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Off,
            key: None,
            algorithm: None,
            leeway: DEFAULT_LEEWAY,
            anonymous_subscribe: Vec::new(),
            audience: None,
        }
    }
}

/// What a client wants to do in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Publish,
    Subscribe,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a client is, once its token (or its lack of one) is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Auth is off: anything goes, under the name the client gives.
    Open,
    /// Auth is required and the client sent no token.
    Anonymous,
    /// A verified token.
    User(VerifiedToken),
}

/// An allowed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token's user, which a publish must carry; `None` when auth is
    /// off or the client is anonymous.
    pub user: Option<String>,
    /// When the token stops being accepted (`exp` plus the leeway): a
    /// stream opened with it is ended then. `None` without a token.
    pub expires: Option<SystemTime>,
}

impl Grant {
    /// The user a message or a presence is under, given the name the
    /// client sent: the token's user, which the client may leave empty or
    /// repeat but not replace; without a token, the client's name.
    pub fn user_for(&self, claimed: &str) -> Result<String, Denied> {
        match &self.user {
            None => Ok(claimed.to_owned()),
            Some(user) if claimed.is_empty() || claimed == user => Ok(user.clone()),
            Some(user) => Err(Denied::WrongUser {
                claimed: claimed.chars().take(64).collect(),
                user: user.clone(),
            }),
        }
    }
}

/// Why a request was refused. The text is short, safe to send to the
/// client and to log: it never contains the token or any part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Denied {
    /// No usable token: HTTP 401 with `WWW-Authenticate: Bearer`, gRPC
    /// UNAUTHENTICATED.
    Unauthenticated(Unauthenticated),
    /// A valid token (or an anonymous client) without the permission:
    /// HTTP 403, gRPC PERMISSION_DENIED.
    Forbidden { action: Action, room: String },
    /// A valid token, and a message or presence under another user's name
    /// than its `sub`: HTTP 403, gRPC PERMISSION_DENIED.
    WrongUser { claimed: String, user: String },
}

impl Denied {
    /// A fixed label for counting refusals by reason.
    pub fn label(&self) -> &'static str {
        match self {
            Denied::Unauthenticated(why) => why.label(),
            Denied::Forbidden { .. } => "forbidden",
            Denied::WrongUser { .. } => "wrong_user",
        }
    }

    /// Every label [`Self::label`] gives, for metrics that list them all.
    pub const LABELS: [&'static str; 10] = [
        "missing",
        "too_large",
        "malformed",
        "wrong_algorithm",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "wrong_audience",
        "forbidden",
        "wrong_user",
    ];
}

/// Why a token (or its absence) is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unauthenticated {
    /// No token, where one is needed.
    Missing,
    /// Longer than [`MAX_TOKEN_BYTES`]; not decoded at all.
    TooLarge,
    /// Not a JWT, or its claims are not of the documented shape; says which
    /// part.
    Malformed(&'static str),
    /// `alg: none`.
    Unsigned,
    /// Signed (or claiming to be) with another algorithm than the
    /// configured one.
    WrongAlgorithm { expected: Algorithm },
    /// The signature does not match the configured key.
    BadSignature,
    /// Past `exp` plus the leeway.
    Expired,
    /// Before `nbf` minus the leeway.
    NotYetValid,
    /// `aud` present without a configured audience, or not the configured
    /// one.
    WrongAudience,
}

impl Unauthenticated {
    /// A fixed label for counting refusals by reason.
    pub fn label(self) -> &'static str {
        match self {
            Unauthenticated::Missing => "missing",
            Unauthenticated::TooLarge => "too_large",
            Unauthenticated::Malformed(_) => "malformed",
            Unauthenticated::Unsigned | Unauthenticated::WrongAlgorithm { .. } => "wrong_algorithm",
            Unauthenticated::BadSignature => "bad_signature",
            Unauthenticated::Expired => "expired",
            Unauthenticated::NotYetValid => "not_yet_valid",
            Unauthenticated::WrongAudience => "wrong_audience",
        }
    }
}

impl fmt::Display for Unauthenticated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unauthenticated::Missing => f.write_str("a bearer token is required"),
            Unauthenticated::TooLarge => {
                write!(f, "token is larger than {MAX_TOKEN_BYTES} bytes")
            }
            Unauthenticated::Malformed(what) => write!(f, "malformed token: {what}"),
            Unauthenticated::Unsigned => f.write_str("unsigned tokens (alg none) are refused"),
            Unauthenticated::WrongAlgorithm { expected } => {
                write!(f, "token is not signed with {expected}")
            }
            Unauthenticated::BadSignature => f.write_str("token signature is not valid"),
            Unauthenticated::Expired => f.write_str("token has expired"),
            Unauthenticated::NotYetValid => f.write_str("token is not valid yet (nbf)"),
            Unauthenticated::WrongAudience => f.write_str("token is meant for another audience"),
        }
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::Unauthenticated(why) => why.fmt(f),
            Denied::Forbidden { action, room } => {
                write!(f, "not allowed to {action} in room \"{room}\"")
            }
            Denied::WrongUser { claimed, user } => {
                write!(f, "user \"{claimed}\" is not the token's user \"{user}\"")
            }
        }
    }
}

impl std::error::Error for Denied {}

impl From<Unauthenticated> for Denied {
    fn from(why: Unauthenticated) -> Denied {
        Denied::Unauthenticated(why)
    }
}

/// The auth decision: built once from the configuration, shared by both
/// front doors (it is `Send + Sync`; nothing in it changes).
#[derive(Debug, Clone)]
pub struct Authorizer {
    mode: AuthMode,
    verifier: Option<Verifier>,
    anonymous_subscribe: Vec<Pattern>,
}

impl Authorizer {
    /// Loads the key file (start-up I/O) and builds the decision.
    pub fn from_config(config: &AuthConfig) -> Result<Authorizer, Error> {
        let key = match &config.key {
            Some(source) => Some(source.load(config.algorithm)?),
            None => None,
        };
        Authorizer::new(config, key)
    }

    /// Builds the decision with a key already loaded (`config.key` is not
    /// read). `Required` without a key is a configuration error.
    pub fn new(config: &AuthConfig, key: Option<VerifyingKey>) -> Result<Authorizer, Error> {
        if config.mode == AuthMode::Required && key.is_none() {
            return Err(Error::Config(
                "--auth required needs --auth-secret-file or --auth-public-key-file".into(),
            ));
        }
        Ok(Authorizer {
            mode: config.mode,
            verifier: key.map(|key| Verifier::new(key, config.leeway, config.audience.as_deref())),
            anonymous_subscribe: config.anonymous_subscribe.clone(),
        })
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Verifies the token, once per connection or call. With auth off every
    /// client is [`Identity::Open`] (a token is not even read); with auth
    /// required, no token is [`Identity::Anonymous`] and a bad one is
    /// refused here.
    pub fn authenticate(&self, token: Option<&str>, now: SystemTime) -> Result<Identity, Denied> {
        let verifier = match (&self.verifier, self.mode) {
            (Some(verifier), AuthMode::Required) => verifier,
            _ => return Ok(Identity::Open),
        };
        match token {
            None => Ok(Identity::Anonymous),
            Some(token) => Ok(Identity::User(verifier.verify(token, now)?)),
        }
    }

    /// May `identity` do `action` in `room` (normalised, see
    /// [`crate::hub::normalize_room`]) at `now`? Cheap: no cryptography, so
    /// a long call checks every message, and a token that expired since
    /// the call began is refused.
    pub fn authorize(
        &self,
        identity: &Identity,
        room: &str,
        action: Action,
        now: SystemTime,
    ) -> Result<Grant, Denied> {
        let open_room =
            action == Action::Subscribe && Pattern::any_matches(&self.anonymous_subscribe, room);
        match identity {
            Identity::Open => Ok(Grant {
                user: None,
                expires: None,
            }),
            Identity::Anonymous if open_room => Ok(Grant {
                user: None,
                expires: None,
            }),
            Identity::Anonymous => Err(Unauthenticated::Missing.into()),
            Identity::User(token) => {
                if now > token.expires() {
                    return Err(Unauthenticated::Expired.into());
                }
                let granted = match action {
                    Action::Publish => token.publish(),
                    Action::Subscribe => token.subscribe(),
                };
                if open_room || Pattern::any_matches(granted, room) {
                    Ok(Grant {
                        user: Some(token.user().to_owned()),
                        expires: Some(token.expires()),
                    })
                } else {
                    Err(Denied::Forbidden {
                        action,
                        room: room.to_owned(),
                    })
                }
            }
        }
    }

    /// [`Self::authenticate`] and [`Self::authorize`] in one, for a request
    /// that does one thing.
    pub fn check(
        &self,
        token: Option<&str>,
        room: &str,
        action: Action,
        now: SystemTime,
    ) -> Result<Grant, Denied> {
        let identity = self.authenticate(token, now)?;
        self.authorize(&identity, room, action, now)
    }
}

/// The token in an `Authorization` header value: `Bearer <token>`, the
/// scheme in any case (RFC 7235). Another scheme, or nothing after it, is
/// no token.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A secret file's bytes without the line end an editor or `echo` adds
/// (the server's `--auth-secret-file` and `streamhub token --secret-file`).
pub fn trim_line_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b'\n' | b'\r'))
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

#[cfg(test)]
mod tests;
