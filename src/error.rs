//! The one error type of streamhub. Each variant maps to a gRPC status code
//! and an HTTP status in the front doors; none of them is a panic.

use std::fmt;

/// Everything that can go wrong with a request or at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The request is malformed or a field is invalid (gRPC INVALID_ARGUMENT,
    /// HTTP 400). The text names the field.
    InvalidArgument(String),
    /// A message or request is larger than the configured limit
    /// (gRPC RESOURCE_EXHAUSTED, HTTP 413).
    TooLarge(String),
    /// A capacity limit was reached: rooms, streams, connections
    /// (gRPC RESOURCE_EXHAUSTED, HTTP 503).
    ResourceExhausted(String),
    /// The server is stopping (gRPC UNAVAILABLE, HTTP 503).
    Unavailable(String),
    /// The data directory has no room for the message; nothing was
    /// accepted (gRPC RESOURCE_EXHAUSTED, HTTP 507).
    StorageFull(String),
    /// A command-line flag or environment variable is wrong; the text names it.
    Config(String),
    /// Binding a port or another I/O failure at start-up.
    Io(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(m)
            | Error::TooLarge(m)
            | Error::ResourceExhausted(m)
            | Error::Unavailable(m)
            | Error::StorageFull(m)
            | Error::Config(m)
            | Error::Io(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}
