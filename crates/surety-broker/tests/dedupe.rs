//! Property tests of the dedupe table under random publishes, failures, overlapping
//! requests and clock advances: a key is never stored twice while it is tracked, every
//! duplicate answer points at a record stored with that key, and a table rebuilt from
//! the stored records (in any order) answers exactly like the table that answered live.

use std::collections::HashMap;

use proptest::prelude::*;
use surety_broker::{Begin, DedupeConfig, DedupeKey, DedupeTable, Reservation, StoredKey};

const PRODUCERS: u8 = 3;
const SEQS: u64 = 40;
const IDS: u8 = 8;
const PARTITIONS: u32 = 3;
const ID_WINDOW: u64 = 1_000;

fn config() -> DedupeConfig {
    DedupeConfig {
        producer_window: 8,
        id_window_ms: ID_WINDOW,
        ..Default::default()
    }
}

#[derive(Debug, Clone)]
enum KeyPick {
    Producer(u8, u64),
    Id(u8),
    Both(u8, u64, u8),
}

#[derive(Debug, Clone)]
enum Op {
    /// begin, then append and commit at once, or fail and abort.
    Publish {
        key: KeyPick,
        partition: u32,
        fails: bool,
    },
    /// begin and keep the reservations open (a request waiting for its fsync).
    Hold {
        key: KeyPick,
        partition: u32,
    },
    /// Resolve the oldest held request.
    Resolve {
        fails: bool,
    },
    Advance {
        ms: u64,
    },
}

fn key_pick() -> impl Strategy<Value = KeyPick> {
    prop_oneof![
        3 => (0..PRODUCERS, 0..SEQS).prop_map(|(p, s)| KeyPick::Producer(p, s)),
        2 => (0..IDS).prop_map(KeyPick::Id),
        1 => (0..PRODUCERS, 0..SEQS, 0..IDS).prop_map(|(p, s, i)| KeyPick::Both(p, s, i)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (key_pick(), 0..PARTITIONS, prop::bool::weighted(0.1))
            .prop_map(|(key, partition, fails)| Op::Publish { key, partition, fails }),
        2 => (key_pick(), 0..PARTITIONS).prop_map(|(key, partition)| Op::Hold { key, partition }),
        2 => prop::bool::weighted(0.2).prop_map(|fails| Op::Resolve { fails }),
        3 => (0..700u64).prop_map(|ms| Op::Advance { ms }),
    ]
}

fn producer(p: u8, s: u64) -> DedupeKey {
    DedupeKey::Producer {
        producer_id: format!("producer-{p}"),
        sequence: s,
    }
}

fn id(i: u8) -> DedupeKey {
    DedupeKey::Id(format!("id-{i}"))
}

fn keys(pick: &KeyPick) -> Vec<DedupeKey> {
    match *pick {
        KeyPick::Producer(p, s) => vec![producer(p, s)],
        KeyPick::Id(i) => vec![id(i)],
        KeyPick::Both(p, s, i) => vec![producer(p, s), id(i)],
    }
}

fn universe() -> Vec<DedupeKey> {
    let mut all: Vec<DedupeKey> = (0..PRODUCERS)
        .flat_map(|p| (0..SEQS + 2).map(move |s| producer(p, s)))
        .collect();
    all.extend((0..IDS).map(id));
    all
}

/// An answer without the reservation's identity, to compare two tables.
fn answer(b: &Begin) -> String {
    match b {
        Begin::New(_) => "New".into(),
        other => format!("{other:?}"),
    }
}

struct Harness {
    t: DedupeTable,
    now: u64,
    next_offset: HashMap<u32, u64>,
    /// What the partition logs hold.
    records: Vec<StoredKey>,
    held: Vec<(Vec<Reservation>, u32)>,
}

impl Harness {
    /// Begins every key of a message, as the broker does: all New, or abort them all.
    fn begin_all(&mut self, pick: &KeyPick) -> Option<Vec<Reservation>> {
        let mut reserved = Vec::new();
        let mut refused = false;
        for k in keys(pick) {
            match self.t.begin(&k, self.now) {
                Begin::New(r) => reserved.push(r),
                Begin::Duplicate { partition, offset } => {
                    let r = self
                        .records
                        .iter()
                        .find(|r| r.partition == partition && r.offset == offset)
                        .expect("a duplicate answer points at a stored record");
                    let matches = match &k {
                        DedupeKey::Producer {
                            producer_id,
                            sequence,
                        } => r.producer == Some((producer_id.clone(), *sequence)),
                        DedupeKey::Id(i) => {
                            r.id.as_ref() == Some(i) && self.now < r.timestamp + ID_WINDOW
                        }
                    };
                    assert!(matches, "{k:?} answered with {r:?}");
                    refused = true;
                }
                Begin::InProgress { .. } => {
                    assert!(
                        self.held
                            .iter()
                            .any(|(rs, _)| rs.iter().any(|r| r.key() == &k)),
                        "{k:?} in progress but nobody holds it"
                    );
                    refused = true;
                }
                Begin::TooOld { .. } => refused = true,
            }
        }
        if refused {
            for r in reserved {
                self.t.abort(r).unwrap();
            }
            None
        } else {
            Some(reserved)
        }
    }

    fn resolve(&mut self, reserved: Vec<Reservation>, partition: u32, fails: bool) {
        if fails {
            for r in reserved {
                self.t.abort(r).unwrap();
            }
            return;
        }
        let next = self.next_offset.entry(partition).or_insert(0);
        let offset = *next;
        *next += 1;
        let mut rec = StoredKey {
            partition,
            offset,
            timestamp: self.now,
            producer: None,
            id: None,
        };
        for r in reserved {
            match r.key().clone() {
                DedupeKey::Producer {
                    producer_id,
                    sequence,
                } => rec.producer = Some((producer_id, sequence)),
                DedupeKey::Id(i) => rec.id = Some(i),
            }
            self.t.commit(r, partition, offset, self.now).unwrap();
        }
        self.records.push(rec);
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Publish {
                key,
                partition,
                fails,
            } => {
                if let Some(reserved) = self.begin_all(key) {
                    self.resolve(reserved, *partition, *fails);
                }
            }
            Op::Hold { key, partition } => {
                if let Some(reserved) = self.begin_all(key) {
                    self.held.push((reserved, *partition));
                }
            }
            Op::Resolve { fails } => {
                if !self.held.is_empty() {
                    let (reserved, partition) = self.held.remove(0);
                    self.resolve(reserved, partition, *fails);
                }
            }
            Op::Advance { ms } => self.now += ms,
        }
    }
}

