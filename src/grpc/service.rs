//! The `chat.ChatService` handlers, in the call interface's terms: the
//! generated `ChatService` trait, implemented by [`Chat`] (the HTTP/2
//! layer's dispatch calls them, on the connection's reader thread).
//! They run on the transport's receiving threads and never block
//! there: SendMessage publishes and answers at once; every streaming call is
//! handed to [`Shared::start_stream`], which gives it a thread running one
//! of the bodies in [`super::streams`], or says how to refuse it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::call::{Code, Follow, Refused, Reply, Requests, Responses, Started, Status};
use super::convert;
use super::streams::{run_chat, run_metrics, run_subscriber, run_upload};
use super::{wire, Shared};
use crate::access::{expiry_instant, KnownToken, Refusal};
use crate::auth::{bearer_token, Denied, Identity, Unauthenticated};
use crate::hub::Draft;
use crate::metrics::stream_interval;
use crate::proto::chat;
use crate::proto::services::chat::ChatService;

/// `chat.ChatService` for the generated dispatch: every RPC of the proto
/// has its handler here, or the build fails. Made per call, with who calls.
pub(super) struct Chat<'a> {
    pub(super) shared: &'a Arc<Shared>,
    pub(super) caller: Caller,
}

/// Who calls, as the gate knows them: their identity (from the call's
/// `authorization` metadata, verified by the transport's dispatch) and
/// their address (whose publish budget they use without a token).
#[derive(Debug, Clone)]
pub(super) struct Caller {
    pub(super) identity: Arc<Identity>,
    pub(super) ip: IpAddr,
}

impl Caller {
    /// Who calls, from their `authorization` (metadata, or the header of a
    /// gRPC-Web request): verified by the gate, once per connection while
    /// it stays the same (`known`).
    pub(super) fn identify(
        shared: &Shared,
        known: &mut KnownToken,
        authorization: Option<&[u8]>,
        ip: IpAddr,
    ) -> Result<Caller, Refusal> {
        let access = &shared.access;
        let token = match authorization {
            None => None,
            Some(value) => Some(
                std::str::from_utf8(value)
                    .ok()
                    .and_then(bearer_token)
                    .ok_or_else(|| {
                        access.refuse(Denied::Unauthenticated(Unauthenticated::Malformed(
                            "authorization is not a Bearer token",
                        )))
                    })?,
            ),
        };
        let identity = access.identify_on(known, token, SystemTime::now())?;
        Ok(Caller { identity, ip })
    }

    /// When the caller's token expires, as an instant a stream can wait
    /// for; `None` without a token.
    pub(super) fn expires(&self) -> Option<Instant> {
        match &*self.identity {
            Identity::User(token) => Some(expiry_instant(token.expires())),
            _ => None,
        }
    }

    /// May this caller publish `draft` now? Makes its user the token's.
    pub(super) fn publish(&self, shared: &Shared, draft: &mut Draft) -> Result<(), Status> {
        shared
            .access
            .publish(
                &self.identity,
                self.ip,
                draft,
                SystemTime::now(),
                Instant::now(),
            )
            .map_err(|refusal| Status::from(&refusal))
    }
}

impl<C> ChatService<C> for Chat<'_>
where
    C: Responses<wire::Outbound>
        + Follow
        + Requests<chat::Message>
        + Responses<chat::Message>
        + Reply<chat::UploadResponse>
        + Responses<chat::Metric>,
{
    type Status = Status;
    type Started = Started<C>;

    fn send_message(
        &self,
        request: chat::SendMessageRequest,
    ) -> Result<chat::SendMessageResponse, Status> {
        send_message(self.shared, &self.caller, request)
    }

    fn subscribe_messages(&self, request: chat::SubscribeRequest, call: C) -> Started<C> {
        subscribe_messages(self.shared, &self.caller, request, call)
    }

    fn upload_messages(&self, call: C) -> Started<C> {
        upload_messages(self.shared, &self.caller, call)
    }

    fn chat(&self, call: C) -> Started<C> {
        chat(self.shared, &self.caller, call)
    }

    fn stream_metrics(&self, request: chat::MetricsRequest, call: C) -> Started<C> {
        stream_metrics(self.shared, &self.caller, request, call)
    }
}

