//! The active relay on Postgres: a session advisory lock held on one dedicated
//! connection, on which every claim and settlement runs. If the process dies, or the
//! connection breaks, Postgres drops the lock at once and a standby takes over; the
//! old leader cannot claim anything any more, because its connection is gone.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;

use super::{LeadEnd, Row, RowTuple, Settlement};
use crate::schema::RELAY_NAME;

/// Lock key: (hash of this name, hash of the schema), so outboxes in different schemas
/// of one database have their own active relay.
const LOCK: &str =
    "SELECT pg_try_advisory_lock(hashtext('surety_outbox_relay'), hashtext(current_schema()))";

const ROW_COLUMNS: &str =
    "o.id, o.relay_seq, o.topic, o.key, o.payload, o.headers::text, o.attempts";

pub(crate) struct PgLeader {
    conn: PgConnection,
    /// None if LISTEN failed: the relay then polls.
    listener: Option<PgListener>,
    pool: PgPool,
    schema: String,
    pub producer_id: String,
    next_seq: i64,
}

impl PgLeader {
    /// Becomes the active relay if no other holds the lock; `None` otherwise.
    pub async fn acquire(pool: &PgPool) -> Result<Option<PgLeader>, sqlx::Error> {
        // Detached: the lock must live exactly as long as this connection, never be
        // handed back to the pool.
        let mut conn = pool.acquire().await?.detach();
        let locked: bool = sqlx::query_scalar(LOCK).fetch_one(&mut conn).await?;
        if !locked {
            let _ = conn.close().await;
            return Ok(None);
        }
        let (producer_id, next_seq, schema): (String, i64, String) = sqlx::query_as(
            "SELECT producer_id, next_seq, current_schema()::text FROM surety_outbox_relay WHERE name = $1",
        )
        .bind(RELAY_NAME)
        .fetch_one(&mut conn)
        .await?;
        // Subscribe before the first claim, so that no commit falls between an empty
        // claim and the LISTEN.
        let listener = match PgListener::connect_with(pool).await {
            Ok(mut l) => match l.listen("surety_outbox").await {
                Ok(()) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay: LISTEN failed; polling");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay: LISTEN failed; polling");
                None
            }
        };
        Ok(Some(PgLeader {
            conn,
            listener,
            pool: pool.clone(),
            schema,
            producer_id,
            next_seq,
        }))
    }

    pub async fn outstanding(&mut self) -> Result<Vec<Row>, LeadEnd> {
        let rows: Vec<RowTuple> = sqlx::query_as(&format!(
            "SELECT {ROW_COLUMNS} FROM surety_outbox o
             WHERE o.state = 'pending' AND o.relay_seq IS NOT NULL ORDER BY o.relay_seq"
        ))
        .fetch_all(&mut self.conn)
        .await?;
        Ok(rows.into_iter().map(Row::from).collect())
    }

    /// Stores consecutive sequences, from `next_seq`, in the oldest unclaimed rows, and
    /// the new `next_seq`, in one transaction.
    pub async fn claim(&mut self, n: usize) -> Result<Vec<Row>, LeadEnd> {
        let mut tx = self.conn.begin().await?;
        let rows: Vec<RowTuple> = sqlx::query_as(&format!(
            "WITH picked AS (
                 SELECT id FROM surety_outbox
                 WHERE state = 'pending' AND relay_seq IS NULL
                 ORDER BY id LIMIT $1
                 FOR UPDATE
             ), numbered AS (
                 SELECT id, $2::bigint + row_number() OVER (ORDER BY id) - 1 AS seq FROM picked
             )
             UPDATE surety_outbox o SET relay_seq = n.seq
             FROM numbered n WHERE o.id = n.id
             RETURNING {ROW_COLUMNS}"
        ))
        .bind(n as i64)
        .bind(self.next_seq)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let next = self.next_seq + rows.len() as i64;
        sqlx::query("UPDATE surety_outbox_relay SET next_seq = $1 WHERE name = $2")
            .bind(next)
            .bind(RELAY_NAME)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.next_seq = next;
        let mut rows: Vec<Row> = rows.into_iter().map(Row::from).collect();
        rows.sort_by_key(|r| r.seq);
        Ok(rows)
    }

    pub async fn settle(&mut self, s: &Settlement) -> Result<(), LeadEnd> {
        let mut tx = self.conn.begin().await?;
        if !s.sent.is_empty() {
            let ids: Vec<i64> = s.sent.iter().map(|r| r.0).collect();
            let partitions: Vec<i32> = s.sent.iter().map(|r| r.1 as i32).collect();
            let offsets: Vec<i64> = s.sent.iter().map(|r| r.2 as i64).collect();
            sqlx::query(
                "UPDATE surety_outbox o
                 SET state = 'sent', sent_at = clock_timestamp(), last_error = NULL,
                     broker_partition = u.p, broker_offset = u.o
                 FROM unnest($1::bigint[], $2::int[], $3::bigint[]) AS u(id, p, o)
                 WHERE o.id = u.id AND o.state = 'pending'",
            )
            .bind(ids)
            .bind(partitions)
            .bind(offsets)
            .execute(&mut *tx)
            .await?;
        }
        if !s.failed.is_empty() {
            let ids: Vec<i64> = s.failed.iter().map(|r| r.0).collect();
            let reasons: Vec<String> = s.failed.iter().map(|r| r.1.clone()).collect();
            sqlx::query(
                "UPDATE surety_outbox o SET attempts = o.attempts + 1, last_error = u.r
                 FROM unnest($1::bigint[], $2::text[]) AS u(id, r)
                 WHERE o.id = u.id AND o.state = 'pending'",
            )
            .bind(ids)
            .bind(reasons)
            .execute(&mut *tx)
            .await?;
        }
        if !s.dead.is_empty() {
            let ids: Vec<i64> = s.dead.iter().map(|r| r.0).collect();
            let reasons: Vec<String> = s.dead.iter().map(|r| r.1.clone()).collect();
            sqlx::query(
                "UPDATE surety_outbox o
                 SET state = 'dead', dead_at = clock_timestamp(), attempts = o.attempts + 1,
                     last_error = u.r
                 FROM unnest($1::bigint[], $2::text[]) AS u(id, r)
                 WHERE o.id = u.id AND o.state = 'pending'",
            )
            .bind(ids)
            .bind(reasons)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Returns on a NOTIFY from this schema's outbox, after `timeout`, or on stop.
    pub async fn wait_for_rows(&mut self, timeout: Duration, stop: &mut watch::Receiver<bool>) {
        let deadline = tokio::time::Instant::now() + timeout;
        let Some(listener) = self.listener.as_mut() else {
            return super::sleep_or_stop(timeout, stop).await;
        };
        loop {
            if *stop.borrow() {
                return;
            }
            tokio::select! {
                n = listener.recv() => match n {
                    Ok(n) if n.payload() == self.schema => return,
                    // Another schema's outbox: keep waiting.
                    Ok(_) => {}
                    // The listener reconnects by itself; a notification may have been
                    // missed meanwhile, so look now.
                    Err(_) => return,
                },
                _ = tokio::time::sleep_until(deadline) => return,
                _ = stop.changed() => return,
            }
        }
    }

    /// The pool maintenance runs on, beside the leader's own connection.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn release(self) {
        // Closing the connection releases the lock; a broken one is released by the
        // server anyway.
        let _ = self.conn.close().await;
    }
}

