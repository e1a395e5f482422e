//! `surety bench outbox`: the outbox relay on Postgres against a Surety server, 1 KiB
//! payloads: how fast it drains a backlog (commit to broker ack), and the latency from
//! commit to broker ack at a fixed offered rate.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use surety_client::Client;
use surety_outbox::{Database, Relay, RelayConfig, RelayCounters};

use super::report::{MachineInfo, Provenance};
use super::table::{Align, Table};
use super::{
    BenchDir, OutputArgs, base_dir_display, fmt_secs, group_thousands, parse_positive,
    parse_seconds, payload,
};

const PAYLOAD_BYTES: usize = 1024;
const THROUGHPUT_TARGET: f64 = 20_000.0;
const SECTION: &str = "outbox";
const TOPIC: &str = "bench-outbox";
/// Rows per INSERT statement when filling the backlog.
const FILL_CHUNK: usize = 1_000;
/// The offered-rate writer commits a transaction this often.
const WRITE_TICK: Duration = Duration::from_millis(5);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

pub(super) const LONG_ABOUT: &str = "\
Measure the transactional outbox relay on Postgres: rows from commit to broker ack.

Creates a schema of its own (bench_outbox_<pid>) in --database-url, migrates it, starts a
Surety server in-process on 127.0.0.1 with a fresh data directory inside --dir (unless
--server is given), and one relay (surety_outbox::Relay, --batch rows per round). Payloads
are 1 KiB, one topic with one partition, default durability (fsync before ack).

1. Backlog: --rows rows are committed first; then the relay starts and the clock runs until
   the last is marked sent. Reports rows/s (commit to broker ack, each row claimed, published
   and marked sent).
2. Offered rate: a writer commits --rate rows per second (a transaction every 5 ms) for
   --seconds while the relay runs; reports per-row latency from the row's insert (just
   before its commit) to its mark-sent (just after the broker's ack): p50, p99, p999, max.

Target, printed and not asserted: >= 20,000 rows/s. Replaces the `bench:outbox` section of
BENCHMARKS.md. The schema is dropped at the end.";

pub(super) const AFTER_HELP: &str = "\
Examples:
  cargo run --release -p surety -- bench outbox
  surety bench outbox --database-url postgres://postgres@127.0.0.1/test --rows 200000 --rate 10000
  surety bench outbox --rows 5000 --seconds 1 --no-write --json";

#[derive(Debug, Args)]
pub struct OutboxArgs {
    /// Postgres database to benchmark in (a schema of its own is created and dropped)
    #[arg(
        long,
        value_name = "URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    database_url: String,

    /// Use this running server instead of starting one in-process (the topic
    /// bench-outbox is created there and kept)
    #[arg(long, value_name = "URL")]
    server: Option<String>,

    /// Directory for the started server's data [default: ./surety-bench]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Rows in the backlog stage
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = parse_positive)]
    rows: usize,

    /// Offered rows per second in the latency stage
    #[arg(long, value_name = "ROWS", default_value_t = 5_000, value_parser = parse_positive)]
    rate: usize,

    /// Seconds of the latency stage
    #[arg(long, value_name = "N", default_value_t = 3.0, value_parser = parse_seconds)]
    seconds: f64,

    /// Relay batch size (rows per claim and publish)
    #[arg(long, value_name = "N", default_value_t = 1_000, value_parser = parse_positive)]
    batch: usize,

    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Serialize)]
struct OutboxBenchResult {
    #[serde(flatten)]
    provenance: Provenance,
    machine: MachineInfo,
    settings: Settings,
    backlog: Backlog,
    offered: Offered,
    meets_target: bool,
}

#[derive(Debug, Serialize)]
struct Settings {
    payload_bytes: usize,
    relay_batch: usize,
    backlog_rows: usize,
    offered_rate: usize,
    offered_seconds: f64,
    server: String,
    postgres: String,
    directory: String,
}

#[derive(Debug, Serialize)]
struct Backlog {
    rows: u64,
    seconds: f64,
    rows_per_sec: f64,
    /// Payload bytes only, 10^6 bytes/s.
    mb_per_sec: f64,
}

