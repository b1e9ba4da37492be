//! Rate and connection limits, pure and shared by both front doors: a
//! [`TokenBucket`] (a rate per second and a burst, the time a parameter),
//! a [`RateLimiter`] that keeps one bucket per key (a user, an address) in
//! bounded memory, and a [`ConnectionLimiter`] that counts open connections
//! per key and refuses one past a cap. No I/O and no clock of their own, so
//! every rule is unit-tested with made-up instants.
//!
//! The bucket is kept as GCRA (the "generic cell rate algorithm"): instead
//! of a token count and a refill time it stores one instant, when the
//! bucket will be full again. That is the same limit as a token bucket
//! (`burst` requests at once, then one per `1 / rate`), with exact integer
//! arithmetic, no refill step, and an exact wait to report as
//! `Retry-After`.
//!
//! Locking: each limiter has one `parking_lot::Mutex`, held for a hash
//! lookup and a few comparisons (plus a sweep of the map when it is full,
//! see [`RateLimiter`]); never while doing I/O. Not sharded: one short
//! critical section per request or accept is unlikely to be contended at
//! this server's rates, but that is not measured; sharding by key hash is
//! the change to make if a profile ever shows this lock.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The slowest rate a bucket keeps: one request a day. Slower rates count
/// as this one, so the instants a bucket computes stay far from overflow.
pub const MAX_INTERVAL: Duration = Duration::from_secs(86_400);

/// How fast a key may go: `per_second` on average, `burst` at once.
/// A rate of 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    pub per_second: f64,
    /// Requests allowed at once from a full bucket; 0 counts as 1 (a
    /// limited key may still do one thing per interval).
    pub burst: u32,
}

impl Quota {
    pub fn new(per_second: f64, burst: u32) -> Quota {
        Quota { per_second, burst }
    }

    /// No limit at all.
    pub fn unlimited() -> Quota {
        Quota::new(0.0, 0)
    }

    /// Whether this quota limits anything (a positive, finite rate).
    pub fn is_limited(&self) -> bool {
        self.per_second.is_finite() && self.per_second > 0.0
    }
}

/// One key's allowance. `take` is the whole interface.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Time one request costs (1 / rate); zero when unlimited.
    interval: Duration,
    /// How far ahead of now `full_at` may run: `(burst - 1) * interval`.
    tolerance: Duration,
    /// When the bucket is full again; `None` when it has never been used.
    full_at: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(quota: Quota) -> TokenBucket {
        if !quota.is_limited() {
            return TokenBucket {
                interval: Duration::ZERO,
                tolerance: Duration::ZERO,
                full_at: None,
            };
        }
        let interval = Duration::try_from_secs_f64(1.0 / quota.per_second)
            .map_or(MAX_INTERVAL, |i| i.min(MAX_INTERVAL));
        let tolerance = interval.saturating_mul(quota.burst.max(1) - 1);
        TokenBucket {
            interval,
            tolerance,
            full_at: None,
        }
    }

    /// Takes one request's worth at `now`, or says how long to wait until
    /// one is there. A refused request costs nothing. A `now` earlier than
    /// an earlier call's (threads read the clock before they take the
    /// limiter's lock) lengthens the wait by the difference; it never lets
    /// more through.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        if self.interval.is_zero() {
            return Ok(());
        }
        let full_at = self.full_at.map_or(now, |at| at.max(now));
        let ahead = full_at - now;
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        self.full_at = Some(full_at + self.interval);
        Ok(())
    }

    /// Whether the bucket is full at `now`: forgetting it then changes
    /// nothing for its key.
    pub fn is_full(&self, now: Instant) -> bool {
        self.full_at.is_none_or(|at| at <= now)
    }
}

