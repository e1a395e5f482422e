//! The backend's settings, and how a `--backend` URL sets them:
//! `kafka://host1:9092,host2:9092?prefix=app&retry=topic&require_fsync=true`. The
//! authority is the bootstrap list (comma-separated `host:port`); every query value is
//! checked against bounds, and an unknown parameter is an error, not ignored.

use std::time::Duration;

use surety_core::url_params::{parse_bool, parse_duration};
use surety_core::{ErrorKind, TransportError};

use crate::names;

/// How a nack waits out its delay (docs/backends.md, "Kafka").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryMode {
    /// The record stays where it is: redelivered in place after the delay, its key parked
    /// meanwhile (later records of that key wait; other keys go on), so the order of a
    /// key is kept. The partition's committed offset waits for it.
    InPlace,
    /// A copy goes to the group's own topic with the delay, count and reason in headers,
    /// and the original is settled: the partition moves on, a key's order is not kept
    /// across the retry.
    Topic,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KafkaOptions {
    /// `host:port` of one or more brokers.
    pub bootstrap: String,
    /// Refuse to run unless a confirm survives a power loss of one broker: every topic
    /// Surety uses must have replication ≥ 2 with `min.insync.replicas` ≥ 2 (Kafka's
    /// `acks=all` confirms a write in the page cache of the in-sync replicas).
    pub require_fsync: bool,
    /// First part of every topic name (`<prefix>.<topic>`); empty: topics are named as
    /// they are, so Surety consumes the topics a Kafka user already has.
    pub prefix: String,
    pub retry: RetryMode,
    /// Longest wait for any one broker answer.
    pub request_timeout: Duration,
    /// A new topic's partitions when `create_topic` does not name them.
    pub default_partitions: u32,
    /// Replicas of every topic Surety creates; `None`: the broker's default.
    pub replication_factor: Option<u16>,
    pub default_max_deliveries: u32,
    /// A topic's default lease, which is the group membership's session timeout here
    /// (Kafka leases a partition to a consumer, not a record).
    pub default_ack_wait: Duration,
    /// The nack delay after the first delivery, doubling per delivery up to `nak_backoff_max`
    /// (a consumer's own delay wins where it is longer).
    pub nak_backoff_initial: Duration,
    pub nak_backoff_max: Duration,
    /// The largest payload (the broker's `message.max.bytes` is the other limit).
    pub max_message_bytes: u32,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        Self {
            bootstrap: "127.0.0.1:9092".to_owned(),
            require_fsync: false,
            prefix: String::new(),
            retry: RetryMode::InPlace,
            request_timeout: Duration::from_secs(10),
            default_partitions: 4,
            replication_factor: None,
            default_max_deliveries: 5,
            default_ack_wait: Duration::from_secs(30),
            nak_backoff_initial: Duration::from_secs(1),
            nak_backoff_max: Duration::from_secs(60),
            max_message_bytes: 1_000_000,
        }
    }
}

const KNOWN: &str = "require_fsync, prefix, retry, request_timeout, partitions, \
                     replication_factor, max_message_bytes";

