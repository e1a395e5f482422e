//! A consumer session: one member of the group's Kafka consumer group, reading the topic
//! and the group's own topic (`<topic>.<group>.redo`), with per-message settlement on top
//! of offset commits.
//!
//! - **Commits never pass an unsettled record.** Per partition the session tracks what it
//!   received; the committed offset is the lowest record not settled, and the settled
//!   ones above it (acked out of order) go into the commit's metadata (crate::journal),
//!   so a new owner skips them. Nothing is skipped, and after a crash only unsettled
//!   records run again.
//! - **Delivery counts persist.** Before records are handed out, a commit records them
//!   as delivered (with their count) in the same metadata; an ack is answered once the
//!   commit that carries it is confirmed (`SettleAnswers::Confirmed`). A record whose
//!   consumer died comes back with its count raised; one past `max_deliveries` (its
//!   consumers keep dying) is dead-lettered unrun.
//! - **Per key, first deliveries keep their order.** A record whose key has an earlier
//!   record of the same partition outstanding in this session waits (parked) until that
//!   one is settled; other keys flow. Handlers therefore run concurrently across keys.
//!   A keyless record waits the same way behind an earlier copy of its stamp (a publish
//!   retried after a lost answer), so the consumer's ledger drops the copy unrun.
//! - **Nack** waits out its delay in place (`retry=in_place`: the key stays parked and
//!   the record comes back after the delay), or as a copy in the group's own topic
//!   (`retry=topic`: the original is settled). At `max_deliveries` (and for
//!   `Settle::DeadLetter`) the record is written to `<topic>.dlq` and confirmed, then
//!   settled.
//!
//! A record is held while this member owns its partition (`LeaseKind::Connection`): a
//! member that stops heartbeating for the session timeout (the subscription's lease,
//! at least 6 s, Kafka's smallest by default) loses its partitions to the others.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientContext, Message as _, Offset, Timestamp, TopicPartitionList};
use surety_core::retry::nack_backoff;
use surety_core::{
    BoxFuture, Delivery, ErrorKind, Position, Receipt, RequestId, Session, SessionEvent, Settle,
    SettleOutcome, Subscription, TransportError, wire,
};
use surety_core::{ChannelSession, SessionCommand as Command};
use tokio::sync::mpsc;

use crate::dead_letters::{self, Death};
use crate::journal::{self, Journal};
use crate::names::{GroupNames, TopicNames};
use crate::options::RetryMode;
use crate::record;
use crate::topics::{self, TopicSettings};
use crate::transport::{Inner, MAX_CREDITS, now_ms};

/// The smallest session timeout a broker takes by default (`group.min.session.timeout.ms`).
const MIN_SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// Received records held beyond the window before the partitions are paused.
///
/// A pause is costly: librdkafka bumps the fetch version, discards what it prefetched
/// and, on resume, fetches again from the last record handed over; on the MockCluster
/// fetching stalled for seconds after a resume. The bound is therefore well above what
/// a consumer that keeps pace holds (a few thousand records at the bench's rate), and
/// reading resumes only once most of it is worked off (`RESUME_AHEAD`), so that a
/// slow consumer pauses once per several thousand records, not per few dozen.
const READ_AHEAD: usize = 8000;
/// Received records held beyond the window at which paused partitions resume.
const RESUME_AHEAD: usize = 2000;

static SESSIONS: AtomicU64 = AtomicU64::new(1);
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

/// Creates the group's own topic where missing.
pub(crate) async fn ensure_group(inner: &Inner, group: &GroupNames) -> Result<(), TransportError> {
    topics::ensure_topics(inner, &[(group.redo.as_str(), 1, false)]).await
}

