//! `surety bench broker`: how much of the log's own append rate survives the embedded
//! broker end to end (publish → fetch → ack, every step durable), measured in one run on
//! the same directory. (What the group state costs per unsettled message: `bench memory`.)

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use surety_broker::topic::TopicConfigPatch;
use surety_broker::{Broker, BrokerOptions, PublishMessage};
use surety_log::LogConfig;
use tokio::runtime::Runtime;

use super::progress::Progress;
use super::report::{MachineInfo, Provenance};
use super::table::{Align, Table};
use super::{
    BenchDir, MEASURING, OutputArgs, Ratio, STOPPING, WARMING, Window, base_dir_display, fmt_secs,
    fmt_us, group_thousands, latency_histogram, measure_log, nanos, parse_positive, parse_seconds,
    payload, ratio, ratios_table, runtime_workers, tick_until,
};

/// The log baseline runs this many concurrent appenders (bench log's throughput row).
const LOG_APPENDERS: usize = 256;
/// Partitions of the benchmark topic.
const PARTITIONS: u32 = 4;
/// Most messages one fetch leases.
const FETCH_MAX: usize = 64;
/// How long one fetch waits for messages.
const FETCH_WAIT: Duration = Duration::from_millis(100);
/// The broker end to end should keep at least this share of the log's append rate.
const THROUGHPUT_TARGET: f64 = 0.50;
const TOPIC: &str = "bench";
const GROUP: &str = "bench";
/// The BENCHMARKS.md section this benchmark owns.
const SECTION: &str = "broker";

pub(super) const LONG_ABOUT: &str = "\
Measure the embedded broker end to end against surety-log's own append rate, on the same
directory, in one run.

First the log alone: LogConfig::default() (fsync durability) appended to by 256 concurrent
tokio tasks in a closed loop, as in `surety bench log`. Then the broker: a topic of 4
partitions (default config: fsync durability), --producers tasks each publishing batches of
--batch messages in a closed loop (publish, await the durable ack, publish again), and
--consumers tasks each looping fetch (up to 64 messages, waiting up to 100 ms) then ack of
every receipt, in group \"bench\". Every publish, lease and ack is durable before it is
answered.

Reports acked messages per second, the publish ack latency (per publish call) and the
end-to-end latency (from the start of the publish to the return of the ack, per message;
the publish instant travels in the payload's first 8 bytes), and the broker's rate as a
share of the log's (target: >= 50%).

Replaces the `bench:broker` section of BENCHMARKS.md. Run it on the disk you care about:
tmpfs (often /tmp) makes fdatasync free.";

pub(super) const AFTER_HELP: &str = "\
Examples:
  cargo run --release -p surety -- bench broker
  surety bench broker --seconds 10 --producers 8 --consumers 2 --dir /mnt/nvme
  surety bench broker --seconds 1 --no-write --json | jq '.broker.msgs_per_sec'";

/// Options of `surety bench broker` (its help text is attached where the subcommand is
/// declared, in `bench/mod.rs`).
#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Directory to benchmark in; a fresh subdirectory is made inside it and removed
    /// afterwards [default: ./surety-bench, created if missing and removed if left empty]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Seconds to measure the log and the broker each (fractions allowed), after a
    /// warm-up of a fifth of that (0.05 s to 1 s)
    #[arg(long, value_name = "N", default_value_t = 3.0, value_parser = parse_seconds)]
    seconds: f64,

    /// Payload bytes per message (at least 8: the publish instant)
    #[arg(long, value_name = "BYTES", default_value_t = 1024, value_parser = parse_positive)]
    record_bytes: usize,

    /// Concurrent producer tasks (16 x 32 messages keeps about as many appends in flight
    /// as the log baseline's 256 appenders)
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = parse_positive)]
    producers: usize,

    /// Concurrent consumer tasks (fetch and ack calls of one group share journal syncs)
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = parse_positive)]
    consumers: usize,

    /// Messages per publish call
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = parse_positive)]
    batch: usize,

    #[command(flatten)]
    out: OutputArgs,
}

/// Everything one run produced; this is also the `--json` output.
#[derive(Debug, Serialize)]
struct BrokerBenchResult {
    #[serde(flatten)]
    provenance: Provenance,
    machine: MachineInfo,
    settings: Settings,
    log: Row,
    broker: Row,
    ratio: Ratio,
}

