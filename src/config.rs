//! Command-line flags and `STREAMHUB_*` environment variables, turned into
//! one validated [`Config`] per subcommand.
//!
//! Every option is declared once in a table ([`SERVE_OPTIONS`]; the client
//! commands and the load tool have tables of their own) with its flag,
//! variable, default and help; the same table drives parsing, `--help`,
//! `--print-config` and the systemd env file. A flag beats its variable,
//! which beats the default. Errors name the flag.
//!
//! Over 500 lines on purpose: about 200 of them are the option table, which
//! is data and reads best in one place next to the code that validates it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::access::{AccessConfig, Limits};
use crate::auth::{AuthConfig, KeySource};
use crate::error::Error;
use crate::hub::HubConfig;
use crate::rate::Quota;
use crate::store::{Fsync, StoreConfig};

/// One option of a subcommand.
pub struct OptSpec {
    /// Long flag without the dashes.
    pub flag: &'static str,
    /// Environment variable, or "" when there is none.
    pub env: &'static str,
    /// Default as text; "" means unset.
    pub default: &'static str,
    pub help: &'static str,
    /// Takes no value (`--flag` alone means "true").
    pub switch: bool,
    /// May be given more than once (values accumulate; the variable takes a
    /// comma-separated list).
    pub repeatable: bool,
}

/// An option with a value; the struct update syntax adds `switch` or
/// `repeatable`.
pub const fn opt(
    flag: &'static str,
    env: &'static str,
    default: &'static str,
    help: &'static str,
) -> OptSpec {
    OptSpec {
        flag,
        env,
        default,
        help,
        switch: false,
        repeatable: false,
    }
}

