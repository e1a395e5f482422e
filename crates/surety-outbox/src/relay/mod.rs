//! The relay: publishes committed outbox rows to Surety (docs/outbox.md, "Relay").
//!
//! One relay per database is active (Postgres: a session advisory lock; SQLite: a lease
//! row); the others stand by and take over when it dies. The active relay:
//!
//! 1. publishes the rows it (or a dead predecessor) claimed but did not settle, in
//!    `relay_seq` order, with the sequences stored in them;
//! 2. otherwise **claims** the oldest unclaimed pending rows: in one committed
//!    transaction it stores consecutive `relay_seq`s in them (in id order) and advances
//!    `next_seq`;
//! 3. publishes them with `producer_id` = the database's outbox producer id and
//!    `sequence` = `relay_seq`, then marks them `sent` (or `dead`, or counts a failed
//!    attempt) in one transaction.
//!
//! A crash anywhere between 2 and 3 leaves claimed rows whose sequences are already
//! durable: the next leader publishes them again with the same sequences and the broker
//! answers `duplicate: true` instead of storing a second copy. A claim takes only rows
//! with no sequence, wherever they sit in id order, so a row whose transaction commits
//! after later rows is claimed by the next claim after its commit: no cursor, no gap.

mod pg;
mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use surety_core::{
    ErrorKind, Message, Producer, PublishError, Published, Publisher, RetryPolicy, TransportError,
};
use tokio::sync::watch;

use crate::db::Database;
use crate::error::RelayError;
use crate::metrics as m;

/// The broker checks a producer's sequences only above `highest - 10_000`
/// (`sequence_too_old` below). A leader has at most one batch outstanding, so batches are
/// kept well under that window.
pub const MAX_BATCH: usize = 5_000;

/// Settings of a [`Relay`].
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows claimed and published per round (1..=[`MAX_BATCH`]).
    pub batch_size: usize,
    /// Unconfirmed publish attempts (broker down, timeouts) after which a row is marked
    /// `dead` with the last error; `None` (the default): never — the rows stay pending
    /// and are retried with backoff until the broker confirms them, however long the
    /// outage (the backlog gauges and alerts report it). Giving up would leave rows
    /// that only a person can resend, and that may already be stored. A row the broker
    /// refuses on its merits (unknown topic, too large, invalid) is marked dead at once
    /// either way: retrying it fails the same way.
    pub max_attempts: Option<u32>,
    /// Backoff between attempts of a failed batch: doubles from `backoff_initial` up to
    /// `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Retries inside one attempt (the client's own, for unavailable servers).
    pub publish_retry: RetryPolicy,
    /// When idle, how often to look for rows without a wake-up (Postgres wakes on
    /// LISTEN/NOTIFY at once and polls only as a fallback; SQLite polls).
    pub poll_interval: Duration,
    /// How often a standby relay tries to become the active one.
    pub standby_interval: Duration,
    /// SQLite: how long the active relay's lease lasts without renewal; a standby takes
    /// over after it runs out (Postgres needs none: its lock dies with the connection).
    pub lease: Duration,
    /// Sent rows older than this are deleted; `None` keeps them.
    pub sent_retention: Option<Duration>,
    /// How often the pending-rows gauges are sampled (and sent rows cleaned up).
    pub maintenance_interval: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 1_000,
            max_attempts: None,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            publish_retry: RetryPolicy {
                deadline: Duration::from_secs(10),
                ..RetryPolicy::default()
            },
            poll_interval: Duration::from_millis(500),
            standby_interval: Duration::from_millis(500),
            lease: Duration::from_secs(10),
            sent_retention: Some(Duration::from_secs(24 * 3600)),
            maintenance_interval: Duration::from_secs(5),
        }
    }
}

/// Live counters of a relay (also exported as metrics, [`crate::metrics`]).
#[derive(Debug, Default)]
pub struct RelayCounters {
    published: AtomicU64,
    duplicates: AtomicU64,
    failures: AtomicU64,
    dead: AtomicU64,
    takeovers: AtomicU64,
}

/// A snapshot of [`RelayCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Rows confirmed by the broker (duplicates included).
    pub published: u64,
    /// Of those, broker duplicate hits: rows published again after a lost mark-sent.
    pub duplicates: u64,
    /// Failed publish attempts, per row.
    pub failures: u64,
    /// Rows marked dead.
    pub dead: u64,
    /// Times this relay became the active one.
    pub takeovers: u64,
}

