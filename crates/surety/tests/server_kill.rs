//! Guards that every message a producer got an answer for is stored exactly once even when the `surety serve` process is SIGKILLed mid-flight and the producer retries (no loss from the kill, no duplicates from retries), and that consumed-and-acked messages are not redelivered after restart.
//!
//! One data directory and one fixed port for the whole test. Each cycle: the server that
//! is up gets load from this process over gRPC (`surety-client`): [`PRODUCERS`] tasks,
//! each a `Producer` with a fixed identity resumed at its next sequence every cycle,
//! publishing payloads `p<task>-<seq>` with retries on, and in some cycles a `Consumer`
//! on group `g` that records every delivery and acks it. At a random instant the server
//! is SIGKILLed; after a random outage a new server starts on the same port, the
//! publishes in flight during the kill complete against it (their retries outlive the
//! outage), and only then the cycle's tasks stop. Finally a consumer drains `g`, the
//! server is stopped with SIGTERM, and the broker is opened directly to audit:
//!
//! - every publish answered `Ok` is stored at its `(partition, offset)` with its payload;
//! - no payload is stored twice (answered or not), and nothing unknown is stored;
//! - `duplicate: true` only answers a publish that was in flight across a kill;
//! - deliveries of one message carry a given delivery count once, and counts handed out
//!   by an earlier server are never handed out again or undercut;
//! - a message whose ack was answered (the consumer stopped gracefully with no refused
//!   settlement) is never delivered again, by any later server;
//! - every stored message is delivered at least once and group `g` ends fully acked.
//!
//! `SURETY_SERVER_KILL_CYCLES` (default 15) sets the number of kills;
//! `SURETY_SERVER_KILL_SEED` replays this test's random choices (kill instants, outages,
//! which cycles consume, batch sizes; scheduling stays nondeterministic).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Rng, listen_addr, ready_line};
use surety_broker::{Broker, BrokerOptions};
use surety_client::{
    Client, ConsumeError, Consumer, ConsumerStats, Delivery, Message, Producer, PublishError,
    RetryPolicy, StopHandle,
};

const CYCLES_ENV: &str = "SURETY_SERVER_KILL_CYCLES";
const SEED_ENV: &str = "SURETY_SERVER_KILL_SEED";

const TOPIC: &str = "t";
const GROUP: &str = "g";
/// Leases outlive an outage (a restart takes ~2 s in debug builds), so that acks resent
/// to the new server are accepted, yet deliveries cut off by a kill come back soon; many
/// deliveries allowed so that nothing is dead-lettered.
const TOPIC_CONFIG: &str = r#"{"partitions":2,"max_deliveries":1000,"ack_wait_ms":4000}"#;
const PRODUCERS: u64 = 3;
const SIGKILL: i32 = 9;
/// Longest wait for the ready line of a starting server.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

type Key = (u32, u64); // (partition, offset)

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|s| {
        s.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

// ---------------------------------------------------------------------------------------
// The server process.
// ---------------------------------------------------------------------------------------

struct ServerProc {
    child: Child,
    url: String,
    log: PathBuf,
}

/// A port below the ephemeral range (so no outgoing connection takes it while the server
/// is down), free right now.
fn pick_port(rng: &mut Rng) -> u16 {
    for _ in 0..200 {
        let port = rng.range(20_000, 32_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Starts `surety serve` on `port` and waits for its ready line. Its stderr goes to
/// `log` (a pipe nobody reads could fill up and stall it).
fn start_server(data: &Path, port: u16, log: PathBuf) -> ServerProc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_surety"));
    cmd.arg("serve")
        .arg("--data")
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&log).unwrap());
    for (k, _) in std::env::vars() {
        if k.starts_with("SURETY_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().unwrap();
    let Some(line) = ready_line(&mut child, READY_TIMEOUT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "surety serve on port {port} printed no ready line; stderr:\n{}",
            tail(&log)
        );
    };
    let addr = listen_addr(&line);
    assert_eq!(addr, format!("127.0.0.1:{port}"), "ready line {line:?}");
    ServerProc {
        child,
        url: format!("http://{addr}"),
        log,
    }
}

impl ServerProc {
    /// SIGKILL; the server must not have exited on its own before.
    fn kill(mut self, ctx: &str) {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(SIGKILL),
            "the server stopped on its own ({status}) before the kill; {ctx}; stderr:\n{}",
            tail(&self.log)
        );
    }

    /// SIGTERM; the server must exit 0.
    fn terminate(mut self, ctx: &str) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "exit {status} after SIGTERM; {ctx}; stderr:\n{}",
            tail(&self.log)
        );
    }
}

