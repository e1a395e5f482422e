//! Scenario 6: The outbox relay publishes through the transport exactly once under
//! relay kills, and the inbox applies each message once under redelivery.
//!
//! R rows are committed to a Postgres outbox (a schema of its own) while relays come and
//! go: a relay process ([`TransportFixture::spawn_relay`]) SIGKILLed, or, under
//! [`KillMode::Task`], a relay task aborted, several times; a last relay runs until
//! every row is `sent`. Then on the transport: every row is there, and where publish
//! dedupe is `Native` exactly once (R deliveries to a fresh group); a second group
//! applies each message through the [`Inbox`] in a Postgres transaction and fails some
//! of them *after* the commit on their first delivery (an ack lost), so they are
//! redelivered: the inbox must skip those, leaving exactly R applied rows.
//!
//! Needs Postgres ([`TransportFixture::postgres_url`]): skipped with the reason when it
//! does not answer, but under `CI=true` that fails.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, Transaction};
use surety_core::{Delivery, PublishDedupe, TopicSpec, Transport};
use surety_outbox::{BoxFuture, Database, Inbox, Processed};

use crate::support::{
    ConsumerOpts, Proc, Record, create_topic, eventually, start_consumer, start_recording, unique,
    wait_settled,
};
use crate::{ChildRelay, KillMode, TransportFixture, Verdict};

/// Rows written.
const R: u64 = 40;
/// Relays killed while rows are written.
const KILLS: usize = 4;
const LEASE: Duration = Duration::from_secs(5);
/// Rows per claim of the relay: several rounds, so kills fall between them.
const RELAY_BATCH: usize = 7;
const INBOX_CONSUMER: &str = "conformance";

pub(crate) async fn run(fx: &dyn TransportFixture) -> Verdict {
    let base_url = fx.postgres_url();
    let admin = match pool(&base_url, 2).await {
        Ok(p) => p,
        Err(e) => {
            let why = format!("Postgres at {} unavailable: {e}", redact(&base_url));
            assert!(
                std::env::var("CI").ok().as_deref() != Some("true"),
                "{why} (required under CI=true)"
            );
            return Verdict::Skipped(why);
        }
    };
    let schema = unique("conf_s6").replace('-', "_");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    let verdict = in_schema(fx, &base_url, &schema).await;
    let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await;
    verdict
}

