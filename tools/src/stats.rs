//! The arithmetic of a benchmark, kept apart from the sockets so it is
//! tested on its own: latency histograms and percentiles, the probe every
//! benchmark message carries in its content, and the per-subscriber
//! bookkeeping of lost, duplicated and out-of-order messages.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Sub-buckets per power of two: values are kept to within 1/32 (about 3%).
const SUB_BUCKETS: u64 = 32;
const SUB_BITS: u32 = 5;

/// A log-linear histogram of whole numbers (microseconds here), in the
/// manner of HdrHistogram: exact below 64, then 32 buckets per power of two.
/// One per thread, merged at the end, so recording takes no lock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

/// The bucket a value falls in.
fn bucket(value: u64) -> usize {
    let magnitude = 63 - (value | 1).leading_zeros();
    let shift = magnitude.saturating_sub(SUB_BITS);
    (u64::from(shift) * SUB_BUCKETS + (value >> shift)) as usize
}

/// The largest value that falls in bucket `index`.
fn bucket_high(index: usize) -> u64 {
    let index = index as u64;
    if index < 2 * SUB_BUCKETS {
        return index;
    }
    let shift = index / SUB_BUCKETS - 1;
    let top = index % SUB_BUCKETS + SUB_BUCKETS;
    ((top + 1) << shift) - 1
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram::default()
    }

    pub fn record(&mut self, value: u64) {
        let i = bucket(value);
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        if self.count == 0 || value < self.min {
            self.min = value;
        }
        self.max = self.max.max(value);
        self.count += 1;
        self.sum += u128::from(value);
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        if self.count == 0 || other.min < self.min {
            self.min = other.min;
        }
        self.max = self.max.max(other.max);
        self.count += other.count;
        self.sum += other.sum;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn min(&self) -> u64 {
        self.min
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The value at or below which `percent` of the recorded values lie,
    /// rounded up to its bucket's top (never above the true maximum).
    pub fn percentile(&self, percent: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((percent / 100.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_high(i).min(self.max);
            }
        }
        self.max
    }

    /// p50, p90, p99, p99.9 and max, in the units recorded.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.count,
            mean: self.mean(),
            p50: self.percentile(50.0),
            p90: self.percentile(90.0),
            p99: self.percentile(99.0),
            p999: self.percentile(99.9),
            max: self.max,
        }
    }
}

/// The usual percentiles of a latency histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl LatencySummary {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count,
            "mean_us": (self.mean * 10.0).round() / 10.0,
            "p50_us": self.p50,
            "p90_us": self.p90,
            "p99_us": self.p99,
            "p999_us": self.p999,
            "max_us": self.max,
        })
    }
}

/// Microseconds as a short human figure: `850us`, `1.25ms`, `3.40s`.
pub fn micros(us: u64) -> String {
    if us < 1_000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

/// A count per second as a short figure: `950`, `12.3k`, `1.25M`.
pub fn rate(per_sec: f64) -> String {
    if per_sec < 10_000.0 {
        format!("{per_sec:.0}")
    } else if per_sec < 1e6 {
        format!("{:.1}k", per_sec / 1e3)
    } else {
        format!("{:.2}M", per_sec / 1e6)
    }
}

/// Bytes as KiB or MiB with one decimal (signed: deltas may be negative).
pub fn bytes(n: i64) -> String {
    let abs = n.unsigned_abs() as f64;
    let sign = if n < 0 { "-" } else { "" };
    if abs < 1024.0 * 1024.0 {
        format!("{sign}{:.1} KiB", abs / 1024.0)
    } else {
        format!("{sign}{:.1} MiB", abs / (1024.0 * 1024.0))
    }
}

/// The instant all probe timestamps count from. Publishers and subscribers
/// run in this one process, so a monotonic clock works without any clock
/// synchronisation.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since [`epoch`].
pub fn now_micros() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// What a benchmark message carries in its content: which run and
/// publisher sent it, its sequence number in that publisher's stream to
/// that room, and when it was sent. Written as `~b<run>.<publisher>.<seq>.
/// <micros>~` and padded with `x` to the message size; it holds no
/// character that JSON escapes, so it is found verbatim inside any JSON
/// envelope (streamhub's SSE data) or a raw body (other servers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub run: u32,
    pub publisher: u32,
    pub seq: u64,
    pub sent_micros: u64,
}

impl Probe {
    /// The content for this probe, at least `size` bytes long.
    pub fn content(&self, size: usize) -> String {
        let mut out = String::with_capacity(size.max(48));
        let _ = write!(
            out,
            "~b{}.{}.{}.{}~",
            self.run, self.publisher, self.seq, self.sent_micros
        );
        while out.len() < size {
            out.push('x');
        }
        out
    }

