//! What a group remembers of a partition beyond its committed offset, kept in the commit
//! itself: Kafka's offset commit carries a metadata string per partition, stored with the
//! offset by the group coordinator (replicated like the offset; `offset.metadata.max.bytes`,
//! 4096 by default, bounds it). Surety writes there:
//!
//! - the records above the committed offset that are already settled (acked out of
//!   order, dead-lettered, copied for a retry), so a new owner of the partition skips them
//!   instead of running them again;
//! - the records above it that were delivered and not settled, with how often, so a
//!   record whose consumer died is redelivered with its count (and one whose consumers
//!   keep dying reaches `max_deliveries` and the dead letters, instead of looping).
//!
//! `v1 a=0-3,7 d=4-6:1,8:2`: offsets relative to the committed offset, ranges inclusive.
//! What does not fit is given up in the safe direction: settled ranges from the top
//! (those records run again: duplicates, which the consumer side drops), then delivered
//! ranges merged with the larger count (a count may rise early, never fall).

use std::collections::{BTreeMap, BTreeSet};

/// Kafka's default `offset.metadata.max.bytes` is 4096.
pub const MAX_METADATA: usize = 4000;

/// The journal read back from a commit: absolute offsets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Journal {
    /// Settled ranges, sorted, inclusive.
    pub settled: Vec<(i64, i64)>,
    /// Delivered ranges with their delivery counts, sorted, inclusive.
    pub delivered: Vec<(i64, i64, u32)>,
}

impl Journal {
    /// Reads the metadata of a commit at `base`; anything that is not a journal (another
    /// tool's metadata, a damaged one) reads as empty: the records run again.
    pub fn decode(base: i64, metadata: &str) -> Journal {
        let mut j = Journal::default();
        let mut parts = metadata.split(' ');
        if parts.next() != Some("v1") {
            return j;
        }
        for part in parts {
            let ok = if let Some(list) = part.strip_prefix("a=") {
                list.split(',').try_for_each(|r| {
                    let (lo, hi) = range(r)?;
                    j.settled.push((base + lo, base + hi));
                    Some(())
                })
            } else if let Some(list) = part.strip_prefix("d=") {
                list.split(',').try_for_each(|r| {
                    let (r, n) = r.split_once(':')?;
                    let (lo, hi) = range(r)?;
                    j.delivered.push((base + lo, base + hi, n.parse().ok()?));
                    Some(())
                })
            } else {
                None
            };
            if ok.is_none() {
                return Journal::default();
            }
        }
        j.settled.sort_unstable();
        j.delivered.sort_unstable();
        j
    }

    pub fn is_settled(&self, offset: i64) -> bool {
        let i = self.settled.partition_point(|r| r.1 < offset);
        self.settled.get(i).is_some_and(|r| r.0 <= offset)
    }

    /// How often `offset` was delivered before (0: never, as far as the journal knows).
    pub fn times(&self, offset: i64) -> u32 {
        let i = self.delivered.partition_point(|r| r.1 < offset);
        self.delivered
            .get(i)
            .filter(|r| r.0 <= offset)
            .map_or(0, |r| r.2)
    }

    /// The part at and above `from` (what this session has not read yet).
    pub fn from(&self, from: i64) -> Journal {
        Journal {
            settled: self
                .settled
                .iter()
                .filter(|r| r.1 >= from)
                .map(|r| (r.0.max(from), r.1))
                .collect(),
            delivered: self
                .delivered
                .iter()
                .filter(|r| r.1 >= from)
                .map(|r| (r.0.max(from), r.1, r.2))
                .collect(),
        }
    }
}

