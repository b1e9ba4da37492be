//! The grpcio adapter: the one module that names grpcio's server types. It
//! implements the call interface ([`crate::grpc::call`]) over grpcio's
//! sinks and request streams ([`GrpcioCall`]), implements the
//! build.rs-generated service traits by handing each call to the neutral
//! handlers (`services`), and builds, starts and stops the grpcio server
//! (`server`). The transport issue replaces this module, and only it.
//!
//! Outside it grpcio is named by: the generated code (`crate::proto`, whose
//! server traits this module implements), and `wire.rs`'s SubscribeMessages
//! marshaller hooks, which live here ([`ser_outbound`], [`de_outbound`]) so
//! that `wire.rs` stays neutral. (The CLI client, a module of the binary,
//! is a grpcio *client* and not part of the server.)

mod driver;
mod server;
mod services;

use std::task::Poll;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use grpcio::{ClientStreamingSink, RequestStream, RpcContext, RpcStatus, UnarySink};

use self::driver::{Driver, FailSink, StreamSink};
use super::call::{
    Call, Code, Interrupted, Received, Refused, Reply, Requests, Responses, Started, Status,
    WriteError,
};
pub(super) use server::Server;

/// grpcio's status for ours.
fn rpc_status(s: Status) -> RpcStatus {
    RpcStatus::with_message(s.code.number(), s.message)
}

/// One running call over grpcio: its sink, its request stream (`()` when
/// the client sends a single message) and the driver that polls both from
/// the call's thread.
pub(super) struct GrpcioCall<S, R = ()> {
    driver: Driver,
    sink: S,
    requests: R,
    peer: String,
    deadline: grpcio::Deadline,
}

impl<S, R> GrpcioCall<S, R> {
    /// Built on the completion-queue thread, from what only `ctx` knows;
    /// `stopping` disconnects when the server begins shutting down.
    fn new(ctx: &RpcContext, sink: S, requests: R, stopping: Receiver<()>) -> Self {
        GrpcioCall {
            driver: Driver::new(stopping),
            sink,
            requests,
            peer: ctx.peer(),
            deadline: ctx.deadline(),
        }
    }
}

impl<S: FailSink + Send + 'static, R: Send + 'static> Call for GrpcioCall<S, R> {
    fn wait(&self, until: Option<Instant>) -> Result<(), Interrupted> {
        self.driver.wait(until)
    }

    fn woken(&self) -> &Receiver<()> {
        self.driver.woken()
    }

    fn ignore_stopping(&mut self) {
        self.driver.ignore_stopping();
    }

    fn peer(&self) -> &str {
        &self.peer
    }

    fn deadline_passed(&self) -> bool {
        self.deadline.exceeded()
    }
}

impl<T, S, R> Responses<T> for GrpcioCall<S, R>
where
    S: StreamSink<T> + Send + 'static,
    R: Send + 'static,
{
    fn send_all(
        &mut self,
        items: impl IntoIterator<Item = T>,
        timeout: Duration,
    ) -> Result<(), WriteError> {
        self.driver.send_all(&mut self.sink, items, timeout)
    }

    fn client_gone(&mut self) -> bool {
        self.driver.client_gone(&mut self.sink)
    }

    fn finish(self, status: Status, timeout: Duration) {
        if status.code == Code::Ok {
            // A clean end of stream (trailers with OK), after the writes.
            self.driver.close_ok(self.sink, timeout);
        } else {
            self.driver
                .close_with(self.sink, rpc_status(status), timeout);
        }
    }
}

/// grpcio's read result in the interface's terms.
fn received<T>(r: Option<grpcio::Result<T>>) -> Received<T> {
    match r {
        None => Received::Ended,
        Some(Ok(m)) => Received::Message(m),
        Some(Err(e)) => Received::Failed(e.to_string()),
    }
}

