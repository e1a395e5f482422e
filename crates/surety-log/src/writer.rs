//! The group-commit writer: one thread owns the tail of the log. It takes every append
//! queued since its last sync, encodes them into one buffer, issues one write and one
//! fdatasync, and only then answers the appenders. While it syncs, new appends queue up,
//! so batches grow with load and an idle log answers after a single sync (no timer).
//!
//! A batch's records carry `batch_delta` (distance to the batch's first offset); a batch
//! is written only after the previous one's sync returned. Recovery relies on that order
//! to tell a torn tail from corruption (see `recovery.rs`).

use std::io;
use std::mem;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::config::Durability;
use crate::error::AppendError;
use crate::index::{IndexEntry, IndexFile};
use crate::log::{Inner, Segment, SegmentState};
use crate::record::{NewRecord, encode_into};
use crate::segment::{SEGMENT_HEADER_LEN, encode_header, index_path, segment_path};

/// Appends waiting for the writer.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    pub items: Vec<Pending>,
    pub closed: bool,
}

#[derive(Debug)]
pub(crate) struct Pending {
    pub records: Vec<NewRecord>,
    /// Encoded size of `records`, checked at submit time.
    pub bytes: usize,
    pub done: oneshot::Sender<Result<Range<u64>, AppendError>>,
}

/// Where the next write goes.
struct Tail {
    segment: Arc<Segment>,
    /// Position just past the last written frame.
    pos: u64,
    next_offset: u64,
    last_index_pos: Option<u64>,
    /// End of the blocks reserved for the segment (`LogConfig::preallocate`): the file's
    /// length when the writer took it over, then what the writer reserved.
    reserved: u64,
}

pub(crate) fn spawn(inner: Arc<Inner>, active_end_pos: u64) -> io::Result<JoinHandle<()>> {
    let segment = inner.segments.read().unwrap().last().unwrap().clone();
    let (next_offset, last_index_pos) = {
        let st = segment.state.read().unwrap();
        (
            st.next_offset,
            st.index
                .as_ref()
                .and_then(|ix| ix.last())
                .map(|e| u64::from(e.position)),
        )
    };
    let reserved = segment.file.len()?;
    let tail = Tail {
        segment,
        pos: active_end_pos,
        next_offset,
        last_index_pos,
        reserved,
    };
    std::thread::Builder::new()
        .name("surety-log-writer".into())
        .spawn(move || run(&inner, tail))
}

fn run(inner: &Inner, mut tail: Tail) {
    let mut buf = Vec::new();
    loop {
        let batch = {
            let mut q = inner.queue.lock().unwrap();
            while q.items.is_empty() && !q.closed {
                q = inner.queue_cv.wait(q).unwrap();
            }
            if q.items.is_empty() {
                return;
            }
            mem::take(&mut q.items)
        };
        if let Some(e) = inner.failure.get() {
            fail_all(batch, e);
            continue;
        }
        let batch = refuse_beyond_max_offset(batch, tail.next_offset);
        match write_batch(inner, &mut tail, &batch, &mut buf) {
            Ok(ranges) => {
                for (p, range) in batch.into_iter().zip(ranges) {
                    let _ = p.done.send(Ok(range));
                }
            }
            Err(e) => {
                // Never retry a failed write or fsync and report success: after a failed
                // fsync the kernel may have dropped the dirty pages. Stop for good.
                tracing::error!(dir = ?inner.dir, error = %e, "log write failed; refusing further appends");
                let e = inner.failure.get_or_init(|| Arc::new(e)).clone();
                fail_all(batch, &e);
                let rest = mem::take(&mut inner.queue.lock().unwrap().items);
                fail_all(rest, &e);
            }
        }
    }
}

/// Answers `OffsetsExhausted` to appends that would take offsets past `MAX_OFFSET`
/// (unreachable in practice, but a record beyond it would read as corrupt) and keeps the
/// rest.
fn refuse_beyond_max_offset(batch: Vec<Pending>, mut next_offset: u64) -> Vec<Pending> {
    let mut keep = Vec::with_capacity(batch.len());
    for p in batch {
        let end = next_offset + p.records.len() as u64;
        if end <= crate::record::MAX_OFFSET + 1 {
            next_offset = end;
            keep.push(p);
        } else {
            let _ = p.done.send(Err(AppendError::OffsetsExhausted));
        }
    }
    keep
}