/// Every option of `streamhub serve`.
pub const SERVE_OPTIONS: &[OptSpec] = &[
    opt(
        "grpc-addr",
        "STREAMHUB_GRPC_ADDR",
        "0.0.0.0:50051",
        "address the gRPC server listens on",
    ),
    opt(
        "http-addr",
        "STREAMHUB_HTTP_ADDR",
        "0.0.0.0:8080",
        "address the HTTP/SSE server listens on",
    ),
    opt(
        "max-message-bytes",
        "STREAMHUB_MAX_MESSAGE_BYTES",
        "1048576",
        "largest accepted message (gRPC message, HTTP body, content)",
    ),
    opt(
        "subscriber-queue",
        "STREAMHUB_SUBSCRIBER_QUEUE",
        "1024",
        "how many messages a subscriber may trail its room by (its window); one more and a publish waits --publish-stall-ms, then drops it as too slow",
    ),
    opt(
        "publish-stall-ms",
        "STREAMHUB_PUBLISH_STALL_MS",
        "10",
        "longest a publish waits for a subscriber that is a window behind before dropping it (0: drop at once)",
    ),
    opt(
        "history",
        "STREAMHUB_HISTORY",
        "1000",
        "messages retained per room for resuming subscribers",
    ),
    opt(
        "history-bytes",
        "STREAMHUB_HISTORY_BYTES",
        "4194304",
        "content bytes retained per room, at most (the oldest messages go first)",
    ),
    opt(
        "max-rooms",
        "STREAMHUB_MAX_ROOMS",
        "10000",
        "most rooms that may exist at once; at the limit the least recently used room without subscribers makes way, history and all",
    ),
    opt(
        "history-total-bytes",
        "STREAMHUB_HISTORY_TOTAL_BYTES",
        "67108864",
        "content bytes retained by all rooms together; over it the least recently used rooms forget their oldest messages",
    ),
    opt(
        "max-grpc-streams",
        "STREAMHUB_MAX_GRPC_STREAMS",
        "1024",
        "most concurrent gRPC streaming calls (each holds a thread)",
    ),
    opt(
        "max-streams-per-connection",
        "STREAMHUB_MAX_STREAMS_PER_CONNECTION",
        "2048",
        "HTTP/2 concurrent streams allowed on one gRPC connection (SETTINGS_MAX_CONCURRENT_STREAMS); more are refused with REFUSED_STREAM",
    ),
    opt(
        "publish-threads",
        "STREAMHUB_PUBLISH_THREADS",
        "16",
        "threads that answer gRPC SendMessage when a publish waits for the disk (--data-dir with --fsync always or batch) or for Redis (--cluster), so that a connection's reader goes on with its other calls meanwhile; also how many such publishes a group commit can take at once",
    ),
    opt(
        "max-grpc-connections",
        "STREAMHUB_MAX_GRPC_CONNECTIONS",
        "4096",
        "most open gRPC connections (each has a reader and a writer thread); past it new ones get GOAWAY and are closed",
    ),
    opt(
        "max-header-list-bytes",
        "STREAMHUB_MAX_HEADER_LIST_BYTES",
        "16384",
        "largest request header list on the gRPC port (SETTINGS_MAX_HEADER_LIST_SIZE, counted as HTTP/2 does); a larger one is answered RESOURCE_EXHAUSTED",
    ),
    opt(
        "keepalive-secs",
        "STREAMHUB_KEEPALIVE_SECS",
        "30",
        "gRPC keepalive ping interval, to notice dead peers",
    ),
    opt(
        "keepalive-timeout-secs",
        "STREAMHUB_KEEPALIVE_TIMEOUT_SECS",
        "10",
        "how long a keepalive ping may go unanswered",
    ),
    opt(
        "tls-cert",
        "STREAMHUB_TLS_CERT",
        "",
        "PEM certificate chain (leaf first): with --tls-key, both ports speak TLS only (TLS 1.2 and 1.3; gRPC with ALPN h2, HTTP with http/1.1); SIGHUP reloads both files; under systemd see LoadCredential= in the unit; empty: plain h2c and HTTP",
    ),
    opt(
        "tls-key",
        "STREAMHUB_TLS_KEY",
        "",
        "PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert; read again on SIGHUP",
    ),
    opt(
        "auth",
        "STREAMHUB_AUTH",
        "off",
        "off (anyone may publish and subscribe anywhere, under any name) or required (a JWT bearer token is needed, see --auth-secret-file; its sub is the user and its streamhub.publish/subscribe claims the rooms)",
    ),
    opt(
        "auth-secret-file",
        "STREAMHUB_AUTH_SECRET_FILE",
        "",
        "file holding the HS256 secret tokens are signed with (at least 32 bytes; a trailing newline is ignored)",
    ),
    opt(
        "auth-public-key-file",
        "STREAMHUB_AUTH_PUBLIC_KEY_FILE",
        "",
        "PEM public key of the token issuer, for RS256 or ES256 tokens (instead of --auth-secret-file)",
    ),
    opt(
        "auth-algorithm",
        "STREAMHUB_AUTH_ALGORITHM",
        "",
        "HS256, RS256 or ES256; the only one accepted, whatever a token says (empty: HS256 for a secret, by key type for a public key)",
    ),
    opt(
        "auth-leeway-secs",
        "STREAMHUB_AUTH_LEEWAY_SECS",
        "30",
        "clock skew tolerated when checking a token's exp and nbf",
    ),
    opt(
        "auth-audience",
        "STREAMHUB_AUTH_AUDIENCE",
        "",
        "when set, tokens must carry it in aud; when not, tokens with an aud are refused",
    ),
    OptSpec {
        repeatable: true,
        ..opt(
            "anonymous-subscribe",
            "STREAMHUB_ANONYMOUS_SUBSCRIBE",
            "",
            "with --auth required, rooms anyone may subscribe to without a token (repeatable; a name, '*' or a prefix like 'news.*')",
        )
    },
    opt(
        "auth-cookie",
        "STREAMHUB_AUTH_COOKIE",
        "",
        "name of a cookie to read the token from on the HTTP port (for EventSource, which cannot set headers; the access_token query parameter works too); empty: no cookie is read",
    ),
    OptSpec {
        switch: true,
        ..opt(
            "auth-metrics",
            "STREAMHUB_AUTH_METRICS",
            "false",
            "with --auth required, measurements (/metrics, /metrics/events, StreamMetrics) need a valid token too (health and reflection always stay open)",
        )
    },
    opt(
        "publish-rate",
        "STREAMHUB_PUBLISH_RATE",
        "0",
        "messages per second each user (by token, else by client address) may publish on average; past it 429 / RESOURCE_EXHAUSTED (0: unlimited)",
    ),
    opt(
        "publish-burst",
        "STREAMHUB_PUBLISH_BURST",
        "20",
        "messages a user may publish at once before --publish-rate applies",
    ),
    opt(
        "connect-rate",
        "STREAMHUB_CONNECT_RATE",
        "0",
        "new connections per second per client address, both ports together; past it the connection is refused (0: unlimited)",
    ),
    opt(
        "connect-burst",
        "STREAMHUB_CONNECT_BURST",
        "50",
        "new connections an address may open at once before --connect-rate applies",
    ),
    opt(
        "max-connections-per-address",
        "STREAMHUB_MAX_CONNECTIONS_PER_ADDRESS",
        "1024",
        "connections one client address may hold open on each port, so that one address cannot take every connection (0: no cap)",
    ),
    opt(
        "chat-heartbeat-secs",
        "STREAMHUB_CHAT_HEARTBEAT_SECS",
        "5",
        "interval of the SYSTEM heartbeat on Chat streams",
    ),
    opt(
        "stream-stack-kib",
        "STREAMHUB_STREAM_STACK_KIB",
        "128",
        "stack size of each stream thread",
    ),
    opt(
        "stream-priority",
        "STREAMHUB_STREAM_PRIORITY",
        "auto",
        "CPU priority of SSE stream threads: auto (normal until the room publishes 50 msgs/s or more, then SCHED_IDLE), idle (SCHED_IDLE from the start: they yield to the threads that accept publishes, so one wake-up carries many messages), low (nice 19) or normal",
    ),
    opt(
        "sse-send-buffer-bytes",
        "STREAMHUB_SSE_SEND_BUFFER_BYTES",
        "65536",
        "socket send buffer of each event stream (bounds its queue and so its latency; 0: the system default)",
    ),
    opt(
        "max-http-connections",
        "STREAMHUB_MAX_HTTP_CONNECTIONS",
        "2048",
        "most open HTTP connections; past it new ones get 503",
    ),
    opt(
        "http-header-timeout-secs",
        "STREAMHUB_HTTP_HEADER_TIMEOUT_SECS",
        "10",
        "time a client has to send a whole request head",
    ),
    opt(
        "http-idle-timeout-secs",
        "STREAMHUB_HTTP_IDLE_TIMEOUT_SECS",
        "30",
        "how long an idle keep-alive connection stays open",
    ),
    opt(
        "write-timeout-secs",
        "STREAMHUB_WRITE_TIMEOUT_SECS",
        "10",
        "how long a write to a client (gRPC or HTTP) may block",
    ),
    opt(
        "http-workers",
        "STREAMHUB_HTTP_WORKERS",
        "16",
        "threads serving plain HTTP requests",
    ),
    opt(
        "max-sse-clients",
        "STREAMHUB_MAX_SSE_CLIENTS",
        "1024",
        "most concurrent SSE streams; past it new ones get 503",
    ),
    opt(
        "sse-keepalive-secs",
        "STREAMHUB_SSE_KEEPALIVE_SECS",
        "15",
        "interval of SSE comment lines that keep proxies and clients awake",
    ),
    opt(
        "sse-retry-ms",
        "STREAMHUB_SSE_RETRY_MS",
        "3000",
        "reconnect delay suggested to SSE clients",
    ),
    OptSpec {
        repeatable: true,
        ..opt(
            "cors-origin",
            "STREAMHUB_CORS_ORIGINS",
            "",
            "origin allowed by CORS (repeatable, or '*'); none: no CORS headers",
        )
    },
    opt(
        "ui",
        "STREAMHUB_UI",
        "on",
        "the built-in live page at / on the HTTP port: on or off",
    ),
    opt(
        "data-dir",
        "STREAMHUB_DATA_DIR",
        "",
        "directory for durable rooms: every message is stored before it is acknowledged and read back at start (systemd: /var/lib/streamhub); none: memory only",
    ),
    opt(
        "cluster",
        "STREAMHUB_CLUSTER",
        "",
        "share rooms with other nodes through one Redis: redis://[:PASSWORD@]HOST:PORT or redis+unix:///path/to/socket[?pass=PASSWORD] (sequences and ids come from Redis); none: this node alone",
    ),
    opt(
        "fsync",
        "STREAMHUB_FSYNC",
        "batch",
        "with --data-dir, when the log is synced: always (before each answer), batch (written before each answer, synced every 100 ms) or never",
    ),
    opt(
        "retention-age",
        "STREAMHUB_RETENTION_AGE",
        "7d",
        "with --data-dir, stored messages older than this go (as whole segments), like history past --history: e.g. 90m, 12h, 7d; 0: no age limit",
    ),
    opt(
        "segment-bytes",
        "STREAMHUB_SEGMENT_BYTES",
        "16777216",
        "with --data-dir, size of each log segment (preallocated; at least --max-message-bytes plus 4096)",
    ),
    opt(
        "shutdown-grace-secs",
        "STREAMHUB_SHUTDOWN_GRACE_SECS",
        "10",
        "time open streams get to drain on shutdown",
    ),
    OptSpec {
        switch: true,
        ..opt(
            "print-config",
            "",
            "",
            "print the effective settings and exit",
        )
    },
];

