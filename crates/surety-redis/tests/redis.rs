//! surety-redis against a real Redis: the machine's (7.0 on 6379, `SURETY_TEST_REDIS_URL`,
//! no persistence) for semantics, and one of its own started by scripts/redis-durable
//! (AOF, `appendfsync always`) for the durability path and the SIGKILL cases. Outside CI
//! a missing Redis skips a test with the reason printed; under `CI=true` it fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use surety_core::{
    Admin, Batch, Confirm, ErrorKind, Message, Outcome, Publisher, Selection, Session,
    SessionEvent, Settle, SettleOutcome, StampedMessage, Subscriber, Subscription, TopicSpec,
};
use surety_redis::{RedisOptions, RedisTransport};

const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

fn url() -> String {
    std::env::var("SURETY_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn options() -> RedisOptions {
    RedisOptions {
        reclaim_interval: Duration::from_millis(50),
        nak_backoff_initial: Duration::from_millis(100),
        ..RedisOptions::default()
    }
}

/// The machine's Redis, or `None` (skipped, reason printed) outside CI.
async fn machine() -> Option<RedisTransport> {
    match RedisTransport::connect(&url(), options()).await {
        Ok(t) => Some(t),
        Err(e) if !ci() => {
            println!("SKIPPED: no Redis at {} ({e})", url());
            None
        }
        Err(e) => panic!("CI=true and no Redis at {}: {e}", url()),
    }
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{ns}-{}", N.fetch_add(1, Ordering::Relaxed))
}

fn stamped(producer: &str, seq: u64, payload: &str) -> StampedMessage {
    StampedMessage {
        message: Message::new(payload),
        producer_id: producer.into(),
        sequence: seq,
    }
}

async fn topic(t: &RedisTransport, ack_wait: Duration, max_deliveries: u32) -> String {
    let name = unique("t");
    t.create_topic(
        &name,
        &TopicSpec {
            ack_wait: Some(ack_wait),
            max_deliveries: Some(max_deliveries),
            ..TopicSpec::default()
        },
    )
    .await
    .unwrap();
    name
}

async fn session(
    t: &RedisTransport,
    topic: &str,
    group: &str,
    lease: Duration,
) -> Box<dyn Session> {
    t.subscribe(&Subscription {
        topic: topic.to_owned(),
        group: group.to_owned(),
        credits: 16,
        lease: Some(lease),
    })
    .await
    .unwrap()
}

/// The next deliveries, within `within`.
async fn deliveries(s: &mut Box<dyn Session>, within: Duration) -> Vec<surety_core::Delivery> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.next()).await {
            Err(_) => return Vec::new(),
            Ok(Ok(SessionEvent::Deliveries(d))) => return d,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("session ended: {e}"),
        }
    }
}

async fn settled(s: &mut Box<dyn Session>, id: u64) -> Vec<SettleOutcome> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("a settlement answer")
            .unwrap()
        {
            SessionEvent::Settled { id: got, outcomes } if got == id => return outcomes,
            _ => {}
        }
    }
}

