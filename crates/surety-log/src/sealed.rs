//! A sealed segment's index file, checked against the segment before anything relies on
//! it. The index is only an accelerator and is never fsynced, so it is never trusted
//! blindly: at open only after its header, its first and last entries and the records of
//! its last interval agree with the segment; for a read only after the whole file
//! decodes (every entry's CRC) and describes the segment as the log knows it; and the
//! entry a read skips to must hold the record it names (`Log::read_from`). Whatever
//! fails is rebuilt by scanning the segment, which CRC-checks every record.

use std::path::Path;

use crate::index::{
    INDEX_ENTRY_LEN, INDEX_HEADER_LEN, IndexEntry, IndexFile, IndexHeader, decode_entry,
};
use crate::log::SegmentState;
use crate::record;
use crate::segment::{FrameCursor, SEGMENT_HEADER_LEN, index_path};
use crate::storage::{Storage, StorageFile, read_full_at};

/// At open, the state of a sealed segment taken from its index file without scanning
/// the segment, or `None` when it must be scanned. Checked: the header (CRC, base offset,
/// segment length = the file's), the file's length, the first and last entries (each
/// CRC'd; the first just past the segment header), and the last interval: the records
/// from the last entry on must be valid, start with the last entry's offset, rise, stay
/// within the index's largest timestamp, and end exactly at the file's end one below the
/// index's next offset. So a segment cut, extended or rewritten since its index was
/// written is rescanned. Sealed records before the last interval are CRC-checked when
/// read, and by the scrub.
pub(crate) fn trust_at_open(
    storage: &dyn Storage,
    dir: &Path,
    base: u64,
    file: &dyn StorageFile,
    len: u64,
    max_frame: usize,
) -> Option<SegmentState> {
    let ix = storage.open(&index_path(dir, base)).ok()?;
    let mut head = [0u8; INDEX_HEADER_LEN + INDEX_ENTRY_LEN];
    let got = read_full_at(ix.as_ref(), &mut head, 0).ok()?;
    let h = IndexHeader::decode(&head[..got]).ok()?;
    if ix.len().ok()? != h.file_len()
        || h.base_offset != base
        || h.segment_len != len
        || h.next_offset < base
        || h.next_offset > record::MAX_OFFSET + 1
    {
        return None;
    }
    let last = match h.entry_count {
        // Only a segment without records has no entry.
        0 if h.next_offset == base => None,
        0 => return None,
        n => {
            let first = decode_entry(&head[INDEX_HEADER_LEN..got])?;
            if first.position as usize != SEGMENT_HEADER_LEN || first.offset < base {
                return None;
            }
            let last = if n == 1 {
                first
            } else {
                let mut buf = [0u8; INDEX_ENTRY_LEN];
                let at = IndexHeader::entry_pos(n - 1);
                if read_full_at(ix.as_ref(), &mut buf, at).ok()? != INDEX_ENTRY_LEN {
                    return None;
                }
                decode_entry(&buf)?
            };
            Some(last)
        }
    };
    let from = last.map_or(SEGMENT_HEADER_LEN as u64, |e| u64::from(e.position));
    let mut cursor = FrameCursor::new(file, from, len, max_frame);
    let mut next = base;
    let mut first = true;
    loop {
        let frame = match cursor.peek() {
            Ok(None) => break,
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(_))) | Err(_) => return None,
        };
        let r = &frame.record;
        let expected_first = last.is_none_or(|e| e.offset == r.offset);
        if (first && !expected_first)
            || r.offset < next
            || r.offset > record::MAX_OFFSET
            || h.max_timestamp_ms.is_none_or(|t| r.timestamp_ms > t)
        {
            return None;
        }
        first = false;
        next = r.offset + 1;
        cursor.advance(frame.frame_len);
    }
    // `peek` ends only at the file's end, and a frame never reaches past it.
    if next != h.next_offset || (last.is_some() && first) {
        return None;
    }
    Some(SegmentState {
        end_pos: len,
        next_offset: h.next_offset,
        index: None,
        max_timestamp_ms: h.max_timestamp_ms,
    })
}

/// For a read, every entry of a sealed segment's index file, or `None` when the file is
/// missing or damaged or describes another segment than the one ending at `end_pos`
/// below `next_offset` (then the caller rebuilds it by scanning).
pub(crate) fn load_entries(
    storage: &dyn Storage,
    dir: &Path,
    base: u64,
    end_pos: u64,
    next_offset: u64,
) -> Option<Vec<IndexEntry>> {
    let f = read_index_file(storage, dir, base)?;
    let fits = f.base_offset == base
        && f.segment_len == end_pos
        && f.next_offset == next_offset
        && f.entries
            .first()
            .is_none_or(|e| e.position as usize == SEGMENT_HEADER_LEN);
    fits.then_some(f.entries)
}

/// The index file of the segment based at `base`, if it exists and decodes.
pub(crate) fn read_index_file(storage: &dyn Storage, dir: &Path, base: u64) -> Option<IndexFile> {
    let ix = storage.open(&index_path(dir, base)).ok()?;
    let mut bytes = vec![0u8; usize::try_from(ix.len().ok()?).ok()?];
    if read_full_at(ix.as_ref(), &mut bytes, 0).ok()? != bytes.len() {
        return None;
    }
    IndexFile::decode(&bytes).ok()
}

/// The header of the index file of the segment based at `base`, if it is intact and
/// names that base.
pub(crate) fn read_index_header(
    storage: &dyn Storage,
    dir: &Path,
    base: u64,
) -> Option<IndexHeader> {
    let ix = storage.open(&index_path(dir, base)).ok()?;
    let mut head = [0u8; INDEX_HEADER_LEN];
    let got = read_full_at(ix.as_ref(), &mut head, 0).ok()?;
    IndexHeader::decode(&head[..got])
        .ok()
        .filter(|h| h.base_offset == base)
}
