//! The background scrub: one thread per broker that walks the sealed segments of every
//! log the broker owns (partitions, group journals, dead letters), CRC-checking every
//! record, at most [`BrokerOptions::scrub_bytes_per_sec`](crate::BrokerOptions).
//!
//! Why it exists: opening a log trusts its sealed segments through their checked index
//! files, so that start-up costs the same whatever the broker retains, and reads check
//! every record they return. Damage in records nobody reads would go unseen until the
//! day someone needs them; the scrub finds it and marks the segment corrupt in its log,
//! which the topic's info (`corrupt_segments`) and the metrics report. It never changes a
//! record; reads of the damaged records fail with `data_corrupt`, the rest keep serving.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::broker::WeakBroker;
use crate::log_name::LogName;

/// 32 MiB/s: a pass over 10 GB takes about 5 minutes and leaves most of a disk's
/// bandwidth to the broker.
pub const DEFAULT_SCRUB_BYTES_PER_SEC: u64 = 32 * 1024 * 1024;
/// Bounds of a scrub rate other than 0 (off): below 64 KiB/s a pass over a large log
/// would take weeks; above 16 GiB/s is no throttle at all.
pub const MIN_SCRUB_BYTES_PER_SEC: u64 = 64 * 1024;
pub const MAX_SCRUB_BYTES_PER_SEC: u64 = 16 * 1024 * 1024 * 1024;
/// A pass starts at most this often: small data is not reread every few seconds, large
/// data (a pass longer than this) is scrubbed continuously at the rate.
pub const DEFAULT_SCRUB_INTERVAL: Duration = Duration::from_secs(3600);

/// What the scrub has done since the broker opened, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubStats {
    /// Passes completed: every sealed segment of every log checked once.
    pub passes: u64,
    /// Every log the broker has open now.
    pub logs: Vec<LogScrub>,
}

/// One log's share of [`ScrubStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogScrub {
    pub topic: String,
    pub log: LogName,
    /// Bytes of sealed segments the scrub checked (segment lengths).
    pub bytes_scrubbed: u64,
    /// Segments found damaged, by the scrub or by a read, since the log was opened.
    pub corrupt_segments: u64,
}

/// The scrub's counters, shared by the broker and its scrub thread.
#[derive(Debug, Default)]
pub(crate) struct ScrubCounters {
    passes: AtomicU64,
    bytes: Mutex<HashMap<(String, LogName), u64>>,
}

impl ScrubCounters {
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }

    pub fn bytes(&self, topic: &str, log: &LogName) -> u64 {
        let bytes = self.bytes.lock().unwrap();
        bytes
            .get(&(topic.to_owned(), log.clone()))
            .copied()
            .unwrap_or(0)
    }

    fn add_bytes(&self, topic: &str, log: &LogName, n: u64) {
        *self
            .bytes
            .lock()
            .unwrap()
            .entry((topic.to_owned(), log.clone()))
            .or_default() += n;
    }
}

/// The running scrub thread; [`Scrubber::stop`] (or dropping it) ends it promptly, in
/// the middle of a segment if need be.
#[derive(Debug)]
pub struct Scrubber {
    stop: Arc<Stop>,
    thread: Option<JoinHandle<()>>,
}

impl Scrubber {
    /// Starts the thread. It holds the broker only weakly, and ends by itself once the
    /// broker is dropped.
    pub(crate) fn spawn(
        broker: WeakBroker,
        counters: Arc<ScrubCounters>,
        bytes_per_sec: u64,
        interval: Duration,
    ) -> std::io::Result<Scrubber> {
        let stop = Arc::new(Stop::default());
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("surety-scrub".into())
                .spawn(move || run(&broker, &counters, bytes_per_sec, interval, &stop))?
        };
        Ok(Scrubber {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the scrub and waits for its thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.set();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Scrubber {
    fn drop(&mut self) {
        self.halt();
    }
}

fn run(
    broker: &WeakBroker,
    counters: &ScrubCounters,
    bytes_per_sec: u64,
    interval: Duration,
    stop: &Stop,
) {
    // Only to take the groups' async locks when listing the logs: the checks themselves
    // are plain blocking reads on this thread.
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the scrub");
            return;
        }
    };
    loop {
        let started = Instant::now();
        // The logs, not the broker, are held for the pass: dropping the broker ends it.
        let Some(logs) = broker.upgrade().map(|b| rt.block_on(b.owned_logs())) else {
            return;
        };
        let mut throttle = Throttle::new(bytes_per_sec);
        for (topic, name, log) in logs {
            for base in log.sealed_segments() {
                let checked = log.verify_sealed(base, &mut |n| throttle.pace(n, stop));
                if stop.is_set() {
                    return;
                }
                match checked {
                    Ok(Some(check)) => {
                        counters.add_bytes(&topic, &name, check.bytes);
                        if let Some(c) = check.corruption {
                            tracing::error!(topic, log = %name, corruption = %c, "scrub found a corrupt segment");
                        }
                    }
                    // Deleted by retention (or the topic) meanwhile.
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(topic, log = %name, error = %e, "scrub could not read a segment")
                    }
                }
            }
        }
        counters.passes.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(took = ?started.elapsed(), "scrub pass done");
        if stop.sleep((started + interval).saturating_duration_since(Instant::now())) {
            return;
        }
    }
}

/// Keeps the bytes read at most `rate` per second, measured over windows of a second
/// (so a slow stretch is not made up for by a burst).
struct Throttle {
    rate: u64,
    since: Instant,
    bytes: u64,
}

/// Sleeps shorter than this are left for later: a sleep per frame would cost more than
/// the frame.
const SLACK: Duration = Duration::from_millis(10);
const WINDOW: Duration = Duration::from_secs(1);

impl Throttle {
    fn new(rate: u64) -> Self {
        Self {
            rate,
            since: Instant::now(),
            bytes: 0,
        }
    }

    /// Counts `n` bytes read, sleeping while ahead of the rate; breaks once stopped.
    fn pace(&mut self, n: u64, stop: &Stop) -> ControlFlow<()> {
        if stop.is_set() {
            return ControlFlow::Break(());
        }
        self.bytes += n;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate.max(1) as f64);
        let elapsed = self.since.elapsed();
        if due > elapsed + SLACK && stop.sleep(due - elapsed) {
            return ControlFlow::Break(());
        }
        if self.since.elapsed() >= WINDOW {
            self.since = Instant::now();
            self.bytes = 0;
        }
        ControlFlow::Continue(())
    }
}

/// A stop flag that sleepers wake up for.
#[derive(Debug, Default)]
struct Stop {
    set: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Stop {
    fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    fn set(&self) {
        let _guard = self.lock.lock().unwrap();
        self.set.store(true, Ordering::Release);
        self.cv.notify_all();
    }

    /// Sleeps for `d` or until stopped; whether it was stopped.
    fn sleep(&self, d: Duration) -> bool {
        let guard = self.lock.lock().unwrap();
        let _ = self
            .cv
            .wait_timeout_while(guard, d, |_| !self.is_set())
            .unwrap();
        self.is_set()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_keeps_to_its_rate_and_stops_at_once() {
        let stop = Stop::default();
        let mut t = Throttle::new(1024 * 1024);
        let started = Instant::now();
        // 256 KiB at 1 MiB/s: a quarter of a second, in frames of 4 KiB.
        for _ in 0..64 {
            assert!(t.pace(4096, &stop).is_continue());
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(230), "{took:?}");
        stop.set();
        let started = Instant::now();
        assert!(t.pace(1 << 30, &stop).is_break());
        assert!(stop.sleep(Duration::from_secs(60)));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