    /// Finds the probe of run `run` anywhere in `text`.
    pub fn find(text: &[u8], run: u32) -> Option<Probe> {
        ProbeFinder::new(run).find(text)
    }
}

/// [`Probe::find`] for one run, its tag written once (not once per
/// message: a subscriber thread looks at a million a second).
#[derive(Clone, Debug)]
pub struct ProbeFinder {
    run: u32,
    tag: [u8; 16],
    tag_len: usize,
}

impl ProbeFinder {
    pub fn new(run: u32) -> ProbeFinder {
        let mut tag = [0u8; 16];
        let tag_len = run_tag(run, &mut tag).len();
        ProbeFinder { run, tag, tag_len }
    }

    /// The probe of this run anywhere in `text`.
    pub fn find(&self, text: &[u8]) -> Option<Probe> {
        let (run, tag) = (self.run, &self.tag[..self.tag_len]);
        let start = find_bytes(text, tag)? + tag.len();
        let rest = &text[start..];
        let end = rest.iter().position(|b| *b == b'~')?;
        let mut fields = rest[..end].split(|b| *b == b'.');
        let mut next = || -> Option<u64> { parse_u64(fields.next()?) };
        let probe = Probe {
            run,
            publisher: u32::try_from(next()?).ok()?,
            seq: next()?,
            sent_micros: next()?,
        };
        fields.next().is_none().then_some(probe)
    }
}

/// `~b<run>.` written into `buf`.
fn run_tag(run: u32, buf: &mut [u8; 16]) -> &[u8] {
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = std::io::Write::write_fmt(&mut cursor, format_args!("~b{run}."));
    let len = cursor.position() as usize;
    &buf[..len]
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// The first position of `needle` in `haystack`.
pub fn find_bytes(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while from + needle.len() <= haystack.len() {
        let i = from + haystack[from..].iter().position(|b| *b == first)?;
        if haystack.get(i + 1..i + needle.len()) == Some(rest) {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

/// Which sequence numbers of one publisher a subscriber has seen.
#[derive(Clone, Debug, Default)]
pub struct SeqTracker {
    seen: Vec<u64>,
    unique: u64,
    duplicated: u64,
    out_of_order: u64,
    /// The highest sequence number seen plus one (0: none yet).
    high: u64,
}

impl SeqTracker {
    pub fn record(&mut self, seq: u64) {
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicated += 1;
            return;
        }
        self.seen[word] |= bit;
        self.unique += 1;
        if seq + 1 < self.high {
            self.out_of_order += 1;
        }
        self.high = self.high.max(seq + 1);
    }

    /// Whether `seq` arrived.
    pub fn seen(&self, seq: u64) -> bool {
        self.seen
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1u64 << (seq % 64)) != 0)
    }

    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// Of the `published` messages numbered `0..published`, how many never
    /// arrived.
    pub fn lost(&self, published: u64) -> u64 {
        let arrived_in_range: u64 = (0..published.div_ceil(64) as usize)
            .map(|w| {
                let word = self.seen.get(w).copied().unwrap_or(0);
                let bits_in_range = published - w as u64 * 64;
                let mask = if bits_in_range >= 64 {
                    u64::MAX
                } else {
                    (1u64 << bits_in_range) - 1
                };
                u64::from((word & mask).count_ones())
            })
            .sum();
        published - arrived_in_range
    }

    pub fn duplicated(&self) -> u64 {
        self.duplicated
    }

    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }
}

