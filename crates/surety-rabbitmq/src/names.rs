//! Names: which topic and group names are accepted, and what Surety declares for them.
//!
//! | Surety | RabbitMQ |
//! |---|---|
//! | topic `orders` | fanout exchange `surety.orders` (durable; its arguments hold the topic's settings) |
//! | the topic's history | stream `surety.orders.~log`, bound to the exchange: what a new group starts from |
//! | group `billing` | quorum queue `surety.orders.billing`, bound to the topic exchange; created on the first subscribe, which copies the history into it (then marks it done: exchange `surety.orders.billing.~ready`) |
//! | a nack's delay | quorum queue `surety.orders.billing.~retry.<ms>`: message TTL `<ms>`, dead-lettered back into the group's queue |
//! | dead letters of `billing` | quorum queue `surety.orders.billing.dlq` (the group queue's dead-letter target too) |
//!
//! Names are `[A-Za-z0-9_-]`, so the `.` that joins the parts, and the `~` of the
//! internal ones, can never be part of a topic or group name.

use std::time::Duration;

use surety_core::{ErrorKind, TransportError};

/// Longest topic or group name (the longest queue name Surety builds stays below AMQP's
/// 255 bytes).
pub const MAX_NAME_LEN: usize = 100;

/// The delays a nack can wait, one retry queue each: a delay is rounded up to the next.
pub const RETRY_STEPS: [Duration; 15] = [
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(120),
    Duration::from_secs(300),
    Duration::from_secs(600),
    Duration::from_secs(1800),
    Duration::from_secs(3600),
];

/// The retry step a delay waits in: the first at least as long (the last for longer ones).
pub fn retry_step(delay: Duration) -> Duration {
    RETRY_STEPS
        .iter()
        .copied()
        .find(|s| *s >= delay)
        .unwrap_or(RETRY_STEPS[RETRY_STEPS.len() - 1])
}

/// The names of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNames {
    pub topic: String,
    pub exchange: String,
    /// The topic's history: a stream queue bound to the exchange.
    pub log: String,
    /// What every group queue of the topic starts with (`<exchange>.`).
    pub group_prefix: String,
}

impl TopicNames {
    pub fn new(prefix: &str, topic: &str) -> Result<TopicNames, TransportError> {
        check("topic", topic)?;
        let exchange = format!("{prefix}.{topic}");
        Ok(TopicNames {
            topic: topic.to_owned(),
            log: format!("{exchange}.~log"),
            group_prefix: format!("{exchange}."),
            exchange,
        })
    }

    pub fn group(&self, group: &str) -> Result<GroupNames, TransportError> {
        check("group", group)?;
        let queue = format!("{}{group}", self.group_prefix);
        Ok(GroupNames {
            group: group.to_owned(),
            dlq: format!("{queue}.dlq"),
            queue,
        })
    }

    /// The exchange whose existence says that `group` has been given the topic's history.
    pub fn ready_marker(&self, group: &GroupNames) -> String {
        format!("{}.~ready", group.queue)
    }

    /// What a queue of this topic is, from its name.
    pub fn classify<'a>(&self, queue: &'a str) -> Option<QueueRole<'a>> {
        let rest = queue.strip_prefix(&self.group_prefix)?;
        if rest.starts_with('~') {
            return None;
        }
        match rest.split_once('.') {
            None => Some(QueueRole::Group(rest)),
            Some((g, "dlq")) => Some(QueueRole::DeadLetters(g)),
            Some((g, r)) if r.starts_with("~retry.") => Some(QueueRole::Retry(g)),
            Some((_, "~ready")) => None,
            Some(_) => None,
        }
    }
}

/// A queue of a topic, and the group it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRole<'a> {
    Group(&'a str),
    Retry(&'a str),
    DeadLetters(&'a str),
}

/// The queues of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupNames {
    pub group: String,
    pub queue: String,
    pub dlq: String,
}

impl GroupNames {
    /// The retry queue of one step of `RETRY_STEPS`.
    pub fn retry(&self, step: Duration) -> String {
        format!("{}.~retry.{}", self.queue, step.as_millis())
    }
}

/// A name prefix: 1 to 32 of `[A-Za-z0-9_-]`.
pub fn valid_prefix(p: &str) -> bool {
    !p.is_empty() && p.len() <= 32 && p.chars().all(name_char)
}

/// The topic an exchange name is for, if Surety made it.
pub fn topic_of_exchange<'a>(prefix: &str, exchange: &'a str) -> Option<&'a str> {
    let rest = exchange.strip_prefix(prefix)?.strip_prefix('.')?;
    (!rest.is_empty() && rest.chars().all(name_char)).then_some(rest)
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
            "{kind} name {name:?} has {c:?}: only letters, digits, '_' and '-' on RabbitMQ \
             ('.' joins the parts of a queue name)"
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
        let t = TopicNames::new("surety", "orders").unwrap();
        assert_eq!(t.exchange, "surety.orders");
        assert_eq!(t.log, "surety.orders.~log");
        let g = t.group("billing").unwrap();
        assert_eq!(g.queue, "surety.orders.billing");
        assert_eq!(g.dlq, "surety.orders.billing.dlq");
        let r = g.retry(retry_step(Duration::from_millis(700)));
        assert_eq!(r, "surety.orders.billing.~retry.1000");
        assert_eq!(t.classify(&g.queue), Some(QueueRole::Group("billing")));
        assert_eq!(t.classify(&g.dlq), Some(QueueRole::DeadLetters("billing")));
        assert_eq!(t.classify(&r), Some(QueueRole::Retry("billing")));
        assert_eq!(t.classify(&t.log), None);
        assert_eq!(t.classify(&t.ready_marker(&g)), None);
        assert_eq!(t.classify("surety.other.billing"), None);
        assert_eq!(topic_of_exchange("surety", "surety.orders"), Some("orders"));
        assert_eq!(topic_of_exchange("surety", "surety.orders.~log"), None);
        assert_eq!(topic_of_exchange("surety", "amq.direct"), None);
        for bad in ["", "a b", "a.b", "a~b", &"x".repeat(101)] {
            let e = TopicNames::new("surety", bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidName, "{bad:?}");
        }
        assert_eq!(retry_step(Duration::ZERO), Duration::from_millis(50));
        assert_eq!(
            retry_step(Duration::from_secs(99_999)),
            Duration::from_secs(3600)
        );
        let longest = TopicNames::new(&"p".repeat(32), &"t".repeat(100))
            .unwrap()
            .group(&"g".repeat(100))
            .unwrap()
            .retry(Duration::from_secs(3600));
        assert!(longest.len() <= 255, "{}", longest.len());
    }
}
