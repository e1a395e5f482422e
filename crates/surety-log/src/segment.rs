//! Segment files: the header, file naming, and the record-by-record scan that open-time
//! validation, index rebuilds and repair share.

use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::index::IndexEntry;
use crate::record::{self, DecodeError, DecodedFrame};
use crate::storage::{StorageFile, read_full_at};

pub const SEGMENT_MAGIC: [u8; 8] = *b"SURETYLG";
pub const SEGMENT_FORMAT_VERSION: u16 = 1;
pub const SEGMENT_HEADER_LEN: usize = 32;
pub const SEGMENT_SUFFIX: &str = ".log";
pub const INDEX_SUFFIX: &str = ".index";

/// Encodes the 32-byte segment header.
pub fn encode_header(base_offset: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..10].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    h[10..12].copy_from_slice(&(SEGMENT_HEADER_LEN as u16).to_le_bytes());
    // 12..16 flags, reserved as zero.
    h[16..24].copy_from_slice(&base_offset.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a segment header is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    #[error("file is shorter than the segment header")]
    Short,
    #[error("bad magic (not a Surety segment)")]
    BadMagic,
    #[error("header crc mismatch")]
    CrcMismatch,
    #[error("unsupported segment format version {0}")]
    UnsupportedVersion(u16),
    #[error("header says base offset {found}, file name says {expected}")]
    BaseMismatch { expected: u64, found: u64 },
}

/// Decodes a segment header and returns its base offset.
pub fn decode_header(h: &[u8]) -> Result<u64, HeaderError> {
    if h.len() < SEGMENT_HEADER_LEN {
        return Err(HeaderError::Short);
    }
    if h[0..8] != SEGMENT_MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let stored = u32::from_le_bytes(h[24..28].try_into().unwrap());
    if stored != crc32c::crc32c(&h[0..24]) {
        return Err(HeaderError::CrcMismatch);
    }
    let version = u16::from_le_bytes(h[8..10].try_into().unwrap());
    let header_len = u16::from_le_bytes(h[10..12].try_into().unwrap());
    if version != SEGMENT_FORMAT_VERSION || header_len as usize != SEGMENT_HEADER_LEN {
        return Err(HeaderError::UnsupportedVersion(version));
    }
    Ok(u64::from_le_bytes(h[16..24].try_into().unwrap()))
}

pub fn segment_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}{SEGMENT_SUFFIX}")
}

pub fn index_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}{INDEX_SUFFIX}")
}

pub fn segment_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(segment_file_name(base_offset))
}

pub fn index_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(index_file_name(base_offset))
}

/// Parses `00000000000000000042.log` into 42.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&b| b <= record::MAX_OFFSET)
}

/// Parses `00000000000000000042.index` into 42.
pub fn parse_index_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(INDEX_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What a scan of a segment's records found.
#[derive(Debug, Clone)]
pub struct ScanOutcome {
    /// Position just past the last valid record (where the next write goes).
    pub end_pos: u64,
    /// One past the offset of the last valid record (`base` when none).
    pub next_offset: u64,
    pub record_count: u64,
    pub max_timestamp_ms: Option<i64>,
    pub index: Vec<IndexEntry>,
    /// How the valid data ended; `None` when it ran to end of file or to zeroed space.
    pub stop: Option<ScanStop>,
    /// The caller's `pace` ended the scan before the data did ([`scan_paced`]).
    pub aborted: bool,
}

/// The first invalid frame a scan met.
#[derive(Debug, Clone)]
pub struct ScanStop {
    pub pos: u64,
    pub error: DecodeError,
}

/// Streams through a segment's frames with a bounded buffer.
#[derive(Debug)]
pub struct FrameCursor<'a> {
    file: &'a dyn StorageFile,
    file_len: u64,
    max_frame_len: usize,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    buf_pos: u64,
    /// File position of the next frame.
    pub pos: u64,
    /// Bytes to read at the next refill: starts small so a read of a few records does
    /// not copy a whole chunk, doubles up to `READ_CHUNK` for long scans.
    chunk: usize,
}

