//! A delivery's receipt: the session (its consuming channel) and the delivery tag. A
//! delivery tag means something only on the channel that issued it, so a receipt of
//! another session is refused as stale: that channel is gone and the broker put the
//! message back when it closed.

use surety_core::{ErrorKind, Receipt, TransportError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub session: u64,
    pub tag: u64,
}

pub fn encode(p: Parsed) -> Receipt {
    Receipt::new(format!("amqp {} {}", p.session, p.tag))
}

pub fn decode(r: &Receipt) -> Result<Parsed, TransportError> {
    let bad = || {
        TransportError::refused(
            ErrorKind::UnknownReceipt,
            "not a RabbitMQ receipt (session, delivery tag)",
        )
        .with_code("receipt_invalid")
    };
    let mut t = r.as_str().split(' ');
    let (Some("amqp"), Some(session), Some(tag), None) = (t.next(), t.next(), t.next(), t.next())
    else {
        return Err(bad());
    };
    Ok(Parsed {
        session: session.parse().map_err(|_| bad())?,
        tag: tag.parse().map_err(|_| bad())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_round_trips_and_foreign_ones_are_refused() {
        let p = Parsed {
            session: 3,
            tag: 99,
        };
        assert_eq!(decode(&encode(p)).unwrap(), p);
        for bad in ["redis 1-2 c 1 2", "amqp x 1", "amqp 1", "amqp 1 2 3"] {
            assert_eq!(
                decode(&Receipt::new(bad)).unwrap_err().kind,
                ErrorKind::UnknownReceipt,
                "{bad}"
            );
        }
    }
}
