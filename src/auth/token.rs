//! Tokens: the key that verifies them ([`VerifyingKey`]), what a verified
//! token says ([`VerifiedToken`]), and minting ([`mint`], for tests and for
//! a command that makes tokens). Pure: keys arrive as bytes (reading the
//! files is [`super::KeySource`]'s job) and the time is a parameter.
//!
//! The algorithm is fixed by the key, never taken from the token: the
//! header is read first and a token whose `alg` is not the configured one
//! (`none` included, and an HS256 token "signed" with an RSA public key's
//! bytes) is refused before any signature is computed. jsonwebtoken then
//! verifies with the same single algorithm allowed. Its own `exp`/`nbf`
//! checks are off because they read the system clock; ours take `now`,
//! after the signature, so a forged token never learns which of its claims
//! were wrong.
//!
//! Costs (CAPABILITIES.md section 1): RS256 verification ~164 us on x86_64,
//! 838 us under qemu-aarch64; so a front door verifies once per connection
//! or call ([`super::Authorizer::authenticate`]) and checks each message
//! against the result ([`super::Authorizer::authorize`]), which is a few
//! string comparisons.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::pattern::Pattern;
use super::Unauthenticated;
use crate::error::Error;
use crate::hub::MAX_USER_NAME;

/// Largest token accepted, in bytes; a longer one is refused before any
/// decoding. Real tokens are a few hundred bytes (a long permission list
/// still fits 8 KiB), and the bound keeps base64 and JSON work per request
/// small whatever a client sends.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Shortest HS256 secret accepted: RFC 7518 section 3.2 requires a key at
/// least as long as the hash (256 bits). `openssl rand -hex 32` makes one.
pub const MIN_SECRET_BYTES: usize = 32;

/// The signature algorithms streamhub verifies; one is fixed per server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// HMAC-SHA256 with a shared secret.
    HS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, verified with an RSA public key.
    RS256,
    /// ECDSA on P-256 with SHA-256, verified with an EC public key.
    ES256,
}

impl Algorithm {
    /// The name used in JWT headers and in `--auth-algorithm`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
        }
    }

    fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::HS256 => jsonwebtoken::Algorithm::HS256,
            Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = Error;

    /// Parses `--auth-algorithm` (case-insensitive).
    fn from_str(text: &str) -> Result<Algorithm, Error> {
        [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256]
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| {
                Error::Config(format!(
                    "--auth-algorithm: expected HS256, RS256 or ES256, got '{text}'"
                ))
            })
    }
}

/// The key tokens are verified with, and the one algorithm it allows.
/// `Debug` shows the algorithm only, never key bytes.
#[derive(Clone)]
pub struct VerifyingKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

impl VerifyingKey {
    /// An HS256 secret (at least [`MIN_SECRET_BYTES`]).
    pub fn hs256(secret: &[u8]) -> Result<VerifyingKey, Error> {
        check_secret(secret)?;
        let key = DecodingKey::from_secret(secret).map_err(|_| config("the secret is empty"))?;
        Ok(VerifyingKey {
            algorithm: Algorithm::HS256,
            key,
        })
    }

    /// A PEM public key (`PUBLIC KEY`, or `RSA PUBLIC KEY`). Without an
    /// algorithm, an RSA key means RS256 and an EC key ES256. The key is
    /// tried once here, so a key that cannot verify the algorithm (an EC
    /// key on another curve than P-256, say) fails at start-up, not at the
    /// first token.
    pub fn from_public_pem(
        pem: &[u8],
        algorithm: Option<Algorithm>,
    ) -> Result<VerifyingKey, Error> {
        match pem_label(pem) {
            Some("PUBLIC KEY" | "RSA PUBLIC KEY") => {}
            Some("CERTIFICATE") => {
                return Err(config(
                    "this is a certificate; give its public key \
                     (openssl x509 -pubkey -noout -in cert.pem)",
                ))
            }
            Some(label) if label.ends_with("PRIVATE KEY") => {
                return Err(config(
                    "this is a private key; streamhub only verifies, so give the public key \
                     (openssl pkey -pubout -in key.pem) and keep the private key with the issuer",
                ))
            }
            _ => return Err(config("not a PEM public key (no BEGIN PUBLIC KEY line)")),
        }
        let (found, key) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            (Algorithm::RS256, key)
        } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            (Algorithm::ES256, key)
        } else {
            return Err(config("neither an RSA nor an EC public key"));
        };
        let algorithm = match algorithm {
            None => found,
            Some(Algorithm::HS256) => {
                return Err(config(
                    "HS256 verifies with a secret (--auth-secret-file), not a public key",
                ))
            }
            Some(wanted) if wanted != found => {
                return Err(Error::Config(format!(
                    "{wanted} needs {} key, and this is {} key",
                    key_kind(wanted),
                    key_kind(found)
                )))
            }
            Some(wanted) => wanted,
        };
        // Builds the verifier jsonwebtoken builds per token; a key it cannot
        // use fails here. The signature is a dummy: only an error counts.
        if jsonwebtoken::crypto::verify("AA", b"probe", &key, algorithm.jwt()).is_err() {
            return Err(Error::Config(format!(
                "the key cannot verify {algorithm}{}",
                if algorithm == Algorithm::ES256 {
                    " (ES256 needs a P-256 key)"
                } else {
                    ""
                }
            )));
        }
        Ok(VerifyingKey { algorithm, key })
    }

    /// The one algorithm tokens must be signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({})", self.algorithm)
    }
}