/// Where a value came from, for `--print-config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    Env,
    Flag,
}

/// Flags and variables before validation.
#[derive(Debug, Default)]
pub struct RawArgs {
    values: HashMap<&'static str, (Vec<String>, Source)>,
    /// Arguments that are not flags, in order.
    pub positional: Vec<String>,
    pub help: bool,
}

impl RawArgs {
    /// Parses `args` (after the subcommand) against `specs`, then fills in
    /// the environment (through `env`) and defaults.
    pub fn parse(
        specs: &'static [OptSpec],
        args: &[String],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<RawArgs, Error> {
        let mut raw = RawArgs::default();
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            i += 1;
            if arg == "--help" || arg == "-h" {
                raw.help = true;
                continue;
            }
            if arg == "--" {
                raw.positional.extend(args[i..].iter().cloned());
                break;
            }
            let Some(body) = arg.strip_prefix("--") else {
                raw.positional.push(arg.clone());
                continue;
            };
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let spec = specs
                .iter()
                .find(|s| s.flag == name)
                .ok_or_else(|| Error::Config(format!("unknown flag --{name} (see --help)")))?;
            let value = if spec.switch {
                inline.unwrap_or_else(|| "true".into())
            } else if let Some(v) = inline {
                v
            } else if i < args.len() {
                i += 1;
                args[i - 1].clone()
            } else {
                return Err(Error::Config(format!("--{name} needs a value")));
            };
            let entry = raw
                .values
                .entry(spec.flag)
                .or_insert_with(|| (Vec::new(), Source::Flag));
            if spec.repeatable {
                entry.0.push(value);
            } else {
                entry.0 = vec![value];
            }
        }
        for spec in specs {
            if raw.values.contains_key(spec.flag) {
                continue;
            }
            if let Some(v) = (!spec.env.is_empty()).then(|| env(spec.env)).flatten() {
                let values = if spec.repeatable {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                } else {
                    vec![v]
                };
                raw.values.insert(spec.flag, (values, Source::Env));
            } else if !spec.default.is_empty() {
                raw.values
                    .insert(spec.flag, (vec![spec.default.to_string()], Source::Default));
            }
        }
        Ok(raw)
    }

