//! `surety-bench`: measurements of Surety's parts on this machine (`surety bench log|
//! broker|server|outbox|peer|restart|nats`), each against a baseline measured in the same run, printed
//! and recorded in its own section of BENCHMARKS.md. The `surety` binary runs them; `bench
//! server` and `bench peer` start that same binary (`surety serve`) as their server.

mod broker;
mod kafka;
mod log;
mod memory;
mod nats;
mod outbox;
mod peer;
mod progress;
mod rabbitmq;
mod redis_streams;
mod report;
mod restart;
mod server;
/// Plain-text tables, also the `surety` CLI's human output.
pub mod table;

use std::fs::{self, File};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use surety_log::{Log, LogConfig, LogStats, NewRecord};
use tokio::runtime::Runtime;

use serde::Serialize;

use progress::Progress;
use table::{Align, Table};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(Debug, Subcommand)]
enum Which {
    /// Append throughput and ack latency of surety-log, next to the raw disk's
    /// write + fdatasync figures
    #[command(long_about = log::LONG_ABOUT, after_help = log::AFTER_HELP)]
    Log(log::LogArgs),
    /// End-to-end throughput and latency of the embedded broker (publish, fetch, ack)
    /// next to the log's own append rate
    #[command(long_about = broker::LONG_ABOUT, after_help = broker::AFTER_HELP)]
    Broker(broker::BrokerArgs),
    /// Memory the embedded broker keeps per unsettled message of a group: leased,
    /// waiting for redelivery, and after the ack
    #[command(long_about = memory::LONG_ABOUT, after_help = memory::AFTER_HELP)]
    Memory(memory::MemoryArgs),
    /// A Surety server over gRPC with the Rust client: closed-loop throughput end to end
    /// and publish-ack latency at a fixed rate, next to the log's own append rate
    #[command(long_about = server::LONG_ABOUT, after_help = server::AFTER_HELP)]
    Server(server::ServerArgs),
    /// The transactional outbox relay on Postgres: rows/s and latency from commit to
    /// broker ack
    #[command(long_about = outbox::LONG_ABOUT, after_help = outbox::AFTER_HELP)]
    Outbox(outbox::OutboxArgs),
    /// Surety next to Redis Streams (appendfsync always) and the raw disk, on one
    /// workload and disk: msgs/s, latency, server CPU and fsyncs per message, and ratios
    #[command(long_about = peer::LONG_ABOUT, after_help = peer::AFTER_HELP)]
    Peer(peer::PeerArgs),
    /// What the Surety layer costs on Redis Streams (appendfsync always): plain
    /// XADD/XREADGROUP/XACK and Surety over it, throughput and p99 ratios
    #[command(long_about = redis_streams::LONG_ABOUT, after_help = redis_streams::AFTER_HELP)]
    Redis(redis_streams::RedisArgs),
    /// Restart of `surety serve` over a large retained log: seconds to a healthy
    /// /healthz and memory after open, clean, after kill -9 and without a dedupe snapshot
    #[command(long_about = restart::LONG_ABOUT, after_help = restart::AFTER_HELP)]
    Restart(restart::RestartArgs),
    /// What the Surety layer costs on NATS JetStream: plain async-nats and Surety over
    /// it, the same workload on a nats-server with sync_interval always, and the ratios
    #[command(long_about = nats::LONG_ABOUT, after_help = nats::AFTER_HELP)]
    Nats(nats::NatsArgs),
    /// What the Surety layer costs on RabbitMQ: plain lapin (confirms, quorum queue,
    /// manual acks) and Surety over it, throughput and p99 ratios
    #[command(long_about = rabbitmq::LONG_ABOUT, after_help = rabbitmq::AFTER_HELP)]
    Rabbitmq(rabbitmq::RabbitArgs),
    /// What the Surety layer costs on Kafka: plain rdkafka (acks=all, idempotent, manual
    /// commits) and Surety over it, on librdkafka's MockCluster or --url, and the ratios
    #[command(long_about = kafka::LONG_ABOUT, after_help = kafka::AFTER_HELP)]
    Kafka(kafka::KafkaArgs),
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.which {
        Which::Log(args) => log::run(args),
        Which::Broker(args) => broker::run(args),
        Which::Memory(args) => memory::run(args),
        Which::Server(args) => server::run(args),
        Which::Outbox(args) => outbox::run(args),
        Which::Peer(args) => peer::run(args),
        Which::Redis(args) => redis_streams::run(args),
        Which::Restart(args) => restart::run(args),
        Which::Nats(args) => nats::run(args),
        Which::Rabbitmq(args) => rabbitmq::run(args),
        Which::Kafka(args) => kafka::run(args),
    }
}

