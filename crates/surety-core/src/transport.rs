//! The seam: what a transport (Surety's gRPC server, the in-process broker, and the
//! backends on Kafka, NATS JetStream, RabbitMQ and Redis Streams) implements, so that the
//! [`Producer`](crate::Producer) and [`Consumer`](crate::Consumer) drivers — the part that
//! must be right — are written once.
//!
//! The traits are object-safe and return boxed futures, so a transport is chosen at run
//! time (`--backend URL`) and held as `Arc<dyn Transport>`; the cost is one allocation per
//! publish attempt or per session event (a batch), none per message. docs/seam.md has the
//! reasoning and the per-backend semantics behind each method.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::capabilities::{Capabilities, Confirm};
use crate::error::TransportError;
use crate::message::{Batch, Delivery, Headers, Position, Published, Receipt};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Every transport says what it can do.
pub trait Capable: Send + Sync {
    fn capabilities(&self) -> &Capabilities;
}

/// One answer per message of a publish attempt, in batch order.
pub type PublishAnswers = Vec<Result<Published, TransportError>>;

pub trait Publisher: Capable {
    /// One attempt to store `batch` on `topic`. Concurrent calls are pipelined, not
    /// serialized. `Ok`: one answer per message, in order (on a transport without
    /// per-message answers, all succeed or the attempt fails whole); `Err`: the attempt
    /// failed whole. Never resends on its own in a way that could store a stamp twice.
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<PublishAnswers, TransportError>>;
}

/// What a consumer asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub topic: String,
    pub group: String,
    /// The window: deliveries of this session outstanding at most (≤
    /// `Capabilities::max_credits`). Each delivery takes a place; settling it (accepted or
    /// refused) frees the place; [`Session::credit`] widens the window.
    pub credits: u32,
    /// Lease of each delivery; `None`: the topic's own.
    pub lease: Option<Duration>,
}

pub trait Subscriber: Capable {
    /// Opens a session: deliveries flow under `sub.credits`.
    fn subscribe<'a>(
        &'a self,
        sub: &'a Subscription,
    ) -> BoxFuture<'a, Result<Box<dyn Session>, TransportError>>;
}

/// Chosen by the driver; names a settlement in its answer.
pub type RequestId = u64;

/// A settlement command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    Ack(Vec<Receipt>),
    /// Redeliver no sooner than `delay` (the transport may add its own backoff); at the
    /// group's `max_deliveries` the message is dead-lettered with `reason` instead.
    Nack {
        receipts: Vec<Receipt>,
        delay: Duration,
        reason: String,
    },
    /// Dead-letter now, whatever the count (`Capabilities::dead_letters.now`).
    DeadLetter {
        receipts: Vec<Receipt>,
        reason: String,
    },
}

impl Settle {
    pub fn receipts(&self) -> &[Receipt] {
        match self {
            Settle::Ack(r) => r,
            Settle::Nack { receipts, .. } | Settle::DeadLetter { receipts, .. } => receipts,
        }
    }
}

/// The answer for one receipt of a settlement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleOutcome {
    /// The broker confirmed it.
    Applied,
    /// Recorded, made durable later (`SettleAnswers::Deferred`).
    Accepted,
    /// Written to a broker that never answers (`SettleAnswers::Unanswered`).
    Sent,
    /// Settled before (a repeated ack after a reconnect).
    AlreadySettled,
    Refused(TransportError),
}

/// What a session yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// New deliveries, each holding one credit.
    Deliveries(Vec<Delivery>),
    /// The answer to settlement `id`: one outcome per receipt, in request order.
    Settled {
        id: RequestId,
        outcomes: Vec<SettleOutcome>,
    },
    /// After [`Session::drain`]: no more deliveries will come.
    Drained,
}

/// One consumer session. Commands (`settle`, `credit`, `drain`) never block: they are
/// queued and answered on the event stream, so a driver never waits on a settlement
/// instead of taking deliveries.
pub trait Session: Send {
    /// The next event. Cancel-safe: dropping the future before it is ready loses nothing
    /// (the driver `select!`s on it). An error ends the session.
    fn next(&mut self) -> BoxFuture<'_, Result<SessionEvent, TransportError>>;
    /// Queues a settlement, answered by `SessionEvent::Settled { id, .. }`.
    fn settle(&mut self, id: RequestId, settle: Settle);
    /// Widens the window by `n` deliveries.
    fn credit(&mut self, n: u32);
    /// Asks for no more deliveries; answered by `SessionEvent::Drained`.
    fn drain(&mut self);
}

