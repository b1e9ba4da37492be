//! From a connection's events to the handlers, on the connection's reader
//! thread: which method a path names, what shape of call it is, the checks
//! every call gets before its handler (encoding, deadline, and for the chat
//! service who is calling: the `authorization` metadata, checked by the
//! gate, [`crate::access`]; requests that are not gRPC are answered by the
//! connection itself),
//! and, per stream, where its inbound messages go. Unary calls are
//! answered here (publishing never blocks for long: the hub's stall is
//! bounded); streaming calls are handed to their handler, which starts
//! their stream thread or refuses them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::call::Metadata;
use super::call::{H2Call, Inbound};
use super::conn::{Chunk, Event, RequestHead};
use super::server::ConnShared;
use crate::access::{KnownToken, Refusal};
use crate::grpc::call::{Code, Refused, Responses, Started, Status};
use crate::grpc::service::Caller;
use crate::grpc::{health, reflection, service, Shared};
use crate::proto::services::chat::ChatServiceMethod;
use crate::proto::services::health::HealthMethod;
use crate::proto::services::{self, reflection as reflection_v1, reflection_v1alpha, Handled};

/// Every method served: one of a proto service's generated methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Chat(ChatServiceMethod),
    Health(HealthMethod),
    ReflectionV1(reflection_v1::ServerReflectionMethod),
    ReflectionV1Alpha(reflection_v1alpha::ServerReflectionMethod),
}

impl Method {
    pub fn of(path: &str) -> Option<Method> {
        ChatServiceMethod::of(path)
            .map(Method::Chat)
            .or_else(|| HealthMethod::of(path).map(Method::Health))
            .or_else(|| reflection_v1::ServerReflectionMethod::of(path).map(Method::ReflectionV1))
            .or_else(|| {
                reflection_v1alpha::ServerReflectionMethod::of(path).map(Method::ReflectionV1Alpha)
            })
    }

    /// Every method of every service.
    fn all() -> impl Iterator<Item = Method> {
        let chat = ChatServiceMethod::ALL.iter().map(|m| Method::Chat(*m));
        let health = HealthMethod::ALL.iter().map(|m| Method::Health(*m));
        let v1 = reflection_v1::ServerReflectionMethod::ALL
            .iter()
            .map(|m| Method::ReflectionV1(*m));
        let v1alpha = reflection_v1alpha::ServerReflectionMethod::ALL
            .iter()
            .map(|m| Method::ReflectionV1Alpha(*m));
        chat.chain(health).chain(v1).chain(v1alpha)
    }

    fn path(self) -> &'static str {
        match self {
            Method::Chat(m) => m.path(),
            Method::Health(m) => m.path(),
            Method::ReflectionV1(m) => m.path(),
            Method::ReflectionV1Alpha(m) => m.path(),
        }
    }

    /// True when the client streams its requests (its call starts at once).
    fn client_streams(self) -> bool {
        match self {
            Method::Chat(m) => m.client_streams(),
            Method::Health(m) => m.client_streams(),
            Method::ReflectionV1(m) => m.client_streams(),
            Method::ReflectionV1Alpha(m) => m.client_streams(),
        }
    }

    /// The name metrics count it under.
    fn metric_name(self) -> &'static str {
        match self {
            Method::Chat(m) => m.name(),
            Method::Health(HealthMethod::Check) => "Health.Check",
            Method::Health(HealthMethod::Watch) => "Health.Watch",
            Method::ReflectionV1(_) => "ServerReflection.v1",
            Method::ReflectionV1Alpha(_) => "ServerReflection.v1alpha",
        }
    }
}

/// What grpc-go says of a path it does not serve.
pub(crate) fn unknown_method(path: &str) -> Status {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    let known =
        Method::all().any(|m| m.path().trim_start_matches('/').split('/').next() == Some(service));
    if known {
        Status::new(
            Code::Unimplemented,
            format!("unknown method {method} for service {service}"),
        )
    } else {
        Status::new(Code::Unimplemented, format!("unknown service {service}"))
    }
}

