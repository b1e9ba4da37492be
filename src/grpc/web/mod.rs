//! gRPC-Web on the HTTP port: browsers call `chat.ChatService` with no
//! proxy (grpc/grpc `doc/PROTOCOL-WEB.md`). Unary `SendMessage` and
//! server-streaming `SubscribeMessages` and `StreamMetrics` go through the
//! same generated dispatch and the same handlers as native gRPC, so their
//! validation, limits, statuses and messages are the same; the client
//! streaming `UploadMessages` and `Chat` cannot be carried by a browser
//! over HTTP/1.1 and are answered UNIMPLEMENTED, saying so.
//!
//! The seam (why this shape): `grpc` and `http` never import each other.
//! The HTTP layer reads the request as it reads any other (head deadline,
//! size limits, TLS) and hands a request it does not route itself to an
//! `http::Extension`; `crate::bridge` (the composition root's) implements
//! that with [`GrpcWeb::serve`] and implements [`Sink`] with the HTTP
//! layer's exchange. So this module is the transport's gRPC half: framing
//! ([`framing`], pure) and the call interface over one response ([`call`]);
//! the HTTP half (chunks, CORS, keep-alive, the socket and its TLS) stays
//! in `http`.
//!
//! Who calls is checked in [`GrpcWeb::serve`] before the method runs, as
//! on the native door: the `authorization` header, verified by the gate
//! (`crate::access`), then the same handlers check the room.

pub mod call;
pub mod framing;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

pub use call::Sink;
use call::WebCall;
use framing::Mode;

use super::call::{Code, Refused, Responses, Status};
use super::h2::unknown_method;
use super::service::Caller;
use super::{service, Shared, ENVELOPE_BYTES};
use crate::access::KnownToken;
use crate::proto::services::chat::{dispatch, ChatServiceMethod};
use crate::proto::services::Handled;

/// The paths this door claims on the HTTP port: the ChatService's.
const SERVICE_PREFIX: &str = "/chat.ChatService/";

/// Request headers a gRPC-Web client sends cross-origin (CORS preflight),
/// besides `content-type`.
pub const CORS_ALLOW_HEADERS: &str = "x-grpc-web, x-user-agent, grpc-timeout, authorization";
/// Response headers a page must be able to read: a trailers-only error
/// carries its status in them.
pub const CORS_EXPOSE_HEADERS: &str = "grpc-status, grpc-message";

/// A gRPC-Web request, read whole by the HTTP layer.
#[derive(Debug)]
pub struct WebRequest {
    pub path: String,
    pub content_type: Option<String>,
    /// `grpc-timeout`, as sent.
    pub timeout: Option<String>,
    /// `authorization`, as sent.
    pub authorization: Option<String>,
    /// The client's address: whose limits its publishes count against
    /// when it sends no token.
    pub ip: IpAddr,
    /// Every header, names lower case: the call's metadata.
    pub metadata: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// The gRPC-Web door: what the HTTP port's extension runs.
#[derive(Clone)]
pub struct GrpcWeb {
    shared: Arc<Shared>,
}

impl GrpcWeb {
    pub(super) fn new(shared: Arc<Shared>) -> GrpcWeb {
        GrpcWeb { shared }
    }

    /// Whether `path` is one of ours (then every method on it is ours to
    /// answer, OPTIONS being the HTTP layer's CORS).
    pub fn claims(path: &str) -> bool {
        path.starts_with(SERVICE_PREFIX)
    }

