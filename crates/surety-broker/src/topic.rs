//! Topic and group names, topic settings, and which partition a message goes to.
//!
//! Everything here is checked before anything is created or changed, so bad input gets a
//! clear error naming the offending field and changes nothing (G6). Names are limited to
//! characters that are safe as a directory name on every file system and in a URL path
//! segment without escaping, because a topic is both.
//!
//! Settings arrive as JSON: [`TopicConfig`] for a full configuration (unknown fields are
//! refused, so a typo like `max_delivery` is an error rather than a silently ignored
//! setting) and [`TopicConfigPatch`] for `PUT /v1/topics/{topic}` bodies, where every
//! field is optional and absent means "keep".
//!
//! [`partition_for`] must give the same partition for the same key forever, on every
//! platform and version, or per-key order breaks across a restart or an upgrade; so it
//! is a fixed, documented function with pinned test values, not `DefaultHasher`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Deserializer, Serialize};

use crate::backoff::Backoff;
use crate::group::GroupPolicy;

/// Longest topic or group name, in characters (Kafka's limit; fits a file name).
pub const MAX_NAME_LEN: usize = 249;
pub const MAX_PARTITIONS: u32 = 1024;
/// Upper bound of `max_deliveries`.
pub const MAX_DELIVERIES_LIMIT: u32 = 1000;
const HOUR_MS: u64 = 60 * 60 * 1000;
/// Upper bound of `ack_wait_ms` and of the retry backoff delays.
pub const MAX_ACK_WAIT_MS: u64 = crate::limits::MAX_LEASE_MS;
/// Upper bound of `dedupe_window_ms`: every id inside the window is held in memory.
pub const MAX_DEDUPE_WINDOW_MS: u64 = 24 * HOUR_MS;
/// Upper bound of `max_message_bytes`: leaves room for key, headers and framing under
/// the log's default 8 MiB record limit.
pub const MAX_MESSAGE_BYTES_LIMIT: u32 = 4 * 1024 * 1024;
const MAX_MULTIPLIER: f64 = 100.0;
/// Bounds of `segment_bytes`: below 1 MiB a busy partition rolls segments constantly;
/// the log's index positions are 32-bit, and 1 GiB keeps retention's unit reasonable.
pub const MIN_SEGMENT_BYTES: u64 = 1 << 20;
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

/// Why a topic or group name was refused. `kind` is "topic" or "group".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    #[error("{kind} name is empty; use 1 to {max} letters, digits, '.', '_', '-'", max = MAX_NAME_LEN)]
    Empty { kind: &'static str },
    #[error("{kind} name is {len} characters long; the limit is {max}", max = MAX_NAME_LEN)]
    TooLong { kind: &'static str, len: usize },
    /// `at` is the 1-based character position, as users count.
    #[error(
        "{kind} name contains {ch:?} at position {at}; allowed: letters, digits, '.', '_', '-'"
    )]
    BadChar {
        kind: &'static str,
        ch: char,
        at: usize,
    },
    #[error("{kind} name cannot be '.' or '..'")]
    DotName { kind: &'static str },
}

/// 1 to 249 characters of `[A-Za-z0-9._-]`, and not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), NameError> {
    validate_name("topic", name)
}

/// The same rules as topic names.
pub fn validate_group_name(name: &str) -> Result<(), NameError> {
    validate_name("group", name)
}

fn validate_name(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    // Bytes are a cheap upper bound; a long name of multi-byte characters may still fit,
    // and then fails on its first character instead.
    if name.len() > MAX_NAME_LEN {
        let len = name.chars().count();
        if len > MAX_NAME_LEN {
            return Err(NameError::TooLong { kind, len });
        }
    }
    if let Some((i, ch)) = name
        .chars()
        .enumerate()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::BadChar {
            kind,
            ch,
            at: i + 1,
        });
    }
    if name == "." || name == ".." {
        return Err(NameError::DotName { kind });
    }
    Ok(())
}

