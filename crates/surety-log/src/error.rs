//! One error type per operation, so callers match on what can really happen there.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::record::FrameError;

/// Acknowledged data failed its CRC (or a segment header is damaged). Never served,
/// never silently dropped: opening fails with this, reads return it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corruption in segment {segment:?} at byte {position} (offset {offset}): {detail}")]
pub struct Corruption {
    pub segment: PathBuf,
    /// Byte position of the damaged frame (0 for a damaged header).
    pub position: u64,
    /// Offset of the first record that cannot be read.
    pub offset: u64,
    pub detail: String,
}

/// Why [`crate::Log::open`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("invalid log configuration: {0}")]
    Config(String),
    #[error("i/o error on {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Acknowledged data is damaged. Open with repair to quarantine it.
    #[error(transparent)]
    Corrupt(Box<Corruption>),
}

/// Why an append was not acknowledged. The record may or may not be on disk when this is
/// `Failed`; it is certainly not when it is `TooLarge`, `Frame` or `Closed`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    #[error("record of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("an empty batch cannot be appended")]
    EmptyBatch,
    /// The log reached the largest offset (`record::MAX_OFFSET`); nothing was written.
    #[error("the log has used up its offset space")]
    OffsetsExhausted,
    /// A write or fsync failed; the log accepts no more writes until it is reopened.
    #[error("log failed and stopped accepting writes: {0}")]
    Failed(Arc<io::Error>),
    #[error("log is closed")]
    Closed,
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The offset was deleted by retention; the log now starts at `start`.
    #[error("offset {requested} is below the log start {start}")]
    BelowStart { requested: u64, start: u64 },
    #[error(transparent)]
    Corrupt(Box<Corruption>),
    #[error("i/o error reading {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why [`crate::verify_dir`] could not check a log directory (what it found in the
/// segments is its answer, not an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("i/o error on {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why retention could not delete a segment. Segments already deleted stay deleted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetentionError {
    #[error("i/o error deleting {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub(crate) fn io_at(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> OpenError {
    let path = path.into();
    move |source| OpenError::Io { path, source }
}
