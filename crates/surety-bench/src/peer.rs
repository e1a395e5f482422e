//! `surety bench peer`: Surety next to a peer measured in the same run on the same disk —
//! Redis Streams with its strongest durability (`appendfsync always`), started by the
//! benchmark — and next to the raw disk, on one workload: single-message publishes with a
//! window in flight per producer connection, consumers acking every message. Reports what
//! each message costs (throughput, latency, server CPU, fsyncs) and the ratios between
//! the three.

use std::fs::{self, File};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use surety_client::{Client, Message, Producer, StopHandle};
use surety_log::LogConfig;
use tokio::task::JoinSet;

use super::log::{RAW_BATCH_RECORDS, measure_raw};
use super::progress::Progress;
use super::report::{MachineInfo, Provenance};
use super::server::{Serve, spawn_consumers, terminate};
use super::table::{Align, Table};
use super::{
    BenchDir, MEASURING, OutputArgs, STOPPING, WARMING, Window, base_dir_display, fmt_secs, fmt_us,
    group_thousands, latency_histogram, nanos, parse_positive, parse_seconds, payload, ratio,
    runtime_workers, tick_until,
};

/// Payload bytes per message; the first 8 carry the publish instant.
const PAYLOAD_BYTES: usize = 1024;
/// The BENCHMARKS.md section this benchmark owns.
const SECTION: &str = "peer";
/// Topic (Surety) or stream key (Redis), and consumer group, of every run.
const TOPIC: &str = "bench-peer";
const GROUP: &str = "bench";
/// How long a Redis consumer's XREADGROUP waits for entries before it looks whether the
/// run is over.
const REDIS_BLOCK_MS: u64 = 100;
/// How long redis-server may take to answer PING after it was started.
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) const LONG_ABOUT: &str = "\
Measure Surety next to a peer, Redis Streams, and next to the raw disk: the same workload,
the same machine and disk, in one run. The question it answers is what one durable message
costs in each: throughput, latency, server CPU and fsyncs per message, and the ratios.

The workload (the one peers publish their figures for): single-message publishes, each
confirmed only once durable; --producers producers, each on its own connection with
--in-flight publishes in flight (one task per slot: publish, await the confirm, publish
again); --consumers consumers, each on its own connection holding up to --prefetch messages,
whose handler records the end-to-end latency (the publish instant travels in the first 8
bytes of the 1 KiB payload) and after which the message is acked. Every target runs for
--seconds after a warm-up of a fifth of that (0.05 s to 1 s), and each figure is the median
of --runs runs; the targets take turns within each run, so that a disk or machine whose
speed drifts weighs on all of them alike.

Targets, each with the strongest durability it offers, their data in --dir:
1. Raw disk: 100 records of 1 KiB per write + fdatasync into preallocated files, as the
   throughput reference of `surety bench log`: what the disk allows with batching.
2. Surety: `surety serve` (this binary) started on 127.0.0.1 with a fresh data directory
   per run; a topic of the default config (1 partition, fsync before the confirm, group
   acks journalled with fsync); the Rust client: a `Producer` per connection, `Consumer`s
   with max_in_flight = --prefetch (acks are batched by the client, 1 ms linger).
3. Redis Streams: `redis-server --port <free port> --bind 127.0.0.1 --appendonly yes
   --appendfsync always --save \"\" --dir <fresh dir>` started per run (every write fsynced
   to the AOF before the reply); the `redis` crate: one multiplexed connection per producer
   carrying its --in-flight XADDs (one message each), one connection per consumer running
   XREADGROUP COUNT --prefetch BLOCK 100 and, after the handlers, XACK of those entries
   pipelined with the next XREADGROUP. Redis keeps its default AOF rewrite policy; rewrites
   inside the window are reported.

Figures per target: publish-confirm msgs/s (confirms inside the window), end-to-end msgs/s
(handlers run inside the window), p50/p99 publish-confirm latency, p99 end-to-end latency,
server CPU per message (utime + stime of the server process from /proc/<pid>/stat over the
window, divided by the messages confirmed), fsyncs per message (Surety: the count of its
surety_log_records_per_fsync histogram on /metrics, every log of the server: messages and
group journals; Redis: n/a, INFO persistence counts none) and disk flushes per message (the
flush requests completed by the benchmark directory's block device, /sys/dev/block/*/stat:
the whole device, so other processes' flushes count too). Then the ratios: Surety / Redis
for each throughput figure and for CPU per message, and each target's throughput / the raw
disk's.

The clients, the server under test and (between targets) nothing else of the benchmark
share the machine's cores: on a small machine the clients' CPU is part of what limits every
target. Run it on the disk you care about: tmpfs (often /tmp) makes fdatasync free. Needs
redis-server (Redis 5 or later) on PATH or given with --redis-server. Replaces the
`bench:peer` section of BENCHMARKS.md.";

pub(super) const AFTER_HELP: &str = "\
Examples:
  cargo run --release -p surety -- bench peer
  surety bench peer --seconds 10 --runs 5 --dir /mnt/nvme
  surety bench peer --producers 8 --in-flight 16 --consumers 4 --prefetch 32
  surety bench peer --seconds 1 --runs 1 --no-write --json | jq '.ratios'";

/// Options of `surety bench peer` (its help text is attached where the subcommand is
/// declared, in lib.rs).
#[derive(Debug, Args)]
pub struct PeerArgs {
    /// Directory for every target's data; a fresh subdirectory is made inside it and
    /// removed afterwards [default: ./surety-bench, created if missing and removed if
    /// left empty]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Seconds to measure each target in each run (fractions allowed), after a warm-up of
    /// a fifth of that (0.05 s to 1 s)
    #[arg(long, value_name = "N", default_value_t = 5.0, value_parser = parse_seconds)]
    seconds: f64,

    /// Runs; each figure reported is the median of the runs' (the targets take turns
    /// within each run)
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = parse_positive)]
    runs: usize,

    /// Producers, each on its own connection
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = parse_positive)]
    producers: usize,

    /// Single-message publishes each producer keeps in flight (awaiting their confirm)
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = parse_positive)]
    in_flight: usize,

    /// Consumers, each on its own connection, acking every message
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = parse_positive)]
    consumers: usize,

    /// Messages each consumer holds at once: a Surety Consumer's max_in_flight, a Redis
    /// consumer's XREADGROUP COUNT
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = parse_positive)]
    prefetch: usize,

    /// The redis-server binary to start
    #[arg(long, value_name = "PATH", default_value = "redis-server")]
    redis_server: PathBuf,

    #[command(flatten)]
    out: OutputArgs,
}

