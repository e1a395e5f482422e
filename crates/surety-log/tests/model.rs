//! Guards the log's whole public contract against drift under arbitrary operation
//! sequences: dense offsets, exact reads (every field), `read_from` limits, `BelowStart`,
//! retention deleting only whole segments below the floor, and reopen (full or
//! active-segment verification, missing or damaged index files, a changed segment size or
//! index interval) changing nothing.
//!
//! Each case runs random operations against the real log and against a plain model (a
//! `Vec` of records plus the segment layout the documented roll rule predicts) and
//! compares them after every operation; once on `SimStorage` (many cases) and once on real
//! files (fewer). `PROPTEST_CASES` sets the simulator's case count (real files run a
//! quarter of it); `PROPTEST_RNG_SEED` replays a run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use surety_log::segment::{INDEX_SUFFIX, SEGMENT_HEADER_LEN};
use surety_log::storage::{FileStorage, SimOptions, SimStorage, Storage};
use surety_log::{
    AppendError, Durability, Header, Log, LogConfig, NewRecord, ReadError, Record, RetentionPolicy,
    VerifyOnOpen,
};

/// The segment size a log starts with; reopens may change it (see [`Geometry`]).
const SEGMENT_BYTES: u64 = 8 * 1024;
const MAX_RECORD_BYTES: usize = 2 * 1024;
const SIM_DIR: &str = "/log";

/// Settings an operator may change between restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    segment_bytes: u64,
    index_interval_bytes: u64,
}

const DEFAULT_GEOMETRY: Geometry = Geometry {
    segment_bytes: SEGMENT_BYTES,
    index_interval_bytes: 256,
};

/// Settings fixed for one test case.
#[derive(Debug, Clone, Copy)]
struct CaseConfig {
    preallocate: bool,
    durability: Durability,
}

fn config(case: CaseConfig, geometry: Geometry, verify_on_open: VerifyOnOpen) -> LogConfig {
    LogConfig {
        segment_bytes: geometry.segment_bytes,
        max_record_bytes: MAX_RECORD_BYTES,
        index_interval_bytes: geometry.index_interval_bytes,
        preallocate: case.preallocate,
        durability: case.durability,
        verify_on_open,
    }
}

// ---------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------

/// A record to append; the payload is derived from `payload_len` and `fill`.
#[derive(Debug, Clone)]
struct RecSpec {
    timestamp_ms: i64,
    key: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    payload_len: usize,
    fill: u8,
}

