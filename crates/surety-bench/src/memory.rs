//! `surety bench memory`: what the embedded broker holds in memory per unsettled message
//! of a consumer group — leased, waiting for redelivery, and after it is acked — as the
//! growth of this process's resident set over the published-but-never-fetched state.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use serde::Serialize;
use surety_broker::topic::TopicConfigPatch;
use surety_broker::{Broker, BrokerOptions, GroupInfo, PublishMessage, StartAt, limits};

// The crate links the mimalloc library that `mi_collect` is in.
use libmimalloc_sys as _;

use super::report::{MachineInfo, Provenance};
use super::table::{Align, Table};
use super::{BenchDir, OutputArgs, base_dir_display, fmt_secs, group_thousands, parse_positive};

const SECTION: &str = "memory";
const TOPIC: &str = "bench-memory";
const GROUP: &str = "bench-memory";
/// Leases this long outlive the run: nothing expires while it is measured.
const LEASE: Duration = Duration::from_millis(limits::MAX_LEASE_MS);
/// Receipts per ack or nack call.
const SETTLE_BATCH: usize = 1000;

pub(super) const LONG_ABOUT: &str = "\
Measure the memory the embedded broker keeps per unsettled message of a consumer group.

An in-process Broker (default options, on a current-thread tokio runtime) in a fresh
directory gets a topic of 1 partition (default config) and --messages messages of
--payload-bytes each, published in batches of 10,000; the group is created at the oldest
message. That state (published, never fetched) is the baseline. Then, reading this
process's /proc/self/status (VmRSS) after each step:

1. in flight: every message leased to the group (fetches of 1000, 12 h leases, the
   deliveries dropped once their receipts are written to a file, so the benchmark's own
   memory stays out of the figure);
2. waiting: every lease nacked (no delay of its own, so each waits out its jittered
   backoff, about 1 s; empty reason);
3. settled: every message fetched again once due (its second delivery) and acked.

Each row is the resident-set growth over the baseline, divided by --messages: what the
group's state costs per message in that state (the log's records are in the baseline,
receipts live on disk). The settled row should be about 0. The group's counters are
checked after each step (all in flight, all pending, all acked).

Replaces the `bench:memory` section of BENCHMARKS.md.";

pub(super) const AFTER_HELP: &str = "\
Examples:
  cargo build --release -p surety && target/release/surety bench memory
  surety bench memory --messages 100000 --no-write --json | jq '.rows[0].bytes_per_message'";

/// Options of `surety bench memory`.
#[derive(Debug, Args)]
pub struct MemoryArgs {
    /// Directory to benchmark in; a fresh subdirectory is made inside it and removed
    /// afterwards [default: ./surety-bench, created if missing and removed if left empty]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Messages published, then leased, nacked, redelivered and acked
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = parse_positive)]
    messages: usize,

    /// Payload bytes per message (small: the log is in the baseline, not the point)
    #[arg(long, value_name = "BYTES", default_value_t = 16, value_parser = parse_positive)]
    payload_bytes: usize,

    #[command(flatten)]
    out: OutputArgs,
}

/// Everything one run produced; this is also the `--json` output.
#[derive(Debug, Serialize)]
struct MemoryBenchResult {
    #[serde(flatten)]
    provenance: Provenance,
    machine: MachineInfo,
    settings: Settings,
    baseline: Status,
    rows: Vec<Row>,
}

#[derive(Debug, Serialize)]
struct Settings {
    messages: usize,
    payload_bytes: usize,
    partitions: u32,
    lease_ms: u64,
    fetch_max: usize,
    settle_batch: usize,
    directory: String,
}

/// The memory fields of `/proc/self/status`, in bytes.
#[derive(Debug, Clone, Copy, Serialize)]
struct Status {
    vm_rss: u64,
    /// Peak resident set so far.
    vm_hwm: u64,
    /// Anonymous (heap) part of the resident set.
    rss_anon: u64,
}

// Linked by libmimalloc-sys, which declares this one only with a feature that needs
// another crate.
unsafe extern "C" {
    fn mi_collect(force: bool);
}

impl Status {
    /// Reads the resident set once freed memory went back to the system: mimalloc (the
    /// `surety` binary's allocator) keeps freed pages for a while, glibc's malloc at the
    /// top of its heap, and either would count as state that is gone.
    fn read() -> Result<Self> {
        // SAFETY: mi_collect only frees and decommits memory no allocation uses; with
        // another global allocator it finds an empty mimalloc heap.
        unsafe { mi_collect(true) };
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free heap pages.
        unsafe {
            libc::malloc_trim(0);
        }
        let text =
            std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
        let kib = |field: &str| -> Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|k| k * 1024)
                .with_context(|| format!("no {field} in /proc/self/status"))
        };
        Ok(Self {
            vm_rss: kib("VmRSS:")?,
            vm_hwm: kib("VmHWM:")?,
            rss_anon: kib("RssAnon:")?,
        })
    }
}

