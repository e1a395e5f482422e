//! The inbox (idempotent consumer) on Postgres and SQLite: a message's id is recorded in
//! `surety_inbox` in the same transaction as the handler's writes, so the effects and
//! the record commit together or not at all, and a redelivery finds the record and is
//! skipped. Exactly-once effects, as long as every effect goes through that transaction.

use std::time::Duration;

use sqlx::{Connection, PgConnection, Pool, Postgres, Sqlite, SqliteConnection, Transaction};
use surety_core::Delivery;
use surety_core::MessageId;

use crate::BoxFuture;
use crate::error::InboxError;
use crate::schema::SQLITE_NOW_MS;

/// What [`Inbox::process`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed<T> {
    /// First time: the handler ran; its writes and the record are in the transaction.
    Applied(T),
    /// Recorded before (a redelivery): the handler did not run.
    Duplicate,
}

impl<T> Processed<T> {
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Processed::Duplicate)
    }
}

/// The stable identity of a delivered message, for the inbox: `producer_id/sequence`
/// (what the outbox relay stamps, unchanged by redelivery and by a relay publishing a
/// row again), else the message `id` ([`MessageId`], defined once in `surety-core`).
/// `None` if the message carries neither.
pub fn message_id(d: &Delivery) -> Option<MessageId> {
    d.message_id()
}

/// The inbox of one database. Stateless: every call works on the transaction given.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inbox;

/// A database the inbox works on: Postgres or SQLite.
pub trait InboxDatabase: sqlx::Database {
    /// Inserts the record unless present; true if inserted.
    #[doc(hidden)]
    fn record<'c>(
        conn: &'c mut Self::Connection,
        consumer: &'c str,
        message_id: &'c str,
    ) -> BoxFuture<'c, Result<bool, sqlx::Error>>;

    #[doc(hidden)]
    fn delete_older<'c>(
        pool: &'c Pool<Self>,
        retention: Duration,
    ) -> BoxFuture<'c, Result<u64, sqlx::Error>>;
}

impl InboxDatabase for Postgres {
    fn record<'c>(
        conn: &'c mut PgConnection,
        consumer: &'c str,
        message_id: &'c str,
    ) -> BoxFuture<'c, Result<bool, sqlx::Error>> {
        Box::pin(async move {
            let done = sqlx::query(
                "INSERT INTO surety_inbox (consumer, message_id) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING",
            )
            .bind(consumer)
            .bind(message_id)
            .execute(conn)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn delete_older<'c>(
        pool: &'c Pool<Self>,
        retention: Duration,
    ) -> BoxFuture<'c, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            let done = sqlx::query(
                "DELETE FROM surety_inbox
                 WHERE processed_at < clock_timestamp() - $1 * interval '1 millisecond'",
            )
            .bind(retention.as_millis() as i64)
            .execute(pool)
            .await?;
            Ok(done.rows_affected())
        })
    }
}

impl InboxDatabase for Sqlite {
    fn record<'c>(
        conn: &'c mut SqliteConnection,
        consumer: &'c str,
        message_id: &'c str,
    ) -> BoxFuture<'c, Result<bool, sqlx::Error>> {
        Box::pin(async move {
            let done = sqlx::query(
                "INSERT INTO surety_inbox (consumer, message_id) VALUES (?1, ?2)
                 ON CONFLICT DO NOTHING",
            )
            .bind(consumer)
            .bind(message_id)
            .execute(conn)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn delete_older<'c>(
        pool: &'c Pool<Self>,
        retention: Duration,
    ) -> BoxFuture<'c, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            let done = sqlx::query(&format!(
                "DELETE FROM surety_inbox WHERE processed_at < {SQLITE_NOW_MS} - ?1"
            ))
            .bind(retention.as_millis() as i64)
            .execute(pool)
            .await?;
            Ok(done.rows_affected())
        })
    }
}

impl Inbox {
    pub fn new() -> Self {
        Inbox
    }

    /// Runs `handler` once per `(consumer, message_id)`, inside `tx`: records the id,
    /// runs the handler on the same transaction, and keeps both only if the handler
    /// returns `Ok` (a savepoint undoes both otherwise, and `tx` stays usable). The
    /// caller commits `tx`; until then nothing is final. A redelivery answers
    /// [`Processed::Duplicate`] without running the handler.
    ///
    /// Concurrent deliveries of one id are serialized by the primary key: on Postgres
    /// the second waits for the first transaction and is a duplicate if it committed;
    /// SQLite runs one writer at a time anyway.
    pub async fn process<DB, T, E, F>(
        &self,
        tx: &mut Transaction<'_, DB>,
        consumer: &str,
        message_id: &str,
        handler: F,
    ) -> Result<Processed<T>, InboxError<E>>
    where
        DB: InboxDatabase,
        F: for<'c> FnOnce(&'c mut DB::Connection) -> BoxFuture<'c, Result<T, E>>,
    {
        let mut savepoint = Connection::begin(&mut **tx).await?;
        if !DB::record(&mut savepoint, consumer, message_id).await? {
            savepoint.rollback().await?;
            return Ok(Processed::Duplicate);
        }
        match handler(&mut savepoint).await {
            Ok(value) => {
                savepoint.commit().await?;
                Ok(Processed::Applied(value))
            }
            Err(e) => {
                savepoint.rollback().await?;
                Err(InboxError::Handler(e))
            }
        }
    }

    /// Deletes records older than `retention`; returns how many. A message redelivered
    /// after its record was deleted would be applied again, so keep records longer than
    /// any redelivery can come (the topic's retention plus dead-letter resends).
    pub async fn cleanup<DB: InboxDatabase>(
        &self,
        pool: &Pool<DB>,
        retention: Duration,
    ) -> Result<u64, sqlx::Error> {
        DB::delete_older(pool, retention).await
    }
}
