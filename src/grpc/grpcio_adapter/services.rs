//! The build.rs-generated service traits, implemented by wrapping each
//! call's grpcio context, sink and request stream in a [`GrpcioCall`] and
//! handing it to the neutral handler, which starts it or refuses it.

use std::sync::Arc;

use grpcio::{
    ClientStreamingSink, DuplexSink, RequestStream, RpcContext, ServerStreamingSink, UnarySink,
};

use super::{answer_refused, answer_unary, GrpcioCall};
use crate::grpc::{health, reflection, service, wire, Shared};
use crate::proto::chat;
use crate::proto::health::{HealthCheckRequest, HealthCheckResponse};
use crate::proto::reflection::{ServerReflectionRequest, ServerReflectionResponse};
use crate::proto::services::{self as generated, ChatService};

/// Every service the server registers; grpcio clones it per method.
#[derive(Clone)]
pub struct Services {
    pub shared: Arc<Shared>,
}

impl Services {
    fn call<S, R>(&self, ctx: &RpcContext, sink: S, requests: R) -> GrpcioCall<S, R> {
        GrpcioCall::new(ctx, sink, requests, self.shared.stopping.clone())
    }

    fn reflect(
        &self,
        ctx: RpcContext,
        stream: RequestStream<ServerReflectionRequest>,
        sink: DuplexSink<ServerReflectionResponse>,
        method: &'static str,
    ) {
        let call = self.call(&ctx, sink, stream);
        answer_refused(&ctx, reflection::serve(&self.shared, method, call));
    }
}

impl ChatService for Services {
    fn send_message(
        &mut self,
        ctx: RpcContext,
        req: chat::SendMessageRequest,
        sink: UnarySink<chat::SendMessageResponse>,
    ) {
        answer_unary(&ctx, sink, service::send_message(&self.shared, req));
    }

    fn subscribe_messages(
        &mut self,
        ctx: RpcContext,
        req: chat::SubscribeRequest,
        sink: ServerStreamingSink<wire::Outbound>,
    ) {
        let call = self.call(&ctx, sink, ());
        answer_refused(&ctx, service::subscribe_messages(&self.shared, req, call));
    }

    fn upload_messages(
        &mut self,
        ctx: RpcContext,
        stream: RequestStream<chat::Message>,
        sink: ClientStreamingSink<chat::UploadResponse>,
    ) {
        let call = self.call(&ctx, sink, stream);
        answer_refused(&ctx, service::upload_messages(&self.shared, call));
    }

    fn chat(
        &mut self,
        ctx: RpcContext,
        stream: RequestStream<chat::Message>,
        sink: DuplexSink<chat::Message>,
    ) {
        let call = self.call(&ctx, sink, stream);
        answer_refused(&ctx, service::chat(&self.shared, call));
    }

    fn stream_metrics(
        &mut self,
        ctx: RpcContext,
        req: chat::MetricsRequest,
        sink: ServerStreamingSink<chat::Metric>,
    ) {
        let call = self.call(&ctx, sink, ());
        answer_refused(&ctx, service::stream_metrics(&self.shared, req, call));
    }
}

impl generated::health::Health for Services {
    fn check(
        &mut self,
        ctx: RpcContext,
        req: HealthCheckRequest,
        sink: UnarySink<HealthCheckResponse>,
    ) {
        answer_unary(&ctx, sink, health::check(&self.shared, req));
    }

    fn watch(
        &mut self,
        ctx: RpcContext,
        req: HealthCheckRequest,
        sink: ServerStreamingSink<HealthCheckResponse>,
    ) {
        let call = self.call(&ctx, sink, ());
        answer_refused(&ctx, health::watch(&self.shared, req, call));
    }
}

impl generated::reflection::ServerReflection for Services {
    fn server_reflection_info(
        &mut self,
        ctx: RpcContext,
        stream: RequestStream<ServerReflectionRequest>,
        sink: DuplexSink<ServerReflectionResponse>,
    ) {
        self.reflect(ctx, stream, sink, "ServerReflection.v1");
    }
}

impl generated::reflection_v1alpha::ServerReflection for Services {
    fn server_reflection_info(
        &mut self,
        ctx: RpcContext,
        stream: RequestStream<ServerReflectionRequest>,
        sink: DuplexSink<ServerReflectionResponse>,
    ) {
        self.reflect(ctx, stream, sink, "ServerReflection.v1alpha");
    }
}
