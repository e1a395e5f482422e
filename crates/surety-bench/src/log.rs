//! `surety bench log`: how close surety-log's group commit comes to what the disk itself
//! can do with write + fdatasync, measured in one run on the same directory.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use surety_log::LogConfig;

use super::progress::Progress;
use super::report::{MachineInfo, Provenance};
use super::table::{Align, Table};
use super::{
    BenchDir, Measurement, OutputArgs, Ratio, Window, base_dir_display, fmt_secs, fmt_us,
    group_thousands, latency_histogram, measure_log, nanos, parse_positive, parse_seconds, payload,
    ratio, runtime_workers,
};

/// Records per write in the batched raw baseline (also `bench peer`'s raw-disk row).
pub(super) const RAW_BATCH_RECORDS: usize = 100;
/// surety-log with this many appenders should reach this share of the raw batched rate.
const THROUGHPUT_TARGET_APPENDERS: usize = 256;
const THROUGHPUT_TARGET: f64 = 0.70;
/// One appender's p50 ack should cost at most this many per-message fdatasyncs.
const LATENCY_TARGET: f64 = 1.5;
/// The BENCHMARKS.md section this benchmark owns.
const SECTION: &str = "log";

pub(super) const LONG_ABOUT: &str = "\
Measure surety-log appends against the raw disk, on the same directory, in one run.

First the disk alone, in preallocated files like surety-log's segments: batches of 100
records per write + fdatasync (the throughput reference), then one record per write +
fdatasync (the latency floor). Then surety-log with its default configuration (fsync
durability, 64 MiB segments whose preallocation grows with the data), appended to by 1,
16 and 256 concurrent tokio tasks, each in a closed loop: append, wait for the ack,
append again.

The configurations take turns in --rounds rounds (default 3), so that a disk whose speed
drifts during the run (a shared or cloud volume, other I/O on the machine) weighs on all
of them alike; --rounds 1 measures each in one piece.

Prints a table and the ratios against the targets (256 appenders at >= 70% of the raw
batched rate; one appender's p50 ack within 1.5x of one fdatasync), and replaces the
`bench:log` section of BENCHMARKS.md. Every configuration gets a fresh directory and a
short warm-up; all benchmark files are removed at the end.

Run it on the disk you care about: tmpfs (often /tmp) makes fdatasync free.";

pub(super) const AFTER_HELP: &str = "\
Examples:
  cargo run --release -p surety -- bench log
  surety bench log --seconds 10 --appenders 1,4,64,256 --dir /mnt/nvme
  surety bench log --seconds 1 --no-write --json | jq '.log[].msgs_per_sec'";

/// Options of `surety bench log` (its help text is attached where the subcommand is
/// declared, in `bench/mod.rs`).
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Directory to benchmark in; a fresh subdirectory is made inside it and removed
    /// afterwards [default: ./surety-bench, created if missing and removed if left empty]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Seconds to measure each configuration (fractions allowed), in total over all
    /// rounds
    #[arg(long, value_name = "N", default_value_t = 3.0, value_parser = parse_seconds)]
    seconds: f64,

    /// Interleave the configurations in this many rounds, each measuring every
    /// configuration for seconds/rounds after a warm-up of a fifth of that (0.05 s to 1 s),
    /// so that a disk whose speed drifts during the run weighs on all of them alike
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: u32,

    /// Payload bytes per record
    #[arg(long, value_name = "BYTES", default_value_t = 1024, value_parser = parse_positive)]
    record_bytes: usize,

    /// Numbers of concurrent appenders to measure surety-log with, comma-separated
    #[arg(
        long,
        value_name = "N,N,...",
        value_delimiter = ',',
        default_value = "1,16,256",
        value_parser = parse_positive
    )]
    appenders: Vec<usize>,

    #[command(flatten)]
    out: OutputArgs,
}