/// A failing test must not leave its server running.
impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn start(data: &Path, port: u16, logs: &Path, n: u64) -> ServerProc {
    let data = data.to_owned();
    let log = logs.join(format!("server-{n}.log"));
    tokio::task::spawn_blocking(move || start_server(&data, port, log))
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// The load: producers and a consumer in this process.
// ---------------------------------------------------------------------------------------

/// A publish answered `Ok`, per message.
#[derive(Debug, Clone)]
struct Answer {
    cycle: u64,
    payload: String,
    key: Key,
    duplicate: bool,
    /// A kill happened while the publish was in flight.
    spanned_kill: bool,
}

/// A delivery the consumer's handler saw (and returned `Ok` for).
#[derive(Debug, Clone)]
struct Seen {
    cycle: u64,
    key: Key,
    count: u32,
    payload: String,
}

#[derive(Debug, Default)]
struct Record {
    /// Every payload ever submitted, answered or not.
    sent: HashSet<String>,
    answers: Vec<Answer>,
    /// Payloads whose publish got no answer before the retry deadline, with the error.
    unconfirmed: Vec<(String, String)>,
    /// Publishes refused or answered inconsistently: always a violation.
    failures: Vec<String>,
    deliveries: Vec<Seen>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Kills so far; a publish that sees it change was in flight across a kill.
    kills: AtomicU64,
    /// Publishes in flight right now.
    in_flight: AtomicU64,
    record: Mutex<Record>,
}

fn producer_id(task: u64) -> String {
    format!("server-kill-producer-{task}")
}

fn producer_retry() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(250),
        multiplier: 2.0,
        jitter: 0.5,
        // Far longer than an outage (at most ~1 s including the restart).
        deadline: Duration::from_secs(20),
        attempt_timeout: Duration::from_secs(5),
    }
}

/// Publishes batches of 1..=3 until `stop`, starting at sequence `first`; returns the
/// next unused sequence. Only the publish in flight when `stop` is set runs on.
async fn produce(
    client: Client,
    task: u64,
    first: u64,
    cycle: u64,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
) -> u64 {
    let producer = Producer::builder(client)
        .identity(producer_id(task), first)
        .retry(producer_retry())
        .build();
    while !stop.load(Ordering::SeqCst) {
        let seq = producer.next_sequence();
        let n = rng.range(1, 4);
        let payloads: Vec<String> = (seq..seq + n).map(|s| format!("p{task}-{s}")).collect();
        shared
            .record
            .lock()
            .unwrap()
            .sent
            .extend(payloads.iter().cloned());
        let messages = payloads
            .iter()
            .map(|p| Message::new(p.as_bytes().to_vec()))
            .collect();
        let kills_before = shared.kills.load(Ordering::SeqCst);
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        let result = producer.publish_batch(TOPIC, messages).await;
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        let spanned_kill = shared.kills.load(Ordering::SeqCst) != kills_before;
        let mut record = shared.record.lock().unwrap();
        match result {
            Ok(results) => {
                for (i, (payload, r)) in payloads.iter().zip(&results).enumerate() {
                    if r.sequence != seq + i as u64 {
                        record.failures.push(format!(
                            "cycle {cycle}: {payload} answered with sequence {}",
                            r.sequence
                        ));
                    }
                    record.answers.push(Answer {
                        cycle,
                        payload: payload.clone(),
                        key: (r.partition(), r.offset()),
                        duplicate: r.duplicate,
                        spanned_kill,
                    });
                }
            }
            Err(e @ PublishError::Unconfirmed { .. }) => {
                let e = e.to_string();
                record
                    .unconfirmed
                    .extend(payloads.iter().map(|p| (p.clone(), e.clone())));
            }
            Err(e) => {
                record.failures.push(format!(
                    "cycle {cycle}: publish of {payloads:?} failed: {e}"
                ));
                break;
            }
        }
    }
    producer.next_sequence()
}

fn consumer_reconnect() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        multiplier: 2.0,
        jitter: 0.5,
        deadline: Duration::from_secs(30),
        attempt_timeout: Duration::from_secs(5),
    }
}

