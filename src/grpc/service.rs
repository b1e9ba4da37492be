//! The `chat.ChatService` handlers, in the call interface's terms: the
//! generated `ChatService` trait, implemented by [`Chat`] (the HTTP/2
//! layer's dispatch calls them, on the connection's reader thread).
//! They run on the transport's receiving threads and never block
//! there: SendMessage publishes and answers at once; every streaming call is
//! handed to [`Shared::start_stream`], which gives it a thread running one
//! of the bodies in [`super::streams`], or says how to refuse it.

use std::sync::Arc;

use super::call::{Code, Follow, Reply, Requests, Responses, Started, Status};
use super::convert;
use super::streams::{run_chat, run_metrics, run_subscriber, run_upload};
use super::{wire, Shared};
use crate::hub::Draft;
use crate::metrics::stream_interval;
use crate::proto::chat;
use crate::proto::services::chat::ChatService;

/// `chat.ChatService` for the generated dispatch: every RPC of the proto
/// has its handler here, or the build fails.
pub(super) struct Chat<'a>(pub(super) &'a Arc<Shared>);

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
        send_message(self.0, request)
    }

    fn subscribe_messages(&self, request: chat::SubscribeRequest, call: C) -> Started<C> {
        subscribe_messages(self.0, request, call)
    }

    fn upload_messages(&self, call: C) -> Started<C> {
        upload_messages(self.0, call)
    }

    fn chat(&self, call: C) -> Started<C> {
        chat(self.0, call)
    }

    fn stream_metrics(&self, request: chat::MetricsRequest, call: C) -> Started<C> {
        stream_metrics(self.0, request, call)
    }
}

/// SendMessage: publishes, and answers with the message's id and time.
/// With `--data-dir` and `--fsync always|batch` the publish waits here for
/// the journal (BENCHMARKS.md, issue 14: the head-of-line cost of that).
fn send_message(
    shared: &Shared,
    req: chat::SendMessageRequest,
) -> Result<chat::SendMessageResponse, Status> {
    let draft = Draft::chat(req.room, req.user, req.content);
    match shared.hub.publish(draft) {
        Ok(m) => {
            let mut resp = chat::SendMessageResponse::new();
            resp.message_id = m.id.clone();
            resp.timestamp = convert::timestamp(m.timestamp);
            shared.done("SendMessage", Code::Ok);
            Ok(resp)
        }
        Err(e) => {
            let st = Status::from(&e);
            shared.done("SendMessage", st.code);
            Err(st)
        }
    }
}

fn subscribe_messages<C: Responses<wire::Outbound> + Follow>(
    shared: &Arc<Shared>,
    req: chat::SubscribeRequest,
    call: C,
) -> Started<C> {
    let hub = shared.hub.clone();
    // Resuming (README, "Durable rooms"): a position in request metadata.
    let resume = super::resume::requested(&call);
    shared.start_stream(
        shared.open_stream(),
        "SubscribeMessages",
        "sub",
        call,
        move || {
            Ok((
                super::resume::subscribe(&hub, &req.room, resume?)?.0,
                req.user,
            ))
        },
        |shared, call, (sub, user)| run_subscriber(shared, sub, user, call),
    )
}

fn upload_messages<C>(shared: &Arc<Shared>, call: C) -> Started<C>
where
    C: Requests<chat::Message> + Reply<chat::UploadResponse>,
{
    shared.start_stream(
        shared.open_stream(),
        "UploadMessages",
        "upload",
        call,
        || Ok(()),
        |shared, call, ()| run_upload(shared, call),
    )
}

fn chat<C>(shared: &Arc<Shared>, call: C) -> Started<C>
where
    C: Requests<chat::Message> + Responses<chat::Message>,
{
    shared.start_stream(
        shared.open_stream(),
        "Chat",
        "chat",
        call,
        || Ok(()),
        |shared, call, ()| run_chat(shared, call),
    )
}

fn stream_metrics<C: Responses<chat::Metric>>(
    shared: &Arc<Shared>,
    req: chat::MetricsRequest,
    call: C,
) -> Started<C> {
    shared.start_stream(
        shared.open_stream(),
        "StreamMetrics",
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