/// What a topic should be created with; `None`: the transport's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicSpec {
    pub partitions: Option<u32>,
    /// Deliveries before a message is dead-lettered.
    pub max_deliveries: Option<u32>,
    /// The default lease of a delivery.
    pub ack_wait: Option<Duration>,
    pub max_message_bytes: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: u32,
    pub max_deliveries: u32,
    pub ack_wait: Duration,
    /// What a publish confirm means on this topic.
    pub confirm: Confirm,
    pub groups: Vec<GroupInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub name: String,
    /// Messages not yet acked or dead-lettered.
    pub lag: u64,
    pub in_flight: u64,
    pub dead_letters: u64,
}

/// A message that failed `max_deliveries` times (or was dead-lettered now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The transport's id of the dead letter (Surety: a number per group).
    pub id: String,
    pub group: String,
    pub reason: String,
    pub attempts: u32,
    pub first_delivered_ms: Option<u64>,
    pub last_delivered_ms: Option<u64>,
    pub dead_lettered_ms: u64,
    /// Where the message was stored.
    pub origin: Position,
    pub payload: Vec<u8>,
    pub key: Option<Vec<u8>>,
    pub headers: Headers,
    /// The message's own id.
    pub message_id: Option<String>,
    pub producer_id: Option<String>,
    pub sequence: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetter>,
    /// Pass as `after` for the next page; `None`: this was the last.
    pub next: Option<String>,
}

/// Which dead letters a resend or purge takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Ids(Vec<String>),
}

pub trait Admin: Capable {
    /// Creates `topic`, or updates it with the settings `spec` names.
    fn create_topic<'a>(
        &'a self,
        topic: &'a str,
        spec: &'a TopicSpec,
    ) -> BoxFuture<'a, Result<TopicInfo, TransportError>>;
    fn describe_topic<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<TopicInfo, TransportError>>;
    fn list_topics(&self) -> BoxFuture<'_, Result<Vec<String>, TransportError>>;
    /// Dead letters of `group`, oldest first, after the id `after`.
    fn dead_letters<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        after: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<DeadLetterPage, TransportError>>;
    /// Puts dead letters back for `group` only; answers how many.
    fn resend<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        which: &'a Selection,
    ) -> BoxFuture<'a, Result<u64, TransportError>>;
    /// Deletes dead letters of `group`; answers how many.
    fn purge<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        which: &'a Selection,
    ) -> BoxFuture<'a, Result<u64, TransportError>>;
}

/// A whole transport: what the CLI, the relay and the conformance suite hold.
pub trait Transport: Publisher + Subscriber + Admin {}

impl<T: Publisher + Subscriber + Admin + ?Sized> Transport for T {}

// A shared transport is a transport, so `Producer::new(arc.clone())` works for
// `Arc<dyn Transport>` and `Arc<MyTransport>` alike.
impl<T: Capable + ?Sized> Capable for Arc<T> {
    fn capabilities(&self) -> &Capabilities {
        (**self).capabilities()
    }
}

impl<T: Publisher + ?Sized> Publisher for Arc<T> {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<PublishAnswers, TransportError>> {
        (**self).publish(topic, batch)
    }
}

impl<T: Subscriber + ?Sized> Subscriber for Arc<T> {
    fn subscribe<'a>(
        &'a self,
        sub: &'a Subscription,
    ) -> BoxFuture<'a, Result<Box<dyn Session>, TransportError>> {
        (**self).subscribe(sub)
    }
}

impl<T: Admin + ?Sized> Admin for Arc<T> {
    fn create_topic<'a>(
        &'a self,
        topic: &'a str,
        spec: &'a TopicSpec,
    ) -> BoxFuture<'a, Result<TopicInfo, TransportError>> {
        (**self).create_topic(topic, spec)
    }
    fn describe_topic<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<TopicInfo, TransportError>> {
        (**self).describe_topic(topic)
    }
    fn list_topics(&self) -> BoxFuture<'_, Result<Vec<String>, TransportError>> {
        (**self).list_topics()
    }
    fn dead_letters<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        after: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<DeadLetterPage, TransportError>> {
        (**self).dead_letters(topic, group, after, limit)
    }
    fn resend<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        which: &'a Selection,
    ) -> BoxFuture<'a, Result<u64, TransportError>> {
        (**self).resend(topic, group, which)
    }
    fn purge<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        which: &'a Selection,
    ) -> BoxFuture<'a, Result<u64, TransportError>> {
        (**self).purge(topic, group, which)
    }
}