/// Everything one run produced; this is also the `--json` output.
#[derive(Debug, Serialize)]
struct LogBenchResult {
    #[serde(flatten)]
    provenance: Provenance,
    machine: MachineInfo,
    settings: Settings,
    raw_batched: Row,
    raw_per_message: Row,
    log: Vec<Row>,
    ratios: Vec<Ratio>,
}

#[derive(Debug, Serialize)]
struct Settings {
    /// Measured time per configuration, over all rounds.
    seconds: f64,
    rounds: u32,
    /// Before each round's slice of each configuration.
    warmup_seconds: f64,
    record_bytes: usize,
    raw_batch_records: usize,
    segment_bytes: u64,
    durability: String,
    preallocate: bool,
    appenders: Vec<usize>,
    runtime_worker_threads: usize,
    directory: String,
}

/// One measured configuration.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    /// Concurrent appenders (surety-log rows only).
    appenders: Option<usize>,
    records: u64,
    seconds: f64,
    msgs_per_sec: f64,
    /// Payload bytes only, in 10^6 bytes per second.
    mb_per_sec: f64,
    /// Per write + fdatasync for raw rows, per acknowledged append for surety-log rows.
    latency: Latency,
    fsyncs_per_sec: f64,
    records_per_fsync: f64,
    /// Mean time inside fdatasync alone.
    mean_fsync_us: f64,
    /// This row's msgs/s divided by the raw batched baseline's (surety-log rows only).
    vs_raw_batched: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Latency {
    mean_us: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

impl Row {
    fn new(name: String, appenders: Option<usize>, m: &Measurement, record_bytes: usize) -> Self {
        let secs = m.elapsed.as_secs_f64();
        let us = |ns: f64| ns / 1_000.0;
        Self {
            name,
            appenders,
            records: m.records,
            seconds: secs,
            msgs_per_sec: m.records as f64 / secs,
            mb_per_sec: (m.records * record_bytes as u64) as f64 / secs / 1e6,
            latency: Latency {
                mean_us: us(m.latency.mean()),
                p50_us: us(m.latency.value_at_quantile(0.50) as f64),
                p99_us: us(m.latency.value_at_quantile(0.99) as f64),
                max_us: us(m.latency.max() as f64),
            },
            fsyncs_per_sec: m.syncs as f64 / secs,
            records_per_fsync: ratio(m.synced_records as f64, m.syncs as f64),
            mean_fsync_us: ratio(m.sync_time.as_secs_f64() * 1e6, m.syncs as f64),
            vs_raw_batched: None,
        }
    }
}

/// One configuration to measure.
#[derive(Debug, Clone, Copy)]
enum Subject {
    /// Raw write + fdatasync of this many records at a time.
    Raw(usize),
    /// surety-log with this many concurrent appenders.
    Log(usize),
}

impl Subject {
    fn name(self) -> String {
        match self {
            Subject::Raw(1) => "raw: 1 record/write + fdatasync".into(),
            Subject::Raw(n) => format!("raw: {n} records/write + fdatasync"),
            Subject::Log(1) => "surety-log: 1 appender".into(),
            Subject::Log(n) => format!("surety-log: {n} appenders"),
        }
    }

    /// A name fit for a directory.
    fn slug(self) -> String {
        match self {
            Subject::Raw(n) => format!("raw-{n}"),
            Subject::Log(n) => format!("log-{n}"),
        }
    }
}

pub fn run(args: LogArgs) -> Result<()> {
    let config = LogConfig::default();
    let slice = Duration::from_secs_f64(args.seconds) / args.rounds;
    // Long enough to get past file creation and first-touch effects, short next to the
    // measurement.
    let warmup = (slice / 5).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let window = Window {
        warmup,
        seconds: slice,
    };

    let (workspace, machine) = BenchDir::create_described(args.dir.as_deref())?;
    let provenance = Provenance::current();
    let subjects: Vec<Subject> = [Subject::Raw(RAW_BATCH_RECORDS), Subject::Raw(1)]
        .into_iter()
        .chain(args.appenders.iter().map(|&n| Subject::Log(n)))
        .collect();
    let measured = measure_interleaved(
        &subjects,
        args.rounds as usize,
        window,
        args.record_bytes,
        &config,
        &workspace,
    )?;
    workspace.remove()?;

    let mut rows = subjects.iter().zip(&measured).map(|(subject, m)| {
        let appenders = match subject {
            Subject::Log(n) => Some(*n),
            Subject::Raw(_) => None,
        };
        Row::new(subject.name(), appenders, m, args.record_bytes)
    });
    let raw_batched = rows.next().expect("raw batched row");
    let raw_per_message = rows.next().expect("raw per-message row");
    let log_rows: Vec<Row> = rows
        .map(|mut row| {
            row.vs_raw_batched = Some(ratio(row.msgs_per_sec, raw_batched.msgs_per_sec));
            row
        })
        .collect();

    let ratios = targets(&raw_batched, &raw_per_message, &log_rows);
    let result = LogBenchResult {
        provenance,
        settings: Settings {
            seconds: args.seconds,
            rounds: args.rounds,
            warmup_seconds: warmup.as_secs_f64(),
            record_bytes: args.record_bytes,
            raw_batch_records: RAW_BATCH_RECORDS,
            segment_bytes: config.segment_bytes,
            durability: format!("{:?}", config.durability),
            preallocate: config.preallocate,
            appenders: args.appenders.clone(),
            runtime_worker_threads: runtime_workers(),
            directory: base_dir_display(args.dir.as_deref()),
        },
        machine,
        raw_batched,
        raw_per_message,
        log: log_rows,
        ratios,
    };

    args.out
        .emit(SECTION, &result, text_report, markdown_report)
}

/// Measures every subject for `rounds` slices of `window`, taking turns: a disk whose
/// speed drifts during the run (shared or cloud volumes, other I/O on the machine) then
/// weighs on every configuration alike. Returns one merged measurement per subject.
fn measure_interleaved(
    subjects: &[Subject],
    rounds: usize,
    window: Window,
    record_bytes: usize,
    config: &LogConfig,
    workspace: &BenchDir,
) -> Result<Vec<Measurement>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(runtime_workers())
        .enable_time()
        .build()
        .context("building the tokio runtime")?;
    let mut progress = Progress::new(rounds * subjects.len(), window.warmup + window.seconds);
    let mut measured: Vec<Option<Measurement>> = subjects.iter().map(|_| None).collect();
    for round in 1..=rounds {
        for (subject, total) in subjects.iter().zip(&mut measured) {
            progress.stage(&if rounds > 1 {
                format!("{} (round {round}/{rounds})", subject.name())
            } else {
                subject.name()
            });
            let dir = workspace.fresh(&format!("{}-round-{round}", subject.slug()))?;
            let m = match *subject {
                Subject::Raw(batch) => measure_raw(
                    &dir,
                    batch,
                    record_bytes,
                    config.segment_bytes,
                    window,
                    &progress,
                )?,
                Subject::Log(n) => {
                    measure_log(&rt, &dir, n, record_bytes, config, window, &progress)?
                }
            };
            match total {
                Some(total) => total.merge(m),
                None => *total = Some(m),
            }
        }
    }
    progress.finish();
    Ok(measured.into_iter().map(|m| m.expect("measured")).collect())
}

