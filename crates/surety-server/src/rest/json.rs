//! JSON request bodies. axum's own `Json` answers its rejections in plain text and
//! accepts a JSON array where a struct is expected (serde maps it positionally); these
//! extractors answer every problem as an [`ApiError`] and take JSON objects only.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A required JSON object body, sent with a JSON content type.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

/// A JSON object body whose every field is optional: an empty body means the defaults.
#[derive(Debug)]
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (json_type, bytes) = read(req, state).await?;
        parse(json_type, &bytes).map(ApiJson)
    }
}

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (json_type, bytes) = read(req, state).await?;
        if bytes.is_empty() {
            return Ok(OptionalJson(T::default()));
        }
        parse(json_type, &bytes).map(OptionalJson)
    }
}

/// Whether the content type is JSON, and the body (within the router's body limit).
async fn read<S: Send + Sync>(req: Request, state: &S) -> Result<(bool, Bytes), ApiError> {
    let json_type = is_json(req.headers());
    let bytes = Bytes::from_request(req, state).await.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body exceeds the server's max_request_bytes",
            )
        } else {
            ApiError::invalid_request(format!("cannot read the request body: {}", r.body_text()))
        }
    })?;
    Ok((json_type, bytes))
}

fn parse<T: DeserializeOwned>(json_type: bool, bytes: &[u8]) -> Result<T, ApiError> {
    if !json_type {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body with Content-Type: application/json",
        ));
    }
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::invalid_json("the body must be a JSON object"));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid_json(e.to_string()))
}

/// `application/json` or `application/<anything>+json`, with any parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        h
    }

    #[test]
    fn json_content_types() {
        assert!(is_json(&headers("application/json")));
        assert!(is_json(&headers("Application/JSON; charset=utf-8")));
        assert!(is_json(&headers("application/vnd.surety+json")));
        assert!(!is_json(&headers("text/plain")));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Pair {
        a: u32,
        b: u32,
    }

    #[test]
    fn arrays_are_not_objects() {
        let e = parse::<Pair>(true, b" [1, 2]").unwrap_err();
        assert_eq!(e.code, "invalid_json");
        assert!(parse::<Pair>(true, br#"{"a":1,"b":2}"#).is_ok());
        assert_eq!(
            parse::<Pair>(false, b"{}").unwrap_err().code,
            "unsupported_media_type"
        );
    }
}