/// Runs a consumer on group `g` until `stop`; the handler records and returns `Ok`.
fn spawn_consumer(
    client: Client,
    cycle: u64,
    stop: StopHandle,
    shared: Arc<Shared>,
) -> tokio::task::JoinHandle<Result<ConsumerStats, ConsumeError>> {
    tokio::spawn(async move {
        Consumer::builder(client, TOPIC, GROUP)
            .max_in_flight(16)
            .reconnect(consumer_reconnect())
            .stop_with(stop)
            .run(move |d: Delivery| {
                let shared = shared.clone();
                async move {
                    shared.record.lock().unwrap().deliveries.push(Seen {
                        cycle,
                        key: (d.partition, d.offset()),
                        count: d.delivery_count,
                        payload: String::from_utf8_lossy(&d.payload).into_owned(),
                    });
                    Ok::<(), std::convert::Infallible>(())
                }
            })
            .await
    })
}

// ---------------------------------------------------------------------------------------
// The checks on what the clients saw, cycle by cycle.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Model {
    /// Every answered publish: where its payload is stored.
    by_payload: HashMap<String, Key>,
    by_key: BTreeMap<Key, String>,
    answers_checked: usize,
    duplicates: u64,
    spanned_kill: u64,
    /// Deliveries checked so far.
    deliveries_checked: usize,
    counts_seen: HashSet<(Key, u32)>,
    /// Highest delivery count per message handed out in an earlier cycle.
    max_count_before: HashMap<Key, u32>,
    /// Messages whose ack was answered, with the cycle it was answered in.
    acked: HashMap<Key, u64>,
    delivered: HashSet<Key>,
    violations: Vec<String>,
}

impl Model {
    fn violation(&mut self, what: String) {
        eprintln!("VIOLATION: {what}");
        self.violations.push(what);
    }

    /// Takes in the answers and deliveries recorded since the last call (all of `cycle`,
    /// whose tasks have ended). `acks_confirmed`: the cycle's consumer stopped gracefully
    /// with no refused settlement, so every delivery it saw was acked.
    fn apply(&mut self, cycle: u64, record: &Record, acks_confirmed: bool) {
        for f in &record.failures {
            if !self.violations.contains(f) {
                self.violation(f.clone());
            }
        }
        for a in record.answers[self.answers_checked..].iter().cloned() {
            self.duplicates += u64::from(a.duplicate);
            self.spanned_kill += u64::from(a.spanned_kill);
            if a.key.0 >= 2 {
                self.violation(format!("{a:?}: no such partition"));
            }
            if a.duplicate && !a.spanned_kill {
                self.violation(format!(
                    "{a:?}: answered duplicate although no kill interrupted its publish"
                ));
            }
            if let Some(prev) = self.by_payload.insert(a.payload.clone(), a.key) {
                self.violation(format!(
                    "{} answered twice: at {prev:?} and at {:?}",
                    a.payload, a.key
                ));
            }
            if let Some(prev) = self.by_key.insert(a.key, a.payload.clone())
                && prev != a.payload
            {
                self.violation(format!(
                    "cycle {}: {:?} answered for {} but earlier for {prev}",
                    a.cycle, a.key, a.payload
                ));
            }
        }
        self.answers_checked = record.answers.len();

        let mut max_now: HashMap<Key, u32> = HashMap::new();
        let new = &record.deliveries[self.deliveries_checked..];
        for d in new {
            self.delivered.insert(d.key);
            if let Some(&acked_in) = self.acked.get(&d.key) {
                self.violation(format!(
                    "cycle {}: {:?} ({}) delivered again (count {}) after its ack was answered \
                     in cycle {acked_in}",
                    d.cycle, d.key, d.payload, d.count
                ));
            }
            if let Some(&before) = self.max_count_before.get(&d.key)
                && d.count <= before
            {
                self.violation(format!(
                    "cycle {}: {:?} delivered with count {}, but an earlier server handed out \
                     count {before}",
                    d.cycle, d.key, d.count
                ));
            }
            if !self.counts_seen.insert((d.key, d.count)) {
                self.violation(format!(
                    "cycle {}: {:?} delivered twice with count {}",
                    d.cycle, d.key, d.count
                ));
            }
            if let Some(want) = self.by_key.get(&d.key)
                && *want != d.payload
            {
                self.violation(format!(
                    "cycle {}: {:?} delivered {} but the publish of {want} was answered there",
                    d.cycle, d.key, d.payload
                ));
            }
            let m = max_now.entry(d.key).or_default();
            *m = (*m).max(d.count);
        }
        if acks_confirmed {
            for d in new {
                self.acked.entry(d.key).or_insert(cycle);
            }
        }
        for (key, c) in max_now {
            let before = self.max_count_before.entry(key).or_default();
            *before = (*before).max(c);
        }
        self.deliveries_checked = record.deliveries.len();
    }
}

