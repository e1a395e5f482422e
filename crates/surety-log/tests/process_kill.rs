//! Guards G1 against `kill -9`: a record acknowledged to an appender must survive SIGKILL
//! of the process at any instant (mid-write, mid-roll, mid-recovery), the next open must
//! never report corruption, and offsets must stay dense with every record CRC-valid.
//!
//! The test binary re-runs itself as the child (`child_appender`, gated by an env var),
//! which appends from many threads and tokio tasks and prints one `ACK` line per
//! acknowledged record; the parent SIGKILLs it at a random instant, reopens the log and
//! checks every record ever acknowledged, across all cycles, in one data directory.
//!
//! `SURETY_KILL_CYCLES` (default 100) sets the number of kills; `SURETY_KILL_SEED` replays
//! the parent's random choices (the kill instants themselves stay nondeterministic).

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use surety_log::segment::{
    SEGMENT_HEADER_LEN, decode_header, parse_segment_file_name, scan, segment_path,
};
use surety_log::storage::{FileStorage, Storage};
use surety_log::{Log, LogConfig, NewRecord, VerifyOnOpen};

const CHILD_DIR_ENV: &str = "SURETY_KILL_CHILD_DIR";
const CHILD_RUN_ENV: &str = "SURETY_KILL_CHILD_RUN";
const CHILD_VERIFY_ENV: &str = "SURETY_KILL_CHILD_VERIFY_ACTIVE";
const CYCLES_ENV: &str = "SURETY_KILL_CYCLES";
const SEED_ENV: &str = "SURETY_KILL_SEED";

const SYNC_THREADS: u64 = 7;
const BATCH_THREADS: u64 = 1;
const ASYNC_TASKS: u64 = 4;
const MAX_PAYLOAD: u64 = 4000;
const PAUSE_MAX_US: u64 = 10_000;
/// A child that was never killed stops on its own after this long.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);

