//! One error type per operation; each says what did not happen.

/// Why [`crate::Database::connect`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error(
        "unsupported database url {url:?}: use postgres://... (or postgresql://) or sqlite:PATH"
    )]
    UnsupportedUrl { url: String },
    #[error("cannot connect to the database: {0}")]
    Database(#[source] sqlx::Error),
}

/// Why [`crate::migrate`] failed. Every statement is idempotent: running it again after
/// fixing the cause is safe.
#[derive(Debug, thiserror::Error)]
#[error("migration failed at {step}: {source}")]
pub struct MigrateError {
    pub step: &'static str,
    #[source]
    pub source: sqlx::Error,
}

/// Why [`crate::enqueue`] wrote nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    #[error("outbox message has an empty topic")]
    EmptyTopic,
    #[error("writing the outbox row failed: {0}")]
    Database(#[source] sqlx::Error),
}

/// Why a [`crate::Relay`] stopped. Database outages and broker outages do not end a
/// relay (it retries with backoff); these do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The tables are missing: run `surety outbox migrate` (or [`crate::migrate`]).
    #[error("the outbox tables are missing or incomplete ({0}); run `surety outbox migrate` first")]
    NotMigrated(#[source] sqlx::Error),
    /// The server refused the relay's credentials: every row would fail the same way,
    /// so the relay stops instead of marking rows dead.
    #[error("the Surety server refused the relay's credentials: {0}")]
    Unauthorized(#[source] surety_core::TransportError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Why [`crate::Inbox::process`] did not apply a message. In every case neither the
/// handler's writes nor the inbox record remain (both were rolled back to the savepoint
/// taken before them).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError<E> {
    /// The handler returned an error.
    #[error("handler failed: {0}")]
    Handler(E),
    /// Recording the message id (or the savepoint around it) failed.
    #[error("inbox database error: {0}")]
    Database(#[from] sqlx::Error),
}
