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
use crate::record::{DecodeError, NewRecord, Record};
use crate::recovery::{self, RecoveryReport, RepairReport};
use crate::segment::{FrameCursor, index_path};
use crate::storage::{FileStorage, Storage, StorageFile};
use crate::writer::{self, Pending, Queue};

/// One segment file and what is known about its records.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: u64,
    pub path: PathBuf,
    pub file: Arc<dyn StorageFile>,
    pub state: RwLock<SegmentState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentState {
    /// Position just past the last durable record.
    pub end_pos: u64,
    /// One past the last record's offset (`base_offset` when empty).
    pub next_offset: u64,
    pub index: Vec<IndexEntry>,
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
    /// one is there). Every record's CRC is verified.
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
        let max_frame = self.inner.config.max_record_bytes;
        let mut bytes = 0usize;
        for seg in segments {
            // Under the lock only what the read needs: the segment's index grows with it
            // (an entry per 4 KiB), and copying it cost a fetch more than its records.
            let (start_pos, end_pos) = {
                let state = seg.state.read().unwrap();
                let start = index::lookup(&state.index, offset)
                    .map_or(crate::segment::SEGMENT_HEADER_LEN as u64, |e| {
                        u64::from(e.position)
                    });
                (start, state.end_pos)
            };
            let mut cursor = FrameCursor::new(seg.file.as_ref(), start_pos, end_pos, max_frame);
            loop {
                let frame = match cursor.peek() {
                    Ok(None) => break,
                    Ok(Some(Ok(frame))) => frame,
                    Ok(Some(Err(error))) => {
                        return Err(read_corruption(&seg, cursor.pos, offset, error));
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

fn read_corruption(seg: &Segment, pos: u64, wanted: u64, error: DecodeError) -> ReadError {
    ReadError::Corrupt(Box::new(Corruption {
        segment: seg.path.clone(),
        position: pos,
        offset: wanted,
        detail: format!("record failed verification on read: {error}"),
    }))
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