/// Why a topic configuration was refused. Messages name the field as it is spelled in
/// JSON.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{field} must be between {min} and {max}, got {got}")]
    OutOfRange {
        field: &'static str,
        min: u64,
        max: u64,
        got: u64,
    },
    #[error("{field} must be at least {min}, got {got}")]
    TooSmall {
        field: &'static str,
        min: u64,
        got: u64,
    },
    #[error("{field} must be between {min} and {max}, got {got}")]
    FloatOutOfRange {
        field: &'static str,
        min: f64,
        max: f64,
        got: f64,
    },
    #[error(
        "retry_backoff.max_ms ({max_ms}) must be at least retry_backoff.initial_ms ({initial_ms})"
    )]
    BackoffMaxBelowInitial { initial_ms: u64, max_ms: u64 },
    #[error(
        "dedupe_window_ms ({window_ms}) must not exceed retention.max_age_ms ({max_age_ms}): \
         after a restart ids are checked against the retained log, so the window cannot \
         outlive it"
    )]
    DedupeWindowBeyondRetention { window_ms: u64, max_age_ms: u64 },
    #[error(
        "partitions cannot decrease (from {old} to {new}): messages in the removed \
         partitions would be stranded; create a new topic instead"
    )]
    PartitionsDecreased { old: u32, new: u32 },
}

/// Retry backoff as configured; see [`Backoff`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    /// Delay before the second delivery; 0 redelivers at once.
    pub initial_ms: u64,
    pub max_ms: u64,
    pub multiplier: f64,
    /// Fraction of each delay that is randomized, 0.0 to 1.0.
    pub jitter: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Backoff::default().into()
    }
}

impl From<BackoffConfig> for Backoff {
    fn from(c: BackoffConfig) -> Self {
        Backoff {
            initial_ms: c.initial_ms,
            max_ms: c.max_ms,
            multiplier: c.multiplier,
            jitter: c.jitter,
        }
    }
}

impl From<Backoff> for BackoffConfig {
    fn from(b: Backoff) -> Self {
        BackoffConfig {
            initial_ms: b.initial_ms,
            max_ms: b.max_ms,
            multiplier: b.multiplier,
            jitter: b.jitter,
        }
    }
}

/// What retention may delete, per partition log. Whatever the limits, retention never
/// deletes at or above a group's lowest unsettled offset unless `delete_unsettled`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Delete segments whose newest record is older than this; `None`: no age limit.
    pub max_age_ms: Option<u64>,
    /// Delete oldest segments while the partition is larger; `None`: no size limit.
    pub max_bytes: Option<u64>,
    /// Let the limits delete messages some group has not settled (they are counted as
    /// expired for that group). Off by default: no silent drop (G2).
    pub delete_unsettled: bool,
}

/// When a publish is acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DurabilityConfig {
    /// After the record is on stable storage (fdatasync), G1.
    #[default]
    #[serde(rename = "fsync")]
    Fsync,
    /// After the record is written to the OS: a power loss can lose acknowledged
    /// messages. An explicit opt-out for throughput.
    #[serde(rename = "none")]
    None,
}

/// A topic's settings. Deserializing fills absent fields with the defaults and refuses
/// unknown ones; call [`TopicConfig::validate`] before using it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicConfig {
    /// 1 to 1024; may grow on an existing topic, never shrink.
    pub partitions: u32,
    /// Deliveries before a message is dead-lettered, 1 to 1000.
    pub max_deliveries: u32,
    /// Default lease of a delivery, 1 ms to 12 h.
    pub ack_wait_ms: u64,
    pub retry_backoff: BackoffConfig,
    /// How long a message `id` is remembered for deduplication (like NATS JetStream's
    /// duplicate window); 0 turns id deduplication off. Producer sequences are
    /// deduplicated independently of it.
    pub dedupe_window_ms: u64,
    pub retention: RetentionConfig,
    pub durability: DurabilityConfig,
    /// Largest payload accepted, 1 byte to 4 MiB.
    pub max_message_bytes: u32,
    /// Size at which the topic's logs (partitions, journal, dead letters) start a new
    /// segment, 1 MiB to 1 GiB; `None`: the broker's default (64 MiB). Retention deletes
    /// whole segments, so this is also its granularity. New logs use a change at once,
    /// open ones from the next broker start. At least twice the largest record is used.
    pub segment_bytes: Option<u64>,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            partitions: 1,
            max_deliveries: 5,
            ack_wait_ms: 30_000,
            retry_backoff: BackoffConfig::default(),
            dedupe_window_ms: 2 * 60 * 1000,
            retention: RetentionConfig::default(),
            durability: DurabilityConfig::Fsync,
            max_message_bytes: 1024 * 1024,
            segment_bytes: None,
        }
    }
}

