//! Query strings, parsed strictly: an unknown parameter, a repeated one, or a value that
//! is not of the parameter's type is a 400 `invalid_request` naming the parameter (axum's
//! own `Query` rejection answers in plain text). Every `/v1` handler takes one, so a
//! parameter no route knows is never silently ignored; [`NoQuery`] is for routes
//! without parameters.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::error::ApiError;

#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

/// A route that takes no query parameters: any parameter is refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(v)| ApiQuery(v))
            .map_err(|r| {
                let text = r.body_text();
                // The path-aware deserializer puts the parameter's name before the
                // problem ("limit: invalid digit found in string"); unknown and repeated
                // parameters name themselves.
                let why = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text);
                ApiError::invalid_request(format!("query string: {why}"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Page {
        limit: Option<u32>,
        after: Option<u64>,
    }

    async fn parse<T: DeserializeOwned + Send>(uri: &str) -> Result<T, ApiError> {
        let (mut parts, ()) = Request::builder().uri(uri).body(()).unwrap().into_parts();
        ApiQuery::<T>::from_request_parts(&mut parts, &())
            .await
            .map(|ApiQuery(v)| v)
    }

    #[tokio::test]
    async fn problems_name_the_parameter() {
        let p: Page = parse("/x?limit=5&after=7").await.unwrap();
        assert_eq!((p.limit, p.after), (Some(5), Some(7)));
        let p: Page = parse("/x").await.unwrap();
        assert_eq!((p.limit, p.after), (None, None));
        for (uri, names) in [
            ("/x?limit=ten", "limit"),
            ("/x?after=-1", "after"),
            ("/x?limit=", "limit"),
            ("/x?limit=99999999999", "limit"),
            ("/x?colour=red", "colour"),
            ("/x?limit=1&limit=2", "limit"),
        ] {
            let e = parse::<Page>(uri).await.unwrap_err();
            assert_eq!(e.code, "invalid_request", "{uri}");
            assert!(e.message.contains(names), "{uri}: {}", e.message);
        }
        assert!(parse::<NoQuery>("/x").await.is_ok());
        let e = parse::<NoQuery>("/x?force=true").await.unwrap_err();
        assert!(e.message.contains("force"), "{}", e.message);
    }
}
