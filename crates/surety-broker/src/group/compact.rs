//! Ordered containers for the group state that cost little per entry, because a group
//! may hold millions of unsettled messages (docs/broker.md, "Memory per unsettled
//! message"). `BTreeMap`/`BTreeSet` leaves hold at most 11 entries and end about half
//! full under the appends a group mostly does, so their per-entry cost is about twice the
//! entry plus node overhead; these keep entries in larger, fuller blocks.
//!
//! - [`OffsetMap`]: offset → value, in pages of 64 offsets with a presence mask; a page
//!   stores only its present values, in offset order, so the offset costs nothing and a
//!   page with one value costs one value.
//! - [`SortedSet`]: a sorted set in chunks of up to [`CHUNK`] entries; appends fill a chunk
//!   to the brim, inserts in the middle split one in two.

use std::collections::BTreeMap;
use std::ops::Bound;

const PAGE_BITS: u32 = 6;
const PAGE: u64 = 1 << PAGE_BITS;

/// Offset → `V`, ordered by offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OffsetMap<V> {
    /// Page number (offset / 64) → its present values. No page is empty.
    pages: BTreeMap<u64, Page<V>>,
    len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Page<V> {
    /// Bit `i`: offset `page * 64 + i` is present.
    present: u64,
    /// The present values, in offset order (value of bit `i` at the rank of bit `i`).
    values: Vec<V>,
}

impl<V> Page<V> {
    fn rank(&self, bit: u32) -> usize {
        (self.present & ((1u64 << bit) - 1)).count_ones() as usize
    }
}

fn page_of(offset: u64) -> (u64, u32) {
    (offset >> PAGE_BITS, (offset & (PAGE - 1)) as u32)
}

/// Gives memory back once a block is at most a quarter full, so a straggler left in a
/// page or chunk costs its own bytes, not those of the 63 that were settled around it.
/// (A page only shrinks: offsets join at `next_fresh`, the last page. A chunk that grows
/// again doubles, and must lose half before it shrinks again.)
fn shrink<T>(v: &mut Vec<T>) {
    if v.len() * 4 <= v.capacity() {
        v.shrink_to_fit();
    }
}

