//! `surety bench server`: the whole server over gRPC with the Rust client, next to the
//! log's own append rate measured in the same run: closed-loop throughput end to end
//! (publish → deliver → handler → ack), and publish-ack latency at a fixed offered rate.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use surety_client::{Client, Consumer, Delivery, Message, Producer, StopHandle};
use surety_log::LogConfig;
use tokio::task::JoinSet;

use super::progress::Progress;
use super::report::{MachineInfo, Provenance};
use super::table::{Align, Table};
use super::{
    BenchDir, MEASURING, OutputArgs, STOPPING, WARMING, Window, base_dir_display, fmt_secs, fmt_us,
    group_thousands, latency_histogram, measure_log, nanos, parse_positive, parse_seconds, payload,
    ratio, runtime_workers, tick_until,
};

/// Payload bytes per message; the first 8 carry the publish instant.
const PAYLOAD_BYTES: usize = 1024;
/// The log baseline runs this many concurrent appenders (bench log's throughput row).
const LOG_APPENDERS: usize = 256;
/// Open loop: publish calls in flight at most, over all producers; a send due beyond
/// this is skipped (and the run counts as not kept up) rather than queued without end.
const OPEN_MAX_IN_FLIGHT: usize = 10_000;
/// Open loop: how often the producers look at their schedule (tokio's timer resolution).
const OPEN_TICK: Duration = Duration::from_millis(1);
/// Open loop: the server kept up when at least this share of the offered rate was acked.
const KEPT_UP_SHARE: f64 = 0.95;
/// Targets (printed, not asserted).
const THROUGHPUT_TARGET: f64 = 100_000.0;
const LATENCY_TARGET_US: f64 = 2_000.0;
const LATENCY_TARGET_RATE: f64 = 10_000.0;
const GROUP: &str = "bench";
/// How long a spawned server may take to print its ready line, and to stop.
const SERVE_TIMEOUT: Duration = Duration::from_secs(30);
/// The BENCHMARKS.md section this benchmark owns.
const SECTION: &str = "server";

pub(super) const LONG_ABOUT: &str = "\
Measure a Surety server over gRPC with the Rust client, next to surety-log's own append
rate measured in the same run.

Unless --server is given, starts `surety serve` (this binary) on 127.0.0.1 with a fresh data
directory inside --dir, and stops it with SIGTERM at the end. Every topic is created with
--partitions partitions and the default config (fsync durability: a publish is acked once
on disk); payloads are 1 KiB.

1. The log alone: LogConfig::default() appended to by 256 tokio tasks in a closed loop, as
   in `surety bench log` (always in-process, on --dir).