#[derive(Debug, Serialize)]
struct Offered {
    rows: u64,
    rows_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

pub fn run(args: OutboxArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (dir, machine) = BenchDir::create_described(args.dir.as_deref())?;
    let measured = rt.block_on(measure(&args, &dir));
    drop(rt);
    dir.remove()?;
    let (backlog, offered, postgres) = measured?;
    let result = OutboxBenchResult {
        provenance: Provenance::current(),
        machine,
        settings: Settings {
            payload_bytes: PAYLOAD_BYTES,
            relay_batch: args.batch.min(surety_outbox::relay::MAX_BATCH),
            backlog_rows: args.rows,
            offered_rate: args.rate,
            offered_seconds: args.seconds,
            server: args.server.clone().unwrap_or_else(|| "in-process".into()),
            postgres,
            directory: base_dir_display(args.dir.as_deref()),
        },
        meets_target: backlog.rows_per_sec >= THROUGHPUT_TARGET,
        backlog,
        offered,
    };
    args.output
        .emit(SECTION, &result, text_report, markdown_report)
}

async fn measure(args: &OutboxArgs, dir: &BenchDir) -> Result<(Backlog, Offered, String)> {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&args.database_url)
        .await
        .with_context(|| format!("connecting to Postgres at {}", args.database_url))?;
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&admin)
        .await?;
    let schema = format!("bench_outbox_{}", std::process::id());
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&admin)
        .await?;
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await?;
    let measured = measure_in(args, dir, &schema).await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .context("dropping the benchmark schema")?;
    let (backlog, offered) = measured?;
    Ok((backlog, offered, format!("PostgreSQL {version}")))
}

async fn measure_in(args: &OutboxArgs, dir: &BenchDir, schema: &str) -> Result<(Backlog, Offered)> {
    let options =
        PgConnectOptions::from_str(&args.database_url)?.options([("search_path", schema)]);
    let db = Database::connect_postgres(options).await?;
    surety_outbox::migrate(&db).await?;
    let Database::Postgres(pool) = &db else {
        bail!("the outbox benchmark needs Postgres");
    };

    let (url, server) = match &args.server {
        Some(url) => (url.clone(), None),
        None => {
            let data = dir.fresh("server")?;
            let settings = surety_server::Settings {
                data: Some(data),
                listen: Some("127.0.0.1:0".into()),
                ..surety_server::Settings::default()
            };
            let server =
                surety_server::Server::bind(surety_server::Config::from_settings(settings)?)
                    .await?;
            let url = format!("http://{}", server.local_addr());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(server.run(async {
                let _ = stopped.await;
            }));
            (url, Some((stop, task)))
        }
    };
    let client = Client::connect(&url, None).await?;
    client.create_topic(TOPIC, "").await?;
    let config = RelayConfig {
        batch_size: args.batch,
        poll_interval: Duration::from_millis(100),
        ..RelayConfig::default()
    };
    let payload: Arc<Vec<u8>> = Arc::new(payload(PAYLOAD_BYTES));

    // 1. Backlog.
    eprintln!("filling a backlog of {} rows...", args.rows);
    fill(pool, args.rows, &payload).await?;
    let relay = Relay::new(db.clone(), client.clone(), config);
    let stop = relay.stop_handle();
    let counters = relay.counters();
    let started = Instant::now();
    let task = tokio::spawn(relay.run());
    wait_published(&counters, args.rows as u64, DRAIN_TIMEOUT).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let backlog = Backlog {
        rows: args.rows as u64,
        seconds: elapsed,
        rows_per_sec: args.rows as f64 / elapsed,
        mb_per_sec: (args.rows * PAYLOAD_BYTES) as f64 / elapsed / 1e6,
    };
    sqlx::query("DELETE FROM surety_outbox")
        .execute(pool)
        .await?;

    // 2. Offered rate, relay running.
    eprintln!(
        "offering {} rows/s for {} s...",
        args.rate,
        fmt_secs(args.seconds)
    );
    let before = counters.snapshot().published;
    let written = offer(
        pool,
        args.rate,
        Duration::from_secs_f64(args.seconds),
        &payload,
    )
    .await?;
    wait_published(&counters, before + written, DRAIN_TIMEOUT).await?;
    let (rows, first, last, p50, p99, p999, max): (i64, f64, f64, f64, f64, f64, f64) = sqlx::query_as(
        "SELECT count(*),
                extract(epoch FROM min(created_at))::float8, extract(epoch FROM max(sent_at))::float8,
                percentile_disc(0.5) WITHIN GROUP (ORDER BY l), percentile_disc(0.99) WITHIN GROUP (ORDER BY l),
                percentile_disc(0.999) WITHIN GROUP (ORDER BY l), max(l)
         FROM (SELECT created_at, sent_at,
                      extract(epoch FROM sent_at - created_at)::float8 * 1000 AS l
               FROM surety_outbox WHERE state = 'sent') s",
    )
    .fetch_one(pool)
    .await?;
    let offered = Offered {
        rows: rows as u64,
        rows_per_sec: rows as f64 / (last - first).max(1e-9),
        p50_ms: p50,
        p99_ms: p99,
        p999_ms: p999,
        max_ms: max,
    };

    stop.stop();
    task.await.context("relay task panicked")??;
    if let Some((stop, task)) = server {
        let _ = stop.send(());
        task.await.context("server task panicked")??;
    }
    db.close().await;
    Ok((backlog, offered))
}

async fn fill(pool: &PgPool, rows: usize, payload: &Arc<Vec<u8>>) -> Result<()> {
    let mut left = rows;
    while left > 0 {
        let n = left.min(FILL_CHUNK);
        insert(pool, n, payload).await?;
        left -= n;
    }
    Ok(())
}

