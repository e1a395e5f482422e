//! The record frame: how one record is laid out on disk (see `docs/format.md`).
//!
//! ```text
//! u32 length        bytes after this field (crc .. end of payload)
//! u32 crc32c        over every byte after this field (offset .. end of payload)
//! u64 offset
//! i64 timestamp_ms
//! u32 batch_delta   offset - first offset of the write batch this record was written in
//! u8  flags         bit 0: key present
//! u32 key_len
//! u16 header_count
//! key bytes, then per header: u16 name_len, name (UTF-8), u32 value_len, value
//! payload           the rest of the frame
//! ```

/// Largest offset a record may have (offsets are signed 64-bit on the wire, as in Kafka);
/// keeps every `offset + n` in the code far from overflow.
pub const MAX_OFFSET: u64 = i64::MAX as u64;

/// Bytes before the CRC-covered body: `length` and `crc`.
pub const FRAME_PREFIX_LEN: usize = 8;
/// Fixed part of the CRC-covered body (offset .. header_count).
const FIXED_BODY_LEN: usize = 8 + 8 + 4 + 1 + 4 + 2;
/// Smallest legal value of the `length` field.
pub const MIN_LENGTH_FIELD: u32 = (4 + FIXED_BODY_LEN) as u32;
/// Smallest frame on disk.
pub const MIN_FRAME_LEN: usize = FRAME_PREFIX_LEN + FIXED_BODY_LEN;

const FLAG_HAS_KEY: u8 = 1;
const KNOWN_FLAGS: u8 = FLAG_HAS_KEY;

/// One header of a record: a UTF-8 name and an opaque value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

impl Header {
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// A record as the appender hands it in; the log assigns its offset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewRecord {
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<Header>,
    pub payload: Vec<u8>,
}

impl NewRecord {
    /// A record stamped with the current wall-clock time.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Self {
            timestamp_ms: now_ms(),
            key: None,
            headers: Vec::new(),
            payload: payload.into(),
        }
    }

    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header::new(name, value));
        self
    }

    /// Size of this record's frame on disk, or why it cannot be framed.
    pub fn encoded_len(&self) -> Result<usize, FrameError> {
        if self.headers.len() > u16::MAX as usize {
            return Err(FrameError::TooManyHeaders(self.headers.len()));
        }
        let key_len = self.key.as_ref().map_or(0, Vec::len);
        if key_len > u32::MAX as usize {
            return Err(FrameError::FieldTooLong("key"));
        }
        let mut len = MIN_FRAME_LEN + key_len + self.payload.len();
        for h in &self.headers {
            if h.name.len() > u16::MAX as usize {
                return Err(FrameError::FieldTooLong("header name"));
            }
            if h.value.len() > u32::MAX as usize {
                return Err(FrameError::FieldTooLong("header value"));
            }
            len += 2 + h.name.len() + 4 + h.value.len();
        }
        if len - 4 > u32::MAX as usize {
            return Err(FrameError::FieldTooLong("record"));
        }
        Ok(len)
    }
}

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<Header>,
    pub payload: Vec<u8>,
}

/// Why a record cannot be framed at all (independent of any size limit the log sets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("a record may carry at most 65535 headers, got {0}")]
    TooManyHeaders(usize),
    #[error("{0} is too long to frame")]
    FieldTooLong(&'static str),
}

/// Why bytes do not decode as a record frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The buffer ends before the frame does (a short read or a torn tail).
    #[error("frame needs {needed} bytes, only {available} available")]
    Truncated { needed: usize, available: usize },
    /// A zero length field: preallocated space, the normal end of a segment's data.
    #[error("zero length field (end of data)")]
    EndOfData,
    #[error("length field {0} is out of range")]
    BadLength(u32),
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    /// CRC was right but the body is inconsistent: a writer bug, never a torn write.
    #[error("malformed record body: {0}")]
    Malformed(&'static str),
}

/// A decoded frame plus the bookkeeping fields recovery needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedFrame {
    pub record: Record,
    pub batch_delta: u32,
    /// Bytes the frame occupies on disk.
    pub frame_len: usize,
}

impl DecodedFrame {
    /// Offset of the first record of the write batch this record was written in.
    pub fn batch_base(&self) -> u64 {
        self.record
            .offset
            .saturating_sub(u64::from(self.batch_delta))
    }
}

