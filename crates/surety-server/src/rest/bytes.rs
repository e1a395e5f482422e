//! Bytes in JSON: a field holds text when the bytes are UTF-8, and its `_base64` twin
//! holds standard base64 otherwise (`payload` / `payload_base64`, `key` / `key_base64`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::error::ApiError;

/// `(text, base64)`: exactly one is set.
pub fn encode(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (None, Some(STANDARD.encode(bytes))),
    }
}

/// [`encode`], taking the bytes: UTF-8 text keeps their buffer, no copy.
pub fn encode_owned(bytes: Vec<u8>) -> (Option<String>, Option<String>) {
    match String::from_utf8(bytes) {
        Ok(text) => (Some(text), None),
        Err(e) => (None, Some(STANDARD.encode(e.as_bytes()))),
    }
}

/// The bytes of a `field` / `field_base64` pair; giving both is an error.
pub fn decode(
    field: &str,
    text: Option<String>,
    base64: Option<String>,
) -> Result<Option<Vec<u8>>, ApiError> {
    match (text, base64) {
        (Some(_), Some(_)) => Err(ApiError::invalid_message(format!(
            "give {field} or {field}_base64, not both"
        ))),
        (Some(text), None) => Ok(Some(text.into_bytes())),
        (None, Some(b64)) => STANDARD
            .decode(b64.as_bytes())
            .map(Some)
            .map_err(|e| ApiError::invalid_base64(format!("{field}_base64: {e}"))),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_stays_text_and_binary_goes_base64() {
        assert_eq!(encode(b"hi"), (Some("hi".into()), None));
        assert_eq!(encode(&[0xff, 0]), (None, Some("/wA=".into())));
        assert_eq!(encode_owned(b"hi".to_vec()), (Some("hi".into()), None));
        assert_eq!(encode_owned(vec![0xff, 0]), (None, Some("/wA=".into())));
        assert_eq!(
            decode("p", None, Some("/wA=".into())).unwrap(),
            Some(vec![0xff, 0])
        );
        assert_eq!(
            decode("p", None, Some("!!".into())).unwrap_err().code,
            "invalid_base64"
        );
        assert_eq!(
            decode("p", Some("a".into()), Some("YQ==".into()))
                .unwrap_err()
                .code,
            "invalid_message"
        );
    }
}
