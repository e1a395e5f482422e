//! Dedupe across restarts on a real broker: the table comes back from `dedupe.snapshot`
//! plus the log after it, or from the whole log when the snapshot is missing, damaged or
//! does not fit, and in every case a retried (producer, sequence) or id inside its window
//! is answered `duplicate` with the original partition and offset. The records an open
//! reads are counted (`Broker::dedupe_recovery`), so "reads only the tail" is asserted,
//! not timed.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::{Env, msg, patch};
use proptest::prelude::*;
use surety_broker::{Broker, DedupeSnapshotPolicy, PublishMessage, PublishResult};

const TOPIC: &str = "t";
const ID_WINDOW_MS: u64 = 60_000;

fn stamp(producer: &str, seq: u64) -> PublishMessage {
    PublishMessage {
        producer_id: Some(producer.into()),
        sequence: Some(seq),
        ..msg(&format!("{producer}-{seq}"))
    }
}

fn with_id(id: &str) -> PublishMessage {
    PublishMessage {
        id: Some(id.into()),
        ..msg(id)
    }
}

async fn topic(b: &Broker) {
    b.put_topic(
        TOPIC,
        &patch(&format!(
            r#"{{"partitions":3,"dedupe_window_ms":{ID_WINDOW_MS}}}"#
        )),
    )
    .await
    .unwrap();
}

fn snapshot_path(env: &Env) -> PathBuf {
    env.dir
        .path()
        .join("topics")
        .join(TOPIC)
        .join("dedupe.snapshot")
}

/// Publishes `messages` one call per 10, returning each one's answer.
async fn publish_all(b: &Broker, messages: &[PublishMessage]) -> Vec<PublishResult> {
    let mut out = Vec::new();
    for chunk in messages.chunks(10) {
        out.extend(b.publish(TOPIC, chunk.to_vec()).await.unwrap());
    }
    out
}

/// Every message of `sent` published again is a duplicate pointing at its first answer.
async fn assert_retries_are_duplicates(b: &Broker, sent: &[(PublishMessage, PublishResult)]) {
    let retried = publish_all(b, &sent.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>()).await;
    for ((m, first), again) in sent.iter().zip(retried) {
        assert!(!first.duplicate, "{m:?} was new the first time");
        assert_eq!(
            again,
            PublishResult {
                duplicate: true,
                ..*first
            },
            "retry of {:?}/{:?}/{:?}",
            m.producer_id,
            m.sequence,
            m.id
        );
    }
}

/// 20 producer stamps over two producers and 10 ids, published.
async fn publish_some(b: &Broker, from: u64) -> Vec<(PublishMessage, PublishResult)> {
    let mut messages: Vec<PublishMessage> = (from..from + 10)
        .flat_map(|s| [stamp("a", s), stamp("b", s)])
        .collect();
    messages.extend((from..from + 10).map(|i| with_id(&format!("id-{i}"))));
    let results = publish_all(b, &messages).await;
    messages.into_iter().zip(results).collect()
}