pub(crate) async fn subscribe(
    inner: Arc<Inner>,
    sub: &Subscription,
) -> Result<Box<dyn Session>, TransportError> {
    let names = TopicNames::new(&inner.options.prefix, &sub.topic)?;
    let group = names.group(&sub.group)?;
    if sub.credits > MAX_CREDITS {
        return Err(TransportError::refused(
            ErrorKind::InvalidInput,
            format!("credits {} above {MAX_CREDITS}", sub.credits),
        ));
    }
    let settings = topics::settings(&inner, &names).await?;
    ensure_group(&inner, &group).await?;
    let lease = sub
        .lease
        .unwrap_or(settings.ack_wait())
        .clamp(MIN_SESSION_TIMEOUT, Duration::from_secs(3600));
    let mut config = inner.config();
    config
        .set("group.id", &group.consumer_group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", lease.as_millis().to_string())
        .set("heartbeat.interval.ms", (lease.as_millis() / 3).to_string())
        .set("queued.max.messages.kbytes", "8192");
    let ctx = Ctx {
        events: Mutex::new(Vec::new()),
        timeout: inner.options.request_timeout,
    };
    let consumer: StreamConsumer<Ctx> = config
        .create_with_context(ctx)
        .map_err(|e| crate::error::unavailable("creating the Kafka consumer", &e))?;
    consumer
        .subscribe(&[&names.kafka, &group.redo])
        .map_err(|e| crate::error::unavailable("subscribing", &e))?;
    let (session, command_rx, events_tx) = ChannelSession::new("the Kafka session ended");
    let pump = Pump {
        session: SESSIONS.fetch_add(1, Ordering::Relaxed),
        consumer: Arc::new(consumer),
        topics: [names.kafka.clone(), group.redo.clone()],
        names,
        group,
        settings,
        inner,
        window: sub.credits,
        out: 0,
        parts: HashMap::new(),
        by_generation: HashMap::new(),
        held: HashMap::new(),
        busy_keys: HashMap::new(),
        ready: VecDeque::new(),
        waiting: BinaryHeap::new(),
        delivering: Vec::new(),
        awaiting_commit: Vec::new(),
        requests: HashMap::new(),
        copies: FuturesUnordered::new(),
        paused: false,
        draining: false,
        drained: false,
        events: events_tx,
    };
    tokio::spawn(pump.run(command_rx));
    Ok(Box::new(session))
}

/// A rebalance, as the consumer's callbacks saw it (handled by the pump in order).
enum Rebalanced {
    Revoked(Vec<(String, i32)>),
    /// Each partition with its committed offset (`None`: none yet) and metadata.
    Assigned(Vec<(String, i32, Option<i64>, String)>),
}

struct Ctx {
    events: Mutex<Vec<Rebalanced>>,
    timeout: Duration,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = r {
            let parts = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            self.events.lock().unwrap().push(Rebalanced::Revoked(parts));
        }
    }

    fn post_rebalance(&self, c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = r {
            // The journal of each partition, read before its first record is.
            let committed = match c.committed_offsets((*tpl).clone(), self.timeout) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(
                        "reading the committed offsets of an assignment: {e}; its delivery counts start over"
                    );
                    (*tpl).clone()
                }
            };
            let parts = committed
                .elements()
                .iter()
                .map(|e| {
                    let at = match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    };
                    (
                        e.topic().to_owned(),
                        e.partition(),
                        at,
                        e.metadata().to_owned(),
                    )
                })
                .collect();
            self.events
                .lock()
                .unwrap()
                .push(Rebalanced::Assigned(parts));
        }
    }
}

/// A partition this member owns: what it received and settled there.
struct Part {
    /// 0: the topic, 1: the group's own topic.
    topic: usize,
    partition: i32,
    generation: u64,
    /// The journal of the commit this member found at assignment.
    prior: Journal,
    /// The committed offset at assignment.
    base: Option<i64>,
    /// The offset after the last record received.
    next: Option<i64>,
    /// Received and not settled, with the delivery count the last commit recorded.
    unsettled: BTreeMap<i64, u32>,
    /// Received and settled at or above the committed offset.
    settled: BTreeSet<i64>,
    /// Changed since the last commit.
    dirty: bool,
}