fn config(verify_active_only: bool) -> LogConfig {
    LogConfig {
        // Small segments so that rolls (seal, index file, new segment) happen in most
        // cycles and kills land inside them.
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        index_interval_bytes: 1024,
        verify_on_open: if verify_active_only {
            VerifyOnOpen::ActiveSegment
        } else {
            VerifyOnOpen::All
        },
        ..LogConfig::default()
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A record id names the child run, the appender and its sequence number.
fn record_id(run: u64, worker: u64, seq: u64) -> u64 {
    (run << 40) | (worker << 32) | seq
}

/// The payload of record `id`: 1..4000 bytes, log-uniformly distributed (mostly small,
/// some large), fully determined by the id, so the parent can regenerate every record.
fn payload_for(id: u64) -> Vec<u8> {
    let u = (splitmix64(id) >> 11) as f64 / (1u64 << 53) as f64;
    let len = ((MAX_PAYLOAD as f64).powf(u) as usize).clamp(1, MAX_PAYLOAD as usize - 1);
    let mut out = Vec::with_capacity(len + 8);
    let mut s = id ^ 0xA5A5_5A5A_0F0F_F0F0;
    while out.len() < len {
        s = splitmix64(s);
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn record_for(id: u64) -> NewRecord {
    NewRecord::new(payload_for(id))
        .with_key(id.to_be_bytes())
        .with_header("worker", ((id >> 32) & 0xFF).to_string())
}

// ---------------------------------------------------------------------------------------
// The child: appends until killed.
// ---------------------------------------------------------------------------------------

/// Writes `text` (whole lines) to stdout in one locked write; exits quietly when the
/// parent is gone.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(0);
    }
}

fn ack_line(offset: u64, id: u64, payload: &[u8]) -> String {
    format!("ACK {offset} {id} {:08x}\n", crc32c::crc32c(payload))
}

/// A random pause between appends: keeps the log growing slowly enough that re-checking
/// everything after every kill stays cheap, while appenders still overlap.
fn pause(id: u64) -> Duration {
    Duration::from_micros(splitmix64(id ^ 0x70_6175_7365) % PAUSE_MAX_US)
}

fn child_fail(what: &str) -> ! {
    eprintln!("child_appender: {what}");
    let _ = std::io::stderr().flush();
    std::process::exit(3);
}

/// Not a test of its own: the child process the kill test starts (with `--ignored`) and
/// SIGKILLs. Ignored, so that it never counts as a passing test.
#[test]
#[ignore = "the child process of the kill test; it starts this itself"]
fn child_appender() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        child_fail("run only as the kill test's child (it sets the data directory)");
    };
    let run: u64 = std::env::var(CHILD_RUN_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| child_fail("missing run number"));
    let verify_active = std::env::var_os(CHILD_VERIFY_ENV).is_some();
    let log = match Log::open_dir(&dir, config(verify_active)) {
        Ok(log) => Arc::new(log),
        Err(e) => child_fail(&format!("open failed: {e}")),
    };
    // The leading newline ends the harness's "test child_appender ... " line.
    emit("\nREADY\n");
    let deadline = Instant::now() + CHILD_LIFETIME;

    let mut threads = Vec::new();
    for worker in 0..SYNC_THREADS {
        let log = log.clone();
        threads.push(std::thread::spawn(move || {
            let mut seq = 0;
            while Instant::now() < deadline {
                let id = record_id(run, worker, seq);
                seq += 1;
                let rec = record_for(id);
                let line = match log.append(rec.clone()) {
                    Ok(off) => ack_line(off, id, &rec.payload),
                    Err(e) => child_fail(&format!("append failed: {e}")),
                };
                emit(&line);
                std::thread::sleep(pause(id));
            }
        }));
    }
    for b in 0..BATCH_THREADS {
        let worker = SYNC_THREADS + b;
        let log = log.clone();
        threads.push(std::thread::spawn(move || {
            let mut seq = 0;
            while Instant::now() < deadline {
                let n = 1 + (splitmix64(record_id(run, worker, seq)) % 4);
                let ids: Vec<u64> = (seq..seq + n).map(|s| record_id(run, worker, s)).collect();
                seq += n;
                let recs: Vec<NewRecord> = ids.iter().map(|&id| record_for(id)).collect();
                let range = match log.append_batch(recs.clone()) {
                    Ok(range) => range,
                    Err(e) => child_fail(&format!("batch append failed: {e}")),
                };
                if range.end - range.start != n {
                    child_fail(&format!("batch of {n} got offsets {range:?}"));
                }
                let lines: String = range
                    .zip(ids.iter().zip(&recs))
                    .map(|(off, (&id, rec))| ack_line(off, id, &rec.payload))
                    .collect();
                emit(&lines);
                std::thread::sleep(pause(ids[0]));
            }
        }));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| child_fail(&format!("runtime: {e}")));
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..ASYNC_TASKS {
            let worker = SYNC_THREADS + BATCH_THREADS + t;
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut seq = 0;
                while Instant::now() < deadline {
                    let id = record_id(run, worker, seq);
                    seq += 1;
                    let rec = record_for(id);
                    let line = match log.append_async(rec.clone()).await {
                        Ok(off) => ack_line(off, id, &rec.payload),
                        Err(e) => child_fail(&format!("async append failed: {e}")),
                    };
                    emit(&line);
                    tokio::time::sleep(pause(id)).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    for t in threads {
        t.join().unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// The parent: kill, reopen, verify, repeat.
// ---------------------------------------------------------------------------------------

/// One acknowledged record as the child reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ack {
    id: u64,
    crc: u32,
}

fn parse_ack(line: &str) -> Option<(u64, Ack)> {
    let rest = line.strip_prefix("ACK ")?;
    let mut parts = rest.trim_end_matches('\n').split(' ');
    let parsed = (|| {
        let offset = parts.next()?.parse().ok()?;
        let id = parts.next()?.parse().ok()?;
        let crc = u32::from_str_radix(parts.next()?, 16).ok()?;
        parts.next().is_none().then_some((offset, Ack { id, crc }))
    })();
    Some(parsed.unwrap_or_else(|| panic!("malformed ACK line from child: {line:?}")))
}

/// What one child run printed before it died.
struct ChildRun {
    lines: Vec<String>,
    partial_tail: bool,
    stderr: String,
    saw_ready: bool,
}

fn run_and_kill(dir: &Path, run: u64, verify_active: bool, rng: &mut StdRng) -> ChildRun {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "child_appender",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_DIR_ENV, dir)
    .env(CHILD_RUN_ENV, run.to_string())
    .env_remove(CHILD_VERIFY_ENV)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if verify_active {
        cmd.env(CHILD_VERIFY_ENV, "1");
    }
    let mut child = cmd.spawn().expect("spawn child");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let out_reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut lines = Vec::new();
        let mut partial_tail = false;
        loop {
            let mut buf = Vec::new();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) if buf.last() != Some(&b'\n') => {
                    // The kill cut this line short: its ack may or may not have happened.
                    partial_tail = true;
                    break;
                }
                Ok(_) => {
                    let line = String::from_utf8(buf).expect("child printed non-UTF-8");
                    if line == "READY\n" {
                        let _ = ready_tx.send(());
                    }
                    lines.push(line);
                }
                Err(e) => panic!("reading child stdout: {e}"),
            }
        }
        (lines, partial_tail)
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    // Mostly kill while appenders run; sometimes right after spawn, which can land
    // inside the child's recovery (truncating a tail, removing a half-made segment).
    let early = rng.random_bool(0.15);
    let mut saw_ready = false;
    if early {
        std::thread::sleep(Duration::from_millis(rng.random_range(0..60)));
    } else {
        saw_ready = ready_rx.recv_timeout(Duration::from_secs(60)).is_ok();
        std::thread::sleep(Duration::from_millis(rng.random_range(5..150)));
    }
    child.kill().expect("kill child");
    let status = child.wait().expect("wait child");
    let (lines, partial_tail) = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    saw_ready |= lines.iter().any(|l| l == "READY\n");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "run {run}: the child stopped on its own ({status}) before the kill; stderr:\n{stderr}"
    );
    assert!(
        early || saw_ready,
        "run {run}: the child never became ready; stderr:\n{stderr}"
    );
    ChildRun {
        lines,
        partial_tail,
        stderr,
        saw_ready,
    }
}