impl RelayCounters {
    pub fn snapshot(&self) -> RelayStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RelayStats {
            published: get(&self.published),
            duplicates: get(&self.duplicates),
            failures: get(&self.failures),
            dead: get(&self.dead),
            takeovers: get(&self.takeovers),
        }
    }
}

/// Asks a running relay to stop after its current step. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RelayStop(Arc<watch::Sender<bool>>);

impl RelayStop {
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

/// A claimed row, as the relay publishes it.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub id: i64,
    pub seq: u64,
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: String,
    pub attempts: i32,
}

/// The columns every row query selects, in [`Row`] order (`headers` as text).
pub(crate) type RowTuple = (i64, i64, String, Option<Vec<u8>>, Vec<u8>, String, i32);

impl From<RowTuple> for Row {
    fn from(t: RowTuple) -> Self {
        Row {
            id: t.0,
            seq: t.1 as u64,
            topic: t.2,
            key: t.3,
            payload: t.4,
            headers: t.5,
            attempts: t.6,
        }
    }
}

impl Row {
    fn message(&self) -> Result<Message, String> {
        let headers: surety_core::Headers = serde_json::from_str(&self.headers)
            .map_err(|e| format!("headers are not a JSON object of strings: {e}"))?;
        Ok(Message {
            payload: self.payload.clone(),
            key: self.key.clone(),
            headers,
            ..Message::default()
        })
    }
}

/// What one round decided for its rows; written in one transaction.
#[derive(Debug, Default)]
pub(crate) struct Settlement {
    /// (id, partition, offset)
    pub sent: Vec<(i64, u32, u64)>,
    /// (id, error): attempt counted, row stays pending with its sequence.
    pub failed: Vec<(i64, String)>,
    /// (id, reason)
    pub dead: Vec<(i64, String)>,
}

/// How a leader's term ended.
pub(crate) enum LeadEnd {
    Stopped,
    /// SQLite: another relay holds the lease now.
    LostLease,
    /// A database error: step down, wait, try again.
    Database(sqlx::Error),
    Fatal(RelayError),
}

impl From<sqlx::Error> for LeadEnd {
    fn from(e: sqlx::Error) -> Self {
        LeadEnd::Database(e)
    }
}

/// The active relay's hold on the database.
pub(crate) enum Leader {
    Pg(pg::PgLeader),
    Sqlite(sqlite::SqliteLeader),
}

impl Leader {
    fn producer_id(&self) -> &str {
        match self {
            Leader::Pg(l) => &l.producer_id,
            Leader::Sqlite(l) => &l.producer_id,
        }
    }

    async fn outstanding(&mut self) -> Result<Vec<Row>, LeadEnd> {
        match self {
            Leader::Pg(l) => l.outstanding().await,
            Leader::Sqlite(l) => l.outstanding().await,
        }
    }

    async fn claim(&mut self, n: usize) -> Result<Vec<Row>, LeadEnd> {
        match self {
            Leader::Pg(l) => l.claim(n).await,
            Leader::Sqlite(l) => l.claim(n).await,
        }
    }

    async fn settle(&mut self, s: &Settlement) -> Result<(), LeadEnd> {
        match self {
            Leader::Pg(l) => l.settle(s).await,
            Leader::Sqlite(l) => l.settle(s).await,
        }
    }

    async fn wait_for_rows(&mut self, timeout: Duration, stop: &mut watch::Receiver<bool>) {
        match self {
            Leader::Pg(l) => l.wait_for_rows(timeout, stop).await,
            Leader::Sqlite(_) => sleep_or_stop(timeout, stop).await,
        }
    }

    /// SQLite: (pending rows, age of the oldest in seconds), then deletes expired sent
    /// rows, in the leader's turn (one writer at a time). Postgres: `None`, its
    /// maintenance runs in a task of its own ([`spawn_pg_maintenance`]).
    async fn maintain(
        &mut self,
        retention: Option<Duration>,
    ) -> Result<Option<(i64, f64)>, LeadEnd> {
        match self {
            Leader::Pg(_) => Ok(None),
            Leader::Sqlite(l) => Ok(Some(l.maintain(retention).await?)),
        }
    }

    async fn release(self) {
        match self {
            Leader::Pg(l) => l.release().await,
            Leader::Sqlite(l) => l.release().await,
        }
    }
}

