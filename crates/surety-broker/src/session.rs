//! One consumer session over the broker, whatever front it is served by: the gRPC
//! `Consume` stream (`surety-server`) and the in-process transport (`surety-embedded`)
//! both run this, so the window logic exists once.
//!
//! - A fetcher task long-polls [`Broker::fetch`] while the window has free room, and hands
//!   each fetch to the front's [`Outlet`], whose items go out on the front's channel.
//! - The window: at most `credits` deliveries of this session are unsettled at a time,
//!   at most [`limits::MAX_CREDITS`]; [`Session::credit`] widens it (a wider window is
//!   refused, never silently capped).
//! - Settling a delivery of this session ([`Session::settle`]), accepted or refused,
//!   frees its place, unless the request was refused as a whole for its own fields (a
//!   nack delay out of bounds, say): then no receipt was judged, and the deliveries are
//!   still the consumer's, leased, to settle again. Receipts of other sessions (handlers
//!   that outlived an earlier connection) free nothing here.
//! - Acks and nacks are applied concurrently (up to [`MAX_CONCURRENT_SETTLES`]), each
//!   receipt on its own ([`Broker::stage_settle_each`]), so several share a journal
//!   commit and one expired lease does not refuse the acks that came with it. Their
//!   places in the window come back once they are applied, a journal sync before they
//!   are answered.
//! - [`Session::drain`] (or dropping the [`Session`]) stops the fetcher after its current
//!   poll; it then answers [`Outlet::drained`]. When the front stops listening (its
//!   channel's receiver is gone), fetching stops too; deliveries fetched but never handed
//!   on are released at once, and deliveries handed on but never settled are left to
//!   their leases, which expire into redelivery (at-least-once).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};

use crate::broker::{Broker, Delivery};
use crate::error::BrokerError;
use crate::limits;
use crate::topic::{validate_group_name, validate_topic_name};

/// Most deliveries asked of one fetch.
pub const MAX_FETCH: usize = 256;
/// A fetch waits up to `FETCH_LINGER` for this many credits when few are free.
const FETCH_BATCH_TARGET: usize = 32;
const FETCH_LINGER: Duration = Duration::from_millis(2);
/// Long-poll time of one fetch by default; it bounds how long a drain waits for the
/// fetcher.
pub const DEFAULT_FETCH_WAIT: Duration = Duration::from_millis(500);
/// Acks and nacks of one session applied at the same time (they share group commits).
pub const MAX_CONCURRENT_SETTLES: usize = 64;

/// What a session is opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpec {
    pub topic: String,
    pub group: String,
    /// Lease of each delivery; `None`: the topic's `ack_wait_ms`.
    pub lease: Option<Duration>,
    /// The initial window.
    pub credits: u32,
    /// Long-poll time of one fetch (at most [`limits::MAX_WAIT_MS`]): how long a drain
    /// may wait for the fetcher.
    pub fetch_wait: Duration,
}

impl SessionSpec {
    pub fn new(topic: impl Into<String>, group: impl Into<String>, credits: u32) -> Self {
        Self {
            topic: topic.into(),
            group: group.into(),
            lease: None,
            credits,
            fetch_wait: DEFAULT_FETCH_WAIT,
        }
    }
}

/// A settlement of some of this session's deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleOp {
    Ack,
    Nack { delay: Duration, reason: String },
}

/// The broker's answer to one settlement: one outcome per receipt (`Ok(true)` settled
/// now, `Ok(false)` settled before, or why it was refused), or the request refused whole.
pub type SettleAnswer = Result<Vec<Result<bool, BrokerError>>, BrokerError>;

/// How a front turns what a session produces into the items of its own stream (gRPC
/// responses, core session events). Called from the session's tasks.
pub trait Outlet: Send + Sync + 'static {
    type Item: Send + 'static;
    /// One fetch's deliveries, as one or more items (a front may split a large fetch).
    fn deliveries(&self, deliveries: Vec<Delivery>) -> Vec<Self::Item>;
    /// The receipts of the deliveries in `item`, when it could not be handed on (the
    /// front stopped listening): they are released at once.
    fn undelivered(&self, item: Self::Item) -> Vec<String>;
    /// The answer to settlement `request_id` of `receipts`.
    fn settled(
        &self,
        request_id: u64,
        op: &SettleOp,
        receipts: &[String],
        answer: SettleAnswer,
    ) -> Self::Item;
    /// The fetcher stopped (after a drain): no more deliveries come.
    fn drained(&self) -> Self::Item;
    /// A fetch failed: the session is over.
    fn failed(&self, error: BrokerError) -> Self::Item;
}

