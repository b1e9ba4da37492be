//! `grpc.health.v1.Health`: Check and Watch for the whole server (`""`) and
//! for `chat.ChatService`. Both report SERVING while the server runs and
//! NOT_SERVING from the moment shutdown begins.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use grpcio::{RpcContext, RpcStatus, RpcStatusCode, ServerStreamingSink, UnarySink};
use parking_lot::Mutex;

use super::driver::Driver;
use super::Shared;
use crate::hub::SHUTDOWN_NOTICE;
use crate::proto::health::health_check_response::ServingStatus;
use crate::proto::health::{HealthCheckRequest, HealthCheckResponse};
use crate::proto::services::health::Health;

/// The services health answers for.
pub const SERVICES: &[&str] = &["", "chat.ChatService"];

/// The serving status, and who wants to hear when it changes.
#[derive(Default)]
pub struct HealthState {
    inner: Mutex<HealthInner>,
}

#[derive(Default)]
struct HealthInner {
    not_serving: bool,
    watchers: Vec<Sender<()>>,
}

impl HealthState {
    pub fn serving(&self) -> bool {
        !self.inner.lock().not_serving
    }

    /// Turns every service NOT_SERVING and tells the watchers.
    pub fn set_not_serving(&self) {
        let mut inner = self.inner.lock();
        inner.not_serving = true;
        inner.watchers.retain(|w| match w.try_send(()) {
            Ok(()) | Err(crossbeam_channel::TrySendError::Full(_)) => true,
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => false,
        });
    }

    fn watch(&self) -> Receiver<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.inner.lock().watchers.push(tx);
        rx
    }

    fn status_of(&self, service: &str) -> ServingStatus {
        if !SERVICES.contains(&service) {
            ServingStatus::SERVICE_UNKNOWN
        } else if self.serving() {
            ServingStatus::SERVING
        } else {
            ServingStatus::NOT_SERVING
        }
    }
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    let mut resp = HealthCheckResponse::new();
    resp.status = status.into();
    resp
}

#[derive(Clone)]
pub struct HealthService {
    pub(super) shared: Arc<Shared>,
}

impl Health for HealthService {
    fn check(
        &mut self,
        ctx: RpcContext,
        req: HealthCheckRequest,
        sink: UnarySink<HealthCheckResponse>,
    ) {
        let state = self.shared.health.status_of(&req.service);
        let reply = if state == ServingStatus::SERVICE_UNKNOWN {
            self.shared.done("Health.Check", RpcStatusCode::NOT_FOUND);
            sink.fail(RpcStatus::with_message(
                RpcStatusCode::NOT_FOUND,
                format!("unknown service '{}'", req.service),
            ))
        } else {
            self.shared.done("Health.Check", RpcStatusCode::OK);
            sink.success(response(state))
        };
        ctx.spawn(async move {
            let _ = reply.await;
        });
    }

    fn watch(
        &mut self,
        ctx: RpcContext,
        req: HealthCheckRequest,
        sink: ServerStreamingSink<HealthCheckResponse>,
    ) {
        // Watching goes on through shutdown (that is its point), so it takes
        // a stream slot but is not refused once stopping began.
        let permit = self.shared.open_stream_any_time();
        let changes = self.shared.health.watch();
        self.shared.start_stream(
            permit,
            &ctx,
            "Health.Watch",
            "health",
            sink,
            || Ok(changes),
            move |shared, sink, changes| run_watch(shared, req.service, changes, sink),
        );
    }
}

/// Runs on `grpc-health-N`: sends the current status, then every change;
/// ends with UNAVAILABLE once the server is stopping and said so.
fn run_watch(
    shared: &Shared,
    service: String,
    changes: Receiver<()>,
    mut sink: ServerStreamingSink<HealthCheckResponse>,
) {
    let mut driver = Driver::new(shared.stopping.clone());
    driver.ignore_stopping();
    let timeout = shared.write_timeout();
    let mut last = None;
    let code = loop {
        let now = shared.health.status_of(&service);
        if last != Some(now) {
            if driver
                .send_all(&mut sink, [response(now)], timeout)
                .is_err()
            {
                break RpcStatusCode::CANCELLED;
            }
            last = Some(now);
        }
        if now == ServingStatus::NOT_SERVING {
            driver.close_with(
                sink,
                RpcStatus::with_message(RpcStatusCode::UNAVAILABLE, SHUTDOWN_NOTICE.into()),
                timeout,
            );
            break RpcStatusCode::UNAVAILABLE;
        }
        crossbeam_channel::select! {
            recv(changes) -> _ => {}
            recv(driver.woken()) -> _ => {
                if driver.client_gone(&mut sink) {
                    break RpcStatusCode::CANCELLED;
                }
            }
        }
    };
    shared.done("Health.Watch", code);
}
