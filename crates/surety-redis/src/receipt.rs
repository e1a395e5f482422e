//! A delivery's receipt: the entry id, the consumer that holds it, its delivery count
//! and when this process received it — everything the owner-checked settlement scripts
//! compare against the group's pending entry (XACK alone checks nothing, so a late ack
//! of an entry another consumer has reclaimed would otherwise apply silently).

use surety_core::{ErrorKind, Receipt, TransportError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub id: String,
    pub consumer: String,
    pub count: u32,
    pub received_ms: u64,
}

pub fn encode(p: &Parsed) -> Receipt {
    Receipt::new(format!(
        "redis {} {} {} {}",
        p.id, p.consumer, p.count, p.received_ms
    ))
}

pub fn decode(r: &Receipt) -> Result<Parsed, TransportError> {
    let bad = || {
        TransportError::refused(
            ErrorKind::UnknownReceipt,
            "not a Redis Streams receipt (entry id, consumer, count, time)",
        )
        .with_code("receipt_invalid")
    };
    let mut t = r.as_str().split(' ');
    if t.next() != Some("redis") {
        return Err(bad());
    }
    let (Some(id), Some(consumer), Some(count), Some(at), None) =
        (t.next(), t.next(), t.next(), t.next(), t.next())
    else {
        return Err(bad());
    };
    crate::entry::parse_id(id).ok_or_else(bad)?;
    Ok(Parsed {
        id: id.to_owned(),
        consumer: consumer.to_owned(),
        count: count.parse().map_err(|_| bad())?,
        received_ms: at.parse().map_err(|_| bad())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_round_trips_and_foreign_ones_are_refused() {
        let p = Parsed {
            id: "1700-3".into(),
            consumer: "c-1-2".into(),
            count: 2,
            received_ms: 99,
        };
        assert_eq!(decode(&encode(&p)).unwrap(), p);
        for bad in [
            "0:17 signed",
            "redis x c 1 2",
            "redis 1-2 c 1",
            "redis 1-2 c n 2",
        ] {
            assert_eq!(
                decode(&Receipt::new(bad)).unwrap_err().kind,
                ErrorKind::UnknownReceipt,
                "{bad}"
            );
        }
    }
}