/// A stream the reader still feeds.
enum Pending {
    /// A call with one request message: waiting for it.
    Single {
        method: Method,
        message: Option<Vec<u8>>,
        deadline: Option<Instant>,
        caller: Option<Caller>,
        metadata: Metadata,
    },
    /// A call whose client streams: its running call's inbox.
    Streaming(Sender<Inbound>),
}

pub struct Dispatch {
    shared: Arc<Shared>,
    conn: Arc<ConnShared>,
    streams: HashMap<u32, Pending>,
    /// The last token verified on this connection: a channel sends the
    /// same `authorization` on every call.
    known: KnownToken,
}

impl Dispatch {
    pub fn new(shared: Arc<Shared>, conn: Arc<ConnShared>) -> Dispatch {
        Dispatch {
            shared,
            conn,
            streams: HashMap::new(),
            known: KnownToken::default(),
        }
    }

    pub fn handle(&mut self, event: Event) {
        match event {
            Event::Request { stream, head, .. } => self.request(stream, head),
            Event::Message { stream, bytes } => match self.streams.get_mut(&stream) {
                Some(Pending::Single {
                    message, method, ..
                }) => {
                    let len = bytes.len();
                    if message.replace(bytes).is_some() {
                        let method = *method;
                        self.streams.remove(&stream);
                        self.fail(
                            stream,
                            method,
                            Status::new(
                                Code::Unimplemented,
                                "more than one request message for a method that takes one",
                            ),
                        );
                    } else {
                        self.conn
                            .conn
                            .lock()
                            .release(stream, len + super::grpc::PREFIX_LEN);
                    }
                }
                Some(Pending::Streaming(inbox)) => {
                    let _ = inbox.send(Inbound::Message(bytes));
                    self.conn.conn.lock().wake(stream);
                }
                None => {}
            },
            Event::EndOfInput { stream } => match self.streams.remove(&stream) {
                Some(Pending::Single {
                    method,
                    message,
                    deadline,
                    caller,
                    metadata,
                }) => match message {
                    Some(bytes) => self.run(stream, method, bytes, deadline, (caller, metadata)),
                    None => self.fail(
                        stream,
                        method,
                        Status::new(Code::Internal, "the request has no message"),
                    ),
                },
                Some(Pending::Streaming(inbox)) => {
                    let _ = inbox.send(Inbound::Ended);
                    self.conn.conn.lock().wake(stream);
                }
                None => {}
            },
            Event::Gone { stream, why } => {
                if let Some(Pending::Streaming(inbox)) = self.streams.remove(&stream) {
                    let _ = inbox.send(Inbound::Failed(why));
                }
            }
        }
    }

    /// The connection is over: every inbox learns it.
    pub fn close(&mut self) {
        for (_, pending) in self.streams.drain() {
            if let Pending::Streaming(inbox) = pending {
                let _ = inbox.send(Inbound::Failed("connection closed".into()));
            }
        }
    }

    fn request(&mut self, stream: u32, head: RequestHead) {
        let Some(method) = Method::of(&head.path) else {
            let st = unknown_method(&head.path);
            log::debug!("gRPC: {}", st.message);
            self.conn.conn.lock().finish(stream, &st);
            return;
        };
        if let Some(enc) = head.encoding.as_deref().filter(|e| *e != "identity") {
            let st = Status::new(
                Code::Unimplemented,
                format!("grpc-encoding {enc} is not supported (grpc-accept-encoding: identity)"),
            );
            return self.fail(stream, method, st);
        }
        let deadline = match head.timeout {
            Ok(t) => t.map(|t| Instant::now() + t),
            Err(()) => {
                let st = Status::new(Code::Internal, "malformed grpc-timeout");
                return self.fail(stream, method, st);
            }
        };
        // The chat service asks the gate; health and reflection stay open
        // (probes and tools need them, and they tell nothing of rooms).
        let caller = match method {
            Method::Chat(_) => match self.caller(&head) {
                Ok(caller) => Some(caller),
                Err(refusal) => return self.fail(stream, method, Status::from(&refusal)),
            },
            _ => None,
        };
        if method.client_streams() {
            let (tx, rx) = crossbeam_channel::unbounded();
            self.streams.insert(stream, Pending::Streaming(tx));
            self.start(
                stream,
                method,
                None,
                deadline,
                Some(rx),
                (caller, head.metadata),
            );
        } else {
            self.streams.insert(
                stream,
                Pending::Single {
                    method,
                    message: None,
                    deadline,
                    caller,
                    metadata: head.metadata,
                },
            );
        }
    }

