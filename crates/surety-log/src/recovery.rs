//! Opening a log after any kind of stop: clean close, `kill -9`, or power loss.
//!
//! The rule that separates a torn tail (truncate it) from corruption (refuse to open):
//! the writer starts a write batch only after the previous batch's fdatasync returned,
//! and every record carries the first offset of its batch. So when the last segment's
//! scan stops at an invalid frame that should hold offset `n`, recovery searches the rest
//! of the segment for valid frames. A valid frame whose batch began *after* `n` proves
//! that the batch holding `n` had been synced, i.e. possibly acknowledged: corruption.
//! Anything else is the unsynced tail of the last batch, which no appender was told
//! about, and it is truncated. Sealed segments were synced whole before their successor
//! was created, so any invalid frame in them is corruption.
//!
//! One case stays ambiguous by construction: damage to the very last record of the last
//! synced batch, with nothing after it, looks exactly like a torn write, and is
//! truncated. Every other bit flip in acknowledged data is reported.

use std::collections::BTreeSet;
use std::io;
use std::ops::{ControlFlow, RangeInclusive};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Durability, LogConfig, VerifyOnOpen};
use crate::error::{Corruption, OpenError, io_at};
use crate::index::IndexFile;
use crate::log::{Segment, SegmentState};
use crate::record::{self, NewRecord};
use crate::sealed;
use crate::segment::{
    SEGMENT_HEADER_LEN, ScanOutcome, ScanStop, decode_header, encode_header, index_path,
    parse_index_file_name, parse_segment_file_name, resync, scan_paced, segment_file_name,
    segment_path,
};
use crate::storage::{Storage, StorageFile, read_full_at};
use crate::writer::{create_segment, write_index_file};

/// Where quarantined segments go, inside the log directory.
pub const QUARANTINE_DIR: &str = "quarantine";
const REPAIR_SUFFIX: &str = ".repair";

/// What opening the log found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// An unsynced, torn tail that was cut off the last segment.
    pub truncated_tail: Option<TruncatedTail>,
    /// A last segment whose creation never completed (no valid header, no records).
    pub removed_incomplete_segment: Option<PathBuf>,
    /// Segments that failed verification and were moved aside (repair only).
    pub quarantined: Vec<QuarantinedSegment>,
}

/// Alias kept for readers of `open_with_repair`.
pub type RepairReport = RecoveryReport;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncatedTail {
    pub segment: PathBuf,
    /// New end of the segment's data.
    pub position: u64,
    /// Why the first discarded frame was invalid.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedSegment {
    /// The segment's path; it now holds only the records that verified.
    pub segment: PathBuf,
    /// Where the damaged original was moved.
    pub moved_to: PathBuf,
    /// What verification found.
    pub corruption: Corruption,
    /// Records that verified and were kept.
    pub kept_records: u64,
    /// Exactly the offsets that were lost, as inclusive ranges.
    pub lost_offsets: Vec<RangeInclusive<u64>>,
}

pub(crate) struct Recovered {
    pub segments: Vec<Arc<Segment>>,
    pub next_offset: u64,
    pub active_end_pos: u64,
    pub report: RecoveryReport,
}

enum Fault {
    Io(OpenError),
    Corrupt(Corruption, Option<u64>),
}

impl From<OpenError> for Fault {
    fn from(e: OpenError) -> Self {
        Fault::Io(e)
    }
}

pub(crate) fn recover(
    storage: &dyn Storage,
    dir: &Path,
    config: &LogConfig,
    repair: bool,
) -> Result<Recovered, OpenError> {
    storage.create_dir_all(dir).map_err(io_at(dir))?;
    let mut quarantined = Vec::new();
    loop {
        match try_recover(storage, dir, config) {
            Ok(mut r) => {
                r.report.quarantined = quarantined;
                return Ok(r);
            }
            Err(Fault::Io(e)) => return Err(e),
            Err(Fault::Corrupt(c, next_base)) => {
                // Each repair rewrites one segment into a verified one, so this loop ends.
                if !repair
                    || quarantined
                        .iter()
                        .any(|q: &QuarantinedSegment| q.segment == c.segment)
                {
                    return Err(OpenError::Corrupt(Box::new(c)));
                }
                quarantined.push(quarantine(storage, dir, config, c, next_base)?);
            }
        }
    }
}

