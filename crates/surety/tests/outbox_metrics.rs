//! Guards `surety outbox relay --metrics-listen`: the real binary serves Prometheus text
//! with a `# HELP` line for every outbox metric, and while the Surety server is
//! unreachable it keeps running and reports the backlog (`surety_outbox_pending_rows`,
//! the oldest pending age) — the state the outbox alerts of docs/alerts.yml are for.
//! When the server comes up, the relay publishes the rows and the gauges drop to 0.
//!
//! Needs Postgres at 127.0.0.1:5432 (database `test`): fails under `CI=true` without
//! it, skips otherwise.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::postgres::PG_URL;
use common::{listen_addr, ready_line};
use sqlx::postgres::PgPoolOptions;
use surety_client::Client;
use surety_outbox::metrics as m;

const TIMEOUT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of an unlabelled metric in Prometheus text, if present.
fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn scrape(url: &str) -> Option<String> {
    let resp = reqwest::get(url).await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.text().await.ok()
}

/// Scrapes `url` until `done` holds for the text; panics with the last text after
/// `TIMEOUT`.
async fn scrape_until(url: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let text = scrape(url).await.unwrap_or_default();
        if done(&text) {
            return text;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "timed out waiting for {what}; last scrape:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn relay(db_url: &str, server: &str, metrics: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_surety"))
        .args(["outbox", "relay", "--database-url", db_url])
        .args(["--server", server, "--metrics-listen", metrics])
        .args(["--poll-interval-ms", "50"])
        .env("RUST_LOG", "info,sqlx=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn sigterm(child: &Child) {
    // SAFETY: a plain syscall on the pid of a child we have not reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

/// Waits for the child to exit (at most `TIMEOUT`, else kills it and fails).
fn finish(mut child: Child) -> Output {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "relay did not exit; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// `surety serve` on `listen`; killed when dropped.
struct Serve(Child);

impl Serve {
    fn start(data: &Path, listen: &str) -> (Serve, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_surety"))
            .args(["serve", "--listen", listen, "--data"])
            .arg(data)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let line = ready_line(&mut child, TIMEOUT).expect("serve ready line");
        let url = format!("http://{}", listen_addr(&line));
        (Serve(child), url)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn relay_metrics_show_the_backlog_while_the_server_is_down() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let Some(admin) = common::postgres::admin_pool().await else {
        return;
    };
    let schema = format!("outbox_metrics_{}_{:08x}", std::process::id(), rand_u32());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    let db_url = format!("{PG_URL}?options[search_path]={schema}");
    let status = Command::new(env!("CARGO_BIN_EXE_surety"))
        .args(["outbox", "migrate", "--database-url", &db_url])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "surety outbox migrate failed");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&db_url)
        .await
        .unwrap();
    let topic = "metrics-backlog";
    sqlx::query(&format!(
        "INSERT INTO surety_outbox (topic, payload, created_at) VALUES
         ('{topic}', 'a', now() - interval '90 seconds'), ('{topic}', 'b', now()),
         ('{topic}', 'c', now())"
    ))
    .execute(&pool)
    .await
    .unwrap();

    // The server's port: nothing listens there until the second half of the test.
    let server_addr = format!("127.0.0.1:{}", free_port());
    let server_url = format!("http://{server_addr}");
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let metrics_url = format!("http://{metrics_addr}/metrics");
    let child = relay(&db_url, &server_url, &metrics_addr);

    let text = scrape_until(&metrics_url, "3 pending rows", |t| {
        value(t, m::PENDING_ROWS) == Some(3.0)
    })
    .await;
    for (name, _) in m::DESCRIPTIONS {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP line for {name}:\n{text}"
        );
    }
    assert!(
        text.contains(&format!("# TYPE {} gauge", m::PENDING_ROWS)),
        "{text}"
    );
    let age = value(&text, m::OLDEST_PENDING_AGE_SECONDS).unwrap();
    assert!(
        (90.0..600.0).contains(&age),
        "oldest pending age {age}\n{text}"
    );
    assert_eq!(value(&text, m::PUBLISHED), Some(0.0), "{text}");

    // Rows keep arriving while the server is down: the gauge follows.
    sqlx::query(&format!(
        "INSERT INTO surety_outbox (topic, payload) VALUES ('{topic}', 'd'), ('{topic}', 'e')"
    ))
    .execute(&pool)
    .await
    .unwrap();
    scrape_until(&metrics_url, "5 pending rows", |t| {
        value(t, m::PENDING_ROWS) == Some(5.0)
    })
    .await;
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM surety_outbox WHERE state = 'pending'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(pending, 5, "nothing was published without a server");

    // The server comes up (with the topic, created in an earlier run of it): the relay
    // connects, publishes, and the backlog drains.
    let data = tempfile::tempdir().unwrap();
    {
        let (_serve, url) = Serve::start(data.path(), "127.0.0.1:0");
        let client = Client::connect(&url, None).await.unwrap();
        client.create_topic(topic, "").await.unwrap();
    }
    let (_serve, _) = Serve::start(data.path(), &server_addr);
    let text = scrape_until(&metrics_url, "the backlog to drain", |t| {
        value(t, m::PENDING_ROWS) == Some(0.0) && value(t, m::PUBLISHED) == Some(5.0)
    })
    .await;
    assert_eq!(
        value(&text, m::OLDEST_PENDING_AGE_SECONDS),
        Some(0.0),
        "{text}"
    );

    sigterm(&child);
    let out = finish(child);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "relay failed:\n{stderr}");
    assert!(
        stderr.contains("cannot reach the Surety server") && stderr.contains("5 published"),
        "{stderr}"
    );

    pool.close().await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
}

#[test]
fn a_metrics_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_surety"))
        .args(["outbox", "relay", "--database-url", "sqlite::memory:"])
        .args(["--metrics-listen", &addr])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&format!("error: cannot serve metrics on {addr}: "))),
        "{stderr}"
    );
}

fn rand_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    nanos ^ std::process::id().rotate_left(16)
}