/// Everything one run produced; this is also the `--json` output.
#[derive(Debug, Serialize)]
struct PeerBenchResult {
    #[serde(flatten)]
    provenance: Provenance,
    machine: MachineInfo,
    settings: Settings,
    /// Raw disk, Surety, Redis, in that order.
    targets: Vec<TargetResult>,
    ratios: Vec<PeerRatio>,
}

#[derive(Debug, Serialize)]
struct Settings {
    seconds: f64,
    warmup_seconds: f64,
    runs: usize,
    payload_bytes: usize,
    producers: usize,
    in_flight_per_producer: usize,
    consumers: usize,
    prefetch: usize,
    surety_topic_durability: String,
    redis_version: String,
    redis_command: String,
    raw_batch_records: usize,
    runtime_worker_threads: usize,
    directory: String,
    /// /proc/loadavg's 1, 5 and 15 minute averages when the run started and ended: other
    /// work on the machine shares its cores and disk with the targets.
    load_average_before: String,
    load_average_after: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Raw,
    Surety,
    Redis,
}

#[derive(Debug, Serialize)]
struct TargetResult {
    kind: Kind,
    name: String,
    /// Each figure the median of the runs'.
    median: Figures,
    runs: Vec<RunFigures>,
}

/// One target's figures; `None` where the target has no such figure or it was unreadable.
#[derive(Debug, Clone, Serialize)]
struct Figures {
    /// Publishes confirmed inside the window (raw: records made durable), per second.
    publish_msgs_per_sec: f64,
    /// Handlers run inside the window, per second.
    end_to_end_msgs_per_sec: Option<f64>,
    /// Per publish, until its confirm (raw: per write + fdatasync of a batch).
    publish_p50_us: f64,
    publish_p99_us: f64,
    /// Per message, from the start of its publish to its handler's run.
    end_to_end_p99_us: Option<f64>,
    /// Server process CPU (user + system) over the window per message confirmed.
    server_cpu_us_per_msg: Option<f64>,
    /// fdatasyncs over the window per message confirmed.
    fsyncs_per_msg: Option<f64>,
    /// The block device's completed flush requests over the window per message confirmed.
    disk_flushes_per_msg: Option<f64>,
}

#[derive(Debug, Serialize)]
struct RunFigures {
    #[serde(flatten)]
    figures: Figures,
    seconds: f64,
    published: u64,
    handled: Option<u64>,
    /// Redis only: AOF rewrites that ran during the window (`aof_rewrites` of INFO).
    aof_rewrites: Option<u64>,
}

#[derive(Debug, Serialize)]
struct PeerRatio {
    what: String,
    value: f64,
    /// `multiple` (shown as 1.23x) or `share` (shown as 45%).
    shown_as: &'static str,
}

