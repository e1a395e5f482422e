//! What Surety's own broker declares, shared by its two transports (the gRPC client and
//! the in-process broker): its capabilities, the meaning of its stable error codes, and
//! its dead-letter ids. One copy, so the two transports cannot drift apart;
//! `surety-embedded` tests these figures against the broker's own constants.

use std::time::Duration;

use crate::capabilities::{
    Capabilities, Confirm, DeadLetterCap, DeadLetterStore, DeadLetters, DedupeWindow,
    DeliveryCount, LeaseKind, Mechanism, NackDelay, Ordering, PublishDedupe, SettleAnswers,
};
use crate::error::{ErrorKind, Outcome, TransportError};
use crate::transport::Selection;

/// The last sequences per producer the broker remembers (`DedupeConfig::producer_window`).
pub const PRODUCER_WINDOW: u64 = 10_000;
/// A topic's default id dedupe window (`TopicConfig::dedupe_window_ms`).
pub const ID_DEDUPE_WINDOW: Duration = Duration::from_secs(120);
/// The longest nack delay (`limits::MAX_NACK_DELAY_MS`).
pub const MAX_NACK_DELAY: Duration = Duration::from_secs(12 * 3600);
/// The largest credit window (`limits::MAX_CREDITS`).
pub const MAX_CREDITS: u32 = 10_000;

/// A Surety broker's capabilities, reached through `transport`.
pub fn capabilities(transport: &'static str) -> Capabilities {
    Capabilities {
        transport,
        // Kept across restarts (the dedupe index is rebuilt from the log).
        publish_dedupe: PublishDedupe::Native {
            window: DedupeWindow::Sequences(PRODUCER_WINDOW),
        },
        // Unless the topic says otherwise (0 turns it off on that topic).
        id_dedupe: Some(ID_DEDUPE_WINDOW),
        // The broker refuses a batch whole when one message is refused.
        per_message_publish_answers: false,
        // The default durability; a topic with `durability: none` says PageCache in its
        // `TopicInfo::confirm`.
        confirm: Confirm::FsyncedOnNode,
        unknown_topic: Mechanism::Native,
        per_message_settle: Mechanism::Native,
        // Receipts are signed by the broker's key and name topic, group and delivery, so
        // they are valid in any session of the same broker.
        receipts_survive_reconnect: true,
        // Journalled before the answer.
        settle_answers: SettleAnswers::Confirmed,
        nack_delay: NackDelay::Native {
            max: MAX_NACK_DELAY,
        },
        delivery_count: DeliveryCount::Persistent,
        lease: LeaseKind::PerMessage { extend: false },
        dead_letters: DeadLetters {
            store: DeadLetterStore::Native,
            cap: DeadLetterCap::Broker,
            now: false,
        },
        group_resend: Mechanism::Native,
        ordering: Ordering::PerPartition,
        delayed_publish: true,
        max_credits: MAX_CREDITS,
        // Per topic (`max_message_bytes`), checked by the broker.
        max_message_bytes: None,
    }
}

/// What a Surety broker's stable code (docs/errors.md) means for the caller: its kind and
/// whether a retry may help. The same codes reach the gRPC client and the in-process
/// transport, so this is the one table for both. `None` for a code it does not know
/// (the caller then decides from its own transport, e.g. the gRPC status).
pub fn of_code(code: &str) -> Option<(ErrorKind, Outcome)> {
    use ErrorKind as K;
    use Outcome::{Refused, Retryable, Unknown};
    Some(match code {
        // Refused on their merits: the same call fails the same way.
        "invalid_name" => (K::InvalidName, Refused),
        "invalid_config" | "invalid_message" | "invalid_request" | "invalid_json" => {
            (K::InvalidInput, Refused)
        }
        "message_too_large" | "payload_too_large" => (K::TooLarge, Refused),
        "topic_not_found" => (K::TopicNotFound, Refused),
        "group_not_found" => (K::GroupNotFound, Refused),
        "sequence_too_old" => (K::SequenceTooOld, Refused),
        "unauthorized" => (K::Unauthorized, Refused),
        "topic_busy" => (K::Other, Refused),
        // Settlement refusals: the delivery is no longer this consumer's.
        "receipt_invalid" => (K::UnknownReceipt, Refused),
        "receipt_stale" | "not_delivered" => (K::Stale, Refused),
        "lease_expired" => (K::LeaseExpired, Refused),
        // The disk failed midway: the write may or may not be on it. A retry with the
        // same stamps settles it (dedupe).
        "storage_failure" => (K::Storage, Unknown),
        // Refused up front after an earlier storage failure; a broker restart brings the
        // topic back, and nothing of this call happened.
        "topic_failed" => (K::Storage, Retryable),
        // Stopped midway while shutting down: the outcome is unknown (docs/errors.md).
        "shutting_down" => (K::ShuttingDown, Unknown),
        // A stored record failed its CRC check: nothing of this call happened. The broker
        // holds the damaged record back and keeps serving the rest, so a consumer's next
        // fetch may well deliver (another partition); the damage stays until repaired.
        "data_corrupt" => (K::Storage, Retryable),
        // At open only: another broker holds the directory.
        "directory_in_use" => (K::Unavailable, Retryable),
        _ => return None,
    })
}

/// A Surety dead-letter id is a number (per group).
pub fn dead_letter_id(id: &str) -> Result<u64, TransportError> {
    id.parse().map_err(|_| {
        TransportError::refused(
            ErrorKind::InvalidInput,
            format!("dead-letter id {id:?} is not a Surety one (a number)"),
        )
        .with_code("invalid_request")
    })
}

/// The dead-letter ids a selection names; `None` for all of them.
pub fn dead_letter_ids(which: &Selection) -> Result<Option<Vec<u64>>, TransportError> {
    match which {
        Selection::All => Ok(None),
        Selection::Ids(ids) => ids
            .iter()
            .map(|id| dead_letter_id(id))
            .collect::<Result<_, _>>()
            .map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surety_codes_name_their_kind_and_outcome() {
        assert_eq!(
            of_code("topic_not_found"),
            Some((ErrorKind::TopicNotFound, Outcome::Refused))
        );
        assert_eq!(
            of_code("storage_failure"),
            Some((ErrorKind::Storage, Outcome::Unknown))
        );
        // Nothing happened, and a consumer's next fetch may deliver another partition.
        assert_eq!(
            of_code("data_corrupt"),
            Some((ErrorKind::Storage, Outcome::Retryable))
        );
        assert_eq!(of_code("internal"), None);
    }

    #[test]
    fn dead_letter_ids_are_numbers() {
        assert_eq!(dead_letter_id("17").unwrap(), 17);
        let e = dead_letter_id("0:17").unwrap_err();
        assert_eq!((e.kind, e.retryable()), (ErrorKind::InvalidInput, false));
    }
}
