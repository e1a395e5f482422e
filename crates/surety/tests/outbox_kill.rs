//! Guards that every committed outbox row reaches the broker exactly once, none skipped
//! and none stored twice, when `surety outbox relay` processes are SIGKILLed at random
//! instants (between claim, publish and mark-sent) while rows are being inserted
//! concurrently on Postgres; and that per key the broker holds them in commit order.
//!
//! One `surety serve` and one Postgres schema for the whole test. Two writer tasks
//! insert rows (1–5 per transaction) for keys of their own, numbering them per key.
//! Each cycle starts a relay (sometimes two at once), lets it run a random while, and
//! kills it with SIGKILL. At the end a last relay drains the outbox and is stopped with
//! SIGTERM; then the topic must hold each row exactly once, per key in order.
//!
//! `SURETY_OUTBOX_KILL_CYCLES` (default 10) sets the number of kills;
//! `SURETY_OUTBOX_KILL_SEED` replays the random choices (scheduling stays
//! nondeterministic). Needs Postgres at 127.0.0.1:5432 (database `test`): fails under
//! `CI=true` without it, skips otherwise.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::postgres::PG_URL;
use common::{Rng, listen_addr, ready_line};
use sqlx::postgres::PgPoolOptions;
use surety_client::{Client, Consumer, Delivery};

const CYCLES_ENV: &str = "SURETY_OUTBOX_KILL_CYCLES";
const SEED_ENV: &str = "SURETY_OUTBOX_KILL_SEED";
const TOPIC: &str = "outbox-kill";
const KEYS_PER_WRITER: usize = 2;
const WRITERS: usize = 2;
const SIGKILL: i32 = libc::SIGKILL;
const SIGTERM: i32 = libc::SIGTERM;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// (state, wait_event_type, wait_event, query) of a Postgres backend, for failure messages.
type Backend = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// `surety serve` on an ephemeral port; killed when dropped.
struct Serve {
    child: Child,
    url: String,
}

