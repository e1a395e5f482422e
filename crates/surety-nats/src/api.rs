//! The JetStream API as plain requests (`$JS.API.<verb>` with a JSON body): one error
//! shape for every call, and exactly the JSON this backend means — the same bytes reach a
//! 2.9 server and a 2.15 one, which is what the suite runs against.

use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use surety_core::{ErrorKind, Outcome, TransportError};

/// JetStream's own error codes this backend tells apart (`err_code` in an API error).
pub mod code {
    pub const CONSUMER_NOT_FOUND: u32 = 10014;
    pub const NO_MESSAGE_FOUND: u32 = 10037;
    pub const MESSAGE_TOO_LARGE: u32 = 10054;
    pub const STREAM_NOT_FOUND: u32 = 10059;
}

/// An error answer of the JetStream API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ApiError {
    pub code: u16,
    #[serde(default)]
    pub err_code: u32,
    #[serde(default)]
    pub description: String,
}

/// A failed API call: the server's answer, or no answer.
#[derive(Debug, Clone)]
pub enum Failure {
    Api(ApiError),
    Transport(TransportError),
}

impl Failure {
    /// The server answered with this JetStream error code.
    pub fn is(&self, err_code: u32) -> bool {
        matches!(self, Failure::Api(e) if e.err_code == err_code)
    }

    /// What the caller sees, for the call described by `what`.
    pub fn into_transport(self, what: &str) -> TransportError {
        match self {
            Failure::Transport(mut e) => {
                e.message = format!("{what}: {}", e.message);
                e
            }
            Failure::Api(e) => api_error(&e, what),
        }
    }
}

/// What a JetStream API error means for the caller.
pub fn api_error(e: &ApiError, what: &str) -> TransportError {
    let message = format!(
        "{what}: {} (JetStream {} / {})",
        e.description, e.code, e.err_code
    );
    let (kind, outcome, stable) = match (e.code, e.err_code) {
        (_, code::STREAM_NOT_FOUND) => (
            ErrorKind::TopicNotFound,
            Outcome::Refused,
            Some("topic_not_found"),
        ),
        (_, code::CONSUMER_NOT_FOUND) => (
            ErrorKind::GroupNotFound,
            Outcome::Refused,
            Some("group_not_found"),
        ),
        (_, code::MESSAGE_TOO_LARGE) => (
            ErrorKind::TooLarge,
            Outcome::Refused,
            Some("message_too_large"),
        ),
        (503, _) => (ErrorKind::Unavailable, Outcome::Retryable, None),
        (408, _) => (ErrorKind::TimedOut, Outcome::Unknown, None),
        (500, _) => (ErrorKind::Storage, Outcome::Unknown, None),
        (401 | 403, _) => (
            ErrorKind::Unauthorized,
            Outcome::Refused,
            Some("unauthorized"),
        ),
        (400 | 409, _) => (ErrorKind::InvalidInput, Outcome::Refused, None),
        _ => (ErrorKind::Other, Outcome::Refused, None),
    };
    let e = TransportError::new(kind, outcome, message);
    match stable {
        Some(c) => e.with_code(c),
        None => e,
    }
}

/// What a request that got no (usable) answer means.
pub fn request_error(e: &async_nats::RequestError, what: &str) -> TransportError {
    match e.kind() {
        RequestErrorKind::TimedOut => TransportError::timed_out(what),
        RequestErrorKind::NoResponders => {
            TransportError::unavailable(format!("{what}: no responders (JetStream not ready?)"))
        }
        RequestErrorKind::MaxPayloadExceeded => {
            TransportError::refused(ErrorKind::TooLarge, format!("{what}: {e}"))
                .with_code("message_too_large")
        }
        RequestErrorKind::InvalidSubject => {
            TransportError::refused(ErrorKind::InvalidName, format!("{what}: {e}"))
        }
        // The request may have left before the connection broke.
        RequestErrorKind::Other => TransportError::new(
            ErrorKind::Unavailable,
            Outcome::Unknown,
            format!("{what}: {e}"),
        ),
    }
}

/// The client end of the JetStream API.
#[derive(Debug, Clone)]
pub struct Api {
    pub client: Client,
    pub timeout: Duration,
}

impl Api {
    /// `$JS.API.<verb>` with `body`; the answer's JSON as `T`, or its error.
    pub async fn call<T: DeserializeOwned>(
        &self,
        verb: &str,
        body: &serde_json::Value,
    ) -> Result<T, Failure> {
        let payload = Bytes::from(serde_json::to_vec(body).expect("JSON values serialize"));
        let request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(self.timeout));
        let answer = self
            .client
            .send_request(format!("$JS.API.{verb}"), request)
            .await
            .map_err(|e| Failure::Transport(request_error(&e, verb)))?;
        decode(&answer.payload, verb)
    }
}

/// Parses an API answer: `{"error": {...}}` or the value.
pub fn decode<T: DeserializeOwned>(payload: &[u8], what: &str) -> Result<T, Failure> {
    #[derive(Deserialize)]
    struct MaybeError {
        error: Option<ApiError>,
    }
    if let Ok(MaybeError { error: Some(e) }) = serde_json::from_slice::<MaybeError>(payload) {
        return Err(Failure::Api(e));
    }
    serde_json::from_slice(payload).map_err(|e| {
        Failure::Transport(TransportError::new(
            ErrorKind::Protocol,
            Outcome::Unknown,
            format!(
                "{what}: unreadable answer ({e}): {}",
                String::from_utf8_lossy(&payload[..payload.len().min(200)])
            ),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_keep_their_meaning() {
        let e = |code, err_code| {
            api_error(
                &ApiError {
                    code,
                    err_code,
                    description: "x".into(),
                },
                "call",
            )
        };
        let nf = e(404, code::STREAM_NOT_FOUND);
        assert_eq!(
            (nf.kind, nf.outcome),
            (ErrorKind::TopicNotFound, Outcome::Refused)
        );
        assert_eq!(e(400, code::MESSAGE_TOO_LARGE).kind, ErrorKind::TooLarge);
        assert_eq!(e(503, 10008).outcome, Outcome::Retryable);
        assert_eq!(e(500, 10049).outcome, Outcome::Unknown);
        assert!(!e(400, 10052).retryable());
    }

    #[test]
    fn answers_decode_as_value_or_error() {
        let ok: serde_json::Value = decode(br#"{"seq":3}"#, "x").unwrap();
        assert_eq!(ok["seq"], 3);
        let err = decode::<serde_json::Value>(
            br#"{"type":"x","error":{"code":404,"err_code":10059,"description":"stream not found"}}"#,
            "x",
        )
        .unwrap_err();
        assert!(err.is(code::STREAM_NOT_FOUND));
        assert!(matches!(
            decode::<serde_json::Value>(b"not json", "x"),
            Err(Failure::Transport(_))
        ));
    }
}