/// Aborts its task when dropped: maintenance ends with the leadership it serves.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Postgres maintenance beside the leader, on the pool: it must never stall relaying.
fn spawn_pg_maintenance(
    pool: sqlx::PgPool,
    every: Duration,
    retention: Option<Duration>,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match pg::maintain(&pool, retention).await {
                Ok((pending, age)) => set_pending_gauges(pending, age),
                // The leader notices a broken database itself; the next tick tries again.
                Err(e) => tracing::debug!(error = %e, "outbox maintenance failed"),
            }
        }
    }))
}

fn set_pending_gauges(pending: i64, oldest_age_seconds: f64) {
    metrics::gauge!(m::PENDING_ROWS).set(pending as f64);
    metrics::gauge!(m::OLDEST_PENDING_AGE_SECONDS).set(oldest_age_seconds);
}

/// Samples the pending rows and the age of the oldest (seconds, 0 when none) and sets
/// the two gauges ([`m::PENDING_ROWS`], [`m::OLDEST_PENDING_AGE_SECONDS`]). The active
/// relay does this itself every `maintenance_interval`; call it to keep the gauges
/// current while no relay can run, e.g. while the Surety server is unreachable (the
/// backlog is exactly what an alert should see then).
pub async fn sample_pending(db: &Database) -> Result<(i64, f64), sqlx::Error> {
    let (pending, age) = match db {
        Database::Postgres(p) => pg::pending(p).await?,
        Database::Sqlite(p) => sqlite::pending(p).await?,
    };
    set_pending_gauges(pending, age);
    Ok((pending, age))
}

/// Sleeps `d`, or less if a stop is asked.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) {
    if *stop.borrow() {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.changed() => {}
    }
}

