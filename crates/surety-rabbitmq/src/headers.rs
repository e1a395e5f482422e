//! A Surety message in AMQP properties and headers, and back. The stamps, id and key
//! travel under the names of `surety_core::wire` (the key as raw bytes: an AMQP long
//! string holds any); the AMQP `message-id` is the message's id, else `<producer
//! id>:<sequence>`; every message is persistent (delivery mode 2). Application headers
//! pass as they are, except names under `surety.` (the layer's), `x-` (RabbitMQ acts on
//! some: `x-delay`, `x-match`, ...) and `CC`/`BCC` (sender-selected routing).

use std::collections::BTreeMap;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use surety_core::{ErrorKind, Headers, StampedMessage, TransportError, wire};

/// Deliveries of the message's current life before this copy was made (a retry copy's;
/// absent on a first copy and on a resend): the count a delivery starts from.
pub const DELIVERIES: &str = "surety.deliveries";
/// The id of a dead letter, unique in its queue: a number, as on every backend (the
/// CLI's `dlq show ID`), below 2^53 so that JSON tools keep it exact.
pub const DEAD_LETTER_ID: &str = "surety.dl-id";

const ID_MASK: u64 = (1 << 53) - 1;

/// A new dead-letter id: the time, the process and a counter, mixed (ids need only be
/// unique, not ordered: a page is in queue order).
pub fn new_dead_letter_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    mix(nanos
        ^ (u64::from(std::process::id()) << 40)
        ^ N.fetch_add(1, Ordering::Relaxed).rotate_left(20))
}

/// The id of a dead letter RabbitMQ made itself (no Surety id): its message id, hashed.
pub fn dead_letter_id_of(message_id: &str) -> u64 {
    mix(message_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }))
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) & ID_MASK
}
/// The broker's count of a quorum queue message's earlier failed deliveries.
pub const X_DELIVERY_COUNT: &str = "x-delivery-count";

fn invalid(message: String) -> TransportError {
    TransportError::refused(ErrorKind::InvalidInput, message).with_code("invalid_message")
}

/// Headers RabbitMQ itself adds to a message it dead-letters or redelivers.
fn broker_header(name: &str) -> bool {
    name.starts_with("x-death")
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
        || name == X_DELIVERY_COUNT
        || name == "x-acquired-count"
        || name == "x-stream-offset"
}

/// The properties of a stamped message published at `now_ms`.
pub fn encode(m: &StampedMessage, now_ms: u64) -> Result<BasicProperties, TransportError> {
    let mut t = FieldTable::default();
    for (name, value) in &m.message.headers {
        let lower = name.to_ascii_lowercase();
        if name.starts_with(wire::RESERVED_PREFIX)
            || lower.starts_with("x-")
            || lower == "cc"
            || lower == "bcc"
        {
            return Err(invalid(format!(
                "header {name:?}: names under {:?} and \"x-\", and CC/BCC, are reserved on RabbitMQ",
                wire::RESERVED_PREFIX
            )));
        }
        put(&mut t, name, value.as_bytes())?;
    }
    put(&mut t, wire::PRODUCER, m.producer_id.as_bytes())?;
    put(&mut t, wire::SEQUENCE, m.sequence.to_string().as_bytes())?;
    if let Some(id) = &m.message.id {
        put(&mut t, wire::ID, id.as_bytes())?;
    }
    if let Some(key) = &m.message.key {
        put(&mut t, wire::KEY, key)?;
    }
    let message_id = m
        .message
        .id
        .clone()
        .unwrap_or_else(|| format!("{}:{}", m.producer_id, m.sequence));
    Ok(BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(short(&message_id)?)
        .with_timestamp(now_ms / 1000)
        .with_headers(t))
}

/// Adds one header, checked (AMQP names are short strings: at most 255 bytes).
pub fn put(t: &mut FieldTable, name: &str, value: &[u8]) -> Result<(), TransportError> {
    t.insert(
        short(name)?,
        AMQPValue::LongString(LongString::from(value.to_vec())),
    );
    Ok(())
}

fn short(s: &str) -> Result<ShortString, TransportError> {
    ShortString::try_new(s.to_owned())
        .map_err(|_| invalid(format!("{s:?} is longer than AMQP's 255 bytes")))
}

