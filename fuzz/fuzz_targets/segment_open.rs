//! Fuzzes opening a log whose files came off a disk: segment headers, record frames, the
//! torn-tail/corruption decision, index files, leftovers, and repair.
//!
//! The input (decoded with `arbitrary`) describes a log directory in `SimStorage`: one to
//! three segment files, each either raw fuzz bytes, a valid header followed by raw bytes,
//! or a header followed by well-formed record frames (with correct CRCs, so recovery's
//! logic past the CRC check is reached) that are then damaged (bit flips, truncation,
//! zeroed or overwritten ranges, trailing zeros or garbage). Segments may come with an
//! index file (raw bytes, or a plausible one, right or subtly wrong), and the directory
//! may hold leftovers (orphan index files, half-written repair files, unrelated files).
//!
//! Properties checked:
//! - `Log::open` and `Log::open_with_repair` never panic or hang, and fail only with
//!   `OpenError::Corrupt` (the storage never fails, so an I/O error is a bug);
//! - `open_with_repair` always succeeds, and a plain `open` after it succeeds too;
//! - after a successful open with `VerifyOnOpen::All` (everything was verified),
//!   `read_from(start_offset, usize::MAX, usize::MAX)` succeeds and returns records with
//!   rising offsets below `durable_end`;
//! - appending one record then works, gets offset `durable_end`, and reads back intact
//!   (unless `durable_end` is past `record::MAX_OFFSET`: then it fails with
//!   `AppendError::OffsetsExhausted`);
//! - reopening afterwards succeeds, and (verified logs) reads back exactly the same records.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use surety_log::index::{IndexEntry, IndexFile};
use surety_log::record;
use surety_log::segment::{SEGMENT_HEADER_LEN, encode_header, index_file_name, segment_file_name};
use surety_log::storage::{SimOptions, SimStorage, Storage};
use surety_log::{
    AppendError, Durability, Header, Log, LogConfig, NewRecord, OpenError, Record, VerifyOnOpen,
};

const DIR: &str = "/data/log";
const SEGMENT_BYTES: u64 = 64 * 1024;
const MAX_RECORD_BYTES: usize = 16 * 1024;
/// No generated file grows past this, so that one input stays fast.
const MAX_FILE_LEN: usize = 2 * SEGMENT_BYTES as usize;
const MAX_SEGMENTS: usize = 3;

#[derive(Debug, Arbitrary)]
struct Input {
    how: How,
    durability_none: bool,
    verify_active_only: bool,
    index_interval: u16,
    segments: Vec<SegmentSpec>,
    leftovers: Vec<Leftover>,
}

#[derive(Debug, Arbitrary)]
enum How {
    /// `open`; when it reports corruption, `open_with_repair` (the operator's path).
    OpenThenRepair,
    /// `open` only.
    Open,
    /// `open_with_repair` straight away.
    Repair,
}

#[derive(Debug, Arbitrary)]
struct SegmentSpec {
    base: Base,
    content: Content,
    index: IndexSpec,
}

#[derive(Debug, Arbitrary)]
enum Base {
    /// The offset after the previous segment's last record (0 for the first segment).
    Follow,
    /// That plus a gap.
    Gap(u16),
    Small(u8),
    Any(u64),
    /// `record::MAX_OFFSET` plus this (the edge of the offset space).
    NearMaxOffset(i8),
}