/// What the last segment looks like before recovery runs, to tell whether a kill left a
/// torn tail or a half-created segment (read-only: recovery itself must do the repair).
#[derive(Debug, Default)]
struct TailState {
    torn_tail: bool,
    incomplete_segment: bool,
}

fn inspect_tail(dir: &Path, cfg: &LogConfig) -> TailState {
    let storage = FileStorage;
    let Some(base) = storage
        .list_files(dir)
        .unwrap()
        .iter()
        .filter_map(|n| parse_segment_file_name(n))
        .max()
    else {
        return TailState::default();
    };
    let file = storage.open(&segment_path(dir, base)).unwrap();
    let len = file.len().unwrap();
    let mut header = vec![0u8; SEGMENT_HEADER_LEN.min(len as usize)];
    let mut got = 0;
    while got < header.len() {
        let n = file.read_at(&mut header[got..], got as u64).unwrap();
        assert!(n > 0, "short read of a segment header");
        got += n;
    }
    if decode_header(&header) != Ok(base) {
        return TailState {
            incomplete_segment: true,
            ..TailState::default()
        };
    }
    let s = scan(
        file.as_ref(),
        base,
        len,
        cfg.max_record_bytes,
        cfg.index_interval_bytes,
    )
    .unwrap();
    TailState {
        torn_tail: s.stop.is_some(),
        ..TailState::default()
    }
}

