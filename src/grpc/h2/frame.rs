//! HTTP/2 frames (RFC 9113 section 4 and 6): the 9-byte header, each
//! frame type's payload checks, and writers for the frames a peer sends.
//! Pure: bytes in, values out; no socket, no state beyond one frame. The
//! connection state machine (`conn`) decides what a valid frame means.

use std::fmt;

/// The client connection preface (RFC 9113 section 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Every frame starts with this many bytes.
pub const HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE's initial value and lower bound.
pub const DEFAULT_MAX_FRAME: u32 = 16_384;
/// SETTINGS_MAX_FRAME_SIZE's upper bound.
pub const MAX_FRAME_LIMIT: u32 = (1 << 24) - 1;
/// Flow-control windows start here (RFC 9113 section 6.9.2).
pub const DEFAULT_WINDOW: u32 = 65_535;
/// The largest flow-control window.
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// HTTP/2 error codes (RFC 9113 section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NoError = 0x0,
    ProtocolError = 0x1,
    InternalError = 0x2,
    FlowControlError = 0x3,
    SettingsTimeout = 0x4,
    StreamClosed = 0x5,
    FrameSizeError = 0x6,
    RefusedStream = 0x7,
    Cancel = 0x8,
    CompressionError = 0x9,
    ConnectError = 0xa,
    EnhanceYourCalm = 0xb,
    InadequateSecurity = 0xc,
    Http11Required = 0xd,
}

impl ErrorCode {
    pub fn from_u32(n: u32) -> ErrorCode {
        use ErrorCode::*;
        [
            NoError,
            ProtocolError,
            InternalError,
            FlowControlError,
            SettingsTimeout,
            StreamClosed,
            FrameSizeError,
            RefusedStream,
            Cancel,
            CompressionError,
            ConnectError,
            EnhanceYourCalm,
            InadequateSecurity,
            Http11Required,
        ]
        .get(n as usize)
        .copied()
        // Unknown codes must not trigger special behaviour (section 7).
        .unwrap_or(InternalError)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A frame the peer got wrong: the whole connection (answered with GOAWAY)
/// or one stream (answered with RST_STREAM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum H2Error {
    Connection(ErrorCode, &'static str),
    Stream(u32, ErrorCode),
}

/// A frame's fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Head {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Head {
        Head {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            // The reserved bit is ignored on receipt.
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & MAX_WINDOW,
        }
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// A parsed frame. Payload slices borrow from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Data {
        stream: u32,
        end_stream: bool,
        data: &'a [u8],
        /// The whole payload, padding included: what flow control counts.
        flow_len: u32,
    },
    Headers {
        stream: u32,
        end_stream: bool,
        end_headers: bool,
        /// The stream this one depends on, if the frame carries a priority.
        depends_on: Option<u32>,
        block: &'a [u8],
    },
    Priority {
        stream: u32,
        depends_on: u32,
    },
    RstStream {
        stream: u32,
        code: ErrorCode,
    },
    Settings {
        ack: bool,
        /// `(identifier, value)` pairs in order; unknown ones included.
        params: Vec<(u16, u32)>,
    },
    PushPromise,
    Ping {
        ack: bool,
        data: [u8; 8],
    },
    GoAway {
        last_stream: u32,
        code: ErrorCode,
    },
    WindowUpdate {
        stream: u32,
        increment: u32,
    },
    Continuation {
        stream: u32,
        end_headers: bool,
        block: &'a [u8],
    },
    /// A frame type this implementation does not know: ignored (section 4.1).
    Unknown,
}

use ErrorCode::{FlowControlError, FrameSizeError, ProtocolError};

fn conn(code: ErrorCode, why: &'static str) -> H2Error {
    H2Error::Connection(code, why)
}

/// Strips padding (section 6.1): the pad length byte and the padding.
fn unpad<'a>(head: &Head, payload: &'a [u8]) -> Result<&'a [u8], H2Error> {
    if !head.has(flag::PADDED) {
        return Ok(payload);
    }
    let (&pad, rest) = payload
        .split_first()
        .ok_or_else(|| conn(FrameSizeError, "padded frame without pad length"))?;
    let keep = rest
        .len()
        .checked_sub(pad as usize)
        .ok_or_else(|| conn(ProtocolError, "padding exceeds the payload"))?;
    Ok(&rest[..keep])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Checks one frame's payload against its type's rules (section 6) and