/// SendMessage: publishes, and answers with the message's id and time.
/// With `--data-dir` and `--fsync always|batch`, or `--cluster`, the
/// publish waits for the journal or Redis: the transport then runs this on
/// a publishing thread, not on the connection's reader (`publishers`).
pub(super) fn send_message(
    shared: &Shared,
    caller: &Caller,
    req: chat::SendMessageRequest,
) -> Result<chat::SendMessageResponse, Status> {
    let mut draft = Draft::chat(req.room, req.user, req.content);
    let published = caller
        .publish(shared, &mut draft)
        .and_then(|()| shared.hub.publish(draft).map_err(|e| Status::from(&e)));
    match published {
        Ok(m) => {
            let mut resp = chat::SendMessageResponse::new();
            resp.message_id = m.id.clone();
            resp.timestamp = convert::timestamp(m.timestamp);
            shared.done("SendMessage", Code::Ok);
            Ok(resp)
        }
        Err(st) => {
            shared.done("SendMessage", st.code);
            Err(st)
        }
    }
}

fn subscribe_messages<C: Responses<wire::Outbound> + Follow>(
    shared: &Arc<Shared>,
    caller: &Caller,
    req: chat::SubscribeRequest,
    call: C,
) -> Started<C> {
    const METHOD: &str = "SubscribeMessages";
    let now = SystemTime::now();
    let allowed = match shared
        .access
        .subscribe(&caller.identity, &req.room, &req.user, now)
    {
        Ok(allowed) => allowed,
        Err(refusal) => return Err(shared.refuse(METHOD, call, Status::from(&refusal))),
    };
    // Resuming (README, "Durable rooms"): a position in request metadata.
    let resume = super::resume::requested(&call);
    // Subscribed at once, on the connection's reader, so that the
    // subscription is registered before the connection's next request is
    // read; but with `--cluster` on the stream's own thread, because a
    // room's first subscriber on this node waits until the node follows
    // the room (a Redis round trip, at most 4 s if Redis hangs), and the
    // reader must go on meanwhile.
    let hub = shared.hub.clone();
    let at_once = !hub.subscribe_waits();
    shared.start_stream(
        shared.open_stream(),
        METHOD,
        "sub",
        call,
        move || {
            let resume = resume?;
            let subscribed = match at_once {
                true => Some(super::resume::subscribe(&hub, &allowed.room, resume)?),
                false => None,
            };
            Ok((resume, subscribed, allowed))
        },
        |shared, call, (resume, subscribed, allowed)| {
            let subscribed = match subscribed {
                Some(done) => Ok(done),
                None => super::resume::subscribe(&shared.hub, &allowed.room, resume),
            };
            match subscribed {
                Ok((sub, missed)) => {
                    let expires = allowed.expires.map(expiry_instant);
                    run_subscriber(shared, sub, missed, allowed.user, expires, call)
                }
                Err(e) => {
                    let Refused { call, status } = shared.refuse(METHOD, call, Status::from(&e));
                    call.finish(status, shared.write_timeout());
                }
            }
        },
    )
}

fn upload_messages<C>(shared: &Arc<Shared>, caller: &Caller, call: C) -> Started<C>
where
    C: Requests<chat::Message> + Reply<chat::UploadResponse>,
{
    let caller = caller.clone();
    shared.start_stream(
        shared.open_stream(),
        "UploadMessages",
        "upload",
        call,
        || Ok(()),
        move |shared, call, ()| run_upload(shared, &caller, call),
    )
}

fn chat<C>(shared: &Arc<Shared>, caller: &Caller, call: C) -> Started<C>
where
    C: Requests<chat::Message> + Responses<chat::Message>,
{
    let caller = caller.clone();
    shared.start_stream(
        shared.open_stream(),
        "Chat",
        "chat",
        call,
        || Ok(()),
        move |shared, call, ()| run_chat(shared, &caller, call),
    )
}

fn stream_metrics<C: Responses<chat::Metric>>(
    shared: &Arc<Shared>,
    caller: &Caller,
    req: chat::MetricsRequest,
    call: C,
) -> Started<C> {
    const METHOD: &str = "StreamMetrics";
    if let Err(refusal) = shared.access.measurements(&caller.identity) {
        return Err(shared.refuse(METHOD, call, Status::from(&refusal)));
    }
    shared.start_stream(
        shared.open_stream(),
        METHOD,
        "metrics",
        call,
        || {
            Ok((
                stream_interval(req.interval_seconds.into())?,
                req.instance_id,
            ))
        },
        |shared, call, (interval, instance)| run_metrics(shared, instance, interval, call),
    )
}