    fn get(&self, flag: &str) -> Option<&str> {
        self.values
            .get(flag)
            .and_then(|(v, _)| v.last())
            .map(String::as_str)
    }

    pub fn string(&self, flag: &str) -> String {
        self.get(flag).unwrap_or_default().to_string()
    }

    pub fn list(&self, flag: &str) -> Vec<String> {
        self.values
            .get(flag)
            .map(|(v, _)| v.clone())
            .unwrap_or_default()
    }

    pub fn source(&self, flag: &str) -> Source {
        self.values
            .get(flag)
            .map(|(_, s)| *s)
            .unwrap_or(Source::Default)
    }

    pub fn switch(&self, flag: &str) -> bool {
        matches!(self.get(flag), Some("true" | "1" | "yes"))
    }

    /// A whole number within `min..=max`.
    pub fn number(&self, flag: &str, min: u64, max: u64) -> Result<u64, Error> {
        let text = self.get(flag).unwrap_or_default();
        let n: u64 = text.trim().parse().map_err(|_| {
            Error::Config(format!("--{flag}: expected a whole number, got '{text}'"))
        })?;
        if n < min || n > max {
            return Err(Error::Config(format!(
                "--{flag}: {n} is outside the allowed range {min}..={max}"
            )));
        }
        Ok(n)
    }

    /// A rate per second: a number (decimals allowed, e.g. 0.5), 0 for
    /// unlimited.
    pub fn rate(&self, flag: &str) -> Result<f64, Error> {
        let text = self.get(flag).unwrap_or_default();
        match text.trim().parse::<f64>() {
            Ok(n) if n.is_finite() && (0.0..=1e9).contains(&n) => Ok(n),
            _ => Err(Error::Config(format!(
                "--{flag}: expected a rate per second like 10 or 0.5 (0: unlimited), got '{text}'"
            ))),
        }
    }

    /// A stream-thread priority: `idle`, `low` or `normal`.
    pub fn priority(&self, flag: &str) -> Result<crate::threads::Priority, Error> {
        let text = self.get(flag).unwrap_or_default();
        crate::threads::Priority::parse(text.trim()).ok_or_else(|| {
            Error::Config(format!(
                "--{flag}: expected auto, idle, low or normal, got '{text}'"
            ))
        })
    }

    pub fn secs(&self, flag: &str, min: u64, max: u64) -> Result<Duration, Error> {
        self.number(flag, min, max).map(Duration::from_secs)
    }

    pub fn addr(&self, flag: &str) -> Result<SocketAddr, Error> {
        let text = self.get(flag).unwrap_or_default();
        text.parse().map_err(|_| {
            Error::Config(format!(
                "--{flag}: expected an address like 127.0.0.1:8080, got '{text}'"
            ))
        })
    }
}

/// Writes a `--help` text for a command (`streamhub serve`) from its table.
pub fn usage(command: &str, summary: &str, args: &str, specs: &[OptSpec]) -> String {
    let mut out = format!("{summary}\n\nUsage: {command} [OPTIONS]{args}\n\nOptions:\n");
    for s in specs {
        let value = if s.switch { "" } else { " <value>" };
        out.push_str(&format!("  --{}{value}\n      {}", s.flag, s.help));
        if !s.default.is_empty() {
            out.push_str(&format!(" [default: {}]", s.default));
        }
        if !s.env.is_empty() {
            out.push_str(&format!(" [env: {}]", s.env));
        }
        out.push('\n');
    }
    out.push_str("  -h, --help\n      print this help\n");
    out
}

/// The validated settings of `streamhub serve`: one part per front door
/// (each door receives only its own), the hub's, and the process's own.
#[derive(Clone, Debug)]
pub struct Config {
    pub grpc: GrpcConfig,
    pub http: HttpConfig,
    pub hub: HubConfig,
    /// Certificate and key of both ports, when they speak TLS.
    pub tls: Option<TlsFiles>,
    /// Who may do what, and how often: both doors ask the same gate.
    pub access: AccessConfig,
    /// Time open streams get to drain on shutdown.
    pub shutdown_grace: Duration,
    /// Durable rooms (`--data-dir`); `None`: memory only.
    pub store: Option<StoreConfig>,
    /// The Redis URL of rooms shared with other nodes (`--cluster`).
    pub cluster: Option<String>,
}

