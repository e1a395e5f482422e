//! How a message is laid out as a stream entry's fields, and read back.
//!
//! | field | holds |
//! |---|---|
//! | `payload` | the payload (bytes) |
//! | `key` | the key (bytes), if any |
//! | `h:<name>` | an application header |
//! | `surety.producer`, `surety.seq`, `surety.id` | the stamps ([`wire`]) |
//! | `surety.for-group`, `surety.attempts`, `surety.first-delivered`, ... | a resent or dead letter's data |

use redis::Value;
use surety_core::{ErrorKind, Headers, Position, StampedMessage, TransportError, wire};

pub const PAYLOAD: &str = "payload";
pub const KEY: &str = "key";
pub const HEADER_PREFIX: &str = "h:";

/// The fields of a stamped message, name then value.
pub fn encode(m: &StampedMessage) -> Result<Vec<Vec<u8>>, TransportError> {
    let msg = &m.message;
    let mut f: Vec<Vec<u8>> = Vec::with_capacity(8 + msg.headers.len() * 2);
    f.push(PAYLOAD.into());
    f.push(msg.payload.clone());
    if let Some(k) = &msg.key {
        f.push(KEY.into());
        f.push(k.clone());
    }
    f.push(wire::PRODUCER.into());
    f.push(m.producer_id.as_bytes().to_vec());
    f.push(wire::SEQUENCE.into());
    f.push(m.sequence.to_string().into_bytes());
    if let Some(id) = &msg.id {
        f.push(wire::ID.into());
        f.push(id.clone().into_bytes());
    }
    for (name, value) in &msg.headers {
        if name.starts_with(wire::RESERVED_PREFIX) {
            return Err(TransportError::refused(
                ErrorKind::InvalidInput,
                format!(
                    "header {name:?}: names under {:?} are reserved",
                    wire::RESERVED_PREFIX
                ),
            ));
        }
        f.push(format!("{HEADER_PREFIX}{name}").into_bytes());
        f.push(value.clone().into_bytes());
    }
    Ok(f)
}

/// A stream entry read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub payload: Vec<u8>,
    pub key: Option<Vec<u8>>,
    pub headers: Headers,
    /// The layer's `surety.*` fields.
    pub layer: Headers,
}

impl Entry {
    pub fn position(&self) -> Position {
        parse_id(&self.id).unwrap_or(Position::EntryId { ms: 0, seq: 0 })
    }

    pub fn layer_u64(&self, name: &str) -> Option<u64> {
        self.layer.get(name).and_then(|v| v.parse().ok())
    }
}

/// `1700000000000-3` as a position.
pub fn parse_id(id: &str) -> Option<Position> {
    let (ms, seq) = id.split_once('-')?;
    Some(Position::EntryId {
        ms: ms.parse().ok()?,
        seq: seq.parse().ok()?,
    })
}

/// The bytes of a string-ish value.
pub fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

pub fn text(v: &Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b).ok())
}

pub fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

pub fn array(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

pub fn protocol(what: &str) -> TransportError {
    TransportError::refused(
        ErrorKind::Protocol,
        format!("unexpected Redis answer: {what}"),
    )
}

/// `[id, [field, value, ...]]`.
pub fn decode(v: &Value) -> Result<Entry, TransportError> {
    let parts = array(v);
    let id = parts
        .first()
        .and_then(text)
        .ok_or_else(|| protocol("an entry without an id"))?;
    let mut e = Entry {
        id,
        ..Entry::default()
    };
    let fields = parts.get(1).map(array).unwrap_or(&[]);
    for pair in fields.chunks(2) {
        let (Some(name), Some(value)) = (pair.first().and_then(text), pair.get(1).and_then(bytes))
        else {
            continue;
        };
        if name == PAYLOAD {
            e.payload = value;
        } else if name == KEY {
            e.key = Some(value);
        } else if let Some(h) = name.strip_prefix(HEADER_PREFIX) {
            e.headers
                .insert(h.to_owned(), String::from_utf8_lossy(&value).into_owned());
        } else if name.starts_with(wire::RESERVED_PREFIX) {
            e.layer
                .insert(name, String::from_utf8_lossy(&value).into_owned());
        } else {
            // A foreign producer's field: kept as a header.
            e.headers
                .insert(name, String::from_utf8_lossy(&value).into_owned());
        }
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use surety_core::Message;

    #[test]
    fn a_message_round_trips_through_its_fields() {
        let m = StampedMessage {
            message: Message::new("pay")
                .with_key(vec![0xff, 0])
                .with_header("a", "1")
                .with_id("m-1"),
            producer_id: "p".into(),
            sequence: 7,
        };
        let f = encode(&m).unwrap();
        let v = Value::Array(vec![
            Value::BulkString(b"1700-3".to_vec()),
            Value::Array(f.into_iter().map(Value::BulkString).collect()),
        ]);
        let e = decode(&v).unwrap();
        assert_eq!(e.payload, b"pay");
        assert_eq!(e.key, Some(vec![0xff, 0]));
        assert_eq!(e.headers.get("a").map(String::as_str), Some("1"));
        assert_eq!(e.layer_u64(wire::SEQUENCE), Some(7));
        assert_eq!(e.layer.get(wire::ID).map(String::as_str), Some("m-1"));
        assert_eq!(e.position(), Position::EntryId { ms: 1700, seq: 3 });
        let bad = StampedMessage {
            message: Message::new("x").with_header("surety.seq", "1"),
            ..m
        };
        assert_eq!(encode(&bad).unwrap_err().kind, ErrorKind::InvalidInput);
    }
}
