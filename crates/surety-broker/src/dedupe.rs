//! Idempotent producers and message-id deduplication for one topic: sans-IO, clock
//! injected.
//!
//! A publish retried after a timeout must not be stored twice (G3). A publish may carry
//! `producer_id` + `sequence`, an `id`, or both; each is a [`DedupeKey`]. The broker asks
//! [`DedupeTable::begin`] before appending:
//!
//! - [`Begin::Duplicate`]: already stored; answer `duplicate: true` with that partition
//!   and offset, store nothing.
//! - [`Begin::New`]: append, and once the append is durable call
//!   [`DedupeTable::commit`]; if it certainly failed, [`DedupeTable::abort`]. Until then
//!   the key is reserved, so a concurrent publish of the same key gets
//!   [`Begin::InProgress`] and cannot be stored a second time.
//! - [`Begin::InProgress`]: another request is writing this key right now. The caller
//!   sleeps briefly (a few ms: the other request is waiting for its fsync) and calls
//!   `begin` again; the answer is then `Duplicate` (it was stored) or `New` (it failed).
//! - [`Begin::TooOld`]: the producer sequence is below the window kept for that
//!   producer, so whether it was stored cannot be checked. It is refused with
//!   [`SequenceTooOld`], never stored and never dropped silently.
//!
//! A message carrying both keys: `begin` both; if either answers other than `New`, abort
//! the other's reservation and act on that answer; otherwise commit both.
//!
//! Only durable writes enter the table (a reservation is not an entry), so the table is
//! always a function of what the log holds: after a restart [`DedupeTable::rebuild_from`]
//! (or [`DedupeTable::replay`], one record at a time) rebuilds it from the stored records
//! and it answers as before for every key inside the windows. That holds if the scan
//! covers every record inside a window: for ids, all records younger than `id_window_ms`
//! (the topic config keeps the window within retention's `max_age_ms`; a `max_bytes`
//! limit can still delete them); for producers, each producer's last `producer_window`
//! sequences, which no time bound covers, so a scan must read the whole retained log.
//!
//! ## Snapshots: a restart that does not grow with the log
//!
//! So that a restart does not read the whole log, the broker keeps a snapshot of the
//! table per topic (`dedupe.snapshot`, [`DedupeTable::encode_snapshot`], format in
//! docs/broker.md): the entries for the records of partition `p` below `covered[p]`.
//! Open restores it ([`DedupeTable::from_snapshot`]) and replays only the records from
//! `covered[p]` on. It never makes an answer wrong:
//!
//! - `covered[p]` is at most the partition's durable end and below every publish still
//!   in flight on it (the broker registers each publish's floor before it submits), so
//!   every record below it with keys was committed before the snapshot was encoded.
//!   Entries at or above it are left out; the replay brings them back if the log holds
//!   them. Replaying a record the table already has changes nothing, so overlap is fine.
//! - A snapshot older than the log just means a longer replay (it is still true of every
//!   record below its offsets).
//! - A missing or damaged one (CRC-32C over the file), one covering more of a partition
//!   than the log holds (records lost to a repair or to `durability: none`: offsets get
//!   reused), one with more partitions than the topic, or one taken under smaller
//!   limits than now ([`DedupeSnapshot::usable_under`]: a larger window would have kept
//!   entries it dropped) is not used: the table is rebuilt from the whole retained log,
//!   with a warning. Never a refusal to start.
//!
//! When snapshots are written (`DedupeSnapshotPolicy`): in the background after a
//! publish once the records since the last snapshot reach `max(100,000, entries in the
//! last snapshot)` or their payload bytes `max(256 MiB, 4 × the last snapshot's size)`;
//! on a clean close; and at open after a replay that long. Why: a snapshot costs time
//! and bytes in proportion to the table (bounded by the windows), a replay in
//! proportion to the tail; tying the one to the other bounds both. A crash replays at
//! most about `max(100,000 records, table size)` or `max(256 MiB, 4 × snapshot)` of log
//! (plus what was published while the last snapshot was written), whatever the log's
//! size; and snapshots rewrite at most about one table entry per record appended, or
//! a quarter of the bytes appended. Not on segment roll: a segment is 64 MiB by
//! default but can be 1 GiB, and time since the last roll says nothing about the
//! table's size. The snapshot is encoded under the table's lock (publishes wait for
//! that: milliseconds for a full table of 2 million sequences, and amortized as above).
//!
//! Memory is bounded: per producer only the last `producer_window` sequences, at most
//! `max_producers` producers and `max_sequences` sequences in all, ids only inside the
//! window. An evicted producer (least recently used first) is forgotten entirely: its
//! next sequence starts a fresh window, so a late retry of a sequence it had stored is
//! accepted as new. That is the one way a duplicate can slip through; it is counted in
//! [`DedupeStats::evicted_producers`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bytes::{ReadError, Reader, put_str, put_u32, put_u64};
use crate::group::Millis;

/// What a publish is deduplicated by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DedupeKey {
    /// Idempotent producer: sequences of one `producer_id` are unique.
    Producer { producer_id: String, sequence: u64 },
    /// Message id, unique within the id window.
    Id(String),
}

/// Where a record was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stored {
    pub partition: u32,
    pub offset: u64,
}

/// The answer of [`DedupeTable::begin`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a New reservation must be committed or aborted"]
pub enum Begin {
    /// Not stored yet: append, then `commit` (durable) or `abort` (certainly not stored).
    New(Reservation),
    /// Stored before: answer with the original location, marked duplicate.
    Duplicate { partition: u32, offset: u64 },
    /// Another request reserved this key at `since` and is writing it: sleep a few ms
    /// and call `begin` again.
    InProgress { since: Millis },
    /// The producer sequence is below `oldest_tracked` and cannot be checked: refuse it
    /// (see [`SequenceTooOld`]).
    TooOld { oldest_tracked: u64 },
}

