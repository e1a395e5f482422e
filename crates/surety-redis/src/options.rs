//! The backend's settings, and how a `--backend` URL's query sets them:
//! `redis://host:6379/0?require_fsync=true&dedupe_window=10000&prefix=surety`.
//! Every value is checked against bounds; an unknown parameter is an error, not ignored
//! (a typo in `require_fsync` must not run a consumer on an unsafe server).

use std::time::Duration;

pub use surety_core::url_params::{parse_bool, parse_duration};
use surety_core::{ErrorKind, TransportError};

use crate::keys;

/// How the backend lays out its keys, what it accepts at connect, and its timings.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisOptions {
    /// Refuse to connect to a server whose confirms do not survive a power loss
    /// (`appendonly` not `yes` with `appendfsync always`, or unknown).
    pub require_fsync: bool,
    /// First part of every key Surety writes (docs/backends.md, "Key layout").
    pub prefix: String,
    /// Sequences remembered per producer and topic: a retry of one of the most recent N
    /// is answered as a duplicate of the original; one below them is refused
    /// (`SequenceTooOld`). Surety's own broker keeps 10 000.
    pub dedupe_window: u64,
    /// Longest wait for any one server answer.
    pub request_timeout: Duration,
    /// How often a session looks for entries idle past their lease (XAUTOCLAIM), and so
    /// how far a nack's delay may round up.
    pub reclaim_interval: Duration,
    /// The nack delay after the first delivery; it doubles per delivery up to
    /// [`nak_backoff_max`](Self::nak_backoff_max), and a consumer's own delay wins where
    /// it is longer. Never zero.
    pub nak_backoff_initial: Duration,
    pub nak_backoff_max: Duration,
    /// A topic's `max_deliveries` and lease when `create_topic` does not name them.
    pub default_max_deliveries: u32,
    pub default_ack_wait: Duration,
    /// The largest payload on any topic (a topic's own `max_message_bytes` may be lower).
    pub max_message_bytes: u32,
    /// A publish is confirmed only once this many replicas have its entries (`WAIT`);
    /// 0: once the primary has them.
    pub wait_replicas: u16,
    /// How long a publish waits for those replicas before it fails (`Unknown`: stored on
    /// the primary; a retry is answered as a duplicate and waits again).
    pub wait_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            require_fsync: false,
            prefix: "surety".to_owned(),
            dedupe_window: 10_000,
            request_timeout: Duration::from_secs(5),
            reclaim_interval: Duration::from_millis(250),
            nak_backoff_initial: Duration::from_secs(1),
            nak_backoff_max: Duration::from_secs(60),
            default_max_deliveries: 5,
            default_ack_wait: Duration::from_secs(30),
            max_message_bytes: 8 * 1024 * 1024,
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
        }
    }
}

const KNOWN: &str = "require_fsync, prefix, dedupe_window, request_timeout, reclaim_interval, \
                     max_message_bytes, wait_replicas, wait_timeout";

