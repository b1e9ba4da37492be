//! From a connection's events to the handlers, on the connection's reader
//! thread: which method a path names, what shape of call it is, the checks
//! every call gets before its handler (encoding, deadline; requests that
//! are not gRPC are answered by the connection itself),
//! and, per stream, where its inbound messages go. Unary calls are
//! answered here (publishing never blocks for long: the hub's stall is
//! bounded); streaming calls are handed to their handler, which starts
//! their stream thread or refuses them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;

use super::call::{Encode, H2Call, Inbound};
use super::conn::{Event, RequestHead};
use super::server::ConnShared;
use crate::grpc::call::{Code, Refused, Responses, Started, Status};
use crate::grpc::{health, reflection, service, Shared};

/// Every method served, by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    SendMessage,
    SubscribeMessages,
    UploadMessages,
    Chat,
    StreamMetrics,
    HealthCheck,
    HealthWatch,
    ReflectionV1,
    ReflectionV1Alpha,
}

pub const METHODS: &[(&str, Method)] = &[
    ("/chat.ChatService/SendMessage", Method::SendMessage),
    (
        "/chat.ChatService/SubscribeMessages",
        Method::SubscribeMessages,
    ),
    ("/chat.ChatService/UploadMessages", Method::UploadMessages),
    ("/chat.ChatService/Chat", Method::Chat),
    ("/chat.ChatService/StreamMetrics", Method::StreamMetrics),
    ("/grpc.health.v1.Health/Check", Method::HealthCheck),
    ("/grpc.health.v1.Health/Watch", Method::HealthWatch),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Method::ReflectionV1,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Method::ReflectionV1Alpha,
    ),
];

impl Method {
    pub fn of(path: &str) -> Option<Method> {
        METHODS.iter().find(|(p, _)| *p == path).map(|(_, m)| *m)
    }

    /// True when the client streams its requests (its call starts at once).
    fn client_streams(self) -> bool {
        matches!(
            self,
            Method::UploadMessages
                | Method::Chat
                | Method::ReflectionV1
                | Method::ReflectionV1Alpha
        )
    }

    /// The name metrics count it under.
    fn metric_name(self) -> &'static str {
        match self {
            Method::SendMessage => "SendMessage",
            Method::SubscribeMessages => "SubscribeMessages",
            Method::UploadMessages => "UploadMessages",
            Method::Chat => "Chat",
            Method::StreamMetrics => "StreamMetrics",
            Method::HealthCheck => "Health.Check",
            Method::HealthWatch => "Health.Watch",
            Method::ReflectionV1 => "ServerReflection.v1",
            Method::ReflectionV1Alpha => "ServerReflection.v1alpha",
        }
    }
}

/// What grpc-go says of a path it does not serve.
fn unknown_method(path: &str) -> Status {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    let known = METHODS
        .iter()
        .any(|(p, _)| p.trim_start_matches('/').split('/').next() == Some(service));
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
    },
    /// A call whose client streams: its running call's inbox.
    Streaming(Sender<Inbound>),
}

pub struct Dispatch {
    shared: Arc<Shared>,
    conn: Arc<ConnShared>,
    streams: HashMap<u32, Pending>,
}

impl Dispatch {
    pub fn new(shared: Arc<Shared>, conn: Arc<ConnShared>) -> Dispatch {
        Dispatch {
            shared,
            conn,
            streams: HashMap::new(),
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
                }) => match message {
                    Some(bytes) => self.run(stream, method, bytes, deadline),
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
        if method.client_streams() {
            let (tx, rx) = crossbeam_channel::unbounded();
            self.streams.insert(stream, Pending::Streaming(tx));
            let call = self.call(stream, Some(rx), deadline);
            let shared = &self.shared;
            match method {
                Method::UploadMessages => answer(service::upload_messages(shared, call)),
                Method::Chat => answer(service::chat(shared, call)),
                Method::ReflectionV1 => {
                    answer(reflection::serve(shared, "ServerReflection.v1", call))
                }
                _ => answer(reflection::serve(shared, "ServerReflection.v1alpha", call)),
            }
        } else {
            self.streams.insert(
                stream,
                Pending::Single {
                    method,
                    message: None,
                    deadline,
                },
            );
        }
    }

    fn call(
        &self,
        stream: u32,
        inbox: Option<crossbeam_channel::Receiver<Inbound>>,
        deadline: Option<Instant>,
    ) -> H2Call {
        H2Call::new(
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
    fn run(&self, stream: u32, method: Method, bytes: Vec<u8>, deadline: Option<Instant>) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let st = Status::new(Code::DeadlineExceeded, "deadline exceeded");
            return self.fail(stream, method, st);
        }
        let shared = &self.shared;
        let parsed = match method {
            Method::SendMessage => decode(&bytes).map(|req| {
                unary(&self.conn, stream, service::send_message(shared, req));
            }),
            Method::HealthCheck => decode(&bytes).map(|req| {
                unary(&self.conn, stream, health::check(shared, req));
            }),
            Method::SubscribeMessages => decode(&bytes).map(|req| {
                answer(service::subscribe_messages(
                    shared,
                    req,
                    self.call(stream, None, deadline),
                ));
            }),
            Method::StreamMetrics => decode(&bytes).map(|req| {
                answer(service::stream_metrics(
                    shared,
                    req,
                    self.call(stream, None, deadline),
                ));
            }),
            Method::HealthWatch => decode(&bytes).map(|req| {
                answer(health::watch(
                    shared,
                    req,
                    self.call(stream, None, deadline),
                ));
            }),
            _ => unreachable!("client-streaming methods start at their headers"),
        };
        if let Err(e) = parsed {
            let st = Status::new(Code::Internal, format!("malformed request message: {e}"));
            self.fail(stream, method, st);
        }
    }
}

fn decode<T: protobuf::Message>(bytes: &[u8]) -> Result<T, protobuf::Error> {
    T::parse_from_bytes(bytes)
}

/// Queues a unary answer: the response and OK, or the status.
fn unary<T: Encode>(conn: &ConnShared, stream: u32, answer: Result<T, Status>) {
    let mut c = conn.conn.lock();
    match answer {
        Ok(resp) => {
            c.send(stream, [resp.chunk()]);
            c.finish(stream, &Status::ok());
        }
        Err(st) => c.finish(stream, &st),
    }
}

/// Answers a streaming call its handler refused (counted and logged
/// there). Finishing never blocks on this transport.
fn answer(started: Started<H2Call>) {
    if let Err(Refused { call, status }) = started {
        Responses::<crate::proto::chat::Message>::finish(call, status, std::time::Duration::ZERO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::services;

    #[test]
    fn every_method_of_every_proto_service_is_served_with_its_shape() {
        let generated: Vec<(&str, bool, bool)> = [
            services::chat::CHAT_SERVICE_METHODS,
            services::health::HEALTH_METHODS,
            services::reflection::SERVER_REFLECTION_METHODS,
            services::reflection_v1alpha::SERVER_REFLECTION_METHODS,
        ]
        .concat();
        assert_eq!(generated.len(), METHODS.len());
        for (path, client_streams, _) in generated {
            let method = Method::of(path).unwrap_or_else(|| panic!("{path} has no handler"));
            assert_eq!(method.client_streams(), client_streams, "{path}");
        }
    }

    #[test]
    fn every_path_names_its_method_and_unknown_ones_say_what_is_unknown() {
        for (path, method) in METHODS {
            assert_eq!(Method::of(path), Some(*method));
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
