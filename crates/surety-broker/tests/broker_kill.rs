//! Guards the broker against `kill -9` under load: no acknowledged publish is lost, no
//! answered ack is undone, no delivery count is ever lower than (or equal to) one handed
//! out before, and after draining every message is acked or dead-lettered.
//!
//! The test binary re-runs itself as the child (`child_broker`, gated by an env var): it
//! opens a `Broker`, publishes from 3 tasks and consumes from 2 (ack ~85%, nack ~10%,
//! ignore ~5% so leases expire), printing one whole line per answered publish (`P`),
//! delivery received (`D`) and answered ack (`A`). The parent SIGKILLs it at a random
//! instant, reopens the broker and the partition logs, and checks everything printed in
//! every cycle so far, in one data directory. Finally it drains group "g" and checks the
//! group's counters and dead letters.
//!
//! `SURETY_BROKER_KILL_CYCLES` (default 30) sets the number of kills;
//! `SURETY_BROKER_KILL_SEED` replays the parent's random choices (the kill instants
//! themselves, and the children's scheduling, stay nondeterministic).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use surety_broker::topic::TopicConfigPatch;
use surety_broker::{Broker, BrokerOptions, LogName, PublishMessage, StoredMessage, TopicConfig};
use surety_log::{Log, LogConfig, VerifyOnOpen};

const CHILD_DIR_ENV: &str = "SURETY_BROKER_KILL_DIR";
const CHILD_CYCLE_ENV: &str = "SURETY_BROKER_KILL_CYCLE";
const CYCLES_ENV: &str = "SURETY_BROKER_KILL_CYCLES";
const SEED_ENV: &str = "SURETY_BROKER_KILL_SEED";

const TOPIC: &str = "t";
const GROUP: &str = "g";
const TOPIC_CONFIG: &str = r#"{"partitions":2,"max_deliveries":4,"ack_wait_ms":300,
    "retry_backoff":{"initial_ms":5,"max_ms":20,"multiplier":2.0,"jitter":0.0}}"#;
const MAX_DELIVERIES: u32 = 4;
const PUBLISHERS: u64 = 3;
const CONSUMERS: u64 = 2;
/// A child that was never killed stops on its own after this long.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);
const SIGKILL: i32 = 9;

type Key = (u32, u64); // (partition, offset)

fn options() -> BrokerOptions {
    BrokerOptions {
        segment_bytes: 1 << 20,
        ..BrokerOptions::default() // system clock
    }
}

fn topic_patch() -> TopicConfigPatch {
    serde_json::from_str(TOPIC_CONFIG).unwrap()
}

/// The partition logs' configuration as the broker derives it, but checking every record
/// at open.
fn partition_log_config(config: &TopicConfig) -> LogConfig {
    LogConfig {
        verify_on_open: VerifyOnOpen::All,
        ..config.log_config(&LogName::Partition(0), options().segment_bytes)
    }
}

// ---------------------------------------------------------------------------------------
// The child: publishes and consumes until killed.
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

fn child_fail(what: &str) -> ! {
    eprintln!("child_broker: {what}");
    let _ = std::io::stderr().flush();
    std::process::exit(3);
}

