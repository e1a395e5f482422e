//! Little-endian encoding helpers shared by the broker's binary formats (journal
//! records, group snapshots, dedupe snapshots): one copy of the bounds checks that keep a
//! decoder from panicking or over-allocating on any input. Each format maps
//! [`ReadError`] into its own error type.

pub(crate) fn put_u32(w: &mut Vec<u8>, v: u32) {
    w.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(w: &mut Vec<u8>, v: u64) {
    w.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_str(w: &mut Vec<u8>, s: &str) {
    put_u32(w, s.len() as u32);
    w.extend_from_slice(s.as_bytes());
}

/// Why bytes could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// The input ends early.
    Short,
    /// A count is larger than the bytes that follow could hold.
    Count,
    /// Text is not UTF-8.
    Utf8,
}

/// Reads from the front of a byte slice; `.0` is what is left.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl Reader<'_> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&[u8], ReadError> {
        if self.0.len() < n {
            return Err(ReadError::Short);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, ReadError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> Result<u32, ReadError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, ReadError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    /// A u32 count of items of at least `min_item_len` bytes each, refused when the
    /// bytes left cannot hold that many (so garbage cannot make us allocate much).
    pub(crate) fn count(&mut self, min_item_len: usize) -> Result<usize, ReadError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item_len) > self.0.len() {
            return Err(ReadError::Count);
        }
        Ok(n)
    }
    pub(crate) fn string(&mut self) -> Result<String, ReadError> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| ReadError::Utf8)
    }
}