impl RecSpec {
    fn to_record(&self) -> NewRecord {
        NewRecord {
            timestamp_ms: self.timestamp_ms,
            key: self.key.clone(),
            headers: self
                .headers
                .iter()
                .map(|(n, v)| Header::new(n.clone(), v.clone()))
                .collect(),
            payload: (0..self.payload_len)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(self.fill))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Policy {
    None,
    MaxBytes(u64),
    MaxAgeZero,
    Both(u64),
}

impl Policy {
    fn to_policy(self) -> RetentionPolicy {
        let (max_bytes, max_age) = match self {
            Policy::None => (None, None),
            Policy::MaxBytes(b) => (Some(b), None),
            Policy::MaxAgeZero => (None, Some(Duration::ZERO)),
            Policy::Both(b) => (Some(b), Some(Duration::ZERO)),
        };
        RetentionPolicy { max_age, max_bytes }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<RecSpec>),
    /// A batch with one record over `max_record_bytes` (or an empty batch): refused whole.
    AppendInvalid(Vec<RecSpec>),
    /// Offsets are chosen relative to the log (`pick_offset`), so they hit below the
    /// start, inside, and past the end.
    Read(u64),
    ReadFrom(u64, usize, usize),
    Reopen(Geometry),
    ReopenVerifyActiveOnly(Geometry),
    /// Close, delete (or truncate) every index file, reopen verifying only the active
    /// segment, so the sealed segments' indexes must be rebuilt.
    DeleteIndexFiles {
        truncate_instead: bool,
    },
    Retention(u64, Policy),
}

fn rec_strategy() -> impl Strategy<Value = RecSpec> {
    // Timestamps far in the past or far in the future, so `max_age: 0` decides the same
    // way whenever the test runs.
    let timestamp = prop_oneof![
        8 => -1_000i64..1_600_000_000_000,
        8 => 4_000_000_000_000i64..4_100_000_000_000,
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
    ];
    let key = proptest::option::of(vec(any::<u8>(), 0..16));
    let headers = vec(("\\PC{0,6}", vec(any::<u8>(), 0..16)), 0..3);
    // Max frame: 35 fixed + 16 key + 3 * (2 + 24 + 4 + 16) headers + 1850 < 2048.
    let payload_len = prop_oneof![
        2 => 0usize..64,
        2 => 64usize..600,
        2 => 1200usize..1850,
    ];
    (timestamp, key, headers, payload_len, any::<u8>()).prop_map(
        |(timestamp_ms, key, headers, payload_len, fill)| RecSpec {
            timestamp_ms,
            key,
            headers,
            payload_len,
            fill,
        },
    )
}

fn geometry_strategy() -> impl Strategy<Value = Geometry> {
    prop_oneof![
        3 => Just(DEFAULT_GEOMETRY),
        1 => (
            prop::sample::select(vec![4096u64, 8192, 16384]),
            prop::sample::select(vec![64u64, 256, 1024, 8192]),
        )
            .prop_map(|(segment_bytes, index_interval_bytes)| Geometry {
                segment_bytes,
                index_interval_bytes,
            }),
    ]
}

fn case_strategy() -> impl Strategy<Value = CaseConfig> {
    (
        any::<bool>(),
        prop_oneof![3 => Just(Durability::Fsync), 1 => Just(Durability::None)],
    )
        .prop_map(|(preallocate, durability)| CaseConfig {
            preallocate,
            durability,
        })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let oversized = rec_strategy().prop_map(|mut r| {
        r.payload_len = MAX_RECORD_BYTES + 1;
        r
    });
    let invalid_batch = prop_oneof![
        1 => Just(Vec::new()),
        3 => (vec(rec_strategy(), 0..3), oversized, vec(rec_strategy(), 0..3)).prop_map(
            |(mut before, big, after)| {
                before.push(big);
                before.extend(after);
                before
            }
        ),
    ];
    let max_bytes = prop_oneof![Just(0usize), 0usize..3000, Just(usize::MAX)];
    let policy = prop_oneof![
        1 => Just(Policy::None),
        3 => (0..3 * SEGMENT_BYTES).prop_map(Policy::MaxBytes),
        2 => Just(Policy::MaxAgeZero),
        1 => (0..3 * SEGMENT_BYTES).prop_map(Policy::Both),
    ];
    prop_oneof![
        10 => vec(rec_strategy(), 1..5).prop_map(Op::Append),
        1 => invalid_batch.prop_map(Op::AppendInvalid),
        4 => any::<u64>().prop_map(Op::Read),
        4 => (any::<u64>(), 0usize..8, max_bytes).prop_map(|(o, n, b)| Op::ReadFrom(o, n, b)),
        1 => geometry_strategy().prop_map(Op::Reopen),
        1 => geometry_strategy().prop_map(Op::ReopenVerifyActiveOnly),
        1 => any::<bool>().prop_map(|truncate_instead| Op::DeleteIndexFiles { truncate_instead }),
        3 => (any::<u64>(), policy).prop_map(|(f, p)| Op::Retention(f, p)),
    ]
}

// ---------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------

/// A segment as the documented roll rule predicts it: a new segment starts when the
/// next record would take the active one past `segment_bytes` (and it is not empty).
#[derive(Debug, Clone)]
struct SegModel {
    base: u64,
    end_pos: u64,
    next: u64,
    max_ts: Option<i64>,
}

#[derive(Debug)]
struct Model {
    /// Every record ever appended, indexed by offset (retention does not remove them
    /// here; `start` says which are still readable).
    records: Vec<Record>,
    segments: Vec<SegModel>,
}

impl Model {
    fn new() -> Self {
        Self {
            records: Vec::new(),
            segments: vec![SegModel {
                base: 0,
                end_pos: SEGMENT_HEADER_LEN as u64,
                next: 0,
                max_ts: None,
            }],
        }
    }

    fn start(&self) -> u64 {
        self.segments[0].base
    }

    fn end(&self) -> u64 {
        self.records.len() as u64
    }

    fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.end_pos).sum()
    }

