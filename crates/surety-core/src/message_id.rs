//! The inbox's key for a message: the same for every delivery of it, whatever redelivers
//! it (a nack, an expired lease, a resend from the dead letters, a relay that publishes
//! the same outbox row again).

use std::fmt;

/// `producer_id/sequence` when the message carries both (what every Surety producer and
/// the outbox relay stamp), else the message `id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(String);

impl MessageId {
    /// The id of a message with these stamps; `None` if it carries neither a producer
    /// sequence nor an id (such a message cannot be deduplicated).
    pub fn of(producer_id: Option<&str>, sequence: Option<u64>, id: Option<&str>) -> Option<Self> {
        match (producer_id, sequence, id) {
            (Some(p), Some(s), _) => Some(MessageId(format!("{p}/{s}"))),
            (_, _, Some(id)) => Some(MessageId(id.to_owned())),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_sequence_first_then_id() {
        let both = MessageId::of(Some("shop-1"), Some(7), Some("order-42")).unwrap();
        assert_eq!(both.as_str(), "shop-1/7");
        assert_eq!(
            MessageId::of(None, None, Some("order-42"))
                .unwrap()
                .to_string(),
            "order-42"
        );
        // Half a producer stamp is not an identity.
        assert_eq!(MessageId::of(Some("shop-1"), None, None), None);
        assert_eq!(MessageId::of(None, Some(7), None), None);
    }
}
