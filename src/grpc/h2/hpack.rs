//! HPACK (RFC 7541) for both directions of a connection. Ours, both ways.
//!
//! Decoding: integers, strings, Huffman, the static and dynamic tables,
//! with our limits: the table may not grow past what we advertised, and a
//! header list past SETTINGS_MAX_HEADER_LIST_SIZE is refused after the
//! block is decoded (the table must stay in step with the peer's) without
//! keeping more than the limit in memory: an HPACK bomb costs counting,
//! not bytes. Why not a crate: `loona-hpack` (the maintained fork of
//! `hpack`) built its Huffman decoding table in a HashMap for every
//! Huffman string, which was 80% of the server's CPU under `h2load`
//! (26k unary calls/s against grpc-go's 64k); the decoder here is about
//! 250 lines and builds its tables once.
//!
//! Encoding is stateless: static-table names and literals that are never
//! indexed, no Huffman. What a gRPC server sends is a few short fields per
//! response, so the dynamic table would save a few bytes at the cost of
//! state shared by every stream's writer; without it any thread can
//! encode a block, and the peer's table size settings cannot break us.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::OnceLock;

use super::hpack_tables::{HUFFMAN_CODES, STATIC_TABLE};

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

fn bad(why: &str) -> DecodeError {
    DecodeError::Compression(why.to_string())
}

/// Bytes a table entry counts for (RFC 7541 section 4.1).
fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

pub struct Decoder {
    /// Newest first: index 62 is the front.
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max_size: usize,
    max_list: usize,
    /// The last long Huffman-coded literal and what it decoded to.
    last_long: Remembered,
}

/// One long Huffman-coded literal, as it came and decoded. A gRPC client
/// sends its `authorization` token with every call as a never-indexed
/// literal (RFC 7541 7.1.3 asks that of credentials), so without this
/// every call decodes the same few hundred bytes again: measured, 20% of
/// the server's CPU on unary calls with a 600-byte RS256 token, even with
/// the table decoder (BENCHMARKS.md). A comparison of the coded bytes is
/// a memcmp.
#[derive(Default)]
struct Remembered {
    coded: Vec<u8>,
    decoded: Vec<u8>,
}

/// Literals at least this long are remembered (shorter ones decode in
/// less time than the comparison and the copy take).
const REMEMBER_FROM: usize = 64;
/// ... and at most this long, so that a connection holds at most twice
/// this (a bearer token is at most 8 KiB).
const REMEMBER_UP_TO: usize = 8 * 1024;

impl Remembered {
    /// Reads a string literal like [`string`], answering a repeat of the
    /// last long Huffman-coded one from memory.
    fn string<'a>(&mut self, b: &'a [u8], at: &mut usize) -> Result<Cow<'a, [u8]>, DecodeError> {
        let (coded, huffman) = literal(b, at)?;
        if !huffman {
            return Ok(Cow::Borrowed(coded));
        }
        if !(REMEMBER_FROM..=REMEMBER_UP_TO).contains(&coded.len()) {
            return huffman_decode(coded).map(Cow::Owned);
        }
        if coded != self.coded.as_slice() {
            self.decoded = huffman_decode(coded)?;
            self.coded.clear();
            self.coded.extend_from_slice(coded);
        }
        Ok(Cow::Owned(self.decoded.clone()))
    }
}

