//! The backend's settings, and how a `--backend` URL's query sets them:
//! `nats://host:4222?replicas=3&duplicate_window=120s&monitor=http://host:8222`.
//! Every value is checked against bounds; an unknown parameter is an error, not ignored
//! (a typo in `require_fsync` must not run a consumer on an unsafe server).

use std::path::PathBuf;
use std::time::Duration;

pub use surety_core::url_params::{parse_bool, parse_duration};
use surety_core::{ErrorKind, TransportError};

use crate::names;

/// How the backend creates streams and consumers, and what it accepts at connect.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsOptions {
    /// Refuse to connect to a server whose confirms do not survive a power loss
    /// (`sync_interval` not `always`, or unknown).
    pub require_fsync: bool,
    /// Replicas of the streams Surety creates (R3 recommended on a cluster; 1 to 5).
    pub replicas: usize,
    /// The `duplicate_window` of the streams Surety creates: a retry with the same
    /// (producer id, sequence) inside it is answered as a duplicate by the server.
    /// Longer costs server memory per message id; past it the consumer's ledger drops
    /// the copy (docs/backends.md, "The two windows").
    pub duplicate_window: Duration,
    /// One stream for every topic's dead letters; `None`: `<topic>_DLQ` per topic.
    pub dead_letter_stream: Option<String>,
    /// The server's HTTP monitoring endpoint, where `/varz` says `sync_interval`.
    /// `None`: `http://<host>:8222` is tried (NATS's default monitoring port).
    pub monitor: Option<String>,
    /// Don't look for a monitoring endpoint at all (the durability is then unknown).
    pub no_monitor: bool,
    /// First token(s) of every subject Surety publishes to.
    pub subject_prefix: String,
    /// Longest wait for any one server answer (a PubAck, an ack's reply, an API call).
    pub request_timeout: Duration,
    /// The nak delay of a message nacked after its first delivery; it doubles per delivery
    /// up to [`nak_backoff_max`](Self::nak_backoff_max), and a consumer's own delay wins
    /// where it is longer. Never zero: a bare `-NAK` redelivers at once and burns
    /// through `max_deliveries` in milliseconds.
    pub nak_backoff_initial: Duration,
    pub nak_backoff_max: Duration,
    /// A topic's `max_deliveries` and lease when `create_topic` does not name them.
    pub default_max_deliveries: u32,
    pub default_ack_wait: Duration,
    /// Tests only: see [`Fault`].
    #[doc(hidden)]
    pub fault: Option<Fault>,
}

/// A fault injected on purpose by the crate's own crash tests.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// After a dead letter's copy is confirmed and before the original is terminated,
    /// append a line to this file and hang forever (the test SIGKILLs the process).
    HangAfterDeadLetterCopy(PathBuf),
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            require_fsync: false,
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            dead_letter_stream: None,
            monitor: None,
            no_monitor: false,
            subject_prefix: "surety".to_owned(),
            request_timeout: Duration::from_secs(5),
            nak_backoff_initial: Duration::from_secs(1),
            nak_backoff_max: Duration::from_secs(60),
            default_max_deliveries: 5,
            default_ack_wait: Duration::from_secs(30),
            fault: None,
        }
    }
}

/// Bounds of the URL parameters.
pub const MAX_REPLICAS: usize = 5;
pub const MIN_DUPLICATE_WINDOW: Duration = Duration::from_millis(100);
pub const MAX_DUPLICATE_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
pub const MIN_REQUEST_TIMEOUT: Duration = Duration::from_millis(100);
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// The query parameters [`NatsOptions::from_url_query`] knows, for error messages.
const KNOWN: &str = "require_fsync, replicas, duplicate_window, dead_letter_stream, monitor, \
                     subject_prefix, request_timeout";

