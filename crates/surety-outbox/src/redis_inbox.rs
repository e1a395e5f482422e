//! The Redis inbox: `SET key token NX PX retention` before the handler, compare-and-DEL
//! when it fails. Weaker than the SQL inbox, because the mark and the handler's effects
//! are not one transaction. Exactly when it applies an effect twice or skips one is in
//! docs/outbox.md ("Redis inbox"); in short:
//!
//! - **skipped**: the process dies (or the DEL fails) after the SET and before the
//!   handler's effects are durable: the mark stays until it expires, and every
//!   redelivery meanwhile is answered `Duplicate`;
//! - **twice**: a redelivery arrives after the mark expired (`retention`), or Redis
//!   lost the mark (no persistence, failover to a replica that had not received it), or
//!   the handler failed after applying part of its effects (its `Err` releases the mark).

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use redis::aio::MultiplexedConnection;

use crate::inbox::Processed;

/// Why [`RedisInbox::process`] did not apply a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisInboxError<E> {
    /// The handler failed and its mark was removed: a redelivery runs it again.
    #[error("handler failed: {0}")]
    Handler(E),
    /// The handler failed and removing its mark failed too: redeliveries are skipped
    /// until the mark expires (the documented skip).
    #[error("handler failed ({handler}), and removing its inbox mark failed: {redis}")]
    MarkKept {
        handler: E,
        #[source]
        redis: redis::RedisError,
    },
    /// Setting the mark failed; the handler did not run.
    #[error("redis inbox: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Deletes the mark only if it is still the one this call set: after an expiry another
/// delivery may have set its own, which must stay.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// An inbox in Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisInbox {
    conn: MultiplexedConnection,
    prefix: String,
    retention: Duration,
}

impl std::fmt::Debug for RedisInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisInbox")
            .field("prefix", &self.prefix)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl RedisInbox {
    /// Connects to `url` (`redis://127.0.0.1:6379`). Marks are `{prefix}{consumer}:{id}`
    /// and expire after `retention` (the cleanup).
    pub async fn connect(
        url: &str,
        prefix: impl Into<String>,
        retention: Duration,
    ) -> Result<RedisInbox, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let conn = client.get_multiplexed_async_connection().await?;
        Ok(RedisInbox {
            conn,
            prefix: prefix.into(),
            retention: retention.max(Duration::from_millis(1)),
        })
    }

    fn key(&self, consumer: &str, message_id: &str) -> String {
        format!("{}{consumer}:{message_id}", self.prefix)
    }

    /// Runs `handler` unless `(consumer, message_id)` is marked; marks it first.
    pub async fn process<T, E, F, Fut>(
        &self,
        consumer: &str,
        message_id: &str,
        handler: F,
    ) -> Result<Processed<T>, RedisInboxError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let key = self.key(consumer, message_id);
        let token = format!("{:032x}", rand::rng().random::<u128>());
        if !self.set_mark(&key, &token).await? {
            return Ok(Processed::Duplicate);
        }
        match handler().await {
            Ok(v) => Ok(Processed::Applied(v)),
            Err(handler) => match self.release(&key, &token).await {
                Ok(()) => Err(RedisInboxError::Handler(handler)),
                Err(redis) => Err(RedisInboxError::MarkKept { handler, redis }),
            },
        }
    }

    /// Only the first step of [`RedisInbox::process`]: marks `(consumer, message_id)`
    /// as processed without running anything (true if this call set the mark). A
    /// process that dies right after the SET leaves exactly this behind.
    pub async fn mark(&self, consumer: &str, message_id: &str) -> Result<bool, redis::RedisError> {
        let token = format!("{:032x}", rand::rng().random::<u128>());
        self.set_mark(&self.key(consumer, message_id), &token).await
    }

    /// `SET key token NX PX retention`: true if this call set it.
    async fn set_mark(&self, key: &str, token: &str) -> Result<bool, redis::RedisError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(self.retention.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    async fn release(&self, key: &str, token: &str) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::Script::new(RELEASE)
            .key(key)
            .arg(token)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Whether `(consumer, message_id)` is marked now.
    pub async fn is_marked(
        &self,
        consumer: &str,
        message_id: &str,
    ) -> Result<bool, redis::RedisError> {
        let mut conn = self.conn.clone();
        redis::cmd("EXISTS")
            .arg(self.key(consumer, message_id))
            .query_async(&mut conn)
            .await
    }
}
