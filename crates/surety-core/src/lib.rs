//! `surety-core`: the transport-neutral part of Surety's reliability layer — what the
//! gRPC client, the outbox relay and inbox, and (next) the backends on Kafka, NATS
//! JetStream, RabbitMQ and Redis Streams share. It depends on no transport or database
//! crate. The transport seam it is growing into is designed in docs/seam.md.
//!
//! - [`retry`]: [`RetryPolicy`], exponential backoff with jitter under a deadline.
//! - [`gap`]: [`GapDetector`], end-to-end loss detection over producer sequences (G4).
//! - [`message_id`]: [`MessageId`], the inbox's stable identity of a message.

pub mod gap;
pub mod message_id;
pub mod retry;

pub use gap::{GapDetector, GapStats, Observation};
pub use message_id::MessageId;
pub use retry::RetryPolicy;