fn fail_all(batch: Vec<Pending>, e: &Arc<io::Error>) {
    for p in batch {
        let _ = p.done.send(Err(AppendError::Failed(e.clone())));
    }
}

/// Writes and syncs every record of `batch`; returns each pending append's offsets.
fn write_batch(
    inner: &Inner,
    tail: &mut Tail,
    batch: &[Pending],
    buf: &mut Vec<u8>,
) -> io::Result<Vec<Range<u64>>> {
    let segment_bytes = inner.config.segment_bytes;
    let interval = inner.config.index_interval_bytes;
    let mut ranges = Vec::with_capacity(batch.len());
    let mut chunk = Chunk::new(tail.next_offset);
    buf.clear();
    buf.reserve(
        batch
            .iter()
            .map(|p| p.bytes)
            .sum::<usize>()
            .min(segment_bytes as usize),
    );
    for p in batch {
        let first = tail.next_offset + chunk.records;
        for rec in &p.records {
            let frame_pos = tail.pos + buf.len() as u64;
            let len = rec.encoded_len().map_err(io::Error::other)? as u64;
            if frame_pos + len > segment_bytes && frame_pos > SEGMENT_HEADER_LEN as u64 {
                flush(inner, tail, buf, &mut chunk)?;
                roll(inner, tail)?;
                chunk = Chunk::new(tail.next_offset);
            }
            let frame_pos = tail.pos + buf.len() as u64;
            let offset = tail.next_offset + chunk.records;
            if tail
                .last_index_pos
                .is_none_or(|p| frame_pos - p >= interval)
            {
                chunk.index.push(IndexEntry {
                    offset,
                    position: frame_pos as u32,
                });
                tail.last_index_pos = Some(frame_pos);
            }
            encode_into(buf, rec, offset, (offset - chunk.base) as u32);
            chunk.records += 1;
            chunk.max_timestamp_ms = Some(
                chunk
                    .max_timestamp_ms
                    .map_or(rec.timestamp_ms, |t| t.max(rec.timestamp_ms)),
            );
        }
        ranges.push(first..first + p.records.len() as u64);
    }
    // Offsets in `ranges` were computed against the tail before any roll inside this
    // batch; a roll does not change offsets, only where they are stored.
    flush(inner, tail, buf, &mut chunk)?;
    Ok(ranges)
}

/// Records encoded into the buffer but not yet written.
struct Chunk {
    /// Offset of the chunk's first record (the batch base recovery sees).
    base: u64,
    records: u64,
    index: Vec<IndexEntry>,
    max_timestamp_ms: Option<i64>,
}

impl Chunk {
    fn new(base: u64) -> Self {
        Self {
            base,
            records: 0,
            index: Vec::new(),
            max_timestamp_ms: None,
        }
    }
}

/// One write and (unless durability is `None`) one fdatasync; then readers may see it.
fn flush(inner: &Inner, tail: &mut Tail, buf: &mut Vec<u8>, chunk: &mut Chunk) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let file = &tail.segment.file;
    let end = tail.pos + buf.len() as u64;
    if inner.config.preallocate && end > tail.reserved {
        // Grow the reservation ahead of the data (doubling; see `LogConfig::preallocate`)
        // so this and the next writes overwrite reserved blocks. What it adds reads as
        // zeros, the end of data for recovery, until a synced write covers it.
        let target = inner.config.preallocation_after(tail.reserved, end);
        file.preallocate(target)?;
        tail.reserved = target;
    }
    file.write_all_at(buf, tail.pos)?;
    inner.counters.writes.fetch_add(1, Ordering::Relaxed);
    if inner.config.durability == Durability::Fsync {
        let started = Instant::now();
        file.sync_data()?;
        let took = started.elapsed();
        // The `metrics` facade is a no-op until a recorder (the server's) is installed.
        metrics::histogram!("surety_log_fsync_seconds").record(took.as_secs_f64());
        metrics::histogram!("surety_log_records_per_fsync").record(chunk.records as f64);
        let c = &inner.counters;
        c.sync_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        c.syncs.fetch_add(1, Ordering::Relaxed);
    }
    tail.pos += buf.len() as u64;
    tail.next_offset += chunk.records;
    {
        let mut st = tail.segment.state.write().unwrap();
        st.end_pos = tail.pos;
        st.next_offset = tail.next_offset;
        // The tail segment is the active one, whose index is in memory.
        if let Some(ix) = st.index.as_mut() {
            ix.append(&mut chunk.index);
        }
        if let Some(t) = chunk.max_timestamp_ms {
            st.max_timestamp_ms = Some(st.max_timestamp_ms.map_or(t, |m| m.max(t)));
        }
    }
    inner
        .counters
        .records
        .fetch_add(chunk.records, Ordering::Relaxed);
    inner
        .counters
        .bytes
        .fetch_add(buf.len() as u64, Ordering::Relaxed);
    inner
        .durable_next
        .store(tail.next_offset, Ordering::Release);
    inner.durable_watch.send_replace(tail.next_offset);
    buf.clear();
    chunk.records = 0;
    chunk.max_timestamp_ms = None;
    Ok(())
}

