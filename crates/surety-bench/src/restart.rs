//! `surety bench restart`: how long `surety serve` takes from start to a healthy
//! `/healthz`, and how much memory it holds then, over a retained log of idempotent
//! messages: after a clean stop, after a `kill -9` with the longest tail the dedupe
//! snapshot policy leaves, and with the dedupe snapshot deleted (the full scan). With
//! `--before`, another `surety` binary (an earlier build) is measured on the same data.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde::Serialize;
use surety_broker::topic::TopicConfigPatch;
use surety_broker::{Broker, BrokerOptions, PublishMessage};

use super::report::{MachineInfo, Provenance};
use super::table::{Align, Table};
use super::{BenchDir, OutputArgs, base_dir_display, fmt_secs, group_thousands, parse_positive};

const SECTION: &str = "restart";
const TOPIC: &str = "bench-restart";
const PAYLOAD_BYTES: usize = 1024;
/// Messages per publish call while filling, and publish calls in flight.
const FILL_BATCH: usize = 1000;
const FILL_TASKS: usize = 4;
/// How long a server may take to become healthy (a full scan of a large log is slow),
/// and to stop.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(900);
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

pub(super) const LONG_ABOUT: &str = "\
Measure the restart of `surety serve` over a large retained log: seconds from starting the
process to the first healthy answer of /healthz (the server binds only after the broker
is open, so that is the time recovery takes), and the server's resident memory (VmRSS)
right then and at its peak (VmHWM).

The data: one topic with the default config (1 partition, fsync) filled in-process with
--retained-gb of 1 KiB messages from --producers idempotent producers (producer_id +
sequence, no message ids), then closed. Then, on that same data directory:

1. clean restart: started after a clean stop, which wrote the dedupe snapshot; stopped
   with SIGTERM.
2. snapshot deleted: dedupe.snapshot removed first, so the whole log is scanned (what a
   damaged snapshot costs); stopped with SIGTERM.
3. after kill -9: --crash-tail more messages published in-process without a clean close
   (the longest tail the default snapshot policy leaves unsnapshotted), then started;
   stopped with SIGKILL.

Each with the --before binary first (when given), then this one.

The page cache is warm (the data was just written or read) unless --cold, which drops it
(needs root) before each start. Replaces the `bench:restart` section of BENCHMARKS.md.";

pub(super) const AFTER_HELP: &str = "\
Examples:
  cargo build --release -p surety && target/release/surety bench restart --retained-gb 1
  surety bench restart --retained-gb 10 --before /path/to/older/surety --dir /data/bench";

/// Options of `surety bench restart`.
#[derive(Debug, Args)]
pub struct RestartArgs {
    /// Retained log to build, in GB (10^9 bytes on disk, about 1.1 KB per message);
    /// repeat it to measure several sizes in turn (each one's data is removed before
    /// the next is built)
    #[arg(long, value_name = "GB", default_values_t = [1.0], value_parser = parse_gb)]
    retained_gb: Vec<f64>,

    /// Also measure this `surety` binary on the same data, as "before" (e.g. a release
    /// build of an earlier commit)
    #[arg(long, value_name = "PATH")]
    before: Option<PathBuf>,

    /// How the report names the --before binary [default: its path]
    #[arg(long, value_name = "TEXT", requires = "before")]
    before_label: Option<String>,

    /// Directory for the data; a fresh subdirectory is made inside it and removed
    /// afterwards [default: ./surety-bench, created if missing and removed if left empty]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Idempotent producers the messages are spread over
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = parse_positive)]
    producers: usize,

    /// Messages published without a clean close before the kill -9 row [default: just
    /// under the default snapshot trigger of 100,000 records]
    #[arg(long, value_name = "N", default_value_t = 99_000)]
    crash_tail: u64,

    /// Drop the page cache before each start (writes /proc/sys/vm/drop_caches)
    #[arg(long)]
    cold: bool,

    #[command(flatten)]
    out: OutputArgs,
}

fn parse_gb(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 10_000.0 => Ok(v),
        Ok(_) => Err("must be more than 0 and at most 10000".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Serialize)]
struct RestartBenchResult {
    #[serde(flatten)]
    provenance: Provenance,
    machine: MachineInfo,
    /// One per `--retained-gb`.
    runs: Vec<Run>,
}

#[derive(Debug, Serialize)]
struct Run {
    settings: Settings,
    rows: Vec<Row>,
}

#[derive(Debug, Serialize)]
struct Settings {
    directory: String,
    retained_gb_requested: f64,
    /// Bytes of the data directory after the fill.
    retained_bytes: u64,
    messages: u64,
    payload_bytes: usize,
    producers: usize,
    crash_tail: u64,
    cold_page_cache: bool,
    fill_seconds: f64,
    before_binary: Option<String>,
    after_binary: String,
}