/// A reserved key: proof that this request is the only one writing it. Resolve it with
/// [`DedupeTable::commit`] or [`DedupeTable::abort`]; a reservation that is lost keeps
/// its key `InProgress` until the table is rebuilt.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a reservation must be committed or aborted"]
pub struct Reservation {
    table: u64,
    key: DedupeKey,
    since: Millis,
}

impl Reservation {
    pub fn key(&self) -> &DedupeKey {
        &self.key
    }
}

/// The refusal of a [`Begin::TooOld`] producer sequence, worded for the producer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "sequence {sequence} of producer {producer_id:?} is older than the dedupe window \
     (oldest checked: {oldest_tracked}): it cannot be checked for duplicates and was not \
     stored; a producer that restarts its sequence numbers must use a new producer_id"
)]
pub struct SequenceTooOld {
    pub producer_id: String,
    pub sequence: u64,
    pub oldest_tracked: u64,
}

/// Why `commit` or `abort` refused a reservation. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReservationError {
    #[error("the reservation was made by another dedupe table (another topic?)")]
    OtherTable,
}

/// Limits of a [`DedupeTable`]. They may change at run time ([`DedupeTable::set_config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupeConfig {
    /// Sequences kept per producer: those above `highest - producer_window` (at least 1).
    pub producer_window: u64,
    /// Producers tracked; beyond, the least recently used is evicted.
    pub max_producers: usize,
    /// Sequences tracked over all producers (about 50 bytes each); beyond, least
    /// recently used producers are evicted.
    pub max_sequences: usize,
    /// How long a message id is remembered, from its record's timestamp; 0: ids are not
    /// deduplicated.
    pub id_window_ms: u64,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        Self {
            producer_window: 10_000,
            max_producers: 100_000,
            max_sequences: 2_000_000,
            id_window_ms: 2 * 60 * 1000,
        }
    }
}

/// One stored record's dedupe keys, as read back from a partition log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub partition: u32,
    pub offset: u64,
    /// The record's timestamp (what `commit` was given as `stored_at`).
    pub timestamp: Millis,
    /// `(producer_id, sequence)`.
    pub producer: Option<(String, u64)>,
    pub id: Option<String>,
}

/// Counters since the table was created or rebuilt, and current sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DedupeStats {
    /// `begin` answers `Duplicate`.
    pub hits: u64,
    /// Producers tracked now.
    pub producers: u64,
    /// Ids tracked now (expired ones may linger until the next `begin` or `prune`).
    pub ids: u64,
    /// Sequences tracked now, over all producers.
    pub sequences: u64,
    /// Keys reserved now.
    pub in_progress: u64,
    /// Producers forgotten to bound memory: each is a chance for a duplicate.
    pub evicted_producers: u64,
    /// `begin` answers `TooOld`.
    pub too_old: u64,
}

#[derive(Debug, Clone)]
struct Producer {
    highest: u64,
    seqs: BTreeMap<u64, Stored>,
    /// Position in the table's LRU order.
    used: u64,
}

#[derive(Debug, Clone, Copy)]
struct IdEntry {
    at: Stored,
    stored_at: Millis,
}

/// Tells tables apart, so a reservation cannot be committed into another topic's table.
static NEXT_TABLE: AtomicU64 = AtomicU64::new(1);

/// The dedupe state of one topic. See the module docs.
#[derive(Debug, Clone)]
pub struct DedupeTable {
    config: DedupeConfig,
    table: u64,
    producers: HashMap<String, Producer>,
    /// Producers by last use, oldest first.
    lru: BTreeMap<u64, String>,
    clock: u64,
    sequences: usize,
    ids: HashMap<String, IdEntry>,
    /// Ids by record timestamp, for pruning.
    id_expiry: BTreeSet<(Millis, String)>,
    in_progress: HashMap<DedupeKey, Millis>,
    hits: u64,
    too_old: u64,
    evicted_producers: u64,
}

impl DedupeTable {
    pub fn new(config: DedupeConfig) -> Self {
        Self {
            config,
            table: NEXT_TABLE.fetch_add(1, Ordering::Relaxed),
            producers: HashMap::new(),
            lru: BTreeMap::new(),
            clock: 0,
            sequences: 0,
            ids: HashMap::new(),
            id_expiry: BTreeSet::new(),
            in_progress: HashMap::new(),
            hits: 0,
            too_old: 0,
            evicted_producers: 0,
        }
    }

    pub fn config(&self) -> &DedupeConfig {
        &self.config
    }

    /// New limits apply to the next decisions; a smaller producer window trims each
    /// producer at its next commit.
    pub fn set_config(&mut self, config: DedupeConfig) {
        self.config = config;
    }

    fn window(&self) -> u64 {
        self.config.producer_window.max(1)
    }

    /// Decides whether a publish with `key` is new, and reserves it if so.
    pub fn begin(&mut self, key: &DedupeKey, now: Millis) -> Begin {
        self.prune(now);
        match key {
            DedupeKey::Producer {
                producer_id,
                sequence,
            } => {
                let window = self.window();
                if let Some(p) = self.producers.get(producer_id) {
                    if let Some(s) = p.seqs.get(sequence) {
                        let s = *s;
                        self.hits += 1;
                        self.touch(producer_id);
                        return Begin::Duplicate {
                            partition: s.partition,
                            offset: s.offset,
                        };
                    }
                    let oldest_tracked = p.highest.saturating_sub(window - 1);
                    if *sequence < oldest_tracked {
                        self.too_old += 1;
                        return Begin::TooOld { oldest_tracked };
                    }
                    self.touch(producer_id);
                }
            }
            DedupeKey::Id(id) => {
                if let Some(e) = self.ids.get(id) {
                    self.hits += 1;
                    return Begin::Duplicate {
                        partition: e.at.partition,
                        offset: e.at.offset,
                    };
                }
            }
        }
        if let Some(&since) = self.in_progress.get(key) {
            return Begin::InProgress { since };
        }
        self.in_progress.insert(key.clone(), now);
        Begin::New(Reservation {
            table: self.table,
            key: key.clone(),
            since: now,
        })
    }

