//! gRPC-Web on the wire (grpc/grpc `doc/PROTOCOL-WEB.md`), the pure part:
//! which content types are gRPC-Web, the one request message of a body,
//! the trailer frame (flag 0x80) that ends a response, the trailers-only
//! answer, and the base64 of `application/grpc-web-text`. No sockets here:
//! everything is unit-tested on byte strings.
//!
//! Data frames are gRPC's own length-prefixed messages
//! ([`crate::grpc::h2::grpc`]), so the encoding a hub message gets once for
//! native gRPC subscribers is what a gRPC-Web subscriber sends, too.

use base64::Engine as _;

use crate::grpc::call::{Code, Status};
use crate::grpc::h2::grpc::{self as g, DeframeError, Deframer};

/// The flag byte of the trailer frame (uncompressed).
pub const TRAILER_FLAG: u8 = 0x80;

/// How a call's bodies are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `application/grpc-web[+proto]`: frames as they are (Connect-ES,
    /// grpc-web's `grpcweb` mode, Envoy-style clients).
    Binary,
    /// `application/grpc-web-text[+proto]`: the frames in base64 (the
    /// official grpc-web client's default, the only mode in which it can
    /// stream).
    Text,
}

impl Mode {
    /// The mode of a request's `content-type`, or `None` when it is not a
    /// gRPC-Web protobuf call (`+json` included: the proto is the contract).
    pub fn of(content_type: &str) -> Option<Mode> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/grpc-web" | "application/grpc-web+proto" => Some(Mode::Binary),
            "application/grpc-web-text" | "application/grpc-web-text+proto" => Some(Mode::Text),
            _ => None,
        }
    }

    /// The response's `content-type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Mode::Binary => "application/grpc-web+proto",
            Mode::Text => "application/grpc-web-text+proto",
        }
    }

    /// The request body as frames (text: decoded from base64).
    pub fn decode_body(self, body: &[u8]) -> Result<Vec<u8>, Status> {
        match self {
            Mode::Binary => Ok(body.to_vec()),
            Mode::Text => decode_text(body).ok_or_else(|| {
                Status::new(
                    Code::Internal,
                    "the request body is not valid base64 (application/grpc-web-text)",
                )
            }),
        }
    }

    /// Bytes as they go on the wire: each flushed piece on its own, since a
    /// text client decodes chunk by chunk (padding may appear mid-stream).
    pub fn encode(self, frames: Vec<u8>) -> Vec<u8> {
        match self {
            Mode::Binary => frames,
            Mode::Text => base64::engine::general_purpose::STANDARD
                .encode(frames)
                .into_bytes(),
        }
    }
}

/// Decodes grpc-web-text: base64 pieces one after the other, each padded
/// on its own (whitespace ignored). `None` when it is not that.
pub fn decode_text(body: &[u8]) -> Option<Vec<u8>> {
    let clean: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if !clean.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    let mut start = 0;
    for (i, quad) in clean.chunks(4).enumerate() {
        // A quad with padding ends a piece.
        if quad.contains(&b'=') {
            let end = (i + 1) * 4;
            base64::engine::general_purpose::STANDARD
                .decode_vec(&clean[start..end], &mut out)
                .ok()?;
            start = end;
        }
    }
    if start < clean.len() {
        base64::engine::general_purpose::STANDARD
            .decode_vec(&clean[start..], &mut out)
            .ok()?;
    }
    Some(out)
}

/// The one request message of a unary or server-streaming call, checked
/// as native gRPC checks it, with the same statuses and messages.
pub fn single_message(frames: &[u8], max: usize) -> Result<Vec<u8>, Status> {
    let mut deframer = Deframer::default();
    deframer.push(frames);
    let first = deframer.next(max).map_err(deframe_status)?;
    let Some(message) = first else {
        return Err(if deframer.pending() > 0 {
            Status::new(Code::Internal, "the stream ended inside a message")
        } else {
            Status::new(Code::Internal, "the request has no message")
        });
    };
    match deframer.next(max) {
        Ok(None) if deframer.pending() == 0 => Ok(message),
        Ok(None) => Err(Status::new(
            Code::Internal,
            "the stream ended inside a message",
        )),
        Ok(Some(_)) => Err(Status::new(
            Code::Unimplemented,
            "more than one request message for a method that takes one",
        )),
        Err(e) => Err(deframe_status(e)),
    }
}

/// The status native gRPC answers a frame it refuses with.
fn deframe_status(e: DeframeError) -> Status {
    match e {
        DeframeError::Compressed => Status::new(
            Code::Unimplemented,
            "compressed messages are not accepted (grpc-accept-encoding: identity)",
        ),
        DeframeError::TooLarge { len, max } => Status::new(
            Code::ResourceExhausted,
            format!("message of {len} bytes is larger than the limit of {max}"),
        ),
    }
}

/// Appends a data frame holding `message`.
pub fn put_message(out: &mut Vec<u8>, message: &[u8]) {
    g::put_message(out, message);
}

/// The trailer frame that ends every response with a body: flag 0x80, then
/// an HTTP/1 header block (lower-case names, no final blank line).
pub fn trailer_frame(status: &Status) -> Vec<u8> {
    let mut block = format!("grpc-status: {}\r\n", status.code.number());
    if !status.message.is_empty() {
        block.push_str("grpc-message: ");
        block.push_str(&g::percent_encode(&status.message));
        block.push_str("\r\n");
    }
    let mut out = Vec::with_capacity(g::PREFIX_LEN + block.len());
    out.push(TRAILER_FLAG);
    out.extend_from_slice(&(block.len() as u32).to_be_bytes());
    out.extend_from_slice(block.as_bytes());
    out
}