async fn total_records(b: &Broker) -> u64 {
    b.describe(TOPIC).await.unwrap().end_offsets.iter().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_close_leaves_a_snapshot_and_the_next_open_reads_nothing() {
    let env = Env::new();
    let b = env.open();
    topic(&b).await;
    let sent = publish_some(&b, 0).await;
    b.close();
    drop(b);
    assert!(snapshot_path(&env).exists(), "close writes the snapshot");

    let b = env.open();
    let r = b.dedupe_recovery(TOPIC).unwrap();
    assert!(r.from_snapshot, "{r:?}");
    assert_eq!(
        r.records_scanned, 0,
        "nothing was published after the snapshot"
    );
    assert_eq!(r.snapshot_entries, 30);
    assert_retries_are_duplicates(&b, &sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_older_than_the_tail_replays_only_the_tail() {
    let env = Env::new();
    let b = env.open();
    topic(&b).await;
    let mut sent = publish_some(&b, 0).await;
    b.snapshot_dedupe(TOPIC).unwrap();
    sent.extend(publish_some(&b, 100).await);
    let total = total_records(&b).await;
    // No close: as after a crash, the snapshot is the one taken above.
    drop(b);

    let b = env.open();
    let r = b.dedupe_recovery(TOPIC).unwrap();
    assert!(r.from_snapshot, "{r:?}");
    assert_eq!(total, 60);
    assert_eq!(r.records_scanned, 30, "only what came after the snapshot");
    assert_retries_are_duplicates(&b, &sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_snapshot_the_whole_log_is_scanned_and_answers_the_same() {
    let env = Env::new();
    let b = env.open();
    topic(&b).await;
    let sent = publish_some(&b, 0).await;
    b.close();
    drop(b);
    std::fs::remove_file(snapshot_path(&env)).unwrap();

    let b = env.open();
    let r = b.dedupe_recovery(TOPIC).unwrap();
    assert!(!r.from_snapshot);
    assert_eq!(r.fallback_reason.as_deref(), Some("no dedupe snapshot"));
    assert_eq!(r.records_scanned, 30);
    assert_retries_are_duplicates(&b, &sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_falls_back_to_the_full_scan() {
    let env = Env::new();
    let b = env.open();
    topic(&b).await;
    let sent = publish_some(&b, 0).await;
    b.close();
    drop(b);
    let good = std::fs::read(snapshot_path(&env)).unwrap();
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let damaged: [(&str, Vec<u8>); 4] = [
        ("checksum", flipped),
        ("checksum", good[..good.len() / 3].to_vec()),
        ("magic", Vec::new()),
        ("magic", b"not a snapshot at all".to_vec()),
    ];
    for (why, bytes) in damaged {
        std::fs::write(snapshot_path(&env), &bytes).unwrap();
        let b = env.open();
        let r = b.dedupe_recovery(TOPIC).unwrap();
        assert!(!r.from_snapshot, "{why}: {r:?}");
        assert!(
            r.fallback_reason.as_deref().unwrap().contains(why),
            "{why}: {r:?}"
        );
        assert_eq!(r.records_scanned, 30);
        assert_retries_are_duplicates(&b, &sent).await;
        drop(b);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_stay_duplicates_inside_their_window_and_expire_after_it() {
    let env = Env::new();
    let b = env.open();
    topic(&b).await;
    let first = b.publish(TOPIC, vec![with_id("order-1")]).await.unwrap()[0];
    b.snapshot_dedupe(TOPIC).unwrap();
    let second = b.publish(TOPIC, vec![with_id("order-2")]).await.unwrap()[0];
    drop(b);

    env.advance(ID_WINDOW_MS - 1);
    let b = env.open();
    assert!(b.dedupe_recovery(TOPIC).unwrap().from_snapshot);
    for (id, original) in [("order-1", first), ("order-2", second)] {
        let again = b.publish(TOPIC, vec![with_id(id)]).await.unwrap()[0];
        assert_eq!(
            again,
            PublishResult {
                duplicate: true,
                ..original
            },
            "{id}"
        );
    }
    drop(b);

    // Past the window the id is new again, from the snapshot as from the log.
    env.advance(1);
    let b = env.open();
    assert!(b.dedupe_recovery(TOPIC).unwrap().from_snapshot);
    let later = b.publish(TOPIC, vec![with_id("order-1")]).await.unwrap()[0];
    assert!(!later.duplicate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grown_id_window_does_not_trust_the_snapshot() {
    let env = Env::new();
    let b = env.open();
    topic(&b).await;
    let sent = publish_some(&b, 0).await;
    b.close();
    drop(b);
    let b = env.open();
    b.put_topic(TOPIC, &patch(r#"{"dedupe_window_ms":120000}"#))
        .await
        .unwrap();
    drop(b);

    let b = env.open();
    let r = b.dedupe_recovery(TOPIC).unwrap();
    assert!(!r.from_snapshot);
    assert!(
        r.fallback_reason
            .as_deref()
            .unwrap()
            .contains("id_window_ms grew"),
        "{r:?}"
    );
    assert_retries_are_duplicates(&b, &sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_ahead_of_a_log_that_lost_records_is_not_used() {
    let env = Env::new();
    let b = env.open();
    b.put_topic(TOPIC, &patch(r#"{"partitions":1}"#))
        .await
        .unwrap();
    let kept = publish_all(&b, &[stamp("a", 0), stamp("a", 1)]).await;
    drop(b);
    let p0 = env.dir.path().join("topics").join(TOPIC).join("p0");
    let aside = env.dir.path().join("p0-aside");
    copy_dir(&p0, &aside);

    let b = env.open();
    publish_all(&b, &[stamp("a", 2), stamp("a", 3)]).await;
    b.close();
    drop(b);
    // The partition loses its last two records, which the snapshot has seen.
    std::fs::remove_dir_all(&p0).unwrap();
    std::fs::rename(&aside, &p0).unwrap();

    let b = env.open();
    let r = b.dedupe_recovery(TOPIC).unwrap();
    assert!(!r.from_snapshot);
    assert!(
        r.fallback_reason
            .as_deref()
            .unwrap()
            .contains("the log ends at 2"),
        "{r:?}"
    );
    let again = publish_all(&b, &[stamp("a", 0), stamp("a", 1), stamp("a", 2)]).await;
    assert!(again[0].duplicate && again[1].duplicate);
    assert_eq!(
        (again[0].offset, again[1].offset),
        (kept[0].offset, kept[1].offset)
    );
    // The lost record is stored again, not answered with an offset it no longer holds.
    assert!(!again[2].duplicate);
    assert_eq!(again[2].offset, 2);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_writes_snapshots_by_itself_and_bounds_the_replay() {
    let env = Env::new();
    let b = env.open();
    b.set_dedupe_snapshot_policy(DedupeSnapshotPolicy {
        after_records: 40,
        after_bytes: u64::MAX,
    });
    b.put_topic(TOPIC, &patch(r#"{"partitions":2}"#))
        .await
        .unwrap();
    let mut sent = Vec::new();
    for s in 0..200 {
        let m = stamp("p", s);
        let r = b.publish(TOPIC, vec![m.clone()]).await.unwrap()[0];
        sent.push((m, r));
    }
    // Let a background snapshot that is still being written finish.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    drop(b);

    let b = env.open();
    let r = b.dedupe_recovery(TOPIC).unwrap();
    assert!(r.from_snapshot, "{r:?}");
    // Due once the records since the last snapshot reach the larger of 40 and the
    // entries that snapshot held (snapshots at about 40, 80, 160): the replay is bounded
    // by the table's size, not by the log's 200 records.
    assert!(r.snapshot_entries >= 100, "{r:?}");
    assert!(r.records_scanned <= r.snapshot_entries, "{r:?}");
    assert_retries_are_duplicates(&b, &sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_taken_while_publishes_are_in_flight_miss_nothing() {
    let env = Env::new();
    let b = env.open();
    b.put_topic(TOPIC, &patch(r#"{"partitions":2}"#))
        .await
        .unwrap();
    let snapshots = {
        let b = b.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                b.snapshot_dedupe(TOPIC).unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let mut producers = Vec::new();
    for p in 0..4 {
        let b = b.clone();
        producers.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for s in 0..50 {
                let m = stamp(&format!("p{p}"), s);
                let r = b.publish(TOPIC, vec![m.clone()]).await.unwrap()[0];
                sent.push((m, r));
            }
            sent
        }));
    }
    let mut sent = Vec::new();
    for p in producers {
        sent.extend(p.await.unwrap());
    }
    snapshots.await.unwrap();
    drop(b);

    let b = env.open();
    assert!(b.dedupe_recovery(TOPIC).unwrap().from_snapshot);
    assert_retries_are_duplicates(&b, &sent).await;
}

#[derive(Debug, Clone)]
enum Op {
    /// A new stamp of producer `p`, and maybe an id.
    Publish {
        producer: u8,
        id: bool,
    },
    /// Publish again a message stored earlier (picked by index, modulo).
    Retry(usize),
    Snapshot,
    /// Close (writes the snapshot), then open.
    CleanRestart,
    /// Drop without closing, then open.
    CrashRestart,
    /// Restart with the snapshot deleted, or one byte of it flipped.
    RestartWithoutSnapshot {
        corrupt: bool,
    },
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..3u8, any::<bool>()).prop_map(|(producer, id)| Op::Publish { producer, id }),
        6 => any::<usize>().prop_map(Op::Retry),
        2 => Just(Op::Snapshot),
        1 => Just(Op::CleanRestart),
        2 => Just(Op::CrashRestart),
        1 => any::<bool>().prop_map(|corrupt| Op::RestartWithoutSnapshot { corrupt }),
        2 => (0..ID_WINDOW_MS / 2).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Every retry of a stored message whose keys are inside their windows is answered
    /// duplicate with the original location, across any mix of snapshots and restarts.
    #[test]
    fn retries_are_duplicates_across_snapshots_and_restarts(
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run_ops(ops));
    }
}

async fn run_ops(ops: Vec<Op>) {
    let env = Env::new();
    let mut b = env.open();
    topic(&b).await;
    b.set_dedupe_snapshot_policy(DedupeSnapshotPolicy {
        after_records: 7,
        after_bytes: u64::MAX,
    });
    let mut next_seq: HashMap<u8, u64> = HashMap::new();
    let mut next_id = 0;
    // Stored messages with their first answer and when they were stored.
    let mut stored: Vec<(PublishMessage, PublishResult, u64)> = Vec::new();
    let reopen = |env: &Env, b: Broker| {
        drop(b);
        let b = env.open();
        b.set_dedupe_snapshot_policy(DedupeSnapshotPolicy {
            after_records: 7,
            after_bytes: u64::MAX,
        });
        b
    };
    for op in ops {
        match op {
            Op::Publish { producer, id } => {
                let seq = next_seq.entry(producer).or_default();
                let mut m = stamp(&format!("p{producer}"), *seq);
                *seq += 1;
                if id {
                    m.id = Some(format!("id-{next_id}"));
                    next_id += 1;
                }
                let r = b.publish(TOPIC, vec![m.clone()]).await.unwrap()[0];
                assert!(!r.duplicate, "{m:?} is new");
                stored.push((m, r, env.now()));
            }
            Op::Retry(i) if !stored.is_empty() => {
                let (m, first, _) = &stored[i % stored.len()];
                // The producer stamp never leaves its window here (at most 60 sequences),
                // so a retry is a duplicate whatever its id's age.
                let again = b.publish(TOPIC, vec![m.clone()]).await.unwrap()[0];
                assert_eq!(
                    again,
                    PublishResult {
                        duplicate: true,
                        ..*first
                    },
                    "retry of {m:?}"
                );
                // The id alone, inside its window, is a duplicate too.
                if let (Some(id), true) =
                    (&m.id, env.now() < stored[i % stored.len()].2 + ID_WINDOW_MS)
                {
                    let again = b.publish(TOPIC, vec![with_id(id)]).await.unwrap()[0];
                    assert_eq!(
                        again,
                        PublishResult {
                            duplicate: true,
                            ..*first
                        },
                        "retry of id {id}"
                    );
                }
            }
            Op::Retry(_) => {}
            Op::Snapshot => b.snapshot_dedupe(TOPIC).unwrap(),
            Op::CleanRestart => {
                b.close();
                b = reopen(&env, b);
            }
            Op::CrashRestart => b = reopen(&env, b),
            Op::RestartWithoutSnapshot { corrupt } => {
                // Let a background snapshot finish, so it does not come back after this.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                let path = snapshot_path(&env);
                drop(b);
                if let Ok(mut bytes) = std::fs::read(&path) {
                    if corrupt {
                        let i = bytes.len() / 2;
                        bytes[i] ^= 0x40;
                        std::fs::write(&path, bytes).unwrap();
                    } else {
                        std::fs::remove_file(&path).unwrap();
                    }
                }
                b = env.open();
                b.set_dedupe_snapshot_policy(DedupeSnapshotPolicy {
                    after_records: 7,
                    after_bytes: u64::MAX,
                });
            }
            Op::Advance(ms) => env.advance(ms),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_created_topic_does_not_inherit_the_deleted_ones_dedupe() {
    let env = Env::new();
    let b = env.open();
    topic(&b).await;
    publish_some(&b, 0).await;
    b.snapshot_dedupe(TOPIC).unwrap();
    b.delete_topic(TOPIC, true).await.unwrap();
    topic(&b).await;
    // The same stamps and ids are new in the new topic, and stay its own after restarts.
    let sent = publish_some(&b, 0).await;
    assert!(sent.iter().all(|(_, r)| !r.duplicate));
    b.close();
    drop(b);
    let b = env.open();
    assert!(b.dedupe_recovery(TOPIC).unwrap().from_snapshot);
    assert_retries_are_duplicates(&b, &sent).await;
}