#[derive(Debug, Arbitrary)]
enum Content {
    Records {
        header: HeaderSpec,
        records: Vec<RecordSpec>,
        tail: TailSpec,
        damage: Vec<Damage>,
    },
    /// A header, then raw fuzz bytes.
    HeaderThenRaw(HeaderSpec, Vec<u8>),
    /// The whole file is raw fuzz bytes.
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum HeaderSpec {
    Valid,
    /// A valid header for another base offset.
    OtherBase(u64),
    /// A valid header with one bit flipped.
    FlipBit(u8),
    /// The first `n % 32` bytes of a valid header.
    Short(u8),
    Zeros,
}

#[derive(Debug, Arbitrary)]
struct RecordSpec {
    offset: OffsetStep,
    /// Starts a new write batch (else `batch_delta` continues the current one).
    new_batch: bool,
    batch_delta: Option<u32>,
    timestamp_ms: i64,
    key: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    payload: Vec<u8>,
    /// Extra payload bytes, up to a little over `MAX_RECORD_BYTES` (to make big frames).
    pad: u16,
}

#[derive(Debug, Arbitrary)]
enum OffsetStep {
    Next,
    Skip(u16),
    Same,
    Back(u8),
    Abs(u64),
    /// `record::MAX_OFFSET` plus this.
    NearMaxOffset(i8),
}

#[derive(Debug, Arbitrary)]
enum TailSpec {
    None,
    /// Preallocated space: zeros.
    Zeros(u16),
    Bytes(Vec<u8>),
    ZerosThenBytes(u16, Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum Damage {
    FlipBit {
        at: u32,
        bit: u8,
    },
    /// Cut off the last `n` bytes.
    TruncateBy(u16),
    Zero {
        at: u32,
        len: u16,
    },
    Overwrite {
        at: u32,
        bytes: Vec<u8>,
    },
}

#[derive(Debug, Arbitrary)]
enum IndexSpec {
    None,
    Raw(Vec<u8>),
    /// An index built from the records as written (before any damage), with tweaks.
    Plausible {
        every: u8,
        next_offset_delta: i8,
        segment_len_delta: i8,
        first_position_delta: i8,
    },
    Arbitrary {
        next_offset: u64,
        segment_len: u64,
        max_timestamp_ms: Option<i64>,
        entries: Vec<(u64, u32)>,
    },
}

#[derive(Debug, Arbitrary)]
enum Leftover {
    OrphanIndex(u8, Vec<u8>),
    /// A half-written repair file for the segment with this base.
    RepairFile(u8, Vec<u8>),
    Stray(StrayName, Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum StrayName {
    Notes,
    /// Looks like a segment but does not parse.
    ShortDigits,
    HexDigits,
    TooBig,
    LogSuffixOnly,
}

/// What was generated for one segment, beyond its bytes.
struct Built {
    bytes: Vec<u8>,
    /// (offset, position, timestamp) of each well-formed frame, before damage.
    frames: Vec<(u64, u32, i64)>,
    next_offset: u64,
}

fn header(spec: &HeaderSpec, base: u64) -> Vec<u8> {
    match spec {
        HeaderSpec::Valid => encode_header(base).to_vec(),
        HeaderSpec::OtherBase(b) => encode_header(*b).to_vec(),
        HeaderSpec::FlipBit(bit) => {
            let mut h = encode_header(base);
            let bit = usize::from(*bit);
            h[(bit / 8) % SEGMENT_HEADER_LEN] ^= 1 << (bit % 8);
            h.to_vec()
        }
        HeaderSpec::Short(n) => {
            encode_header(base)[..usize::from(*n) % SEGMENT_HEADER_LEN].to_vec()
        }
        HeaderSpec::Zeros => vec![0; SEGMENT_HEADER_LEN],
    }
}

fn build_segment(content: &Content, base: u64) -> Built {
    let mut built = Built {
        bytes: Vec::new(),
        frames: Vec::new(),
        next_offset: base,
    };
    match content {
        Content::Raw(bytes) => built.bytes = bytes.clone(),
        Content::HeaderThenRaw(h, bytes) => {
            built.bytes = header(h, base);
            built.bytes.extend_from_slice(bytes);
        }
        Content::Records {
            header: h,
            records,
            tail,
            damage,
        } => {
            built.bytes = header(h, base);
            let mut prev: Option<u64> = None;
            let mut batch_base = base;
            for spec in records {
                if built.bytes.len() >= MAX_FILE_LEN {
                    break;
                }
                let offset = match (&spec.offset, prev) {
                    (OffsetStep::Abs(o), _) => *o,
                    (OffsetStep::NearMaxOffset(d), _) => {
                        record::MAX_OFFSET.wrapping_add_signed(i64::from(*d))
                    }
                    (_, None) => base,
                    (OffsetStep::Next, Some(p)) => p.wrapping_add(1),
                    (OffsetStep::Skip(n), Some(p)) => p.wrapping_add(2 + u64::from(*n)),
                    (OffsetStep::Same, Some(p)) => p,
                    (OffsetStep::Back(n), Some(p)) => p.wrapping_sub(1 + u64::from(*n)),
                };
                if spec.new_batch || prev.is_none() {
                    batch_base = offset;
                }
                let batch_delta = spec
                    .batch_delta
                    .unwrap_or(offset.wrapping_sub(batch_base) as u32);
                let mut payload = spec.payload.clone();
                let pad = usize::from(spec.pad) % (MAX_RECORD_BYTES + 1024);
                payload.resize(payload.len() + pad, 0xA5);
                let rec = NewRecord {
                    timestamp_ms: spec.timestamp_ms,
                    key: spec.key.clone(),
                    headers: spec
                        .headers
                        .iter()
                        .take(8)
                        .map(|(n, v)| Header::new(n.clone(), v.clone()))
                        .collect(),
                    payload,
                };
                let position = built.bytes.len() as u32;
                record::encode_into(&mut built.bytes, &rec, offset, batch_delta);
                built.frames.push((offset, position, spec.timestamp_ms));
                built.next_offset = offset.wrapping_add(1);
                prev = Some(offset);
            }
            match tail {
                TailSpec::None => {}
                TailSpec::Zeros(n) => built.bytes.resize(built.bytes.len() + usize::from(*n), 0),
                TailSpec::Bytes(b) => built.bytes.extend_from_slice(b),
                TailSpec::ZerosThenBytes(n, b) => {
                    built.bytes.resize(built.bytes.len() + usize::from(*n), 0);
                    built.bytes.extend_from_slice(b);
                }
            }
            for d in damage.iter().take(4) {
                let bytes = &mut built.bytes;
                if bytes.is_empty() {
                    break;
                }
                let len = bytes.len();
                match d {
                    Damage::FlipBit { at, bit } => bytes[*at as usize % len] ^= 1 << (bit % 8),
                    Damage::TruncateBy(n) => bytes.truncate(len.saturating_sub(usize::from(*n))),
                    Damage::Zero { at, len: n } => {
                        let at = *at as usize % len;
                        let end = (at + usize::from(*n)).min(len);
                        bytes[at..end].fill(0);
                    }
                    Damage::Overwrite { at, bytes: with } => {
                        let at = *at as usize % len;
                        let n = with.len().min(len - at);
                        bytes[at..at + n].copy_from_slice(&with[..n]);
                    }
                }
            }
        }
    }
    built.bytes.truncate(MAX_FILE_LEN);
    built
}

fn build_index(spec: &IndexSpec, base: u64, built: &Built) -> Option<Vec<u8>> {
    match spec {
        IndexSpec::None => None,
        IndexSpec::Raw(bytes) => Some(bytes.clone()),
        IndexSpec::Plausible {
            every,
            next_offset_delta,
            segment_len_delta,
            first_position_delta,
        } => {
            let every = 1 + usize::from(*every % 8);
            let mut entries: Vec<IndexEntry> = built
                .frames
                .iter()
                .step_by(every)
                .map(|&(offset, position, _)| IndexEntry { offset, position })
                .collect();
            if let Some(first) = entries.first_mut() {
                first.position = first
                    .position
                    .wrapping_add_signed(i32::from(*first_position_delta));
            }
            Some(
                IndexFile {
                    base_offset: base,
                    next_offset: built
                        .next_offset
                        .wrapping_add_signed(i64::from(*next_offset_delta)),
                    segment_len: (built.bytes.len() as u64)
                        .wrapping_add_signed(i64::from(*segment_len_delta)),
                    max_timestamp_ms: built.frames.iter().map(|f| f.2).max(),
                    entries,
                }
                .encode(),
            )
        }
        IndexSpec::Arbitrary {
            next_offset,
            segment_len,
            max_timestamp_ms,
            entries,
        } => Some(
            IndexFile {
                base_offset: base,
                next_offset: *next_offset,
                segment_len: *segment_len,
                max_timestamp_ms: *max_timestamp_ms,
                entries: entries
                    .iter()
                    .take(64)
                    .map(|&(offset, position)| IndexEntry { offset, position })
                    .collect(),
            }
            .encode(),
        ),
    }
}

/// The files of the log directory the input describes.
fn build_files(input: &Input) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(DIR);
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let mut bases = Vec::new();
    let mut follow = 0u64;
    for spec in input.segments.iter().take(MAX_SEGMENTS) {
        let base = match spec.base {
            Base::Follow => follow,
            Base::Gap(n) => follow.wrapping_add(1 + u64::from(n)),
            Base::Small(n) => u64::from(n),
            Base::Any(n) => n,
            Base::NearMaxOffset(d) => record::MAX_OFFSET.wrapping_add_signed(i64::from(d)),
        };
        let built = build_segment(&spec.content, base);
        follow = built.next_offset.max(base);
        if let Some(ix) = build_index(&spec.index, base, &built) {
            files.push((dir.join(index_file_name(base)), ix));
        }
        files.push((dir.join(segment_file_name(base)), built.bytes));
        bases.push(base);
    }
    for leftover in input.leftovers.iter().take(3) {
        let (name, bytes) = match leftover {
            Leftover::OrphanIndex(b, bytes) => (index_file_name(u64::from(*b)), bytes),
            Leftover::RepairFile(i, bytes) => {
                let base = match bases.len() {
                    0 => u64::from(*i),
                    n => bases[usize::from(*i) % n],
                };
                (format!("{}.repair", segment_file_name(base)), bytes)
            }
            Leftover::Stray(name, bytes) => {
                let name = match name {
                    StrayName::Notes => "notes.txt",
                    StrayName::ShortDigits => "0000042.log",
                    StrayName::HexDigits => "0000000000000000000a.log",
                    StrayName::TooBig => "99999999999999999999.log",
                    StrayName::LogSuffixOnly => ".log",
                };
                (name.to_owned(), bytes)
            }
        };
        files.push((dir.join(name), bytes.clone()));
    }
    files
}

fn config(input: &Input) -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        max_record_bytes: MAX_RECORD_BYTES,
        index_interval_bytes: 1 + u64::from(input.index_interval % 8192),
        durability: if input.durability_none {
            Durability::None
        } else {
            Durability::Fsync
        },
        preallocate: false,
        verify_on_open: if input.verify_active_only {
            VerifyOnOpen::ActiveSegment
        } else {
            VerifyOnOpen::All
        },
    }
}

fn expect_corrupt(e: OpenError, what: &str) {
    match e {
        OpenError::Corrupt(_) => {}
        other => panic!("{what} failed with something other than corruption: {other}"),
    }
}

/// Checks an opened log: reads, one append, read-back. Returns every record when the
/// open verified all of them.
fn exercise(log: &Log, verified: bool) -> Option<Vec<Record>> {
    let start = log.start_offset();
    let end = log.durable_end();
    assert!(start <= end, "start offset {start} above durable end {end}");
    let before = if verified {
        let records = log
            .read_from(start, usize::MAX, usize::MAX)
            .unwrap_or_else(|e| panic!("read_from({start}) after a successful open failed: {e}"));
        for pair in records.windows(2) {
            assert!(
                pair[0].offset < pair[1].offset,
                "offsets do not rise: {} then {}",
                pair[0].offset,
                pair[1].offset
            );
        }
        if let (Some(first), Some(last)) = (records.first(), records.last()) {
            assert!(
                first.offset >= start,
                "record {} below start {start}",
                first.offset
            );
            assert!(
                last.offset < end,
                "record {} at or past durable end {end}",
                last.offset
            );
            for r in [first, last] {
                let again = log
                    .read(r.offset)
                    .unwrap_or_else(|e| panic!("read({}) failed: {e}", r.offset));
                assert_eq!(
                    again.as_ref(),
                    Some(r),
                    "read({}) disagrees with read_from",
                    r.offset
                );
            }
        }
        Some(records)
    } else {
        None
    };

    let rec = NewRecord {
        timestamp_ms: 1_700_000_000_000,
        key: Some(b"fuzz-key".to_vec()),
        headers: vec![Header::new("h", b"v".to_vec())],
        payload: b"appended by the fuzzer".to_vec(),
    };
    if end > record::MAX_OFFSET {
        // The offset space is used up: the append must be refused cleanly (no panic, no
        // hang, no wrap-around).
        match log.append(rec) {
            Err(AppendError::OffsetsExhausted) => {}
            other => panic!("append at offset {end} (past MAX_OFFSET) gave {other:?}"),
        }
        return before;
    }
    let offset = log
        .append(rec.clone())
        .unwrap_or_else(|e| panic!("append after a successful open failed: {e}"));
    assert_eq!(
        offset, end,
        "appended record did not get the durable end as offset"
    );
    assert_eq!(log.durable_end(), end.wrapping_add(1));
    let back = log
        .read(offset)
        .unwrap_or_else(|e| panic!("reading back the appended record failed: {e}"))
        .unwrap_or_else(|| panic!("appended record {offset} not found"));
    let expected = Record {
        offset,
        timestamp_ms: rec.timestamp_ms,
        key: rec.key,
        headers: rec.headers,
        payload: rec.payload,
    };
    assert_eq!(back, expected, "appended record read back differently");
    before.map(|mut records| {
        records.push(expected);
        records
    })
}

/// Reopens a log that was just opened, appended to and closed: must succeed and show
/// exactly what was there.
fn reopen_and_compare(
    storage: &Arc<dyn Storage>,
    config: &LogConfig,
    expected: Option<Vec<Record>>,
) {
    let log = Log::open(storage.clone(), DIR, config.clone())
        .unwrap_or_else(|e| panic!("reopening a log that opened and appended fine failed: {e}"));
    if let Some(expected) = expected {
        let start = expected.first().map_or(log.start_offset(), |r| r.offset);
        let records = log
            .read_from(start, usize::MAX, usize::MAX)
            .unwrap_or_else(|e| panic!("read_from({start}) after reopening failed: {e}"));
        assert!(
            records == expected,
            "reopened log reads differently: {} records before, {} after",
            expected.len(),
            records.len()
        );
    }
}

fuzz_target!(|input: Input| {
    let sim = SimStorage::new(SimOptions::default());
    let dir = Path::new(DIR);
    sim.create_dir_all(dir).unwrap();
    for (path, bytes) in build_files(&input) {
        // Two specs may name the same file: the first one wins.
        let Ok(file) = sim.create_new(&path) else {
            continue;
        };
        if !bytes.is_empty() {
            file.write_all_at(&bytes, 0).unwrap();
        }
        file.sync_all().unwrap();
    }
    sim.sync_dir(dir).unwrap();

    let config = config(&input);
    let verified = config.verify_on_open == VerifyOnOpen::All;
    let storage: Arc<dyn Storage> = Arc::new(sim);

    let opened = match input.how {
        How::Open | How::OpenThenRepair => match Log::open(storage.clone(), DIR, config.clone()) {
            Ok(log) => Some(log),
            Err(e) => {
                expect_corrupt(e, "open");
                None
            }
        },
        How::Repair => None,
    };
    let log = match (opened, &input.how) {
        (Some(log), _) => log,
        (None, How::Open) => return,
        (None, _) => {
            let (log, _report) = Log::open_with_repair(storage.clone(), DIR, config.clone())
                .unwrap_or_else(|e| panic!("open_with_repair failed: {e}"));
            log
        }
    };
    let records = exercise(&log, verified);
    drop(log);
    reopen_and_compare(&storage, &config, if verified { records } else { None });
});