fn describe(r: &surety_log::Record) -> String {
    format!(
        "offset {} key {:?} payload {} bytes crc {:08x}",
        r.offset,
        r.key,
        r.payload.len(),
        crc32c::crc32c(&r.payload)
    )
}

/// The id a record names in its key, checked against the payload regenerated from it.
fn verified_id(r: &surety_log::Record) -> u64 {
    let key: [u8; 8] = r
        .key
        .as_deref()
        .and_then(|k| k.try_into().ok())
        .unwrap_or_else(|| panic!("record with a foreign key: {}", describe(r)));
    let id = u64::from_be_bytes(key);
    assert!(
        r.payload == payload_for(id),
        "record names id {id} but its payload is not that record's: {}",
        describe(r)
    );
    let worker = ((id >> 32) & 0xFF).to_string();
    assert!(
        r.headers.len() == 1
            && r.headers[0].name == "worker"
            && r.headers[0].value == worker.as_bytes(),
        "headers of {} are {:?}",
        describe(r),
        r.headers
    );
    id
}

fn cycles() -> u64 {
    std::env::var(CYCLES_ENV)
        .ok()
        .map(|s| s.parse().expect("SURETY_KILL_CYCLES must be a number"))
        .unwrap_or(100)
}

#[test]
fn acknowledged_records_survive_sigkill_at_any_instant() {
    if std::env::var_os(CHILD_DIR_ENV).is_some() {
        return; // Inside a child: only `child_appender` runs there.
    }
    let seed = std::env::var(SEED_ENV)
        .ok()
        .map(|s| s.parse().expect("SURETY_KILL_SEED must be a number"))
        .unwrap_or_else(rand::random::<u64>);
    let cycles = cycles();
    let dir: PathBuf = tempfile::Builder::new()
        .prefix("surety-process-kill-")
        .tempdir()
        .unwrap()
        .keep();
    eprintln!(
        "process_kill: seed {seed} ({SEED_ENV}), {cycles} cycles, data dir {}",
        dir.display()
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    // Every record ever acknowledged, by offset.
    let mut acked: BTreeMap<u64, Ack> = BTreeMap::new();
    // Every record ever seen in the log (acknowledged or not), by offset: once a reopen
    // exposes a record, it must stay, unchanged, at that offset.
    let mut known: Vec<Ack> = Vec::new();
    let mut ids: HashSet<u64> = HashSet::new();
    let (mut torn_tails, mut incomplete_segments, mut early_kills, mut partial_lines) =
        (0u64, 0u64, 0u64, 0u64);
    let mut point_reads = 0u64;
    let mut segments = 0;
    let (mut child_time, mut open_time, mut check_time) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);

    for run in 1..=cycles {
        let child_verify_active = rng.random_bool(0.8);
        let t0 = Instant::now();
        let child = run_and_kill(&dir, run, child_verify_active, &mut rng);
        let t1 = Instant::now();
        early_kills += u64::from(!child.saw_ready);
        partial_lines += u64::from(child.partial_tail);
        let mut fresh = Vec::new();
        for line in &child.lines {
            let Some((offset, ack)) = parse_ack(line) else {
                continue;
            };
            assert_eq!(
                ack.id >> 40,
                run,
                "run {run}: ack for a record of another run: {line:?}"
            );
            if let Some(prev) = acked.insert(offset, ack) {
                panic!("run {run}: offset {offset} acknowledged twice: {prev:?} and {ack:?}");
            }
            fresh.push(offset);
        }

        let parent_verify_active = rng.random_bool(0.8);
        let cfg = config(parent_verify_active);
        let tail = inspect_tail(&dir, &cfg);
        torn_tails += u64::from(tail.torn_tail);
        incomplete_segments += u64::from(tail.incomplete_segment);

        let log = Log::open_dir(&dir, cfg).unwrap_or_else(|e| {
            panic!(
                "run {run} (seed {seed}): reopening after SIGKILL failed: {e}\n\
                 child stderr:\n{}\ndata dir kept at {}",
                child.stderr,
                dir.display()
            )
        });
        let t2 = Instant::now();
        let end = log.durable_end();
        assert_eq!(log.start_offset(), 0, "run {run}: records vanished");
        assert!(
            end >= known.len() as u64,
            "run {run}: durable end went back from {} to {end} after a kill",
            known.len()
        );

        // Dense scan: offsets 0..end, each record CRC-checked by read_from, each one a
        // record some appender submitted, each id at most once, old ones unchanged.
        let mut next = 0u64;
        while next < end {
            let batch = log.read_from(next, 4096, usize::MAX).unwrap_or_else(|e| {
                panic!(
                    "run {run}: read_from({next}) failed: {e}; dir {}",
                    dir.display()
                )
            });
            assert!(
                !batch.is_empty(),
                "run {run}: read_from({next}) returned nothing below durable end {end}"
            );
            for r in batch {
                assert_eq!(r.offset, next, "run {run}: gap or disorder in offsets");
                let seen = Ack {
                    id: u64::from_be_bytes(
                        r.key
                            .as_deref()
                            .and_then(|k| k.try_into().ok())
                            .unwrap_or_else(|| panic!("run {run}: bad key: {}", describe(&r))),
                    ),
                    crc: crc32c::crc32c(&r.payload),
                };
                if let Some(before) = known.get(next as usize) {
                    assert_eq!(
                        *before, seen,
                        "run {run}: record at offset {next} changed after a kill"
                    );
                } else {
                    let id = verified_id(&r);
                    assert!(ids.insert(id), "run {run}: record id {id} appears twice");
                    known.push(seen);
                }
                next += 1;
            }
        }
        assert!(
            log.read_from(end, 10, usize::MAX).unwrap().is_empty(),
            "run {run}: records served at or past the durable end {end}"
        );

        // Every acknowledged record, from every run so far, is there and unchanged.
        for (&offset, ack) in &acked {
            assert!(
                offset < end,
                "run {run}: acknowledged offset {offset} (id {}) lost: durable end is {end}",
                ack.id
            );
            assert_eq!(
                known[offset as usize], *ack,
                "run {run}: acknowledged offset {offset} holds a different record"
            );
        }
        // Point reads through the index: all of this run's acks, plus a sample of older.
        let sample = (0..64).filter_map(|_| {
            let o = rng.random_range(0..end.max(1));
            acked.contains_key(&o).then_some(o)
        });
        for offset in fresh.iter().copied().chain(sample) {
            let ack = acked[&offset];
            let r = log
                .read(offset)
                .unwrap_or_else(|e| panic!("run {run}: read({offset}) failed: {e}"))
                .unwrap_or_else(|| panic!("run {run}: acknowledged offset {offset} missing"));
            assert_eq!(r.offset, offset);
            assert_eq!(r.key.as_deref(), Some(&ack.id.to_be_bytes()[..]));
            assert_eq!(
                crc32c::crc32c(&r.payload),
                ack.crc,
                "run {run}: offset {offset}"
            );
            point_reads += 1;
        }
        segments = log.segment_count();
        drop(log);
        child_time += t1 - t0;
        open_time += t2 - t1;
        check_time += t2.elapsed();
    }

    assert!(
        !acked.is_empty(),
        "no child ever acknowledged a record: the test checked nothing"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    println!(
        "process_kill: {cycles} cycles in {:.1?}: {} acked records checked every cycle \
         ({} records in {segments} segments, {point_reads} point reads), {torn_tails} torn tails and \
         {incomplete_segments} half-created segments found before recovery, \
         {early_kills} kills before the child was ready, {partial_lines} cut-off ack lines; \
         time in children {child_time:.1?}, reopening {open_time:.1?}, checking {check_time:.1?}",
        started.elapsed(),
        acked.len(),
        known.len(),
    );
}