#[derive(Debug, Serialize)]
struct Row {
    binary: &'static str,
    scenario: String,
    seconds_to_healthy: f64,
    rss_bytes: u64,
    peak_rss_bytes: u64,
    /// From the server's "dedupe table rebuilt" log line, where it prints one.
    records_scanned: Option<u64>,
    from_snapshot: Option<bool>,
    /// The machine's 1-minute load average just before the start (2 cores shared).
    load_average: f64,
}

pub fn run(args: RestartArgs) -> Result<()> {
    let provenance = Provenance::current();
    let after_exe = std::env::current_exe().context("finding the surety binary")?;
    if let Some(before) = &args.before
        && !before.is_file()
    {
        bail!("--before {}: no such file", before.display());
    }
    let (dir, machine) = BenchDir::create_described(args.dir.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let mut runs = Vec::new();
    for (i, &gb) in args.retained_gb.iter().enumerate() {
        let data = dir.fresh(&format!("data-{i}"))?;
        let logs = dir.fresh(&format!("logs-{i}"))?;
        runs.push(measure_size(&args, gb, &rt, &data, &logs, &after_exe)?);
        std::fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
    }
    drop(rt);
    dir.remove()?;
    let result = RestartBenchResult {
        provenance,
        machine,
        runs,
    };
    args.out
        .emit(SECTION, &result, text_report, markdown_report)
}

/// Fills `data` with about `gb` of messages and measures every restart row on it.
fn measure_size(
    args: &RestartArgs,
    gb: f64,
    rt: &tokio::runtime::Runtime,
    data: &Path,
    logs: &Path,
    after_exe: &Path,
) -> Result<Run> {
    // The fill: about 1,110 bytes on disk per 1 KiB message (frame and dedupe headers).
    let messages = (gb * 1e9 / 1110.0).ceil() as u64;
    let mut seqs = vec![0u64; args.producers];
    eprintln!(
        "filling {} with {} messages of {PAYLOAD_BYTES} bytes...",
        data.display(),
        group_thousands(messages as f64)
    );
    let fill_started = Instant::now();
    rt.block_on(async {
        let broker = Broker::open(data, BrokerOptions::default())?;
        broker
            .put_topic(TOPIC, &TopicConfigPatch::default())
            .await?;
        publish(&broker, messages, &mut seqs).await?;
        broker.close();
        anyhow::Ok(())
    })?;
    let fill_seconds = fill_started.elapsed().as_secs_f64();
    let retained_bytes = dir_size(data)?;
    eprintln!(
        "filled {:.2} GB in {} s",
        retained_bytes as f64 / 1e9,
        fmt_secs(fill_seconds)
    );

    let mut rows = Vec::new();
    let start = |exe: &Path, name: &str| -> Result<Sample> {
        if args.cold {
            drop_page_cache()?;
        }
        eprintln!("starting {} ({name})...", exe.display());
        Sample::take(exe, data, &logs.join(format!("{name}.stderr")))
    };
    // Every scenario with each binary in turn, on the same data: none of the starts
    // changes what the next one finds (a TERM after nothing was published writes no
    // snapshot; a crash tail under the snapshot trigger writes none at open).
    let binaries: Vec<(&'static str, &Path)> = args
        .before
        .iter()
        .map(|b| ("before", b.as_path()))
        .chain([("after", after_exe)])
        .collect();
    for &(binary, exe) in &binaries {
        let s = start(exe, &format!("{binary}-clean"))?;
        s.stop(Stop::Term)?;
        rows.push(s.row(
            binary,
            "after a clean stop (dedupe snapshot written at close)",
        ));
    }

    let snapshot = data.join("topics").join(TOPIC).join("dedupe.snapshot");
    for &(binary, exe) in &binaries {
        // The full scan writes a fresh snapshot at open: removed again for each binary.
        match std::fs::remove_file(&snapshot) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", snapshot.display()));
            }
            _ => {}
        }
        let s = start(exe, &format!("{binary}-no-snapshot"))?;
        s.stop(Stop::Term)?;
        rows.push(s.row(binary, "dedupe snapshot deleted (full scan)"));
    }

    eprintln!(
        "publishing {} more messages, then stopping without a clean close...",
        group_thousands(args.crash_tail as f64)
    );
    rt.block_on(async {
        let broker = Broker::open(data, BrokerOptions::default())?;
        publish(&broker, args.crash_tail, &mut seqs).await?;
        // Dropped, not closed: no snapshot at close, as after a crash.
        drop(broker);
        anyhow::Ok(())
    })?;
    for &(binary, exe) in &binaries {
        let s = start(exe, &format!("{binary}-kill"))?;
        s.stop(Stop::Kill)?;
        rows.push(s.row(
            binary,
            format!(
                "after kill -9, {} messages after the last dedupe snapshot",
                group_thousands(args.crash_tail as f64)
            ),
        ));
    }

    Ok(Run {
        settings: Settings {
            directory: base_dir_display(args.dir.as_deref()),
            retained_gb_requested: gb,
            retained_bytes,
            messages,
            payload_bytes: PAYLOAD_BYTES,
            producers: args.producers,
            crash_tail: args.crash_tail,
            cold_page_cache: args.cold,
            fill_seconds,
            before_binary: args.before.as_ref().map(|p| {
                args.before_label
                    .clone()
                    .unwrap_or_else(|| p.display().to_string())
            }),
            after_binary: after_exe.display().to_string(),
        },
        rows,
    })
}

