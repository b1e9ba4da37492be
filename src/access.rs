//! Who may do what, and how often: the one gate both front doors ask
//! before they publish, subscribe, stream measurements or take a
//! connection. It owns the auth decision ([`crate::auth::Authorizer`]),
//! the rate and connection limits ([`crate::rate`]) and the counters of
//! every refusal by reason (`/metrics`). It does no I/O and knows neither
//! HTTP nor gRPC: a door hands it the token it found (header, cookie,
//! query or metadata), the client's address and the time, and maps a
//! [`Refusal`] to its own status (HTTP 401/403/429, gRPC
//! UNAUTHENTICATED/PERMISSION_DENIED/RESOURCE_EXHAUSTED).
//!
//! Limits are keyed by the token's user when there is one, else by the
//! client's address: two users behind one NAT do not share a publish
//! budget, and anonymous clients cannot dodge theirs by leaving a token
//! out. Connection limits (new per second, open at once) are per address,
//! since a connection has no user until its first request.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::auth::{Action, AuthConfig, AuthMode, Authorizer, Denied, Grant, Identity};
use crate::error::Error;
use crate::hub::{normalize_room, Draft};
use crate::rate::{ConnectionGuard, ConnectionLimiter, Quota, RateLimiter};

/// Buckets kept per limiter at most: enough for every address of a busy
/// server; past it the fullest bucket is forgotten (see
/// [`RateLimiter`]). About 100 bytes each.
const MAX_LIMITED_KEYS: usize = 65_536;

/// The limits, as the configuration gives them.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Publishes per user (or per address without a token).
    pub publish: Quota,
    /// New connections per address, both ports together.
    pub connect: Quota,
    /// Connections open at once per address, on each port (0: no cap).
    pub connections_per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            publish: Quota::unlimited(),
            connect: Quota::unlimited(),
            connections_per_address: 0,
        }
    }
}

/// Everything [`Access`] is built from.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    pub auth: AuthConfig,
    pub limits: Limits,
    /// `--auth-metrics`: with auth required, measurements (`/metrics`,
    /// `/metrics/events`, StreamMetrics) need a valid token too.
    pub metrics_need_token: bool,
}

/// Which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `--publish-rate` / `--publish-burst`.
    Publish,
    /// `--connect-rate` / `--connect-burst`.
    Connect,
    /// `--max-connections-per-address`.
    Connections,
}

impl Limit {
    pub const ALL: [Limit; 3] = [Limit::Publish, Limit::Connect, Limit::Connections];

    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Publish => "publish_rate",
            Limit::Connect => "connect_rate",
            Limit::Connections => "connections_per_address",
        }
    }
}

/// Why the gate said no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The token: missing, bad, or without the permission.
    Denied(Denied),
    /// Too much, too fast: try again after `retry_after`.
    Limited { limit: Limit, retry_after: Duration },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Denied(denied) => denied.fmt(f),
            Refusal::Limited { limit, retry_after } => {
                let secs = crate::rate::retry_after_secs(*retry_after);
                match limit {
                    Limit::Publish => write!(f, "publish rate limit reached; retry in {secs} s"),
                    Limit::Connect => {
                        write!(f, "too many new connections; retry in {secs} s")
                    }
                    Limit::Connections => {
                        f.write_str("too many open connections from this address")
                    }
                }
            }
        }
    }
}

impl From<Denied> for Refusal {
    fn from(denied: Denied) -> Refusal {
        Refusal::Denied(denied)
    }
}

/// The two ports, each with its own open-connection count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Grpc,
    Http,
}

/// The instant a token's expiry falls on, by this process's monotonic
/// clock: streams wait on instants, tokens name wall-clock time. Both
/// doors' streams end then.
pub fn expiry_instant(expires: SystemTime) -> Instant {
    Instant::now()
        + expires
            .duration_since(SystemTime::now())
            .unwrap_or_default()
}

/// A connection the gate let in; it is counted until this drops.
#[derive(Debug)]
pub struct Admission {
    _open: ConnectionGuard<IpAddr>,
}

/// A subscriber the gate let in: the room as the hub names it, the user
/// its presence goes under, and when its token expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    pub room: String,
    pub user: String,
    pub expires: Option<SystemTime>,
}