/// Appends the frame of `rec` at `offset` to `out`. `rec.encoded_len()` must have succeeded.
pub fn encode_into(out: &mut Vec<u8>, rec: &NewRecord, offset: u64, batch_delta: u32) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_PREFIX_LEN]);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&rec.timestamp_ms.to_le_bytes());
    out.extend_from_slice(&batch_delta.to_le_bytes());
    let (flags, key) = match &rec.key {
        Some(k) => (FLAG_HAS_KEY, k.as_slice()),
        None => (0, &[][..]),
    };
    out.push(flags);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(rec.headers.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
    for h in &rec.headers {
        out.extend_from_slice(&(h.name.len() as u16).to_le_bytes());
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(&(h.value.len() as u32).to_le_bytes());
        out.extend_from_slice(&h.value);
    }
    out.extend_from_slice(&rec.payload);
    let length = (out.len() - start - 4) as u32;
    let crc = crc32c::crc32c(&out[start + FRAME_PREFIX_LEN..]);
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes one record into a fresh buffer.
pub fn encode(rec: &NewRecord, offset: u64, batch_delta: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(rec.encoded_len().unwrap_or(0));
    encode_into(&mut out, rec, offset, batch_delta);
    out
}

/// Reads the frame length (bytes on disk) announced at the start of `buf`, after
/// range-checking it against `max_frame_len`.
pub fn peek_frame_len(buf: &[u8], max_frame_len: usize) -> Result<usize, DecodeError> {
    if buf.len() < 4 {
        return Err(DecodeError::Truncated {
            needed: 4,
            available: buf.len(),
        });
    }
    let length = u32::from_le_bytes(buf[..4].try_into().unwrap());
    if length == 0 {
        return Err(DecodeError::EndOfData);
    }
    if length < MIN_LENGTH_FIELD || length as usize + 4 > max_frame_len {
        return Err(DecodeError::BadLength(length));
    }
    Ok(length as usize + 4)
}

/// Decodes the frame at the start of `buf`, verifying its CRC.
pub fn decode(buf: &[u8], max_frame_len: usize) -> Result<DecodedFrame, DecodeError> {
    let frame_len = peek_frame_len(buf, max_frame_len)?;
    if buf.len() < frame_len {
        return Err(DecodeError::Truncated {
            needed: frame_len,
            available: buf.len(),
        });
    }
    let stored = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    let body = &buf[FRAME_PREFIX_LEN..frame_len];
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(DecodeError::CrcMismatch { stored, computed });
    }
    let mut r = Reader { buf: body };
    let offset = r.u64()?;
    let timestamp_ms = r.u64()? as i64;
    let batch_delta = r.u32()?;
    let flags = r.u8()?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(DecodeError::Malformed("unknown flag bits"));
    }
    let key_len = r.u32()? as usize;
    let header_count = r.u16()?;
    let key = if flags & FLAG_HAS_KEY != 0 {
        Some(r.bytes(key_len)?.to_vec())
    } else if key_len != 0 {
        return Err(DecodeError::Malformed("key length without key flag"));
    } else {
        None
    };
    let mut headers = Vec::with_capacity(usize::from(header_count).min(64));
    for _ in 0..header_count {
        let name_len = r.u16()? as usize;
        let name = std::str::from_utf8(r.bytes(name_len)?)
            .map_err(|_| DecodeError::Malformed("header name is not UTF-8"))?
            .to_owned();
        let value_len = r.u32()? as usize;
        let value = r.bytes(value_len)?.to_vec();
        headers.push(Header { name, value });
    }
    let payload = r.buf.to_vec();
    Ok(DecodedFrame {
        record: Record {
            offset,
            timestamp_ms,
            key,
            headers,
            payload,
        },
        batch_delta,
        frame_len,
    })
}

/// Bounds-checked little-endian cursor over a CRC-verified body.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Malformed(
                "field runs past the end of the frame",
            ));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.bytes(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().unwrap()))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NewRecord {
        NewRecord {
            timestamp_ms: 1_700_000_000_123,
            key: Some(b"k1".to_vec()),
            headers: vec![Header::new("h", b"v".to_vec()), Header::new("", Vec::new())],
            payload: b"hello".to_vec(),
        }
    }

    #[test]
    fn round_trip_preserves_every_field() {
        let rec = sample();
        let bytes = encode(&rec, 42, 3);
        assert_eq!(bytes.len(), rec.encoded_len().unwrap());
        let d = decode(&bytes, 1 << 20).unwrap();
        assert_eq!(d.record.offset, 42);
        assert_eq!(d.batch_delta, 3);
        assert_eq!(d.batch_base(), 39);
        assert_eq!(d.record.key, rec.key);
        assert_eq!(d.record.headers, rec.headers);
        assert_eq!(d.record.payload, rec.payload);
        assert_eq!(d.record.timestamp_ms, rec.timestamp_ms);
        assert_eq!(d.frame_len, bytes.len());
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encode(&sample(), 7, 0);
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode(&b, 1 << 20).is_err(),
                "bit {bit} flip went unnoticed"
            );
        }
    }

    #[test]
    fn every_truncation_is_reported_as_truncated() {
        let bytes = encode(&sample(), 7, 0);
        for cut in 0..bytes.len() {
            match decode(&bytes[..cut], 1 << 20) {
                Err(DecodeError::Truncated { .. }) => {}
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn zero_length_is_end_of_data() {
        assert_eq!(decode(&[0u8; 64], 1 << 20), Err(DecodeError::EndOfData));
    }

    #[test]
    fn empty_key_is_distinct_from_no_key() {
        let mut rec = sample();
        rec.key = Some(Vec::new());
        assert_eq!(
            decode(&encode(&rec, 0, 0), 1 << 20).unwrap().record.key,
            Some(vec![])
        );
        rec.key = None;
        assert_eq!(
            decode(&encode(&rec, 0, 0), 1 << 20).unwrap().record.key,
            None
        );
    }
}