impl<V> Default for OffsetMap<V> {
    fn default() -> Self {
        Self {
            pages: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<V> OffsetMap<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn get(&self, offset: u64) -> Option<&V> {
        let (p, bit) = page_of(offset);
        let page = self.pages.get(&p)?;
        (page.present & (1 << bit) != 0).then(|| &page.values[page.rank(bit)])
    }

    pub fn get_mut(&mut self, offset: u64) -> Option<&mut V> {
        let (p, bit) = page_of(offset);
        let page = self.pages.get_mut(&p)?;
        if page.present & (1 << bit) == 0 {
            return None;
        }
        let r = page.rank(bit);
        Some(&mut page.values[r])
    }

    pub fn contains(&self, offset: u64) -> bool {
        self.get(offset).is_some()
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, offset: u64, value: V) -> Option<V> {
        let (p, bit) = page_of(offset);
        let page = self.pages.entry(p).or_insert_with(|| Page {
            present: 0,
            values: Vec::new(),
        });
        let r = page.rank(bit);
        if page.present & (1 << bit) != 0 {
            return Some(std::mem::replace(&mut page.values[r], value));
        }
        page.present |= 1 << bit;
        page.values.insert(r, value);
        self.len += 1;
        None
    }

    pub fn remove(&mut self, offset: u64) -> Option<V> {
        let (p, bit) = page_of(offset);
        let page = self.pages.get_mut(&p)?;
        if page.present & (1 << bit) == 0 {
            return None;
        }
        let r = page.rank(bit);
        page.present &= !(1 << bit);
        let value = page.values.remove(r);
        if page.present == 0 {
            self.pages.remove(&p);
        } else {
            shrink(&mut page.values);
        }
        self.len -= 1;
        Some(value)
    }

    /// The lowest offset present.
    pub fn first_offset(&self) -> Option<u64> {
        let (&p, page) = self.pages.first_key_value()?;
        Some((p << PAGE_BITS) + u64::from(page.present.trailing_zeros()))
    }

    /// How many offsets below `end` are present.
    pub fn count_below(&self, end: u64) -> usize {
        let (p_end, bit) = page_of(end);
        let whole: usize = self
            .pages
            .range(..p_end)
            .map(|(_, page)| page.values.len())
            .sum();
        whole + self.pages.get(&p_end).map_or(0, |page| page.rank(bit))
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &V)> + '_ {
        self.pages.iter().flat_map(|(&p, page)| {
            let mut bits = page.present;
            page.values.iter().map(move |v| {
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                ((p << PAGE_BITS) + u64::from(bit), v)
            })
        })
    }

    /// The offsets present below `end`, ascending.
    pub fn offsets_below(&self, end: u64) -> Vec<u64> {
        self.iter()
            .map(|(o, _)| o)
            .take_while(|&o| o < end)
            .collect()
    }

    pub fn clear(&mut self) {
        self.pages.clear();
        self.len = 0;
    }
}

/// Entries per chunk of a [`SortedSet`]: inserting into a full one moves at most this
/// many entries, and the map of chunks costs a fraction of a byte per entry.
pub(crate) const CHUNK: usize = 64;

/// A sorted set of `K`.
#[derive(Debug, Clone)]
pub(crate) struct SortedSet<K> {
    /// Chunk key → the chunk's entries, sorted. A key is at most its chunk's first entry
    /// and above every entry of the chunk before it (it need not be an entry, so taking
    /// the first entry out of a chunk does not move it). No chunk is empty.
    chunks: BTreeMap<K, Vec<K>>,
    len: usize,
}

impl<K> Default for SortedSet<K> {
    fn default() -> Self {
        Self {
            chunks: BTreeMap::new(),
            len: 0,
        }
    }
}

/// Equal when they hold the same entries, however they are chunked.
impl<K: Ord + Copy> PartialEq for SortedSet<K> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<K: Ord + Copy> SortedSet<K> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn first(&self) -> Option<K> {
        self.chunks.first_key_value().map(|(_, c)| c[0])
    }