/// Publishes `n` messages, `FILL_BATCH` per call with `FILL_TASKS` calls in flight; each
/// task owns its own producers, whose sequences continue from `seqs`.
async fn publish(broker: &Broker, n: u64, seqs: &mut [u64]) -> Result<()> {
    let producers = seqs.len();
    let tasks = FILL_TASKS.min(producers);
    let payload = super::payload(PAYLOAD_BYTES);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let mine: Vec<usize> = (t..producers).step_by(tasks).collect();
        let mut next: Vec<u64> = mine.iter().map(|&p| seqs[p]).collect();
        let quota = n / tasks as u64 + u64::from((t as u64) < n % tasks as u64);
        let (broker, payload) = (broker.clone(), payload.clone());
        handles.push(tokio::spawn(async move {
            let mut sent = 0u64;
            let mut k = 0usize;
            while sent < quota {
                let len = (quota - sent).min(FILL_BATCH as u64) as usize;
                let batch: Vec<PublishMessage> = (0..len)
                    .map(|_| {
                        let i = k % mine.len();
                        k += 1;
                        let seq = next[i];
                        next[i] += 1;
                        PublishMessage {
                            producer_id: Some(format!("bench-{}", mine[i])),
                            sequence: Some(seq),
                            payload: payload.clone(),
                            ..PublishMessage::default()
                        }
                    })
                    .collect();
                let results = broker.publish(TOPIC, batch).await?;
                if let Some(r) = results.iter().find(|r| r.duplicate) {
                    bail!("message at offset {} answered as a duplicate", r.offset);
                }
                sent += len as u64;
            }
            anyhow::Ok((mine, next))
        }));
    }
    for h in handles {
        let (mine, next) = h.await.context("publisher task panicked")??;
        for (p, s) in mine.into_iter().zip(next) {
            seqs[p] = s;
        }
    }
    Ok(())
}

