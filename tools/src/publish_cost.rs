//! `streamhub-bench publish-cost`: what one publish costs the publisher as
//! the room's subscribers grow, measured on the hub itself (in this
//! process, no sockets): the room log promises no work per subscriber on
//! the publish path, so the figure should not move with their number.
//!
//! For each subscriber count a fresh hub gets that many subscriber threads
//! (at the server's stream priority), each taking everything it is woken
//! for; one publisher publishes at a steady rate and times every
//! `Hub::publish` call, including the one futex call that wakes the parked.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::report::{row, Report};
use streamhub::config::RawArgs;
use streamhub::error::Error;
use streamhub::hub::{Draft, Hub, HubConfig, Protocol, Wait, MAX_BURST};
use streamhub::threads::Priority;

/// What to run.
#[derive(Clone, Debug)]
pub struct PublishCostPlan {
    pub subscribers: Vec<usize>,
    pub rate: u64,
    pub duration: Duration,
    pub size: usize,
    pub priority: Priority,
}

impl PublishCostPlan {
    pub fn from_raw(raw: &RawArgs) -> Result<PublishCostPlan, Error> {
        let mut subscribers = Vec::new();
        for n in raw.string("subscribers").split(',') {
            let n: usize = n.trim().parse().map_err(|_| {
                Error::Config(format!("--subscribers: '{n}' is not a whole number"))
            })?;
            if n > 100_000 {
                return Err(Error::Config(format!("--subscribers: {n} is over 100000")));
            }
            subscribers.push(n);
        }
        let priority = Priority::parse(raw.string("priority").trim())
            .ok_or_else(|| Error::Config("--priority: idle, low or normal".into()))?;
        Ok(PublishCostPlan {
            subscribers,
            rate: raw.number("rate", 1, 1_000_000)?,
            duration: Duration::from_secs(raw.number("duration-secs", 1, 3600)?),
            size: raw.number("size", 1, 1 << 20)? as usize,
            priority,
        })
    }
}

/// One subscriber count's figures.
#[derive(Clone, Debug)]
pub struct Row {
    pub subscribers: usize,
    pub published: u64,
    /// Publish durations, sorted, in nanoseconds.
    pub nanos: Vec<u64>,
    pub delivered: u64,
    pub dropped: u64,
}

impl Row {
    fn percentile(&self, p: f64) -> u64 {
        let i = ((self.nanos.len() as f64 - 1.0) * p).round() as usize;
        self.nanos.get(i).copied().unwrap_or_default()
    }
}

pub struct PublishCostResult {
    pub plan: PublishCostPlan,
    pub rows: Vec<Row>,
}

impl PublishCostResult {
    pub fn report(&self) -> Report {
        let us = |n: u64| (n as f64 / 100.0).round() / 10.0;
        let json_rows: Vec<_> = self
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "subscribers": r.subscribers,
                    "published": r.published,
                    "delivered": r.delivered,
                    "dropped": r.dropped,
                    "publish_us_p50": us(r.percentile(0.5)),
                    "publish_us_p99": us(r.percentile(0.99)),
                    "publish_us_max": us(*r.nanos.last().unwrap_or(&0)),
                })
            })
            .collect();
        let mut report = Report::new(
            format!(
                "publish cost on the hub, {} msgs/s for {:?}, {} B, subscribers at {:?}",
                self.plan.rate, self.plan.duration, self.plan.size, self.plan.priority
            ),
            serde_json::json!({
                "scenario": "publish-cost",
                "rate": self.plan.rate,
                "size": self.plan.size,
                "rows": json_rows,
            }),
        );
        for r in &self.rows {
            report.section(
                &format!("{} subscribers", r.subscribers),
                vec![
                    row("published", r.published),
                    row("delivered", r.delivered),
                    row("dropped as slow", r.dropped),
                    row(
                        "publish p50 / p99 / max",
                        format!(
                            "{} / {} / {} us",
                            us(r.percentile(0.5)),
                            us(r.percentile(0.99)),
                            us(*r.nanos.last().unwrap_or(&0))
                        ),
                    ),
                ],
            );
        }
        report
    }
}

pub fn run(plan: &PublishCostPlan) -> Result<PublishCostResult, Error> {
    let rows = plan
        .subscribers
        .iter()
        .map(|&n| measure(plan, n))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PublishCostResult {
        plan: plan.clone(),
        rows,
    })
}

fn measure(plan: &PublishCostPlan, subscribers: usize) -> Result<Row, Error> {
    let hub = Arc::new(Hub::new(HubConfig::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let taken = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let (mut sub, _) = hub.subscribe("cost", None, Protocol::Sse)?;
        let (stop, taken, priority) = (stop.clone(), taken.clone(), plan.priority);
        let reader = thread::Builder::new()
            .name(format!("cost-sub-{i}"))
            .stack_size(64 * 1024)
            .spawn(move || {
                priority.apply_to_current_thread();
                while !stop.load(Ordering::Relaxed) {
                    match sub.wait(Some(Instant::now() + Duration::from_millis(200))) {
                        Wait::Ready => {
                            let n = sub.peek(MAX_BURST).count();
                            sub.advance(n);
                            taken.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Wait::Closed(_) => break,
                        Wait::TimedOut => {}
                    }
                }
            })
            .map_err(|e| Error::Io(format!("cannot start a subscriber thread: {e}")))?;
        readers.push(reader);
    }
    let content = "x".repeat(plan.size);
    let every = Duration::from_secs_f64(1.0 / plan.rate as f64);
    let started = Instant::now();
    let mut next = started;
    let mut nanos = Vec::new();
    while started.elapsed() < plan.duration {
        let now = Instant::now();
        if now < next {
            thread::sleep(next - now);
        }
        next += every;
        let t = Instant::now();
        hub.publish(Draft::chat("cost", "bench", content.as_str()))?;
        nanos.push(t.elapsed().as_nanos() as u64);
    }
    // Let the subscribers take the last ones (bounded: a dropped one never
    // will), then stop them.
    let want = nanos.len() as u64 * subscribers as u64;
    let drain_until = Instant::now() + Duration::from_secs(5);
    while taken.load(Ordering::Relaxed) < want && Instant::now() < drain_until {
        thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    let dropped = hub.stats().closed.slow_consumer;
    for r in readers {
        let _ = r.join();
    }
    nanos.sort_unstable();
    Ok(Row {
        subscribers,
        published: nanos.len() as u64,
        nanos,
        delivered: taken.load(Ordering::Relaxed),
        dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_every_publish_and_every_delivery() {
        let plan = PublishCostPlan {
            subscribers: vec![0, 3],
            rate: 200,
            duration: Duration::from_millis(200),
            size: 10,
            priority: Priority::Normal,
        };
        let result = run(&plan).unwrap();
        assert_eq!(result.rows.len(), 2);
        let three = &result.rows[1];
        assert!(three.published >= 10, "{three:?}");
        assert_eq!(three.delivered, three.published * 3);
        assert_eq!(three.dropped, 0);
        assert!(three.percentile(0.5) <= three.percentile(0.99));
    }
}
