//! Bytes for the group journal: one [`Event`] per journal record, tagged and versioned,
//! and the snapshot file that lets the journal be compacted (`docs/format.md`).
//! Decoding never panics on any input (fuzzed), it returns [`CodecError`].

use crate::bytes::{ReadError, Reader, put_str, put_u32, put_u64};
use crate::group::{AttemptSnapshot, AttemptState, Counters, Event, Millis, Snapshot};

const VERSION: u8 = 1;

const TAG_DELIVERED: u8 = 1;
const TAG_DEFERRED: u8 = 2;
const TAG_SKIPPED: u8 = 3;
const TAG_ACKED: u8 = 4;
const TAG_RELEASED: u8 = 5;
const TAG_DEAD_LETTERED: u8 = 6;
const TAG_EXPIRED_UNSETTLED: u8 = 7;
const TAG_SEEKED: u8 = 8;

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
    #[error("text is not UTF-8")]
    Utf8,
    #[error("not a group snapshot (bad magic)")]
    Magic,
    #[error("snapshot checksum mismatch")]
    Crc,
    #[error("a count is larger than the bytes that follow")]
    Count,
    #[error("presence flag {0} is neither 0 nor 1")]
    Flag(u8),
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
        Event::Seeked { to } => {
            w.push(TAG_SEEKED);
            put_u64(&mut w, *to);
        }
    }
    w
}

/// Encodes the events of one commit as one journal record: u32 count, then per event a
/// u32 length and [`encode_event`]'s bytes. One record per commit keeps the journal's
/// per-record overhead (frame, key, header) off the per-message path.
pub fn encode_events(events: &[(u32, Event)]) -> Vec<u8> {
    let mut w = Vec::with_capacity(4 + events.len() * 48);
    put_u32(&mut w, events.len() as u32);
    for (p, e) in events {
        let bytes = encode_event(*p, e);
        put_u32(&mut w, bytes.len() as u32);
        w.extend_from_slice(&bytes);
    }
    w
}

/// Decodes what [`encode_events`] wrote.
pub fn decode_events(bytes: &[u8]) -> Result<Vec<(u32, Event)>, CodecError> {
    let mut r = Reader(bytes);
    let n = r.count(4 + 14)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.u32()? as usize;
        out.push(decode_event(r.take(len)?)?);
    }
    if !r.0.is_empty() {
        return Err(CodecError::Trailing);
    }
    Ok(out)
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
        TAG_SEEKED => Event::Seeked { to: r.u64()? },
        t => return Err(CodecError::Tag(t)),
    };
    if !r.0.is_empty() {
        return Err(CodecError::Trailing);
    }
    Ok((partition, e))
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"SURETYGS";
/// 2 added the group's incarnation and, per partition, the seek count and counters
/// (`skipped_by_seek`, `replayed`); version 1 files still read.
pub const SNAPSHOT_VERSION: u16 = 2;

/// Every group of a topic at one point of its journal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicSnapshot {
    /// Journal records below this offset are reflected in the snapshot.
    pub journal_next: u64,
    pub groups: Vec<GroupSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSnapshot {
    pub name: String,
    /// Journal offset of the record that created the group (receipts carry it).
    pub incarnation: u64,
    pub purged: u64,
    pub resent: u64,
    /// Dead-letter log records at or above this id were written after the snapshot.
    pub dlq_next: u64,
    /// Live dead letters: (id, partition, offset).
    pub dead_letters: Vec<(u64, u32, u64)>,
    pub parts: Vec<Snapshot>,
}

