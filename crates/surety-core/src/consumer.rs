//! A consumer that acks only after its handler succeeded: `Ok` acks, `Err` nacks with the
//! error as reason, a panic nacks too. At most `max_in_flight` handlers run at once (the
//! server's credit window enforces it). A stop lets running handlers finish and settles
//! them before returning. Transport failures reconnect; receipts stay valid across
//! connections where the transport says so (`receipts_survive_reconnect`), so handlers
//! that outlive a connection are still acked. Written once over [`Subscriber`] and
//! [`Session`]: every transport gets the same behaviour.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::error::TransportError;
use crate::gap::GapDetector;
use crate::message::{Delivery, Receipt};
use crate::retry::RetryPolicy;
use crate::settled_ledger::{self, Claim, MemoryLedger, SettledLedger};
use crate::transport::{
    RequestId, Session, SessionEvent, Settle, SettleOutcome, Subscriber, Subscription,
};

/// Why [`ConsumerBuilder::run`] ended without being stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumeError {
    /// The subscription was refused on its merits (unknown topic, bad name, auth).
    #[error("consume refused: {0}")]
    Refused(#[source] TransportError),
    /// The broker stayed unreachable past the reconnect deadline.
    #[error("no connection for {elapsed:?} after {attempts} attempts: {last}")]
    Disconnected {
        attempts: u32,
        elapsed: Duration,
        #[source]
        last: TransportError,
    },
}

/// What a consumer did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    pub delivered: u64,
    pub acked: u64,
    /// Handler errors and panics, nacked.
    pub nacked: u64,
    pub panicked: u64,
    /// Acks or nacks refused (e.g. the lease expired first), counted per request; or
    /// dropped unanswered at a reconnect where receipts do not survive one.
    pub settle_errors: u64,
    pub reconnects: u64,
    /// Deliveries acked without running the handler: their (producer id, sequence) had
    /// been handled already ([`ConsumerBuilder::settled_ledger`]).
    pub duplicates_dropped: u64,
}

/// Asks a running consumer to stop gracefully. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StopHandle(Arc<watch::Sender<bool>>);

impl Default for StopHandle {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(false)))
    }
}

impl StopHandle {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stop taking deliveries; finish and settle the running handlers; then return.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }

    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }
}

/// Entry point: `Consumer::builder(transport, topic, group)`.
#[derive(Debug)]
pub struct Consumer;

impl Consumer {
    pub fn builder(
        subscriber: impl Subscriber + 'static,
        topic: impl Into<String>,
        group: impl Into<String>,
    ) -> ConsumerBuilder {
        Self::builder_shared(Arc::new(subscriber), topic, group)
    }

    /// For a transport already shared (`Arc<dyn Transport>` coerces).
    pub fn builder_shared(
        subscriber: Arc<dyn Subscriber>,
        topic: impl Into<String>,
        group: impl Into<String>,
    ) -> ConsumerBuilder {
        let ledger = settled_ledger::needed(&subscriber.capabilities().publish_dedupe)
            .then(|| Arc::new(MemoryLedger::default()) as Arc<dyn SettledLedger>);
        ConsumerBuilder {
            subscriber,
            ledger,
            topic: topic.into(),
            group: group.into(),
            max_in_flight: 32,
            lease: None,
            nack_delay: Duration::ZERO,
            reconnect: RetryPolicy {
                deadline: Duration::from_secs(300),
                ..RetryPolicy::default()
            },
            stop: StopHandle::new(),
            gaps: None,
            ack_linger: DEFAULT_ACK_LINGER,
        }
    }
}

/// Settings of a consumer; [`ConsumerBuilder::run`] starts it.
pub struct ConsumerBuilder {
    subscriber: Arc<dyn Subscriber>,
    ledger: Option<Arc<dyn SettledLedger>>,
    topic: String,
    group: String,
    max_in_flight: u32,
    lease: Option<Duration>,
    nack_delay: Duration,
    reconnect: RetryPolicy,
    stop: StopHandle,
    gaps: Option<Arc<Mutex<GapDetector>>>,
    ack_linger: Duration,
}

