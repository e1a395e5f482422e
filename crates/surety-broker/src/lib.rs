//! `surety-broker`: what a message goes through between publish and its end for every
//! consumer group — acked, or dead-lettered with a reason.
//!
//! - [`group`]: the sans-IO consumer-group state machine (leases, acks, nacks, backoff,
//!   dead-lettering, conservation counters), driven by events.
//! - [`broker`]: the embedded broker that persists those events in a group-committed
//!   journal, and stores partitions and dead letters in `surety-log` logs.
//! - [`session`]: one consumer session (the credit window, a fetcher under it,
//!   concurrent per-receipt settlements, drain), shared by the gRPC front and the
//!   in-process transport.
//! - [`scrub`]: the background check of sealed segments that opening trusts;
//!   [`verify`]: the full offline check of a data directory.
//! - [`dedupe`], [`topic`], [`receipt`], [`message`], [`codec`]: the pieces around them.

pub mod backoff;
pub mod broker;
mod bytes;
pub mod codec;
pub mod dedupe;
pub mod error;
pub mod group;
pub mod limits;
mod log_name;
pub mod message;
pub mod receipt;
pub mod scrub;
pub mod session;
pub mod topic;
pub mod verify;

pub use backoff::Backoff;
pub use broker::{
    Broker, BrokerOptions, CorruptSegment, DeadLetter, DeadLetterPage, DedupeRecovery,
    DedupeSnapshotPolicy, Delivery, GroupDeleted, GroupInfo, PartitionSeek, Peek, PublishResult,
    SeekOutcome, SeekTo, Selection, StagedSettle, StartAt, TopicDeleted, TopicInfo,
};
pub use dedupe::{
    Begin, DedupeConfig, DedupeKey, DedupeSnapshot, DedupeStats, DedupeTable, Reservation,
    StoredKey, decode_snapshot as decode_dedupe_snapshot,
};
pub use error::BrokerError;
pub use group::{
    Event, FreshMessage, GroupPartition, GroupPolicy, GroupStats, Lease, SettleError, Settled,
};
pub use log_name::LogName;
pub use message::{Lineage, PublishMessage, StoredMessage};
pub use scrub::{LogScrub, ScrubStats, Scrubber};
pub use topic::{
    ConfigError, NameError, TopicConfig, TopicConfigPatch, partition_for, validate_group_name,
    validate_topic_name,
};