#[derive(Debug, Serialize)]
struct Settings {
    seconds: f64,
    warmup_seconds: f64,
    record_bytes: usize,
    log_appenders: usize,
    log_durability: String,
    partitions: u32,
    topic_durability: String,
    producers: usize,
    consumers: usize,
    publish_batch: usize,
    fetch_max: usize,
    fetch_wait_ms: u64,
    runtime_worker_threads: usize,
    directory: String,
}

/// One measured configuration.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    /// Appends acknowledged (log) or messages acked by consumers (broker).
    messages: u64,
    seconds: f64,
    msgs_per_sec: f64,
    /// Payload bytes only, in 10^6 bytes per second.
    mb_per_sec: f64,
    /// Per append (log) or per publish call (broker), until its durable ack.
    publish_latency: Latency,
    /// Per message, from the start of its publish to the return of its ack (broker only).
    end_to_end_latency: Option<Latency>,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1_000.0;
        Self {
            p50_us: us(h.value_at_quantile(0.50)),
            p99_us: us(h.value_at_quantile(0.99)),
            max_us: us(h.max()),
        }
    }
}

pub fn run(args: BrokerArgs) -> Result<()> {
    let record_bytes = args.record_bytes.max(8);
    let seconds = Duration::from_secs_f64(args.seconds);
    let window = Window {
        warmup: (seconds / 5).clamp(Duration::from_millis(50), Duration::from_secs(1)),
        seconds,
    };

    let (workspace, machine) = BenchDir::create_described(args.dir.as_deref())?;
    let provenance = Provenance::current();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(runtime_workers())
        .enable_time()
        .build()
        .context("building the tokio runtime")?;
    let log_config = LogConfig::default();
    let mut progress = Progress::new(2, window.warmup + window.seconds);

    let log_name = format!("surety-log: {LOG_APPENDERS} appenders");
    progress.stage(&log_name);
    let dir = workspace.fresh("log")?;
    let m = measure_log(
        &rt,
        &dir,
        LOG_APPENDERS,
        record_bytes,
        &log_config,
        window,
        &progress,
    )?;
    let log = Row::new(
        log_name,
        m.records,
        m.elapsed,
        &m.latency,
        None,
        record_bytes,
    );

    let broker_name = format!(
        "broker: {} producers x {}/publish, {} consumers, {PARTITIONS} partitions",
        args.producers, args.batch, args.consumers
    );
    progress.stage(&broker_name);
    let dir = workspace.fresh("broker")?;
    let b = measure_broker(&rt, &dir, &args, record_bytes, window, &progress)?;
    progress.finish();
    workspace.remove()?;
    let broker = Row::new(
        broker_name,
        b.acked,
        b.elapsed,
        &b.publish,
        Some(&b.end_to_end),
        record_bytes,
    );

    let value = ratio(broker.msgs_per_sec, log.msgs_per_sec);
    let ratio = Ratio {
        what: format!("broker end-to-end msgs/s / surety-log {LOG_APPENDERS}-appender msgs/s"),
        value,
        comparison: "at_least",
        target: THROUGHPUT_TARGET,
        meets_target: value >= THROUGHPUT_TARGET,
    };
    let result = BrokerBenchResult {
        provenance,
        machine,
        settings: Settings {
            seconds: args.seconds,
            warmup_seconds: window.warmup.as_secs_f64(),
            record_bytes,
            log_appenders: LOG_APPENDERS,
            log_durability: format!("{:?}", log_config.durability),
            partitions: PARTITIONS,
            topic_durability: format!("{:?}", surety_broker::TopicConfig::default().durability),
            producers: args.producers,
            consumers: args.consumers,
            publish_batch: args.batch,
            fetch_max: FETCH_MAX,
            fetch_wait_ms: FETCH_WAIT.as_millis() as u64,
            runtime_worker_threads: runtime_workers(),
            directory: base_dir_display(args.dir.as_deref()),
        },
        log,
        broker,
        ratio,
    };

    args.out
        .emit(SECTION, &result, text_report, markdown_report)
}

impl Row {
    fn new(
        name: String,
        messages: u64,
        elapsed: Duration,
        publish: &Histogram<u64>,
        end_to_end: Option<&Histogram<u64>>,
        record_bytes: usize,
    ) -> Self {
        let secs = elapsed.as_secs_f64();
        Self {
            name,
            messages,
            seconds: secs,
            msgs_per_sec: ratio(messages as f64, secs),
            mb_per_sec: ratio((messages * record_bytes as u64) as f64, secs) / 1e6,
            publish_latency: Latency::of(publish),
            end_to_end_latency: end_to_end.map(Latency::of),
        }
    }
}