/// The headers of a trailers-only answer (an error before any message):
/// the status in the HTTP headers and an empty body.
pub fn status_headers(status: &Status) -> Vec<(&'static str, String)> {
    let mut out = vec![("grpc-status", status.code.number().to_string())];
    if !status.message.is_empty() {
        out.push(("grpc-message", g::percent_encode(&status.message)));
    }
    out
}

/// Reads `grpc-timeout`; `Err` with native gRPC's status when malformed.
pub fn timeout(value: Option<&str>) -> Result<Option<std::time::Duration>, Status> {
    match value {
        None => Ok(None),
        Some(v) => g::parse_timeout(v.trim().as_bytes())
            .map(Some)
            .ok_or_else(|| Status::new(Code::Internal, "malformed grpc-timeout")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_message(&mut out, message);
        out
    }

    #[test]
    fn content_types_name_their_mode() {
        assert_eq!(Mode::of("application/grpc-web"), Some(Mode::Binary));
        assert_eq!(Mode::of("application/grpc-web+proto"), Some(Mode::Binary));
        assert_eq!(
            Mode::of("Application/GRPC-Web-Text; charset=utf-8"),
            Some(Mode::Text)
        );
        assert_eq!(
            Mode::of("application/grpc-web-text+proto"),
            Some(Mode::Text)
        );
        for other in [
            "application/grpc-web+json",
            "application/json",
            "",
            "application/grpc",
        ] {
            assert_eq!(Mode::of(other), None, "{other}");
        }
    }

    #[test]
    fn one_message_is_taken_and_every_bad_body_gets_natives_status() {
        assert_eq!(single_message(&frame(b"abc"), 10), Ok(b"abc".to_vec()));
        assert_eq!(single_message(&frame(b""), 10), Ok(Vec::new()));
        let code = |body: &[u8]| single_message(body, 10).unwrap_err();
        assert_eq!(code(b"").message, "the request has no message");
        assert_eq!(
            code(&[0, 0, 0]).message,
            "the stream ended inside a message"
        );
        let cut = &frame(b"abcdef")[..7];
        assert_eq!(
            code(cut),
            Status::new(Code::Internal, "the stream ended inside a message")
        );
        assert_eq!(code(&[1, 0, 0, 0, 1, 9]).code, Code::Unimplemented);
        assert_eq!(
            code(&frame(b"eleven byte")),
            Status::new(
                Code::ResourceExhausted,
                "message of 11 bytes is larger than the limit of 10"
            )
        );
        let two = [frame(b"a"), frame(b"b")].concat();
        assert_eq!(code(&two).code, Code::Unimplemented);
        let tail = [frame(b"a"), vec![0, 0]].concat();
        assert_eq!(code(&tail).code, Code::Internal);
        // A trailer-flagged frame from a client is not a message either.
        assert_eq!(code(&[0x80, 0, 0, 0, 0]).code, Code::Unimplemented);
    }

    #[test]
    fn the_trailer_frame_is_flagged_and_percent_encodes_its_message() {
        let t = trailer_frame(&Status::ok());
        assert_eq!(t[0], TRAILER_FLAG);
        assert_eq!(&t[5..], b"grpc-status: 0\r\n");
        assert_eq!(
            u32::from_be_bytes([t[1], t[2], t[3], t[4]]) as usize,
            t.len() - 5
        );
        let t = trailer_frame(&Status::new(Code::ResourceExhausted, "too big: 100%\n"));
        assert_eq!(
            std::str::from_utf8(&t[5..]).unwrap(),
            "grpc-status: 8\r\ngrpc-message: too big: 100%25%0A\r\n"
        );
        let h = status_headers(&Status::new(Code::InvalidArgument, "user is required"));
        assert_eq!(
            h,
            vec![
                ("grpc-status", "3".to_string()),
                ("grpc-message", "user is required".to_string())
            ]
        );
    }

    #[test]
    fn text_bodies_decode_piece_by_piece_and_encode_per_flush() {
        let body = [frame(b"hi"), frame(b"there")].concat();
        let whole = Mode::Text.encode(body.clone());
        assert_eq!(decode_text(&whole), Some(body.clone()));
        // Two flushes, each padded on its own, read as one body.
        let mut two = Mode::Text.encode(frame(b"hi"));
        two.extend(Mode::Text.encode(frame(b"there")));
        assert!(two[..12].contains(&b'='), "the first piece is padded");
        assert_eq!(decode_text(&two), Some(body));
        assert_eq!(decode_text(b"ab\r\ncd"), Some(vec![0x69, 0xb7, 0x1d]));
        for bad in [&b"abc"[..], b"a=bc", b"!!!!"] {
            assert_eq!(decode_text(bad), None, "{bad:?}");
        }
        assert_eq!(
            Mode::Text.decode_body(b"%%%%").unwrap_err().code,
            Code::Internal
        );
        assert_eq!(Mode::Binary.encode(vec![1, 2]), vec![1, 2]);
    }

    #[test]
    fn timeouts_are_natives() {
        assert_eq!(timeout(None), Ok(None));
        assert_eq!(
            timeout(Some("5000m")),
            Ok(Some(std::time::Duration::from_secs(5)))
        );
        assert_eq!(
            timeout(Some("soon")).unwrap_err().message,
            "malformed grpc-timeout"
        );
    }
}