    fn append(&mut self, rec: &NewRecord, segment_bytes: u64) {
        let len = rec.encoded_len().unwrap() as u64;
        let offset = self.end();
        let active = self.segments.last().unwrap();
        if active.end_pos + len > segment_bytes && active.end_pos > SEGMENT_HEADER_LEN as u64 {
            self.segments.push(SegModel {
                base: offset,
                end_pos: SEGMENT_HEADER_LEN as u64,
                next: offset,
                max_ts: None,
            });
        }
        let active = self.segments.last_mut().unwrap();
        active.end_pos += len;
        active.next = offset + 1;
        active.max_ts = Some(
            active
                .max_ts
                .map_or(rec.timestamp_ms, |t| t.max(rec.timestamp_ms)),
        );
        self.records.push(Record {
            offset,
            timestamp_ms: rec.timestamp_ms,
            key: rec.key.clone(),
            headers: rec.headers.clone(),
            payload: rec.payload.clone(),
        });
    }

    /// What `apply_retention` must do, per its documentation: delete the oldest sealed
    /// segments while each lies wholly below the floor and the policy asks for it.
    /// Returns (deleted segments, deleted records).
    fn retain(&mut self, floor: u64, policy: &RetentionPolicy, now_ms: i64) -> (usize, u64) {
        let (mut segs, mut recs) = (0, 0);
        while self.segments.len() >= 2 {
            let total = self.size_bytes();
            let oldest = &self.segments[0];
            let below_floor = oldest.next <= floor;
            let too_old = policy.max_age.is_some_and(|age| {
                oldest
                    .max_ts
                    .is_none_or(|t| t.saturating_add(age.as_millis() as i64) < now_ms)
            });
            let too_big = policy.max_bytes.is_some_and(|max| total > max);
            if !(below_floor && (too_old || too_big)) {
                break;
            }
            segs += 1;
            recs += oldest.next - oldest.base;
            self.segments.remove(0);
        }
        (segs, recs)
    }

