//! Confirmed, idempotent publishing over any [`Publisher`]: every message gets this
//! producer's id and the next sequence once, when first submitted, and keeps them across
//! retries. A retry after a lost answer is then recognised — by the broker where publish
//! dedupe is native (answered with the original position, `duplicate: true`), by the
//! consumer side elsewhere — instead of becoming a second message. Sends may run
//! concurrently from one `&Producer`: pipelining is the transport's. Concurrent
//! single-message publishes are gathered into one request (`gather.rs`, the producer's
//! `linger`), as the consumer gathers its acks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::error::{ErrorKind, TransportError};
use crate::gather::Gather;
use crate::message::{Batch, Message, Published, StampedMessage};
use crate::retry::RetryPolicy;
use crate::transport::Publisher;

/// How long a single publish may wait for others to share its request (see
/// [`ProducerBuilder::linger`]).
pub const DEFAULT_LINGER: Duration = Duration::from_millis(1);

/// Why a publish was not confirmed. In every case it is safe to send the same
/// [`Batch`] again: its stamps make a second copy impossible.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// A message was refused on its merits (invalid, too large, unknown topic, auth):
    /// retrying it fails the same way, and it was not stored. (On a transport with
    /// per-message answers, other messages of the batch may have been.)
    #[error("publish refused: {0}")]
    Refused(#[source] TransportError),
    /// No attempt was confirmed before the retry deadline. The batch may or may not be
    /// stored; sending it again settles that.
    #[error("publish not confirmed after {attempts} attempts in {elapsed:?}: {last}")]
    Unconfirmed {
        attempts: u32,
        elapsed: Duration,
        #[source]
        last: TransportError,
    },
    /// The answer did not match the request.
    #[error("the transport answered {got} results for {sent} messages")]
    Protocol { sent: usize, got: usize },
}

/// Publishes through one transport with its own id and sequences.
pub struct Producer {
    inner: Arc<Inner>,
}

