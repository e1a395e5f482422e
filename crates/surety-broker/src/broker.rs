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
//! topics/<topic>/dlq/<group>/       dead letters of one group: a surety-log, created with
//!                                   the group's first dead letter
//! trash/                            deleted topics on their way out (emptied at open)
//! ```
//!
//! Leases run out on their own: every group with a lease is scheduled at its earliest
//! expiry, and [`Broker::expire_due`] (run by [`Broker::spawn_sweeper`] on a timer set to
//! the next due time) expires them and applies `max_deliveries`, so in-flight counts,
//! dead letters and metrics are right with no consumer attached.
//!
//! Write order is what makes a crash safe: a dead letter's copy is durable in the DLQ
//! before the journal says the message left the group; a resent message is durable in the
//! partition before the journal removes its dead letter. A crash between the two steps
//! can only repeat work (a second dead-letter copy, a second resend), never lose it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use surety_log::{Header, Log, LogConfig, NewRecord, RetentionPolicy};
use tokio::sync::{Mutex, Notify};

use crate::codec::{
    GroupSnapshot, TopicSnapshot, decode_events, decode_snapshot, encode_events, encode_snapshot,
};
use crate::dedupe::{Begin, DedupeKey, DedupeTable, decode_snapshot as decode_dedupe_snapshot};
use crate::error::BrokerError;
use crate::group::{Event, FreshMessage, GroupPartition, GroupStats, Lease, Millis, Settled};
use crate::limits;
use crate::log_name::LogName;
use crate::message::{Lineage, PublishMessage, StoredMessage};
use crate::receipt::{ReceiptData, ReceiptKey};
use crate::scrub::{LogScrub, ScrubCounters, ScrubStats, Scrubber};
use crate::session::SettleOp;
use crate::topic::{
    TopicConfig, TopicConfigPatch, partition_for, validate_group_name, validate_topic_name,
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
    /// Segment size of partition, journal and dead-letter logs of topics that do not set
    /// their own (`TopicConfig::segment_bytes`).
    pub segment_bytes: u64,
    /// `maintain` snapshots a topic's groups and compacts its journal once this many
    /// journal records were written since the last snapshot.
    pub compact_after_records: u64,
    /// How fast [`Broker::spawn_scrubber`]'s thread may read sealed segments to
    /// CRC-check them; 0 turns the scrub off (`crate::scrub`).
    pub scrub_bytes_per_sec: u64,
    /// A scrub pass starts at most this often.
    pub scrub_interval: Duration,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self {
            clock: system_clock(),
            segment_bytes: 64 * 1024 * 1024,
            compact_after_records: 100_000,
            scrub_bytes_per_sec: crate::scrub::DEFAULT_SCRUB_BYTES_PER_SEC,
            scrub_interval: crate::scrub::DEFAULT_SCRUB_INTERVAL,
        }
    }
}

impl std::fmt::Debug for BrokerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerOptions")
            .field("segment_bytes", &self.segment_bytes)
            .field("compact_after_records", &self.compact_after_records)
            .field("scrub_bytes_per_sec", &self.scrub_bytes_per_sec)
            .field("scrub_interval", &self.scrub_interval)
            .finish_non_exhaustive()
    }
}

/// When a topic's dedupe snapshot (`dedupe.snapshot`) is rewritten, in the background
/// after a publish: once the records published since the last one reach
/// `max(after_records, entries in the last snapshot)`, or their payload bytes reach
/// `max(after_bytes, 4 × the last snapshot's size)`. So a restart replays at most about
/// that much log, and writing snapshots costs a bounded share of the appends (see the
/// `dedupe` module docs). A clean [`Broker::close`] writes one too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupeSnapshotPolicy {
    pub after_records: u64,
    pub after_bytes: u64,
}

impl Default for DedupeSnapshotPolicy {
    fn default() -> Self {
        Self {
            after_records: 100_000,
            after_bytes: 256 * 1024 * 1024,
        }
    }
}

/// How a topic's dedupe table was rebuilt when the topic was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DedupeRecovery {
    /// Started from `dedupe.snapshot` and replayed only the log after it.
    pub from_snapshot: bool,
    /// Why the snapshot was not used, when it was not (missing, damaged, stale): then
    /// the whole retained log was scanned.
    pub fallback_reason: Option<String>,
    /// Partition records read: the tail after the snapshot, or the whole retained log.
    pub records_scanned: u64,
    /// Entries (sequences plus ids) the snapshot brought.
    pub snapshot_entries: u64,
    /// Time the rebuild took.
    pub elapsed: Duration,
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

/// An ack or nack applied in memory, its journal commit submitted but perhaps not yet
/// durable ([`Broker::stage_settle_each`]).
#[must_use = "the outcomes hold only once durable() answers"]
pub struct StagedSettle {
    outcomes: Vec<Result<bool, BrokerError>>,
    commit: Option<(Arc<Topic>, surety_log::AppendTicket)>,
}

impl std::fmt::Debug for StagedSettle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedSettle")
            .field("outcomes", &self.outcomes)
            .field("committing", &self.commit.is_some())
            .finish()
    }
}

impl StagedSettle {
    /// Nothing to commit: each receipt refused, or `false` (nothing changed).
    fn unchanged(verified: Vec<Result<ReceiptData, BrokerError>>) -> Self {
        Self {
            outcomes: verified.into_iter().map(|v| v.map(|_| false)).collect(),
            commit: None,
        }
    }

    /// One outcome per receipt, as applied in memory.
    pub fn outcomes(&self) -> &[Result<bool, BrokerError>] {
        &self.outcomes
    }

    /// Waits for the journal commit; the outcomes, or the storage failure that failed
    /// the topic.
    pub async fn durable(self) -> Result<Vec<Result<bool, BrokerError>>, BrokerError> {
        if let Some((topic, ticket)) = self.commit {
            ticket.await.map_err(|e| fail_topic(&topic, &e))?;
        }
        Ok(self.outcomes)
    }
}

/// How a batch of receipts is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchMode {
    AllOrNothing,
    Each,
}

/// Where a new consumer group starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StartAt {
    /// At the oldest message still stored: the group sees everything retained.
    #[default]
    Earliest,
    /// After the last message stored now: the group sees only what comes next.
    Latest,
}

/// Where a seek moves a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTo {
    /// Every partition to its oldest retained message.
    Earliest,
    /// Every partition past its last message.
    Latest,
    /// One partition to an offset (clamped to what the partition retains).
    Offset { partition: u32, offset: u64 },
    /// Every partition to its first message stored at or after this time (the broker's
    /// append time, ms since the Unix epoch).
    Timestamp(Millis),
}

/// What a seek did to one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSeek {
    pub partition: u32,
    /// The group's lowest unsettled offset before the seek.
    pub from: u64,
    pub to: u64,
    /// Unsettled messages passed over (settled without delivery; counted, never silent).
    pub skipped: u64,
    /// Settled messages that will be delivered again.
    pub replayed: u64,
}

/// What a seek did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SeekOutcome {
    pub skipped: u64,
    pub replayed: u64,
    pub partitions: Vec<PartitionSeek>,
}

/// What deleting a group dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupDeleted {
    /// Messages the group had not acked or dead-lettered (its lag).
    pub unsettled: u64,
    pub dead_letters: u64,
}

/// What deleting a topic dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicDeleted {
    /// Messages stored in its partitions.
    pub messages: u64,
    pub groups: u64,
    /// Summed over its groups.
    pub unsettled: u64,
    pub dead_letters: u64,
}

/// Messages read without delivering them (`Broker::peek`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peek {
    pub partition: u32,
    pub messages: Vec<StoredMessage>,
    /// Where the next page starts.
    pub next_offset: u64,
    pub start_offset: u64,
    pub end_offset: u64,
}

/// One page of a group's dead letters, read one at a time as it is iterated (so a page
/// of large dead letters is never all in memory at once). The page ends after `limit`
/// dead letters or [`limits::PAGE_BYTES`] of payload; [`DeadLetterPage::next_cursor`]
/// then says where the next page starts.
pub struct DeadLetterPage {
    group: String,
    dlq: Option<Arc<Log>>,
    ids: VecDeque<u64>,
    /// Live dead letters remain after `ids`.
    more: bool,
    bytes: usize,
    last: Option<u64>,
}

impl std::fmt::Debug for DeadLetterPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterPage")
            .field("group", &self.group)
            .field("ids", &self.ids)
            .field("more", &self.more)
            .finish_non_exhaustive()
    }
}

impl DeadLetterPage {
    /// After iterating: the id to pass as `after` for the next page, if there is one.
    pub fn next_cursor(&self) -> Option<u64> {
        if self.more || !self.ids.is_empty() {
            self.last
        } else {
            None
        }
    }
}

impl Iterator for DeadLetterPage {
    type Item = Result<DeadLetter, BrokerError>;

    fn next(&mut self) -> Option<Self::Item> {
        let dlq = self.dlq.as_ref()?;
        if self.bytes >= limits::PAGE_BYTES {
            return None;
        }
        while let Some(id) = self.ids.pop_front() {
            match dlq.read(id) {
                Ok(Some(r)) => {
                    self.bytes += r.payload.len();
                    self.last = Some(id);
                    return Some(Ok(dead_letter_from(&self.group, r)));
                }
                Ok(None) => continue,
                Err(e) => return Some(Err(e.into())),
            }
        }
        None
    }
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
    /// Segments of the topic's logs found damaged since the broker opened (by a read or
    /// the scrub): their damaged records are never served, the rest is.
    pub corrupt_segments: Vec<CorruptSegment>,
}