async fn in_schema(fx: &dyn TransportFixture, base_url: &str, schema: &str) -> Verdict {
    let sep = if base_url.contains('?') { '&' } else { '?' };
    let db_url = format!("{base_url}{sep}options[search_path]={schema}");
    let db = pool(&db_url, 4).await.expect("the scenario's schema");
    surety_outbox::migrate(&Database::Postgres(db.clone()))
        .await
        .expect("outbox migrate");
    sqlx::query("CREATE TABLE applied (payload TEXT NOT NULL, message_id TEXT NOT NULL)")
        .execute(&db)
        .await
        .unwrap();

    let t = fx.connect().await;
    let caps = t.capabilities().clone();
    let topic = unique("s6");
    create_topic(
        &t,
        &topic,
        TopicSpec {
            ack_wait: Some(LEASE),
            max_deliveries: Some(20),
            ..TopicSpec::default()
        },
    )
    .await;

    // Rows committed, a few per transaction, while relays are killed.
    let writer = {
        let (db, topic) = (db.clone(), topic.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while n < R {
                let mut tx = db.begin().await.unwrap();
                for _ in 0..(1 + n % 3).min(R - n) {
                    sqlx::query(
                        "INSERT INTO surety_outbox (topic, key, payload) VALUES ($1, $2, $3)",
                    )
                    .bind(&topic)
                    .bind(format!("k{}", n % 3).into_bytes())
                    .bind(format!("s6-{n}").into_bytes())
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                    n += 1;
                }
                tx.commit().await.unwrap();
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        })
    };
    let logs = tempfile::tempdir().unwrap();
    for kill in 0..KILLS {
        let relay = Relay::start(fx, &t, &db_url, logs.path(), kill).await;
        tokio::time::sleep(Duration::from_millis(300 + 150 * kill as u64)).await;
        relay.kill().await;
        let sent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM surety_outbox WHERE state = 'sent'")
                .fetch_one(&db)
                .await
                .unwrap();
        println!("relay {kill} killed; {sent} rows sent so far");
    }
    writer.await.expect("the writer");
    let last = Relay::start(fx, &t, &db_url, logs.path(), KILLS).await;
    eventually(Duration::from_secs(60), "every outbox row sent", || async {
        let (sent, total): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'sent'), count(*) FROM surety_outbox",
        )
        .fetch_one(&db)
        .await
        .map_err(|e| e.to_string())?;
        if sent == R as i64 && total == R as i64 {
            Ok(())
        } else {
            Err(format!(
                "{sent} of {total} rows sent; relay logs:\n{}",
                last.log_tail()
            ))
        }
    })
    .await;
    last.kill().await;
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM surety_outbox WHERE state = 'dead'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(dead, 0, "rows marked dead");

    // On the transport: every row, once where dedupe is native.
    let plain = unique("plain");
    let record = Record::default();
    let reader = start_recording(&t, &topic, &plain, ConsumerOpts::lease(LEASE), &record);
    eventually(Duration::from_secs(30), "every row delivered", || async {
        let n = distinct_payloads(&record).len() as u64;
        if n >= R {
            Ok(())
        } else {
            Err(format!("{n} distinct rows"))
        }
    })
    .await;
    wait_settled(&t, &topic, &plain, Duration::from_secs(30)).await;
    reader.stop().await;
    let payloads = distinct_payloads(&record);
    for n in 0..R {
        assert!(
            payloads.contains_key(&format!("s6-{n}")),
            "row s6-{n} never arrived"
        );
    }
    let copies = record.len() as u64;
    println!(
        "{R} rows, {KILLS} relays killed ({:?}): {copies} copies on the transport",
        fx.consumer_kill()
    );
    if let PublishDedupe::Native { .. } = caps.publish_dedupe {
        let twice: Vec<_> = payloads.iter().filter(|(_, c)| **c > 1).collect();
        assert!(
            twice.is_empty() && copies == R,
            "with native publish dedupe, rows stored more than once: {twice:?}"
        );
    }

    // The inbox: each message applied once, though some are redelivered after commit.
    inbox_applies_once(&t, &topic, &db).await;
    Verdict::Passed
}

fn distinct_payloads(record: &Record) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for s in record.all() {
        *m.entry(s.payload()).or_default() += 1;
    }
    m
}

async fn inbox_applies_once(t: &Arc<dyn Transport>, topic: &str, db: &PgPool) {
    let group = unique("inbox");
    let duplicates = Arc::new(AtomicU64::new(0));
    let failed_after_commit = Arc::new(AtomicU64::new(0));
    let consumer = {
        let (db, duplicates, failed) =
            (db.clone(), duplicates.clone(), failed_after_commit.clone());
        start_consumer(
            t,
            topic,
            &group,
            ConsumerOpts {
                nack_delay: Duration::from_millis(50),
                ..ConsumerOpts::lease(LEASE)
            },
            move |d: Delivery| {
                let (db, duplicates, failed) = (db.clone(), duplicates.clone(), failed.clone());
                async move {
                    let id = d
                        .message_id()
                        .ok_or("a relayed message has no message id")?
                        .to_string();
                    let payload = String::from_utf8_lossy(&d.payload).into_owned();
                    let mut tx = db.begin().await.map_err(|e| e.to_string())?;
                    let done = apply(&mut tx, &id, &payload).await?;
                    tx.commit().await.map_err(|e| e.to_string())?;
                    if done.is_duplicate() {
                        duplicates.fetch_add(1, Ordering::SeqCst);
                    } else if d.delivery_count == 1 && d.sequence.unwrap_or(0).is_multiple_of(3) {
                        // Committed, but the ack is "lost": it comes again.
                        failed.fetch_add(1, Ordering::SeqCst);
                        return Err("conformance: failing after the inbox commit".to_owned());
                    }
                    Ok(())
                }
            },
        )
    };
    eventually(Duration::from_secs(60), "every message applied", || async {
        let applied: i64 = sqlx::query_scalar("SELECT count(DISTINCT payload) FROM applied")
            .fetch_one(db)
            .await
            .map_err(|e| e.to_string())?;
        if applied == R as i64 {
            Ok(())
        } else {
            Err(format!("{applied} applied"))
        }
    })
    .await;
    // Settled: every redelivery after a failed-after-commit run has been handled too.
    wait_settled(t, topic, &group, Duration::from_secs(30)).await;
    consumer.stop().await;
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT message_id) FROM applied")
            .fetch_one(db)
            .await
            .unwrap();
    let failed = failed_after_commit.load(Ordering::SeqCst);
    let skipped = duplicates.load(Ordering::SeqCst);
    assert!(failed > 0, "no message was redelivered after its commit");
    assert_eq!(
        (rows, distinct),
        (R as i64, R as i64),
        "the inbox applied {rows} rows for {distinct} messages; {failed} were redelivered \
         after their commit, {skipped} of those redeliveries skipped"
    );
    assert!(
        skipped >= failed,
        "{failed} messages redelivered after their commit, only {skipped} skipped as duplicates"
    );
}

