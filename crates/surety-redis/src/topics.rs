//! Topic administration: a topic is its config hash (the mark that it exists: the
//! publish script refuses a topic without one) plus its stream, created with the first
//! group. Groups are consumer groups, created by the first subscription from the start
//! of the stream.

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;
use surety_core::{ErrorKind, GroupInfo, TopicInfo, TopicSpec, TransportError};

use crate::entry::{array, int, text};
use crate::keys::{self, TopicKeys};
use crate::transport::{Inner, now_ms};

/// A topic's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    pub max_deliveries: u32,
    pub ack_wait: Duration,
}

pub(crate) async fn create(
    inner: &Inner,
    topic: &str,
    spec: &TopicSpec,
) -> Result<TopicInfo, TransportError> {
    let keys = inner.keys(topic)?;
    if let Some(p) = spec.partitions
        && p != 1
    {
        return Err(TransportError::refused(
            ErrorKind::InvalidInput,
            format!("partitions={p}: a Redis Streams topic is one stream (partitions 1)"),
        ));
    }
    if spec.max_deliveries == Some(0) {
        return Err(TransportError::refused(
            ErrorKind::InvalidInput,
            "max_deliveries must be at least 1",
        ));
    }
    let o = &inner.options;
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe.cmd("HSETNX")
        .arg(&keys.config)
        .arg("max_deliveries")
        .arg(o.default_max_deliveries)
        .ignore();
    pipe.cmd("HSETNX")
        .arg(&keys.config)
        .arg("ack_wait_ms")
        .arg(o.default_ack_wait.as_millis() as u64)
        .ignore();
    pipe.cmd("HSETNX")
        .arg(&keys.config)
        .arg("partitions")
        .arg(1)
        .ignore();
    pipe.cmd("HSETNX")
        .arg(&keys.config)
        .arg("created_ms")
        .arg(now_ms())
        .ignore();
    if let Some(n) = spec.max_deliveries {
        pipe.cmd("HSET")
            .arg(&keys.config)
            .arg("max_deliveries")
            .arg(n)
            .ignore();
    }
    if let Some(d) = spec.ack_wait {
        pipe.cmd("HSET")
            .arg(&keys.config)
            .arg("ack_wait_ms")
            .arg(crate::transport::ms(d))
            .ignore();
    }
    if let Some(b) = spec.max_message_bytes {
        pipe.cmd("HSET")
            .arg(&keys.config)
            .arg("max_message_bytes")
            .arg(b.min(o.max_message_bytes))
            .ignore();
    }
    pipe.cmd("SADD")
        .arg(keys::topics(&o.prefix))
        .arg(topic)
        .ignore();
    inner.conn.query_pipe::<()>(&pipe).await?;
    describe(inner, topic).await
}

/// A topic's settings, or `TopicNotFound`.
pub(crate) async fn settings(inner: &Inner, keys: &TopicKeys) -> Result<Settings, TransportError> {
    let config: HashMap<String, String> = inner
        .conn
        .query(redis::cmd("HGETALL").arg(&keys.config))
        .await?;
    if config.is_empty() {
        return Err(not_found(&keys.topic));
    }
    let num = |k: &str| config.get(k).and_then(|v| v.parse::<u64>().ok());
    Ok(Settings {
        max_deliveries: num("max_deliveries")
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(inner.options.default_max_deliveries),
        ack_wait: num("ack_wait_ms")
            .map(Duration::from_millis)
            .unwrap_or(inner.options.default_ack_wait),
    })
}

pub(crate) fn not_found(topic: &str) -> TransportError {
    TransportError::refused(
        ErrorKind::TopicNotFound,
        format!("no topic {topic:?} on this Redis"),
    )
    .with_code("topic_not_found")
}

pub(crate) async fn describe(inner: &Inner, topic: &str) -> Result<TopicInfo, TransportError> {
    let keys = inner.keys(topic)?;
    let s = settings(inner, &keys).await?;
    let dlq_counts: HashMap<String, i64> = inner
        .conn
        .query(redis::cmd("HGETALL").arg(&keys.dlq_count))
        .await?;
    let groups: Value = match inner
        .conn
        .query(redis::cmd("XINFO").arg("GROUPS").arg(&keys.stream))
        .await
    {
        Ok(v) => v,
        // No stream yet: no group has subscribed.
        Err(e) if e.message.contains("no such key") => Value::Array(vec![]),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for g in array(&groups) {
        let fields: HashMap<String, &Value> = match g {
            Value::Map(m) => m.iter().filter_map(|(k, v)| Some((text(k)?, v))).collect(),
            other => array(other)
                .chunks(2)
                .filter_map(|p| Some((text(p.first()?)?, p.get(1)?)))
                .collect(),
        };
        let Some(name) = fields.get("name").and_then(|v| text(v)) else {
            continue;
        };
        let pending = fields
            .get("pending")
            .and_then(|v| int(v))
            .unwrap_or(0)
            .max(0) as u64;
        // `lag` (7.0): entries not yet delivered to the group; nil where it cannot say.
        let undelivered = fields.get("lag").and_then(|v| int(v)).unwrap_or(0).max(0) as u64;
        out.push(GroupInfo {
            dead_letters: dlq_counts.get(&name).copied().unwrap_or(0).max(0) as u64,
            name,
            lag: undelivered + pending,
            in_flight: pending,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(TopicInfo {
        name: topic.to_owned(),
        partitions: 1,
        max_deliveries: s.max_deliveries,
        ack_wait: s.ack_wait,
        confirm: inner.durability.confirm,
        groups: out,
    })
}

pub(crate) async fn list(inner: &Inner) -> Result<Vec<String>, TransportError> {
    let mut names: Vec<String> = inner
        .conn
        .query(redis::cmd("SMEMBERS").arg(keys::topics(&inner.options.prefix)))
        .await?;
    names.sort();
    Ok(names)
}
