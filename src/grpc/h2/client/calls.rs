//! The call types a [`Channel`](super::Channel) hands out: the responses
//! of a server-streaming call ([`Stream`]) and a client-streaming or
//! bidirectional call ([`Duplex`]), both over one `CallHandle`.

use std::time::{Duration, Instant};

use super::CallHandle;
use crate::grpc::call::{Code, Status};

/// One wait on a call's inbound side with a time limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recv {
    Message(Vec<u8>),
    /// The call is over with this status (OK included).
    Ended(Status),
    /// Nothing arrived in the time given; the call goes on.
    TimedOut,
}

/// The responses of a server-streaming call: `Some(Ok(message))` each,
/// then `None` after OK trailers, or one `Some(Err(status))` and `None`
/// after that. Dropping it before the end cancels the call.
pub struct Stream {
    pub(super) call: CallHandle,
    pub(super) done: bool,
}

impl Stream {
    /// The next message, waiting at most `timeout` for it.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Recv {
        self.call.recv_until(Some(Instant::now() + timeout))
    }
}

impl Iterator for Stream {
    type Item = Result<Vec<u8>, Status>;

    fn next(&mut self) -> Option<Result<Vec<u8>, Status>> {
        if self.done {
            return None;
        }
        match self.call.recv_until(None) {
            Recv::Message(m) => Some(Ok(m)),
            Recv::Ended(s) => {
                self.done = true;
                (s.code != Code::Ok).then_some(Err(s))
            }
            Recv::TimedOut => unreachable!("no time limit"),
        }
    }
}

/// A client-streaming or bidirectional call. Its methods take `&self`:
/// one thread may send while another receives (share it by reference,
/// `std::thread::scope`). Dropping it before the end cancels the call.
pub struct Duplex {
    pub(super) call: CallHandle,
}

impl Duplex {
    /// Sends one message, waiting for flow-control window if the server
    /// has not read what came before. `Err` once the call is over: its
    /// status, which is OK when the server ended the call without reading
    /// the rest (the call's outcome is what [`Duplex::finish`] returns).
    pub fn send(&self, message: &[u8]) -> Result<(), Status> {
        self.call.send(message, false)
    }

    /// Closes our side: the server sees the end of the requests.
    pub fn close_send(&self) {
        self.call.close_send()
    }

    /// The next response: `Some(Ok)`, then `None` after OK trailers or
    /// `Some(Err(status))` (again on each later call).
    pub fn recv(&self) -> Option<Result<Vec<u8>, Status>> {
        match self.call.recv_until(None) {
            Recv::Message(m) => Some(Ok(m)),
            Recv::Ended(s) if s.code == Code::Ok => None,
            Recv::Ended(s) => Some(Err(s)),
            Recv::TimedOut => unreachable!("no time limit"),
        }
    }

    /// The next response, waiting at most `timeout` for it.
    pub fn recv_timeout(&self, timeout: Duration) -> Recv {
        self.call.recv_until(Some(Instant::now() + timeout))
    }

    /// Closes our side and waits for the call's status; responses not
    /// read are dropped.
    pub fn finish(self) -> Status {
        self.call.close_send();
        self.call.status()
    }

    /// For a client-streaming call: closes our side and returns the one
    /// response, or the status the call failed with.
    pub fn close_and_recv(self) -> Result<Vec<u8>, Status> {
        self.call.close_send();
        let response = match self.call.recv_until(None) {
            Recv::Message(m) => m,
            Recv::Ended(s) if s.code != Code::Ok => return Err(s),
            _ => {
                return Err(Status::new(
                    Code::Internal,
                    "the server sent no response message to a client-streaming call",
                ))
            }
        };
        match self.call.status() {
            s if s.code == Code::Ok => Ok(response),
            s => Err(s),
        }
    }
}
