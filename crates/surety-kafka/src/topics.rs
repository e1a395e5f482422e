//! Topics: creating the Kafka topics of a Surety topic, its settings (kept in the
//! compacted settings topic, since Kafka topic configs have no place for them), listing,
//! describing with each group's counters, and the broker-settings warnings.
//!
//! A group's counters come from its commit and its journal (crate::journal):
//! `lag` = records above the committed offset not settled, over the topic and the
//! group's own topic; `in_flight` = those the journal says were delivered; both are as
//! fresh as the group's last commit (made before every delivery and after every
//! settlement). `dead_letters` = the group's live dead letters.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message as _;
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};
use surety_core::{ErrorKind, GroupInfo, TopicInfo, TopicSpec, TransportError};

use crate::error::{blocking, unavailable};
use crate::journal::Journal;
use crate::names::{self, TopicNames};
use crate::transport::{Inner, invalid};
use crate::{dead_letters, scan};

/// What Surety keeps of a topic beside Kafka's own configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSettings {
    pub max_deliveries: u32,
    pub ack_wait_ms: u64,
    pub max_message_bytes: u32,
}

impl TopicSettings {
    pub fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.ack_wait_ms)
    }
}

/// The settings `spec` asks for over `have` (or the defaults), checked.
fn wanted(
    inner: &Inner,
    spec: &TopicSpec,
    have: Option<TopicSettings>,
) -> Result<TopicSettings, TransportError> {
    let o = &inner.options;
    let base = have.unwrap_or(TopicSettings {
        max_deliveries: o.default_max_deliveries,
        ack_wait_ms: o.default_ack_wait.as_millis() as u64,
        max_message_bytes: o.max_message_bytes,
    });
    let s = TopicSettings {
        max_deliveries: spec.max_deliveries.unwrap_or(base.max_deliveries),
        ack_wait_ms: spec
            .ack_wait
            .map_or(base.ack_wait_ms, |d| d.as_millis() as u64),
        max_message_bytes: spec.max_message_bytes.unwrap_or(base.max_message_bytes),
    };
    if !(1..=1000).contains(&s.max_deliveries) {
        return Err(invalid("max_deliveries must be 1 to 1000"));
    }
    if s.max_message_bytes == 0 || s.max_message_bytes > o.max_message_bytes {
        return Err(invalid(format!(
            "max_message_bytes must be 1 to {} (the backend's max_message_bytes)",
            o.max_message_bytes
        )));
    }
    if !(100..=86_400_000).contains(&s.ack_wait_ms) {
        return Err(invalid("ack_wait must be 100ms to 24h"));
    }
    if spec.partitions.is_some_and(|p| !(1..=1024).contains(&p)) {
        return Err(invalid("partitions must be 1 to 1024"));
    }
    Ok(s)
}

pub(crate) async fn create(
    inner: &Inner,
    topic: &str,
    spec: &TopicSpec,
) -> Result<TopicInfo, TransportError> {
    let names = TopicNames::new(&inner.options.prefix, topic)?;
    let have = read_settings(inner).await?.remove(topic);
    let want = wanted(inner, spec, have)?;
    let existing = partitions(inner, &names.kafka).await?;
    if let (Some(have), Some(asked)) = (existing, spec.partitions)
        && have != asked
    {
        return Err(TransportError::refused(
            ErrorKind::InvalidInput,
            format!(
                "topic {topic} has {have} partitions; Surety does not repartition a Kafka topic \
                 (kafka-topics --alter does, and moves keys between partitions)"
            ),
        )
        .with_code("topic_exists"));
    }
    let settings_topic = names::settings_topic(&inner.options.prefix);
    let parts = spec.partitions.unwrap_or(inner.options.default_partitions);
    ensure_topics(
        inner,
        &[
            (settings_topic.as_str(), 1, true),
            (names.kafka.as_str(), parts, false),
            (names.dlq.as_str(), 1, false),
        ],
    )
    .await?;
    if have != Some(want) {
        write_settings(inner, topic, &want).await?;
    }
    describe(inner, topic).await
}