fn try_recover(storage: &dyn Storage, dir: &Path, config: &LogConfig) -> Result<Recovered, Fault> {
    let names = storage.list_files(dir).map_err(io_at(dir))?;
    let mut bases = segment_bases(&names);
    remove_leftovers(storage, dir, &names, &bases)?;
    let mut report = RecoveryReport::default();
    let max_frame = config.max_record_bytes;
    // Decided before anything else: the segment before it is then the active one and
    // must get the tail recovery of a last segment, not the checks of a sealed one.
    if let Some(&base) = bases.last() {
        let path = segment_path(dir, base);
        if is_incomplete(storage, &path, base, max_frame).map_err(io_at(&path))? {
            // Crash between creating the file and syncing its header: nothing was ever
            // written to it, so nothing was ever acknowledged from it.
            storage.remove_file(&path).map_err(io_at(&path))?;
            storage.sync_dir(dir).map_err(io_at(dir))?;
            bases.pop();
            report.removed_incomplete_segment = Some(path);
        }
    }
    let mut segments: Vec<Arc<Segment>> = Vec::new();
    for (i, &base) in bases.iter().enumerate() {
        let is_last = i + 1 == bases.len();
        let next_base = bases.get(i + 1).copied();
        let path = segment_path(dir, base);
        let file = storage.open(&path).map_err(io_at(&path))?;
        let len = file.len().map_err(io_at(&path))?;
        if let Some(fault) =
            header_fault(file.as_ref(), base, len, max_frame).map_err(io_at(&path))?
        {
            return Err(Fault::Corrupt(fault.corruption(&path, base), next_base));
        }

        let state = if is_last {
            recover_tail(file.as_ref(), &path, base, len, config, &mut report)?
        } else {
            let trusted = match config.verify_on_open {
                VerifyOnOpen::ActiveSegment => {
                    sealed::trust_at_open(storage, dir, base, file.as_ref(), len, max_frame)
                }
                VerifyOnOpen::All => None,
            };
            match trusted {
                Some(st) => st,
                None => {
                    let s = check_sealed(
                        storage,
                        file.as_ref(),
                        &path,
                        base,
                        len,
                        config,
                        &mut |_| ControlFlow::Continue(()),
                    )
                    .map_err(io_at(&path))?
                    .map_err(|c| Fault::Corrupt(c, next_base))?;
                    refresh_index_file(storage, dir, base, &s);
                    SegmentState {
                        end_pos: s.end_pos,
                        next_offset: s.next_offset,
                        index: None,
                        max_timestamp_ms: s.max_timestamp_ms,
                    }
                }
            }
        };
        if let Some(c) = overlaps_next(&path, &state, next_base) {
            return Err(Fault::Corrupt(c, next_base));
        }
        segments.push(Arc::new(Segment::new(base, path, file, state)));
    }

    if segments.is_empty() {
        let base = bases.first().copied().unwrap_or(0);
        segments.push(
            create_segment(storage, dir, config, base, config.first_preallocation())
                .map_err(io_at(dir))?,
        );
    }
    let last = segments.last().unwrap().state.read().unwrap().clone();
    Ok(Recovered {
        next_offset: last.next_offset,
        active_end_pos: last.end_pos,
        segments,
        report,
    })
}

/// The base offsets of the segment files among `names`, in order.
pub(crate) fn segment_bases(names: &[String]) -> Vec<u64> {
    let mut bases: Vec<u64> = names
        .iter()
        .filter_map(|n| parse_segment_file_name(n))
        .collect();
    bases.sort_unstable();
    bases
}