/// Seals the active segment and starts a new one at the next offset, durably.
fn roll(inner: &Inner, tail: &mut Tail) -> io::Result<()> {
    seal(inner, &tail.segment, tail.pos)?;
    // The log just filled a whole segment: it is busy, so the next one is reserved in
    // full at once, as if it always had been, instead of growing in steps (each step's
    // first fdatasync also commits the file's new size).
    let reserve = inner.config.segment_bytes;
    let segment = create_segment(
        inner.storage.as_ref(),
        &inner.dir,
        &inner.config,
        tail.next_offset,
        reserve,
    )?;
    inner.segments.write().unwrap().push(segment.clone());
    tail.segment = segment;
    tail.pos = SEGMENT_HEADER_LEN as u64;
    tail.last_index_pos = None;
    tail.reserved = if inner.config.preallocate {
        reserve
    } else {
        SEGMENT_HEADER_LEN as u64
    };
    Ok(())
}

/// Trims preallocated space off a full segment, writes its index file, and moves its
/// index out of the segment's state into the index cache (sealed segments' indexes are
/// read from their files, see `index_cache`). The index file is written before the
/// state lets go of the index, so a reader always finds one of the two. It is not
/// synced: it is checked before use and rebuilt if a crash damaged it.
fn seal(inner: &Inner, segment: &Segment, end_pos: u64) -> io::Result<()> {
    segment.file.set_len(end_pos)?;
    segment.file.sync_all()?;
    let st = segment.state.read().unwrap().clone();
    let entries = st.index.unwrap_or_default();
    let file = IndexFile {
        base_offset: segment.base_offset,
        next_offset: st.next_offset,
        segment_len: st.end_pos,
        max_timestamp_ms: st.max_timestamp_ms,
        entries,
    };
    write_index_file(inner.storage.as_ref(), &inner.dir, &file);
    inner
        .index_cache
        .insert(segment.base_offset, file.entries.into());
    segment.state.write().unwrap().index = None;
    Ok(())
}

/// Best effort: a missing index only costs a scan when the segment is next opened or
/// read.
pub(crate) fn write_index_file(
    storage: &dyn crate::storage::Storage,
    dir: &std::path::Path,
    file: &IndexFile,
) {
    let path = index_path(dir, file.base_offset);
    let bytes = file.encode();
    let result = (|| {
        match storage.remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        storage.create_new(&path)?.write_all_at(&bytes, 0)
    })();
    if let Err(e) = result {
        tracing::warn!(?path, error = %e, "could not write segment index; it will be rebuilt on open");
    }
}

/// Creates an empty segment durably: header written (and `reserve` bytes preallocated,
/// `LogConfig::preallocate`) and synced, name synced in the directory, before any record
/// may go into it.
pub(crate) fn create_segment(
    storage: &dyn crate::storage::Storage,
    dir: &std::path::Path,
    config: &crate::config::LogConfig,
    base_offset: u64,
    reserve: u64,
) -> io::Result<Arc<Segment>> {
    let path = segment_path(dir, base_offset);
    let file = storage.create_new(&path)?;
    file.write_all_at(&encode_header(base_offset), 0)?;
    if config.preallocate {
        file.preallocate(reserve)?;
    }
    file.sync_all()?;
    storage.sync_dir(dir)?;
    Ok(Arc::new(Segment::new(
        base_offset,
        path,
        file,
        SegmentState {
            end_pos: SEGMENT_HEADER_LEN as u64,
            next_offset: base_offset,
            index: Some(Vec::new()),
            max_timestamp_ms: None,
        },
    )))
}
