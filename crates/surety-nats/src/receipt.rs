//! A delivery's receipt: its `$JS.ACK.…` reply subject (what the server settles by, on
//! any connection) and when this process received it. The reply subject carries the
//! stream, the consumer, the delivery count and the stream sequence (ADR-15, v1 and v2
//! forms), so a settlement needs nothing else.

use surety_core::{ErrorKind, Receipt, TransportError};

/// What a reply subject says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckInfo {
    pub stream: String,
    pub consumer: String,
    /// Deliveries so far, this one included.
    pub delivered: u64,
    pub stream_seq: u64,
    /// When the message was published (ns since the Unix epoch).
    pub published_ns: u64,
}

/// Parses `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>` (v1) or
/// `$JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<token>]` (v2).
pub fn parse_ack_subject(subject: &str) -> Option<AckInfo> {
    let rest = subject.strip_prefix("$JS.ACK.")?;
    let t: Vec<&str> = rest.split('.').collect();
    let at = match t.len() {
        7 => 0,
        n if n >= 9 => 2,
        _ => return None,
    };
    Some(AckInfo {
        stream: t[at].to_owned(),
        consumer: t[at + 1].to_owned(),
        delivered: t[at + 2].parse().ok()?,
        stream_seq: t[at + 3].parse().ok()?,
        published_ns: t[at + 5].parse().ok()?,
    })
}

/// The receipt of a delivery received at `received_ms`.
pub fn encode(reply: &str, received_ms: u64) -> Receipt {
    Receipt::new(format!("{reply} {received_ms}"))
}

/// A receipt's parts: the reply subject, what it says, when it was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub reply: String,
    pub info: AckInfo,
    pub received_ms: u64,
}

pub fn decode(r: &Receipt) -> Result<Parsed, TransportError> {
    let bad = || {
        TransportError::refused(
            ErrorKind::UnknownReceipt,
            "not a NATS JetStream receipt (a $JS.ACK subject and a time)",
        )
        .with_code("receipt_invalid")
    };
    let (reply, at) = r.as_str().rsplit_once(' ').ok_or_else(bad)?;
    let info = parse_ack_subject(reply).ok_or_else(bad)?;
    Ok(Parsed {
        reply: reply.to_owned(),
        info,
        received_ms: at.parse().map_err(|_| bad())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_subject_forms_parse() {
        let v1 = parse_ack_subject("$JS.ACK.orders.billing.3.100.7.1796237005768966665.4").unwrap();
        assert_eq!(
            (
                v1.stream.as_str(),
                v1.consumer.as_str(),
                v1.delivered,
                v1.stream_seq
            ),
            ("orders", "billing", 3, 100)
        );
        let v2 =
            parse_ack_subject("$JS.ACK._.hash.orders.billing.2.50.9.1796237005768966665.0.tok")
                .unwrap();
        assert_eq!(
            (v2.stream.as_str(), v2.delivered, v2.stream_seq),
            ("orders", 2, 50)
        );
        assert!(parse_ack_subject("$JS.ACK.a.b.c").is_none());
        assert!(parse_ack_subject("_INBOX.x").is_none());
    }

    #[test]
    fn a_receipt_round_trips_and_foreign_ones_are_refused() {
        let r = encode("$JS.ACK.t.g.1.5.5.1796237005768966665.0", 1700);
        let p = decode(&r).unwrap();
        assert_eq!((p.info.stream_seq, p.received_ms), (5, 1700));
        let e = decode(&Receipt::new("0:17 signed")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnknownReceipt);
    }
}