/// The two targets, where the run included the configurations they speak about.
fn targets(batched: &Row, per_message: &Row, log_rows: &[Row]) -> Vec<Ratio> {
    let mut out = Vec::new();
    if let Some(row) = log_rows
        .iter()
        .find(|r| r.appenders == Some(THROUGHPUT_TARGET_APPENDERS))
    {
        let value = ratio(row.msgs_per_sec, batched.msgs_per_sec);
        out.push(Ratio {
            what: format!(
                "surety-log {THROUGHPUT_TARGET_APPENDERS} appenders msgs/s / raw batched msgs/s"
            ),
            value,
            comparison: "at_least",
            target: THROUGHPUT_TARGET,
            meets_target: value >= THROUGHPUT_TARGET,
        });
    }
    if let Some(row) = log_rows.iter().find(|r| r.appenders == Some(1)) {
        let value = ratio(row.latency.p50_us, per_message.latency.p50_us);
        out.push(Ratio {
            what: "surety-log 1 appender p50 ack / raw p50 write + fdatasync".into(),
            value,
            comparison: "at_most",
            target: LATENCY_TARGET,
            meets_target: value <= LATENCY_TARGET,
        });
    }
    out
}

/// Measures `batch_records` records per write + fdatasync, straight on the file system.
pub(super) fn measure_raw(
    dir: &Path,
    batch_records: usize,
    record_bytes: usize,
    segment_bytes: u64,
    window: Window,
    progress: &Progress,
) -> Result<Measurement> {
    let buf = payload(batch_records * record_bytes);
    let mut files = RawSegments::new(dir, segment_bytes.max(buf.len() as u64))?;
    let stage = Instant::now();
    while stage.elapsed() < window.warmup {
        files.write_synced(&buf)?;
        progress.at(stage.elapsed());
    }
    let mut latency = latency_histogram();
    let (mut writes, mut sync_time) = (0u64, Duration::ZERO);
    let measuring = Instant::now();
    while measuring.elapsed() < window.seconds {
        let (total, sync) = files.write_synced(&buf)?;
        latency.saturating_record(nanos(total));
        sync_time += sync;
        writes += 1;
        progress.at(stage.elapsed());
    }
    let elapsed = measuring.elapsed();
    drop(files);
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(Measurement {
        records: writes * batch_records as u64,
        elapsed,
        latency,
        synced_records: writes * batch_records as u64,
        syncs: writes,
        sync_time,
    })
}

