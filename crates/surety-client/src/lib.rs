//! `surety-client`: the Rust client of a Surety server, over gRPC.
//!
//! - [`Client`]: the connection (bearer token, admin calls).
//! - [`Producer`]: confirmed publishing; idempotent sequences make retries safe.
//! - [`Consumer`]: runs a handler per delivery, acks after `Ok`, nacks on `Err` or panic.
//! - [`GapDetector`]: finds lost, duplicated and reordered messages by sequence.

pub mod admin;
pub mod client;
pub mod consumer;
pub mod message;
mod pipeline;
pub mod producer;
pub mod server_error;

/// The wire protocol (`proto/surety.proto`), generated once in `surety-wire`.
pub use surety_wire::proto;

pub use admin::{AdminError, TopicDescription};
pub use client::{Client, ConnectError};
pub use consumer::{ConsumeError, Consumer, ConsumerBuilder, ConsumerStats, StopHandle};
pub use message::{Delivery, Message, Published};
pub use producer::{Batch, Producer, ProducerBuilder, PublishError};
pub use server_error::ServerError;
/// Transport-neutral, from `surety-core` (re-exported so existing paths keep working).
pub use surety_core::{GapDetector, GapStats, Observation, RetryPolicy, gap, retry};
