//! `surety outbox migrate` and `surety outbox relay`: the transactional outbox of an
//! application's Postgres or SQLite database (docs/outbox.md).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use metrics_exporter_prometheus::PrometheusBuilder;
use surety_client::RetryPolicy;
use surety_core::Transport;
use surety_outbox::{Database, Relay, RelayConfig};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use super::backend::Backend;
use super::error::CliError;

pub const LONG_ABOUT: &str = "\
The transactional outbox: an application writes its messages into the table
surety_outbox in the same database transaction as its business data; the relay
publishes each committed row to Surety exactly once (docs/outbox.md).

  surety outbox migrate --database-url postgres://app@127.0.0.1/shop
  surety outbox relay   --database-url postgres://app@127.0.0.1/shop --server http://127.0.0.1:7333

Then, from any language, inside the application's transaction:
  INSERT INTO surety_outbox (topic, key, payload) VALUES ('orders', 'order-42', 'created');";

#[derive(Debug, Args)]
pub struct OutboxArgs {
    #[command(subcommand)]
    command: OutboxCommand,
}

#[derive(Debug, Args)]
struct DatabaseArg {
    /// The application's database: postgres://USER@HOST/DB or sqlite:PATH
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    database_url: String,
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Create the outbox and inbox tables (idempotent: safe on every deploy)
    #[command(long_about = MIGRATE_ABOUT)]
    Migrate {
        #[command(flatten)]
        db: DatabaseArg,
    },
    /// Publish committed outbox rows to a Surety server until SIGTERM or SIGINT
    #[command(long_about = RELAY_ABOUT)]
    Relay(RelayArgs),
}

const MIGRATE_ABOUT: &str = "\
Create surety_outbox, surety_outbox_relay and surety_inbox (and on Postgres the trigger
that wakes the relay) if they do not exist. Every statement is idempotent and no
bookkeeping table is added, so it never clashes with the application's own migrations.

Example:
  surety outbox migrate --database-url sqlite:shop.db";

const RELAY_ABOUT: &str = "\
Publish committed outbox rows to Surety, each exactly once: a row's sequence is stored
before it is published, so a relay killed after publishing and before marking the row
sent publishes it again with the same sequence and the server answers 'duplicate'.

Run as many relays as you like: one is active (Postgres: an advisory lock; SQLite: a
lease), the others stand by and take over when it dies. Rows that the server refuses
(unknown topic, too large) are marked dead at once with the reason; rows that fail to
publish are retried with backoff and marked dead after --max-attempts. Dead rows stay
in the table: SELECT id, topic, last_error FROM surety_outbox WHERE state = 'dead'.

While the Surety server is unreachable the relay waits for it (rows stay pending in
the outbox) and keeps sampling the backlog. With --metrics-listen it serves Prometheus
metrics (surety_outbox_pending_rows, surety_outbox_oldest_pending_age_seconds,
surety_outbox_published_total, ...) on GET /metrics; docs/alerts.yml alerts on them.

Example:
  surety outbox relay --database-url postgres://app@127.0.0.1/shop --server http://127.0.0.1:7333 \
      --metrics-listen 127.0.0.1:9464";

#[derive(Debug, Args)]
struct RelayArgs {
    #[command(flatten)]
    db: DatabaseArg,

    /// The broker to publish to: a Surety server (http://HOST:PORT or HOST:PORT, over
    /// gRPC), NATS JetStream (nats://HOST:PORT), Redis Streams (redis://HOST:PORT),
    /// RabbitMQ (amqp://HOST:PORT) or Kafka (kafka://HOST:PORT);
    /// may also come before the command
    /// [env: SURETY_BACKEND] [default: http://127.0.0.1:7333]
    #[arg(long, visible_alias = "server", value_name = "URL")]
    backend: Option<String>,

    /// Bearer token, if the server requires one [env: SURETY_TOKEN]
    #[arg(long)]
    token: Option<String>,

    /// Refuse a backend whose confirms would not survive a power loss (NATS without
    /// `sync_interval: always`, Redis without `appendfsync always`) [env: SURETY_REQUIRE_FSYNC]
    #[arg(long)]
    require_fsync: bool,

    /// Rows claimed and published per round (1-5000)
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=5000))]
    batch_size: u32,

    /// Give a row up (mark it dead) after N unconfirmed attempts; by default rows are
    /// retried until the broker confirms them, however long it is down
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: Option<u32>,

    /// How often to look for rows when idle (Postgres also wakes on NOTIFY at once)
    #[arg(long, value_name = "MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..))]
    poll_interval_ms: u64,

    /// SQLite: lease of the active relay; a standby takes over after it runs out
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    lease_ms: u64,

    /// Delete sent rows older than this many hours (0 keeps them)
    #[arg(long, value_name = "HOURS", default_value_t = 24)]
    keep_sent_hours: u64,

    /// Serve Prometheus metrics (GET /metrics) on this address, e.g. 127.0.0.1:9464
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