/// Encodes a snapshot file: magic, version, body, CRC-32C of everything before it.
pub fn encode_snapshot(s: &TopicSnapshot) -> Vec<u8> {
    let mut w = Vec::new();
    w.extend_from_slice(SNAPSHOT_MAGIC);
    w.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    put_u64(&mut w, s.journal_next);
    put_u32(&mut w, s.groups.len() as u32);
    for g in &s.groups {
        put_str(&mut w, &g.name);
        put_u64(&mut w, g.incarnation);
        put_u64(&mut w, g.purged);
        put_u64(&mut w, g.resent);
        put_u64(&mut w, g.dlq_next);
        put_u32(&mut w, g.dead_letters.len() as u32);
        for &(id, p, o) in &g.dead_letters {
            put_u64(&mut w, id);
            put_u32(&mut w, p);
            put_u64(&mut w, o);
        }
        put_u32(&mut w, g.parts.len() as u32);
        for part in &g.parts {
            put_part(&mut w, part);
        }
    }
    let crc = crc32c::crc32c(&w);
    put_u32(&mut w, crc);
    w
}

fn put_part(w: &mut Vec<u8>, s: &Snapshot) {
    put_u64(w, s.start);
    put_u64(w, s.committed);
    put_u64(w, s.next_fresh);
    let c = &s.counters;
    for v in [
        c.acked,
        c.dead_lettered,
        c.skipped,
        c.expired_unsettled,
        c.redeliveries,
        c.skipped_by_seek,
        c.replayed,
    ] {
        put_u64(w, v);
    }
    put_u32(w, s.seeks);
    put_u32(w, s.settled.len() as u32);
    for &o in &s.settled {
        put_u64(w, o);
    }
    put_u32(w, s.attempts.len() as u32);
    for a in &s.attempts {
        put_u64(w, a.offset);
        put_u32(w, a.deliveries);
        put_opt(w, a.first_delivered_at);
        put_opt(w, a.last_delivered_at);
        match &a.last_reason {
            Some(r) => {
                w.push(1);
                put_str(w, r);
            }
            None => w.push(0),
        }
        match a.state {
            AttemptState::InFlight {
                delivery,
                lease_until,
            } => {
                w.push(1);
                put_u32(w, delivery);
                put_u64(w, lease_until);
            }
            AttemptState::Waiting { visible_at } => {
                w.push(2);
                put_u64(w, visible_at);
            }
        }
    }
}

/// Decodes what [`encode_snapshot`] wrote, verifying magic, version and checksum.
pub fn decode_snapshot(bytes: &[u8]) -> Result<TopicSnapshot, CodecError> {
    if bytes.len() < SNAPSHOT_MAGIC.len() + 2 + 4 || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(CodecError::Magic);
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if u32::from_le_bytes(crc.try_into().unwrap()) != crc32c::crc32c(body) {
        return Err(CodecError::Crc);
    }
    let mut r = Reader(&body[8..]);
    let version = u16::from_le_bytes(r.take(2)?.try_into().unwrap());
    if !(1..=SNAPSHOT_VERSION).contains(&version) {
        return Err(CodecError::Version(version as u8));
    }
    let journal_next = r.u64()?;
    let mut groups = Vec::new();
    for _ in 0..r.count(4)? {
        let name = r.string()?;
        let incarnation = if version >= 2 { r.u64()? } else { 0 };
        let purged = r.u64()?;
        let resent = r.u64()?;
        let dlq_next = r.u64()?;
        let mut dead_letters = Vec::new();
        for _ in 0..r.count(20)? {
            dead_letters.push((r.u64()?, r.u32()?, r.u64()?));
        }
        let mut parts = Vec::new();
        for _ in 0..r.count(64)? {
            parts.push(r.part(version)?);
        }
        groups.push(GroupSnapshot {
            name,
            incarnation,
            purged,
            resent,
            dlq_next,
            dead_letters,
            parts,
        });
    }
    if !r.0.is_empty() {
        return Err(CodecError::Trailing);
    }
    Ok(TopicSnapshot {
        journal_next,
        groups,
    })
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

impl From<ReadError> for CodecError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Short => CodecError::Short,
            ReadError::Count => CodecError::Count,
            ReadError::Utf8 => CodecError::Utf8,
        }
    }
}

