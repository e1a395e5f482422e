//! The active relay on SQLite: a lease in `surety_outbox_relay` (holder, expiry, epoch).
//! Every claim renews it first, in the claim's own write transaction, so a relay whose
//! lease was taken over cannot claim (SQLite runs one writer at a time, so the check and
//! the claim are atomic). A standby takes over once the lease has run out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{Sqlite, SqlitePool, Transaction};

use super::{LeadEnd, Row, RowTuple, Settlement};
use crate::schema::{RELAY_NAME, SQLITE_NOW_MS};

const ROW_COLUMNS: &str = "id, relay_seq, topic, key, payload, headers, attempts";

pub(crate) struct SqliteLeader {
    pool: SqlitePool,
    holder: String,
    lease: Duration,
    pub producer_id: String,
    next_seq: i64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl SqliteLeader {
    /// Takes the lease if it is free, expired, or already ours; `None` otherwise.
    pub async fn acquire(
        pool: &SqlitePool,
        holder: &str,
        lease: Duration,
    ) -> Result<Option<SqliteLeader>, sqlx::Error> {
        let now = now_ms();
        let taken = sqlx::query(
            "UPDATE surety_outbox_relay SET holder = ?1, lease_until = ?2, epoch = epoch + 1
             WHERE name = ?3 AND (holder IS NULL OR holder = ?1 OR lease_until < ?4)",
        )
        .bind(holder)
        .bind(now + lease.as_millis() as i64)
        .bind(RELAY_NAME)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected();
        if taken == 0 {
            return Ok(None);
        }
        let (producer_id, next_seq): (String, i64) =
            sqlx::query_as("SELECT producer_id, next_seq FROM surety_outbox_relay WHERE name = ?1")
                .bind(RELAY_NAME)
                .fetch_one(pool)
                .await?;
        Ok(Some(SqliteLeader {
            pool: pool.clone(),
            holder: holder.to_owned(),
            lease: lease.max(Duration::from_millis(100)),
            producer_id,
            next_seq,
        }))
    }

    /// Renews the lease as the first write of `tx`: false if another relay holds it.
    async fn renew(&self, tx: &mut Transaction<'_, Sqlite>) -> Result<bool, sqlx::Error> {
        let renewed = sqlx::query(
            "UPDATE surety_outbox_relay SET lease_until = ?1 WHERE name = ?2 AND holder = ?3",
        )
        .bind(now_ms() + self.lease.as_millis() as i64)
        .bind(RELAY_NAME)
        .bind(&self.holder)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(renewed == 1)
    }

    pub async fn outstanding(&mut self) -> Result<Vec<Row>, LeadEnd> {
        let rows: Vec<RowTuple> = sqlx::query_as(&format!(
            "SELECT {ROW_COLUMNS} FROM surety_outbox
             WHERE state = 'pending' AND relay_seq IS NOT NULL ORDER BY relay_seq"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Row::from).collect())
    }

    pub async fn claim(&mut self, n: usize) -> Result<Vec<Row>, LeadEnd> {
        let mut tx = self.pool.begin().await?;
        // A write first: the transaction takes the write lock now (waiting for the
        // application's writers) instead of failing to upgrade a read snapshot later.
        if !self.renew(&mut tx).await? {
            return Err(LeadEnd::LostLease);
        }
        let rows: Vec<RowTuple> = sqlx::query_as(&format!(
            "WITH picked AS (
                 SELECT id, row_number() OVER (ORDER BY id) - 1 AS rn FROM (
                     SELECT id FROM surety_outbox
                     WHERE state = 'pending' AND relay_seq IS NULL
                     ORDER BY id LIMIT ?1)
             )
             UPDATE surety_outbox SET relay_seq = ?2 + picked.rn
             FROM picked WHERE surety_outbox.id = picked.id
             RETURNING {ROW_COLUMNS}"
        ))
        .bind(n as i64)
        .bind(self.next_seq)
        .fetch_all(&mut *tx)
        .await?;
        let next = self.next_seq + rows.len() as i64;
        if !rows.is_empty() {
            sqlx::query("UPDATE surety_outbox_relay SET next_seq = ?1 WHERE name = ?2")
                .bind(next)
                .bind(RELAY_NAME)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.next_seq = next;
        let mut rows: Vec<Row> = rows.into_iter().map(Row::from).collect();
        rows.sort_by_key(|r| r.seq);
        Ok(rows)
    }

    pub async fn settle(&mut self, s: &Settlement) -> Result<(), LeadEnd> {
        let mut tx = self.pool.begin().await?;
        let still_leader = self.renew(&mut tx).await?;
        for (id, partition, offset) in &s.sent {
            // Sent is true whoever holds the lease: the broker confirmed it.
            sqlx::query(&format!(
                "UPDATE surety_outbox SET state = 'sent', sent_at = {SQLITE_NOW_MS},
                     last_error = NULL, broker_partition = ?1, broker_offset = ?2
                 WHERE id = ?3 AND state = 'pending'"
            ))
            .bind(*partition as i64)
            .bind(*offset as i64)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        // Failures and deaths only by the lease holder: a deposed relay's verdict may be
        // stale (the new leader may have published the row meanwhile).
        if still_leader {
            for (id, reason) in &s.failed {
                sqlx::query(
                    "UPDATE surety_outbox SET attempts = attempts + 1, last_error = ?1
                     WHERE id = ?2 AND state = 'pending'",
                )
                .bind(reason)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            for (id, reason) in &s.dead {
                sqlx::query(&format!(
                    "UPDATE surety_outbox SET state = 'dead', dead_at = {SQLITE_NOW_MS},
                         attempts = attempts + 1, last_error = ?1
                     WHERE id = ?2 AND state = 'pending'"
                ))
                .bind(reason)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        if still_leader {
            Ok(())
        } else {
            Err(LeadEnd::LostLease)
        }
    }

    pub async fn maintain(&mut self, retention: Option<Duration>) -> Result<(i64, f64), LeadEnd> {
        let sample = pending(&self.pool).await?;
        if let Some(retention) = retention {
            sqlx::query(&format!(
                "DELETE FROM surety_outbox WHERE id IN (
                     SELECT id FROM surety_outbox
                     WHERE state = 'sent' AND sent_at < {SQLITE_NOW_MS} - ?1 LIMIT 10000)"
            ))
            .bind(retention.as_millis() as i64)
            .execute(&self.pool)
            .await?;
        }
        Ok(sample)
    }

    /// Gives the lease up, so a standby need not wait for it to run out.
    pub async fn release(self) {
        let _ = sqlx::query(
            "UPDATE surety_outbox_relay SET holder = NULL, lease_until = 0
             WHERE name = ?1 AND holder = ?2",
        )
        .bind(RELAY_NAME)
        .bind(&self.holder)
        .execute(&self.pool)
        .await;
    }
}

/// (pending rows, age of the oldest in seconds, 0 when none).
pub async fn pending(pool: &SqlitePool) -> Result<(i64, f64), sqlx::Error> {
    // As on Postgres: through the two partial indexes of pending rows, not a scan of
    // every sent row kept for the retention.
    let (pending, age_ms): (i64, Option<i64>) = sqlx::query_as(&format!(
        "WITH firsts AS (SELECT
             (SELECT min(id) FROM surety_outbox WHERE state = 'pending' AND relay_seq IS NULL) AS a,
             (SELECT min(id) FROM surety_outbox WHERE state = 'pending' AND relay_seq IS NOT NULL) AS b)
         SELECT
           (SELECT count(*) FROM surety_outbox WHERE state = 'pending' AND relay_seq IS NULL)
         + (SELECT count(*) FROM surety_outbox WHERE state = 'pending' AND relay_seq IS NOT NULL),
           {SQLITE_NOW_MS} - (SELECT created_at FROM surety_outbox, firsts
                              WHERE id = min(coalesce(a, b), coalesce(b, a)))
         FROM firsts"
    ))
    .fetch_one(pool)
    .await?;
    Ok((pending, age_ms.unwrap_or(0).max(0) as f64 / 1000.0))
}
