//! `surety-nats`: Surety's reliability layer on NATS JetStream (issue 12; design in
//! docs/seam.md, operation in docs/backends.md).
//!
//! [`NatsTransport`] implements the seam (`Publisher`, `Subscriber`, `Admin`), so the
//! `Producer`, `Consumer`, outbox relay and CLI run on JetStream unchanged:
//!
//! - a topic is a stream (file storage, the configured replicas and `duplicate_window`),
//!   a group its durable pull consumer, and its dead letters a second stream
//!   ([`names`]; the topic's `max_deliveries` and lease live on the stream, `settings.rs`);
//! - a publish awaits each PubAck; `Nats-Msg-Id` = producer id + sequence, so a retry
//!   inside the window is answered as a duplicate of the original (`publish.rs`,
//!   `headers.rs`);
//! - consuming pulls for the credit window, acks after the handler, naks with a growing
//!   delay, and dead-letters at `max_deliveries` by copy-then-`+TERM` (`session.rs`,
//!   `settle.rs`, `dead_letters.rs`);
//! - at connect it reads the server's `sync_interval` and says what a PubAck is worth,
//!   refusing unsafe servers under `require_fsync` ([`durability`]);
//! - [`server`] starts real `nats-server` children for tests and benchmarks.
//!
//! ```no_run
//! # async fn demo() -> Result<(), surety_core::TransportError> {
//! use surety_nats::{NatsOptions, NatsTransport};
//! let url = url::Url::parse("nats://127.0.0.1:4222?replicas=1&monitor=http://127.0.0.1:8222").unwrap();
//! let nats = NatsTransport::connect(url.as_str(), NatsOptions::from_url_query(&url)?).await?;
//! if !nats.durability().is_safe() {
//!     eprintln!("warning: {}", nats.durability());
//! }
//! # Ok(()) }
//! ```

mod api;
mod dead_letters;
pub mod durability;
mod headers;
pub mod names;
mod options;
mod publish;
mod receipt;
pub mod server;
mod session;
mod settings;
mod settle;
mod topics;
mod transport;

pub use durability::{DurabilityReport, SyncSetting};
pub use options::{Fault, NatsOptions, parse_duration};
pub use transport::{MAX_CREDITS, MAX_NAK_DELAY, NatsTransport};
