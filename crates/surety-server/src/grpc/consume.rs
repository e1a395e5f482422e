//! One `Consume` session: a fetcher task long-polls the broker while the stream has
//! credits, and the reader applies the client's credits, acks, nacks and drain.
//!
//! Credits are a window: the server never has more unsettled deliveries outstanding on
//! the stream than granted, at most [`MAX_WINDOW`]. Settling (ack or nack, accepted or
//! refused) frees a credit, unless the request was refused as a whole for its own fields.
//! Each receipt of an Ack or Nack stands alone (`crate::settle`). When the client goes away, fetching stops; deliveries it never settled are left to
//! their leases, which expire into redelivery (at-least-once).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use surety_broker::{Broker, BrokerError, limits, validate_group_name, validate_topic_name};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::convert;
use super::proto::{self, consume_request::Kind as In, consume_response::Kind as Out};
use super::status::{invalid_request, receipt_error, status_of, stream_error};
use crate::metrics;
use crate::settle::Batch;

/// Most deliveries asked of one fetch.
const MAX_FETCH: usize = 256;
/// A fetch waits up to `FETCH_LINGER` for this many credits when few are free.
const FETCH_BATCH_TARGET: usize = 32;
const FETCH_LINGER: Duration = Duration::from_millis(2);
/// Long-poll time of one fetch; bounds how long a drain waits for the fetcher.
const FETCH_WAIT: Duration = Duration::from_millis(500);
/// Largest window one stream may hold (`limits::MAX_CREDITS`). A Subscribe or Credit
/// asking for more is refused, never silently capped.
const MAX_WINDOW: usize = limits::MAX_CREDITS;
/// Acks and nacks of one stream applied at the same time (they share group commits).
const MAX_CONCURRENT_SETTLES: usize = 64;
/// A fetch's deliveries are split into responses of about this many bytes.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Responses buffered towards a slow reader before the session waits for it.
const OUTBOUND_BUFFER: usize = 64;

type Outbound = mpsc::Sender<Result<proto::ConsumeResponse, Status>>;

struct Session {
    broker: Broker,
    topic: String,
    group: String,
    lease: Option<Duration>,
    /// Free room in the window.
    credits: Semaphore,
    /// The window's size: credits granted so far.
    window: AtomicUsize,
    /// Receipts handed out on this stream and not settled yet.
    outstanding: Mutex<HashSet<String>>,
    settles: Arc<Semaphore>,
    tx: Outbound,
    /// The server is shutting down: stop reading and fetching, so the stream ends.
    shutdown: watch::Receiver<bool>,
}

/// Reads the Subscribe, checks it, and starts the session.
pub(super) async fn start(
    broker: Broker,
    shutdown: watch::Receiver<bool>,
    mut inbound: Streaming<proto::ConsumeRequest>,
) -> Result<ReceiverStream<Result<proto::ConsumeResponse, Status>>, Status> {
    let sub = match inbound.message().await? {
        Some(proto::ConsumeRequest {
            kind: Some(In::Subscribe(s)),
        }) => s,
        _ => {
            return Err(invalid_request(
                "a Consume stream must start with Subscribe",
            ));
        }
    };
    validate_topic_name(&sub.topic)
        .map_err(|e| status_of(&BrokerError::InvalidName(e.to_string())))?;
    validate_group_name(&sub.group)
        .map_err(|e| status_of(&BrokerError::InvalidName(e.to_string())))?;
    // Refused before the stream starts, with the broker's own bounds.
    if sub.lease_ms != 0 {
        limits::check_lease_ms(sub.lease_ms).map_err(|e| status_of(&e))?;
    }
    check_window(sub.credits.into()).map_err(|e| status_of(&e))?;
    if !broker.topic_names().contains(&sub.topic) {
        return Err(status_of(&BrokerError::TopicNotFound(sub.topic)));
    }
    let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
    let window = sub.credits as usize;
    let session = Arc::new(Session {
        broker,
        topic: sub.topic,
        group: sub.group,
        lease: (sub.lease_ms > 0).then(|| Duration::from_millis(sub.lease_ms)),
        credits: Semaphore::new(window),
        window: AtomicUsize::new(window),
        outstanding: Mutex::new(HashSet::new()),
        settles: Arc::new(Semaphore::new(MAX_CONCURRENT_SETTLES)),
        tx,
        shutdown,
    });
    tokio::spawn(session.read(inbound));
    Ok(ReceiverStream::new(rx))
}