/// The topics Surety needs, created where missing: `(name, partitions, compacted)`.
pub(crate) async fn ensure_topics(
    inner: &Inner,
    wanted: &[(&str, u32, bool)],
) -> Result<(), TransportError> {
    let existing = all_topics(inner).await?;
    let missing: Vec<_> = wanted
        .iter()
        .filter(|(n, _, _)| !existing.contains_key(*n))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let replication = inner.options.replication_factor.map_or(-1, i32::from);
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|(name, parts, compacted)| {
            let t = NewTopic::new(name, *parts as i32, TopicReplication::Fixed(replication));
            if *compacted {
                t.set("cleanup.policy", "compact")
            } else {
                t
            }
        })
        .collect();
    if inner.mock {
        // librdkafka's MockCluster has no CreateTopics: a metadata request that allows
        // auto-creation makes them, with its default partitions.
        let mut c = inner.config();
        c.set("group.id", "surety-admin")
            .set("allow.auto.create.topics", "true");
        let names: Vec<String> = missing.iter().map(|(n, _, _)| (*n).to_owned()).collect();
        let timeout = inner.options.request_timeout;
        return blocking("auto-create", move || -> Result<(), TransportError> {
            let c: BaseConsumer = c
                .create()
                .map_err(|e| unavailable("creating a Kafka client", &e))?;
            for n in names {
                c.fetch_metadata(Some(&n), timeout)
                    .map_err(|e| unavailable("creating a topic", &e))?;
            }
            Ok(())
        })
        .await?;
    }
    let opts = AdminOptions::new().operation_timeout(Some(inner.options.request_timeout));
    let results = inner
        .admin
        .create_topics(&new, &opts)
        .await
        .map_err(|e| unavailable("creating Kafka topics", &e))?;
    for r in results {
        if let Err((name, code)) = r
            && code != RDKafkaErrorCode::TopicAlreadyExists
        {
            return Err(TransportError::unavailable(format!(
                "creating Kafka topic {name}: {code}"
            )));
        }
    }
    Ok(())
}

/// Every topic of the cluster, with its partition count and smallest replica count.
pub(crate) async fn all_topics(
    inner: &Inner,
) -> Result<BTreeMap<String, (u32, usize)>, TransportError> {
    let producer = inner.producer.clone();
    let timeout = inner.options.request_timeout;
    blocking("metadata", move || {
        use rdkafka::producer::Producer as _;
        let md = producer
            .client()
            .fetch_metadata(None, timeout)
            .map_err(|e| unavailable("reading the cluster's metadata", &e))?;
        Ok(md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| {
                let replicas = t
                    .partitions()
                    .iter()
                    .map(|p| p.replicas().len())
                    .min()
                    .unwrap_or(0);
                (t.name().to_owned(), (t.partitions().len() as u32, replicas))
            })
            .collect())
    })
    .await?
}

async fn partitions(inner: &Inner, kafka_topic: &str) -> Result<Option<u32>, TransportError> {
    Ok(all_topics(inner).await?.get(kafka_topic).map(|t| t.0))
}

/// Every topic's settings, from the settings topic (the last record of each key).
pub(crate) async fn read_settings(
    inner: &Inner,
) -> Result<BTreeMap<String, TopicSettings>, TransportError> {
    let records = scan::read_all(inner, &names::settings_topic(&inner.options.prefix)).await?;
    let mut out = BTreeMap::new();
    for r in records {
        let Some(key) = r.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            continue;
        };
        match r.payload() {
            Some(v) => match serde_json::from_slice::<TopicSettings>(v) {
                Ok(s) => {
                    out.insert(key.to_owned(), s);
                }
                Err(e) => tracing::warn!("settings of {key}: {e}; ignored"),
            },
            None => {
                out.remove(key);
            }
        }
    }
    *inner.settings.lock().unwrap() = out.iter().map(|(k, v)| (k.clone(), *v)).collect();
    Ok(out)
}

async fn write_settings(
    inner: &Inner,
    topic: &str,
    s: &TopicSettings,
) -> Result<(), TransportError> {
    let value = serde_json::to_vec(s).expect("settings serialize");
    let settings_topic = names::settings_topic(&inner.options.prefix);
    inner
        .producer
        .send(
            FutureRecord::to(&settings_topic).key(topic).payload(&value),
            inner.options.request_timeout,
        )
        .await
        .map_err(|(e, _)| crate::error::produce(&e))?;
    inner.settings.lock().unwrap().insert(topic.to_owned(), *s);
    Ok(())
}