async fn xlen(t: &RedisTransport, key: &str) -> i64 {
    let mut c = t.client().get_multiplexed_async_connection().await.unwrap();
    redis::cmd("XLEN")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_machines_redis_is_reported_unsafe_and_refused_under_require_fsync() {
    let Some(t) = machine().await else { return };
    let d = t.durability().clone();
    if d.is_safe() {
        println!("SKIPPED: the Redis at {} fsyncs every write", url());
        return;
    }
    assert_eq!(t.capabilities_confirm(), d.confirm);
    assert!(
        d.to_string().contains("may not survive a power loss"),
        "{d}"
    );
    let e = RedisTransport::connect(
        &url(),
        RedisOptions {
            require_fsync: true,
            ..options()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        (e.kind, e.outcome),
        (ErrorKind::Unsupported, Outcome::Refused)
    );
    assert!(e.message.contains("appendfsync always"), "{}", e.message);
}

trait ConfirmOf {
    fn capabilities_confirm(&self) -> Confirm;
}

impl ConfirmOf for RedisTransport {
    fn capabilities_confirm(&self) -> Confirm {
        surety_core::Capable::capabilities(self).confirm
    }
}

#[tokio::test]
async fn two_producers_retrying_one_sequence_concurrently_store_it_once() {
    let Some(t) = machine().await else { return };
    let name = topic(&t, Duration::from_secs(30), 5).await;
    let other = RedisTransport::connect(&url(), options()).await.unwrap();
    let batch = Batch::new(
        (1..=50)
            .map(|s| stamped("p", s, &format!("m{s}")))
            .collect(),
    );
    let runs: Vec<_> = (0..8)
        .map(|i| {
            let (t, other, batch, name) = (t.clone(), other.clone(), batch.clone(), name.clone());
            tokio::spawn(async move {
                let via = if i % 2 == 0 { t } else { other };
                via.publish(&name, &batch).await.unwrap()
            })
        })
        .collect();
    let mut answers = Vec::new();
    for r in runs {
        answers.push(r.await.unwrap());
    }
    let keys = t.keys(&name).unwrap();
    assert_eq!(
        xlen(&t, &keys.stream).await,
        50,
        "each sequence stored once"
    );
    let first: Vec<_> = answers[0]
        .iter()
        .map(|a| a.as_ref().unwrap().position)
        .collect();
    let mut fresh = 0;
    for a in &answers {
        for (i, one) in a.iter().enumerate() {
            let p = one.as_ref().unwrap();
            assert_eq!(
                p.position, first[i],
                "every answer names the one stored entry"
            );
            fresh += usize::from(!p.duplicate);
        }
    }
    assert_eq!(fresh, 50, "exactly one attempt stored each message");
    // Below the window: refused, not stored again.
    let small = RedisTransport::connect(
        &url(),
        RedisOptions {
            dedupe_window: 100,
            ..options()
        },
    )
    .await
    .unwrap();
    let far = Batch::new(vec![stamped("q", 1000, "x")]);
    small.publish(&name, &far).await.unwrap()[0]
        .as_ref()
        .unwrap();
    let old = Batch::new(vec![stamped("q", 5, "y")]);
    let e = small.publish(&name, &old).await.unwrap()[0]
        .clone()
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::SequenceTooOld);
}

#[tokio::test]
async fn a_late_ack_of_a_reclaimed_entry_is_refused_stale() {
    let Some(t) = machine().await else { return };
    let lease = Duration::from_millis(400);
    let name = topic(&t, lease, 5).await;
    t.publish(&name, &Batch::new(vec![stamped("p", 1, "only")]))
        .await
        .unwrap();
    let mut a = session(&t, &name, "g", lease).await;
    let first = deliveries(&mut a, Duration::from_secs(5)).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].delivery_count, 1);
    // A stops taking more (drain) and overruns its lease; B reclaims the entry.
    a.drain();
    let mut b = session(&t, &name, "g", lease).await;
    let again = deliveries(&mut b, Duration::from_secs(5)).await;
    assert_eq!(again.len(), 1, "reclaimed after the lease");
    assert_eq!(again[0].delivery_count, 2);
    assert!(first[0].lease_until_ms.unwrap() <= again[0].lease_until_ms.unwrap());
    a.settle(1, Settle::Ack(vec![first[0].receipt.clone()]));
    match &settled(&mut a, 1).await[..] {
        [SettleOutcome::Refused(e)] => assert_eq!(e.kind, ErrorKind::Stale),
        other => panic!("the late ack must be refused, got {other:?}"),
    }
    b.settle(2, Settle::Ack(vec![again[0].receipt.clone()]));
    assert_eq!(settled(&mut b, 2).await, vec![SettleOutcome::Applied]);
    b.settle(3, Settle::Ack(vec![again[0].receipt.clone()]));
    assert_eq!(
        settled(&mut b, 3).await,
        vec![SettleOutcome::AlreadySettled]
    );
    let info = t.describe_topic(&name).await.unwrap();
    assert_eq!((info.groups[0].lag, info.groups[0].in_flight), (0, 0));
}