/// The front's handle on a running session. Dropping it stops the fetcher (as
/// [`Session::drain`]); settlements already started still answer.
pub struct Session<O: Outlet> {
    inner: Arc<Inner<O>>,
    stop: watch::Sender<bool>,
}

impl<O: Outlet> std::fmt::Debug for Session<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("topic", &self.inner.topic)
            .field("group", &self.inner.group)
            .field("window", &self.inner.window.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct Inner<O: Outlet> {
    broker: Broker,
    topic: String,
    group: String,
    lease: Option<Duration>,
    fetch_wait: Duration,
    /// Free room in the window.
    credits: Semaphore,
    /// The window's size: credits granted so far.
    window: AtomicUsize,
    /// Receipts handed out by this session and not settled yet.
    outstanding: Mutex<HashSet<String>>,
    settles: Arc<Semaphore>,
    outlet: O,
    tx: mpsc::Sender<O::Item>,
}

/// Checks a subscription against the broker's own bounds, in this order: topic and group
/// names, the lease, the window, that the topic exists. [`Session::start`] does this; a
/// front may call it to refuse early.
pub fn check(
    broker: &Broker,
    topic: &str,
    group: &str,
    lease: Option<Duration>,
    credits: u64,
) -> Result<(), BrokerError> {
    validate_topic_name(topic).map_err(|e| BrokerError::InvalidName(e.to_string()))?;
    validate_group_name(group).map_err(|e| BrokerError::InvalidName(e.to_string()))?;
    if let Some(lease) = lease {
        limits::check_lease_ms(lease.as_millis().try_into().unwrap_or(u64::MAX))?;
    }
    check_window(credits)?;
    if !broker.topic_names().iter().any(|t| t == topic) {
        return Err(BrokerError::TopicNotFound(topic.to_owned()));
    }
    Ok(())
}

/// A window of `credits` must not exceed [`limits::MAX_CREDITS`].
fn check_window(credits: u64) -> Result<(), BrokerError> {
    limits::check("credits", credits, 0, limits::MAX_CREDITS as u64)
}

impl<O: Outlet> Session<O> {
    /// Checks `spec` ([`check`]) and starts fetching. Every item goes out on `tx`; the
    /// session ends when the front drops its receiver, or after a drain once its
    /// settlements have answered.
    pub fn start(
        broker: Broker,
        spec: SessionSpec,
        outlet: O,
        tx: mpsc::Sender<O::Item>,
    ) -> Result<Self, BrokerError> {
        check(
            &broker,
            &spec.topic,
            &spec.group,
            spec.lease,
            spec.credits.into(),
        )?;
        limits::check_fetch(
            1,
            spec.fetch_wait.as_millis().try_into().unwrap_or(u64::MAX),
        )?;
        let window = spec.credits as usize;
        let inner = Arc::new(Inner {
            broker,
            topic: spec.topic,
            group: spec.group,
            lease: spec.lease,
            fetch_wait: spec.fetch_wait,
            credits: Semaphore::new(window),
            window: AtomicUsize::new(window),
            outstanding: Mutex::new(HashSet::new()),
            settles: Arc::new(Semaphore::new(MAX_CONCURRENT_SETTLES)),
            outlet,
            tx,
        });
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(inner.clone().fetch(stopped));
        Ok(Self { inner, stop })
    }

    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    pub fn group(&self) -> &str {
        &self.inner.group
    }

    /// Widens the window by `n`; refused (and the window unchanged) past
    /// [`limits::MAX_CREDITS`].
    pub fn credit(&self, n: u32) -> Result<(), BrokerError> {
        let n = n as usize;
        let widened = self
            .inner
            .window
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                check_window(w as u64 + n as u64).ok().map(|()| w + n)
            });
        match widened {
            Ok(_) => {
                self.inner.credits.add_permits(n);
                Ok(())
            }
            Err(w) => check_window(w as u64 + n as u64),
        }
    }

    /// Applies an ack or nack in its own task, so that several share a group commit; its
    /// answer goes out as [`Outlet::settled`]. Waits while [`MAX_CONCURRENT_SETTLES`] are
    /// being applied (a front reading requests from a peer pushes back on it so).
    pub async fn settle(&self, request_id: u64, receipts: Vec<String>, op: SettleOp) {
        let Ok(permit) = self.inner.settles.clone().acquire_owned().await else {
            return;
        };
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let answer = inner.settle(&receipts, &op).await;
            let item = inner.outlet.settled(request_id, &op, &receipts, answer);
            let _ = inner.tx.send(item).await;
            drop(permit);
        });
    }

    /// Asks for no more deliveries: the fetcher stops after its current poll and answers
    /// [`Outlet::drained`].
    pub fn drain(&self) {
        let _ = self.stop.send(true);
    }
}

