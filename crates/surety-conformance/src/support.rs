//! What the scenarios share: names, clocks, waiting, consumers that record what they
//! see, and admin calls that ride out a restart.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use surety_core::{
    ConsumeError, Consumer, ConsumerStats, Delivery, GapDetector, GroupInfo, Message, Position,
    Producer, RetryPolicy, StopHandle, TopicInfo, TopicSpec, Transport, TransportError,
};
use tokio::task::JoinHandle;

/// A name no other run uses: `<prefix>-<random hex>`.
pub fn unique(prefix: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    let r = RandomState::new().hash_one(Instant::now()) & 0xff_ffff;
    format!("{prefix}-{r:06x}")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Prints a skipped step (the scenario goes on without it).
pub fn skip_step(step: &str, why: &dyn std::fmt::Display) {
    println!("SKIPPED step ({step}): {why}");
}

/// Polls `f` every 25 ms until it answers `Some`, for at most `limit`; panics with `what`
/// (and the last state `f` reported) otherwise.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(state) if Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

/// Retries a call while it fails as retryable (a server restarting), up to 60 s.
pub async fn retrying<T, F, Fut>(what: &str, mut f: F) -> Result<T, TransportError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, TransportError>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Err(e) if e.retryable() && Instant::now() < deadline => {
                eprintln!("{what}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Creates `topic` (panics if refused).
pub async fn create_topic(t: &Arc<dyn Transport>, topic: &str, spec: TopicSpec) -> TopicInfo {
    retrying("create_topic", || t.create_topic(topic, &spec))
        .await
        .unwrap_or_else(|e| panic!("create topic {topic} ({spec:?}): {e}"))
}

/// The group's counters, or `None` if the topic has no such group yet.
pub async fn group_info(t: &Arc<dyn Transport>, topic: &str, group: &str) -> Option<GroupInfo> {
    let info = retrying("describe_topic", || t.describe_topic(topic))
        .await
        .unwrap_or_else(|e| panic!("describe topic {topic}: {e}"));
    info.groups.into_iter().find(|g| g.name == group)
}

/// Waits until `group` has nothing unsettled (lag 0, nothing in flight).
pub async fn wait_settled(t: &Arc<dyn Transport>, topic: &str, group: &str, limit: Duration) {
    eventually(
        limit,
        &format!("group {group} of {topic} settled"),
        || async {
            match group_info(t, topic, group).await {
                Some(g) if g.lag == 0 && g.in_flight == 0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// Fast retries: restarts in the suite take a second or two.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        multiplier: 2.0,
        jitter: 0.5,
        deadline: Duration::from_secs(60),
        attempt_timeout: Duration::from_secs(10),
    }
}

pub fn producer(t: &Arc<dyn Transport>) -> Producer {
    Producer::builder_shared(t.clone())
        .retry(fast_retry())
        .build()
}

/// `n` messages with payloads `<prefix>-<i>`.
pub fn messages(prefix: &str, n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| Message::new(format!("{prefix}-{i}")))
        .collect()
}

/// A delivery as a handler saw it, and when.
#[derive(Debug, Clone)]
pub struct Seen {
    pub delivery: Delivery,
    pub at: Instant,
    pub wall_ms: u64,
}

impl Seen {
    pub fn stamp(&self) -> (String, u64) {
        stamp_of(&self.delivery)
    }

    pub fn payload(&self) -> String {
        String::from_utf8_lossy(&self.delivery.payload).into_owned()
    }
}

pub fn stamp_of(d: &Delivery) -> (String, u64) {
    (
        d.producer_id
            .clone()
            .expect("a producer's message carries its id"),
        d.sequence
            .expect("a producer's message carries its sequence"),
    )
}

/// Every delivery a set of handlers saw, in order (shared by clones).
#[derive(Debug, Clone, Default)]
pub struct Record(Arc<Mutex<Vec<Seen>>>);

impl Record {
    pub fn push(&self, d: &Delivery) -> Seen {
        let seen = Seen {
            delivery: d.clone(),
            at: Instant::now(),
            wall_ms: now_ms(),
        };
        self.0.lock().unwrap().push(seen.clone());
        seen
    }

    pub fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn with_payload(&self, payload: &str) -> Vec<Seen> {
        self.all()
            .into_iter()
            .filter(|s| s.delivery.payload == payload.as_bytes())
            .collect()
    }

    /// How often each stamp was delivered.
    pub fn per_stamp(&self) -> BTreeMap<(String, u64), Vec<Seen>> {
        let mut m: BTreeMap<_, Vec<Seen>> = BTreeMap::new();
        for s in self.all() {
            m.entry(s.stamp()).or_default().push(s);
        }
        m
    }
}

/// Settings of a test consumer.
#[derive(Debug, Clone)]
pub struct ConsumerOpts {
    pub lease: Duration,
    pub nack_delay: Duration,
    pub max_in_flight: u32,
    pub gaps: Option<Arc<Mutex<GapDetector>>>,
}

impl ConsumerOpts {
    pub fn lease(lease: Duration) -> Self {
        ConsumerOpts {
            lease,
            nack_delay: Duration::ZERO,
            max_in_flight: 8,
            gaps: None,
        }
    }
}

/// A consumer running in a task of this process.
#[derive(Debug)]
pub struct Running {
    stop: StopHandle,
    task: JoinHandle<Result<ConsumerStats, ConsumeError>>,
}

impl Running {
    /// Graceful stop: running handlers finish and are settled.
    pub async fn stop(self) -> ConsumerStats {
        self.stop.stop();
        match tokio::time::timeout(Duration::from_secs(30), self.task).await {
            Ok(Ok(Ok(stats))) => stats,
            Ok(Ok(Err(e))) => panic!("consumer ended with {e}"),
            Ok(Err(e)) => panic!("consumer task failed: {e}"),
            Err(_) => panic!("consumer did not stop within 30 s"),
        }
    }

    /// The in-process kill: the task is dropped where it stands (handlers, session and
    /// unsent settlements with it).
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Waits for the consumer to end on its own (a refusal, say).
    pub async fn ended(self, limit: Duration) -> Result<ConsumerStats, ConsumeError> {
        match tokio::time::timeout(limit, self.task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!("consumer task failed: {e}"),
            Err(_) => panic!("consumer still running after {limit:?}"),
        }
    }
}

/// Starts a consumer whose handler is `handler`.
pub fn start_consumer<F, Fut>(
    t: &Arc<dyn Transport>,
    topic: &str,
    group: &str,
    opts: ConsumerOpts,
    handler: F,
) -> Running
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut b = Consumer::builder_shared(t.clone(), topic, group)
        .lease(opts.lease)
        .nack_delay(opts.nack_delay)
        .max_in_flight(opts.max_in_flight)
        .reconnect(RetryPolicy {
            deadline: Duration::from_secs(120),
            ..fast_retry()
        });
    if let Some(g) = opts.gaps {
        b = b.detect_gaps(g);
    }
    let stop = b.stop_handle();
    let task = tokio::spawn(b.run(handler));
    Running { stop, task }
}

/// Starts a consumer that records every delivery and acks it.
pub fn start_recording(
    t: &Arc<dyn Transport>,
    topic: &str,
    group: &str,
    opts: ConsumerOpts,
    record: &Record,
) -> Running {
    let record = record.clone();
    start_consumer(t, topic, group, opts, move |d| {
        record.push(&d);
        async { Ok(()) }
    })
}

/// A position's text, for messages.
pub fn pos(p: &Position) -> String {
    p.to_string()
}

/// A child process that is SIGKILLed (and reaped) when dropped, so that a scenario that
/// fails halfway leaves no consumer or relay behind.
#[derive(Debug)]
pub struct Proc(pub std::process::Child);

impl Proc {
    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().ok().flatten()
    }

    /// SIGKILL, and reap.
    pub fn sigkill(&mut self) -> std::process::ExitStatus {
        self.0.kill().expect("SIGKILL a child");
        self.0.wait().expect("reap a child")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