impl Part {
    /// Where a commit of this partition stands: the lowest record not settled.
    fn low(&self) -> Option<i64> {
        self.unsettled
            .keys()
            .next()
            .copied()
            .or(self.next)
            .or(self.base)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Parked,
    Waiting,
    Ready,
    /// In a commit round that records its delivery.
    Delivering,
    Out,
    /// A copy of it (a retry or a dead letter) is being written.
    Copying,
}

/// A received record not yet settled.
struct Held {
    msg: OwnedMessage,
    state: State,
    /// Its count on the next (or current) delivery.
    count: u32,
    /// Deliveries of earlier copies (a retry copy's headers): `count - carried` is what
    /// the journal records for this record.
    carried: u32,
    first_ms: Option<u64>,
    last_ms: u64,
    /// Not delivered before (a retry copy's due time; 0: at once).
    not_before: u64,
    /// Where the message was first stored: a copy's origin, else this record.
    position: Position,
    /// Its headers, read once when it was received.
    decoded: record::Decoded,
    key: Option<Vec<u8>>,
    /// What it waits behind: its key, else its stamp (a keyless retry copy of a publish
    /// waits for the first copy, and the consumer's ledger then drops it unrun, instead of
    /// both running at once and the second being nacked as busy).
    park: Option<Vec<u8>>,
}

type HeldKey = (u64, i64);

/// A settlement's receipts not yet answered.
struct Request {
    outcomes: Vec<Option<SettleOutcome>>,
}

/// What a copy task reports: the record, and where the answer goes.
struct Copied {
    at: HeldKey,
    answer: Option<(RequestId, usize)>,
    result: Result<(), TransportError>,
}

struct Pump {
    session: u64,
    consumer: Arc<StreamConsumer<Ctx>>,
    topics: [String; 2],
    names: TopicNames,
    group: GroupNames,
    settings: TopicSettings,
    inner: Arc<Inner>,
    window: u32,
    /// Deliveries handed out and not settled.
    out: u32,
    parts: HashMap<(usize, i32), Part>,
    by_generation: HashMap<u64, (usize, i32)>,
    held: HashMap<HeldKey, Held>,
    /// Keys with a record outstanding, and the later records of each, in order.
    busy_keys: HashMap<(u64, Vec<u8>), VecDeque<i64>>,
    ready: VecDeque<HeldKey>,
    waiting: BinaryHeap<Reverse<(u64, u64, i64)>>,
    /// Records of the commit round in flight, handed out once it is confirmed.
    delivering: Vec<HeldKey>,
    /// Answers that wait for the next commit round, with the generation of the
    /// partition the record was settled in.
    awaiting_commit: Vec<(RequestId, usize, u64)>,
    requests: HashMap<RequestId, Request>,
    /// Copies being written (retries, dead letters).
    copies: FuturesUnordered<BoxFuture<'static, Copied>>,
    paused: bool,
    draining: bool,
    drained: bool,
    events: mpsc::UnboundedSender<Result<SessionEvent, TransportError>>,
}

type CommitResult = Result<(), TransportError>;

impl Pump {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut commit: Option<BoxFuture<'static, CommitResult>> = None;
        let mut round: (Vec<HeldKey>, Vec<(RequestId, usize, u64)>) = (Vec::new(), Vec::new());
        let mut retry_commit_at: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            let next_due = self
                .waiting
                .peek()
                .map(|Reverse((due, _, _))| *due)
                .unwrap_or(u64::MAX);
            let wait_ms = next_due.saturating_sub(now_ms()).min(60_000);
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    None => break,
                    Some(Command::Settle(id, s)) => self.settle(id, s),
                    Some(Command::Credit(n)) => self.window = self.window.saturating_add(n).min(MAX_CREDITS),
                    Some(Command::Drain) => self.draining = true,
                },
                m = self.consumer.recv() => {
                    let m = m.map(|m| m.detach());
                    self.rebalanced();
                    match m {
                        Ok(m) => self.ingest(m),
                        Err(e) => tracing::warn!("Kafka consumer: {e}"),
                    }
                }
                Some(c) = self.copies.next(), if !self.copies.is_empty() => self.copied(c),
                r = async { commit.as_mut().unwrap().await }, if commit.is_some() => {
                    commit = None;
                    let (delivered, answers) = std::mem::take(&mut round);
                    match r {
                        Ok(()) => {
                            self.hand_out(delivered);
                            for (id, i, _) in answers {
                                self.answer(id, i, SettleOutcome::Applied);
                            }
                        }
                        Err(e) => {
                            tracing::warn!("Kafka commit: {e}; trying again");
                            // Nothing was recorded: the same work goes in the next round.
                            self.delivering.splice(0..0, delivered);
                            self.awaiting_commit.splice(0..0, answers);
                            for p in self.parts.values_mut() {
                                p.dirty = true;
                            }
                            retry_commit_at = Some(tokio::time::Instant::now() + Duration::from_millis(200));
                        }
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(wait_ms)), if next_due != u64::MAX => {}
                _ = tick.tick() => self.rebalanced(),
            }
            self.wake_due();
            self.fill();
            self.flow_control();
            if commit.is_none() && retry_commit_at.is_none_or(|t| tokio::time::Instant::now() >= t)
            {
                retry_commit_at = None;
                self.refuse_revoked();
                if let Some(c) = self.start_commit() {
                    round = (
                        std::mem::take(&mut self.delivering),
                        std::mem::take(&mut self.awaiting_commit),
                    );
                    commit = Some(c);
                }
            }
            if self.draining && !self.drained && commit.is_none() && self.delivering.is_empty() {
                self.drained = true;
                let _ = self.events.send(Ok(SessionEvent::Drained));
            }
        }
        // Leaving the group blocks until the coordinator answers (forever where it is
        // gone): on a thread of its own, which a runtime shutting down does not wait for.
        let consumer = self.consumer;
        std::thread::spawn(move || drop(consumer));
    }

    /// Applies what the rebalance callbacks saw.
    fn rebalanced(&mut self) {
        let events = std::mem::take(&mut *self.consumer.context().events.lock().unwrap());
        for e in events {
            match e {
                Rebalanced::Revoked(list) => {
                    for (topic, partition) in list {
                        let Some(t) = self.topic_index(&topic) else {
                            continue;
                        };
                        if let Some(part) = self.parts.remove(&(t, partition)) {
                            self.by_generation.remove(&part.generation);
                            self.forget(part.generation);
                        }
                    }
                    self.paused = false;
                }
                Rebalanced::Assigned(list) => {
                    for (topic, partition, base, metadata) in list {
                        let Some(t) = self.topic_index(&topic) else {
                            continue;
                        };
                        let generation = GENERATIONS.fetch_add(1, Ordering::Relaxed);
                        let prior = base
                            .map(|b| Journal::decode(b, &metadata))
                            .unwrap_or_default();
                        self.by_generation.insert(generation, (t, partition));
                        self.parts.insert(
                            (t, partition),
                            Part {
                                topic: t,
                                partition,
                                generation,
                                prior,
                                base,
                                next: None,
                                unsettled: BTreeMap::new(),
                                settled: BTreeSet::new(),
                                dirty: false,
                            },
                        );
                    }
                    self.paused = false;
                }
            }
        }
    }

    fn topic_index(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| t == topic)
    }

    /// Drops what this member held of a partition it lost: its records will be
    /// delivered to the new owner (their counts raised by the journal).
    fn forget(&mut self, generation: u64) {
        let gone: Vec<HeldKey> = self
            .held
            .keys()
            .filter(|k| k.0 == generation)
            .copied()
            .collect();
        for k in gone {
            if let Some(h) = self.held.remove(&k)
                && h.state == State::Out
            {
                self.out = self.out.saturating_sub(1);
            }
        }
        self.busy_keys.retain(|k, _| k.0 != generation);
        self.ready.retain(|k| k.0 != generation);
        self.delivering.retain(|k| k.0 != generation);
    }

    fn ingest(&mut self, m: OwnedMessage) {
        let Some(t) = self.topic_index(m.topic()) else {
            return;
        };
        let Some(part) = self.parts.get_mut(&(t, m.partition())) else {
            return;
        };
        let offset = m.offset();
        if part.next.is_some_and(|n| offset < n) || part.base.is_some_and(|b| offset < b) {
            return; // a record read twice (a seek back by librdkafka): already tracked
        }
        part.next = Some(offset + 1);
        if part.prior.is_settled(offset) {
            part.settled.insert(offset);
            part.dirty = true;
            return;
        }
        let times = part.prior.times(offset);
        part.unsettled.insert(offset, times);
        let generation = part.generation;
        let d = record::decode(&m);
        let carried = d.layer_u64(record::DELIVERIES).unwrap_or(0) as u32;
        let not_before = d.layer_u64(record::NOT_BEFORE).unwrap_or(0);
        let key = m.key().map(<[u8]>::to_vec);
        let park = key.clone().or_else(|| {
            let producer = d.layer.get(wire::PRODUCER)?;
            let seq = d.layer.get(wire::SEQUENCE)?;
            Some(format!("\0stamp {producer} {seq}").into_bytes())
        });
        let at = (generation, offset);
        let count = carried.saturating_add(times).saturating_add(1);
        let position = d
            .layer
            .get(wire::ORIGIN)
            .and_then(|o| parse_origin(o))
            .unwrap_or(Position::Offset {
                partition: m.partition() as u32,
                offset: offset as u64,
            });
        self.held.insert(
            at,
            Held {
                state: State::Ready,
                count,
                carried,
                first_ms: d.layer_u64(wire::FIRST_DELIVERED),
                last_ms: d.layer_u64(wire::LAST_DELIVERED).unwrap_or(0),
                not_before,
                position,
                decoded: d,
                key,
                park: park.clone(),
                msg: m,
            },
        );
        if let Some(k) = park {
            let slot = (generation, k);
            if let Some(queue) = self.busy_keys.get_mut(&slot) {
                queue.push_back(offset);
                self.held.get_mut(&at).unwrap().state = State::Parked;
                return;
            }
            self.busy_keys.insert(slot, VecDeque::new());
        }
        self.admit(at);
    }

    /// A record whose key is free: dead-lettered unrun past the cap, waiting out its due
    /// time, or ready.
    fn admit(&mut self, at: HeldKey) {
        let max = self.settings.max_deliveries;
        let h = self.held.get_mut(&at).unwrap();
        if h.count > max {
            let reason = format!(
                "its consumer died (or left the group) holding delivery {} of {max}",
                h.count - 1
            );
            h.count -= 1;
            self.copy(at, None, CopyKind::DeadLetter(reason));
        } else if h.not_before > now_ms() {
            h.state = State::Waiting;
            self.waiting.push(Reverse((h.not_before, at.0, at.1)));
        } else {
            h.state = State::Ready;
            self.ready.push_back(at);
        }
    }

    fn wake_due(&mut self) {
        let now = now_ms();
        while let Some(Reverse((due, g, o))) = self.waiting.peek().copied() {
            if due > now {
                break;
            }
            self.waiting.pop();
            if let Some(h) = self.held.get_mut(&(g, o))
                && h.state == State::Waiting
            {
                h.state = State::Ready;
                self.ready.push_back((g, o));
            }
        }
    }

    /// Moves ready records into the next commit round, as far as the window allows.
    fn fill(&mut self) {
        if self.draining {
            return;
        }
        while self.out + (self.delivering.len() as u32) < self.window {
            let Some(at) = self.ready.pop_front() else {
                break;
            };
            let Some(h) = self.held.get_mut(&at) else {
                continue;
            };
            if h.state != State::Ready {
                continue;
            }
            h.state = State::Delivering;
            let times = h.count - h.carried;
            let Some(part) = self
                .by_generation
                .get(&at.0)
                .and_then(|pk| self.parts.get_mut(pk))
            else {
                continue;
            };
            // The commit of this round says the record was delivered this often.
            part.unsettled.insert(at.1, times);
            part.dirty = true;
            self.delivering.push(at);
        }
    }

    /// Pauses reading while far more is held than the window can take, with hysteresis:
    /// paused above the window plus `READ_AHEAD`, resumed at or below the window plus
    /// `RESUME_AHEAD`.
    fn flow_control(&mut self) {
        let held = self.held.len();
        let window = self.window as usize;
        let want_paused = self.draining
            || if self.paused {
                held > window + RESUME_AHEAD
            } else {
                held > window + READ_AHEAD
            };
        if want_paused == self.paused {
            return;
        }
        if let Ok(assignment) = self.consumer.assignment() {
            let r = if want_paused {
                self.consumer.pause(&assignment)
            } else {
                self.consumer.resume(&assignment)
            };
            match r {
                Ok(()) => self.paused = want_paused,
                Err(e) => tracing::warn!("pausing or resuming Kafka partitions: {e}"),
            }
        }
    }

    /// Settlements of a partition this member lost before a commit carried them: they
    /// were never recorded, and the new owner delivers those records again.
    fn refuse_revoked(&mut self) {
        let (kept, lost): (Vec<_>, Vec<_>) = std::mem::take(&mut self.awaiting_commit)
            .into_iter()
            .partition(|(_, _, g)| self.by_generation.contains_key(g));
        self.awaiting_commit = kept;
        for (id, i, _) in lost {
            self.answer(
                id,
                i,
                SettleOutcome::Refused(
                    TransportError::refused(
                        ErrorKind::Stale,
                        "the partition was reassigned before the settlement was committed; \
                         the record will be delivered again",
                    )
                    .with_code("receipt_stale"),
                ),
            );
        }
    }

    /// A commit of every changed partition: offset at its lowest unsettled record, the
    /// journal in the metadata.
    fn start_commit(&mut self) -> Option<BoxFuture<'static, CommitResult>> {
        if !self.parts.values().any(|p| p.dirty) {
            if self.delivering.is_empty() && self.awaiting_commit.is_empty() {
                return None;
            }
            // Nothing to record (the partitions were revoked): answer at once.
            return Some(Box::pin(async { Ok(()) }));
        }
        let mut tpl = TopicPartitionList::new();
        for p in self.parts.values_mut().filter(|p| p.dirty) {
            p.dirty = false;
            let Some(low) = p.low() else { continue };
            p.settled = p.settled.split_off(&low);
            let unread = p.prior.from(p.next.unwrap_or(low));
            let metadata = journal::encode(low, &p.settled, &p.unsettled, &unread);
            if tpl
                .add_partition_offset(&self.topics[p.topic], p.partition, Offset::Offset(low))
                .is_ok()
                && let Some(mut e) = tpl.find_partition(&self.topics[p.topic], p.partition)
            {
                e.set_metadata(metadata);
            }
        }
        let consumer = self.consumer.clone();
        Some(Box::pin(async move {
            if tpl.count() == 0 {
                return Ok(());
            }
            // A sync commit has no timeout of its own and waits as long as the
            // coordinator does not answer: on a thread of its own, which neither a runtime
            // shutting down nor a dropped session waits for.
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let r = consumer
                    .commit(&tpl, CommitMode::Sync)
                    .map_err(|e| crate::error::unavailable("committing offsets", &e));
                let _ = tx.send(r);
            });
            rx.await
                .unwrap_or_else(|_| Err(TransportError::unavailable("the commit thread ended")))
        }))
    }

    /// Hands out the records whose delivery the last commit recorded.
    fn hand_out(&mut self, delivered: Vec<HeldKey>) {
        let mut out = Vec::with_capacity(delivered.len());
        let now = now_ms();
        for at in delivered {
            let Some(h) = self.held.get_mut(&at) else {
                continue;
            };
            if h.state != State::Delivering {
                continue;
            }
            h.state = State::Out;
            h.first_ms.get_or_insert(now);
            h.last_ms = now;
            self.out += 1;
            let d = &h.decoded;
            let position = h.position;
            out.push(Delivery {
                receipt: Receipt::new(format!("kafka {} {} {}", self.session, at.0, at.1)),
                partition: position.partition(),
                position,
                delivery_count: h.count,
                first_delivered_ms: h.first_ms,
                lease_until_ms: None,
                timestamp_ms: match h.msg.timestamp() {
                    Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => t,
                    Timestamp::NotAvailable => 0,
                },
                key: h.key.clone(),
                sequence: d.layer_u64(wire::SEQUENCE),
                headers: d.headers.clone(),
                payload: h.msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                id: d.layer.get(wire::ID).cloned(),
                producer_id: d.layer.get(wire::PRODUCER).cloned(),
            });
        }
        if !out.is_empty() {
            let _ = self.events.send(Ok(SessionEvent::Deliveries(out)));
        }
    }

    fn settle(&mut self, id: RequestId, s: Settle) {
        let receipts = s.receipts().to_vec();
        self.requests.insert(
            id,
            Request {
                outcomes: vec![None; receipts.len()],
            },
        );
        for (i, r) in receipts.iter().enumerate() {
            let at = match self.parse(r) {
                Ok(at) => at,
                Err(outcome) => {
                    self.answer(id, i, outcome);
                    continue;
                }
            };
            let max = self.settings.max_deliveries;
            match &s {
                Settle::Ack(_) => {
                    self.settled(at);
                    self.awaiting_commit.push((id, i, at.0));
                }
                Settle::DeadLetter { reason, .. } => {
                    self.copy(at, Some((id, i)), CopyKind::DeadLetter(reason.clone()))
                }
                Settle::Nack { delay, reason, .. } => {
                    let h = &self.held[&at];
                    if h.count >= max {
                        self.copy(at, Some((id, i)), CopyKind::DeadLetter(reason.clone()));
                        continue;
                    }
                    let o = &self.inner.options;
                    let wait = nack_backoff(
                        o.nak_backoff_initial,
                        o.nak_backoff_max,
                        h.count.into(),
                        at.1 as u64,
                    )
                    .max(*delay);
                    let due = now_ms() + wait.as_millis() as u64;
                    match o.retry {
                        RetryMode::Topic => self.copy(
                            at,
                            Some((id, i)),
                            CopyKind::Retry {
                                due,
                                reason: reason.clone(),
                            },
                        ),
                        RetryMode::InPlace => {
                            self.out = self.out.saturating_sub(1);
                            let h = self.held.get_mut(&at).unwrap();
                            h.state = State::Waiting;
                            h.count += 1;
                            self.waiting.push(Reverse((due, at.0, at.1)));
                            self.answer(id, i, SettleOutcome::Applied);
                        }
                    }
                }
            }
        }
        self.finish(id);
    }

    /// The record a receipt names, if this session holds it out.
    fn parse(&self, r: &Receipt) -> Result<HeldKey, SettleOutcome> {
        let mut t = r.as_str().split(' ');
        let parsed = match (t.next(), t.next(), t.next(), t.next(), t.next()) {
            (Some("kafka"), Some(s), Some(g), Some(o), None) => {
                match (s.parse::<u64>(), g.parse::<u64>(), o.parse::<i64>()) {
                    (Ok(s), Ok(g), Ok(o)) => Some((s, g, o)),
                    _ => None,
                }
            }
            _ => None,
        };
        let Some((session, generation, offset)) = parsed else {
            return Err(SettleOutcome::Refused(
                TransportError::refused(ErrorKind::UnknownReceipt, "not a Kafka receipt")
                    .with_code("receipt_invalid"),
            ));
        };
        let stale = |why: &str| {
            SettleOutcome::Refused(
                TransportError::refused(ErrorKind::Stale, why.to_owned())
                    .with_code("receipt_stale"),
            )
        };
        if session != self.session {
            return Err(stale(
                "a receipt of another consumer session (its records went back to the group)",
            ));
        }
        if !self.by_generation.contains_key(&generation) {
            return Err(stale(
                "the partition was reassigned since this delivery; it will be delivered again",
            ));
        }
        match self.held.get(&(generation, offset)) {
            Some(h) if h.state == State::Out => Ok((generation, offset)),
            Some(_) => Err(SettleOutcome::AlreadySettled),
            None => Err(SettleOutcome::AlreadySettled),
        }
    }

    /// Marks a record settled: the next commit records it; its key's next record goes.
    fn settled(&mut self, at: HeldKey) {
        let Some(h) = self.held.remove(&at) else {
            return;
        };
        if h.state == State::Out {
            self.out = self.out.saturating_sub(1);
        }
        if let Some(&pk) = self.by_generation.get(&at.0)
            && let Some(part) = self.parts.get_mut(&pk)
        {
            part.unsettled.remove(&at.1);
            part.settled.insert(at.1);
            part.dirty = true;
        }
        if let Some(park) = h.park {
            let slot = (at.0, park);
            let next = self.busy_keys.get_mut(&slot).and_then(VecDeque::pop_front);
            match next {
                Some(o) => self.admit((at.0, o)),
                None => {
                    self.busy_keys.remove(&slot);
                }
            }
        }
    }

    fn copy(&mut self, at: HeldKey, answer: Option<(RequestId, usize)>, what: CopyKind) {
        let Some(h) = self.held.get_mut(&at) else {
            return;
        };
        if h.state == State::Out {
            self.out = self.out.saturating_sub(1);
        }
        h.state = State::Copying;
        let msg = h.msg.clone();
        let origin = h.position;
        let (count, first_ms, last_ms) =
            (h.count, h.first_ms, h.last_ms.max(h.first_ms.unwrap_or(0)));
        let inner = self.inner.clone();
        let names = self.names.clone();
        let group = self.group.clone();
        self.copies.push(Box::pin(async move {
            let result = match what {
                CopyKind::DeadLetter(reason) => {
                    let death = Death {
                        group: &group.group,
                        reason: &reason,
                        attempts: count,
                        first_ms,
                        last_ms,
                        origin,
                    };
                    dead_letters::write(&inner, &names, &msg, &death).await
                }
                CopyKind::Retry { due, reason } => {
                    let reason: String = reason.chars().take(dead_letters::MAX_REASON).collect();
                    let mut set = vec![
                        (record::DELIVERIES, count.to_string()),
                        (record::NOT_BEFORE, due.to_string()),
                        (wire::LAST_DELIVERED, last_ms.to_string()),
                        (wire::REASON, reason),
                        (wire::ORIGIN, origin.to_string()),
                    ];
                    if let Some(f) = first_ms {
                        set.push((wire::FIRST_DELIVERED, f.to_string()));
                    }
                    let headers = record::copy_with(&msg, &set, &[]);
                    dead_letters::send(&inner, &group.redo, msg.key(), msg.payload(), headers).await
                }
            };
            Copied { at, answer, result }
        }));
    }

    fn copied(&mut self, c: Copied) {
        match c.result {
            Ok(()) => {
                self.settled(c.at);
                if let Some((id, i)) = c.answer {
                    self.awaiting_commit.push((id, i, c.at.0));
                }
            }
            Err(e) => {
                tracing::warn!("copying a Kafka record: {e}; it is delivered again");
                if let Some(h) = self.held.get_mut(&c.at) {
                    h.state = State::Waiting;
                    self.waiting
                        .push(Reverse((now_ms() + 1000, c.at.0, c.at.1)));
                }
                if let Some((id, i)) = c.answer {
                    self.answer(id, i, SettleOutcome::Refused(e));
                }
            }
        }
    }

    fn answer(&mut self, id: RequestId, i: usize, outcome: SettleOutcome) {
        if let Some(r) = self.requests.get_mut(&id)
            && let Some(slot) = r.outcomes.get_mut(i)
        {
            *slot = Some(outcome);
        }
        self.finish(id);
    }

    fn finish(&mut self, id: RequestId) {
        let done = self
            .requests
            .get(&id)
            .is_some_and(|r| r.outcomes.iter().all(Option::is_some));
        if done {
            let r = self.requests.remove(&id).unwrap();
            let outcomes = r.outcomes.into_iter().map(Option::unwrap).collect();
            let _ = self.events.send(Ok(SessionEvent::Settled { id, outcomes }));
        }
    }
}

enum CopyKind {
    DeadLetter(String),
    Retry { due: u64, reason: String },
}

fn parse_origin(s: &str) -> Option<Position> {
    let (p, o) = s.split_once(':')?;
    Some(Position::Offset {
        partition: p.parse().ok()?,
        offset: o.parse().ok()?,
    })
}