    /// Records that the reserved key was stored durably at `partition`/`offset`.
    /// `stored_at` must be the timestamp written in the record (what a rebuild reads
    /// back), so the id window ends at the same instant before and after a restart.
    pub fn commit(
        &mut self,
        reservation: Reservation,
        partition: u32,
        offset: u64,
        stored_at: Millis,
    ) -> Result<(), ReservationError> {
        self.check(&reservation)?;
        // Recorded even if a rebuild cleared the reservation: the write is durable.
        self.in_progress.remove(&reservation.key);
        let at = Stored { partition, offset };
        match reservation.key {
            DedupeKey::Producer {
                producer_id,
                sequence,
            } => self.record_sequence(producer_id, sequence, at),
            DedupeKey::Id(id) => self.record_id(id, at, stored_at),
        }
        Ok(())
    }

    /// Releases a reservation whose append certainly did not store the record. If the
    /// outcome is unknown (e.g. an fsync error), do not abort: rebuild from the log.
    pub fn abort(&mut self, reservation: Reservation) -> Result<(), ReservationError> {
        self.check(&reservation)?;
        if self.in_progress.get(&reservation.key) == Some(&reservation.since) {
            self.in_progress.remove(&reservation.key);
        }
        Ok(())
    }

    fn check(&self, r: &Reservation) -> Result<(), ReservationError> {
        if r.table == self.table {
            Ok(())
        } else {
            Err(ReservationError::OtherTable)
        }
    }

    /// Forgets ids stored at or before `now - id_window_ms`. `begin` does this itself;
    /// call it on a timer to free memory of idle topics. O(log n) per id removed.
    pub fn prune(&mut self, now: Millis) {
        let window = self.config.id_window_ms;
        while let Some((t, _)) = self.id_expiry.first() {
            if t.saturating_add(window) > now {
                break;
            }
            let (_, id) = self.id_expiry.pop_first().unwrap();
            self.ids.remove(&id);
        }
    }

    /// Replaces the table's contents (reservations included) with the keys of `records`,
    /// in any order: the durable records found in the partition logs after a restart.
    /// Call it when no append is in flight. See the module docs for how far back to scan.
    pub fn rebuild_from(&mut self, records: impl IntoIterator<Item = StoredKey>) {
        self.clear();
        for r in records {
            self.replay(r);
        }
    }

    /// Forgets every entry and reservation (the counters stay).
    pub fn clear(&mut self) {
        self.producers.clear();
        self.lru.clear();
        self.sequences = 0;
        self.ids.clear();
        self.id_expiry.clear();
        self.in_progress.clear();
    }

    /// Adds one durable record read back from a partition log, as [`Self::rebuild_from`]
    /// does for each: what a restart calls for every record it scans, one at a time, so
    /// a scan never holds more than the record at hand. Replaying a record the table
    /// already holds changes nothing, which is what lets a snapshot's tail overlap it.
    pub fn replay(&mut self, r: StoredKey) {
        let at = Stored {
            partition: r.partition,
            offset: r.offset,
        };
        if let Some((producer_id, sequence)) = r.producer {
            self.record_sequence(producer_id, sequence, at);
        }
        if let Some(id) = r.id {
            self.record_id(id, at, r.timestamp);
        }
    }

    /// Entries held (sequences plus ids): what a snapshot of the table writes.
    pub fn entries(&self) -> u64 {
        (self.sequences + self.ids.len()) as u64
    }

    pub fn stats(&self) -> DedupeStats {
        DedupeStats {
            hits: self.hits,
            producers: self.producers.len() as u64,
            ids: self.ids.len() as u64,
            sequences: self.sequences as u64,
            in_progress: self.in_progress.len() as u64,
            evicted_producers: self.evicted_producers,
            too_old: self.too_old,
        }
    }

    fn record_sequence(&mut self, producer_id: String, sequence: u64, at: Stored) {
        let window = self.window();
        if !self.producers.contains_key(&producer_id) {
            while self.producers.len() >= self.config.max_producers.max(1) {
                self.evict_lru();
            }
            self.producers.insert(
                producer_id.clone(),
                Producer {
                    highest: sequence,
                    seqs: BTreeMap::new(),
                    used: 0,
                },
            );
        }
        let p = self.producers.get_mut(&producer_id).unwrap();
        p.highest = p.highest.max(sequence);
        let oldest = p.highest.saturating_sub(window - 1);
        // A sequence that fell below the window while it was being written is durable
        // but no longer tracked: its retries are TooOld, never stored again.
        // First stored wins: any stored copy is a correct answer.
        if sequence >= oldest && !p.seqs.contains_key(&sequence) {
            p.seqs.insert(sequence, at);
            self.sequences += 1;
        }
        if p.seqs.first_key_value().is_some_and(|(&s, _)| s < oldest) {
            let keep = p.seqs.split_off(&oldest);
            self.sequences -= p.seqs.len();
            p.seqs = keep;
        }
        self.touch(&producer_id);
        // The producer just used is the most recent, so it goes last.
        while self.sequences > self.config.max_sequences && self.producers.len() > 1 {
            self.evict_lru();
        }
    }