impl std::fmt::Debug for ConsumerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("transport", &self.subscriber.capabilities().transport)
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("max_in_flight", &self.max_in_flight)
            .field("lease", &self.lease)
            .field("nack_delay", &self.nack_delay)
            .field("ack_linger", &self.ack_linger)
            .field("settled_ledger", &self.ledger.is_some())
            .finish_non_exhaustive()
    }
}

/// How long a handler's ack may wait for others to share its request (see
/// [`ConsumerBuilder::ack_linger`]).
const DEFAULT_ACK_LINGER: Duration = Duration::from_millis(1);
/// Receipts in one Ack request at most; a full batch goes out at once.
const MAX_ACK_BATCH: usize = 256;

/// A handler's verdict on one delivery.
enum Outcome {
    Ack,
    Nack(String),
}

/// A finished handler: its receipt, the session it was delivered on, and the verdict.
type Finished = (Receipt, u64, Outcome, bool);

/// A handler's task returns its error text; a panic surfaces as the task's `JoinError`.
type HandlerResult = Result<(), String>;

impl ConsumerBuilder {
    /// Handlers running at once (at least 1; default 32).
    pub fn max_in_flight(mut self, n: u32) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Lease of each delivery (default: the topic's `ack_wait_ms`). A handler that runs
    /// longer loses its delivery to a redelivery.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Minimum delay before a nacked message comes back (the topic's backoff applies too).
    pub fn nack_delay(mut self, delay: Duration) -> Self {
        self.nack_delay = delay;
        self
    }

    /// Backoff between reconnects; `deadline` is the longest outage tolerated.
    pub fn reconnect(mut self, policy: RetryPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// Uses `stop` to stop this consumer (instead of its own handle).
    pub fn stop_with(mut self, stop: StopHandle) -> Self {
        self.stop = stop;
        self
    }

    /// Feeds every delivery that carries `producer_id` + `sequence` to `detector` as it
    /// arrives, before its handler runs, so lost messages show up as gaps (G4) and in the
    /// `surety_client_*` gap metrics. A redelivery (after a nack, an expired lease or a
    /// restart) counts as a duplicate there: at-least-once delivery repeats messages, it
    /// must never skip one. Share one detector among the consumers of a group, as
    /// each sees only part of the stream.
    pub fn detect_gaps(mut self, detector: Arc<Mutex<GapDetector>>) -> Self {
        self.gaps = Some(detector);
        self
    }

    /// Acks of handlers that finish within `linger` of each other travel in one request
    /// (and one journal commit on the server); default 1 ms. Handlers finish one at a
    /// time, so without it nearly every ack was a request of its own (measured: 1.05
    /// receipts per request under `surety bench server`). An ack goes out at once when
    /// no other handler is running, or when 256 are waiting; `Duration::ZERO` sends each
    /// finished handler's ack immediately. Nacks never wait.
    pub fn ack_linger(mut self, linger: Duration) -> Self {
        self.ack_linger = linger;
        self
    }

    /// Drops a delivery whose (producer id, sequence) this consumer already handled (acked
    /// unrun, counted in `duplicates_dropped`): the consumer side of dedupe, for copies
    /// the broker stored twice. On by default, with a [`MemoryLedger`], where the
    /// transport's publish dedupe has a time window or none (NATS JetStream: a retry
    /// after `duplicate_window` is stored again); off where the broker remembers
    /// sequences per producer.
    pub fn settled_ledger(mut self, ledger: Arc<dyn SettledLedger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Runs the handler on every copy, also where [`settled_ledger`](Self::settled_ledger)
    /// would be on by default.
    pub fn without_settled_ledger(mut self) -> Self {
        self.ledger = None;
        self
    }

    /// The handle that stops this consumer.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Runs `handler` on every delivery until stopped (then returns the stats) or until a
    /// final error.
    pub async fn run<F, Fut, E>(self, handler: F) -> Result<ConsumerStats, ConsumeError>
    where
        F: Fn(Delivery) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let handler = Arc::new(handler);
        let mut run = Run {
            cfg: &self,
            handlers: JoinSet::new(),
            running: HashMap::new(),
            unanswered: BTreeMap::new(),
            pending_acks: Vec::new(),
            ack_deadline: None,
            next_request_id: 1,
            stats: ConsumerStats::default(),
            stop: self.stop.0.subscribe(),
        };
        let mut outage: Option<(Instant, u32)> = None;
        for session in 1u64.. {
            let last = match run.session(session, &handler).await {
                Ok(Ended::Stopped) => return Ok(run.stats),
                Ok(Ended::Broken {
                    made_progress,
                    error,
                }) => {
                    if made_progress {
                        outage = None;
                    }
                    error
                }
                Err(e) => return Err(e),
            };
            let (since, attempts) = outage.get_or_insert((Instant::now(), 0));
            *attempts += 1;
            let delay = self.reconnect.delay(*attempts);
            if since.elapsed() + delay >= self.reconnect.deadline {
                return Err(ConsumeError::Disconnected {
                    attempts: *attempts,
                    elapsed: since.elapsed(),
                    last,
                });
            }
            tracing::warn!(error = %last, ?delay, "consumer connection lost; reconnecting");
            run.stats.reconnects += 1;
            tokio::time::sleep(delay).await;
        }
        unreachable!("sessions are counted by an unbounded range")
    }
}

/// What woke a session up.
enum Event {
    Stop,
    Session(Result<SessionEvent, TransportError>),
    Finished(Result<(tokio::task::Id, HandlerResult), tokio::task::JoinError>),
    /// The ack linger ran out.
    FlushAcks,
}

enum Ended {
    Stopped,
    Broken {
        /// The session got at least one answer: the outage clock restarts.
        made_progress: bool,
        error: TransportError,
    },
}

/// State that outlives one connection.
struct Run<'a> {
    cfg: &'a ConsumerBuilder,
    /// One task per running handler, so a panic is caught as that task's `JoinError`.
    handlers: JoinSet<HandlerResult>,
    /// The receipt and session of each running handler task.
    running: HashMap<tokio::task::Id, (Receipt, u64)>,
    /// Acks and nacks sent and not answered yet; sent again after a reconnect (a repeated
    /// ack is harmless, a repeated nack is refused as stale).
    unanswered: BTreeMap<RequestId, Settle>,
    /// Receipts of handlers that returned `Ok`, waiting (up to the linger) to be acked
    /// together. Kept across connections: receipts outlive them.
    pending_acks: Vec<Receipt>,
    /// When `pending_acks` must go out.
    ack_deadline: Option<tokio::time::Instant>,
    next_request_id: u64,
    stats: ConsumerStats,
    stop: watch::Receiver<bool>,
}

impl Run<'_> {
    async fn session<F, Fut, E>(
        &mut self,
        session: u64,
        handler: &Arc<F>,
    ) -> Result<Ended, ConsumeError>
    where
        F: Fn(Delivery) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let mut stopping = *self.stop.borrow();
        if stopping && self.is_idle() {
            return Ok(Ended::Stopped);
        }
        // Handlers still running from an earlier connection keep their share of the
        // window; each frees it with a credit when it ends.
        let credits = if stopping {
            0
        } else {
            self.cfg
                .max_in_flight
                .saturating_sub(self.handlers.len() as u32)
        };
        let subscription = Subscription {
            topic: self.cfg.topic.clone(),
            group: self.cfg.group.clone(),
            credits,
            lease: self.cfg.lease,
        };
        let mut conn = match self.cfg.subscriber.subscribe(&subscription).await {
            Ok(s) => s,
            Err(e) => return self.broken(e, false),
        };
        if self
            .cfg
            .subscriber
            .capabilities()
            .receipts_survive_reconnect
        {
            for (id, settle) in &self.unanswered {
                conn.settle(*id, settle.clone());
            }
        } else if !self.unanswered.is_empty() {
            // Void on a new connection: the broker redelivers those messages.
            tracing::warn!(
                dropped = self.unanswered.len(),
                "settlements unanswered when the connection broke are void on this transport"
            );
            self.stats.settle_errors += self.unanswered.len() as u64;
            self.unanswered.clear();
        }
        self.flush_acks(&mut *conn);
        if stopping {
            conn.drain();
        }
        let mut drained = false;
        let mut made_progress = false;
        loop {
            if stopping && drained && self.is_idle() {
                return Ok(Ended::Stopped);
            }
            let deadline = self.ack_deadline;
            let event = tokio::select! {
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => Event::FlushAcks,
                _ = self.stop.wait_for(|s| *s), if !stopping => Event::Stop,
                r = conn.next() => Event::Session(r),
                Some(f) = self.handlers.join_next_with_id(), if !self.handlers.is_empty() => Event::Finished(f),
            };
            match event {
                Event::Stop => {
                    stopping = true;
                    conn.drain();
                }
                Event::Session(Ok(event)) => {
                    made_progress = true;
                    match event {
                        SessionEvent::Deliveries(batch) => {
                            for d in batch {
                                self.spawn_handler(session, handler, d);
                            }
                        }
                        SessionEvent::Settled { id, outcomes } => {
                            self.unanswered.remove(&id);
                            let refused = outcomes.iter().find_map(|o| match o {
                                SettleOutcome::Refused(e) => Some(e),
                                _ => None,
                            });
                            if let Some(e) = refused {
                                self.stats.settle_errors += 1;
                                tracing::warn!(error = %e, "ack or nack refused");
                            }
                        }
                        SessionEvent::Drained => drained = true,
                    }
                }
                Event::Session(Err(e)) => return self.broken(e, made_progress),
                Event::FlushAcks => self.flush_acks(&mut *conn),
                Event::Finished(first) => {
                    // Handlers that finished meanwhile are settled with it: their acks
                    // travel in one request and one journal commit on the server.
                    let mut done = vec![self.finished(first)];
                    while let Some(next) = self.handlers.try_join_next_with_id() {
                        done.push(self.finished(next));
                    }
                    let mut credits = 0;
                    for (receipt, from_session, outcome, panicked) in done {
                        if from_session != session && !stopping {
                            credits += 1;
                        }
                        match outcome {
                            Outcome::Ack => self.pending_acks.push(receipt),
                            nack => self.settle(&mut *conn, vec![receipt], nack, panicked),
                        }
                    }
                    // Nothing else running means nothing to wait for.
                    if self.pending_acks.len() >= MAX_ACK_BATCH
                        || self.handlers.is_empty()
                        || self.cfg.ack_linger.is_zero()
                    {
                        self.flush_acks(&mut *conn);
                    } else if self.ack_deadline.is_none() && !self.pending_acks.is_empty() {
                        self.ack_deadline = Some(tokio::time::Instant::now() + self.cfg.ack_linger);
                    }
                    if credits > 0 {
                        conn.credit(credits);
                    }
                }
            }
        }
    }

    /// No handler running, and every verdict sent and answered.
    fn is_idle(&self) -> bool {
        self.handlers.is_empty() && self.pending_acks.is_empty() && self.unanswered.is_empty()
    }

    /// Sends the waiting acks as one request.
    fn flush_acks(&mut self, conn: &mut dyn Session) {
        self.ack_deadline = None;
        if !self.pending_acks.is_empty() {
            let receipts = std::mem::take(&mut self.pending_acks);
            self.settle(conn, receipts, Outcome::Ack, false);
        }
    }

    fn broken(&self, error: TransportError, made_progress: bool) -> Result<Ended, ConsumeError> {
        if error.retryable() {
            Ok(Ended::Broken {
                made_progress,
                error,
            })
        } else {
            Err(ConsumeError::Refused(error))
        }
    }

    /// Runs the handler in its own task so that a panic is caught as a `JoinError`.
    fn spawn_handler<F, Fut, E>(&mut self, session: u64, handler: &Arc<F>, delivery: Delivery)
    where
        F: Fn(Delivery) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.stats.delivered += 1;
        if let (Some(gaps), Some(producer), Some(sequence)) =
            (&self.cfg.gaps, &delivery.producer_id, delivery.sequence)
        {
            gaps.lock()
                .unwrap()
                .observe(producer, delivery.partition, sequence);
        }
        let receipt = delivery.receipt.clone();
        // A copy of a message handled before is acked as if its handler ran and
        // succeeded; one whose other delivery is still running is handed back to come
        // again after it (see `Claim::Running`); a stamp is claimed until its handler ends.
        let stamp = match (&self.cfg.ledger, &delivery.producer_id, delivery.sequence) {
            (Some(ledger), Some(producer), Some(sequence)) => {
                let verdict: Option<HandlerResult> = match ledger.claim(producer, sequence) {
                    Claim::Run => None,
                    Claim::Handled => {
                        self.stats.duplicates_dropped += 1;
                        metrics::counter!("surety_consumer_duplicates_dropped_total").increment(1);
                        Some(Ok(()))
                    }
                    Claim::Running => Some(Err(format!(
                        "another delivery of {producer}/{sequence} is being handled; \
                         handed back until it ends"
                    ))),
                };
                if let Some(verdict) = verdict {
                    let task = self.handlers.spawn(async move { verdict });
                    self.running.insert(task.id(), (receipt, session));
                    return;
                }
                Some(ClaimGuard {
                    ledger: ledger.clone(),
                    producer: producer.clone(),
                    sequence,
                    handled: false,
                })
            }
            _ => None,
        };
        let handler = handler.clone();
        let task = self.handlers.spawn(async move {
            let mut claim = stamp;
            let result = handler(delivery).await.map_err(|e| e.to_string());
            if let Some(c) = &mut claim {
                c.handled = result.is_ok();
            }
            result
        });
        self.running.insert(task.id(), (receipt, session));
    }

    /// The verdict of a handler task that ended.
    fn finished(
        &mut self,
        joined: Result<(tokio::task::Id, HandlerResult), tokio::task::JoinError>,
    ) -> Finished {
        let (id, outcome, panicked) = match joined {
            Ok((id, Ok(()))) => (id, Outcome::Ack, false),
            Ok((id, Err(reason))) => (id, Outcome::Nack(reason), false),
            Err(e) => {
                let id = e.id();
                if e.is_panic() {
                    let reason = format!("handler panicked: {}", panic_text(e.into_panic()));
                    (id, Outcome::Nack(reason), true)
                } else {
                    (id, Outcome::Nack(format!("handler cancelled: {e}")), false)
                }
            }
        };
        let (receipt, session) = self
            .running
            .remove(&id)
            .expect("every handler task is registered when spawned");
        (receipt, session, outcome, panicked)
    }

    fn settle(
        &mut self,
        conn: &mut dyn Session,
        receipts: Vec<Receipt>,
        outcome: Outcome,
        panicked: bool,
    ) {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let settle = match outcome {
            Outcome::Ack => {
                self.stats.acked += receipts.len() as u64;
                Settle::Ack(receipts)
            }
            Outcome::Nack(reason) => {
                self.stats.nacked += 1;
                self.stats.panicked += u64::from(panicked);
                Settle::Nack {
                    receipts,
                    delay: self.cfg.nack_delay,
                    reason,
                }
            }
        };
        conn.settle(request_id, settle.clone());
        self.unanswered.insert(request_id, settle);
    }
}

/// A stamp claimed in the [`SettledLedger`] while its handler runs; released when the
/// handler ends however it ends (a panic or an abort drops it unhandled).
struct ClaimGuard {
    ledger: Arc<dyn SettledLedger>,
    producer: String,
    sequence: u64,
    handled: bool,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        self.ledger
            .finish(&self.producer, self.sequence, self.handled);
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-text panic payload)".to_owned()
    }
}