/// A key that signs tokens: for tests and for a command that mints them,
/// never used by the server. `Debug` shows the algorithm only.
pub struct SigningKey {
    algorithm: Algorithm,
    key: EncodingKey,
}

impl SigningKey {
    /// An HS256 secret (at least [`MIN_SECRET_BYTES`]).
    pub fn hs256(secret: &[u8]) -> Result<SigningKey, Error> {
        check_secret(secret)?;
        let key = EncodingKey::from_secret(secret).map_err(|_| config("the secret is empty"))?;
        Ok(SigningKey {
            algorithm: Algorithm::HS256,
            key,
        })
    }

    /// A PKCS#8 PEM private key (`PRIVATE KEY`; `openssl genpkey` writes
    /// these) or a PKCS#1 RSA one. Without an algorithm, RSA means RS256
    /// and EC means ES256.
    pub fn from_private_pem(pem: &[u8], algorithm: Option<Algorithm>) -> Result<SigningKey, Error> {
        match pem_label(pem) {
            Some("PRIVATE KEY" | "RSA PRIVATE KEY") => {}
            Some("EC PRIVATE KEY") => return Err(config(
                "EC keys must be PKCS#8: convert with openssl pkcs8 -topk8 -nocrypt -in key.pem",
            )),
            _ => return Err(config("not a PEM private key (no BEGIN PRIVATE KEY line)")),
        }
        let (found, key) = if let Ok(key) = EncodingKey::from_ec_pem(pem) {
            (Algorithm::ES256, key)
        } else if let Ok(key) = EncodingKey::from_rsa_pem(pem) {
            (Algorithm::RS256, key)
        } else {
            return Err(config("neither an RSA nor an EC private key"));
        };
        let algorithm = algorithm.unwrap_or(found);
        if algorithm != found {
            return Err(Error::Config(format!(
                "{algorithm} needs {} key, and this is {} key",
                key_kind(algorithm),
                key_kind(found)
            )));
        }
        Ok(SigningKey { algorithm, key })
    }

    /// The algorithm tokens are signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.algorithm)
    }
}

/// The claims a token is minted with; see the module documentation of
/// [`crate::auth`] for their meaning. Patterns are plain strings here, so a
/// test can mint a token with a bad one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not before, seconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    pub streamhub: Permissions,
}

/// The `streamhub` claim: room patterns per action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// Signs `claims` into a compact JWS (`header.claims.signature`).
pub fn mint(key: &SigningKey, claims: &Claims) -> Result<String, Error> {
    jsonwebtoken::encode(&Header::new(key.algorithm.jwt()), claims, &key.key)
        .map_err(|e| Error::InvalidArgument(format!("cannot sign the token: {e}")))
}

/// [`mint`] with an HS256 secret.
pub fn mint_hs256(secret: &[u8], claims: &Claims) -> Result<String, Error> {
    mint(&SigningKey::hs256(secret)?, claims)
}

/// What a verified token allows, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    user: String,
    /// `exp` plus the leeway: the last moment the token is accepted.
    expires: SystemTime,
    publish: Vec<Pattern>,
    subscribe: Vec<Pattern>,
}

impl VerifiedToken {
    /// The token's `sub`.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// When the token stops being accepted (its `exp` plus the leeway): a
    /// stream opened with it ends then.
    pub fn expires(&self) -> SystemTime {
        self.expires
    }

    /// The patterns granted for publishing.
    pub fn publish(&self) -> &[Pattern] {
        &self.publish
    }

    /// The patterns granted for subscribing.
    pub fn subscribe(&self) -> &[Pattern] {
        &self.subscribe
    }
}

/// A key with the rules tokens are checked by.
#[derive(Debug, Clone)]
pub(super) struct Verifier {
    key: VerifyingKey,
    validation: Validation,
    leeway: Duration,
}

/// Only the header field we pin; jsonwebtoken reads the rest.
#[derive(Deserialize)]
struct AlgHeader {
    alg: String,
}

