//! A Surety message as a Kafka record, and back. The key is the record's key (Kafka
//! partitions by it, so a key's records keep their order); the stamps, id and the
//! layer's data travel as headers under the names of `surety_core::wire`; application
//! headers pass as they are, except names under `surety.` (the layer's).

use std::collections::BTreeMap;

use rdkafka::Message as _;
use rdkafka::message::{Header, Headers as _, OwnedHeaders, OwnedMessage};
use surety_core::{ErrorKind, Headers, StampedMessage, TransportError, wire};

/// Deliveries of the message's current life before this copy was made (a retry copy's):
/// the count a delivery of the copy starts from.
pub const DELIVERIES: &str = "surety.deliveries";
/// Not delivered before this time (ms since the Unix epoch): a retry copy's delay.
pub const NOT_BEFORE: &str = "surety.not-before";
/// A dead-letter topic's record that is not a dead letter but an operation on some: its
/// value lists the ids (`resend` or `purge`) for the group of `surety.for-group`.
pub const DLQ_OP: &str = "surety.dlq-op";

/// The headers of a stamped message.
pub fn encode(m: &StampedMessage) -> Result<OwnedHeaders, TransportError> {
    let mut h = OwnedHeaders::new_with_capacity(m.message.headers.len() + 3);
    for (name, value) in &m.message.headers {
        if name.starts_with(wire::RESERVED_PREFIX) {
            return Err(TransportError::refused(
                ErrorKind::InvalidInput,
                format!(
                    "header {name:?}: names under {:?} are the layer's",
                    wire::RESERVED_PREFIX
                ),
            )
            .with_code("invalid_message"));
        }
        h = put(h, name, value.as_bytes());
    }
    h = put(h, wire::PRODUCER, m.producer_id.as_bytes());
    h = put(h, wire::SEQUENCE, m.sequence.to_string().as_bytes());
    if let Some(id) = &m.message.id {
        h = put(h, wire::ID, id.as_bytes());
    }
    Ok(h)
}

pub fn put(h: OwnedHeaders, name: &str, value: &[u8]) -> OwnedHeaders {
    h.insert(Header {
        key: name,
        value: Some(value),
    })
}

/// What the layer reads back from a record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decoded {
    /// The layer's headers (`surety.*`), as text.
    pub layer: BTreeMap<String, String>,
    /// The application's headers.
    pub headers: Headers,
}

impl Decoded {
    pub fn layer_u64(&self, name: &str) -> Option<u64> {
        self.layer.get(name).and_then(|v| v.parse().ok())
    }
}

pub fn decode(m: &OwnedMessage) -> Decoded {
    let mut d = Decoded::default();
    let Some(hs) = m.headers() else { return d };
    for h in hs.iter() {
        let Some(value) = h.value.and_then(|v| std::str::from_utf8(v).ok()) else {
            continue;
        };
        if h.key.starts_with(wire::RESERVED_PREFIX) {
            d.layer.insert(h.key.to_owned(), value.to_owned());
        } else {
            d.headers.insert(h.key.to_owned(), value.to_owned());
        }
    }
    d
}

/// The headers of a copy of `m` (a retry, a dead letter, a resend): its own, with the
/// layer's `set` written over them and `drop` removed.
pub fn copy_with(m: &OwnedMessage, set: &[(&str, String)], drop: &[&str]) -> OwnedHeaders {
    let mut h = OwnedHeaders::new();
    if let Some(old) = m.headers() {
        for old in old.iter() {
            if !drop.contains(&old.key) && !set.iter().any(|(s, _)| *s == old.key) {
                h = h.insert(Header {
                    key: old.key,
                    value: old.value,
                });
            }
        }
    }
    for (name, value) in set {
        h = put(h, name, value.as_bytes());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;
    use surety_core::Message;

    #[test]
    fn stamps_and_headers_round_trip_and_reserved_names_are_refused() {
        let m = StampedMessage {
            message: Message::new("x")
                .with_header("trace", "t1")
                .with_id("order-7"),
            producer_id: "p1".into(),
            sequence: 42,
        };
        let h = encode(&m).unwrap();
        let record = OwnedMessage::new(
            None,
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(h),
        );
        let d = decode(&record);
        assert_eq!(d.headers.get("trace").map(String::as_str), Some("t1"));
        assert_eq!(d.layer.get(wire::PRODUCER).map(String::as_str), Some("p1"));
        assert_eq!(d.layer_u64(wire::SEQUENCE), Some(42));
        assert_eq!(d.layer.get(wire::ID).map(String::as_str), Some("order-7"));
        let copy = copy_with(&record, &[(DELIVERIES, "3".into())], &[wire::ID]);
        let again = OwnedMessage::new(
            None,
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(copy),
        );
        let d = decode(&again);
        assert_eq!(d.layer_u64(DELIVERIES), Some(3));
        assert_eq!(d.layer.get(wire::ID), None);
        assert_eq!(d.layer_u64(wire::SEQUENCE), Some(42));

        let bad = StampedMessage {
            message: Message::new("x").with_header("surety.seq", "1"),
            ..m
        };
        assert_eq!(encode(&bad).unwrap_err().kind, ErrorKind::InvalidInput);
    }
}
