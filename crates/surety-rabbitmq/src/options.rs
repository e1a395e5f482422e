//! The backend's settings, and how a `--backend` URL's query sets them:
//! `amqp://guest:guest@127.0.0.1:5672/%2f?management=http://127.0.0.1:15672&prefix=surety`.
//! Every value is checked against bounds; an unknown parameter is an error, not ignored
//! (a typo must not run a consumer with settings nobody chose).

use std::time::Duration;

use surety_core::url_params::{parse_bool, parse_duration};
use surety_core::{ErrorKind, TransportError};

use crate::names;

/// How the backend names what it declares, where it reads what AMQP cannot tell, and
/// its timings.
#[derive(Debug, Clone, PartialEq)]
pub struct RabbitOptions {
    /// Refuse to run unless a confirm survives a power loss. Always met: every queue
    /// Surety declares is a quorum queue, whose confirms come after a quorum fsynced.
    pub require_fsync: bool,
    /// First part of every exchange and queue name (docs/backends.md, "Names").
    pub prefix: String,
    /// The management API (`http://host:15672`), where a topic's settings, its groups and
    /// the unacked counts are read (AMQP 0-9-1 has no way to list or read them); `None`:
    /// without it, `topics list` is refused and a topic's settings are the defaults.
    pub management: Option<url::Url>,
    /// Longest wait for any one broker answer.
    pub request_timeout: Duration,
    /// Confirm channels publishes are spread over.
    pub publish_channels: usize,
    /// The nack delay after the first delivery; it doubles per delivery up to
    /// [`nak_backoff_max`](Self::nak_backoff_max), and a consumer's own delay wins where
    /// it is longer. Rounded up to the next retry queue (`RETRY_STEPS`).
    pub nak_backoff_initial: Duration,
    pub nak_backoff_max: Duration,
    /// A topic's `max_deliveries` and lease when `create_topic` does not name them.
    pub default_max_deliveries: u32,
    pub default_ack_wait: Duration,
    /// How long a topic's history stream keeps a message (what a new group can start
    /// from): RabbitMQ's `x-max-age` of the streams Surety declares.
    pub log_max_age: Duration,
    /// The largest payload on any topic (a topic's own `max_message_bytes` may be lower).
    pub max_message_bytes: u32,
}

impl Default for RabbitOptions {
    fn default() -> Self {
        Self {
            require_fsync: false,
            prefix: "surety".to_owned(),
            management: None,
            request_timeout: Duration::from_secs(5),
            publish_channels: 4,
            nak_backoff_initial: Duration::from_secs(1),
            nak_backoff_max: Duration::from_secs(60),
            default_max_deliveries: 5,
            default_ack_wait: Duration::from_secs(30),
            max_message_bytes: 8 * 1024 * 1024,
            log_max_age: Duration::from_secs(7 * 86_400),
        }
    }
}

const KNOWN: &str = "require_fsync, prefix, management, request_timeout, publish_channels, \
                     max_message_bytes, log_max_age";

