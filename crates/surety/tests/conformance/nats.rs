//! The `nats` and `nats_2_9` fixtures: a real `nats-server` child per trial (its own
//! loopback ports and store directory), reached with `surety_nats::NatsTransport`.
//!
//! - `nats`: a current server (2.10+, `sync_interval: always`): confirms are fsynced,
//!   the durability report says so.
//! - `nats_2_9`: the machine's Debian 2.9, which cannot be asked for (or set) its sync
//!   setting: the suite runs through the warning path (`Confirm::Unknown`).
//!
//! Restarts are SIGKILL + restart on the same store. Consumers die as SIGKILLed
//! processes (this test binary re-executed, `surety_conformance::child`); outbox relays
//! too — this binary again, in the relay role ([`run_relay_if_child`]), until
//! `surety outbox relay --backend nats://…` exists.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use surety_conformance::{
    BoxFuture, ChildConsumer, ChildRelay, KillMode, TransportFixture, Unsupported,
};
use surety_core::Transport;
use surety_nats::server::{Binary, NatsServer, Sync};
use surety_nats::{NatsOptions, NatsTransport};

pub struct Nats {
    name: &'static str,
    /// `nats://127.0.0.1:PORT?monitor=…`, the same across restarts.
    url: String,
    server: Mutex<NatsServer>,
}

/// Which binary a fixture runs, or why it cannot.
pub fn binary(old: bool) -> Result<Binary, String> {
    if old {
        Binary::old()
    } else {
        Binary::current()
    }
}

fn start_with(name: &'static str, old: bool) -> BoxFuture<'static, Arc<dyn TransportFixture>> {
    Box::pin(async move {
        let server = tokio::task::spawn_blocking(move || {
            let bin = binary(old).unwrap_or_else(|e| panic!("{name}: {e}"));
            let sync = if old { Sync::Default } else { Sync::Always };
            NatsServer::start(bin, sync).unwrap_or_else(|e| panic!("{name}: {e}"))
        })
        .await
        .expect("nats-server started");
        Arc::new(Nats {
            name,
            url: server.backend_url(),
            server: Mutex::new(server),
        }) as Arc<dyn TransportFixture>
    })
}

/// A current server with `sync_interval: always`.
pub fn start() -> BoxFuture<'static, Arc<dyn TransportFixture>> {
    start_with("nats", false)
}

/// The machine's 2.9 server.
pub fn start_2_9() -> BoxFuture<'static, Arc<dyn TransportFixture>> {
    start_with("nats_2_9", true)
}

/// What a child consumer connects with.
pub fn connect_endpoint(url: String) -> BoxFuture<'static, Arc<dyn Transport>> {
    Box::pin(async move { connect(&url).await })
}

async fn connect(url: &str) -> Arc<dyn Transport> {
    let parsed = url::Url::parse(url).expect("a fixture URL");
    let options = NatsOptions::from_url_query(&parsed).expect("fixture options");
    let mut attempts = 0;
    loop {
        match NatsTransport::connect(url, options.clone()).await {
            Ok(t) => return Arc::new(t),
            Err(e) if attempts < 100 => {
                attempts += 1;
                eprintln!("connect {url}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("connect {url}: {e}"),
        }
    }
}

impl TransportFixture for Nats {
    fn name(&self) -> &'static str {
        self.name
    }

    fn connect(&self) -> BoxFuture<'_, Arc<dyn Transport>> {
        Box::pin(connect(&self.url))
    }

    fn restart_server(&self) -> BoxFuture<'_, Result<(), Unsupported>> {
        Box::pin(async move {
            let mut server = self.server.lock().unwrap();
            // SIGKILL and reaped, then started on the same ports and store.
            server.restart().map_err(Unsupported)?;
            Ok(())
        })
    }

    fn consumer_kill(&self) -> KillMode {
        KillMode::Process
    }

    fn spawn_consumer(&self, spec: &ChildConsumer) -> Result<Child, Unsupported> {
        crate::spawn_consumer(spec, &self.url)
    }

    fn spawn_relay(&self, relay: &ChildRelay) -> Result<Child, Unsupported> {
        let exe = std::env::current_exe().map_err(|e| Unsupported(e.to_string()))?;
        let log = std::fs::File::create(&relay.log).map_err(|e| Unsupported(e.to_string()))?;
        Command::new(exe)
            .env(RELAY_ENV, &self.url)
            .env(RELAY_DB_ENV, &relay.database_url)
            .env(RELAY_BATCH_ENV, relay.batch_size.to_string())
            .env("RUST_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| Unsupported(format!("spawn relay: {e}")))
    }
}

const RELAY_ENV: &str = "SURETY_CONFORMANCE_NATS_RELAY";
const RELAY_DB_ENV: &str = "SURETY_CONFORMANCE_RELAY_DB";
const RELAY_BATCH_ENV: &str = "SURETY_CONFORMANCE_RELAY_BATCH";

/// If this process is a relay child, runs an outbox relay publishing to NATS until
/// killed, and never returns.
pub fn run_relay_if_child() {
    let Ok(url) = std::env::var(RELAY_ENV) else {
        return;
    };
    let db_url = std::env::var(RELAY_DB_ENV).expect("relay database URL");
    let batch_size: usize = std::env::var(RELAY_BATCH_ENV)
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(100);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let transport = connect(&url).await;
        let db = surety_outbox::Database::connect(&db_url)
            .await
            .expect("relay database");
        let config = surety_outbox::RelayConfig {
            batch_size,
            poll_interval: Duration::from_millis(20),
            standby_interval: Duration::from_millis(50),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            ..surety_outbox::RelayConfig::default()
        };
        let result = surety_outbox::Relay::new(db, transport, config).run().await;
        eprintln!("relay ended: {result:?}");
    });
    std::process::exit(3);
}