2. Closed loop: --producers producers (each with its own connection) publishing batches of
   --batch messages (publish, await the durable ack, publish again), and --consumers
   client Consumers (each running up to --window handlers) whose handler records the
   end-to-end latency (the publish instant travels in the payload's first 8 bytes) and
   returns Ok, after which the client acks. At most --backlog messages are published and
   not yet handled: producers wait for room, so publishing runs at the pace consumers
   sustain and the end-to-end latency is that of a steady pipeline. Reports messages
   handled per second, the publish-ack latency per publish call and the end-to-end latency
   per message (publish start to handler run).
3. Open loop: the producers publish single messages on a 1 ms timer at --rate messages per
   second in total, without waiting for acks; reports the publish-ack latency per message
   (p50, p99, p999), how late sends left against their schedule, and whether the server
   kept up (at least 95% of the offered rate acked, no send skipped for more than 10,000
   in flight).

Targets, printed as columns and not asserted: >= 100,000 msgs/s end to end with fsync
before ack; p99 publish ack <= 2 ms at 10,000 msgs/s offered.

Replaces the `bench:server` section of BENCHMARKS.md. Run it on the disk you care about:
tmpfs (often /tmp) makes fdatasync free.";

pub(super) const AFTER_HELP: &str = "\
Examples:
  cargo run --release -p surety -- bench server
  surety bench server --seconds 10 --producers 16 --batch 32 --rate 20000
  surety bench server --server http://10.0.0.5:7333 --token \"$TOKEN\" --no-write
  surety bench server --seconds 1 --no-write --json | jq '.closed_loop.msgs_per_sec'";

/// Options of `surety bench server` (its help text is attached where the subcommand is
/// declared, in `bench/mod.rs`).
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Measure this running server instead of starting one; it keeps the benchmark's
    /// topics (named bench-server-*), as topics cannot be deleted
    #[arg(long, value_name = "URL")]
    server: Option<String>,

    /// Bearer token for --server
    #[arg(
        long,
        env = "SURETY_TOKEN",
        hide_env_values = true,
        requires = "server"
    )]
    token: Option<String>,

    /// Directory for the started server's data and the log baseline; a fresh
    /// subdirectory is made inside it and removed afterwards [default: ./surety-bench,
    /// created if missing and removed if left empty]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Seconds to measure each stage (fractions allowed), after a warm-up of a fifth of
    /// that (0.05 s to 1 s)
    #[arg(long, value_name = "N", default_value_t = 3.0, value_parser = parse_seconds)]
    seconds: f64,

    /// Producers, each with its own connection
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = parse_positive)]
    producers: usize,

    /// Consumers (client `Consumer`s, one connection each) in the closed loop
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = parse_positive)]
    consumers: usize,

    /// Partitions of the benchmark topics [default: 1, a topic's default]. On a small
    /// machine more partitions mean more log writer threads and fsyncs sharing its cores
    /// and disk
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_positive, hide_default_value = true)]
    partitions: usize,

    /// Handlers each consumer runs at once (its credit window on the server)
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = parse_positive)]
    window: usize,

    /// Closed loop: messages published and not yet handled, at most. Producers wait for
    /// room, so the loop measures the rate the whole pipeline sustains; without a bound,
    /// producers outrun consumers and the queue (and end-to-end latency) grows all run
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = parse_positive)]
    backlog: usize,

    /// Messages per publish call in the closed loop
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = parse_positive)]
    batch: usize,

    /// Offered messages per second in the open loop, over all producers
    #[arg(long, value_name = "MSGS", default_value_t = 10_000, value_parser = parse_positive)]
    rate: usize,

    #[command(flatten)]
    out: OutputArgs,
}

impl ServerArgs {
    /// The backlog bound in force: at least one batch, or no producer could ever publish.
    fn effective_backlog(&self) -> usize {
        self.backlog.max(self.batch)
    }
}

/// Everything one run produced; this is also the `--json` output.
#[derive(Debug, Serialize)]
struct ServerBenchResult {
    #[serde(flatten)]
    provenance: Provenance,
    machine: MachineInfo,
    settings: Settings,
    log: Row,
    closed_loop: Row,
    open_loop: OpenRow,
    targets: Vec<Target>,
}

#[derive(Debug, Serialize)]
struct Settings {
    seconds: f64,
    warmup_seconds: f64,
    payload_bytes: usize,
    /// `spawned` (this binary's `surety serve`) or the --server URL.
    server: String,
    log_appenders: usize,
    log_durability: String,
    partitions: u32,
    topic_durability: String,
    producers: usize,
    consumers: usize,
    consumer_window: u32,
    backlog: usize,
    publish_batch: usize,
    offered_rate: usize,
    runtime_worker_threads: usize,
    directory: String,
}

/// One closed-loop configuration.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    /// Appends acknowledged (log) or messages whose handler ran (server).
    messages: u64,
    seconds: f64,
    msgs_per_sec: f64,
    /// Payload bytes only, in 10^6 bytes per second.
    mb_per_sec: f64,
    /// Per append (log) or per publish call (server), until its durable ack.
    publish_latency: Latency,
    /// Per message, from the start of its publish to its handler's run (server only).
    end_to_end_latency: Option<Latency>,
    /// This row's msgs/s divided by the log baseline's.
    vs_log: f64,
}