/// One ack batch holding every case the batch script tells apart: held (applied), acked
/// before (already settled), reclaimed by another session (stale), and the same
/// receipt twice (applied once, then already settled).
#[tokio::test]
async fn a_batch_ack_answers_each_receipt_on_its_own() {
    let Some(t) = machine().await else { return };
    let lease = Duration::from_millis(400);
    let name = topic(&t, lease, 5).await;
    let batch: Vec<_> = (1..=3).map(|s| stamped("p", s, &format!("m{s}"))).collect();
    t.publish(&name, &Batch::new(batch)).await.unwrap();
    let mut a = session(&t, &name, "g", lease).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(deliveries(&mut a, Duration::from_secs(5)).await);
    }
    got.sort_by_key(|d| d.sequence);
    let [one, two, three] = [&got[0], &got[1], &got[2]];
    a.settle(1, Settle::Ack(vec![one.receipt.clone()]));
    assert_eq!(settled(&mut a, 1).await, vec![SettleOutcome::Applied]);
    // A overruns its lease on `two` and `three`; B reclaims both and acks `three`.
    a.drain();
    let mut b = session(&t, &name, "g", lease).await;
    let mut reclaimed = Vec::new();
    while reclaimed.len() < 2 {
        reclaimed.extend(deliveries(&mut b, Duration::from_secs(5)).await);
    }
    let three_b = reclaimed.iter().find(|d| d.sequence == Some(3)).unwrap();
    let two_b = reclaimed.iter().find(|d| d.sequence == Some(2)).unwrap();
    // A's late batch for both: B holds them now, so each is refused as stale.
    a.settle(
        2,
        Settle::Ack(vec![two.receipt.clone(), three.receipt.clone()]),
    );
    let late = settled(&mut a, 2).await;
    assert!(
        late.len() == 2
            && late
                .iter()
                .all(|o| matches!(o, SettleOutcome::Refused(e) if e.kind == ErrorKind::Stale)),
        "{late:?}"
    );
    b.settle(1, Settle::Ack(vec![three_b.receipt.clone()]));
    assert_eq!(settled(&mut b, 1).await, vec![SettleOutcome::Applied]);
    // B's batch: `two` (held), `one` by A's old receipt (acked before), `two` again, and
    // `three` by A's old receipt (B acked it; gone from the PEL: acked before).
    b.settle(
        2,
        Settle::Ack(vec![
            two_b.receipt.clone(),
            one.receipt.clone(),
            two_b.receipt.clone(),
            three.receipt.clone(),
        ]),
    );
    assert_eq!(
        settled(&mut b, 2).await,
        vec![
            SettleOutcome::Applied,
            SettleOutcome::AlreadySettled,
            SettleOutcome::AlreadySettled,
            SettleOutcome::AlreadySettled,
        ]
    );
    let info = t.describe_topic(&name).await.unwrap();
    assert_eq!((info.groups[0].lag, info.groups[0].in_flight), (0, 0));
    // A mixed batch (A's stale receipt of `two`, with a receipt of B's): stale is refused.
    t.publish(&name, &Batch::new(vec![stamped("p", 4, "m4")]))
        .await
        .unwrap();
    let four = deliveries(&mut b, Duration::from_secs(5)).await;
    assert_eq!(four.len(), 1);
    a.settle(3, Settle::Ack(vec![two.receipt.clone()]));
    assert_eq!(
        settled(&mut a, 3).await,
        vec![SettleOutcome::AlreadySettled],
        "acked by B: not pending any more"
    );
    b.settle(
        3,
        Settle::Ack(vec![four[0].receipt.clone(), two.receipt.clone()]),
    );
    assert_eq!(
        settled(&mut b, 3).await,
        vec![SettleOutcome::Applied, SettleOutcome::AlreadySettled]
    );
}

#[tokio::test]
async fn a_nack_comes_back_after_its_delay_not_at_once() {
    let Some(t) = machine().await else { return };
    let lease = Duration::from_secs(3);
    let name = topic(&t, lease, 5).await;
    t.publish(&name, &Batch::new(vec![stamped("p", 1, "x")]))
        .await
        .unwrap();
    let mut s = session(&t, &name, "g", lease).await;
    let d = deliveries(&mut s, Duration::from_secs(5)).await;
    let delay = Duration::from_millis(700);
    let at = Instant::now();
    s.settle(
        1,
        Settle::Nack {
            receipts: vec![d[0].receipt.clone()],
            delay,
            reason: "later".into(),
        },
    );
    assert_eq!(settled(&mut s, 1).await, vec![SettleOutcome::Applied]);
    let back = deliveries(&mut s, Duration::from_secs(5)).await;
    let took = at.elapsed();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].delivery_count, 2);
    assert!(
        took >= delay,
        "back after {took:?}, before the delay {delay:?}"
    );
    assert!(
        took < lease,
        "back after {took:?}: the delay, not the lease, held it"
    );
}

