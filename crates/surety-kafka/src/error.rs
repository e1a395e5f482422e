//! librdkafka's errors in the seam's terms: may a retry help, and did it happen?

use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
use surety_core::{ErrorKind, Outcome, TransportError};

/// A failed produce: what the caller may do about it.
pub fn produce(e: &KafkaError) -> TransportError {
    let Some(code) = e.rdkafka_error_code() else {
        return TransportError::new(ErrorKind::Other, Outcome::Unknown, format!("produce: {e}"));
    };
    match code {
        Code::MessageSizeTooLarge | Code::InvalidMessageSize => {
            TransportError::refused(ErrorKind::TooLarge, format!("produce: {e}"))
                .with_code("message_too_large")
        }
        Code::UnknownTopicOrPartition | Code::UnknownTopic | Code::UnknownPartition => {
            TransportError::refused(ErrorKind::TopicNotFound, format!("produce: {e}"))
                .with_code("topic_not_found")
        }
        Code::TopicAuthorizationFailed | Code::ClusterAuthorizationFailed => {
            TransportError::refused(ErrorKind::Unauthorized, format!("produce: {e}"))
        }
        Code::InvalidTopic | Code::InvalidRecord => {
            TransportError::refused(ErrorKind::InvalidInput, format!("produce: {e}"))
        }
        // Queue full: nothing was sent.
        Code::QueueFull => TransportError::new(
            ErrorKind::Overloaded,
            Outcome::Retryable,
            format!("produce: {e}"),
        ),
        Code::MessageTimedOut | Code::RequestTimedOut => TransportError::new(
            ErrorKind::TimedOut,
            Outcome::Unknown,
            format!("produce: {e}"),
        ),
        // Everything else (a broker gone, a fenced idempotent producer, ...) may or may
        // not have stored it: retried with the same stamps, the consumer side drops a copy.
        _ => TransportError::new(
            ErrorKind::Unavailable,
            Outcome::Unknown,
            format!("produce: {e}"),
        ),
    }
}

/// A failed read or admin call: nothing changed; retrying may help.
pub fn unavailable(what: &str, e: &KafkaError) -> TransportError {
    match e.rdkafka_error_code() {
        Some(Code::GroupAuthorizationFailed | Code::TopicAuthorizationFailed) => {
            TransportError::refused(ErrorKind::Unauthorized, format!("{what}: {e}"))
        }
        _ => TransportError::unavailable(format!("{what}: {e}")),
    }
}

/// A blocking librdkafka call run off the async threads.
pub async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TransportError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        TransportError::new(ErrorKind::Other, Outcome::Unknown, format!("{what}: {e}"))
    })
}
