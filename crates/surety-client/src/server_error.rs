//! What the server (or the way to it) answered when a call failed, and whether trying
//! again can help.

use surety_core::{ErrorKind, Outcome, TransportError};
use tonic::{Code, Status};

/// Metadata key in which the server names the stable error code of docs/errors.md.
pub const ERROR_CODE_METADATA: &str = "surety-error-code";

/// A failed call: the gRPC status code, the stable Surety code when the server gave one
/// (`topic_not_found`, `message_too_large`, ...), and the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", grpc_name(*.grpc), .code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
pub struct ServerError {
    pub grpc: Code,
    pub code: Option<String>,
    pub message: String,
}

fn grpc_name(code: Code) -> String {
    format!("{code:?}")
}

impl ServerError {
    /// True when the same call may succeed later: the server or the network was
    /// unavailable, or the call ran out of time. Everything the server refused on its
    /// merits (invalid input, unknown topic, auth) is final.
    pub fn is_transient(&self) -> bool {
        match self.grpc {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => true,
            // Without a Surety code, Unknown comes from the transport (a reset
            // connection), not from a decision of the server.
            Code::Unknown => self.code.is_none(),
            _ => false,
        }
    }

    /// A stream that failed after it was open. The server's own refusals travel inside
    /// the stream, so a failure of the stream itself without a Surety code (tonic reports
    /// a reset stream or a broken connection as INTERNAL or UNKNOWN, "h2 protocol error")
    /// is the transport's, and retrying on a new stream can help.
    pub(crate) fn broken_stream(status: Status) -> Self {
        let mut e = Self::from(status);
        if e.code.is_none() && matches!(e.grpc, Code::Internal | Code::Unknown) {
            e.grpc = Code::Unavailable;
        }
        e
    }

    /// The way to the server is gone (a stream ended or closed): retrying can help.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self {
            grpc: Code::Unavailable,
            code: None,
            message: message.into(),
        }
    }
}

impl From<Status> for ServerError {
    fn from(s: Status) -> Self {
        Self {
            grpc: s.code(),
            code: s
                .metadata()
                .get(ERROR_CODE_METADATA)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            message: s.message().to_owned(),
        }
    }
}

/// What the reliability layer reads: the kind (from the stable code where the server
/// gave one, else from the status code) and whether a retry may help.
impl From<ServerError> for TransportError {
    fn from(e: ServerError) -> Self {
        // Whether a retry may help is the status code's to say (`is_transient`, which
        // knows transport failures); the stable code names the kind.
        let outcome = if !e.is_transient() {
            Outcome::Refused
        } else if e.grpc == Code::Unavailable {
            Outcome::Retryable
        } else {
            Outcome::Unknown
        };
        let kind = e
            .code
            .as_deref()
            .and_then(surety_core::surety::of_code)
            .map(|(kind, _)| kind)
            .unwrap_or(match e.grpc {
                Code::Unavailable | Code::Cancelled | Code::Aborted | Code::Unknown => {
                    ErrorKind::Unavailable
                }
                Code::DeadlineExceeded => ErrorKind::TimedOut,
                Code::Unauthenticated | Code::PermissionDenied => ErrorKind::Unauthorized,
                Code::InvalidArgument | Code::OutOfRange => ErrorKind::InvalidInput,
                Code::ResourceExhausted => ErrorKind::Overloaded,
                Code::Unimplemented => ErrorKind::Unsupported,
                _ => ErrorKind::Other,
            });
        TransportError {
            kind,
            outcome,
            message: e.message,
            code: e.code,
        }
    }
}

/// A failed call, as the reliability layer reads it.
pub(crate) fn transport_error(s: Status) -> TransportError {
    ServerError::from(s).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, surety: Option<&'static str>) -> ServerError {
        let mut s = Status::new(code, "m");
        if let Some(c) = surety {
            s.metadata_mut()
                .insert(ERROR_CODE_METADATA, c.parse().unwrap());
        }
        s.into()
    }

    #[test]
    fn a_broken_stream_is_transient_unless_the_server_decided() {
        let broken = |code, surety: Option<&str>| {
            let mut s = Status::new(code, "m");
            if let Some(c) = surety {
                s.metadata_mut()
                    .insert(ERROR_CODE_METADATA, c.parse().unwrap());
            }
            ServerError::broken_stream(s).is_transient()
        };
        assert!(broken(Code::Internal, None));
        assert!(broken(Code::Unknown, None));
        assert!(!broken(Code::Internal, Some("storage_failure")));
        assert!(!broken(Code::OutOfRange, None));
        assert!(!broken(Code::Unauthenticated, Some("unauthorized")));
    }

    #[test]
    fn only_unavailability_and_timeouts_are_transient() {
        assert!(status(Code::Unavailable, None).is_transient());
        assert!(status(Code::Unavailable, Some("topic_failed")).is_transient());
        assert!(status(Code::DeadlineExceeded, None).is_transient());
        assert!(status(Code::Unknown, None).is_transient());
        assert!(!status(Code::Unknown, Some("x")).is_transient());
        assert!(!status(Code::InvalidArgument, Some("invalid_message")).is_transient());
        assert!(!status(Code::NotFound, Some("topic_not_found")).is_transient());
        assert!(!status(Code::Unauthenticated, Some("unauthorized")).is_transient());
    }

    #[test]
    fn the_layer_sees_kind_and_outcome() {
        let e = TransportError::from(status(Code::NotFound, Some("topic_not_found")));
        assert_eq!(
            (e.kind, e.outcome),
            (ErrorKind::TopicNotFound, Outcome::Refused)
        );
        let e = TransportError::from(status(Code::Unavailable, None));
        assert_eq!(
            (e.kind, e.outcome),
            (ErrorKind::Unavailable, Outcome::Retryable)
        );
        let e = TransportError::from(status(Code::DeadlineExceeded, None));
        assert_eq!((e.kind, e.outcome), (ErrorKind::TimedOut, Outcome::Unknown));
        let e = TransportError::from(status(Code::Unauthenticated, Some("unauthorized")));
        assert_eq!(e.kind, ErrorKind::Unauthorized);
    }

    #[test]
    fn display_names_the_stable_code() {
        let e = status(Code::NotFound, Some("topic_not_found"));
        assert_eq!(e.code.as_deref(), Some("topic_not_found"));
        assert_eq!(e.to_string(), "NotFound (topic_not_found): m");
    }
}