fn range(field: &'static str, got: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&got) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            field,
            min,
            max,
            got,
        })
    }
}

fn float_range(field: &'static str, got: f64, min: f64, max: f64) -> Result<(), ConfigError> {
    // `contains` is false for NaN.
    if (min..=max).contains(&got) {
        Ok(())
    } else {
        Err(ConfigError::FloatOutOfRange {
            field,
            min,
            max,
            got,
        })
    }
}

impl TopicConfig {
    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        range(
            "partitions",
            self.partitions.into(),
            1,
            MAX_PARTITIONS.into(),
        )?;
        range(
            "max_deliveries",
            self.max_deliveries.into(),
            1,
            MAX_DELIVERIES_LIMIT.into(),
        )?;
        range("ack_wait_ms", self.ack_wait_ms, 1, MAX_ACK_WAIT_MS)?;
        let b = &self.retry_backoff;
        range("retry_backoff.initial_ms", b.initial_ms, 0, MAX_ACK_WAIT_MS)?;
        range("retry_backoff.max_ms", b.max_ms, 0, MAX_ACK_WAIT_MS)?;
        if b.max_ms < b.initial_ms {
            return Err(ConfigError::BackoffMaxBelowInitial {
                initial_ms: b.initial_ms,
                max_ms: b.max_ms,
            });
        }
        float_range(
            "retry_backoff.multiplier",
            b.multiplier,
            1.0,
            MAX_MULTIPLIER,
        )?;
        float_range("retry_backoff.jitter", b.jitter, 0.0, 1.0)?;
        range(
            "dedupe_window_ms",
            self.dedupe_window_ms,
            0,
            MAX_DEDUPE_WINDOW_MS,
        )?;
        let r = &self.retention;
        if let Some(age) = r.max_age_ms {
            if age < 1 {
                return Err(ConfigError::TooSmall {
                    field: "retention.max_age_ms",
                    min: 1,
                    got: age,
                });
            }
            // Retention keeps every record younger than `max_age_ms`, so this is what
            // lets a restarted broker rebuild the id window from the log.
            if self.dedupe_window_ms > age {
                return Err(ConfigError::DedupeWindowBeyondRetention {
                    window_ms: self.dedupe_window_ms,
                    max_age_ms: age,
                });
            }
        }
        if let Some(bytes) = r.max_bytes
            && bytes < 1
        {
            return Err(ConfigError::TooSmall {
                field: "retention.max_bytes",
                min: 1,
                got: bytes,
            });
        }
        range(
            "max_message_bytes",
            self.max_message_bytes.into(),
            1,
            MAX_MESSAGE_BYTES_LIMIT.into(),
        )?;
        if let Some(bytes) = self.segment_bytes {
            range("segment_bytes", bytes, MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES)?;
        }
        Ok(())
    }

    /// Checks a change from `old` to `new` of an existing topic: `new` must be valid and
    /// must not have fewer partitions (more are allowed; keys then move only to the new
    /// partitions, see [`partition_for`]).
    pub fn check_update(old: &TopicConfig, new: &TopicConfig) -> Result<(), ConfigError> {
        new.validate()?;
        if new.partitions < old.partitions {
            return Err(ConfigError::PartitionsDecreased {
                old: old.partitions,
                new: new.partitions,
            });
        }
        Ok(())
    }

    /// The delivery policy every consumer group of this topic follows.
    pub fn group_policy(&self) -> GroupPolicy {
        GroupPolicy {
            max_deliveries: self.max_deliveries,
            backoff: self.retry_backoff.into(),
        }
    }

    /// The settings of one of this topic's logs; `default_segment_bytes` applies when
    /// the topic sets none. The topic's `durability` is its partitions'; the group
    /// journal and the dead letters are always fsynced (group state must survive).
    ///
    /// Opening verifies only each log's active segment: sealed segments are trusted
    /// through their index files, checked against the segments (`surety_log` docs), so a
    /// broker restarts in the same time whatever it retains. Their records are still
    /// CRC-checked on every read, and the background scrub (`crate::scrub`) checks them
    /// all; `surety verify` does the full check offline.
    pub fn log_config(
        &self,
        log: &crate::LogName,
        default_segment_bytes: u64,
    ) -> surety_log::LogConfig {
        // Room for the broker's own headers on top of the largest message.
        let max_record_bytes = self.max_message_bytes as usize + 64 * 1024;
        surety_log::LogConfig {
            segment_bytes: self
                .segment_bytes
                .unwrap_or(default_segment_bytes)
                .max(2 * max_record_bytes as u64),
            max_record_bytes,
            durability: match (log, self.durability) {
                (crate::LogName::Partition(_), DurabilityConfig::None) => {
                    surety_log::Durability::None
                }
                _ => surety_log::Durability::Fsync,
            },
            verify_on_open: surety_log::VerifyOnOpen::ActiveSegment,
            ..surety_log::LogConfig::default()
        }
    }

    /// Dedupe settings for this topic's [`crate::dedupe::DedupeTable`]: the id window
    /// from here, the producer limits at their defaults.
    pub fn dedupe_config(&self) -> crate::dedupe::DedupeConfig {
        crate::dedupe::DedupeConfig {
            id_window_ms: self.dedupe_window_ms,
            ..Default::default()
        }
    }
}