    fn record_id(&mut self, id: String, at: Stored, stored_at: Millis) {
        if self.config.id_window_ms == 0 {
            return;
        }
        // The later record wins: its window ends last.
        if let Some(old) = self.ids.get(&id) {
            if old.stored_at > stored_at {
                return;
            }
            self.id_expiry.remove(&(old.stored_at, id.clone()));
        }
        self.id_expiry.insert((stored_at, id.clone()));
        self.ids.insert(id, IdEntry { at, stored_at });
    }

    fn touch(&mut self, producer_id: &str) {
        let Some(p) = self.producers.get_mut(producer_id) else {
            return;
        };
        self.lru.remove(&p.used);
        self.clock += 1;
        p.used = self.clock;
        self.lru.insert(self.clock, producer_id.to_owned());
    }

    fn evict_lru(&mut self) {
        let Some((_, id)) = self.lru.pop_first() else {
            return;
        };
        if let Some(p) = self.producers.remove(&id) {
            self.sequences -= p.seqs.len();
            self.evicted_producers += 1;
        }
    }
}

// The snapshot file: the table's entries below a point of each partition log, so that a
// restart replays only the log after that point (see the module docs and docs/broker.md).

const SNAPSHOT_MAGIC: &[u8; 8] = b"SURETYDD";
/// Version of the dedupe snapshot format (docs/broker.md, "dedupe.snapshot").
pub const SNAPSHOT_VERSION: u16 = 1;

/// Why dedupe snapshot bytes were refused. A refused snapshot is never used: the broker
/// rebuilds the table from the whole retained log instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("not a dedupe snapshot (bad magic)")]
    Magic,
    #[error("unsupported dedupe snapshot version {0}")]
    Version(u16),
    #[error("dedupe snapshot checksum mismatch")]
    Crc,
    #[error("dedupe snapshot ends early")]
    Short,
    #[error("trailing bytes after the dedupe snapshot")]
    Trailing,
    #[error("text in the dedupe snapshot is not UTF-8")]
    Utf8,
    #[error("a count in the dedupe snapshot is larger than the bytes that follow")]
    Count,
}