pub fn run(args: PeerArgs) -> Result<()> {
    let redis_version = redis_version(&args.redis_server)?;
    let seconds = Duration::from_secs_f64(args.seconds);
    let window = Window {
        warmup: (seconds / 5).clamp(Duration::from_millis(50), Duration::from_secs(1)),
        seconds,
    };
    let load_average_before = load_average();
    let (workspace, machine) = BenchDir::create_described(args.dir.as_deref())?;
    let provenance = Provenance::current();
    let disk = DiskStat::of(workspace.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(runtime_workers())
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let mut progress = Progress::new(3 * args.runs, window.warmup + window.seconds);
    let segment_bytes = LogConfig::default().segment_bytes;

    let kinds = [Kind::Raw, Kind::Surety, Kind::Redis];
    let mut runs: Vec<Vec<RunFigures>> = kinds.iter().map(|_| Vec::new()).collect();
    for run in 1..=args.runs {
        for (kind, figures) in kinds.iter().zip(&mut runs) {
            progress.stage(&format!("{} (run {run}/{})", kind.label(), args.runs));
            let dir = workspace.fresh(&format!("{}-{run}", kind.slug()))?;
            let measured = match kind {
                Kind::Raw => {
                    let m = measure_raw(
                        &dir,
                        RAW_BATCH_RECORDS,
                        PAYLOAD_BYTES,
                        segment_bytes,
                        window,
                        &progress,
                    )?;
                    raw_figures(&m)
                }
                Kind::Surety => {
                    let log = workspace.path().join(format!("surety-{run}.stderr"));
                    let serve = Serve::start(&dir, &log)?;
                    let m = rt.block_on(surety_run(&serve, &args, window, &progress, &disk));
                    // Stop the server before reporting a failure, and before removing its data.
                    serve.stop()?;
                    m?
                }
                Kind::Redis => {
                    let log = workspace.path().join(format!("redis-{run}.log"));
                    let mut redis = RedisServer::spawn(&args.redis_server, &dir, &log)?;
                    let m = rt.block_on(redis_run(&mut redis, &args, window, &progress, &disk));
                    redis.stop()?;
                    m?
                }
            };
            // The raw baseline removes its own directory.
            if dir.exists() {
                fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            }
            figures.push(measured);
        }
    }
    progress.finish();
    drop(rt);
    workspace.remove()?;

    let targets: Vec<TargetResult> = kinds
        .iter()
        .zip(runs)
        .map(|(&kind, runs)| TargetResult {
            kind,
            name: kind.name(&args),
            median: median_figures(&runs),
            runs,
        })
        .collect();
    let ratios = ratios(&targets);
    let result = PeerBenchResult {
        provenance,
        machine,
        settings: Settings {
            seconds: args.seconds,
            warmup_seconds: window.warmup.as_secs_f64(),
            runs: args.runs,
            payload_bytes: PAYLOAD_BYTES,
            producers: args.producers,
            in_flight_per_producer: args.in_flight,
            consumers: args.consumers,
            prefetch: args.prefetch,
            surety_topic_durability: format!(
                "{:?}",
                surety_broker::TopicConfig::default().durability
            ),
            redis_version,
            redis_command: format!(
                "{} {} --dir <fresh dir>",
                args.redis_server.display(),
                redis_flags_display("<free port>")
            ),
            raw_batch_records: RAW_BATCH_RECORDS,
            runtime_worker_threads: runtime_workers(),
            directory: base_dir_display(args.dir.as_deref()),
            load_average_before,
            load_average_after: load_average(),
        },
        targets,
        ratios,
    };
    args.out
        .emit(SECTION, &result, text_report, markdown_report)
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Raw => "raw disk",
            Kind::Surety => "Surety",
            Kind::Redis => "Redis Streams",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Kind::Raw => "raw",
            Kind::Surety => "surety",
            Kind::Redis => "redis",
        }
    }

    fn name(self, args: &PeerArgs) -> String {
        match self {
            Kind::Raw => format!("raw disk: {RAW_BATCH_RECORDS} x 1 KiB per write + fdatasync"),
            Kind::Surety => format!(
                "Surety (fsync): {} x {} in flight, {} consumers",
                args.producers, args.in_flight, args.consumers
            ),
            Kind::Redis => format!(
                "Redis Streams (appendfsync always): {} x {} in flight, {} consumers",
                args.producers, args.in_flight, args.consumers
            ),
        }
    }
}

/// `redis-server --version`'s version, or why it cannot be run.
pub(super) fn redis_version(bin: &Path) -> Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| {
            format!(
                "running {} --version: bench peer needs redis-server (Redis 5 or later) for its \
             baseline; install it (e.g. apt install redis-server) or pass --redis-server PATH",
                bin.display()
            )
        })?;
    if !out.status.success() {
        bail!("{} --version exited with {}", bin.display(), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // "Redis server v=7.0.15 sha=... malloc=... bits=64 build=..."
    Ok(text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .unwrap_or(text.trim())
        .to_string())
}

/// The flags redis-server runs with (but --dir): its strongest durability, no RDB
/// snapshots (`--save` with an empty value).
fn redis_flags(port: &str) -> [&str; 10] {
    [
        "--port",
        port,
        "--bind",
        "127.0.0.1",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
    ]
}

/// The flags as a shell would need them.
pub(super) fn redis_flags_display(port: &str) -> String {
    redis_flags(port)
        .map(|f| if f.is_empty() { "\"\"" } else { f })
        .join(" ")
}

pub(super) fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

fn raw_figures(m: &super::Measurement) -> RunFigures {
    let secs = m.elapsed.as_secs_f64();
    let us = |q: f64| m.latency.value_at_quantile(q) as f64 / 1_000.0;
    RunFigures {
        figures: Figures {
            publish_msgs_per_sec: ratio(m.records as f64, secs),
            end_to_end_msgs_per_sec: None,
            publish_p50_us: us(0.50),
            publish_p99_us: us(0.99),
            end_to_end_p99_us: None,
            server_cpu_us_per_msg: None,
            fsyncs_per_msg: Some(ratio(m.syncs as f64, m.records as f64)),
            disk_flushes_per_msg: None,
        },
        seconds: secs,
        published: m.records,
        handled: None,
        aof_rewrites: None,
    }
}

/// Shared by one target's producer and consumer tasks (also `bench nats`'s).
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) phase: AtomicU8,
    /// The publish instants in the payloads count from here.
    pub(super) epoch: Instant,
    pub(super) published: AtomicU64,
    pub(super) handled: AtomicU64,
    pub(super) publish: Mutex<Histogram<u64>>,
    pub(super) end_to_end: Mutex<Histogram<u64>>,
}