/// Settings of the gRPC front door.
#[derive(Clone, Debug)]
pub struct GrpcConfig {
    pub addr: SocketAddr,
    /// Largest message received or sent (beyond the content limit, room
    /// for the other fields is added).
    pub max_message_bytes: usize,
    /// Concurrent streaming calls, each holding a thread.
    pub max_streams: usize,
    pub max_streams_per_connection: usize,
    /// SETTINGS_MAX_HEADER_LIST_SIZE of the gRPC port.
    pub max_header_list_bytes: usize,
    /// Threads answering SendMessage when a publish waits (`publishers`).
    pub publish_threads: usize,
    /// Open connections allowed on the gRPC port.
    pub max_connections: usize,
    pub keepalive: Duration,
    pub keepalive_timeout: Duration,
    pub chat_heartbeat: Duration,
    pub stream_stack_bytes: usize,
    pub write_timeout: Duration,
}

/// `--tls-cert` and `--tls-key`: the PEM files both ports serve, read at
/// start and again on SIGHUP.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// Settings of the HTTP/SSE front door.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    /// Largest request body.
    pub max_body_bytes: usize,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub workers: usize,
    pub max_sse_clients: usize,
    pub sse_keepalive: Duration,
    pub sse_retry_ms: u64,
    pub cors_origins: Vec<String>,
    pub stream_stack_bytes: usize,
    /// CPU priority of the event-stream threads.
    pub stream_priority: crate::threads::Priority,
    /// SO_SNDBUF of each event stream (0: the system's).
    pub sse_send_buffer: usize,
    /// `--auth-cookie`: the cookie a token may come in.
    pub auth_cookie: Option<String>,
    /// The built-in page at `/` (`--ui`).
    pub ui: bool,
}

impl Config {
    pub fn from_raw(raw: &RawArgs) -> Result<Config, Error> {
        let max_message_bytes = raw.number("max-message-bytes", 64, 64 << 20)? as usize;
        let cors_origins = raw.list("cors-origin");
        for origin in &cors_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(Error::Config(format!(
                    "--cors-origin: '{origin}' is neither '*' nor an http(s):// origin"
                )));
            }
        }
        let write_timeout = raw.secs("write-timeout-secs", 1, 3600)?;
        let tls = match (raw.string("tls-cert"), raw.string("tls-key")) {
            (c, k) if c.is_empty() && k.is_empty() => None,
            (c, k) if c.is_empty() || k.is_empty() => {
                return Err(Error::Config(
                    "--tls-cert and --tls-key go together: give both or neither".into(),
                ))
            }
            (c, k) => Some(TlsFiles {
                cert: c.into(),
                key: k.into(),
            }),
        };
        let stream_stack_bytes = raw.number("stream-stack-kib", 32, 16 * 1024)? as usize * 1024;
        Ok(Config {
            grpc: GrpcConfig {
                addr: raw.addr("grpc-addr")?,
                max_message_bytes,
                max_streams: raw.number("max-grpc-streams", 1, 1 << 20)? as usize,
                max_streams_per_connection: raw.number("max-streams-per-connection", 1, 1 << 16)?
                    as usize,
                max_header_list_bytes: raw.number("max-header-list-bytes", 1024, 1 << 20)? as usize,
                publish_threads: raw.number("publish-threads", 1, 1024)? as usize,
                max_connections: raw.number("max-grpc-connections", 1, 1 << 20)? as usize,
                keepalive: raw.secs("keepalive-secs", 1, 86_400)?,
                keepalive_timeout: raw.secs("keepalive-timeout-secs", 1, 3600)?,
                chat_heartbeat: raw.secs("chat-heartbeat-secs", 1, 3600)?,
                stream_stack_bytes,
                write_timeout,
            },
            http: HttpConfig {
                addr: raw.addr("http-addr")?,
                max_body_bytes: max_message_bytes,
                max_connections: raw.number("max-http-connections", 1, 1 << 20)? as usize,
                header_timeout: raw.secs("http-header-timeout-secs", 1, 3600)?,
                idle_timeout: raw.secs("http-idle-timeout-secs", 1, 3600)?,
                write_timeout,
                workers: raw.number("http-workers", 1, 1024)? as usize,
                max_sse_clients: raw.number("max-sse-clients", 1, 1 << 20)? as usize,
                sse_keepalive: raw.secs("sse-keepalive-secs", 1, 3600)?,
                sse_retry_ms: raw.number("sse-retry-ms", 0, 3_600_000)?,
                cors_origins,
                stream_stack_bytes,
                stream_priority: raw.priority("stream-priority")?,
                sse_send_buffer: raw.number("sse-send-buffer-bytes", 0, 64 << 20)? as usize,
                auth_cookie: Some(raw.string("auth-cookie")).filter(|c| !c.is_empty()),
                ui: match raw.string("ui").as_str() {
                    "on" => true,
                    "off" => false,
                    other => {
                        let shown: String = other.chars().take(20).collect();
                        return Err(Error::Config(format!(
                            "--ui: '{shown}' is neither on nor off"
                        )));
                    }
                },
            },
            hub: HubConfig {
                subscriber_queue: raw.number("subscriber-queue", 1, 1 << 20)? as usize,
                publish_stall: Duration::from_millis(raw.number("publish-stall-ms", 0, 10_000)?),
                history: raw.number("history", 0, 1 << 20)? as usize,
                history_bytes: raw.number("history-bytes", 0, 1 << 40)? as usize,
                max_content_bytes: max_message_bytes,
                max_rooms: raw.number("max-rooms", 1, 1 << 24)? as usize,
                history_total_bytes: raw.number("history-total-bytes", 0, 1 << 40)? as usize,
            },
            tls,
            access: access_config(raw)?,
            shutdown_grace: raw.secs("shutdown-grace-secs", 0, 3600)?,
            store: store_config(raw, max_message_bytes)?,
            cluster: cluster_url(raw)?,
        })
    }

    /// Defaults with both servers on 127.0.0.1 port 0: for tests and tools.
    pub fn local() -> Config {
        let raw = RawArgs::parse(SERVE_OPTIONS, &[], |_| None).expect("defaults parse");
        let mut config = Config::from_raw(&raw).expect("defaults are valid");
        config.grpc.addr = "127.0.0.1:0".parse().expect("literal address");
        config.http.addr = "127.0.0.1:0".parse().expect("literal address");
        config
    }
}

