//! The public [`Log`]: appends go to the group-commit writer, reads go straight to the
//! segment files, bounded by the durable high-water mark.

use std::future::Future;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::config::LogConfig;
use crate::error::{AppendError, Corruption, OpenError, ReadError, RetentionError};
use crate::index::{self, IndexEntry};
use crate::index_cache::IndexCache;
use crate::record::{DecodeError, NewRecord, Record};
use crate::recovery::{self, RecoveryReport, RepairReport};
use crate::sealed;
use crate::segment::{FrameCursor, SEGMENT_HEADER_LEN, index_path};
use crate::storage::{FileStorage, Storage, StorageFile};
use crate::writer::{self, Pending, Queue};

/// One segment file and what is known about its records.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: u64,
    pub path: PathBuf,
    pub file: Arc<dyn StorageFile>,
    pub state: RwLock<SegmentState>,
    /// The first damage a read or a scrub found in this segment: reported by
    /// [`Log::corrupt_segments`] until the log is reopened (and repaired).
    pub corrupt: OnceLock<Corruption>,
}

impl Segment {
    pub fn new(
        base_offset: u64,
        path: PathBuf,
        file: Arc<dyn StorageFile>,
        state: SegmentState,
    ) -> Self {
        Self {
            base_offset,
            path,
            file,
            state: RwLock::new(state),
            corrupt: OnceLock::new(),
        }
    }