#[tokio::test]
async fn the_dead_letter_move_copies_and_acks_in_one_step() {
    let Some(t) = machine().await else { return };
    let lease = Duration::from_secs(5);
    let name = topic(&t, lease, 2).await;
    let m = StampedMessage {
        message: Message::new("bad").with_header("h", "v").with_key("k"),
        producer_id: "p".into(),
        sequence: 1,
    };
    let stored = t.publish(&name, &Batch::new(vec![m])).await.unwrap()[0]
        .clone()
        .unwrap();
    let mut s = session(&t, &name, "g", lease).await;
    let mut other = session(&t, &name, "other", lease).await;
    let d = deliveries(&mut s, Duration::from_secs(5)).await;
    s.settle(
        1,
        Settle::DeadLetter {
            receipts: vec![d[0].receipt.clone()],
            reason: "poison".into(),
        },
    );
    assert_eq!(settled(&mut s, 1).await, vec![SettleOutcome::Applied]);
    // Repeating the move (a lost answer) copies nothing more.
    s.settle(
        2,
        Settle::DeadLetter {
            receipts: vec![d[0].receipt.clone()],
            reason: "poison".into(),
        },
    );
    assert!(matches!(
        &settled(&mut s, 2).await[..],
        [SettleOutcome::Refused(_)]
    ));
    let keys = t.keys(&name).unwrap();
    assert_eq!(xlen(&t, &keys.dlq).await, 1);
    let page = t.dead_letters(&name, "g", None, 10).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert!(page.next.is_none());
    let dl = &page.items[0];
    assert_eq!((dl.reason.as_str(), dl.attempts), ("poison", 1));
    assert_eq!(dl.origin, stored.position);
    assert_eq!(dl.payload, b"bad");
    assert_eq!(dl.key.as_deref(), Some(&b"k"[..]));
    assert_eq!(dl.headers.get("h").map(String::as_str), Some("v"));
    assert_eq!(dl.sequence, Some(1));
    assert!(dl.first_delivered_ms.is_some() && dl.last_delivered_ms.is_some());
    let info = t.describe_topic(&name).await.unwrap();
    let g = info.groups.iter().find(|g| g.name == "g").unwrap();
    assert_eq!((g.in_flight, g.dead_letters), (0, 1));
    // The other group got the original and acks it.
    let o = deliveries(&mut other, Duration::from_secs(5)).await;
    other.settle(1, Settle::Ack(vec![o[0].receipt.clone()]));
    assert_eq!(settled(&mut other, 1).await, vec![SettleOutcome::Applied]);
    // Resend: back for g only; `other` skips it unrun.
    assert_eq!(t.resend(&name, "g", &Selection::All).await.unwrap(), 1);
    let again = deliveries(&mut s, Duration::from_secs(5)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].payload, b"bad");
    assert!(
        deliveries(&mut other, Duration::from_millis(800))
            .await
            .is_empty()
    );
    // Dead-letter it again, and purge: counted.
    s.settle(
        3,
        Settle::DeadLetter {
            receipts: vec![again[0].receipt.clone()],
            reason: "still".into(),
        },
    );
    assert_eq!(settled(&mut s, 3).await, vec![SettleOutcome::Applied]);
    assert_eq!(t.purge(&name, "other", &Selection::All).await.unwrap(), 0);
    assert_eq!(t.purge(&name, "g", &Selection::All).await.unwrap(), 1);
    assert_eq!(xlen(&t, &keys.dlq).await, 0);
}

// ---- A Redis of our own: AOF, appendfsync always, SIGKILLed. ----

struct Durable {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// More redis-server options (a replica's `--replicaof`).
    extra: Vec<String>,
    _tmp: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(port: u16, dir: &Path, extra: &[String]) -> Option<Child> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/redis-durable");
    match Command::new(script)
        .arg(port.to_string())
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => Some(c),
        Err(e) if !ci() => {
            println!("SKIPPED: scripts/redis-durable: {e}");
            None
        }
        Err(e) => panic!("CI=true and scripts/redis-durable failed: {e}"),
    }
}

impl Durable {
    async fn start() -> Option<Durable> {
        Self::start_with(Vec::new()).await
    }