    /// `read_from` as documented: at most `max_records`, stopping once `max_bytes` of
    /// payload are collected, at least one record when one is there.
    fn read_from(&self, offset: u64, max_records: usize, max_bytes: usize) -> Vec<Record> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for r in self.records.iter().skip(offset as usize) {
            if out.len() >= max_records {
                break;
            }
            bytes = bytes.saturating_add(r.payload.len());
            out.push(r.clone());
            if bytes >= max_bytes {
                break;
            }
        }
        out
    }

    /// Maps a random selector to an offset below the start, inside, or past the end.
    fn pick_offset(&self, sel: u64) -> u64 {
        match sel % 8 {
            0 => self.end() + sel / 8 % 3,
            1 if self.start() > 0 => (sel / 8) % self.start(),
            _ => self.start() + (sel / 8) % (self.end() - self.start() + 1),
        }
    }

    fn pick_floor(&self, sel: u64) -> u64 {
        match sel % 6 {
            0 => u64::MAX,
            _ => (sel / 6) % (self.end() + 3),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The harness: the real log on one backend, plus the model
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sim,
    Files,
}

struct Harness {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    case: CaseConfig,
    geometry: Geometry,
    log: Option<Log>,
    model: Model,
    /// Operations done so far, for failure messages.
    step: usize,
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

impl Harness {
    fn new(backend: Backend, case: CaseConfig) -> Result<Self, TestCaseError> {
        let (storage, dir, tmp): (Arc<dyn Storage>, PathBuf, _) = match backend {
            Backend::Sim => (
                Arc::new(SimStorage::new(SimOptions::default())),
                PathBuf::from(SIM_DIR),
                None,
            ),
            Backend::Files => {
                let tmp = tempfile::tempdir().unwrap();
                (Arc::new(FileStorage), tmp.path().join("log"), Some(tmp))
            }
        };
        let mut h = Harness {
            storage,
            dir,
            _tmp: tmp,
            case,
            geometry: DEFAULT_GEOMETRY,
            log: None,
            model: Model::new(),
            step: 0,
        };
        h.open(VerifyOnOpen::All)?;
        Ok(h)
    }

    fn log(&self) -> &Log {
        self.log.as_ref().unwrap()
    }

    fn open(&mut self, verify: VerifyOnOpen) -> Result<(), TestCaseError> {
        self.log = None;
        let log = Log::open(
            self.storage.clone(),
            &self.dir,
            config(self.case, self.geometry, verify),
        )
        .map_err(|e| fail(format!("step {}: open ({verify:?}) failed: {e}", self.step)))?;
        self.log = Some(log);
        Ok(())
    }

    fn index_files(&self) -> Vec<PathBuf> {
        let mut names = self.storage.list_files(&self.dir).unwrap();
        names.sort();
        names
            .into_iter()
            .filter(|n| n.ends_with(INDEX_SUFFIX))
            .map(|n| self.dir.join(n))
            .collect()
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        self.step += 1;
        let step = self.step;
        match op {
            Op::Append(specs) => {
                let recs: Vec<NewRecord> = specs.iter().map(RecSpec::to_record).collect();
                let expected = self.model.end()..self.model.end() + recs.len() as u64;
                let got = self
                    .log()
                    .append_batch(recs.clone())
                    .map_err(|e| fail(format!("step {step}: append failed: {e}")))?;
                prop_assert_eq!(got, expected, "step {}: offsets of an append", step);
                for r in &recs {
                    self.model.append(r, self.geometry.segment_bytes);
                }
            }
            Op::AppendInvalid(specs) => {
                let recs: Vec<NewRecord> = specs.iter().map(RecSpec::to_record).collect();
                match self.log().append_batch(recs) {
                    Err(AppendError::EmptyBatch) if specs.is_empty() => {}
                    Err(AppendError::TooLarge { max, .. }) if max == MAX_RECORD_BYTES => {}
                    other => {
                        return Err(fail(format!(
                            "step {step}: an invalid batch of {} was answered {other:?}",
                            specs.len()
                        )));
                    }
                }
            }
            Op::Read(sel) => {
                let offset = self.model.pick_offset(*sel);
                self.check_read(offset)?;
            }
            Op::ReadFrom(sel, max_records, max_bytes) => {
                let offset = self.model.pick_offset(*sel);
                self.check_read_from(offset, *max_records, *max_bytes)?;
            }
            Op::Reopen(geometry) => {
                self.geometry = *geometry;
                self.open(VerifyOnOpen::All)?;
            }
            Op::ReopenVerifyActiveOnly(geometry) => {
                self.geometry = *geometry;
                self.open(VerifyOnOpen::ActiveSegment)?;
            }
            Op::DeleteIndexFiles { truncate_instead } => {
                self.log = None;
                for path in self.index_files() {
                    if *truncate_instead {
                        let f = self.storage.open(&path).unwrap();
                        let len = f.len().unwrap();
                        f.set_len(len / 2).unwrap();
                    } else {
                        self.storage.remove_file(&path).unwrap();
                    }
                }
                self.open(VerifyOnOpen::ActiveSegment)?;
            }
            Op::Retention(sel, policy) => {
                let floor = self.model.pick_floor(*sel);
                let policy = policy.to_policy();
                let start_before = self.model.start();
                let out = self
                    .log()
                    .apply_retention(floor, &policy)
                    .map_err(|e| fail(format!("step {step}: retention failed: {e}")))?;
                // The contract, stated on its own terms first.
                prop_assert!(
                    out.deleted_segments == 0 || out.start_offset <= floor,
                    "step {}: retention with floor {} moved the start to {}",
                    step,
                    floor,
                    out.start_offset
                );
                prop_assert_eq!(out.start_offset, self.log().start_offset());
                prop_assert!(
                    self.model
                        .segments
                        .iter()
                        .any(|s| s.base == out.start_offset),
                    "step {}: new start {} is not a segment base (bases {:?})",
                    step,
                    out.start_offset,
                    self.model
                        .segments
                        .iter()
                        .map(|s| s.base)
                        .collect::<Vec<_>>()
                );
                prop_assert_eq!(
                    out.deleted_records,
                    out.start_offset - start_before,
                    "step {}: deleted_records",
                    step
                );
                // Then exactly what the documented rule predicts.
                let (segs, recs) = self
                    .model
                    .retain(floor, &policy, surety_log::record::now_ms());
                prop_assert_eq!(
                    (out.deleted_segments, out.deleted_records, out.start_offset),
                    (segs, recs, self.model.start()),
                    "step {}: retention(floor {}, {:?}) outcome vs model",
                    step,
                    floor,
                    policy
                );
            }
        }
        self.check_state()
    }

    fn check_read(&self, offset: u64) -> Result<(), TestCaseError> {
        let (start, end) = (self.model.start(), self.model.end());
        let got = self.log().read(offset);
        let step = self.step;
        match got {
            Err(ReadError::BelowStart {
                requested,
                start: s,
            }) if offset < start => {
                prop_assert_eq!((requested, s), (offset, start), "step {}: BelowStart", step);
            }
            Ok(None) if offset >= end => {}
            Ok(Some(r)) if offset >= start && offset < end => {
                prop_assert_eq!(
                    &r,
                    &self.model.records[offset as usize],
                    "step {}: read({})",
                    step,
                    offset
                );
            }
            other => {
                return Err(fail(format!(
                    "step {step}: read({offset}) with log [{start}, {end}) returned {other:?}"
                )));
            }
        }
        Ok(())
    }

    fn check_read_from(
        &self,
        offset: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<(), TestCaseError> {
        let (start, end) = (self.model.start(), self.model.end());
        let step = self.step;
        let got = self.log().read_from(offset, max_records, max_bytes);
        match got {
            // Nothing was asked for: an empty answer, or BelowStart, are both fine.
            Ok(v) if max_records == 0 && v.is_empty() => {}
            Err(ReadError::BelowStart { .. }) if max_records == 0 && offset < start => {}
            Err(ReadError::BelowStart {
                requested,
                start: s,
            }) if offset < start => {
                prop_assert_eq!((requested, s), (offset, start), "step {}: BelowStart", step);
            }
            Ok(v) if offset >= start => {
                let want = self.model.read_from(offset, max_records, max_bytes);
                prop_assert_eq!(
                    v.len(),
                    want.len(),
                    "step {}: read_from({}, {}, {}) length with log [{}, {})",
                    step,
                    offset,
                    max_records,
                    max_bytes,
                    start,
                    end
                );
                prop_assert_eq!(
                    v,
                    want,
                    "step {}: read_from({}, {}, {})",
                    step,
                    offset,
                    max_records,
                    max_bytes
                );
            }
            other => {
                return Err(fail(format!(
                    "step {step}: read_from({offset}, {max_records}, {max_bytes}) with log \
                     [{start}, {end}) returned {other:?}"
                )));
            }
        }
        Ok(())
    }

    /// After every operation: bounds, layout, and every stored record, field by field.
    fn check_state(&self) -> Result<(), TestCaseError> {
        let log = self.log();
        let m = &self.model;
        let step = self.step;
        prop_assert_eq!(log.durable_end(), m.end(), "step {}: durable_end", step);
        prop_assert_eq!(log.start_offset(), m.start(), "step {}: start_offset", step);
        prop_assert_eq!(
            log.segment_count(),
            m.segments.len(),
            "step {}: segment count (model bases {:?})",
            step,
            m.segments.iter().map(|s| s.base).collect::<Vec<_>>()
        );
        prop_assert_eq!(
            log.size_bytes(),
            m.size_bytes(),
            "step {}: size_bytes",
            step
        );
        let all = log
            .read_from(m.start(), usize::MAX, usize::MAX)
            .map_err(|e| fail(format!("step {step}: read_from(start) failed: {e}")))?;
        prop_assert_eq!(
            all.len() as u64,
            m.end() - m.start(),
            "step {}: records from the start",
            step
        );
        for (r, want) in all.iter().zip(&m.records[m.start() as usize..]) {
            prop_assert_eq!(r, want, "step {}: stored record", step);
        }
        if m.start() > 0 {
            let below = log.read(m.start() - 1);
            prop_assert!(
                matches!(below, Err(ReadError::BelowStart { .. })),
                "step {}: read below the start {} returned {:?}",
                step,
                m.start(),
                below
            );
        }
        prop_assert_eq!(
            log.read(m.end()).ok(),
            Some(None),
            "step {}: read at the end",
            step
        );
        Ok(())
    }
}

fn run(backend: Backend, case: CaseConfig, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut h = Harness::new(backend, case)?;
    for op in ops {
        h.apply(op)?;
    }
    // A final reopen of each kind must see the same log.
    h.open(VerifyOnOpen::All)?;
    h.check_state()?;
    h.open(VerifyOnOpen::ActiveSegment)?;
    h.check_state()
}

fn cases(divisor: u32, default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .map_or(default, |n| (n / divisor).max(1))
}

fn proptest_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Regression files would land in the source tree; replay with PROPTEST_RNG_SEED.
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config(cases(1, 256)))]
    #[test]
    fn log_matches_model_on_sim_storage(
        case in case_strategy(),
        ops in vec(op_strategy(), 1..80),
    ) {
        run(Backend::Sim, case, &ops)?;
    }
}

proptest! {
    #![proptest_config(proptest_config(cases(4, 48)))]
    #[test]
    fn log_matches_model_on_real_files(
        case in case_strategy(),
        ops in vec(op_strategy(), 1..40),
    ) {
        run(Backend::Files, case, &ops)?;
    }
}
