//! Guards the relay's promises on real Postgres and SQLite against a real Surety server:
//! rows reach the broker once (none lost, none duplicated) even with two relays and an
//! active relay dropped mid-round, a long transaction's row committed after later rows
//! is still relayed, per-key order is kept, and bad rows end `dead` with their reason
//! while the relay keeps going.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::{
    PgSchema, RunningRelay, SqliteFile, TestServer, fast_config, states, unique, wait_settled,
};
use surety_outbox::{Database, OutboxMessage, RelayConfig, enqueue};

const SETTLE: Duration = Duration::from_secs(60);

async fn exec(db: &Database, sql: &str) {
    match db {
        Database::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        Database::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// (state, last_error) of every row by payload.
async fn rows_by_payload(db: &Database) -> HashMap<String, (String, Option<String>)> {
    let sql = "SELECT payload, state, last_error FROM surety_outbox";
    let rows: Vec<(Vec<u8>, String, Option<String>)> = match db {
        Database::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await.unwrap(),
        Database::Sqlite(p) => sqlx::query_as(sql).fetch_all(p).await.unwrap(),
    };
    rows.into_iter()
        .map(|(p, s, e)| (String::from_utf8_lossy(&p).into_owned(), (s, e)))
        .collect()
}

// ---- a plain INSERT with every other column defaulted ----

async fn plain_insert_is_relayed(db: &Database) {
    let server = TestServer::start().await;
    let topic = unique("plain");
    server.topic(&topic, "").await;
    exec(
        db,
        &format!("INSERT INTO surety_outbox (topic, key, payload) VALUES ('{topic}', 'order-1', 'created')"),
    )
    .await;
    let relay = RunningRelay::start(db, &server.client, fast_config());
    wait_settled(db, SETTLE).await;
    let stats = relay.stop().await;
    assert_eq!(stats.published, 1);
    let got = server.read_all(&topic, 1, SETTLE).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"created");
    assert_eq!(got[0].key.as_deref(), Some(&b"order-1"[..]));
    assert!(
        got[0]
            .producer_id
            .as_deref()
            .is_some_and(|p| p.starts_with("surety-outbox-"))
    );
    assert_eq!(states(db).await.get("sent"), Some(&1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_plain_insert_with_defaults_is_relayed() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    plain_insert_is_relayed(&pg.db).await;
    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_plain_insert_with_defaults_is_relayed() {
    let lite = SqliteFile::create().await;
    plain_insert_is_relayed(&lite.db).await;
}

// ---- enqueue commits and rolls back with the caller's transaction ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_enqueue_is_published_only_if_its_transaction_commits() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let server = TestServer::start().await;
    let topic = unique("tx");
    server.topic(&topic, "").await;
    let msg = |p: &str| {
        OutboxMessage::new(&topic, p)
            .with_key("k")
            .with_header("kind", "order")
    };

    let mut tx = pg.pool().begin().await.unwrap();
    enqueue(&mut tx, &msg("rolled back")).await.unwrap();
    tx.rollback().await.unwrap();
    let mut tx = pg.pool().begin().await.unwrap();
    enqueue(&mut tx, &msg("committed")).await.unwrap();
    tx.commit().await.unwrap();
    assert!(matches!(
        enqueue(
            &mut *pg.pool().acquire().await.unwrap(),
            &OutboxMessage::new("", "x")
        )
        .await,
        Err(surety_outbox::EnqueueError::EmptyTopic)
    ));

    let relay = RunningRelay::start(&pg.db, &server.client, fast_config());
    wait_settled(&pg.db, SETTLE).await;
    relay.stop().await;
    let got = server.read_all(&topic, 1, SETTLE).await;
    assert_eq!(got.len(), 1, "only the committed row is published");
    assert_eq!(got[0].payload, b"committed");
    assert_eq!(
        got[0].headers.get("kind").map(String::as_str),
        Some("order")
    );
    server.stop().await;
    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_enqueue_is_published_only_if_its_transaction_commits() {
    let lite = SqliteFile::create().await;
    let server = TestServer::start().await;
    let topic = unique("tx");
    server.topic(&topic, "").await;
    let msg = |p: &str| OutboxMessage::new(&topic, p).with_header("kind", "order");
    let mut tx = lite.pool().begin().await.unwrap();
    enqueue(&mut tx, &msg("rolled back")).await.unwrap();
    tx.rollback().await.unwrap();
    let mut tx = lite.pool().begin().await.unwrap();
    enqueue(&mut tx, &msg("committed")).await.unwrap();
    tx.commit().await.unwrap();

    let relay = RunningRelay::start(&lite.db, &server.client, fast_config());
    wait_settled(&lite.db, SETTLE).await;
    relay.stop().await;
    let got = server.read_all(&topic, 1, SETTLE).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"committed");
    assert_eq!(
        got[0].headers.get("kind").map(String::as_str),
        Some("order")
    );
    server.stop().await;
}

// ---- gap safety ----

/// The row of a transaction that took its id first but commits last is still relayed,
/// after the relay already published (and marked sent) rows with higher ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_long_transaction_committing_after_later_rows_is_still_relayed() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let server = TestServer::start().await;
    let topic = unique("gap");
    server.topic(&topic, "").await;
    let relay = RunningRelay::start(&pg.db, &server.client, fast_config());

    let mut long = pg.pool().begin().await.unwrap();
    let early_id = enqueue(&mut long, &OutboxMessage::new(&topic, "long"))
        .await
        .unwrap();
    for i in 0..20 {
        let mut tx = pg.pool().begin().await.unwrap();
        let id = enqueue(&mut tx, &OutboxMessage::new(&topic, format!("later-{i}")))
            .await
            .unwrap();
        assert!(id > early_id);
        tx.commit().await.unwrap();
    }
    wait_settled(&pg.db, SETTLE).await;
    assert_eq!(
        states(&pg.db).await.get("sent"),
        Some(&20),
        "later rows went first"
    );
    // Let the relay run rounds past the higher ids before the gap closes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    long.commit().await.unwrap();
    wait_settled(&pg.db, SETTLE).await;
    relay.stop().await;

    let got = server.read_all(&topic, 21, SETTLE).await;
    let payloads: Vec<String> = got
        .iter()
        .map(|d| String::from_utf8_lossy(&d.payload).into())
        .collect();
    assert_eq!(payloads.len(), 21, "{payloads:?}");
    assert_eq!(
        payloads.last().map(String::as_str),
        Some("long"),
        "{payloads:?}"
    );
    assert_eq!(states(&pg.db).await.get("sent"), Some(&21));
    server.stop().await;
    pg.drop().await;
}

// ---- two relays at once, the active one dropped mid-round ----

const KEYS: usize = 4;

/// Writers insert rows for `KEYS` keys (one writer per key, one row per transaction, so
/// per key the id order is the commit order) while two relays run; the first is
/// aborted mid-flight (its task dropped, connection gone) at a random point. Then:
/// every row stored exactly once, and per key in id order.
async fn two_relays_no_duplicates_per_key_order(db: &Database, rows_per_key: usize) {
    let server = TestServer::start().await;
    let topic = unique("two");
    server.topic(&topic, "").await;
    let config = RelayConfig {
        batch_size: 7,
        ..fast_config()
    };
    let first = RunningRelay::start(db, &server.client, config.clone());
    // The first is the active one, so that dropping it hands over to the second.
    while first.counters.snapshot().takeovers == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = RunningRelay::start(db, &server.client, config);

    let mut writers = Vec::new();
    for k in 0..KEYS {
        let db = db.clone();
        let topic = topic.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..rows_per_key {
                let m =
                    OutboxMessage::new(&topic, format!("k{k}-{i:05}")).with_key(format!("k{k}"));
                match &db {
                    Database::Postgres(p) => {
                        let mut tx = p.begin().await.unwrap();
                        enqueue(&mut tx, &m).await.unwrap();
                        tx.commit().await.unwrap();
                    }
                    Database::Sqlite(p) => {
                        let mut tx = p.begin().await.unwrap();
                        enqueue(&mut tx, &m).await.unwrap();
                        tx.commit().await.unwrap();
                    }
                }
            }
        }));
    }
    // Dropped mid-flight, after it published something (a loaded machine may take a
    // while to get there; a fixed sleep alone sometimes ended before its first batch).
    let deadline = tokio::time::Instant::now() + SETTLE;
    while first.counters.snapshot().published == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 300)).await;
    first.task.abort();
    let first_published = first.counters.snapshot().published;
    for w in writers {
        w.await.unwrap();
    }
    wait_settled(db, SETTLE).await;
    let stats = second.stop().await;
    let total = KEYS * rows_per_key;
    assert_eq!(
        server.stored(&topic).await,
        total as u64,
        "stored exactly once each"
    );
    let got = server.read_all(&topic, total, SETTLE).await;
    assert_eq!(got.len(), total);
    let mut per_key: BTreeMap<Vec<u8>, Vec<String>> = BTreeMap::new();
    for d in &got {
        per_key
            .entry(d.key.clone().unwrap())
            .or_default()
            .push(String::from_utf8_lossy(&d.payload).into());
    }
    for (key, payloads) in &per_key {
        let mut sorted = payloads.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(payloads, &sorted, "key {key:?}: out of order or duplicated");
        assert_eq!(payloads.len(), rows_per_key);
    }
    assert_eq!(states(db).await.get("sent"), Some(&(total as i64)));
    assert!(
        first_published > 0,
        "the first relay was active before it was dropped"
    );
    assert_eq!(stats.takeovers, 1, "the second took over");
    eprintln!("first relay published {first_published}; second relay: {stats:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_relays_no_duplicates_per_key_order_kept() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    two_relays_no_duplicates_per_key_order(&pg.db, 150).await;
    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_relays_no_duplicates_per_key_order_kept() {
    let lite = SqliteFile::create().await;
    two_relays_no_duplicates_per_key_order(&lite.db, 100).await;
}

// ---- bad rows end dead, the relay keeps going ----

async fn bad_rows_end_dead(db: &Database) {
    let server = TestServer::start().await;
    let topic = unique("bad");
    server.topic(&topic, r#"{"max_message_bytes":1024}"#).await;
    let big = "x".repeat(4096);
    let mut values = Vec::new();
    for i in 0..5 {
        values.push(format!("('{topic}', 'ok-{i}', '{{}}')"));
    }
    values.push(format!(
        "('no-such-topic-{}', 'unknown', '{{}}')",
        rand::random::<u32>()
    ));
    values.push(format!("('{topic}', '{big}', '{{}}')"));
    values.push(format!("('{topic}', 'bad-headers', 'not json')"));
    for i in 5..10 {
        values.push(format!("('{topic}', 'ok-{i}', '{{}}')"));
    }
    // Headers as text so that a non-JSON value can reach the table; on Postgres the
    // jsonb column refuses it at insert, so that case is SQLite's.
    let sqlite = matches!(db, Database::Sqlite(_));
    let values: Vec<String> = values
        .into_iter()
        .filter(|v| sqlite || !v.contains("not json"))
        .collect();
    exec(
        db,
        &format!(
            "INSERT INTO surety_outbox (topic, payload, headers) VALUES {}",
            values.join(", ")
        ),
    )
    .await;
    let relay = RunningRelay::start(db, &server.client, fast_config());
    wait_settled(db, SETTLE).await;
    // The relay keeps going: a row written after the bad ones is relayed too.
    exec(
        db,
        &format!("INSERT INTO surety_outbox (topic, payload) VALUES ('{topic}', 'after')"),
    )
    .await;
    wait_settled(db, SETTLE).await;
    let stats = relay.stop().await;

    let rows = rows_by_payload(db).await;
    let dead = |p: &str| rows.get(p).cloned().unwrap_or_else(|| panic!("no row {p}"));
    let (state, reason) = dead("unknown");
    assert_eq!(state, "dead");
    assert!(reason.unwrap().contains("topic_not_found"));
    let (state, reason) = dead(&big);
    assert_eq!(state, "dead");
    assert!(reason.unwrap().contains("message_too_large"));
    let mut expected_dead = 2;
    if sqlite {
        let (state, reason) = dead("bad-headers");
        assert_eq!(state, "dead");
        assert!(reason.unwrap().contains("headers"));
        expected_dead = 3;
    }
    assert_eq!(stats.dead, expected_dead);
    let got = server.read_all(&topic, 11, SETTLE).await;
    let payloads: Vec<String> = got
        .iter()
        .map(|d| String::from_utf8_lossy(&d.payload).into())
        .collect();
    let mut expected: Vec<String> = (0..10).map(|i| format!("ok-{i}")).collect();
    expected.push("after".into());
    assert_eq!(payloads, expected, "good rows published once, in order");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bad_rows_end_dead_with_reason_and_the_relay_keeps_going() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    bad_rows_end_dead(&pg.db).await;
    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_bad_rows_end_dead_with_reason_and_the_relay_keeps_going() {
    let lite = SqliteFile::create().await;
    bad_rows_end_dead(&lite.db).await;
}

// ---- an unreachable broker: retried with backoff until it is back, never dropped ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_wait_out_a_long_outage_and_are_published_after_it() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let server = TestServer::start().await;
    let topic = unique("outage");
    server.topic(&topic, "").await;
    let client = server.client.clone();
    let down = server.stop_for_now().await;
    for i in 0..3 {
        exec(
            &pg.db,
            &format!("INSERT INTO surety_outbox (topic, payload) VALUES ('{topic}', 'p{i}')"),
        )
        .await;
    }
    // The default config gives up never; attempts are quick here, so the outage spans
    // far more of them than any fixed limit would allow.
    let config = RelayConfig {
        publish_retry: surety_client::RetryPolicy {
            deadline: Duration::from_millis(100),
            initial: Duration::from_millis(10),
            ..Default::default()
        },
        ..fast_config()
    };
    assert_eq!(
        config.max_attempts, None,
        "the default never gives a row up"
    );
    let relay = RunningRelay::start(&pg.db, &client, config);
    let started = Instant::now();
    loop {
        let (min_attempts,): (Option<i32>,) =
            sqlx::query_as("SELECT min(attempts) FROM surety_outbox WHERE state = 'pending'")
                .fetch_one(pg.pool())
                .await
                .unwrap();
        if min_attempts.unwrap_or(0) >= 15 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "rows stay pending and keep being retried: {:?}",
            states(&pg.db).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(states(&pg.db).await.get("dead"), None, "nothing given up");
    let server = down.start().await;
    wait_settled(&pg.db, SETTLE).await;
    let stats = relay.stop().await;
    assert_eq!((stats.dead, stats.published), (0, 3), "{stats:?}");
    assert_eq!(states(&pg.db).await.get("sent"), Some(&3));
    assert_eq!(server.stored(&topic).await, 3);
    server.stop().await;
    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unconfirmed_rows_are_retried_then_marked_dead() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let server = TestServer::start().await;
    let topic = unique("down");
    server.topic(&topic, "").await;
    let client = server.client.clone();
    server.stop().await;
    exec(
        &pg.db,
        &format!("INSERT INTO surety_outbox (topic, payload) VALUES ('{topic}', 'p')"),
    )
    .await;
    let config = RelayConfig {
        max_attempts: Some(3),
        publish_retry: surety_client::RetryPolicy {
            deadline: Duration::from_millis(200),
            initial: Duration::from_millis(20),
            ..Default::default()
        },
        ..fast_config()
    };
    let relay = RunningRelay::start(&pg.db, &client, config);
    wait_settled(&pg.db, SETTLE).await;
    let stats = relay.stop().await;
    assert_eq!((stats.failures, stats.dead, stats.published), (3, 1, 0));
    let (attempts, reason): (i32, String) =
        sqlx::query_as("SELECT attempts, last_error FROM surety_outbox WHERE state = 'dead'")
            .fetch_one(pg.pool())
            .await
            .unwrap();
    assert_eq!(attempts, 3);
    assert!(reason.starts_with("gave up after 3 attempts"), "{reason}");
    pg.drop().await;
}
