//! What every transport failure answers for the caller: may a retry help, and did the
//! operation happen? The drivers decide retries on [`Outcome`] alone, never on a
//! transport's own codes.

use std::fmt;

/// Whether the failed operation may have taken effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing happened (connection refused, broker overloaded): retry.
    Retryable,
    /// It may have happened (a timeout, a stream broken after the request left): retry
    /// with the same stamps; dedupe settles it.
    Unknown,
    /// Refused on its merits: the same call fails the same way. Nothing happened.
    Refused,
}

/// What went wrong, in transport-neutral terms.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The broker or the way to it is down.
    Unavailable,
    /// No answer within the time given.
    TimedOut,
    /// The broker is overloaded or the resource is busy.
    Overloaded,
    ShuttingDown,
    /// The broker could not store or read.
    Storage,
    /// The answer made no sense (a bug on one side).
    Protocol,
    Unauthorized,
    TopicNotFound,
    GroupNotFound,
    InvalidName,
    InvalidInput,
    TooLarge,
    /// A sequence below the producer's dedupe window: cannot be checked, so refused.
    SequenceTooOld,
    /// The transport cannot do this at all (see its capabilities).
    Unsupported,
    /// A settlement came after the lease ran out: the message is someone else's now.
    LeaseExpired,
    /// A settlement for a delivery that has been redelivered, seeked past or recreated.
    Stale,
    /// A receipt this transport did not issue (or cannot read).
    UnknownReceipt,
    /// Anything else the broker refused.
    Other,
}

/// A failed transport operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError {
    pub kind: ErrorKind,
    pub outcome: Outcome,
    pub message: String,
    /// The stable code of docs/errors.md where the broker gave one (`topic_not_found`, ...).
    pub code: Option<String>,
}

impl TransportError {
    pub fn new(kind: ErrorKind, outcome: Outcome, message: impl Into<String>) -> Self {
        Self {
            kind,
            outcome,
            message: message.into(),
            code: None,
        }
    }

    /// Refused on its merits.
    pub fn refused(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::new(kind, Outcome::Refused, message)
    }

    /// The way to the broker is gone; nothing happened.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, Outcome::Retryable, message)
    }

    /// No answer in time: it may have happened.
    pub fn timed_out(what: &str) -> Self {
        Self::new(
            ErrorKind::TimedOut,
            Outcome::Unknown,
            format!("{what} timed out"),
        )
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// True when the same call may succeed later.
    pub fn retryable(&self) -> bool {
        self.outcome != Outcome::Refused
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{:?} ({code}): {}", self.kind, self.message),
            None => write!(f, "{:?}: {}", self.kind, self.message),
        }
    }
}

impl std::error::Error for TransportError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_are_final() {
        assert!(TransportError::unavailable("down").retryable());
        assert!(TransportError::timed_out("publish").retryable());
        assert!(!TransportError::refused(ErrorKind::TopicNotFound, "x").retryable());
    }

    #[test]
    fn display_names_the_stable_code() {
        let e = TransportError::refused(ErrorKind::TopicNotFound, "no topic t")
            .with_code("topic_not_found");
        assert_eq!(e.to_string(), "TopicNotFound (topic_not_found): no topic t");
    }
}