/// A window of `credits` must not exceed [`MAX_WINDOW`].
fn check_window(credits: u64) -> Result<(), BrokerError> {
    limits::check("credits", credits, 0, MAX_WINDOW as u64)
}

enum Settle {
    Ack,
    Nack { delay: Duration, reason: String },
}

impl Session {
    /// The reader: runs until the client's stream ends, then stops the fetcher.
    async fn read(self: Arc<Self>, mut inbound: Streaming<proto::ConsumeRequest>) {
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(self.clone().fetch(stopped));
        let mut shutdown = self.shutdown.clone();
        // A transport error ends the session like a clean end: leases do the rest.
        loop {
            let req = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                req = inbound.message() => match req {
                    Ok(Some(req)) => req,
                    _ => break,
                },
            };
            match req.kind {
                Some(In::Credit(c)) => {
                    // Only the reader changes the window, so load-then-store is exact.
                    let window = self.window.load(Ordering::Relaxed);
                    let n = c.n as usize;
                    match check_window(window as u64 + n as u64) {
                        Ok(()) => {
                            self.window.store(window + n, Ordering::Relaxed);
                            self.credits.add_permits(n);
                        }
                        // A session problem, not an answer to a request: request_id 0.
                        Err(e) => {
                            let error = Out::Error(stream_error(0, &status_of(&e)));
                            let answer = proto::ConsumeResponse { kind: Some(error) };
                            if self.tx.send(Ok(answer)).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                Some(In::Ack(a)) => {
                    self.spawn_settle(a.request_id, a.receipts, Settle::Ack)
                        .await
                }
                Some(In::Nack(n)) => {
                    let op = Settle::Nack {
                        delay: Duration::from_millis(n.delay_ms),
                        reason: n.reason,
                    };
                    self.spawn_settle(n.request_id, n.receipts, op).await;
                }
                Some(In::Drain(_)) => {
                    let _ = stop.send(true);
                }
                Some(In::Subscribe(_)) | None => {
                    let _ = self
                        .tx
                        .send(Err(invalid_request(
                            "expected Credit, Ack, Nack or Drain after Subscribe",
                        )))
                        .await;
                    break;
                }
            }
        }
        let _ = stop.send(true);
    }

    /// Applies an ack or nack in its own task, so that several share a group commit.
    async fn spawn_settle(self: &Arc<Self>, request_id: u64, receipts: Vec<String>, op: Settle) {
        let Ok(permit) = self.settles.clone().acquire_owned().await else {
            return;
        };
        let session = self.clone();
        tokio::spawn(async move {
            let answer = session.settle(request_id, &receipts, op).await;
            let _ = session.tx.send(Ok(answer)).await;
            drop(permit);
        });
    }

    async fn settle(
        &self,
        request_id: u64,
        receipts: &[String],
        op: Settle,
    ) -> proto::ConsumeResponse {
        let (b, t, g) = (&self.broker, &self.topic, &self.group);
        metrics::record_settle_batch(receipts.len());
        // Each receipt stands alone: one expired lease must not refuse the acks that came
        // with it. The request fails only if none was acceptable.
        let outcomes = match &op {
            Settle::Ack => b.ack_each(t, g, receipts).await,
            Settle::Nack { delay, reason } => b.nack_each(t, g, receipts, *delay, reason).await,
        };
        // A request refused as a whole for its own fields (a nack delay out of bounds,
        // say) judged no receipt: those deliveries are still the client's, leased, to
        // settle again. Otherwise, accepted or refused, they are no longer the client's
        // to work on (a refused one is expired or superseded), so their credits come back.
        let judged = !matches!(&outcomes, Err(BrokerError::OutOfRange { .. }));
        if judged {
            let freed = {
                let mut outstanding = self.outstanding.lock().unwrap();
                receipts.iter().filter(|r| outstanding.remove(*r)).count()
            };
            self.credits.add_permits(freed);
        }
        let kind = match outcomes.and_then(Batch::judge) {
            Ok(batch) => {
                let errors = batch
                    .errors
                    .iter()
                    .map(|(i, e)| receipt_error(*i, e))
                    .collect();
                match op {
                    Settle::Ack => {
                        metrics::record_acked(t, g, batch.applied);
                        Out::AckResult(proto::AckResult {
                            request_id,
                            acked: batch.applied as u64,
                            errors,
                        })
                    }
                    Settle::Nack { .. } => {
                        metrics::record_nacked(t, g, batch.applied);
                        Out::NackResult(proto::NackResult {
                            request_id,
                            nacked: batch.applied as u64,
                            errors,
                        })
                    }
                }
            }
            Err(e) => Out::Error(stream_error(request_id, &status_of(&e))),
        };
        proto::ConsumeResponse { kind: Some(kind) }
    }

    /// The fetcher: long-polls while there is room in the window, until stopped or the
    /// client stops listening. Answers Drained when it ends.
    async fn fetch(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let mut shutdown = self.shutdown.clone();
        loop {
            let n = tokio::select! {
                biased;
                _ = stopped.wait_for(|s| *s) => break,
                _ = shutdown.wait_for(|s| *s) => break,
                _ = self.tx.closed() => return,
                n = self.take_credits() => n,
            };
            let deliveries = match self
                .broker
                .fetch(&self.topic, &self.group, n, FETCH_WAIT, self.lease)
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    // Fetch errors are not per request: they end the session.
                    let _ = self.tx.send(Err(status_of(&e))).await;
                    return;
                }
            };
            self.credits.add_permits(n - deliveries.len());
            if deliveries.is_empty() {
                continue;
            }
            metrics::record_fetch_batch(deliveries.len());
            // Recorded before they are sent, so their acks always find them.
            self.outstanding
                .lock()
                .unwrap()
                .extend(deliveries.iter().map(|d| d.receipt.clone()));
            // One response per fetch (split when large): a response per delivery would
            // cost a channel send, an HTTP/2 frame and a client wake-up each.
            let mut deliveries = deliveries.into_iter().peekable();
            while deliveries.peek().is_some() {
                let mut batch = Vec::new();
                let mut bytes = 0;
                while bytes < MAX_RESPONSE_BYTES {
                    let Some(d) = deliveries.next() else { break };
                    bytes += d.message.payload.len() + d.receipt.len();
                    batch.push(convert::delivery(d));
                }
                let out = Out::Deliveries(proto::Deliveries { deliveries: batch });
                let sent = self.tx.send(Ok(proto::ConsumeResponse { kind: Some(out) }));
                if let Err(unsent) = sent.await {
                    let mut receipts = Vec::new();
                    if let Ok(proto::ConsumeResponse {
                        kind: Some(Out::Deliveries(b)),
                    }) = unsent.0
                    {
                        receipts.extend(b.deliveries.into_iter().map(|d| d.receipt));
                    }
                    receipts.extend(deliveries.map(|d| d.receipt));
                    self.release(receipts).await;
                    return;
                }
            }
        }
        let drained = Out::Drained(proto::Drained {});
        let _ = self
            .tx
            .send(Ok(proto::ConsumeResponse {
                kind: Some(drained),
            }))
            .await;
    }

    /// Gives back deliveries the client never got (its stream closed while they were
    /// fetched): a nack makes them visible again now instead of when the lease ends. It
    /// counts as a failed delivery, as the lease expiry would.
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