/// `true` when the consumer stopped gracefully having every settlement accepted.
fn consumer_outcome(
    cycle: u64,
    result: Result<ConsumerStats, ConsumeError>,
    model: &mut Model,
) -> bool {
    match result {
        Ok(stats) => {
            if stats.nacked != 0 || stats.panicked != 0 {
                model.violation(format!("cycle {cycle}: the consumer nacked: {stats:?}"));
            }
            stats.settle_errors == 0
        }
        Err(e) => {
            model.violation(format!("cycle {cycle}: the consumer failed: {e}"));
            false
        }
    }
}

// ---------------------------------------------------------------------------------------
// The test.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_survives_sigkill_under_client_load() {
    let seed = env_number(SEED_ENV).unwrap_or_else(random_seed);
    let cycles = env_number(CYCLES_ENV).unwrap_or(15);
    let root: PathBuf = tempfile::Builder::new()
        .prefix("surety-server-kill-")
        .tempdir()
        .unwrap()
        .keep();
    let data = root.join("data");
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut rng = Rng(seed);
    let port = pick_port(&mut rng);
    let ctx = format!(
        "seed {seed} ({SEED_ENV}), port {port}, data dir {}, server logs in {}",
        data.display(),
        logs.display()
    );
    eprintln!("server_kill: {ctx}, {cycles} cycles");
    let started = Instant::now();

    let shared = Arc::new(Shared::default());
    let mut model = Model::default();
    let mut next_seq = [0u64; PRODUCERS as usize];
    let mut starts = 0u64;
    let mut server = start(&data, port, &logs, starts).await;
    starts += 1;
    let admin = Client::connect(&server.url, None).await.unwrap();
    let created = admin.create_topic(TOPIC, TOPIC_CONFIG).await.unwrap();
    assert_eq!(created.end_offsets.len(), 2, "{created:?}");

    let mut kills_mid_flight = 0u64;
    let mut consumer_cycles = 0u64;
    let mut confirmed_cycles = 0u64;
    let mut outage_total = Duration::ZERO;
    let mut restart_total = Duration::ZERO;
    for cycle in 1..=cycles {
        // A fresh connection per server; it stays in use across the kill and restart.
        let client = Client::connect(&server.url, None)
            .await
            .unwrap_or_else(|e| panic!("cycle {cycle}: connect: {e}; {ctx}"));
        let stop = Arc::new(AtomicBool::new(false));
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|task| {
                tokio::spawn(produce(
                    client.clone(),
                    task,
                    next_seq[task as usize],
                    cycle,
                    Rng(rng.next_u64()),
                    stop.clone(),
                    shared.clone(),
                ))
            })
            .collect();
        let consumer = rng.percent(60).then(|| {
            let stop = StopHandle::new();
            let task = spawn_consumer(client.clone(), cycle, stop.clone(), shared.clone());
            (stop, task)
        });

        tokio::time::sleep(Duration::from_millis(rng.range(100, 600))).await;
        let in_flight = shared.in_flight.load(Ordering::SeqCst);
        server.kill(&format!("cycle {cycle}; {ctx}"));
        shared.kills.fetch_add(1, Ordering::SeqCst);
        kills_mid_flight += u64::from(in_flight > 0);
        let outage = Instant::now();
        tokio::time::sleep(Duration::from_millis(rng.range(0, 200))).await;
        let restart = Instant::now();
        server = start(&data, port, &logs, starts).await;
        restart_total += restart.elapsed();
        starts += 1;
        outage_total += outage.elapsed();

        // Publishes in flight during the kill complete against the new server, and the
        // consumer's unanswered acks are sent to it again.
        stop.store(true, Ordering::SeqCst);
        if let Some((stop, _)) = &consumer {
            stop.stop();
        }
        for (task, p) in producers.into_iter().enumerate() {
            let next = tokio::time::timeout(Duration::from_secs(40), p)
                .await
                .unwrap_or_else(|_| panic!("cycle {cycle}: producer {task} hangs; {ctx}"))
                .unwrap();
            assert!(next >= next_seq[task]);
            next_seq[task] = next;
        }
        let mut acks_confirmed = false;
        if let Some((_, task)) = consumer {
            consumer_cycles += 1;
            let result = tokio::time::timeout(Duration::from_secs(40), task)
                .await
                .unwrap_or_else(|_| panic!("cycle {cycle}: the consumer does not stop; {ctx}"))
                .unwrap();
            acks_confirmed = consumer_outcome(cycle, result, &mut model);
            confirmed_cycles += u64::from(acks_confirmed);
        }
        {
            let record = shared.record.lock().unwrap();
            model.apply(cycle, &record, acks_confirmed);
        }
        // Every answered publish is within the new server's durable end offsets.
        let info = admin
            .describe_topic(TOPIC)
            .await
            .unwrap_or_else(|e| panic!("cycle {cycle}: describe: {e}; {ctx}"));
        let lost: Vec<String> = model
            .by_key
            .iter()
            .filter(|((p, o), _)| *o >= info.end_offsets[*p as usize])
            .map(|(k, payload)| format!("{payload} at {k:?}"))
            .collect();
        if !lost.is_empty() {
            model.violation(format!(
                "cycle {cycle}: answered publishes beyond the end offsets {:?} after restart: {}",
                info.end_offsets,
                lost.join(", ")
            ));
        }
        assert!(
            model.violations.is_empty(),
            "server_kill found {} violation(s) by cycle {cycle} ({ctx}):\n{}",
            model.violations.len(),
            model.violations.join("\n")
        );
    }
    let cycles_time = started.elapsed();

    // Drain group `g` on the last server: every stored message must be delivered at least
    // once, and the group must end with nothing left to deliver.
    let drain_started = Instant::now();
    let client = Client::connect(&server.url, None).await.unwrap();
    let stop = StopHandle::new();
    let drain_cycle = cycles + 1;
    let consumer = spawn_consumer(client, drain_cycle, stop.clone(), shared.clone());
    let drain_deadline = Instant::now() + Duration::from_secs(20);
    let end_offsets = loop {
        let info = admin.describe_topic(TOPIC).await.unwrap();
        let lag = info.groups.iter().find(|g| g.name == GROUP).map(|g| g.lag);
        let delivered: HashSet<Key> = {
            let record = shared.record.lock().unwrap();
            record.deliveries.iter().map(|d| d.key).collect()
        };
        let all_delivered = info.end_offsets.iter().enumerate().all(|(p, &end)| {
            (info.start_offsets[p]..end).all(|o| delivered.contains(&(p as u32, o)))
        });
        if lag == Some(0) && all_delivered {
            break info.end_offsets;
        }
        assert!(
            Instant::now() < drain_deadline,
            "draining group {GROUP} did not finish in 20 s (lag {lag:?}, all delivered: \
             {all_delivered}): {info:?}; {ctx}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.stop();
    let result = tokio::time::timeout(Duration::from_secs(20), consumer)
        .await
        .expect("the drain consumer does not stop")
        .unwrap();
    let acks_confirmed = consumer_outcome(drain_cycle, result, &mut model);
    {
        let record = shared.record.lock().unwrap();
        model.apply(drain_cycle, &record, acks_confirmed);
    }
    server.terminate(&ctx);
    let drain_time = drain_started.elapsed();

    // Audit the data directory itself.
    let broker = {
        let data = data.clone();
        tokio::task::spawn_blocking(move || Broker::open(&data, BrokerOptions::default()))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("opening the data directory: {e}"))
    };
    let info = broker.describe(TOPIC).await.unwrap();
    assert_eq!(
        info.end_offsets, end_offsets,
        "end offsets changed on reopen"
    );
    let total: u64 = info
        .end_offsets
        .iter()
        .zip(&info.start_offsets)
        .map(|(e, s)| e - s)
        .sum();
    // Everything, read through a fresh group; long leases so nothing comes back twice.
    let mut stored: BTreeMap<Key, String> = BTreeMap::new();
    loop {
        let got = broker
            .fetch(
                TOPIC,
                "audit",
                1000,
                Duration::ZERO,
                Some(Duration::from_secs(600)),
            )
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        for d in got {
            let key = (d.partition, d.message.offset);
            let payload = String::from_utf8_lossy(&d.message.payload).into_owned();
            if stored.insert(key, payload).is_some() {
                model.violation(format!("audit: {key:?} fetched twice by a fresh group"));
            }
        }
    }
    if stored.len() as u64 != total {
        model.violation(format!(
            "audit: a fresh group fetched {} messages, the end offsets say {total}",
            stored.len()
        ));
    }
    // Every task has ended: the record is final.
    let record = std::mem::take(&mut *shared.record.lock().unwrap());
    let mut where_stored: HashMap<&str, Key> = HashMap::new();
    for (key, payload) in &stored {
        if let Some(prev) = where_stored.insert(payload, *key) {
            model.violation(format!(
                "audit: payload {payload} stored twice: at {prev:?} and at {key:?}"
            ));
        }
        if !record.sent.contains(payload) {
            model.violation(format!(
                "audit: {key:?} holds {payload:?}, which was never sent"
            ));
        }
    }
    for (payload, key) in &model.by_payload.clone() {
        match stored.get(key) {
            Some(p) if p == payload => {}
            Some(p) => model.violation(format!(
                "audit: the publish of {payload} was answered {key:?}, which holds {p}"
            )),
            None => model.violation(format!(
                "audit: the publish of {payload} was answered {key:?}, which is not stored"
            )),
        }
    }
    for d in &record.deliveries {
        match stored.get(&d.key) {
            Some(p) if *p == d.payload => {}
            other => model.violation(format!(
                "audit: {d:?} was delivered, but the log holds {other:?} there"
            )),
        }
    }
    let never_delivered: Vec<&Key> = stored
        .keys()
        .filter(|k| !model.delivered.contains(k))
        .collect();
    if !never_delivered.is_empty() {
        model.violation(format!(
            "audit: {} stored messages never delivered to group {GROUP}: {never_delivered:?}",
            never_delivered.len()
        ));
    }
    let unconfirmed_stored = record
        .unconfirmed
        .iter()
        .filter(|(p, _)| where_stored.contains_key(p.as_str()))
        .count();
    let unanswered_stored = where_stored
        .keys()
        .filter(|p| !model.by_payload.contains_key(**p))
        .count();
    // Acked everything: group `g` has nothing left, and a fetch gets nothing.
    match info.groups.iter().find(|g| g.name == GROUP) {
        Some(g) if g.lag == 0 && g.stats.acked == total => {}
        other => model.violation(format!(
            "audit: group {GROUP} is not fully acked ({total} stored): {other:?}"
        )),
    }
    let again = broker
        .fetch(TOPIC, GROUP, 1000, Duration::ZERO, None)
        .await
        .unwrap();
    if !again.is_empty() {
        model.violation(format!(
            "audit: {} acked messages delivered again to group {GROUP} after restart, e.g. \
             {:?}",
            again.len(),
            (again[0].partition, again[0].message.offset)
        ));
    }
    broker.close();
    drop(broker);

    assert!(
        model.violations.is_empty(),
        "server_kill found {} violation(s) ({ctx}):\n{}",
        model.violations.len(),
        model.violations.join("\n")
    );
    assert!(
        !model.by_payload.is_empty() && !model.delivered.is_empty(),
        "nothing was published or delivered: the test checked nothing; {ctx}"
    );
    if cycles >= 5 {
        assert!(
            kills_mid_flight > 0 && model.spanned_kill > 0,
            "no kill ever hit a publish in flight: the test checked little; {ctx}"
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
    let redeliveries = record.deliveries.iter().filter(|d| d.count > 1).count();
    println!(
        "server_kill: seed {seed}, {cycles} cycles in {cycles_time:.1?} (outages \
         {outage_total:.1?}, restarts {restart_total:.1?}), drain {drain_time:.1?}, total \
         {:.1?}: {} publishes answered ({} duplicate:true, {} across a kill), {} unanswered \
         ({unconfirmed_stored} of them stored), {unanswered_stored} stored without an \
         answer, {kills_mid_flight} kills mid-flight; {} messages stored; {} deliveries \
         ({redeliveries} redeliveries) in {consumer_cycles} consumer cycles \
         ({confirmed_cycles} with every ack answered) + drain, {} messages with an answered \
         ack",
        started.elapsed(),
        model.by_payload.len(),
        model.duplicates,
        model.spanned_kill,
        record.unconfirmed.len(),
        stored.len(),
        record.deliveries.len(),
        model.acked.len(),
    );
}