impl KafkaOptions {
    /// Reads `kafka://h1:p1,h2:p2[/]?query`. Parameters: `require_fsync` (`true`/`false`),
    /// `prefix` (1 to 32 of `[A-Za-z0-9_-]`), `retry` (`in_place` or `topic`),
    /// `request_timeout` (100 ms to 10 min), `partitions` (1 to 1024), `replication_factor`
    /// (1 to 16), `max_message_bytes` (1 to 64 MiB).
    pub fn from_url(url: &str) -> Result<KafkaOptions, TransportError> {
        let rest = url.strip_prefix("kafka://").ok_or_else(|| {
            TransportError::refused(
                ErrorKind::InvalidInput,
                format!("Kafka URL {url:?}: the scheme must be kafka://"),
            )
        })?;
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = authority.trim_end_matches('/');
        let mut brokers = Vec::new();
        for b in authority.split(',') {
            let ok = b.rsplit_once(':').is_some_and(|(h, p)| {
                !h.is_empty()
                    && !h.contains(['/', '@', ' '])
                    && p.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                return Err(TransportError::refused(
                    ErrorKind::InvalidInput,
                    format!(
                        "Kafka URL {url:?}: {b:?} is not host:port (kafka://host1:9092,host2:9092)"
                    ),
                ));
            }
            brokers.push(b);
        }
        let mut o = KafkaOptions {
            bootstrap: brokers.join(","),
            ..KafkaOptions::default()
        };
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let value = value.as_ref();
            match key.as_ref() {
                "require_fsync" => {
                    o.require_fsync =
                        parse_bool(value).ok_or_else(|| bad(&key, value, "true or false"))?
                }
                "prefix" => {
                    if !names::valid_prefix(value) {
                        return Err(bad(&key, value, "1 to 32 characters of [A-Za-z0-9_-]"));
                    }
                    o.prefix = value.to_owned();
                }
                "retry" => {
                    o.retry = match value {
                        "in_place" => RetryMode::InPlace,
                        "topic" => RetryMode::Topic,
                        _ => return Err(bad(&key, value, "in_place or topic")),
                    }
                }
                "request_timeout" => {
                    o.request_timeout = parse_duration(value)
                        .filter(|d| {
                            (Duration::from_millis(100)..=Duration::from_secs(600)).contains(d)
                        })
                        .ok_or_else(|| bad(&key, value, "a duration from 100ms to 10m"))?
                }
                "partitions" => {
                    o.default_partitions = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=1024).contains(n))
                        .ok_or_else(|| bad(&key, value, "1 to 1024"))?
                }
                "replication_factor" => {
                    o.replication_factor = Some(
                        value
                            .parse()
                            .ok()
                            .filter(|n| (1..=16).contains(n))
                            .ok_or_else(|| bad(&key, value, "1 to 16"))?,
                    )
                }
                "max_message_bytes" => {
                    o.max_message_bytes = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=64 * 1024 * 1024).contains(n))
                        .ok_or_else(|| bad(&key, value, "1 to 67108864 bytes"))?
                }
                other => {
                    return Err(TransportError::refused(
                        ErrorKind::InvalidInput,
                        format!("unknown Kafka backend parameter {other:?} (known: {KNOWN})"),
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
        format!("Kafka backend parameter {key}={value:?}: expected {want}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_read_and_checked() {
        let o = KafkaOptions::from_url("kafka://a:9092,b:9093").unwrap();
        assert_eq!(o.bootstrap, "a:9092,b:9093");
        assert_eq!(o.retry, RetryMode::InPlace);
        let o = KafkaOptions::from_url(
            "kafka://127.0.0.1:1/?require_fsync=true&prefix=app&retry=topic&request_timeout=750ms&partitions=8&replication_factor=3&max_message_bytes=1024",
        )
        .unwrap();
        assert!(o.require_fsync);
        assert_eq!(o.prefix, "app");
        assert_eq!(o.retry, RetryMode::Topic);
        assert_eq!(o.request_timeout, Duration::from_millis(750));
        assert_eq!((o.default_partitions, o.replication_factor), (8, Some(3)));
        assert_eq!(o.max_message_bytes, 1024);
        for (url, says) in [
            ("nats://a:1", "kafka://"),
            ("kafka://a", "host:port"),
            ("kafka://a:1,", "host:port"),
            ("kafka://a:99999", "host:port"),
            ("kafka://a:1?retry=later", "in_place or topic"),
            ("kafka://a:1?partitions=0", "1 to 1024"),
            ("kafka://a:1?prefix=a.b", "[A-Za-z0-9_-]"),
            ("kafka://a:1?max_message_bytes=999999999", "1 to 67108864"),
            ("kafka://a:1?acks=1", "unknown Kafka backend parameter"),
        ] {
            let e = KafkaOptions::from_url(url).unwrap_err();
            assert_eq!((e.kind, e.retryable()), (ErrorKind::InvalidInput, false));
            assert!(e.message.contains(says), "{url}: {}", e.message);
        }
    }
}