/// Sleeps until `at` (returns at once if it has passed).
pub fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// `d` in seconds with millisecond precision, for JSON.
pub fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_exact_below_64_and_within_one_thirty_second_above() {
        for v in 0..64 {
            assert_eq!(bucket_high(bucket(v)), v);
        }
        let mut v = 64u64;
        while v < u64::MAX / 4 {
            for probe in [v, v + v / 3, v * 2 - 1] {
                let high = bucket_high(bucket(probe));
                assert!(high >= probe, "{probe} -> {high}");
                assert!(
                    (high - probe) as f64 <= probe as f64 / 31.0,
                    "{probe} -> {high}"
                );
                // Bucket indexes never go down as values go up.
                assert!(bucket(probe) >= bucket(probe - 1));
            }
            v *= 2;
        }
    }

    #[test]
    fn percentiles_of_one_to_ten_thousand() {
        let mut h = Histogram::new();
        for v in 1..=10_000 {
            h.record(v);
        }
        let s = h.summary();
        assert_eq!(s.count, 10_000);
        assert_eq!(s.max, 10_000);
        assert_eq!(h.min(), 1);
        assert!((s.mean - 5000.5).abs() < 1e-9);
        for (p, exact) in [(s.p50, 5000), (s.p90, 9000), (s.p99, 9900)] {
            assert!(p >= exact && p <= exact + exact / 31, "{p} vs {exact}");
        }
        assert_eq!(h.percentile(100.0), 10_000);
        assert_eq!(h.percentile(0.0), 1);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (Histogram::new(), Histogram::new(), Histogram::new());
        for v in (0..5000u64).map(|i| i * i % 7919) {
            if v % 3 == 0 {
                a.record(v);
            } else {
                b.record(v);
            }
            all.record(v);
        }
        a.merge(&b);
        assert_eq!(a, all);
        let mut empty = Histogram::new();
        empty.merge(&all);
        assert_eq!(empty, all);
        all.merge(&Histogram::new());
        assert_eq!(empty, all);
    }

    #[test]
    fn empty_histogram_reports_zeros() {
        let s = Histogram::new().summary();
        assert_eq!(s, LatencySummary::default());
    }

    #[test]
    fn probe_round_trips_and_is_found_inside_json() {
        let p = Probe {
            run: 77,
            publisher: 3,
            seq: 12345,
            sent_micros: 987_654_321,
        };
        let content = p.content(100);
        assert_eq!(content.len(), 100);
        assert!(content.starts_with("~b77.3.12345.987654321~xx"));
        assert_eq!(Probe::find(content.as_bytes(), 77), Some(p));
        let json = serde_json::json!({"id": "msg_1", "content": content}).to_string();
        assert_eq!(Probe::find(json.as_bytes(), 77), Some(p));
        assert_eq!(Probe::find(json.as_bytes(), 7), None, "another run");
        assert_eq!(Probe::find(b"~b77.1.2~", 77), None, "missing field");
        assert_eq!(Probe::find(b"~b77.1.2.3.4~", 77), None, "extra field");
        assert_eq!(Probe::find(b"~b77.1.x.3~", 77), None, "not a number");
        assert_eq!(Probe::find(b"~b77.1.2.3", 77), None, "unterminated");
        assert!(p.content(0).len() > 10, "never shorter than the probe");
    }

    #[test]
    fn find_bytes_finds_first_occurrence() {
        assert_eq!(find_bytes(b"abcabc", b"bc"), Some(1));
        assert_eq!(find_bytes(b"aaab", b"ab"), Some(2));
        assert_eq!(find_bytes(b"abc", b"abcd"), None);
        assert_eq!(find_bytes(b"abc", b""), None);
        assert_eq!(find_bytes(b"", b"a"), None);
    }

    #[test]
    fn tracker_counts_lost_duplicated_and_out_of_order() {
        let mut t = SeqTracker::default();
        for seq in [0, 1, 2, 4, 3, 3, 5, 70, 9] {
            t.record(seq);
        }
        assert_eq!(t.unique(), 8);
        assert_eq!(t.duplicated(), 1);
        // 3 after 4, and 9 after 70.
        assert_eq!(t.out_of_order(), 2);
        // Of 0..100: 6, 7, 8, 10..=69 and 71..=99 are missing.
        assert_eq!(t.lost(100), 3 + 60 + 29);
        assert_eq!(t.lost(6), 0);
        assert_eq!(t.lost(0), 0);
        assert_eq!(t.lost(64), 3 + 54);
        assert!(t.seen(70) && t.seen(0) && !t.seen(6) && !t.seen(100_000));
    }

    #[test]
    fn tracker_of_a_perfect_stream() {
        let mut t = SeqTracker::default();
        for seq in 0..1000 {
            t.record(seq);
        }
        assert_eq!(
            (t.unique(), t.lost(1000), t.duplicated(), t.out_of_order()),
            (1000, 0, 0, 0)
        );
        assert_eq!(t.lost(1001), 1);
    }

    #[test]
    fn human_figures() {
        assert_eq!(micros(850), "850us");
        assert_eq!(micros(1250), "1.25ms");
        assert_eq!(micros(3_400_000), "3.40s");
        assert_eq!(rate(950.0), "950");
        assert_eq!(rate(12_345.0), "12.3k");
        assert_eq!(rate(1_250_000.0), "1.25M");
        assert_eq!(bytes(10 * 1024), "10.0 KiB");
        assert_eq!(bytes(-3 * 1024 * 1024), "-3.0 MiB");
    }
}
