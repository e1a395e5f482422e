//! Names: which topic and group names are accepted, and the keys of a topic.
//!
//! Key layout (prefix `surety` by default; `{<topic>}` is a hash tag, so that every key
//! of one topic lives in one cluster slot and the scripts may touch them together):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<prefix>:topics` | set | the names of the topics Surety created |
//! | `<prefix>:{<topic>}` | stream | the topic's messages; one consumer group per Surety group |
//! | `<prefix>:{<topic>}:config` | hash | `max_deliveries`, `ack_wait_ms`, `partitions` (1), `max_message_bytes`, `created_ms` |
//! | `<prefix>:{<topic>}:dedupe:<producer>` | sorted set | per producer: score = sequence, member = `<sequence> <entry id>`, the most recent `dedupe_window` |
//! | `<prefix>:{<topic>}:dlq` | stream | the dead letters of every group (field `surety.for-group` names it) |
//! | `<prefix>:{<topic>}:dlq:count` | hash | dead letters per group |

use surety_core::{ErrorKind, TransportError};

/// Longest topic or group name.
pub const MAX_NAME_LEN: usize = 200;

/// The keys of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicKeys {
    pub topic: String,
    pub stream: String,
    pub config: String,
    pub dlq: String,
    pub dlq_count: String,
    dedupe_prefix: String,
}

impl TopicKeys {
    pub fn new(prefix: &str, topic: &str) -> Result<TopicKeys, TransportError> {
        check("topic", topic)?;
        let stream = format!("{prefix}:{{{topic}}}");
        Ok(TopicKeys {
            topic: topic.to_owned(),
            config: format!("{stream}:config"),
            dlq: format!("{stream}:dlq"),
            dlq_count: format!("{stream}:dlq:count"),
            dedupe_prefix: format!("{stream}:dedupe:"),
            stream,
        })
    }

    /// The dedupe record of one producer.
    pub fn dedupe(&self, producer: &str) -> String {
        format!("{}{producer}", self.dedupe_prefix)
    }
}

/// The set of topic names.
pub fn topics(prefix: &str) -> String {
    format!("{prefix}:topics")
}

/// Checks a group name.
pub fn group(name: &str) -> Result<(), TransportError> {
    check("group", name)
}

/// A key prefix: 1 to 64 of `[A-Za-z0-9_-]`.
pub fn valid_prefix(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 64
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
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
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(invalid(format!(
            "{kind} name {name:?} has {c:?}: only letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

fn invalid(message: String) -> TransportError {
    TransportError::refused(ErrorKind::InvalidName, message).with_code("invalid_name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_topic_hash_tag() {
        let k = TopicKeys::new("surety", "orders.v1").unwrap();
        assert_eq!(k.stream, "surety:{orders.v1}");
        assert_eq!(k.config, "surety:{orders.v1}:config");
        assert_eq!(k.dlq, "surety:{orders.v1}:dlq");
        assert_eq!(k.dedupe("p1"), "surety:{orders.v1}:dedupe:p1");
        for bad in ["", "a b", "a{b}", "a:b", "bad name/with*chars"] {
            let e = TopicKeys::new("surety", bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidName, "{bad:?}");
        }
        assert!(group("g-1_x.y").is_ok());
        assert!(!valid_prefix("a:b") && valid_prefix("app_1"));
    }
}