impl Verifier {
    /// `audience`: when set, a token must carry it in `aud`; when not, a
    /// token with any `aud` is refused, since it was meant for some other
    /// service that shares the key.
    pub(super) fn new(key: VerifyingKey, leeway: Duration, audience: Option<&str>) -> Verifier {
        let mut validation = Validation::new(key.algorithm.jwt());
        // Time is checked by `verify` against its `now`.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        if let Some(audience) = audience {
            validation.set_audience(&[audience]);
            validation.required_spec_claims.insert("aud".into());
        }
        Verifier {
            key,
            validation,
            leeway,
        }
    }

    pub(super) fn verify(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<VerifiedToken, Unauthenticated> {
        use Unauthenticated::{Malformed, WrongAlgorithm};
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Unauthenticated::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Malformed("not three dot-separated parts"));
        };
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| Malformed("header is not base64url"))?;
        let header: AlgHeader =
            serde_json::from_slice(&header).map_err(|_| Malformed("header has no alg"))?;
        if header.alg.eq_ignore_ascii_case("none") {
            return Err(Unauthenticated::Unsigned);
        }
        let expected = self.key.algorithm;
        if header.alg != expected.as_str() {
            return Err(WrongAlgorithm { expected });
        }
        let claims = jsonwebtoken::decode::<Value>(token, &self.key.key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => Unauthenticated::BadSignature,
                ErrorKind::InvalidAlgorithm => WrongAlgorithm { expected },
                ErrorKind::InvalidAudience | ErrorKind::MissingRequiredClaim(_) => {
                    Unauthenticated::WrongAudience
                }
                ErrorKind::InvalidClaimFormat(_) => Malformed("aud claim is not a string"),
                ErrorKind::Base64(_) => Malformed("not base64url"),
                ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
                    Malformed("header or claims are not JSON objects")
                }
                ErrorKind::InvalidToken => Malformed("unsupported header"),
                // Key errors cannot happen with a key probed at start-up;
                // whatever it is, the token was not verified.
                _ => Unauthenticated::BadSignature,
            })?
            .claims;
        self.read_claims(&claims, now)
    }

    /// Checks the claims of a token whose signature is good.
    fn read_claims(
        &self,
        claims: &Value,
        now: SystemTime,
    ) -> Result<VerifiedToken, Unauthenticated> {
        use Unauthenticated::Malformed;
        let user = match claims.get("sub") {
            Some(Value::String(sub)) if sub.is_empty() => return Err(Malformed("sub is empty")),
            Some(Value::String(sub)) if sub.len() > MAX_USER_NAME => {
                return Err(Malformed("sub is longer than a user name can be"))
            }
            Some(Value::String(sub)) => sub.clone(),
            _ => return Err(Malformed("sub is missing or not a string")),
        };
        let exp = match claims.get("exp") {
            None | Some(Value::Null) => return Err(Malformed("exp is missing")),
            Some(exp) => numeric_date(exp).ok_or(Malformed("exp is not a time"))?,
        };
        let nbf = match claims.get("nbf") {
            None | Some(Value::Null) => None,
            Some(nbf) => Some(numeric_date(nbf).ok_or(Malformed("nbf is not a time"))?),
        };
        let (publish, subscribe) = match claims.get("streamhub") {
            None | Some(Value::Null) => (Vec::new(), Vec::new()),
            Some(Value::Object(grants)) => (
                patterns(grants.get("publish")).ok_or(Malformed(
                    "streamhub.publish is not a list of room patterns",
                ))?,
                patterns(grants.get("subscribe")).ok_or(Malformed(
                    "streamhub.subscribe is not a list of room patterns",
                ))?,
            ),
            Some(_) => return Err(Malformed("streamhub is not an object")),
        };
        let expires = exp
            .checked_add(self.leeway)
            .ok_or(Malformed("exp is not a time"))?;
        if now > expires {
            return Err(Unauthenticated::Expired);
        }
        if let Some(nbf) = nbf {
            if now.checked_add(self.leeway).is_some_and(|late| late < nbf) {
                return Err(Unauthenticated::NotYetValid);
            }
        }
        Ok(VerifiedToken {
            user,
            expires,
            publish,
            subscribe,
        })
    }
}

/// A JWT NumericDate (RFC 7519: seconds since the epoch, fractions
/// allowed) as a time.
fn numeric_date(value: &Value) -> Option<SystemTime> {
    let secs = value.as_f64()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(secs).ok()?)
}

/// A permission list: missing or null means none; anything but a list of
/// valid patterns refuses the whole token (a typo must not widen or
/// silently narrow what the issuer meant).
fn patterns(value: Option<&Value>) -> Option<Vec<Pattern>> {
    match value {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str()?.parse().ok())
            .collect(),
        Some(_) => None,
    }
}

/// Refuses secrets that are empty or shorter than [`MIN_SECRET_BYTES`].
fn check_secret(secret: &[u8]) -> Result<(), Error> {
    if secret.is_empty() {
        return Err(config("the secret is empty"));
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(Error::Config(format!(
            "the secret is {} bytes; HS256 needs at least {MIN_SECRET_BYTES} \
             (RFC 7518 section 3.2), e.g. from openssl rand -hex 32",
            secret.len()
        )));
    }
    Ok(())
}

/// The label of the first PEM block (`PUBLIC KEY` in
/// `-----BEGIN PUBLIC KEY-----`).
fn pem_label(pem: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(pem).ok()?;
    let rest = &text[text.find("-----BEGIN ")? + "-----BEGIN ".len()..];
    Some(&rest[..rest.find("-----")?])
}

fn key_kind(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::HS256 => "a secret",
        Algorithm::RS256 => "an RSA",
        Algorithm::ES256 => "an EC",
    }
}

fn config(message: &str) -> Error {
    Error::Config(message.into())
}
