//! HPACK (RFC 7541) for both directions of a connection.
//!
//! Decoding goes through `loona-hpack`, a maintained fork of the `hpack`
//! crate (Huffman, the dynamic table, integer bounds), with our limits
//! around it: the table may not grow past what we advertised, and a header
//! list past SETTINGS_MAX_HEADER_LIST_SIZE is refused after the block is
//! decoded (the table must stay in step with the peer's) without keeping
//! more than the limit in memory: an HPACK bomb costs counting, not bytes.
//!
//! Encoding is ours and stateless: static-table names and literals that are
//! never indexed, no Huffman. What a gRPC server sends is a few short
//! fields per response, so the dynamic table would save a few bytes at the
//! cost of state shared by every stream's writer; without it any thread
//! can encode a block, and the peer's table size settings cannot break us.

/// Our decoder's dynamic table size: SETTINGS_HEADER_TABLE_SIZE's default,
/// which we do not change.
pub const TABLE_SIZE: usize = 4096;

/// Why a header block was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Not valid HPACK: the connection's decoding state is lost
    /// (COMPRESSION_ERROR).
    Compression(String),
    /// Valid, but the decoded list is larger than allowed.
    TooLarge,
}

pub struct Decoder {
    inner: loona_hpack::Decoder<'static>,
    max_list: usize,
}

impl Decoder {
    /// A decoder that refuses header lists over `max_list` bytes (counted
    /// as RFC 9113 section 6.5.2 does: name + value + 32 per field).
    pub fn new(max_list: usize) -> Decoder {
        let mut inner = loona_hpack::Decoder::new();
        inner.set_max_allowed_table_size(TABLE_SIZE);
        Decoder { inner, max_list }
    }

    /// Decodes one complete header block, calling `each` per field in
    /// order. Stops calling `each` once the list is over the limit, but
    /// decodes to the end so the dynamic table stays in step.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut each: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), DecodeError> {
        let mut size = 0usize;
        let max = self.max_list;
        self.inner
            .decode_with_cb(block, |name, value| {
                size = size.saturating_add(name.len() + value.len() + 32);
                if size <= max {
                    each(&name, &value);
                }
            })
            .map_err(|e| DecodeError::Compression(e.to_string()))?;
        if size > max {
            return Err(DecodeError::TooLarge);
        }
        Ok(())
    }
}

/// Appends an HPACK integer with an `n`-bit prefix; `first` holds the bits
/// above the prefix.
fn put_int(out: &mut Vec<u8>, first: u8, n: u8, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// Static-table entries the encoder names by index (RFC 7541 appendix A).
pub mod index {
    pub const AUTHORITY: usize = 1;
    pub const METHOD_POST: usize = 3;
    pub const PATH: usize = 4;
    pub const SCHEME_HTTP: usize = 6;
    pub const SCHEME_HTTPS: usize = 7;
    pub const STATUS_200: usize = 8;
    pub const CONTENT_TYPE: usize = 31;
}

/// Builds a header block field by field.
#[derive(Default)]
pub struct Block {
    pub bytes: Vec<u8>,
}

impl Block {
    pub fn new() -> Block {
        Block::default()
    }

    /// A field that is all in the static table (`:status: 200`).
    pub fn indexed(mut self, index: usize) -> Block {
        put_int(&mut self.bytes, 0x80, 7, index);
        self
    }

    /// A value for a static-table name, never indexed.
    pub fn named(mut self, name_index: usize, value: &[u8]) -> Block {
        put_int(&mut self.bytes, 0x10, 4, name_index);
        put_string(&mut self.bytes, value);
        self
    }

    /// A literal name and value, never indexed.
    pub fn literal(mut self, name: &[u8], value: &[u8]) -> Block {
        self.bytes.push(0x10);
        put_string(&mut self.bytes, name);
        put_string(&mut self.bytes, value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, DecodeError> {
        let mut out = Vec::new();
        d.decode(block, |n, v| {
            out.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        })?;
        Ok(out)
    }

    #[test]
    fn what_we_encode_a_standard_decoder_reads() {
        let long = "x".repeat(300);
        let block = Block::new()
            .indexed(index::STATUS_200)
            .named(index::CONTENT_TYPE, b"application/grpc")
            .literal(b"grpc-message", long.as_bytes());
        let got = decode_all(&mut Decoder::new(64 * 1024), &block.bytes).unwrap();
        assert_eq!(
            got,
            vec![
                (":status".into(), "200".into()),
                ("content-type".into(), "application/grpc".into()),
                ("grpc-message".into(), long),
            ]
        );
    }

    #[test]
    fn integers_use_continuation_bytes_past_the_prefix() {
        let mut b = Vec::new();
        put_int(&mut b, 0, 5, 1337);
        assert_eq!(b, [31, 154, 10]); // RFC 7541 C.1.2
        b.clear();
        put_int(&mut b, 0, 5, 10);
        assert_eq!(b, [10]);
    }

    #[test]
    fn a_bomb_is_counted_not_kept() {
        // One 4,000-byte field added to the dynamic table, then referenced
        // 1,000 times: 4 MB decoded from a block of about 5 KB.
        let mut block = vec![0x40];
        put_string(&mut block, b"bomb");
        put_string(&mut block, &[b'b'; 4000]);
        block.extend(std::iter::repeat(0x80 | 62).take(1000));
        let mut d = Decoder::new(16 * 1024);
        let mut seen = 0usize;
        let r = d.decode(&block, |n, v| seen += n.len() + v.len());
        assert_eq!(r, Err(DecodeError::TooLarge));
        assert!(seen <= 16 * 1024, "kept {seen} bytes");
    }

    #[test]
    fn garbage_is_a_compression_error() {
        let mut d = Decoder::new(1024);
        // Index 0 does not exist; index 70 is past both tables.
        assert!(matches!(decode_all(&mut d, &[0x80]), Err(DecodeError::Compression(_))));
        assert!(matches!(decode_all(&mut d, &[0xc6]), Err(DecodeError::Compression(_))));
        // A table size update past what we allow.
        assert!(matches!(
            decode_all(&mut d, &[0x3f, 0xe1, 0xff, 0x03]),
            Err(DecodeError::Compression(_))
        ));
    }
}
