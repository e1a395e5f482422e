//! The sparse indexes of the few sealed segments read last. Sealed segments' indexes live
//! in their files, not in memory: at one entry per 4 KiB, keeping them all would make the
//! log's memory grow with its retained bytes (10 GB: ~40 MB). A reader of a sealed
//! segment usually reads on in it, so a handful of slots serves a consumer walking the
//! log and a few seeks at once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::index::IndexEntry;

/// How many sealed segments' indexes one log keeps (at most 256 KiB each for a 64 MiB
/// segment).
pub(crate) const INDEX_CACHE_SLOTS: usize = 4;

/// Most recently used first.
#[derive(Debug, Default)]
pub(crate) struct IndexCache {
    slots: Mutex<VecDeque<(u64, Arc<[IndexEntry]>)>>,
}

impl IndexCache {
    /// The cached index of the segment based at `base`, marked as just used.
    pub fn get(&self, base: u64) -> Option<Arc<[IndexEntry]>> {
        let mut slots = self.slots.lock().unwrap();
        let i = slots.iter().position(|(b, _)| *b == base)?;
        let hit = slots.remove(i)?;
        let entries = hit.1.clone();
        slots.push_front(hit);
        Some(entries)
    }

    pub fn insert(&self, base: u64, entries: Arc<[IndexEntry]>) {
        let mut slots = self.slots.lock().unwrap();
        slots.retain(|(b, _)| *b != base);
        slots.push_front((base, entries));
        slots.truncate(INDEX_CACHE_SLOTS);
    }

    pub fn remove(&self, base: u64) {
        self.slots.lock().unwrap().retain(|(b, _)| *b != base);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: u64) -> Arc<[IndexEntry]> {
        vec![IndexEntry {
            offset: n,
            position: 32,
        }]
        .into()
    }

    #[test]
    fn keeps_the_most_recently_used_slots() {
        let c = IndexCache::default();
        for b in 0..INDEX_CACHE_SLOTS as u64 {
            c.insert(b, entries(b));
        }
        // Using 0 makes 1 the least recently used, so the next insert evicts 1.
        assert_eq!(c.get(0).unwrap()[0].offset, 0);
        c.insert(99, entries(99));
        assert!(c.get(1).is_none());
        assert!(c.get(0).is_some() && c.get(99).is_some());
        c.remove(99);
        assert!(c.get(99).is_none());
    }
}
