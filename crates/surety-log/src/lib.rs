//! `surety-log`: the durable, segmented, append-only log under every Surety topic
//! partition.
//!
//! - **Group commit** ([`Log::submit`]): appenders from any thread or task are coalesced
//!   into one write and one fdatasync; each is answered only after the sync covering its
//!   record returned (guarantee G1).
//! - **Readers see only durable records** ([`Log::read_from`], [`Log::durable_end`]).
//! - **Recovery** ([`Log::open`]): a torn tail is truncated; damage inside acknowledged
//!   data fails the open with [`Corruption`] until [`Log::open_with_repair`] quarantines
//!   it and reports the lost offsets (G5, G6). Every read verifies the CRC. With
//!   [`VerifyOnOpen::ActiveSegment`] sealed segments are trusted through their checked
//!   index files, so opening costs the same whatever the log's size; their records are
//!   still checked on every read, and by [`Log::verify_sealed`] (the broker's scrub).
//! - **Offline check** ([`verify_dir`]): every record of every segment, changing nothing.
//! - **Retention** ([`Log::apply_retention`]) deletes whole segments only below a floor
//!   the caller gives.
//! - All I/O goes through [`storage::Storage`]; [`storage::SimStorage`] simulates power
//!   loss for the crash tests.
//!
//! The byte layout is documented in `docs/format.md`.

mod config;
mod error;
pub mod index;
mod index_cache;
mod log;
pub mod record;
mod recovery;
mod sealed;
pub mod segment;
pub mod storage;
mod verify;
mod writer;

pub use config::{Durability, LogConfig, PREALLOCATE_FIRST_BYTES, VerifyOnOpen};
pub use error::{AppendError, Corruption, OpenError, ReadError, RetentionError, VerifyError};
pub use log::{AppendTicket, Log, LogStats, RetentionOutcome, RetentionPolicy};
pub use record::{Header, NewRecord, Record};
pub use recovery::{
    QUARANTINE_DIR, QuarantinedSegment, RecoveryReport, RepairReport, TruncatedTail,
};
pub use verify::{Finding, LogCheck, SegmentCheck, SegmentReport, segment_bytes_in, verify_dir};