// What more than one benchmark uses: option parsers, the benchmark directory,
// measurement windows, the surety-log closed-loop appenders, and number formatting.

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        Ok(_) => Err("must be more than 0 and at most 86400".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(e) => Err(e.to_string()),
    }
}

/// Raw counts of one measurement window.
#[derive(Debug)]
struct Measurement {
    records: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    /// Records the syncs in the window covered (the writer's count, not the acks').
    synced_records: u64,
    syncs: u64,
    sync_time: Duration,
}

impl Measurement {
    /// Adds another window of the same configuration.
    fn merge(&mut self, other: Measurement) {
        self.records += other.records;
        self.elapsed += other.elapsed;
        // Both histograms have the same bounds and saturate, so adding cannot fail.
        self.latency
            .add(&other.latency)
            .expect("histograms with equal bounds");
        self.synced_records += other.synced_records;
        self.syncs += other.syncs;
        self.sync_time += other.sync_time;
    }
}

/// `a / b`, or 0 when nothing was measured (a window too short to hold one sync).
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// One tokio worker per core, as a broker would run.
fn runtime_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Where the runs happen: a fresh temporary directory inside the base directory, one
/// subdirectory per measurement.
#[derive(Debug)]
struct BenchDir {
    base: PathBuf,
    /// We made the base, so we remove it again if it ends up empty.
    created_base: bool,
    run: Option<tempfile::TempDir>,
}

/// Next to where the user runs the benchmark, not /tmp, which is often tmpfs.
const DEFAULT_BASE: &str = "surety-bench";

/// The benchmark directory as the report names it.
fn base_dir_display(dir: Option<&Path>) -> String {
    dir.unwrap_or(Path::new(DEFAULT_BASE)).display().to_string()
}

/// Where a benchmark's figures go: stdout as text or JSON, and its own section of
/// BENCHMARKS.md unless `--no-write`. Shared by every `surety bench` command.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Markdown file whose section for this benchmark is replaced (created if missing)
    #[arg(long, value_name = "PATH", default_value = "BENCHMARKS.md")]
    output: PathBuf,

    /// Do not write the Markdown file
    #[arg(long)]
    no_write: bool,

    /// Print the results as JSON on stdout instead of the tables
    #[arg(long)]
    json: bool,
}

impl OutputArgs {
    fn emit<T: Serialize>(
        &self,
        section: &str,
        result: &T,
        text: impl FnOnce(&T) -> String,
        markdown: impl FnOnce(&T) -> String,
    ) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(result)?);
        } else {
            print!("{}", text(result));
        }
        if !self.no_write {
            report::write_section(&self.output, section, &markdown(result))
                .with_context(|| format!("writing {}", self.output.display()))?;
            eprintln!(
                "Updated the bench:{section} section of {}",
                self.output.display()
            );
        }
        Ok(())
    }
}

impl BenchDir {
    /// Creates the benchmark directory and describes the machine it is on, warning when
    /// it is on a memory file system (where fdatasync does not reach a disk).
    fn create_described(base: Option<&Path>) -> Result<(Self, report::MachineInfo)> {
        let dir = Self::create(base)?;
        let machine = report::MachineInfo::collect(dir.path());
        if machine.is_memory_fs() {
            eprintln!(
                "warning: {} is on {}, where fdatasync does not reach a disk; pass --dir on a real disk",
                dir.base.display(),
                machine.filesystem
            );
        }
        Ok((dir, machine))
    }

    fn create(base: Option<&Path>) -> Result<Self> {
        let base = base.unwrap_or(Path::new(DEFAULT_BASE)).to_path_buf();
        let created_base = !base.exists();
        fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        let run = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(&base)
            .with_context(|| format!("creating a directory in {}", base.display()))?;
        Ok(Self {
            base,
            created_base,
            run: Some(run),
        })
    }

    fn path(&self) -> &Path {
        self.run.as_ref().expect("not yet removed").path()
    }

