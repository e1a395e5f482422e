//! The sparse offset index: one entry per `index_interval_bytes` of a segment, mapping a
//! record offset to its byte position. It is only an accelerator: the log is the truth,
//! and a missing, short or damaged index file is rebuilt by scanning its segment.
//!
//! File layout (little-endian), see `docs/format.md`:
//! ```text
//! [u8; 8] magic "SURETYIX"  u16 version  u16 entry_len (16)  u32 entry_count
//! u64 base_offset  u64 next_offset  u64 segment_len  i64 max_timestamp_ms (i64::MIN: none)
//! u32 crc32c(bytes 0..48)  u32 reserved (must be zero)
//! entries: u64 offset, u32 position, u32 crc32c(offset, position)
//! ```

pub const INDEX_MAGIC: [u8; 8] = *b"SURETYIX";
pub const INDEX_FORMAT_VERSION: u16 = 1;
pub const INDEX_HEADER_LEN: usize = 56;
pub const INDEX_ENTRY_LEN: usize = 16;

/// One sparse index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    /// Byte position of the record's frame in the segment file.
    pub position: u32,
}

/// What a sealed segment's index file says about the segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexFile {
    pub base_offset: u64,
    pub next_offset: u64,
    pub segment_len: u64,
    pub max_timestamp_ms: Option<i64>,
    pub entries: Vec<IndexEntry>,
}

/// Why an index file was not usable (it is then rebuilt; never fatal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error("index file too short")]
    Short,
    #[error("bad index magic")]
    BadMagic,
    #[error("index header crc mismatch")]
    HeaderCrc,
    #[error("unsupported index version {0}")]
    Version(u16),
    #[error("reserved index header bytes are not zero")]
    Reserved,
    #[error("index length does not match its entry count")]
    Length,
    #[error("index entry {0} is damaged")]
    Entry(usize),
    #[error("index entries are not in increasing order")]
    Order,
}

impl IndexFile {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(INDEX_HEADER_LEN + self.entries.len() * INDEX_ENTRY_LEN);
        out.extend_from_slice(&INDEX_MAGIC);
        out.extend_from_slice(&INDEX_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(INDEX_ENTRY_LEN as u16).to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.base_offset.to_le_bytes());
        out.extend_from_slice(&self.next_offset.to_le_bytes());
        out.extend_from_slice(&self.segment_len.to_le_bytes());
        out.extend_from_slice(&self.max_timestamp_ms.unwrap_or(i64::MIN).to_le_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for e in &self.entries {
            let start = out.len();
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.position.to_le_bytes());
            let crc = crc32c::crc32c(&out[start..]);
            out.extend_from_slice(&crc.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, IndexError> {
        let header = IndexHeader::decode(bytes)?;
        if bytes.len() as u64 != header.file_len() {
            return Err(IndexError::Length);
        }
        let mut entries = Vec::with_capacity(header.entry_count as usize);
        for (i, chunk) in bytes[INDEX_HEADER_LEN..]
            .chunks_exact(INDEX_ENTRY_LEN)
            .enumerate()
        {
            let entry = decode_entry(chunk).ok_or(IndexError::Entry(i))?;
            if entries.last().is_some_and(|p: &IndexEntry| {
                p.offset >= entry.offset || p.position >= entry.position
            }) {
                return Err(IndexError::Order);
            }
            entries.push(entry);
        }
        Ok(Self {
            base_offset: header.base_offset,
            next_offset: header.next_offset,
            segment_len: header.segment_len,
            max_timestamp_ms: header.max_timestamp_ms,
            entries,
        })
    }
}

/// The fixed-size head of an index file: enough to trust a sealed segment at open
/// without reading its entries (each entry carries its own CRC and is checked when used).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexHeader {
    pub base_offset: u64,
    pub next_offset: u64,
    pub segment_len: u64,
    pub max_timestamp_ms: Option<i64>,
    pub entry_count: u32,
}

impl IndexHeader {
    /// Decodes and checks the first [`INDEX_HEADER_LEN`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, IndexError> {
        if bytes.len() < INDEX_HEADER_LEN {
            return Err(IndexError::Short);
        }
        if bytes[0..8] != INDEX_MAGIC {
            return Err(IndexError::BadMagic);
        }
        let u16_at = |i: usize| u16::from_le_bytes(bytes[i..i + 2].try_into().unwrap());
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
        if u32_at(48) != crc32c::crc32c(&bytes[0..48]) {
            return Err(IndexError::HeaderCrc);
        }
        let version = u16_at(8);
        if version != INDEX_FORMAT_VERSION || u16_at(10) as usize != INDEX_ENTRY_LEN {
            return Err(IndexError::Version(version));
        }
        // Not covered by the CRC, so required to be zero: every accepted file then
        // re-encodes to exactly its own bytes.
        if u32_at(52) != 0 {
            return Err(IndexError::Reserved);
        }
        Ok(Self {
            base_offset: u64_at(16),
            next_offset: u64_at(24),
            segment_len: u64_at(32),
            max_timestamp_ms: Some(u64_at(40) as i64).filter(|&t| t != i64::MIN),
            entry_count: u32_at(12),
        })
    }

    /// The length a file with this header must have.
    pub fn file_len(&self) -> u64 {
        INDEX_HEADER_LEN as u64 + u64::from(self.entry_count) * INDEX_ENTRY_LEN as u64
    }

    /// Where entry `i` starts in the file.
    pub fn entry_pos(i: u32) -> u64 {
        INDEX_HEADER_LEN as u64 + u64::from(i) * INDEX_ENTRY_LEN as u64
    }
}

/// Decodes one entry ([`INDEX_ENTRY_LEN`] bytes); `None` when its CRC does not match.
pub fn decode_entry(bytes: &[u8]) -> Option<IndexEntry> {
    let bytes: &[u8; INDEX_ENTRY_LEN] = bytes.get(..INDEX_ENTRY_LEN)?.try_into().ok()?;
    let crc = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
    (crc == crc32c::crc32c(&bytes[..12])).then(|| IndexEntry {
        offset: u64::from_le_bytes(bytes[0..8].try_into().unwrap()),
        position: u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
    })
}

/// The entry to start a forward scan from when looking for `offset`: the last entry at
/// or below it, if any.
pub fn lookup(entries: &[IndexEntry], offset: u64) -> Option<IndexEntry> {
    let i = entries.partition_point(|e| e.offset <= offset);
    i.checked_sub(1).map(|i| entries[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> IndexFile {
        IndexFile {
            base_offset: 100,
            next_offset: 250,
            segment_len: 9000,
            max_timestamp_ms: Some(1_700_000_000_000),
            entries: vec![
                IndexEntry {
                    offset: 100,
                    position: 32,
                },
                IndexEntry {
                    offset: 180,
                    position: 4200,
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let f = sample();
        assert_eq!(IndexFile::decode(&f.encode()).unwrap(), f);
    }

    #[test]
    fn any_bit_flip_or_truncation_is_rejected() {
        let bytes = sample().encode();
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(IndexFile::decode(&b).is_err(), "bit {bit}");
        }
        for cut in 0..bytes.len() {
            assert!(IndexFile::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn lookup_finds_floor_entry() {
        let e = sample().entries;
        assert_eq!(lookup(&e, 99), None);
        assert_eq!(lookup(&e, 100).unwrap().position, 32);
        assert_eq!(lookup(&e, 179).unwrap().position, 32);
        assert_eq!(lookup(&e, 1000).unwrap().position, 4200);
    }
}
