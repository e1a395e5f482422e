//! How Surety's names map onto JetStream's (docs/backends.md, "Names"):
//!
//! | Surety | JetStream |
//! |---|---|
//! | topic `orders` | stream `orders`, subject `<prefix>.orders` (prefix `surety` by default) |
//! | group `billing` | durable pull consumer `billing` on stream `orders` |
//! | dead letters of `billing` | stream `orders_DLQ` (or the configured one), subject `<prefix>.dlq.orders.billing` |
//!
//! Stream and consumer names may not contain `.` (a subject separator), so topic and
//! group names here are Surety's rules without the dot: 1 to 200 of `[A-Za-z0-9_-]`. A
//! topic may not end in `_DLQ`, which would collide with another topic's dead letters.

use surety_core::{ErrorKind, TransportError};

/// Longest topic or group name: a stream name plus `_DLQ` stays under JetStream's 255.
pub const MAX_NAME_LEN: usize = 200;
/// The suffix of a topic's own dead-letter stream.
pub const DLQ_SUFFIX: &str = "_DLQ";

/// Checks a topic name.
pub fn topic(name: &str) -> Result<(), TransportError> {
    check("topic", name)?;
    if name.ends_with(DLQ_SUFFIX) {
        return Err(invalid(format!(
            "topic name {name:?} ends in {DLQ_SUFFIX}, the suffix of dead-letter streams"
        )));
    }
    Ok(())
}

/// Checks a group name.
pub fn group(name: &str) -> Result<(), TransportError> {
    check("group", name)
}

fn check(kind: &str, name: &str) -> Result<(), TransportError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "{kind} name must be 1 to {MAX_NAME_LEN} characters, got {}",
            name.len()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
    {
        return Err(invalid(format!(
            "{kind} name {name:?} has {c:?}: on NATS JetStream names are [A-Za-z0-9_-] \
             (no '.', which separates subject tokens)"
        )));
    }
    Ok(())
}

fn invalid(message: String) -> TransportError {
    TransportError::refused(ErrorKind::InvalidName, message).with_code("invalid_name")
}

/// The subject prefix must be one or more dot-separated tokens of `[A-Za-z0-9_-]`.
pub fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.split('.').all(|t| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        })
}

/// The names of one topic's streams and subjects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNames {
    pub topic: String,
    /// The stream holding the topic's messages.
    pub stream: String,
    /// The subject its messages are published to.
    pub subject: String,
    /// The stream holding its dead letters.
    pub dlq_stream: String,
    /// The subjects of that stream, when Surety creates it.
    pub dlq_stream_subjects: String,
    prefix: String,
}

impl TopicNames {
    /// The names of `topic` (checked) under subject `prefix`; `shared_dlq`: one stream for
    /// every topic's dead letters instead of `<topic>_DLQ`.
    pub fn new(
        prefix: &str,
        topic: &str,
        shared_dlq: Option<&str>,
    ) -> Result<TopicNames, TransportError> {
        self::topic(topic)?;
        let (dlq_stream, dlq_stream_subjects) = match shared_dlq {
            Some(s) => (s.to_owned(), format!("{prefix}.dlq.>")),
            None => (
                format!("{topic}{DLQ_SUFFIX}"),
                format!("{prefix}.dlq.{topic}.*"),
            ),
        };
        Ok(TopicNames {
            topic: topic.to_owned(),
            stream: topic.to_owned(),
            subject: format!("{prefix}.{topic}"),
            dlq_stream,
            dlq_stream_subjects,
            prefix: prefix.to_owned(),
        })
    }

    /// The subject of `group`'s dead letters.
    pub fn dlq_subject(&self, group: &str) -> String {
        format!("{}.dlq.{}.{group}", self.prefix, self.topic)
    }

    /// Every group's dead-letter subjects of this topic.
    pub fn dlq_subjects(&self) -> String {
        format!("{}.dlq.{}.*", self.prefix, self.topic)
    }

    /// The group a dead-letter subject of this topic names.
    pub fn group_of_dlq_subject<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(&self.prefix)?
            .strip_prefix(".dlq.")?
            .strip_prefix(&self.topic)?
            .strip_prefix('.')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_table() {
        let n = TopicNames::new("surety", "orders", None).unwrap();
        assert_eq!(
            (n.stream.as_str(), n.subject.as_str(), n.dlq_stream.as_str()),
            ("orders", "surety.orders", "orders_DLQ")
        );
        assert_eq!(n.dlq_subject("billing"), "surety.dlq.orders.billing");
        assert_eq!(n.dlq_stream_subjects, "surety.dlq.orders.*");
        assert_eq!(
            n.group_of_dlq_subject("surety.dlq.orders.billing"),
            Some("billing")
        );
        assert_eq!(n.group_of_dlq_subject("surety.dlq.orders2.billing"), None);
        let shared = TopicNames::new("app.mq", "orders", Some("DEAD")).unwrap();
        assert_eq!(shared.dlq_stream, "DEAD");
        assert_eq!(shared.dlq_stream_subjects, "app.mq.dlq.>");
    }

    #[test]
    fn dots_spaces_wildcards_and_dlq_suffixes_are_refused() {
        for bad in ["a.b", "a b", "a*", ">", "", "x_DLQ", &"a".repeat(201)] {
            let e = topic(bad).unwrap_err();
            assert_eq!(
                (e.kind, e.retryable()),
                (ErrorKind::InvalidName, false),
                "{bad:?}"
            );
        }
        assert!(
            group("x_DLQ").is_ok(),
            "only topics have dead-letter streams"
        );
        assert!(topic("s1-ab12cd").is_ok() && topic("conf_s6_x").is_ok());
        assert!(valid_prefix("surety") && valid_prefix("a.b-c"));
        assert!(!valid_prefix("a..b") && !valid_prefix("a.*") && !valid_prefix(""));
    }
}
