//! Guards that the relay exports its metrics: pending rows and the oldest pending age
//! while rows wait, then published and dead counts once they are settled.

mod common;

use std::time::{Duration, Instant};

use common::{PgSchema, RunningRelay, SqliteFile, TestServer, fast_config, unique, wait_settled};
use surety_outbox::{RelayConfig, metrics as m};

/// The value of an unlabelled metric in Prometheus text, if present.
fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_relay_exports_pending_age_published_and_dead() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    // The in-process server installed the process's Prometheus recorder: the relay's
    // metrics appear on its /metrics.
    let server = TestServer::start().await;
    let render = || async {
        reqwest::get(format!("{}/metrics", server.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let topic = unique("metrics");
    server.topic(&topic, "").await;
    sqlx::query(&format!(
        "INSERT INTO surety_outbox (topic, payload, created_at) VALUES
         ('{topic}', 'a', now() - interval '5 seconds'), ('{topic}', 'b', now()),
         ('{topic}', 'c', now()), ('missing-{topic}', 'd', now())"
    ))
    .execute(pg.pool())
    .await
    .unwrap();
    let config = RelayConfig {
        maintenance_interval: Duration::from_millis(50),
        ..fast_config()
    };
    let relay = RunningRelay::start(&pg.db, &server.client, config);
    wait_settled(&pg.db, Duration::from_secs(60)).await;

    let first = render().await;
    assert!(
        value(&first, m::OLDEST_PENDING_AGE_SECONDS).is_some(),
        "{first}"
    );
    let started = Instant::now();
    loop {
        let text = render().await;
        let settled = value(&text, m::PENDING_ROWS) == Some(0.0)
            && value(&text, m::PUBLISHED) == Some(3.0)
            && value(&text, m::DEAD) == Some(1.0)
            && value(&text, m::OLDEST_PENDING_AGE_SECONDS) == Some(0.0);
        if settled {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.stop().await;
    server.stop().await;
    pg.drop().await;
}

/// `relay::sample_pending` (what `surety outbox relay` runs while the server is down)
/// counts pending rows, claimed or not, and ages the oldest; sent and dead rows do not
/// count. The gauges' export is covered by crates/surety/tests/outbox_metrics.rs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_pending_counts_pending_rows_without_a_relay() {
    let sqlite = SqliteFile::create().await;
    assert_eq!(
        surety_outbox::relay::sample_pending(&sqlite.db)
            .await
            .unwrap(),
        (0, 0.0)
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for (payload, age_ms, state, relay_seq) in [
        ("a", 7_000, "pending", Some(1i64)),
        ("b", 1_000, "pending", None),
        ("c", 60_000, "sent", Some(2)),
        ("d", 90_000, "dead", None),
    ] {
        sqlx::query(
            "INSERT INTO surety_outbox (topic, payload, created_at, state, relay_seq)
             VALUES ('t', ?1, ?2, ?3, ?4)",
        )
        .bind(payload)
        .bind(now_ms - age_ms)
        .bind(state)
        .bind(relay_seq)
        .execute(sqlite.pool())
        .await
        .unwrap();
    }
    let (pending, age) = surety_outbox::relay::sample_pending(&sqlite.db)
        .await
        .unwrap();
    assert_eq!(pending, 2);
    assert!((7.0..60.0).contains(&age), "{age}");
}
