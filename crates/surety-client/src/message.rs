//! Messages as an application publishes and receives them.

use std::collections::HashMap;

use crate::proto;

/// A message to publish. The producer adds `producer_id` and `sequence`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub payload: Vec<u8>,
    pub key: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
    /// Deduplicated by the server inside the topic's dedupe window.
    pub id: Option<String>,
    /// Delayed delivery: not delivered before this time (ms since the Unix epoch).
    pub not_before_ms: Option<u64>,
}

impl Message {
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Self {
            payload: payload.into(),
            ..Self::default()
        }
    }

    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    pub(crate) fn into_proto(self, producer_id: &str, sequence: u64) -> proto::Message {
        proto::Message {
            payload: self.payload,
            key: self.key,
            headers: self.headers,
            id: self.id,
            producer_id: Some(producer_id.to_owned()),
            sequence: Some(sequence),
            not_before_ms: self.not_before_ms,
        }
    }
}

/// Where a published message is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub partition: u32,
    pub offset: u64,
    /// The producer sequence it was published with.
    pub sequence: u64,
    /// It had been stored before (an earlier attempt got through): the partition and
    /// offset are the original's.
    pub duplicate: bool,
}

/// A message leased to this consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub partition: u32,
    pub offset: u64,
    /// 1 for the first delivery.
    pub delivery_count: u32,
    pub key: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
    pub payload: Vec<u8>,
    pub timestamp_ms: i64,
    pub id: Option<String>,
    pub producer_id: Option<String>,
    pub sequence: Option<u64>,
    /// The lease ends here (ms since the Unix epoch); the server refuses a later ack.
    pub lease_until_ms: u64,
    pub receipt: String,
}

impl From<proto::Delivery> for Delivery {
    fn from(d: proto::Delivery) -> Self {
        Self {
            partition: d.partition,
            offset: d.offset,
            delivery_count: d.delivery_count,
            key: d.key,
            headers: d.headers,
            payload: d.payload,
            timestamp_ms: d.timestamp_ms,
            id: d.id,
            producer_id: d.producer_id,
            sequence: d.sequence,
            lease_until_ms: d.lease_until_ms,
            receipt: d.receipt,
        }
    }
}
