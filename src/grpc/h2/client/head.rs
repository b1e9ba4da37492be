//! What gRPC over HTTP/2 (grpc/grpc `doc/PROTOCOL-HTTP2.md`) puts in a
//! client's header blocks, and how a response's headers, trailers and
//! resets become a call's status. Pure.

use std::time::Duration;

use crate::grpc::call::{Code, Status};
use crate::grpc::h2::frame::ErrorCode;
use crate::grpc::h2::grpc as g;
use crate::grpc::h2::hpack::{index, Block};

/// A call's request header block, and its size as
/// SETTINGS_MAX_HEADER_LIST_SIZE counts it (name + value + 32 per field).
pub struct RequestHead {
    pub block: Vec<u8>,
    pub list_size: usize,
}

/// The request headers of a call (RFC 9113 section 8.3.1 and gRPC's
/// PROTOCOL-HTTP2.md). `metadata` names are sent lower case; pseudo-headers
/// and the fields this function writes itself are not taken from it.
pub fn request_head(
    authority: &str,
    path: &str,
    timeout: Option<Duration>,
    metadata: &[(String, String)],
) -> RequestHead {
    let mut list_size = 0;
    let mut count = |name: &str, value: &[u8]| list_size += name.len() + value.len() + 32;
    count(":method", b"POST");
    count(":scheme", b"http");
    count(":path", path.as_bytes());
    count(":authority", authority.as_bytes());
    count("content-type", b"application/grpc");
    count("te", b"trailers");
    count("user-agent", USER_AGENT.as_bytes());
    let mut block = Block::new()
        .indexed(index::METHOD_POST)
        .indexed(index::SCHEME_HTTP)
        .named(index::PATH, path.as_bytes())
        .named(index::AUTHORITY, authority.as_bytes())
        .named(index::CONTENT_TYPE, b"application/grpc")
        .literal(b"te", b"trailers")
        .literal(b"user-agent", USER_AGENT.as_bytes());
    if let Some(t) = timeout {
        let t = g::format_timeout(t);
        count("grpc-timeout", t.as_bytes());
        block = block.literal(b"grpc-timeout", t.as_bytes());
    }
    for (name, value) in metadata {
        let name = name.to_ascii_lowercase();
        if name.starts_with(':') || OWN_FIELDS.contains(&name.as_str()) {
            continue;
        }
        count(&name, value.as_bytes());
        block = block.literal(name.as_bytes(), value.as_bytes());
    }
    RequestHead {
        block: block.bytes,
        list_size,
    }
}

pub(super) const USER_AGENT: &str = concat!("streamhub-h2c/", env!("CARGO_PKG_VERSION"));
/// Fields `request_block` writes; also those HTTP/2 forbids (section 8.2.2).
const OWN_FIELDS: &[&str] = &[
    "content-type",
    "te",
    "user-agent",
    "grpc-timeout",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// The gRPC code of a response that carries an HTTP status other than 200
/// and no `grpc-status` (grpc/grpc `doc/http-grpc-status-mapping.md`).
pub fn http_code(status: u16) -> Code {
    match status {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// The gRPC code of a stream the server reset before its status (gRPC's
/// PROTOCOL-HTTP2.md, "Errors"; grpc-go's table).
pub fn reset_code(code: ErrorCode) -> Code {
    match code {
        ErrorCode::Cancel => Code::Cancelled,
        ErrorCode::RefusedStream => Code::Unavailable,
        ErrorCode::EnhanceYourCalm => Code::ResourceExhausted,
        ErrorCode::InadequateSecurity => Code::PermissionDenied,
        _ => Code::Internal,
    }
}

/// A call's status from its trailers (or trailers-only response).
pub(super) fn trailers_status(fields: &[(Vec<u8>, Vec<u8>)]) -> Status {
    let Some(code) = field(fields, b"grpc-status") else {
        return Status::new(
            Code::Internal,
            "the server ended the call without grpc-status",
        );
    };
    let code = std::str::from_utf8(code)
        .ok()
        .and_then(|c| c.parse::<i32>().ok())
        .map_or(Code::Unknown, Code::from_number);
    let message = field(fields, b"grpc-message").map(g::percent_decode);
    Status::new(code, message.unwrap_or_default())
}

/// Checks a response's first header block. `Err` is the call's status
/// when it is not a gRPC response.
pub(super) fn response_head(fields: &[(Vec<u8>, Vec<u8>)], end_stream: bool) -> Result<(), Status> {
    let status = field(fields, b":status")
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok());
    let Some(status) = status else {
        return Err(Status::new(
            Code::Internal,
            "response without a valid :status",
        ));
    };
    if status != 200 {
        if end_stream && field(fields, b"grpc-status").is_some() {
            // Trailers-only with an HTTP error: the gRPC status says more.
            return Ok(());
        }
        return Err(Status::new(
            http_code(status),
            format!("unexpected HTTP status {status} from the server (no grpc-status)"),
        ));
    }
    let content_type = field(fields, b"content-type").unwrap_or_default();
    let grpc = content_type
        .strip_prefix(b"application/grpc")
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';');
    if !grpc {
        return Err(Status::new(
            Code::Unknown,
            format!(
                "unexpected content-type {:?} from the server",
                String::from_utf8_lossy(content_type)
            ),
        ));
    }
    Ok(())
}

fn field<'a>(fields: &'a [(Vec<u8>, Vec<u8>)], name: &[u8]) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(n, _)| n.as_slice() == name)
        .map(|(_, v)| v.as_slice())
}