/// returns it as a [`Frame`]. `payload.len()` is `head.len`; the caller has
/// checked it against SETTINGS_MAX_FRAME_SIZE.
pub fn parse<'a>(head: &Head, payload: &'a [u8]) -> Result<Frame<'a>, H2Error> {
    let stream = head.stream;
    let needs_stream = |what: &'static str| {
        if stream == 0 {
            Err(conn(ProtocolError, what))
        } else {
            Ok(())
        }
    };
    let on_connection = |what: &'static str| {
        if stream != 0 {
            Err(conn(ProtocolError, what))
        } else {
            Ok(())
        }
    };
    Ok(match head.kind {
        kind::DATA => {
            needs_stream("DATA on stream 0")?;
            Frame::Data {
                stream,
                end_stream: head.has(flag::END_STREAM),
                data: unpad(head, payload)?,
                flow_len: head.len,
            }
        }
        kind::HEADERS => {
            needs_stream("HEADERS on stream 0")?;
            let mut block = unpad(head, payload)?;
            let mut depends_on = None;
            if head.has(flag::PRIORITY) {
                if block.len() < 5 {
                    return Err(conn(FrameSizeError, "HEADERS priority too short"));
                }
                let dep = u32_at(block, 0) & MAX_WINDOW;
                if dep == stream {
                    return Err(H2Error::Stream(stream, ProtocolError));
                }
                depends_on = Some(dep);
                block = &block[5..];
            }
            Frame::Headers {
                stream,
                end_stream: head.has(flag::END_STREAM),
                end_headers: head.has(flag::END_HEADERS),
                depends_on,
                block,
            }
        }
        kind::PRIORITY => {
            needs_stream("PRIORITY on stream 0")?;
            if payload.len() != 5 {
                return Err(H2Error::Stream(stream, FrameSizeError));
            }
            let depends_on = u32_at(payload, 0) & MAX_WINDOW;
            if depends_on == stream {
                return Err(H2Error::Stream(stream, ProtocolError));
            }
            Frame::Priority { stream, depends_on }
        }
        kind::RST_STREAM => {
            needs_stream("RST_STREAM on stream 0")?;
            if payload.len() != 4 {
                return Err(conn(FrameSizeError, "RST_STREAM must be 4 octets"));
            }
            Frame::RstStream {
                stream,
                code: ErrorCode::from_u32(u32_at(payload, 0)),
            }
        }
        kind::SETTINGS => {
            on_connection("SETTINGS on a stream")?;
            let ack = head.has(flag::ACK);
            if ack && !payload.is_empty() {
                return Err(conn(FrameSizeError, "SETTINGS ack with a payload"));
            }
            if !payload.len().is_multiple_of(6) {
                return Err(conn(FrameSizeError, "SETTINGS length not a multiple of 6"));
            }
            let params = payload
                .chunks_exact(6)
                .map(|p| (u16::from_be_bytes([p[0], p[1]]), u32_at(p, 2)))
                .collect::<Vec<_>>();
            for &(id, value) in &params {
                match id {
                    setting::ENABLE_PUSH if value > 1 => {
                        return Err(conn(ProtocolError, "ENABLE_PUSH must be 0 or 1"))
                    }
                    setting::INITIAL_WINDOW_SIZE if value > MAX_WINDOW => {
                        return Err(conn(FlowControlError, "INITIAL_WINDOW_SIZE too large"))
                    }
                    setting::MAX_FRAME_SIZE
                        if !(DEFAULT_MAX_FRAME..=MAX_FRAME_LIMIT).contains(&value) =>
                    {
                        return Err(conn(ProtocolError, "MAX_FRAME_SIZE out of range"))
                    }
                    _ => {}
                }
            }
            Frame::Settings { ack, params }
        }
        // A client must not push (section 8.4).
        kind::PUSH_PROMISE => return Err(conn(ProtocolError, "PUSH_PROMISE from a client")),
        kind::PING => {
            on_connection("PING on a stream")?;
            let data: [u8; 8] = payload
                .try_into()
                .map_err(|_| conn(FrameSizeError, "PING must be 8 octets"))?;
            Frame::Ping {
                ack: head.has(flag::ACK),
                data,
            }
        }
        kind::GOAWAY => {
            on_connection("GOAWAY on a stream")?;
            if payload.len() < 8 {
                return Err(conn(FrameSizeError, "GOAWAY shorter than 8 octets"));
            }
            Frame::GoAway {
                last_stream: u32_at(payload, 0) & MAX_WINDOW,
                code: ErrorCode::from_u32(u32_at(payload, 4)),
            }
        }
        kind::WINDOW_UPDATE => {
            if payload.len() != 4 {
                return Err(conn(FrameSizeError, "WINDOW_UPDATE must be 4 octets"));
            }
            let increment = u32_at(payload, 0) & MAX_WINDOW;
            if increment == 0 {
                return Err(if stream == 0 {
                    conn(ProtocolError, "WINDOW_UPDATE of 0 on the connection")
                } else {
                    H2Error::Stream(stream, ProtocolError)
                });
            }
            Frame::WindowUpdate { stream, increment }
        }
        kind::CONTINUATION => {
            needs_stream("CONTINUATION on stream 0")?;
            Frame::Continuation {
                stream,
                end_headers: head.has(flag::END_HEADERS),
                block: payload,
            }
        }
        _ => Frame::Unknown,
    })
}

