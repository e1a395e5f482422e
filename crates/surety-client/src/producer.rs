//! Confirmed, idempotent publishing: every message gets this producer's id and the next
//! sequence once, when first submitted, and keeps them across retries. So a retry after
//! a lost answer is recognized by the server and answered with the original offset
//! (`duplicate: true`) instead of being stored twice. Batches are pipelined on one
//! `PublishStream` per producer (`pipeline.rs`): many may be in flight at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::client::Client;
use crate::message::{Message, Published};
use crate::pipeline::Pipeline;
use crate::proto;
use crate::server_error::ServerError;
use surety_core::RetryPolicy;

/// Why a publish was not confirmed. In every case it is safe to send the same
/// [`Batch`] again: its sequences make a second copy impossible.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The server refused the batch on its merits (invalid message, too large, unknown
    /// topic, auth): retrying the same batch fails the same way. Nothing was stored.
    #[error("publish refused: {0}")]
    Refused(#[source] ServerError),
    /// No attempt was confirmed before the retry deadline. The batch may or may not be
    /// stored; sending it again settles that.
    #[error("publish not confirmed after {attempts} attempts in {elapsed:?}: {last}")]
    Unconfirmed {
        attempts: u32,
        elapsed: Duration,
        #[source]
        last: ServerError,
    },
    /// The answer did not match the request.
    #[error("the server answered {got} results for {sent} messages")]
    Protocol { sent: usize, got: usize },
}

/// Messages stamped with this producer's id and their sequences, ready to send (and to
/// send again).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    messages: Vec<proto::Message>,
}

impl Batch {
    /// The sequences, in message order.
    pub fn sequences(&self) -> impl Iterator<Item = u64> + '_ {
        self.messages.iter().filter_map(|m| m.sequence)
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// An idempotent producer. `publish` takes `&self`: share it (e.g. in an `Arc`) and
/// publish from many tasks at once; each batch is confirmed on its own.
#[derive(Debug)]
pub struct Producer {
    pipeline: Pipeline,
    producer_id: String,
    next_sequence: AtomicU64,
    retry: RetryPolicy,
}

/// Settings of a [`Producer`].
#[derive(Debug)]
pub struct ProducerBuilder {
    client: Client,
    identity: Option<(String, u64)>,
    retry: RetryPolicy,
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

    pub fn build(self) -> Producer {
        let (producer_id, next) = self.identity.unwrap_or_else(|| (random_id(), 0));
        Producer {
            pipeline: Pipeline::new(self.client),
            producer_id,
            next_sequence: AtomicU64::new(next),
            retry: self.retry,
        }
    }
}

/// 128 random bits in hex: unique among producers without coordination.
fn random_id() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

impl Producer {
    pub fn new(client: Client) -> Producer {
        Self::builder(client).build()
    }

    pub fn builder(client: Client) -> ProducerBuilder {
        ProducerBuilder {
            client,
            identity: None,
            retry: RetryPolicy::default(),
        }
    }

    pub fn producer_id(&self) -> &str {
        &self.producer_id
    }

    /// The sequence the next submitted message will get.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence.load(Ordering::Relaxed)
    }

    /// Publishes one message; returns once it is durable on the server.
    pub async fn publish(&self, topic: &str, message: Message) -> Result<Published, PublishError> {
        let mut results = self.publish_batch(topic, vec![message]).await?;
        results
            .pop()
            .ok_or(PublishError::Protocol { sent: 1, got: 0 })
    }

    /// Publishes messages in one request; returns once all are durable on the server.
    pub async fn publish_batch(
        &self,
        topic: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<Published>, PublishError> {
        let batch = self.prepare(messages);
        self.send(topic, &batch).await
    }

    /// Stamps messages with this producer's id and the next sequences. The batch may be
    /// sent any number of times: it is stored once.
    pub fn prepare(&self, messages: Vec<Message>) -> Batch {
        let first = self
            .next_sequence
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        let messages = messages
            .into_iter()
            .zip(first..)
            .map(|(m, seq)| m.into_proto(&self.producer_id, seq))
            .collect();
        Batch { messages }
    }

    /// Stamps messages with this producer's id and sequences the caller chose, for a
    /// producer whose messages already carry a stable number (an outbox row id, say):
    /// re-sending the same message with the same sequence is stored once, even from
    /// another process. Sequences must be unique per producer id; they need not be
    /// contiguous or in order, but the server checks only a window of the most recent
    /// ones (`sequence_too_old` below it). Does not move [`Producer::next_sequence`].
    pub fn prepare_sequenced(&self, messages: impl IntoIterator<Item = (Message, u64)>) -> Batch {
        let messages = messages
            .into_iter()
            .map(|(m, seq)| m.into_proto(&self.producer_id, seq))
            .collect();
        Batch { messages }
    }

    /// Sends a batch, retrying transient failures with backoff until the retry deadline.
    pub async fn send(&self, topic: &str, batch: &Batch) -> Result<Vec<Published>, PublishError> {
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let last = match self.attempt(topic, batch).await {
                Ok(results) => return Ok(results),
                Err(Attempt::Final(e)) => return Err(e),
                Err(Attempt::Transient(e)) => e,
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

    async fn attempt(&self, topic: &str, batch: &Batch) -> Result<Vec<Published>, Attempt> {
        let req = proto::PublishRequest {
            topic: topic.to_owned(),
            messages: batch.messages.clone(),
        };
        let call = tokio::time::timeout(self.retry.attempt_timeout, self.pipeline.publish(req));
        let response = match call.await {
            Err(_) => return Err(Attempt::Transient(ServerError::timed_out("publish"))),
            Ok(Err(e)) => {
                return Err(if e.is_transient() {
                    Attempt::Transient(e)
                } else {
                    Attempt::Final(PublishError::Refused(e))
                });
            }
            Ok(Ok(r)) => r,
        };
        if response.results.len() != batch.len() {
            return Err(Attempt::Final(PublishError::Protocol {
                sent: batch.len(),
                got: response.results.len(),
            }));
        }
        Ok(response
            .results
            .into_iter()
            .zip(batch.sequences())
            .map(|(r, sequence)| Published {
                partition: r.partition,
                offset: r.offset,
                sequence,
                duplicate: r.duplicate,
            })
            .collect())
    }
}

enum Attempt {
    Transient(ServerError),
    Final(PublishError),
}
