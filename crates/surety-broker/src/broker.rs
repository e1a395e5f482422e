//! The embedded broker: topics of partition logs, consumer groups driven by the sans-IO
//! state machine, a group journal that makes every delivery, ack and nack durable before
//! it is answered, dead-letter queues, and producer dedupe.
//!
//! On disk (one directory per topic):
//! ```text
//! receipt.key                       secret that signs receipts
//! topics/<topic>/topic.json         configuration
//! topics/<topic>/p<N>/              partition N: a surety-log
//! topics/<topic>/journal/           group journal: a surety-log of group events
//! topics/<topic>/dlq/<group>/       dead letters of one group: a surety-log
//! ```
//!
//! Write order is what makes a crash safe: a dead letter's copy is durable in the DLQ
//! before the journal says the message left the group; a resent message is durable in the
//! partition before the journal removes its dead letter. A crash between the two steps
//! can only repeat work (a second dead-letter copy, a second resend), never lose it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use surety_log::{Header, Log, LogConfig, NewRecord, RetentionPolicy};
use tokio::sync::{Mutex, Notify};

use crate::codec::{
    GroupSnapshot, TopicSnapshot, decode_events, decode_snapshot, encode_events, encode_snapshot,
};
use crate::dedupe::{Begin, DedupeKey, DedupeTable, StoredKey};
use crate::error::BrokerError;
use crate::group::{Event, FreshMessage, GroupPartition, GroupStats, Lease, Millis, Settled};
use crate::message::{Lineage, PublishMessage, StoredMessage};
use crate::receipt::{ReceiptData, ReceiptKey};
use crate::topic::{
    DurabilityConfig, TopicConfig, TopicConfigPatch, partition_for, validate_group_name,
    validate_topic_name,
};

/// The clock the broker decides with (milliseconds since the Unix epoch by default).
pub type Clock = Arc<dyn Fn() -> Millis + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| surety_log::record::now_ms().max(0) as Millis)
}

/// Settings of a broker instance.
#[derive(Clone)]
pub struct BrokerOptions {
    pub clock: Clock,
    /// Segment size of partition, journal and dead-letter logs.
    pub segment_bytes: u64,
    /// `maintain` snapshots a topic's groups and compacts its journal once this many
    /// journal records were written since the last snapshot.
    pub compact_after_records: u64,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self {
            clock: system_clock(),
            segment_bytes: 64 * 1024 * 1024,
            compact_after_records: 100_000,
        }
    }
}

impl std::fmt::Debug for BrokerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerOptions")
            .field("segment_bytes", &self.segment_bytes)
            .finish_non_exhaustive()
    }
}

/// The outcome of one published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishResult {
    pub partition: u32,
    pub offset: u64,
    /// Already stored earlier (same producer sequence or message id): not stored again.
    pub duplicate: bool,
}

/// A message leased to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub receipt: String,
    pub partition: u32,
    pub delivery_count: u32,
    pub lease_until: Millis,
    pub message: StoredMessage,
}

/// A message that used up its deliveries, as kept in the group's dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: u64,
    pub partition: u32,
    pub offset: u64,
    pub group: String,
    pub reason: String,
    pub attempts: u32,
    pub first_delivered_at: Option<Millis>,
    pub last_delivered_at: Option<Millis>,
    pub dead_lettered_at: Millis,
    pub message: StoredMessage,
}

/// How a batch of receipts is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchMode {
    AllOrNothing,
    Each,
}

/// Which dead letters a resend or purge applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Ids(Vec<u64>),
    All,
}

/// Per group: the conservation counters summed over partitions, plus the DLQ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupInfo {
    pub name: String,
    pub stats: GroupStats,
    /// Messages not yet acked or dead-lettered (pending + in flight): the group's lag.
    pub lag: u64,
    pub dead_letters_live: u64,
    pub dead_letters_purged: u64,
    pub dead_letters_resent: u64,
}

/// A topic's configuration and per-group state.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicInfo {
    pub name: String,
    pub config: TopicConfig,
    /// Per partition: one past the last durable offset.
    pub end_offsets: Vec<u64>,
    pub start_offsets: Vec<u64>,
    pub groups: Vec<GroupInfo>,
}

/// Records of one publish call bound for one partition, with each one's answer slot and
/// dedupe reservations.
type PartitionBatch = (
    Vec<NewRecord>,
    Vec<(usize, Vec<crate::dedupe::Reservation>)>,
);

/// The embedded broker. Cheap to clone; all clones share state.
#[derive(Clone, Debug)]
pub struct Broker {
    inner: Arc<BrokerInner>,
}

struct BrokerInner {
    /// Held (locked) while this broker lives: a second broker on the same directory, in
    /// this process or another, would append to the same logs behind this one's back.
    _lock: std::fs::File,
    dir: PathBuf,
    options: BrokerOptions,
    key: ReceiptKey,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serializes topic creation and reconfiguration.
    admin: Mutex<()>,
}

impl std::fmt::Debug for BrokerInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

struct Topic {
    name: String,
    dir: PathBuf,
    config: RwLock<TopicConfig>,
    partitions: RwLock<Vec<Arc<Log>>>,
    journal: Log,
    groups: Mutex<BTreeMap<String, Arc<Mutex<Group>>>>,
    dedupe: std::sync::Mutex<DedupeTable>,
    round_robin: AtomicU64,
    /// Woken after every publish, for long-polling fetches.
    published: Notify,
    /// Set when a journal or DLQ write failed: in-memory state may be ahead of disk.
    failed: OnceLock<String>,
    /// Journal offset the current snapshot covers (records below are in it).
    snapshot_next: AtomicU64,
}

const SNAPSHOT_FILE: &str = "groups.snapshot";

struct Group {
    name: String,
    parts: Vec<GroupPartition>,
    dlq: Log,
    /// Live dead letters: DLQ offset → (partition, offset).
    dead_letters: BTreeMap<u64, (u32, u64)>,
    purged: u64,
    resent: u64,
}

// Journal record kinds (header "t").
const J_CREATE: &[u8] = b"c";
/// The events of one commit of one group (`codec::encode_events`).
const J_EVENTS: &[u8] = b"e";
const J_RESENT: &[u8] = b"r";
const J_PURGED: &[u8] = b"p";
/// Written by compaction; carries nothing, replay skips it.
const J_SNAPSHOT_MARK: &[u8] = b"s";

// Dead-letter record headers, besides the original message's own.
const DL_PARTITION: &str = "surety.dl.partition";
const DL_OFFSET: &str = "surety.dl.offset";
const DL_REASON: &str = "surety.dl.reason";
const DL_ATTEMPTS: &str = "surety.dl.attempts";
const DL_FIRST: &str = "surety.dl.first";
const DL_LAST: &str = "surety.dl.last";
const DL_AT: &str = "surety.dl.at";