    pub fn iter(&self) -> impl Iterator<Item = K> + '_ {
        self.chunks.values().flat_map(|c| c.iter().copied())
    }

    /// Inserts `k`; false if it was there already.
    pub fn insert(&mut self, k: K) -> bool {
        let key = match self.chunks.range(..=k).next_back() {
            Some((&key, _)) => key,
            None => match self.chunks.pop_first() {
                // Below every chunk key: it joins the first chunk, which is keyed by it now.
                Some((_, chunk)) => {
                    self.chunks.insert(k, chunk);
                    k
                }
                None => {
                    self.chunks.insert(k, vec![k]);
                    self.len += 1;
                    return true;
                }
            },
        };
        let chunk = self.chunks.get_mut(&key).expect("found above");
        let Err(pos) = chunk.binary_search(&k) else {
            return false;
        };
        self.len += 1;
        if chunk.len() < CHUNK {
            chunk.insert(pos, k);
            return true;
        }
        // A full chunk: the entry past its end goes on to the next chunk if that has
        // room, so that chunks stay full under inserts that cluster at the tail (waiting
        // times: now + a jittered backoff); past the end of the last chunk (the usual
        // append) it starts a new one; only else is the chunk split in two.
        let next = self
            .chunks
            .range((Bound::Excluded(key), Bound::Unbounded))
            .next()
            .map(|(&next, c)| (next, c.len()));
        match next {
            Some((next, len)) if len < CHUNK => {
                let chunk = self.chunks.get_mut(&key).expect("found above");
                let spill = if pos == CHUNK {
                    k
                } else {
                    let last = chunk.pop().expect("full");
                    chunk.insert(pos, k);
                    last
                };
                // `spill` is above this chunk and below the next one's entries: it is the
                // next chunk's first entry and key now.
                let mut tail = self.chunks.remove(&next).expect("found above");
                tail.insert(0, spill);
                self.chunks.insert(spill, tail);
            }
            None if pos == CHUNK => {
                self.chunks.insert(k, vec![k]);
            }
            _ if pos > 0
                && self
                    .chunks
                    .range(..key)
                    .next_back()
                    .is_some_and(|(_, c)| c.len() < CHUNK) =>
            {
                // The previous chunk has room: this chunk's first entry moves there, and
                // this chunk is keyed by its new first entry.
                let mut chunk = self.chunks.remove(&key).expect("found above");
                let first = chunk.remove(0);
                chunk.insert(pos - 1, k);
                self.chunks
                    .range_mut(..key)
                    .next_back()
                    .expect("checked")
                    .1
                    .push(first);
                self.chunks.insert(chunk[0], chunk);
            }
            _ => {
                let chunk = self.chunks.get_mut(&key).expect("found above");
                let mut tail = chunk.split_off(CHUNK / 2);
                if pos <= CHUNK / 2 {
                    chunk.insert(pos, k);
                } else {
                    tail.insert(pos - CHUNK / 2, k);
                }
                self.chunks.insert(tail[0], tail);
            }
        }
        true
    }

    /// Removes `k`; false if it was not there.
    pub fn remove(&mut self, k: K) -> bool {
        let Some((&key, chunk)) = self.chunks.range_mut(..=k).next_back() else {
            return false;
        };
        let Ok(pos) = chunk.binary_search(&k) else {
            return false;
        };
        chunk.remove(pos);
        self.len -= 1;
        if chunk.is_empty() {
            self.chunks.remove(&key);
            return true;
        }
        if chunk.len() < CHUNK / 4 {
            // Too small to stand alone: take in the next chunk if both fit in one.
            let len = chunk.len();
            let next = self
                .chunks
                .range((Bound::Excluded(key), Bound::Unbounded))
                .next()
                .filter(|(_, c)| len + c.len() <= CHUNK)
                .map(|(&next, _)| next);
            if let Some(next) = next {
                let tail = self.chunks.remove(&next).expect("found above");
                self.chunks.get_mut(&key).expect("still there").extend(tail);
                return true;
            }
        }
        shrink(self.chunks.get_mut(&key).expect("still there"));
        true
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }

    /// Chunks and their fill, for the layout test.
    #[cfg(test)]
    fn chunk_lens(&self) -> Vec<usize> {
        self.chunks.values().map(Vec::len).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        Remove(u64),
        /// Remove the lowest entry (expiry, redelivery).
        PopFirst,
        /// Insert a run of consecutive keys (a fetch of fresh offsets).
        Run(u64, u64),
        Clear,
    }

    fn op(space: u64) -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..space).prop_map(Op::Insert),
            4 => (0..space).prop_map(Op::Remove),
            2 => Just(Op::PopFirst),
            2 => (0..space, 1..200u64).prop_map(|(a, n)| Op::Run(a, n)),
            1 => Just(Op::Clear),
        ]
    }

    fn check_set(s: &SortedSet<(u64, u64)>, r: &BTreeSet<(u64, u64)>) {
        assert_eq!(s.len(), r.len());
        assert_eq!(s.first(), r.first().copied());
        assert!(s.iter().eq(r.iter().copied()));
        // Structure: no empty or overfull chunk, keys bound their chunks.
        let mut prev: Option<(u64, u64)> = None;
        for (key, c) in &s.chunks {
            assert!(!c.is_empty() && c.len() <= CHUNK);
            assert!(*key <= c[0]);
            assert!(prev.is_none_or(|p| p < *key));
            assert!(c.is_sorted_by(|a, b| a < b));
            prev = c.last().copied();
        }
    }

    fn check_map(m: &OffsetMap<u32>, r: &BTreeMap<u64, u32>) {
        assert_eq!(m.len(), r.len());
        assert_eq!(m.first_offset(), r.keys().next().copied());
        assert!(
            m.iter()
                .map(|(o, &v)| (o, v))
                .eq(r.iter().map(|(&o, &v)| (o, v)))
        );
        for page in m.pages.values() {
            assert!(page.present != 0);
            assert_eq!(page.present.count_ones() as usize, page.values.len());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// The chunked set behaves as a `BTreeSet` of (time, offset), as the lease and
        /// waiting indexes use it (few distinct times, runs of offsets).
        #[test]
        fn sorted_set_is_a_btreeset(ops in prop::collection::vec(op(600), 1..400)) {
            let mut s = SortedSet::default();
            let mut r = BTreeSet::new();
            let key = |x: u64| (x / 100, x % 100 * 7);
            for op in ops {
                match op {
                    Op::Insert(x) => prop_assert_eq!(s.insert(key(x)), r.insert(key(x))),
                    Op::Remove(x) => prop_assert_eq!(s.remove(key(x)), r.remove(&key(x))),
                    Op::PopFirst => {
                        let f = r.pop_first();
                        prop_assert_eq!(s.first(), f);
                        if let Some(f) = f {
                            prop_assert!(s.remove(f));
                        }
                    }
                    Op::Run(a, n) => {
                        for x in a..a + n {
                            prop_assert_eq!(s.insert((a, x)), r.insert((a, x)));
                        }
                    }
                    Op::Clear => {
                        s.clear();
                        r.clear();
                    }
                }
                check_set(&s, &r);
            }
        }

        #[test]
        fn offset_map_is_a_btreemap(ops in prop::collection::vec(op(1000), 1..300), v in any::<u32>()) {
            let mut m = OffsetMap::default();
            let mut r = BTreeMap::new();
            for (i, op) in ops.into_iter().enumerate() {
                let v = v.wrapping_add(i as u32);
                match op {
                    Op::Insert(o) => prop_assert_eq!(m.insert(o, v), r.insert(o, v)),
                    Op::Remove(o) => prop_assert_eq!(m.remove(o), r.remove(&o)),
                    Op::PopFirst => {
                        let f = r.pop_first();
                        prop_assert_eq!(m.first_offset().map(|o| (o, m.remove(o).unwrap())), f);
                    }
                    Op::Run(a, n) => {
                        for o in a..a + n {
                            prop_assert_eq!(m.insert(o, v), r.insert(o, v));
                        }
                    }
                    Op::Clear => {
                        m.clear();
                        r.clear();
                    }
                }
                check_map(&m, &r);
                for probe in [0, 1, 63, 64, 65, 500, 999, 1000, 1199] {
                    prop_assert_eq!(m.get(probe), r.get(&probe));
                    prop_assert_eq!(m.count_below(probe), r.range(..probe).count());
                }
                prop_assert_eq!(m.offsets_below(500), r.range(..500).map(|(&o, _)| o).collect::<Vec<_>>());
            }
        }
    }

    /// Waiting times cluster at the tail (now + a jittered backoff, now rising): the
    /// chunks must stay mostly full, or the index costs twice its entries.
    #[test]
    fn tail_clustered_inserts_keep_chunks_full() {
        let mut s = SortedSet::default();
        let mut x = 1u64;
        for o in 0..100_000u64 {
            // A cheap deterministic spread of 0..200 ms over a clock rising 3 ms per 1000.
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s.insert((o * 3 / 1000 + 800 + (x >> 33) % 200, o));
        }
        let lens = s.chunk_lens();
        let fill = s.len() as f64 / (lens.len() * CHUNK) as f64;
        assert!(fill > 0.8, "chunks {fill:.2} full");
    }

    #[test]
    fn appends_fill_chunks_and_pages() {
        let mut s = SortedSet::default();
        let mut m = OffsetMap::default();
        for o in 0..10 * CHUNK as u64 {
            s.insert((7, o));
            m.insert(o, o);
        }
        assert!(s.chunk_lens().iter().all(|&n| n == CHUNK));
        assert!(
            m.pages
                .values()
                .all(|p| p.values.capacity() == PAGE as usize)
        );
        // Draining from the front (expiry order) leaves nothing behind.
        while let Some(f) = s.first() {
            s.remove(f);
        }
        assert!(s.chunks.is_empty());
    }
}
