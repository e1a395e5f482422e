//! The consumer side's memory of what it already handled, by (producer id, sequence): a
//! second copy of a message that the broker stored twice — a producer retry that came
//! after the broker's dedupe window (NATS JetStream's `duplicate_window`, two minutes by
//! default), a relay that republished a row after a long outage — is acked without
//! running the handler, and counted (`ConsumerStats::duplicates_dropped`,
//! `surety_consumer_duplicates_dropped_total`).
//!
//! It bounds duplicates; it does not make effects exactly-once. The memory
//! ([`MemoryLedger`]) is one consumer process's: a copy delivered to another consumer
//! of the group, or after a restart, is handled again ([`FileLedger`](crate::FileLedger)
//! keeps one consumer's memory across its restarts) — the `Inbox` in the handler's
//! transaction is what applies a message once. docs/backends.md ("The two windows")
//! says which window covers what.
//!
//! The driver turns it on by itself where the transport's publish dedupe has a time
//! window or none (`PublishDedupe::Native { window: Time(_) }`, `ClientSession`, `None`);
//! a broker that remembers sequences per producer (Surety's own) needs none.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use crate::capabilities::{DedupeWindow, PublishDedupe};

/// What the ledger says of a delivery's (producer id, sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Not handled yet: run the handler; the stamp is claimed until
    /// [`finish`](SettledLedger::finish).
    Run,
    /// Handled successfully before: drop this copy (ack it unrun).
    Handled,
    /// Another delivery of it is being handled right now. Neither run nor drop it: that
    /// one may still fail, and this may be the same message redelivered after its lease
    /// ran out, whose ack would then settle a message nobody handled. The driver hands
    /// it back (a nack) to come again once the other has ended.
    Running,
}

/// What a consumer remembers of the (producer id, sequence) pairs it handled.
pub trait SettledLedger: Send + Sync + std::fmt::Debug {
    /// Called before the handler; see [`Claim`].
    fn claim(&self, producer: &str, sequence: u64) -> Claim;
    /// The handler of a claimed stamp ended: `handled` (it returned `Ok`) records it, else
    /// the claim is released so that the redelivery runs.
    fn finish(&self, producer: &str, sequence: u64, handled: bool);
}

/// Whether a consumer on a transport with this publish dedupe needs a ledger: every
/// dedupe but a per-producer sequence window (which the broker keeps across restarts)
/// lets a late retry be stored twice.
pub fn needed(dedupe: &PublishDedupe) -> bool {
    !matches!(
        dedupe,
        PublishDedupe::Native {
            window: DedupeWindow::Sequences(_)
        }
    )
}

/// A ledger in this process's memory: the last `window` sequences of each of the last
/// `producers` producers seen. A sequence below a producer's window cannot be checked
/// and is run (at-least-once wins over dropping).
#[derive(Debug)]
pub struct MemoryLedger {
    window: u64,
    producers: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    by_producer: HashMap<String, Producer>,
    /// Producers in the order first seen, for eviction.
    order: VecDeque<String>,
}

#[derive(Debug, Default)]
struct Producer {
    handled: BTreeSet<u64>,
    running: HashSet<u64>,
    highest: u64,
}

/// Sequences remembered per producer by [`MemoryLedger::default`]: as many as the Surety
/// broker's own per-producer window.
pub const DEFAULT_WINDOW: u64 = 10_000;
/// Producers remembered by [`MemoryLedger::default`].
pub const DEFAULT_PRODUCERS: usize = 1_000;

impl Default for MemoryLedger {
    fn default() -> Self {
        Self::new(DEFAULT_WINDOW, DEFAULT_PRODUCERS)
    }
}

impl MemoryLedger {
    /// Remembers the last `window` sequences (at least 1) of each of the last `producers`
    /// producers (at least 1).
    pub fn new(window: u64, producers: usize) -> Self {
        Self {
            window: window.max(1),
            producers: producers.max(1),
            state: Mutex::new(State::default()),
        }
    }
}

impl SettledLedger for MemoryLedger {
    fn claim(&self, producer: &str, sequence: u64) -> Claim {
        let mut state = self.state.lock().unwrap();
        if !state.by_producer.contains_key(producer) {
            state.admit(producer, self.producers);
        }
        let p = state.by_producer.get_mut(producer).expect("admitted above");
        if p.handled.contains(&sequence) {
            return Claim::Handled;
        }
        if !p.running.insert(sequence) {
            return Claim::Running;
        }
        Claim::Run
    }

