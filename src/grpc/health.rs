//! `grpc.health.v1.Health`: Check and Watch for the whole server (`""`) and
//! for `chat.ChatService`. Both report SERVING while the server runs and
//! NOT_SERVING from the moment shutdown begins, and while publishes cannot
//! go through: the cluster's Redis is down (`--cluster`) or the data
//! directory failed (`--data-dir`). In the call interface's terms, like
//! the chat handlers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Receiver;

use super::call::{Code, Responses, Started, Status};
use super::Shared;
use crate::hub::{Changes, SHUTDOWN_NOTICE};
use crate::proto::health::health_check_response::ServingStatus;
use crate::proto::health::{HealthCheckRequest, HealthCheckResponse};

/// The services health answers for.
pub const SERVICES: &[&str] = &["", "chat.ChatService"];

/// The serving status, and who wants to hear when it changes.
#[derive(Default)]
pub struct HealthState {
    not_serving: AtomicBool,
    changes: Changes,
}

impl HealthState {
    /// Whether the server is not stopping.
    pub fn serving(&self) -> bool {
        !self.not_serving.load(Ordering::Acquire)
    }

    /// Turns every service NOT_SERVING and tells the watchers.
    pub fn set_not_serving(&self) {
        self.not_serving.store(true, Ordering::Release);
        self.changes.tell();
    }
}

/// The status of `service` now: NOT_SERVING once the server is stopping,
/// and while publishes cannot go through (the cluster's Redis is down, or
/// the data directory failed).
fn status_of(shared: &Shared, service: &str) -> ServingStatus {
    if !SERVICES.contains(&service) {
        ServingStatus::SERVICE_UNKNOWN
    } else if shared.health.serving() && shared.hub.serving() {
        ServingStatus::SERVING
    } else {
        ServingStatus::NOT_SERVING
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
    let state = status_of(shared, &req.service);
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
    let changes = (shared.health.changes.watch(), shared.hub.watch_serving());
    shared.start_stream(
        permit,
        "Health.Watch",
        "health",
        call,
        || Ok(changes),
        move |shared, call, changes| run_watch(shared, req.service, changes, call),
    )
}

/// Runs on `grpc-health-N`: sends the current status, then every change
/// (the cluster's Redis going down and coming back is one); ends with
/// UNAVAILABLE once the server is stopping and said so.
fn run_watch(
    shared: &Shared,
    service: String,
    (stopping, relay): (Receiver<()>, Receiver<()>),
    mut call: impl Responses<HealthCheckResponse>,
) {
    call.ignore_stopping();
    let timeout = shared.write_timeout();
    let mut last = None;
    let code = loop {
        let now = status_of(shared, &service);
        if last != Some(now) {
            if call.send_all([response(now)], timeout).is_err() {
                break Code::Cancelled;
            }
            last = Some(now);
        }
        if !shared.health.serving() {
            call.finish(Status::new(Code::Unavailable, SHUTDOWN_NOTICE), timeout);
            break Code::Unavailable;
        }
        crossbeam_channel::select! {
            recv(stopping) -> _ => {}
            recv(relay) -> _ => {}
            recv(call.woken()) -> _ => {
                if call.client_gone() {
                    break Code::Cancelled;
                }
            }
        }
    };
    shared.done("Health.Watch", code);
}
