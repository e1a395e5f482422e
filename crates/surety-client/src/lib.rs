//! `surety-client`: Surety's gRPC transport.
//!
//! - [`Client`]: the connection (bearer token, admin calls). It implements the
//!   `surety-core` transport seam, so the drivers run over it:
//! - [`Producer`]: confirmed publishing; idempotent sequences make retries safe.
//! - [`Consumer`]: runs a handler per delivery, acks after `Ok`, nacks on `Err` or panic.
//! - [`GapDetector`]: finds lost, duplicated and reordered messages by sequence.
//!
//! The drivers and message types live in `surety-core` (one copy for every transport)
//! and are re-exported here, so `surety_client::{Producer, Consumer, Message}` work as
//! before.

pub mod admin;
pub mod client;
mod convert;
mod pipeline;
pub mod server_error;
pub mod transport;

/// The wire protocol (`proto/surety.proto`), generated once in `surety-wire`.
pub use surety_wire::proto;

pub use admin::{AdminError, TopicDescription};
pub use client::{Client, ConnectError};
pub use server_error::ServerError;
/// Transport-neutral, from `surety-core` (re-exported so existing paths keep working).
pub use surety_core::{
    Batch, ConsumeError, Consumer, ConsumerBuilder, ConsumerStats, Delivery, ErrorKind,
    GapDetector, GapStats, Message, Observation, Outcome, Position, Producer, ProducerBuilder,
    PublishError, Published, Receipt, RetryPolicy, StopHandle, Transport, TransportError, gap,
    retry,
};
/// The gRPC transport is the [`Client`].
pub type GrpcTransport = Client;