/// A [`TokenBucket`] per key, in bounded memory.
///
/// At most `max_keys` buckets are kept. When a new key arrives at the cap,
/// every full bucket is forgotten (that loses nothing: a key without a
/// bucket starts full), and if none is full, the bucket closest to full is
/// forgotten, so the new key is always served and memory never grows. The
/// key forgotten that way gets a full burst again a little early: at the
/// cap the limit is lenient for the least limited key, never strict for a
/// new one. The sweep is O(keys), under the lock, only at the cap.
#[derive(Debug)]
pub struct RateLimiter<K> {
    quota: Quota,
    max_keys: usize,
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// `max_keys` is at least 1.
    pub fn new(quota: Quota, max_keys: usize) -> RateLimiter<K> {
        RateLimiter {
            quota,
            max_keys: max_keys.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Takes one request for `key` at `now`, or says how long to wait.
    /// Unlimited quotas answer at once and keep no state.
    pub fn take<Q>(&self, key: &Q, now: Instant) -> Result<(), Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if !self.quota.is_limited() {
            return Ok(());
        }
        let mut buckets = self.buckets.lock();
        if let Some(bucket) = buckets.get_mut(key) {
            return bucket.take(now);
        }
        if buckets.len() >= self.max_keys {
            self.make_room(&mut buckets, now);
        }
        let mut bucket = TokenBucket::new(self.quota);
        let taken = bucket.take(now);
        buckets.insert(key.to_owned(), bucket);
        taken
    }

    /// Buckets kept now.
    pub fn len(&self) -> usize {
        self.buckets.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every full bucket, or else the one closest to full.
    fn make_room(&self, buckets: &mut HashMap<K, TokenBucket>, now: Instant) {
        buckets.retain(|_, bucket| !bucket.is_full(now));
        if buckets.len() < self.max_keys {
            return;
        }
        // Every bucket is in use: the earliest to be full again owes least.
        let Some(earliest) = buckets.values().map(|b| b.full_at).min() else {
            return;
        };
        let mut forgotten = false;
        buckets.retain(|_, bucket| {
            let forget = !forgotten && bucket.full_at == earliest;
            forgotten |= forget;
            !forget
        });
    }
}

/// Open connections per key, each at most `max_per_key`; 0 means
/// unlimited. Memory is one entry per key with a connection open: an entry
/// goes when its last guard is dropped.
#[derive(Debug)]
pub struct ConnectionLimiter<K: Hash + Eq> {
    max_per_key: usize,
    open: OpenCounts<K>,
}

/// Open connections per key, shared with the guards.
type OpenCounts<K> = Arc<Mutex<HashMap<K, usize>>>;

impl<K: Hash + Eq + Clone> ConnectionLimiter<K> {
    pub fn new(max_per_key: usize) -> ConnectionLimiter<K> {
        ConnectionLimiter {
            max_per_key,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Counts one more connection for `key`, or `None` when it already has
    /// `max_per_key` open. The connection is counted until the guard drops.
    pub fn open(&self, key: K) -> Option<ConnectionGuard<K>> {
        if self.max_per_key == 0 {
            return Some(ConnectionGuard { counted: None });
        }
        let mut open = self.open.lock();
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= self.max_per_key {
            return None;
        }
        *count += 1;
        Some(ConnectionGuard {
            counted: Some((self.open.clone(), key)),
        })
    }

    /// Connections open now for `key` (0 when unlimited: nothing is counted).
    pub fn count<Q>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.open.lock().get(key).copied().unwrap_or(0)
    }

    /// Keys with a connection open now.
    pub fn keys(&self) -> usize {
        self.open.lock().len()
    }
}

/// One counted connection; dropping it uncounts it.
#[derive(Debug)]
pub struct ConnectionGuard<K: Hash + Eq> {
    counted: Option<(OpenCounts<K>, K)>,
}

impl<K: Hash + Eq> Drop for ConnectionGuard<K> {
    fn drop(&mut self) {
        let Some((open, key)) = self.counted.take() else {
            return;
        };
        let mut open = open.lock();
        if let Some(count) = open.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&key);
            }
        }
    }
}