/// Not a test of its own: the child process the kill test starts (with `--ignored`) and
/// SIGKILLs. Ignored, so that it never counts as a passing test.
#[test]
#[ignore = "the child process of the kill test; it starts this itself"]
fn child_broker() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        child_fail("run only as the kill test's child (it sets the data directory)");
    };
    let cycle: u64 = std::env::var(CHILD_CYCLE_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| child_fail("missing cycle number"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| child_fail(&format!("runtime: {e}")));
    runtime.block_on(async move {
        let broker = Broker::open(&dir, options())
            .unwrap_or_else(|e| child_fail(&format!("open failed: {e}")));
        broker
            .put_topic(TOPIC, &topic_patch())
            .await
            .unwrap_or_else(|e| child_fail(&format!("put_topic failed: {e}")));
        // The leading newline ends the harness's "test child_broker ... " line.
        emit("\nREADY\n");
        let deadline = Instant::now() + CHILD_LIFETIME;
        let mut tasks = Vec::new();
        for task in 0..PUBLISHERS {
            let broker = broker.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(cycle << 8 | task);
                let producer = format!("pub-{task}-{cycle}");
                let mut seq = 0u64;
                while Instant::now() < deadline {
                    let n = rng.random_range(1..=4u64);
                    let ids: Vec<String> = (seq..seq + n)
                        .map(|s| format!("c{cycle}-p{task}-s{s}"))
                        .collect();
                    let messages = ids
                        .iter()
                        .zip(seq..)
                        .map(|(id, s)| PublishMessage {
                            payload: id.as_bytes().to_vec(),
                            producer_id: Some(producer.clone()),
                            sequence: Some(s),
                            ..PublishMessage::default()
                        })
                        .collect();
                    seq += n;
                    let results = broker
                        .publish(TOPIC, messages)
                        .await
                        .unwrap_or_else(|e| child_fail(&format!("publish failed: {e}")));
                    let lines: String = ids
                        .iter()
                        .zip(&results)
                        .map(|(id, r)| {
                            if r.duplicate {
                                child_fail(&format!("fresh message {id} reported duplicate"));
                            }
                            format!("P {id} {} {}\n", r.partition, r.offset)
                        })
                        .collect();
                    emit(&lines);
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..10))).await;
                }
            }));
        }
        for task in 0..CONSUMERS {
            let broker = broker.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(cycle << 8 | 0x80 | task);
                while Instant::now() < deadline {
                    let got = broker
                        .fetch(TOPIC, GROUP, 20, Duration::from_millis(50), None)
                        .await
                        .unwrap_or_else(|e| child_fail(&format!("fetch failed: {e}")));
                    if got.is_empty() {
                        continue;
                    }
                    let lines: String = got
                        .iter()
                        .map(|d| {
                            format!(
                                "D {} {} {}\n",
                                d.partition, d.message.offset, d.delivery_count
                            )
                        })
                        .collect();
                    emit(&lines);
                    // "Processing".
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..5))).await;
                    let (mut acks, mut nacks) = (Vec::new(), Vec::new());
                    for d in &got {
                        match rng.random_range(0..100) {
                            0..85 => acks.push(d),
                            85..95 => nacks.push(d),
                            _ => {} // never answered: the lease expires
                        }
                    }
                    if !nacks.is_empty() {
                        let receipts: Vec<String> =
                            nacks.iter().map(|d| d.receipt.clone()).collect();
                        // An expired lease makes this fail; that is fine.
                        let _ = broker
                            .nack(TOPIC, GROUP, &receipts, Duration::ZERO, "test nack")
                            .await;
                    }
                    if !acks.is_empty() {
                        let receipts: Vec<String> =
                            acks.iter().map(|d| d.receipt.clone()).collect();
                        // `I`: an ack is about to be sent. A kill after the ack is durable
                        // but before its `A` line is printed leaves only this line.
                        let intents: String = acks
                            .iter()
                            .map(|d| {
                                format!(
                                    "I {} {} {}\n",
                                    d.partition, d.message.offset, d.delivery_count
                                )
                            })
                            .collect();
                        emit(&intents);
                        // All or nothing: on an error (an expired lease) nothing is acked.
                        if let Ok(changed) = broker.ack(TOPIC, GROUP, &receipts).await {
                            // `A`: this ack settled the message. When some of the batch
                            // were already settled (a late ack after the lease expired and
                            // the message was acked or dead-lettered elsewhere), which ones
                            // is ambiguous: `S` lines only count for the final accounting.
                            let tag = if changed == acks.len() { 'A' } else { 'S' };
                            let lines: String = acks
                                .iter()
                                .map(|d| {
                                    format!(
                                        "{tag} {} {} {}\n",
                                        d.partition, d.message.offset, d.delivery_count
                                    )
                                })
                                .collect();
                            emit(&lines);
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

// ---------------------------------------------------------------------------------------
// The parent: kill, reopen, verify, repeat; then drain.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    Published {
        id: String,
        key: Key,
    },
    Delivered {
        key: Key,
        count: u32,
    },
    Acked {
        key: Key,
        count: u32,
    },
    /// Acked in a batch where some were already settled: ambiguous.
    Settled {
        key: Key,
    },
    /// About to ack: the ack may have happened although no answer was printed.
    Intent {
        key: Key,
    },
}

