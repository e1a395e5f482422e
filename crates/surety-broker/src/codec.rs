//! Bytes for the group journal: one [`Event`] per journal record, tagged and versioned.
//! Decoding never panics on any input (fuzzed), it returns [`CodecError`].

use crate::group::{Event, Millis};

const VERSION: u8 = 1;

const TAG_DELIVERED: u8 = 1;
const TAG_DEFERRED: u8 = 2;
const TAG_SKIPPED: u8 = 3;
const TAG_ACKED: u8 = 4;
const TAG_RELEASED: u8 = 5;
const TAG_DEAD_LETTERED: u8 = 6;
const TAG_EXPIRED_UNSETTLED: u8 = 7;

/// Why journal bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("unsupported journal record version {0}")]
    Version(u8),
    #[error("unknown event tag {0}")]
    Tag(u8),
    #[error("record ends early")]
    Short,
    #[error("trailing bytes after the event")]
    Trailing,
    #[error("reason is not UTF-8")]
    Utf8,
}

/// Encodes an event for one partition of a group.
pub fn encode_event(partition: u32, e: &Event) -> Vec<u8> {
    let mut w = Vec::with_capacity(40);
    w.push(VERSION);
    w.extend_from_slice(&partition.to_le_bytes());
    match e {
        Event::Delivered {
            offset,
            delivery,
            at,
            lease_until,
        } => {
            w.push(TAG_DELIVERED);
            put_u64(&mut w, *offset);
            put_u32(&mut w, *delivery);
            put_u64(&mut w, *at);
            put_u64(&mut w, *lease_until);
        }
        Event::Deferred { offset, visible_at } => {
            w.push(TAG_DEFERRED);
            put_u64(&mut w, *offset);
            put_u64(&mut w, *visible_at);
        }
        Event::Skipped { offset } => {
            w.push(TAG_SKIPPED);
            put_u64(&mut w, *offset);
        }
        Event::Acked { offset, delivery } => {
            w.push(TAG_ACKED);
            put_u64(&mut w, *offset);
            put_u32(&mut w, *delivery);
        }
        Event::Released {
            offset,
            delivery,
            visible_at,
            reason,
            at,
        } => {
            w.push(TAG_RELEASED);
            put_u64(&mut w, *offset);
            put_u32(&mut w, *delivery);
            put_u64(&mut w, *visible_at);
            put_u64(&mut w, *at);
            put_str(&mut w, reason);
        }
        Event::DeadLettered {
            offset,
            reason,
            at,
            attempts,
            first_delivered_at,
            last_delivered_at,
        } => {
            w.push(TAG_DEAD_LETTERED);
            put_u64(&mut w, *offset);
            put_u64(&mut w, *at);
            put_u32(&mut w, *attempts);
            put_opt(&mut w, *first_delivered_at);
            put_opt(&mut w, *last_delivered_at);
            put_str(&mut w, reason);
        }
        Event::ExpiredUnsettled { below } => {
            w.push(TAG_EXPIRED_UNSETTLED);
            put_u64(&mut w, *below);
        }
    }
    w
}

/// Decodes what [`encode_event`] wrote: the partition and the event.
pub fn decode_event(bytes: &[u8]) -> Result<(u32, Event), CodecError> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    if version != VERSION {
        return Err(CodecError::Version(version));
    }
    let partition = r.u32()?;
    let tag = r.u8()?;
    let e = match tag {
        TAG_DELIVERED => Event::Delivered {
            offset: r.u64()?,
            delivery: r.u32()?,
            at: r.u64()?,
            lease_until: r.u64()?,
        },
        TAG_DEFERRED => Event::Deferred {
            offset: r.u64()?,
            visible_at: r.u64()?,
        },
        TAG_SKIPPED => Event::Skipped { offset: r.u64()? },
        TAG_ACKED => Event::Acked {
            offset: r.u64()?,
            delivery: r.u32()?,
        },
        TAG_RELEASED => Event::Released {
            offset: r.u64()?,
            delivery: r.u32()?,
            visible_at: r.u64()?,
            at: r.u64()?,
            reason: r.string()?,
        },
        TAG_DEAD_LETTERED => Event::DeadLettered {
            offset: r.u64()?,
            at: r.u64()?,
            attempts: r.u32()?,
            first_delivered_at: r.opt()?,
            last_delivered_at: r.opt()?,
            reason: r.string()?,
        },
        TAG_EXPIRED_UNSETTLED => Event::ExpiredUnsettled { below: r.u64()? },
        t => return Err(CodecError::Tag(t)),
    };
    if !r.0.is_empty() {
        return Err(CodecError::Trailing);
    }
    Ok((partition, e))
}

fn put_u32(w: &mut Vec<u8>, v: u32) {
    w.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(w: &mut Vec<u8>, v: u64) {
    w.extend_from_slice(&v.to_le_bytes());
}

fn put_opt(w: &mut Vec<u8>, v: Option<Millis>) {
    match v {
        Some(v) => {
            w.push(1);
            put_u64(w, v);
        }
        None => w.push(0),
    }
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    put_u32(w, s.len() as u32);
    w.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Short);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn opt(&mut self) -> Result<Option<u64>, CodecError> {
        match self.u8()? {
            0 => Ok(None),
            _ => Ok(Some(self.u64()?)),
        }
    }
    fn string(&mut self) -> Result<String, CodecError> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| CodecError::Utf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_events() -> Vec<Event> {
        vec![
            Event::Delivered {
                offset: 1,
                delivery: 2,
                at: 3,
                lease_until: 4,
            },
            Event::Deferred {
                offset: 5,
                visible_at: 6,
            },
            Event::Skipped { offset: 7 },
            Event::Acked {
                offset: 8,
                delivery: 9,
            },
            Event::Released {
                offset: 10,
                delivery: 11,
                visible_at: 12,
                reason: "timeout ✓".into(),
                at: 13,
            },
            Event::DeadLettered {
                offset: 14,
                reason: String::new(),
                at: 15,
                attempts: 16,
                first_delivered_at: Some(17),
                last_delivered_at: None,
            },
            Event::ExpiredUnsettled { below: 18 },
        ]
    }

    #[test]
    fn every_event_round_trips() {
        for e in all_events() {
            let bytes = encode_event(3, &e);
            assert_eq!(decode_event(&bytes).unwrap(), (3, e));
        }
    }

    #[test]
    fn every_truncation_and_extension_is_an_error() {
        for e in all_events() {
            let bytes = encode_event(0, &e);
            for cut in 0..bytes.len() {
                assert!(decode_event(&bytes[..cut]).is_err(), "{e:?} cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(decode_event(&longer), Err(CodecError::Trailing));
        }
    }
}
