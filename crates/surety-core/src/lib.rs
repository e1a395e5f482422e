//! `surety-core`: Surety's reliability layer, transport-neutral. The Surety gRPC client,
//! the in-process broker, the outbox relay and inbox, and the backends on Kafka, NATS
//! JetStream, RabbitMQ and Redis Streams all build on it; it depends on no transport or
//! database crate. The design is in docs/seam.md; docs/design.md ("The transport seam")
//! says what each capability means per transport.
//!
//! - [`message`]: [`Message`] → [`StampedMessage`] / [`Batch`] → [`Published`]; [`Delivery`]
//!   with its opaque [`Receipt`].
//! - [`transport`]: the seam — [`Publisher`], [`Subscriber`] / [`Session`], [`Admin`],
//!   [`Transport`].
//! - [`capabilities`]: what a transport declares, and so what the layer must fill in.
//! - [`error`]: [`TransportError`], which says whether a retry may help ([`Outcome`]).
//! - [`producer`], [`consumer`]: the drivers — stamping, retries, pipelining,
//!   ack-after-handler, linger, panic → nack, stop, reconnect, gap detection.
//! - [`retry`]: [`RetryPolicy`], exponential backoff with jitter under a deadline.
//! - [`gap`]: [`GapDetector`], end-to-end loss detection over producer sequences (G4).
//! - [`message_id`]: [`MessageId`], the inbox's stable identity of a message.
//! - [`surety`]: what Surety's own broker declares, shared by its gRPC and in-process
//!   transports.
//! - [`settled_ledger`]: [`SettledLedger`], the consumer side's memory of handled
//!   (producer id, sequence) pairs, for transports whose publish dedupe has a time window
//!   or none; [`file_ledger`]: [`FileLedger`], the same kept in a file across restarts.
//! - [`wire`]: the header names in which backends carry the layer's data.
//! - [`channel_session`]: [`ChannelSession`], the driver's end of a session whose work
//!   runs in a backend's own task.

pub mod capabilities;
pub mod channel_session;
pub mod consumer;
pub mod error;
pub mod file_ledger;
pub mod gap;
mod gather;
pub mod message;
pub mod message_id;
pub mod producer;
pub mod retry;
pub mod settled_ledger;
pub mod surety;
pub mod transport;
pub mod url_params;
pub mod wire;

pub use capabilities::{
    Capabilities, Confirm, DeadLetterCap, DeadLetterStore, DeadLetters, DedupeWindow,
    DeliveryCount, LeaseKind, Mechanism, NackDelay, Ordering, PublishDedupe, SettleAnswers,
};
pub use channel_session::{ChannelSession, SessionCommand};
pub use consumer::{ConsumeError, Consumer, ConsumerBuilder, ConsumerStats, StopHandle};
pub use error::{ErrorKind, Outcome, TransportError};
pub use file_ledger::{FileLedger, FileLedgerError, FileLedgerOptions, LedgerRecovery};
pub use gap::{GapDetector, GapStats, Observation};
pub use message::{
    Batch, Delivery, Headers, Message, Position, Published, Receipt, StampedMessage,
};
pub use message_id::MessageId;
pub use producer::{DEFAULT_LINGER, Producer, ProducerBuilder, PublishError};
pub use retry::RetryPolicy;
pub use settled_ledger::{Claim, MemoryLedger, SettledLedger};
pub use transport::{
    Admin, BoxFuture, Capable, DeadLetter, DeadLetterPage, GroupInfo, PublishAnswers, Publisher,
    RequestId, Selection, Session, SessionEvent, Settle, SettleOutcome, Subscriber, Subscription,
    TopicInfo, TopicSpec, Transport,
};
