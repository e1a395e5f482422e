//! Nothing stuck, nothing unbounded: leases expire with no consumer attached (the
//! sweeper), groups cost nothing until used and can be listed, deleted and moved, topics
//! can be deleted, messages peeked and dead letters paged, and every number a client
//! sends is bounded. Real files, injected clock (except where the sweeper task's own
//! timer is under test).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Env, NO_WAIT, msg, patch};
use surety_broker::{
    Broker, BrokerError, BrokerOptions, PublishMessage, SeekTo, Selection, StartAt, limits,
};

fn texts(n: usize) -> Vec<PublishMessage> {
    (0..n).map(|i| msg(&format!("m{i}"))).collect()
}

async fn group(b: &Broker, topic: &str, name: &str) -> surety_broker::GroupInfo {
    b.group_info(topic, name).await.unwrap()
}

fn receipts(d: &[surety_broker::Delivery]) -> Vec<String> {
    d.iter().map(|d| d.receipt.clone()).collect()
}

#[tokio::test]
async fn expired_leases_are_swept_and_dead_lettered_with_no_consumer_attached() {
    let env = Env::new();
    let b = env.open();
    b.put_topic("t", &patch(r#"{"ack_wait_ms":1000,"max_deliveries":1}"#))
        .await
        .unwrap();
    b.put_topic("u", &patch(r#"{"ack_wait_ms":5000,"max_deliveries":2}"#))
        .await
        .unwrap();
    b.publish("t", texts(3)).await.unwrap();
    b.publish("u", texts(2)).await.unwrap();
    assert_eq!(b.fetch("t", "g", 10, NO_WAIT, None).await.unwrap().len(), 3);
    assert_eq!(b.fetch("u", "g", 10, NO_WAIT, None).await.unwrap().len(), 2);
    // Nothing is due yet; the answer is the earliest lease expiry.
    assert_eq!(b.expire_due().await.unwrap(), Some(env.now() + 1000));
    assert_eq!(group(&b, "t", "g").await.stats.in_flight, 3);

    env.advance(1000);
    assert_eq!(b.expire_due().await.unwrap(), Some(env.now() + 4000));
    let t = group(&b, "t", "g").await;
    assert_eq!((t.stats.in_flight, t.dead_letters_live, t.lag), (0, 3, 0));
    let dls = b.dead_letters("t", "g").await.unwrap();
    assert!(
        dls.iter()
            .all(|d| d.reason == "lease expired" && d.attempts == 1)
    );
    // The other topic's leases are not due: untouched.
    assert_eq!(group(&b, "u", "g").await.stats.in_flight, 2);

    env.advance(4000);
    assert_eq!(b.expire_due().await.unwrap(), None, "no lease is held now");
    let u = group(&b, "u", "g").await;
    assert_eq!((u.stats.in_flight, u.stats.pending, u.lag), (0, 2, 2));
    assert!(u.stats.is_conserved() && t.stats.is_conserved());
}

#[tokio::test]
async fn leases_taken_before_a_restart_are_swept_after_it() {
    let env = Env::new();
    {
        let b = env.open();
        b.put_topic("t", &patch(r#"{"ack_wait_ms":1000,"max_deliveries":1}"#))
            .await
            .unwrap();
        b.publish("t", texts(2)).await.unwrap();
        b.fetch("t", "g", 10, NO_WAIT, None).await.unwrap();
        b.close();
    }
    let b = env.open();
    env.advance(1000);
    b.expire_due().await.unwrap();
    let g = group(&b, "t", "g").await;
    assert_eq!((g.stats.in_flight, g.dead_letters_live), (0, 2));
    b.close();
    drop(b);
    // And the dead letters the sweep wrote are durable.
    let b = env.open();
    assert_eq!(group(&b, "t", "g").await.dead_letters_live, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_task_expires_leases_on_time_and_never_holds_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::open(dir.path(), BrokerOptions::default()).unwrap();
    let sweeper = b.spawn_sweeper();
    b.put_topic("t", &patch(r#"{"ack_wait_ms":300,"max_deliveries":1}"#))
        .await
        .unwrap();
    b.publish("t", texts(1)).await.unwrap();
    b.fetch("t", "g", 1, NO_WAIT, None).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while group(&b, "t", "g").await.dead_letters_live == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease never expired without a fetch"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.close();
    drop(b);
    // The sweeper holds the broker weakly: the directory can be opened again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let b = loop {
        match Broker::open(dir.path(), BrokerOptions::default()) {
            Ok(b) => break b,
            Err(BrokerError::DirectoryInUse(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("reopen failed: {e}"),
        }
    };
    tokio::time::timeout(Duration::from_secs(3), sweeper)
        .await
        .expect("the sweeper stops once its broker is gone")
        .unwrap();
    assert_eq!(group(&b, "t", "g").await.dead_letters_live, 1);
}

/// Bytes the files under `dir` occupy on disk (allocated blocks, not apparent size).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += m.blocks() * 512;
        if m.is_dir() {
            total += disk_usage(&e.path());
        }
    }
    total
}

#[tokio::test]
async fn a_hundred_groups_cost_almost_no_disk_until_they_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::open(dir.path(), BrokerOptions::default()).unwrap();
    b.put_topic("t", &patch(r#"{"max_deliveries":1}"#))
        .await
        .unwrap();
    b.publish("t", texts(1)).await.unwrap();
    let before = disk_usage(dir.path());
    for i in 0..100 {
        b.fetch("t", &format!("typo-{i}"), 1, NO_WAIT, None)
            .await
            .unwrap();
    }
    let grown = disk_usage(dir.path()) - before;
    assert!(
        grown < 10 << 20,
        "100 groups grew the data directory by {grown} bytes"
    );
    assert!(
        !dir.path().join("topics/t/dlq").exists(),
        "no dead-letter log before the first dead letter"
    );
    assert_eq!(b.groups("t").await.unwrap().len(), 100);
    // The first dead letter creates the group's log; it survives a restart.
    let d = b.fetch("t", "dl", 1, NO_WAIT, None).await.unwrap();
    b.nack("t", "dl", &receipts(&d), NO_WAIT, "bad")
        .await
        .unwrap();
    assert!(dir.path().join("topics/t/dlq/dl").is_dir());
    b.close();
    drop(b);
    let b = Broker::open(dir.path(), BrokerOptions::default()).unwrap();
    assert_eq!(b.dead_letters("t", "dl").await.unwrap()[0].reason, "bad");
}

#[tokio::test]
async fn segment_size_is_a_topic_setting() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::open(dir.path(), BrokerOptions::default()).unwrap();
    b.put_topic(
        "small",
        &patch(r#"{"segment_bytes":1048576,"max_message_bytes":4096}"#),
    )
    .await
    .unwrap();
    let m = PublishMessage {
        payload: vec![1; 4000],
        ..PublishMessage::default()
    };
    for _ in 0..4 {
        b.publish("small", vec![m.clone(); 200]).await.unwrap();
    }
    let segments = std::fs::read_dir(dir.path().join("topics/small/p0"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count();
    assert!(
        segments >= 3,
        "3.2 MB in 1 MiB segments, got {segments} segments"
    );
    let e = b
        .put_topic("small", &patch(r#"{"segment_bytes":1}"#))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "invalid_config");
}

#[tokio::test]
async fn deleting_a_group_drops_its_state_and_dead_letters_for_good() {
    let env = Env::new();
    let b = env.open();
    b.put_topic("t", &patch(r#"{"max_deliveries":1}"#))
        .await
        .unwrap();
    b.publish("t", texts(5)).await.unwrap();
    let d = b.fetch("t", "g", 3, NO_WAIT, None).await.unwrap();
    b.ack("t", "g", &receipts(&d[..1])).await.unwrap();
    b.nack("t", "g", &receipts(&d[1..2]), NO_WAIT, "poison")
        .await
        .unwrap();
    b.fetch("t", "keep", 5, NO_WAIT, None).await.unwrap();

    let dropped = b.delete_group("t", "g").await.unwrap();
    // 5 accepted: 1 acked, 1 dead-lettered, 1 in flight and 2 never delivered remain.
    assert_eq!((dropped.unsettled, dropped.dead_letters), (3, 1));
    assert!(matches!(
        b.group_info("t", "g").await,
        Err(BrokerError::GroupNotFound { .. })
    ));
    assert!(matches!(
        b.delete_group("t", "g").await,
        Err(BrokerError::GroupNotFound { .. })
    ));
    assert!(!env.dir.path().join("topics/t/dlq/g").exists());
    // Its receipts settle nothing now.
    assert_eq!(b.ack("t", "g", &receipts(&d[2..])).await.unwrap(), 0);
    assert_eq!(
        b.groups("t")
            .await
            .unwrap()
            .iter()
            .map(|g| &g.name)
            .collect::<Vec<_>>(),
        ["keep"]
    );

    b.close();
    drop(b);
    let b = env.open();
    assert!(b.group_info("t", "g").await.is_err(), "stays deleted");
    // The same name starts anew: everything again from the earliest, no dead letters.
    let again = b.fetch("t", "g", 10, NO_WAIT, None).await.unwrap();
    assert_eq!(again.len(), 5);
    assert!(again.iter().all(|d| d.delivery_count == 1));
    assert!(b.dead_letters("t", "g").await.unwrap().is_empty());
    // A receipt of the deleted group cannot settle the new group's delivery 1.
    let e = b.ack("t", "g", &receipts(&d[2..])).await.unwrap_err();
    assert_eq!(e.code(), "receipt_stale");
    assert_eq!(group(&b, "t", "keep").await.stats.in_flight, 5);
}

#[tokio::test]
async fn a_group_can_start_at_the_latest_message() {
    let env = Env::new();
    let b = env.open();
    b.put_topic("t", &patch("{}")).await.unwrap();
    b.publish("t", texts(4)).await.unwrap();
    let (info, created) = b.create_group("t", "new", StartAt::Latest).await.unwrap();
    assert!(created);
    assert_eq!(info.lag, 0);
    let (_, created) = b.create_group("t", "new", StartAt::Earliest).await.unwrap();
    assert!(!created, "an existing group is not moved");
    b.publish("t", vec![msg("fresh")]).await.unwrap();
    let d = b.fetch("t", "new", 10, NO_WAIT, None).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].message.payload, b"fresh");
}

#[tokio::test]
async fn seek_replays_and_skips_and_counts_both() {
    let env = Env::new();
    let b = env.open();
    b.put_topic("t", &patch(r#"{"partitions":2}"#))
        .await
        .unwrap();
    // Keys pin messages to partitions; timestamps 1 s apart.
    let mut stamps = Vec::new();
    for i in 0..6 {
        stamps.push(env.now());
        let m = PublishMessage {
            key: Some(b"k".to_vec()),
            ..msg(&format!("m{i}"))
        };
        b.publish("t", vec![m]).await.unwrap();
        env.advance(1000);
    }
    let d = b.fetch("t", "g", 10, NO_WAIT, None).await.unwrap();
    assert_eq!(d.len(), 6);
    let p = d[0].partition;
    b.ack("t", "g", &receipts(&d[..4])).await.unwrap();

    // Earliest: the 4 acked come back, the 2 in flight are withdrawn and redelivered.
    let out = b.seek("t", "g", SeekTo::Earliest).await.unwrap();
    assert_eq!((out.skipped, out.replayed), (0, 4));
    let again = b.fetch("t", "g", 10, NO_WAIT, None).await.unwrap();
    assert_eq!(again.len(), 6);
    assert!(again.iter().all(|d| d.delivery_count == 1));
    // A receipt from before the seek names the same offset and delivery number as the
    // new delivery, and still cannot settle it.
    let e = b.ack("t", "g", &receipts(&d[4..])).await.unwrap_err();
    assert_eq!(e.code(), "receipt_stale");
    assert_eq!(group(&b, "t", "g").await.stats.in_flight, 6);

    // Latest: all 6 in flight are passed over, counted.
    let out = b.seek("t", "g", SeekTo::Latest).await.unwrap();
    assert_eq!((out.skipped, out.replayed), (6, 0));
    let g = group(&b, "t", "g").await;
    assert_eq!((g.lag, g.stats.skipped_by_seek), (0, 6));
    assert!(g.stats.is_conserved(), "{:?}", g.stats);

    // By time: from the 3rd message on. By offset: clamped to the partition's end.
    let out = b
        .seek("t", "g", SeekTo::Timestamp(stamps[2]))
        .await
        .unwrap();
    assert_eq!((out.skipped, out.replayed), (0, 4));
    let part = out.partitions.iter().find(|s| s.partition == p).unwrap();
    assert_eq!((part.from, part.to), (6, 2));
    let out = b
        .seek(
            "t",
            "g",
            SeekTo::Offset {
                partition: p,
                offset: 99,
            },
        )
        .await
        .unwrap();
    assert_eq!(out.partitions[0].to, 6);
    assert_eq!(out.skipped, 4);
    assert!(matches!(
        b.seek(
            "t",
            "g",
            SeekTo::Offset {
                partition: 2,
                offset: 0
            }
        )
        .await,
        Err(BrokerError::OutOfRange {
            field: "partition",
            ..
        })
    ));
    assert!(matches!(
        b.seek("t", "nobody", SeekTo::Earliest).await,
        Err(BrokerError::GroupNotFound { .. })
    ));

    // The position and counts survive a restart.
    b.seek(
        "t",
        "g",
        SeekTo::Offset {
            partition: p,
            offset: 5,
        },
    )
    .await
    .unwrap();
    let before = group(&b, "t", "g").await;
    b.close();
    drop(b);
    let b = env.open();
    assert_eq!(group(&b, "t", "g").await, before);
    let last = b.fetch("t", "g", 10, NO_WAIT, None).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].message.payload, b"m5");
}

#[tokio::test]
async fn deleting_a_topic_is_refused_while_unsettled_unless_forced() {
    let env = Env::new();
    let b = env.open();
    b.put_topic("t", &patch(r#"{"max_deliveries":1}"#))
        .await
        .unwrap();
    b.publish("t", texts(3)).await.unwrap();
    let d = b.fetch("t", "g", 3, NO_WAIT, None).await.unwrap();
    b.ack("t", "g", &receipts(&d[..2])).await.unwrap();
    match b.delete_topic("t", false).await {
        Err(e @ BrokerError::TopicBusy { .. }) => assert_eq!(e.code(), "topic_busy"),
        other => panic!("expected topic_busy, got {other:?}"),
    }
    assert_eq!(b.describe("t").await.unwrap().end_offsets, [3], "unchanged");
    b.nack("t", "g", &receipts(&d[2..]), NO_WAIT, "x")
        .await
        .unwrap();
    assert!(
        b.delete_topic("t", false).await.is_err(),
        "a dead letter is unsettled too"
    );

    let dropped = b.delete_topic("t", true).await.unwrap();
    assert_eq!(
        (
            dropped.messages,
            dropped.groups,
            dropped.unsettled,
            dropped.dead_letters
        ),
        (3, 1, 0, 1)
    );
    assert!(matches!(
        b.describe("t").await,
        Err(BrokerError::TopicNotFound(_))
    ));
    assert!(!env.dir.path().join("topics/t").exists());
    // Settled topics go without force; the name can be used again, empty.
    b.put_topic("t", &patch("{}")).await.unwrap();
    assert!(
        b.fetch("t", "g", 10, NO_WAIT, None)
            .await
            .unwrap()
            .is_empty()
    );
    b.delete_topic("t", false).await.unwrap();
    b.close();
    drop(b);
    let b = env.open();
    assert!(b.topic_names().is_empty());
    assert!(!env.dir.path().join("trash").exists());
}

#[tokio::test]
async fn peek_reads_without_delivering() {
    let env = Env::new();
    let b = env.open();
    b.put_topic("t", &patch("{}")).await.unwrap();
    b.publish("t", texts(5)).await.unwrap();
    let page = b.peek("t", 0, None, 2).await.unwrap();
    assert_eq!(page.messages.len(), 2);
    assert_eq!(
        (page.next_offset, page.start_offset, page.end_offset),
        (2, 0, 5)
    );
    let page = b.peek("t", 0, Some(page.next_offset), 10).await.unwrap();
    assert_eq!(page.messages[0].payload, b"m2");
    assert_eq!(page.next_offset, 5);
    assert!(
        b.peek("t", 0, Some(5), 10)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    assert!(b.groups("t").await.unwrap().is_empty(), "no group created");
    let d = b.fetch("t", "g", 10, NO_WAIT, None).await.unwrap();
    assert!(
        d.iter().all(|d| d.delivery_count == 1),
        "peek counted nothing"
    );
    for bad in [b.peek("t", 1, None, 1).await, b.peek("t", 0, None, 0).await] {
        assert_eq!(bad.unwrap_err().code(), "invalid_request");
    }
}

#[tokio::test]
async fn dead_letters_come_in_pages_with_a_cursor() {
    let env = Env::new();
    let b = env.open();
    b.put_topic("t", &patch(r#"{"max_deliveries":1}"#))
        .await
        .unwrap();
    b.publish("t", texts(25)).await.unwrap();
    let d = b.fetch("t", "g", 25, NO_WAIT, None).await.unwrap();
    b.nack("t", "g", &receipts(&d), NO_WAIT, "x").await.unwrap();
    let (mut after, mut seen, mut pages) = (None, Vec::new(), 0);
    loop {
        let mut page = b.dead_letter_page("t", "g", after, 10).await.unwrap();
        seen.extend(page.by_ref().map(|d| d.unwrap().offset));
        pages += 1;
        match page.next_cursor() {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (0..25).collect::<Vec<u64>>());
    // Resent ones drop out of later pages.
    b.resend("t", "g", &Selection::Ids(vec![0, 1]))
        .await
        .unwrap();
    let first: Vec<u64> = b
        .dead_letter_page("t", "g", None, 2)
        .await
        .unwrap()
        .map(|d| d.unwrap().id)
        .collect();
    assert_eq!(first, [2, 3]);
    let err = b.dead_letter_page("t", "g", None, 0).await.unwrap_err();
    assert_eq!(err.code(), "invalid_request");
}

#[tokio::test]
async fn a_page_of_large_dead_letters_stops_at_the_byte_budget() {
    let env = Env::new();
    let b = env.open();
    b.put_topic("t", &patch(r#"{"max_deliveries":1}"#))
        .await
        .unwrap();
    let big = PublishMessage {
        payload: vec![7; 1 << 20],
        ..PublishMessage::default()
    };
    b.publish("t", vec![big; 6]).await.unwrap();
    // A fetch reads up to 4 MiB too: take them all in several.
    let mut dead = 0;
    while dead < 6 {
        let d = b.fetch("t", "g", 6, NO_WAIT, None).await.unwrap();
        dead += b.nack("t", "g", &receipts(&d), NO_WAIT, "x").await.unwrap();
    }
    let mut page = b.dead_letter_page("t", "g", None, 100).await.unwrap();
    let n = page.by_ref().count();
    assert_eq!(n, limits::PAGE_BYTES >> 20);
    assert_eq!(page.next_cursor(), Some(n as u64 - 1));
}

#[tokio::test]
async fn numbers_out_of_bounds_are_refused_and_change_nothing() {
    let env = Env::new();
    let b = env.open();
    b.put_topic("t", &patch("{}")).await.unwrap();
    let far = PublishMessage {
        not_before: Some(99_999_999_999_999_999),
        ..msg("later")
    };
    let e = b.publish("t", vec![far]).await.unwrap_err();
    assert_eq!(e.code(), "invalid_request");
    assert!(e.to_string().contains("not_before_ms"), "{e}");
    assert_eq!(b.describe("t").await.unwrap().end_offsets, [0]);
    assert_eq!(
        b.publish("t", vec![]).await.unwrap_err().code(),
        "invalid_request"
    );

    b.publish("t", texts(1)).await.unwrap();
    let forever = Some(Duration::from_millis(u64::MAX));
    let e = b.fetch("t", "g", 1, NO_WAIT, forever).await.unwrap_err();
    assert!(e.to_string().contains("lease_ms"), "{e}");
    assert!(
        b.groups("t").await.unwrap().is_empty(),
        "no group was created"
    );
    for (max, wait) in [
        (0, 0),
        (limits::MAX_FETCH + 1, 0),
        (1, limits::MAX_WAIT_MS + 1),
    ] {
        let e = b
            .fetch("t", "g", max, Duration::from_millis(wait), None)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "invalid_request");
    }
    let d = b.fetch("t", "g", 1, NO_WAIT, None).await.unwrap();
    let e = b
        .nack("t", "g", &receipts(&d), Duration::from_millis(u64::MAX), "")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("delay_ms"), "{e}");
    let long_reason = "x".repeat(limits::MAX_REASON_BYTES + 1);
    assert!(
        b.nack("t", "g", &receipts(&d), NO_WAIT, &long_reason)
            .await
            .is_err()
    );
    assert_eq!(group(&b, "t", "g").await.stats.in_flight, 1, "still leased");
    assert_eq!(b.ack("t", "g", &receipts(&d)).await.unwrap(), 1);
}

#[tokio::test]
async fn an_invalid_topic_name_is_invalid_name_everywhere() {
    let env = Env::new();
    let b = env.open();
    for name in ["bad/name", "", ".."] {
        let codes = [
            b.publish(name, texts(1)).await.unwrap_err().code(),
            b.fetch(name, "g", 1, NO_WAIT, None)
                .await
                .unwrap_err()
                .code(),
            b.peek(name, 0, None, 1).await.unwrap_err().code(),
            b.delete_topic(name, true).await.unwrap_err().code(),
        ];
        assert_eq!(codes, ["invalid_name"; 4], "{name:?}");
    }
    assert_eq!(
        b.publish("missing", texts(1)).await.unwrap_err().code(),
        "topic_not_found"
    );
}

#[tokio::test]
async fn data_files_are_private_to_the_broker_user() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let b = env.open();
    b.put_topic("t", &patch("{}")).await.unwrap();
    let mode = |p: &str| {
        std::fs::metadata(env.dir.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    for file in ["receipt.key", "LOCK", "topics/t/topic.json"] {
        assert_eq!(mode(file), 0o600, "{file}");
    }
    for dir in ["topics", "topics/t"] {
        assert_eq!(mode(dir), 0o700, "{dir}");
    }
}