const READ_CHUNK: usize = 256 * 1024;
const FIRST_READ_CHUNK: usize = 16 * 1024;

impl<'a> FrameCursor<'a> {
    pub fn new(
        file: &'a dyn StorageFile,
        start_pos: u64,
        file_len: u64,
        max_frame_len: usize,
    ) -> Self {
        Self {
            file,
            file_len,
            max_frame_len,
            buf: Vec::new(),
            buf_pos: start_pos,
            pos: start_pos,
            chunk: FIRST_READ_CHUNK,
        }
    }

    /// Makes at least `want` bytes from `self.pos` available (fewer only at end of file).
    fn fill(&mut self, want: usize) -> io::Result<&[u8]> {
        let buf_end = self.buf_pos + self.buf.len() as u64;
        if self.pos < self.buf_pos || self.pos + want as u64 > buf_end {
            let avail = (self.file_len.saturating_sub(self.pos)) as usize;
            let len = want.max(self.chunk).min(avail);
            self.chunk = (self.chunk * 2).min(READ_CHUNK);
            self.buf.resize(len, 0);
            let n = read_full_at(self.file, &mut self.buf, self.pos)?;
            self.buf.truncate(n);
            self.buf_pos = self.pos;
        }
        let from = ((self.pos - self.buf_pos) as usize).min(self.buf.len());
        Ok(&self.buf[from..])
    }

    /// Decodes the frame at the cursor without moving past it; `Ok(None)` at end of file.
    pub fn peek(&mut self) -> io::Result<Option<Result<DecodedFrame, DecodeError>>> {
        self.peek_filtered(|_| true)
    }

    /// Like [`Self::peek`], but first shows the frame's first 16 bytes (length, crc,
    /// offset) to `plausible`, and reads no further when it says no. Resync uses this to
    /// skip garbage without reading a whole "frame" at every byte.
    fn peek_filtered(
        &mut self,
        plausible: impl Fn(&[u8]) -> bool,
    ) -> io::Result<Option<Result<DecodedFrame, DecodeError>>> {
        if self.pos >= self.file_len {
            return Ok(None);
        }
        let max = self.max_frame_len;
        let available = (self.file_len - self.pos) as usize;
        let head = self.fill(16)?;
        let need = match record::peek_frame_len(head, max) {
            Ok(n) => n,
            Err(e) => return Ok(Some(Err(e))),
        };
        if need > available || head.len() < 16 || !plausible(&head[..16]) {
            return Ok(Some(Err(DecodeError::Truncated {
                needed: need,
                available,
            })));
        }
        let bytes = self.fill(need)?;
        Ok(Some(record::decode(bytes, max)))
    }

    pub fn advance(&mut self, frame_len: usize) {
        self.pos += frame_len as u64;
    }
}

/// Scans the records of a segment from the end of its header, checking every CRC and
/// that offsets rise, building the sparse index as it goes.
pub fn scan(
    file: &dyn StorageFile,
    base_offset: u64,
    file_len: u64,
    max_frame_len: usize,
    index_interval: u64,
) -> io::Result<ScanOutcome> {
    scan_paced(
        file,
        base_offset,
        file_len,
        max_frame_len,
        index_interval,
        &mut |_| ControlFlow::Continue(()),
    )
}

