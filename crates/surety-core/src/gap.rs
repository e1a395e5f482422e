//! End-to-end loss detection (G4): producers stamp `producer_id` + `sequence`; the
//! consumer side feeds what it sees here, per producer and partition, and learns of gaps
//! (sequences never seen), duplicates and reordering.
//!
//! A sequence above the next expected one opens a gap; a later arrival inside a gap is
//! `Reordered` (and closes that part of the gap); anything else at or below the highest
//! seen is a `Duplicate`. Counts are kept here and as `metrics` counters.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

/// Open gaps remembered per producer and partition; beyond this the oldest are
/// forgotten (a late arrival from one then counts as a duplicate).
const MAX_OPEN_GAPS: usize = 1024;

/// What one observed sequence means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// The next expected sequence (or the first one seen).
    InOrder,
    /// Sequences in `missing` were skipped: lost, or not arrived yet.
    Gap { missing: Range<u64> },
    /// Seen before.
    Duplicate,
    /// Arrived late, inside an earlier gap.
    Reordered,
}

/// Counters over everything observed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GapStats {
    pub in_order: u64,
    /// Gaps opened.
    pub gaps: u64,
    /// Sequences inside gaps that are still open (not arrived late).
    pub missing: u64,
    pub duplicates: u64,
    pub reordered: u64,
}

#[derive(Debug, Default)]
struct Stream {
    highest: u64,
    /// Open gaps: start -> end (exclusive).
    gaps: BTreeMap<u64, u64>,
}

/// Tracks the sequences of every `(producer_id, partition)` seen.
#[derive(Debug, Default)]
pub struct GapDetector {
    first_sequence: Option<u64>,
    streams: HashMap<(String, u32), Stream>,
    stats: GapStats,
}

impl GapDetector {
    /// The first sequence seen of each producer is its baseline (a consumer may start
    /// in the middle of a stream).
    pub fn new() -> Self {
        Self::default()
    }

    /// Every producer is expected to start at `first` (0 for this crate's producers), so
    /// losing its first messages is detected too.
    pub fn starting_at(first: u64) -> Self {
        Self {
            first_sequence: Some(first),
            ..Self::default()
        }
    }

    pub fn stats(&self) -> GapStats {
        self.stats
    }

    /// Open gaps of one producer and partition, oldest first.
    pub fn open_gaps(&self, producer_id: &str, partition: u32) -> Vec<Range<u64>> {
        self.streams
            .get(&(producer_id.to_owned(), partition))
            .map(|s| s.gaps.iter().map(|(&a, &b)| a..b).collect())
            .unwrap_or_default()
    }

    pub fn observe(&mut self, producer_id: &str, partition: u32, sequence: u64) -> Observation {
        let key = (producer_id.to_owned(), partition);
        let obs = match self.streams.get_mut(&key) {
            Some(stream) => stream.observe(sequence),
            None => {
                let mut stream = Stream {
                    highest: sequence,
                    gaps: BTreeMap::new(),
                };
                let obs = match self.first_sequence {
                    Some(first) if sequence > first => {
                        stream.gaps.insert(first, sequence);
                        Observation::Gap {
                            missing: first..sequence,
                        }
                    }
                    _ => Observation::InOrder,
                };
                self.streams.insert(key, stream);
                obs
            }
        };
        self.count(&obs);
        obs
    }

    fn count(&mut self, obs: &Observation) {
        match obs {
            Observation::InOrder => self.stats.in_order += 1,
            Observation::Gap { missing } => {
                let n = missing.end - missing.start;
                self.stats.gaps += 1;
                self.stats.missing += n;
                metrics::counter!("surety_client_gaps_total").increment(1);
                metrics::counter!("surety_client_missing_sequences_total").increment(n);
            }
            Observation::Duplicate => {
                self.stats.duplicates += 1;
                metrics::counter!("surety_client_duplicates_total").increment(1);
            }
            Observation::Reordered => {
                self.stats.reordered += 1;
                self.stats.missing -= 1;
                metrics::counter!("surety_client_reordered_total").increment(1);
            }
        }
    }
}