    /// Runs a POST on an HTTP worker, which it never blocks for long:
    /// SendMessage publishes (the hub's stall is bounded) and answers; a
    /// streaming call starts its thread, which then owns `sink`.
    pub fn serve(&self, req: WebRequest, sink: Box<dyn Sink>) {
        let Some(mode) = req.content_type.as_deref().and_then(Mode::of) else {
            let shown: String = req
                .content_type
                .unwrap_or_default()
                .chars()
                .take(80)
                .collect();
            return sink.refuse(
                415,
                &format!(
                    "content-type '{shown}' is not gRPC-Web: use application/grpc-web+proto \
                     or application/grpc-web-text (JSON is served at POST /messages)"
                ),
            );
        };
        let Some(method) = ChatServiceMethod::of(&req.path) else {
            let st = unknown_method(&req.path);
            log::debug!("gRPC-Web: {}", st.message);
            return trailers_only(sink, mode, &st);
        };
        let name = method.name();
        // Who calls, before anything runs (each request verifies its token:
        // a browser's requests need not share a connection).
        let authorization = req.authorization.as_deref().map(str::as_bytes);
        let known = &mut KnownToken::default();
        let caller = match Caller::identify(&self.shared, known, authorization, req.ip) {
            Ok(caller) => caller,
            Err(refusal) => {
                let st = Status::from(&refusal);
                self.shared.done(name, st.code);
                return trailers_only(sink, mode, &st);
            }
        };
        let checked = self.check(&req, mode, method);
        let (message, deadline) = match checked {
            Ok(v) => v,
            Err(st) => {
                self.shared.done(name, st.code);
                return trailers_only(sink, mode, &st);
            }
        };
        let shared = &self.shared;
        let mut sink = Some(sink);
        let stopping = shared.stopping.clone();
        let metadata = req.metadata;
        let make_call = || {
            let sink = sink.take().expect("one call per request");
            WebCall::new(sink, mode, stopping, deadline).with_metadata(metadata)
        };
        let chat = service::Chat { shared, caller };
        let handled = dispatch(&chat, method, Some(&message), make_call);
        let answered = match handled {
            Ok(Handled::Answered(answer)) => answer,
            Ok(Handled::Started(Ok(()))) => return,
            Ok(Handled::Started(Err(Refused { call, status }))) => {
                // Counted and logged by the handler.
                return Responses::<crate::proto::chat::Metric>::finish(
                    call,
                    status,
                    shared.write_timeout(),
                );
            }
            Err(e) => {
                let st = Status::new(Code::Internal, format!("malformed request message: {e}"));
                shared.done(name, st.code);
                Err(st)
            }
        };
        let Some(sink) = sink else { return };
        match answered {
            Ok(response) => {
                let mut frames = Vec::new();
                framing::put_message(&mut frames, &response);
                frames.extend(framing::trailer_frame(&Status::ok()));
                sink.respond(headers(mode), mode.encode(frames));
            }
            Err(st) => trailers_only(sink, mode, &st),
        }
    }

    /// What every call gets checked for before its handler: its shape,
    /// deadline and one request message. Returns the message and deadline.
    fn check(
        &self,
        req: &WebRequest,
        mode: Mode,
        method: ChatServiceMethod,
    ) -> Result<(Vec<u8>, Option<Instant>), Status> {
        if method.client_streams() {
            return Err(Status::new(
                Code::Unimplemented,
                format!(
                    "{} streams from the client, which gRPC-Web cannot carry over HTTP/1.1: \
                     call it over native gRPC (the gRPC port)",
                    method.name()
                ),
            ));
        }
        let timeout = framing::timeout(req.timeout.as_deref())?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let frames = mode.decode_body(&req.body)?;
        let max = self.shared.config.max_message_bytes + ENVELOPE_BYTES;
        let message = framing::single_message(&frames, max)?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Status::new(Code::DeadlineExceeded, "deadline exceeded"));
        }
        Ok((message, deadline))
    }
}

/// The headers of every gRPC-Web answer.
fn headers(mode: Mode) -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", mode.content_type().to_string()),
        ("Cache-Control", "no-cache".to_string()),
    ]
}

/// An error before any message: the status in the HTTP headers.
fn trailers_only(sink: Box<dyn Sink>, mode: Mode, status: &Status) {
    let mut h = headers(mode);
    h.extend(framing::status_headers(status));
    sink.respond(h, Vec::new());
}