impl RabbitOptions {
    /// The defaults, changed by the URL's query parameters: `require_fsync` (`true` or
    /// `false`), `prefix` (1 to 32 of `[A-Za-z0-9_-]`), `management` (`http(s)://...`, or
    /// `none`; default `http://<host>:15672` with the URL's user and password),
    /// `request_timeout` (100 ms to 10 min), `publish_channels` (1 to 64),
    /// `max_message_bytes` (1 to 128 MiB, RabbitMQ's own ceiling), `log_max_age` (1 min to
    /// 3650 d; default 7 d).
    pub fn from_url_query(url: &url::Url) -> Result<Self, TransportError> {
        let mut o = RabbitOptions {
            management: default_management(url),
            ..RabbitOptions::default()
        };
        for (key, value) in url.query_pairs() {
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
                "management" => {
                    o.management = if value == "none" {
                        None
                    } else {
                        let mut m = url::Url::parse(value)
                            .ok()
                            .filter(|m| matches!(m.scheme(), "http" | "https"))
                            .ok_or_else(|| bad(&key, value, "an http(s):// URL or none"))?;
                        if m.username().is_empty() {
                            let _ = m.set_username(&user(url));
                            let _ = m.set_password(Some(&password(url)));
                        }
                        Some(m)
                    }
                }
                "request_timeout" => {
                    o.request_timeout = parse_duration(value)
                        .filter(|d| {
                            (Duration::from_millis(100)..=Duration::from_secs(600)).contains(d)
                        })
                        .ok_or_else(|| bad(&key, value, "a duration from 100ms to 10m"))?
                }
                "publish_channels" => {
                    o.publish_channels = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=64).contains(n))
                        .ok_or_else(|| bad(&key, value, "1 to 64 channels"))?
                }
                "max_message_bytes" => {
                    o.max_message_bytes = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=128 * 1024 * 1024).contains(n))
                        .ok_or_else(|| bad(&key, value, "1 to 134217728 bytes"))?
                }
                "log_max_age" => {
                    o.log_max_age = parse_duration(value)
                        .filter(|d| {
                            (Duration::from_secs(60)..=Duration::from_secs(3650 * 86_400))
                                .contains(d)
                        })
                        .ok_or_else(|| bad(&key, value, "a duration from 1m to 3650d"))?
                }
                other => {
                    return Err(TransportError::refused(
                        ErrorKind::InvalidInput,
                        format!("unknown RabbitMQ backend parameter {other:?} (known: {KNOWN})"),
                    ));
                }
            }
        }
        Ok(o)
    }
}

fn user(url: &url::Url) -> String {
    match url.username() {
        "" => "guest".to_owned(),
        u => u.to_owned(),
    }
}

fn password(url: &url::Url) -> String {
    url.password().unwrap_or("guest").to_owned()
}

/// `http://<user>:<password>@<host>:15672`, the management plugin's usual place.
fn default_management(url: &url::Url) -> Option<url::Url> {
    let host = url.host_str()?;
    let mut m = url::Url::parse(&format!("http://{host}:15672")).ok()?;
    let _ = m.set_username(&user(url));
    let _ = m.set_password(Some(&password(url)));
    Some(m)
}

fn bad(key: &str, value: &str, want: &str) -> TransportError {
    TransportError::refused(
        ErrorKind::InvalidInput,
        format!("RabbitMQ backend parameter {key}={value:?}: expected {want}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(q: &str) -> Result<RabbitOptions, TransportError> {
        RabbitOptions::from_url_query(
            &url::Url::parse(&format!("amqp://u:p@h:5672/%2f{q}")).unwrap(),
        )
    }

    #[test]
    fn parameters_are_read_and_checked() {
        let o = opts("").unwrap();
        assert_eq!(o.management.unwrap().as_str(), "http://u:p@h:15672/");
        let o = opts("?require_fsync=true&prefix=app&management=http://m:1&request_timeout=750ms&publish_channels=2&max_message_bytes=1024").unwrap();
        assert!(o.require_fsync);
        assert_eq!(o.prefix, "app");
        assert_eq!(o.management.unwrap().as_str(), "http://u:p@m:1/");
        assert_eq!(o.request_timeout, Duration::from_millis(750));
        assert_eq!((o.publish_channels, o.max_message_bytes), (2, 1024));
        assert_eq!(opts("?management=none").unwrap().management, None);
        for (q, says) in [
            ("?require_fsync=maybe", "true or false"),
            ("?prefix=a.b", "[A-Za-z0-9_-]"),
            ("?management=ftp://x", "http(s)://"),
            ("?publish_channels=0", "1 to 64"),
            ("?max_message_bytes=999999999", "1 to 134217728"),
            ("?requre_fsync=true", "unknown RabbitMQ backend parameter"),
        ] {
            let e = opts(q).unwrap_err();
            assert_eq!((e.kind, e.retryable()), (ErrorKind::InvalidInput, false));
            assert!(e.message.contains(says), "{q}: {}", e.message);
        }
    }
}