    /// A new, empty directory for one measurement. Flushes the file system first, so
    /// that the write-back and deletes of the previous measurement are not billed to
    /// this one.
    fn fresh(&self, name: &str) -> Result<PathBuf> {
        let base = File::open(self.path())?;
        // SAFETY: a plain syscall on a descriptor `base` owns.
        if unsafe { libc::syncfs(base.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error()).context("syncfs");
        }
        let dir = self.path().join(name);
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Removes every benchmark file, reporting failure (dropping only tries).
    fn remove(mut self) -> Result<()> {
        if let Some(run) = self.run.take() {
            let path = run.path().to_path_buf();
            run.close()
                .with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(())
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        // The run directory must go first, or the base is not empty yet.
        drop(self.run.take());
        if self.created_base {
            let _ = fs::remove_dir(&self.base);
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    warmup: Duration,
    seconds: Duration,
}

/// Latencies in nanoseconds, 1 ns to 60 s, three significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Not all zeroes, in case a layer below ever compresses or dedups.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

const WARMING: u8 = 0;
const MEASURING: u8 = 1;
const STOPPING: u8 = 2;

/// Measures surety-log with `appenders` tasks, each appending in a closed loop.
fn measure_log(
    rt: &Runtime,
    dir: &Path,
    appenders: usize,
    record_bytes: usize,
    config: &LogConfig,
    window: Window,
    progress: &Progress,
) -> Result<Measurement> {
    let stage = Instant::now();
    let log = Arc::new(
        Log::open_dir(dir, config.clone())
            .with_context(|| format!("opening a log in {}", dir.display()))?,
    );
    let phase = Arc::new(AtomicU8::new(WARMING));
    // One histogram behind a lock: at most one worker thread per core contends, for
    // nanoseconds, against an fdatasync of a millisecond or so.
    let latency = Arc::new(Mutex::new(latency_histogram()));
    let payload: Arc<[u8]> = payload(record_bytes).into();

    let (before, after, elapsed) = rt.block_on(async {
        let tasks: Vec<_> = (0..appenders)
            .map(|_| {
                tokio::spawn(appender(
                    log.clone(),
                    payload.clone(),
                    phase.clone(),
                    latency.clone(),
                ))
            })
            .collect();
        tick_until(stage, window.warmup, progress).await;
        let before = log.stats();
        let measuring = Instant::now();
        phase.store(MEASURING, Ordering::Release);
        tick_until(stage, window.warmup + window.seconds, progress).await;
        phase.store(STOPPING, Ordering::Release);
        let after = log.stats();
        let elapsed = measuring.elapsed();
        for task in tasks {
            task.await.context("appender task panicked")??;
        }
        anyhow::Ok((before, after, elapsed))
    })?;
    log.close();
    drop(log);
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;

    let latency = Arc::try_unwrap(latency)
        .expect("all appenders finished")
        .into_inner()
        .unwrap();
    let delta = |f: fn(&LogStats) -> u64| f(&after) - f(&before);
    Ok(Measurement {
        // Acks seen by the appenders inside the window: what a producer would observe.
        records: latency.len(),
        elapsed,
        latency,
        synced_records: delta(|s| s.records_appended),
        syncs: delta(|s| s.syncs),
        sync_time: after.sync_time - before.sync_time,
    })
}

/// Appends, waits for the ack, repeats, until told to stop; records the latency of each
/// ack that arrives inside the measurement window.
async fn appender(
    log: Arc<Log>,
    payload: Arc<[u8]>,
    phase: Arc<AtomicU8>,
    latency: Arc<Mutex<Histogram<u64>>>,
) -> Result<()> {
    while phase.load(Ordering::Acquire) != STOPPING {
        let sent = Instant::now();
        log.append_async(NewRecord::new(payload.to_vec())).await?;
        let took = sent.elapsed();
        if phase.load(Ordering::Acquire) == MEASURING {
            latency.lock().unwrap().saturating_record(nanos(took));
        }
    }
    Ok(())
}

/// Sleeps until `until` after `stage` began, moving the progress bar meanwhile.
async fn tick_until(stage: Instant, until: Duration, progress: &Progress) {
    loop {
        let elapsed = stage.elapsed();
        progress.at(elapsed);
        if elapsed >= until {
            return;
        }
        tokio::time::sleep((until - elapsed).min(Duration::from_millis(100))).await;
    }
}

fn group_thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1_000.0)
    }
}

/// Seconds without float noise: `0.2`, `3`, `0.067`.
fn fmt_secs(s: f64) -> String {
    let text = format!("{s:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[derive(Debug, Serialize)]
struct Ratio {
    what: String,
    value: f64,
    /// `at_least` or `at_most`.
    comparison: &'static str,
    target: f64,
    meets_target: bool,
}

fn fmt_ratio(r: &Ratio) -> (String, String) {
    // A throughput share reads best as a percentage, a latency multiple as "x".
    match r.comparison {
        "at_least" => (
            format!("{:.0}%", r.value * 100.0),
            format!(">= {:.0}%", r.target * 100.0),
        ),
        _ => (format!("{:.2}x", r.value), format!("<= {:.1}x", r.target)),
    }
}

fn ratios_table(ratios: &[Ratio]) -> Table {
    let mut t = Table::new(&[
        ("ratio", Align::Left),
        ("value", Align::Right),
        ("target", Align::Right),
        ("meets target", Align::Left),
    ]);
    for r in ratios {
        let (value, target) = fmt_ratio(r);
        let meets = if r.meets_target { "yes" } else { "no" };
        t.row(vec![r.what.clone(), value, target, meets.into()]);
    }
    t
}