/// Bytes of every file under `dir`.
fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let meta = e.metadata()?;
        total += if meta.is_dir() {
            dir_size(&e.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

fn drop_page_cache() -> Result<()> {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("--cold: writing /proc/sys/vm/drop_caches (needs root)")
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    Term,
    Kill,
}

/// A started server, healthy, with what was measured of it.
#[derive(Debug)]
struct Sample {
    child: Child,
    stderr_path: PathBuf,
    seconds_to_healthy: f64,
    rss_bytes: u64,
    peak_rss_bytes: u64,
    load_average: f64,
}

impl Sample {
    /// Starts `exe serve` on a free loopback port and waits until `/healthz` answers.
    fn take(exe: &Path, data: &Path, stderr_path: &Path) -> Result<Sample> {
        let stderr = File::create(stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SURETY_") {
                cmd.env_remove(k);
            }
        }
        let load_average = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} serve", exe.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let fail = |child: &mut Child, why: String| {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            let _ = File::open(stderr_path).and_then(|mut f| f.read_to_string(&mut err));
            anyhow!("{why}; its stderr:\n{err}")
        };
        let line = rx.recv_timeout(HEALTHY_TIMEOUT).unwrap_or_default();
        let Some(addr) = line
            .trim_end()
            .strip_prefix("surety listening on http://")
            .and_then(|rest| rest.split(' ').next())
            .map(str::to_owned)
        else {
            return Err(fail(
                &mut child,
                format!("surety serve printed no ready line (got {line:?})"),
            ));
        };
        while !healthy(&addr) {
            if started.elapsed() > HEALTHY_TIMEOUT {
                return Err(fail(&mut child, "/healthz never answered ok".into()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let seconds_to_healthy = started.elapsed().as_secs_f64();
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .context("reading the server's /proc status")?;
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |k| k * 1024)
        };
        Ok(Sample {
            seconds_to_healthy,
            rss_bytes: kib("VmRSS:"),
            peak_rss_bytes: kib("VmHWM:"),
            load_average,
            child,
            stderr_path: stderr_path.to_path_buf(),
        })
    }

    fn stop(&self, how: Stop) -> Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        let signal = match how {
            Stop::Term => libc::SIGTERM,
            Stop::Kill => libc::SIGKILL,
        };
        // SAFETY: kill(2) on our own child, not yet reaped (we wait below).
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut status = 0;
        loop {
            // SAFETY: waitpid on our own child with a valid status pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                break;
            }
            if r < 0 {
                return Err(std::io::Error::last_os_error()).context("waitpid");
            }
            if Instant::now() >= deadline {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                bail!("surety serve did not stop within {STOP_TIMEOUT:?}; killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(how, Stop::Term) && !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0)
        {
            bail!("surety serve exited with status {status} after SIGTERM");
        }
        Ok(())
    }

    fn row(&self, binary: &'static str, scenario: impl Into<String>) -> Row {
        let log = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let line = log.lines().find(|l| l.contains("dedupe table rebuilt"));
        let field = |name: &str| {
            line.and_then(|l| {
                let rest = &l[l.find(&format!("{name}="))? + name.len() + 1..];
                Some(rest.split_whitespace().next()?.to_owned())
            })
        };
        Row {
            binary,
            scenario: scenario.into(),
            seconds_to_healthy: self.seconds_to_healthy,
            rss_bytes: self.rss_bytes,
            peak_rss_bytes: self.peak_rss_bytes,
            records_scanned: field("records_scanned").and_then(|v| v.parse().ok()),
            from_snapshot: field("from_snapshot").and_then(|v| v.parse().ok()),
            load_average: self.load_average,
        }
    }
}

/// One `GET /healthz` over plain HTTP/1.1: true on a 200.
fn healthy(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

fn mib(b: u64) -> String {
    format!("{} MiB", group_thousands(b as f64 / (1024.0 * 1024.0)))
}

fn results_table(rows: &[Row]) -> Table {
    let mut t = Table::new(&[
        ("binary", Align::Left),
        ("restart", Align::Left),
        ("records scanned", Align::Right),
        ("to healthy", Align::Right),
        ("RSS after open", Align::Right),
        ("peak RSS", Align::Right),
        ("load avg", Align::Right),
    ]);
    for r in rows {
        t.row(vec![
            r.binary.into(),
            r.scenario.clone(),
            r.records_scanned
                .map_or("all (not counted)".into(), |n| group_thousands(n as f64)),
            format!("{} s", fmt_secs(r.seconds_to_healthy)),
            mib(r.rss_bytes),
            mib(r.peak_rss_bytes),
            format!("{:.1}", r.load_average),
        ]);
    }
    t
}

fn header(s: &Settings) -> String {
    format!(
        "{} messages of {} bytes from {} idempotent producers, {:.2} GB on disk (filled \
         in-process in {} s), one topic with the default config; page cache {}",
        group_thousands(s.messages as f64),
        s.payload_bytes,
        s.producers,
        s.retained_bytes as f64 / 1e9,
        fmt_secs(s.fill_seconds),
        if s.cold_page_cache {
            "dropped before each start"
        } else {
            "warm"
        },
    )
}

fn text_report(result: &RestartBenchResult) -> String {
    let mut out = String::new();
    for run in &result.runs {
        out.push_str(&format!(
            "surety bench restart: {}\n\n{}\n",
            header(&run.settings),
            results_table(&run.rows).to_text()
        ));
    }
    out
}

fn markdown_report(result: &RestartBenchResult) -> String {
    let mut out = String::from("## surety serve: restart over a retained log\n\n");
    out.push_str(&result.provenance.to_markdown());
    out.push_str("\nMachine:\n\n");
    out.push_str(&result.machine.to_markdown());
    out.push_str(
        "\n\"to healthy\": from starting `surety serve` to its first `200` on `/healthz` (it \
         binds after the broker is open). RSS: the server's VmRSS then, and its VmHWM \
         (peak). Records scanned: from the server's `dedupe table rebuilt` log line. Load \
         avg: the machine's 1-minute load average before the start (2 cores, shared). With \
         no record to replay, what is left is surety-log's own open. Since issue 11 the \
         broker opens every log with `VerifyOnOpen::ActiveSegment`: only each log's active \
         segment is scanned; a sealed segment is taken from its index file once the \
         index's header, first and last entries and last interval agree with the segment \
         (docs/format.md, \"Recovery\"), and its records are CRC-checked on every read and \
         by the background scrub. Before it, `VerifyOnOpen::All` CRC-checked every record \
         of every segment at open.\n",
    );
    for run in &result.runs {
        let s = &run.settings;
        out.push_str(&format!(
            "\n### {} GB retained\n\nSettings: {}. Binaries: after = `{}`{}.\n\n",
            fmt_secs(s.retained_gb_requested),
            header(s),
            s.after_binary,
            s.before_binary
                .as_ref()
                .map_or(String::new(), |b| format!(", before = `{b}`")),
        ));
        out.push_str(&results_table(&run.rows).to_markdown());
    }
    out
}
