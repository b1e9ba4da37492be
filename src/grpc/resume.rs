//! Where a resuming SubscribeMessages starts, from request metadata: the
//! proto's SubscribeRequest has no field for it, and adding one would not
//! reach clients built from the reference proto, while every gRPC client
//! can send metadata.
//!
//! - `last-message-id: msg_41`: after the message with that id (what a
//!   gRPC subscriber saw: its messages carry ids, not sequences);
//! - `last-event-id: 41`: after room sequence 41, as an SSE client's
//!   `Last-Event-ID` (for a client that also reads SSE or the JSON API).
//!
//! Without either, the stream starts with the next message, as before.

use std::sync::Arc;

use super::call::Call;
use super::convert::system_message;
use crate::error::Error;
use crate::hub::{Hub, Protocol, Subscription};
use crate::proto::chat;

/// A resume position a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resume {
    AfterId(u64),
    AfterSeq(u64),
}

/// The position in `call`'s metadata, if any; malformed values are an
/// INVALID_ARGUMENT that names the key.
pub(super) fn requested(call: &impl Call) -> Result<Option<Resume>, Error> {
    let text = |key: &str| {
        call.metadata(key)
            .map(|v| String::from_utf8_lossy(v).trim().to_string())
    };
    if let Some(id) = text("last-message-id") {
        return match crate::hub::id_number(&id) {
            Some(n) => Ok(Some(Resume::AfterId(n))),
            None => Err(Error::InvalidArgument(format!(
                "last-message-id must be a message id such as msg_41, got '{id}'"
            ))),
        };
    }
    match text("last-event-id") {
        Some(seq) => seq.parse().map(|n| Some(Resume::AfterSeq(n))).map_err(|_| {
            Error::InvalidArgument(format!(
                "last-event-id must be a room sequence number, got '{seq}'"
            ))
        }),
        None => Ok(None),
    }
}

/// Subscribes to `room` at `resume`; with it, the SYSTEM notice that
/// tells the client what it missed when its position has a gap after it
/// (the words of SSE's notice; id `system_missed`).
pub(super) fn subscribe(
    hub: &Arc<Hub>,
    room: &str,
    resume: Option<Resume>,
) -> Result<(Subscription, Option<chat::Message>), Error> {
    let (sub, replay) = match resume {
        Some(Resume::AfterId(id)) => hub.subscribe_after_id(room, id, Protocol::Grpc),
        Some(Resume::AfterSeq(seq)) => hub.subscribe(room, Some(seq), Protocol::Grpc),
        None => hub.subscribe(room, None, Protocol::Grpc),
    }?;
    let position = match resume {
        Some(Resume::AfterId(id)) => format!("last-message-id msg_{id}"),
        Some(Resume::AfterSeq(seq)) => format!("last-event-id {seq}"),
        None => return Ok((sub, None)),
    };
    let notice = replay
        .gap_notice(sub.room(), &position)
        .map(|(text, _)| system_message("system_missed".into(), "System", sub.room(), text));
    Ok((sub, notice))
}
