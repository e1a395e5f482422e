//! `surety verify`: the full offline check of a data directory. `surety serve` trusts
//! sealed segments at start-up through their checked indexes and scrubs them in the
//! background; this reads every record of every segment of every log now, as a start-up
//! checking everything would, and changes nothing.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use surety_bench::table::{Align, Table};
use surety_broker::verify::{DataCheck, data_dir_bytes, verify_data_dir};
use surety_log::Finding;

pub const LONG_ABOUT: &str = "\
Check every record of every segment of every log (partitions, group journals, dead
letters) under a data directory against its CRC, as a start-up that trusted nothing
would, and report what is damaged. Nothing is changed (only the directory's LOCK file
is taken): safe on a copy.

Run it on a stopped server (it takes the directory's lock, so it refuses while
`surety serve` runs). A running server does the same check in the background, throttled
(scrub_bytes_per_sec), and reports damage in its metrics and in `surety topics describe`.

Besides damage, it notes what the next start-up tidies and is not damage: the torn,
never-acknowledged tail of a write cut off by a crash (cut off at start-up), and a
segment whose creation a crash interrupted (removed at start-up).

Exit status: 0 when nothing is damaged, 1 when some segment is, 2 when the check could
not run (no such data directory, a server has it open, a read failed).

Examples:
  surety verify --data ./surety-data
  surety verify --data /backup/surety-data --json | jq '.corrupt_segments'";

/// `surety verify` flags.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Data directory to check (of a stopped server, or a copy)
    #[arg(
        long,
        value_name = "DIR",
        env = "SURETY_DATA",
        default_value = surety_server::config::DEFAULT_DATA
    )]
    data: PathBuf,
    /// Print JSON (for scripts) instead of a table
    #[arg(long)]
    json: bool,
}

/// Runs the check and exits with its status (see [`LONG_ABOUT`]).
pub fn run(args: VerifyArgs) -> ! {
    let code = match check(&args) {
        Ok((report, took)) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json(&args, &report, took))
                        .expect("a report always serializes")
                );
            } else {
                println!("{}", human(&args, &report, took));
            }
            i32::from(report.corrupt_segments() > 0)
        }
        Err(e) => {
            eprintln!("error: {e} ({})", e.code());
            2
        }
    };
    std::process::exit(code)
}

fn check(args: &VerifyArgs) -> Result<(DataCheck, Duration), surety_broker::BrokerError> {
    let total = data_dir_bytes(&args.data)?;
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    let started = Instant::now();
    let report = verify_data_dir(&args.data, &mut |n| bar.inc(n));
    bar.finish_and_clear();
    Ok((report?, started.elapsed()))
}

fn status(check: &surety_log::LogCheck) -> String {
    let corrupt = check.corruptions().count();
    if corrupt > 0 {
        return format!(
            "CORRUPT ({corrupt} segment{})",
            if corrupt == 1 { "" } else { "s" }
        );
    }
    let notes: Vec<&str> = check
        .segments
        .iter()
        .filter_map(|s| match &s.finding {
            Some(Finding::TornTail { .. }) => Some("torn tail, cut at start-up"),
            Some(Finding::Incomplete) => Some("incomplete segment, removed at start-up"),
            _ => None,
        })
        .collect();
    if notes.is_empty() {
        "ok".into()
    } else {
        format!("ok ({})", notes.join("; "))
    }
}

fn human(args: &VerifyArgs, report: &DataCheck, took: Duration) -> String {
    let mut t = Table::new(&[
        ("topic", Align::Left),
        ("log", Align::Left),
        ("segments", Align::Right),
        ("records", Align::Right),
        ("bytes", Align::Right),
        ("status", Align::Left),
    ]);
    let mut damage = String::new();
    for l in &report.logs {
        t.row(vec![
            l.topic.clone(),
            l.log.to_string(),
            l.check.segments.len().to_string(),
            l.check.records().to_string(),
            l.check.bytes().to_string(),
            status(&l.check),
        ]);
        for c in l.check.corruptions() {
            damage.push_str(&format!(
                "  {}/{}: {} at byte {} (offset {}): {}\n",
                l.topic,
                l.log,
                c.segment.display(),
                c.position,
                c.offset,
                c.detail
            ));
        }
    }
    let corrupt = report.corrupt_segments();
    let mut out = format!(
        "checked {} logs under {}: {} records, {} bytes in {:.1} s\n",
        report.logs.len(),
        args.data.display(),
        report.records(),
        report.bytes(),
        took.as_secs_f64()
    );
    if !report.logs.is_empty() {
        out.push('\n');
        out.push_str(&t.to_text());
    }
    if corrupt == 0 {
        out.push_str("\nno damage found");
    } else {
        out.push_str(&format!(
            "\n{corrupt} corrupt segment{}:\n{damage}\n\
             A damaged record is never served: reading it fails with data_corrupt, and a\n\
             consumer group stops at it in its partition; every other record is served.\n\
             Restore the segment from a backup, or republish the lost offsets.",
            if corrupt == 1 { "" } else { "s" },
        ));
    }
    out
}

#[derive(Serialize)]
struct JsonReport<'a> {
    data: &'a std::path::Path,
    corrupt_segments: usize,
    records: u64,
    bytes: u64,
    seconds: f64,
    logs: Vec<JsonLog>,
}

#[derive(Serialize)]
struct JsonLog {
    topic: String,
    log: String,
    segments: usize,
    records: u64,
    bytes: u64,
    findings: Vec<JsonFinding>,
}

/// `kind`: `corrupt` (damage), `torn_tail` or `incomplete_segment` (tidied at start-up).
#[derive(Serialize)]
struct JsonFinding {
    kind: &'static str,
    segment: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

fn json<'a>(args: &'a VerifyArgs, report: &DataCheck, took: Duration) -> JsonReport<'a> {
    let logs = report
        .logs
        .iter()
        .map(|l| JsonLog {
            topic: l.topic.clone(),
            log: l.log.to_string(),
            segments: l.check.segments.len(),
            records: l.check.records(),
            bytes: l.check.bytes(),
            findings: l
                .check
                .segments
                .iter()
                .filter_map(|s| {
                    let (kind, position, offset, detail) = match s.finding.as_ref()? {
                        Finding::Corrupt(c) => (
                            "corrupt",
                            Some(c.position),
                            Some(c.offset),
                            Some(c.detail.clone()),
                        ),
                        Finding::TornTail { position, reason } => {
                            ("torn_tail", Some(*position), None, Some(reason.clone()))
                        }
                        Finding::Incomplete => ("incomplete_segment", None, None, None),
                    };
                    Some(JsonFinding {
                        kind,
                        segment: s.path.clone(),
                        position,
                        offset,
                        detail,
                    })
                })
                .collect(),
        })
        .collect();
    JsonReport {
        data: &args.data,
        corrupt_segments: report.corrupt_segments(),
        records: report.records(),
        bytes: report.bytes(),
        seconds: took.as_secs_f64(),
        logs,
    }
}