/// Sequential writes into preallocated files of the log's segment size, rolling to a new
/// one when full, so the baseline pays the same block-allocation costs as surety-log.
#[derive(Debug)]
struct RawSegments {
    dir: PathBuf,
    len: u64,
    file: File,
    pos: u64,
    count: u32,
}

impl RawSegments {
    fn new(dir: &Path, len: u64) -> Result<Self> {
        Ok(Self {
            dir: dir.to_path_buf(),
            len,
            file: create_preallocated(&dir.join("00000000.raw"), len)?,
            pos: 0,
            count: 1,
        })
    }

    /// One write and one fdatasync; returns the time of both and of the sync alone.
    fn write_synced(&mut self, buf: &[u8]) -> Result<(Duration, Duration)> {
        if self.pos + buf.len() as u64 > self.len {
            let path = self.dir.join(format!("{:08}.raw", self.count));
            self.file = create_preallocated(&path, self.len)?;
            self.count += 1;
            self.pos = 0;
        }
        let started = Instant::now();
        self.file.write_all_at(buf, self.pos)?;
        let synced = Instant::now();
        self.file.sync_data()?;
        let done = Instant::now();
        self.pos += buf.len() as u64;
        Ok((done - started, done - synced))
    }
}

/// Creates a file with `len` bytes reserved, durably, as surety-log creates a segment.
fn create_preallocated(path: &Path, len: u64) -> Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let len = libc::off_t::try_from(len).context("file length too large")?;
    // SAFETY: a plain syscall on a descriptor `file` owns; no memory is passed.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    // File systems that cannot preallocate are measured without it, as surety-log is.
    if rc != 0 && rc != libc::EOPNOTSUPP && rc != libc::EINVAL {
        bail!(
            "posix_fallocate {}: {}",
            path.display(),
            std::io::Error::from_raw_os_error(rc)
        );
    }
    file.sync_all()?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(file)
}

