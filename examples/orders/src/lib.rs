//! The orders example: a service that writes an order and its `order-placed` message in
//! one database transaction (the outbox), the relay that publishes those messages to
//! Surety, and a projection that consumes them through the inbox so each order is
//! counted exactly once, however often it is delivered. Postgres or SQLite, by URL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use sqlx::{PgConnection, SqliteConnection};
use surety_client::{Client, Consumer, Delivery, StopHandle};
use surety_outbox::{Database, Inbox, OutboxMessage, Processed, enqueue, message_id};

pub const TOPIC: &str = "orders";
/// The projection's consumer group, and its name in the inbox.
pub const PROJECTION: &str = "order-totals";

/// The outbox tables plus the example's own: orders and the per-customer projection.
pub async fn migrate(db: &Database) -> Result<()> {
    surety_outbox::migrate(db).await?;
    let tables = [
        "CREATE TABLE IF NOT EXISTS orders (
             id TEXT PRIMARY KEY, customer TEXT NOT NULL, amount_cents BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS order_totals (
             customer TEXT PRIMARY KEY, orders BIGINT NOT NULL, total_cents BIGINT NOT NULL)",
    ];
    for sql in tables {
        match db {
            Database::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ())?,
            Database::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ())?,
        }
    }
    Ok(())
}

/// The message body: `order_id,customer,amount_cents`.
fn body(id: &str, customer: &str, amount_cents: i64) -> String {
    format!("{id},{customer},{amount_cents}")
}

/// Places an order: the order row and its outbox row commit together or not at all.
pub async fn place_order(db: &Database, id: &str, customer: &str, amount_cents: i64) -> Result<()> {
    let message = OutboxMessage::new(TOPIC, body(id, customer, amount_cents))
        .with_key(customer)
        .with_header("type", "order-placed");
    match db {
        Database::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO orders (id, customer, amount_cents) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(customer)
                .bind(amount_cents)
                .execute(&mut *tx)
                .await?;
            enqueue(&mut tx, &message).await?;
            tx.commit().await?;
        }
        Database::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO orders (id, customer, amount_cents) VALUES (?1, ?2, ?3)")
                .bind(id)
                .bind(customer)
                .bind(amount_cents)
                .execute(&mut *tx)
                .await?;
            enqueue(&mut tx, &message).await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

fn parse(payload: &[u8]) -> Result<(String, i64)> {
    let text = std::str::from_utf8(payload).context("payload is not UTF-8")?;
    let mut parts = text.split(',');
    let (_id, customer, amount) = (parts.next(), parts.next(), parts.next());
    let customer = customer.context("no customer in the payload")?.to_owned();
    let amount = amount.context("no amount in the payload")?.parse()?;
    Ok((customer, amount))
}

/// Applies one delivery to the projection, once: the inbox record and the projection's
/// update commit in one transaction. Returns whether it was applied (false: a
/// redelivery, skipped).
pub async fn project(db: &Database, delivery: &Delivery) -> Result<bool> {
    let id = message_id(delivery).context("message has no producer sequence or id")?;
    let (customer, amount) = parse(&delivery.payload)?;
    let outcome = match db {
        Database::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            let r = Inbox
                .process(&mut tx, PROJECTION, id.as_str(), |conn: &mut PgConnection| {
                    Box::pin(async move {
                        sqlx::query(
                            "INSERT INTO order_totals (customer, orders, total_cents) VALUES ($1, 1, $2)
                             ON CONFLICT (customer) DO UPDATE SET orders = order_totals.orders + 1,
                                 total_cents = order_totals.total_cents + excluded.total_cents",
                        )
                        .bind(customer)
                        .bind(amount)
                        .execute(&mut *conn)
                        .await
                        .map(|_| ())
                    })
                })
                .await?;
            tx.commit().await?;
            r
        }
        Database::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            let r = Inbox
                .process(&mut tx, PROJECTION, id.as_str(), |conn: &mut SqliteConnection| {
                    Box::pin(async move {
                        sqlx::query(
                            "INSERT INTO order_totals (customer, orders, total_cents) VALUES (?1, 1, ?2)
                             ON CONFLICT (customer) DO UPDATE SET orders = order_totals.orders + 1,
                                 total_cents = order_totals.total_cents + excluded.total_cents",
                        )
                        .bind(customer)
                        .bind(amount)
                        .execute(&mut *conn)
                        .await
                        .map(|_| ())
                    })
                })
                .await?;
            tx.commit().await?;
            r
        }
    };
    Ok(outcome != Processed::Duplicate)
}