impl<T, S> Requests<T> for GrpcioCall<S, RequestStream<T>>
where
    S: FailSink + Send + 'static,
    RequestStream<T>: Send + 'static,
{
    fn poll_next(&mut self) -> Poll<Received<T>> {
        self.driver.poll_next(&mut self.requests).map(received)
    }

    fn next(&mut self, until: Option<Instant>) -> Result<Received<T>, Interrupted> {
        let requests = &mut self.requests;
        self.driver
            .block_on(
                |cx| futures_util::StreamExt::poll_next_unpin(requests, cx),
                until,
            )
            .map(received)
    }
}

impl<T, R> Reply<T> for GrpcioCall<ClientStreamingSink<T>, R>
where
    ClientStreamingSink<T>: Send + 'static,
    R: Send + 'static,
{
    fn reply(self, answer: Result<T, Status>, timeout: Duration) {
        let done = match answer {
            Ok(resp) => self.sink.success(resp),
            Err(st) => self.sink.fail(rpc_status(st)),
        };
        let _ = self.driver.finish(done, timeout);
    }
}

/// Answers a streaming call its handler refused (the handler counted and
/// logged it). On the completion-queue thread, so it does not wait: grpcio
/// finishes the answer there.
fn answer_refused<S: FailSink, R>(ctx: &RpcContext, started: Started<GrpcioCall<S, R>>) {
    if let Err(Refused { call, status }) = started {
        let failed = call.sink.fail_with(rpc_status(status));
        ctx.spawn(async move {
            let _ = failed.await;
        });
    }
}

/// Answers a unary call, without waiting (as [`answer_refused`]).
fn answer_unary<T>(ctx: &RpcContext, sink: UnarySink<T>, answer: Result<T, Status>) {
    let reply = match answer {
        Ok(resp) => sink.success(resp),
        Err(st) => sink.fail(rpc_status(st)),
    };
    ctx.spawn(async move {
        let _ = reply.await;
    });
}

/// The SubscribeMessages marshaller's serializer (build.rs names it): a
/// copy of the encoding the hub cached, or an encoding of the server's own
/// message.
pub(crate) fn ser_outbound(
    out: &super::wire::Outbound,
    buf: &mut grpcio::GrpcSlice,
) -> grpcio::Result<()> {
    match out {
        super::wire::Outbound::Shared(m) => {
            *buf = grpcio::GrpcSlice::from(super::wire::shared_bytes(m));
            Ok(())
        }
        super::wire::Outbound::Own(m) => grpcio::pb_ser(m, buf),
    }
}

/// Never called: the server only sends this type.
pub(crate) fn de_outbound(_: grpcio::MessageReader) -> grpcio::Result<super::wire::Outbound> {
    Err(grpcio::Error::Codec("Outbound is never received".into()))
}

#[cfg(test)]
mod tests {
    use protobuf::Message as _;

    use super::*;
    use crate::grpc::convert::to_proto;
    use crate::grpc::wire::Outbound;
    use crate::hub::{Draft, Hub, HubConfig};
    use crate::proto::chat;

    #[test]
    fn shared_encoding_decodes_to_the_same_message() {
        let hub = Hub::new(HubConfig::default());
        let m = hub.publish(Draft::chat("r", "u", "hello")).unwrap();
        let mut buf = grpcio::GrpcSlice::default();
        ser_outbound(&Outbound::Shared(m.clone()), &mut buf).unwrap();
        let decoded = chat::Message::parse_from_bytes(buf.as_slice()).unwrap();
        assert_eq!(decoded, to_proto(&m));
        // The second subscriber gets the cached bytes.
        let mut again = grpcio::GrpcSlice::default();
        ser_outbound(&Outbound::Shared(m), &mut again).unwrap();
        assert_eq!(again.as_slice(), buf.as_slice());
    }

    #[test]
    fn statuses_keep_their_code_and_message() {
        for code in Code::ALL {
            let st = rpc_status(Status::new(code, "why"));
            assert_eq!(i32::from(st.code()), code.number());
            assert_eq!(st.message(), "why");
        }
    }
}