fn results_table(result: &LogBenchResult) -> Table {
    let mut t = Table::new(&[
        ("configuration", Align::Left),
        ("msgs/s", Align::Right),
        ("MB/s", Align::Right),
        ("mean", Align::Right),
        ("p50", Align::Right),
        ("p99", Align::Right),
        ("fsyncs/s", Align::Right),
        ("msgs/fsync", Align::Right),
        ("mean fsync", Align::Right),
        ("vs raw batched", Align::Right),
    ]);
    let rows = [&result.raw_batched, &result.raw_per_message]
        .into_iter()
        .chain(&result.log);
    for r in rows {
        t.row(vec![
            r.name.clone(),
            group_thousands(r.msgs_per_sec),
            format!("{:.1}", r.mb_per_sec),
            fmt_us(r.latency.mean_us),
            fmt_us(r.latency.p50_us),
            fmt_us(r.latency.p99_us),
            group_thousands(r.fsyncs_per_sec),
            format!("{:.1}", r.records_per_fsync),
            fmt_us(r.mean_fsync_us),
            r.vs_raw_batched
                .map_or(String::new(), |v| format!("{:.0}%", v * 100.0)),
        ]);
    }
    t
}

fn ratios_table(result: &LogBenchResult) -> Table {
    super::ratios_table(&result.ratios)
}

/// What latency means in each row, said once under both tables.
const LATENCY_NOTE: &str = "Latency (mean, p50, p99) is per write + fdatasync for the raw rows and per \
acknowledged append for surety-log; mean fsync is the time inside fdatasync alone. \
MB/s counts payload bytes (10^6 bytes/s).";

fn timing(s: &Settings) -> String {
    let rounds = s.rounds;
    if rounds == 1 {
        format!(
            "{} s per configuration after a {} s warm-up",
            fmt_secs(s.seconds),
            fmt_secs(s.warmup_seconds)
        )
    } else {
        format!(
            "{} s per configuration, in {rounds} interleaved rounds of {} s each after a {} s warm-up",
            fmt_secs(s.seconds),
            fmt_secs(s.seconds / f64::from(rounds)),
            fmt_secs(s.warmup_seconds)
        )
    }
}

fn text_report(result: &LogBenchResult) -> String {
    let s = &result.settings;
    let mut out = format!(
        "surety bench log: {}-byte records, {}, in {} ({}, {})\n\n",
        s.record_bytes,
        timing(s),
        s.directory,
        result.machine.filesystem,
        result.machine.mount
    );
    out.push_str(&results_table(result).to_text());
    out.push('\n');
    out.push_str(LATENCY_NOTE);
    out.push_str("\n\n");
    if !result.ratios.is_empty() {
        out.push_str(&ratios_table(result).to_text());
    }
    out
}

fn markdown_report(result: &LogBenchResult) -> String {
    let s = &result.settings;
    let mut out = String::from("## surety-log: appends against the raw disk\n\n");
    out.push_str(&result.provenance.to_markdown());
    out.push_str("\nMachine:\n\n");
    out.push_str(&result.machine.to_markdown());
    out.push_str(&format!(
        "\nSettings: {}; {}-byte payloads. \
         Raw rows write {} records (batched) or 1 record per `write` + `fdatasync`, \
         sequentially into files preallocated with `posix_fallocate` to the segment size. \
         surety-log runs `LogConfig::default()`: {} MiB segments, durability `{}`, \
         preallocation {}; its appenders are tokio tasks on a {}-worker runtime, each \
         in a closed loop (append, await the ack, append again).\n\n",
        timing(s),
        s.record_bytes,
        s.raw_batch_records,
        s.segment_bytes / (1024 * 1024),
        s.durability,
        if s.preallocate { "on" } else { "off" },
        s.runtime_worker_threads,
    ));
    out.push_str(&results_table(result).to_markdown());
    out.push('\n');
    out.push_str(LATENCY_NOTE);
    out.push('\n');
    if !result.ratios.is_empty() {
        out.push_str("\nRatios against the targets:\n\n");
        out.push_str(&ratios_table(result).to_markdown());
    }
    out
}