/// A topic's settings: cached, else read; a Kafka topic Surety did not create has the
/// defaults (so Surety consumes topics it finds); one that does not exist is refused.
pub(crate) async fn settings(
    inner: &Inner,
    names: &TopicNames,
) -> Result<TopicSettings, TransportError> {
    if let Some(s) = inner.settings.lock().unwrap().get(&names.topic) {
        return Ok(*s);
    }
    if partitions(inner, &names.kafka).await?.is_none() {
        return Err(not_found(&names.topic));
    }
    let all = read_settings(inner).await?;
    let s = match all.get(&names.topic) {
        Some(s) => *s,
        None => wanted(inner, &TopicSpec::default(), None)?,
    };
    inner
        .settings
        .lock()
        .unwrap()
        .insert(names.topic.clone(), s);
    Ok(s)
}

pub(crate) fn not_found(topic: &str) -> TransportError {
    TransportError::refused(ErrorKind::TopicNotFound, format!("no topic {topic}"))
        .with_code("topic_not_found")
}

pub(crate) async fn describe(inner: &Inner, topic: &str) -> Result<TopicInfo, TransportError> {
    let names = TopicNames::new(&inner.options.prefix, topic)?;
    let all = all_topics(inner).await?;
    let Some(&(parts, replicas)) = all.get(&names.kafka) else {
        return Err(not_found(topic));
    };
    inner.settings.lock().unwrap().remove(topic);
    let s = settings(inner, &names).await?;
    let group_names: Vec<String> = all
        .keys()
        .filter_map(|t| names.group_of_redo(t).map(str::to_owned))
        .collect();
    let mut groups = Vec::new();
    let dead = dead_letters::live(inner, &names).await?;
    for g in group_names {
        let gn = names.group(&g)?;
        let mut lag = 0;
        let mut in_flight = 0;
        for t in [&names.kafka, &gn.redo] {
            let (l, f) = group_counts(inner, &gn.consumer_group, t).await?;
            lag += l;
            in_flight += f;
        }
        groups.push(GroupInfo {
            dead_letters: dead.iter().filter(|d| d.group == g).count() as u64,
            name: g,
            lag,
            in_flight,
        });
    }
    Ok(TopicInfo {
        name: topic.to_owned(),
        partitions: parts,
        max_deliveries: s.max_deliveries,
        ack_wait: s.ack_wait(),
        confirm: surety_core::Confirm::Replicated {
            replicas: replicas as u16,
            fsynced: false,
        },
        groups,
    })
}

/// `(lag, in_flight)` of consumer group `group` on `kafka_topic`, from its commits.
async fn group_counts(
    inner: &Inner,
    group: &str,
    kafka_topic: &str,
) -> Result<(u64, u64), TransportError> {
    let mut config = inner.config();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    let timeout = inner.options.request_timeout;
    let topic = kafka_topic.to_owned();
    blocking(
        "group offsets",
        move || -> Result<(u64, u64), TransportError> {
            let c: BaseConsumer = config
                .create()
                .map_err(|e| unavailable("creating a Kafka client", &e))?;
            let md = c
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| unavailable("reading metadata", &e))?;
            let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
                return Ok((0, 0));
            };
            let mut tpl = TopicPartitionList::new();
            for p in t.partitions() {
                tpl.add_partition(&topic, p.id());
            }
            let committed = c
                .committed_offsets(tpl, timeout)
                .map_err(|e| unavailable("reading committed offsets", &e))?;
            let (mut lag, mut in_flight) = (0u64, 0u64);
            for e in committed.elements() {
                let (low, high) = c
                    .fetch_watermarks(&topic, e.partition(), timeout)
                    .map_err(|e| unavailable("reading watermarks", &e))?;
                let base = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => low,
                }
                .max(low);
                let j = Journal::decode(base, e.metadata());
                let settled: i64 = j
                    .settled
                    .iter()
                    .map(|r| r.1.min(high - 1) - r.0 + 1)
                    .filter(|n| *n > 0)
                    .sum();
                let delivered: i64 = j
                    .delivered
                    .iter()
                    .map(|r| r.1.min(high - 1) - r.0 + 1)
                    .filter(|n| *n > 0)
                    .sum();
                lag += (high - base - settled).max(0) as u64;
                in_flight += delivered.max(0) as u64;
            }
            Ok((lag, in_flight))
        },
    )
    .await?
}