/// Whole seconds to put in `Retry-After` for a wait: rounded up, at least
/// 1 (0 would invite an immediate retry that is refused again).
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_allows_its_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(Quota::new(2.0, 3));
        for _ in 0..3 {
            bucket.take(t0).unwrap();
        }
        assert_eq!(bucket.take(t0), Err(ms(500)));
        assert_eq!(bucket.take(t0 + ms(499)), Err(ms(1)));
        bucket.take(t0 + ms(500)).unwrap();
        assert_eq!(bucket.take(t0 + ms(500)), Err(ms(500)));
        bucket.take(t0 + ms(1000)).unwrap();
    }

    #[test]
    fn refused_requests_cost_nothing() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(Quota::new(1.0, 1));
        bucket.take(t0).unwrap();
        for i in 0..100 {
            assert!(bucket.take(t0 + ms(i)).is_err());
        }
        bucket.take(t0 + ms(1000)).unwrap();
    }

    #[test]
    fn an_idle_bucket_refills_to_its_burst_and_no_further() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(Quota::new(10.0, 3));
        for _ in 0..3 {
            bucket.take(t0).unwrap();
        }
        assert!(!bucket.is_full(t0));
        let later = t0 + Duration::from_secs(60);
        assert!(bucket.is_full(later));
        for _ in 0..3 {
            bucket.take(later).unwrap();
        }
        assert_eq!(bucket.take(later), Err(ms(100)));
    }

    #[test]
    fn rate_zero_is_unlimited_and_keeps_no_state() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(Quota::unlimited());
        for _ in 0..10_000 {
            bucket.take(t0).unwrap();
        }
        let limiter = RateLimiter::<u32>::new(Quota::new(0.0, 5), 10);
        for key in 0..1000 {
            limiter.take(&key, t0).unwrap();
        }
        assert!(limiter.is_empty());
        assert!(!Quota::new(f64::NAN, 1).is_limited());
        assert!(!Quota::new(-1.0, 1).is_limited());
    }

    #[test]
    fn burst_zero_counts_as_one_and_slow_rates_work() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(Quota::new(0.2, 0));
        bucket.take(t0).unwrap();
        assert_eq!(bucket.take(t0), Err(Duration::from_secs(5)));
        bucket.take(t0 + Duration::from_secs(5)).unwrap();
        // Rates slower than one a day count as one a day.
        let mut glacial = TokenBucket::new(Quota::new(1e-300, 1));
        glacial.take(t0).unwrap();
        assert_eq!(glacial.take(t0 + ms(1)), Err(MAX_INTERVAL - ms(1)));
        glacial.take(t0 + MAX_INTERVAL).unwrap();
    }

    #[test]
    fn a_clock_that_steps_back_never_lets_more_through() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut bucket = TokenBucket::new(Quota::new(1.0, 1));
        bucket.take(t0).unwrap();
        assert_eq!(
            bucket.take(t0 - Duration::from_secs(5)),
            Err(Duration::from_secs(6))
        );
        bucket.take(t0 + Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn keys_have_buckets_of_their_own() {
        let t0 = Instant::now();
        let limiter = RateLimiter::<String>::new(Quota::new(1.0, 2), 100);
        limiter.take("alice", t0).unwrap();
        limiter.take("alice", t0).unwrap();
        assert_eq!(limiter.take("alice", t0), Err(ms(1000)));
        limiter.take("bob", t0).unwrap();
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn at_the_key_cap_full_buckets_are_forgotten_first() {
        let t0 = Instant::now();
        let limiter = RateLimiter::<u32>::new(Quota::new(1.0, 1), 3);
        limiter.take(&1, t0).unwrap();
        limiter.take(&2, t0).unwrap();
        limiter.take(&3, t0 + ms(900)).unwrap();
        // At t0 + 1 s, the buckets of 1 and 2 are full again; 3's is not.
        limiter.take(&4, t0 + ms(1000)).unwrap();
        assert_eq!(limiter.len(), 2);
        // 3 was kept, with its debt.
        assert_eq!(limiter.take(&3, t0 + ms(1000)), Err(ms(900)));
    }

    #[test]
    fn at_the_key_cap_with_every_bucket_in_use_the_closest_to_full_goes() {
        let t0 = Instant::now();
        let limiter = RateLimiter::<u32>::new(Quota::new(1.0, 1), 3);
        limiter.take(&1, t0 + ms(300)).unwrap();
        limiter.take(&2, t0 + ms(100)).unwrap();
        limiter.take(&3, t0 + ms(200)).unwrap();
        // A new key is always served, and memory stays at the cap.
        limiter.take(&4, t0 + ms(400)).unwrap();
        assert_eq!(limiter.len(), 3);
        // 2 (full soonest) was forgotten and starts full; 1 and 3 kept theirs.
        limiter.take(&2, t0 + ms(400)).unwrap();
        assert!(limiter.take(&1, t0 + ms(400)).is_err());
        assert_eq!(limiter.len(), 3);
        for key in 5..1000 {
            limiter.take(&key, t0 + ms(500)).unwrap();
        }
        assert_eq!(limiter.len(), 3);
    }

    #[test]
    fn one_key_hit_from_many_threads_gets_exactly_its_burst() {
        let t0 = Instant::now();
        let limiter = Arc::new(RateLimiter::<String>::new(Quota::new(0.001, 50), 10));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let limiter = limiter.clone();
                std::thread::spawn(move || {
                    (0..100).filter(|_| limiter.take("k", t0).is_ok()).count()
                })
            })
            .collect();
        let allowed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(allowed, 50);
    }

    #[test]
    fn open_connections_are_capped_per_key_and_uncounted_on_drop() {
        let limiter = ConnectionLimiter::<&'static str>::new(2);
        let a1 = limiter.open("10.0.0.1").unwrap();
        let a2 = limiter.open("10.0.0.1").unwrap();
        assert!(limiter.open("10.0.0.1").is_none());
        let b = limiter.open("10.0.0.2").unwrap();
        assert_eq!(limiter.count("10.0.0.1"), 2);
        drop(a1);
        assert_eq!(limiter.count("10.0.0.1"), 1);
        let a3 = limiter.open("10.0.0.1").unwrap();
        drop((a2, a3, b));
        // No entry outlives its last connection.
        assert_eq!(limiter.keys(), 0);
    }

    #[test]
    fn connection_guards_may_drop_on_other_threads() {
        let limiter = ConnectionLimiter::<u8>::new(8);
        let guards: Vec<_> = (0..8).map(|_| limiter.open(1).unwrap()).collect();
        assert!(limiter.open(1).is_none());
        std::thread::spawn(move || drop(guards)).join().unwrap();
        assert_eq!(limiter.keys(), 0);
        assert!(limiter.open(1).is_some());
    }

    #[test]
    fn a_connection_cap_of_zero_is_unlimited() {
        let limiter = ConnectionLimiter::<u8>::new(0);
        let guards: Vec<_> = (0..1000).map(|_| limiter.open(1).unwrap()).collect();
        assert_eq!(limiter.keys(), 0);
        drop(guards);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(ms(1)), 1);
        assert_eq!(retry_after_secs(ms(1000)), 1);
        assert_eq!(retry_after_secs(ms(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
    }

    proptest! {
        #[test]
        fn never_more_than_the_burst_plus_the_rate_over_the_span(
            per_second in 0.5f64..100.0,
            burst in 1u32..20,
            gaps in proptest::collection::vec(0u64..300, 1..200),
        ) {
            let t0 = Instant::now();
            let mut bucket = TokenBucket::new(Quota::new(per_second, burst));
            let interval = bucket.interval;
            let mut now = t0;
            let mut first = None;
            let mut allowed = 0u32;
            for gap in gaps {
                now += ms(gap);
                if bucket.take(now).is_ok() {
                    first.get_or_insert(now);
                    allowed += 1;
                    let span = now - first.unwrap();
                    let bound = burst as u128 + span.as_nanos() / interval.as_nanos();
                    prop_assert!(allowed as u128 <= bound, "{allowed} > {bound}");
                }
            }
        }

        #[test]
        fn the_reported_wait_is_exact(
            per_second in 0.5f64..100.0,
            burst in 1u32..5,
            taken in 1u32..20,
        ) {
            let t0 = Instant::now();
            let mut bucket = TokenBucket::new(Quota::new(per_second, burst));
            for _ in 0..taken {
                let _ = bucket.take(t0);
            }
            match bucket.take(t0) {
                Ok(()) => prop_assert!(taken < burst),
                Err(wait) => {
                    prop_assert!(bucket.take(t0 + wait - Duration::from_nanos(1)).is_err());
                    prop_assert!(bucket.take(t0 + wait).is_ok());
                }
            }
        }
    }
}
