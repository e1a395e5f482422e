//! Checking every record of a segment: online, one sealed segment at a time under a
//! running log (what the broker's scrub calls), and offline, every segment of a log
//! directory without changing anything (`surety verify`). Both judge by the rules of
//! recovery (`recovery.rs`): any invalid frame in a sealed segment is corruption; in the
//! last segment only one that a later synced batch follows (else it is the torn,
//! never-acknowledged tail that opening the log cuts off).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::LogConfig;
use crate::error::{Corruption, ReadError, VerifyError};
use crate::log::{Log, Segment, SegmentState};
use crate::recovery::{
    Tail, check_sealed, corruption, diagnose_tail, header_fault, is_incomplete, overlaps_next,
    refresh_index_file, segment_bases,
};
use crate::segment::segment_path;
use crate::storage::Storage;

/// What checking one sealed segment of an open log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentCheck {
    pub base_offset: u64,
    pub path: PathBuf,
    /// Bytes of the segment read (its length).
    pub bytes: u64,
    /// Records that verified (all of them when `corruption` is `None`).
    pub records: u64,
    pub corruption: Option<Corruption>,
}

impl Log {
    /// The base offsets of the sealed segments now (every segment but the active one),
    /// oldest first.
    pub fn sealed_segments(&self) -> Vec<u64> {
        let segs = self.inner().segments.read().unwrap();
        segs[..segs.len() - 1]
            .iter()
            .map(|s| s.base_offset)
            .collect()
    }

    /// CRC-checks every record of the sealed segment based at `base` (calling `pace`
    /// with each frame's length, so a caller can throttle, or stop the check), and
    /// rewrites its index file if that disagrees with the records. Damage found is
    /// remembered ([`Log::corrupt_segments`]) and returned in the check, not as an
    /// error. `None` when no sealed segment starts there (any more: retention may have
    /// deleted it) or `pace` stopped the check.
    pub fn verify_sealed(
        &self,
        base: u64,
        pace: &mut dyn FnMut(u64) -> ControlFlow<()>,
    ) -> Result<Option<SegmentCheck>, ReadError> {
        let seg: Arc<Segment> = {
            let segs = self.inner().segments.read().unwrap();
            let sealed = &segs[..segs.len() - 1];
            match sealed.iter().find(|s| s.base_offset == base) {
                Some(s) => s.clone(),
                None => return Ok(None),
            }
        };
        let (end_pos, next_offset) = {
            let st = seg.state.read().unwrap();
            (st.end_pos, st.next_offset)
        };
        let inner = self.inner();
        let io = |source| ReadError::Io {
            path: seg.path.clone(),
            source,
        };
        let max_frame = inner.config.max_record_bytes;
        let file = seg.file.as_ref();
        let (records, found) = match header_fault(file, base, end_pos, max_frame).map_err(io)? {
            Some(fault) => (0, Some(fault.corruption(&seg.path, base))),
            None => match check_sealed(
                inner.storage.as_ref(),
                file,
                &seg.path,
                base,
                end_pos,
                &inner.config,
                pace,
            )
            .map_err(io)?
            {
                Err(c) => (0, Some(c)),
                Ok(s) if s.aborted => return Ok(None),
                Ok(s) if s.next_offset != next_offset => {
                    let detail = format!(
                        "records end below offset {} but the log expects {next_offset}",
                        s.next_offset
                    );
                    (
                        s.record_count,
                        Some(corruption(&seg.path, s.end_pos, s.next_offset, detail)),
                    )
                }
                Ok(s) => {
                    if refresh_index_file(inner.storage.as_ref(), &inner.dir, base, &s) {
                        // Cached from the stale file, maybe.
                        inner.index_cache.remove(base);
                    }
                    (s.record_count, None)
                }
            },
        };
        if let Some(c) = &found {
            seg.mark_corrupt(c);
        }
        Ok(Some(SegmentCheck {
            base_offset: base,
            path: seg.path.clone(),
            bytes: end_pos,
            records,
            corruption: found,
        }))
    }

    /// The segments a read or [`Log::verify_sealed`] found damaged since the log was
    /// opened, oldest first, each with the first damage found in it.
    pub fn corrupt_segments(&self) -> Vec<Corruption> {
        let segs = self.inner().segments.read().unwrap();
        segs.iter()
            .filter_map(|s| s.corrupt.get().cloned())
            .collect()
    }
}

/// What [`verify_dir`] found in one segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    pub path: PathBuf,
    pub base_offset: u64,
    /// The file's length.
    pub bytes: u64,
    /// Records that verified before the first finding (all of them when there is none).
    pub records: u64,
    pub finding: Option<Finding>,
}