pub(crate) async fn list(inner: &Inner) -> Result<Vec<String>, TransportError> {
    let existing = all_topics(inner).await?;
    let prefix = &inner.options.prefix;
    Ok(read_settings(inner)
        .await?
        .into_keys()
        .filter(|t| TopicNames::new(prefix, t).is_ok_and(|n| existing.contains_key(&n.kafka)))
        .collect())
}

/// Whether the group coordinator stores the metadata of an offset commit, where the
/// journal (crate::journal) lives: a commit by a probe group (one no consumer joins)
/// read back.
async fn keeps_commit_metadata(inner: &Inner, kafka_topic: &str) -> Result<bool, TransportError> {
    let mut config = inner.config();
    config
        .set(
            "group.id",
            names::settings_topic(&inner.options.prefix) + ".probe",
        )
        .set("enable.auto.commit", "false");
    let timeout = inner.options.request_timeout;
    let topic = kafka_topic.to_owned();
    blocking("metadata probe", move || -> Result<bool, TransportError> {
        let c: BaseConsumer = config
            .create()
            .map_err(|e| unavailable("creating a Kafka client", &e))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(0))
            .map_err(|e| unavailable("a probe commit", &e))?;
        if let Some(mut e) = tpl.find_partition(&topic, 0) {
            e.set_metadata("v1 probe");
        }
        c.commit(&tpl, rdkafka::consumer::CommitMode::Sync)
            .map_err(|e| unavailable("a probe commit", &e))?;
        let mut ask = TopicPartitionList::new();
        ask.add_partition(&topic, 0);
        let back = c
            .committed_offsets(ask, timeout)
            .map_err(|e| unavailable("reading a probe commit", &e))?;
        Ok(back
            .elements()
            .first()
            .is_some_and(|e| e.metadata() == "v1 probe"))
    })
    .await?
}

/// What the cluster tells about the durability of `topic`'s confirms.
pub(crate) async fn safety_warnings(
    inner: &Inner,
    topic: &str,
) -> Result<Vec<String>, TransportError> {
    let names = TopicNames::new(&inner.options.prefix, topic)?;
    let all = all_topics(inner).await?;
    let Some(&(_, replicas)) = all.get(&names.kafka) else {
        return Err(not_found(topic));
    };
    let mut out = Vec::new();
    if replicas < 2 {
        out.push(format!(
            "Kafka topic {} has replication factor {replicas}: a confirmed publish is in one broker's \
             page cache only, and a power loss of that broker loses it (fine for tests, not for production)",
            names.kafka
        ));
    }
    if inner.mock {
        out.push("the cluster is librdkafka's MockCluster: in memory, for tests".to_owned());
        return Ok(out);
    }
    if !keeps_commit_metadata(inner, &names.kafka).await? {
        out.push(format!(
            "the cluster does not keep offset-commit metadata (a probe commit on {} came back \
             without it): delivery counts start over in every consumer session, a poison record \
             that kills its consumers is not dead-lettered, and records settled out of order \
             run again after a rebalance (Apache Kafka keeps it)",
            names.kafka
        ));
    }
    let opts = AdminOptions::new().request_timeout(Some(inner.options.request_timeout));
    let resource = rdkafka::admin::ResourceSpecifier::Topic(&names.kafka);
    match inner.admin.describe_configs([&resource], &opts).await {
        Ok(results) => {
            for r in results.into_iter().flatten() {
                let get = |k: &str| r.get(k).and_then(|e| e.value.clone());
                if let Some(min_isr) =
                    get("min.insync.replicas").and_then(|v| v.parse::<usize>().ok())
                    && replicas >= 3
                    && min_isr < 2
                {
                    out.push(format!(
                        "Kafka topic {} has min.insync.replicas={min_isr} with {replicas} replicas: \
                         acks=all is met by the leader alone",
                        names.kafka
                    ));
                }
                if get("unclean.leader.election.enable").as_deref() == Some("true") {
                    out.push(format!(
                        "Kafka topic {} allows unclean leader election: a replica that missed \
                         confirmed records can become leader and drop them",
                        names.kafka
                    ));
                }
            }
        }
        Err(e) => out.push(format!(
            "could not read the configuration of Kafka topic {} ({e}): min.insync.replicas and \
             unclean.leader.election.enable are unchecked",
            names.kafka
        )),
    }
    for w in &out {
        tracing::warn!("{w}");
        metrics::counter!("surety_backend_unsafe_settings_total", "backend" => "kafka")
            .increment(1);
    }
    Ok(out)
}