/// What the layer reads back from a delivered message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decoded {
    /// The layer's headers (`surety.*`), as text; the key is in `key`.
    pub layer: BTreeMap<String, String>,
    pub key: Option<Vec<u8>>,
    /// The application's headers.
    pub headers: Headers,
    /// Earlier failed deliveries of this copy, as the broker counted them.
    pub broker_returns: u32,
    /// Why the broker dead-lettered it (`x-first-death-reason`: `delivery_limit`, ...).
    pub broker_death: Option<String>,
}

impl Decoded {
    pub fn layer_u64(&self, name: &str) -> Option<u64> {
        self.layer.get(name).and_then(|v| v.parse().ok())
    }
}

pub fn decode(p: &BasicProperties) -> Decoded {
    let mut d = Decoded::default();
    let Some(t) = p.headers() else { return d };
    for (name, value) in t.inner() {
        let name = name.as_str();
        if name == X_DELIVERY_COUNT {
            d.broker_returns = int(value).unwrap_or(0).min(u64::from(u32::MAX)) as u32;
        } else if name == "x-first-death-reason" {
            d.broker_death = text(value);
        } else if broker_header(name) {
        } else if name == wire::KEY {
            d.key = bytes(value);
        } else if name.starts_with(wire::RESERVED_PREFIX) {
            if let Some(v) = text(value) {
                d.layer.insert(name.to_owned(), v);
            }
        } else if let Some(v) = text(value) {
            d.headers.insert(name.to_owned(), v);
        }
    }
    d
}

/// The properties of a copy of `p` (a retry, a dead letter, a resend): its own headers
/// with the layer's `set` written over them and `drop` removed, the broker's taken out.
pub fn copy_with(p: &BasicProperties, set: &[(&str, String)], drop: &[&str]) -> BasicProperties {
    let mut t = FieldTable::default();
    if let Some(old) = p.headers() {
        for (name, value) in old.inner() {
            let n = name.as_str();
            if !broker_header(n) && !drop.contains(&n) && !set.iter().any(|(s, _)| *s == n) {
                t.insert(name.clone(), value.clone());
            }
        }
    }
    for (name, value) in set {
        t.insert(
            ShortString::from(*name),
            AMQPValue::LongString(LongString::from(value.as_bytes().to_vec())),
        );
    }
    p.clone().with_delivery_mode(2).with_headers(t)
}

fn bytes(v: &AMQPValue) -> Option<Vec<u8>> {
    match v {
        AMQPValue::LongString(s) => Some(s.as_bytes().to_vec()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes().to_vec()),
        AMQPValue::ByteArray(b) => Some(b.as_slice().to_vec()),
        _ => None,
    }
}

fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => int(other).map(|n| n.to_string()),
    }
}

fn int(v: &AMQPValue) -> Option<u64> {
    match *v {
        AMQPValue::ShortShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(n.into()),
        AMQPValue::ShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::ShortUInt(n) => Some(n.into()),
        AMQPValue::LongInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongUInt(n) => Some(n.into()),
        AMQPValue::LongLongInt(n) => u64::try_from(n).ok(),
        AMQPValue::Timestamp(n) => Some(n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use surety_core::Message;

    #[test]
    fn a_message_round_trips_and_reserved_names_are_refused() {
        let m = StampedMessage {
            message: Message::new("x")
                .with_key(vec![0xff, 0])
                .with_id("order-1")
                .with_header("trace", "t1"),
            producer_id: Arc::from("p1"),
            sequence: 7,
        };
        let p = encode(&m, 1_700_000_000_123).unwrap();
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("order-1"));
        let d = decode(&p);
        assert_eq!(d.key, Some(vec![0xff, 0]));
        assert_eq!(d.layer_u64(wire::SEQUENCE), Some(7));
        assert_eq!(d.layer.get(wire::PRODUCER).map(String::as_str), Some("p1"));
        assert_eq!(d.headers.get("trace").map(String::as_str), Some("t1"));
        let c = decode(&copy_with(&p, &[(DELIVERIES, "2".into())], &[wire::ID]));
        assert_eq!(c.layer_u64(DELIVERIES), Some(2));
        assert!(!c.layer.contains_key(wire::ID));
        for bad in ["surety.x", "x-delay", "CC", "bcc"] {
            let mut m = m.clone();
            m.message.headers.insert(bad.into(), "v".into());
            assert_eq!(
                encode(&m, 0).unwrap_err().kind,
                ErrorKind::InvalidInput,
                "{bad}"
            );
        }
    }
}