/// Publishes outbox rows of one database through one transport (a Surety server, the
/// in-process broker, or a backend).
pub struct Relay {
    db: Database,
    publisher: Arc<dyn Publisher>,
    config: RelayConfig,
    counters: Arc<RelayCounters>,
    stop: Arc<watch::Sender<bool>>,
    /// Tells this relay apart from others in the SQLite lease row and in logs.
    instance: String,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("transport", &self.publisher.capabilities().transport)
            .field("config", &self.config)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay publishing through `publisher` (a `surety_client::Client`, an
    /// `Arc<dyn Transport>`, ...).
    pub fn new(db: Database, publisher: impl Publisher + 'static, config: RelayConfig) -> Relay {
        Self::with_publisher(db, Arc::new(publisher), config)
    }

    pub fn with_publisher(
        db: Database,
        publisher: Arc<dyn Publisher>,
        mut config: RelayConfig,
    ) -> Relay {
        config.batch_size = config.batch_size.clamp(1, MAX_BATCH);
        config.max_attempts = config.max_attempts.map(|n| n.max(1));
        Relay {
            db,
            publisher,
            config,
            counters: Arc::default(),
            stop: Arc::new(watch::Sender::new(false)),
            instance: format!("{}-{:08x}", std::process::id(), rand::random::<u32>()),
        }
    }

    pub fn stop_handle(&self) -> RelayStop {
        RelayStop(self.stop.clone())
    }

    pub fn counters(&self) -> Arc<RelayCounters> {
        self.counters.clone()
    }

    /// Runs until stopped ([`RelayStop`]) or a fatal error. Database and broker outages
    /// are waited out.
    pub async fn run(self) -> Result<RelayStats, RelayError> {
        m::describe();
        let mut stop = self.stop.subscribe();
        self.check_schema().await?;
        let mut db_failures = 0u32;
        loop {
            if *stop.borrow() {
                return Ok(self.counters.snapshot());
            }
            let leader = match self.become_leader().await {
                Ok(Some(l)) => l,
                Ok(None) => {
                    sleep_or_stop(self.config.standby_interval, &mut stop).await;
                    continue;
                }
                Err(e) => {
                    db_failures += 1;
                    tracing::warn!(error = %e, "outbox relay: database unavailable; retrying");
                    sleep_or_stop(self.backoff(db_failures), &mut stop).await;
                    continue;
                }
            };
            self.counters.takeovers.fetch_add(1, Ordering::Relaxed);
            tracing::info!(instance = %self.instance, "outbox relay: active");
            let mut leader = leader;
            let end = self.lead(&mut leader, &mut stop).await;
            leader.release().await;
            match end {
                LeadEnd::Stopped => return Ok(self.counters.snapshot()),
                LeadEnd::Fatal(e) => return Err(e),
                LeadEnd::LostLease => {
                    tracing::warn!("outbox relay: another relay took over the lease; standing by");
                }
                LeadEnd::Database(e) => {
                    db_failures += 1;
                    tracing::warn!(error = %e, "outbox relay: database error; stepping down and retrying");
                    sleep_or_stop(self.backoff(db_failures), &mut stop).await;
                }
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
        self.config
            .backoff_initial
            .mul_f64(exp)
            .min(self.config.backoff_max)
    }

    async fn check_schema(&self) -> Result<(), RelayError> {
        let sql = "SELECT count(*) FROM surety_outbox_relay";
        let found: Result<i64, sqlx::Error> = match &self.db {
            Database::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await,
            Database::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await,
        };
        match found {
            Ok(n) if n > 0 => Ok(()),
            Ok(_) => Err(RelayError::NotMigrated(sqlx::Error::RowNotFound)),
            // A missing table is a setup error; anything else (the database is down) is
            // waited out by the main loop like any outage.
            Err(sqlx::Error::Database(e)) => Err(RelayError::NotMigrated(sqlx::Error::Database(e))),
            Err(_) => Ok(()),
        }
    }

    async fn become_leader(&self) -> Result<Option<Leader>, sqlx::Error> {
        Ok(match &self.db {
            Database::Postgres(pool) => pg::PgLeader::acquire(pool).await?.map(Leader::Pg),
            Database::Sqlite(pool) => {
                sqlite::SqliteLeader::acquire(pool, &self.instance, self.config.lease)
                    .await?
                    .map(Leader::Sqlite)
            }
        })
    }

    async fn lead(&self, leader: &mut Leader, stop: &mut watch::Receiver<bool>) -> LeadEnd {
        match self.lead_inner(leader, stop).await {
            Ok(()) => LeadEnd::Stopped,
            Err(end) => end,
        }
    }

    async fn lead_inner(
        &self,
        leader: &mut Leader,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), LeadEnd> {
        let producer = Producer::builder_shared(self.publisher.clone())
            .identity(leader.producer_id(), 0)
            .retry(self.config.publish_retry)
            .build();
        // Rows a dead predecessor claimed: their sequences are durable, publish them
        // first (and again) so that the broker answers duplicates for those it stored.
        let mut rows = leader.outstanding().await?;
        let mut failed_rounds = 0u32;
        let _maintenance = match leader {
            Leader::Pg(l) => Some(spawn_pg_maintenance(
                l.pool().clone(),
                self.config.maintenance_interval,
                self.config.sent_retention,
            )),
            Leader::Sqlite(_) => None,
        };
        let mut next_maintenance = tokio::time::Instant::now();
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= next_maintenance {
                if let Some((pending, age)) = leader.maintain(self.config.sent_retention).await? {
                    set_pending_gauges(pending, age);
                }
                next_maintenance = tokio::time::Instant::now() + self.config.maintenance_interval;
            }
            if rows.is_empty() {
                rows = leader.claim(self.config.batch_size).await?;
                if rows.is_empty() {
                    leader.wait_for_rows(self.config.poll_interval, stop).await;
                    continue;
                }
            }
            let (settlement, retry) = self.publish(&producer, std::mem::take(&mut rows)).await?;
            leader.settle(&settlement).await?;
            rows = retry;
            if rows.is_empty() {
                failed_rounds = 0;
            } else {
                failed_rounds += 1;
                sleep_or_stop(self.backoff(failed_rounds), stop).await;
            }
        }
    }

    /// Publishes `rows` (in sequence order), topic by topic. Returns what to record and
    /// the rows to try again (attempts already counted), still in sequence order.
    async fn publish(
        &self,
        producer: &Producer,
        rows: Vec<Row>,
    ) -> Result<(Settlement, Vec<Row>), LeadEnd> {
        let mut settlement = Settlement::default();
        let mut retry = Vec::new();
        let mut by_topic: BTreeMap<String, Vec<(Row, Message)>> = BTreeMap::new();
        for row in rows {
            match row.message() {
                Ok(msg) => by_topic
                    .entry(row.topic.clone())
                    .or_default()
                    .push((row, msg)),
                Err(reason) => settlement.dead.push((row.id, reason)),
            }
        }
        for (topic, group) in by_topic {
            self.publish_topic(producer, &topic, group, &mut settlement, &mut retry)
                .await?;
        }
        retry.sort_by_key(|r| r.seq);
        self.count(&settlement);
        Ok((settlement, retry))
    }

    async fn publish_topic(
        &self,
        producer: &Producer,
        topic: &str,
        group: Vec<(Row, Message)>,
        settlement: &mut Settlement,
        retry: &mut Vec<Row>,
    ) -> Result<(), LeadEnd> {
        let batch = producer.prepare_sequenced(group.iter().map(|(r, m)| (m.clone(), r.seq)));
        let err = match producer.send(topic, &batch).await {
            Ok(published) => {
                for ((row, _), p) in group.iter().zip(published) {
                    self.sent(settlement, row, p);
                }
                return Ok(());
            }
            Err(e) => e,
        };
        match err {
            PublishError::Refused(e) if is_credentials(&e) => {
                Err(LeadEnd::Fatal(RelayError::Unauthorized(e)))
            }
            // The broker refuses a whole batch for one bad message: send one by one so
            // only the bad rows end dead and the rest go through, in order.
            PublishError::Refused(e) if group.len() == 1 => {
                let (row, _) = &group[0];
                settlement.dead.push((row.id, refusal(&e)));
                Ok(())
            }
            PublishError::Refused(_) => {
                let mut rest = group.into_iter();
                while let Some((row, msg)) = rest.next() {
                    let one = producer.prepare_sequenced([(msg, row.seq)]);
                    match producer.send(topic, &one).await {
                        Ok(mut p) => match p.pop() {
                            Some(p) => self.sent(settlement, &row, p),
                            None => self.failed(settlement, retry, row, "empty answer".into()),
                        },
                        Err(PublishError::Refused(e)) if is_credentials(&e) => {
                            return Err(LeadEnd::Fatal(RelayError::Unauthorized(e)));
                        }
                        Err(PublishError::Refused(e)) => {
                            settlement.dead.push((row.id, refusal(&e)))
                        }
                        Err(e) => {
                            // Keep order: this row and every later one wait for the retry.
                            let reason = e.to_string();
                            self.failed(settlement, retry, row, reason.clone());
                            for (row, _) in rest.by_ref() {
                                self.failed(settlement, retry, row, reason.clone());
                            }
                        }
                    }
                }
                Ok(())
            }
            other => {
                let reason = other.to_string();
                for (row, _) in group {
                    self.failed(settlement, retry, row, reason.clone());
                }
                Ok(())
            }
        }
    }

    fn sent(&self, s: &mut Settlement, row: &Row, p: Published) {
        if p.duplicate {
            self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(m::DUPLICATES).increment(1);
        }
        s.sent.push((row.id, p.partition(), p.offset()));
    }

    /// Counts a failed attempt; at `max_attempts` (if set) the row ends dead with the
    /// reason.
    fn failed(&self, s: &mut Settlement, retry: &mut Vec<Row>, mut row: Row, reason: String) {
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::FAILURES).increment(1);
        row.attempts = row.attempts.saturating_add(1);
        if self
            .config
            .max_attempts
            .is_some_and(|max| row.attempts as u32 >= max)
        {
            s.dead.push((
                row.id,
                format!("gave up after {} attempts: {reason}", row.attempts),
            ));
        } else {
            s.failed.push((row.id, reason));
            retry.push(row);
        }
    }

    fn count(&self, s: &Settlement) {
        let sent = s.sent.len() as u64;
        let dead = s.dead.len() as u64;
        self.counters.published.fetch_add(sent, Ordering::Relaxed);
        self.counters.dead.fetch_add(dead, Ordering::Relaxed);
        metrics::counter!(m::PUBLISHED).increment(sent);
        metrics::counter!(m::DEAD).increment(dead);
        for (id, reason) in &s.dead {
            tracing::warn!(row = id, %reason, "outbox row marked dead");
        }
    }
}

/// Refusals that are about the relay, not the row.
fn is_credentials(e: &TransportError) -> bool {
    e.kind == ErrorKind::Unauthorized
}

/// The dead reason of a refused row: the broker's stable code first.
fn refusal(e: &TransportError) -> String {
    match &e.code {
        Some(code) => format!("refused by the broker ({code}): {}", e.message),
        None => format!("refused by the broker: {e}"),
    }
}