/// [`scan`], calling `pace` with each valid frame's length as it goes past: the scrub
/// throttles itself there, `surety verify` counts progress. `pace` breaking ends the
/// scan early, marked [`ScanOutcome::aborted`].
pub fn scan_paced(
    file: &dyn StorageFile,
    base_offset: u64,
    file_len: u64,
    max_frame_len: usize,
    index_interval: u64,
    pace: &mut dyn FnMut(u64) -> ControlFlow<()>,
) -> io::Result<ScanOutcome> {
    let mut cursor = FrameCursor::new(file, SEGMENT_HEADER_LEN as u64, file_len, max_frame_len);
    let mut out = ScanOutcome {
        end_pos: SEGMENT_HEADER_LEN as u64,
        next_offset: base_offset,
        record_count: 0,
        max_timestamp_ms: None,
        index: Vec::new(),
        stop: None,
        aborted: false,
    };
    let mut last_indexed_pos: Option<u64> = None;
    loop {
        let frame = match cursor.peek()? {
            None => break,
            Some(Err(DecodeError::EndOfData)) if is_zero_tail(file, cursor.pos, file_len)? => break,
            Some(Err(error)) => {
                out.stop = Some(ScanStop {
                    pos: cursor.pos,
                    error,
                });
                break;
            }
            Some(Ok(frame)) => frame,
        };
        if frame.record.offset > record::MAX_OFFSET {
            out.stop = Some(ScanStop {
                pos: cursor.pos,
                error: DecodeError::Malformed("record offset out of range"),
            });
            break;
        }
        if frame.record.offset < out.next_offset {
            out.stop = Some(ScanStop {
                pos: cursor.pos,
                error: DecodeError::Malformed("record offset does not rise"),
            });
            break;
        }
        if last_indexed_pos.is_none_or(|p| cursor.pos - p >= index_interval) {
            out.index.push(IndexEntry {
                offset: frame.record.offset,
                position: cursor.pos as u32,
            });
            last_indexed_pos = Some(cursor.pos);
        }
        out.next_offset = frame.record.offset + 1;
        out.record_count += 1;
        out.max_timestamp_ms = Some(out.max_timestamp_ms.map_or(frame.record.timestamp_ms, |t| {
            t.max(frame.record.timestamp_ms)
        }));
        cursor.advance(frame.frame_len);
        out.end_pos = cursor.pos;
        if pace(frame.frame_len as u64).is_break() {
            out.aborted = true;
            break;
        }
    }
    Ok(out)
}

/// Whether every byte from `pos` to `file_len` is zero (preallocated, never written).
pub fn is_zero_tail(file: &dyn StorageFile, pos: u64, file_len: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; READ_CHUNK];
    // Slice equality compiles to memcmp: fast even in debug builds, where a byte loop over
    // a 64 MiB preallocated segment took a third of a second.
    let zeros = vec![0u8; READ_CHUNK];
    let mut at = pos;
    while at < file_len {
        let want = READ_CHUNK.min((file_len - at) as usize);
        let n = read_full_at(file, &mut buf[..want], at)?;
        if n == 0 {
            break;
        }
        if buf[..n] != zeros[..n] {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Searches byte by byte after a failed frame for any valid frame with an offset of at
/// least `min_offset`: the evidence recovery uses to tell a torn tail from corruption.
/// Returns every such frame with its position, in file order, skipping over each one.
pub fn resync(
    file: &dyn StorageFile,
    from_pos: u64,
    file_len: u64,
    min_offset: u64,
    max_frame_len: usize,
) -> io::Result<Vec<(u64, DecodedFrame)>> {
    let mut found = Vec::new();
    let mut cursor = FrameCursor::new(file, from_pos, file_len, max_frame_len);
    let mut next_min = min_offset;
    while cursor.pos + record::MIN_FRAME_LEN as u64 <= file_len {
        let floor = next_min;
        let offset_plausible = |head: &[u8]| {
            let offset = u64::from_le_bytes(head[8..16].try_into().unwrap());
            offset >= floor && offset - floor < u64::from(u32::MAX) && offset <= record::MAX_OFFSET
        };
        match cursor.peek_filtered(offset_plausible)? {
            Some(Ok(frame)) if frame.record.offset >= next_min => {
                next_min = frame.record.offset + 1;
                let len = frame.frame_len;
                found.push((cursor.pos, frame));
                cursor.advance(len);
            }
            Some(_) => cursor.advance(1),
            None => break,
        }
    }
    Ok(found)
}