impl Shared {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            phase: AtomicU8::new(WARMING),
            epoch: Instant::now(),
            published: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            publish: Mutex::new(latency_histogram()),
            end_to_end: Mutex::new(latency_histogram()),
        })
    }

    pub(super) fn running(&self) -> bool {
        self.phase.load(Ordering::Acquire) != STOPPING
    }

    /// A fresh payload stamped with the instant its publish starts.
    pub(super) fn stamped(&self, body: &[u8]) -> (Instant, Vec<u8>) {
        let started = Instant::now();
        let mut payload = body.to_vec();
        payload[..8].copy_from_slice(&nanos(started - self.epoch).to_le_bytes());
        (started, payload)
    }

    /// A publish was confirmed: count it and its latency, inside the window.
    pub(super) fn confirmed(&self, started: Instant) {
        let took = started.elapsed();
        if self.phase.load(Ordering::Acquire) == MEASURING {
            self.published.fetch_add(1, Ordering::Relaxed);
            self.publish.lock().unwrap().saturating_record(nanos(took));
        }
    }

    /// A handler ran: count it and its end-to-end latency, inside the window.
    pub(super) fn delivered(&self, payload: &[u8]) {
        if self.phase.load(Ordering::Acquire) != MEASURING {
            return;
        }
        let now = nanos(self.epoch.elapsed());
        self.handled.fetch_add(1, Ordering::Relaxed);
        if let Some(stamp) = payload.get(..8).and_then(|b| b.try_into().ok()) {
            let sent = u64::from_le_bytes(stamp);
            self.end_to_end
                .lock()
                .unwrap()
                .saturating_record(now.saturating_sub(sent));
        }
    }
}

/// What the server has spent, read at both ends of the window.
#[derive(Debug, Default)]
struct Snapshot {
    cpu: Option<Duration>,
    fsyncs: Option<u64>,
    flushes: Option<u64>,
    aof_rewrites: Option<u64>,
}

/// Where a target's costs are read.
#[derive(Debug)]
struct Probe<'a> {
    pid: u32,
    disk: &'a DiskStat,
    /// Surety's Prometheus endpoint.
    metrics_url: Option<String>,
    /// A Redis connection for INFO.
    redis: Option<MultiplexedConnection>,
}

impl Probe<'_> {
    async fn read(&mut self) -> Snapshot {
        let cpu = process_cpu(self.pid);
        let flushes = self.disk.flushes();
        let fsyncs = match &self.metrics_url {
            Some(url) => surety_fsyncs(url).await,
            None => None,
        };
        let aof_rewrites = match &mut self.redis {
            Some(conn) => redis_aof_rewrites(conn).await,
            None => None,
        };
        Snapshot {
            cpu,
            fsyncs,
            flushes,
            aof_rewrites,
        }
    }
}

/// The warm-up, then the measurement window; returns the probe's readings at both ends
/// and the window's length. Producers stop at its end (after their calls in flight).
async fn measure_window(
    shared: &Shared,
    window: Window,
    progress: &Progress,
    probe: &mut Probe<'_>,
) -> (Snapshot, Snapshot, Duration) {
    let stage = Instant::now();
    tick_until(stage, window.warmup, progress).await;
    let before = probe.read().await;
    let measuring = Instant::now();
    shared.phase.store(MEASURING, Ordering::Release);
    tick_until(stage, window.warmup + window.seconds, progress).await;
    shared.phase.store(STOPPING, Ordering::Release);
    let elapsed = measuring.elapsed();
    let after = probe.read().await;
    (before, after, elapsed)
}

fn run_figures(
    shared: Shared,
    before: &Snapshot,
    after: &Snapshot,
    elapsed: Duration,
) -> RunFigures {
    let secs = elapsed.as_secs_f64();
    let published = shared.published.into_inner();
    let handled = shared.handled.into_inner();
    let publish = shared.publish.into_inner().unwrap();
    let end_to_end = shared.end_to_end.into_inner().unwrap();
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
    let per_msg = |v: f64| ratio(v, published as f64);
    let delta = |f: fn(&Snapshot) -> Option<u64>| Some(f(after)?.saturating_sub(f(before)?));
    RunFigures {
        figures: Figures {
            publish_msgs_per_sec: ratio(published as f64, secs),
            end_to_end_msgs_per_sec: Some(ratio(handled as f64, secs)),
            publish_p50_us: us(&publish, 0.50),
            publish_p99_us: us(&publish, 0.99),
            end_to_end_p99_us: Some(us(&end_to_end, 0.99)),
            server_cpu_us_per_msg: before
                .cpu
                .zip(after.cpu)
                .map(|(b, a)| per_msg(a.saturating_sub(b).as_secs_f64() * 1e6)),
            fsyncs_per_msg: delta(|s| s.fsyncs).map(|d| per_msg(d as f64)),
            disk_flushes_per_msg: delta(|s| s.flushes).map(|d| per_msg(d as f64)),
        },
        seconds: secs,
        published,
        handled: Some(handled),
        aof_rewrites: delta(|s| s.aof_rewrites),
    }
}

