//! A Surety message in NATS headers, and back: the stamps, id and key travel under the
//! names of `surety_core::wire`; `Nats-Msg-Id` is `<producer id>:<sequence>`, so the
//! stream's duplicate window answers a retried stamp with the original's sequence.
//! Application headers pass as they are; names under `surety.` and `Nats-` are refused
//! from applications (the first are the layer's, the second change what the server
//! does), and so are values with CR or LF, which a NATS header cannot hold.

use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use surety_core::{ErrorKind, Headers, StampedMessage, TransportError, wire};

/// JetStream's dedupe header.
pub const MSG_ID: &str = "Nats-Msg-Id";

/// The `Nats-Msg-Id` of a stamped message.
pub fn msg_id(producer: &str, sequence: u64) -> String {
    format!("{producer}:{sequence}")
}

fn invalid(message: String) -> TransportError {
    TransportError::refused(ErrorKind::InvalidInput, message).with_code("invalid_message")
}

/// Adds one header, checked.
pub fn put(h: &mut HeaderMap, name: &str, value: &str) -> Result<(), TransportError> {
    let n: HeaderName = name
        .parse()
        .map_err(|_| invalid(format!("header name {name:?} is not valid on NATS")))?;
    let v: HeaderValue = value.parse().map_err(|_| {
        invalid(format!(
            "header {name:?}: a NATS header value cannot hold CR or LF"
        ))
    })?;
    h.insert(n, v);
    Ok(())
}

/// The headers of a stamped message.
pub fn encode(m: &StampedMessage) -> Result<HeaderMap, TransportError> {
    let mut h = HeaderMap::new();
    for (name, value) in &m.message.headers {
        if name.starts_with(wire::RESERVED_PREFIX) || name.to_ascii_lowercase().starts_with("nats-")
        {
            return Err(invalid(format!(
                "header {name:?}: names under {:?} and \"Nats-\" are reserved",
                wire::RESERVED_PREFIX
            )));
        }
        put(&mut h, name, value)?;
    }
    put(&mut h, MSG_ID, &msg_id(&m.producer_id, m.sequence))?;
    put(&mut h, wire::PRODUCER, &m.producer_id)?;
    put(&mut h, wire::SEQUENCE, &m.sequence.to_string())?;
    if let Some(id) = &m.message.id {
        put(&mut h, wire::ID, id)?;
    }
    if let Some(key) = &m.message.key {
        put_key(&mut h, key)?;
    }
    Ok(h)
}

/// A key as text where it is text a header can hold, else base64.
pub fn put_key(h: &mut HeaderMap, key: &[u8]) -> Result<(), TransportError> {
    match std::str::from_utf8(key) {
        Ok(text) if !text.contains(['\r', '\n']) && text.trim() == text => put(h, wire::KEY, text),
        _ => put(h, wire::KEY_B64, &B64.encode(key)),
    }
}

/// What a stored message's headers say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Application headers (not `surety.` or `Nats-`).
    pub headers: Headers,
    /// The layer's own (`surety.*`).
    pub layer: Headers,
    pub key: Option<Vec<u8>>,
    pub id: Option<String>,
    pub producer_id: Option<String>,
    pub sequence: Option<u64>,
}

impl Decoded {
    pub fn layer_u64(&self, name: &str) -> Option<u64> {
        self.layer.get(name).and_then(|v| v.parse().ok())
    }
}

/// Reads a message's headers (the last value of a repeated name).
pub fn decode(h: Option<&HeaderMap>) -> Decoded {
    let mut d = Decoded::default();
    let Some(h) = h else {
        return d;
    };
    for (name, values) in h.iter() {
        let name: &str = name.as_ref();
        let Some(value) = values.last().map(|v| v.as_str().to_owned()) else {
            continue;
        };
        if name.starts_with(wire::RESERVED_PREFIX) {
            d.layer.insert(name.to_owned(), value);
        } else if !name.to_ascii_lowercase().starts_with("nats-") {
            d.headers.insert(name.to_owned(), value);
        }
    }
    d.id = d.layer.get(wire::ID).cloned();
    d.producer_id = d.layer.get(wire::PRODUCER).cloned();
    d.sequence = d.layer_u64(wire::SEQUENCE);
    d.key = match (d.layer.get(wire::KEY), d.layer.get(wire::KEY_B64)) {
        (Some(k), _) => Some(k.clone().into_bytes()),
        (None, Some(b)) => B64.decode(b).ok(),
        _ => None,
    };
    d
}

/// Parses a NATS header block (`NATS/1.0\r\nName: value\r\n\r\n`), as the JetStream API
/// returns it (base64) for a stored message.
pub fn parse_block(block: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    let text = String::from_utf8_lossy(block);
    for line in text.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(n), Ok(v)) = (
                name.trim().parse::<HeaderName>(),
                value.trim().parse::<HeaderValue>(),
            )
        {
            h.append(n, v);
        }
    }
    h
}

/// A header value from free text (a handler's error): one line, at most `max` bytes.
pub fn one_line(text: &str, max: usize) -> String {
    let mut s: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use surety_core::Message;

    fn stamped(m: Message) -> StampedMessage {
        StampedMessage {
            message: m,
            producer_id: "p1".into(),
            sequence: 7,
        }
    }

    #[test]
    fn a_message_round_trips_through_headers() {
        let m = Message::new("x")
            .with_key("order-1")
            .with_id("id-9")
            .with_header("trace", "abc");
        let h = encode(&stamped(m)).unwrap();
        assert_eq!(h.get(MSG_ID).unwrap().as_str(), "p1:7");
        let d = decode(Some(&h));
        assert_eq!(d.producer_id.as_deref(), Some("p1"));
        assert_eq!(d.sequence, Some(7));
        assert_eq!(d.id.as_deref(), Some("id-9"));
        assert_eq!(d.key.as_deref(), Some(&b"order-1"[..]));
        assert_eq!(d.headers.get("trace").map(String::as_str), Some("abc"));
        assert!(!d.headers.contains_key(MSG_ID), "Nats-* stays out: {d:?}");
    }

    #[test]
    fn binary_keys_travel_as_base64() {
        let key = vec![0u8, 159, 146, 150, b'\n'];
        let h = encode(&stamped(Message::new("x").with_key(key.clone()))).unwrap();
        assert!(h.get(wire::KEY).is_none());
        assert_eq!(decode(Some(&h)).key, Some(key));
    }

    #[test]
    fn reserved_names_and_line_breaks_are_refused() {
        for m in [
            Message::new("x").with_header("surety.seq", "1"),
            Message::new("x").with_header("Nats-Msg-Id", "forged"),
            Message::new("x").with_header("a", "two\r\nlines"),
            Message::new("x").with_header("bad:name", "v"),
            Message::new("x").with_id("a\nb"),
        ] {
            let e = encode(&stamped(m.clone())).unwrap_err();
            assert_eq!(
                (e.kind, e.retryable()),
                (ErrorKind::InvalidInput, false),
                "{m:?}"
            );
        }
    }

    #[test]
    fn a_header_block_parses() {
        let h = parse_block(b"NATS/1.0\r\nsurety.seq: 3\r\nNats-Msg-Id: p:3\r\n\r\n");
        assert_eq!(decode(Some(&h)).sequence, Some(3));
        assert_eq!(h.get(MSG_ID).unwrap().as_str(), "p:3");
    }

    #[test]
    fn free_text_becomes_one_bounded_line() {
        assert_eq!(one_line("boom\r\nat line 2", 100), "boom  at line 2");
        assert_eq!(one_line("ééé", 3), "é");
    }
}
