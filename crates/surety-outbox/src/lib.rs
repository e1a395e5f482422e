//! `surety-outbox`: the transactional outbox and the inbox (idempotent consumer), on
//! Postgres and SQLite (sqlx), plus a Redis inbox. The contract is docs/outbox.md.
//!
//! - [`migrate`]: creates `surety_outbox`, `surety_outbox_relay` and `surety_inbox`
//!   (idempotent; no migration table of its own, so it never clashes with the
//!   application's).
//! - [`enqueue`]: writes a message row inside the caller's transaction. Any language can
//!   do the same with `INSERT INTO surety_outbox (topic, key, payload) VALUES (...)`.
//! - [`Relay`]: publishes committed rows through any transport (`surety_core::Publisher`) with a producer id and
//!   a sequence stored in the row, so a relay killed between publish and mark-sent makes
//!   the broker answer `duplicate`, never store a second copy. Gap-safe, one active relay
//!   per database (others stand by), per-key order kept, failures retried, then `dead`.
//! - [`Inbox`]: records `(consumer, message_id)` in the same transaction as a handler's
//!   writes, so a redelivered message has its effects once. [`RedisInbox`] is the weaker
//!   Redis variant.

mod db;
mod enqueue;
mod error;
pub mod inbox;
pub mod metrics;
mod redis_inbox;
pub mod relay;
mod schema;

pub use db::Database;
pub use enqueue::{OutboxConnection, OutboxMessage, enqueue};
pub use error::{ConnectError, EnqueueError, InboxError, MigrateError, RelayError};
pub use inbox::{Inbox, InboxDatabase, Processed, message_id};
pub use redis_inbox::{RedisInbox, RedisInboxError};
pub use relay::{Relay, RelayConfig, RelayCounters, RelayStats, RelayStop};
pub use schema::migrate;

/// A boxed future borrowing a connection for `'c`: what inbox handlers return.
pub use surety_core::BoxFuture;