/// One Surety run against a started `surety serve`.
async fn surety_run(
    serve: &Serve,
    args: &PeerArgs,
    window: Window,
    progress: &Progress,
    disk: &DiskStat,
) -> Result<RunFigures> {
    let url = serve.url.as_str();
    let admin = Client::connect(url, None).await?;
    admin.create_topic(TOPIC, "{}").await?;
    let shared = Shared::new();
    let stop = StopHandle::new();
    let delivered = shared.clone();
    let on_delivery = move |payload: &[u8]| delivered.delivered(payload);
    let mut consumers = spawn_consumers(
        (url, None, TOPIC),
        args.consumers,
        u32::try_from(args.prefetch).unwrap_or(u32::MAX),
        &stop,
        on_delivery,
    )
    .await?;
    let body: Arc<[u8]> = payload(PAYLOAD_BYTES).into();
    let mut producers = JoinSet::new();
    for _ in 0..args.producers {
        let producer = Arc::new(Producer::new(Client::connect(url, None).await?));
        for _ in 0..args.in_flight {
            let (producer, shared, body) = (producer.clone(), shared.clone(), body.clone());
            producers.spawn(async move {
                while shared.running() {
                    let (started, payload) = shared.stamped(&body);
                    producer
                        .publish(TOPIC, Message::new(payload))
                        .await
                        .context("Surety publish")?;
                    shared.confirmed(started);
                }
                anyhow::Ok(())
            });
        }
    }

    let mut probe = Probe {
        pid: serve.pid(),
        disk,
        metrics_url: Some(format!("{url}/metrics")),
        redis: None,
    };
    let (before, after, elapsed) = measure_window(&shared, window, progress, &mut probe).await;
    while let Some(done) = producers.join_next().await {
        done.context("producer task panicked")??;
    }
    stop.stop();
    while let Some(done) = consumers.join_next().await {
        done.context("consumer task panicked")?
            .context("consumer")?;
    }
    let shared = Arc::into_inner(shared).expect("all tasks finished");
    Ok(run_figures(shared, &before, &after, elapsed))
}

/// One Redis Streams run against a started redis-server.
async fn redis_run(
    redis: &mut RedisServer,
    args: &PeerArgs,
    window: Window,
    progress: &Progress,
    disk: &DiskStat,
) -> Result<RunFigures> {
    let client = redis.wait_ready().await?;
    let mut admin = client.get_multiplexed_async_connection().await?;
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(TOPIC)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut admin)
        .await
        .context("XGROUP CREATE")?;
    let shared = Shared::new();
    let mut consumers = JoinSet::new();
    for i in 0..args.consumers {
        let conn = client.get_multiplexed_async_connection().await?;
        consumers.spawn(redis_consumer(
            conn,
            format!("c{i}"),
            args.prefetch,
            shared.clone(),
        ));
    }
    let body: Arc<[u8]> = payload(PAYLOAD_BYTES).into();
    let mut producers = JoinSet::new();
    for _ in 0..args.producers {
        // One connection per producer; its in-flight XADDs are pipelined on it.
        let conn = client.get_multiplexed_async_connection().await?;
        for _ in 0..args.in_flight {
            let (mut conn, shared, body) = (conn.clone(), shared.clone(), body.clone());
            producers.spawn(async move {
                while shared.running() {
                    let (started, payload) = shared.stamped(&body);
                    let _id: String = redis::cmd("XADD")
                        .arg(TOPIC)
                        .arg("*")
                        .arg("d")
                        .arg(payload)
                        .query_async(&mut conn)
                        .await
                        .context("XADD")?;
                    shared.confirmed(started);
                }
                anyhow::Ok(())
            });
        }
    }

    let mut probe = Probe {
        pid: redis.pid(),
        disk,
        metrics_url: None,
        redis: Some(admin),
    };
    let (before, after, elapsed) = measure_window(&shared, window, progress, &mut probe).await;
    while let Some(done) = producers.join_next().await {
        done.context("producer task panicked")??;
    }
    while let Some(done) = consumers.join_next().await {
        done.context("consumer task panicked")??;
    }
    let shared = Arc::into_inner(shared).expect("all tasks finished");
    Ok(run_figures(shared, &before, &after, elapsed))
}

/// Reads up to `count` new entries, runs the handler on each, then acks them together
/// with the next read (one round trip), until the run stops.
async fn redis_consumer(
    mut conn: MultiplexedConnection,
    name: String,
    count: usize,
    shared: Arc<Shared>,
) -> Result<()> {
    let mut handled: Vec<String> = Vec::with_capacity(count);
    while shared.running() {
        let mut pipe = redis::pipe();
        if !handled.is_empty() {
            pipe.cmd("XACK")
                .arg(TOPIC)
                .arg(GROUP)
                .arg(&handled)
                .ignore();
        }
        pipe.cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&name)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(REDIS_BLOCK_MS)
            .arg("STREAMS")
            .arg(TOPIC)
            .arg(">");
        let (reply,): (redis::Value,) = pipe
            .query_async(&mut conn)
            .await
            .context("XACK + XREADGROUP")?;
        handled.clear();
        for (id, payload) in stream_entries(&reply)? {
            shared.delivered(payload);
            handled.push(id);
        }
    }
    if !handled.is_empty() {
        let _acked: u64 = redis::cmd("XACK")
            .arg(TOPIC)
            .arg(GROUP)
            .arg(&handled)
            .query_async(&mut conn)
            .await
            .context("XACK")?;
    }
    Ok(())
}