/// The records as a broker would scan them after a restart: partition by partition.
fn by_partition(records: &[StoredKey]) -> Vec<StoredKey> {
    let mut v = records.to_vec();
    v.sort_by_key(|r| (r.partition, r.offset));
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn rebuilt_table_answers_like_the_live_one(ops in prop::collection::vec(op(), 1..120)) {
        let mut h = Harness {
            t: DedupeTable::new(config()),
            now: 1_000,
            next_offset: HashMap::new(),
            records: Vec::new(),
            held: Vec::new(),
        };
        for op in &ops {
            h.step(op);
        }
        // A restart happens with nothing in flight: the held requests finish first.
        while !h.held.is_empty() {
            h.step(&Op::Resolve { fails: false });
        }

        // While tracked, no producer key is stored twice.
        let mut seen = HashMap::new();
        for r in &h.records {
            if let Some(p) = &r.producer {
                prop_assert!(seen.insert(p.clone(), r.offset).is_none(), "{p:?} stored twice");
            }
        }
        // Ids: never twice inside the window.
        for (i, a) in h.records.iter().enumerate() {
            for b in &h.records[i + 1..] {
                if a.id.is_some() && a.id == b.id {
                    prop_assert!(b.timestamp >= a.timestamp + ID_WINDOW, "{a:?} {b:?}");
                }
            }
        }

        let mut reversed = h.records.clone();
        reversed.reverse();
        let orders = [h.records.clone(), by_partition(&h.records), reversed];
        let mut rebuilt: Vec<DedupeTable> = orders
            .into_iter()
            .map(|records| {
                let mut t = DedupeTable::new(config());
                t.rebuild_from(records);
                t
            })
            .collect();

        let live = &mut h.t;
        for now in [h.now, h.now + ID_WINDOW / 2, h.now + ID_WINDOW] {
            for k in universe() {
                let want = live.begin(&k, now);
                let want_text = answer(&want);
                if let Begin::New(r) = want {
                    live.abort(r).unwrap();
                }
                for t in &mut rebuilt {
                    let got = t.begin(&k, now);
                    prop_assert_eq!(&answer(&got), &want_text, "{:?} at {}", k, now);
                    if let Begin::New(r) = got {
                        t.abort(r).unwrap();
                    }
                }
            }
            for t in &rebuilt {
                prop_assert_eq!(sizes(t), sizes(live));
            }
        }
    }
}

/// What is tracked (not the counters, which count this table's own answers).
fn sizes(t: &DedupeTable) -> (u64, u64, u64, u64) {
    let s = t.stats();
    (s.producers, s.ids, s.sequences, s.in_progress)
}

#[test]
fn a_retry_after_restart_gets_the_original_location() {
    let mut live = DedupeTable::new(config());
    let k = producer(0, 5);
    let Begin::New(r) = live.begin(&k, 10) else {
        panic!("new key")
    };
    live.commit(r, 2, 17, 10).unwrap();

    let mut restarted = DedupeTable::new(config());
    restarted.rebuild_from([StoredKey {
        partition: 2,
        offset: 17,
        timestamp: 10,
        producer: Some(("producer-0".into(), 5)),
        id: None,
    }]);
    assert_eq!(
        restarted.begin(&k, 20),
        Begin::Duplicate {
            partition: 2,
            offset: 17
        }
    );
    assert_eq!(answer(&restarted.begin(&producer(0, 6), 20)), "New");
}