/// A decoded dedupe snapshot: the entries a table held for the records of partition `p`
/// below `covered[p]`, and the limits it was kept under. Restore it with
/// [`DedupeTable::from_snapshot`], then [`DedupeTable::replay`] every record from
/// `covered[p]` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupeSnapshot {
    /// The broker's clock when it was taken.
    pub taken_at: Millis,
    /// The limits the table was kept under: entries beyond them were already dropped.
    pub config: DedupeConfig,
    /// Per partition: every record below this offset is reflected; none at or above is.
    pub covered: Vec<u64>,
    /// Least recently used first.
    producers: Vec<SnapshotProducer>,
    /// Oldest first.
    ids: Vec<SnapshotId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SnapshotProducer {
    producer_id: String,
    highest: u64,
    seqs: Vec<(u64, Stored)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SnapshotId {
    id: String,
    stored_at: Millis,
    at: Stored,
}

impl DedupeSnapshot {
    /// Whether a table under `config` may start from this snapshot: only if no limit
    /// grew since it was taken. A larger producer window (or id window, or cap) would
    /// have kept entries the snapshot dropped, and answering `New` for one of them would
    /// store a retry twice; then the caller must rebuild from the whole log. Returns the
    /// reason when not.
    pub fn usable_under(&self, config: &DedupeConfig) -> Result<(), String> {
        let was = &self.config;
        let grown = [
            (
                "producer_window",
                config.producer_window.max(1),
                was.producer_window.max(1),
            ),
            (
                "max_producers",
                config.max_producers as u64,
                was.max_producers as u64,
            ),
            (
                "max_sequences",
                config.max_sequences as u64,
                was.max_sequences as u64,
            ),
            ("id_window_ms", config.id_window_ms, was.id_window_ms),
        ]
        .into_iter()
        .find(|(_, now, then)| now > then);
        match grown {
            Some((name, now, then)) => Err(format!(
                "{name} grew from {then} to {now} since the dedupe snapshot was taken"
            )),
            None => Ok(()),
        }
    }

    /// Sequences plus ids in the snapshot.
    pub fn entries(&self) -> u64 {
        let seqs: usize = self.producers.iter().map(|p| p.seqs.len()).sum();
        (seqs + self.ids.len()) as u64
    }
}

impl DedupeTable {
    /// Encodes the table as a snapshot that covers, per partition `p`, every record below
    /// `covered[p]`: the caller guarantees each such record with keys was committed here.
    /// Entries at or above `covered[p]` (or of a partition past `covered`) are left out:
    /// the tail replay brings them back if the log still holds them, and if it does not
    /// (a record lost with `durability: none`) they must not answer for it. A producer's
    /// highest sequence is kept even then, so its window never moves down. Reservations
    /// are not entries and are not written. Format: docs/broker.md.
    pub fn encode_snapshot(&self, covered: &[u64], taken_at: Millis) -> Vec<u8> {
        let inside = |at: &Stored| {
            covered
                .get(at.partition as usize)
                .is_some_and(|&c| at.offset < c)
        };
        let mut w = Vec::with_capacity(64 + self.entries() as usize * 24);
        w.extend_from_slice(SNAPSHOT_MAGIC);
        w.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        put_u64(&mut w, taken_at);
        put_u64(&mut w, self.config.producer_window);
        put_u64(&mut w, self.config.max_producers as u64);
        put_u64(&mut w, self.config.max_sequences as u64);
        put_u64(&mut w, self.config.id_window_ms);
        put_u32(&mut w, covered.len() as u32);
        for &c in covered {
            put_u64(&mut w, c);
        }
        put_u32(&mut w, self.lru.len() as u32);
        for producer_id in self.lru.values() {
            let p = &self.producers[producer_id];
            put_str(&mut w, producer_id);
            put_u64(&mut w, p.highest);
            let count_at = w.len();
            put_u32(&mut w, 0);
            let mut n = 0u32;
            for (&s, at) in p.seqs.iter().filter(|(_, at)| inside(at)) {
                put_u64(&mut w, s);
                put_u32(&mut w, at.partition);
                put_u64(&mut w, at.offset);
                n += 1;
            }
            w[count_at..count_at + 4].copy_from_slice(&n.to_le_bytes());
        }
        let count_at = w.len();
        put_u32(&mut w, 0);
        let mut n = 0u32;
        for (stored_at, id) in &self.id_expiry {
            let e = &self.ids[id];
            if inside(&e.at) {
                put_str(&mut w, id);
                put_u64(&mut w, *stored_at);
                put_u32(&mut w, e.at.partition);
                put_u64(&mut w, e.at.offset);
                n += 1;
            }
        }
        w[count_at..count_at + 4].copy_from_slice(&n.to_le_bytes());
        let crc = crc32c::crc32c(&w);
        put_u32(&mut w, crc);
        w
    }

    /// A table under `config` holding what `snapshot` holds (trimmed to `config` where it
    /// is smaller; see [`DedupeSnapshot::usable_under`] for when it may not be larger).
    pub fn from_snapshot(config: DedupeConfig, snapshot: DedupeSnapshot) -> DedupeTable {
        let mut t = DedupeTable::new(config);
        for p in snapshot.producers {
            t.restore_producer(p);
        }
        for i in snapshot.ids {
            t.record_id(i.id, i.at, i.stored_at);
        }
        t
    }

    fn restore_producer(&mut self, p: SnapshotProducer) {
        let window = self.window();
        let SnapshotProducer {
            producer_id,
            highest,
            seqs,
        } = p;
        if let Some(old) = self.producers.remove(&producer_id) {
            // Only a snapshot that names a producer twice gets here.
            self.lru.remove(&old.used);
            self.sequences -= old.seqs.len();
        }
        while self.producers.len() >= self.config.max_producers.max(1) {
            self.evict_lru();
        }
        let oldest = highest.saturating_sub(window - 1);
        let seqs: BTreeMap<u64, Stored> = seqs
            .into_iter()
            .filter(|&(s, _)| s >= oldest && s <= highest)
            .collect();
        self.sequences += seqs.len();
        self.producers.insert(
            producer_id.clone(),
            Producer {
                highest,
                seqs,
                used: 0,
            },
        );
        self.touch(&producer_id);
        while self.sequences > self.config.max_sequences && self.producers.len() > 1 {
            self.evict_lru();
        }
    }
}

/// Decodes what [`DedupeTable::encode_snapshot`] wrote, checking magic, version and the
/// CRC-32C first. Never panics, whatever the bytes; never allocates more than they can
/// hold.
pub fn decode_snapshot(bytes: &[u8]) -> Result<DedupeSnapshot, SnapshotError> {
    if bytes.len() < SNAPSHOT_MAGIC.len() + 2 + 4 || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(SnapshotError::Magic);
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if u32::from_le_bytes(crc.try_into().unwrap()) != crc32c::crc32c(body) {
        return Err(SnapshotError::Crc);
    }
    let mut r = Reader(&body[8..]);
    let version = u16::from_le_bytes(r.take(2)?.try_into().unwrap());
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotError::Version(version));
    }
    let taken_at = r.u64()?;
    let config = DedupeConfig {
        producer_window: r.u64()?,
        max_producers: usize::try_from(r.u64()?).unwrap_or(usize::MAX),
        max_sequences: usize::try_from(r.u64()?).unwrap_or(usize::MAX),
        id_window_ms: r.u64()?,
    };
    let mut covered = Vec::new();
    for _ in 0..r.count(8)? {
        covered.push(r.u64()?);
    }
    let mut producers = Vec::new();
    for _ in 0..r.count(16)? {
        let producer_id = r.string()?;
        let highest = r.u64()?;
        let mut seqs = Vec::new();
        for _ in 0..r.count(20)? {
            let s = r.u64()?;
            let at = Stored {
                partition: r.u32()?,
                offset: r.u64()?,
            };
            seqs.push((s, at));
        }
        producers.push(SnapshotProducer {
            producer_id,
            highest,
            seqs,
        });
    }
    let mut ids = Vec::new();
    for _ in 0..r.count(24)? {
        let id = r.string()?;
        let stored_at = r.u64()?;
        let at = Stored {
            partition: r.u32()?,
            offset: r.u64()?,
        };
        ids.push(SnapshotId { id, stored_at, at });
    }
    if !r.0.is_empty() {
        return Err(SnapshotError::Trailing);
    }
    Ok(DedupeSnapshot {
        taken_at,
        config,
        covered,
        producers,
        ids,
    })
}

