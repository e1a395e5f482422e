//! `surety bench rabbitmq`: what the Surety layer costs on RabbitMQ. The same workload
//! runs in one session on one broker, first through plain lapin (publisher confirms,
//! persistent messages, one quorum queue, manual acks), then through Surety's `Producer`
//! and `Consumer` over `surety_rabbitmq::RabbitTransport` (a fanout exchange with its
//! history stream and a quorum queue per group: every message is stored twice).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde::Serialize;
use surety_core::Transport;
use surety_rabbitmq::{RabbitOptions, RabbitTransport};

use super::redis_streams::{
    Figures, Load, Shared, Tasks, closed_loop, cost_summary, cost_table, spawn_surety,
    stamped_payload,
};
use super::report::{MachineInfo, Provenance};
use super::table::Table;
use super::{OutputArgs, fmt_secs, parse_positive, parse_seconds};

const PAYLOAD_BYTES: usize = 1024;
const SECTION: &str = "rabbitmq";
const TOPIC: &str = "bench";
const GROUP: &str = "bench";
/// The goal of issue 14: the layer costs at most 20 %.
const THROUGHPUT_TARGET: f64 = 0.80;
const P99_TARGET: f64 = 1.20;

pub(super) const LONG_ABOUT: &str = "\
Measure what the Surety layer costs on RabbitMQ.

