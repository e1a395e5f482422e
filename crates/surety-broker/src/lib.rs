//! `surety-broker`: what a message goes through between publish and its end for every
//! consumer group — acked, or dead-lettered with a reason.

pub mod backoff;
pub mod group;

pub use backoff::Backoff;
pub use group::{
    Event, FreshMessage, GroupPartition, GroupPolicy, GroupStats, Lease, SettleError, Settled,
};