impl Decoder {
    /// A decoder that refuses header lists over `max_list` bytes (counted
    /// as RFC 9113 section 6.5.2 does: name + value + 32 per field).
    pub fn new(max_list: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: TABLE_SIZE,
            max_list,
            last_long: Remembered::default(),
        }
    }

    fn evict_to(&mut self, max: usize) {
        while self.size > max {
            let Some((n, v)) = self.table.pop_back() else {
                break;
            };
            self.size -= entry_size(&n, &v);
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = entry_size(&name, &value);
        // An entry larger than the table empties it and is not added.
        self.evict_to(self.max_size.saturating_sub(size));
        if size <= self.max_size {
            self.size += size;
            self.table.push_front((name, value));
        }
    }

    fn field(&self, index: usize) -> Result<(&[u8], &[u8]), DecodeError> {
        match index {
            0 => Err(bad("index 0")),
            i if i <= STATIC_TABLE.len() => Ok(STATIC_TABLE[i - 1]),
            i => self
                .table
                .get(i - STATIC_TABLE.len() - 1)
                .map(|(n, v)| (n.as_slice(), v.as_slice()))
                .ok_or_else(|| bad("index past the tables")),
        }
    }

    /// Decodes one complete header block, calling `each` per field in
    /// order. Stops calling `each` once the list is over the limit, but
    /// decodes to the end so the dynamic table stays in step.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut each: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), DecodeError> {
        let mut list = 0usize;
        let mut at = 0;
        let mut fields_seen = false;
        let max_list = self.max_list;
        let mut emit = |name: &[u8], value: &[u8]| {
            list = list.saturating_add(entry_size(name, value));
            if list <= max_list {
                each(name, value);
            }
        };
        while at < block.len() {
            let b = block[at];
            if b & 0x80 != 0 {
                // Indexed field.
                let index = integer(block, &mut at, 7)?;
                let (n, v) = self.field(index)?;
                emit(n, v);
                fields_seen = true;
            } else if b & 0xe0 == 0x20 {
                // A table size update: only before the first field.
                if fields_seen {
                    return Err(bad("table size update after a field"));
                }
                let size = integer(block, &mut at, 5)?;
                if size > TABLE_SIZE {
                    return Err(bad("table size update past SETTINGS_HEADER_TABLE_SIZE"));
                }
                self.max_size = size;
                self.evict_to(size);
            } else {
                // A literal: with incremental indexing (01), or without /
                // never indexed (0000 / 0001).
                let indexing = b & 0xc0 == 0x40;
                let index = integer(block, &mut at, if indexing { 6 } else { 4 })?;
                let name: Cow<[u8]> = if index == 0 {
                    string(block, &mut at)?
                } else {
                    Cow::Owned(self.field(index)?.0.to_vec())
                };
                let value = self.last_long.string(block, &mut at)?;
                emit(&name, &value);
                if indexing {
                    self.insert(name.into_owned(), value.into_owned());
                }
                fields_seen = true;
            }
        }
        if list > self.max_list {
            return Err(DecodeError::TooLarge);
        }
        Ok(())
    }
}

/// Reads an integer with an `n`-bit prefix at `*at` (RFC 7541 5.1);
/// values past 2^28 are refused.
fn integer(b: &[u8], at: &mut usize, n: u8) -> Result<usize, DecodeError> {
    let max = (1usize << n) - 1;
    let mut value = (*b.get(*at).ok_or_else(|| bad("truncated integer"))? as usize) & max;
    *at += 1;
    if value < max {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let byte = *b.get(*at).ok_or_else(|| bad("truncated integer"))?;
        *at += 1;
        value += ((byte & 0x7f) as usize) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        if shift > 21 {
            return Err(bad("integer too large"));
        }
    }
}

/// Reads a string literal (RFC 7541 5.2): its bytes as they came, and
/// whether they are Huffman-coded.
fn literal<'a>(b: &'a [u8], at: &mut usize) -> Result<(&'a [u8], bool), DecodeError> {
    let huffman = b.get(*at).ok_or_else(|| bad("truncated string"))? & 0x80 != 0;
    let len = integer(b, at, 7)?;
    let end = at
        .checked_add(len)
        .filter(|&e| e <= b.len())
        .ok_or_else(|| bad("truncated string"))?;
    let raw = &b[*at..end];
    *at = end;
    Ok((raw, huffman))
}

/// Reads a string literal (RFC 7541 5.2), Huffman-coded or not.
fn string<'a>(b: &'a [u8], at: &mut usize) -> Result<Cow<'a, [u8]>, DecodeError> {
    match literal(b, at)? {
        (coded, true) => huffman_decode(coded).map(Cow::Owned),
        (raw, false) => Ok(Cow::Borrowed(raw)),
    }
}

/// Huffman codes by length: for each bit length, `(code, symbol)` sorted
/// by code. Built once.
fn codes_by_length() -> &'static [Vec<(u32, u16)>; 31] {
    static TABLE: OnceLock<[Vec<(u32, u16)>; 31]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t: [Vec<(u32, u16)>; 31] = std::array::from_fn(|_| Vec::new());
        for (symbol, &(code, len)) in HUFFMAN_CODES.iter().enumerate() {
            t[len as usize].push((code, symbol as u16));
        }
        for v in t.iter_mut() {
            v.sort_unstable();
        }
        t
    })
}

/// For each value of the next 8 bits: the symbol whose code starts them and
/// that code's length, when it is 8 bits or shorter (`(0, 0)` otherwise).
/// Every character of a base64url token has such a code.
fn codes_by_first_byte() -> &'static [(u8, u8); 256] {
    static TABLE: OnceLock<[(u8, u8); 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [(0u8, 0u8); 256];
        for (symbol, &(code, len)) in HUFFMAN_CODES.iter().enumerate().take(256) {
            if len <= 8 {
                let free = 8 - u32::from(len);
                let first = (code << free) as usize;
                for entry in &mut t[first..first + (1 << free)] {
                    *entry = (symbol as u8, len);
                }
            }
        }
        t
    })
}

