//! The call interface: all that the handlers and stream bodies know of the
//! transport under them. A status ([`Code`], [`Status`]) and a running call
//! that can send a burst, say whether its client is gone, wait, receive and
//! finish ([`Call`], [`Responses`], [`Requests`], [`Reply`]).
//!
//! Nothing here names the transport: `h2::call` implements these traits
//! over one stream of streamhub's own HTTP/2 layer (grpcio's adapter did
//! before). Dropping a call without finishing it cancels it.

use std::fmt;
use std::task::Poll;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::access::Refusal;
use crate::auth::Denied;
use crate::error::Error;
use crate::hub::Subscription;

/// A gRPC status code. The numbers are the wire's (`grpc-status`), the
/// names the canonical upper-case ones that metrics and logs show. All 17
/// are here, not only the ones the server sends: the CLI client names
/// whatever code it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// Every code, in number order (`ALL[n]` has number `n`).
    pub const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The number on the wire.
    pub fn number(self) -> i32 {
        self as i32
    }

    /// The code with that number; a number gRPC does not define is
    /// UNKNOWN, as the gRPC spec asks of a client.
    pub fn from_number(n: i32) -> Code {
        usize::try_from(n)
            .ok()
            .and_then(|i| Code::ALL.get(i).copied())
            .unwrap_or(Code::Unknown)
    }

    /// The canonical upper-case name, for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a call ends: a code and the message that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: String,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }

    pub fn ok() -> Status {
        Status::new(Code::Ok, "")
    }
}

/// The code a hub or server error answers a call with.
impl From<&Error> for Code {
    fn from(e: &Error) -> Code {
        match e {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::TooLarge(_) | Error::ResourceExhausted(_) | Error::StorageFull(_) => {
                Code::ResourceExhausted
            }
            Error::Unavailable(_) => Code::Unavailable,
            _ => Code::Internal,
        }
    }
}

/// An error's code, with the error's text as the message.
impl From<&Error> for Status {
    fn from(e: &Error) -> Status {
        Status::new(Code::from(e), e.to_string())
    }
}

/// A refusal of the gate, as the status that says it: UNAUTHENTICATED
/// (no usable token), PERMISSION_DENIED (a token without the right), or
/// RESOURCE_EXHAUSTED (a limit; the message says when to retry).
impl From<&Refusal> for Status {
    fn from(refusal: &Refusal) -> Status {
        let code = match refusal {
            Refusal::Denied(Denied::Unauthenticated(_)) => Code::Unauthenticated,
            Refusal::Denied(_) => Code::PermissionDenied,
            Refusal::Limited { .. } => Code::ResourceExhausted,
        };
        Status::new(code, refusal.to_string())
    }
}

/// Why a blocking wait ended without its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupted {
    /// The write (or read) did not finish in time.
    TimedOut,
    /// The server began shutting down.
    Stopping,
}

/// Why a write did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// The client cancelled, went away or the call ended.
    Gone,
    Interrupted(Interrupted),
}

/// One read from a call's inbound side.
#[derive(Debug)]
pub enum Received<T> {
    Message(T),
    /// The client closed its side: nothing more will arrive.
    Ended,
    /// The read failed (the call was cancelled or broke); the transport's
    /// account of why.
    Failed(String),
}

/// A streaming call the handler could not start. The handler has counted
/// and logged it; the adapter answers it with `status` at once, on the
/// thread that received it (which must not block).
#[must_use = "a refused call must be answered"]
pub struct Refused<C> {
    pub call: C,
    pub status: Status,
}

/// What a handler of a streaming call returns: started (the call now
/// belongs to its stream thread), or refused.
pub type Started<C> = Result<(), Refused<C>>;

/// What every running call offers its stream thread. The thread sleeps in
/// [`Call::wait`], which wakes for the call's own progress (a write done,
/// a message in, the client gone) and, unless told otherwise, shutdown.
pub trait Call: Send + 'static {
    /// Sleeps until the call may have progressed, `until`, or shutdown.
    fn wait(&self, until: Option<Instant>) -> Result<(), Interrupted>;
    /// A token arrives here whenever the call may have progressed: for a
    /// thread that also waits on something else (`select!`).
    fn woken(&self) -> &Receiver<()>;
    /// From now on waits are not cut short by shutdown: for the last words
    /// of a stream that is being closed because of it.
    fn ignore_stopping(&mut self);
    /// The client's address, as the transport names it.
    fn peer(&self) -> &str;
    /// The value of request metadata `name` (lower case), if sent.
    fn metadata(&self, name: &str) -> Option<&[u8]>;
    /// True once the deadline the client set has passed.
    fn deadline_passed(&self) -> bool;
}