/// How often the relay tries the server again while it is unreachable (doubling up to
/// this), sampling the backlog gauges each time.
const SERVER_RETRY_MAX: Duration = Duration::from_secs(5);
/// A connection attempt that takes longer than this counts as "unreachable".
const SERVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an outbox command failed; one line each.
#[derive(Debug, thiserror::Error)]
enum OutboxCliError {
    #[error("{0}")]
    Connect(#[from] surety_outbox::ConnectError),
    #[error("{0}")]
    Migrate(#[from] surety_outbox::MigrateError),
    #[error("cannot serve metrics on {addr}: {reason}")]
    Metrics { addr: SocketAddr, reason: String },
    #[error("{}", .0.one_line())]
    Backend(#[from] CliError),
    #[error("{0}")]
    Relay(#[from] surety_outbox::RelayError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Runs an outbox command; returns the exit code (0, or 1 after one `error:` line).
pub fn run(args: OutboxArgs, global: &super::GlobalArgs) -> i32 {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(OutboxCliError::Runtime)
        .and_then(|rt| {
            rt.block_on(async {
                match args.command {
                    OutboxCommand::Migrate { db } => migrate(db).await,
                    OutboxCommand::Relay(args) => relay(args, global).await,
                }
            })
        });
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

async fn migrate(db: DatabaseArg) -> Result<(), OutboxCliError> {
    let database = Database::connect(&db.database_url).await?;
    surety_outbox::migrate(&database).await?;
    database.close().await;
    println!("outbox tables ready");
    Ok(())
}

/// The broker to publish to: `--backend`/`--token` after the command win over those
/// before it, which win over the environment; `HOST:PORT` means `http://HOST:PORT`.
struct Target {
    backend: Backend,
    token: Option<String>,
    require_fsync: bool,
}

impl Target {
    fn of(args: &RelayArgs, global: &super::GlobalArgs) -> Result<Self, OutboxCliError> {
        let text = args.backend.as_ref().unwrap_or(&global.backend);
        Ok(Target {
            backend: Backend::parse(text)?,
            token: args
                .token
                .clone()
                .or_else(|| global.token.clone())
                .filter(|t| !t.is_empty()),
            require_fsync: args.require_fsync || global.require_fsync,
        })
    }
}

async fn relay(args: RelayArgs, global: &super::GlobalArgs) -> Result<(), OutboxCliError> {
    let target = Target::of(&args, global)?;
    if let Some(addr) = args.metrics_listen {
        // Binds at once (an address in use fails here, not later) and serves every path
        // with the Prometheus text, on this runtime.
        PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| OutboxCliError::Metrics {
                addr,
                reason: e.to_string(),
            })?;
        surety_outbox::metrics::describe();
    }
    let database = Database::connect(&args.db.database_url).await?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    if let Some(addr) = args.metrics_listen {
        eprintln!("outbox relay: metrics on http://{addr}/metrics");
    }
    let Some(client) = wait_for_backend(&target, &database, &mut stop_rx).await? else {
        database.close().await;
        eprintln!(
            "outbox relay stopped before the {} was reachable",
            target.backend.name()
        );
        return Ok(());
    };
    let config = RelayConfig {
        batch_size: args.batch_size as usize,
        max_attempts: args.max_attempts,
        poll_interval: Duration::from_millis(args.poll_interval_ms),
        lease: Duration::from_millis(args.lease_ms),
        sent_retention: (args.keep_sent_hours > 0)
            .then(|| Duration::from_secs(args.keep_sent_hours * 3600)),
        publish_retry: RetryPolicy {
            deadline: Duration::from_secs(10),
            ..RetryPolicy::default()
        },
        ..RelayConfig::default()
    };
    let relay = Relay::new(database.clone(), client, config);
    let stop = relay.stop_handle();
    tokio::spawn(async move {
        let _ = stop_rx.wait_for(|stopped| *stopped).await;
        stop.stop();
    });
    eprintln!(
        "outbox relay: publishing to {} at {}",
        target.backend.name(),
        target.backend.url()
    );
    let stats = relay.run().await?;
    database.close().await;
    eprintln!(
        "outbox relay stopped: {} published ({} duplicate hits), {} failed attempts, {} dead",
        stats.published, stats.duplicates, stats.failures, stats.dead
    );
    Ok(())
}

/// Connects to the broker, waiting for it while it is unreachable: the relay is a
/// daemon, and a broker outage at its start is waited out like one later on (rows stay
/// pending, the backlog gauges keep being sampled). `None` when stopped first.
async fn wait_for_backend(
    target: &Target,
    database: &Database,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<Arc<dyn Transport>>, OutboxCliError> {
    let mut delay = Duration::from_millis(250);
    let mut warned = false;
    let name = target.backend.name();
    loop {
        let attempt = tokio::time::timeout(
            SERVER_CONNECT_TIMEOUT,
            target
                .backend
                .transport(target.token.as_deref(), target.require_fsync, None),
        )
        .await;
        match attempt {
            Ok(Ok(transport)) => {
                if warned {
                    tracing::info!(backend = %target.backend.url(), "outbox relay: reached the {name}");
                }
                return Ok(Some(transport));
            }
            Ok(Err(CliError::Transport { .. } | CliError::Unreachable { .. })) | Err(_) => {
                if !warned {
                    tracing::warn!(
                        "outbox relay: cannot reach the {name} at {}: is it running? \
                         rows wait in the outbox, retrying",
                        target.backend.url()
                    );
                    warned = true;
                }
            }
            Ok(Err(other)) => return Err(OutboxCliError::Backend(other)),
        }
        // The backlog is exactly what the alerts must see during an outage.
        if let Err(e) = surety_outbox::relay::sample_pending(database).await {
            tracing::debug!(error = %e, "outbox relay: cannot sample pending rows");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|stopped| *stopped) => return Ok(None),
        }
        delay = (delay * 2).min(SERVER_RETRY_MAX);
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
