//! How a broker message maps onto a log record: user headers as they are, broker
//! metadata in reserved headers under the `surety.` prefix (users may not set those).

use std::collections::BTreeMap;

use surety_log::{Header, NewRecord, Record};

use crate::error::BrokerError;
use crate::group::Millis;

pub const RESERVED_PREFIX: &str = "surety.";
const H_ID: &str = "surety.id";
const H_PRODUCER: &str = "surety.producer";
const H_SEQUENCE: &str = "surety.seq";
const H_NOT_BEFORE: &str = "surety.not-before";
/// A resend from a dead-letter queue: only this group receives it.
const H_FOR_GROUP: &str = "surety.for-group";
const H_RESENT_FROM: &str = "surety.resent-from";
const H_PRIOR_ATTEMPTS: &str = "surety.prior-attempts";

/// A message as a producer publishes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishMessage {
    pub key: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
    pub payload: Vec<u8>,
    /// Deduplicated inside the topic's dedupe window.
    pub id: Option<String>,
    /// With `sequence`: an idempotent producer; retries are stored once.
    pub producer_id: Option<String>,
    pub sequence: Option<u64>,
    /// Delayed delivery: not delivered before this time.
    pub not_before: Option<Millis>,
}

/// Where a dead letter that was resent came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    pub group: String,
    pub dead_letter_id: u64,
    pub prior_attempts: u32,
}

/// A stored message as a consumer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
    pub payload: Vec<u8>,
    pub id: Option<String>,
    pub producer_id: Option<String>,
    pub sequence: Option<u64>,
    pub not_before: Option<Millis>,
    pub lineage: Option<Lineage>,
}

impl PublishMessage {
    /// Checks what the log cannot: reserved names and half an idempotent-producer pair.
    pub fn validate(&self) -> Result<(), BrokerError> {
        if let Some(name) = self.headers.keys().find(|k| k.starts_with(RESERVED_PREFIX)) {
            return Err(BrokerError::InvalidMessage(format!(
                "header {name:?} uses the reserved prefix {RESERVED_PREFIX:?}"
            )));
        }
        if self.producer_id.is_some() != self.sequence.is_some() {
            return Err(BrokerError::InvalidMessage(
                "producer_id and sequence must be given together".into(),
            ));
        }
        if self.producer_id.as_deref() == Some("") || self.id.as_deref() == Some("") {
            return Err(BrokerError::InvalidMessage(
                "producer_id and id must not be empty".into(),
            ));
        }
        Ok(())
    }

    /// The size limits are measured against: payload, key and header names and values.
    pub fn size(&self) -> usize {
        self.payload.len()
            + self.key.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    pub fn to_record(&self, now_ms: i64, lineage: Option<&Lineage>) -> NewRecord {
        let mut headers: Vec<Header> = self
            .headers
            .iter()
            .map(|(k, v)| Header::new(k.clone(), v.as_bytes().to_vec()))
            .collect();
        if let Some(id) = &self.id {
            headers.push(Header::new(H_ID, id.as_bytes().to_vec()));
        }
        if let (Some(p), Some(s)) = (&self.producer_id, self.sequence) {
            headers.push(Header::new(H_PRODUCER, p.as_bytes().to_vec()));
            headers.push(Header::new(H_SEQUENCE, s.to_le_bytes().to_vec()));
        }
        if let Some(nb) = self.not_before {
            headers.push(Header::new(H_NOT_BEFORE, nb.to_le_bytes().to_vec()));
        }
        if let Some(l) = lineage {
            headers.push(Header::new(H_FOR_GROUP, l.group.as_bytes().to_vec()));
            headers.push(Header::new(
                H_RESENT_FROM,
                l.dead_letter_id.to_le_bytes().to_vec(),
            ));
            headers.push(Header::new(
                H_PRIOR_ATTEMPTS,
                l.prior_attempts.to_le_bytes().to_vec(),
            ));
        }
        NewRecord {
            timestamp_ms: now_ms,
            key: self.key.clone(),
            headers,
            payload: self.payload.clone(),
        }
    }
}

fn u64_of(v: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(v.try_into().ok()?))
}

fn u32_of(v: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(v.try_into().ok()?))
}

/// The dedupe keys of a stored partition record, read from its headers alone (no copy
/// of the payload or of user headers): what a restart replays into the dedupe table.
/// `None` for a record without keys and for a resend from a dead-letter queue (resends
/// bypass dedupe; they are not producer retries).
pub(crate) fn stored_key(partition: u32, r: &Record) -> Option<crate::dedupe::StoredKey> {
    let (mut id, mut producer, mut sequence) = (None, None, None);
    let (mut for_group, mut resent_from) = (false, false);
    for h in &r.headers {
        match h.name.as_str() {
            H_ID => id = Some(String::from_utf8_lossy(&h.value).into_owned()),
            H_PRODUCER => producer = Some(String::from_utf8_lossy(&h.value).into_owned()),
            H_SEQUENCE => sequence = u64_of(&h.value),
            H_FOR_GROUP => for_group = true,
            H_RESENT_FROM => resent_from = u64_of(&h.value).is_some(),
            _ => {}
        }
    }
    let producer = producer.zip(sequence);
    if (for_group && resent_from) || (id.is_none() && producer.is_none()) {
        return None;
    }
    Some(crate::dedupe::StoredKey {
        partition,
        offset: r.offset,
        timestamp: r.timestamp_ms.max(0) as u64,
        producer,
        id,
    })
}

impl StoredMessage {
    /// Splits a log record back into user headers and broker metadata.
    pub fn from_record(r: Record) -> StoredMessage {
        let mut m = StoredMessage {
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key: r.key,
            headers: BTreeMap::new(),
            payload: r.payload,
            id: None,
            producer_id: None,
            sequence: None,
            not_before: None,
            lineage: None,
        };
        let mut for_group = None;
        let mut resent_from = None;
        let mut prior = 0;
        for h in r.headers {
            let text = || String::from_utf8_lossy(&h.value).into_owned();
            match h.name.as_str() {
                H_ID => m.id = Some(text()),
                H_PRODUCER => m.producer_id = Some(text()),
                H_SEQUENCE => m.sequence = u64_of(&h.value),
                H_NOT_BEFORE => m.not_before = u64_of(&h.value),
                H_FOR_GROUP => for_group = Some(text()),
                H_RESENT_FROM => resent_from = u64_of(&h.value),
                H_PRIOR_ATTEMPTS => prior = u32_of(&h.value).unwrap_or(0),
                _ => {
                    let v = text();
                    m.headers.insert(h.name, v);
                }
            }
        }
        if let (Some(group), Some(dead_letter_id)) = (for_group, resent_from) {
            m.lineage = Some(Lineage {
                group,
                dead_letter_id,
                prior_attempts: prior,
            });
        }
        m
    }

    /// The message as it would be published again (for resend).
    pub fn to_publish(&self) -> PublishMessage {
        PublishMessage {
            key: self.key.clone(),
            headers: self.headers.clone(),
            payload: self.payload.clone(),
            id: self.id.clone(),
            producer_id: self.producer_id.clone(),
            sequence: self.sequence,
            not_before: None,
        }
    }
}