/// What a projection run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProjectionStats {
    /// Orders added to the projection.
    pub applied: u64,
    /// Redeliveries the inbox recognised and skipped.
    pub skipped: u64,
    /// Deliveries that could not be projected, and were nacked.
    pub failed: u64,
}

/// Runs the projection consumer until `stop`. A delivery it cannot project (not an
/// order, or the database failed) is nacked, and a line on stdout says so: the broker
/// redelivers it until the topic's `max_deliveries`, then moves it to the group's dead
/// letters, where it waits for `surety dlq resend` or `purge`. Nothing is skipped
/// silently.
pub async fn run_projection(
    db: Database,
    client: Client,
    stop: StopHandle,
) -> Result<ProjectionStats> {
    let max_deliveries = max_deliveries(&client).await;
    let applied = Arc::new(AtomicU64::new(0));
    let skipped = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (a, s, f) = (applied.clone(), skipped.clone(), failed.clone());
    Consumer::builder(client, TOPIC, PROJECTION)
        .stop_with(stop)
        .run(move |d: Delivery| {
            let (db, a, s, f) = (db.clone(), a.clone(), s.clone(), f.clone());
            async move {
                match project(&db, &d).await {
                    Ok(true) => a.fetch_add(1, Ordering::Relaxed),
                    Ok(false) => s.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        f.fetch_add(1, Ordering::Relaxed);
                        let reason = format!("{e:#}");
                        println!("{}", failure_line(&d, max_deliveries, &reason));
                        // Err nacks: the broker redelivers, and the inbox makes that safe.
                        return Err(reason);
                    }
                };
                Ok::<(), String>(())
            }
        })
        .await?;
    Ok(ProjectionStats {
        applied: applied.load(Ordering::Relaxed),
        skipped: skipped.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
    })
}

/// The topic's `max_deliveries`, if the server says (only for the message printed).
async fn max_deliveries(client: &Client) -> Option<u32> {
    let topic = client.describe_topic(TOPIC).await.ok()?;
    let config: serde_json::Value = serde_json::from_str(&topic.config_json).ok()?;
    config.get("max_deliveries")?.as_u64()?.try_into().ok()
}

/// What `orders project` prints for a delivery it nacks.
pub fn failure_line(d: &Delivery, max_deliveries: Option<u32>, reason: &str) -> String {
    let at = format!("{TOPIC} {}", d.position);
    let fate = match max_deliveries {
        Some(max) if d.delivery_count >= max => format!(
            "nacked for the last time (delivery {} of {max}): it goes to the dead letters, \
             see `surety dlq list {TOPIC} --group {PROJECTION}`",
            d.delivery_count
        ),
        Some(max) => format!(
            "nacked (delivery {} of {max}): it will be redelivered, and dead-lettered \
             after {max}",
            d.delivery_count
        ),
        None => format!(
            "nacked (delivery {}): it will be redelivered, and dead-lettered after the \
             topic's max_deliveries",
            d.delivery_count
        ),
    };
    format!("cannot project {at}: {reason}; {fate}")
}

/// The projection: (customer, orders, total_cents), by customer.
pub async fn totals(db: &Database) -> Result<Vec<(String, i64, i64)>> {
    let sql = "SELECT customer, orders, total_cents FROM order_totals ORDER BY customer";
    Ok(match db {
        Database::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await?,
        Database::Sqlite(p) => sqlx::query_as(sql).fetch_all(p).await?,
    })
}