impl Serve {
    fn start(data: &Path) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_surety"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let line = ready_line(&mut child, READY_TIMEOUT).expect("serve ready line");
        let url = format!("http://{}", listen_addr(&line));
        Serve { child, url }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a relay whose log goes to `log` (read back when the test fails).
fn relay(db_url: &str, server: &str, batch: u64, log: &Path) -> Child {
    let batch = batch.to_string();
    Command::new(env!("CARGO_BIN_EXE_surety"))
        .args([
            "outbox",
            "relay",
            "--database-url",
            db_url,
            "--server",
            server,
        ])
        .args(["--poll-interval-ms", "20", "--batch-size", &batch])
        .env("RUST_LOG", "info,sqlx=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Every relay log of the run, for a failure message.
fn logs(dir: &Path) -> String {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| {
            format!(
                "--- {}\n{}",
                p.display(),
                std::fs::read_to_string(p).unwrap_or_default()
            )
        })
        .collect()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: a plain syscall on the pid of a child we have not reaped yet.
    unsafe { libc::kill(child.id() as i32, sig) };
}

#[test]
fn outbox_relay_sigkill_loop_relays_every_row_exactly_once() {
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
    let cycles = env_u64(CYCLES_ENV).unwrap_or(10);
    let seed = env_u64(SEED_ENV).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    eprintln!("{SEED_ENV}={seed} {CYCLES_ENV}={cycles}");
    let mut rng = Rng(seed);

    let schema = format!(
        "outbox_kill_{}_{:x}",
        std::process::id(),
        seed & 0xffff_ffff
    );
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    let db_url = format!("{PG_URL}?options[search_path]={schema}");
    let status = Command::new(env!("CARGO_BIN_EXE_surety"))
        .args(["outbox", "migrate", "--database-url", &db_url])
        .status()
        .unwrap();
    assert!(status.success(), "surety outbox migrate failed");

    let data = tempfile::tempdir().unwrap();
    let serve = Serve::start(&data.path().join("data"));
    let client = Client::connect(&serve.url, None).await.unwrap();
    client.create_topic(TOPIC, "").await.unwrap();

    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&db_url)
        .await
        .unwrap();

    // Writers: committed rows per key, counted after each commit.
    let writing = Arc::new(AtomicBool::new(true));
    let committed = Arc::new(AtomicU64::new(0));
    let per_key: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (pool, writing, committed, per_key) = (
            pool.clone(),
            writing.clone(),
            committed.clone(),
            per_key.clone(),
        );
        let mut wrng = Rng(seed ^ (w as u64 + 1).wrapping_mul(0x1234_5678_9abc));
        writers.push(tokio::spawn(async move {
            let mut next = [0u64; KEYS_PER_WRITER];
            while writing.load(Ordering::Relaxed) {
                let rows = wrng.range(1, 6);
                let mut tx = pool.begin().await.unwrap();
                let mut written = Vec::new();
                for _ in 0..rows {
                    let k = wrng.range(0, KEYS_PER_WRITER as u64) as usize;
                    let key = format!("w{w}k{k}");
                    let payload = format!("{key}-{:06}", next[k]);
                    next[k] += 1;
                    sqlx::query(
                        "INSERT INTO surety_outbox (topic, key, payload) VALUES ($1, $2, $3)",
                    )
                    .bind(TOPIC)
                    .bind(key.as_bytes())
                    .bind(payload.as_bytes())
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                    written.push(key);
                }
                tx.commit().await.unwrap();
                committed.fetch_add(rows, Ordering::Relaxed);
                {
                    let mut map = per_key.lock().unwrap();
                    for key in written {
                        *map.entry(key).or_default() += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(wrng.range(0, 4))).await;
            }
        }));
    }

    for cycle in 0..cycles {
        let batch = rng.range(1, 60);
        let log = |n: usize| data.path().join(format!("relay-{cycle:03}-{n}.log"));
        let mut children = vec![relay(&db_url, &serve.url, batch, &log(0))];
        if rng.range(0, 3) == 0 {
            children.push(relay(&db_url, &serve.url, batch, &log(1)));
        }
        let life = Duration::from_millis(rng.range(150, 1200));
        tokio::time::sleep(life).await;
        for child in &mut children {
            signal(child, SIGKILL);
            let status = child.wait().unwrap();
            assert!(
                std::os::unix::process::ExitStatusExt::signal(&status) == Some(SIGKILL)
                    || status.success(),
                "cycle {cycle}: relay exited on its own: {status:?}"
            );
        }
        eprintln!(
            "cycle {cycle}: killed {} relay(s) after {life:?}; {} rows committed so far",
            children.len(),
            committed.load(Ordering::Relaxed)
        );
    }
    writing.store(false, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let total = committed.load(Ordering::Relaxed);

    // A last relay drains everything, then stops gracefully.
    let last_log = data.path().join("relay-last.log");
    let mut last = relay(&db_url, &serve.url, 500, &last_log);
    let started = Instant::now();
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM surety_outbox WHERE state <> 'sent'")
                .fetch_one(&pool)
                .await
                .unwrap();
        if pending == 0 {
            break;
        }
        if started.elapsed() > DRAIN_TIMEOUT {
            let activity: Vec<Backend> = sqlx::query_as(
                "SELECT state, wait_event_type, wait_event, left(query, 120)
                     FROM pg_stat_activity WHERE datname = 'test'",
            )
            .fetch_all(&admin)
            .await
            .unwrap();
            panic!(
                "{pending} rows not sent; backends: {activity:#?}
relay logs:
{}",
                logs(data.path())
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&last, SIGTERM);
    let status = last.wait().unwrap();
    let stderr = std::fs::read_to_string(&last_log).unwrap();
    assert!(status.success(), "last relay: {status:?}\n{stderr}");
    eprintln!("last relay: {}", stderr.trim());

    // The broker holds exactly the committed rows, each once, per key in order.
    let d = client.describe_topic(TOPIC).await.unwrap();
    let stored: u64 = d.end_offsets.iter().sum();
    let got = read_all(&client, total as usize).await;
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for msg in &got {
        let text = String::from_utf8(msg.payload.clone()).unwrap();
        let (key, n) = text.rsplit_once('-').unwrap();
        assert_eq!(msg.key.as_deref(), Some(key.as_bytes()));
        seen.entry(key.to_owned())
            .or_default()
            .push(n.parse().unwrap());
    }
    let expected = per_key.lock().unwrap().clone();
    for (key, numbers) in &seen {
        let want: Vec<u64> = (0..expected[key]).collect();
        assert_eq!(
            numbers, &want,
            "key {key}: lost, duplicated or reordered rows"
        );
    }
    assert_eq!(seen.len(), expected.len());
    assert_eq!(stored, total, "stored messages vs committed rows");
    assert_eq!(got.len() as u64, total);
    eprintln!("{total} rows committed, relayed exactly once across {cycles} kills");

    pool.close().await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
}

/// Every message of the topic in offset order (one partition).
async fn read_all(client: &Client, expected: usize) -> Vec<Delivery> {
    let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let consumer = Consumer::builder(client.clone(), TOPIC, "audit").max_in_flight(256);
    let stop = consumer.stop_handle();
    let sink = got.clone();
    let task = tokio::spawn(consumer.run(move |d: Delivery| {
        let sink = sink.clone();
        async move {
            sink.lock().unwrap().push(d);
            Ok::<(), String>(())
        }
    }));
    let started = Instant::now();
    while got.lock().unwrap().len() < expected && started.elapsed() < DRAIN_TIMEOUT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Anything beyond the expected count would be a duplicate: give it time to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.stop();
    task.await.unwrap().unwrap();
    let mut all = std::mem::take(&mut *got.lock().unwrap());
    all.sort_by_key(|d| (d.partition, d.offset()));
    all
}
