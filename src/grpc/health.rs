//! `grpc.health.v1.Health`: Check and Watch for the whole server (`""`) and
//! for `chat.ChatService`. Both report SERVING while the server runs and
//! NOT_SERVING from the moment shutdown begins; Check also while the
//! cluster's Redis is down (`--cluster`). In the call interface's
//! terms, like the chat handlers.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use super::call::{Code, Responses, Started, Status};
use super::Shared;
use crate::hub::SHUTDOWN_NOTICE;
use crate::proto::health::health_check_response::ServingStatus;
use crate::proto::health::{HealthCheckRequest, HealthCheckResponse};

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

/// `grpc.health.v1.Health` for the generated dispatch.
pub(super) struct Health<'a>(pub(super) &'a Arc<Shared>);

impl<C: Responses<HealthCheckResponse>> crate::proto::services::health::Health<C> for Health<'_> {
    type Status = Status;
    type Started = Started<C>;

    fn check(&self, request: HealthCheckRequest) -> Result<HealthCheckResponse, Status> {
        check(self.0, request)
    }

    fn watch(&self, request: HealthCheckRequest, call: C) -> Started<C> {
        watch(self.0, request, call)
    }
}

/// Health.Check: the status of one service, or NOT_FOUND.
fn check(shared: &Shared, req: HealthCheckRequest) -> Result<HealthCheckResponse, Status> {
    let mut state = shared.health.status_of(&req.service);
    // Shared rooms whose Redis is down (`--cluster`): no publishes.
    if state == ServingStatus::SERVING && !shared.hub.serving() {
        state = ServingStatus::NOT_SERVING;
    }
    if state == ServingStatus::SERVICE_UNKNOWN {
        shared.done("Health.Check", Code::NotFound);
        Err(Status::new(
            Code::NotFound,
            format!("unknown service '{}'", req.service),
        ))
    } else {
        shared.done("Health.Check", Code::Ok);
        Ok(response(state))
    }
}

fn watch<C: Responses<HealthCheckResponse>>(
    shared: &Arc<Shared>,
    req: HealthCheckRequest,
    call: C,
) -> Started<C> {
    // Watching goes on through shutdown (that is its point), so it takes
    // a stream slot but is not refused once stopping began.
    let permit = shared.open_stream_any_time();
    let changes = shared.health.watch();
    shared.start_stream(
        permit,
        "Health.Watch",
        "health",
        call,
        || Ok(changes),
        move |shared, call, changes| run_watch(shared, req.service, changes, call),
    )
}

/// Runs on `grpc-health-N`: sends the current status, then every change;
/// ends with UNAVAILABLE once the server is stopping and said so.
fn run_watch(
    shared: &Shared,
    service: String,
    changes: Receiver<()>,
    mut call: impl Responses<HealthCheckResponse>,
) {
    call.ignore_stopping();
    let timeout = shared.write_timeout();
    let mut last = None;
    let code = loop {
        let now = shared.health.status_of(&service);
        if last != Some(now) {
            if call.send_all([response(now)], timeout).is_err() {
                break Code::Cancelled;
            }
            last = Some(now);
        }
        if now == ServingStatus::NOT_SERVING {
            call.finish(Status::new(Code::Unavailable, SHUTDOWN_NOTICE), timeout);
            break Code::Unavailable;
        }
        crossbeam_channel::select! {
            recv(changes) -> _ => {}
            recv(call.woken()) -> _ => {
                if call.client_gone() {
                    break Code::Cancelled;
                }
            }
        }
    };
    shared.done("Health.Watch", code);
}