/// Decodes a Huffman-coded string. A code of 8 bits or fewer (every
/// character of a token or a path) is one table lookup; longer codes go
/// bit by bit. Measured: the bit-by-bit decoder alone (a binary search per
/// bit) was 48% of the server's CPU on unary calls that carry a 600-byte
/// RS256 token, which gRPC clients send uncompressed with every call
/// (HPACK never-indexed); BENCHMARKS.md. The padding must be the most
/// significant bits of EOS (all ones) and shorter than 8 bits; EOS itself
/// may not appear.
fn huffman_decode(raw: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let fast = codes_by_first_byte();
    let slow = codes_by_length();
    let mut out = Vec::with_capacity(raw.len() * 8 / 5);
    // The next `pending` bits of input are the low bits of `bits`.
    let (mut bits, mut pending) = (0u64, 0u32);
    let mut input = raw.iter();
    loop {
        while pending <= 56 {
            let Some(&byte) = input.next() else { break };
            bits = (bits << 8) | u64::from(byte);
            pending += 8;
        }
        if pending == 0 {
            return Ok(out);
        }
        // The next 8 bits; past the end, padded with ones (no code of 8
        // bits or fewer is all ones: they would prefix EOS).
        let next = if pending >= 8 {
            (bits >> (pending - 8)) as u8
        } else {
            ((bits << (8 - pending)) as u8) | (0xff >> pending)
        };
        let (symbol, len) = fast[next as usize];
        if len != 0 && u32::from(len) <= pending {
            out.push(symbol);
            pending -= u32::from(len);
            bits &= (1u64 << pending) - 1;
            continue;
        }
        // A longer code, or the end: bit by bit. More than 56 bits are
        // pending unless the input is all read, so running out of bits
        // means what is left is padding.
        let (mut code, mut len) = (0u32, 0u32);
        loop {
            if len == pending {
                if len > 7 || code != (1 << len) - 1 {
                    return Err(bad("invalid Huffman padding"));
                }
                return Ok(out);
            }
            len += 1;
            if len > 30 {
                return Err(bad("invalid Huffman code"));
            }
            code = (code << 1) | ((bits >> (pending - len)) & 1) as u32;
            if let Ok(i) = slow[len as usize].binary_search_by_key(&code, |&(c, _)| c) {
                let symbol = slow[len as usize][i].1;
                if symbol == 256 {
                    return Err(bad("EOS in a Huffman string"));
                }
                out.push(symbol as u8);
                pending -= len;
                bits &= (1u64 << pending) - 1;
                break;
            }
        }
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
    use proptest::prelude::*;

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
        block.extend(std::iter::repeat_n(0x80 | 62, 1000));
        let mut d = Decoder::new(16 * 1024);
        let mut seen = 0usize;
        let r = d.decode(&block, |n, v| seen += n.len() + v.len());
        assert_eq!(r, Err(DecodeError::TooLarge));
        assert!(seen <= 16 * 1024, "kept {seen} bytes");
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn the_rfcs_request_examples_decode_with_and_without_huffman() {
        // RFC 7541 C.3 (plain) and C.4 (Huffman): three requests on one
        // connection, the dynamic table carried from one to the next.
        for blocks in [
            [
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            [
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
        ] {
            let mut d = Decoder::new(64 * 1024);
            let got: Vec<Vec<(String, String)>> = blocks
                .iter()
                .map(|b| decode_all(&mut d, &hex(b)).unwrap())
                .collect();
            assert_eq!(got[0][3], (":authority".into(), "www.example.com".into()));
            assert_eq!(got[1][4], ("cache-control".into(), "no-cache".into()));
            assert_eq!(got[2][1], (":scheme".into(), "https".into()));
            assert_eq!(got[2][4], ("custom-key".into(), "custom-value".into()));
            assert_eq!(d.size, 164);
        }
    }

    #[test]
    fn eviction_keeps_the_table_within_its_size() {
        let mut d = Decoder::new(64 * 1024);
        // A size update to 100, then entries of 32 + 4 + 60 = 96 bytes.
        let mut block = vec![0x3f, 0x45];
        for i in 0..3u8 {
            block.push(0x40);
            put_string(&mut block, &[b'k', b'e', b'y', b'0' + i]);
            put_string(&mut block, &[b'v'; 60]);
        }
        decode_all(&mut d, &block).unwrap();
        assert_eq!(d.table.len(), 1);
        assert_eq!(d.field(62).unwrap().0, b"key2");
        // Past the table, and a size update after a field, are errors.
        assert!(d.field(63).is_err());
        assert!(decode_all(&mut d, &[0x82, 0x20]).is_err());
    }

    /// The decoder this module had first: bit by bit, a binary search per
    /// bit. Slow and plainly right: the oracle of the table decoder.
    fn bitwise_decode(raw: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let table = codes_by_length();
        let mut out = Vec::new();
        let (mut code, mut len) = (0u32, 0usize);
        for &byte in raw {
            for bit in (0..8).rev() {
                code = (code << 1) | ((byte >> bit) & 1) as u32;
                len += 1;
                if len > 30 {
                    return Err(bad("invalid Huffman code"));
                }
                if let Ok(i) = table[len].binary_search_by_key(&code, |&(c, _)| c) {
                    if table[len][i].1 == 256 {
                        return Err(bad("EOS in a Huffman string"));
                    }
                    out.push(table[len][i].1 as u8);
                    (code, len) = (0, 0);
                }
            }
        }
        if len > 7 || code != (1 << len) - 1 {
            return Err(bad("invalid Huffman padding"));
        }
        Ok(out)
    }

    /// Huffman-codes `text`, padded with ones (RFC 7541 5.2).
    fn huffman_encode(text: &[u8]) -> Vec<u8> {
        let (mut out, mut bits, mut pending) = (Vec::new(), 0u64, 0u32);
        for &b in text {
            let (code, len) = HUFFMAN_CODES[b as usize];
            bits = (bits << len) | u64::from(code);
            pending += u32::from(len);
            while pending >= 8 {
                out.push((bits >> (pending - 8)) as u8);
                pending -= 8;
            }
        }
        if pending > 0 {
            out.push(((bits << (8 - pending)) as u8) | (0xff >> pending));
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn the_table_decoder_reads_what_the_bitwise_one_reads(
            text in proptest::collection::vec(any::<u8>(), 0..300),
            garbage in proptest::collection::vec(any::<u8>(), 0..40),
            cut in 0usize..300,
        ) {
            let coded = huffman_encode(&text);
            prop_assert_eq!(huffman_decode(&coded), Ok(text.clone()));
            // Cut short, and plain garbage: the same answer, error or not.
            let short = &coded[..cut.min(coded.len())];
            prop_assert_eq!(huffman_decode(short), bitwise_decode(short));
            prop_assert_eq!(huffman_decode(&garbage), bitwise_decode(&garbage));
        }
    }

    #[test]
    fn a_repeated_long_literal_is_decoded_once_and_read_the_same() {
        let token = format!("Bearer {}", "eyJhbGciOiJSUzI1NiJ9.".repeat(20));
        let coded = huffman_encode(token.as_bytes());
        let mut block = vec![0x10]; // literal, never indexed, new name
        put_string(&mut block, b"authorization");
        block.push(0x80);
        put_int_into(&mut block, coded.len());
        block.extend_from_slice(&coded);
        let mut d = Decoder::new(1 << 20);
        for _ in 0..3 {
            let fields = decode_all(&mut d, &block).unwrap();
            assert_eq!(fields, [("authorization".to_string(), token.clone())]);
        }
        assert_eq!(d.last_long.coded, coded);
        // A bad long one is refused, and what is remembered stays right.
        let mut bad_block = vec![0x10];
        put_string(&mut bad_block, b"authorization");
        bad_block.push(0x80);
        put_int_into(&mut bad_block, 70);
        bad_block.extend_from_slice(&[0xff; 70]); // 560 ones: no code
        assert!(decode_all(&mut d, &bad_block).is_err());
        assert_eq!(d.last_long.coded, coded);
        assert_eq!(decode_all(&mut d, &block).unwrap()[0].1, token);
    }

    /// The length prefix of a Huffman-coded string (its H bit already in
    /// the block's last byte).
    fn put_int_into(block: &mut Vec<u8>, len: usize) {
        let h = block.pop().unwrap();
        put_int(block, h, 7, len);
    }

    #[test]
    fn huffman_padding_and_eos_are_checked() {
        // "a" is 00011 (5 bits): padded with three ones it is valid...
        assert_eq!(huffman_decode(&[0b0001_1111]).unwrap(), b"a");
        // ...padded with zeros, or with a whole byte of ones, it is not.
        assert!(huffman_decode(&[0b0001_1000]).is_err());
        assert!(huffman_decode(&[0b0001_1111, 0xff]).is_err());
        // EOS (30 ones) is never valid inside a string.
        assert!(huffman_decode(&[0xff, 0xff, 0xff, 0xfc]).is_err());
    }

    #[test]
    fn garbage_is_a_compression_error() {
        let mut d = Decoder::new(1024);
        // Index 0 does not exist; index 70 is past both tables.
        assert!(matches!(
            decode_all(&mut d, &[0x80]),
            Err(DecodeError::Compression(_))
        ));
        assert!(matches!(
            decode_all(&mut d, &[0xc6]),
            Err(DecodeError::Compression(_))
        ));
        // A table size update past what we allow.
        assert!(matches!(
            decode_all(&mut d, &[0x3f, 0xe1, 0xff, 0x03]),
            Err(DecodeError::Compression(_))
        ));
    }
}
