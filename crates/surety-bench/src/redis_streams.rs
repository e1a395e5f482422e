//! `surety bench redis`: what the Surety layer costs on Redis Streams. The same workload
//! runs in one session on one `redis-server` with `appendonly yes`, `appendfsync always`
//! (fsync before each answer), first through plain XADD / XREADGROUP / XACK, then
//! through Surety's `Producer` and `Consumer` over `surety_redis::RedisTransport`
//! (dedupe script per batch, owner-checked ack script, lease recovery).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use surety_core::{Consumer, Delivery, Message, Producer, StopHandle, Transport};
use surety_redis::{RedisOptions, RedisTransport};

use super::peer::{RedisServer, redis_flags_display, redis_version};
use super::report::{MachineInfo, Provenance};
use super::table::{Align, Table};
use super::{
    BenchDir, OutputArgs, base_dir_display, fmt_secs, fmt_us, group_thousands, parse_positive,
    parse_seconds,
};

const PAYLOAD_BYTES: usize = 1024;
const SECTION: &str = "redis";
const TOPIC: &str = "bench-redis";
const GROUP: &str = "bench";
/// The goal of issue 13: the layer costs at most 25 %.
const THROUGHPUT_TARGET: f64 = 0.75;
const P99_TARGET: f64 = 1.25;

pub(super) const LONG_ABOUT: &str = "\
Measure what the Surety layer costs on Redis Streams.

Starts redis-server on a free loopback port with its AOF in a fresh directory inside --dir
(appendonly yes, appendfsync always: every write is fsynced before its answer, no RDB).
The same closed-loop workload runs twice, for --seconds each after a warm-up: plain Redis
(the redis crate: each producer XADDs its batch in one pipeline; each consumer
XREADGROUPs up to 64 entries, blocking 100 ms, and XACKs them in one call), then Surety
(surety_core::Producer::publish_batch over surety_redis::RedisTransport: one dedupe
script per batch; surety_core::Consumer with the owner-checked ack script). Payloads are
1 KiB and carry their publish time: the end-to-end latency is from before the publish to
the consumer's handler. Figures: msgs/s consumed, p50/p99 end-to-end latency, and the
ratios Surety / plain against the goal (at least 75 % of the throughput, at most 1.25x
the p99).";

pub(super) const AFTER_HELP: &str = "\
Example:
  surety bench redis --seconds 5

Needs redis-server (Redis 7.0 or later) on PATH or given with --redis-server. Replaces the
bench:redis section of BENCHMARKS.md unless --no-write.";

#[derive(Debug, Args)]
pub struct RedisArgs {
    /// Seconds of measurement per target (after a warm-up of a fifth of it)
    #[arg(long, default_value = "5", value_parser = parse_seconds)]
    seconds: f64,
    /// Concurrent producers
    #[arg(long, default_value = "8", value_parser = parse_positive)]
    producers: usize,
    /// Messages per publish call
    #[arg(long, default_value = "32", value_parser = parse_positive)]
    batch: usize,
    /// Concurrent consumers (one group)
    #[arg(long, default_value = "4", value_parser = parse_positive)]
    consumers: usize,
    /// The redis-server binary to start
    #[arg(long, value_name = "PATH", default_value = "redis-server")]
    redis_server: PathBuf,
    /// Base directory for the AOF (default ./surety-bench)
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Serialize)]
pub(super) struct Figures {
    pub target: &'static str,
    pub msgs_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub consumed: u64,
}

#[derive(Debug, Serialize)]
struct RedisBenchResult {
    provenance: Provenance,
    machine: MachineInfo,
    redis_version: String,
    redis_command: String,
    dir: String,
    seconds: f64,
    producers: usize,
    batch: usize,
    consumers: usize,
    plain: Figures,
    surety: Figures,
    throughput_ratio: f64,
    p99_ratio: f64,
    meets_goal: bool,
}

pub fn run(args: RedisArgs) -> Result<()> {
    let (dir, machine) = BenchDir::create_described(args.dir.as_deref())?;
    let version = redis_version(&args.redis_server)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(super::runtime_workers())
        .enable_all()
        .build()?;
    let window = Duration::from_secs_f64(args.seconds);
    let mut out = Vec::new();
    for target in ["plain", "surety"] {
        let data = dir.fresh(target)?;
        let log = dir.path().join(format!("redis-{target}.log"));
        let mut server = RedisServer::spawn(&args.redis_server, &data, &log)?;
        let figures = rt.block_on(async {
            let client = server.wait_ready().await?;
            let url = format!("redis://127.0.0.1:{}", server.port());
            eprintln!("{target}: {}s after a warm-up", fmt_secs(args.seconds));
            measure(target, &client, &url, &args, window).await
        });
        server.stop()?;
        out.push(figures?);
    }
    let surety = out.pop().expect("two targets");
    let plain = out.pop().expect("two targets");
    let throughput_ratio = super::ratio(surety.msgs_per_sec, plain.msgs_per_sec);
    let p99_ratio = super::ratio(surety.p99_us, plain.p99_us);
    let result = RedisBenchResult {
        provenance: Provenance::current(),
        machine,
        redis_version: version,
        redis_command: format!(
            "{} {} --dir <dir>",
            args.redis_server.display(),
            redis_flags_display("<free port>")
        ),
        dir: base_dir_display(args.dir.as_deref()),
        seconds: args.seconds,
        producers: args.producers,
        batch: args.batch,
        consumers: args.consumers,
        meets_goal: throughput_ratio >= THROUGHPUT_TARGET && p99_ratio <= P99_TARGET,
        plain,
        surety,
        throughput_ratio,
        p99_ratio,
    };
    args.output
        .emit(SECTION, &result, text_report, markdown_report)
}