/// The journal's and group snapshot's own reads, on the shared [`Reader`].
impl Reader<'_> {
    fn opt(&mut self) -> Result<Option<u64>, CodecError> {
        Ok(if self.present()? {
            Some(self.u64()?)
        } else {
            None
        })
    }
    /// A presence flag: exactly 0 or 1, so every accepted input re-encodes to itself.
    fn present(&mut self) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            f => Err(CodecError::Flag(f)),
        }
    }
    fn part(&mut self, version: u16) -> Result<Snapshot, CodecError> {
        let start = self.u64()?;
        let committed = self.u64()?;
        let next_fresh = self.u64()?;
        let mut counters = Counters {
            acked: self.u64()?,
            dead_lettered: self.u64()?,
            skipped: self.u64()?,
            expired_unsettled: self.u64()?,
            redeliveries: self.u64()?,
            skipped_by_seek: 0,
            replayed: 0,
        };
        let mut seeks = 0;
        if version >= 2 {
            counters.skipped_by_seek = self.u64()?;
            counters.replayed = self.u64()?;
            seeks = self.u32()?;
        }
        let mut settled = Vec::new();
        for _ in 0..self.count(8)? {
            settled.push(self.u64()?);
        }
        let mut attempts = Vec::new();
        for _ in 0..self.count(23)? {
            let offset = self.u64()?;
            let deliveries = self.u32()?;
            let first_delivered_at = self.opt()?;
            let last_delivered_at = self.opt()?;
            let last_reason = if self.present()? {
                Some(self.string()?)
            } else {
                None
            };
            let state = match self.u8()? {
                1 => AttemptState::InFlight {
                    delivery: self.u32()?,
                    lease_until: self.u64()?,
                },
                2 => AttemptState::Waiting {
                    visible_at: self.u64()?,
                },
                t => return Err(CodecError::Tag(t)),
            };
            attempts.push(AttemptSnapshot {
                offset,
                deliveries,
                first_delivered_at,
                last_delivered_at,
                last_reason,
                state,
            });
        }
        Ok(Snapshot {
            start,
            committed,
            next_fresh,
            settled,
            attempts,
            counters,
            seeks,
        })
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
            Event::Seeked { to: 19 },
        ]
    }

    #[test]
    fn snapshots_round_trip_and_any_damage_is_detected() {
        use crate::group::{FreshMessage, GroupPartition, GroupPolicy};
        let mut g = GroupPartition::new(GroupPolicy::default(), 0);
        let fresh: Vec<FreshMessage> = (0..6)
            .map(|offset| FreshMessage {
                offset,
                not_before: None,
                for_other_group: false,
            })
            .collect();
        g.plan_fetch(0, 6, 1_000, &fresh);
        g.plan_ack(1, 2, 1).unwrap();
        g.plan_nack(1, 3, 1, 50, "later".into()).unwrap();
        let snap = TopicSnapshot {
            journal_next: 77,
            groups: vec![GroupSnapshot {
                name: "billing".into(),
                incarnation: 3,
                purged: 1,
                resent: 2,
                dlq_next: 3,
                dead_letters: vec![(0, 0, 9)],
                parts: vec![
                    g.snapshot(),
                    GroupPartition::new(GroupPolicy::default(), 5).snapshot(),
                ],
            }],
        };
        let bytes = encode_snapshot(&snap);
        let back = decode_snapshot(&bytes).unwrap();
        assert_eq!(back, snap);
        let restored =
            GroupPartition::restore(GroupPolicy::default(), back.groups[0].parts[0].clone())
                .unwrap();
        assert_eq!(restored, g);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(decode_snapshot(&b).is_err(), "flip at {i}");
        }
        for cut in 0..bytes.len() {
            assert!(decode_snapshot(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn event_batches_round_trip_and_truncation_is_an_error() {
        let batch: Vec<(u32, Event)> = all_events()
            .into_iter()
            .enumerate()
            .map(|(i, e)| (i as u32, e))
            .collect();
        let bytes = encode_events(&batch);
        assert_eq!(decode_events(&bytes).unwrap(), batch);
        for cut in 0..bytes.len() {
            assert!(decode_events(&bytes[..cut]).is_err(), "cut at {cut}");
        }
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