/// Deserializes a present field as `Some(value)`. With it, `null` is refused for plain
/// fields ("invalid type: null") and means "no limit" for `Option<Option<_>>` fields,
/// while an absent field stays `None` ("keep").
fn present<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    T::deserialize(d).map(Some)
}

/// A `PUT /v1/topics/{topic}` body: absent fields keep their value (the default for a
/// new topic). Apply it with [`TopicConfigPatch::apply`], then check the result with
/// [`TopicConfig::validate`] (new topic) or [`TopicConfig::check_update`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicConfigPatch {
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub max_deliveries: Option<u32>,
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub ack_wait_ms: Option<u64>,
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<BackoffConfigPatch>,
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub dedupe_window_ms: Option<u64>,
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionConfigPatch>,
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub durability: Option<DurabilityConfig>,
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<u32>,
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub segment_bytes: Option<u64>,
}

/// Part of a [`TopicConfigPatch`]: absent fields keep their value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfigPatch {
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub initial_ms: Option<u64>,
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<u64>,
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
}

/// Part of a [`TopicConfigPatch`]: absent fields keep their value; `null` limits mean
/// "no limit" (`Some(None)`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfigPatch {
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<Option<u64>>,
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<Option<u64>>,
    #[serde(deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub delete_unsettled: Option<bool>,
}

