//! What a transport declares about itself, honestly: the reliability layer reads these to
//! decide which gaps it must fill (consumer-side dedupe, an emulated nack delay, a
//! dead-letter copy) and which it can only report. docs/design.md ("The transport seam")
//! explains each one per backend.

use std::time::Duration;

/// A transport's declaration. Values are the worst case over its topics; a topic's own
/// figure (its durability, say) is in [`TopicInfo`](crate::TopicInfo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// A short name for logs and metrics: `surety-grpc`, `in-process`, `kafka`, ...
    pub transport: &'static str,
    /// What a repeated (producer id, sequence) gets.
    pub publish_dedupe: PublishDedupe,
    /// A repeated message id is answered as a duplicate within this window.
    pub id_dedupe: Option<Duration>,
    /// True: each message of a batch is answered on its own. False: one refused message
    /// refuses the whole batch (the driver then learns nothing about the others).
    pub per_message_publish_answers: bool,
    /// What a publish confirm means.
    pub confirm: Confirm,
    /// Whether a publish to a topic that does not exist is refused by the broker itself.
    pub unknown_topic: Mechanism,
    /// Whether one delivery can be acked or nacked on its own.
    pub per_message_settle: Mechanism,
    /// Receipts stay valid on a new connection (settlements unanswered when one broke
    /// are sent again on the next); else they are dropped and counted as abandoned.
    pub receipts_survive_reconnect: bool,
    /// What a settlement's answer means.
    pub settle_answers: SettleAnswers,
    /// How a nack's delay is honoured.
    pub nack_delay: NackDelay,
    /// How far a delivery count can be trusted.
    pub delivery_count: DeliveryCount,
    /// What ends a delivery's lease.
    pub lease: LeaseKind,
    /// Where dead letters go and who decides a message is one.
    pub dead_letters: DeadLetters,
    /// A dead letter can be resent to the one group it died in.
    pub group_resend: Mechanism,
    /// The order consumers see.
    pub ordering: Ordering,
    /// `Message::not_before_ms` is honoured (else refused before sending).
    pub delayed_publish: bool,
    /// The largest credit window a subscription may ask for.
    pub max_credits: u32,
    /// The largest payload the transport takes (the layer refuses above it before sending);
    /// `None` where the limit is per topic and the broker checks it.
    pub max_message_bytes: Option<u32>,
}

/// Done by the broker, or emulated by the layer (the text says how).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Native,
    Emulated(&'static str),
    /// Neither: the capability is missing, and the text says what that costs.
    Missing(&'static str),
}

/// What a repeated (producer id, sequence) gets from the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishDedupe {
    /// Answered as a duplicate with the original's position, across processes and
    /// restarts, within the window.
    Native { window: DedupeWindow },
    /// Only the client library's own resends within one session (librdkafka).
    ClientSession,
    /// Stored again: the consumer side must drop it.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupeWindow {
    /// The most recent N sequences per producer.
    Sequences(u64),
    Time(Duration),
}

/// What a publish confirm promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    /// On this node's disk (fsync) before the answer.
    FsyncedOnNode,
    /// On `replicas` nodes; `fsynced`: on their disks, else in their page caches.
    Replicated { replicas: u16, fsynced: bool },
    /// In the page cache: survives a process kill, not a power loss (`max_loss`: the
    /// flush interval, where known).
    PageCache { max_loss: Option<Duration> },
    /// In memory only.
    Memory,
    /// Could not be read at connect.
    Unknown,
}

impl Confirm {
    /// A confirmed message survives a power loss of the broker.
    pub fn survives_power_loss(&self) -> bool {
        matches!(
            self,
            Confirm::FsyncedOnNode | Confirm::Replicated { fsynced: true, .. }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleAnswers {
    /// The broker confirms each settlement once it is durable.
    Confirmed,
    /// Recorded locally, made durable later (Kafka: committed once every lower offset is
    /// settled); a crash before then redelivers.
    Deferred,
    /// Written to a broker that never answers (AMQP `basic.ack`).
    Unanswered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackDelay {
    /// The broker holds the message back, up to `max`.
    Native { max: Duration },
    /// The backend emulates it (retry queues, a due-time set); `granularity` is how far a
    /// delay may round up.
    Emulated {
        how: &'static str,
        granularity: Duration,
    },
    /// The driver keeps the delivery (and its credit) until the delay is over.
    Hold,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryCount {
    /// Counted and persisted by the broker: survives restarts.
    Persistent,
    /// Carried by the layer in headers on every republish.
    Emulated(&'static str),
    /// Counted per connection only.
    SessionOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseKind {
    /// Each delivery has its own lease; an abandoned one comes back when it runs out.
    PerMessage { extend: bool },
    /// Held until the connection (channel, group membership) ends.
    Connection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetters {
    pub store: DeadLetterStore,
    /// Who dead-letters a message at its group's `max_deliveries`.
    pub cap: DeadLetterCap,
    /// `Settle::DeadLetter` (dead-letter now, whatever the count) is supported.
    pub now: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterStore {
    /// The broker moves it, atomically with the settlement.
    Native,
    /// The layer writes and confirms a copy, then settles the original: a crash between
    /// the two leaves at most a duplicate dead letter (`atomic`: never even that).
    CopyThenSettle { atomic: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterCap {
    Broker,
    Layer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    /// Ordered per partition (redeliveries excepted).
    PerPartition,
    /// One queue, first deliveries in order.
    Queue,
}
