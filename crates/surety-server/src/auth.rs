//! Bearer-token auth shared by REST and gRPC: the token file format, and the constant-time
//! check every request except `/healthz` passes.

use std::path::Path;

use subtle::ConstantTimeEq;

use crate::state::AppState;

/// Why the token file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFileError {
    #[error("cannot read auth token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// An empty file would lock everyone out; refusing it beats serving nobody.
    #[error("auth token file {0} holds no tokens (one per line; '#' starts a comment)")]
    Empty(String),
}

/// One token per line; blank lines and lines starting with `#` are ignored, surrounding
/// whitespace is trimmed.
pub fn parse_tokens(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Reads a token file; an empty one is an error.
pub fn load_tokens(path: &Path) -> Result<Vec<String>, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let tokens = parse_tokens(&text);
    if tokens.is_empty() {
        return Err(TokenFileError::Empty(path.display().to_string()));
    }
    Ok(tokens)
}

/// True when auth is off, or `header_value` (the `Authorization` header) is
/// `Bearer <token>` for a configured token. Every token is compared, in constant time, so
/// timing says nothing about which token or how much of it matched.
pub fn check_bearer(state: &AppState, header_value: Option<&str>) -> bool {
    let Some(tokens) = &state.tokens else {
        return true;
    };
    let Some(presented) = header_value.and_then(bearer_token) else {
        return false;
    };
    tokens
        .iter()
        .fold(subtle::Choice::from(0), |ok, t| {
            ok | t.as_bytes().ct_eq(presented.as_bytes())
        })
        .into()
}

/// The token of a `Bearer` credential (the scheme is case-insensitive, RFC 9110).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_skips_comments_and_blanks() {
        let text = "# admin\n\n  alpha  \n#beta\nbeta\n";
        assert_eq!(parse_tokens(text), ["alpha", "beta"]);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_needs_a_token() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer   abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }
}
