//! Writing a message into the outbox inside the caller's transaction: it becomes visible
//! to the relay exactly when (and only if) the business data commits with it.

use std::collections::BTreeMap;

use sqlx::{PgConnection, Postgres, Sqlite, SqliteConnection, Transaction};

use crate::BoxFuture;
use crate::error::EnqueueError;

/// A message to publish once the transaction commits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxMessage {
    pub topic: String,
    /// Messages with the same key keep their order (docs/outbox.md, "Order").
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl OutboxMessage {
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
            ..Self::default()
        }
    }

    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    fn headers_json(&self) -> String {
        serde_json::Value::Object(
            self.headers
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        )
        .to_string()
    }
}

/// A connection or transaction the outbox can write to: Postgres or SQLite. Pass the
/// application's open transaction so the row commits (or rolls back) with its data.
pub trait OutboxConnection: Send {
    /// Inserts the row; returns its outbox id.
    fn enqueue_row<'a>(
        &'a mut self,
        message: &'a OutboxMessage,
    ) -> BoxFuture<'a, Result<i64, EnqueueError>>;
}

/// Writes `message` into `surety_outbox` on `conn` (the caller's transaction); returns
/// the row's id. Nothing is published until that transaction commits.
pub async fn enqueue<C: OutboxConnection + ?Sized>(
    conn: &mut C,
    message: &OutboxMessage,
) -> Result<i64, EnqueueError> {
    conn.enqueue_row(message).await
}

impl OutboxConnection for PgConnection {
    fn enqueue_row<'a>(
        &'a mut self,
        m: &'a OutboxMessage,
    ) -> BoxFuture<'a, Result<i64, EnqueueError>> {
        Box::pin(async move {
            if m.topic.is_empty() {
                return Err(EnqueueError::EmptyTopic);
            }
            sqlx::query_scalar(
                "INSERT INTO surety_outbox (topic, key, payload, headers)
                 VALUES ($1, $2, $3, $4::jsonb) RETURNING id",
            )
            .bind(&m.topic)
            .bind(m.key.as_deref())
            .bind(&m.payload)
            .bind(m.headers_json())
            .fetch_one(self)
            .await
            .map_err(EnqueueError::Database)
        })
    }
}

impl OutboxConnection for SqliteConnection {
    fn enqueue_row<'a>(
        &'a mut self,
        m: &'a OutboxMessage,
    ) -> BoxFuture<'a, Result<i64, EnqueueError>> {
        Box::pin(async move {
            if m.topic.is_empty() {
                return Err(EnqueueError::EmptyTopic);
            }
            sqlx::query_scalar(
                "INSERT INTO surety_outbox (topic, key, payload, headers)
                 VALUES (?1, ?2, ?3, ?4) RETURNING id",
            )
            .bind(&m.topic)
            .bind(m.key.as_deref())
            .bind(&m.payload)
            .bind(m.headers_json())
            .fetch_one(self)
            .await
            .map_err(EnqueueError::Database)
        })
    }
}

impl OutboxConnection for Transaction<'_, Postgres> {
    fn enqueue_row<'a>(
        &'a mut self,
        m: &'a OutboxMessage,
    ) -> BoxFuture<'a, Result<i64, EnqueueError>> {
        (**self).enqueue_row(m)
    }
}

impl OutboxConnection for Transaction<'_, Sqlite> {
    fn enqueue_row<'a>(
        &'a mut self,
        m: &'a OutboxMessage,
    ) -> BoxFuture<'a, Result<i64, EnqueueError>> {
        (**self).enqueue_row(m)
    }
}
