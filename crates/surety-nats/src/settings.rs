//! Where a topic's `max_deliveries` and lease live: on the stream itself, so that every
//! consumer process reads the same values and `nats stream info` shows them.
//!
//! Decision (docs/backends.md, "Where max_deliveries lives"): the stream's **metadata**
//! (`surety.max_deliveries`, `surety.ack_wait_ms`; nats-server 2.10+) and, because a 2.9
//! server drops metadata, the same values in the stream's **description**
//! (`Surety topic; max_deliveries=5; ack_wait_ms=30000`). Both are written; metadata is
//! read first. They are not consumer settings: the consumer's `MaxDeliver` is -1 (the
//! server never drops a message at a limit; the backend dead-letters it), and its
//! `AckWait` is each subscription's lease.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

pub const META_MAX_DELIVERIES: &str = "surety.max_deliveries";
pub const META_ACK_WAIT_MS: &str = "surety.ack_wait_ms";
const DESCRIPTION_PREFIX: &str = "Surety topic";

/// A topic's own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSettings {
    pub max_deliveries: u32,
    pub ack_wait: Duration,
}

impl TopicSettings {
    /// The stream config's `metadata` entries.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                META_MAX_DELIVERIES.to_owned(),
                self.max_deliveries.to_string(),
            ),
            (
                META_ACK_WAIT_MS.to_owned(),
                self.ack_wait.as_millis().to_string(),
            ),
        ])
    }

    /// The stream config's `description`.
    pub fn description(&self) -> String {
        format!(
            "{DESCRIPTION_PREFIX}; max_deliveries={}; ack_wait_ms={}",
            self.max_deliveries,
            self.ack_wait.as_millis()
        )
    }

    /// Reads them from a stream config (JSON), metadata first; `None` if neither place
    /// has them (a stream Surety did not create).
    pub fn of_config(config: &Value) -> Option<TopicSettings> {
        let meta = |k: &str| {
            config
                .get("metadata")?
                .get(k)?
                .as_str()?
                .parse::<u64>()
                .ok()
        };
        if let (Some(m), Some(a)) = (meta(META_MAX_DELIVERIES), meta(META_ACK_WAIT_MS)) {
            return Some(TopicSettings {
                max_deliveries: u32::try_from(m).ok()?,
                ack_wait: Duration::from_millis(a),
            });
        }
        let text = config.get("description")?.as_str()?;
        let rest = text.strip_prefix(DESCRIPTION_PREFIX)?;
        let field = |k: &str| {
            rest.split(';')
                .filter_map(|p| p.trim().split_once('='))
                .find(|(name, _)| *name == k)
                .and_then(|(_, v)| v.parse::<u64>().ok())
        };
        Some(TopicSettings {
            max_deliveries: u32::try_from(field("max_deliveries")?).ok()?,
            ack_wait: Duration::from_millis(field("ack_wait_ms")?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const S: TopicSettings = TopicSettings {
        max_deliveries: 3,
        ack_wait: Duration::from_millis(1500),
    };

    #[test]
    fn metadata_is_read_first_the_description_on_servers_that_drop_it() {
        let both = json!({"metadata": S.metadata(), "description": "Surety topic; max_deliveries=9; ack_wait_ms=1"});
        assert_eq!(TopicSettings::of_config(&both), Some(S));
        // What a 2.9 server keeps: the description alone.
        let old = json!({"metadata": {}, "description": S.description()});
        assert_eq!(TopicSettings::of_config(&old), Some(S));
        assert_eq!(
            TopicSettings::of_config(&json!({"description": "mine"})),
            None
        );
        assert_eq!(TopicSettings::of_config(&json!({})), None);
    }
}