/// Applies one message through the inbox, inside `tx`.
async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
    payload: &str,
) -> Result<Processed<()>, String> {
    let (id_owned, payload) = (id.to_owned(), payload.to_owned());
    Inbox::new()
        .process(tx, INBOX_CONSUMER, id, move |conn| {
            insert_applied(conn, payload, id_owned)
        })
        .await
        .map_err(|e| e.to_string())
}

fn insert_applied(
    conn: &mut PgConnection,
    payload: String,
    id: String,
) -> BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        sqlx::query("INSERT INTO applied (payload, message_id) VALUES ($1, $2)")
            .bind(payload)
            .bind(id)
            .execute(conn)
            .await
            .map(|_| ())
    })
}

async fn pool(url: &str, max: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if url[s + 3..at].contains(':') => {
            let user_end = s + 3 + url[s + 3..at].find(':').unwrap();
            format!("{}:***{}", &url[..user_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// A relay that will be killed.
enum Relay {
    Process {
        child: Proc,
        log: std::path::PathBuf,
    },
    Task(tokio::task::JoinHandle<()>),
}

impl Relay {
    async fn start(
        fx: &dyn TransportFixture,
        t: &Arc<dyn Transport>,
        db_url: &str,
        logs: &std::path::Path,
        n: usize,
    ) -> Relay {
        match fx.consumer_kill() {
            KillMode::Process => {
                let spec = ChildRelay {
                    database_url: db_url.to_owned(),
                    batch_size: RELAY_BATCH,
                    log: logs.join(format!("relay-{n}.log")),
                };
                let child = fx
                    .spawn_relay(&spec)
                    .map(Proc)
                    .unwrap_or_else(|e| panic!("KillMode::Process without a relay process: {e}"));
                Relay::Process {
                    child,
                    log: spec.log,
                }
            }
            KillMode::Task => Relay::Task(relay_task(t.clone(), db_url).await),
        }
    }

    /// SIGKILL, or abort: no goodbye either way.
    async fn kill(self) {
        match self {
            Relay::Process { mut child, log } => {
                if let Some(status) = child.exited() {
                    panic!(
                        "a relay exited on its own ({status}):\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                child.sigkill();
            }
            Relay::Task(task) => {
                task.abort();
                let _ = task.await;
            }
        }
    }

    fn log_tail(&self) -> String {
        match self {
            Relay::Process { log, .. } => {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            }
            Relay::Task(_) => "(a task: see the test output)".to_owned(),
        }
    }
}

/// A relay in this process, publishing through `t`.
async fn relay_task(t: Arc<dyn Transport>, db_url: &str) -> tokio::task::JoinHandle<()> {
    let db = Database::connect(db_url).await.expect("relay database");
    let config = surety_outbox::RelayConfig {
        batch_size: RELAY_BATCH,
        poll_interval: Duration::from_millis(20),
        standby_interval: Duration::from_millis(50),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(500),
        publish_retry: crate::support::fast_retry(),
        ..surety_outbox::RelayConfig::default()
    };
    let relay = surety_outbox::Relay::new(db, t, config);
    tokio::spawn(async move {
        if let Err(e) = relay.run().await {
            panic!("relay task: {e}");
        }
    })
}
