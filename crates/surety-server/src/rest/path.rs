//! Path parameters. Every one of ours is a topic or group name (or a dead-letter id,
//! taken as text), so the only way extraction fails is a segment that is not valid
//! percent-encoded UTF-8, which can never be a valid name.

use axum::extract::{FromRequestParts, Path};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", r.body_text()))
    }
}