/// The auth and limit flags.
fn access_config(raw: &RawArgs) -> Result<AccessConfig, Error> {
    let key = match (
        raw.string("auth-secret-file"),
        raw.string("auth-public-key-file"),
    ) {
        (s, p) if s.is_empty() && p.is_empty() => None,
        (s, p) if !s.is_empty() && !p.is_empty() => {
            return Err(Error::Config(
                "--auth-secret-file and --auth-public-key-file: give one, not both".into(),
            ))
        }
        (s, _) if !s.is_empty() => Some(KeySource::SecretFile(s.into())),
        (_, p) => Some(KeySource::PublicKeyFile(p.into())),
    };
    let algorithm = match raw.string("auth-algorithm").trim() {
        "" => None,
        text => Some(text.parse()?),
    };
    let anonymous_subscribe = raw
        .list("anonymous-subscribe")
        .iter()
        .map(|p| {
            p.parse()
                .map_err(|e| Error::Config(format!("--anonymous-subscribe '{p}': {e}")))
        })
        .collect::<Result<_, _>>()?;
    let cookie = raw.string("auth-cookie");
    if !cookie.is_empty()
        && !cookie
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err(Error::Config(format!(
            "--auth-cookie: '{cookie}' is not a cookie name"
        )));
    }
    let audience = Some(raw.string("auth-audience")).filter(|a| !a.is_empty());
    Ok(AccessConfig {
        auth: AuthConfig {
            mode: raw.string("auth").trim().parse()?,
            key,
            algorithm,
            leeway: raw.secs("auth-leeway-secs", 0, 3600)?,
            anonymous_subscribe,
            audience,
        },
        limits: Limits {
            publish: Quota::new(
                raw.rate("publish-rate")?,
                raw.number("publish-burst", 1, 1 << 20)? as u32,
            ),
            connect: Quota::new(
                raw.rate("connect-rate")?,
                raw.number("connect-burst", 1, 1 << 20)? as u32,
            ),
            connections_per_address: raw.number("max-connections-per-address", 0, 1 << 20)?
                as usize,
        },
        metrics_need_token: raw.switch("auth-metrics"),
    })
}

/// `--cluster`: the URL's scheme is checked here, the rest when the
/// client opens it. With `--data-dir` it is refused: Redis's Stream is then
/// the rooms' history, and two sources of sequences would disagree.
fn cluster_url(raw: &RawArgs) -> Result<Option<String>, Error> {
    let url = raw.string("cluster");
    let url = url.trim();
    if url.is_empty() {
        return Ok(None);
    }
    if !url.starts_with("redis://") && !url.starts_with("redis+unix://") {
        let shown: String = url.chars().take(40).collect();
        return Err(Error::Config(format!(
            "--cluster: '{shown}' is not redis://HOST:PORT or redis+unix:///path/to/socket"
        )));
    }
    if !raw.string("data-dir").is_empty() {
        return Err(Error::Config(
            "--cluster and --data-dir: give one, not both (with --cluster, Redis keeps the rooms' history)".into(),
        ));
    }
    Ok(Some(url.to_string()))
}

/// A Redis URL as it may be shown (logs, errors, `--print-config`): a
/// password (`redis://user:PASSWORD@host`, `?pass=PASSWORD`) is `***`.
pub fn redacted_url(url: &str) -> String {
    let (main, query) = match url.split_once('?') {
        Some((main, query)) => (main, Some(query)),
        None => (url, None),
    };
    let mut out = match main.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((login, host)) => match login.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => main.to_string(),
            },
            None => main.to_string(),
        },
        None => main.to_string(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some(("pass" | "password", _)) => {
                    format!("{}=***", pair.split('=').next().unwrap_or_default())
                }
                _ => pair.to_string(),
            })
            .collect();
        out = format!("{out}?{}", pairs.join("&"));
    }
    out
}

