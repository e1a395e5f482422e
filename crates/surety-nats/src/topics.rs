//! Topics as streams: create (or update), describe, list. A topic is a stream of its own
//! name on subject `<prefix>.<topic>`, file storage, the configured replicas and
//! duplicate window, limits retention (messages stay until removed, so every group
//! reads the whole topic); its groups are the stream's durable consumers; its dead
//! letters a second stream (`<topic>_DLQ`, or the shared one configured).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use surety_core::{Confirm, ErrorKind, GroupInfo, TopicInfo, TopicSpec, TransportError};

use crate::api::{Failure, code};
use crate::durability::DurabilityReport;
use crate::names::{DLQ_SUFFIX, TopicNames};
use crate::settings::TopicSettings;
use crate::transport::Inner;

/// `max_deliveries` may be 1 to this (as on the Surety broker).
pub const MAX_MAX_DELIVERIES: u32 = 1000;
/// A lease may be 1 ms to this.
pub const MAX_ACK_WAIT: Duration = Duration::from_secs(12 * 3600);

fn invalid(message: String) -> TransportError {
    TransportError::refused(ErrorKind::InvalidInput, message).with_code("invalid_config")
}

/// Checks what `spec` asks for that JetStream can do.
fn check(spec: &TopicSpec) -> Result<(), TransportError> {
    if let Some(p) = spec.partitions
        && p != 1
    {
        return Err(invalid(format!(
            "partitions={p}: a NATS JetStream topic is one stream, ordered as one queue (partitions 1)"
        )));
    }
    if let Some(m) = spec.max_deliveries
        && !(1..=MAX_MAX_DELIVERIES).contains(&m)
    {
        return Err(invalid(format!(
            "max_deliveries must be between 1 and {MAX_MAX_DELIVERIES}, got {m}"
        )));
    }
    if let Some(a) = spec.ack_wait
        && (a < Duration::from_millis(1) || a > MAX_ACK_WAIT)
    {
        return Err(invalid(format!(
            "ack_wait must be between 1 ms and 12 h, got {a:?}"
        )));
    }
    if let Some(b) = spec.max_message_bytes
        && (b == 0 || b > i32::MAX as u32)
    {
        return Err(invalid(format!(
            "max_message_bytes must be 1 to {}, got {b}",
            i32::MAX
        )));
    }
    Ok(())
}

/// The stream's config as the server has it, or `None` if there is no such stream.
pub(crate) async fn stream_config(
    inner: &Inner,
    stream: &str,
) -> Result<Option<Value>, TransportError> {
    match inner
        .api
        .call::<Value>(&format!("STREAM.INFO.{stream}"), &json!({}))
        .await
    {
        Ok(info) => Ok(Some(info["config"].clone())),
        Err(f) if f.is(code::STREAM_NOT_FOUND) => Ok(None),
        Err(f) => Err(f.into_transport(&format!("stream info {stream}"))),
    }
}

fn not_found(topic: &str) -> TransportError {
    TransportError::refused(ErrorKind::TopicNotFound, format!("no topic {topic:?}"))
        .with_code("topic_not_found")
}

/// The settings of an existing topic.
pub(crate) async fn settings(
    inner: &Inner,
    names: &TopicNames,
) -> Result<TopicSettings, TransportError> {
    let config = stream_config(inner, &names.stream)
        .await?
        .ok_or_else(|| not_found(&names.topic))?;
    Ok(settings_of(inner, &config))
}