/// A call that streams responses of type `T` (server-streaming, duplex).
pub trait Responses<T>: Call {
    /// Writes `items` as one burst (one flush at the end). Gives up after
    /// `timeout`.
    fn send_all(
        &mut self,
        items: impl IntoIterator<Item = T>,
        timeout: Duration,
    ) -> Result<(), WriteError>;
    /// True when the call is over on the client's side (cancelled, deadline
    /// passed, connection lost). Never blocks.
    fn client_gone(&mut self) -> bool;
    /// Ends the call with `status` after everything written so far
    /// (waiting at most `timeout`).
    fn finish(self, status: Status, timeout: Duration);
}

/// A streaming call that can carry a room's messages without its thread:
/// the transport reads them from the subscription itself (a connection's
/// writer reads for all its streams). The call's thread keeps its lifetime:
/// it waits in [`Call::wait`] until [`Follow::following`] is false or the
/// deadline passes, then takes the subscription back to end the call.
pub trait Follow: Call {
    /// Hands `sub` to the transport, after what was sent so far; gives it
    /// back if the call is already over.
    fn follow(&mut self, sub: Subscription) -> Result<(), Subscription>;
    /// True while the transport follows the subscription (not ended by the
    /// hub, the call still open). Never blocks.
    fn following(&mut self) -> bool;
    /// Takes the subscription back (`None`: the connection went away and
    /// dropped it).
    fn unfollow(&mut self) -> Option<Subscription>;
}

/// A call whose client streams messages of type `T` (client-streaming,
/// duplex).
pub trait Requests<T>: Call {
    /// The next message if one is there now. Never blocks.
    fn poll_next(&mut self) -> Poll<Received<T>>;
    /// The next message, waiting for it until `until` (or shutdown).
    fn next(&mut self, until: Option<Instant>) -> Result<Received<T>, Interrupted>;
}

/// A call answered by one response of type `T` (client-streaming).
pub trait Reply<T>: Call {
    /// Answers with the response, or fails with the status (waiting at
    /// most `timeout`).
    fn reply(self, answer: Result<T, Status>, timeout: Duration);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_names_are_grpcs() {
        for (n, code) in Code::ALL.iter().enumerate() {
            assert_eq!(code.number(), n as i32);
            assert_eq!(Code::from_number(n as i32), *code);
        }
        assert_eq!(Code::Ok.name(), "OK");
        assert_eq!(Code::Cancelled.number(), 1);
        assert_eq!(Code::DeadlineExceeded.number(), 4);
        assert_eq!(Code::NotFound.number(), 5);
        assert_eq!(Code::ResourceExhausted.name(), "RESOURCE_EXHAUSTED");
        assert_eq!(Code::ResourceExhausted.number(), 8);
        assert_eq!(Code::Internal.number(), 13);
        assert_eq!(Code::Unavailable.name(), "UNAVAILABLE");
        assert_eq!(Code::Unavailable.number(), 14);
        assert_eq!(Code::Unauthenticated.to_string(), "UNAUTHENTICATED");
    }

    #[test]
    fn numbers_grpc_does_not_define_are_unknown() {
        for n in [-1, 17, 99, i32::MAX, i32::MIN] {
            assert_eq!(Code::from_number(n), Code::Unknown);
        }
    }

    #[test]
    fn errors_map_to_status_codes() {
        let s = Status::from(&Error::InvalidArgument("user is required".into()));
        assert_eq!(s, Status::new(Code::InvalidArgument, "user is required"));
        let cases = [
            (Error::TooLarge("x".into()), Code::ResourceExhausted),
            (
                Error::ResourceExhausted("x".into()),
                Code::ResourceExhausted,
            ),
            (Error::Unavailable("x".into()), Code::Unavailable),
            (Error::Io("x".into()), Code::Internal),
        ];
        for (e, code) in cases {
            let s = Status::from(&e);
            assert_eq!(s.code, code, "{e}");
            assert_eq!(s.message, e.to_string());
        }
    }

    #[test]
    fn ok_has_no_message() {
        assert_eq!(Status::ok(), Status::new(Code::Ok, String::new()));
    }
}
