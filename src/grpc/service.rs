//! The `chat.ChatService` handlers. They run on grpcio's completion-queue
//! threads and never block there: SendMessage publishes and answers at
//! once; every streaming call is handed to [`Shared::start_stream`], which
//! gives it a thread running one of the bodies in [`super::streams`].

use std::sync::Arc;

use grpcio::{
    ClientStreamingSink, DuplexSink, RequestStream, RpcContext, RpcStatusCode, ServerStreamingSink,
    UnarySink,
};

use super::convert::{self, status};
use super::streams::{run_chat, run_metrics, run_subscriber, run_upload};
use super::{wire, Shared};
use crate::hub::{Draft, Protocol};
use crate::metrics::stream_interval;
use crate::proto::chat;
use crate::proto::services::ChatService;

#[derive(Clone)]
pub(super) struct ChatServiceImpl {
    pub(super) shared: Arc<Shared>,
}

impl ChatService for ChatServiceImpl {
    fn send_message(
        &mut self,
        ctx: RpcContext,
        req: chat::SendMessageRequest,
        sink: UnarySink<chat::SendMessageResponse>,
    ) {
        let draft = Draft::chat(req.room, req.user, req.content);
        let shared = self.shared.clone();
        let reply = match shared.hub.publish(draft) {
            Ok(m) => {
                let mut resp = chat::SendMessageResponse::new();
                resp.message_id = m.id.clone();
                resp.timestamp = convert::timestamp(m.timestamp);
                shared.done("SendMessage", RpcStatusCode::OK);
                sink.success(resp)
            }
            Err(e) => {
                let st = status(&e);
                shared.done("SendMessage", st.code());
                sink.fail(st)
            }
        };
        ctx.spawn(async move {
            let _ = reply.await;
        });
    }

    fn subscribe_messages(
        &mut self,
        ctx: RpcContext,
        req: chat::SubscribeRequest,
        sink: ServerStreamingSink<wire::Outbound>,
    ) {
        let (peer, deadline) = (ctx.peer(), ctx.deadline());
        let hub = self.shared.hub.clone();
        self.shared.start_stream(
            self.shared.open_stream(),
            &ctx,
            "SubscribeMessages",
            "sub",
            sink,
            move || Ok((hub.subscribe(&req.room, None, Protocol::Grpc)?.0, req.user)),
            move |shared, sink, (sub, user)| {
                run_subscriber(shared, sub, user, sink, peer, deadline)
            },
        );
    }

    fn upload_messages(
        &mut self,
        ctx: RpcContext,
        stream: RequestStream<chat::Message>,
        sink: ClientStreamingSink<chat::UploadResponse>,
    ) {
        self.shared.start_stream(
            self.shared.open_stream(),
            &ctx,
            "UploadMessages",
            "upload",
            sink,
            || Ok(stream),
            |shared, sink, stream| run_upload(shared, stream, sink),
        );
    }

    fn chat(
        &mut self,
        ctx: RpcContext,
        stream: RequestStream<chat::Message>,
        sink: DuplexSink<chat::Message>,
    ) {
        let peer = ctx.peer();
        self.shared.start_stream(
            self.shared.open_stream(),
            &ctx,
            "Chat",
            "chat",
            sink,
            || Ok(stream),
            move |shared, sink, stream| run_chat(shared, stream, sink, peer),
        );
    }

    fn stream_metrics(
        &mut self,
        ctx: RpcContext,
        req: chat::MetricsRequest,
        sink: ServerStreamingSink<chat::Metric>,
    ) {
        self.shared.start_stream(
            self.shared.open_stream(),
            &ctx,
            "StreamMetrics",
            "metrics",
            sink,
            || {
                Ok((
                    stream_interval(req.interval_seconds.into())?,
                    req.instance_id,
                ))
            },
            |shared, sink, (interval, instance)| run_metrics(shared, instance, interval, sink),
        );
    }
}