/// A stream's Surety settings, or the defaults for a stream Surety did not create.
fn settings_of(inner: &Inner, config: &Value) -> TopicSettings {
    TopicSettings::of_config(config).unwrap_or(TopicSettings {
        max_deliveries: inner.options.default_max_deliveries,
        ack_wait: inner.options.default_ack_wait,
    })
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) async fn create(
    inner: &Inner,
    topic: &str,
    spec: &TopicSpec,
) -> Result<TopicInfo, TransportError> {
    let names = inner.names(topic)?;
    check(spec)?;
    match stream_config(inner, &names.stream).await? {
        None => {
            let s = TopicSettings {
                max_deliveries: spec
                    .max_deliveries
                    .unwrap_or(inner.options.default_max_deliveries),
                ack_wait: spec.ack_wait.unwrap_or(inner.options.default_ack_wait),
            };
            let config = json!({
                "name": names.stream,
                "subjects": [names.subject],
                "retention": "limits",
                "max_consumers": -1,
                "max_msgs": -1,
                "max_bytes": -1,
                "max_age": 0,
                "max_msg_size": spec.max_message_bytes.map_or(-1, i64::from),
                "storage": "file",
                "discard": "old",
                "num_replicas": inner.options.replicas,
                "duplicate_window": ns(inner.options.duplicate_window),
                "description": s.description(),
                "metadata": s.metadata(),
            });
            create_stream(inner, &names.stream, &config).await?;
        }
        Some(mut config) => {
            if TopicSettings::of_config(&config).is_none()
                && config["subjects"] != json!([names.subject])
            {
                return Err(invalid(format!(
                    "stream {} exists and is not a Surety topic (its subjects are {})",
                    names.stream, config["subjects"]
                )));
            }
            let mut s = settings_of(inner, &config);
            if let Some(m) = spec.max_deliveries {
                s.max_deliveries = m;
            }
            if let Some(a) = spec.ack_wait {
                s.ack_wait = a;
            }
            config["description"] = json!(s.description());
            config["metadata"] = json!(s.metadata());
            if let Some(b) = spec.max_message_bytes {
                config["max_msg_size"] = json!(b);
            }
            inner
                .api
                .call::<Value>(&format!("STREAM.UPDATE.{}", names.stream), &config)
                .await
                .map_err(|f| f.into_transport(&format!("update stream {}", names.stream)))?;
        }
    }
    ensure_dlq_stream(inner, &names).await?;
    describe(inner, topic).await
}

async fn create_stream(inner: &Inner, stream: &str, config: &Value) -> Result<(), TransportError> {
    match inner
        .api
        .call::<Value>(&format!("STREAM.CREATE.{stream}"), config)
        .await
    {
        Ok(_) => Ok(()),
        // Created meanwhile by another process with the same config: fine.
        Err(Failure::Api(e)) if e.err_code == 10058 => Ok(()),
        Err(f) => Err(f.into_transport(&format!("create stream {stream}"))),
    }
}

/// Creates the topic's dead-letter stream if it is missing.
pub(crate) async fn ensure_dlq_stream(
    inner: &Inner,
    names: &TopicNames,
) -> Result<(), TransportError> {
    if stream_config(inner, &names.dlq_stream).await?.is_some() {
        return Ok(());
    }
    let config = json!({
        "name": names.dlq_stream,
        "subjects": [names.dlq_stream_subjects],
        "retention": "limits",
        "max_consumers": -1,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": 0,
        "max_msg_size": -1,
        "storage": "file",
        "discard": "old",
        "num_replicas": inner.options.replicas,
        "duplicate_window": ns(inner.options.duplicate_window),
        "description": format!("Surety dead letters ({})", names.dlq_stream_subjects),
    });
    create_stream(inner, &names.dlq_stream, &config).await
}

/// The part of a consumer's info this reads.
#[derive(Debug, Deserialize)]
struct ConsumerInfo {
    name: String,
    #[serde(default)]
    num_pending: u64,
    #[serde(default)]
    num_ack_pending: u64,
}

#[derive(Debug, Deserialize)]
struct ConsumerPage {
    #[serde(default)]
    total: usize,
    #[serde(default)]
    consumers: Option<Vec<ConsumerInfo>>,
}

