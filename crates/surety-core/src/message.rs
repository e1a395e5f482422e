//! One message concept for every transport: an application builds a [`Message`], the
//! producer stamps it once into a [`StampedMessage`] (its producer id and sequence, kept
//! across every retry), a transport stores it somewhere ([`Position`]) and answers
//! [`Published`]; a consumer gets it back as a [`Delivery`] with an opaque [`Receipt`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::MessageId;

/// Message headers. Names under `surety.` are the layer's own (the broker refuses them
/// from applications; backends carry the layer's data in them).
pub type Headers = BTreeMap<String, String>;

/// A message to publish. The producer adds the producer id and sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub payload: Vec<u8>,
    pub key: Option<Vec<u8>>,
    pub headers: Headers,
    /// Deduplicated by the transport inside its id window, where
    /// [`Capabilities::id_dedupe`](crate::Capabilities::id_dedupe) says it is.
    pub id: Option<String>,
    /// Delayed delivery: not delivered before this time (ms since the Unix epoch). Refused
    /// before sending where the transport cannot delay a publish.
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

    pub fn with_not_before_ms(mut self, at_ms: u64) -> Self {
        self.not_before_ms = Some(at_ms);
        self
    }
}

/// A message with the stamps that make its retries safe: sent as often as needed with the
/// same producer id and sequence, it is stored once where publish dedupe is native, and
/// recognised by the consumer side everywhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StampedMessage {
    pub message: Message,
    pub producer_id: Arc<str>,
    pub sequence: u64,
}

/// Stamped messages, ready to send and to send again. Cheap to clone (shared), so a
/// transport may keep it past the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch(Arc<[StampedMessage]>);

impl Batch {
    pub fn new(messages: Vec<StampedMessage>) -> Self {
        Self(messages.into())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn messages(&self) -> &[StampedMessage] {
        &self.0
    }

    pub fn iter(&self) -> std::slice::Iter<'_, StampedMessage> {
        self.0.iter()
    }

    /// The sequences, in message order.
    pub fn sequences(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().map(|m| m.sequence)
    }

    /// The messages at `indices` (in that order), same stamps: what a retry resends when
    /// only some of a batch failed.
    pub fn subset(&self, indices: &[usize]) -> Batch {
        Batch(indices.iter().map(|&i| self.0[i].clone()).collect())
    }
}

impl<'a> IntoIterator for &'a Batch {
    type Item = &'a StampedMessage;
    type IntoIter = std::slice::Iter<'a, StampedMessage>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Where a message is stored, in the transport's own terms.
///
/// Displayed as `0:17` (partition:offset), `s17` (stream sequence), `e1700000000000-3`
/// (entry id) or `-` (a transport whose confirm names no place).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Position {
    /// Surety, Kafka.
    Offset { partition: u32, offset: u64 },
    /// NATS JetStream stream sequence.
    StreamSeq(u64),
    /// Redis stream entry id.
    EntryId { ms: u64, seq: u64 },
    /// RabbitMQ: a publisher confirm names no place.
    Unaddressed,
}

impl Position {
    /// The ordering scope: the partition where there is one, else 0.
    pub fn partition(&self) -> u32 {
        match self {
            Position::Offset { partition, .. } => *partition,
            _ => 0,
        }
    }

    /// The offset (or stream sequence) where the transport numbers messages by one u64.
    pub fn offset(&self) -> Option<u64> {
        match self {
            Position::Offset { offset, .. } => Some(*offset),
            Position::StreamSeq(s) => Some(*s),
            _ => None,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Offset { partition, offset } => write!(f, "{partition}:{offset}"),
            Position::StreamSeq(s) => write!(f, "s{s}"),
            Position::EntryId { ms, seq } => write!(f, "e{ms}-{seq}"),
            Position::Unaddressed => f.write_str("-"),
        }
    }
}

/// Where a published message is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The producer sequence it was published with.
    pub sequence: u64,
    pub position: Position,
    /// It had been stored before (an earlier attempt, or another process with the same
    /// stamps, got through): the position is the original's.
    pub duplicate: bool,
}

impl Published {
    pub fn partition(&self) -> u32 {
        self.position.partition()
    }

    /// The offset, for offset-addressed transports (Surety, Kafka; NATS: the stream
    /// sequence); 0 where the transport names no number.
    pub fn offset(&self) -> u64 {
        self.position.offset().unwrap_or(0)
    }
}

/// Proof of a delivery, read only by the transport that issued it (Surety: the signed
/// receipt; NATS: the ack subject; RabbitMQ: channel + delivery tag; Kafka: generation,
/// partition, offset; Redis: entry id + consumer).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Receipt(Arc<str>);

impl Receipt {
    pub fn new(text: impl Into<Arc<str>>) -> Self {
        Self(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Receipt {
    /// Receipts are credentials of a sort (and long): show their length only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Receipt({} bytes)", self.0.len())
    }
}

impl fmt::Display for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Receipt {
    fn from(s: String) -> Self {
        Self(s.into())
    }
}

impl From<&str> for Receipt {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

/// A message leased to this consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub receipt: Receipt,
    pub position: Position,
    /// The ordering scope (partition, else 0): also the gap detector's key.
    pub partition: u32,
    /// 1 for the first delivery. How far to trust it: [`Capabilities::delivery_count`](crate::Capabilities::delivery_count).
    pub delivery_count: u32,
    /// When this message was first delivered to the group, where the transport knows.
    pub first_delivered_ms: Option<u64>,
    /// The lease ends here (ms since the Unix epoch); `None` where the lease is the
    /// connection's (Kafka, RabbitMQ).
    pub lease_until_ms: Option<u64>,
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub headers: Headers,
    pub payload: Vec<u8>,
    pub id: Option<String>,
    pub producer_id: Option<String>,
    pub sequence: Option<u64>,
}

impl Delivery {
    /// The offset (or stream sequence) where the transport numbers messages by one u64,
    /// else 0.
    pub fn offset(&self) -> u64 {
        self.position.offset().unwrap_or(0)
    }

    /// The inbox's key for this message, the same for every delivery of it.
    pub fn message_id(&self) -> Option<MessageId> {
        MessageId::of(
            self.producer_id.as_deref(),
            self.sequence,
            self.id.as_deref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(seq: u64) -> StampedMessage {
        StampedMessage {
            message: Message::new(format!("m{seq}")),
            producer_id: "p".into(),
            sequence: seq,
        }
    }

    #[test]
    fn a_subset_keeps_the_stamps() {
        let batch = Batch::new((10..15).map(stamped).collect());
        let again = batch.subset(&[1, 3]);
        assert_eq!(again.sequences().collect::<Vec<_>>(), vec![11, 13]);
        assert_eq!(again.messages()[1].message.payload, b"m13");
    }

    #[test]
    fn positions_display_in_their_transport_terms() {
        let shown: Vec<String> = [
            Position::Offset {
                partition: 2,
                offset: 17,
            },
            Position::StreamSeq(17),
            Position::EntryId { ms: 1700, seq: 3 },
            Position::Unaddressed,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(shown, ["2:17", "s17", "e1700-3", "-"]);
    }

    #[test]
    fn a_receipt_is_not_printed_in_debug_output() {
        let r = Receipt::new("secret-signature");
        assert_eq!(format!("{r:?}"), "Receipt(16 bytes)");
    }
}