impl From<ReadError> for SnapshotError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Short => SnapshotError::Short,
            ReadError::Count => SnapshotError::Count,
            ReadError::Utf8 => SnapshotError::Utf8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(p: &str, s: u64) -> DedupeKey {
        DedupeKey::Producer {
            producer_id: p.into(),
            sequence: s,
        }
    }

    fn id(s: &str) -> DedupeKey {
        DedupeKey::Id(s.into())
    }

    fn table(producer_window: u64) -> DedupeTable {
        DedupeTable::new(DedupeConfig {
            producer_window,
            id_window_ms: 1_000,
            ..Default::default()
        })
    }

    fn reserve(t: &mut DedupeTable, k: &DedupeKey, now: Millis) -> Reservation {
        match t.begin(k, now) {
            Begin::New(r) => r,
            other => panic!("{k:?} at {now}: expected New, got {other:?}"),
        }
    }

    /// A `Begin` without the reservation's identity, to compare two tables' answers.
    fn answer(b: Begin) -> String {
        match b {
            Begin::New(_) => "New".into(),
            other => format!("{other:?}"),
        }
    }

    fn store(t: &mut DedupeTable, k: &DedupeKey, partition: u32, offset: u64, now: Millis) {
        let r = reserve(t, k, now);
        t.commit(r, partition, offset, now).unwrap();
    }

    #[test]
    fn duplicate_after_commit_answers_the_original_location() {
        let mut t = table(100);
        for k in [seq("p", 7), id("m-1")] {
            let r = reserve(&mut t, &k, 10);
            assert_eq!(r.key(), &k);
            t.commit(r, 3, 42, 10).unwrap();
            assert_eq!(
                t.begin(&k, 20),
                Begin::Duplicate {
                    partition: 3,
                    offset: 42
                }
            );
            assert_eq!(
                t.begin(&k, 21),
                Begin::Duplicate {
                    partition: 3,
                    offset: 42
                }
            );
        }
        let s = t.stats();
        assert_eq!((s.hits, s.producers, s.ids, s.sequences), (4, 1, 1, 1));
        assert_eq!(s.in_progress, 0);
        // Other producers and sequences are unaffected.
        assert!(matches!(t.begin(&seq("q", 7), 30), Begin::New(_)));
        assert!(matches!(t.begin(&seq("p", 8), 30), Begin::New(_)));
    }

    #[test]
    fn abort_frees_the_key() {
        let mut t = table(100);
        for k in [seq("p", 1), id("x")] {
            let r = reserve(&mut t, &k, 0);
            assert_eq!(t.begin(&k, 1), Begin::InProgress { since: 0 });
            t.abort(r).unwrap();
            let r = reserve(&mut t, &k, 2);
            t.commit(r, 0, 5, 2).unwrap();
            assert!(matches!(t.begin(&k, 3), Begin::Duplicate { offset: 5, .. }));
        }
        assert_eq!(t.stats().in_progress, 0);
    }

    #[test]
    fn concurrent_begin_is_in_progress_until_resolved() {
        let mut t = table(100);
        let k = seq("p", 1);
        let r = reserve(&mut t, &k, 100);
        assert_eq!(t.begin(&k, 101), Begin::InProgress { since: 100 });
        assert_eq!(t.begin(&k, 102), Begin::InProgress { since: 100 });
        assert_eq!(t.stats().in_progress, 1);
        // Nothing counts as stored before the commit.
        assert_eq!(t.stats().sequences, 0);
        assert_eq!(t.stats().producers, 0);
        t.commit(r, 0, 9, 103).unwrap();
        assert_eq!(
            t.begin(&k, 104),
            Begin::Duplicate {
                partition: 0,
                offset: 9
            }
        );
        // The id side of the same message is a separate key.
        let ri = reserve(&mut t, &id("m"), 105);
        assert_eq!(t.begin(&id("m"), 105), Begin::InProgress { since: 105 });
        t.commit(ri, 0, 10, 105).unwrap();
    }

    #[test]
    fn too_old_is_refused_and_counted() {
        let mut t = table(10);
        store(&mut t, &seq("p", 100), 0, 0, 0);
        // Window: 91..=100.
        assert_eq!(
            t.begin(&seq("p", 90), 1),
            Begin::TooOld { oldest_tracked: 91 }
        );
        assert_eq!(
            t.begin(&seq("p", 0), 1),
            Begin::TooOld { oldest_tracked: 91 }
        );
        assert!(matches!(t.begin(&seq("p", 91), 1), Begin::New(_)));
        assert_eq!(t.stats().too_old, 2);
        let e = SequenceTooOld {
            producer_id: "p".into(),
            sequence: 90,
            oldest_tracked: 91,
        };
        assert!(
            e.to_string()
                .starts_with("sequence 90 of producer \"p\" is older than the dedupe window"),
            "{e}"
        );
        // An unknown producer has no window: everything is new.
        assert!(matches!(t.begin(&seq("other", 0), 1), Begin::New(_)));
    }

    #[test]
    fn out_of_order_sequences_inside_the_window_are_accepted() {
        let mut t = table(10);
        store(&mut t, &seq("p", 5), 0, 0, 0);
        store(&mut t, &seq("p", 3), 0, 1, 0);
        store(&mut t, &seq("p", 12), 0, 2, 0);
        // Window now 3..=12: 4 was never stored, so it is new.
        store(&mut t, &seq("p", 4), 1, 3, 0);
        for (s, offset) in [(5, 0), (3, 1), (12, 2), (4, 3)] {
            assert!(
                matches!(t.begin(&seq("p", s), 1), Begin::Duplicate { offset: o, .. } if o == offset),
                "{s}"
            );
        }
        // Moving the window up forgets what falls below it.
        store(&mut t, &seq("p", 14), 0, 4, 0);
        assert_eq!(
            t.begin(&seq("p", 4), 1),
            Begin::TooOld { oldest_tracked: 5 }
        );
        assert!(matches!(t.begin(&seq("p", 5), 1), Begin::Duplicate { .. }));
        assert_eq!(t.stats().sequences, 3, "5, 12, 14");
    }

    #[test]
    fn a_sequence_overtaken_while_in_flight_is_not_tracked() {
        let mut t = table(10);
        let r = reserve(&mut t, &seq("p", 1), 0);
        store(&mut t, &seq("p", 50), 0, 0, 0);
        t.commit(r, 0, 1, 0).unwrap();
        // Stored, but below the window: retries are refused rather than stored again.
        assert_eq!(
            t.begin(&seq("p", 1), 1),
            Begin::TooOld { oldest_tracked: 41 }
        );
        assert_eq!(t.stats().sequences, 1);
    }

    #[test]
    fn ids_expire_after_the_window() {
        let mut t = table(10); // id window 1000 ms
        store(&mut t, &id("a"), 0, 1, 5_000);
        store(&mut t, &id("b"), 0, 2, 5_500);
        assert!(matches!(
            t.begin(&id("a"), 5_999),
            Begin::Duplicate { offset: 1, .. }
        ));
        assert_eq!(t.stats().ids, 2);
        // At stored_at + window it is gone.
        let r = reserve(&mut t, &id("a"), 6_000);
        assert_eq!(t.stats().ids, 1);
        assert!(matches!(
            t.begin(&id("b"), 6_000),
            Begin::Duplicate { offset: 2, .. }
        ));
        t.commit(r, 1, 7, 6_000).unwrap();
        assert!(matches!(
            t.begin(&id("a"), 6_999),
            Begin::Duplicate {
                partition: 1,
                offset: 7
            }
        ));
        t.prune(100_000);
        assert_eq!(t.stats().ids, 0);
    }

    #[test]
    fn zero_id_window_turns_id_dedupe_off() {
        let mut t = DedupeTable::new(DedupeConfig {
            id_window_ms: 0,
            ..Default::default()
        });
        store(&mut t, &id("a"), 0, 1, 5);
        assert!(matches!(t.begin(&id("a"), 5), Begin::New(_)));
        assert_eq!(t.stats().ids, 0);
    }

    #[test]
    fn producers_are_evicted_least_recently_used_first() {
        let mut t = DedupeTable::new(DedupeConfig {
            max_producers: 2,
            ..Default::default()
        });
        store(&mut t, &seq("a", 1), 0, 1, 0);
        store(&mut t, &seq("b", 1), 0, 2, 0);
        // Using "a" makes "b" the least recently used.
        assert!(matches!(t.begin(&seq("a", 1), 0), Begin::Duplicate { .. }));
        store(&mut t, &seq("c", 1), 0, 3, 0);
        let s = t.stats();
        assert_eq!((s.producers, s.evicted_producers, s.sequences), (2, 1, 2));
        assert!(matches!(t.begin(&seq("a", 1), 0), Begin::Duplicate { .. }));
        // The documented slip: an evicted producer's old sequence is new again.
        assert!(matches!(t.begin(&seq("b", 1), 0), Begin::New(_)));
    }

    #[test]
    fn total_sequences_are_capped() {
        let mut t = DedupeTable::new(DedupeConfig {
            producer_window: 100,
            max_sequences: 10,
            ..Default::default()
        });
        for s in 0..6 {
            store(&mut t, &seq("a", s), 0, s, 0);
        }
        for s in 0..6 {
            store(&mut t, &seq("b", s), 1, s, 0);
        }
        let st = t.stats();
        assert_eq!(
            (st.producers, st.sequences, st.evicted_producers),
            (1, 6, 1)
        );
        // A single producer over the cap keeps its own window.
        for s in 6..20 {
            store(&mut t, &seq("b", s), 1, s, 0);
        }
        assert_eq!(t.stats().sequences, 20);
    }

    #[test]
    fn reservations_belong_to_their_table() {
        let mut a = table(10);
        let mut b = table(10);
        let r = reserve(&mut a, &id("x"), 0);
        let r2 = reserve(&mut b, &id("x"), 0);
        assert_eq!(b.commit(r, 0, 1, 0), Err(ReservationError::OtherTable));
        assert_eq!(b.stats().ids, 0);
        assert_eq!(a.abort(r2), Err(ReservationError::OtherTable));
        assert_eq!(a.begin(&id("x"), 1), Begin::InProgress { since: 0 });
    }

    #[test]
    fn rebuild_clears_reservations_and_keeps_late_commits() {
        let mut t = table(10);
        let r = reserve(&mut t, &seq("p", 1), 0);
        t.rebuild_from(Vec::new());
        assert_eq!(t.stats().in_progress, 0);
        // The append finished after all: the fact is still recorded.
        t.commit(r, 2, 3, 0).unwrap();
        assert!(matches!(
            t.begin(&seq("p", 1), 0),
            Begin::Duplicate {
                partition: 2,
                offset: 3
            }
        ));
    }

    #[test]
    fn rebuild_answers_like_before_for_a_message_with_both_keys() {
        let mut t = table(10);
        let (kp, ki) = (seq("p", 1), id("m"));
        let rp = reserve(&mut t, &kp, 100);
        let ri = reserve(&mut t, &ki, 100);
        t.commit(rp, 0, 7, 100).unwrap();
        t.commit(ri, 0, 7, 100).unwrap();
        let mut fresh = table(10);
        fresh.rebuild_from([StoredKey {
            partition: 0,
            offset: 7,
            timestamp: 100,
            producer: Some(("p".into(), 1)),
            id: Some("m".into()),
        }]);
        for (k, now) in [(&kp, 500), (&ki, 500), (&ki, 1_100)] {
            assert_eq!(
                answer(t.begin(k, now)),
                answer(fresh.begin(k, now)),
                "{k:?}"
            );
        }
    }

    /// Every key `t` could be asked about in these tests, with its answer.
    fn answers(t: &mut DedupeTable, keys: &[DedupeKey], now: Millis) -> Vec<String> {
        keys.iter()
            .map(|k| {
                let b = t.begin(k, now);
                let text = answer_text(&b);
                if let Begin::New(r) = b {
                    t.abort(r).unwrap();
                }
                text
            })
            .collect()
    }

    fn answer_text(b: &Begin) -> String {
        match b {
            Begin::New(_) => "New".into(),
            other => format!("{other:?}"),
        }
    }

    fn filled() -> (DedupeTable, Vec<DedupeKey>) {
        let mut t = table(10);
        let mut keys = Vec::new();
        for s in 0..25 {
            store(&mut t, &seq("p", s), (s % 3) as u32, s, 100 + s);
            keys.push(seq("p", s));
        }
        for s in 0..4 {
            store(&mut t, &seq("q✓", s), 1, 100 + s, 200);
            keys.push(seq("q✓", s));
        }
        for i in 0..5 {
            store(&mut t, &id(&format!("m{i}")), 2, 200 + i, 500 + 100 * i);
            keys.push(id(&format!("m{i}")));
        }
        keys.push(seq("never", 0));
        keys.push(id("never"));
        (t, keys)
    }

    #[test]
    fn a_snapshot_answers_like_the_table_it_was_taken_of() {
        let (mut live, keys) = filled();
        let bytes = live.encode_snapshot(&[u64::MAX; 3], 42);
        let snap = decode_snapshot(&bytes).unwrap();
        assert_eq!(snap.taken_at, 42);
        assert_eq!(snap.config, *live.config());
        assert_eq!(snap.entries(), live.entries());
        assert_eq!(snap.usable_under(live.config()), Ok(()));
        let mut restored = DedupeTable::from_snapshot(*live.config(), snap);
        let s = |t: &DedupeTable| {
            let s = t.stats();
            (s.producers, s.sequences, s.ids)
        };
        assert_eq!(s(&restored), s(&live));
        for now in [900, 1_000, 1_499, 1_500] {
            assert_eq!(
                answers(&mut restored, &keys, now),
                answers(&mut live, &keys, now)
            );
        }
        // Least recently used order survives: "q✓" was used last, so "p" goes first.
        let mut one = DedupeTable::from_snapshot(
            DedupeConfig {
                max_producers: 1,
                ..*live.config()
            },
            decode_snapshot(&bytes).unwrap(),
        );
        assert!(matches!(
            one.begin(&seq("q✓", 3), 0),
            Begin::Duplicate { .. }
        ));
        assert!(matches!(one.begin(&seq("p", 24), 0), Begin::New(_)));
        assert_eq!(one.stats().evicted_producers, 1);
    }

    #[test]
    fn entries_at_or_above_the_covered_offsets_are_left_out() {
        let (live, _) = filled();
        // Partition 0 covered below 6, partition 1 not at all, partition 2 left out.
        let snap = decode_snapshot(&live.encode_snapshot(&[6, 0], 0)).unwrap();
        let mut t = DedupeTable::from_snapshot(*live.config(), snap);
        // p: 15..=24 tracked live; on partition 0 (s % 3 == 0) below offset 6: none of
        // those, so nothing of p answers, but its window stays where it was.
        for s in 15..25 {
            assert!(matches!(t.begin(&seq("p", s), 0), Begin::New(_)), "{s}");
        }
        assert_eq!(
            t.begin(&seq("p", 14), 0),
            Begin::TooOld { oldest_tracked: 15 }
        );
        assert!(matches!(t.begin(&id("m0"), 600), Begin::New(_)));
        // Replaying the records brings them back.
        t.replay(StoredKey {
            partition: 0,
            offset: 21,
            timestamp: 121,
            producer: Some(("p".into(), 21)),
            id: None,
        });
        assert!(matches!(
            t.begin(&seq("p", 21), 0),
            Begin::Duplicate {
                partition: 0,
                offset: 21
            }
        ));
    }

    #[test]
    fn a_snapshot_is_not_usable_under_grown_limits_and_is_trimmed_under_smaller_ones() {
        let (live, _) = filled();
        let snap = decode_snapshot(&live.encode_snapshot(&[u64::MAX; 3], 0)).unwrap();
        let c = *live.config();
        for (bigger, name) in [
            (
                DedupeConfig {
                    producer_window: 11,
                    ..c
                },
                "producer_window",
            ),
            (
                DedupeConfig {
                    id_window_ms: 1_001,
                    ..c
                },
                "id_window_ms",
            ),
            (
                DedupeConfig {
                    max_producers: c.max_producers + 1,
                    ..c
                },
                "max_producers",
            ),
            (
                DedupeConfig {
                    max_sequences: c.max_sequences + 1,
                    ..c
                },
                "max_sequences",
            ),
        ] {
            let why = snap.usable_under(&bigger).unwrap_err();
            assert!(why.starts_with(&format!("{name} grew from")), "{why}");
        }
        let smaller = DedupeConfig {
            producer_window: 3,
            ..c
        };
        assert_eq!(snap.usable_under(&smaller), Ok(()));
        let mut t = DedupeTable::from_snapshot(smaller, snap);
        assert_eq!(t.stats().sequences, 3 + 3);
        assert_eq!(
            t.begin(&seq("p", 21), 0),
            Begin::TooOld { oldest_tracked: 22 }
        );
    }

    #[test]
    fn any_damage_to_a_snapshot_is_detected() {
        let (live, _) = filled();
        let bytes = live.encode_snapshot(&[u64::MAX; 3], 7);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(decode_snapshot(&b).is_err(), "flip at {i}");
        }
        for cut in 0..bytes.len() {
            assert!(decode_snapshot(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(decode_snapshot(b"SURETYGS...."), Err(SnapshotError::Magic));
        let mut other_version = bytes.clone();
        other_version[8] = 9;
        let n = other_version.len() - 4;
        let crc = crc32c::crc32c(&other_version[..n]);
        other_version[n..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_snapshot(&other_version),
            Err(SnapshotError::Version(9))
        );
    }
}
