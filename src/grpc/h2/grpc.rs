//! gRPC over HTTP/2 (grpc/grpc `doc/PROTOCOL-HTTP2.md`), the parts both a
//! server and a client need: length-prefixed messages, `grpc-timeout`,
//! and the percent-encoding of `grpc-message`. Pure.

use std::time::Duration;

/// The 5-byte prefix of a gRPC message: compressed flag, then length.
pub const PREFIX_LEN: usize = 5;

/// Appends `message` with its prefix (uncompressed).
pub fn put_message(out: &mut Vec<u8>, message: &[u8]) {
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
}

/// The prefix of an uncompressed message of `len` bytes.
pub fn prefix(len: usize) -> [u8; PREFIX_LEN] {
    let l = (len as u32).to_be_bytes();
    [0, l[0], l[1], l[2], l[3]]
}

/// Why a stream's bytes are not a sequence of messages we accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeframeError {
    /// The compressed flag is set: we accept identity only.
    Compressed,
    /// Longer than the limit (`--max-message-bytes` and its envelope).
    TooLarge { len: usize, max: usize },
}

/// Collects a stream's DATA into messages. Holds at most one message being
/// assembled plus what one DATA frame brought: the caller bounds how much
/// arrives before it takes them.
#[derive(Default)]
pub struct Deframer {
    buf: Vec<u8>,
    /// Where the next message starts in `buf`: taking a message moves it,
    /// not the bytes after it (draining the front per message made a DATA
    /// frame of 100 small messages cost 100 shifts of the rest, 14% of the
    /// load tool's CPU).
    start: usize,
}

impl Deframer {
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, if there is one.
    pub fn next(&mut self, max: usize) -> Result<Option<Vec<u8>>, DeframeError> {
        let rest = &self.buf[self.start..];
        if rest.len() < PREFIX_LEN {
            return Ok(None);
        }
        if rest[0] != 0 {
            return Err(DeframeError::Compressed);
        }
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if len > max {
            return Err(DeframeError::TooLarge { len, max });
        }
        if rest.len() < PREFIX_LEN + len {
            return Ok(None);
        }
        let message = rest[PREFIX_LEN..PREFIX_LEN + len].to_vec();
        self.start += PREFIX_LEN + len;
        if self.start == self.buf.len() {
            // An idle stream keeps no buffer.
            self.buf = Vec::new();
            self.start = 0;
        }
        Ok(Some(message))
    }

    /// Bytes of a message not yet complete (a stream that ends here was
    /// cut short).
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// Parses `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a timeout for `grpc-timeout` (8 digits at most, in whole
/// milliseconds rounded up, or whole seconds past 27 hours).
pub fn format_timeout(d: Duration) -> String {
    let ms = d.as_nanos().div_ceil(1_000_000).max(1);
    if ms < 100_000_000 {
        format!("{ms}m")
    } else {
        format!("{}S", d.as_secs().min(99_999_999))
    }
}

/// Percent-encodes `grpc-message`: bytes outside printable ASCII, and `%`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `grpc-message`; a malformed escape is kept as it is.
pub fn percent_decode(v: &[u8]) -> String {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' && i + 2 < v.len() {
            let hex = std::str::from_utf8(&v[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_across_data_frames_come_out_whole() {
        let mut wire = Vec::new();
        put_message(&mut wire, b"hello");
        put_message(&mut wire, b"");
        put_message(&mut wire, b"world!");
        let mut d = Deframer::default();
        let mut got = Vec::new();
        for byte in &wire {
            d.push(std::slice::from_ref(byte));
            while let Some(m) = d.next(100).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![b"hello".to_vec(), vec![], b"world!".to_vec()]);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn compressed_and_oversized_messages_are_refused() {
        let mut d = Deframer::default();
        d.push(&[1, 0, 0, 0, 1, 0]);
        assert_eq!(d.next(10), Err(DeframeError::Compressed));
        let mut d = Deframer::default();
        d.push(&prefix(11));
        assert_eq!(d.next(10), Err(DeframeError::TooLarge { len: 11, max: 10 }));
    }

    #[test]
    fn timeouts_parse_as_the_spec_says() {
        assert_eq!(parse_timeout(b"1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout(b"5n"), Some(Duration::from_nanos(5)));
        for bad in [&b""[..], b"S", b"123456789S", b"1x", b"-1S", b"1.5S"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_timeout(format_timeout(Duration::from_secs(20)).as_bytes()),
            Some(Duration::from_secs(20))
        );
    }

    #[test]
    fn messages_survive_percent_encoding() {
        let s = "caf\u{e9} 100% \"done\"\n";
        let e = percent_encode(s);
        assert!(e.bytes().all(|b| (0x20..=0x7e).contains(&b)));
        assert_eq!(percent_decode(e.as_bytes()), s);
        assert_eq!(percent_decode(b"50%"), "50%");
        assert_eq!(percent_decode(b"%zz"), "%zz");
    }
}
