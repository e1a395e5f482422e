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
    /// An error and what to do about it, known only to the command that saw it.
    #[error("{error}; {hint}")]
    WithHint { error: Box<CliError>, hint: String },
    /// Part of a batch was refused; the refused items were already listed on stderr.
    #[error("{0}")]
    Refused(String),
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
    /// The whole error on one line: this error's text, then each cause of its
    /// `source()` chain that the line does not already say. reqwest and hyper nest
    /// errors that repeat their cause's text ("connection refused: connection refused");
    /// printed this way each cause appears once.
    pub fn one_line(&self) -> String {
        one_line(self)
    }

    /// 2 for usage errors, like clap's own; 1 for everything the server or I/O refused.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::WithHint { error, .. } => error.exit_code(),
            _ => 1,
        }
    }
}

/// `e`, then every cause in its `source()` chain whose text the line does not already
/// contain, joined by `: `; line breaks inside a text become spaces.
pub fn one_line(e: &dyn std::error::Error) -> String {
    let flat = |s: String| -> String {
        if s.contains(['\n', '\r']) {
            s.split(['\n', '\r'])
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            s
        }
    };
    let mut out = flat(e.to_string());
    let mut source = e.source();
    while let Some(s) = source {
        let text = flat(s.to_string());
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
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

    /// An error with a text and an optional cause, like the layers of reqwest and hyper.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    fn chain(texts: &[&'static str]) -> Layer {
        texts
            .iter()
            .rev()
            .fold(None, |cause, t| Some(Layer(t, cause.map(Box::new))))
            .unwrap()
    }

    #[test]
    fn causes_are_printed_once() {
        // The shape reqwest gives a refused connection: each layer repeats the next.
        let e = chain(&[
            "error sending request for url (http://127.0.0.1:1/v1/topics)",
            "client error (Connect)",
            "tcp connect error: Connection refused (os error 111)",
            "Connection refused (os error 111)",
        ]);
        assert_eq!(
            one_line(&e),
            "error sending request for url (http://127.0.0.1:1/v1/topics): \
             client error (Connect): tcp connect error: Connection refused (os error 111)"
        );
        // A cause already inside the top text is not repeated; a new one is appended.
        let e = chain(&["read body: connection reset", "connection reset"]);
        assert_eq!(one_line(&e), "read body: connection reset");
        let e = chain(&["timed out", "", "operation timed out"]);
        assert_eq!(one_line(&e), "timed out: operation timed out");
        // Multi-line texts stay on one line.
        let e = chain(&["bad\n  answer", "x"]);
        assert_eq!(one_line(&e), "bad answer: x");
    }

    #[test]
    fn io_error_prints_its_cause_once() {
        let e = CliError::Io {
            what: "cannot read f".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        };
        // Display already says the cause; the source chain must not add it again.
        assert_eq!(e.one_line(), "cannot read f: no such file");
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
