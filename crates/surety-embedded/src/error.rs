//! Broker errors as transport errors: the one place that decides, for every broker
//! error, its transport-neutral kind and whether a retry may help ([`Outcome`]). The
//! drivers retry on the outcome alone, so this table is what makes an in-process publish
//! retried (or not) exactly like one over gRPC.
//!
//! Mapped by the stable code (`BrokerError::code`, docs/errors.md), as the gRPC status
//! mapping is, so the table in docs/errors.md is the whole truth and a new broker error
//! under an existing code needs nothing here. The code travels along in
//! [`TransportError::code`].

use surety_broker::BrokerError;
use surety_core::surety::of_code;
use surety_core::{ErrorKind, Outcome, TransportError};

/// The transport error for a broker error.
pub fn transport_error(e: &BrokerError) -> TransportError {
    let code = e.code();
    let (kind, outcome) = classify(code);
    TransportError::new(kind, outcome, e.to_string()).with_code(code)
}

/// The shared table of Surety codes (`surety_core::surety::of_code`); a code it does not
/// know yet is taken at its worst for a retry loop (it may have happened), so dedupe can
/// settle it, rather than claimed to have done nothing.
fn classify(code: &str) -> (ErrorKind, Outcome) {
    of_code(code).unwrap_or((ErrorKind::Other, Outcome::Unknown))
}

#[cfg(test)]
mod tests {
    use super::*;
    use surety_broker::SettleError;

    fn mapped(e: BrokerError) -> (ErrorKind, Outcome, String) {
        let t = transport_error(&e);
        assert_eq!(t.message, e.to_string());
        (t.kind, t.outcome, t.code.unwrap())
    }

    fn refused(kind: ErrorKind, code: &str) -> (ErrorKind, Outcome, String) {
        (kind, Outcome::Refused, code.to_owned())
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(
            mapped(BrokerError::InvalidName("x".into())),
            refused(ErrorKind::InvalidName, "invalid_name")
        );
        assert_eq!(
            mapped(BrokerError::InvalidConfig("x".into())),
            refused(ErrorKind::InvalidInput, "invalid_config")
        );
        assert_eq!(
            mapped(BrokerError::InvalidMessage("x".into())),
            refused(ErrorKind::InvalidInput, "invalid_message")
        );
        assert_eq!(
            mapped(surety_broker::limits::check_lease_ms(0).unwrap_err()),
            refused(ErrorKind::InvalidInput, "invalid_request")
        );
        assert_eq!(
            mapped(BrokerError::MessageTooLarge { size: 2, max: 1 }),
            refused(ErrorKind::TooLarge, "message_too_large")
        );
    }

    #[test]
    fn missing_things_are_refused() {
        assert_eq!(
            mapped(BrokerError::TopicNotFound("t".into())),
            refused(ErrorKind::TopicNotFound, "topic_not_found")
        );
        assert_eq!(
            mapped(BrokerError::GroupNotFound {
                topic: "t".into(),
                group: "g".into()
            }),
            refused(ErrorKind::GroupNotFound, "group_not_found")
        );
        assert_eq!(
            mapped(BrokerError::TopicBusy {
                topic: "t".into(),
                unsettled: 1,
                dead_letters: 0
            }),
            refused(ErrorKind::Other, "topic_busy")
        );
    }

    #[test]
    fn a_sequence_below_the_window_is_refused() {
        assert_eq!(
            mapped(BrokerError::SequenceTooOld {
                producer_id: "p".into(),
                sequence: 1,
                oldest_tracked: 9
            }),
            refused(ErrorKind::SequenceTooOld, "sequence_too_old")
        );
    }

    #[test]
    fn settlement_refusals_name_why() {
        assert_eq!(
            mapped(BrokerError::Settle(SettleError::LeaseExpired {
                offset: 1,
                delivery: 1
            })),
            refused(ErrorKind::LeaseExpired, "lease_expired")
        );
        assert_eq!(
            mapped(BrokerError::Settle(SettleError::StaleDelivery {
                offset: 1,
                delivery: 1,
                current: 2
            })),
            refused(ErrorKind::Stale, "receipt_stale")
        );
        assert_eq!(
            mapped(BrokerError::Settle(SettleError::NotDelivered(1))),
            refused(ErrorKind::Stale, "not_delivered")
        );
        assert_eq!(
            mapped(BrokerError::UnknownPartition { partition: 9 }),
            refused(ErrorKind::UnknownReceipt, "receipt_invalid")
        );
    }

    #[test]
    fn storage_and_shutdown_may_be_retried() {
        let (kind, outcome, code) = mapped(BrokerError::Storage("disk".into()));
        assert_eq!(
            (kind, outcome, code.as_str()),
            (ErrorKind::Storage, Outcome::Unknown, "storage_failure")
        );
        let (kind, outcome, _) = mapped(BrokerError::TopicFailed("t".into()));
        assert_eq!((kind, outcome), (ErrorKind::Storage, Outcome::Retryable));
        let (kind, outcome, _) = mapped(BrokerError::ShuttingDown("x".into()));
        assert_eq!((kind, outcome), (ErrorKind::ShuttingDown, Outcome::Unknown));
        let (kind, outcome, _) = mapped(BrokerError::DirectoryInUse("/d".into()));
        assert_eq!(
            (kind, outcome),
            (ErrorKind::Unavailable, Outcome::Retryable)
        );
        for e in [
            BrokerError::Storage("disk".into()),
            BrokerError::TopicFailed("t".into()),
            BrokerError::ShuttingDown("x".into()),
        ] {
            assert!(transport_error(&e).retryable(), "{e}");
        }
    }

    #[test]
    fn an_unknown_code_is_not_claimed_final() {
        assert_eq!(
            classify("something_new"),
            (ErrorKind::Other, Outcome::Unknown)
        );
    }
}