/// A segment header that does not check out.
pub(crate) struct HeaderFault {
    pub problem: String,
    /// Whether any valid record follows it (else, in a last segment, the segment's
    /// creation never completed).
    pub any_record: bool,
}

impl HeaderFault {
    pub fn corruption(&self, path: &Path, base: u64) -> Corruption {
        let detail = format!("damaged segment header: {}", self.problem);
        corruption(path, 0, base, detail)
    }
}

/// Checks the header of the segment file that should start at `base`.
pub(crate) fn header_fault(
    file: &dyn StorageFile,
    base: u64,
    len: u64,
    max_frame: usize,
) -> io::Result<Option<HeaderFault>> {
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    let got = read_full_at(file, &mut header, 0)?;
    let problem = match decode_header(&header[..got]) {
        Ok(b) if b == base => return Ok(None),
        Ok(b) => format!("header says base offset {b}"),
        Err(e) => e.to_string(),
    };
    let any_record = !resync(file, 0, len, base, max_frame)?.is_empty();
    Ok(Some(HeaderFault {
        problem,
        any_record,
    }))
}

/// Whether the segment file at `path` is one whose creation never completed: no valid
/// header and no valid record (only ever the last one, after a crash).
pub(crate) fn is_incomplete(
    storage: &dyn Storage,
    path: &Path,
    base: u64,
    max_frame: usize,
) -> io::Result<bool> {
    let file = storage.open(path)?;
    let len = file.len()?;
    Ok(header_fault(file.as_ref(), base, len, max_frame)?.is_some_and(|f| !f.any_record))
}

/// Scans a sealed segment, CRC-checking every record (`pace` sees each frame's length
/// and may stop the scan: then the outcome is `aborted` and judges nothing):
/// sealed segments were synced whole before their successor existed, so any invalid
/// frame is corruption. So is a segment shorter than its intact index says: the index
/// was written after the sealed length was synced, so the bytes missing held
/// acknowledged records (a cut at a frame boundary would otherwise scan clean and lose
/// them silently).
pub(crate) fn check_sealed(
    storage: &dyn Storage,
    file: &dyn StorageFile,
    path: &Path,
    base: u64,
    len: u64,
    config: &LogConfig,
    pace: &mut dyn FnMut(u64) -> ControlFlow<()>,
) -> io::Result<Result<ScanOutcome, Corruption>> {
    let s = scan_paced(
        file,
        base,
        len,
        config.max_record_bytes,
        config.index_interval_bytes,
        pace,
    )?;
    if s.aborted {
        return Ok(Ok(s));
    }
    if let Some(stop) = &s.stop {
        let detail = format!("invalid record in a sealed segment: {}", stop.error);
        return Ok(Err(corruption(path, stop.pos, s.next_offset, detail)));
    }
    let dir = path.parent().unwrap_or(Path::new(""));
    if let Some(h) = sealed::read_index_header(storage, dir, base)
        && h.segment_len > len
        && h.next_offset > s.next_offset
    {
        let detail = format!(
            "the segment is {len} bytes, but its index says {} bytes with records up to \
             offset {}: its end was cut off",
            h.segment_len,
            h.next_offset - 1
        );
        return Ok(Err(corruption(path, s.end_pos, s.next_offset, detail)));
    }
    Ok(Ok(s))
}

/// Rewrites a sealed segment's index file unless it already says what a clean scan of
/// the segment found; whether it did.
pub(crate) fn refresh_index_file(
    storage: &dyn Storage,
    dir: &Path,
    base: u64,
    s: &ScanOutcome,
) -> bool {
    let wanted = IndexFile {
        base_offset: base,
        next_offset: s.next_offset,
        segment_len: s.end_pos,
        max_timestamp_ms: s.max_timestamp_ms,
        entries: s.index.clone(),
    };
    let stale = sealed::read_index_file(storage, dir, base).as_ref() != Some(&wanted);
    if stale {
        write_index_file(storage, dir, &wanted);
    }
    stale
}