impl Stream {
    fn observe(&mut self, seq: u64) -> Observation {
        if Some(seq) == self.highest.checked_add(1) {
            self.highest = seq;
            return Observation::InOrder;
        }
        if seq > self.highest {
            let missing = self.highest + 1..seq;
            self.gaps.insert(missing.start, missing.end);
            if self.gaps.len() > MAX_OPEN_GAPS {
                self.gaps.pop_first();
            }
            self.highest = seq;
            return Observation::Gap { missing };
        }
        // At or below the highest: inside an open gap, or seen before.
        let Some((&start, &end)) = self.gaps.range(..=seq).next_back() else {
            return Observation::Duplicate;
        };
        if seq >= end {
            return Observation::Duplicate;
        }
        self.gaps.remove(&start);
        if start < seq {
            self.gaps.insert(start, seq);
        }
        if seq + 1 < end {
            self.gaps.insert(seq + 1, end);
        }
        Observation::Reordered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classifies_each_case() {
        let mut d = GapDetector::new();
        assert_eq!(d.observe("p", 0, 5), Observation::InOrder);
        assert_eq!(d.observe("p", 0, 6), Observation::InOrder);
        assert_eq!(d.observe("p", 0, 9), Observation::Gap { missing: 7..9 });
        assert_eq!(d.observe("p", 0, 8), Observation::Reordered);
        assert_eq!(d.observe("p", 0, 8), Observation::Duplicate);
        assert_eq!(d.observe("p", 0, 6), Observation::Duplicate);
        assert_eq!(d.open_gaps("p", 0), vec![7..8]);
        // Producers and partitions are separate streams.
        assert_eq!(d.observe("p", 1, 0), Observation::InOrder);
        assert_eq!(d.observe("q", 0, 100), Observation::InOrder);
        let s = d.stats();
        assert_eq!(
            s,
            GapStats {
                in_order: 4,
                gaps: 1,
                missing: 1,
                duplicates: 2,
                reordered: 1
            }
        );
    }

    #[test]
    fn an_expected_start_detects_a_lost_head() {
        let mut d = GapDetector::starting_at(0);
        assert_eq!(d.observe("p", 0, 2), Observation::Gap { missing: 0..2 });
        assert_eq!(d.observe("p", 0, 0), Observation::Reordered);
        assert_eq!(d.open_gaps("p", 0), vec![1..2]);
        let mut d = GapDetector::starting_at(0);
        assert_eq!(d.observe("p", 0, 0), Observation::InOrder);
    }

    proptest! {
        /// Any arrival order of a set of sequences, with repeats: the counts match a
        /// simple model, and what never arrived is exactly what is reported missing.
        #[test]
        fn counts_match_a_model(
            arrivals in prop::collection::vec(0u64..64, 1..200),
        ) {
            let mut d = GapDetector::starting_at(0);
            let mut seen = std::collections::BTreeSet::new();
            let mut duplicates = 0;
            for &s in &arrivals {
                let obs = d.observe("p", 0, s);
                if !seen.insert(s) {
                    duplicates += 1;
                    prop_assert_eq!(obs, Observation::Duplicate);
                } else {
                    prop_assert_ne!(obs, Observation::Duplicate);
                }
            }
            let highest = *seen.iter().max().unwrap();
            let never: Vec<u64> = (0..=highest).filter(|s| !seen.contains(s)).collect();
            let stats = d.stats();
            prop_assert_eq!(stats.duplicates, duplicates);
            prop_assert_eq!(stats.missing, never.len() as u64);
            prop_assert_eq!(
                stats.in_order + stats.reordered + stats.gaps,
                seen.len() as u64
            );
            let open: Vec<u64> = d.open_gaps("p", 0).into_iter().flatten().collect();
            prop_assert_eq!(open, never);
        }

        /// In-order arrival of a contiguous run is all InOrder.
        #[test]
        fn a_contiguous_run_has_no_gaps(start in 0u64..1000, len in 1usize..100) {
            let mut d = GapDetector::new();
            for s in start..start + len as u64 {
                prop_assert_eq!(d.observe("p", 3, s), Observation::InOrder);
            }
            prop_assert_eq!(d.stats().in_order, len as u64);
        }
    }
}
