//! Scenario 5: No gap over a run with consumer kills, server restarts and publish retries: M
//! messages from one producer (some batches sent twice, as a retry after a lost answer
//! would), consumed by a series of consumers of one group that are killed one after
//! another while the server is restarted under them, then drained by a last one. One
//! `GapDetector`, shared by all of them (`detect_gaps`; a child process's observations
//! are fed to it from its markers), ends with nothing missing and no open gap —
//! duplicates are allowed, loss is not — and every sequence was seen.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use surety_core::{GapDetector, Message, TopicSpec, Transport};

use crate::child::{ChildConsumer, Hold, Marker};
use crate::support::{
    ConsumerOpts, Proc, create_topic, eventually, group_info, producer, skip_step, stamp_of,
    start_consumer, unique,
};
use crate::{KillMode, TransportFixture, Verdict};

const BATCHES: usize = 30;
const BATCH: usize = 5;
const M: u64 = (BATCHES * BATCH) as u64;
/// Short, so what a killed consumer held comes back soon.
const LEASE: Duration = Duration::from_millis(1200);
/// Consumers started and killed during the run.
const KILLS: usize = 4;
/// Kills after which the server is restarted.
const RESTART_AFTER: [usize; 2] = [1, 2];

pub(crate) async fn run(fx: &dyn TransportFixture) -> Verdict {
    let t = fx.connect().await;
    let topic = unique("s5");
    create_topic(
        &t,
        &topic,
        TopicSpec {
            partitions: Some(1),
            max_deliveries: Some(1000),
            ack_wait: Some(LEASE),
            ..TopicSpec::default()
        },
    )
    .await;
    let group = unique("g");
    let gaps = Arc::new(Mutex::new(GapDetector::starting_at(0)));
    let seen = Seen::default();
    let dir = tempfile::tempdir().unwrap();

    let p = producer(&t);
    let producer_id = p.producer_id().to_owned();
    let publishing = {
        let topic = topic.clone();
        tokio::spawn(async move {
            let mut retried = 0;
            for b in 0..BATCHES {
                let msgs = (0..BATCH)
                    .map(|i| Message::new(format!("s5-{b}-{i}")))
                    .collect();
                let batch = p.prepare(msgs);
                p.send(&topic, &batch)
                    .await
                    .unwrap_or_else(|e| panic!("batch {b}: {e}"));
                if b % 3 == 1 {
                    p.send(&topic, &batch)
                        .await
                        .unwrap_or_else(|e| panic!("retry of batch {b}: {e}"));
                    retried += 1;
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            retried
        })
    };

    let mut restarts = 0;
    for kill in 0..KILLS {
        let victim = Victim::start(fx, &t, &topic, &group, &gaps, &seen, dir.path(), kill);
        tokio::time::sleep(Duration::from_millis(400 + 150 * kill as u64)).await;
        if RESTART_AFTER.contains(&kill) {
            match fx.restart_server().await {
                Ok(()) => restarts += 1,
                Err(why) => skip_step("restart_server", &why),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        victim.kill(&gaps, &seen).await;
    }
    let retried = publishing.await.expect("the producer task");

    // The last consumer drains the group.
    let last = {
        let seen = seen.clone();
        start_consumer(
            &t,
            &topic,
            &group,
            ConsumerOpts {
                gaps: Some(gaps.clone()),
                ..ConsumerOpts::lease(LEASE)
            },
            move |d| {
                seen.add(&stamp_of(&d));
                async { Ok(()) }
            },
        )
    };
    // Everything stored is settled once the group has nothing left: what the detector
    // (and the record of stamps) lacks then was lost, not late.
    eventually(Duration::from_secs(60), "the group settled", || async {
        match group_info(&t, &topic, &group).await {
            Some(g) if g.lag == 0 && g.in_flight == 0 => Ok(()),
            g => Err(format!("group {g:?}")),
        }
    })
    .await;
    last.stop().await;
    let never = missing(&seen, &producer_id);

    let detector = gaps.lock().unwrap();
    let stats = detector.stats();
    println!(
        "{M} messages, {retried} batches sent twice, {KILLS} consumers killed ({:?}), \
         {restarts} restarts: {stats:?}",
        fx.consumer_kill()
    );
    assert_eq!(stats.missing, 0, "the gap detector saw loss: {stats:?}");
    let open = detector.open_gaps(&producer_id, 0);
    assert!(open.is_empty(), "open gaps: {open:?}");
    assert!(
        never.is_empty(),
        "{} confirmed sequences never delivered (first {:?}): {stats:?}",
        never.len(),
        &never[..never.len().min(10)]
    );
    // Every observation that was not a duplicate is a sequence seen for the first time.
    let distinct = stats.in_order + stats.gaps + stats.reordered;
    assert!(
        distinct >= M,
        "the detector saw {distinct} distinct sequences of {M}: {stats:?}"
    );
    Verdict::Passed
}

/// The stamps any consumer handled (or, in a child, started handling).
#[derive(Debug, Clone, Default)]
struct Seen(Arc<Mutex<BTreeSet<(String, u64)>>>);

impl Seen {
    fn add(&self, stamp: &(String, u64)) {
        self.0.lock().unwrap().insert(stamp.clone());
    }
}

fn missing(seen: &Seen, producer_id: &str) -> Vec<u64> {
    let got = seen.0.lock().unwrap();
    (0..M)
        .filter(|&s| !got.contains(&(producer_id.to_owned(), s)))
        .collect()
}

/// A consumer that will be killed.
enum Victim {
    Task(crate::support::Running),
    Process {
        child: Proc,
        log: std::path::PathBuf,
    },
}

impl Victim {
    #[allow(clippy::too_many_arguments)]
    fn start(
        fx: &dyn TransportFixture,
        t: &Arc<dyn Transport>,
        topic: &str,
        group: &str,
        gaps: &Arc<Mutex<GapDetector>>,
        seen: &Seen,
        dir: &std::path::Path,
        n: usize,
    ) -> Victim {
        match fx.consumer_kill() {
            KillMode::Task => {
                let seen = seen.clone();
                Victim::Task(start_consumer(
                    t,
                    topic,
                    group,
                    ConsumerOpts {
                        gaps: Some(gaps.clone()),
                        ..ConsumerOpts::lease(LEASE)
                    },
                    move |d| {
                        seen.add(&stamp_of(&d));
                        async {
                            tokio::time::sleep(Duration::from_millis(15)).await;
                            Ok(())
                        }
                    },
                ))
            }
            KillMode::Process => {
                let spec = ChildConsumer {
                    topic: topic.to_owned(),
                    group: group.to_owned(),
                    lease: LEASE,
                    log: dir.join(format!("victim-{n}")),
                    hold: Hold::AckAfter(Duration::from_millis(15)),
                };
                let child = fx.spawn_consumer(&spec).map(Proc).unwrap_or_else(|e| {
                    panic!("KillMode::Process without a consumer process: {e}")
                });
                Victim::Process {
                    child,
                    log: spec.log,
                }
            }
        }
    }

    /// Kills it; a process's observations go to the shared detector and record.
    async fn kill(self, gaps: &Arc<Mutex<GapDetector>>, seen: &Seen) {
        match self {
            Victim::Task(running) => running.abort().await,
            Victim::Process { mut child, log } => {
                if let Some(status) = child.exited() {
                    panic!(
                        "a child consumer exited on its own ({status}): {}",
                        std::fs::read_to_string(log.with_extension("stderr")).unwrap_or_default()
                    );
                }
                child.sigkill();
                let mut g = gaps.lock().unwrap();
                for m in Marker::read_all(&log) {
                    g.observe(&m.producer_id, m.partition, m.sequence);
                    seen.add(&(m.producer_id.clone(), m.sequence));
                }
            }
        }
    }
}