/// Records of a segment that run into the next segment's offsets.
pub(crate) fn overlaps_next(
    path: &Path,
    state: &SegmentState,
    next_base: Option<u64>,
) -> Option<Corruption> {
    let nb = next_base.filter(|&nb| state.next_offset > nb)?;
    let detail = format!(
        "records run to offset {} but the next segment starts at {nb}",
        state.next_offset - 1
    );
    Some(corruption(path, state.end_pos, nb, detail))
}

/// What the scan of a last segment found.
pub(crate) enum Tail {
    /// Every frame valid up to the end of data.
    Clean(ScanOutcome),
    /// An invalid frame at `ScanStop::pos` that no synced batch follows: the unsynced
    /// tail of the last batch, never acknowledged; open cuts it off.
    Torn(ScanOutcome, ScanStop),
    /// Damage in acknowledged data.
    Corrupt(Corruption),
}

/// Scans the last segment and tells a torn tail from corruption (module docs).
pub(crate) fn diagnose_tail(
    file: &dyn StorageFile,
    path: &Path,
    base: u64,
    len: u64,
    config: &LogConfig,
    pace: &mut dyn FnMut(u64) -> ControlFlow<()>,
) -> io::Result<Tail> {
    let max_frame = config.max_record_bytes;
    let s = scan_paced(
        file,
        base,
        len,
        max_frame,
        config.index_interval_bytes,
        pace,
    )?;
    let Some(stop) = s.stop.clone() else {
        return Ok(Tail::Clean(s));
    };
    if config.durability == Durability::Fsync {
        let later = resync(file, stop.pos + 1, len, s.next_offset, max_frame)?;
        if let Some((pos, frame)) = later.iter().find(|(_, f)| f.batch_base() > s.next_offset) {
            let detail = format!(
                "{} (a later synced batch starting at offset {} follows at byte {pos})",
                stop.error,
                frame.batch_base()
            );
            return Ok(Tail::Corrupt(corruption(
                path,
                stop.pos,
                s.next_offset,
                detail,
            )));
        }
    }
    Ok(Tail::Torn(s, stop))
}

/// Scans the last segment and cuts off a torn tail, or reports corruption.
fn recover_tail(
    file: &dyn StorageFile,
    path: &Path,
    base: u64,
    len: u64,
    config: &LogConfig,
    report: &mut RecoveryReport,
) -> Result<SegmentState, Fault> {
    let s = match diagnose_tail(file, path, base, len, config, &mut |_| {
        ControlFlow::Continue(())
    })
    .map_err(io_at(path))?
    {
        Tail::Clean(s) => s,
        Tail::Corrupt(c) => return Err(Fault::Corrupt(c, None)),
        Tail::Torn(s, stop) => {
            // Physically, so no stale frame can be chained into later. No preallocation
            // here: the writer reserves space again (growth rule of
            // `LogConfig::preallocate`) on its first write past the file's end.
            file.set_len(stop.pos).map_err(io_at(path))?;
            file.sync_all().map_err(io_at(path))?;
            tracing::info!(?path, position = stop.pos, reason = %stop.error, "truncated torn tail");
            report.truncated_tail = Some(TruncatedTail {
                segment: path.to_path_buf(),
                position: stop.pos,
                reason: stop.error.to_string(),
            });
            s
        }
    };
    Ok(SegmentState {
        end_pos: s.end_pos,
        next_offset: s.next_offset,
        index: Some(s.index),
        max_timestamp_ms: s.max_timestamp_ms,
    })
}

/// Removes index files without a segment and half-written repair files.
fn remove_leftovers(
    storage: &dyn Storage,
    dir: &Path,
    names: &[String],
    bases: &[u64],
) -> Result<(), Fault> {
    let mut removed = false;
    for name in names {
        let orphan_index =
            parse_index_file_name(name).is_some_and(|b| bases.binary_search(&b).is_err());
        if orphan_index || name.ends_with(REPAIR_SUFFIX) {
            let p = dir.join(name);
            storage.remove_file(&p).map_err(io_at(&p))?;
            removed = true;
        }
    }
    if removed {
        storage.sync_dir(dir).map_err(io_at(dir))?;
    }
    Ok(())
}