impl RedisOptions {
    /// The defaults, changed by the URL's query parameters: `require_fsync` (`true` or
    /// `false`), `prefix` (`[A-Za-z0-9_-]`), `dedupe_window` (100 to 1 000 000
    /// sequences), `request_timeout` (100 ms to 10 min), `reclaim_interval` (10 ms to
    /// 10 s), `max_message_bytes` (1 to 512 MiB), `wait_replicas` (0 to 16), `wait_timeout`
    /// (10 ms to 1 min, below `request_timeout`).
    pub fn from_url_query(url: &url::Url) -> Result<Self, TransportError> {
        let mut o = RedisOptions::default();
        for (key, value) in url.query_pairs() {
            let value = value.as_ref();
            match key.as_ref() {
                "require_fsync" => {
                    o.require_fsync =
                        parse_bool(value).ok_or_else(|| bad(&key, value, "true or false"))?
                }
                "prefix" => {
                    if !keys::valid_prefix(value) {
                        return Err(bad(&key, value, "1 to 64 characters of [A-Za-z0-9_-]"));
                    }
                    o.prefix = value.to_owned();
                }
                "dedupe_window" => {
                    o.dedupe_window = value
                        .parse()
                        .ok()
                        .filter(|n| (100..=1_000_000).contains(n))
                        .ok_or_else(|| bad(&key, value, "100 to 1000000 sequences"))?
                }
                "request_timeout" => {
                    o.request_timeout = parse_duration(value)
                        .filter(|d| {
                            (Duration::from_millis(100)..=Duration::from_secs(600)).contains(d)
                        })
                        .ok_or_else(|| bad(&key, value, "a duration from 100ms to 10m"))?
                }
                "reclaim_interval" => {
                    o.reclaim_interval = parse_duration(value)
                        .filter(|d| {
                            (Duration::from_millis(10)..=Duration::from_secs(10)).contains(d)
                        })
                        .ok_or_else(|| bad(&key, value, "a duration from 10ms to 10s"))?
                }
                "max_message_bytes" => {
                    o.max_message_bytes = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=512 * 1024 * 1024).contains(n))
                        .ok_or_else(|| bad(&key, value, "1 to 536870912 bytes"))?
                }
                "wait_replicas" => {
                    o.wait_replicas = value
                        .parse()
                        .ok()
                        .filter(|n| *n <= 16)
                        .ok_or_else(|| bad(&key, value, "0 to 16 replicas"))?
                }
                "wait_timeout" => {
                    o.wait_timeout = parse_duration(value)
                        .filter(|d| {
                            (Duration::from_millis(10)..=Duration::from_secs(60)).contains(d)
                        })
                        .ok_or_else(|| bad(&key, value, "a duration from 10ms to 1m"))?
                }
                other => {
                    return Err(TransportError::refused(
                        ErrorKind::InvalidInput,
                        format!("unknown Redis backend parameter {other:?} (known: {KNOWN})"),
                    ));
                }
            }
        }
        if o.wait_replicas > 0 && o.wait_timeout >= o.request_timeout {
            return Err(TransportError::refused(
                ErrorKind::InvalidInput,
                format!(
                    "Redis backend parameter wait_timeout={:?} must be below request_timeout={:?} \
                     (the WAIT is one request)",
                    o.wait_timeout, o.request_timeout
                ),
            ));
        }
        Ok(o)
    }
}

fn bad(key: &str, value: &str, want: &str) -> TransportError {
    TransportError::refused(
        ErrorKind::InvalidInput,
        format!("Redis backend parameter {key}={value:?}: expected {want}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(q: &str) -> Result<RedisOptions, TransportError> {
        RedisOptions::from_url_query(&url::Url::parse(&format!("redis://h:6379{q}")).unwrap())
    }

    #[test]
    fn parameters_are_read_and_checked() {
        assert_eq!(opts("").unwrap(), RedisOptions::default());
        let o = opts("?require_fsync=true&prefix=app&dedupe_window=500&request_timeout=750ms&reclaim_interval=50ms&max_message_bytes=1024").unwrap();
        assert!(o.require_fsync);
        assert_eq!(o.prefix, "app");
        assert_eq!(o.dedupe_window, 500);
        assert_eq!(o.request_timeout, Duration::from_millis(750));
        assert_eq!(o.reclaim_interval, Duration::from_millis(50));
        assert_eq!(o.max_message_bytes, 1024);
        let o = opts("?wait_replicas=2&wait_timeout=250ms").unwrap();
        assert_eq!(
            (o.wait_replicas, o.wait_timeout),
            (2, Duration::from_millis(250))
        );
        for (q, says) in [
            ("?require_fsync=maybe", "true or false"),
            ("?prefix=a:b", "[A-Za-z0-9_-]"),
            ("?dedupe_window=5", "100 to 1000000"),
            ("?requre_fsync=true", "unknown Redis backend parameter"),
            ("?wait_replicas=17", "0 to 16 replicas"),
            ("?wait_timeout=5ms", "10ms to 1m"),
            ("?wait_replicas=1&wait_timeout=10s", "below request_timeout"),
        ] {
            let e = opts(q).unwrap_err();
            assert_eq!((e.kind, e.retryable()), (ErrorKind::InvalidInput, false));
            assert!(e.message.contains(says), "{q}: {}", e.message);
        }
    }
}