/// The (id, payload) of each entry of an XREADGROUP reply for one stream (RESP2:
/// `[[key, [[id, [field, value, ...]], ...]]]`, or nil when BLOCK timed out).
fn stream_entries(reply: &redis::Value) -> Result<Vec<(String, &[u8])>> {
    use redis::Value;
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams,
        other => bail!("XREADGROUP answered {other:?}"),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(pair) = stream else {
            bail!("XREADGROUP stream {stream:?}");
        };
        let Some(Value::Array(entries)) = pair.get(1) else {
            bail!("XREADGROUP stream {pair:?}");
        };
        for entry in entries {
            let Value::Array(e) = entry else {
                bail!("XREADGROUP entry {entry:?}");
            };
            let (Some(Value::BulkString(id)), Some(Value::Array(fields))) = (e.first(), e.get(1))
            else {
                bail!("XREADGROUP entry {entry:?}");
            };
            let payload = match fields.get(1) {
                Some(Value::BulkString(v)) => v.as_slice(),
                _ => bail!("XREADGROUP entry without a value: {entry:?}"),
            };
            out.push((String::from_utf8_lossy(id).into_owned(), payload));
        }
    }
    Ok(out)
}

/// A redis-server child on a free loopback port, its data and AOF in one directory.
#[derive(Debug)]
pub(super) struct RedisServer {
    /// `None` once stopped.
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl RedisServer {
    pub(super) fn spawn(bin: &Path, dir: &Path, log: &Path) -> Result<Self> {
        let port = free_port()?;
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(bin)
            .args(redis_flags(&port.to_string()))
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self {
            child: Some(child),
            port,
            log: log.to_path_buf(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("not stopped yet").id()
    }

    pub(super) fn port(&self) -> u16 {
        self.port
    }

    /// Waits until the server answers PING; fails with its log if it exits or takes
    /// longer than REDIS_START_TIMEOUT.
    pub(super) async fn wait_ready(&mut self) -> Result<redis::Client> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?;
        let deadline = Instant::now() + REDIS_START_TIMEOUT;
        loop {
            let last = match client.get_multiplexed_async_connection().await {
                Ok(mut conn) => match redis::cmd("PING").query_async::<String>(&mut conn).await {
                    Ok(_) => return Ok(client),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            let child = self.child.as_mut().expect("not stopped yet");
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!(
                    "redis-server exited with {status} before answering; its log:\n{}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "redis-server did not answer PING within {REDIS_START_TIMEOUT:?} \
                     ({last}); its log:\n{}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM (Redis fsyncs its AOF and exits), a kill if it does not stop in time.
    pub(super) fn stop(mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        let stopped = terminate(child, "redis-server");
        if stopped.is_ok() {
            self.child = None;
        }
        stopped
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port free a moment ago (the OS picks it; the listener is closed again).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// User + system CPU time of a process (all its threads) from /proc/<pid>/stat.
pub(super) fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are space-separated, starting
    // with the third (state): utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// The block device a directory lives on, for its completed flush requests.
#[derive(Debug)]
struct DiskStat {
    /// `/sys/dev/block/<major>:<minor>/stat`, `None` where there is no such device
    /// (tmpfs, overlay, ...).
    path: Option<PathBuf>,
}

impl DiskStat {
    fn of(dir: &Path) -> Self {
        let path = fs::metadata(dir).ok().and_then(|m| {
            let dev = m.dev();
            let path = PathBuf::from(format!(
                "/sys/dev/block/{}:{}/stat",
                libc::major(dev),
                libc::minor(dev)
            ));
            path.exists().then_some(path)
        });
        let disk = Self { path };
        // Kernels before 5.5 have no flush fields: say so once, as "n/a".
        if disk.flushes().is_none() {
            return Self { path: None };
        }
        disk
    }

    /// Flush requests completed, the 16th field (Documentation/block/stat.rst).
    fn flushes(&self) -> Option<u64> {
        let text = fs::read_to_string(self.path.as_ref()?).ok()?;
        text.split_whitespace().nth(15)?.parse().ok()
    }
}

/// fdatasyncs Surety's logs have made: the count of its records-per-fsync histogram.
async fn surety_fsyncs(metrics_url: &str) -> Option<u64> {
    let text = reqwest::get(metrics_url).await.ok()?.text().await.ok()?;
    Some(prometheus_value(&text, "surety_log_records_per_fsync_count").map_or(0, |v| v as u64))
}

/// The value of an unlabelled sample in Prometheus text.
fn prometheus_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        rest.starts_with(' ').then(|| rest.trim().parse().ok())?
    })
}

/// `aof_rewrites` from INFO persistence (Redis 7 counts them; older versions do not).
async fn redis_aof_rewrites(conn: &mut MultiplexedConnection) -> Option<u64> {
    let info: String = redis::cmd("INFO")
        .arg("persistence")
        .query_async(conn)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("aof_rewrites:"))
        .and_then(|v| v.trim().parse().ok())
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Each figure the median of the runs'; a figure missing from any run is missing.
fn median_figures(runs: &[RunFigures]) -> Figures {
    let of = |f: fn(&Figures) -> f64| median(runs.iter().map(|r| f(&r.figures)).collect());
    let of_opt = |f: fn(&Figures) -> Option<f64>| {
        runs.iter()
            .map(|r| f(&r.figures))
            .collect::<Option<Vec<f64>>>()
            .map(median)
    };
    Figures {
        publish_msgs_per_sec: of(|f| f.publish_msgs_per_sec),
        end_to_end_msgs_per_sec: of_opt(|f| f.end_to_end_msgs_per_sec),
        publish_p50_us: of(|f| f.publish_p50_us),
        publish_p99_us: of(|f| f.publish_p99_us),
        end_to_end_p99_us: of_opt(|f| f.end_to_end_p99_us),
        server_cpu_us_per_msg: of_opt(|f| f.server_cpu_us_per_msg),
        fsyncs_per_msg: of_opt(|f| f.fsyncs_per_msg),
        disk_flushes_per_msg: of_opt(|f| f.disk_flushes_per_msg),
    }
}

/// Surety / Redis for each throughput figure and CPU per message; each throughput
/// figure / the raw disk's.
fn ratios(targets: &[TargetResult]) -> Vec<PeerRatio> {
    let of = |kind| {
        &targets
            .iter()
            .find(|t| t.kind == kind)
            .expect("every target measured")
            .median
    };
    let (raw, surety, redis) = (of(Kind::Raw), of(Kind::Surety), of(Kind::Redis));
    let multiple = |what: &str, a: f64, b: f64| PeerRatio {
        what: what.into(),
        value: ratio(a, b),
        shown_as: "multiple",
    };
    let share = |what: String, a: f64| PeerRatio {
        what,
        value: ratio(a, raw.publish_msgs_per_sec),
        shown_as: "share",
    };
    let e2e = |f: &Figures| f.end_to_end_msgs_per_sec.unwrap_or(0.0);
    let mut out = vec![
        multiple(
            "Surety / Redis, publish-confirm msgs/s",
            surety.publish_msgs_per_sec,
            redis.publish_msgs_per_sec,
        ),
        multiple("Surety / Redis, end-to-end msgs/s", e2e(surety), e2e(redis)),
    ];
    if let (Some(s), Some(r)) = (surety.server_cpu_us_per_msg, redis.server_cpu_us_per_msg) {
        out.push(multiple(
            "Surety / Redis, server CPU per message (below 1x: Surety spends less)",
            s,
            r,
        ));
    }
    for (name, f) in [("Surety", surety), ("Redis", redis)] {
        out.push(share(
            format!("{name} publish-confirm msgs/s / raw disk msgs/s"),
            f.publish_msgs_per_sec,
        ));
        out.push(share(
            format!("{name} end-to-end msgs/s / raw disk msgs/s"),
            e2e(f),
        ));
    }
    out
}

fn opt(v: Option<f64>, fmt: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "n/a".into(), fmt)
}

/// Per-message counts: 0.0125, 1.02.
fn fmt_per_msg(v: f64) -> String {
    if v >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn results_table(result: &PeerBenchResult) -> Table {
    let mut t = Table::new(&[
        ("target", Align::Left),
        ("publish-confirm msgs/s", Align::Right),
        ("end-to-end msgs/s", Align::Right),
        ("publish p50", Align::Right),
        ("publish p99", Align::Right),
        ("end-to-end p99", Align::Right),
        ("server CPU/msg", Align::Right),
        ("fsyncs/msg", Align::Right),
        ("disk flushes/msg", Align::Right),
    ]);
    for target in &result.targets {
        let f = &target.median;
        t.row(vec![
            target.name.clone(),
            group_thousands(f.publish_msgs_per_sec),
            opt(f.end_to_end_msgs_per_sec, group_thousands),
            fmt_us(f.publish_p50_us),
            fmt_us(f.publish_p99_us),
            opt(f.end_to_end_p99_us, fmt_us),
            opt(f.server_cpu_us_per_msg, |v| format!("{v:.1} µs")),
            opt(f.fsyncs_per_msg, fmt_per_msg),
            opt(f.disk_flushes_per_msg, fmt_per_msg),
        ]);
    }
    t
}

fn ratios_table(ratios: &[PeerRatio]) -> Table {
    let mut t = Table::new(&[("ratio", Align::Left), ("value", Align::Right)]);
    for r in ratios {
        let value = match r.shown_as {
            "share" => format!("{:.0}%", r.value * 100.0),
            _ => format!("{:.2}x", r.value),
        };
        t.row(vec![r.what.clone(), value]);
    }
    t
}

/// Each run's figures, for judging the spread behind the medians.
fn runs_table(result: &PeerBenchResult) -> Table {
    let mut t = Table::new(&[
        ("target", Align::Left),
        ("run", Align::Right),
        ("publish-confirm msgs/s", Align::Right),
        ("end-to-end msgs/s", Align::Right),
        ("publish p99", Align::Right),
        ("server CPU/msg", Align::Right),
        ("AOF rewrites", Align::Right),
    ]);
    for target in &result.targets {
        for (i, r) in target.runs.iter().enumerate() {
            let f = &r.figures;
            t.row(vec![
                target.kind.label().into(),
                (i + 1).to_string(),
                group_thousands(f.publish_msgs_per_sec),
                opt(f.end_to_end_msgs_per_sec, group_thousands),
                fmt_us(f.publish_p99_us),
                opt(f.server_cpu_us_per_msg, |v| format!("{v:.1} µs")),
                r.aof_rewrites.map_or(String::new(), |n| n.to_string()),
            ]);
        }
    }
    t
}

/// What the columns mean, said once under the table.
const NOTE: &str = "Each figure is the median of the runs'. Publish-confirm msgs/s counts \
publishes confirmed inside the window (raw disk: records made durable); end-to-end msgs/s \
counts consumer handler runs inside the window (each message is acked after its handler). \
Publish latency is per single-message publish until its durable confirm (raw disk: per \
write + fdatasync of 100 records); end-to-end latency is per message, from the start of its \
publish to its handler's run; where end-to-end msgs/s is below publish-confirm msgs/s, the \
consumers fell behind and the backlog (and with it the end-to-end latency) grew through the \
window. Server CPU/msg is the server process's user + system CPU over \
the window per message confirmed (each also delivered and acked); the clients' CPU is not in \
it, though they share the machine's cores. fsyncs/msg: Surety's fdatasyncs over all its logs \
(messages and group journals) from /metrics; Redis reports none (n/a). Disk flushes/msg: \
flush requests the block device completed, from /sys/dev/block, counting every process on \
that device.";

fn header(result: &PeerBenchResult) -> String {
    let s = &result.settings;
    format!(
        "{} producers (own connection each) x {} single-message publishes in flight, {} \
         consumers (prefetch {}) acking every message, {}-byte payloads; {} s per target and \
         run after a {} s warm-up, median of {} runs; data in {} ({}, {}); load average \
         {} before, {} after",
        s.producers,
        s.in_flight_per_producer,
        s.consumers,
        s.prefetch,
        s.payload_bytes,
        fmt_secs(s.seconds),
        fmt_secs(s.warmup_seconds),
        s.runs,
        s.directory,
        result.machine.filesystem,
        result.machine.mount,
        s.load_average_before,
        s.load_average_after,
    )
}

fn text_report(result: &PeerBenchResult) -> String {
    let mut out = format!("surety bench peer: {}\n\n", header(result));
    out.push_str(&results_table(result).to_text());
    out.push('\n');
    out.push_str(NOTE);
    out.push_str("\n\n");
    out.push_str(&ratios_table(&result.ratios).to_text());
    if result.settings.runs > 1 {
        out.push('\n');
        out.push_str(&runs_table(result).to_text());
    }
    out
}

fn markdown_report(result: &PeerBenchResult) -> String {
    let s = &result.settings;
    let mut out = String::from("## surety against a peer: Redis Streams and the raw disk\n\n");
    out.push_str(&result.provenance.to_markdown());
    out.push_str("\nMachine:\n\n");
    out.push_str(&result.machine.to_markdown());
    out.push_str(&format!(
        "\nSettings: {}. All three targets on the same disk, one after the other in each \
         run. Surety: `surety serve` started by the benchmark on 127.0.0.1 with a fresh data \
         directory per run, a topic of the default config (1 partition, durability {}: \
         fdatasync before the confirm); the Rust client (`surety-client`), a `Producer` per \
         connection, `Consumer`s with max_in_flight {}. Redis {}: `{}` started per run, \
         the `redis` crate, XADD of one message per command (the in-flight ones pipelined \
         on the producer's connection), XREADGROUP COUNT {} BLOCK {} per consumer, XACK of \
         the handled entries pipelined with the next read; default AOF rewrite policy. Raw \
         disk: {} records of 1 KiB per `write` + `fdatasync` into preallocated files, as \
         `bench log`'s throughput reference. Clients on a {}-worker tokio runtime in the \
         benchmark process, on the same machine.\n\n",
        header(result),
        s.surety_topic_durability,
        s.prefetch,
        s.redis_version,
        s.redis_command,
        s.prefetch,
        REDIS_BLOCK_MS,
        s.raw_batch_records,
        s.runtime_worker_threads,
    ));
    out.push_str(&results_table(result).to_markdown());
    out.push('\n');
    out.push_str(NOTE);
    out.push_str("\n\nRatios (of the medians):\n\n");
    out.push_str(&ratios_table(&result.ratios).to_markdown());
    if s.runs > 1 {
        out.push_str("\nEach run:\n\n");
        out.push_str(&runs_table(result).to_markdown());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_xreadgroup_reply() {
        use redis::Value::{Array, BulkString, Nil};
        let entry = |id: &str, v: &[u8]| {
            Array(vec![
                BulkString(id.into()),
                Array(vec![BulkString(b"d".to_vec()), BulkString(v.to_vec())]),
            ])
        };
        let reply = Array(vec![Array(vec![
            BulkString(TOPIC.into()),
            Array(vec![entry("1-0", b"a"), entry("1-1", b"bc")]),
        ])]);
        let got = stream_entries(&reply).unwrap();
        assert_eq!(
            got,
            vec![("1-0".to_string(), &b"a"[..]), ("1-1".into(), &b"bc"[..])]
        );
        assert!(stream_entries(&Nil).unwrap().is_empty());
        assert!(stream_entries(&BulkString(b"x".to_vec())).is_err());
    }

    #[test]
    fn reads_prometheus_samples_and_medians() {
        let text = "# TYPE surety_log_records_per_fsync histogram\n\
                    surety_log_records_per_fsync_bucket{le=\"1\"} 3\n\
                    surety_log_records_per_fsync_sum 120\n\
                    surety_log_records_per_fsync_count 7\n";
        assert_eq!(
            prometheus_value(text, "surety_log_records_per_fsync_count"),
            Some(7.0)
        );
        assert_eq!(prometheus_value(text, "surety_log_records_per_fsync"), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn reads_this_process_cpu() {
        assert!(process_cpu(std::process::id()).is_some());
    }
}