impl<O: Outlet> Drop for Session<O> {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl<O: Outlet> Inner<O> {
    async fn settle(&self, receipts: &[String], op: &SettleOp) -> SettleAnswer {
        let staged = self
            .broker
            .stage_settle_each(&self.topic, &self.group, receipts, op)
            .await;
        // A request refused as a whole for its own fields judged no receipt: those
        // deliveries are still the consumer's. Otherwise, accepted or refused, they are
        // no longer the consumer's to work on (a refused one is expired or superseded),
        // so their places come back: as soon as the settlement is applied, before its
        // journal sync, so that the next fetch's leases share that sync instead of
        // waiting for it (they are journalled after it, so durable only after it).
        let judged = !matches!(&staged, Err(BrokerError::OutOfRange { .. }));
        if judged {
            let freed = {
                let mut outstanding = self.outstanding.lock().unwrap();
                receipts.iter().filter(|r| outstanding.remove(*r)).count()
            };
            self.credits.add_permits(freed);
        }
        staged?.durable().await
    }

    /// The fetcher: long-polls while there is room in the window, until stopped or the
    /// front stops listening. Answers drained when it ends.
    async fn fetch(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        loop {
            let n = tokio::select! {
                biased;
                _ = stopped.wait_for(|s| *s) => break,
                _ = self.tx.closed() => return,
                n = self.take_credits() => n,
            };
            let deliveries = match self
                .broker
                .fetch(&self.topic, &self.group, n, self.fetch_wait, self.lease)
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    // Fetch errors are not per request: they end the session.
                    let _ = self.tx.send(self.outlet.failed(e)).await;
                    return;
                }
            };
            self.credits.add_permits(n - deliveries.len());
            if deliveries.is_empty() {
                continue;
            }
            // Recorded before they are handed on, so their settlements always find them.
            self.outstanding
                .lock()
                .unwrap()
                .extend(deliveries.iter().map(|d| d.receipt.clone()));
            let mut items = self.outlet.deliveries(deliveries).into_iter();
            while let Some(item) = items.next() {
                if let Err(unsent) = self.tx.send(item).await {
                    let mut receipts = self.outlet.undelivered(unsent.0);
                    for item in items {
                        receipts.extend(self.outlet.undelivered(item));
                    }
                    self.release(receipts).await;
                    return;
                }
            }
        }
        let _ = self.tx.send(self.outlet.drained()).await;
    }

    /// Gives back deliveries the front never handed on (it stopped listening while they
    /// were fetched): a nack makes them visible again now instead of when the lease ends.
    /// It counts as a failed delivery, as the lease expiry would.
    async fn release(&self, receipts: Vec<String>) {
        let reason = "the consumer's stream closed before delivery";
        let (b, t, g) = (&self.broker, &self.topic, &self.group);
        // Each on its own: one that expired meanwhile must not keep the others leased.
        if let Err(e) = b.nack_each(t, g, &receipts, Duration::ZERO, reason).await {
            tracing::debug!(error = %e, "releasing undelivered messages failed; their leases will expire");
        }
    }

    /// Waits for at least one credit, then takes as many more as are free (up to a fetch).
    async fn take_credits(&self) -> usize {
        let Ok(first) = self.credits.acquire().await else {
            return 0;
        };
        first.forget();
        let mut n = 1 + self.take_available(MAX_FETCH - 1);
        // Under load credits come back one ack at a time; fetching each at once would cost
        // a journal sync per delivery. Let them gather briefly so one fetch serves many;
        // but not beyond half the window: a small window (one handler, say) would only
        // wait out the linger on every fetch.
        let target = FETCH_BATCH_TARGET.min(self.window.load(Ordering::Relaxed) / 2);
        let deadline = tokio::time::Instant::now() + FETCH_LINGER;
        while n < target {
            match tokio::time::timeout_at(deadline, self.credits.acquire()).await {
                Ok(Ok(p)) => {
                    p.forget();
                    n += 1 + self.take_available(MAX_FETCH - n - 1);
                }
                _ => break,
            }
        }
        n
    }

    /// Takes up to `max` credits that are free right now.
    fn take_available(&self, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            match self.credits.try_acquire() {
                Ok(p) => {
                    p.forget();
                    n += 1;
                }
                Err(_) => break,
            }
        }
        n
    }
}