pub(crate) fn corruption(path: &Path, position: u64, offset: u64, detail: String) -> Corruption {
    Corruption {
        segment: path.to_path_buf(),
        position,
        offset,
        detail,
    }
}

/// Rewrites a damaged segment with every record that still verifies, moves the original
/// to `quarantine/`, and works out exactly which offsets are gone.
fn quarantine(
    storage: &dyn Storage,
    dir: &Path,
    config: &LogConfig,
    c: Corruption,
    next_base: Option<u64>,
) -> Result<QuarantinedSegment, OpenError> {
    let path = c.segment.clone();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let base = parse_segment_file_name(&name)
        .ok_or_else(|| OpenError::Config(format!("unexpected segment name {name}")))?;
    let file = storage.open(&path).map_err(io_at(&path))?;
    let len = file.len().map_err(io_at(&path))?;
    let mut kept =
        resync(file.as_ref(), 0, len, base, config.max_record_bytes).map_err(io_at(&path))?;
    if let Some(nb) = next_base {
        kept.retain(|(_, f)| f.record.offset < nb);
    }

    let tmp = dir.join(format!("{name}{REPAIR_SUFFIX}"));
    let mut bytes = encode_header(base).to_vec();
    for (_, f) in &kept {
        let r = &f.record;
        let rec = NewRecord {
            timestamp_ms: r.timestamp_ms,
            key: r.key.clone(),
            headers: r.headers.clone(),
            payload: r.payload.clone(),
        };
        record::encode_into(&mut bytes, &rec, r.offset, 0);
    }
    let out = storage.create_new(&tmp).map_err(io_at(&tmp))?;
    out.write_all_at(&bytes, 0).map_err(io_at(&tmp))?;
    out.sync_all().map_err(io_at(&tmp))?;

    let qdir = dir.join(QUARANTINE_DIR);
    storage.create_dir_all(&qdir).map_err(io_at(&qdir))?;
    let moved_to = qdir.join(format!("{}.{}", segment_file_name(base), record::now_ms()));
    storage.rename(&path, &moved_to).map_err(io_at(&path))?;
    storage.sync_dir(&qdir).map_err(io_at(&qdir))?;
    storage.rename(&tmp, &path).map_err(io_at(&tmp))?;
    storage.sync_dir(dir).map_err(io_at(dir))?;
    let ix = index_path(dir, base);
    match storage.remove_file(&ix) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_at(&ix)(e)),
    }

    let present: BTreeSet<u64> = kept.iter().map(|(_, f)| f.record.offset).collect();
    let upper = next_base.unwrap_or_else(|| present.last().map_or(base, |o| o + 1));
    let lost_offsets = missing_ranges(base, upper, &present);
    tracing::error!(
        ?path,
        ?moved_to,
        ?lost_offsets,
        "quarantined a corrupt segment"
    );
    Ok(QuarantinedSegment {
        segment: path,
        moved_to,
        corruption: c,
        kept_records: kept.len() as u64,
        lost_offsets,
    })
}

/// The offsets in `[from, to)` not in `present`, as inclusive ranges.
fn missing_ranges(from: u64, to: u64, present: &BTreeSet<u64>) -> Vec<RangeInclusive<u64>> {
    let mut out = Vec::new();
    let mut next = from;
    for &o in present.range(from..to) {
        if o > next {
            out.push(next..=o - 1);
        }
        next = o + 1;
    }
    if next < to {
        out.push(next..=to - 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ranges_are_exact() {
        let present: BTreeSet<u64> = [10, 11, 14, 17].into_iter().collect();
        assert_eq!(
            missing_ranges(10, 20, &present),
            vec![12..=13, 15..=16, 18..=19]
        );
        assert_eq!(missing_ranges(10, 18, &present), vec![12..=13, 15..=16]);
        assert_eq!(missing_ranges(5, 5, &present), vec![]);
    }
}