    /// A replica of `primary`, with its own AOF.
    async fn replica_of(primary: &Durable) -> Option<Durable> {
        let r = Self::start_with(vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.port.to_string(),
        ])
        .await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = redis::Client::open(r.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut c)
                .await
                .unwrap();
            if info.contains("master_link_status:up") {
                return Some(r);
            }
            assert!(
                Instant::now() < deadline,
                "the replica never synced: {info}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    async fn start_with(extra: Vec<String>) -> Option<Durable> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            assert!(!ci(), "CI=true and no redis-server");
            println!("SKIPPED: no redis-server on this machine");
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("aof");
        let port = free_port();
        let child = spawn(port, &dir, &extra)?;
        let d = Durable {
            port,
            dir,
            child: Some(child),
            extra,
            _tmp: tmp,
        };
        d.ready().await;
        Some(d)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = redis::Client::open(self.url()).unwrap();
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn kill_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap(); // SIGKILL
            c.wait().unwrap();
        }
        self.child = spawn(self.port, &self.dir, &self.extra);
        self.ready().await;
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test]
async fn aof_always_is_confirmed_fsynced_and_accepted_under_require_fsync() {
    let Some(server) = Durable::start().await else {
        return;
    };
    let t = RedisTransport::connect(
        &server.url(),
        RedisOptions {
            require_fsync: true,
            ..options()
        },
    )
    .await
    .unwrap();
    assert!(t.durability().is_safe(), "{}", t.durability());
    assert_eq!(t.capabilities_confirm(), Confirm::FsyncedOnNode);
}

/// `wait_replicas`: a publish is confirmed only once a replica has it. A stopped replica
/// turns the confirm into `Unknown` (stored on the primary, not confirmed) after
/// `wait_timeout`; once it runs again the retry of the same stamps is a duplicate.
#[tokio::test]
async fn wait_replicas_confirms_only_what_a_replica_has() {
    let Some(primary) = Durable::start().await else {
        return;
    };
    let Some(replica) = Durable::replica_of(&primary).await else {
        return;
    };
    let wait = Duration::from_millis(300);
    let t = RedisTransport::connect(
        &primary.url(),
        RedisOptions {
            wait_replicas: 1,
            wait_timeout: wait,
            ..options()
        },
    )
    .await
    .unwrap();
    let name = topic(&t, Duration::from_secs(30), 5).await;
    let first = Batch::new(vec![stamped("p", 1, "replicated")]);
    let a = t.publish(&name, &first).await.unwrap();
    assert!(a[0].as_ref().is_ok_and(|p| !p.duplicate), "{a:?}");

    // SAFETY: signals to a child process this test started.
    assert_eq!(unsafe { libc::kill(replica.pid(), libc::SIGSTOP) }, 0);
    let second = Batch::new(vec![stamped("p", 2, "waits")]);
    let started = Instant::now();
    let e = t.publish(&name, &second).await.unwrap_err();
    assert!(started.elapsed() >= wait, "{:?}", started.elapsed());
    assert_eq!(
        (e.kind, e.outcome, e.code.as_deref()),
        (
            ErrorKind::TimedOut,
            Outcome::Unknown,
            Some("not_replicated")
        ),
        "{e}"
    );
    assert_eq!(unsafe { libc::kill(replica.pid(), libc::SIGCONT) }, 0);
    let again = t.publish(&name, &second).await.unwrap();
    assert!(
        again[0].as_ref().is_ok_and(|p| p.duplicate),
        "the retry finds the entry stored on the primary: {again:?}"
    );
    let replica_t = RedisTransport::connect(&replica.url(), options())
        .await
        .unwrap();
    assert_eq!(
        xlen(&replica_t, &t.keys(&name).unwrap().stream).await,
        2,
        "the replica has both"
    );
}