    /// Remembers the first corruption found in this segment.
    pub fn mark_corrupt(&self, c: &Corruption) {
        if self.corrupt.set(c.clone()).is_ok() {
            tracing::error!(segment = ?self.path, offset = c.offset, position = c.position, detail = %c.detail, "corrupt segment");
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentState {
    /// Position just past the last durable record.
    pub end_pos: u64,
    /// One past the last record's offset (`base_offset` when empty).
    pub next_offset: u64,
    /// The active segment's sparse index. `None` for a sealed segment, whose index is in
    /// its file and read through [`Inner::index_cache`]: memory stays independent of
    /// the retained bytes.
    pub index: Option<Vec<IndexEntry>>,
    pub max_timestamp_ms: Option<i64>,
}

/// Counters for benchmarks and metrics.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub syncs: AtomicU64,
    pub sync_nanos: AtomicU64,
    pub writes: AtomicU64,
}

/// A snapshot of the log's counters since it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStats {
    pub records_appended: u64,
    pub bytes_appended: u64,
    /// Write calls the group-commit writer issued (one per batch, two at a roll).
    pub writes: u64,
    /// fdatasync calls that completed (zero with `Durability::None`).
    pub syncs: u64,
    /// Total time spent inside fdatasync.
    pub sync_time: Duration,
}

pub(crate) struct Inner {
    pub storage: Arc<dyn Storage>,
    pub dir: PathBuf,
    pub config: LogConfig,
    pub segments: RwLock<Vec<Arc<Segment>>>,
    /// One past the last record readers may see: every record below it is fsynced.
    pub durable_next: AtomicU64,
    pub durable_watch: watch::Sender<u64>,
    pub queue: Mutex<Queue>,
    pub queue_cv: Condvar,
    /// Set once a write or sync failed; the log then refuses all appends.
    pub failure: OnceLock<Arc<std::io::Error>>,
    pub counters: Counters,
    pub index_cache: IndexCache,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("durable_next", &self.durable_next.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A durable, segmented, append-only log.
///
/// Appends from any number of threads or tasks are coalesced by one writer thread into
/// one write and one fdatasync per batch; each append is answered only after the sync
/// covering it returned. Readers see only records below the durable high-water mark.
#[derive(Debug)]
pub struct Log {
    inner: Arc<Inner>,
    writer: Mutex<Option<JoinHandle<()>>>,
    recovery: RecoveryReport,
}

impl Log {
    /// Opens (or creates) the log in `dir` on the real file system.
    pub fn open_dir(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log, OpenError> {
        Self::open(Arc::new(FileStorage), dir, config)
    }

    /// Opens (or creates) the log in `dir`, recovering from a crash: a torn tail after
    /// the last valid record is truncated; damage inside acknowledged data fails with
    /// [`OpenError::Corrupt`].
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        config: LogConfig,
    ) -> Result<Log, OpenError> {
        let (log, _) = Self::open_inner(storage, dir.as_ref(), config, false)?;
        Ok(log)
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// What opening this log found and did (truncated tail, removed or quarantined files).
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Opens like [`Log::open`], but instead of failing on corruption, moves each
    /// damaged segment to `quarantine/`, keeps every record that still verifies, and
    /// reports exactly which offsets were lost.
    pub fn open_with_repair(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        config: LogConfig,
    ) -> Result<(Log, RepairReport), OpenError> {
        Self::open_inner(storage, dir.as_ref(), config, true)
    }

    fn open_inner(
        storage: Arc<dyn Storage>,
        dir: &Path,
        config: LogConfig,
        repair: bool,
    ) -> Result<(Log, RepairReport), OpenError> {
        config.validate().map_err(OpenError::Config)?;
        let recovered = recovery::recover(storage.as_ref(), dir, &config, repair)?;
        let next = recovered.next_offset;
        let (durable_watch, _) = watch::channel(next);
        let inner = Arc::new(Inner {
            storage,
            dir: dir.to_path_buf(),
            config,
            segments: RwLock::new(recovered.segments),
            durable_next: AtomicU64::new(next),
            durable_watch,
            queue: Mutex::new(Queue::default()),
            queue_cv: Condvar::new(),
            failure: OnceLock::new(),
            counters: Counters::default(),
            index_cache: IndexCache::default(),
        });
        let handle = writer::spawn(inner.clone(), recovered.active_end_pos)
            .map_err(crate::error::io_at(dir))?;
        let report = recovered.report;
        Ok((
            Log {
                inner,
                writer: Mutex::new(Some(handle)),
                recovery: report.clone(),
            },
            report,
        ))
    }

    /// Queues records for the next group commit. The ticket resolves to their offsets
    /// once they are durable; `.wait()` it from a thread or `.await` it from a task.
    pub fn submit(&self, records: Vec<NewRecord>) -> Result<AppendTicket, AppendError> {
        if records.is_empty() {
            return Err(AppendError::EmptyBatch);
        }
        let max = self.inner.config.max_record_bytes;
        let mut bytes = 0;
        for r in &records {
            let size = r.encoded_len()?;
            if size > max {
                return Err(AppendError::TooLarge { size, max });
            }
            bytes += size;
        }
        if let Some(e) = self.inner.failure.get() {
            return Err(AppendError::Failed(e.clone()));
        }
        let (done, rx) = oneshot::channel();
        {
            let mut q = self.inner.queue.lock().unwrap();
            if q.closed {
                return Err(AppendError::Closed);
            }
            q.items.push(Pending {
                records,
                bytes,
                done,
            });
        }
        self.inner.queue_cv.notify_one();
        Ok(AppendTicket { rx })
    }

    /// Appends one record and blocks until it is durable; returns its offset.
    /// (From async code use [`Log::append_async`].)
    pub fn append(&self, record: NewRecord) -> Result<u64, AppendError> {
        Ok(self.submit(vec![record])?.wait()?.start)
    }

    /// Appends one record; resolves to its offset once it is durable.
    pub async fn append_async(&self, record: NewRecord) -> Result<u64, AppendError> {
        Ok(self.submit(vec![record])?.await?.start)
    }

    /// Appends records as one unit of the group commit (consecutive offsets).
    pub fn append_batch(&self, records: Vec<NewRecord>) -> Result<Range<u64>, AppendError> {
        self.submit(records)?.wait()
    }

    /// The first offset still stored (retention deletes whole segments below it).
    pub fn start_offset(&self) -> u64 {
        self.inner.segments.read().unwrap()[0].base_offset
    }

    /// One past the last durable offset: the next record a reader will see gets this.
    pub fn durable_end(&self) -> u64 {
        self.inner.durable_next.load(Ordering::Acquire)
    }

    /// Watches the durable end, for readers that wait for new records.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.durable_watch.subscribe()
    }

    /// The write or sync error that stopped this log, if one did.
    pub fn failure(&self) -> Option<Arc<std::io::Error>> {
        self.inner.failure.get().cloned()
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn stats(&self) -> LogStats {
        let c = &self.inner.counters;
        LogStats {
            records_appended: c.records.load(Ordering::Relaxed),
            bytes_appended: c.bytes.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            syncs: c.syncs.load(Ordering::Relaxed),
            sync_time: Duration::from_nanos(c.sync_nanos.load(Ordering::Relaxed)),
        }
    }

    /// Bytes of segment data on disk (headers and frames, not preallocated space).
    pub fn size_bytes(&self) -> u64 {
        let segs = self.inner.segments.read().unwrap();
        segs.iter().map(|s| s.state.read().unwrap().end_pos).sum()
    }

    /// The number of segment files.
    pub fn segment_count(&self) -> usize {
        self.inner.segments.read().unwrap().len()
    }

    /// Reads the record at `offset`, if it is durable (and not lost to a repair).
    pub fn read(&self, offset: u64) -> Result<Option<Record>, ReadError> {
        let mut out = self.read_from(offset, 1, usize::MAX)?;
        Ok(out.pop().filter(|r| r.offset == offset))
    }

    /// Reads durable records from `offset` on: at most `max_records`, and stopping once
    /// `max_bytes` of payload are collected (at least one record is always returned when
    /// one is there). Every record's CRC is verified: a read stops before a damaged
    /// record, and fails with [`ReadError::Corrupt`] when that is the first it would
    /// return.
    pub fn read_from(
        &self,
        offset: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, ReadError> {
        let durable = self.durable_end();
        let mut out = Vec::new();
        if offset >= durable || max_records == 0 {
            return Ok(out);
        }
        let segments: Vec<Arc<Segment>> = {
            let segs = self.inner.segments.read().unwrap();
            let start = segs[0].base_offset;
            if offset < start {
                return Err(ReadError::BelowStart {
                    requested: offset,
                    start,
                });
            }
            let first = segs.partition_point(|s| s.base_offset <= offset) - 1;
            segs[first..].to_vec()
        };
        let mut bytes = 0usize;
        for seg in segments {
            let mut cursor = self.cursor_for(&seg, offset)?;
            // The offset a damaged frame should have held: the one after the last valid.
            let mut expected = seg.base_offset;
            loop {
                let frame = match cursor.peek() {
                    Ok(None) => break,
                    Ok(Some(Ok(frame))) => frame,
                    Ok(Some(Err(error))) => {
                        let c = read_corruption(&seg, cursor.pos, expected, error);
                        seg.mark_corrupt(&c);
                        // The records before the damage verified: serve them, and let
                        // the next read, which starts at the damage, fail.
                        if !out.is_empty() {
                            return Ok(out);
                        }
                        return Err(ReadError::Corrupt(Box::new(c)));
                    }
                    Err(source) => {
                        return Err(ReadError::Io {
                            path: seg.path.clone(),
                            source,
                        });
                    }
                };
                if frame.record.offset >= durable {
                    return Ok(out);
                }
                cursor.advance(frame.frame_len);
                expected = frame.record.offset + 1;
                if frame.record.offset < offset {
                    continue;
                }
                bytes += frame.record.payload.len();
                out.push(frame.record);
                if out.len() >= max_records || bytes >= max_bytes {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// A cursor over `seg`'s durable frames, placed at the index entry at or below
    /// `offset` once that entry is seen to hold the record it names (CRC-valid, that
    /// offset), else at the segment's first frame. An index that decodes but points at
    /// the wrong record is never trusted to skip: a sealed segment's is then rebuilt by
    /// a scan; the active segment's (the writer's own) is bypassed for this read.
    fn cursor_for<'a>(&self, seg: &'a Segment, offset: u64) -> Result<FrameCursor<'a>, ReadError> {
        // Under the lock only what the read needs: the active segment's index grows with
        // it (an entry per 4 KiB), and copying it cost a fetch more than its records.
        let (entry, end_pos, next_offset) = {
            let st = seg.state.read().unwrap();
            let entry = st.index.as_ref().map(|ix| index::lookup(ix, offset));
            (entry, st.end_pos, st.next_offset)
        };
        let max_frame = self.inner.config.max_record_bytes;
        let at = |pos: u64| FrameCursor::new(seg.file.as_ref(), pos, end_pos, max_frame);
        let checked = |entry: Option<IndexEntry>| {
            let entry = entry?;
            let mut cursor = at(u64::from(entry.position));
            entry_holds(&mut cursor, entry).then_some(cursor)
        };
        let sealed = entry.is_none();
        let entry = match entry {
            Some(entry) => entry,
            // A read that began in an earlier segment reads this one from its start.
            None if offset <= seg.base_offset => None,
            None => index::lookup(&self.sealed_index(seg, end_pos, next_offset)?, offset),
        };
        if entry.is_none() {
            return Ok(at(SEGMENT_HEADER_LEN as u64));
        }
        if let Some(cursor) = checked(entry) {
            return Ok(cursor);
        }
        tracing::warn!(segment = ?seg.path, ?entry, "index entry does not hold the record it names; not trusted");
        if sealed {
            self.inner.index_cache.remove(seg.base_offset);
            let rebuilt = self.rebuild_sealed_index(seg, end_pos, next_offset)?;
            if let Some(cursor) = checked(index::lookup(&rebuilt, offset)) {
                return Ok(cursor);
            }
        }
        Ok(at(SEGMENT_HEADER_LEN as u64))
    }

    /// A sealed segment's sparse index: cached, else from its file (checked by
    /// `sealed::load_entries`), else rebuilt by scanning the segment.
    fn sealed_index(
        &self,
        seg: &Segment,
        end_pos: u64,
        next_offset: u64,
    ) -> Result<Arc<[IndexEntry]>, ReadError> {
        if let Some(entries) = self.inner.index_cache.get(seg.base_offset) {
            return Ok(entries);
        }
        let storage = self.inner.storage.as_ref();
        match sealed::load_entries(
            storage,
            &self.inner.dir,
            seg.base_offset,
            end_pos,
            next_offset,
        ) {
            Some(entries) => {
                let entries: Arc<[IndexEntry]> = entries.into();
                self.inner
                    .index_cache
                    .insert(seg.base_offset, entries.clone());
                Ok(entries)
            }
            None => self.rebuild_sealed_index(seg, end_pos, next_offset),
        }
    }

    /// Scans a sealed segment (every record CRC-checked) for its index, caches it, and
    /// rewrites the index file when the scan was clean. A scan stopped by damage still
    /// yields the entries before it, all of valid records; the damage itself is
    /// reported by the read that reaches it.
    fn rebuild_sealed_index(
        &self,
        seg: &Segment,
        end_pos: u64,
        next_offset: u64,
    ) -> Result<Arc<[IndexEntry]>, ReadError> {
        let config = &self.inner.config;
        let s = crate::segment::scan(
            seg.file.as_ref(),
            seg.base_offset,
            end_pos,
            config.max_record_bytes,
            config.index_interval_bytes,
        )
        .map_err(|source| ReadError::Io {
            path: seg.path.clone(),
            source,
        })?;
        if s.stop.is_none() && s.end_pos == end_pos && s.next_offset == next_offset {
            recovery::refresh_index_file(
                self.inner.storage.as_ref(),
                &self.inner.dir,
                seg.base_offset,
                &s,
            );
        }
        let entries: Arc<[IndexEntry]> = s.index.into();
        self.inner
            .index_cache
            .insert(seg.base_offset, entries.clone());
        Ok(entries)
    }

    /// Deletes whole sealed segments, oldest first, while all of these hold: every
    /// record in the segment is below `floor` (the caller's lowest unsettled offset), and
    /// the policy asks for it (older than `max_age`, or the log is over `max_bytes`).
    /// The active segment is never deleted. Returns the new start offset.
    pub fn apply_retention(
        &self,
        floor: u64,
        policy: &RetentionPolicy,
    ) -> Result<RetentionOutcome, RetentionError> {
        let now_ms = crate::record::now_ms();
        let mut outcome = RetentionOutcome::default();
        loop {
            let victim = {
                let segs = self.inner.segments.read().unwrap();
                if segs.len() < 2 {
                    None
                } else {
                    let total: u64 = segs.iter().map(|s| s.state.read().unwrap().end_pos).sum();
                    let oldest = &segs[0];
                    let st = oldest.state.read().unwrap();
                    let below_floor = st.next_offset <= floor;
                    let too_old = policy.max_age.is_some_and(|age| {
                        st.max_timestamp_ms
                            .is_none_or(|t| t.saturating_add(age.as_millis() as i64) < now_ms)
                    });
                    let too_big = policy.max_bytes.is_some_and(|max| total > max);
                    (below_floor && (too_old || too_big)).then(|| oldest.clone())
                }
            };
            let Some(victim) = victim else { break };
            {
                let mut segs = self.inner.segments.write().unwrap();
                if !Arc::ptr_eq(&segs[0], &victim) {
                    continue;
                }
                segs.remove(0);
            }
            self.inner.index_cache.remove(victim.base_offset);
            let storage = &self.inner.storage;
            let io = |path: &Path| {
                let path = path.to_path_buf();
                move |source| RetentionError::Io { path, source }
            };
            storage
                .remove_file(&victim.path)
                .map_err(io(&victim.path))?;
            let idx = index_path(&self.inner.dir, victim.base_offset);
            if let Err(e) = storage.remove_file(&idx)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(io(&idx)(e));
            }
            storage
                .sync_dir(&self.inner.dir)
                .map_err(io(&self.inner.dir))?;
            outcome.deleted_segments += 1;
            outcome.deleted_records +=
                victim.state.read().unwrap().next_offset - victim.base_offset;
        }
        outcome.start_offset = self.start_offset();
        Ok(outcome)
    }

    /// Stops accepting appends, answers every queued append, and joins the writer.
    pub fn close(&self) {
        self.inner.queue.lock().unwrap().closed = true;
        self.inner.queue_cv.notify_all();
        if let Some(handle) = self.writer.lock().unwrap().take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.close();
    }
}

fn read_corruption(seg: &Segment, pos: u64, offset: u64, error: DecodeError) -> Corruption {
    Corruption {
        segment: seg.path.clone(),
        position: pos,
        offset,
        detail: format!("record failed verification on read: {error}"),
    }
}

/// Whether the frame under `cursor` is valid and has the offset `entry` names.
fn entry_holds(cursor: &mut FrameCursor<'_>, entry: IndexEntry) -> bool {
    matches!(cursor.peek(), Ok(Some(Ok(f))) if f.record.offset == entry.offset)
}

/// What retention may delete (besides the floor, which the caller passes per call).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Delete a segment whose newest record is older than this.
    pub max_age: Option<Duration>,
    /// Delete oldest segments while the log is larger than this.
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub deleted_segments: usize,
    /// Offsets covered by the deleted segments.
    pub deleted_records: u64,
    pub start_offset: u64,
}

/// The answer to a submitted append: the offsets, once durable.
#[derive(Debug)]
pub struct AppendTicket {
    rx: oneshot::Receiver<Result<Range<u64>, AppendError>>,
}

impl AppendTicket {
    /// Blocks the thread until the records are durable (not for use inside async code).
    pub fn wait(self) -> Result<Range<u64>, AppendError> {
        self.rx.blocking_recv().unwrap_or(Err(AppendError::Closed))
    }
}

impl Future for AppendTicket {
    type Output = Result<Range<u64>, AppendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(AppendError::Closed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VerifyOnOpen;
    use crate::index_cache::INDEX_CACHE_SLOTS;

    /// Memory independent of the retained bytes: only the active segment's index is in
    /// memory, after open (either verification) and after appends roll segments, and
    /// reading every sealed segment leaves at most the cache's few slots.
    #[test]
    fn sealed_segments_keep_no_index_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let config = |verify_on_open| LogConfig {
            segment_bytes: 8 * 1024,
            max_record_bytes: 2 * 1024,
            index_interval_bytes: 256,
            preallocate: false,
            verify_on_open,
            ..LogConfig::default()
        };
        let in_memory = |log: &Log| -> Vec<bool> {
            let segs = log.inner.segments.read().unwrap();
            segs.iter()
                .map(|s| s.state.read().unwrap().index.is_some())
                .collect()
        };
        let only_active = |v: Vec<bool>| {
            assert!(v.len() > INDEX_CACHE_SLOTS + 1, "{} segments", v.len());
            assert_eq!(v.iter().filter(|&&b| b).count(), 1, "{v:?}");
            assert!(v.last().unwrap());
        };
        let log = Log::open_dir(dir.path(), config(VerifyOnOpen::All)).unwrap();
        for i in 0..600u32 {
            log.append(NewRecord::new(vec![i as u8; 60])).unwrap();
        }
        only_active(in_memory(&log));
        drop(log);
        for verify in [VerifyOnOpen::All, VerifyOnOpen::ActiveSegment] {
            let log = Log::open_dir(dir.path(), config(verify)).unwrap();
            only_active(in_memory(&log));
            assert!(log.inner.index_cache.get(0).is_none());
            for o in (0..600).step_by(7) {
                assert_eq!(log.read(o).unwrap().unwrap().offset, o);
            }
            let cached = log
                .sealed_segments()
                .iter()
                .filter(|&&b| log.inner.index_cache.get(b).is_some())
                .count();
            assert_eq!(cached, INDEX_CACHE_SLOTS);
            only_active(in_memory(&log));
        }
    }
}