/// One transaction of `n` rows, as an application would commit them.
async fn insert(pool: &PgPool, n: usize, payload: &Arc<Vec<u8>>) -> Result<()> {
    let payloads: Vec<&[u8]> = (0..n).map(|_| payload.as_slice()).collect();
    sqlx::query(
        "INSERT INTO surety_outbox (topic, payload) SELECT $1, p FROM unnest($2::bytea[]) AS p",
    )
    .bind(TOPIC)
    .bind(payloads)
    .execute(pool)
    .await?;
    Ok(())
}

/// Commits `rate` rows per second for `seconds`; returns the rows written.
async fn offer(
    pool: &PgPool,
    rate: usize,
    seconds: Duration,
    payload: &Arc<Vec<u8>>,
) -> Result<u64> {
    let started = Instant::now();
    let mut written = 0u64;
    let mut tick = tokio::time::interval(WRITE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while started.elapsed() < seconds {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        if due > written {
            let n = (due - written) as usize;
            insert(pool, n, payload).await?;
            written += n as u64;
        }
    }
    Ok(written)
}

async fn wait_published(counters: &RelayCounters, rows: u64, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let s = counters.snapshot();
        if s.published + s.dead >= rows {
            if s.dead > 0 {
                bail!("{} rows ended dead; see the relay's log", s.dead);
            }
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!(
                "only {} of {rows} rows published after {timeout:?}",
                s.published
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn tables(r: &OutboxBenchResult) -> (Table, Table) {
    let mut backlog = Table::new(&[
        ("stage", Align::Left),
        ("rows", Align::Right),
        ("seconds", Align::Right),
        ("rows/s", Align::Right),
        ("MB/s", Align::Right),
        ("target rows/s", Align::Right),
        ("meets target", Align::Left),
    ]);
    backlog.row(vec![
        format!("backlog, batch {}", r.settings.relay_batch),
        group_thousands(r.backlog.rows as f64),
        format!("{:.2}", r.backlog.seconds),
        group_thousands(r.backlog.rows_per_sec),
        format!("{:.1}", r.backlog.mb_per_sec),
        format!(">= {}", group_thousands(THROUGHPUT_TARGET)),
        if r.meets_target { "yes" } else { "no" }.into(),
    ]);
    let mut offered = Table::new(&[
        ("stage", Align::Left),
        ("rows", Align::Right),
        ("rows/s", Align::Right),
        ("p50", Align::Right),
        ("p99", Align::Right),
        ("p999", Align::Right),
        ("max", Align::Right),
    ]);
    let ms = |v: f64| format!("{v:.2} ms");
    offered.row(vec![
        format!(
            "{} rows/s offered",
            group_thousands(r.settings.offered_rate as f64)
        ),
        group_thousands(r.offered.rows as f64),
        group_thousands(r.offered.rows_per_sec),
        ms(r.offered.p50_ms),
        ms(r.offered.p99_ms),
        ms(r.offered.p999_ms),
        ms(r.offered.max_ms),
    ]);
    (backlog, offered)
}

const NOTE: &str = "Backlog: rows committed before the relay starts; rows/s from the relay's start to the \
last broker ack (each row claimed with its sequence in a committed transaction, published \
in a batch, its ack awaited, and marked sent). Offered rate: latency per row from its \
INSERT (clock_timestamp, just before its transaction commits) to its mark-sent (just \
after the broker's fsynced ack). MB/s counts payload bytes (10^6 bytes/s).";

fn describe(r: &OutboxBenchResult) -> String {
    let s = &r.settings;
    format!(
        "1 KiB payloads, relay batch {}, server {}, {}",
        s.relay_batch, s.server, s.postgres
    )
}

fn text_report(r: &OutboxBenchResult) -> String {
    let (backlog, offered) = tables(r);
    format!(
        "surety bench outbox: {}\n\n{}\n{}\n{NOTE}\n",
        describe(r),
        backlog.to_text(),
        offered.to_text()
    )
}

fn markdown_report(r: &OutboxBenchResult) -> String {
    let (backlog, offered) = tables(r);
    let mut out = String::from("## surety outbox: relay from Postgres commit to broker ack\n\n");
    out.push_str(&r.provenance.to_markdown());
    out.push_str("\nMachine:\n\n");
    out.push_str(&r.machine.to_markdown());
    out.push_str(&format!(
        "\nSettings: {}; one topic, one partition, fsync before ack; Postgres on the same \
         machine (synchronous_commit as configured).\n\n",
        describe(r)
    ));
    out.push_str(&backlog.to_markdown());
    out.push('\n');
    out.push_str(&offered.to_markdown());
    out.push('\n');
    out.push_str(NOTE);
    out.push('\n');
    out
}
