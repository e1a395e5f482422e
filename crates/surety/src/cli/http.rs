//! The shared REST client of the CLI: one base URL, an optional bearer token, and the
//! translation of every failure (refused connection, Surety's JSON error body, anything
//! else) into one `CliError` that prints as one readable line.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use surety_wire::rest;

use super::Conn;
use super::error::{CliError, one_line};

/// How long a request may take beyond any long-poll wait it asks the server for.
const REQUEST_SLACK: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

impl Client {
    pub fn new(args: &Conn) -> Result<Self, CliError> {
        let base = args.backend()?.surety_url()?.clone();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("surety-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Transport {
                url: base.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            http,
            base,
            token: args.token.clone().filter(|t| !t.is_empty()),
        })
    }

    pub async fn get(&self, path: &[&str]) -> Result<Value, CliError> {
        self.get_query(path, &[]).await
    }

    /// A GET whose answer is read into its `surety_wire::rest` type (`what` names it in
    /// a protocol error).
    pub async fn get_as<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &[&str],
    ) -> Result<T, CliError> {
        decode(what, &self.get(path).await?)
    }

    /// A GET with query parameters (`?limit=10&after=7`), encoded by the URL library.
    pub async fn get_query(
        &self,
        path: &[&str],
        query: &[(&str, String)],
    ) -> Result<Value, CliError> {
        self.send_query(Method::GET, path, query, None, Duration::ZERO)
            .await
            .map(|(_, v)| v)
    }

    /// A DELETE with query parameters (`?force=true`).
    pub async fn delete(&self, path: &[&str], query: &[(&str, String)]) -> Result<Value, CliError> {
        self.send_query(Method::DELETE, path, query, None, Duration::ZERO)
            .await
            .map(|(_, v)| v)
    }

    /// A POST of `body` (a `surety_wire::rest` request, or JSON) whose server side may
    /// wait up to `wait` (long polling) before answering.
    pub async fn post<B: Serialize + ?Sized>(
        &self,
        path: &[&str],
        body: &B,
        wait: Duration,
    ) -> Result<Value, CliError> {
        let body = serde_json::to_value(body)
            .map_err(|e| CliError::Protocol(format!("request body: {e}")))?;
        self.send(Method::POST, path, Some(&body), wait)
            .await
            .map(|(_, v)| v)
    }

    /// A PUT; the status tells created (201) from already there (200).
    pub async fn put(&self, path: &[&str], body: &Value) -> Result<(StatusCode, Value), CliError> {
        self.send(Method::PUT, path, Some(body), Duration::ZERO)
            .await
    }

    /// `path` segments are percent-encoded one by one, so a name can never reach
    /// another route (`a/b` stays one segment for the server to refuse).
    fn url(&self, path: &[&str]) -> Result<Url, CliError> {
        // URL parsers fold these segments away; the server could never see them.
        if let Some(bad) = path.iter().find(|s| matches!(**s, "" | "." | "..")) {
            return Err(CliError::Usage(format!(
                "{bad:?} is not a valid topic or group name (invalid_name)"
            )));
        }
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| CliError::Usage(format!("--server {} cannot take a path", self.base)))?
            .pop_if_empty()
            .extend(path);
        Ok(url)
    }

    async fn send(
        &self,
        method: Method,
        path: &[&str],
        body: Option<&Value>,
        wait: Duration,
    ) -> Result<(StatusCode, Value), CliError> {
        self.send_query(method, path, &[], body, wait).await
    }

    async fn send_query(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
        wait: Duration,
    ) -> Result<(StatusCode, Value), CliError> {
        let mut url = self.url(path)?;
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let mut req = self
            .http
            .request(method, url.clone())
            .timeout(wait + REQUEST_SLACK);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| self.transport(&url, e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport(&url, e))?;
        if !status.is_success() {
            return Err(error_from_body(status, &bytes));
        }
        if bytes.is_empty() {
            return Ok((status, Value::Null));
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            CliError::Protocol(format!(
                "{} {url} did not answer JSON: {e}",
                status.as_u16()
            ))
        })?;
        Ok((status, value))
    }

    fn transport(&self, url: &Url, e: reqwest::Error) -> CliError {
        if e.is_connect() {
            CliError::Unreachable {
                url: self.base.as_str().trim_end_matches('/').to_string(),
            }
        } else {
            // The URL is already in the line; reqwest would say it again.
            CliError::Transport {
                url: url.to_string(),
                reason: one_line(&e.without_url()),
            }
        }
    }
}

