//! `surety-kafka`: Surety's reliability layer on Kafka (issue 15; operation in
//! docs/backends.md, "Kafka").
//!
//! [`KafkaTransport`] implements the seam (`Publisher`, `Subscriber`, `Admin`), so the
//! `Producer`, `Consumer`, outbox relay and CLI run on Kafka unchanged:
//!
//! - a publish goes through an idempotent `acks=all` producer, one answer per message
//!   with its partition and offset ([`publish`]);
//! - a session settles each record on its own over offset commits: the committed offset
//!   never passes an unsettled record, the settled ones above it and each record's
//!   delivery count live in the commit's metadata ([`journal`]), a key's later records
//!   wait while an earlier one is outstanding, a nack waits in place (or in the group's
//!   own topic) and `max_deliveries` ends in `<topic>.dlq` with the reason ([`session`]);
//! - Kafka cannot refuse a repeated publish across producer sessions, so the
//!   capabilities say `PublishDedupe::ClientSession` and the `Consumer`'s settled ledger
//!   drops a stamp it has already handled.
//!
//! ```no_run
//! # async fn demo() -> Result<(), surety_core::TransportError> {
//! use surety_kafka::KafkaTransport;
//! let kafka = KafkaTransport::connect_url("kafka://127.0.0.1:9092?retry=in_place").await?;
//! # let _ = kafka; Ok(()) }
//! ```

pub mod dead_letters;
mod error;
pub mod journal;
pub mod names;
mod options;
pub mod publish;
pub mod record;
mod scan;
pub mod session;
mod topics;
mod transport;

pub use names::TopicNames;
pub use options::{KafkaOptions, RetryMode};
pub use transport::{KafkaTransport, MAX_CREDITS};