impl TopicConfigPatch {
    /// `base` with every present field replaced. Not validated.
    pub fn apply(&self, base: &TopicConfig) -> TopicConfig {
        let mut c = base.clone();
        set(&mut c.partitions, self.partitions);
        set(&mut c.max_deliveries, self.max_deliveries);
        set(&mut c.ack_wait_ms, self.ack_wait_ms);
        if let Some(b) = &self.retry_backoff {
            let r = &mut c.retry_backoff;
            set(&mut r.initial_ms, b.initial_ms);
            set(&mut r.max_ms, b.max_ms);
            set(&mut r.multiplier, b.multiplier);
            set(&mut r.jitter, b.jitter);
        }
        set(&mut c.dedupe_window_ms, self.dedupe_window_ms);
        if let Some(p) = &self.retention {
            let r = &mut c.retention;
            set(&mut r.max_age_ms, p.max_age_ms);
            set(&mut r.max_bytes, p.max_bytes);
            set(&mut r.delete_unsettled, p.delete_unsettled);
        }
        set(&mut c.durability, self.durability);
        set(&mut c.max_message_bytes, self.max_message_bytes);
        if self.segment_bytes.is_some() {
            c.segment_bytes = self.segment_bytes;
        }
        c
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// The partition of a message: with a key, a stable function of the key alone (same key,
/// same partition, so per-key order holds); without one, the next in round robin.
///
/// The key function is fixed forever: `jump_consistent_hash(fnv1a_64(key), partitions)`
/// (FNV-1a 64-bit, then Lamping & Veach's jump consistent hash, which uses only IEEE-754
/// double arithmetic and is therefore the same on every platform). Jump hashing means
/// that when a topic grows from n to m partitions only the keys that must move do (a
/// fraction 1 − n/m, all to the new partitions), unlike `hash % partitions`. An empty key
/// is a key. `partitions` of 0 is treated as 1.
pub fn partition_for(key: Option<&[u8]>, partitions: u32, round_robin: &AtomicU64) -> u32 {
    let n = partitions.max(1);
    match key {
        Some(k) => jump_consistent_hash(fnv1a_64(k), n),
        None => (round_robin.fetch_add(1, Ordering::Relaxed) % u64::from(n)) as u32,
    }
}

/// FNV-1a, 64-bit (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Jump consistent hash (Lamping & Veach, 2014): a bucket in `0..buckets` (`buckets` ≥ 1).
fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> Result<TopicConfig, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    fn patch(s: &str) -> Result<TopicConfigPatch, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn names_at_the_length_boundaries() {
        assert_eq!(validate_topic_name(&"a".repeat(249)), Ok(()));
        assert_eq!(validate_topic_name("a"), Ok(()));
        let e = validate_topic_name(&"a".repeat(250)).unwrap_err();
        assert_eq!(
            e,
            NameError::TooLong {
                kind: "topic",
                len: 250
            }
        );
        assert_eq!(
            e.to_string(),
            "topic name is 250 characters long; the limit is 249"
        );
        let e = validate_group_name("").unwrap_err();
        assert_eq!(e, NameError::Empty { kind: "group" });
        assert!(e.to_string().starts_with("group name is empty"), "{e}");
    }

    #[test]
    fn dot_names() {
        for n in [".", ".."] {
            let e = validate_topic_name(n).unwrap_err();
            assert_eq!(e, NameError::DotName { kind: "topic" });
            assert_eq!(e.to_string(), "topic name cannot be '.' or '..'");
        }
        for n in ["...", ".a", "a.", "a..b", "_", "-", "Orders-2024_v1.eu"] {
            assert_eq!(validate_topic_name(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn bad_characters_are_named_with_their_position() {
        let e = validate_topic_name("abc/def").unwrap_err();
        assert_eq!(
            e,
            NameError::BadChar {
                kind: "topic",
                ch: '/',
                at: 4
            }
        );
        assert_eq!(
            e.to_string(),
            "topic name contains '/' at position 4; allowed: letters, digits, '.', '_', '-'"
        );
        for (name, ch, at) in [
            ("café", 'é', 4),
            ("a b", ' ', 2),
            ("a\nb", '\n', 2),
            ("ü", 'ü', 1),
            ("a:b", ':', 2),
            ("x%2F", '%', 2),
            ("a\0", '\0', 2),
        ] {
            assert_eq!(
                validate_group_name(name),
                Err(NameError::BadChar {
                    kind: "group",
                    ch,
                    at
                }),
                "{name:?}"
            );
        }
        assert!(
            validate_group_name("a\nb")
                .unwrap_err()
                .to_string()
                .contains(r"'\n' at position 2")
        );
    }

    #[test]
    fn unicode_length_counts_characters() {
        // 249 two-byte characters: 498 bytes but 249 characters, so the character is
        // what is wrong, not the length.
        let e = validate_topic_name(&"é".repeat(249)).unwrap_err();
        assert!(matches!(
            e,
            NameError::BadChar {
                ch: 'é', at: 1, ..
            }
        ));
        let e = validate_topic_name(&"é".repeat(250)).unwrap_err();
        assert_eq!(
            e,
            NameError::TooLong {
                kind: "topic",
                len: 250
            }
        );
    }

    #[test]
    fn defaults() {
        let c = TopicConfig::default();
        assert_eq!(c.partitions, 1);
        assert_eq!(c.max_deliveries, 5);
        assert_eq!(c.ack_wait_ms, 30_000);
        assert_eq!(
            c.retry_backoff,
            BackoffConfig {
                initial_ms: 1000,
                max_ms: 60_000,
                multiplier: 2.0,
                jitter: 0.2
            }
        );
        assert_eq!(c.dedupe_window_ms, 120_000);
        assert_eq!(c.retention, RetentionConfig::default());
        assert!(!c.retention.delete_unsettled);
        assert_eq!(c.durability, DurabilityConfig::Fsync);
        assert_eq!(c.max_message_bytes, 1 << 20);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(json("{}").unwrap(), c);
        assert_eq!(c.group_policy(), GroupPolicy::default());
    }

    #[test]
    fn json_round_trip_and_partial_bodies() {
        let c = json(
            r#"{"partitions":3,"durability":"none","retention":{"max_age_ms":86400000},
                "retry_backoff":{"jitter":0.0}}"#,
        )
        .unwrap();
        assert_eq!(c.partitions, 3);
        assert_eq!(c.durability, DurabilityConfig::None);
        assert_eq!(c.retention.max_age_ms, Some(86_400_000));
        assert_eq!(c.retention.max_bytes, None);
        assert_eq!(c.retry_backoff.jitter, 0.0);
        assert_eq!(c.retry_backoff.initial_ms, 1000);
        let text = serde_json::to_string(&c).unwrap();
        assert!(text.contains(r#""durability":"none""#), "{text}");
        assert_eq!(json(&text).unwrap(), c);
    }

    #[test]
    fn json_unknown_fields_and_wrong_types_are_refused() {
        let e = json(r#"{"max_delivery":3}"#).unwrap_err();
        assert!(e.contains("unknown field `max_delivery`"), "{e}");
        let e = json(r#"{"retention":{"max_age":1}}"#).unwrap_err();
        assert!(e.contains("unknown field `max_age`"), "{e}");
        let e = json(r#"{"retry_backoff":{"factor":3}}"#).unwrap_err();
        assert!(e.contains("unknown field `factor`"), "{e}");
        assert!(
            json(r#"{"partitions":"3"}"#)
                .unwrap_err()
                .contains("invalid type")
        );
        assert!(
            json(r#"{"partitions":-1}"#)
                .unwrap_err()
                .contains("invalid value")
        );
        assert!(
            json(r#"{"partitions":1.5}"#)
                .unwrap_err()
                .contains("invalid type")
        );
        assert!(json(r#"{"partitions":4294967296}"#).is_err());
        assert!(json(r#"{"partitions":null}"#).is_err());
        assert!(
            json(r#"{"durability":"fdatasync"}"#)
                .unwrap_err()
                .contains("unknown variant")
        );
        assert!(json(r#"{"durability":"Fsync"}"#).is_err());
        assert!(json(r#"{"retention":{"delete_unsettled":"yes"}}"#).is_err());
        assert!(json(r#""fsync""#).is_err());
        let e = patch(r#"{"partitions":2,"ack_wait":5}"#).unwrap_err();
        assert!(e.contains("unknown field `ack_wait`"), "{e}");
        assert!(patch(r#"{"retention":{"max_age":5}}"#).is_err());
        assert!(patch(r#"{"retry_backoff":{"jitter":"0"}}"#).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let bad = |f: fn(&mut TopicConfig)| {
            let mut c = TopicConfig::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert_eq!(
            bad(|c| c.partitions = 0),
            "partitions must be between 1 and 1024, got 0"
        );
        assert_eq!(
            bad(|c| c.partitions = 1025),
            "partitions must be between 1 and 1024, got 1025"
        );
        assert_eq!(
            bad(|c| c.max_deliveries = 0),
            "max_deliveries must be between 1 and 1000, got 0"
        );
        assert!(bad(|c| c.max_deliveries = 1001).starts_with("max_deliveries"));
        assert_eq!(
            bad(|c| c.ack_wait_ms = 0),
            "ack_wait_ms must be between 1 and 43200000, got 0"
        );
        assert!(bad(|c| c.ack_wait_ms = MAX_ACK_WAIT_MS + 1).starts_with("ack_wait_ms"));
        assert_eq!(
            bad(|c| c.retry_backoff.max_ms = 10),
            "retry_backoff.max_ms (10) must be at least retry_backoff.initial_ms (1000)"
        );
        assert_eq!(
            bad(|c| c.retry_backoff.multiplier = 0.5),
            "retry_backoff.multiplier must be between 1 and 100, got 0.5"
        );
        assert!(bad(|c| c.retry_backoff.multiplier = f64::NAN).contains("got NaN"));
        assert!(bad(|c| c.retry_backoff.multiplier = f64::INFINITY).contains("multiplier"));
        assert_eq!(
            bad(|c| c.retry_backoff.jitter = 1.5),
            "retry_backoff.jitter must be between 0 and 1, got 1.5"
        );
        assert!(bad(|c| c.retry_backoff.jitter = -0.1).starts_with("retry_backoff.jitter"));
        assert!(
            bad(|c| c.retry_backoff.max_ms = MAX_ACK_WAIT_MS + 1)
                .starts_with("retry_backoff.max_ms")
        );
        assert!(
            bad(|c| c.dedupe_window_ms = MAX_DEDUPE_WINDOW_MS + 1).starts_with("dedupe_window_ms")
        );
        assert_eq!(
            bad(|c| c.retention.max_age_ms = Some(0)),
            "retention.max_age_ms must be at least 1, got 0"
        );
        assert!(
            bad(|c| c.retention.max_age_ms = Some(60_000)).starts_with(
                "dedupe_window_ms (120000) must not exceed retention.max_age_ms (60000)"
            )
        );
        assert_eq!(
            bad(|c| c.retention.max_bytes = Some(0)),
            "retention.max_bytes must be at least 1, got 0"
        );
        assert_eq!(
            bad(|c| c.max_message_bytes = 0),
            "max_message_bytes must be between 1 and 4194304, got 0"
        );
        assert!(bad(|c| c.max_message_bytes = MAX_MESSAGE_BYTES_LIMIT + 1).contains("4194304"));
        assert_eq!(
            bad(|c| c.segment_bytes = Some(4096)),
            "segment_bytes must be between 1048576 and 1073741824, got 4096"
        );
        assert!(
            bad(|c| c.segment_bytes = Some(MAX_SEGMENT_BYTES + 1)).starts_with("segment_bytes")
        );

        // The boundaries themselves are fine.
        let mut c = TopicConfig {
            partitions: 1024,
            max_deliveries: 1000,
            ack_wait_ms: MAX_ACK_WAIT_MS,
            dedupe_window_ms: 0,
            max_message_bytes: MAX_MESSAGE_BYTES_LIMIT,
            ..Default::default()
        };
        c.retry_backoff = Backoff::NONE.into();
        c.retention.max_age_ms = Some(1);
        c.retention.max_bytes = Some(1);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn patch_applies_only_present_fields() {
        let base = TopicConfig {
            partitions: 2,
            retention: RetentionConfig {
                max_age_ms: Some(86_400_000),
                max_bytes: Some(1 << 30),
                delete_unsettled: false,
            },
            ..Default::default()
        };
        assert_eq!(patch("{}").unwrap().apply(&base), base);

        let p = patch(
            r#"{"max_deliveries":9,"retry_backoff":{"max_ms":5000},
                "retention":{"max_bytes":null,"delete_unsettled":true},"durability":"none"}"#,
        )
        .unwrap();
        let c = p.apply(&base);
        assert_eq!(c.max_deliveries, 9);
        assert_eq!(c.partitions, 2);
        assert_eq!(c.retry_backoff.max_ms, 5000);
        assert_eq!(c.retry_backoff.initial_ms, 1000);
        assert_eq!(c.retention.max_age_ms, Some(86_400_000), "absent: kept");
        assert_eq!(c.retention.max_bytes, None, "null: no limit");
        assert!(c.retention.delete_unsettled);
        assert_eq!(c.durability, DurabilityConfig::None);
        assert_eq!(TopicConfig::check_update(&base, &c), Ok(()));

        // A patch serializes only what it sets, and reads back the same.
        let text = serde_json::to_string(&p).unwrap();
        assert!(!text.contains("partitions"), "{text}");
        assert!(text.contains(r#""max_bytes":null"#), "{text}");
        assert_eq!(patch(&text).unwrap(), p);

        // null is not "keep" for plain fields: it is refused.
        let e = patch(r#"{"partitions":null}"#).unwrap_err();
        assert!(e.contains("invalid type: null"), "{e}");
        assert!(patch(r#"{"retention":null}"#).is_err());

        // A new topic is a patch applied to the defaults.
        let c = patch(r#"{"partitions":4}"#)
            .unwrap()
            .apply(&TopicConfig::default());
        assert_eq!(c.partitions, 4);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn partitions_never_decrease_and_updates_are_validated() {
        let old = TopicConfig {
            partitions: 4,
            ..Default::default()
        };
        let fewer = patch(r#"{"partitions":3}"#).unwrap().apply(&old);
        let e = TopicConfig::check_update(&old, &fewer).unwrap_err();
        assert_eq!(e, ConfigError::PartitionsDecreased { old: 4, new: 3 });
        assert!(
            e.to_string()
                .starts_with("partitions cannot decrease (from 4 to 3)")
        );
        let more = patch(r#"{"partitions":8}"#).unwrap().apply(&old);
        assert_eq!(TopicConfig::check_update(&old, &more), Ok(()));
        assert_eq!(TopicConfig::check_update(&old, &old), Ok(()));
        let invalid = patch(r#"{"max_deliveries":0}"#).unwrap().apply(&old);
        assert!(TopicConfig::check_update(&old, &invalid).is_err());
    }

    #[test]
    fn group_policy_and_dedupe_config_follow_the_topic() {
        let c = patch(r#"{"max_deliveries":2,"retry_backoff":{"initial_ms":10,"jitter":0},"dedupe_window_ms":5}"#)
            .unwrap()
            .apply(&TopicConfig::default());
        let p = c.group_policy();
        assert_eq!(p.max_deliveries, 2);
        assert_eq!(
            p.backoff,
            Backoff {
                initial_ms: 10,
                max_ms: 60_000,
                multiplier: 2.0,
                jitter: 0.0
            }
        );
        assert_eq!(c.dedupe_config().id_window_ms, 5);
    }

    #[test]
    fn fnv1a_64_matches_the_reference_vectors() {
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn key_partitions_are_pinned() {
        // Changing these moves keys to other partitions on upgrade: per-key order breaks.
        let rr = AtomicU64::new(0);
        let got: Vec<u32> = [&b""[..], b"a", b"foobar", b"order-42", b"user:1001"]
            .iter()
            .map(|k| partition_for(Some(k), 16, &rr))
            .collect();
        assert_eq!(got, PINNED_16);
        assert_eq!(partition_for(Some(b"order-42"), 1, &rr), 0);
        assert_eq!(
            partition_for(Some(b"order-42"), 1024, &rr),
            PINNED_ORDER_42_1024
        );
        assert_eq!(
            rr.load(Ordering::Relaxed),
            0,
            "keyed messages leave the counter"
        );
    }

    const PINNED_16: [u32; 5] = [13, 12, 5, 7, 2];
    const PINNED_ORDER_42_1024: u32 = 111;

    #[test]
    fn no_key_is_round_robin() {
        let rr = AtomicU64::new(0);
        let got: Vec<u32> = (0..7).map(|_| partition_for(None, 3, &rr)).collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(
            partition_for(None, 0, &rr),
            0,
            "0 partitions is treated as 1"
        );
        let rr = AtomicU64::new(u64::MAX);
        assert_eq!(partition_for(None, 3, &rr), (u64::MAX % 3) as u32);
        assert_eq!(partition_for(None, 3, &rr), 0, "the counter wraps");
    }

    #[test]
    fn growing_partitions_moves_keys_only_to_new_partitions() {
        let rr = AtomicU64::new(0);
        let mut moved = 0;
        for i in 0..10_000u32 {
            let key = i.to_le_bytes();
            let before = partition_for(Some(&key), 10, &rr);
            let after = partition_for(Some(&key), 12, &rr);
            assert!(before < 10 && after < 12);
            if before != after {
                assert!(
                    after >= 10,
                    "key {i} moved from {before} to old partition {after}"
                );
                moved += 1;
            }
        }
        // Expected fraction 2/12 ≈ 1667.
        assert!((1_400..1_950).contains(&moved), "{moved}");
        // And the spread is even enough.
        let mut counts = [0u32; 8];
        for i in 0..8_000u32 {
            counts[partition_for(Some(format!("k{i}").as_bytes()), 8, &rr) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (850..1_150).contains(&c)),
            "{counts:?}"
        );
    }
}