    /// Who calls, from the call's `authorization` metadata (verified once
    /// per connection while the token stays the same).
    fn caller(&mut self, head: &RequestHead) -> Result<Caller, Refusal> {
        let authorization = head
            .metadata
            .iter()
            .find(|(name, _)| name == "authorization")
            .map(|(_, value)| value.as_slice());
        Caller::identify(&self.shared, &mut self.known, authorization, self.conn.ip)
    }

    fn call(
        &self,
        stream: u32,
        inbox: Option<crossbeam_channel::Receiver<Inbound>>,
        deadline: Option<Instant>,
        metadata: Metadata,
    ) -> H2Call {
        H2Call::new(
            metadata,
            self.conn.clone(),
            stream,
            crossbeam_channel::bounded(1),
            inbox,
            self.shared.stopping.clone(),
            deadline,
        )
    }

    /// Ends a call before its handler saw it, counted like the handler's.
    fn fail(&self, stream: u32, method: Method, status: Status) {
        self.shared.done(method.metric_name(), status.code);
        self.conn.conn.lock().finish(stream, &status);
    }

    /// Runs a call that takes one request message.
    fn run(
        &self,
        stream: u32,
        method: Method,
        bytes: Vec<u8>,
        deadline: Option<Instant>,
        (caller, metadata): (Option<Caller>, Metadata),
    ) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let st = Status::new(Code::DeadlineExceeded, "deadline exceeded");
            return self.fail(stream, method, st);
        }
        self.start(
            stream,
            method,
            Some(&bytes),
            deadline,
            None,
            (caller, metadata),
        );
    }

    /// Hands a call to its handler through the generated dispatch: with its
    /// request message, or at its headers when the client streams.
    fn start(
        &self,
        stream: u32,
        method: Method,
        message: Option<&[u8]>,
        deadline: Option<Instant>,
        inbox: Option<Receiver<Inbound>>,
        (caller, metadata): (Option<Caller>, Metadata),
    ) {
        let shared = &self.shared;
        let (method, caller) = match (method, caller, message) {
            (Method::Chat(ChatServiceMethod::SendMessage), Some(caller), Some(bytes))
                if shared.publishers.is_some() =>
            {
                return self.publish_aside(stream, bytes, deadline, caller);
            }
            (method, caller, _) => (method, caller),
        };
        let call = || self.call(stream, inbox, deadline, metadata);
        let handled = match (method, caller) {
            (Method::Chat(m), Some(caller)) => {
                services::chat::dispatch(&service::Chat { shared, caller }, m, message, call)
            }
            (Method::Chat(_), None) => {
                let st = Status::new(Code::Internal, "a chat call without its caller");
                return self.fail(stream, method, st);
            }
            (Method::Health(m), _) => {
                services::health::dispatch(&health::Health(shared), m, message, call)
            }
            (Method::ReflectionV1(m), _) => {
                reflection_v1::dispatch(&reflection::Reflection(shared), m, message, call)
            }
            (Method::ReflectionV1Alpha(m), _) => {
                reflection_v1alpha::dispatch(&reflection::Reflection(shared), m, message, call)
            }
        };
        match handled {
            Ok(Handled::Answered(answer)) => unary(&self.conn, stream, answer),
            Ok(Handled::Started(started)) => settle(started),
            Err(e) => {
                let st = Status::new(Code::Internal, format!("malformed request message: {e}"));
                self.fail(stream, method, st);
            }
        }
    }
}