#[tokio::test]
async fn every_confirmed_publish_survives_a_sigkill_of_the_server() {
    let Some(mut server) = Durable::start().await else {
        return;
    };
    let t = Arc::new(
        RedisTransport::connect(&server.url(), options())
            .await
            .unwrap(),
    );
    let name = topic(&t, Duration::from_secs(30), 5).await;
    // Publish in the background while the server is SIGKILLed and restarted twice;
    // record every sequence whose publish was confirmed.
    let confirmed = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let publisher = {
        let (t, name, confirmed) = (t.clone(), name.clone(), confirmed.clone());
        tokio::spawn(async move {
            for seq in 1..=600u64 {
                let batch = Batch::new(vec![stamped("p", seq, &format!("m{seq}"))]);
                // Retried with the same stamps until confirmed.
                loop {
                    match t.publish(&name, &batch).await {
                        Ok(a) if a[0].is_ok() => {
                            confirmed.lock().unwrap().push(seq);
                            break;
                        }
                        Ok(a) => panic!("refused: {:?}", a[0]),
                        Err(e) => {
                            assert!(e.retryable(), "{e}");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
        })
    };
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.kill_and_restart().await;
    }
    publisher.await.unwrap();
    let confirmed = confirmed.lock().unwrap().clone();
    assert_eq!(confirmed.len(), 600);
    // One more restart, then read every entry back.
    server.kill_and_restart().await;
    let mut c = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys = t.keys(&name).unwrap();
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&keys.stream)
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut seqs: Vec<u64> = entries
        .iter()
        .filter_map(|(_, f)| {
            f.iter()
                .find(|(k, _)| k == "surety.seq")
                .and_then(|(_, v)| v.parse().ok())
        })
        .collect();
    let stored = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(stored, seqs.len(), "a retried publish was stored twice");
    assert_eq!(seqs, confirmed, "a confirmed publish was lost in a SIGKILL");
}

/// A stream entry as XRANGE answers it.
type Entry = (String, Vec<(String, Vec<u8>)>);
type TextEntry = (String, Vec<(String, String)>);

/// Every delivered entry ends pending or dead-lettered (once), never acked without its
/// copy nor copied twice, across SIGKILLs of the server while dead-letter moves run.
#[tokio::test]
async fn dead_letter_moves_are_all_or_nothing_across_server_sigkills() {
    let Some(mut server) = Durable::start().await else {
        return;
    };
    let t = RedisTransport::connect(&server.url(), options())
        .await
        .unwrap();
    let name = topic(&t, Duration::from_secs(30), 1).await;
    for from in (1..=2000u64).step_by(500) {
        let batch = Batch::new(
            (from..from + 500)
                .map(|s| stamped("p", s, &format!("m{s}")))
                .collect(),
        );
        let answers = t.publish(&name, &batch).await.unwrap();
        assert!(answers.iter().all(|a| a.is_ok()));
    }
    let mover = {
        let (t, name) = (t.clone(), name.clone());
        tokio::spawn(async move {
            let mut id = 0;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(4) {
                let Ok(mut s) = t
                    .subscribe(&Subscription {
                        topic: name.clone(),
                        group: "g".into(),
                        credits: 32,
                        lease: Some(Duration::from_secs(30)),
                    })
                    .await
                else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                loop {
                    match tokio::time::timeout(Duration::from_millis(500), s.next()).await {
                        Ok(Ok(SessionEvent::Deliveries(d))) => {
                            id += 1;
                            s.settle(
                                id,
                                Settle::DeadLetter {
                                    receipts: d.into_iter().map(|d| d.receipt).collect(),
                                    reason: "poison".into(),
                                },
                            );
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(_)) => break,
                        Err(_) => break,
                    }
                }
            }
        })
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        server.kill_and_restart().await;
    }
    mover.await.unwrap();
    server.kill_and_restart().await;
    let mut c = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys = t.keys(&name).unwrap();
    let stream: Vec<Entry> = redis::cmd("XRANGE")
        .arg(&keys.stream)
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(&keys.stream)
        .arg("g")
        .arg("-")
        .arg("+")
        .arg(10_000)
        .query_async(&mut c)
        .await
        .unwrap();
    let dlq: Vec<TextEntry> = redis::cmd("XRANGE")
        .arg(&keys.dlq)
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    let groups: Vec<Vec<redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&keys.stream)
        .query_async(&mut c)
        .await
        .unwrap();
    let g = &groups[0];
    let at = g
        .iter()
        .position(|v| matches!(v, redis::Value::BulkString(b) if b == b"last-delivered-id"))
        .unwrap();
    let last: String = redis::from_redis_value(&g[at + 1]).unwrap();
    let key = |id: &str| {
        let (a, b) = id.split_once('-').unwrap();
        (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap())
    };
    let mut dead = std::collections::HashMap::<String, usize>::new();
    for (_, f) in &dlq {
        let origin = f.iter().find(|(k, _)| k == "surety.origin").unwrap();
        *dead
            .entry(origin.1.trim_start_matches('e').to_owned())
            .or_default() += 1;
    }
    let pending: std::collections::HashSet<String> = pending.into_iter().map(|p| p.0).collect();
    let (mut moved, mut left) = (0, 0);
    for (id, _) in &stream {
        let delivered = key(id) <= key(&last);
        let copies = dead.get(id).copied().unwrap_or(0);
        let is_pending = pending.contains(id);
        assert!(copies <= 1, "{id} dead-lettered {copies} times");
        if delivered {
            assert!(
                (copies == 1) != is_pending,
                "{id}: dead-lettered {copies}, pending {is_pending}: a move was split"
            );
        } else {
            assert!(copies == 0 && !is_pending, "{id} undelivered yet moved");
        }
        moved += copies;
        left += usize::from(!delivered || is_pending);
    }
    assert_eq!(moved + left, 2000);
    assert!(moved > 0, "no dead-letter move ran");
    println!("{moved} moved, {left} left across 4 SIGKILLs");
}

/// A session that ends holding nothing leaves no consumer behind; one that ends holding
/// an entry keeps its consumer (deleting it would drop the entry as if acked).
#[tokio::test]
async fn an_ended_session_forgets_its_consumer_only_when_it_holds_nothing() {
    let Some(t) = machine().await else { return };
    let lease = Duration::from_millis(300);
    let name = topic(&t, lease, 5).await;
    let keys = t.keys(&name).unwrap();
    let consumers = || async {
        let mut c = t.client().get_multiplexed_async_connection().await.unwrap();
        let v: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&keys.stream)
            .arg("g")
            .query_async(&mut c)
            .await
            .unwrap();
        v.len()
    };
    t.publish(&name, &Batch::new(vec![stamped("p", 1, "x")]))
        .await
        .unwrap();
    let mut holder = session(&t, &name, "g", lease).await;
    assert_eq!(
        deliveries(&mut holder, Duration::from_secs(5)).await.len(),
        1
    );
    drop(holder);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(consumers().await, 1, "the holder's consumer stays");
    let mut taker = session(&t, &name, "g", lease).await;
    let d = deliveries(&mut taker, Duration::from_secs(5)).await;
    assert_eq!(d[0].delivery_count, 2, "reclaimed, not lost");
    taker.settle(1, Settle::Ack(vec![d[0].receipt.clone()]));
    assert_eq!(settled(&mut taker, 1).await, vec![SettleOutcome::Applied]);
    drop(taker);
    let deadline = Instant::now() + Duration::from_secs(5);
    // The first consumer lost its entry to the taker: it holds nothing, but only the
    // taker's own end forgets the taker.
    while consumers().await > 1 {
        assert!(
            Instant::now() < deadline,
            "the taker's consumer was not forgotten"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A batch of acks is answered per receipt: applied, stale (reclaimed), already settled.
#[tokio::test]
async fn a_batch_of_acks_is_answered_per_receipt() {
    let Some(t) = machine().await else { return };
    let lease = Duration::from_millis(300);
    let name = topic(&t, lease, 5).await;
    let batch = Batch::new((1..=3).map(|s| stamped("p", s, "x")).collect());
    t.publish(&name, &batch).await.unwrap();
    let mut a = session(&t, &name, "g", lease).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(deliveries(&mut a, Duration::from_secs(5)).await);
    }
    a.settle(1, Settle::Ack(vec![got[0].receipt.clone()]));
    assert_eq!(settled(&mut a, 1).await, vec![SettleOutcome::Applied]);
    a.drain();
    // b reclaims the two left after the lease.
    let mut b = session(&t, &name, "g", lease).await;
    let mut again = Vec::new();
    while again.len() < 2 {
        again.extend(deliveries(&mut b, Duration::from_secs(5)).await);
    }
    a.settle(
        2,
        Settle::Ack(got.iter().map(|d| d.receipt.clone()).collect()),
    );
    let outcomes = settled(&mut a, 2).await;
    assert_eq!(outcomes[0], SettleOutcome::AlreadySettled);
    assert!(
        outcomes[1..]
            .iter()
            .all(|o| matches!(o, SettleOutcome::Refused(e) if e.kind == ErrorKind::Stale)),
        "{outcomes:?}"
    );
    b.settle(
        3,
        Settle::Ack(again.iter().map(|d| d.receipt.clone()).collect()),
    );
    assert_eq!(
        settled(&mut b, 3).await,
        vec![SettleOutcome::Applied, SettleOutcome::Applied]
    );
}