/// What a producer's spawned work (a gathered request) shares with it.
pub(crate) struct Inner {
    publisher: Arc<dyn Publisher>,
    producer_id: Arc<str>,
    next_sequence: AtomicU64,
    retry: RetryPolicy,
    pub(crate) gather: Gather,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("transport", &self.inner.publisher.capabilities().transport)
            .field("producer_id", &self.inner.producer_id)
            .field("next_sequence", &self.inner.next_sequence)
            .field("linger", &self.inner.gather.linger())
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Producer`].
pub struct ProducerBuilder {
    publisher: Arc<dyn Publisher>,
    identity: Option<(String, u64)>,
    retry: RetryPolicy,
    linger: Duration,
}

impl std::fmt::Debug for ProducerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerBuilder")
            .field("identity", &self.identity)
            .field("retry", &self.retry)
            .field("linger", &self.linger)
            .finish_non_exhaustive()
    }
}

impl ProducerBuilder {
    /// Resumes a known producer: `next_sequence` must be above every sequence it used
    /// before, or new messages would be taken for retries of old ones and not stored.
    /// Without this, the producer gets a fresh random id and starts at 0.
    pub fn identity(mut self, producer_id: impl Into<String>, next_sequence: u64) -> Self {
        self.identity = Some((producer_id.into(), next_sequence));
        self
    }

    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Single-message publishes ([`Producer::publish`]) made while another request of
    /// this producer is in flight wait up to `linger` (default 1 ms) to share one request
    /// — one round trip and one fsync on the broker for all of them, like Kafka's
    /// `linger.ms`. A publish goes out at once when nothing of this producer is in
    /// flight, or when 256 are waiting; `Duration::ZERO` turns gathering off. Explicit
    /// batches (`publish_batch`, `send`) are never gathered.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    pub fn build(self) -> Producer {
        let (producer_id, next) = self.identity.unwrap_or_else(|| (random_id(), 0));
        Producer {
            inner: Arc::new(Inner {
                publisher: self.publisher,
                producer_id: producer_id.into(),
                next_sequence: AtomicU64::new(next),
                retry: self.retry,
                gather: Gather::new(self.linger),
            }),
        }
    }
}

/// 128 random bits in hex: unique among producers without coordination.
fn random_id() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

impl Producer {
    pub fn new(publisher: impl Publisher + 'static) -> Producer {
        Self::builder(publisher).build()
    }

    pub fn builder(publisher: impl Publisher + 'static) -> ProducerBuilder {
        Self::builder_shared(Arc::new(publisher))
    }

    /// For a transport already shared (`Arc<dyn Transport>` coerces).
    pub fn builder_shared(publisher: Arc<dyn Publisher>) -> ProducerBuilder {
        ProducerBuilder {
            publisher,
            identity: None,
            retry: RetryPolicy::default(),
            linger: DEFAULT_LINGER,
        }
    }

    pub fn producer_id(&self) -> &str {
        &self.inner.producer_id
    }

    /// The transport this producer publishes through.
    pub fn publisher(&self) -> &Arc<dyn Publisher> {
        &self.inner.publisher
    }

    /// The sequence the next submitted message will get.
    pub fn next_sequence(&self) -> u64 {
        self.inner.next_sequence.load(Ordering::Relaxed)
    }

    /// Publishes one message; returns once the transport confirmed it (what a confirm
    /// means: `Capabilities::confirm`). Concurrent calls share requests (`linger`).
    pub async fn publish(&self, topic: &str, message: Message) -> Result<Published, PublishError> {
        if self.inner.gather.linger().is_zero() {
            let mut results = self.publish_batch(topic, vec![message]).await?;
            return results
                .pop()
                .ok_or(PublishError::Protocol { sent: 1, got: 0 });
        }
        Gather::publish(&self.inner, topic, message).await
    }

    /// Publishes messages in one request; returns once all are confirmed.
    pub async fn publish_batch(
        &self,
        topic: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<Published>, PublishError> {
        let batch = self.inner.prepare(messages);
        self.inner.send(topic, &batch).await
    }

    /// Stamps messages with this producer's id and the next sequences. The batch may be
    /// sent any number of times: it is stored once.
    pub fn prepare(&self, messages: Vec<Message>) -> Batch {
        self.inner.prepare(messages)
    }

    /// Stamps messages with this producer's id and sequences the caller chose, for a
    /// producer whose messages already carry a stable number (an outbox row id, say):
    /// re-sending the same message with the same sequence is stored once, even from
    /// another process. Sequences must be unique per producer id; they need not be
    /// contiguous or in order, but the broker checks only a window of the most recent
    /// ones (`sequence_too_old` below it). Does not move [`Producer::next_sequence`].
    pub fn prepare_sequenced(&self, messages: impl IntoIterator<Item = (Message, u64)>) -> Batch {
        Batch::new(self.inner.stamp_sequenced(messages))
    }

    /// Sends a batch, retrying what may succeed later (with backoff, until the retry
    /// deadline) with the same stamps; only the messages not yet confirmed are resent.
    pub async fn send(&self, topic: &str, batch: &Batch) -> Result<Vec<Published>, PublishError> {
        self.inner.send(topic, batch).await
    }
}

impl Inner {
    fn prepare(&self, messages: Vec<Message>) -> Batch {
        let first = self
            .next_sequence
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        Batch::new(self.stamp_sequenced(messages.into_iter().zip(first..)))
    }

    /// Stamps one message with the next sequence.
    pub(crate) fn stamp(&self, message: Message) -> StampedMessage {
        StampedMessage {
            message,
            producer_id: self.producer_id.clone(),
            sequence: self.next_sequence.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn stamp_sequenced(
        &self,
        messages: impl IntoIterator<Item = (Message, u64)>,
    ) -> Vec<StampedMessage> {
        messages
            .into_iter()
            .map(|(message, sequence)| StampedMessage {
                message,
                producer_id: self.producer_id.clone(),
                sequence,
            })
            .collect()
    }

    /// Whether one refused message refuses the whole batch on this transport.
    pub(crate) fn refuses_batches_whole(&self) -> bool {
        !self.publisher.capabilities().per_message_publish_answers
    }

    pub(crate) async fn send(
        &self,
        topic: &str,
        batch: &Batch,
    ) -> Result<Vec<Published>, PublishError> {
        self.check(batch)?;
        let started = Instant::now();
        let mut answers: Vec<Option<Published>> = vec![None; batch.len()];
        // What the next attempt sends: the whole batch, then whatever is unconfirmed.
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        let mut resend: Option<Batch> = None;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let this = resend.as_ref().unwrap_or(batch);
            let call = tokio::time::timeout(
                self.retry.attempt_timeout,
                self.publisher.publish(topic, this),
            );
            let last = match call.await {
                Err(_) => TransportError::timed_out("publish"),
                Ok(Err(e)) if !e.retryable() => return Err(PublishError::Refused(e)),
                Ok(Err(e)) => e,
                Ok(Ok(results)) => {
                    if results.len() != this.len() {
                        return Err(PublishError::Protocol {
                            sent: this.len(),
                            got: results.len(),
                        });
                    }
                    let mut again = Vec::new();
                    let mut last = None;
                    for (&index, result) in pending.iter().zip(results) {
                        match result {
                            Ok(published) => answers[index] = Some(published),
                            Err(e) if !e.retryable() => return Err(PublishError::Refused(e)),
                            Err(e) => {
                                again.push(index);
                                last = Some(e);
                            }
                        }
                    }
                    match last {
                        None => return Ok(answers.into_iter().flatten().collect()),
                        Some(last) => {
                            resend = Some(batch.subset(&again));
                            pending = again;
                            last
                        }
                    }
                }
            };
            let delay = self.retry.delay(attempts);
            if started.elapsed() + delay >= self.retry.deadline {
                return Err(PublishError::Unconfirmed {
                    attempts,
                    elapsed: started.elapsed(),
                    last,
                });
            }
            tracing::debug!(attempts, ?delay, error = %last, "publish failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Refuses, before sending, what the transport declares it cannot take.
    fn check(&self, batch: &Batch) -> Result<(), PublishError> {
        let caps = self.publisher.capabilities();
        for m in batch {
            if m.message.not_before_ms.is_some() && !caps.delayed_publish {
                return Err(PublishError::Refused(TransportError::refused(
                    ErrorKind::Unsupported,
                    format!("{} cannot delay a publish (not_before_ms)", caps.transport),
                )));
            }
            if let Some(max) = caps.max_message_bytes
                && m.message.payload.len() > max as usize
            {
                return Err(PublishError::Refused(TransportError::refused(
                    ErrorKind::TooLarge,
                    format!(
                        "a payload of {} bytes is above {}'s limit of {max}",
                        m.message.payload.len(),
                        caps.transport
                    ),
                )));
            }
        }
        Ok(())
    }
}