impl Dispatch {
    /// SendMessage on a publishing thread (see `grpc::publishers`): it
    /// decodes, publishes, waits for the journal or Redis and queues the
    /// answer; this reader goes on with the connection's other calls.
    fn publish_aside(&self, stream: u32, bytes: &[u8], deadline: Option<Instant>, caller: Caller) {
        let method = Method::Chat(ChatServiceMethod::SendMessage);
        let (shared, conn, bytes) = (self.shared.clone(), self.conn.clone(), bytes.to_vec());
        let job = Box::new(move || {
            let answer = if deadline.is_some_and(|d| Instant::now() >= d) {
                // It waited its whole deadline in the queue.
                shared.done(method.metric_name(), Code::DeadlineExceeded);
                Err(Status::new(Code::DeadlineExceeded, "deadline exceeded"))
            } else {
                use protobuf::Message as _;
                match crate::proto::chat::SendMessageRequest::parse_from_bytes(&bytes) {
                    Ok(request) => service::send_message(&shared, &caller, request)
                        .map(|response| response.write_to_bytes().unwrap_or_default()),
                    Err(e) => {
                        shared.done(method.metric_name(), Code::Internal);
                        Err(Status::new(
                            Code::Internal,
                            format!("malformed request message: {e}"),
                        ))
                    }
                }
            };
            unary(&conn, stream, answer);
            // The reader wakes the writer after what it handles; this is
            // not the reader.
            conn.wake_writer();
        });
        let publishers = self.shared.publishers.as_ref().expect("checked by start");
        if publishers.offer(job).is_err() {
            let st = Status::new(
                Code::ResourceExhausted,
                "too many SendMessage calls are waiting for storage or Redis; retry later",
            );
            self.fail(stream, method, st);
        }
    }
}

/// Queues a unary answer: the response and OK, or the status.
fn unary(conn: &ConnShared, stream: u32, answer: Result<Vec<u8>, Status>) {
    let mut c = conn.conn.lock();
    match answer {
        Ok(resp) => {
            c.send(stream, [Chunk::message(&resp)]);
            c.finish(stream, &Status::ok());
        }
        Err(st) => c.finish(stream, &st),
    }
}

/// Answers a streaming call its handler refused (counted and logged
/// there). Finishing never blocks on this transport.
fn settle(started: Started<H2Call>) {
    if let Err(Refused { call, status }) = started {
        Responses::<crate::proto::chat::Message>::finish(call, status, std::time::Duration::ZERO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_of_every_proto_service_is_routed() {
        let paths: Vec<&str> = Method::all().map(Method::path).collect();
        assert_eq!(paths.len(), 5 + 2 + 1 + 1);
        assert!(paths.contains(&"/chat.ChatService/SubscribeMessages"));
        assert!(paths.contains(&"/grpc.health.v1.Health/Watch"));
        assert!(paths.contains(&"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"));
        let streaming: Vec<&str> = Method::all()
            .filter(|m| m.client_streams())
            .map(|m| m.metric_name())
            .collect();
        assert_eq!(
            streaming,
            [
                "UploadMessages",
                "Chat",
                "ServerReflection.v1",
                "ServerReflection.v1alpha"
            ]
        );
    }

    #[test]
    fn every_path_names_its_method_and_unknown_ones_say_what_is_unknown() {
        for method in Method::all() {
            assert_eq!(Method::of(method.path()), Some(method));
        }
        assert_eq!(Method::of("/chat.ChatService/Nope"), None);
        assert_eq!(
            unknown_method("/chat.ChatService/Nope").message,
            "unknown method Nope for service chat.ChatService"
        );
        assert_eq!(
            unknown_method("/pkg.Other/Call").message,
            "unknown service pkg.Other"
        );
    }
}
