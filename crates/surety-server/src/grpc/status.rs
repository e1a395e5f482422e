//! Broker errors as gRPC statuses: a fitting status code (clients decide on retries by
//! it) plus the stable error code of docs/errors.md in the `surety-error-code` metadata.

use surety_broker::BrokerError;
use tonic::{Code, Status};

/// Metadata key carrying the stable error code (`topic_not_found`, `lease_expired`, ...).
pub const ERROR_CODE_METADATA: &str = "surety-error-code";

/// The status for a broker error. Mapped by the stable code, so the table in
/// docs/grpc.md is the whole truth.
pub fn status_of(e: &BrokerError) -> Status {
    with_code(grpc_code(e.code()), e.code(), e.to_string())
}

/// A refused call with a stable code that is not a broker error.
pub(super) fn with_code(grpc: Code, code: &'static str, message: String) -> Status {
    let mut status = Status::new(grpc, message);
    status.metadata_mut().insert(
        ERROR_CODE_METADATA,
        tonic::metadata::AsciiMetadataValue::from_static(code),
    );
    status
}

/// A refusal inside a stream (the stream goes on): the stable code, the message and the
/// status code a unary call would have failed with.
pub(super) fn stream_error(request_id: u64, status: &Status) -> super::proto::Error {
    let code = status
        .metadata()
        .get(ERROR_CODE_METADATA)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("internal");
    super::proto::Error {
        request_id,
        code: code.to_owned(),
        message: status.message().to_owned(),
        grpc_status: status.code() as i32,
        index: 0,
    }
}

/// One refused receipt of an Ack or Nack, listed in its AckResult / NackResult.
pub(super) fn receipt_error(index: usize, e: &BrokerError) -> super::proto::Error {
    super::proto::Error {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        ..stream_error(0, &status_of(e))
    }
}

pub(super) fn unauthenticated() -> Status {
    with_code(
        Code::Unauthenticated,
        "unauthorized",
        "missing or invalid bearer token".into(),
    )
}

pub(super) fn invalid_request(message: impl Into<String>) -> Status {
    with_code(Code::InvalidArgument, "invalid_request", message.into())
}

fn grpc_code(code: &str) -> Code {
    match code {
        "invalid_name" | "invalid_config" | "invalid_message" | "invalid_request"
        | "receipt_invalid" => Code::InvalidArgument,
        // A size limit of the topic, not a transient shortage: INVALID_ARGUMENT keeps
        // clients from retrying it (RESOURCE_EXHAUSTED is commonly retried).
        "message_too_large" => Code::InvalidArgument,
        "topic_not_found" | "group_not_found" => Code::NotFound,
        "sequence_too_old" | "receipt_stale" | "lease_expired" | "not_delivered" | "topic_busy" => {
            Code::FailedPrecondition
        }
        // The topic stopped; a broker restart brings it back, so clients may retry.
        "topic_failed" | "shutting_down" => Code::Unavailable,
        // Stored bytes failed their CRC: gRPC's own code for it. Clients decide retries by
        // the stable code (surety_core::surety::of_code), not by this status.
        "data_corrupt" => Code::DataLoss,
        _ => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_the_stable_code() {
        let s = status_of(&BrokerError::TopicNotFound("t".into()));
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(
            s.metadata().get(ERROR_CODE_METADATA).unwrap(),
            "topic_not_found"
        );
        assert!(s.message().contains("\"t\""));
    }

    #[test]
    fn transient_and_final_errors_are_told_apart() {
        let code = |e: BrokerError| status_of(&e).code();
        assert_eq!(
            code(BrokerError::TopicFailed("t".into())),
            Code::Unavailable
        );
        assert_eq!(code(BrokerError::Storage("disk".into())), Code::Internal);
        let corrupt = BrokerError::Corrupt(Box::new(surety_log::Corruption {
            segment: "00000000000000000000.log".into(),
            position: 32,
            offset: 0,
            detail: "crc mismatch".into(),
        }));
        assert_eq!(code(corrupt), Code::DataLoss);
        assert_eq!(
            code(BrokerError::MessageTooLarge { size: 2, max: 1 }),
            Code::InvalidArgument
        );
        assert_eq!(
            code(BrokerError::SequenceTooOld {
                producer_id: "p".into(),
                sequence: 1,
                oldest_tracked: 9
            }),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(BrokerError::InvalidName("x".into())),
            Code::InvalidArgument
        );
        assert_eq!(
            code(surety_broker::limits::check_lease_ms(u64::MAX).unwrap_err()),
            Code::InvalidArgument
        );
        assert_eq!(
            code(BrokerError::GroupNotFound {
                topic: "t".into(),
                group: "g".into()
            }),
            Code::NotFound
        );
        assert_eq!(
            code(BrokerError::TopicBusy {
                topic: "t".into(),
                unsettled: 1,
                dead_letters: 0
            }),
            Code::FailedPrecondition
        );
    }
}