impl NatsOptions {
    /// The defaults, changed by the URL's query parameters: `require_fsync` (`true` or
    /// `false`), `replicas` (1–5), `duplicate_window` (a duration such as `120s`, `2m`,
    /// `500ms`; 100 ms to 7 days), `dead_letter_stream` (a stream name),
    /// `monitor` (`http://host:port` of the monitoring endpoint, or `none`),
    /// `subject_prefix`, `request_timeout` (100 ms to 10 min).
    pub fn from_url_query(url: &url::Url) -> Result<Self, TransportError> {
        let mut o = NatsOptions::default();
        for (key, value) in url.query_pairs() {
            let value = value.as_ref();
            match key.as_ref() {
                "require_fsync" => {
                    o.require_fsync =
                        parse_bool(value).ok_or_else(|| bad(&key, value, "true or false"))?
                }
                "replicas" => {
                    o.replicas = value
                        .parse()
                        .ok()
                        .filter(|r| (1..=MAX_REPLICAS).contains(r))
                        .ok_or_else(|| bad(&key, value, "a number from 1 to 5"))?
                }
                "duplicate_window" => {
                    o.duplicate_window = parse_duration(value)
                        .filter(|d| (MIN_DUPLICATE_WINDOW..=MAX_DUPLICATE_WINDOW).contains(d))
                        .ok_or_else(|| bad(&key, value, "a duration from 100ms to 7d"))?
                }
                "request_timeout" => {
                    o.request_timeout = parse_duration(value)
                        .filter(|d| (MIN_REQUEST_TIMEOUT..=MAX_REQUEST_TIMEOUT).contains(d))
                        .ok_or_else(|| bad(&key, value, "a duration from 100ms to 10m"))?
                }
                "dead_letter_stream" => {
                    names::topic(value).map_err(|_| {
                        bad(
                            &key,
                            value,
                            "a stream name of [A-Za-z0-9_-], not ending in _DLQ",
                        )
                    })?;
                    o.dead_letter_stream = Some(value.to_owned());
                }
                "monitor" if value == "none" => o.no_monitor = true,
                "monitor" => {
                    let ok = url::Url::parse(value)
                        .ok()
                        .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
                    if ok.is_none() {
                        return Err(bad(&key, value, "http://host:port, or none"));
                    }
                    o.monitor = Some(value.trim_end_matches('/').to_owned());
                }
                "subject_prefix" => {
                    if !names::valid_prefix(value) {
                        return Err(bad(&key, value, "dot-separated tokens of [A-Za-z0-9_-]"));
                    }
                    o.subject_prefix = value.to_owned();
                }
                other => {
                    return Err(TransportError::refused(
                        ErrorKind::InvalidInput,
                        format!("unknown NATS backend parameter {other:?} (known: {KNOWN})"),
                    ));
                }
            }
        }
        Ok(o)
    }
}

fn bad(key: &str, value: &str, want: &str) -> TransportError {
    TransportError::refused(
        ErrorKind::InvalidInput,
        format!("NATS backend parameter {key}={value:?}: expected {want}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(q: &str) -> Result<NatsOptions, TransportError> {
        NatsOptions::from_url_query(&url::Url::parse(&format!("nats://h:4222{q}")).unwrap())
    }

    #[test]
    fn no_query_is_the_defaults() {
        let o = opts("").unwrap();
        assert_eq!(o, NatsOptions::default());
        assert_eq!(
            (o.replicas, o.duplicate_window, o.require_fsync),
            (1, Duration::from_secs(120), false)
        );
    }

    #[test]
    fn every_parameter_is_read() {
        let o = opts(
            "?replicas=3&duplicate_window=2m&require_fsync=true&dead_letter_stream=DEAD\
             &monitor=http://127.0.0.1:8222/&subject_prefix=app.mq&request_timeout=750ms",
        )
        .unwrap();
        assert_eq!(o.replicas, 3);
        assert_eq!(o.duplicate_window, Duration::from_secs(120));
        assert!(o.require_fsync);
        assert_eq!(o.dead_letter_stream.as_deref(), Some("DEAD"));
        assert_eq!(o.monitor.as_deref(), Some("http://127.0.0.1:8222"));
        assert_eq!(o.subject_prefix, "app.mq");
        assert_eq!(o.request_timeout, Duration::from_millis(750));
        assert!(opts("?monitor=none").unwrap().no_monitor);
    }

    #[test]
    fn out_of_bounds_and_unknown_parameters_are_refused_clearly() {
        for (q, says) in [
            ("?replicas=0", "replicas=\"0\""),
            ("?replicas=7", "1 to 5"),
            ("?duplicate_window=10ms", "100ms to 7d"),
            ("?duplicate_window=8d", "100ms to 7d"),
            ("?duplicate_window=soon", "duplicate_window"),
            ("?require_fsync=maybe", "true or false"),
            ("?monitor=ftp://x", "http://host:port"),
            ("?dead_letter_stream=a.b", "stream name"),
            ("?subject_prefix=a..b", "dot-separated"),
            (
                "?requre_fsync=true",
                "unknown NATS backend parameter \"requre_fsync\"",
            ),
        ] {
            let e = opts(q).unwrap_err();
            assert_eq!(
                (e.kind, e.retryable()),
                (ErrorKind::InvalidInput, false),
                "{q}"
            );
            assert!(e.message.contains(says), "{q}: {}", e.message);
        }
    }
}