/// `--data-dir` and its companions; `None` without a directory.
fn store_config(raw: &RawArgs, max_message_bytes: usize) -> Result<Option<StoreConfig>, Error> {
    let fsync = raw.string("fsync");
    let fsync = Fsync::parse(&fsync).ok_or_else(|| {
        Error::Config(format!(
            "--fsync: '{fsync}' is not one of always, batch, never"
        ))
    })?;
    let retention_age = duration("retention-age", &raw.string("retention-age"))?;
    let min_segment = max_message_bytes as u64 + 4096;
    let segment_bytes = raw.number("segment-bytes", 64 * 1024, 1 << 32)?;
    if segment_bytes < min_segment {
        return Err(Error::Config(format!(
            "--segment-bytes: {segment_bytes} cannot hold a message of --max-message-bytes; give at least {min_segment}"
        )));
    }
    let dir = raw.string("data-dir");
    Ok((!dir.is_empty()).then(|| StoreConfig {
        dir: dir.into(),
        fsync,
        retention_age: (!retention_age.is_zero()).then_some(retention_age),
        segment_bytes,
    }))
}

/// A duration such as `90s`, `30m`, `12h`, `7d` or `0`.
fn duration(flag: &str, text: &str) -> Result<Duration, Error> {
    let bad = || {
        Error::Config(format!(
            "--{flag}: '{text}' is not a duration such as 90s, 30m, 12h or 7d (or 0)"
        ))
    };
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    number
        .checked_mul(unit)
        .map(Duration::from_secs)
        .ok_or_else(bad)
}

/// The effective settings as `--print-config` shows them, in the
/// `EnvironmentFile` format: for each option a comment naming its flag and
/// where the value came from, then `STREAMHUB_X=value`.
pub fn print_config(raw: &RawArgs) -> String {
    let mut out = String::new();
    for spec in SERVE_OPTIONS.iter().filter(|s| !s.env.is_empty()) {
        let source = match raw.source(spec.flag) {
            Source::Default => "default",
            Source::Env => "environment",
            Source::Flag => "flag",
        };
        let mut value = raw.list(spec.flag).join(",");
        if spec.flag == "cluster" {
            value = redacted_url(&value);
        }
        out.push_str(&format!(
            "# --{} (from {source})\n{}={value}\n",
            spec.flag, spec.env
        ));
    }
    out
}