/// Builds the metadata of a commit at `base` from what this session knows (`settled`,
/// and `delivered` with counts, both ≥ `base`) and the part of the earlier journal it has
/// not read yet (`unread`, ≥ everything in the sets).
pub fn encode(
    base: i64,
    settled: &BTreeSet<i64>,
    delivered: &BTreeMap<i64, u32>,
    unread: &Journal,
) -> String {
    let mut a: Vec<(i64, i64)> = Vec::new();
    for &o in settled.range(base..) {
        match a.last_mut() {
            Some(last) if last.1 + 1 == o => last.1 = o,
            _ => a.push((o, o)),
        }
    }
    for &(lo, hi) in &unread.settled {
        match a.last_mut() {
            Some(last) if last.1 + 1 >= lo => last.1 = last.1.max(hi),
            _ => a.push((lo, hi)),
        }
    }
    let mut d: Vec<(i64, i64, u32)> = Vec::new();
    for (&o, &n) in delivered.range(base..).filter(|(_, n)| **n > 0) {
        match d.last_mut() {
            Some(last) if last.1 + 1 == o && last.2 == n => last.1 = o,
            _ => d.push((o, o, n)),
        }
    }
    d.extend(unread.delivered.iter().copied());
    loop {
        let text = render(base, &a, &d);
        if text.len() <= MAX_METADATA {
            return text;
        }
        if a.pop().is_some() {
            continue;
        }
        // Merge the two closest delivered ranges, keeping the larger count.
        let Some(i) = (0..d.len().saturating_sub(1)).min_by_key(|&i| d[i + 1].0 - d[i].1) else {
            return "v1".to_owned();
        };
        let next = d.remove(i + 1);
        d[i] = (d[i].0, next.1, d[i].2.max(next.2));
    }
}

fn render(base: i64, a: &[(i64, i64)], d: &[(i64, i64, u32)]) -> String {
    use std::fmt::Write;
    let mut s = String::from("v1");
    let put = |s: &mut String, lo: i64, hi: i64| {
        if lo == hi {
            let _ = write!(s, "{}", lo - base);
        } else {
            let _ = write!(s, "{}-{}", lo - base, hi - base);
        }
    };
    if !a.is_empty() {
        s.push_str(" a=");
        for (i, &(lo, hi)) in a.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            put(&mut s, lo, hi);
        }
    }
    if !d.is_empty() {
        s.push_str(" d=");
        for (i, &(lo, hi, n)) in d.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            put(&mut s, lo, hi);
            let _ = write!(s, ":{n}");
        }
    }
    s
}

fn range(r: &str) -> Option<(i64, i64)> {
    let (lo, hi) = match r.split_once('-') {
        Some((lo, hi)) => (lo.parse().ok()?, hi.parse().ok()?),
        None => {
            let o = r.parse().ok()?;
            (o, o)
        }
    };
    (0 <= lo && lo <= hi).then_some((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_round_trips_relative_to_its_base() {
        let settled: BTreeSet<i64> = [100, 101, 102, 103, 107].into();
        let delivered: BTreeMap<i64, u32> = [(104, 1), (105, 1), (106, 1), (108, 2)].into();
        let text = encode(100, &settled, &delivered, &Journal::default());
        assert_eq!(text, "v1 a=0-3,7 d=4-6:1,8:2");
        // A later commit at a higher base reads the same offsets.
        let j = Journal::decode(100, &text);
        assert!(j.is_settled(103) && j.is_settled(107) && !j.is_settled(104));
        assert_eq!((j.times(104), j.times(108), j.times(109)), (1, 2, 0));
    }

    #[test]
    fn what_this_session_has_not_read_is_carried_over() {
        let earlier = Journal::decode(10, "v1 a=5-6 d=8-9:3");
        assert_eq!(earlier.from(12).settled, vec![(15, 16)]);
        assert_eq!(earlier.from(17).settled, vec![] as Vec<(i64, i64)>);
        let unread = earlier.from(16);
        assert_eq!(unread.settled, vec![(16, 16)]);
        assert_eq!(unread.delivered, vec![(18, 19, 3)]);
        let text = encode(12, &[13].into(), &[(14, 1)].into(), &unread);
        assert_eq!(text, "v1 a=1,4 d=2:1,6-7:3");
    }

    #[test]
    fn foreign_or_damaged_metadata_reads_as_empty() {
        for m in ["", "hello", "v1 a=x", "v1 d=1-2", "v1 a=3-1", "v2 a=1"] {
            assert_eq!(Journal::decode(0, m), Journal::default(), "{m:?}");
        }
    }

    #[test]
    fn too_much_gives_up_settled_ranges_then_merges_counts_upward() {
        let settled: BTreeSet<i64> = (0..5000).map(|i| i * 2).collect();
        let delivered: BTreeMap<i64, u32> = (0..3000)
            .map(|i| (20_000 + i * 2, 1 + (i % 3) as u32))
            .collect();
        let text = encode(0, &settled, &delivered, &Journal::default());
        assert!(text.len() <= MAX_METADATA, "{}", text.len());
        let j = Journal::decode(0, &text);
        assert!(j.settled.is_empty());
        for i in 0..3000 {
            let o = 20_000 + i * 2;
            assert!(j.times(o) > (i % 3) as u32, "offset {o} lost its count");
        }
    }
}