/// Something [`verify_dir`] found that opening the log would act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Acknowledged data is damaged: opening fails (or, with repair, quarantines it).
    Corrupt(Corruption),
    /// The last segment ends in the unsynced, never-acknowledged tail of a write that a
    /// crash cut off; opening truncates it at `position`. Not damage.
    TornTail { position: u64, reason: String },
    /// A last segment whose creation never completed (no valid header, no records);
    /// opening removes it. Not damage.
    Incomplete,
}

/// What [`verify_dir`] found in one log directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogCheck {
    pub segments: Vec<SegmentReport>,
}

impl LogCheck {
    /// Every corruption found, in segment order.
    pub fn corruptions(&self) -> impl Iterator<Item = &Corruption> {
        self.segments.iter().filter_map(|s| match &s.finding {
            Some(Finding::Corrupt(c)) => Some(c),
            _ => None,
        })
    }

    pub fn records(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }
}

/// The total length of the segment files in `dir` (what [`verify_dir`] reads), for a
/// progress bar.
pub fn segment_bytes_in(storage: &dyn Storage, dir: &Path) -> Result<u64, VerifyError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VerifyError::Io { path, source }
    };
    let names = storage.list_files(dir).map_err(io(dir))?;
    let mut total = 0;
    for base in segment_bases(&names) {
        let path = segment_path(dir, base);
        total += storage
            .open(&path)
            .and_then(|f| f.len())
            .map_err(io(&path))?;
    }
    Ok(total)
}

/// Checks every record of every segment of the log in `dir` as an open with
/// `VerifyOnOpen::All` would, changing nothing (no truncation, no index rewrite), so it
/// is safe on a copy or an evidence image. `progress` is called with bytes read as they
/// go past, adding up to the segments' total length. Run it only on a log no process has
/// open: a writer appending meanwhile can look like a torn tail.
pub fn verify_dir(
    storage: &dyn Storage,
    dir: &Path,
    config: &LogConfig,
    progress: &mut dyn FnMut(u64),
) -> Result<LogCheck, VerifyError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VerifyError::Io { path, source }
    };
    let names = storage.list_files(dir).map_err(io(dir))?;
    let mut bases = segment_bases(&names);
    let max_frame = config.max_record_bytes;
    let mut check = LogCheck::default();
    // A last segment whose creation never completed is not the last one recovery
    // applies tail rules to: the one before it is.
    let mut incomplete = None;
    if let Some(&base) = bases.last() {
        let path = segment_path(dir, base);
        if is_incomplete(storage, &path, base, max_frame).map_err(io(&path))? {
            let bytes = storage
                .open(&path)
                .and_then(|f| f.len())
                .map_err(io(&path))?;
            bases.pop();
            incomplete = Some(SegmentReport {
                path,
                base_offset: base,
                bytes,
                records: 0,
                finding: Some(Finding::Incomplete),
            });
        }
    }
    for (i, &base) in bases.iter().enumerate() {
        let is_last = i + 1 == bases.len();
        let next_base = bases.get(i + 1).copied();
        let path = segment_path(dir, base);
        let file = storage.open(&path).map_err(io(&path))?;
        let len = file.len().map_err(io(&path))?;
        let mut read = 0u64;
        let mut pace = |n: u64| {
            read += n;
            progress(n);
            ControlFlow::Continue(())
        };
        let mut report = SegmentReport {
            path: path.clone(),
            base_offset: base,
            bytes: len,
            records: 0,
            finding: None,
        };
        let scanned = match header_fault(file.as_ref(), base, len, max_frame).map_err(io(&path))? {
            Some(fault) => Err(fault.corruption(&path, base)),
            None if is_last => {
                match diagnose_tail(file.as_ref(), &path, base, len, config, &mut pace)
                    .map_err(io(&path))?
                {
                    Tail::Clean(s) => Ok(s),
                    Tail::Torn(s, stop) => {
                        report.finding = Some(Finding::TornTail {
                            position: stop.pos,
                            reason: stop.error.to_string(),
                        });
                        Ok(s)
                    }
                    Tail::Corrupt(c) => Err(c),
                }
            }
            None => check_sealed(storage, file.as_ref(), &path, base, len, config, &mut pace)
                .map_err(io(&path))?,
        };
        match scanned {
            Ok(s) => {
                report.records = s.record_count;
                let state = SegmentState {
                    end_pos: s.end_pos,
                    next_offset: s.next_offset,
                    index: None,
                    max_timestamp_ms: s.max_timestamp_ms,
                };
                if let Some(c) = overlaps_next(&path, &state, next_base) {
                    report.finding = Some(Finding::Corrupt(c));
                }
            }
            Err(c) => report.finding = Some(Finding::Corrupt(c)),
        }
        progress(len.saturating_sub(read));
        check.segments.push(report);
    }
    if let Some(r) = incomplete {
        progress(r.bytes);
        check.segments.push(r);
    }
    Ok(check)
}