/// One state of every message.
#[derive(Debug, Serialize)]
struct Row {
    state: String,
    messages: usize,
    status: Status,
    /// VmRSS now minus VmRSS at the baseline.
    rss_growth_bytes: i64,
    bytes_per_message: f64,
    /// How long reaching this state took.
    seconds: f64,
}

impl Row {
    fn new(state: &str, messages: usize, baseline: &Status, started: Instant) -> Result<Self> {
        let status = Status::read()?;
        let growth = status.vm_rss as i64 - baseline.vm_rss as i64;
        Ok(Self {
            state: state.into(),
            messages,
            status,
            rss_growth_bytes: growth,
            bytes_per_message: growth as f64 / messages as f64,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

pub fn run(args: MemoryArgs) -> Result<()> {
    let (workspace, machine) = BenchDir::create_described(args.dir.as_deref())?;
    let provenance = Provenance::current();
    // One thread: the broker's state is built where it is measured, and no other
    // worker's allocator cache holds freed memory.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .context("building the tokio runtime")?;
    let dir = workspace.fresh("memory")?;
    let (baseline, rows) = rt.block_on(measure(&dir, &workspace.fresh("receipts")?, &args))?;
    drop(rt);
    workspace.remove()?;
    let result = MemoryBenchResult {
        provenance,
        machine,
        settings: Settings {
            messages: args.messages,
            payload_bytes: args.payload_bytes,
            partitions: 1,
            lease_ms: limits::MAX_LEASE_MS,
            fetch_max: limits::MAX_FETCH,
            settle_batch: SETTLE_BATCH,
            directory: base_dir_display(args.dir.as_deref()),
        },
        baseline,
        rows,
    };
    args.out
        .emit(SECTION, &result, text_report, markdown_report)
}

async fn measure(dir: &Path, scratch: &Path, args: &MemoryArgs) -> Result<(Status, Vec<Row>)> {
    let n = args.messages;
    let broker = Broker::open(dir, BrokerOptions::default())
        .with_context(|| format!("opening a broker in {}", dir.display()))?;
    broker
        .put_topic(TOPIC, &TopicConfigPatch::default())
        .await
        .context("creating the topic")?;
    let body = super::payload(args.payload_bytes);
    let mut published = 0;
    while published < n {
        let len = (n - published).min(limits::MAX_PUBLISH_BATCH);
        let batch = (0..len)
            .map(|_| PublishMessage {
                payload: body.clone(),
                ..PublishMessage::default()
            })
            .collect();
        broker.publish(TOPIC, batch).await.context("publish")?;
        published += len;
    }
    broker
        .create_group(TOPIC, GROUP, StartAt::Earliest)
        .await
        .context("creating the group")?;
    let baseline = Status::read()?;
    let mut rows = Vec::new();
    let b = &broker;

    let started = Instant::now();
    let leased = scratch.join("leased");
    lease_all(&broker, n, 1, &leased).await?;
    let s = stats(&broker).await?;
    ensure!(s.stats.in_flight == n as u64, "in flight: {:?}", s.stats);
    rows.push(Row::new("in flight (leased)", n, &baseline, started)?);

    let started = Instant::now();
    for_each_batch(&leased, |receipts| async move {
        let answers = b
            .nack_each(TOPIC, GROUP, &receipts, Duration::ZERO, "")
            .await
            .context("nack")?;
        ensure!(
            answers.iter().all(|a| matches!(a, Ok(true))),
            "a nack was refused"
        );
        Ok(())
    })
    .await?;
    let s = stats(&broker).await?;
    ensure!(
        s.stats.pending == n as u64 && s.stats.in_flight == 0,
        "waiting: {:?}",
        s.stats
    );
    rows.push(Row::new(
        "waiting (nacked, backoff)",
        n,
        &baseline,
        started,
    )?);

    let started = Instant::now();
    let redelivered = scratch.join("redelivered");
    lease_all(&broker, n, 2, &redelivered).await?;
    for_each_batch(&redelivered, |receipts| async move {
        let answers = b.ack_each(TOPIC, GROUP, &receipts).await.context("ack")?;
        ensure!(
            answers.iter().all(|a| matches!(a, Ok(true))),
            "an ack was refused"
        );
        Ok(())
    })
    .await?;
    let s = stats(&broker).await?;
    ensure!(
        s.lag == 0 && s.stats.acked == n as u64,
        "settled: {:?}",
        s.stats
    );
    rows.push(Row::new(
        "settled (redelivered, acked)",
        n,
        &baseline,
        started,
    )?);

    broker.close();
    Ok((baseline, rows))
}

async fn stats(broker: &Broker) -> Result<GroupInfo> {
    broker
        .group_info(TOPIC, GROUP)
        .await
        .context("reading the group's counters")
}

/// Fetches until `n` deliveries, each its `delivery`th, are leased (waiting for
/// redeliveries to come due), writing their receipts to `path`, one a line.
async fn lease_all(broker: &Broker, n: usize, delivery: u32, path: &Path) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    let mut leased = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while leased < n {
        let want = (n - leased).min(limits::MAX_FETCH);
        let deliveries = broker
            .fetch(TOPIC, GROUP, want, Duration::ZERO, Some(LEASE))
            .await
            .context("fetch")?;
        if deliveries.is_empty() {
            if Instant::now() > deadline {
                bail!("only {leased} of {n} messages could be leased");
            }
            // Redeliveries wait out their backoff.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        for d in &deliveries {
            ensure!(
                d.delivery_count == delivery,
                "delivery {} of offset {}, expected {delivery}",
                d.delivery_count,
                d.message.offset
            );
            writeln!(out, "{}", d.receipt)?;
        }
        leased += deliveries.len();
    }
    out.flush()?;
    Ok(())
}

/// Runs `f` on the receipts in `path`, [`SETTLE_BATCH`] at a time.
async fn for_each_batch<F, Fut>(path: &Path, f: F) -> Result<()>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut batch = Vec::with_capacity(SETTLE_BATCH);
    for line in BufReader::new(file).lines() {
        batch.push(line?);
        if batch.len() == SETTLE_BATCH {
            f(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        f(batch).await?;
    }
    Ok(())
}

fn mib(b: i64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn results_table(result: &MemoryBenchResult) -> Table {
    let mut t = Table::new(&[
        ("state of every message", Align::Left),
        ("messages", Align::Right),
        ("RSS growth", Align::Right),
        ("bytes/message", Align::Right),
        ("peak RSS", Align::Right),
        ("took", Align::Right),
    ]);
    for r in &result.rows {
        t.row(vec![
            r.state.clone(),
            group_thousands(r.messages as f64),
            mib(r.rss_growth_bytes),
            format!("{:.1}", r.bytes_per_message),
            mib(r.status.vm_hwm as i64),
            format!("{} s", fmt_secs((r.seconds * 10.0).round() / 10.0)),
        ]);
    }
    t
}

fn header(result: &MemoryBenchResult) -> String {
    let s = &result.settings;
    format!(
        "{} messages of {} bytes in a topic of {} partition, one group; leases of {} h, \
         fetches of up to {}, acks and nacks of {} receipts per call; baseline (published, \
         group created, nothing fetched) VmRSS {}",
        group_thousands(s.messages as f64),
        s.payload_bytes,
        s.partitions,
        s.lease_ms / 3_600_000,
        s.fetch_max,
        s.settle_batch,
        mib(result.baseline.vm_rss as i64),
    )
}

const NOTE: &str = "RSS growth: VmRSS of the benchmark process (`/proc/self/status`) after \
the step minus VmRSS at the baseline, each read after `mi_collect(true)` (and glibc's \
`malloc_trim`) so that freed memory the allocator still holds is not counted; bytes/message \
divides it by the number of messages. Peak RSS is VmHWM then. The broker runs in process on one thread; receipts go to a file, \
so only the broker's own state grows.";

fn text_report(result: &MemoryBenchResult) -> String {
    let mut out = format!(
        "surety bench memory: {}, in {} ({}, {})\n\n",
        header(result),
        result.settings.directory,
        result.machine.filesystem,
        result.machine.mount
    );
    out.push_str(&results_table(result).to_text());
    out.push('\n');
    out.push_str(NOTE);
    out.push('\n');
    out
}

fn markdown_report(result: &MemoryBenchResult) -> String {
    let mut out = String::from("## surety-broker: memory per unsettled message\n\n");
    out.push_str(&result.provenance.to_markdown());
    out.push_str("\nMachine:\n\n");
    out.push_str(&result.machine.to_markdown());
    out.push_str(&format!("\nSettings: {}.\n\n", header(result)));
    out.push_str(&results_table(result).to_markdown());
    out.push('\n');
    out.push_str(NOTE);
    out.push('\n');
    out
}