/// The fixed-rate run.
#[derive(Debug, Serialize)]
struct OpenRow {
    name: String,
    offered_per_sec: f64,
    /// Publish calls started inside the window (one message each).
    sent: u64,
    /// Publish acks that arrived inside the window.
    acked: u64,
    seconds: f64,
    acked_per_sec: f64,
    /// Sends due while OPEN_MAX_IN_FLIGHT calls were unanswered, not made.
    skipped: u64,
    /// Per message (one per publish call), from the call to its durable ack.
    publish_latency: Latency,
    /// From a message's scheduled instant to the start of its publish call.
    send_lag: Latency,
    kept_up: bool,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1_000.0;
        Self {
            p50_us: us(h.value_at_quantile(0.50)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// A target in absolute terms (msgs/s or µs), unlike bench's relative `Ratio`.
#[derive(Debug, Serialize)]
struct Target {
    what: String,
    measured: f64,
    /// `at_least` or `at_most`.
    comparison: &'static str,
    goal: f64,
    /// `msgs_per_sec` or `us`.
    unit: &'static str,
    meets_target: bool,
}

pub fn run(args: ServerArgs) -> Result<()> {
    let seconds = Duration::from_secs_f64(args.seconds);
    let window = Window {
        warmup: (seconds / 5).clamp(Duration::from_millis(50), Duration::from_secs(1)),
        seconds,
    };
    let (workspace, machine) = BenchDir::create_described(args.dir.as_deref())?;
    let provenance = Provenance::current();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(runtime_workers())
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let log_config = LogConfig::default();
    let mut progress = Progress::new(3, window.warmup + window.seconds);

    let log_name = format!("surety-log: {LOG_APPENDERS} appenders (in-process)");
    progress.stage(&log_name);
    let dir = workspace.fresh("log")?;
    let m = measure_log(
        &rt,
        &dir,
        LOG_APPENDERS,
        PAYLOAD_BYTES,
        &log_config,
        window,
        &progress,
    )?;
    let log = Row::new(log_name, m.records, m.elapsed, &m.latency, None, 0.0);

    let mut spawned = None;
    let url = match &args.server {
        Some(url) => url.clone(),
        None => {
            let data = workspace.fresh("server")?;
            let serve = Serve::start(&data, &workspace.path().join("serve.stderr"))?;
            let url = serve.url.clone();
            spawned = Some(serve);
            url
        }
    };
    let measured = rt.block_on(measure_server(
        &url,
        args.token.as_deref(),
        &args,
        window,
        &mut progress,
    ));
    progress.finish();
    // Stop the server before reporting a measurement failure, and before removing its data.
    if let Some(serve) = spawned {
        serve.stop()?;
    }
    let (closed, open) = measured?;
    drop(rt);
    workspace.remove()?;

    let closed_loop = Row::new(
        format!(
            "server: {} producers x {}/publish, {} consumers",
            args.producers, args.batch, args.consumers
        ),
        closed.handled,
        closed.elapsed,
        &closed.publish,
        Some(&closed.end_to_end),
        log.msgs_per_sec,
    );
    let log = Row { vs_log: 1.0, ..log };
    let open_loop = OpenRow::new(&args, &open);
    let targets = targets(&closed_loop, &open_loop);
    let result = ServerBenchResult {
        provenance,
        machine,
        settings: Settings {
            seconds: args.seconds,
            warmup_seconds: window.warmup.as_secs_f64(),
            payload_bytes: PAYLOAD_BYTES,
            server: args.server.clone().unwrap_or_else(|| "spawned".into()),
            log_appenders: LOG_APPENDERS,
            log_durability: format!("{:?}", log_config.durability),
            partitions: args.partitions as u32,
            topic_durability: format!("{:?}", surety_broker::TopicConfig::default().durability),
            producers: args.producers,
            consumers: args.consumers,
            consumer_window: args.window as u32,
            backlog: args.effective_backlog(),
            publish_batch: args.batch,
            offered_rate: args.rate,
            runtime_worker_threads: runtime_workers(),
            directory: base_dir_display(args.dir.as_deref()),
        },
        log,
        closed_loop,
        open_loop,
        targets,
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
        log_msgs_per_sec: f64,
    ) -> Self {
        let secs = elapsed.as_secs_f64();
        let msgs_per_sec = ratio(messages as f64, secs);
        Self {
            name,
            messages,
            seconds: secs,
            msgs_per_sec,
            mb_per_sec: msgs_per_sec * PAYLOAD_BYTES as f64 / 1e6,
            publish_latency: Latency::of(publish),
            end_to_end_latency: end_to_end.map(Latency::of),
            vs_log: ratio(msgs_per_sec, log_msgs_per_sec),
        }
    }
}

impl OpenRow {
    fn new(args: &ServerArgs, m: &OpenMeasurement) -> Self {
        let secs = m.elapsed.as_secs_f64();
        let offered = args.rate as f64;
        let acked_per_sec = ratio(m.acked as f64, secs);
        Self {
            name: format!(
                "server: {} msgs/s offered by {} producers, 1/publish",
                group_thousands(offered),
                args.producers
            ),
            offered_per_sec: offered,
            sent: m.sent,
            acked: m.acked,
            seconds: secs,
            acked_per_sec,
            skipped: m.skipped,
            publish_latency: Latency::of(&m.publish),
            send_lag: Latency::of(&m.lag),
            kept_up: m.skipped == 0 && acked_per_sec >= KEPT_UP_SHARE * offered,
        }
    }
}

fn targets(closed: &Row, open: &OpenRow) -> Vec<Target> {
    let p99 = open.publish_latency.p99_us;
    let at_rate = if open.offered_per_sec == LATENCY_TARGET_RATE {
        String::new()
    } else {
        format!(
            " (target set at {}; measured at {})",
            group_thousands(LATENCY_TARGET_RATE),
            group_thousands(open.offered_per_sec)
        )
    };
    vec![
        Target {
            what: "end-to-end msgs/s, fsync before ack".into(),
            measured: closed.msgs_per_sec,
            comparison: "at_least",
            goal: THROUGHPUT_TARGET,
            unit: "msgs_per_sec",
            meets_target: closed.msgs_per_sec >= THROUGHPUT_TARGET,
        },
        Target {
            what: format!(
                "p99 publish ack at {} msgs/s offered{at_rate}",
                group_thousands(LATENCY_TARGET_RATE)
            ),
            measured: p99,
            comparison: "at_most",
            goal: LATENCY_TARGET_US,
            unit: "us",
            // The target speaks of a server that keeps up with the offered rate.
            meets_target: open.kept_up && p99 <= LATENCY_TARGET_US,
        },
    ]
}

/// A `surety serve` child process: this very binary, on a free loopback port.
#[derive(Debug)]
pub(super) struct Serve {
    /// `None` once stopped.
    child: Option<Child>,
    pub(super) url: String,
}

impl Serve {
    /// Starts the server and waits for its ready line; its stderr goes to `stderr_path`.
    pub(super) fn start(data: &Path, stderr_path: &Path) -> Result<Self> {
        let exe = std::env::current_exe().context("finding the surety binary")?;
        let stderr = File::create(stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            // The server's own defaults, whatever this shell sets.
            .env("RUST_LOG", "info");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SURETY_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} serve", exe.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut serve = Serve {
            child: Some(child),
            url: String::new(),
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining, so that the server never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = rx.recv_timeout(SERVE_TIMEOUT).unwrap_or_default();
        let addr = line
            .trim_end()
            .strip_prefix("surety listening on http://")
            .and_then(|rest| rest.split(' ').next());
        match addr {
            Some(addr) => {
                serve.url = format!("http://{addr}");
                Ok(serve)
            }
            None => {
                serve.kill();
                let mut err = String::new();
                let _ = File::open(stderr_path).and_then(|mut f| f.read_to_string(&mut err));
                bail!(
                    "surety serve printed no ready line within {SERVE_TIMEOUT:?} \
                     (got {line:?}); its stderr:\n{err}"
                )
            }
        }
    }

    /// SIGTERM, then waits for a clean exit (a kill after SERVE_TIMEOUT). On an early
    /// error return the child stays in `self`, so that drop kills and reaps it.
    pub(super) fn stop(mut self) -> Result<()> {
        let child = self.child.as_mut().expect("not stopped yet");
        let stopped = terminate(child, "surety serve");
        if stopped.is_ok() {
            self.child = None;
        }
        stopped
    }

    /// The server's process id, for its CPU time in /proc.
    pub(super) fn pid(&self) -> u32 {
        self.child.as_ref().expect("not stopped yet").id()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SIGTERM to a child benchmark server, then waits up to SERVE_TIMEOUT for it to exit
/// successfully; kills and reaps it if it does not. `what` names it in errors.
pub(super) fn terminate(child: &mut Child, what: &str) -> Result<()> {
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    // SAFETY: kill(2) on our own, not yet reaped child has no memory preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + SERVE_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("{what} exited with {status}");
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not stop within {SERVE_TIMEOUT:?} of SIGTERM; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the closed loop counted inside the window.
#[derive(Debug)]
struct ClosedMeasurement {
    handled: u64,
    elapsed: Duration,
    /// Per publish call.
    publish: Histogram<u64>,
    /// Per message, publish start to handler run.
    end_to_end: Histogram<u64>,
}

#[derive(Debug)]
struct OpenMeasurement {
    sent: u64,
    acked: u64,
    skipped: u64,
    elapsed: Duration,
    publish: Histogram<u64>,
    lag: Histogram<u64>,
}

/// The closed loop, then the open loop, each on a topic of its own.
async fn measure_server(
    url: &str,
    token: Option<&str>,
    args: &ServerArgs,
    window: Window,
    progress: &mut Progress,
) -> Result<(ClosedMeasurement, OpenMeasurement)> {
    let admin = Client::connect(url, token).await?;
    // Unique, so that a --server run never meets an earlier run's messages.
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let topic = format!("bench-server-{stamp}-{}", std::process::id());
    let config = format!("{{\"partitions\":{}}}", args.partitions);
    admin.create_topic(&topic, &config).await?;
    let open_topic = format!("{topic}-open");
    admin.create_topic(&open_topic, &config).await?;

    progress.stage(&format!(
        "closed loop: {} producers x {}/publish, {} consumers",
        args.producers, args.batch, args.consumers
    ));
    let closed = closed_loop(url, token, &topic, args, window, progress).await?;
    progress.stage(&format!(
        "open loop: {} msgs/s offered",
        group_thousands(args.rate as f64)
    ));
    let open = open_loop(url, token, &open_topic, args, window, progress).await?;
    Ok((closed, open))
}

/// Shared by the closed loop's producer and consumer tasks.
#[derive(Debug)]
struct Closed {
    phase: AtomicU8,
    /// The publish instants in the payloads count from here.
    epoch: Instant,
    handled: AtomicU64,
    /// Room in the backlog: taken by a publish, given back by each handler run.
    backlog: tokio::sync::Semaphore,
    publish: Mutex<Histogram<u64>>,
    end_to_end: Mutex<Histogram<u64>>,
}

async fn closed_loop(
    url: &str,
    token: Option<&str>,
    topic: &str,
    args: &ServerArgs,
    window: Window,
    progress: &Progress,
) -> Result<ClosedMeasurement> {
    let stage = Instant::now();
    let shared = Arc::new(Closed {
        phase: AtomicU8::new(WARMING),
        epoch: Instant::now(),
        handled: AtomicU64::new(0),
        backlog: tokio::sync::Semaphore::new(args.effective_backlog()),
        publish: Mutex::new(latency_histogram()),
        end_to_end: Mutex::new(latency_histogram()),
    });
    let stop = StopHandle::new();
    let delivered = shared.clone();
    let on_delivery = move |payload: &[u8]| delivered.delivered(payload);
    let mut consumers = spawn_consumers(
        (url, token, topic),
        args.consumers,
        args.window as u32,
        &stop,
        on_delivery,
    )
    .await?;
    let body: Arc<[u8]> = payload(PAYLOAD_BYTES).into();
    let mut producers = JoinSet::new();
    for _ in 0..args.producers {
        let producer = Producer::new(Client::connect(url, token).await?);
        producers.spawn(closed_producer(
            producer,
            topic.to_owned(),
            shared.clone(),
            body.clone(),
            args.batch,
        ));
    }

    tick_until(stage, window.warmup, progress).await;
    let measuring = Instant::now();
    shared.phase.store(MEASURING, Ordering::Release);
    tick_until(stage, window.warmup + window.seconds, progress).await;
    shared.phase.store(STOPPING, Ordering::Release);
    let elapsed = measuring.elapsed();
    while let Some(done) = producers.join_next().await {
        done.context("producer task panicked")??;
    }
    stop.stop();
    while let Some(done) = consumers.join_next().await {
        done.context("consumer task panicked")?
            .context("consumer")?;
    }
    let shared = Arc::into_inner(shared).expect("all tasks finished");
    Ok(ClosedMeasurement {
        handled: shared.handled.into_inner(),
        elapsed,
        publish: shared.publish.into_inner().unwrap(),
        end_to_end: shared.end_to_end.into_inner().unwrap(),
    })
}

impl Closed {
    /// A handler ran: count it and its end-to-end latency, inside the window.
    fn delivered(&self, payload: &[u8]) {
        self.backlog.add_permits(1);
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

/// Publishes batches in a closed loop, each message stamped with the publish instant.
async fn closed_producer(
    producer: Producer,
    topic: String,
    shared: Arc<Closed>,
    body: Arc<[u8]>,
    batch: usize,
) -> Result<()> {
    while shared.phase.load(Ordering::Acquire) != STOPPING {
        shared
            .backlog
            .acquire_many(batch as u32)
            .await
            .context("backlog closed")?
            .forget();
        let started = Instant::now();
        let stamp = nanos(started - shared.epoch).to_le_bytes();
        let messages = (0..batch)
            .map(|_| {
                let mut payload = body.to_vec();
                payload[..8].copy_from_slice(&stamp);
                Message::new(payload)
            })
            .collect();
        producer
            .publish_batch(&topic, messages)
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

/// Shared by the open loop's producer tasks and their publish calls.
#[derive(Debug)]
struct Open {
    phase: AtomicU8,
    in_flight: AtomicUsize,
    sent: AtomicU64,
    acked: AtomicU64,
    skipped: AtomicU64,
    publish: Mutex<Histogram<u64>>,
    lag: Mutex<Histogram<u64>>,
}

async fn open_loop(
    url: &str,
    token: Option<&str>,
    topic: &str,
    args: &ServerArgs,
    window: Window,
    progress: &Progress,
) -> Result<OpenMeasurement> {
    let stage = Instant::now();
    let shared = Arc::new(Open {
        phase: AtomicU8::new(WARMING),
        in_flight: AtomicUsize::new(0),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
        publish: Mutex::new(latency_histogram()),
        lag: Mutex::new(latency_histogram()),
    });
    let body: Arc<[u8]> = payload(PAYLOAD_BYTES).into();
    let per_producer = args.rate as f64 / args.producers as f64;
    let mut producers = JoinSet::new();
    for _ in 0..args.producers {
        let producer = Arc::new(Producer::new(Client::connect(url, token).await?));
        producers.spawn(open_producer(
            producer,
            topic.to_owned(),
            shared.clone(),
            body.clone(),
            per_producer,
        ));
    }
    tick_until(stage, window.warmup, progress).await;
    let measuring = Instant::now();
    shared.phase.store(MEASURING, Ordering::Release);
    tick_until(stage, window.warmup + window.seconds, progress).await;
    shared.phase.store(STOPPING, Ordering::Release);
    let elapsed = measuring.elapsed();
    while let Some(done) = producers.join_next().await {
        done.context("producer task panicked")??;
    }
    let shared = Arc::into_inner(shared).expect("all tasks finished");
    Ok(OpenMeasurement {
        sent: shared.sent.into_inner(),
        acked: shared.acked.into_inner(),
        skipped: shared.skipped.into_inner(),
        elapsed,
        publish: shared.publish.into_inner().unwrap(),
        lag: shared.lag.into_inner().unwrap(),
    })
}

/// Publishes single messages at `rate` per second on a timer, never waiting for acks;
/// then waits for its calls still in flight.
async fn open_producer(
    producer: Arc<Producer>,
    topic: String,
    shared: Arc<Open>,
    body: Arc<[u8]>,
    rate: f64,
) -> Result<()> {
    let start = Instant::now();
    let mut tick = tokio::time::interval(OPEN_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut calls = JoinSet::new();
    let mut issued = 0u64;
    while shared.phase.load(Ordering::Acquire) != STOPPING {
        tick.tick().await;
        let measuring = shared.phase.load(Ordering::Acquire) == MEASURING;
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        for n in issued..due {
            let scheduled = start + Duration::from_secs_f64(n as f64 / rate);
            if shared.in_flight.fetch_add(1, Ordering::AcqRel) >= OPEN_MAX_IN_FLIGHT {
                shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                if measuring {
                    shared.skipped.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            calls.spawn(open_publish(
                producer.clone(),
                topic.clone(),
                shared.clone(),
                body.clone(),
                scheduled,
                measuring,
            ));
        }
        issued = issued.max(due);
        // Settle finished calls as we go, so the set stays small.
        while let Some(done) = calls.try_join_next() {
            done.context("publish task panicked")??;
        }
    }
    while let Some(done) = calls.join_next().await {
        done.context("publish task panicked")??;
    }
    Ok(())
}

async fn open_publish(
    producer: Arc<Producer>,
    topic: String,
    shared: Arc<Open>,
    body: Arc<[u8]>,
    scheduled: Instant,
    measuring: bool,
) -> Result<()> {
    let started = Instant::now();
    let result = producer.publish(&topic, Message::new(body.to_vec())).await;
    let took = started.elapsed();
    shared.in_flight.fetch_sub(1, Ordering::AcqRel);
    result.map_err(|e| anyhow!(e).context("publish"))?;
    if shared.phase.load(Ordering::Acquire) == MEASURING {
        shared.acked.fetch_add(1, Ordering::Relaxed);
    }
    if measuring {
        shared.sent.fetch_add(1, Ordering::Relaxed);
        shared
            .publish
            .lock()
            .unwrap()
            .saturating_record(nanos(took));
        shared
            .lag
            .lock()
            .unwrap()
            .saturating_record(nanos(started.saturating_duration_since(scheduled)));
    }
    Ok(())
}

fn results_table(result: &ServerBenchResult) -> Table {
    let mut t = Table::new(&[
        ("configuration", Align::Left),
        ("msgs/s", Align::Right),
        ("MB/s", Align::Right),
        ("publish p50", Align::Right),
        ("publish p99", Align::Right),
        ("end-to-end p50", Align::Right),
        ("end-to-end p99", Align::Right),
        ("vs log", Align::Right),
    ]);
    for r in [&result.log, &result.closed_loop] {
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
            format!("{:.0}%", r.vs_log * 100.0),
        ]);
    }
    t
}

fn open_table(o: &OpenRow) -> Table {
    let mut t = Table::new(&[
        ("open loop", Align::Left),
        ("offered/s", Align::Right),
        ("acked/s", Align::Right),
        ("publish p50", Align::Right),
        ("publish p99", Align::Right),
        ("publish p999", Align::Right),
        ("publish max", Align::Right),
        ("send lag p99", Align::Right),
        ("skipped", Align::Right),
        ("kept up", Align::Left),
    ]);
    t.row(vec![
        o.name.clone(),
        group_thousands(o.offered_per_sec),
        group_thousands(o.acked_per_sec),
        fmt_us(o.publish_latency.p50_us),
        fmt_us(o.publish_latency.p99_us),
        fmt_us(o.publish_latency.p999_us),
        fmt_us(o.publish_latency.max_us),
        fmt_us(o.send_lag.p99_us),
        group_thousands(o.skipped as f64),
        if o.kept_up { "yes" } else { "no" }.into(),
    ]);
    t
}

fn targets_table(targets: &[Target]) -> Table {
    let mut t = Table::new(&[
        ("target", Align::Left),
        ("measured", Align::Right),
        ("goal", Align::Right),
        ("meets target", Align::Left),
    ]);
    for g in targets {
        let fmt = |v: f64| match g.unit {
            "us" => fmt_us(v),
            _ => format!("{} msgs/s", group_thousands(v)),
        };
        let op = if g.comparison == "at_least" {
            ">="
        } else {
            "<="
        };
        t.row(vec![
            g.what.clone(),
            fmt(g.measured),
            format!("{op} {}", fmt(g.goal)),
            if g.meets_target { "yes" } else { "no" }.into(),
        ]);
    }
    t
}

/// What the columns mean, said once under the tables.
const NOTE: &str = "Closed loop: msgs/s counts appends acknowledged (log) or messages whose \
consumer handler ran (server; the client acks right after) inside the window. Publish latency \
is per append (log) or per publish call of a whole batch (server), until its durable ack; \
end-to-end latency is per message, from the start of its publish to its handler's run. \
vs log is msgs/s over the log baseline's. Open loop: one message per publish call, sent on \
schedule without waiting for earlier acks; publish latency from the call to its durable ack, \
send lag from the message's scheduled instant to its call; kept up = at least 95% of the \
offered rate acked and nothing skipped. MB/s counts payload bytes (10^6 bytes/s).";

fn header(s: &Settings) -> String {
    format!(
        "{} s per stage after a {} s warm-up; {}-byte payloads; topics of {} partitions \
         (durability {}); closed loop: {} producers publishing {} messages per call, {} \
         consumers with a window of {}, at most {} messages published and not yet handled; \
         open loop: {} msgs/s offered by {} producers",
        fmt_secs(s.seconds),
        fmt_secs(s.warmup_seconds),
        s.payload_bytes,
        s.partitions,
        s.topic_durability,
        s.producers,
        s.publish_batch,
        s.consumers,
        s.consumer_window,
        group_thousands(s.backlog as f64),
        group_thousands(s.offered_rate as f64),
        s.producers,
    )
}

fn server_description(s: &Settings) -> String {
    if s.server == "spawned" {
        format!(
            "`surety serve` started by the benchmark on 127.0.0.1 with its data in {} (same \
             machine and disk as the client and the log baseline)",
            s.directory
        )
    } else {
        format!(
            "the running server at {} (the log baseline ran on this machine, in {})",
            s.server, s.directory
        )
    }
}

fn text_report(result: &ServerBenchResult) -> String {
    let s = &result.settings;
    let mut out = format!(
        "surety bench server: {}; server: {}\n\n",
        header(s),
        server_description(s)
    );
    out.push_str(&results_table(result).to_text());
    out.push('\n');
    out.push_str(&open_table(&result.open_loop).to_text());
    out.push('\n');
    out.push_str(NOTE);
    out.push_str("\n\n");
    out.push_str(&targets_table(&result.targets).to_text());
    out
}

fn markdown_report(result: &ServerBenchResult) -> String {
    let s = &result.settings;
    let mut out = String::from("## surety server: over gRPC against the log\n\n");
    out.push_str(&result.provenance.to_markdown());
    out.push_str("\nMachine:\n\n");
    out.push_str(&result.machine.to_markdown());
    out.push_str(&format!(
        "\nSettings: {}. Server: {}. Clients: the Rust gRPC client (`surety-client`) on a \
         {}-worker tokio runtime, one connection per producer and consumer; consumers are \
         `Consumer`s whose handler records the latency and returns `Ok`. The log row is \
         `LogConfig::default()` (durability `{}`) appended to in-process by {} tokio tasks \
         in a closed loop, as in `bench log`.\n\n",
        header(s),
        server_description(s),
        s.runtime_worker_threads,
        s.log_durability,
        s.log_appenders,
    ));
    out.push_str(&results_table(result).to_markdown());
    out.push('\n');
    out.push_str(&open_table(&result.open_loop).to_markdown());
    out.push('\n');
    out.push_str(NOTE);
    out.push_str(&format!(
        "\n\nServer end to end reaches {:.0}% of the log baseline's msgs/s.\n\n\
         Targets (not asserted):\n\n",
        result.closed_loop.vs_log * 100.0
    ));
    out.push_str(&targets_table(&result.targets).to_markdown());
    out
}

/// Consumers whose handler calls `on_delivery` with the payload and returns `Ok` (the
/// client then acks), each on its own connection holding up to `window` messages; they
/// end when `stop` is stopped.
pub(super) async fn spawn_consumers(
    (url, token, topic): (&str, Option<&str>, &str),
    consumers: usize,
    window: u32,
    stop: &StopHandle,
    on_delivery: impl Fn(&[u8]) + Clone + Send + Sync + 'static,
) -> Result<JoinSet<Result<surety_client::ConsumerStats, surety_client::ConsumeError>>> {
    let mut set = JoinSet::new();
    for _ in 0..consumers {
        let client = Client::connect(url, token).await?;
        let on_delivery = on_delivery.clone();
        let handler = move |d: Delivery| {
            let on_delivery = on_delivery.clone();
            async move {
                on_delivery(&d.payload);
                Ok::<(), std::convert::Infallible>(())
            }
        };
        let consumer = Consumer::builder(client, topic, GROUP)
            .max_in_flight(window)
            .stop_with(stop.clone());
        set.spawn(consumer.run(handler));
    }
    Ok(set)
}