Runs against the broker at --url (its management API on port 15672 is needed by the Surety
side). The same closed-loop workload runs twice, for --seconds each after a warm-up: plain
RabbitMQ (lapin: each producer publishes its batch persistent on a confirm channel, then
waits for every confirm; each consumer takes deliveries with a prefetch of 64 from one
quorum queue and acks each), then Surety (surety_core::Producer::publish_batch and
surety_core::Consumer over surety_rabbitmq::RabbitTransport: a fanout exchange, the topic's
history stream and the group's quorum queue). Payloads are 1 KiB and carry their publish
time: the end-to-end latency is from before the publish to the consumer's handler. What it
declares is deleted afterwards.";

pub(super) const AFTER_HELP: &str = "\
Example:
  surety bench rabbitmq --seconds 5

Replaces the bench:rabbitmq section of BENCHMARKS.md unless --no-write.";

#[derive(Debug, Args)]
pub struct RabbitArgs {
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
    /// The broker
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Serialize)]
struct RabbitBenchResult {
    provenance: Provenance,
    machine: MachineInfo,
    broker: String,
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

pub fn run(args: RabbitArgs) -> Result<()> {
    let machine = MachineInfo::collect(std::path::Path::new("."));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(super::runtime_workers())
        .enable_all()
        .build()?;
    let window = Duration::from_secs_f64(args.seconds);
    let load = Load {
        producers: args.producers,
        batch: args.batch,
        consumers: args.consumers,
    };
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let (plain, surety, broker) = rt.block_on(async {
        let conn = Connection::connect(&args.url, ConnectionProperties::default())
            .await
            .with_context(|| format!("connecting to {}", args.url))?;
        let broker = broker_version(&args.url).await;
        eprintln!("plain: {}s after a warm-up", fmt_secs(args.seconds));
        let queue = format!("bench-plain-{run_id}");
        let plain = plain(&conn, &queue, load, window).await;
        let ch = conn.create_channel().await?;
        let _ = ch
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let plain = plain?;

        eprintln!("surety: {}s after a warm-up", fmt_secs(args.seconds));
        let sep = if args.url.contains('?') { '&' } else { '?' };
        let url = format!("{}{sep}prefix=bench{run_id}", args.url);
        let options = RabbitOptions::from_url_query(&url::Url::parse(&url)?)?;
        let rabbit = RabbitTransport::connect(&url, options)
            .await
            .context("connecting surety-rabbitmq")?;
        let t: Arc<dyn Transport> = Arc::new(rabbit.clone());
        t.create_topic(TOPIC, &surety_core::TopicSpec::default())
            .await?;
        // The group exists (and is bound) before the first publish.
        drop(
            t.subscribe(&surety_core::Subscription {
                topic: TOPIC.into(),
                group: GROUP.into(),
                credits: 0,
                lease: None,
            })
            .await?,
        );
        let surety = closed_loop("surety", window, |shared| {
            spawn_surety(&t, TOPIC, GROUP, load, shared)
        })
        .await;
        let _ = rabbit.delete_topic(TOPIC).await;
        anyhow::Ok((plain, surety?, broker))
    })?;
    let throughput_ratio = super::ratio(surety.msgs_per_sec, plain.msgs_per_sec);
    let p99_ratio = super::ratio(surety.p99_us, plain.p99_us);
    let result = RabbitBenchResult {
        provenance: Provenance::current(),
        machine,
        broker,
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

/// `RabbitMQ <version>` from the management API's overview, where it answers.
async fn broker_version(amqp: &str) -> String {
    let Ok(u) = url::Url::parse(amqp) else {
        return "RabbitMQ".to_owned();
    };
    let overview = format!(
        "http://{}:15672/api/overview",
        u.host_str().unwrap_or("127.0.0.1")
    );
    let user = if u.username().is_empty() {
        "guest"
    } else {
        u.username()
    };
    let got = reqwest::Client::new()
        .get(overview)
        .basic_auth(user, Some(u.password().unwrap_or("guest")))
        .send()
        .await;
    match got {
        Ok(r) => r
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| {
                v["rabbitmq_version"]
                    .as_str()
                    .map(|v| format!("RabbitMQ {v}"))
            })
            .unwrap_or_else(|| "RabbitMQ".to_owned()),
        Err(_) => "RabbitMQ".to_owned(),
    }
}

async fn plain(conn: &Connection, queue: &str, load: Load, window: Duration) -> Result<Figures> {
    let ch = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    ch.queue_declare(queue.into(), QueueDeclareOptions::durable(), args)
        .await?;
    let mut channels = Vec::new();
    for _ in 0..load.producers + load.consumers {
        channels.push(conn.create_channel().await?);
    }
    let queue = queue.to_owned();
    closed_loop("plain", window, move |shared| {
        let mut tasks: Tasks = Vec::new();
        for (i, ch) in channels.into_iter().enumerate() {
            let (shared, queue) = (shared.clone(), queue.clone());
            tasks.push(if i < load.producers {
                tokio::spawn(plain_producer(ch, queue, load.batch, shared))
            } else {
                tokio::spawn(plain_consumer(ch, queue, shared))
            });
        }
        (tasks, Vec::new())
    })
    .await
}

async fn plain_producer(
    ch: lapin::Channel,
    queue: String,
    batch: usize,
    shared: Arc<Shared>,
) -> Result<()> {
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    while !shared.stop.load(Ordering::Relaxed) {
        let mut confirms = Vec::with_capacity(batch);
        for _ in 0..batch {
            confirms.push(
                ch.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &stamped_payload(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?,
            );
        }
        for c in confirms {
            anyhow::ensure!(c.await?.is_ack(), "a publish was nacked");
        }
    }
    Ok(())
}

async fn plain_consumer(ch: lapin::Channel, queue: String, shared: Arc<Shared>) -> Result<()> {
    ch.basic_qos(64, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(100), consumer.next()).await
        else {
            continue;
        };
        let d = d?;
        shared.record(&d.data);
        ch.basic_ack(d.delivery_tag, BasicAckOptions::default())
            .await?;
    }
    Ok(())
}

fn table(r: &RabbitBenchResult) -> Table {
    cost_table(&r.plain, &r.surety)
}

fn summary(r: &RabbitBenchResult) -> String {
    cost_summary(
        r.throughput_ratio,
        r.p99_ratio,
        THROUGHPUT_TARGET,
        P99_TARGET,
    )
}

fn settings(r: &RabbitBenchResult) -> String {
    format!(
        "{} (the machine's broker, single node); {} s per target after a {} s warm-up; {} producers \
         publishing {} messages of {} bytes per call, {} consumers in one group, closed loop.",
        r.broker,
        fmt_secs(r.seconds),
        fmt_secs(r.seconds / 5.0),
        r.producers,
        r.batch,
        PAYLOAD_BYTES,
        r.consumers
    )
}

fn text_report(r: &RabbitBenchResult) -> String {
    format!("{}\n{}\n{}\n", settings(r), table(r).to_text(), summary(r))
}

fn markdown_report(r: &RabbitBenchResult) -> String {
    format!(
        "## RabbitMQ: the Surety layer against plain lapin (confirms, quorum queue, manual acks)\n\n{}\n\n{}\n\nSettings: {}\n\n{}\n\n{}\n",
        r.provenance.to_markdown(),
        r.machine.to_markdown(),
        settings(r),
        table(r).to_markdown(),
        summary(r)
    )
}