/// What the broker run counted inside the measurement window.
#[derive(Debug)]
struct BrokerMeasurement {
    acked: u64,
    elapsed: Duration,
    /// Per publish call.
    publish: Histogram<u64>,
    /// Per message.
    end_to_end: Histogram<u64>,
}

/// Shared by the producer and consumer tasks of one run.
struct Shared {
    broker: Broker,
    phase: AtomicU8,
    /// The publish instants in the payloads count from here.
    epoch: Instant,
    acked: AtomicU64,
    publish: Mutex<Histogram<u64>>,
    end_to_end: Mutex<Histogram<u64>>,
}

fn measure_broker(
    rt: &Runtime,
    dir: &Path,
    args: &BrokerArgs,
    record_bytes: usize,
    window: Window,
    progress: &Progress,
) -> Result<BrokerMeasurement> {
    let stage = Instant::now();
    let broker = Broker::open(dir, BrokerOptions::default())
        .with_context(|| format!("opening a broker in {}", dir.display()))?;
    let shared = Arc::new(Shared {
        broker: broker.clone(),
        phase: AtomicU8::new(WARMING),
        epoch: Instant::now(),
        acked: AtomicU64::new(0),
        publish: Mutex::new(latency_histogram()),
        end_to_end: Mutex::new(latency_histogram()),
    });
    let body: Arc<[u8]> = payload(record_bytes).into();
    let elapsed = rt.block_on(async {
        let patch = TopicConfigPatch {
            partitions: Some(PARTITIONS),
            ..TopicConfigPatch::default()
        };
        broker
            .put_topic(TOPIC, &patch)
            .await
            .context("creating the topic")?;
        let producers: Vec<_> = (0..args.producers)
            .map(|_| tokio::spawn(producer(shared.clone(), body.clone(), args.batch)))
            .collect();
        let consumers: Vec<_> = (0..args.consumers)
            .map(|_| tokio::spawn(consumer(shared.clone())))
            .collect();
        tick_until(stage, window.warmup, progress).await;
        let measuring = Instant::now();
        shared.phase.store(MEASURING, Ordering::Release);
        tick_until(stage, window.warmup + window.seconds, progress).await;
        shared.phase.store(STOPPING, Ordering::Release);
        let elapsed = measuring.elapsed();
        for task in producers.into_iter().chain(consumers) {
            task.await.context("benchmark task panicked")??;
        }
        anyhow::Ok(elapsed)
    })?;
    broker.close();
    let shared = Arc::into_inner(shared).expect("all tasks finished");
    drop(shared.broker);
    drop(broker);
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(BrokerMeasurement {
        acked: shared.acked.into_inner(),
        elapsed,
        publish: shared.publish.into_inner().unwrap(),
        end_to_end: shared.end_to_end.into_inner().unwrap(),
    })
}

/// Publishes batches in a closed loop, each message stamped with the publish instant.
async fn producer(shared: Arc<Shared>, body: Arc<[u8]>, batch: usize) -> Result<()> {
    while shared.phase.load(Ordering::Acquire) != STOPPING {
        let started = Instant::now();
        let stamp = nanos(started - shared.epoch).to_le_bytes();
        let messages = (0..batch)
            .map(|_| {
                let mut payload = body.to_vec();
                payload[..8].copy_from_slice(&stamp);
                PublishMessage {
                    payload,
                    ..PublishMessage::default()
                }
            })
            .collect();
        shared
            .broker
            .publish(TOPIC, messages)
            .await
            .context("publish")?;
        let took = started.elapsed();
        if shared.phase.load(Ordering::Acquire) == MEASURING {
            shared
                .publish
                .lock()
                .unwrap()
                .saturating_record(nanos(took));
        }
    }
    Ok(())
}