    fn finish(&self, producer: &str, sequence: u64, handled: bool) {
        let mut state = self.state.lock().unwrap();
        let Some(p) = state.by_producer.get_mut(producer) else {
            return;
        };
        p.running.remove(&sequence);
        if handled {
            p.remember(sequence, self.window);
        }
    }
}

impl MemoryLedger {
    /// Records `sequence` of `producer` as handled without a claim (a ledger reloaded from
    /// its file, [`FileLedger`](crate::FileLedger)).
    pub(crate) fn remember(&self, producer: &str, sequence: u64) {
        let mut state = self.state.lock().unwrap();
        if !state.by_producer.contains_key(producer) {
            state.admit(producer, self.producers);
        }
        let p = state.by_producer.get_mut(producer).expect("admitted above");
        p.remember(sequence, self.window);
    }

    /// Every handled stamp, producers in the order they were first seen (the eviction
    /// order), sequences ascending.
    pub(crate) fn handled(&self) -> Vec<(String, Vec<u64>)> {
        let state = self.state.lock().unwrap();
        state
            .order
            .iter()
            .filter_map(|name| {
                let p = state.by_producer.get(name)?;
                Some((name.clone(), p.handled.iter().copied().collect()))
            })
            .collect()
    }

    /// How many handled stamps are remembered.
    pub(crate) fn len(&self) -> usize {
        let state = self.state.lock().unwrap();
        state.by_producer.values().map(|p| p.handled.len()).sum()
    }
}

impl State {
    /// Starts remembering `producer`, forgetting the oldest one if `producers` are known.
    fn admit(&mut self, producer: &str, producers: usize) {
        if self.order.len() >= producers
            && let Some(old) = self.order.pop_front()
        {
            self.by_producer.remove(&old);
        }
        self.order.push_back(producer.to_owned());
        self.by_producer
            .insert(producer.to_owned(), Producer::default());
    }
}

impl Producer {
    /// Records a handled sequence and forgets those that fell below the window.
    fn remember(&mut self, sequence: u64, window: u64) {
        self.highest = self.highest.max(sequence);
        let floor = self.highest.saturating_sub(window - 1);
        if sequence >= floor {
            self.handled.insert(sequence);
        }
        while self.handled.first().is_some_and(|&s| s < floor) {
            self.handled.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handled_stamp_is_dropped_a_failed_one_runs_again() {
        let l = MemoryLedger::default();
        assert_eq!(l.claim("p", 1), Claim::Run, "first delivery runs");
        assert_eq!(
            l.claim("p", 1),
            Claim::Running,
            "a copy while the first still runs is neither run nor dropped"
        );
        l.finish("p", 1, false);
        assert_eq!(
            l.claim("p", 1),
            Claim::Run,
            "after a failure the redelivery runs"
        );
        l.finish("p", 1, true);
        assert_eq!(
            l.claim("p", 1),
            Claim::Handled,
            "after success a copy is dropped"
        );
        assert_eq!(
            l.claim("q", 1),
            Claim::Run,
            "another producer's sequence 1 is its own"
        );
    }

    #[test]
    fn only_the_window_is_remembered() {
        let l = MemoryLedger::new(3, 10);
        for s in 0..10 {
            assert_eq!(l.claim("p", s), Claim::Run);
            l.finish("p", s, true);
        }
        assert_eq!(l.claim("p", 9), Claim::Handled);
        assert_eq!(l.claim("p", 7), Claim::Handled);
        assert_eq!(
            l.claim("p", 6),
            Claim::Run,
            "below the window: run, not dropped"
        );
    }

    #[test]
    fn the_oldest_producer_is_forgotten_first() {
        let l = MemoryLedger::new(10, 2);
        for p in ["a", "b", "c"] {
            assert_eq!(l.claim(p, 1), Claim::Run);
            l.finish(p, 1, true);
        }
        assert_eq!(l.claim("c", 1), Claim::Handled);
        assert_eq!(l.claim("b", 1), Claim::Handled);
        assert_eq!(l.claim("a", 1), Claim::Run, "a was evicted");
    }

    #[test]
    fn sequence_windows_need_no_ledger() {
        use std::time::Duration;
        assert!(!needed(&PublishDedupe::Native {
            window: DedupeWindow::Sequences(10)
        }));
        assert!(needed(&PublishDedupe::Native {
            window: DedupeWindow::Time(Duration::from_secs(120))
        }));
        assert!(needed(&PublishDedupe::None));
    }
}