/// The shared state of one target's run.
pub(super) struct Shared {
    pub stop: AtomicBool,
    measuring: AtomicBool,
    consumed: AtomicU64,
    latency: std::sync::Mutex<Histogram<u64>>,
}

impl Shared {
    pub(super) fn record(&self, payload: &[u8]) {
        if !self.measuring.load(Ordering::Relaxed) {
            return;
        }
        let sent = payload
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .unwrap_or(0);
        let us = now_us().saturating_sub(sent).max(1);
        self.consumed.fetch_add(1, Ordering::Relaxed);
        let _ = self.latency.lock().unwrap().record(us);
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub(super) fn stamped_payload() -> Vec<u8> {
    let mut p = super::payload(PAYLOAD_BYTES);
    p[..8].copy_from_slice(&now_us().to_le_bytes());
    p
}

async fn measure(
    target: &'static str,
    client: &redis::Client,
    url: &str,
    args: &RedisArgs,
    window: Duration,
) -> Result<Figures> {
    if target == "plain" {
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(TOPIC)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(&mut c)
            .await?;
        return closed_loop(target, window, |shared| {
            let mut tasks = Vec::new();
            for i in 0..args.consumers {
                tasks.push(tokio::spawn(plain_consumer(
                    client.clone(),
                    format!("c{i}"),
                    shared.clone(),
                )));
            }
            for _ in 0..args.producers {
                tasks.push(tokio::spawn(plain_producer(
                    client.clone(),
                    args.batch,
                    shared.clone(),
                )));
            }
            (tasks, Vec::new())
        })
        .await;
    }
    let t: Arc<dyn Transport> = Arc::new(
        RedisTransport::connect(url, RedisOptions::default())
            .await
            .context("connecting surety-redis")?,
    );
    t.create_topic(TOPIC, &surety_core::TopicSpec::default())
        .await
        .context("creating the topic")?;
    let load = Load {
        producers: args.producers,
        batch: args.batch,
        consumers: args.consumers,
    };
    closed_loop(target, window, |shared| {
        spawn_surety(&t, TOPIC, GROUP, load, shared)
    })
    .await
}

/// The shape of a closed-loop workload.
#[derive(Debug, Clone, Copy)]
pub(super) struct Load {
    pub producers: usize,
    pub batch: usize,
    pub consumers: usize,
}

pub(super) type Tasks = Vec<tokio::task::JoinHandle<Result<()>>>;

/// Surety's `Producer`s (`publish_batch` in a loop) and `Consumer`s (64 in flight each)
/// on any transport: the Surety side of every backend's cost benchmark.
pub(super) fn spawn_surety(
    t: &Arc<dyn Transport>,
    topic: &'static str,
    group: &'static str,
    load: Load,
    shared: Arc<Shared>,
) -> (Tasks, Vec<StopHandle>) {
    let mut tasks: Tasks = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..load.consumers {
        let shared = shared.clone();
        let builder = Consumer::builder_shared(t.clone(), topic, group).max_in_flight(64);
        stops.push(builder.stop_handle());
        tasks.push(tokio::spawn(async move {
            builder
                .run(move |d: Delivery| {
                    let shared = shared.clone();
                    async move {
                        shared.record(&d.payload);
                        Ok::<(), String>(())
                    }
                })
                .await
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!("consumer: {e:?}"))
        }));
    }
    for _ in 0..load.producers {
        let (t, shared, batch) = (t.clone(), shared.clone(), load.batch);
        tasks.push(tokio::spawn(async move {
            let p = Producer::builder_shared(t).build();
            while !shared.stop.load(Ordering::Relaxed) {
                let messages = (0..batch)
                    .map(|_| Message::new(stamped_payload()))
                    .collect();
                p.publish_batch(topic, messages)
                    .await
                    .map_err(|e| anyhow::anyhow!("publish: {e:?}"))?;
            }
            Ok(())
        }));
    }
    (tasks, stops)
}

/// Runs a workload `start` spawns: a warm-up of a fifth of `window`, then `window`
/// measured, then stop; the figures of what the consumers recorded meanwhile.
pub(super) async fn closed_loop(
    target: &'static str,
    window: Duration,
    start: impl FnOnce(Arc<Shared>) -> (Tasks, Vec<StopHandle>),
) -> Result<Figures> {
    let shared = Arc::new(Shared {
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        consumed: AtomicU64::new(0),
        latency: std::sync::Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
    });
    let (tasks, stops) = start(shared.clone());
    tokio::time::sleep(window / 5).await;
    shared.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    shared.stop.store(true, Ordering::Relaxed);
    for s in stops {
        s.stop();
    }
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(10), t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {} // a consumer still waiting on an empty stream
        }
    }
    let consumed = shared.consumed.load(Ordering::Relaxed);
    let h = shared.latency.lock().unwrap();
    Ok(Figures {
        target,
        msgs_per_sec: consumed as f64 / elapsed.as_secs_f64(),
        p50_us: h.value_at_quantile(0.5) as f64,
        p99_us: h.value_at_quantile(0.99) as f64,
        consumed,
    })
}

