//! `surety-rabbitmq`: Surety's reliability layer on RabbitMQ (issue 14; operation in
//! docs/backends.md, "RabbitMQ").
//!
//! [`RabbitTransport`] implements the seam (`Publisher`, `Subscriber`, `Admin`), so the
//! `Producer`, `Consumer`, outbox relay and CLI run on RabbitMQ unchanged (3.10 or later):
//!
//! - a topic is a fanout exchange, a group its quorum queue, each group has retry queues
//!   for nack delays and a dead-letter queue ([`names`] has the table); what is
//!   published while a topic has no group waits in its backlog, not dropped;
//! - a publish is persistent, `mandatory` and confirmed: an unroutable message is an
//!   error, never a confirm ([`publish`]);
//! - consuming is manual ack after the handler with prefetch = credits; a nack is a copy
//!   into a TTL retry queue, a dead letter a copy into the dead-letter queue with reason,
//!   attempts and times, each confirmed before the original is acked ([`session`]);
//! - RabbitMQ cannot refuse a repeated publish, so [`Capabilities`](surety_core::Capabilities)
//!   say `PublishDedupe::None` and the `Consumer`'s settled ledger drops a stamp it has
//!   already handled.
//!
//! ```no_run
//! # async fn demo() -> Result<(), surety_core::TransportError> {
//! use surety_rabbitmq::{RabbitOptions, RabbitTransport};
//! let url = url::Url::parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
//! let rabbit = RabbitTransport::connect(url.as_str(), RabbitOptions::from_url_query(&url)?).await?;
//! # let _ = rabbit; Ok(()) }
//! ```

mod conn;
pub mod dead_letters;
pub mod headers;
mod management;
pub mod names;
mod options;
pub mod publish;
mod receipt;
pub mod session;
mod topics;
mod topology;
mod transport;

pub use names::TopicNames;
pub use options::RabbitOptions;
pub use transport::{MAX_CREDITS, RabbitTransport};