/// Appends a frame header.
pub fn put_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(len <= MAX_FRAME_LIMIT as usize);
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & MAX_WINDOW).to_be_bytes());
}

/// Appends a SETTINGS frame with `params`.
pub fn put_settings(out: &mut Vec<u8>, params: &[(u16, u32)]) {
    put_head(out, params.len() * 6, kind::SETTINGS, 0, 0);
    for (id, value) in params {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

pub fn put_settings_ack(out: &mut Vec<u8>) {
    put_head(out, 0, kind::SETTINGS, flag::ACK, 0);
}

pub fn put_ping(out: &mut Vec<u8>, ack: bool, data: [u8; 8]) {
    put_head(out, 8, kind::PING, if ack { flag::ACK } else { 0 }, 0);
    out.extend_from_slice(&data);
}

pub fn put_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    put_head(out, 4, kind::WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&(increment & MAX_WINDOW).to_be_bytes());
}

pub fn put_rst_stream(out: &mut Vec<u8>, stream: u32, code: ErrorCode) {
    put_head(out, 4, kind::RST_STREAM, 0, stream);
    out.extend_from_slice(&(code as u32).to_be_bytes());
}

pub fn put_goaway(out: &mut Vec<u8>, last_stream: u32, code: ErrorCode, debug: &[u8]) {
    put_head(out, 8 + debug.len(), kind::GOAWAY, 0, 0);
    out.extend_from_slice(&(last_stream & MAX_WINDOW).to_be_bytes());
    out.extend_from_slice(&(code as u32).to_be_bytes());
    out.extend_from_slice(debug);
}

/// Appends a header block as HEADERS plus as many CONTINUATION frames as
/// `max_frame` needs.
pub fn put_headers(
    out: &mut Vec<u8>,
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame: usize,
) {
    let mut chunks = block.chunks(max_frame.max(1)).peekable();
    let first = chunks.next().unwrap_or(&[]);
    let mut flags = if end_stream { flag::END_STREAM } else { 0 };
    if chunks.peek().is_none() {
        flags |= flag::END_HEADERS;
    }
    put_head(out, first.len(), kind::HEADERS, flags, stream);
    out.extend_from_slice(first);
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            flag::END_HEADERS
        } else {
            0
        };
        put_head(out, chunk.len(), kind::CONTINUATION, flags, stream);
        out.extend_from_slice(chunk);
    }
}