/// Reads a typed view of an answer; a mismatch is the server breaking the contract.
pub fn decode<T: DeserializeOwned>(what: &str, v: &Value) -> Result<T, CliError> {
    T::deserialize(v).map_err(|e| CliError::Protocol(format!("{what}: {e}")))
}

/// `{"error":{"code","message"}}` becomes `CliError::Server`; any other body is kept to
/// its first line so that an HTML error page cannot flood the terminal.
fn error_from_body(status: StatusCode, body: &[u8]) -> CliError {
    let parsed = serde_json::from_slice::<rest::ErrorBody>(body)
        .ok()
        .map(|b| (b.error.code, b.error.message));
    match parsed {
        Some((code, message)) => CliError::Server {
            status: status.as_u16(),
            message: if message.is_empty() {
                status.to_string()
            } else {
                message
            },
            code,
        },
        None => {
            let text = String::from_utf8_lossy(body);
            let first: String = text
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect();
            CliError::Http {
                status: status.as_u16(),
                body: first.trim().to_string(),
            }
        }
    }
}

/// `--server`: an http(s) URL, or `HOST:PORT` without a scheme, taken as `http://HOST:PORT`
/// (`127.0.0.1:7333`, `localhost:7333`). Anything else is a usage error naming the flag.
pub fn server_url(server: &str) -> Result<Url, CliError> {
    let s = server.trim();
    let candidate = if s.contains("://") {
        Url::parse(s)
    } else {
        Url::parse(&format!("http://{s}"))
    };
    candidate
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
        .filter(|u| u.host_str().is_some_and(|h| !h.is_empty()))
        .ok_or_else(|| {
            CliError::Usage(format!(
                "--backend {server:?} is not a server address \
                 (examples: http://127.0.0.1:7333, 127.0.0.1:7333, localhost:7333)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(server: &str) -> Conn {
        Conn {
            backend: server.into(),
            token: None,
            json: false,
            require_fsync: false,
        }
    }

    fn client(server: &str) -> Client {
        Client::new(&conn(server)).unwrap()
    }

    #[test]
    fn urls_encode_each_segment() {
        let c = client("http://127.0.0.1:7333");
        let u = c.url(&["v1", "topics", "a/b c", "groups", "g"]).unwrap();
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:7333/v1/topics/a%2Fb%20c/groups/g"
        );
        // A base with a path prefix (behind a proxy) keeps it.
        let c = client("http://host:80/surety/");
        assert_eq!(
            c.url(&["v1", "topics"]).unwrap().as_str(),
            "http://host/surety/v1/topics"
        );
        assert!(matches!(
            c.url(&["v1", "topics", ".."]),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn bad_server_url_is_usage_error() {
        for s in [
            "ftp://x",
            "not a url",
            "",
            "http://",
            ":7333",
            "localhost:port",
        ] {
            let e = Client::new(&conn(s)).unwrap_err();
            assert!(matches!(e, CliError::Usage(_)), "{s}");
            assert!(e.to_string().starts_with("--backend "), "{e}");
        }
    }

    #[test]
    fn server_without_scheme_is_http() {
        for (given, url) in [
            ("127.0.0.1:7333", "http://127.0.0.1:7333/"),
            ("localhost:7333", "http://localhost:7333/"),
            ("[::1]:7333", "http://[::1]:7333/"),
            ("surety.internal", "http://surety.internal/"),
            ("http://127.0.0.1:7333", "http://127.0.0.1:7333/"),
            (
                "https://surety.example/base/",
                "https://surety.example/base/",
            ),
        ] {
            assert_eq!(server_url(given).unwrap().as_str(), url, "{given}");
        }
    }

    #[test]
    fn query_parameters_are_encoded() {
        let c = client("127.0.0.1:7333");
        let mut u = c.url(&["v1", "topics", "t", "messages"]).unwrap();
        u.query_pairs_mut()
            .extend_pairs([("partition", "0"), ("after", "a b")]);
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:7333/v1/topics/t/messages?partition=0&after=a+b"
        );
    }

    #[test]
    fn error_bodies() {
        let e = error_from_body(
            StatusCode::NOT_FOUND,
            br#"{"error":{"code":"topic_not_found","message":"topic \"x\" does not exist"}}"#,
        );
        assert_eq!(
            e.to_string(),
            "topic \"x\" does not exist (topic_not_found)"
        );
        let e = error_from_body(StatusCode::BAD_GATEWAY, b"<html>\nbad gateway</html>");
        assert_eq!(e.to_string(), "the server answered 502: <html>");
        let e = error_from_body(StatusCode::METHOD_NOT_ALLOWED, b"");
        assert_eq!(e.to_string(), "the server answered 405");
    }
}