/// A damaged segment of one of a topic's logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptSegment {
    pub log: LogName,
    /// The segment file, and the first damage found in it.
    pub corruption: surety_log::Corruption,
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

pub(crate) struct BrokerInner {
    /// Held (locked) while this broker lives: a second broker on the same directory, in
    /// this process or another, would append to the same logs behind this one's back.
    _lock: std::fs::File,
    dir: PathBuf,
    options: BrokerOptions,
    key: ReceiptKey,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serializes topic creation, reconfiguration and deletion.
    admin: Mutex<()>,
    /// Groups with leases, by their earliest lease expiry: (due, topic, group).
    sweeps: std::sync::Mutex<BTreeSet<(Millis, String, String)>>,
    /// Woken when a group is scheduled earlier than everything before it. Shared with
    /// the sweeper task, which holds the broker only weakly.
    sweep_wake: Arc<Notify>,
    dedupe_policy: RwLock<DedupeSnapshotPolicy>,
    scrub: Arc<ScrubCounters>,
}

/// A broker held weakly, by the threads that must not keep it alive.
#[derive(Debug)]
pub(crate) struct WeakBroker(Weak<BrokerInner>);

impl WeakBroker {
    pub fn upgrade(&self) -> Option<Broker> {
        self.0.upgrade().map(|inner| Broker { inner })
    }
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
    journal: Arc<Log>,
    groups: Mutex<BTreeMap<String, Arc<Mutex<Group>>>>,
    dedupe: std::sync::Mutex<DedupeState>,
    /// Held while a dedupe snapshot is encoded and written: one writer at a time, so a
    /// newer snapshot is never replaced by an older one.
    dedupe_snapshot_lock: std::sync::Mutex<()>,
    /// Records and payload bytes published since the last dedupe snapshot (they trigger
    /// the next one; approximate, never used for correctness).
    dedupe_tail_records: AtomicU64,
    dedupe_tail_bytes: AtomicU64,
    /// Size in bytes and in entries of the last dedupe snapshot written or loaded.
    dedupe_snapshot_len: AtomicU64,
    dedupe_snapshot_entries: AtomicU64,
    /// A background dedupe snapshot is running.
    dedupe_snapshotting: AtomicBool,
    dedupe_recovery: std::sync::Mutex<DedupeRecovery>,
    round_robin: AtomicU64,
    /// Woken after every publish, for long-polling fetches.
    published: Notify,
    /// Set when a journal or DLQ write failed: in-memory state may be ahead of disk.
    failed: OnceLock<String>,
    /// Journal offset the current snapshot covers (records below are in it).
    snapshot_next: AtomicU64,
}

const SNAPSHOT_FILE: &str = "groups.snapshot";
const DEDUPE_SNAPSHOT_FILE: &str = "dedupe.snapshot";
/// `dedupe.snapshot.tmp.<pid>-<n>`: a snapshot being written (removed at open).
const DEDUPE_TMP_INFIX: &str = ".tmp.";

/// A topic's dedupe table and the publishes in flight that may still commit into it.
struct DedupeState {
    table: DedupeTable,
    /// Per partition, the publishes submitted and not yet committed or aborted: for
    /// each, the partition's durable end read before it submitted (its records land at
    /// or above it), with a count. A snapshot covers a partition only below the lowest:
    /// a record there may be durable but not yet committed into the table.
    appending: HashMap<u32, BTreeMap<u64, usize>>,
}

impl DedupeState {
    fn register(&mut self, partition: u32, floor: u64) {
        *self
            .appending
            .entry(partition)
            .or_default()
            .entry(floor)
            .or_default() += 1;
    }

    fn deregister(&mut self, partition: u32, floor: u64) {
        if let Some(m) = self.appending.get_mut(&partition)
            && let Some(n) = m.get_mut(&floor)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&floor);
            }
        }
    }

    /// What a snapshot taken now covers of each partition: everything below the durable
    /// end, except from the lowest publish in flight on.
    fn covered(&self, partitions: &[Arc<Log>]) -> Vec<u64> {
        partitions
            .iter()
            .enumerate()
            .map(|(p, log)| {
                let end = log.durable_end();
                self.appending
                    .get(&(p as u32))
                    .and_then(|m| m.keys().next())
                    .map_or(end, |&floor| floor.min(end))
            })
            .collect()
    }
}

struct Group {
    name: String,
    /// The journal offset of the record that created this group: receipts carry it, so
    /// one from an earlier group of the same name is stale.
    incarnation: u64,
    parts: Vec<GroupPartition>,
    /// Opened (and its directory created) with the first dead letter.
    dlq: Option<Arc<Log>>,
    /// Set by `delete_group` under this lock: whoever locks it later must not use it.
    deleted: bool,
    /// The expiry this group is scheduled at in `BrokerInner::sweeps`.
    sweep_at: Option<Millis>,
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
/// The group was deleted: replay forgets it (a later `c` record starts it anew).
const J_DELETED: &[u8] = b"d";
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
        create_dirs(&dir.join("topics"))?;
        let lock = lock_dir(&dir)?;
        let key = load_or_create_key(&dir)?;
        // Deleted topics whose removal a crash interrupted: already gone from `topics/`.
        match std::fs::remove_dir_all(dir.join(TRASH_DIR)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let inner = Arc::new(BrokerInner {
            _lock: lock,
            dir: dir.clone(),
            options,
            key,
            topics: RwLock::new(BTreeMap::new()),
            admin: Mutex::new(()),
            sweeps: std::sync::Mutex::new(BTreeSet::new()),
            sweep_wake: Arc::new(Notify::new()),
            dedupe_policy: RwLock::new(DedupeSnapshotPolicy::default()),
            scrub: Arc::default(),
        });
        let broker = Broker { inner };
        for (name, tdir, config) in stored_topics(&dir)? {
            let topic = broker.open_topic(&name, tdir, config)?;
            broker.inner.topics.write().unwrap().insert(name, topic);
        }
        // Leases taken before the restart expire on the sweeper's first pass.
        for topic in broker.inner.topics.read().unwrap().values() {
            let groups = topic.groups.try_lock().expect("not shared yet");
            for g in groups.values() {
                broker.reschedule(topic, &mut g.try_lock().expect("not shared yet"));
            }
        }
        Ok(broker)
    }

    fn now(&self) -> Millis {
        (self.inner.options.clock)()
    }

    fn log_config(&self, config: &TopicConfig, log: &LogName) -> LogConfig {
        config.log_config(log, self.inner.options.segment_bytes)
    }