pub(crate) async fn describe(inner: &Inner, topic: &str) -> Result<TopicInfo, TransportError> {
    let names = inner.names(topic)?;
    let config = stream_config(inner, &names.stream)
        .await?
        .ok_or_else(|| not_found(topic))?;
    let s = settings_of(inner, &config);
    let mut consumers = Vec::new();
    loop {
        let page: ConsumerPage = inner
            .api
            .call(
                &format!("CONSUMER.LIST.{}", names.stream),
                &json!({"offset": consumers.len()}),
            )
            .await
            .map_err(|f| f.into_transport(&format!("consumers of {}", names.stream)))?;
        let got = page.consumers.unwrap_or_default();
        let empty = got.is_empty();
        consumers.extend(got);
        if empty || consumers.len() >= page.total {
            break;
        }
    }
    let dead = dead_letter_counts(inner, &names).await?;
    let groups = consumers
        .into_iter()
        .map(|c| GroupInfo {
            lag: c.num_pending + c.num_ack_pending,
            in_flight: c.num_ack_pending,
            dead_letters: dead.get(&c.name).copied().unwrap_or(0),
            name: c.name,
        })
        .collect();
    let replicas = config["num_replicas"].as_u64().unwrap_or(1) as usize;
    let confirm = if config["storage"] == "memory" {
        Confirm::Memory
    } else {
        let d = &inner.durability;
        DurabilityReport::new(
            d.server.clone(),
            d.version.clone(),
            d.sync.clone(),
            replicas,
        )
        .confirm
    };
    Ok(TopicInfo {
        name: topic.to_owned(),
        partitions: 1,
        max_deliveries: s.max_deliveries,
        ack_wait: s.ack_wait,
        confirm,
        groups,
    })
}

/// Dead letters per group of a topic: the message count of each group's subject in the
/// dead-letter stream.
pub(crate) async fn dead_letter_counts(
    inner: &Inner,
    names: &TopicNames,
) -> Result<BTreeMap<String, u64>, TransportError> {
    let info = match inner
        .api
        .call::<Value>(
            &format!("STREAM.INFO.{}", names.dlq_stream),
            &json!({"subjects_filter": names.dlq_subjects()}),
        )
        .await
    {
        Ok(info) => info,
        Err(f) if f.is(code::STREAM_NOT_FOUND) => return Ok(BTreeMap::new()),
        Err(f) => return Err(f.into_transport(&format!("stream info {}", names.dlq_stream))),
    };
    let mut counts = BTreeMap::new();
    if let Some(subjects) = info["state"]["subjects"].as_object() {
        for (subject, n) in subjects {
            if let Some(group) = names.group_of_dlq_subject(subject) {
                counts.insert(group.to_owned(), n.as_u64().unwrap_or(0));
            }
        }
    }
    Ok(counts)
}

#[derive(Debug, Deserialize)]
struct StreamPage {
    #[serde(default)]
    total: usize,
    #[serde(default)]
    streams: Option<Vec<Value>>,
}

/// Streams that are Surety topics: named as their one subject says.
pub(crate) async fn list(inner: &Inner) -> Result<Vec<String>, TransportError> {
    let mut seen = 0;
    let mut topics = Vec::new();
    loop {
        let page: StreamPage = inner
            .api
            .call("STREAM.LIST", &json!({"offset": seen}))
            .await
            .map_err(|f| f.into_transport("list streams"))?;
        let streams = page.streams.unwrap_or_default();
        if streams.is_empty() {
            break;
        }
        seen += streams.len();
        for info in streams {
            let Some(name) = info["config"]["name"].as_str() else {
                continue;
            };
            if name.ends_with(DLQ_SUFFIX) {
                continue;
            }
            let Ok(names) = inner.names(name) else {
                continue;
            };
            if info["config"]["subjects"] == json!([names.subject]) {
                topics.push(name.to_owned());
            }
        }
        if seen >= page.total {
            break;
        }
    }
    topics.sort();
    Ok(topics)
}
