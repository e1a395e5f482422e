//! The one shape every REST error takes, `{"error":{"code","message"}}`, and the HTTP
//! status of each code (the table in docs/errors.md).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use surety_broker::BrokerError;
use surety_wire::rest;

/// An error answer. `code` is stable (docs/errors.md); `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// The request is well-formed JSON but asks for something out of bounds.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }

    pub fn invalid_message(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_message", message)
    }

    pub fn invalid_base64(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_base64", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown bearer token; send Authorization: Bearer <token>",
        )
    }
}

/// HTTP status of each broker error code.
fn broker_status(code: &str) -> StatusCode {
    match code {
        "invalid_name" | "invalid_config" | "invalid_message" | "invalid_request"
        | "receipt_invalid" => StatusCode::BAD_REQUEST,
        "message_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "topic_not_found" | "group_not_found" => StatusCode::NOT_FOUND,
        "sequence_too_old" | "receipt_stale" | "lease_expired" | "not_delivered" | "topic_busy" => {
            StatusCode::CONFLICT
        }
        "topic_failed" | "shutting_down" => StatusCode::SERVICE_UNAVAILABLE,
        // The server's data, not the request, is at fault.
        "data_corrupt" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        let code = e.code();
        let status = broker_status(code);
        if status.is_server_error() {
            tracing::error!(code, error = %e, "request failed");
        }
        Self::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = rest::ErrorBody {
            error: rest::ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_codes_get_their_documented_status() {
        let e = ApiError::from(BrokerError::TopicNotFound("t".into()));
        assert_eq!(
            (e.status, e.code),
            (StatusCode::NOT_FOUND, "topic_not_found")
        );
        let e = ApiError::from(BrokerError::MessageTooLarge { size: 2, max: 1 });
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let e = ApiError::from(BrokerError::TopicFailed("t".into()));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        let e = ApiError::from(BrokerError::GroupNotFound {
            topic: "t".into(),
            group: "g".into(),
        });
        assert_eq!(
            (e.status, e.code),
            (StatusCode::NOT_FOUND, "group_not_found")
        );
        let e = ApiError::from(BrokerError::TopicBusy {
            topic: "t".into(),
            unsettled: 1,
            dead_letters: 0,
        });
        assert_eq!((e.status, e.code), (StatusCode::CONFLICT, "topic_busy"));
        let e = ApiError::from(surety_broker::limits::check_lease_ms(0).unwrap_err());
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "invalid_request")
        );
        let e = ApiError::from(BrokerError::Storage("disk".into()));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
