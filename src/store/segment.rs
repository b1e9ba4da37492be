//! Segment files: naming, the header that says what a file is, making a
//! new (preallocated) one, and reading one back record by record.
//!
//! A segment is `NNNNNNNNNNNNNNNNNNNN.seg` (its number, 20 digits, so names
//! sort as numbers), starting with a 16-byte header: [`MAGIC`], the format
//! number (u32 LE) and four zero bytes. Records follow back to back; the
//! rest of the file is zeroes, made by preallocation.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::{self, Decoded, Found};

/// What a streamhub segment starts with.
pub const MAGIC: &[u8; 8] = b"SHUBSEG\0";
/// The record and segment format this build reads and writes.
pub const FORMAT: u32 = 1;
/// Bytes before the first record of a segment.
pub const HEADER: u64 = 16;
const SUFFIX: &str = ".seg";

fn header() -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    h
}

pub fn path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}{SUFFIX}"))
}

/// The number of a segment file name, or `None` for another name.
pub fn number_of(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// An open segment.
pub struct Segment {
    pub number: u64,
    pub file: File,
    /// Its size on disk: where its records must end.
    pub capacity: u64,
}

impl Segment {
    /// Makes segment `number` in `dir` with room for `capacity` bytes,
    /// header included, and makes it durable (the file and its name).
    pub fn create(dir: &Path, number: u64, capacity: u64) -> io::Result<Segment> {
        let path = path(dir, number);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let made = (|| {
            crate::sys::preallocate(&file, capacity)?;
            file.write_all_at(&header(), 0)?;
            file.sync_all()?;
            sync_dir(dir)
        })();
        if let Err(e) = made {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(Segment {
            number,
            file,
            capacity,
        })
    }

    /// Opens segment `number` for reading and writing.
    pub fn open(dir: &Path, number: u64) -> io::Result<Segment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path(dir, number))?;
        let capacity = file.metadata()?.len();
        Ok(Segment {
            number,
            file,
            capacity,
        })
    }
}

/// Makes a new or removed name in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What reading a segment found.
#[derive(Debug)]
pub enum Header {
    Ok,
    /// Zeroes or a short file: made by a crash while it was being created.
    Unwritten,
    /// A streamhub segment of another format.
    Format(u32),
    /// Not a streamhub segment at all.
    Foreign,
}

pub fn check_header(bytes: &[u8]) -> Header {
    match bytes.get(..HEADER as usize) {
        None if bytes.iter().all(|&b| b == 0) => Header::Unwritten,
        None => Header::Foreign,
        Some(h) if h.iter().all(|&b| b == 0) => Header::Unwritten,
        Some(h) if &h[..8] != MAGIC => Header::Foreign,
        Some(h) => match u32::from_le_bytes(h[8..12].try_into().expect("4 bytes")) {
            FORMAT => Header::Ok,
            other => Header::Format(other),
        },
    }
}

/// The end of a segment's records.
#[derive(Debug, PartialEq, Eq)]
pub struct Scanned {
    /// Offset just past the last intact record.
    pub end: u64,
    /// Why reading stopped before the zeroes, if it did.
    pub torn: Option<&'static str>,
}

/// Calls `each` with every intact record of a segment's bytes (header
/// included), in order, up to the first unwritten or torn one.
pub fn scan(bytes: &[u8], mut each: impl FnMut(Decoded)) -> Scanned {
    let mut at = HEADER as usize;
    loop {
        match record::decode(bytes.get(at..).unwrap_or_default()) {
            Found::Record(d, len) => {
                each(d);
                at += len;
            }
            Found::End => {
                return Scanned {
                    end: at as u64,
                    torn: None,
                }
            }
            Found::Torn(why) => {
                return Scanned {
                    end: at as u64,
                    torn: Some(why),
                }
            }
        }
    }
}

/// Drops everything past `end` in a segment (a torn record, and whatever
/// a crash may have left behind it), keeping its size.
pub fn cut(segment: &Segment, end: u64) -> io::Result<()> {
    segment.file.set_len(end)?;
    crate::sys::preallocate(&segment.file, segment.capacity.max(end))?;
    segment.file.sync_all()
}

/// Writes a fresh header (a segment whose creation a crash interrupted).
pub fn rewrite_header(segment: &Segment) -> io::Result<()> {
    segment.file.write_all_at(&header(), 0)?;
    segment.file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Message, MessageKind};
    use std::time::SystemTime;

    #[test]
    fn names_sort_as_numbers_and_others_are_not_segments() {
        let dir = Path::new("/d");
        let name = |n| {
            path(dir, n)
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        };
        assert!(name(9) < name(10));
        assert_eq!(number_of(&name(12345)), Some(12345));
        for other in [
            "12.seg",
            "streamhub-store",
            "00000000000000000001.seg.tmp",
            "",
        ] {
            assert_eq!(number_of(other), None, "{other}");
        }
    }

    #[test]
    fn a_scan_stops_at_zeroes_or_at_a_torn_record() {
        let mut bytes = header().to_vec();
        for seq in 1..=3 {
            let m = Message::stored(
                format!("msg_{seq}"),
                seq,
                "r",
                "u".into(),
                "x".repeat(seq as usize),
                MessageKind::Chat,
                SystemTime::now(),
            );
            record::encode(&m, &mut bytes);
        }
        let full = bytes.len() as u64;
        bytes.extend_from_slice(&[0; 64]);
        let mut seqs = Vec::new();
        assert_eq!(
            scan(&bytes, |d| seqs.push(d.seq)),
            Scanned {
                end: full,
                torn: None
            }
        );
        assert_eq!(seqs, [1, 2, 3]);
        // The last record cut in the middle, zeroes after it.
        let mut cut = bytes[..full as usize - 2].to_vec();
        cut.extend_from_slice(&[0; 64]);
        let mut seqs = Vec::new();
        let scanned = scan(&cut, |d| seqs.push(d.seq));
        assert_eq!(seqs, [1, 2]);
        assert!(scanned.torn.is_some());
        assert!(matches!(check_header(&bytes), Header::Ok));
        assert!(matches!(check_header(&[0; 16]), Header::Unwritten));
        assert!(matches!(
            check_header(b"hello, this is not a segment"),
            Header::Foreign
        ));
        let mut other = header();
        other[8] = 2;
        assert!(matches!(check_header(&other), Header::Format(2)));
    }
}
