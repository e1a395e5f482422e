//! A consumer that acks only after its handler succeeded: `Ok` acks, `Err` nacks with the
//! error as reason, a panic nacks too. At most `max_in_flight` handlers run at once (the
//! server's credit window enforces it). A stop lets running handlers finish and settles
//! them before returning. Transport failures reconnect; receipts stay valid across
//! connections, so handlers that outlive a connection are still acked.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::client::Client;
use crate::message::Delivery;
use crate::proto::{self, consume_request::Kind as In, consume_response::Kind as Out};
use crate::server_error::ServerError;
use surety_core::GapDetector;
use surety_core::RetryPolicy;

/// Why [`ConsumerBuilder::run`] ended without being stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumeError {
    /// The server refused the subscription on its merits (unknown topic, bad name, auth).
    #[error("consume refused: {0}")]
    Refused(#[source] ServerError),
    /// The server stayed unreachable past the reconnect deadline.
    #[error("no connection for {elapsed:?} after {attempts} attempts: {last}")]
    Disconnected {
        attempts: u32,
        elapsed: Duration,
        #[source]
        last: ServerError,
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
    /// Acks or nacks the server refused (e.g. the lease expired first).
    pub settle_errors: u64,
    pub reconnects: u64,
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

/// Entry point: `Consumer::builder(client, topic, group)`.
#[derive(Debug)]
pub struct Consumer;

impl Consumer {
    pub fn builder(
        client: Client,
        topic: impl Into<String>,
        group: impl Into<String>,
    ) -> ConsumerBuilder {
        ConsumerBuilder {
            client,
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
#[derive(Debug)]
pub struct ConsumerBuilder {
    client: Client,
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
type Finished = (String, u64, Outcome, bool);

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
    Response(Result<Option<proto::ConsumeResponse>, tonic::Status>),
    Finished(Result<(tokio::task::Id, HandlerResult), tokio::task::JoinError>),
    /// The ack linger ran out.
    FlushAcks,
}

enum Ended {
    Stopped,
    Broken {
        /// The session got at least one answer: the outage clock restarts.
        made_progress: bool,
        error: ServerError,
    },
}

/// State that outlives one connection.
struct Run<'a> {
    cfg: &'a ConsumerBuilder,
    /// One task per running handler, so a panic is caught as that task's `JoinError`.
    handlers: JoinSet<HandlerResult>,
    /// The receipt and session of each running handler task.
    running: HashMap<tokio::task::Id, (String, u64)>,
    /// Acks and nacks sent and not answered yet; sent again after a reconnect (a repeated
    /// ack is harmless, a repeated nack is refused as stale).
    unanswered: BTreeMap<u64, proto::ConsumeRequest>,
    /// Receipts of handlers that returned `Ok`, waiting (up to the linger) to be acked
    /// together. Kept across connections: receipts outlive them.
    pending_acks: Vec<String>,
    /// When `pending_acks` must go out.
    ack_deadline: Option<tokio::time::Instant>,
    next_request_id: u64,
    stats: ConsumerStats,
    stop: watch::Receiver<bool>,
}

fn request(kind: In) -> proto::ConsumeRequest {
    proto::ConsumeRequest { kind: Some(kind) }
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
        // Unbounded, so sending never waits on the server while it waits on us; it
        // holds at most a window's worth of acks.
        let (tx, rx) = mpsc::unbounded_channel();
        // Handlers still running from an earlier connection keep their share of the
        // window; each frees it with a Credit when it ends.
        let credits = if stopping {
            0
        } else {
            self.cfg
                .max_in_flight
                .saturating_sub(self.handlers.len() as u32)
        };
        let _ = tx.send(request(In::Subscribe(proto::Subscribe {
            topic: self.cfg.topic.clone(),
            group: self.cfg.group.clone(),
            credits,
            lease_ms: self.cfg.lease.map_or(0, |d| d.as_millis() as u64),
        })));
        for req in self.unanswered.values() {
            let _ = tx.send(req.clone());
        }
        self.flush_acks(&tx);
        if stopping {
            let _ = tx.send(request(In::Drain(proto::Drain {})));
        }
        let mut raw = self.cfg.client.raw();
        let mut responses = match raw.consume(UnboundedReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(status) => return self.broken(status.into(), false),
        };
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
                r = responses.message() => Event::Response(r),
                Some(f) = self.handlers.join_next_with_id(), if !self.handlers.is_empty() => Event::Finished(f),
            };
            match event {
                Event::Stop => {
                    stopping = true;
                    let _ = tx.send(request(In::Drain(proto::Drain {})));
                }
                Event::Response(Ok(Some(proto::ConsumeResponse { kind: Some(kind) }))) => {
                    made_progress = true;
                    match kind {
                        Out::Deliveries(batch) => {
                            for d in batch.deliveries {
                                self.spawn_handler(session, handler, d.into());
                            }
                        }
                        Out::AckResult(proto::AckResult { request_id, .. })
                        | Out::NackResult(proto::NackResult { request_id, .. }) => {
                            self.unanswered.remove(&request_id);
                        }
                        Out::Error(e) => {
                            self.unanswered.remove(&e.request_id);
                            self.stats.settle_errors += 1;
                            tracing::warn!(code = %e.code, message = %e.message, "ack or nack refused");
                        }
                        Out::Drained(_) => drained = true,
                    }
                }
                Event::Response(Ok(Some(_))) => {}
                Event::Response(Ok(None)) => {
                    let e = ServerError::unavailable("the server ended the stream");
                    return self.broken(e, made_progress);
                }
                Event::Response(Err(status)) => {
                    return self.broken(ServerError::broken_stream(status), made_progress);
                }
                Event::FlushAcks => self.flush_acks(&tx),
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
                            nack => self.settle(&tx, vec![receipt], nack, panicked),
                        }
                    }
                    // Nothing else running means nothing to wait for.
                    if self.pending_acks.len() >= MAX_ACK_BATCH
                        || self.handlers.is_empty()
                        || self.cfg.ack_linger.is_zero()
                    {
                        self.flush_acks(&tx);
                    } else if self.ack_deadline.is_none() && !self.pending_acks.is_empty() {
                        self.ack_deadline = Some(tokio::time::Instant::now() + self.cfg.ack_linger);
                    }
                    if credits > 0 {
                        let _ = tx.send(request(In::Credit(proto::Credit { n: credits })));
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
    fn flush_acks(&mut self, tx: &mpsc::UnboundedSender<proto::ConsumeRequest>) {
        self.ack_deadline = None;
        if !self.pending_acks.is_empty() {
            let receipts = std::mem::take(&mut self.pending_acks);
            self.settle(tx, receipts, Outcome::Ack, false);
        }
    }

    fn broken(&self, error: ServerError, made_progress: bool) -> Result<Ended, ConsumeError> {
        if error.is_transient() {
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
        let handler = handler.clone();
        let task = self
            .handlers
            .spawn(async move { handler(delivery).await.map_err(|e| e.to_string()) });
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
        tx: &mpsc::UnboundedSender<proto::ConsumeRequest>,
        receipts: Vec<String>,
        outcome: Outcome,
        panicked: bool,
    ) {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let kind = match outcome {
            Outcome::Ack => {
                self.stats.acked += receipts.len() as u64;
                In::Ack(proto::Ack {
                    request_id,
                    receipts,
                })
            }
            Outcome::Nack(reason) => {
                self.stats.nacked += 1;
                self.stats.panicked += u64::from(panicked);
                In::Nack(proto::Nack {
                    request_id,
                    receipts,
                    delay_ms: self.cfg.nack_delay.as_millis() as u64,
                    reason,
                })
            }
        };
        let req = request(kind);
        let _ = tx.send(req.clone());
        self.unanswered.insert(request_id, req);
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
