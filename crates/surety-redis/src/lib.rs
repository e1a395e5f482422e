//! `surety-redis`: Surety's reliability layer on Redis Streams (issue 13; design in
//! docs/seam.md, operation in docs/backends.md).
//!
//! [`RedisTransport`] implements the seam (`Publisher`, `Subscriber`, `Admin`), so the
//! `Producer`, `Consumer`, outbox relay and CLI run on Redis unchanged, on any Redis 7.0
//! or later:
//!
//! - a topic is a stream plus a config hash, a group its consumer group, its dead
//!   letters a second stream ([`keys`] has the key layout);
//! - a publish is one script per batch that checks each (producer id, sequence) against
//!   the producer's dedupe record and XADDs only what is new ([`publish`]);
//! - consuming reads with XREADGROUP for the credit window and reclaims entries idle
//!   past their lease with XAUTOCLAIM; every settlement is a script that checks the
//!   entry's owner and delivery count first (XACK checks nothing); a nack leaves the
//!   entry pending to come back after the delay; the dead-letter move is one script
//!   ([`session`], [`settle`], [`dead_letters`]);
//! - at connect it reads `appendonly`/`appendfsync` and says what a confirm is worth,
//!   refusing unsafe servers under `require_fsync` ([`durability`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), surety_core::TransportError> {
//! use surety_redis::{RedisOptions, RedisTransport};
//! let url = url::Url::parse("redis://127.0.0.1:6379?require_fsync=false").unwrap();
//! let redis = RedisTransport::connect(url.as_str(), RedisOptions::from_url_query(&url)?).await?;
//! if !redis.durability().is_safe() {
//!     eprintln!("warning: {}", redis.durability());
//! }
//! # Ok(()) }
//! ```

mod conn;
pub mod dead_letters;
pub mod durability;
mod entry;
pub mod keys;
mod options;
pub mod publish;
mod receipt;
mod scripts;
pub mod session;
pub mod settle;
mod topics;
mod transport;

pub use durability::{DurabilityReport, Persistence};
pub use keys::TopicKeys;
pub use options::{RedisOptions, parse_duration};
pub use transport::{MAX_CREDITS, RedisTransport};