    fn open_topic(
        &self,
        name: &str,
        dir: PathBuf,
        config: TopicConfig,
    ) -> Result<Arc<Topic>, BrokerError> {
        let mut partitions = Vec::new();
        for p in 0..config.partitions {
            let log = LogName::Partition(p);
            partitions.push(Arc::new(Log::open_dir(
                log.dir(&dir),
                self.log_config(&config, &log),
            )?));
        }
        let journal = Arc::new(Log::open_dir(
            LogName::Journal.dir(&dir),
            self.log_config(&config, &LogName::Journal),
        )?);
        let topic = Topic {
            name: name.to_owned(),
            dir,
            dedupe: std::sync::Mutex::new(DedupeState {
                table: DedupeTable::new(config.dedupe_config()),
                appending: HashMap::new(),
            }),
            dedupe_snapshot_lock: std::sync::Mutex::new(()),
            dedupe_tail_records: AtomicU64::new(0),
            dedupe_tail_bytes: AtomicU64::new(0),
            dedupe_snapshot_len: AtomicU64::new(0),
            dedupe_snapshot_entries: AtomicU64::new(0),
            dedupe_snapshotting: AtomicBool::new(false),
            dedupe_recovery: std::sync::Mutex::new(DedupeRecovery::default()),
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
        // `DeadLettered` events per group in the journal after the snapshot: each has its
        // copy in the dead-letter log, written in the same order (see `stage`).
        let mut dl_events: HashMap<String, u64> = HashMap::new();
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
                            incarnation: gs.incarnation,
                            dlq: None,
                            deleted: false,
                            sweep_at: None,
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
                        groups.insert(
                            group.clone(),
                            Group {
                                name: group,
                                incarnation: r.offset,
                                parts: starts
                                    .iter()
                                    .map(|&s| GroupPartition::new(policy.clone(), s))
                                    .collect(),
                                dlq: None,
                                deleted: false,
                                sweep_at: None,
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
                        *dl_events.entry(group.clone()).or_default() += events
                            .iter()
                            .filter(|(_, e)| matches!(e, Event::DeadLettered { .. }))
                            .count()
                            as u64;
                        for (p, e) in events {
                            ensure_parts(&mut g.parts, p as usize + 1, &policy);
                            g.parts[p as usize].apply(&e).map_err(|e| {
                                BrokerError::Storage(format!("journal record {}: {e}", r.offset))
                            })?;
                        }
                    }
                    Some(J_DELETED) => {
                        groups.remove(&group);
                        removed.remove(&group);
                        dlq_next.remove(&group);
                        dl_events.remove(&group);
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
        let dlq_root = topic.dir.join("dlq");
        let mut roll_forward = Vec::new();
        for (name, g) in groups.iter_mut() {
            ensure_parts(&mut g.parts, partitions, &policy);
            let (gone, resent, purged) = removed.remove(name).unwrap_or_default();
            g.resent += resent;
            g.purged += purged;
            if dlq_root.join(name).is_dir() {
                let dlq = self.open_dlq(topic, name)?;
                let snapshot_end = dlq_next.get(name).copied().unwrap_or(0);
                let journalled_end = snapshot_end + dl_events.get(name).copied().unwrap_or(0);
                let mut unjournalled = Vec::new();
                for_each_record(&dlq, snapshot_end.max(dlq.start_offset()), |r| {
                    g.dead_letters
                        .insert(r.offset, dead_letter_meta(&r.headers));
                    if r.offset >= journalled_end {
                        unjournalled.push(dead_letter_event(&r.headers));
                    }
                })?;
                g.dlq = Some(dlq);
                roll_forward.push((name.clone(), unjournalled));
            }
            g.dead_letters.retain(|id, _| !gone.contains(id));
        }
        for (name, copies) in roll_forward {
            let g = groups.get_mut(&name).expect("rolled forward groups exist");
            finish_dead_letters(topic, g, copies)?;
        }
        // Dead-letter logs of deleted groups whose removal a crash interrupted.
        if let Ok(entries) = std::fs::read_dir(&dlq_root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !groups.contains_key(&name) {
                    std::fs::remove_dir_all(e.path())?;
                }
            }
        }
        let mut map = topic.groups.try_lock().expect("topic not shared yet");
        for (name, g) in groups {
            map.insert(name, Arc::new(Mutex::new(g)));
        }
        Ok(())
    }

    /// Rebuilds the dedupe table at open, before any append can be in flight: from
    /// `dedupe.snapshot` plus the partition records after the offsets it covers, or,
    /// when the snapshot is missing, damaged or does not fit the log, from every retained
    /// record (correct, slower; warned about). Records are fed to the table one at a
    /// time, so memory holds the table and one read batch, never the log. Writes a fresh
    /// snapshot when the replay was long, so the next open is short even after a crash.
    fn rebuild_dedupe(&self, topic: &Topic) -> Result<(), BrokerError> {
        let started = Instant::now();
        let dedupe_config = topic.config.read().unwrap().dedupe_config();
        let partitions = topic.partitions.read().unwrap().clone();
        let path = topic.dir.join(DEDUPE_SNAPSHOT_FILE);
        // Snapshots whose writing a crash cut off.
        let stale = format!("{DEDUPE_SNAPSHOT_FILE}{DEDUPE_TMP_INFIX}");
        for e in std::fs::read_dir(&topic.dir)?.flatten() {
            if e.file_name().to_string_lossy().starts_with(&stale) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let loaded = match std::fs::read(&path) {
            Ok(bytes) => decode_dedupe_snapshot(&bytes)
                .map_err(|e| format!("{}: {e}", path.display()))
                .and_then(|snap| {
                    snap.usable_under(&dedupe_config)?;
                    if snap.covered.len() > partitions.len() {
                        return Err(format!(
                            "covers {} partitions, the topic has {}",
                            snap.covered.len(),
                            partitions.len()
                        ));
                    }
                    for (p, (&covered, log)) in snap.covered.iter().zip(&partitions).enumerate() {
                        // The log lost records the snapshot has seen (a repair, or a crash
                        // with durability none): offsets will be reused, so its entries
                        // could point at other records.
                        if covered > log.durable_end() {
                            return Err(format!(
                                "covers partition {p} up to offset {covered}, but the log \
                                 ends at {}",
                                log.durable_end()
                            ));
                        }
                    }
                    Ok((snap, bytes.len()))
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err("no dedupe snapshot".to_owned())
            }
            Err(e) => Err(format!("{}: {e}", path.display())),
        };
        let (mut table, from, mut recovery) = match loaded {
            Ok((snap, len)) => {
                topic
                    .dedupe_snapshot_len
                    .store(len as u64, Ordering::Relaxed);
                topic
                    .dedupe_snapshot_entries
                    .store(snap.entries(), Ordering::Relaxed);
                let recovery = DedupeRecovery {
                    from_snapshot: true,
                    snapshot_entries: snap.entries(),
                    ..DedupeRecovery::default()
                };
                let from = snap.covered.clone();
                (
                    DedupeTable::from_snapshot(dedupe_config, snap),
                    from,
                    recovery,
                )
            }
            Err(reason) => (
                DedupeTable::new(dedupe_config),
                Vec::new(),
                DedupeRecovery {
                    fallback_reason: Some(reason),
                    ..DedupeRecovery::default()
                },
            ),
        };
        let mut bytes = 0;
        for (p, log) in partitions.iter().enumerate() {
            let start = from.get(p).copied().unwrap_or(0);
            let (n, b) = replay_dedupe(&mut table, p as u32, log, start)?;
            recovery.records_scanned += n;
            bytes += b;
        }
        recovery.elapsed = started.elapsed();
        if let Some(reason) = &recovery.fallback_reason
            && recovery.records_scanned > 0
        {
            tracing::warn!(
                topic = %topic.name,
                reason = %reason,
                records_scanned = recovery.records_scanned,
                "dedupe snapshot not used: rebuilt the dedupe table from the whole retained log"
            );
        }
        tracing::info!(
            topic = %topic.name,
            from_snapshot = recovery.from_snapshot,
            records_scanned = recovery.records_scanned,
            entries = table.entries(),
            elapsed_ms = recovery.elapsed.as_millis() as u64,
            "dedupe table rebuilt"
        );
        topic.dedupe.lock().unwrap().table = table;
        topic
            .dedupe_tail_records
            .store(recovery.records_scanned, Ordering::Relaxed);
        topic.dedupe_tail_bytes.store(bytes, Ordering::Relaxed);
        *topic.dedupe_recovery.lock().unwrap() = recovery;
        if self.dedupe_snapshot_due(topic) {
            write_dedupe_snapshot(topic, self.now())?;
        }
        Ok(())
    }

    /// Whether the log published since the last dedupe snapshot calls for a new one
    /// ([`DedupeSnapshotPolicy`]). Measured against the last snapshot, not the table
    /// now: the table grows with the tail, so "tail >= table" might never hold.
    fn dedupe_snapshot_due(&self, topic: &Topic) -> bool {
        let policy = *self.inner.dedupe_policy.read().unwrap();
        let records = topic.dedupe_tail_records.load(Ordering::Relaxed);
        let bytes = topic.dedupe_tail_bytes.load(Ordering::Relaxed);
        let last_len = topic.dedupe_snapshot_len.load(Ordering::Relaxed);
        let last_entries = topic.dedupe_snapshot_entries.load(Ordering::Relaxed);
        records >= policy.after_records.max(last_entries).max(1)
            || bytes >= policy.after_bytes.max(last_len.saturating_mul(4)).max(1)
    }

    /// Starts a background dedupe snapshot of `topic` if one is due and none is running.
    fn maybe_snapshot_dedupe(&self, topic: &Arc<Topic>) {
        if !self.dedupe_snapshot_due(topic)
            || topic.dedupe_snapshotting.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (topic, clock) = (topic.clone(), self.inner.options.clock.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = write_dedupe_snapshot(&topic, clock()) {
                tracing::warn!(
                    topic = %topic.name,
                    error = %e,
                    "could not write the dedupe snapshot; the next open replays more log"
                );
            }
            topic.dedupe_snapshotting.store(false, Ordering::Release);
        });
    }

    /// Writes `topic`'s dedupe snapshot now (atomically and durably), so that the next
    /// open replays only what is published after this; nothing for a topic stopped by a
    /// failed write. The broker does this on its own ([`DedupeSnapshotPolicy`],
    /// [`Broker::close`]); this is for tests and tools.
    pub fn snapshot_dedupe(&self, topic_name: &str) -> Result<(), BrokerError> {
        let topic = self.topic(topic_name)?;
        write_dedupe_snapshot(&topic, self.now())
    }

    /// How `topic`'s dedupe table was rebuilt when it was opened.
    pub fn dedupe_recovery(&self, topic_name: &str) -> Result<DedupeRecovery, BrokerError> {
        Ok(self
            .topic(topic_name)?
            .dedupe_recovery
            .lock()
            .unwrap()
            .clone())
    }

    /// Changes when dedupe snapshots are written (for every topic, from the next publish).
    pub fn set_dedupe_snapshot_policy(&self, policy: DedupeSnapshotPolicy) {
        *self.inner.dedupe_policy.write().unwrap() = policy;
    }

    /// Opens (creating it if needed) a group's dead-letter log.
    fn open_dlq(&self, topic: &Topic, group: &str) -> Result<Arc<Log>, BrokerError> {
        let name = LogName::DeadLetters(group.to_owned());
        let cfg = self.log_config(&topic.config.read().unwrap(), &name);
        let dir = name.dir(&topic.dir);
        let root = dir.parent().expect("a dead-letter log is in dlq/");
        if !root.is_dir() {
            create_dirs(root)?;
            sync_dir(&topic.dir)?;
        }
        let log = Log::open_dir(&dir, cfg)?;
        sync_dir(root)?;
        Ok(Arc::new(log))
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        validate_topic_name(name).map_err(|e| BrokerError::InvalidName(e.to_string()))?;
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
                create_dirs(&dir)?;
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
                let mut added = Vec::new();
                for p in old.partitions..new.partitions {
                    let log = LogName::Partition(p);
                    added.push(Arc::new(Log::open_dir(
                        log.dir(&topic.dir),
                        self.log_config(&new, &log),
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

    /// Configuration, offsets and per-group state of a topic (a failed topic too).
    pub async fn describe(&self, name: &str) -> Result<TopicInfo, BrokerError> {
        validate_topic_name(name).map_err(|e| BrokerError::InvalidName(e.to_string()))?;
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
        let mut corrupt_segments = Vec::new();
        for (log, l) in topic_logs(&topic).await {
            corrupt_segments.extend(l.corrupt_segments().into_iter().map(|corruption| {
                CorruptSegment {
                    log: log.clone(),
                    corruption,
                }
            }));
        }
        Ok(TopicInfo {
            name: topic.name.clone(),
            config: topic.config.read().unwrap().clone(),
            end_offsets,
            start_offsets,
            groups,
            corrupt_segments,
        })
    }

    /// Every log this broker has open, named by topic: partitions, group journal, and
    /// the dead-letter logs of groups that have had a dead letter.
    pub(crate) async fn owned_logs(&self) -> Vec<(String, LogName, Arc<Log>)> {
        let topics: Vec<Arc<Topic>> = self
            .inner
            .topics
            .read()
            .unwrap()
            .values()
            .cloned()
            .collect();
        let mut out = Vec::new();
        for topic in topics {
            for (name, log) in topic_logs(&topic).await {
                out.push((topic.name.clone(), name, log));
            }
        }
        out
    }

    /// Starts the background scrub (`crate::scrub`) at `BrokerOptions::scrub_bytes_per_sec`;
    /// `None` when that is 0. Callable from any thread; stop it before closing the broker.
    pub fn spawn_scrubber(&self) -> std::io::Result<Option<Scrubber>> {
        let options = &self.inner.options;
        if options.scrub_bytes_per_sec == 0 {
            return Ok(None);
        }
        Scrubber::spawn(
            WeakBroker(Arc::downgrade(&self.inner)),
            self.inner.scrub.clone(),
            options.scrub_bytes_per_sec,
            options.scrub_interval,
        )
        .map(Some)
    }

    /// What the scrub has done, and the damaged segments of every open log.
    pub async fn scrub_stats(&self) -> ScrubStats {
        let counters = &self.inner.scrub;
        let logs = self
            .owned_logs()
            .await
            .into_iter()
            .map(|(topic, log, l)| LogScrub {
                bytes_scrubbed: counters.bytes(&topic, &log),
                corrupt_segments: l.corrupt_segments().len() as u64,
                topic,
                log,
            })
            .collect();
        ScrubStats {
            passes: counters.passes(),
            logs,
        }
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
        limits::check_publish_batch(messages.len())?;
        let config = topic.config.read().unwrap().clone();
        let now = self.now();
        for m in &messages {
            m.validate()?;
            limits::check_not_before(m.not_before, now)?;
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
                    let begin = topic.dedupe.lock().unwrap().table.begin(key, now);
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
                                let _ = t.table.abort(r);
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
                    let _ = t.table.abort(r);
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
        // Each partition's durable end before its submission: a dedupe snapshot taken
        // while it is in flight covers that partition only below it (`DedupeState`).
        let floors: Vec<u64> = {
            let mut t = topic.dedupe.lock().unwrap();
            by_partition
                .keys()
                .map(|&p| {
                    let floor = partitions[p as usize].durable_end();
                    t.register(p, floor);
                    floor
                })
                .collect()
        };
        // One submission per partition: the batch shares one group commit and one wake-up.
        let submitted: Vec<_> = by_partition
            .into_iter()
            .zip(floors)
            .map(|((p, (records, answers)), floor)| {
                let bytes: u64 = records.iter().map(|r| r.payload.len() as u64).sum();
                let n = records.len() as u64;
                let ticket = partitions[p as usize].submit(records);
                (p, ticket, answers, floor, (n, bytes))
            })
            .collect();
        let mut first_error = None;
        for (p, ticket, answers, floor, (n, bytes)) in submitted {
            let outcome = match ticket {
                Ok(t) => t.await.map_err(BrokerError::from),
                Err(e) => Err(e.into()),
            };
            let mut t = topic.dedupe.lock().unwrap();
            match outcome {
                Ok(range) => {
                    topic.dedupe_tail_records.fetch_add(n, Ordering::Relaxed);
                    topic.dedupe_tail_bytes.fetch_add(bytes, Ordering::Relaxed);
                    for ((i, reservations), offset) in answers.into_iter().zip(range) {
                        for r in reservations {
                            let _ = t.table.commit(r, p, offset, now);
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
                            let _ = t.table.abort(r);
                        }
                    }
                    first_error.get_or_insert(e);
                }
            }
            // After the commits, under the same lock: a snapshot sees both or neither.
            t.deregister(p, floor);
        }
        topic.published.notify_waiters();
        self.maybe_snapshot_dedupe(&topic);
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

    /// The group, locked, or `GroupNotFound` (also when it was deleted meanwhile).
    async fn locked_group(
        &self,
        topic: &Topic,
        name: &str,
    ) -> Result<tokio::sync::OwnedMutexGuard<Group>, BrokerError> {
        let not_found = || BrokerError::GroupNotFound {
            topic: topic.name.clone(),
            group: name.to_owned(),
        };
        let group = self
            .existing_group(topic, name)
            .await?
            .ok_or_else(not_found)?;
        let g = group.lock_owned().await;
        if g.deleted {
            return Err(not_found());
        }
        Ok(g)
    }

    /// The group, created on first use (a fetch, or `create_group`) at `start`.
    async fn group(
        &self,
        topic: &Topic,
        name: &str,
        start: StartAt,
    ) -> Result<(Arc<Mutex<Group>>, bool), BrokerError> {
        validate_group_name(name).map_err(|e| BrokerError::InvalidName(e.to_string()))?;
        let mut groups = topic.groups.lock().await;
        if let Some(g) = groups.get(name) {
            return Ok((g.clone(), false));
        }
        let partitions = topic.partitions.read().unwrap().clone();
        let starts: Vec<u64> = partitions
            .iter()
            .map(|l| match start {
                StartAt::Earliest => l.start_offset(),
                StartAt::Latest => l.durable_end(),
            })
            .collect();
        let payload: Vec<u8> = starts.iter().flat_map(|s| s.to_le_bytes()).collect();
        let rec = NewRecord {
            key: Some(name.as_bytes().to_vec()),
            headers: vec![Header::new("t", J_CREATE.to_vec())],
            payload,
            timestamp_ms: self.now() as i64,
        };
        let incarnation = self
            .durable(topic, topic.journal.submit(vec![rec]))
            .await?
            .start;
        let policy = topic.config.read().unwrap().group_policy();
        let g = Arc::new(Mutex::new(Group {
            name: name.to_owned(),
            incarnation,
            parts: starts
                .iter()
                .map(|&s| GroupPartition::new(policy.clone(), s))
                .collect(),
            dlq: None,
            deleted: false,
            sweep_at: None,
            dead_letters: BTreeMap::new(),
            purged: 0,
            resent: 0,
        }));
        groups.insert(name.to_owned(), g.clone());
        Ok((g, true))
    }

    /// Schedules the group's sweep at its earliest lease expiry (or unschedules it), after
    /// any change to its leases. Called with the group lock held.
    fn reschedule(&self, topic: &Topic, g: &mut Group) {
        let due = g
            .parts
            .iter()
            .filter_map(GroupPartition::next_lease_expiry)
            .min()
            .filter(|_| !g.deleted);
        if due == g.sweep_at {
            return;
        }
        let mut sweeps = self.inner.sweeps.lock().unwrap();
        if let Some(old) = g.sweep_at.take() {
            sweeps.remove(&(old, topic.name.clone(), g.name.clone()));
        }
        if let Some(due) = due {
            let earliest = sweeps.first().is_none_or(|(t, _, _)| due < *t);
            sweeps.insert((due, topic.name.clone(), g.name.clone()));
            g.sweep_at = Some(due);
            if earliest {
                self.inner.sweep_wake.notify_one();
            }
        }
    }

    /// Expires every lease that ran out by now, in every topic and group, applying
    /// `max_deliveries` (a message out of deliveries goes to the dead letters with the
    /// reason "lease expired"). Returns when the next lease runs out, if any is held.
    pub async fn expire_due(&self) -> Result<Option<Millis>, BrokerError> {
        let now = self.now();
        let mut first_error = None;
        loop {
            let due: Vec<(Millis, String, String)> = {
                let mut sweeps = self.inner.sweeps.lock().unwrap();
                let mut due = Vec::new();
                while sweeps.first().is_some_and(|(t, _, _)| *t <= now) {
                    due.push(sweeps.pop_first().expect("checked"));
                }
                due
            };
            if due.is_empty() {
                break;
            }
            for (_, topic_name, group_name) in due {
                if let Err(e) = self.expire_group(&topic_name, &group_name, now).await {
                    tracing::warn!(topic = topic_name, group = group_name, error = %e, "lease sweep failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(self
            .inner
            .sweeps
            .lock()
            .unwrap()
            .first()
            .map(|(t, _, _)| *t))
    }

    async fn expire_group(
        &self,
        topic_name: &str,
        group_name: &str,
        now: Millis,
    ) -> Result<(), BrokerError> {
        let topic = match self.topic(topic_name) {
            Ok(t) => t,
            // Deleted since it was scheduled: nothing left to expire.
            Err(BrokerError::TopicNotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut g = match self.locked_group(&topic, group_name).await {
            Ok(g) => g,
            Err(BrokerError::GroupNotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        // The entry was popped: whatever happens next, the group is scheduled anew.
        g.sweep_at = None;
        let mut events = Vec::new();
        for (p, part) in g.parts.iter_mut().enumerate() {
            events.extend(part.plan_expiry(now).into_iter().map(|e| (p as u32, e)));
        }
        if events.is_empty() {
            self.reschedule(&topic, &mut g);
            return Ok(());
        }
        self.commit(&topic, &mut g, events).await
    }

    /// Runs [`Self::expire_due`] in a task until the broker is dropped: it sleeps until
    /// the next lease runs out, or until a lease earlier than that is taken. Holds only a
    /// weak reference, so it never keeps a closed broker's directory locked.
    pub fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let weak: Weak<BrokerInner> = Arc::downgrade(&self.inner);
        let wake = self.inner.sweep_wake.clone();
        tokio::spawn(async move {
            // Bounds a sleep across clock steps, and retries after a failed sweep.
            const MAX_SLEEP: Duration = Duration::from_secs(1);
            loop {
                // Armed before the sweep, so a lease taken during it wakes the next wait.
                let notified = wake.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let sleep = {
                    let Some(inner) = weak.upgrade() else { return };
                    let broker = Broker { inner };
                    match broker.expire_due().await {
                        Ok(Some(next)) => {
                            Duration::from_millis(next.saturating_sub(broker.now())).min(MAX_SLEEP)
                        }
                        Ok(None) | Err(_) => MAX_SLEEP,
                    }
                };
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(sleep) => {}
                }
            }
        })
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
        outcome.map_err(|e| fail_topic(topic, &e))
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
            if let Event::DeadLettered { offset, .. } = e {
                let Some(original) = partitions[*p as usize].read(*offset)? else {
                    return Err(BrokerError::Storage(format!(
                        "dead-lettered offset {offset} of partition {p} is not in the log"
                    )));
                };
                let rec = dead_letter_copy(original, *p, e);
                copies.push(rec);
                placed.push((*p, *offset));
            }
        }
        if !copies.is_empty() {
            let dlq = match &g.dlq {
                Some(dlq) => dlq.clone(),
                None => {
                    let dlq = match self.open_dlq(topic, &g.name) {
                        Ok(dlq) => dlq,
                        // The events are applied in memory already: like a failed write.
                        Err(e) => return Err(fail_topic(topic, &e)),
                    };
                    g.dlq = Some(dlq.clone());
                    dlq
                }
            };
            let range = self.durable(topic, dlq.submit(copies)).await?;
            for (id, where_) in range.zip(placed) {
                g.dead_letters.insert(id, where_);
            }
        }
        self.reschedule(topic, g);
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
        limits::check_fetch(max, wait.as_millis().try_into().unwrap_or(u64::MAX))?;
        if let Some(lease) = lease {
            limits::check_lease_ms(lease.as_millis().try_into().unwrap_or(u64::MAX))?;
        }
        let topic = self.topic(topic_name)?;
        let (group, _) = self.group(&topic, group_name, StartAt::Earliest).await?;
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
        if g.deleted {
            return Err(BrokerError::GroupNotFound {
                topic: topic.name.clone(),
                group: g.name.clone(),
            });
        }
        let policy = config.group_policy();
        ensure_parts(&mut g.parts, partitions.len(), &policy);
        let now = self.now();
        let mut events = Vec::new();
        let mut leases: Vec<(u32, Lease)> = Vec::new();
        let mut fresh_records: HashMap<(u32, u64), StoredMessage> = HashMap::new();
        // A damaged record holds its partition back for this group (it is never skipped
        // silently); the other partitions, and redeliveries, keep going.
        let mut corrupt = None;
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
                let records = match partitions[p].read_from(next, want, 4 << 20) {
                    Ok(records) => records,
                    Err(surety_log::ReadError::Corrupt(c)) => {
                        corrupt.get_or_insert(BrokerError::Corrupt(c));
                        Vec::new()
                    }
                    Err(e) => return Err(e.into()),
                };
                for r in records {
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
        let incarnation = g.incarnation;
        let seeks: Vec<u32> = g.parts.iter().map(GroupPartition::seeks).collect();
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
                        incarnation,
                        seeks: seeks[p as usize],
                    },
                ),
                partition: p,
                delivery_count: l.delivery,
                lease_until: l.lease_until,
                message,
            });
        }
        if out.is_empty()
            && let Some(e) = corrupt
        {
            return Err(e);
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
        let op = SettleOp::Ack;
        let staged = self.stage_settle(
            topic_name,
            group_name,
            receipts,
            &op,
            BatchMode::AllOrNothing,
        );
        Ok(changed(&staged.await?.durable().await?))
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
        let op = SettleOp::Nack {
            delay,
            reason: reason.to_owned(),
        };
        let staged = self.stage_settle(
            topic_name,
            group_name,
            receipts,
            &op,
            BatchMode::AllOrNothing,
        );
        Ok(changed(&staged.await?.durable().await?))
    }

    /// [`Self::nack`], each receipt on its own (see [`Self::ack_each`]).
    pub async fn nack_each(
        &self,
        topic_name: &str,
        group_name: &str,
        receipts: &[String],
        delay: Duration,
        reason: &str,
    ) -> Result<Vec<Result<bool, BrokerError>>, BrokerError> {
        let op = SettleOp::Nack {
            delay,
            reason: reason.to_owned(),
        };
        self.stage_settle_each(topic_name, group_name, receipts, &op)
            .await?
            .durable()
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
        self.stage_settle_each(topic_name, group_name, receipts, &SettleOp::Ack)
            .await?
            .durable()
            .await
    }

    /// Checks `op`'s own fields (a nack's delay and reason), then
    /// [`Self::stage_settle_batch`] with the group state's plan for it.
    async fn stage_settle(
        &self,
        topic_name: &str,
        group_name: &str,
        receipts: &[String],
        op: &SettleOp,
        mode: BatchMode,
    ) -> Result<StagedSettle, BrokerError> {
        match op {
            SettleOp::Ack => {
                self.stage_settle_batch(topic_name, group_name, receipts, mode, |part, now, d| {
                    part.plan_ack(now, d.offset, d.delivery)
                })
                .await
            }
            SettleOp::Nack { delay, reason } => {
                let delay_ms = delay.as_millis().try_into().unwrap_or(u64::MAX);
                limits::check_nack(delay_ms, reason)?;
                self.stage_settle_batch(topic_name, group_name, receipts, mode, |part, now, d| {
                    part.plan_nack(now, d.offset, d.delivery, delay_ms, reason.clone())
                })
                .await
            }
        }
    }

    /// Checks every receipt, then applies the acceptable ones and submits their journal
    /// commit. `AllOrNothing` refuses the whole batch (changing nothing) at the first bad
    /// one.
    async fn stage_settle_batch(
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
    ) -> Result<StagedSettle, BrokerError> {
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
            return Ok(StagedSettle::unchanged(verified));
        };
        let mut g = group.lock().await;
        if g.deleted {
            // Its deliveries went with it: settling them changes nothing.
            return Ok(StagedSettle::unchanged(verified));
        }
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
                if (d.incarnation, d.seeks) != (g.incarnation, part.seeks()) {
                    return Err(crate::group::SettleError::Withdrawn { offset: d.offset }.into());
                }
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
        Ok(StagedSettle {
            outcomes,
            commit: ticket.map(|t| (topic, t)),
        })
    }

    /// Settles each receipt on its own, as [`Self::ack_each`] / [`Self::nack_each`], but
    /// answers once the outcomes are applied in memory and the journal commit is
    /// submitted, before it is durable: the caller learns which places in its window are
    /// free a journal sync earlier, and answers its peer after [`StagedSettle::durable`].
    /// Anything the group does next (a fetch, say) is durable only after this commit is:
    /// the journal keeps submission order.
    pub async fn stage_settle_each(
        &self,
        topic_name: &str,
        group_name: &str,
        receipts: &[String],
        op: &SettleOp,
    ) -> Result<StagedSettle, BrokerError> {
        self.stage_settle(topic_name, group_name, receipts, op, BatchMode::Each)
            .await
    }

    /// All of the group's live dead letters, oldest first (every page; for small queues
    /// and tests — a front pages with [`Self::dead_letter_page`]).
    pub async fn dead_letters(
        &self,
        topic_name: &str,
        group_name: &str,
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let mut page = self
                .dead_letter_page(topic_name, group_name, after, limits::MAX_PAGE)
                .await?;
            for d in page.by_ref() {
                out.push(d?);
            }
            match page.next_cursor() {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// One page of the group's live dead letters, oldest first, starting after the id
    /// `after`: up to `limit` (1 to [`limits::MAX_PAGE`]) of them, fewer once the page
    /// holds [`limits::PAGE_BYTES`] of payload. They are read as the page is iterated;
    /// the ids are the live ones at the time of the call.
    pub async fn dead_letter_page(
        &self,
        topic_name: &str,
        group_name: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<DeadLetterPage, BrokerError> {
        limits::check("limit", limit as u64, 1, limits::MAX_PAGE as u64)?;
        let topic = self.topic(topic_name)?;
        let mut page = DeadLetterPage {
            group: group_name.to_owned(),
            dlq: None,
            ids: VecDeque::new(),
            more: false,
            bytes: 0,
            last: None,
        };
        let Some(group) = self.existing_group(&topic, group_name).await? else {
            return Ok(page);
        };
        let g = group.lock().await;
        if g.deleted {
            return Ok(page);
        }
        let from = after.map_or(0, |a| a.saturating_add(1));
        let mut ids = g.dead_letters.range(from..).map(|(&id, _)| id);
        page.ids = ids.by_ref().take(limit).collect();
        page.more = ids.next().is_some();
        page.dlq = g.dlq.clone();
        Ok(page)
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
        let (false, Some(dlq)) = (g.deleted || !g.dead_letters.contains_key(&id), &g.dlq) else {
            return Ok(None);
        };
        Ok(dlq.read(id)?.map(|r| dead_letter_from(&g.name, r)))
    }

    /// Dedupe counters of a topic (hits, tracked producers and ids, refusals).
    pub fn dedupe_stats(
        &self,
        topic_name: &str,
    ) -> Result<crate::dedupe::DedupeStats, BrokerError> {
        Ok(self.topic(topic_name)?.dedupe.lock().unwrap().table.stats())
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
        let Some(dlq) = g.dlq.clone() else {
            return Ok(0);
        };
        let partitions = topic.partitions.read().unwrap().clone();
        let now = self.now();
        let mut tickets = Vec::new();
        for &id in &ids {
            let Some(r) = dlq.read(id)? else { continue };
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
                        if g.deleted {
                            continue;
                        }
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
                    if g.deleted {
                        continue;
                    }
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
                    incarnation: g.incarnation,
                    purged: g.purged,
                    resent: g.resent,
                    dlq_next: g.dlq.as_ref().map_or(0, |d| d.durable_end()),
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

    /// Every consumer group of a topic with its lag, in-flight and dead-letter counts.
    pub async fn groups(&self, topic_name: &str) -> Result<Vec<GroupInfo>, BrokerError> {
        self.topic(topic_name)?;
        Ok(self.describe(topic_name).await?.groups)
    }

    /// One consumer group's figures, or `GroupNotFound`.
    pub async fn group_info(
        &self,
        topic_name: &str,
        group_name: &str,
    ) -> Result<GroupInfo, BrokerError> {
        let topic = self.topic(topic_name)?;
        let g = self.locked_group(&topic, group_name).await?;
        Ok(group_info(&g, &end_offsets(&topic)))
    }

    /// Creates a consumer group at `start` (a group is otherwise created by its first
    /// fetch, at the earliest message). An existing group is left where it is. Returns
    /// the group and whether it was created.
    pub async fn create_group(
        &self,
        topic_name: &str,
        group_name: &str,
        start: StartAt,
    ) -> Result<(GroupInfo, bool), BrokerError> {
        let topic = self.topic(topic_name)?;
        let (group, created) = self.group(&topic, group_name, start).await?;
        let g = group.lock().await;
        Ok((group_info(&g, &end_offsets(&topic)), created))
    }

    /// Deletes a consumer group: its state and its dead letters. Its receipts then settle
    /// nothing, and retention is no longer held back by it. Returns what was dropped.
    pub async fn delete_group(
        &self,
        topic_name: &str,
        group_name: &str,
    ) -> Result<GroupDeleted, BrokerError> {
        let topic = self.topic(topic_name)?;
        validate_group_name(group_name).map_err(|e| BrokerError::InvalidName(e.to_string()))?;
        // Held throughout: no fetch can re-create the group half-way.
        let mut groups = topic.groups.lock().await;
        let Some(group) = groups.get(group_name).cloned() else {
            return Err(BrokerError::GroupNotFound {
                topic: topic.name.clone(),
                group: group_name.to_owned(),
            });
        };
        let mut g = group.lock().await;
        let info = group_info(&g, &end_offsets(&topic));
        let rec = NewRecord {
            timestamp_ms: self.now() as i64,
            key: Some(g.name.as_bytes().to_vec()),
            headers: vec![Header::new("t", J_DELETED.to_vec())],
            payload: Vec::new(),
        };
        // Durable before anything is removed: a crash after it finishes the job at open.
        self.durable(&topic, topic.journal.submit(vec![rec]))
            .await?;
        g.deleted = true;
        g.dead_letters.clear();
        self.reschedule(&topic, &mut g);
        if let Some(dlq) = g.dlq.take() {
            dlq.close();
            let root = topic.dir.join("dlq");
            std::fs::remove_dir_all(root.join(&g.name))?;
            sync_dir(&root)?;
        }
        groups.remove(group_name);
        tracing::info!(topic = topic.name, group = group_name, "group deleted");
        Ok(GroupDeleted {
            unsettled: info.lag,
            dead_letters: info.dead_letters_live,
        })
    }

    /// Moves a group's position (replay or skip); counts what it passes over and what it
    /// will deliver again. In-flight deliveries at or above the new position are
    /// withdrawn (their receipts settle nothing) and delivered again from count 1.
    pub async fn seek(
        &self,
        topic_name: &str,
        group_name: &str,
        to: SeekTo,
    ) -> Result<SeekOutcome, BrokerError> {
        let topic = self.topic(topic_name)?;
        let mut g = self.locked_group(&topic, group_name).await?;
        let partitions = topic.partitions.read().unwrap().clone();
        let policy = topic.config.read().unwrap().group_policy();
        ensure_parts(&mut g.parts, partitions.len(), &policy);
        let bounds = |p: usize| (partitions[p].start_offset(), partitions[p].durable_end());
        let targets: Vec<(usize, u64)> = match to {
            SeekTo::Earliest => (0..partitions.len()).map(|p| (p, bounds(p).0)).collect(),
            SeekTo::Latest => (0..partitions.len()).map(|p| (p, bounds(p).1)).collect(),
            SeekTo::Offset { partition, offset } => {
                limits::check(
                    "partition",
                    partition.into(),
                    0,
                    partitions.len() as u64 - 1,
                )?;
                let (start, end) = bounds(partition as usize);
                vec![(partition as usize, offset.clamp(start, end))]
            }
            SeekTo::Timestamp(t) => (0..partitions.len())
                .map(|p| Ok((p, first_at_or_after(&partitions[p], t)?)))
                .collect::<Result<_, BrokerError>>()?,
        };
        let mut outcome = SeekOutcome::default();
        let mut events = Vec::new();
        for (p, to) in targets {
            let from = g.parts[p].committed();
            let (e, skipped, replayed) = g.parts[p].plan_seek(to);
            events.push((p as u32, e));
            outcome.skipped += skipped;
            outcome.replayed += replayed;
            outcome.partitions.push(PartitionSeek {
                partition: p as u32,
                from,
                to,
                skipped,
                replayed,
            });
        }
        self.commit(&topic, &mut g, events).await?;
        drop(g);
        topic.published.notify_waiters();
        tracing::info!(
            topic = topic.name,
            group = group_name,
            skipped = outcome.skipped,
            replayed = outcome.replayed,
            "group repositioned"
        );
        Ok(outcome)
    }

    /// Deletes a topic with its messages, groups and dead letters. Refused while a group
    /// has unsettled messages or dead letters, unless `force`. Returns what was dropped.
    pub async fn delete_topic(
        &self,
        topic_name: &str,
        force: bool,
    ) -> Result<TopicDeleted, BrokerError> {
        validate_topic_name(topic_name).map_err(|e| BrokerError::InvalidName(e.to_string()))?;
        let _admin = self.inner.admin.lock().await;
        let info = self.describe(topic_name).await?;
        let dropped = TopicDeleted {
            messages: info
                .end_offsets
                .iter()
                .zip(&info.start_offsets)
                .map(|(e, s)| e - s)
                .sum(),
            groups: info.groups.len() as u64,
            unsettled: info.groups.iter().map(|g| g.lag).sum(),
            dead_letters: info.groups.iter().map(|g| g.dead_letters_live).sum(),
        };
        if !force && (dropped.unsettled > 0 || dropped.dead_letters > 0) {
            return Err(BrokerError::TopicBusy {
                topic: topic_name.to_owned(),
                unsettled: dropped.unsettled,
                dead_letters: dropped.dead_letters,
            });
        }
        let Some(topic) = self.inner.topics.write().unwrap().remove(topic_name) else {
            return Err(BrokerError::TopicNotFound(topic_name.to_owned()));
        };
        // Work still holding the topic fails on closed logs from here on. Under the dedupe
        // snapshot lock: a background snapshot either finished (inside the directory about
        // to go) or sees the topic failed and writes nothing, so none can land in a
        // re-created topic of the same name.
        {
            let _no_snapshot = topic.dedupe_snapshot_lock.lock().unwrap();
            let _ = topic.failed.set("the topic was deleted".into());
        }
        for log in topic.partitions.read().unwrap().iter() {
            log.close();
        }
        topic.journal.close();
        for g in topic.groups.lock().await.values() {
            let mut g = g.lock().await;
            g.deleted = true;
            self.reschedule(&topic, &mut g);
            if let Some(dlq) = g.dlq.take() {
                dlq.close();
            }
        }
        // One rename takes the topic out of `topics/` for good; the rest is cleanup that
        // the next open repeats if a crash interrupts it.
        let trash = self.inner.dir.join(TRASH_DIR);
        create_dirs(&trash)?;
        let gone = trash.join(format!("{topic_name}.{}", self.now()));
        std::fs::rename(&topic.dir, &gone)?;
        sync_dir(&self.inner.dir.join("topics"))?;
        std::fs::remove_dir_all(&gone)?;
        tracing::info!(
            topic = topic_name,
            messages = dropped.messages,
            "topic deleted"
        );
        Ok(dropped)
    }

    /// Reads up to `limit` messages of a partition from `offset` (default: its oldest)
    /// without delivering them: no lease, no delivery count, no group is touched.
    pub async fn peek(
        &self,
        topic_name: &str,
        partition: u32,
        offset: Option<u64>,
        limit: usize,
    ) -> Result<Peek, BrokerError> {
        let topic = self.topic(topic_name)?;
        limits::check("limit", limit as u64, 1, limits::MAX_PEEK as u64)?;
        let log = {
            let partitions = topic.partitions.read().unwrap();
            limits::check(
                "partition",
                partition.into(),
                0,
                partitions.len() as u64 - 1,
            )?;
            partitions[partition as usize].clone()
        };
        let (start, end) = (log.start_offset(), log.durable_end());
        let from = offset.unwrap_or(start).max(start);
        let messages: Vec<StoredMessage> = log
            .read_from(from, limit, limits::PAGE_BYTES)?
            .into_iter()
            .map(StoredMessage::from_record)
            .collect();
        let next_offset = messages.last().map_or(from.min(end), |m| m.offset + 1);
        Ok(Peek {
            partition,
            messages,
            next_offset,
            start_offset: start,
            end_offset: end,
        })
    }

    /// Writes each topic's dedupe snapshot (where anything was published since the last
    /// one, so the next open replays nothing), then closes every log (flushing nothing:
    /// every answered write is already durable). A snapshot that cannot be written is
    /// warned about and costs only a longer replay at the next open.
    pub fn close(&self) {
        for topic in self.inner.topics.read().unwrap().values() {
            if topic.dedupe_tail_records.load(Ordering::Relaxed) > 0
                && let Err(e) = write_dedupe_snapshot(topic, self.now())
            {
                tracing::warn!(
                    topic = %topic.name,
                    error = %e,
                    "could not write the dedupe snapshot at close; the next open replays more log"
                );
            }
            for log in topic.partitions.read().unwrap().iter() {
                log.close();
            }
            topic.journal.close();
        }
    }
}

/// How many settlements changed state (repeats of earlier ones count zero).
fn changed(outcomes: &[Result<bool, BrokerError>]) -> usize {
    outcomes.iter().filter(|o| matches!(o, Ok(true))).count()
}

/// Stops a topic after a failed journal or dead-letter write: its in-memory group state
/// may be ahead of the disk and must not answer anyone until rebuilt by a restart.
fn fail_topic(topic: &Topic, e: &dyn std::fmt::Display) -> BrokerError {
    let _ = topic.failed.set(e.to_string());
    tracing::error!(topic = %topic.name, error = %e, "group state write failed; topic stopped");
    BrokerError::TopicFailed(topic.name.clone())
}

/// Completes dead-lettering that a crash cut in half: a copy reached the dead-letter log
/// (it is made durable first) but the journal record saying the message left the group
/// did not, so the group still holds the message in flight — and would dead-letter it a
/// second time. Each such copy whose message is still unsettled at the copy's attempt
/// count gets its `DeadLettered` event applied and journalled now, which keeps copies
/// and journal events one to one for the next replay.
///
/// The record is submitted, not awaited (`open` may run inside a runtime): the journal
/// keeps submission order, so every later record of this topic is durable only after it.
/// A crash before it is durable leaves the same copies unjournalled — plus any copy of a
/// later dead letter, whose journal record comes after this one — and the next replay
/// finishes them all again.
fn finish_dead_letters(
    topic: &Topic,
    g: &mut Group,
    copies: Vec<(u32, Event)>,
) -> Result<(), BrokerError> {
    let mut events = Vec::new();
    for (p, e) in copies {
        let Event::DeadLettered {
            offset, attempts, ..
        } = &e
        else {
            continue;
        };
        let Some(part) = g.parts.get_mut(p as usize) else {
            continue;
        };
        if part.is_settled(*offset) || part.deliveries(*offset) != *attempts {
            continue; // not this group's message as the copy saw it: leave it as it is
        }
        part.apply(&e).map_err(|why| {
            BrokerError::Storage(format!("finishing a dead letter of {:?}: {why}", g.name))
        })?;
        events.push((p, e));
    }
    if events.is_empty() {
        return Ok(());
    }
    tracing::warn!(
        topic = %topic.name,
        group = %g.name,
        messages = events.len(),
        "finished dead-lettering that a crash interrupted"
    );
    let _durable_in_order = topic.journal.submit(vec![NewRecord {
        timestamp_ms: 0,
        key: Some(g.name.as_bytes().to_vec()),
        headers: vec![Header::new("t", J_EVENTS.to_vec())],
        payload: encode_events(&events),
    }])?;
    Ok(())
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
        stats.add(&part.stats(end_offsets.get(p).copied().unwrap_or(0)));
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

/// Every log of `topic`, named: partitions, journal, then dead letters by group.
async fn topic_logs(topic: &Topic) -> Vec<(LogName, Arc<Log>)> {
    let mut out: Vec<(LogName, Arc<Log>)> = topic
        .partitions
        .read()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(p, l)| (LogName::Partition(p as u32), l.clone()))
        .collect();
    out.push((LogName::Journal, topic.journal.clone()));
    for (name, g) in topic.groups.lock().await.iter() {
        if let Some(dlq) = &g.lock().await.dlq {
            out.push((LogName::DeadLetters(name.clone()), dlq.clone()));
        }
    }
    out
}

fn end_offsets(topic: &Topic) -> Vec<u64> {
    topic
        .partitions
        .read()
        .unwrap()
        .iter()
        .map(|l| l.durable_end())
        .collect()
}

/// The first offset of `log` stored at or after `t` (its end if none): a binary search,
/// since append times only grow within a partition (the broker stamps them; a clock
/// stepped back can break that, and then the answer is one such offset, not the first).
fn first_at_or_after(log: &Log, t: Millis) -> Result<u64, BrokerError> {
    let (mut lo, mut hi) = (log.start_offset(), log.durable_end());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match log.read(mid)? {
            Some(r) if (r.timestamp_ms.max(0) as u64) < t => lo = mid + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
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

/// Calls `f` with every durable record of `log` from `from` (or its start, if later)
/// on, one read batch at a time: a scan of a long log holds one batch, not the log.
fn for_each_record(
    log: &Log,
    from: u64,
    mut f: impl FnMut(&surety_log::Record),
) -> Result<(), BrokerError> {
    let mut next = from.max(log.start_offset());
    loop {
        let batch = log.read_from(next, 1024, 4 << 20)?;
        let Some(last) = batch.last() else { break };
        next = last.offset + 1;
        batch.iter().for_each(&mut f);
    }
    Ok(())
}

/// Feeds every record of `log` from `from` (or its start, if later) into `table`, one
/// read batch at a time. Returns the records read and their payload bytes.
fn replay_dedupe(
    table: &mut DedupeTable,
    partition: u32,
    log: &Log,
    from: u64,
) -> Result<(u64, u64), BrokerError> {
    let (mut records, mut bytes) = (0, 0);
    for_each_record(log, from, |r| {
        records += 1;
        bytes += r.payload.len() as u64;
        if let Some(key) = crate::message::stored_key(partition, r) {
            table.replay(key);
        }
    })?;
    Ok((records, bytes))
}

/// Writes `topic`'s dedupe snapshot: encoded under the table's lock (so it matches the
/// `covered` offsets read there), then written atomically and durably. Writes nothing for
/// a failed or deleted topic (its restart replays more; never wrong).
fn write_dedupe_snapshot(topic: &Topic, now: Millis) -> Result<(), BrokerError> {
    let _one_writer = topic.dedupe_snapshot_lock.lock().unwrap();
    if topic.failed.get().is_some() {
        return Ok(());
    }
    let partitions = topic.partitions.read().unwrap().clone();
    let (bytes, tail, entries) = {
        let state = topic.dedupe.lock().unwrap();
        let covered = state.covered(&partitions);
        // Publishes that commit from now on count toward the next snapshot.
        let tail = (
            topic.dedupe_tail_records.swap(0, Ordering::Relaxed),
            topic.dedupe_tail_bytes.swap(0, Ordering::Relaxed),
        );
        // An upper bound (entries above `covered` are left out): a trigger only.
        let entries = state.table.entries();
        (state.table.encode_snapshot(&covered, now), tail, entries)
    };
    // A temp file of its own: a background writer of an earlier broker on this directory
    // (in this process) may still be finishing. Either complete file is a correct one.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let tmp = format!(
        "{DEDUPE_SNAPSHOT_FILE}{DEDUPE_TMP_INFIX}{}-{}",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    );
    if let Err(e) = write_durably_via(&topic.dir, DEDUPE_SNAPSHOT_FILE, &tmp, &bytes) {
        let _ = std::fs::remove_file(topic.dir.join(&tmp));
        topic
            .dedupe_tail_records
            .fetch_add(tail.0, Ordering::Relaxed);
        topic.dedupe_tail_bytes.fetch_add(tail.1, Ordering::Relaxed);
        return Err(e);
    }
    topic
        .dedupe_snapshot_len
        .store(bytes.len() as u64, Ordering::Relaxed);
    topic
        .dedupe_snapshot_entries
        .store(entries, Ordering::Relaxed);
    Ok(())
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

/// The dead-letter log's copy of `original` (partition `p`) for a `DeadLettered` event:
/// the message as stored, plus what [`dead_letter_event`] reads back.
fn dead_letter_copy(original: surety_log::Record, p: u32, e: &Event) -> NewRecord {
    let Event::DeadLettered {
        offset,
        reason,
        at,
        attempts,
        first_delivered_at,
        last_delivered_at,
    } = e
    else {
        unreachable!("only a DeadLettered event has a dead-letter copy")
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
    rec
}

/// The `DeadLettered` event (and its partition) a dead-letter copy was written for.
fn dead_letter_event(headers: &[Header]) -> (u32, Event) {
    let (partition, offset) = dead_letter_meta(headers);
    let reason = headers
        .iter()
        .find(|h| h.name == DL_REASON)
        .map(|h| String::from_utf8_lossy(&h.value).into_owned())
        .unwrap_or_default();
    (
        partition,
        Event::DeadLettered {
            offset,
            reason,
            at: header_u64(headers, DL_AT).unwrap_or(0),
            attempts: header_u32(headers, DL_ATTEMPTS).unwrap_or(0),
            first_delivered_at: header_u64(headers, DL_FIRST),
            last_delivered_at: header_u64(headers, DL_LAST),
        },
    )
}

fn dead_letter_meta(headers: &[Header]) -> (u32, u64) {
    (
        header_u32(headers, DL_PARTITION).unwrap_or(0),
        header_u64(headers, DL_OFFSET).unwrap_or(0),
    )
}

fn dead_letter_from(group: &str, mut r: surety_log::Record) -> DeadLetter {
    let (
        partition,
        Event::DeadLettered {
            offset,
            reason,
            at,
            attempts,
            first_delivered_at,
            last_delivered_at,
        },
    ) = dead_letter_event(&r.headers)
    else {
        unreachable!("dead_letter_event answers a DeadLettered event")
    };
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
        first_delivered_at,
        last_delivered_at,
        dead_lettered_at: at,
        message: StoredMessage::from_record(r),
    }
}

/// Where deleted topics go on their way out (not a valid topic directory: `topics/` is).
const TRASH_DIR: &str = "trash";

/// Data files are the broker's alone: messages and the receipt key are readable by its
/// user only.
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// Creates a directory and its missing parents, each 0700.
fn create_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Makes a directory's entries (files created, renamed or removed in it) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes a small file atomically and durably: temp file, fsync, rename, fsync dir.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), BrokerError> {
    write_durably_via(dir, name, &format!("{name}.tmp"), bytes)
}

/// [`write_durably`] through the temp file `tmp_name` (in `dir`).
fn write_durably_via(
    dir: &Path,
    name: &str,
    tmp_name: &str,
    bytes: &[u8],
) -> Result<(), BrokerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(tmp_name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)?;
    Ok(())
}

/// The topics stored in a data directory, by name: each one's directory and config. A
/// topic whose creation never finished (no `topic.json`: its config was never durable)
/// is not one.
pub(crate) fn stored_topics(
    dir: &Path,
) -> Result<Vec<(String, PathBuf, TopicConfig)>, BrokerError> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("topics"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| validate_topic_name(n).is_ok())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let tdir = dir.join("topics").join(&name);
        let Ok(text) = std::fs::read_to_string(tdir.join("topic.json")) else {
            continue;
        };
        let config: TopicConfig = serde_json::from_str(&text).map_err(|e| {
            BrokerError::Storage(format!("{}: {e}", tdir.join("topic.json").display()))
        })?;
        out.push((name, tdir, config));
    }
    Ok(out)
}

/// Takes the data directory's exclusive lock (`LOCK`, an flock: the kernel drops it when
/// the holder exits, `kill -9` included), or says who has it.
pub(crate) fn lock_dir(dir: &Path) -> Result<std::fs::File, BrokerError> {
    let path = dir.join("LOCK");
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(FILE_MODE)
            .open(&path)?
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The step of a publish that no timing-based test can hit reliably: its record is
    /// durable in the partition but not yet committed into the dedupe table when a
    /// snapshot is taken, and the broker then stops without another snapshot. The
    /// snapshot must not cover that record, or the restart skips it and its retry is
    /// stored twice.
    #[tokio::test]
    async fn a_snapshot_does_not_cover_a_durable_record_not_yet_committed() {
        let dir = tempfile::tempdir().unwrap();
        let b = Broker::open(dir.path(), BrokerOptions::default()).unwrap();
        let one: TopicConfigPatch = serde_json::from_str(r#"{"partitions":1}"#).unwrap();
        b.put_topic("t", &one).await.unwrap();
        let m = |seq| PublishMessage {
            producer_id: Some("p".into()),
            sequence: Some(seq),
            payload: b"x".to_vec(),
            ..PublishMessage::default()
        };
        b.publish("t", vec![m(0)]).await.unwrap();
        let topic = b.topic("t").unwrap();
        let log = topic.partitions.read().unwrap()[0].clone();
        // `publish_to_completion` up to the durable append, by hand.
        let key = dedupe_keys(&m(1)).remove(0);
        let reservation = {
            let mut t = topic.dedupe.lock().unwrap();
            let Begin::New(r) = t.table.begin(&key, b.now()) else {
                panic!("new key")
            };
            let floor = log.durable_end();
            t.register(0, floor);
            r
        };
        let offset = log
            .submit(vec![m(1).to_record(b.now() as i64, None)])
            .unwrap()
            .await
            .unwrap()
            .start;
        assert_eq!(offset, 1);
        write_dedupe_snapshot(&topic, b.now()).unwrap();
        {
            let mut t = topic.dedupe.lock().unwrap();
            t.table.commit(reservation, 0, offset, b.now()).unwrap();
            t.deregister(0, 1);
        }
        drop((topic, log));
        drop(b);

        let b = Broker::open(dir.path(), BrokerOptions::default()).unwrap();
        let r = b.dedupe_recovery("t").unwrap();
        assert!(r.from_snapshot, "{r:?}");
        assert_eq!(r.records_scanned, 1, "the record in flight is replayed");
        let again = b.publish("t", vec![m(1)]).await.unwrap()[0];
        assert_eq!(
            again,
            PublishResult {
                partition: 0,
                offset: 1,
                duplicate: true
            }
        );
    }

    /// A crash between the two halves of dead-lettering (`stage`): the copy is durable in
    /// the dead-letter log, the journal record saying the message left the group is not.
    /// The restart must finish the move, not leave the message in flight to be
    /// dead-lettered a second time when its lease runs out (seen once under
    /// `broker_kill`: "dead-lettered twice"). It must also keep the copies and journal
    /// events one to one, so that a later, whole dead letter is not taken for a half one.
    #[tokio::test]
    async fn a_dead_letter_copy_without_its_journal_record_is_finished_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let config: TopicConfigPatch =
            serde_json::from_str(r#"{"partitions":1,"max_deliveries":1,"ack_wait_ms":100}"#)
                .unwrap();
        let message = |payload: &[u8]| PublishMessage {
            payload: payload.to_vec(),
            ..PublishMessage::default()
        };
        let b = Broker::open(dir.path(), BrokerOptions::default()).unwrap();
        b.put_topic("t", &config).await.unwrap();
        b.publish("t", vec![message(b"first")]).await.unwrap();
        let got = b.fetch("t", "g", 1, Duration::ZERO, None).await.unwrap();
        assert_eq!(got.len(), 1);
        // The first half of a dead-lettering nack, by hand: the durable copy only.
        let topic = b.topic("t").unwrap();
        let original = topic.partitions.read().unwrap()[0]
            .read(0)
            .unwrap()
            .unwrap();
        let now = b.now();
        let copy = dead_letter_copy(
            original,
            0,
            &Event::DeadLettered {
                offset: 0,
                reason: "handler failed".into(),
                at: now,
                attempts: 1,
                first_delivered_at: Some(now),
                last_delivered_at: Some(now),
            },
        );
        let dlq = b.open_dlq(&topic, "g").unwrap();
        dlq.submit(vec![copy]).unwrap().await.unwrap();
        dlq.close();
        drop((dlq, topic));
        b.close();
        drop(b);

        let stats = |info: &TopicInfo| info.groups[0].stats;
        let b = Broker::open(dir.path(), BrokerOptions::default()).unwrap();
        let dead = b.dead_letters("t", "g").await.unwrap();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].reason, "handler failed");
        let s = stats(&b.describe("t").await.unwrap());
        assert_eq!((s.dead_lettered, s.in_flight), (1, 0), "{s:?}");
        // Past the old lease: nothing comes back, nothing is dead-lettered again.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let again = b.fetch("t", "g", 10, Duration::ZERO, None).await.unwrap();
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(b.dead_letters("t", "g").await.unwrap().len(), 1);
        // A whole dead letter after it.
        b.publish("t", vec![message(b"second")]).await.unwrap();
        let got = b.fetch("t", "g", 1, Duration::ZERO, None).await.unwrap();
        let receipts = [got[0].receipt.clone()];
        b.nack("t", "g", &receipts, Duration::ZERO, "second failed")
            .await
            .unwrap();
        b.close();
        drop(b);

        let b = Broker::open(dir.path(), BrokerOptions::default()).unwrap();
        let dead = b.dead_letters("t", "g").await.unwrap();
        let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
        assert_eq!(reasons, ["handler failed", "second failed"]);
        let s = stats(&b.describe("t").await.unwrap());
        assert!(s.is_conserved(), "{s:?}");
        assert_eq!(
            (s.accepted, s.dead_lettered, s.in_flight, s.pending),
            (2, 2, 0, 0),
            "{s:?}"
        );
    }
}