async fn plain_producer(client: redis::Client, batch: usize, shared: Arc<Shared>) -> Result<()> {
    let mut c = client.get_multiplexed_async_connection().await?;
    while !shared.stop.load(Ordering::Relaxed) {
        let mut pipe = redis::pipe();
        for _ in 0..batch {
            pipe.cmd("XADD")
                .arg(TOPIC)
                .arg("*")
                .arg("payload")
                .arg(stamped_payload());
        }
        pipe.query_async::<Vec<String>>(&mut c).await?;
    }
    Ok(())
}

type Reply = Option<Vec<(String, Vec<(String, Vec<(String, Vec<u8>)>)>)>>;

async fn plain_consumer(client: redis::Client, name: String, shared: Arc<Shared>) -> Result<()> {
    let mut c = client.get_multiplexed_async_connection().await?;
    while !shared.stop.load(Ordering::Relaxed) {
        let reply: Reply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&name)
            .arg("COUNT")
            .arg(64)
            .arg("BLOCK")
            .arg(100)
            .arg("STREAMS")
            .arg(TOPIC)
            .arg(">")
            .query_async(&mut c)
            .await?;
        let Some(streams) = reply else { continue };
        let mut ids = Vec::new();
        for (_, entries) in streams {
            for (id, fields) in entries {
                if let Some((_, p)) = fields.first() {
                    shared.record(p);
                }
                ids.push(id);
            }
        }
        if !ids.is_empty() {
            redis::cmd("XACK")
                .arg(TOPIC)
                .arg(GROUP)
                .arg(&ids)
                .query_async::<i64>(&mut c)
                .await?;
        }
    }
    Ok(())
}

fn table(r: &RedisBenchResult) -> Table {
    cost_table(&r.plain, &r.surety)
}

/// Plain and Surety side by side: what every backend's cost benchmark prints.
pub(super) fn cost_table(plain: &Figures, surety: &Figures) -> Table {
    let mut t = Table::new(&[
        ("target", Align::Left),
        ("msgs/s", Align::Right),
        ("p50 end to end", Align::Right),
        ("p99 end to end", Align::Right),
    ]);
    for f in [plain, surety] {
        t.row(vec![
            f.target.to_owned(),
            group_thousands(f.msgs_per_sec),
            fmt_us(f.p50_us),
            fmt_us(f.p99_us),
        ]);
    }
    t
}

fn summary(r: &RedisBenchResult) -> String {
    cost_summary(
        r.throughput_ratio,
        r.p99_ratio,
        THROUGHPUT_TARGET,
        P99_TARGET,
    )
}

/// The ratios Surety / plain against an issue's goal, in one sentence.
pub(super) fn cost_summary(
    throughput: f64,
    p99: f64,
    throughput_goal: f64,
    p99_goal: f64,
) -> String {
    let meets = throughput >= throughput_goal && p99 <= p99_goal;
    format!(
        "Surety / plain: throughput {:.0} % (goal ≥ {:.0} %), p99 {:.2}x (goal ≤ {:.2}x): {}.",
        throughput * 100.0,
        throughput_goal * 100.0,
        p99,
        p99_goal,
        if meets {
            "meets the goal"
        } else {
            "misses the goal"
        }
    )
}

fn settings(r: &RedisBenchResult) -> String {
    format!(
        "Redis {} started as `{}`; {} s per target after a {} s warm-up; {} producers \
         publishing {} messages of {} bytes per call, {} consumers in one group, closed loop.",
        r.redis_version,
        r.redis_command,
        fmt_secs(r.seconds),
        fmt_secs(r.seconds / 5.0),
        r.producers,
        r.batch,
        PAYLOAD_BYTES,
        r.consumers
    )
}

fn text_report(r: &RedisBenchResult) -> String {
    format!("{}\n{}\n{}\n", settings(r), table(r).to_text(), summary(r))
}

fn markdown_report(r: &RedisBenchResult) -> String {
    format!(
        "## Redis Streams: the Surety layer against plain XADD/XREADGROUP/XACK\n\n{}\n\n{}\n\nSettings: {}\n\n{}\n\n{}\n",
        r.provenance.to_markdown(),
        r.machine.to_markdown(),
        settings(r),
        table(r).to_markdown(),
        summary(r)
    )
}
