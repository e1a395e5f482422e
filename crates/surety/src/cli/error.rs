//! What can go wrong in a client command, each case rendered as one line for people
//! and mapped to the exit code scripts check.

/// An error of a client command (`publish`, `consume`, `topics`, `groups`, `dlq`).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Nothing listens at the address (or it does not answer HTTP).
    #[error(
        "cannot reach the Surety server at {url}: is it running? (start it with: surety serve)"
    )]
    Unreachable { url: String },
    /// The server refused the request with a typed error (docs/errors.md).
    #[error("{message} ({code}){}", hint(*status, code))]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    /// The server answered an error without Surety's JSON error body (a proxy, or a
    /// route this server version does not have).
    #[error("the server answered {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Http { status: u16, body: String },
    /// Transport failure after the connection was made (reset, timeout, bad body).
    #[error("request to {url} failed: {reason}")]
    Transport { url: String, reason: String },
    /// The server's answer was not what the REST contract promises.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// The command line asked for something inconsistent that clap cannot check.
    #[error("{0}")]
    Usage(String),
    /// Local input (a `--file`, stdin) could not be read.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    /// 2 for usage errors, like clap's own; 1 for everything the server or I/O refused.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// A next step for the errors whose fix is not in the message itself.
fn hint(status: u16, code: &str) -> &'static str {
    if status == 401 || code == "unauthorized" {
        "; pass --token or set SURETY_TOKEN"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_error_is_one_line_with_code() {
        let e = CliError::Server {
            status: 404,
            code: "topic_not_found".into(),
            message: "topic \"x\" does not exist".into(),
        };
        assert_eq!(
            e.to_string(),
            "topic \"x\" does not exist (topic_not_found)"
        );
        let e = CliError::Server {
            status: 401,
            code: "unauthorized".into(),
            message: "missing bearer token".into(),
        };
        assert_eq!(
            e.to_string(),
            "missing bearer token (unauthorized); pass --token or set SURETY_TOKEN"
        );
    }

    #[test]
    fn exit_codes() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        let down = CliError::Unreachable {
            url: "http://127.0.0.1:1".into(),
        };
        assert_eq!(down.exit_code(), 1);
        assert_eq!(
            down.to_string(),
            "cannot reach the Surety server at http://127.0.0.1:1: is it running? (start it with: surety serve)"
        );
    }
}