/// The text of `systemd/streamhub.env`: every setting, commented out at its
/// default, with its help line.
pub fn env_template() -> String {
    let mut out = String::from(
        "# streamhub settings, read by systemd from /etc/default/streamhub.\n\
         # Every line shows the default; uncomment and change what you need.\n\
         # Each variable is also a flag of `streamhub serve` (flags win);\n\
         # `streamhub serve --print-config` shows the effective values.\n",
    );
    for spec in SERVE_OPTIONS.iter().filter(|s| !s.env.is_empty()) {
        out.push_str(&format!(
            "\n# {} (--{})\n#{}={}\n",
            spec.help, spec.flag, spec.env, spec.default
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flag_beats_env_beats_default() {
        let env = |k: &str| match k {
            "STREAMHUB_HISTORY" => Some("7".to_string()),
            "STREAMHUB_SUBSCRIBER_QUEUE" => Some("9".to_string()),
            _ => None,
        };
        let raw = RawArgs::parse(SERVE_OPTIONS, &args(&["--history", "3"]), env).unwrap();
        let config = Config::from_raw(&raw).unwrap();
        assert_eq!(config.hub.history, 3);
        assert_eq!(config.hub.subscriber_queue, 9);
        assert_eq!(config.hub.max_rooms, 10_000);
        let printed = print_config(&raw);
        assert!(printed.contains("# --history (from flag)\nSTREAMHUB_HISTORY=3\n"));
        assert!(printed
            .contains("# --subscriber-queue (from environment)\nSTREAMHUB_SUBSCRIBER_QUEUE=9\n"));
        assert!(printed.contains("# --max-rooms (from default)\nSTREAMHUB_MAX_ROOMS=10000\n"));
    }

    #[test]
    fn the_hubs_own_defaults_are_the_option_tables() {
        // HubConfig::default (for the hub's unit tests, which cannot see
        // this module) must not drift from the one table of defaults.
        let ours = format!("{:?}", Config::local().hub);
        assert_eq!(ours, format!("{:?}", HubConfig::default()));
    }

    #[test]
    fn env_file_lists_every_setting_at_its_default() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/streamhub.env");
        if std::env::var_os("STREAMHUB_WRITE_ENV_TEMPLATE").is_some() {
            std::fs::write(path, env_template()).unwrap();
        }
        let file = std::fs::read_to_string(path).unwrap();
        assert_eq!(
            file,
            env_template(),
            "regenerate with STREAMHUB_WRITE_ENV_TEMPLATE=1 cargo test --release env_file"
        );
        for spec in SERVE_OPTIONS.iter().filter(|s| !s.env.is_empty()) {
            assert!(file.contains(&format!("#{}={}\n", spec.env, spec.default)));
        }
    }

    #[test]
    fn a_redis_url_is_shown_without_its_password() {
        for (url, shown) in [
            (
                "redis://:s3cret@10.0.0.1:6379",
                "redis://:***@10.0.0.1:6379",
            ),
            ("redis://ann:s3cret@h:1/0", "redis://ann:***@h:1/0"),
            ("redis://h:6379", "redis://h:6379"),
            (
                "redis+unix:///run/r.sock?db=1&pass=s3cret",
                "redis+unix:///run/r.sock?db=1&pass=***",
            ),
            ("", ""),
        ] {
            assert_eq!(redacted_url(url), shown);
        }
    }

    #[test]
    fn cluster_takes_a_redis_url_and_not_with_a_data_dir() {
        let config = |list: &[&str]| {
            Config::from_raw(&RawArgs::parse(SERVE_OPTIONS, &args(list), |_| None).unwrap())
        };
        assert_eq!(config(&[]).unwrap().cluster, None);
        let url = "redis+unix:///run/redis.sock";
        assert_eq!(
            config(&["--cluster", url]).unwrap().cluster.as_deref(),
            Some(url)
        );
        for bad in [
            &["--cluster", "http://x"][..],
            &["--cluster", "redis://h:1", "--data-dir", "/d"],
        ] {
            let err = config(bad).unwrap_err().to_string();
            assert!(err.contains("--cluster"), "{err}");
        }
    }

    #[test]
    fn data_dir_settings_are_checked_and_none_means_memory_only() {
        let config = |list: &[&str]| {
            Config::from_raw(&RawArgs::parse(SERVE_OPTIONS, &args(list), |_| None).unwrap())
        };
        assert!(config(&[]).unwrap().store.is_none());
        let store = config(&[
            "--data-dir",
            "/d",
            "--fsync",
            "always",
            "--retention-age",
            "12h",
        ])
        .unwrap()
        .store
        .unwrap();
        assert_eq!(store.fsync, Fsync::Always);
        assert_eq!(store.retention_age, Some(Duration::from_secs(12 * 3600)));
        let store = config(&["--data-dir", "/d", "--retention-age", "0"])
            .unwrap()
            .store
            .unwrap();
        assert_eq!((store.fsync, store.retention_age), (Fsync::Batch, None));
        for (bad, flag) in [
            (&["--fsync", "sometimes"][..], "--fsync"),
            (&["--retention-age", "7 days"], "--retention-age"),
            (&["--retention-age", "7w"], "--retention-age"),
            (&["--segment-bytes", "100000"], "--segment-bytes"),
        ] {
            let err = config(bad).unwrap_err().to_string();
            assert!(err.starts_with(flag), "{bad:?}: {err}");
        }
    }

    #[test]
    fn errors_name_the_flag() {
        let bad = |a: &[&str]| {
            let raw = RawArgs::parse(SERVE_OPTIONS, &args(a), |_| None);
            match raw {
                Err(e) => e.to_string(),
                Ok(raw) => Config::from_raw(&raw).unwrap_err().to_string(),
            }
        };
        assert!(bad(&["--history", "x"]).starts_with("--history:"));
        assert!(bad(&["--grpc-addr", "nowhere"]).starts_with("--grpc-addr:"));
        assert!(bad(&["--subscriber-queue", "0"]).contains("outside"));
        assert!(bad(&["--nope"]).contains("unknown flag --nope"));
        assert!(bad(&["--history"]).contains("needs a value"));
        assert!(bad(&["--cors-origin", "ftp://x"]).starts_with("--cors-origin:"));
    }

    #[test]
    fn tls_files_come_as_a_pair_for_both_ports() {
        let parse = |a: &[&str]| {
            RawArgs::parse(SERVE_OPTIONS, &args(a), |_| None).and_then(|r| Config::from_raw(&r))
        };
        let config = parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
        let files = config.tls.expect("both given");
        assert_eq!(
            (files.cert.to_str(), files.key.to_str()),
            (Some("c.pem"), Some("k.pem"))
        );
        assert!(parse(&[]).unwrap().tls.is_none(), "plain by default");
        let e = parse(&["--tls-key", "k.pem"]).unwrap_err().to_string();
        assert!(e.contains("go together"), "{e}");
    }

    #[test]
    fn repeatable_flags_and_inline_values() {
        let raw = RawArgs::parse(
            SERVE_OPTIONS,
            &args(&[
                "--cors-origin=http://a",
                "--cors-origin",
                "http://b",
                "--print-config",
            ]),
            |_| None,
        )
        .unwrap();
        assert_eq!(raw.list("cors-origin"), vec!["http://a", "http://b"]);
        assert!(raw.switch("print-config"));
        let env = |k: &str| (k == "STREAMHUB_CORS_ORIGINS").then(|| "http://x, http://y".into());
        let raw = RawArgs::parse(SERVE_OPTIONS, &[], env).unwrap();
        assert_eq!(raw.list("cors-origin"), vec!["http://x", "http://y"]);
    }
}
