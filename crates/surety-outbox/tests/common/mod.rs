//! Real services for the outbox tests: a Surety server in-process on an ephemeral port,
//! Postgres (a schema of its own per test, dropped at the end), SQLite in a temp file,
//! Redis. A missing service fails the test when `CI=true` and skips it (with a printed
//! reason) otherwise.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use surety_client::{Client, Consumer, Delivery};
use surety_outbox::{Database, Relay, RelayConfig, RelayStats, RelayStop};
use surety_server::{Config, Server, Settings};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Fails under CI, else prints why and returns `None` (the test then returns early).
pub fn unavailable<T>(service: &str, error: impl std::fmt::Display) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{service} is required under CI=true but unavailable: {error}");
    }
    eprintln!("SKIPPED: {service} unavailable ({error}); start it to run this test");
    None
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// A schema of its own in the shared `test` database; every connection of `db` has
/// it as search_path.
pub struct PgSchema {
    pub db: Database,
    pub schema: String,
    pub url: String,
    admin: sqlx::PgPool,
}

impl PgSchema {
    pub async fn create() -> Option<PgSchema> {
        let admin = match sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect(PG_URL)
            .await
        {
            Ok(p) => p,
            Err(e) => return unavailable("Postgres at 127.0.0.1:5432", e),
        };
        let schema = unique("so");
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        let url = format!("{PG_URL}?options[search_path]={schema}");
        let options = PgConnectOptions::from_str(&url).unwrap();
        let db = Database::connect_postgres(options).await.unwrap();
        surety_outbox::migrate(&db).await.unwrap();
        Some(PgSchema {
            db,
            schema,
            url,
            admin,
        })
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        match &self.db {
            Database::Postgres(p) => p,
            Database::Sqlite(_) => unreachable!(),
        }
    }

    pub async fn drop(self) {
        self.db.close().await;
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .execute(&self.admin)
            .await
            .unwrap();
    }
}

/// A migrated SQLite database in a temp file.
pub struct SqliteFile {
    pub db: Database,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl SqliteFile {
    pub async fn create() -> SqliteFile {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("app.db").display());
        let db = Database::connect(&url).await.unwrap();
        surety_outbox::migrate(&db).await.unwrap();
        SqliteFile { db, url, _dir: dir }
    }

    pub fn pool(&self) -> &sqlx::SqlitePool {
        match &self.db {
            Database::Sqlite(p) => p,
            Database::Postgres(_) => unreachable!(),
        }
    }
}

/// A Surety server in-process on 127.0.0.1:0 with its own data directory.
pub struct TestServer {
    pub url: String,
    pub client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), surety_server::ServerError>>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_in(tempfile::tempdir().unwrap(), "127.0.0.1:0").await
    }

    /// Stops the server and starts it again on the same address and data (its clients'
    /// connections break and reconnect).
    pub async fn restart(mut self) -> TestServer {
        let addr = self.url.trim_start_matches("http://").to_owned();
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap());
        Self::start_in(dir, &addr).await
    }

    /// Stops the server for a while, keeping its data: [`Down::start`] brings it back on
    /// the same address.
    pub async fn stop_for_now(mut self) -> Down {
        let addr = self.url.trim_start_matches("http://").to_owned();
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap());
        Down { dir, addr }
    }

    async fn start_in(dir: tempfile::TempDir, listen: &str) -> TestServer {
        let settings = Settings {
            data: Some(dir.path().join("data")),
            listen: Some(listen.into()),
            ..Settings::default()
        };
        let server = Server::bind(Config::from_settings(settings).unwrap())
            .await
            .unwrap();
        let url = format!("http://{}", server.local_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        let client = Client::connect(&url, None).await.unwrap();
        TestServer {
            url,
            client,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    pub async fn topic(&self, name: &str, config: &str) {
        self.client.create_topic(name, config).await.unwrap();
    }

    /// Messages stored in the topic (sum of end offsets).
    pub async fn stored(&self, topic: &str) -> u64 {
        let d = self.client.describe_topic(topic).await.unwrap();
        d.end_offsets
            .iter()
            .zip(&d.start_offsets)
            .map(|(e, s)| e - s)
            .sum()
    }

    /// Every message of `topic`, read by a fresh group, in (partition, offset) order.
    /// Waits until `expected` arrived (or `timeout`), then a little longer for extras.
    pub async fn read_all(&self, topic: &str, expected: usize, timeout: Duration) -> Vec<Delivery> {
        let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let consumer =
            Consumer::builder(self.client.clone(), topic, unique("audit")).max_in_flight(256);
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
        while got.lock().unwrap().len() < expected && started.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.stop();
        task.await.unwrap().unwrap();
        let mut all = std::mem::take(&mut *got.lock().unwrap());
        all.sort_by_key(|d| (d.partition, d.offset()));
        all
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// A stopped [`TestServer`]: its data and address, to start it again.
pub struct Down {
    dir: tempfile::TempDir,
    addr: String,
}

impl Down {
    pub async fn start(self) -> TestServer {
        TestServer::start_in(self.dir, &self.addr).await
    }
}

/// A relay running in a task.
pub struct RunningRelay {
    pub stop: RelayStop,
    pub task: JoinHandle<Result<RelayStats, surety_outbox::RelayError>>,
    pub counters: Arc<surety_outbox::RelayCounters>,
}

impl RunningRelay {
    pub fn start(db: &Database, client: &Client, config: RelayConfig) -> RunningRelay {
        let relay = Relay::new(db.clone(), client.clone(), config);
        let stop = relay.stop_handle();
        let counters = relay.counters();
        let task = tokio::spawn(relay.run());
        RunningRelay {
            stop,
            task,
            counters,
        }
    }

    pub async fn stop(self) -> RelayStats {
        self.stop.stop();
        self.task.await.unwrap().unwrap()
    }
}

/// Test settings: fast polling and takeover.
pub fn fast_config() -> RelayConfig {
    RelayConfig {
        poll_interval: Duration::from_millis(50),
        standby_interval: Duration::from_millis(50),
        lease: Duration::from_millis(1_000),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..RelayConfig::default()
    }
}

/// Counts of rows per state.
pub async fn states(db: &Database) -> HashMap<String, i64> {
    let sql = "SELECT state, count(*) FROM surety_outbox GROUP BY state";
    let rows: Vec<(String, i64)> = match db {
        Database::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await.unwrap(),
        Database::Sqlite(p) => sqlx::query_as(sql).fetch_all(p).await.unwrap(),
    };
    rows.into_iter().collect()
}

/// Waits until no row is pending.
pub async fn wait_settled(db: &Database, timeout: Duration) {
    let started = Instant::now();
    loop {
        let s = states(db).await;
        if s.get("pending").copied().unwrap_or(0) == 0 {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "rows still pending after {timeout:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