/// The gate. Built once at start, shared by both doors (`Send + Sync`).
#[derive(Debug)]
pub struct Access {
    auth: Authorizer,
    metrics_need_token: bool,
    publish: RateLimiter<Client>,
    connect: RateLimiter<IpAddr>,
    grpc_connections: ConnectionLimiter<IpAddr>,
    http_connections: ConnectionLimiter<IpAddr>,
    denied: [AtomicU64; Denied::LABELS.len()],
    limited: [AtomicU64; Limit::ALL.len()],
}

/// Whose budget a publish comes out of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Client {
    User(String),
    Address(IpAddr),
}

impl Access {
    /// Loads the key file (start-up I/O) and builds the gate.
    pub fn from_config(config: &AccessConfig) -> Result<Access, Error> {
        Ok(Access::new(
            Authorizer::from_config(&config.auth)?,
            config.limits.clone(),
            config.metrics_need_token,
        ))
    }

    pub fn new(auth: Authorizer, limits: Limits, metrics_need_token: bool) -> Access {
        Access {
            auth,
            metrics_need_token,
            publish: RateLimiter::new(limits.publish, MAX_LIMITED_KEYS),
            connect: RateLimiter::new(limits.connect, MAX_LIMITED_KEYS),
            grpc_connections: ConnectionLimiter::new(limits.connections_per_address),
            http_connections: ConnectionLimiter::new(limits.connections_per_address),
            denied: Default::default(),
            limited: Default::default(),
        }
    }

    /// Everything allowed, nothing limited: for tests and tools.
    pub fn open() -> Access {
        Access::from_config(&AccessConfig::default()).expect("auth off needs no key")
    }

    pub fn mode(&self) -> AuthMode {
        self.auth.mode()
    }

    /// A new connection from `ip` on `door`: within the address's rate and
    /// its open-connection cap, or refused (counted).
    pub fn admit(&self, door: Door, ip: IpAddr, now: Instant) -> Result<Admission, Refusal> {
        if let Err(wait) = self.connect.take(&ip, now) {
            return Err(self.limited(Limit::Connect, wait));
        }
        let limiter = match door {
            Door::Grpc => &self.grpc_connections,
            Door::Http => &self.http_connections,
        };
        match limiter.open(ip) {
            Some(open) => Ok(Admission { _open: open }),
            None => Err(self.limited(Limit::Connections, Duration::from_secs(1))),
        }
    }

    /// Verifies a token (once per request or call). Refusals are counted.
    pub fn identify(&self, token: Option<&str>, now: SystemTime) -> Result<Identity, Refusal> {
        self.auth
            .authenticate(token, now)
            .map_err(|denied| self.refuse(denied))
    }

    /// [`Self::identify`] for a connection that may send the same token
    /// again: a gRPC channel sends it on every call, an HTTP client on
    /// every request of a keep-alive connection, and verifying it each
    /// time costs up to ~164 us (RS256). `known` is the connection's last
    /// verified token; its expiry is still checked at every use
    /// ([`Self::publish`], [`Self::subscribe`]), and `nbf` was in the past
    /// when it was verified, so reusing the result changes no answer.
    pub fn identify_on(
        &self,
        known: &mut KnownToken,
        token: Option<&str>,
        now: SystemTime,
    ) -> Result<Arc<Identity>, Refusal> {
        if let (Some((seen, identity)), Some(token)) = (&known.0, token) {
            if seen == token {
                return Ok(identity.clone());
            }
        }
        let identity = Arc::new(self.identify(token, now)?);
        if let Some(token) = token {
            known.0 = Some((token.to_owned(), identity.clone()));
        }
        Ok(identity)
    }