impl Broker {
    /// Opens (or creates) a broker in `dir`, recovering every topic.
    pub fn open(dir: impl AsRef<Path>, options: BrokerOptions) -> Result<Broker, BrokerError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(dir.join("topics"))?;
        let lock = lock_dir(&dir)?;
        let key = load_or_create_key(&dir)?;
        let inner = Arc::new(BrokerInner {
            _lock: lock,
            dir: dir.clone(),
            options,
            key,
            topics: RwLock::new(BTreeMap::new()),
            admin: Mutex::new(()),
        });
        let broker = Broker { inner };
        let mut names: Vec<String> = std::fs::read_dir(dir.join("topics"))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| validate_topic_name(n).is_ok())
            .collect();
        names.sort();
        for name in names {
            let tdir = dir.join("topics").join(&name);
            let Ok(text) = std::fs::read_to_string(tdir.join("topic.json")) else {
                // A topic whose creation never finished: its config was never durable.
                continue;
            };
            let config: TopicConfig = serde_json::from_str(&text).map_err(|e| {
                BrokerError::Storage(format!("{}: {e}", tdir.join("topic.json").display()))
            })?;
            let topic = broker.open_topic(&name, tdir, config)?;
            broker.inner.topics.write().unwrap().insert(name, topic);
        }
        Ok(broker)
    }

    fn now(&self) -> Millis {
        (self.inner.options.clock)()
    }

    fn log_config(&self, config: &TopicConfig) -> LogConfig {
        // Room for the broker's own headers on top of the largest message.
        let max_record_bytes = config.max_message_bytes as usize + 64 * 1024;
        LogConfig {
            segment_bytes: self
                .inner
                .options
                .segment_bytes
                .max(2 * max_record_bytes as u64),
            max_record_bytes,
            durability: match config.durability {
                DurabilityConfig::Fsync => surety_log::Durability::Fsync,
                DurabilityConfig::None => surety_log::Durability::None,
            },
            ..LogConfig::default()
        }
    }

    fn open_topic(
        &self,
        name: &str,
        dir: PathBuf,
        config: TopicConfig,
    ) -> Result<Arc<Topic>, BrokerError> {
        let log_config = self.log_config(&config);
        let mut partitions = Vec::new();
        for p in 0..config.partitions {
            partitions.push(Arc::new(Log::open_dir(
                dir.join(format!("p{p}")),
                log_config.clone(),
            )?));
        }
        let journal_config = LogConfig {
            durability: surety_log::Durability::Fsync,
            ..log_config.clone()
        };
        let journal = Log::open_dir(dir.join("journal"), journal_config)?;
        let topic = Topic {
            name: name.to_owned(),
            dir,
            dedupe: std::sync::Mutex::new(DedupeTable::new(config.dedupe_config())),
            config: RwLock::new(config),
            partitions: RwLock::new(partitions),
            journal,
            groups: Mutex::new(BTreeMap::new()),
            round_robin: AtomicU64::new(0),
            published: Notify::new(),
            failed: OnceLock::new(),
            snapshot_next: AtomicU64::new(0),
        };
        self.replay(&topic)?;
        self.rebuild_dedupe(&topic)?;
        Ok(Arc::new(topic))
    }

    /// Rebuilds every group of a topic from its snapshot, the journal after it, and the
    /// dead-letter logs.
    fn replay(&self, topic: &Topic) -> Result<(), BrokerError> {
        let policy = topic.config.read().unwrap().group_policy();
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        let mut removed: HashMap<String, (BTreeSet<u64>, u64, u64)> = HashMap::new();
        let mut dlq_next: HashMap<String, u64> = HashMap::new();
        let mut next = topic.journal.start_offset();
        let snapshot_path = topic.dir.join(SNAPSHOT_FILE);
        match std::fs::read(&snapshot_path) {
            Ok(bytes) => {
                let snap = decode_snapshot(&bytes).map_err(|e| {
                    BrokerError::Storage(format!("{}: {e}", snapshot_path.display()))
                })?;
                if snap.journal_next < next {
                    return Err(BrokerError::Storage(format!(
                        "{}: covers the journal up to {} but the journal starts at {next}",
                        snapshot_path.display(),
                        snap.journal_next
                    )));
                }
                next = snap.journal_next;
                topic.snapshot_next.store(next, Ordering::Relaxed);
                for gs in snap.groups {
                    let mut parts = Vec::with_capacity(gs.parts.len());
                    for part in gs.parts {
                        parts.push(GroupPartition::restore(policy.clone(), part).map_err(
                            |why| {
                                BrokerError::Storage(format!(
                                    "{}: group {:?}: {why}",
                                    snapshot_path.display(),
                                    gs.name
                                ))
                            },
                        )?);
                    }
                    dlq_next.insert(gs.name.clone(), gs.dlq_next);
                    groups.insert(
                        gs.name.clone(),
                        Group {
                            dlq: self.open_dlq(topic, &gs.name)?,
                            name: gs.name,
                            parts,
                            dead_letters: gs
                                .dead_letters
                                .into_iter()
                                .map(|(id, p, o)| (id, (p, o)))
                                .collect(),
                            purged: gs.purged,
                            resent: gs.resent,
                        },
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        loop {
            let batch = topic.journal.read_from(next, 4096, 16 << 20)?;
            let Some(last) = batch.last() else { break };
            next = last.offset + 1;
            for r in batch {
                let group =
                    String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
                let kind = r
                    .headers
                    .iter()
                    .find(|h| h.name == "t")
                    .map(|h| h.value.as_slice());
                match kind {
                    Some(J_SNAPSHOT_MARK) => {}
                    Some(J_CREATE) if groups.contains_key(&group) => {}
                    Some(J_CREATE) => {
                        let starts: Vec<u64> = r
                            .payload
                            .chunks_exact(8)
                            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                            .collect();
                        let dlq = self.open_dlq(topic, &group)?;
                        groups.insert(
                            group.clone(),
                            Group {
                                name: group,
                                parts: starts
                                    .iter()
                                    .map(|&s| GroupPartition::new(policy.clone(), s))
                                    .collect(),
                                dlq,
                                dead_letters: BTreeMap::new(),
                                purged: 0,
                                resent: 0,
                            },
                        );
                    }
                    Some(J_EVENTS) => {
                        let events = decode_events(&r.payload).map_err(|e| {
                            BrokerError::Storage(format!("journal record {}: {e}", r.offset))
                        })?;
                        let g = groups.get_mut(&group).ok_or_else(|| {
                            BrokerError::Storage(format!(
                                "journal record {} for unknown group {group:?}",
                                r.offset
                            ))
                        })?;
                        for (p, e) in events {
                            ensure_parts(&mut g.parts, p as usize + 1, &policy);
                            g.parts[p as usize].apply(&e).map_err(|e| {
                                BrokerError::Storage(format!("journal record {}: {e}", r.offset))
                            })?;
                        }
                    }
                    Some(kind @ (J_RESENT | J_PURGED)) => {
                        let entry = removed.entry(group).or_default();
                        for c in r.payload.chunks_exact(8) {
                            entry.0.insert(u64::from_le_bytes(c.try_into().unwrap()));
                            if kind == J_RESENT {
                                entry.1 += 1;
                            } else {
                                entry.2 += 1;
                            }
                        }
                    }
                    _ => {
                        return Err(BrokerError::Storage(format!(
                            "journal record {} has no known kind",
                            r.offset
                        )));
                    }
                }
            }
        }
        let partitions = topic.partitions.read().unwrap().len();
        for (name, g) in groups.iter_mut() {
            ensure_parts(&mut g.parts, partitions, &policy);
            let (gone, resent, purged) = removed.remove(name).unwrap_or_default();
            g.resent += resent;
            g.purged += purged;
            let from = dlq_next
                .get(name)
                .copied()
                .unwrap_or(0)
                .max(g.dlq.start_offset());
            for r in read_from_on(&g.dlq, from)? {
                g.dead_letters
                    .insert(r.offset, dead_letter_meta(&r.headers));
            }
            g.dead_letters.retain(|id, _| !gone.contains(id));
        }
        let mut map = topic.groups.try_lock().expect("topic not shared yet");
        for (name, g) in groups {
            map.insert(name, Arc::new(Mutex::new(g)));
        }
        Ok(())
    }

    /// Rebuilds the dedupe table from the retained partition records. Producer windows
    /// count sequences, not time, so the whole retained log is scanned (at open only,
    /// before any append can be in flight).
    fn rebuild_dedupe(&self, topic: &Topic) -> Result<(), BrokerError> {
        let dedupe_config = topic.config.read().unwrap().dedupe_config();
        let mut keys = Vec::new();
        for (p, log) in topic.partitions.read().unwrap().iter().enumerate() {
            for r in read_all(log)? {
                let m = StoredMessage::from_record(r);
                if m.lineage.is_some() {
                    continue; // resends bypass dedupe; they are not producer retries
                }
                keys.push(StoredKey {
                    partition: p as u32,
                    offset: m.offset,
                    timestamp: m.timestamp_ms.max(0) as u64,
                    producer: m.producer_id.zip(m.sequence),
                    id: m.id,
                });
            }
        }
        let mut table = DedupeTable::new(dedupe_config);
        table.rebuild_from(keys);
        *topic.dedupe.lock().unwrap() = table;
        Ok(())
    }

    fn open_dlq(&self, topic: &Topic, group: &str) -> Result<Log, BrokerError> {
        let cfg = self.log_config(&topic.config.read().unwrap());
        Ok(Log::open_dir(
            topic.dir.join("dlq").join(group),
            LogConfig {
                durability: surety_log::Durability::Fsync,
                ..cfg
            },
        )?)
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        let topic = self
            .inner
            .topics
            .read()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::TopicNotFound(name.to_owned()))?;
        if let Some(why) = topic.failed.get() {
            tracing::error!(topic = name, why, "refusing work on a failed topic");
            return Err(BrokerError::TopicFailed(name.to_owned()));
        }
        Ok(topic)
    }

    /// Creates a topic, or updates its configuration. Returns the topic and whether it
    /// was created.
    pub async fn put_topic(
        &self,
        name: &str,
        patch: &TopicConfigPatch,
    ) -> Result<(TopicInfo, bool), BrokerError> {
        validate_topic_name(name).map_err(|e| BrokerError::InvalidName(e.to_string()))?;
        let _admin = self.inner.admin.lock().await;
        let existing = self.inner.topics.read().unwrap().get(name).cloned();
        match existing {
            None => {
                let config = patch.apply(&TopicConfig::default());
                config
                    .validate()
                    .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?;
                let dir = self.inner.dir.join("topics").join(name);
                std::fs::create_dir_all(&dir)?;
                let topic = self.open_topic(name, dir.clone(), config.clone())?;
                // The config file is written last: a topic without it was never created.
                write_durably(
                    &dir,
                    "topic.json",
                    serde_json::to_string_pretty(&config).unwrap().as_bytes(),
                )?;
                self.inner
                    .topics
                    .write()
                    .unwrap()
                    .insert(name.to_owned(), topic);
                Ok((self.describe(name).await?, true))
            }
            Some(topic) => {
                let old = topic.config.read().unwrap().clone();
                let new = patch.apply(&old);
                new.validate()
                    .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?;
                TopicConfig::check_update(&old, &new)
                    .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?;
                let log_config = self.log_config(&new);
                let mut added = Vec::new();
                for p in old.partitions..new.partitions {
                    added.push(Arc::new(Log::open_dir(
                        topic.dir.join(format!("p{p}")),
                        log_config.clone(),
                    )?));
                }
                write_durably(
                    &topic.dir,
                    "topic.json",
                    serde_json::to_string_pretty(&new).unwrap().as_bytes(),
                )?;
                topic.partitions.write().unwrap().extend(added);
                *topic.config.write().unwrap() = new.clone();
                let policy = new.group_policy();
                for g in topic.groups.lock().await.values() {
                    let mut g = g.lock().await;
                    ensure_parts(&mut g.parts, new.partitions as usize, &policy);
                    for part in &mut g.parts {
                        part.set_policy(policy.clone());
                    }
                }
                Ok((self.describe(name).await?, false))
            }
        }
    }

    pub fn topic_names(&self) -> Vec<String> {
        self.inner.topics.read().unwrap().keys().cloned().collect()
    }

    /// Configuration, offsets and per-group state of a topic.
    pub async fn describe(&self, name: &str) -> Result<TopicInfo, BrokerError> {
        let topic = self
            .inner
            .topics
            .read()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::TopicNotFound(name.to_owned()))?;
        let partitions = topic.partitions.read().unwrap().clone();
        let end_offsets: Vec<u64> = partitions.iter().map(|l| l.durable_end()).collect();
        let start_offsets = partitions.iter().map(|l| l.start_offset()).collect();
        let mut groups = Vec::new();
        for g in topic.groups.lock().await.values() {
            let g = g.lock().await;
            groups.push(group_info(&g, &end_offsets));
        }
        Ok(TopicInfo {
            name: topic.name.clone(),
            config: topic.config.read().unwrap().clone(),
            end_offsets,
            start_offsets,
            groups,
        })
    }

    /// Publishes messages; each answer comes only after its record is durable (fsync),
    /// or names the original when it is a duplicate.
    ///
    /// Cancel-safe: the work runs in its own task, so a caller that stops waiting (a
    /// client gone, a timeout) cannot strand it between reserving its dedupe keys and
    /// committing them. Stranded reservations would stay "in progress" for good and hang
    /// every retry of those sequences; instead the publish completes (or fails) on its own
    /// and a retry gets the usual answer.
    pub async fn publish(
        &self,
        topic_name: &str,
        messages: Vec<PublishMessage>,
    ) -> Result<Vec<PublishResult>, BrokerError> {
        let (broker, topic_name) = (self.clone(), topic_name.to_owned());
        let task =
            tokio::spawn(async move { broker.publish_to_completion(&topic_name, messages).await });
        match task.await {
            Ok(answer) => answer,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(BrokerError::ShuttingDown(format!("publish cancelled: {e}"))),
        }
    }

    async fn publish_to_completion(
        &self,
        topic_name: &str,
        messages: Vec<PublishMessage>,
    ) -> Result<Vec<PublishResult>, BrokerError> {
        let topic = self.topic(topic_name)?;
        let config = topic.config.read().unwrap().clone();
        let now = self.now();
        for m in &messages {
            m.validate()?;
            let size = m.size();
            if size > config.max_message_bytes as usize {
                return Err(BrokerError::MessageTooLarge {
                    size,
                    max: config.max_message_bytes as usize,
                });
            }
        }
        let mut results = Vec::with_capacity(messages.len());
        let partitions = topic.partitions.read().unwrap().clone();
        // Per partition: the records to append and, for each, its answer slot and dedupe
        // reservations.
        let mut by_partition: BTreeMap<u32, PartitionBatch> = BTreeMap::new();
        for m in messages {
            let keys = dedupe_keys(&m);
            let mut reservations = Vec::new();
            let mut duplicate = None;
            for key in &keys {
                loop {
                    let begin = topic.dedupe.lock().unwrap().begin(key, now);
                    match begin {
                        Begin::New(r) => {
                            reservations.push(r);
                            break;
                        }
                        Begin::Duplicate { partition, offset } => {
                            duplicate = Some((partition, offset));
                            break;
                        }
                        Begin::InProgress { .. } => {
                            tokio::time::sleep(Duration::from_millis(1)).await
                        }
                        Begin::TooOld { oldest_tracked } => {
                            let mut t = topic.dedupe.lock().unwrap();
                            for r in reservations.drain(..) {
                                let _ = t.abort(r);
                            }
                            let (producer_id, sequence) = match key {
                                DedupeKey::Producer {
                                    producer_id,
                                    sequence,
                                } => (producer_id.clone(), *sequence),
                                DedupeKey::Id(_) => unreachable!("ids are never too old"),
                            };
                            return Err(BrokerError::SequenceTooOld {
                                producer_id,
                                sequence,
                                oldest_tracked,
                            });
                        }
                    }
                }
                if duplicate.is_some() {
                    break;
                }
            }
            if let Some((partition, offset)) = duplicate {
                let mut t = topic.dedupe.lock().unwrap();
                for r in reservations {
                    let _ = t.abort(r);
                }
                results.push(Some(PublishResult {
                    partition,
                    offset,
                    duplicate: true,
                }));
                continue;
            }
            let p = partition_for(
                m.key.as_deref(),
                partitions.len() as u32,
                &topic.round_robin,
            );
            let batch = by_partition.entry(p).or_default();
            batch.0.push(m.to_record(now as i64, None));
            results.push(None);
            batch.1.push((results.len() - 1, reservations));
        }
        // One submission per partition: the batch shares one group commit and one wake-up.
        let submitted: Vec<_> = by_partition
            .into_iter()
            .map(|(p, (records, answers))| (p, partitions[p as usize].submit(records), answers))
            .collect();
        let mut first_error = None;
        for (p, ticket, answers) in submitted {
            let outcome = match ticket {
                Ok(t) => t.await.map_err(BrokerError::from),
                Err(e) => Err(e.into()),
            };
            let mut t = topic.dedupe.lock().unwrap();
            match outcome {
                Ok(range) => {
                    for ((i, reservations), offset) in answers.into_iter().zip(range) {
                        for r in reservations {
                            let _ = t.commit(r, p, offset, now);
                        }
                        results[i] = Some(PublishResult {
                            partition: p,
                            offset,
                            duplicate: false,
                        });
                    }
                }
                Err(e) => {
                    for (_, reservations) in answers {
                        for r in reservations {
                            let _ = t.abort(r);
                        }
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        topic.published.notify_waiters();
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every message answered"))
            .collect())
    }

    /// The group if it exists; reading or settling never creates one.
    async fn existing_group(
        &self,
        topic: &Topic,
        name: &str,
    ) -> Result<Option<Arc<Mutex<Group>>>, BrokerError> {
        validate_group_name(name).map_err(|e| BrokerError::InvalidName(e.to_string()))?;
        Ok(topic.groups.lock().await.get(name).cloned())
    }

    /// The group, created on first fetch.
    async fn group(&self, topic: &Topic, name: &str) -> Result<Arc<Mutex<Group>>, BrokerError> {
        validate_group_name(name).map_err(|e| BrokerError::InvalidName(e.to_string()))?;
        let mut groups = topic.groups.lock().await;
        if let Some(g) = groups.get(name) {
            return Ok(g.clone());
        }
        // Created on first use, at the earliest message still stored.
        let partitions = topic.partitions.read().unwrap().clone();
        let starts: Vec<u64> = partitions.iter().map(|l| l.start_offset()).collect();
        let payload: Vec<u8> = starts.iter().flat_map(|s| s.to_le_bytes()).collect();
        let rec = NewRecord {
            key: Some(name.as_bytes().to_vec()),
            headers: vec![Header::new("t", J_CREATE.to_vec())],
            payload,
            timestamp_ms: self.now() as i64,
        };
        let dlq = self.open_dlq(topic, name)?;
        self.durable(topic, topic.journal.submit(vec![rec])).await?;
        let policy = topic.config.read().unwrap().group_policy();
        let g = Arc::new(Mutex::new(Group {
            name: name.to_owned(),
            parts: starts
                .iter()
                .map(|&s| GroupPartition::new(policy.clone(), s))
                .collect(),
            dlq,
            dead_letters: BTreeMap::new(),
            purged: 0,
            resent: 0,
        }));
        groups.insert(name.to_owned(), g.clone());
        Ok(g)
    }

    /// Awaits a journal or DLQ append; a failure stops the topic, because the in-memory
    /// group state already moved on and must not answer anyone until rebuilt from disk.
    async fn durable(
        &self,
        topic: &Topic,
        ticket: Result<surety_log::AppendTicket, surety_log::AppendError>,
    ) -> Result<std::ops::Range<u64>, BrokerError> {
        let outcome = match ticket {
            Ok(t) => t.await,
            Err(e) => Err(e),
        };
        outcome.map_err(|e| {
            let _ = topic.failed.set(e.to_string());
            tracing::error!(topic = %topic.name, error = %e, "group state write failed; topic stopped");
            BrokerError::TopicFailed(topic.name.clone())
        })
    }

    /// Makes a group's events durable: dead-letter copies first, then the journal.
    async fn commit(
        &self,
        topic: &Topic,
        g: &mut Group,
        events: Vec<(u32, Event)>,
    ) -> Result<(), BrokerError> {
        if let Some(ticket) = self.stage(topic, g, events).await? {
            self.durable(topic, Ok(ticket)).await?;
        }
        Ok(())
    }

    /// The first half of [`Self::commit`], called with the group lock held: writes the
    /// dead-letter copies (awaited: they must be durable before the journal says the
    /// message left the group) and submits the journal records. The caller may release
    /// the lock before awaiting the ticket: the journal keeps submission order, so any
    /// later operation on this group is durable only after these events are, and nothing
    /// is answered from them before the ticket resolves. That lets concurrent consumers
    /// of one group share journal syncs.
    async fn stage(
        &self,
        topic: &Topic,
        g: &mut Group,
        events: Vec<(u32, Event)>,
    ) -> Result<Option<surety_log::AppendTicket>, BrokerError> {
        if events.is_empty() {
            return Ok(None);
        }
        let partitions = topic.partitions.read().unwrap().clone();
        let mut copies = Vec::new();
        let mut placed = Vec::new();
        for (p, e) in &events {
            if let Event::DeadLettered {
                offset,
                reason,
                at,
                attempts,
                first_delivered_at,
                last_delivered_at,
            } = e
            {
                let Some(original) = partitions[*p as usize].read(*offset)? else {
                    return Err(BrokerError::Storage(format!(
                        "dead-lettered offset {offset} of partition {p} is not in the log"
                    )));
                };
                let mut rec = NewRecord {
                    timestamp_ms: original.timestamp_ms,
                    key: original.key,
                    headers: original.headers,
                    payload: original.payload,
                };
                let mut meta = |n: &str, v: Vec<u8>| rec.headers.push(Header::new(n, v));
                meta(DL_PARTITION, p.to_le_bytes().to_vec());
                meta(DL_OFFSET, offset.to_le_bytes().to_vec());
                meta(DL_REASON, reason.as_bytes().to_vec());
                meta(DL_ATTEMPTS, attempts.to_le_bytes().to_vec());
                meta(DL_AT, at.to_le_bytes().to_vec());
                if let Some(t) = first_delivered_at {
                    meta(DL_FIRST, t.to_le_bytes().to_vec());
                }
                if let Some(t) = last_delivered_at {
                    meta(DL_LAST, t.to_le_bytes().to_vec());
                }
                copies.push(rec);
                placed.push((*p, *offset));
            }
        }
        if !copies.is_empty() {
            let range = self.durable(topic, g.dlq.submit(copies)).await?;
            for (id, where_) in range.zip(placed) {
                g.dead_letters.insert(id, where_);
            }
        }
        let record = NewRecord {
            timestamp_ms: 0,
            key: Some(g.name.as_bytes().to_vec()),
            headers: vec![Header::new("t", J_EVENTS.to_vec())],
            payload: encode_events(&events),
        };
        match topic.journal.submit(vec![record]) {
            Ok(ticket) => Ok(Some(ticket)),
            Err(e) => self.durable(topic, Err(e)).await.map(|_| None),
        }
    }

    /// Leases up to `max` messages to a consumer of `group`, waiting up to `wait` for
    /// some to arrive. Redeliveries that are due come first, then fresh messages in
    /// partition order. Every lease is durable before it is returned.
    pub async fn fetch(
        &self,
        topic_name: &str,
        group_name: &str,
        max: usize,
        wait: Duration,
        lease: Option<Duration>,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let topic = self.topic(topic_name)?;
        let group = self.group(&topic, group_name).await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = topic.published.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (deliveries, next_due) = self.fetch_once(&topic, &group, max, lease).await?;
            if !deliveries.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(deliveries);
            }
            let mut wake = deadline;
            if let Some(due) = next_due {
                let now = self.now();
                let until_due = Duration::from_millis(due.saturating_sub(now));
                wake = wake.min(tokio::time::Instant::now() + until_due);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn fetch_once(
        &self,
        topic: &Topic,
        group: &Mutex<Group>,
        max: usize,
        lease: Option<Duration>,
    ) -> Result<(Vec<Delivery>, Option<Millis>), BrokerError> {
        let config = topic.config.read().unwrap().clone();
        let lease_ms = lease
            .map_or(config.ack_wait_ms, |d| d.as_millis() as u64)
            .max(1);
        let partitions = topic.partitions.read().unwrap().clone();
        let mut g = group.lock().await;
        let policy = config.group_policy();
        ensure_parts(&mut g.parts, partitions.len(), &policy);
        let now = self.now();
        let mut events = Vec::new();
        let mut leases: Vec<(u32, Lease)> = Vec::new();
        let mut fresh_records: HashMap<(u32, u64), StoredMessage> = HashMap::new();
        // Rotate the starting partition so one busy partition cannot starve the others.
        let n = partitions.len();
        let first = (topic.round_robin.fetch_add(1, Ordering::Relaxed) as usize) % n.max(1);
        for i in 0..n {
            let p = (first + i) % n;
            let want = max - leases.len();
            if want == 0 {
                break;
            }
            let part = &mut g.parts[p];
            let next = part.next_fresh().max(partitions[p].start_offset());
            let mut fresh = Vec::new();
            if next == part.next_fresh() {
                for r in partitions[p].read_from(next, want, 4 << 20)? {
                    let m = StoredMessage::from_record(r);
                    fresh.push(FreshMessage {
                        offset: m.offset,
                        not_before: m.not_before,
                        for_other_group: m.lineage.as_ref().is_some_and(|l| l.group != g.name),
                    });
                    fresh_records.insert((p as u32, m.offset), m);
                }
            }
            let part = &mut g.parts[p];
            let (evs, ls) = part.plan_fetch(now, want, lease_ms, &fresh);
            events.extend(evs.into_iter().map(|e| (p as u32, e)));
            leases.extend(ls.into_iter().map(|l| (p as u32, l)));
        }
        let ticket = self.stage(topic, &mut g, events).await?;
        let next_due = g.parts.iter().filter_map(GroupPartition::next_due).min();
        let group_name = g.name.clone();
        drop(g);
        if let Some(ticket) = ticket {
            self.durable(topic, Ok(ticket)).await?;
        }
        let mut out = Vec::with_capacity(leases.len());
        for (p, l) in leases {
            let message = match fresh_records.remove(&(p, l.offset)) {
                Some(m) => m,
                None => partitions[p as usize]
                    .read(l.offset)?
                    .map(StoredMessage::from_record)
                    .ok_or_else(|| {
                        BrokerError::Storage(format!(
                            "leased offset {} of partition {p} is not in the log",
                            l.offset
                        ))
                    })?,
            };
            out.push(Delivery {
                receipt: self.inner.key.issue(
                    &topic.name,
                    &group_name,
                    ReceiptData {
                        partition: p,
                        offset: l.offset,
                        delivery: l.delivery,
                    },
                ),
                partition: p,
                delivery_count: l.delivery,
                lease_until: l.lease_until,
                message,
            });
        }
        Ok((out, next_due))
    }

    /// Acknowledges deliveries. All receipts are checked first: if any is invalid,
    /// expired or stale, nothing is acked and the error says why. Returns how many
    /// acks changed state (repeats of earlier acks count zero).
    pub async fn ack(
        &self,
        topic_name: &str,
        group_name: &str,
        receipts: &[String],
    ) -> Result<usize, BrokerError> {
        self.settle(topic_name, group_name, receipts, |part, now, d| {
            part.plan_ack(now, d.offset, d.delivery)
        })
        .await
    }

    /// Negatively acknowledges deliveries: each becomes visible again after
    /// `max(delay, backoff)`, or moves to the dead letters at `max_deliveries`.
    pub async fn nack(
        &self,
        topic_name: &str,
        group_name: &str,
        receipts: &[String],
        delay: Duration,
        reason: &str,
    ) -> Result<usize, BrokerError> {
        let delay_ms = delay.as_millis() as u64;
        self.settle(topic_name, group_name, receipts, |part, now, d| {
            part.plan_nack(now, d.offset, d.delivery, delay_ms, reason.to_owned())
        })
        .await
    }

    /// Acknowledges each delivery on its own: valid receipts are applied together, in one
    /// journal commit, and every receipt gets its own answer (`Ok(true)` acked now,
    /// `Ok(false)` already settled, or why it was refused). For streams that coalesce
    /// acks from many handlers, where one expired receipt must not hold up the others.
    pub async fn ack_each(
        &self,
        topic_name: &str,
        group_name: &str,
        receipts: &[String],
    ) -> Result<Vec<Result<bool, BrokerError>>, BrokerError> {
        self.settle_batch(
            topic_name,
            group_name,
            receipts,
            BatchMode::Each,
            |part, now, d| part.plan_ack(now, d.offset, d.delivery),
        )
        .await
    }

    async fn settle(
        &self,
        topic_name: &str,
        group_name: &str,
        receipts: &[String],
        op: impl Fn(
            &mut GroupPartition,
            Millis,
            ReceiptData,
        ) -> Result<Settled, crate::group::SettleError>,
    ) -> Result<usize, BrokerError> {
        let outcomes = self
            .settle_batch(
                topic_name,
                group_name,
                receipts,
                BatchMode::AllOrNothing,
                op,
            )
            .await?;
        Ok(outcomes
            .into_iter()
            .filter(|o| matches!(o, Ok(true)))
            .count())
    }

    /// Checks every receipt, then applies the acceptable ones in one journal commit.
    /// `AllOrNothing` refuses the whole batch (changing nothing) at the first bad one.
    async fn settle_batch(
        &self,
        topic_name: &str,
        group_name: &str,
        receipts: &[String],
        mode: BatchMode,
        op: impl Fn(
            &mut GroupPartition,
            Millis,
            ReceiptData,
        ) -> Result<Settled, crate::group::SettleError>,
    ) -> Result<Vec<Result<bool, BrokerError>>, BrokerError> {
        let topic = self.topic(topic_name)?;
        validate_group_name(group_name).map_err(|e| BrokerError::InvalidName(e.to_string()))?;
        let verified: Vec<Result<ReceiptData, BrokerError>> = receipts
            .iter()
            .map(|r| {
                self.inner
                    .key
                    .verify(&topic.name, group_name, r)
                    .map_err(BrokerError::from)
            })
            .collect();
        let first_bad =
            |v: Vec<Result<ReceiptData, BrokerError>>| v.into_iter().find_map(Result::err);
        if mode == BatchMode::AllOrNothing && verified.iter().any(Result::is_err) {
            return Err(first_bad(verified).expect("one is bad"));
        }
        // A valid receipt was issued by a fetch, which created the group; an empty batch
        // must not create one either.
        let Some(group) = self.existing_group(&topic, group_name).await? else {
            return Ok(verified.into_iter().map(|v| v.map(|_| false)).collect());
        };
        let mut g = group.lock().await;
        let now = self.now();
        let checked: Vec<Result<ReceiptData, BrokerError>> = verified
            .into_iter()
            .map(|v| {
                let d = v?;
                let part =
                    g.parts
                        .get(d.partition as usize)
                        .ok_or(BrokerError::UnknownPartition {
                            partition: d.partition,
                        })?;
                part.check_settle(now, d.offset, d.delivery)?;
                Ok(d)
            })
            .collect();
        if mode == BatchMode::AllOrNothing && checked.iter().any(Result::is_err) {
            return Err(first_bad(checked).expect("one is bad"));
        }
        let mut events = Vec::new();
        let mut outcomes = Vec::with_capacity(checked.len());
        for c in checked {
            outcomes.push(
                c.and_then(|d| match op(&mut g.parts[d.partition as usize], now, d)? {
                    Settled::Changed(e) => {
                        events.push((d.partition, e));
                        Ok(true)
                    }
                    Settled::AlreadySettled => Ok(false),
                }),
            );
        }
        let ticket = self.stage(&topic, &mut g, events).await?;
        drop(g);
        if let Some(ticket) = ticket {
            self.durable(&topic, Ok(ticket)).await?;
        }
        Ok(outcomes)
    }

    /// The group's live dead letters, oldest first.
    pub async fn dead_letters(
        &self,
        topic_name: &str,
        group_name: &str,
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        let topic = self.topic(topic_name)?;
        let Some(group) = self.existing_group(&topic, group_name).await? else {
            return Ok(Vec::new());
        };
        let g = group.lock().await;
        let mut out = Vec::new();
        for &id in g.dead_letters.keys() {
            if let Some(r) = g.dlq.read(id)? {
                out.push(dead_letter_from(&g.name, r));
            }
        }
        Ok(out)
    }

    /// One dead letter by id, if it is live.
    pub async fn dead_letter(
        &self,
        topic_name: &str,
        group_name: &str,
        id: u64,
    ) -> Result<Option<DeadLetter>, BrokerError> {
        let topic = self.topic(topic_name)?;
        let Some(group) = self.existing_group(&topic, group_name).await? else {
            return Ok(None);
        };
        let g = group.lock().await;
        if !g.dead_letters.contains_key(&id) {
            return Ok(None);
        }
        Ok(g.dlq.read(id)?.map(|r| dead_letter_from(&g.name, r)))
    }

    /// Dedupe counters of a topic (hits, tracked producers and ids, refusals).
    pub fn dedupe_stats(
        &self,
        topic_name: &str,
    ) -> Result<crate::dedupe::DedupeStats, BrokerError> {
        Ok(self.topic(topic_name)?.dedupe.lock().unwrap().stats())
    }

    /// Puts dead letters back into this group's delivery (no other group sees them),
    /// with a reference to the dead letter and its attempts. Returns how many.
    pub async fn resend(
        &self,
        topic_name: &str,
        group_name: &str,
        which: &Selection,
    ) -> Result<usize, BrokerError> {
        let topic = self.topic(topic_name)?;
        let Some(group) = self.existing_group(&topic, group_name).await? else {
            return Ok(0);
        };
        let mut g = group.lock().await;
        let ids = selected(&g, which);
        let partitions = topic.partitions.read().unwrap().clone();
        let now = self.now();
        let mut tickets = Vec::new();
        for &id in &ids {
            let Some(r) = g.dlq.read(id)? else { continue };
            let dl = dead_letter_from(&g.name, r);
            let lineage = Lineage {
                group: g.name.clone(),
                dead_letter_id: id,
                prior_attempts: dl.attempts,
            };
            let p = (dl.partition as usize).min(partitions.len() - 1);
            let rec = dl
                .message
                .to_publish()
                .to_record(now as i64, Some(&lineage));
            tickets.push(partitions[p].submit(vec![rec]));
        }
        for t in tickets {
            self.durable(&topic, t).await?;
        }
        self.remove_dead_letters(&topic, &mut g, &ids, J_RESENT)
            .await?;
        g.resent += ids.len() as u64;
        topic.published.notify_waiters();
        Ok(ids.len())
    }

    /// Deletes dead letters for good (counted). Returns how many.
    pub async fn purge(
        &self,
        topic_name: &str,
        group_name: &str,
        which: &Selection,
    ) -> Result<usize, BrokerError> {
        let topic = self.topic(topic_name)?;
        let Some(group) = self.existing_group(&topic, group_name).await? else {
            return Ok(0);
        };
        let mut g = group.lock().await;
        let ids = selected(&g, which);
        self.remove_dead_letters(&topic, &mut g, &ids, J_PURGED)
            .await?;
        g.purged += ids.len() as u64;
        Ok(ids.len())
    }

    async fn remove_dead_letters(
        &self,
        topic: &Topic,
        g: &mut Group,
        ids: &[u64],
        kind: &[u8],
    ) -> Result<(), BrokerError> {
        if ids.is_empty() {
            return Ok(());
        }
        let rec = NewRecord {
            timestamp_ms: 0,
            key: Some(g.name.as_bytes().to_vec()),
            headers: vec![Header::new("t", kind.to_vec())],
            payload: ids.iter().flat_map(|i| i.to_le_bytes()).collect(),
        };
        self.durable(topic, topic.journal.submit(vec![rec])).await?;
        for id in ids {
            g.dead_letters.remove(id);
        }
        Ok(())
    }

    /// Applies retention to every partition of every topic: whole segments only, never
    /// at or above a group's lowest unsettled offset unless the topic allows it, in which
    /// case every unsettled message deleted is counted as `expired_unsettled`.
    pub async fn run_retention(&self) -> Result<(), BrokerError> {
        let topics: Vec<Arc<Topic>> = self
            .inner
            .topics
            .read()
            .unwrap()
            .values()
            .cloned()
            .collect();
        for topic in topics {
            let config = topic.config.read().unwrap().clone();
            let policy = RetentionPolicy {
                max_age: config.retention.max_age_ms.map(Duration::from_millis),
                max_bytes: config.retention.max_bytes,
            };
            if policy == RetentionPolicy::default() {
                continue;
            }
            let partitions = topic.partitions.read().unwrap().clone();
            let groups: Vec<Arc<Mutex<Group>>> =
                topic.groups.lock().await.values().cloned().collect();
            for (p, log) in partitions.iter().enumerate() {
                let mut floor = log.durable_end();
                if !config.retention.delete_unsettled {
                    for g in &groups {
                        let g = g.lock().await;
                        if let Some(part) = g.parts.get(p) {
                            floor = floor.min(part.committed());
                        }
                    }
                }
                let out = log
                    .apply_retention(floor, &policy)
                    .map_err(|e| BrokerError::Storage(e.to_string()))?;
                if out.deleted_segments == 0 {
                    continue;
                }
                for g in &groups {
                    let mut g = g.lock().await;
                    if let Some(e) = g
                        .parts
                        .get_mut(p)
                        .and_then(|part| part.plan_expire_unsettled(out.start_offset))
                    {
                        self.commit(&topic, &mut g, vec![(p as u32, e)]).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes a snapshot of every group of the topic and deletes the journal segments it
    /// covers. Holds every group lock while it reads the state, so the snapshot matches
    /// the journal exactly up to `journal_next` (every event below it is applied, none
    /// above it is).
    async fn compact(&self, topic: &Topic) -> Result<(), BrokerError> {
        let groups = topic.groups.lock().await;
        let mut guards = Vec::with_capacity(groups.len());
        for g in groups.values() {
            guards.push(g.lock().await);
        }
        if topic.failed.get().is_some() {
            return Err(BrokerError::TopicFailed(topic.name.clone()));
        }
        // Events may be submitted but not yet durable (see `stage`); a marker appended now
        // is durable only after all of them, and the snapshot covers exactly up to it.
        let marker = NewRecord {
            timestamp_ms: 0,
            key: None,
            headers: vec![Header::new("t", J_SNAPSHOT_MARK.to_vec())],
            payload: Vec::new(),
        };
        let journal_next = self
            .durable(topic, topic.journal.submit(vec![marker]))
            .await?
            .end;
        let snapshot = TopicSnapshot {
            journal_next,
            groups: guards
                .iter()
                .map(|g| GroupSnapshot {
                    name: g.name.clone(),
                    purged: g.purged,
                    resent: g.resent,
                    dlq_next: g.dlq.durable_end(),
                    dead_letters: g
                        .dead_letters
                        .iter()
                        .map(|(&id, &(p, o))| (id, p, o))
                        .collect(),
                    parts: g.parts.iter().map(GroupPartition::snapshot).collect(),
                })
                .collect(),
        };
        write_durably(&topic.dir, SNAPSHOT_FILE, &encode_snapshot(&snapshot))?;
        topic.snapshot_next.store(journal_next, Ordering::Relaxed);
        drop(guards);
        drop(groups);
        // Only after the snapshot is durable may the journal below it go.
        let everything_below_floor = RetentionPolicy {
            max_age: None,
            max_bytes: Some(0),
        };
        topic
            .journal
            .apply_retention(journal_next, &everything_below_floor)
            .map_err(|e| BrokerError::Storage(e.to_string()))?;
        Ok(())
    }

    /// Periodic upkeep: retention, then journal compaction where the journal grew by
    /// `compact_after_records` since the last snapshot. A server calls this on a timer.
    pub async fn maintain(&self) -> Result<(), BrokerError> {
        self.run_retention().await?;
        let topics: Vec<Arc<Topic>> = self
            .inner
            .topics
            .read()
            .unwrap()
            .values()
            .cloned()
            .collect();
        for topic in topics {
            let grown = topic.journal.durable_end() - topic.snapshot_next.load(Ordering::Relaxed);
            if grown >= self.inner.options.compact_after_records && topic.failed.get().is_none() {
                self.compact(&topic).await?;
            }
        }
        Ok(())
    }

    /// Journal records written since the last snapshot, and journal segments, per topic
    /// (for metrics and tests of compaction).
    pub fn journal_info(&self, topic_name: &str) -> Result<(u64, usize), BrokerError> {
        let topic = self.topic(topic_name)?;
        let grown = topic.journal.durable_end() - topic.snapshot_next.load(Ordering::Relaxed);
        Ok((grown, topic.journal.segment_count()))
    }

    /// Closes every log (flushing nothing: every answered write is already durable).
    pub fn close(&self) {
        for topic in self.inner.topics.read().unwrap().values() {
            for log in topic.partitions.read().unwrap().iter() {
                log.close();
            }
            topic.journal.close();
        }
    }
}

fn ensure_parts(parts: &mut Vec<GroupPartition>, n: usize, policy: &crate::group::GroupPolicy) {
    // Partitions added after the group was created start empty, at offset 0.
    while parts.len() < n {
        parts.push(GroupPartition::new(policy.clone(), 0));
    }
}

fn group_info(g: &Group, end_offsets: &[u64]) -> GroupInfo {
    let mut stats = GroupStats::default();
    for (p, part) in g.parts.iter().enumerate() {
        let s = part.stats(end_offsets.get(p).copied().unwrap_or(0));
        stats.accepted += s.accepted;
        stats.acked += s.acked;
        stats.in_flight += s.in_flight;
        stats.pending += s.pending;
        stats.dead_lettered += s.dead_lettered;
        stats.expired_unsettled += s.expired_unsettled;
        stats.redeliveries += s.redeliveries;
    }
    GroupInfo {
        name: g.name.clone(),
        lag: stats.pending + stats.in_flight,
        stats,
        dead_letters_live: g.dead_letters.len() as u64,
        dead_letters_purged: g.purged,
        dead_letters_resent: g.resent,
    }
}

fn selected(g: &Group, which: &Selection) -> Vec<u64> {
    match which {
        Selection::All => g.dead_letters.keys().copied().collect(),
        Selection::Ids(ids) => {
            let mut v: Vec<u64> = ids
                .iter()
                .copied()
                .filter(|i| g.dead_letters.contains_key(i))
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        }
    }
}

fn dedupe_keys(m: &PublishMessage) -> Vec<DedupeKey> {
    let mut keys = Vec::new();
    if let (Some(producer_id), Some(sequence)) = (&m.producer_id, m.sequence) {
        keys.push(DedupeKey::Producer {
            producer_id: producer_id.clone(),
            sequence,
        });
    }
    if let Some(id) = &m.id {
        keys.push(DedupeKey::Id(id.clone()));
    }
    keys
}

fn read_all(log: &Log) -> Result<Vec<surety_log::Record>, BrokerError> {
    read_from_on(log, log.start_offset())
}

/// Every durable record of `log` from `from` on.
fn read_from_on(log: &Log, from: u64) -> Result<Vec<surety_log::Record>, BrokerError> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let batch = log.read_from(next, 4096, 16 << 20)?;
        let Some(last) = batch.last() else { break };
        next = last.offset + 1;
        out.extend(batch);
    }
    Ok(out)
}

fn header_u64(headers: &[Header], name: &str) -> Option<u64> {
    headers
        .iter()
        .find(|h| h.name == name)
        .and_then(|h| Some(u64::from_le_bytes(h.value.as_slice().try_into().ok()?)))
}

fn header_u32(headers: &[Header], name: &str) -> Option<u32> {
    headers
        .iter()
        .find(|h| h.name == name)
        .and_then(|h| Some(u32::from_le_bytes(h.value.as_slice().try_into().ok()?)))
}

fn dead_letter_meta(headers: &[Header]) -> (u32, u64) {
    (
        header_u32(headers, DL_PARTITION).unwrap_or(0),
        header_u64(headers, DL_OFFSET).unwrap_or(0),
    )
}

fn dead_letter_from(group: &str, mut r: surety_log::Record) -> DeadLetter {
    let (partition, offset) = dead_letter_meta(&r.headers);
    let reason = r
        .headers
        .iter()
        .find(|h| h.name == DL_REASON)
        .map(|h| String::from_utf8_lossy(&h.value).into_owned())
        .unwrap_or_default();
    let attempts = header_u32(&r.headers, DL_ATTEMPTS).unwrap_or(0);
    let first = header_u64(&r.headers, DL_FIRST);
    let last = header_u64(&r.headers, DL_LAST);
    let at = header_u64(&r.headers, DL_AT).unwrap_or(0);
    let id = r.offset;
    r.headers.retain(|h| !h.name.starts_with("surety.dl."));
    r.offset = offset;
    DeadLetter {
        id,
        partition,
        offset,
        group: group.to_owned(),
        reason,
        attempts,
        first_delivered_at: first,
        last_delivered_at: last,
        dead_lettered_at: at,
        message: StoredMessage::from_record(r),
    }
}

/// Writes a small file atomically and durably: temp file, fsync, rename, fsync dir.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), BrokerError> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Takes the data directory's exclusive lock (`LOCK`, an flock: the kernel drops it when
/// the holder exits, `kill -9` included), or says who has it.
fn lock_dir(dir: &Path) -> Result<std::fs::File, BrokerError> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(BrokerError::DirectoryInUse(dir.to_owned())),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

fn load_or_create_key(dir: &Path) -> Result<ReceiptKey, BrokerError> {
    let path = dir.join("receipt.key");
    match std::fs::read(&path) {
        Ok(bytes) if bytes.len() == 32 => Ok(ReceiptKey(bytes.try_into().unwrap())),
        Ok(_) => Err(BrokerError::Storage(format!(
            "{} is not a 32-byte key",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            write_durably(dir, "receipt.key", &key)?;
            Ok(ReceiptKey(key))
        }
        Err(e) => Err(e.into()),
    }
}