/// (pending rows, age of the oldest in seconds); then deletes expired sent rows. Runs on
/// the pool, in a task of its own beside the leader: on a table holding a day of sent
/// rows (or many just deleted) it can take hundreds of ms, which must not stall
/// relaying (it did: the p99 of `bench outbox` was one maintenance run, ~350 ms).
pub async fn maintain(
    pool: &PgPool,
    retention: Option<Duration>,
) -> Result<(i64, f64), sqlx::Error> {
    let sample = pending(pool).await?;
    if let Some(retention) = retention {
        sqlx::query(
            "DELETE FROM surety_outbox WHERE id IN (
                 SELECT id FROM surety_outbox
                 WHERE state = 'sent' AND sent_at < clock_timestamp() - $1 * interval '1 millisecond'
                 LIMIT 10000)",
        )
        .bind(retention.as_millis() as i64)
        .execute(pool)
        .await?;
    }
    Ok(sample)
}

/// (pending rows, age of the oldest in seconds, 0 when none).
pub async fn pending(pool: &PgPool) -> Result<(i64, f64), sqlx::Error> {
    // Pending rows are unclaimed or claimed, each with a partial index; a plain
    // `WHERE state = 'pending'` would scan every sent row kept for the retention.
    // The oldest is taken to be the pending row with the lowest id.
    let (pending, age): (i64, Option<f64>) = sqlx::query_as(
        "SELECT
           (SELECT count(*) FROM surety_outbox WHERE state = 'pending' AND relay_seq IS NULL)
         + (SELECT count(*) FROM surety_outbox WHERE state = 'pending' AND relay_seq IS NOT NULL),
           extract(epoch FROM clock_timestamp() - (
             SELECT created_at FROM surety_outbox WHERE id = LEAST(
               (SELECT min(id) FROM surety_outbox WHERE state = 'pending' AND relay_seq IS NULL),
               (SELECT min(id) FROM surety_outbox WHERE state = 'pending' AND relay_seq IS NOT NULL)
             )))::float8",
    )
    .fetch_one(pool)
    .await?;
    Ok((pending, age.unwrap_or(0.0).max(0.0)))
}