/// Appends one DATA frame's header (the caller appends the payload).
pub fn put_data_head(out: &mut Vec<u8>, stream: u32, len: usize, end_stream: bool) {
    let flags = if end_stream { flag::END_STREAM } else { 0 };
    put_head(out, len, kind::DATA, flags, stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(bytes: &[u8]) -> Head {
        Head::parse(bytes[..HEADER_LEN].try_into().unwrap())
    }

    fn roundtrip(bytes: &[u8]) -> Result<Frame<'_>, H2Error> {
        let head = head_of(bytes);
        assert_eq!(head.len as usize, bytes.len() - HEADER_LEN);
        parse(&head, &bytes[HEADER_LEN..])
    }

    #[test]
    fn written_frames_parse_back() {
        let mut b = Vec::new();
        put_ping(&mut b, true, *b"12345678");
        assert_eq!(
            roundtrip(&b),
            Ok(Frame::Ping {
                ack: true,
                data: *b"12345678"
            })
        );
        b.clear();
        put_window_update(&mut b, 7, 1000);
        assert_eq!(
            roundtrip(&b),
            Ok(Frame::WindowUpdate {
                stream: 7,
                increment: 1000
            })
        );
        b.clear();
        put_rst_stream(&mut b, 3, ErrorCode::Cancel);
        assert_eq!(
            roundtrip(&b),
            Ok(Frame::RstStream {
                stream: 3,
                code: ErrorCode::Cancel
            })
        );
        b.clear();
        put_settings(&mut b, &[(setting::MAX_CONCURRENT_STREAMS, 100)]);
        assert_eq!(
            roundtrip(&b),
            Ok(Frame::Settings {
                ack: false,
                params: vec![(3, 100)]
            })
        );
        b.clear();
        put_goaway(&mut b, 5, ErrorCode::EnhanceYourCalm, b"calm");
        assert_eq!(
            roundtrip(&b),
            Ok(Frame::GoAway {
                last_stream: 5,
                code: ErrorCode::EnhanceYourCalm
            })
        );
    }

    #[test]
    fn a_long_header_block_becomes_continuations() {
        let block: Vec<u8> = (0..40u8).collect();
        let mut b = Vec::new();
        put_headers(&mut b, 1, &block, true, 16);
        let first = head_of(&b);
        assert_eq!((first.kind, first.len), (kind::HEADERS, 16));
        assert_eq!(first.flags, flag::END_STREAM);
        let second = head_of(&b[9 + 16..]);
        assert_eq!((second.kind, second.flags), (kind::CONTINUATION, 0));
        let third = head_of(&b[2 * (9 + 16)..]);
        assert_eq!(
            (third.kind, third.flags, third.len),
            (kind::CONTINUATION, flag::END_HEADERS, 8)
        );
    }

    #[test]
    fn padding_is_stripped_and_checked() {
        // DATA, PADDED, stream 1: pad length 2, "ab", two pad bytes.
        let b = [0, 0, 5, 0, 0x8, 0, 0, 0, 1, 2, b'a', b'b', 0, 0];
        assert_eq!(
            roundtrip(&b),
            Ok(Frame::Data {
                stream: 1,
                end_stream: false,
                data: b"ab",
                flow_len: 5
            })
        );
        let bad = [0, 0, 3, 0, 0x8, 0, 0, 0, 1, 5, b'a', b'b'];
        assert!(matches!(
            roundtrip(&bad),
            Err(H2Error::Connection(ErrorCode::ProtocolError, _))
        ));
    }

    #[test]
    fn wrong_sizes_and_streams_are_errors() {
        let cases: &[(&[u8], ErrorCode)] = &[
            (
                &[0, 0, 7, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7],
                FrameSizeError,
            ),
            (
                &[0, 0, 8, 6, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8],
                ProtocolError,
            ),
            (&[0, 0, 0, 0, 0, 0, 0, 0, 0], ProtocolError),
            (&[0, 0, 3, 3, 0, 0, 0, 0, 1, 0, 0, 0], FrameSizeError),
            (&[0, 0, 1, 4, 1, 0, 0, 0, 0, 0], FrameSizeError),
            (&[0, 0, 4, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0], FrameSizeError),
            (
                &[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 2],
                ProtocolError,
            ),
            (
                &[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 4, 0x80, 0, 0, 0],
                FlowControlError,
            ),
            (
                &[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 1],
                ProtocolError,
            ),
            (&[0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0], ProtocolError),
            (&[0, 0, 0, 5, 0, 0, 0, 0, 1], ProtocolError),
        ];
        for (bytes, code) in cases {
            match roundtrip(bytes) {
                Err(H2Error::Connection(c, _)) => assert_eq!(c, *code, "{bytes:?}"),
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
        // A zero increment on a stream and a stream that depends on itself
        // are errors of that stream only.
        assert_eq!(
            roundtrip(&[0, 0, 4, 8, 0, 0, 0, 0, 3, 0, 0, 0, 0]),
            Err(H2Error::Stream(3, ProtocolError))
        );
        assert_eq!(
            roundtrip(&[0, 0, 5, 2, 0, 0, 0, 0, 3, 0, 0, 0, 3, 0]),
            Err(H2Error::Stream(3, ProtocolError))
        );
    }

    #[test]
    fn unknown_types_and_codes_are_tolerated() {
        assert_eq!(
            roundtrip(&[0, 0, 1, 0xee, 0, 0, 0, 0, 1, 9]),
            Ok(Frame::Unknown)
        );
        assert_eq!(ErrorCode::from_u32(0xdead), ErrorCode::InternalError);
        assert_eq!(ErrorCode::from_u32(11), ErrorCode::EnhanceYourCalm);
    }

    #[test]
    fn the_reserved_bit_is_ignored() {
        let h = head_of(&[0, 0, 0, 1, 4, 0x80, 0, 0, 1]);
        assert_eq!(h.stream, 1);
    }
}
