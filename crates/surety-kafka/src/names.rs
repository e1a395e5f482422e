//! Names: which topic and group names are accepted, and the Kafka topics Surety uses.
//!
//! | Surety | Kafka |
//! |---|---|
//! | topic `orders` | topic `orders` (`<prefix>.orders` under a prefix) |
//! | group `billing` | consumer group `billing` (`<prefix>.billing`), reading `orders` and its own topic |
//! | what is for `billing` only (a resend; a nack's copy with `retry=topic`) | topic `orders.billing.redo`, 1 partition |
//! | dead letters of every group | topic `orders.dlq`, 1 partition (a dead letter's id is its offset), `surety.for-group` says whose |
//! | topic settings (`max_deliveries`, lease, size) | compacted topic `surety.topics` (`<prefix>.surety.topics`), keyed by topic |
//!
//! Names are `[A-Za-z0-9_-]`, so the `.` that joins the parts can never be part of a
//! topic or group name and no two names collide.

use surety_core::{ErrorKind, TransportError};

/// Longest topic or group name (the longest Kafka name Surety builds stays below
/// Kafka's 249 characters).
pub const MAX_NAME_LEN: usize = 100;

/// The Kafka topics of one Surety topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNames {
    pub topic: String,
    /// The topic messages are published to.
    pub kafka: String,
    pub dlq: String,
    prefix: String,
}

impl TopicNames {
    pub fn new(prefix: &str, topic: &str) -> Result<TopicNames, TransportError> {
        check("topic", topic)?;
        let kafka = join(prefix, topic);
        Ok(TopicNames {
            topic: topic.to_owned(),
            dlq: format!("{kafka}.dlq"),
            kafka,
            prefix: prefix.to_owned(),
        })
    }

    pub fn group(&self, group: &str) -> Result<GroupNames, TransportError> {
        check("group", group)?;
        Ok(GroupNames {
            group: group.to_owned(),
            consumer_group: join(&self.prefix, group),
            redo: format!("{}.{group}.redo", self.kafka),
        })
    }

    /// The group whose own topic `kafka_topic` is, if it is one of this topic's.
    pub fn group_of_redo<'a>(&self, kafka_topic: &'a str) -> Option<&'a str> {
        let g = kafka_topic
            .strip_prefix(&self.kafka)?
            .strip_prefix('.')?
            .strip_suffix(".redo")?;
        (!g.is_empty() && g.chars().all(name_char)).then_some(g)
    }
}

/// The Kafka names of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupNames {
    pub group: String,
    pub consumer_group: String,
    /// What only this group reads besides the topic.
    pub redo: String,
}

/// The compacted topic of topic settings.
pub fn settings_topic(prefix: &str) -> String {
    join(prefix, "surety.topics")
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A name prefix: 1 to 32 of `[A-Za-z0-9_-]`.
pub fn valid_prefix(p: &str) -> bool {
    !p.is_empty() && p.len() <= 32 && p.chars().all(name_char)
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
}

fn check(kind: &str, name: &str) -> Result<(), TransportError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "{kind} name must be 1 to {MAX_NAME_LEN} characters, got {}",
            name.len()
        )));
    }
    if let Some(c) = name.chars().find(|c| !name_char(*c)) {
        return Err(invalid(format!(
            "{kind} name {name:?} has {c:?}: only letters, digits, '_' and '-' on Kafka \
             ('.' joins the parts of the topic names Surety uses)"
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
    fn names_are_built_and_read_back() {
        let t = TopicNames::new("", "orders").unwrap();
        assert_eq!((t.kafka.as_str(), t.dlq.as_str()), ("orders", "orders.dlq"));
        let g = t.group("billing").unwrap();
        assert_eq!(g.consumer_group, "billing");
        assert_eq!(g.redo, "orders.billing.redo");
        assert_eq!(t.group_of_redo(&g.redo), Some("billing"));
        assert_eq!(t.group_of_redo("orders.dlq"), None);
        assert_eq!(t.group_of_redo("ordersx.billing.redo"), None);
        let p = TopicNames::new("app", "orders").unwrap();
        assert_eq!(p.kafka, "app.orders");
        assert_eq!(p.group("billing").unwrap().consumer_group, "app.billing");
        assert_eq!(settings_topic(""), "surety.topics");
        assert_eq!(settings_topic("app"), "app.surety.topics");
        for bad in ["", "a b", "a.b", &"x".repeat(101)] {
            let e = TopicNames::new("", bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidName, "{bad:?}");
        }
        let longest = TopicNames::new(&"p".repeat(32), &"t".repeat(100))
            .unwrap()
            .group(&"g".repeat(100))
            .unwrap()
            .redo;
        assert!(longest.len() <= 249, "{}", longest.len());
    }
}
