//! Drives grpcio's futures (sinks, request streams) from an ordinary thread,
//! without an async runtime and without blocking grpcio's poll threads.
//!
//! Each stream thread owns one [`Driver`] (inside its call): a waker that
//! turns grpcio's "something happened" into a token on a crossbeam channel,
//! so the thread can wait on grpcio progress (a write finished, the client
//! cancelled, the deadline passed), server shutdown and, through
//! [`Driver::woken`], anything else it `select!`s on, at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use grpcio::{RpcStatus, WriteFlags};

use crate::grpc::call::{Interrupted, WriteError};

struct ChannelWaker(Sender<()>);

impl Wake for ChannelWaker {
    fn wake(self: Arc<Self>) {
        let _ = self.0.try_send(());
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.0.try_send(());
    }
}

pub struct Driver {
    waker: Waker,
    woken: Receiver<()>,
    stopping: Option<Receiver<()>>,
}

impl Driver {
    /// `stopping` disconnects when the server begins shutting down.
    pub fn new(stopping: Receiver<()>) -> Driver {
        let (tx, rx) = crossbeam_channel::bounded(1);
        Driver {
            waker: Waker::from(Arc::new(ChannelWaker(tx))),
            woken: rx,
            stopping: Some(stopping),
        }
    }

    /// A token arrives here whenever a future polled by this driver may make
    /// progress.
    pub fn woken(&self) -> &Receiver<()> {
        &self.woken
    }

    /// From now on waits are not cut short by shutdown: for the last words
    /// of a stream that is being closed because of it.
    pub fn ignore_stopping(&mut self) {
        self.stopping = None;
    }

    /// Polls once, registering this driver's waker.
    pub fn poll_once<T>(&self, f: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        f(&mut Context::from_waker(&self.waker))
    }

    /// Polls `f` until it is ready, sleeping on the waker between polls.
    pub fn block_on<T>(
        &self,
        mut f: impl FnMut(&mut Context<'_>) -> Poll<T>,
        deadline: Option<Instant>,
    ) -> Result<T, Interrupted> {
        let mut cx = Context::from_waker(&self.waker);
        loop {
            if let Poll::Ready(v) = f(&mut cx) {
                return Ok(v);
            }
            self.wait(deadline)?;
        }
    }

    /// Sleeps until woken, the deadline or shutdown.
    pub fn wait(&self, deadline: Option<Instant>) -> Result<(), Interrupted> {
        let never = crossbeam_channel::never();
        let stopping = self.stopping.as_ref().unwrap_or(&never);
        let timeout = match deadline {
            Some(d) => crossbeam_channel::at(d),
            None => crossbeam_channel::never(),
        };
        crossbeam_channel::select! {
            recv(self.woken) -> _ => Ok(()),
            recv(stopping) -> _ => Err(Interrupted::Stopping),
            recv(timeout) -> _ => Err(Interrupted::TimedOut),
        }
    }

    /// Writes `items` as one burst: every one but the last with
    /// `buffer_hint`, then one flush. Gives up after `timeout`.
    pub fn send_all<T, S>(
        &self,
        sink: &mut S,
        items: impl IntoIterator<Item = T>,
        timeout: Duration,
    ) -> Result<(), WriteError>
    where
        S: Sink<(T, WriteFlags), Error = grpcio::Error> + Unpin,
    {
        let deadline = Some(Instant::now() + timeout);
        let mut items = items.into_iter().peekable();
        while let Some(item) = items.next() {
            self.block_on(|cx| sink.poll_ready_unpin(cx), deadline)
                .map_err(WriteError::Interrupted)?
                .map_err(|_| WriteError::Gone)?;
            let flags = WriteFlags::default().buffer_hint(items.peek().is_some());
            sink.start_send_unpin((item, flags))
                .map_err(|_| WriteError::Gone)?;
        }
        self.block_on(|cx| sink.poll_flush_unpin(cx), deadline)
            .map_err(WriteError::Interrupted)?
            .map_err(|_| WriteError::Gone)
    }

    /// True when the call is over on the client's side (cancelled, deadline
    /// passed, connection lost). Never blocks.
    pub fn client_gone<T, S>(&self, sink: &mut S) -> bool
    where
        S: Sink<(T, WriteFlags), Error = grpcio::Error> + Unpin,
    {
        matches!(
            self.poll_once(|cx| sink.poll_flush_unpin(cx)),
            Poll::Ready(Err(_))
        )
    }

    /// Takes the next inbound message if one is there. Never blocks.
    pub fn poll_next<T, S>(&self, stream: &mut S) -> Poll<Option<grpcio::Result<T>>>
    where
        S: Stream<Item = grpcio::Result<T>> + Unpin,
    {
        self.poll_once(|cx| stream.poll_next_unpin(cx))
    }

    /// Runs a future to completion (bounded by `timeout`).
    pub fn finish<F: Future + Unpin>(&self, mut f: F, timeout: Duration) -> Option<F::Output> {
        self.block_on(
            |cx| Pin::new(&mut f).poll(cx),
            Some(Instant::now() + timeout),
        )
        .ok()
    }
}

/// Every sink a streaming call answers through can end the call with a
/// status: how a call that cannot start is refused.
pub trait FailSink: Sized {
    type Failure: Future<Output = grpcio::Result<()>> + Unpin + Send + 'static;
    fn fail_with(self, status: RpcStatus) -> Self::Failure;
}

/// The two server-side streaming sinks, closed or failed the same way.
pub trait StreamSink<T>: Sink<(T, WriteFlags), Error = grpcio::Error> + Unpin + FailSink {}

impl<T> FailSink for grpcio::ServerStreamingSink<T> {
    type Failure = grpcio::ServerStreamingSinkFailure;
    fn fail_with(self, status: RpcStatus) -> Self::Failure {
        self.fail(status)
    }
}

impl<T> StreamSink<T> for grpcio::ServerStreamingSink<T> {}

impl<T> FailSink for grpcio::DuplexSink<T> {
    type Failure = grpcio::DuplexSinkFailure;
    fn fail_with(self, status: RpcStatus) -> Self::Failure {
        self.fail(status)
    }
}

impl<T> StreamSink<T> for grpcio::DuplexSink<T> {}

impl<T> FailSink for grpcio::ClientStreamingSink<T> {
    type Failure = grpcio::ClientStreamingSinkResult;
    fn fail_with(self, status: RpcStatus) -> Self::Failure {
        self.fail(status)
    }
}

impl Driver {
    /// Ends the call with OK after everything written so far.
    pub fn close_ok<T, S: StreamSink<T>>(&self, mut sink: S, timeout: Duration) {
        let deadline = Some(Instant::now() + timeout);
        let _ = self.block_on(|cx| sink.poll_close_unpin(cx), deadline);
    }

    /// Ends the call with `status`.
    pub fn close_with<T, S: StreamSink<T>>(&self, sink: S, status: RpcStatus, timeout: Duration) {
        let _ = self.finish(sink.fail_with(status), timeout);
    }
}