fn parse_line(line: &str) -> Option<Line> {
    let body = line.strip_suffix('\n').unwrap_or(line);
    let mut parts = body.split(' ');
    let tag = parts.next()?;
    if !matches!(tag, "P" | "D" | "A" | "S" | "I") || body.len() < 2 || !body[1..].starts_with(' ')
    {
        return None; // harness chatter
    }
    let parsed = (|| {
        let out = match tag {
            "P" => {
                let id = parts.next()?.to_owned();
                let key = (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
                Line::Published { id, key }
            }
            _ => {
                let key = (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
                let count = parts.next()?.parse().ok()?;
                match tag {
                    "D" => Line::Delivered { key, count },
                    "A" => Line::Acked { key, count },
                    "I" => Line::Intent { key },
                    _ => Line::Settled { key },
                }
            }
        };
        parts.next().is_none().then_some(out)
    })();
    Some(parsed.unwrap_or_else(|| panic!("malformed line from child: {line:?}")))
}

struct ChildRun {
    lines: Vec<String>,
    stderr: String,
    saw_ready: bool,
}

fn run_and_kill(dir: &Path, cycle: u64, rng: &mut StdRng) -> ChildRun {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "child_broker",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_CYCLE_ENV, cycle.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let out_reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut lines = Vec::new();
        loop {
            let mut buf = Vec::new();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                // The kill cut this line short: whatever it reported may or may not have
                // happened, so it is not counted.
                Ok(_) if buf.last() != Some(&b'\n') => break,
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
        lines
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    // Mostly kill under load; sometimes soon after spawn, which can land inside recovery.
    let early = rng.random_bool(0.1);
    if early {
        std::thread::sleep(Duration::from_millis(rng.random_range(0..50)));
    } else {
        let _ = ready_rx.recv_timeout(Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(rng.random_range(50..400)));
    }
    child.kill().expect("kill child");
    let status = child.wait().expect("wait child");
    let lines = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    let saw_ready = lines.iter().any(|l| l == "READY\n");
    assert_eq!(
        status.signal(),
        Some(SIGKILL),
        "cycle {cycle}: the child stopped on its own ({status}) before the kill; stderr:\n{stderr}"
    );
    assert!(
        early || saw_ready,
        "cycle {cycle}: the child never became ready; stderr:\n{stderr}"
    );
    ChildRun {
        lines,
        stderr,
        saw_ready,
    }
}

/// Everything every child reported, accumulated over cycles, and the checks on it.
#[derive(Default)]
struct Model {
    /// Every answered publish: where its payload id was stored.
    published: BTreeMap<Key, String>,
    ids: HashMap<String, Key>,
    /// Every answered ack, with the cycle it was answered in.
    acked: HashMap<Key, (u64, u32)>,
    /// Acks answered Ok in a batch that held already-settled messages.
    settled_ambiguous: HashSet<Key>,
    /// Acks sent, answered or not (a kill may have cut the answer off).
    ack_intents: HashSet<Key>,
    /// Highest delivery count printed per message in earlier cycles.
    max_count_before: HashMap<Key, u32>,
    /// Highest delivery count printed per message in the current cycle.
    max_count_now: HashMap<Key, u32>,
    /// Every (message, delivery count) ever handed out.
    counts_seen: HashSet<(Key, u32)>,
    deliveries: u64,
    violations: Vec<String>,
}

impl Model {
    fn violation(&mut self, what: String) {
        eprintln!("VIOLATION: {what}");
        self.violations.push(what);
    }

    /// Applies one cycle's lines, in the order the child printed them.
    fn apply(&mut self, cycle: u64, lines: &[String]) {
        for line in lines {
            match parse_line(line) {
                None => {}
                Some(Line::Published { id, key }) => {
                    if let Some(prev) = self.ids.insert(id.clone(), key) {
                        self.violation(format!(
                            "cycle {cycle}: payload {id} published twice: at {prev:?} and {key:?}"
                        ));
                    }
                    if let Some(prev) = self.published.insert(key, id.clone()) {
                        self.violation(format!(
                            "cycle {cycle}: {key:?} answered for {id} but earlier for {prev}: \
                             an acknowledged publish was overwritten"
                        ));
                    }
                }
                Some(Line::Delivered { key, count }) => {
                    self.deliveries += 1;
                    if !(1..=MAX_DELIVERIES).contains(&count) {
                        self.violation(format!(
                            "cycle {cycle}: {key:?} delivered with count {count}"
                        ));
                    }
                    if let Some(&(ack_cycle, ack_count)) = self.acked.get(&key) {
                        self.violation(format!(
                            "cycle {cycle}: {key:?} delivered again (count {count}) after its ack \
                             (count {ack_count}) was answered in cycle {ack_cycle}: an ack was undone"
                        ));
                    }
                    if let Some(&before) = self.max_count_before.get(&key)
                        && count <= before
                    {
                        self.violation(format!(
                            "cycle {cycle}: {key:?} delivered with count {count}, but count \
                             {before} was already handed out before a kill"
                        ));
                    }
                    if !self.counts_seen.insert((key, count)) {
                        self.violation(format!(
                            "cycle {cycle}: {key:?} delivered twice with the same count {count}"
                        ));
                    }
                    let now = self.max_count_now.entry(key).or_default();
                    *now = (*now).max(count);
                }
                Some(Line::Acked { key, count }) => {
                    self.acked.entry(key).or_insert((cycle, count));
                }
                Some(Line::Settled { key }) => {
                    self.settled_ambiguous.insert(key);
                }
                Some(Line::Intent { key }) => {
                    self.ack_intents.insert(key);
                }
            }
        }
        for (key, c) in self.max_count_now.drain() {
            let before = self.max_count_before.entry(key).or_default();
            *before = (*before).max(c);
        }
    }
}

fn cycles() -> u64 {
    std::env::var(CYCLES_ENV)
        .ok()
        .map(|s| {
            s.parse()
                .expect("SURETY_BROKER_KILL_CYCLES must be a number")
        })
        .unwrap_or(30)
}

/// Reads every record of partition `p` straight from its log (the broker must be closed).
fn read_partition(dir: &Path, config: &TopicConfig, p: u32) -> Vec<StoredMessage> {
    let log = Log::open_dir(
        dir.join("topics").join(TOPIC).join(format!("p{p}")),
        partition_log_config(config),
    )
    .unwrap_or_else(|e| panic!("opening partition {p} directly: {e}"));
    let mut out = Vec::new();
    let mut next = log.start_offset();
    loop {
        let batch = log.read_from(next, 4096, 16 << 20).unwrap();
        let Some(last) = batch.last() else { break };
        next = last.offset + 1;
        out.extend(batch.into_iter().map(StoredMessage::from_record));
    }
    log.close();
    out
}

#[test]
fn broker_survives_sigkill_under_load() {
    if std::env::var_os(CHILD_DIR_ENV).is_some() {
        return; // Inside a child: only `child_broker` runs there.
    }
    let seed = std::env::var(SEED_ENV)
        .ok()
        .map(|s| s.parse().expect("SURETY_BROKER_KILL_SEED must be a number"))
        .unwrap_or_else(rand::random::<u64>);
    let cycles = cycles();
    let dir: PathBuf = tempfile::Builder::new()
        .prefix("surety-broker-kill-")
        .tempdir()
        .unwrap()
        .keep();
    let ctx = format!("seed {seed} ({SEED_ENV}), data dir {}", dir.display());
    eprintln!("broker_kill: {ctx}, {cycles} cycles");
    let mut rng = StdRng::seed_from_u64(seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut model = Model::default();
    let mut early_kills = 0u64;
    let mut child_time = Duration::ZERO;

    for cycle in 1..=cycles {
        let t0 = Instant::now();
        let child = run_and_kill(&dir, cycle, &mut rng);
        child_time += t0.elapsed();
        early_kills += u64::from(!child.saw_ready);
        model.apply(cycle, &child.lines);

        if !dir.join("topics").join(TOPIC).join("topic.json").exists() {
            assert!(
                model.published.is_empty(),
                "cycle {cycle}: topic config vanished; {ctx}"
            );
            continue; // killed before the topic was ever created
        }
        // Reopen the broker: recovery must succeed and cover every answered publish.
        let broker = Broker::open(&dir, options()).unwrap_or_else(|e| {
            panic!(
                "cycle {cycle}: reopening after SIGKILL failed: {e}\nchild stderr:\n{}\n{ctx}",
                child.stderr
            )
        });
        let mut errs = Vec::new();
        let info = rt.block_on(broker.describe(TOPIC)).unwrap();
        for (&(p, offset), id) in &model.published {
            let end = info.end_offsets[p as usize];
            if offset >= end {
                errs.push(format!(
                    "cycle {cycle}: published {id} at ({p}, {offset}) lost: end offset {end}"
                ));
            }
        }
        for g in &info.groups {
            if !g.stats.is_conserved() {
                errs.push(format!(
                    "cycle {cycle}: group {} not conserved: {g:?}",
                    g.name
                ));
            }
        }
        broker.close();
        drop(broker);

        // Every answered publish holds exactly its payload, and no payload is stored twice.
        let mut stored: HashMap<String, Key> = HashMap::new();
        for p in 0..info.config.partitions {
            for m in read_partition(&dir, &info.config, p) {
                let id = String::from_utf8_lossy(&m.payload).into_owned();
                if let Some(prev) = stored.insert(id.clone(), (p, m.offset)) {
                    errs.push(format!(
                        "cycle {cycle}: payload {id} stored twice: {prev:?} and {:?}",
                        (p, m.offset)
                    ));
                }
                if let Some(want) = model.published.get(&(p, m.offset))
                    && *want != id
                {
                    errs.push(format!(
                        "cycle {cycle}: ({p}, {}) holds {id}, but the publish of {want} was \
                         answered with that offset",
                        m.offset
                    ));
                }
            }
        }
        for e in errs {
            model.violation(e);
        }
        assert!(
            model.violations.is_empty(),
            "broker_kill found {} violation(s) by cycle {cycle} ({ctx}):\n{}",
            model.violations.len(),
            model.violations.join("\n")
        );
    }
    let cycles_time = started.elapsed();

    // Drain: fetch and ack everything until the group has no lag.
    let drain_started = Instant::now();
    let broker = Broker::open(&dir, options()).unwrap();
    let mut drain_lines = Vec::new();
    let (info, dead) = rt.block_on(async {
        let drain_deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = broker.describe(TOPIC).await.unwrap();
            let lag = info.groups.iter().find(|g| g.name == GROUP).map(|g| g.lag);
            if lag == Some(0) || (lag.is_none() && info.end_offsets.iter().all(|&e| e == 0)) {
                break;
            }
            assert!(
                Instant::now() < drain_deadline,
                "drain did not finish in 30 s: {info:?}; {ctx}"
            );
            let got = broker
                .fetch(TOPIC, GROUP, 100, Duration::from_millis(50), None)
                .await
                .unwrap();
            if got.is_empty() {
                continue;
            }
            for d in &got {
                drain_lines.push(format!(
                    "D {} {} {}\n",
                    d.partition, d.message.offset, d.delivery_count
                ));
            }
            let receipts: Vec<String> = got.iter().map(|d| d.receipt.clone()).collect();
            broker.ack(TOPIC, GROUP, &receipts).await.unwrap();
            for d in &got {
                drain_lines.push(format!(
                    "A {} {} {}\n",
                    d.partition, d.message.offset, d.delivery_count
                ));
            }
        }
        let info = broker.describe(TOPIC).await.unwrap();
        let dead = broker.dead_letters(TOPIC, GROUP).await.unwrap();
        (info, dead)
    });
    broker.close();
    drop(broker);
    model.apply(cycles + 1, &drain_lines);

    let group = info
        .groups
        .iter()
        .find(|g| g.name == GROUP)
        .unwrap_or_else(|| panic!("group {GROUP} does not exist after draining: {info:?}"));
    let s = &group.stats;
    let total: u64 = info.end_offsets.iter().sum();
    if !s.is_conserved() {
        model.violation(format!("after drain: not conserved: {s:?}"));
    }
    if s.pending + s.in_flight != 0 {
        model.violation(format!("after drain: still pending or in flight: {s:?}"));
    }
    if s.acked + s.dead_lettered != s.accepted || s.accepted != total {
        model.violation(format!(
            "after drain: acked + dead-lettered != accepted ({total} stored): {s:?}"
        ));
    }
    if s.acked < model.acked.len() as u64 {
        model.violation(format!(
            "after drain: {} acks were answered but the group counts {s:?}",
            model.acked.len()
        ));
    }
    let mut dead_keys: HashMap<Key, String> = HashMap::new();
    for dl in &dead {
        let key = (dl.partition, dl.offset);
        let id = String::from_utf8_lossy(&dl.message.payload).into_owned();
        if dead_keys.insert(key, id).is_some() {
            model.violation(format!("dead-lettered twice: {key:?}"));
        }
        if model.acked.contains_key(&key) {
            model.violation(format!(
                "{key:?} is dead-lettered although its ack was answered: {:?}",
                model.acked[&key]
            ));
        }
    }
    let mut missing = Vec::new();
    let mut unanswered_acks = 0u64;
    for (key, id) in &model.published {
        match dead_keys.get(key) {
            Some(dl_id) if dl_id != id => missing.push(format!(
                "{key:?}: published {id} but dead letter holds {dl_id}"
            )),
            Some(_) => {}
            None if model.acked.contains_key(key) || model.settled_ambiguous.contains(key) => {}
            // Acked by a child that was killed before it could print the answer.
            None if model.ack_intents.contains(key) => unanswered_acks += 1,
            None => missing.push(format!("{key:?} ({id}) neither acked nor dead-lettered")),
        }
    }
    if !missing.is_empty() {
        model.violation(format!(
            "after drain, {} published messages unaccounted for:\n{}",
            missing.len(),
            missing.join("\n")
        ));
    }
    assert!(
        model.violations.is_empty(),
        "broker_kill found {} violation(s) ({ctx}):\n{}",
        model.violations.len(),
        model.violations.join("\n")
    );
    assert!(
        !model.published.is_empty() && !model.acked.is_empty(),
        "no child ever published or acked: the test checked nothing"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    println!(
        "broker_kill: {cycles} cycles in {cycles_time:.1?} ({child_time:.1?} in children, \
         {early_kills} early kills), drain {:.1?}: {} publishes, {} deliveries, {} acks \
         ({} ambiguous, {unanswered_acks} cut off by a kill) checked; group {s:?}, {} live dead letters",
        drain_started.elapsed(),
        model.published.len(),
        model.deliveries,
        model.acked.len(),
        model.settled_ambiguous.len(),
        dead.len()
    );
}
