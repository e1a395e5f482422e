//! Broker errors, each with a stable code for the wire (`error.code` in REST answers).

use crate::group::SettleError;
use crate::receipt::ReceiptError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    #[error("{0}")]
    InvalidName(String),
    #[error("invalid topic configuration: {0}")]
    InvalidConfig(String),
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),
    #[error("topic {topic:?} has no consumer group {group:?}")]
    GroupNotFound { topic: String, group: String },
    /// A number a client sent is outside its bound (`crate::limits`).
    #[error("{field} must be between {min} and {max}, got {got}")]
    OutOfRange {
        field: &'static str,
        min: u64,
        max: u64,
        got: u64,
    },
    /// Deleting the topic would drop messages some group has not settled.
    #[error(
        "topic {topic:?} has {unsettled} unsettled messages and {dead_letters} dead letters in its groups; delete with force to drop them"
    )]
    TopicBusy {
        topic: String,
        unsettled: u64,
        dead_letters: u64,
    },
    #[error("message of {size} bytes exceeds the topic limit of {max} bytes")]
    MessageTooLarge { size: usize, max: usize },
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    #[error(
        "sequence {sequence} of producer {producer_id:?} is older than the dedupe window (oldest tracked: {oldest_tracked}); it cannot be checked for duplicates"
    )]
    SequenceTooOld {
        producer_id: String,
        sequence: u64,
        oldest_tracked: u64,
    },
    #[error(transparent)]
    Receipt(#[from] ReceiptError),
    #[error("receipt for partition {partition}, which this topic does not have")]
    UnknownPartition { partition: u32 },
    #[error(transparent)]
    Settle(#[from] SettleError),
    #[error("storage failure: {0}")]
    Storage(String),
    /// The topic hit a storage failure earlier and refuses work until the broker restarts.
    #[error("topic {0:?} is stopped after a storage failure; restart the broker")]
    TopicFailed(String),
    /// The runtime stopped the work midway (it is shutting down): the outcome is unknown,
    /// and a retry with the same producer sequence or id settles it.
    #[error("the broker is shutting down: {0}")]
    ShuttingDown(String),
    /// Stored data failed its CRC check (or a segment is damaged otherwise): never
    /// served. The rest of the log keeps serving; `surety verify` and the topic's
    /// `corrupt_segments` say where.
    #[error("data corrupt: {0}")]
    Corrupt(Box<surety_log::Corruption>),
    /// `surety verify` was pointed at a directory that holds no broker's data.
    #[error("{} is not a Surety data directory (it has no topics/ directory)", .0.display())]
    NotADataDirectory(std::path::PathBuf),
    /// Another broker (in this process or another) has the data directory open.
    #[error("data directory {} is in use by another broker (its LOCK file is locked)", .0.display())]
    DirectoryInUse(std::path::PathBuf),
}

impl BrokerError {
    /// Stable machine-readable code (documented in docs/errors.md).
    pub fn code(&self) -> &'static str {
        match self {
            BrokerError::InvalidName(_) => "invalid_name",
            BrokerError::InvalidConfig(_) => "invalid_config",
            BrokerError::TopicNotFound(_) => "topic_not_found",
            BrokerError::GroupNotFound { .. } => "group_not_found",
            BrokerError::OutOfRange { .. } => "invalid_request",
            BrokerError::TopicBusy { .. } => "topic_busy",
            BrokerError::MessageTooLarge { .. } => "message_too_large",
            BrokerError::InvalidMessage(_) => "invalid_message",
            BrokerError::SequenceTooOld { .. } => "sequence_too_old",
            BrokerError::Receipt(_) => "receipt_invalid",
            BrokerError::UnknownPartition { .. } => "receipt_invalid",
            BrokerError::Settle(SettleError::LeaseExpired { .. }) => "lease_expired",
            BrokerError::Settle(
                SettleError::StaleDelivery { .. } | SettleError::Withdrawn { .. },
            ) => "receipt_stale",
            BrokerError::Settle(_) => "not_delivered",
            BrokerError::Storage(_) => "storage_failure",
            BrokerError::TopicFailed(_) => "topic_failed",
            BrokerError::ShuttingDown(_) => "shutting_down",
            BrokerError::Corrupt(_) => "data_corrupt",
            BrokerError::DirectoryInUse(_) => "directory_in_use",
            BrokerError::NotADataDirectory(_) => "not_a_data_directory",
        }
    }
}

impl From<surety_log::AppendError> for BrokerError {
    fn from(e: surety_log::AppendError) -> Self {
        BrokerError::Storage(e.to_string())
    }
}

impl From<surety_log::ReadError> for BrokerError {
    fn from(e: surety_log::ReadError) -> Self {
        match e {
            surety_log::ReadError::Corrupt(c) => BrokerError::Corrupt(c),
            e => BrokerError::Storage(e.to_string()),
        }
    }
}

impl From<surety_log::OpenError> for BrokerError {
    fn from(e: surety_log::OpenError) -> Self {
        match e {
            surety_log::OpenError::Corrupt(c) => BrokerError::Corrupt(c),
            e => BrokerError::Storage(e.to_string()),
        }
    }
}

impl From<std::io::Error> for BrokerError {
    fn from(e: std::io::Error) -> Self {
        BrokerError::Storage(e.to_string())
    }
}