/// Fetches and acks everything it got, in a closed loop; counts the messages whose ack
/// returned inside the measurement window.
async fn consumer(shared: Arc<Shared>) -> Result<()> {
    while shared.phase.load(Ordering::Acquire) != STOPPING {
        let deliveries = shared
            .broker
            .fetch(TOPIC, GROUP, FETCH_MAX, FETCH_WAIT, None)
            .await
            .context("fetch")?;
        if deliveries.is_empty() {
            continue;
        }
        let receipts: Vec<String> = deliveries.iter().map(|d| d.receipt.clone()).collect();
        shared
            .broker
            .ack(TOPIC, GROUP, &receipts)
            .await
            .context("ack")?;
        let now = nanos(shared.epoch.elapsed());
        if shared.phase.load(Ordering::Acquire) == MEASURING {
            shared
                .acked
                .fetch_add(deliveries.len() as u64, Ordering::Relaxed);
            let mut h = shared.end_to_end.lock().unwrap();
            for d in &deliveries {
                let stamp = d.message.payload.get(..8).and_then(|b| b.try_into().ok());
                if let Some(stamp) = stamp {
                    h.saturating_record(now.saturating_sub(u64::from_le_bytes(stamp)));
                }
            }
        }
    }
    Ok(())
}

fn results_table(result: &BrokerBenchResult) -> Table {
    let mut t = Table::new(&[
        ("configuration", Align::Left),
        ("msgs/s", Align::Right),
        ("MB/s", Align::Right),
        ("publish p50", Align::Right),
        ("publish p99", Align::Right),
        ("end-to-end p50", Align::Right),
        ("end-to-end p99", Align::Right),
    ]);
    for r in [&result.log, &result.broker] {
        let e2e = |f: fn(&Latency) -> f64| {
            r.end_to_end_latency
                .as_ref()
                .map_or(String::new(), |l| fmt_us(f(l)))
        };
        t.row(vec![
            r.name.clone(),
            group_thousands(r.msgs_per_sec),
            format!("{:.1}", r.mb_per_sec),
            fmt_us(r.publish_latency.p50_us),
            fmt_us(r.publish_latency.p99_us),
            e2e(|l| l.p50_us),
            e2e(|l| l.p99_us),
        ]);
    }
    t
}

/// What the columns mean, said once under the tables.
const LATENCY_NOTE: &str = "msgs/s counts appends acknowledged (log) or messages acked by a \
consumer (broker) inside the window. Publish latency is per append (log) or per publish call \
of a whole batch (broker), until its durable ack; end-to-end latency is per message, from the \
start of its publish to the return of the consumer's ack. MB/s counts payload bytes \
(10^6 bytes/s).";

fn header(s: &Settings) -> String {
    format!(
        "{} s per configuration after a {} s warm-up; {}-byte payloads; {} producers \
         publishing {} messages per call, {} consumers fetching up to {} (waiting up to \
         {} ms) and acking every receipt",
        fmt_secs(s.seconds),
        fmt_secs(s.warmup_seconds),
        s.record_bytes,
        s.producers,
        s.publish_batch,
        s.consumers,
        s.fetch_max,
        s.fetch_wait_ms
    )
}

fn text_report(result: &BrokerBenchResult) -> String {
    let s = &result.settings;
    let mut out = format!(
        "surety bench broker: {}, in {} ({}, {})\n\n",
        header(s),
        s.directory,
        result.machine.filesystem,
        result.machine.mount
    );
    out.push_str(&results_table(result).to_text());
    out.push('\n');
    out.push_str(LATENCY_NOTE);
    out.push_str("\n\n");
    out.push_str(&ratios_table(std::slice::from_ref(&result.ratio)).to_text());
    out
}

fn markdown_report(result: &BrokerBenchResult) -> String {
    let s = &result.settings;
    let mut out = String::from("## surety-broker: end to end against the log\n\n");
    out.push_str(&result.provenance.to_markdown());
    out.push_str("\nMachine:\n\n");
    out.push_str(&result.machine.to_markdown());
    out.push_str(&format!(
        "\nSettings: {}. The log row is `LogConfig::default()` (durability `{}`) appended \
         to by {} tokio tasks in a closed loop, as in `bench log`. The broker row is the \
         embedded `Broker` with a topic of {} partitions (default config, durability `{}`), \
         one consumer group; every publish, lease and ack is durable before it is \
         answered. All tasks run on a {}-worker tokio runtime, in the same directory.\n\n",
        header(s),
        s.log_durability,
        s.log_appenders,
        s.partitions,
        s.topic_durability,
        s.runtime_worker_threads,
    ));
    out.push_str(&results_table(result).to_markdown());
    out.push('\n');
    out.push_str(LATENCY_NOTE);
    out.push_str("\n\nRatio against the target:\n\n");
    out.push_str(&ratios_table(std::slice::from_ref(&result.ratio)).to_markdown());
    out
}