    /// May `identity` publish `draft` now? On success the draft's room is
    /// the hub's name for it and its user the token's (a client may leave
    /// the name out or repeat it, not replace it); then the publish rate,
    /// per user or else per address.
    pub fn publish(
        &self,
        identity: &Identity,
        ip: IpAddr,
        draft: &mut Draft,
        now: SystemTime,
        clock: Instant,
    ) -> Result<(), Refusal> {
        // A room the hub would refuse is the hub's error to give, with its
        // own status (400 / INVALID_ARGUMENT); the gate only judges names
        // that can exist.
        let Ok(room) = normalize_room(&draft.room) else {
            return Ok(());
        };
        let grant = self
            .auth
            .authorize(identity, room, Action::Publish, now)
            .map_err(|denied| self.refuse(denied))?;
        if grant.user.is_some() {
            // Without a token the client's name stands as it is: no copy
            // of it on every publish.
            draft.user = grant
                .user_for(&draft.user)
                .map_err(|denied| self.refuse(denied))?;
        }
        let key = match grant.user {
            Some(user) => Client::User(user),
            None => Client::Address(ip),
        };
        self.publish
            .take(&key, clock)
            .map_err(|wait| self.limited(Limit::Publish, wait))
    }

    /// May `identity` subscribe to `room` with its presence under
    /// `claimed` (empty: no presence)? A room the hub would refuse is let
    /// through unchanged, for the hub to refuse with its own status.
    pub fn subscribe(
        &self,
        identity: &Identity,
        room: &str,
        claimed: &str,
        now: SystemTime,
    ) -> Result<Subscriber, Refusal> {
        if matches!(identity, Identity::Anonymous) && !claimed.is_empty() {
            // A presence is a user's: without a token there is none to
            // announce, and announcing another's would be impersonation.
            let missing = Denied::Unauthenticated(crate::auth::Unauthenticated::Missing);
            return Err(self.refuse(missing));
        }
        let Ok(normal) = normalize_room(room) else {
            return Ok(Subscriber {
                room: room.to_owned(),
                user: claimed.to_owned(),
                expires: None,
            });
        };
        let checked = self
            .auth
            .authorize(identity, normal, Action::Subscribe, now)
            .and_then(|grant: Grant| {
                let user = if claimed.is_empty() {
                    String::new()
                } else {
                    grant.user_for(claimed)?
                };
                Ok(Subscriber {
                    room: normal.to_owned(),
                    user,
                    expires: grant.expires,
                })
            });
        checked.map_err(|denied| self.refuse(denied))
    }

    /// May `identity` read the server's measurements? Always, unless
    /// `--auth-metrics` asks for a valid token (of any user).
    pub fn measurements(&self, identity: &Identity) -> Result<(), Refusal> {
        match identity {
            Identity::Anonymous if self.metrics_need_token => Err(self.refuse(
                Denied::Unauthenticated(crate::auth::Unauthenticated::Missing),
            )),
            _ => Ok(()),
        }
    }

    /// Refusals so far by reason: `(label, count)` for every auth reason
    /// ([`Denied::LABELS`]), then every limit ([`Limit::as_str`]).
    pub fn refusals(&self) -> Refusals {
        Refusals {
            denied: Denied::LABELS
                .iter()
                .zip(&self.denied)
                .map(|(label, n)| (*label, n.load(Ordering::Relaxed)))
                .collect(),
            limited: Limit::ALL
                .iter()
                .zip(&self.limited)
                .map(|(limit, n)| (limit.as_str(), n.load(Ordering::Relaxed)))
                .collect(),
        }
    }

    /// Counts a refusal (also one a door found itself: a token it could
    /// not even read) and hands it back.
    pub fn refuse(&self, denied: Denied) -> Refusal {
        let label = denied.label();
        if let Some(i) = Denied::LABELS.iter().position(|l| *l == label) {
            self.denied[i].fetch_add(1, Ordering::Relaxed);
        }
        Refusal::Denied(denied)
    }

    fn limited(&self, limit: Limit, retry_after: Duration) -> Refusal {
        let i = Limit::ALL.iter().position(|l| *l == limit).unwrap_or(0);
        self.limited[i].fetch_add(1, Ordering::Relaxed);
        Refusal::Limited { limit, retry_after }
    }
}

/// A connection's last verified token and who it names
/// ([`Access::identify_on`]).
#[derive(Debug, Default)]
pub struct KnownToken(Option<(String, Arc<Identity>)>);

/// What [`Access::refusals`] counted, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refusals {
    pub denied: Vec<(&'static str, u64)>,
    pub limited: Vec<(&'static str, u64)>,
}

#[cfg(test)]
mod tests;
