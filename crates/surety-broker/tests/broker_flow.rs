//! End-to-end broker semantics on real files, with an injected clock: publish → fetch →
//! ack/nack → redelivery → dead letter → resend/purge, idempotent producers, bad input,
//! and all of it surviving a restart (acks not undone, delivery counts not reset).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Env, NO_WAIT, msg, patch};
use surety_broker::topic::TopicConfigPatch;
use surety_broker::{Broker, BrokerError, BrokerOptions, PublishMessage, Selection};

#[tokio::test]
async fn publish_fetch_ack_and_nothing_comes_back_after_restart() {
    let env = Env::new();
    let b = env.open();
    let (_, created) = b
        .put_topic("orders", &patch(r#"{"partitions":2}"#))
        .await
        .unwrap();
    assert!(created);
    let res = b
        .publish("orders", (0..10).map(|i| msg(&format!("m{i}"))).collect())
        .await
        .unwrap();
    assert!(res.iter().all(|r| !r.duplicate));
    let got = b
        .fetch("orders", "billing", 100, NO_WAIT, None)
        .await
        .unwrap();
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|d| d.delivery_count == 1));
    let receipts: Vec<String> = got.iter().map(|d| d.receipt.clone()).collect();
    assert_eq!(b.ack("orders", "billing", &receipts).await.unwrap(), 10);
    assert_eq!(
        b.ack("orders", "billing", &receipts).await.unwrap(),
        0,
        "repeat is harmless"
    );
    // Another group is independent.
    assert_eq!(
        b.fetch("orders", "audit", 100, NO_WAIT, None)
            .await
            .unwrap()
            .len(),
        10
    );
    b.close();
    drop(b);

    let b = env.open();
    env.advance(60 * 60 * 1000);
    assert!(
        b.fetch("orders", "billing", 100, NO_WAIT, None)
            .await
            .unwrap()
            .is_empty()
    );
    // The audit group never acked: its leases expired and it gets everything again.
    let again = b
        .fetch("orders", "audit", 100, NO_WAIT, None)
        .await
        .unwrap();
    assert_eq!(again.len(), 10);
    assert!(
        again.iter().all(|d| d.delivery_count == 2),
        "delivery counts survive restart"
    );
    let info = b.describe("orders").await.unwrap();
    let billing = info.groups.iter().find(|g| g.name == "billing").unwrap();
    assert_eq!((billing.stats.acked, billing.lag), (10, 0));
    assert!(info.groups.iter().all(|g| g.stats.is_conserved()));
}

#[tokio::test]
async fn nack_until_dead_letter_then_resend_only_to_that_group_then_purge() {
    let env = Env::new();
    let b = env.open();
    b.put_topic(
        "jobs",
        &patch(r#"{"max_deliveries":2,"retry_backoff":{"initial_ms":10,"max_ms":10,"multiplier":1.0,"jitter":0.0}}"#),
    )
    .await
    .unwrap();
    b.publish("jobs", vec![msg("poison")]).await.unwrap();
    b.fetch("jobs", "other", 1, NO_WAIT, None).await.unwrap(); // creates the other group
    for attempt in 1..=2 {
        let d = b.fetch("jobs", "workers", 1, NO_WAIT, None).await.unwrap();
        assert_eq!(d[0].delivery_count, attempt);
        b.nack(
            "jobs",
            "workers",
            &[d[0].receipt.clone()],
            NO_WAIT,
            &format!("boom {attempt}"),
        )
        .await
        .unwrap();
        env.advance(10);
    }
    assert!(
        b.fetch("jobs", "workers", 1, NO_WAIT, None)
            .await
            .unwrap()
            .is_empty()
    );
    let dls = b.dead_letters("jobs", "workers").await.unwrap();
    assert_eq!(dls.len(), 1);
    assert_eq!(
        (dls[0].reason.as_str(), dls[0].attempts, dls[0].offset),
        ("boom 2", 2, 0)
    );
    assert_eq!(dls[0].message.payload, b"poison");
    drop(b);

    // Dead letters survive a restart; resend goes to this group only, with lineage.
    let b = env.open();
    assert_eq!(b.dead_letters("jobs", "workers").await.unwrap().len(), 1);
    assert_eq!(
        b.resend("jobs", "workers", &Selection::All).await.unwrap(),
        1
    );
    let d = b.fetch("jobs", "workers", 10, NO_WAIT, None).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].delivery_count, 1);
    let lineage = d[0].message.lineage.clone().unwrap();
    assert_eq!(
        (lineage.group.as_str(), lineage.prior_attempts),
        ("workers", 2)
    );
    env.advance(60_000);
    let other = b.fetch("jobs", "other", 10, NO_WAIT, None).await.unwrap();
    assert_eq!(
        other.len(),
        1,
        "only the original redelivery, not the resend"
    );
    assert_eq!(other[0].message.offset, 0);
    // The resent copy's lease expired above (its first failed delivery); fail the
    // second, last one, then purge: counted.
    let d = b.fetch("jobs", "workers", 1, NO_WAIT, None).await.unwrap();
    assert_eq!(d[0].delivery_count, 2);
    b.nack(
        "jobs",
        "workers",
        &[d[0].receipt.clone()],
        NO_WAIT,
        "still broken",
    )
    .await
    .unwrap();
    assert_eq!(
        b.dead_letters("jobs", "workers").await.unwrap()[0].reason,
        "still broken"
    );
    assert_eq!(
        b.purge("jobs", "workers", &Selection::All).await.unwrap(),
        1
    );
    let info = b.describe("jobs").await.unwrap();
    let g = info.groups.iter().find(|g| g.name == "workers").unwrap();
    assert_eq!(
        (
            g.dead_letters_live,
            g.dead_letters_purged,
            g.dead_letters_resent
        ),
        (0, 1, 1)
    );
    assert!(g.stats.is_conserved(), "{:?}", g.stats);
}

#[tokio::test]
async fn bad_receipts_are_refused_and_change_nothing() {
    let env = Env::new();
    let b = env.open();
    b.put_topic("t", &TopicConfigPatch::default())
        .await
        .unwrap();
    b.put_topic("u", &TopicConfigPatch::default())
        .await
        .unwrap();
    b.publish("t", vec![msg("a"), msg("b")]).await.unwrap();
    b.publish("u", vec![msg("a")]).await.unwrap();
    let d = b
        .fetch("t", "g", 2, NO_WAIT, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    let foreign = b.fetch("u", "g", 1, NO_WAIT, None).await.unwrap();
    let err = b
        .ack("t", "g", &[foreign[0].receipt.clone()])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "receipt_invalid");
    let err = b
        .ack("t", "other", &[d[0].receipt.clone()])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "receipt_invalid");
    let err = b.ack("t", "g", &["garbage".to_string()]).await.unwrap_err();
    assert_eq!(err.code(), "receipt_invalid");
    // One bad receipt in a batch: nothing is acked.
    let err = b
        .ack("t", "g", &[d[0].receipt.clone(), "garbage".into()])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "receipt_invalid");
    env.advance(5_000);
    let err = b.ack("t", "g", &[d[1].receipt.clone()]).await.unwrap_err();
    assert_eq!(err.code(), "lease_expired");
    let again = b.fetch("t", "g", 10, NO_WAIT, None).await.unwrap();
    assert_eq!(again.len(), 2, "nothing was acked by the refused requests");
}

#[tokio::test]
async fn idempotent_producer_retries_are_stored_once_even_after_restart() {
    let env = Env::new();
    let b = env.open();
    b.put_topic("t", &patch(r#"{"partitions":3}"#))
        .await
        .unwrap();
    let m = |seq: u64| PublishMessage {
        producer_id: Some("p1".into()),
        sequence: Some(seq),
        ..msg(&format!("s{seq}"))
    };
    let first = b.publish("t", vec![m(0), m(1)]).await.unwrap();
    let retry = b.publish("t", vec![m(1)]).await.unwrap();
    assert!(retry[0].duplicate);
    assert_eq!(
        (retry[0].partition, retry[0].offset),
        (first[1].partition, first[1].offset)
    );
    drop(b);
    let b = env.open();
    let retry = b.publish("t", vec![m(0)]).await.unwrap();
    assert!(retry[0].duplicate);
    assert_eq!(
        (retry[0].partition, retry[0].offset),
        (first[0].partition, first[0].offset)
    );
    let by_id = PublishMessage {
        id: Some("order-1".into()),
        ..msg("x")
    };
    let a = b.publish("t", vec![by_id.clone()]).await.unwrap();
    let c = b.publish("t", vec![by_id]).await.unwrap();
    assert!(!a[0].duplicate && c[0].duplicate);
    let info = b.describe("t").await.unwrap();
    assert_eq!(info.end_offsets.iter().sum::<u64>(), 3);
}

#[tokio::test]
async fn bad_input_gets_typed_errors_and_changes_nothing() {
    let env = Env::new();
    let b = env.open();
    for bad in ["", ".", "..", "a/b", &"x".repeat(250)] {
        let err = b
            .put_topic(bad, &TopicConfigPatch::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), "invalid_name", "{bad:?}");
    }
    let err = b
        .put_topic("t", &patch(r#"{"partitions":0}"#))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_config");
    assert!(b.topic_names().is_empty());
    assert!(matches!(
        b.publish("nope", vec![msg("a")]).await,
        Err(BrokerError::TopicNotFound(_))
    ));
    b.put_topic("t", &patch(r#"{"max_message_bytes":1024}"#))
        .await
        .unwrap();
    let big = PublishMessage {
        payload: vec![0; 2000],
        ..PublishMessage::default()
    };
    assert_eq!(
        b.publish("t", vec![msg("ok"), big])
            .await
            .unwrap_err()
            .code(),
        "message_too_large"
    );
    let reserved = PublishMessage {
        headers: [("surety.id".to_string(), "x".to_string())].into(),
        ..msg("a")
    };
    assert_eq!(
        b.publish("t", vec![reserved]).await.unwrap_err().code(),
        "invalid_message"
    );
    let half = PublishMessage {
        producer_id: Some("p".into()),
        ..msg("a")
    };
    assert_eq!(
        b.publish("t", vec![half]).await.unwrap_err().code(),
        "invalid_message"
    );
    assert_eq!(
        b.describe("t").await.unwrap().end_offsets,
        vec![0],
        "rejected batches store nothing"
    );
    assert_eq!(
        b.fetch("t", "bad/group", 1, NO_WAIT, None)
            .await
            .unwrap_err()
            .code(),
        "invalid_name"
    );
}

#[tokio::test]
async fn delayed_messages_and_long_poll() {
    let env = Env::new();
    let b = env.open();
    b.put_topic("t", &TopicConfigPatch::default())
        .await
        .unwrap();
    let now = env.clock.load(Ordering::SeqCst);
    let delayed = PublishMessage {
        not_before: Some(now + 5_000),
        ..msg("later")
    };
    b.publish("t", vec![delayed, msg("now")]).await.unwrap();
    let d = b.fetch("t", "g", 10, NO_WAIT, None).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].message.payload, b"now");
    env.advance(5_000);
    let d = b.fetch("t", "g", 10, NO_WAIT, None).await.unwrap();
    assert_eq!(d[0].message.payload, b"later");
    // Long poll: a fetch waiting on an empty topic is woken by a publish, not by its
    // timeout.
    b.put_topic("empty", &TopicConfigPatch::default())
        .await
        .unwrap();
    let b2 = b.clone();
    let waiter = tokio::spawn(async move {
        b2.fetch("empty", "g", 10, Duration::from_secs(30), None)
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiter.is_finished(),
        "nothing to fetch yet: the poll waits"
    );
    b.publish("empty", vec![msg("wake")]).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the publish wakes the poll long before its 30 s")
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message.payload, b"wake");
}

#[tokio::test]
async fn journal_compaction_keeps_every_group_state_across_restart() {
    let env = Env::new();
    let b = env.open();
    b.put_topic(
        "t",
        &patch(r#"{"partitions":2,"max_message_bytes":1024,"max_deliveries":1}"#),
    )
    .await
    .unwrap();
    b.publish("t", (0..4000).map(|i| msg(&format!("m{i}"))).collect())
        .await
        .unwrap();
    // Ack most, nack a few to the dead letters, leave some in flight and some fresh.
    let mut in_flight = Vec::new();
    for round in 0..36 {
        let d = b
            .fetch("t", "g", 100, NO_WAIT, Some(Duration::from_secs(3600)))
            .await
            .unwrap();
        let (ack, keep): (Vec<_>, Vec<_>) = d.into_iter().partition(|d| d.message.offset % 10 != 7);
        let receipts: Vec<String> = ack.iter().map(|d| d.receipt.clone()).collect();
        b.ack("t", "g", &receipts).await.unwrap();
        if round % 2 == 0 {
            in_flight.extend(keep);
        } else {
            let receipts: Vec<String> = keep.iter().map(|d| d.receipt.clone()).collect();
            b.nack("t", "g", &receipts, NO_WAIT, "bad").await.unwrap();
        }
    }
    b.fetch("t", "other", 10, NO_WAIT, None).await.unwrap();
    let before = b.describe("t").await.unwrap();
    let (grown, segments_before) = b.journal_info("t").unwrap();
    assert!(
        grown >= 20 && segments_before > 1,
        "journal should have grown: {grown} records, {segments_before} segments"
    );
    b.maintain().await.unwrap();
    let (grown, segments_after) = b.journal_info("t").unwrap();
    assert_eq!(grown, 0);
    assert!(
        segments_after < segments_before,
        "compaction deleted journal segments"
    );
    // Work after the snapshot is replayed from the journal on top of it.
    let receipt = in_flight.pop().unwrap().receipt;
    assert_eq!(
        b.ack("t", "g", std::slice::from_ref(&receipt))
            .await
            .unwrap(),
        1
    );
    let before_restart = b.describe("t").await.unwrap();
    assert_ne!(before, before_restart);
    b.close();
    drop(b);

    let b = env.open();
    assert_eq!(b.describe("t").await.unwrap(), before_restart);
    assert_eq!(
        b.ack("t", "g", &[receipt]).await.unwrap(),
        0,
        "the ack after the snapshot was replayed"
    );
    // Leases taken before the snapshot are still valid receipts after the restart.
    let receipts: Vec<String> = in_flight.iter().map(|d| d.receipt.clone()).collect();
    assert_eq!(b.ack("t", "g", &receipts).await.unwrap(), receipts.len());
    let g = b
        .describe("t")
        .await
        .unwrap()
        .groups
        .into_iter()
        .find(|g| g.name == "g")
        .unwrap();
    assert!(g.stats.is_conserved());
    assert!(g.dead_letters_live > 0);
    assert_eq!(
        b.dead_letters("t", "g").await.unwrap().len() as u64,
        g.dead_letters_live
    );
}

#[tokio::test]
async fn retention_never_deletes_unsettled_messages_unless_the_topic_says_so() {
    let env = Env::new();
    let b = env.open();
    b.put_topic(
        "t",
        &patch(r#"{"max_message_bytes":1024,"retention":{"max_bytes":1}}"#),
    )
    .await
    .unwrap();
    let payload = "x".repeat(1000);
    b.publish("t", (0..400).map(|_| msg(&payload)).collect())
        .await
        .unwrap();
    let d = b.fetch("t", "g", 150, NO_WAIT, None).await.unwrap();
    let receipts: Vec<String> = d.iter().map(|d| d.receipt.clone()).collect();
    b.ack("t", "g", &receipts).await.unwrap();
    b.maintain().await.unwrap();
    let info = b.describe("t").await.unwrap();
    let start = info.start_offsets[0];
    assert!(
        start > 0,
        "segments wholly acked by every group are deleted"
    );
    assert!(
        start <= 150,
        "nothing at or above the lowest unsettled offset (150) goes: start {start}"
    );
    // Everything unsettled is still delivered.
    let rest = b.fetch("t", "g", 1000, NO_WAIT, None).await.unwrap();
    assert_eq!(rest.len(), 250);
    assert_eq!(rest[0].message.offset, 150);

    // Now the topic allows deleting unsettled messages: they are counted, not hidden.
    b.put_topic(
        "t",
        &patch(r#"{"retention":{"max_bytes":1,"delete_unsettled":true}}"#),
    )
    .await
    .unwrap();
    b.maintain().await.unwrap();
    let info = b.describe("t").await.unwrap();
    assert!(info.start_offsets[0] > 150);
    let g = &info.groups[0];
    assert!(g.stats.expired_unsettled > 0);
    assert!(g.stats.is_conserved(), "{:?}", g.stats);
}

#[tokio::test]
async fn requests_that_only_read_or_settle_never_create_a_group() {
    let env = Env::new();
    let b = env.open();
    b.put_topic("t", &TopicConfigPatch::default())
        .await
        .unwrap();
    assert_eq!(
        b.ack("t", "ghost", &["forged".into()])
            .await
            .unwrap_err()
            .code(),
        "receipt_invalid"
    );
    assert_eq!(b.ack("t", "ghost", &[]).await.unwrap(), 0);
    assert!(b.dead_letters("t", "ghost").await.unwrap().is_empty());
    assert_eq!(b.dead_letter("t", "ghost", 0).await.unwrap(), None);
    assert_eq!(b.resend("t", "ghost", &Selection::All).await.unwrap(), 0);
    assert_eq!(b.purge("t", "ghost", &Selection::All).await.unwrap(), 0);
    assert!(b.describe("t").await.unwrap().groups.is_empty());
}

#[tokio::test]
async fn ack_each_answers_every_receipt_and_applies_the_good_ones() {
    let env = Env::new();
    let b = env.open();
    b.put_topic("t", &TopicConfigPatch::default())
        .await
        .unwrap();
    b.publish("t", vec![msg("a"), msg("b")]).await.unwrap();
    let short = b
        .fetch("t", "g", 1, NO_WAIT, Some(Duration::from_secs(1)))
        .await
        .unwrap();
    let long = b
        .fetch("t", "g", 1, NO_WAIT, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    env.advance(2_000);
    let receipts = vec![
        short[0].receipt.clone(),
        "forged".to_string(),
        long[0].receipt.clone(),
        long[0].receipt.clone(),
    ];
    let out = b.ack_each("t", "g", &receipts).await.unwrap();
    assert_eq!(out[0].as_ref().unwrap_err().code(), "lease_expired");
    assert_eq!(out[1].as_ref().unwrap_err().code(), "receipt_invalid");
    assert!(matches!(out[2], Ok(true)));
    assert!(
        matches!(out[3], Ok(false)),
        "a repeat in the same batch is already settled"
    );
    // The same batch all-or-nothing is refused whole.
    assert!(b.ack("t", "g", &receipts).await.is_err());
    let g = &b.describe("t").await.unwrap().groups[0];
    assert_eq!(g.stats.acked, 1);
}

/// A caller that stops waiting mid-publish (a client gone, a timeout) must not strand
/// the publish between reserving its producer sequences and committing them: a retry of
/// the same sequences must get an answer, not wait forever on "in progress".
#[tokio::test]
async fn a_cancelled_publish_does_not_hang_its_retry() {
    let env = Env::new();
    let b = env.open();
    b.put_topic("t", &patch("{}")).await.unwrap();
    let sequenced = |seq: u64| PublishMessage {
        producer_id: Some("p".into()),
        sequence: Some(seq),
        ..msg(&format!("m{seq}"))
    };
    for round in 0..20u64 {
        let batch: Vec<_> = (0..8).map(|i| sequenced(round * 8 + i)).collect();
        // Dropped at its first await: after the reservation, before the fsync answered.
        let cancelled = tokio::time::timeout(Duration::ZERO, b.publish("t", batch.clone()));
        let _ = cancelled.await;
        let retry = tokio::time::timeout(Duration::from_secs(10), b.publish("t", batch));
        let results = retry
            .await
            .unwrap_or_else(|_| panic!("round {round}: the retry hung on stranded reservations"))
            .unwrap();
        assert_eq!(results.len(), 8);
    }
    // Stored once each, whether the cancelled attempt or the retry wrote them.
    let end: u64 = b.describe("t").await.unwrap().end_offsets.iter().sum();
    assert_eq!(end, 160);
}

/// Two brokers on one directory would append to the same logs behind each other's back:
/// the second open is refused until the first broker is gone.
#[tokio::test]
async fn a_data_directory_is_opened_by_one_broker_at_a_time() {
    let env = Env::new();
    let first = env.open();
    let second = Broker::open(env.dir.path(), BrokerOptions::default());
    match second {
        Err(e @ BrokerError::DirectoryInUse(_)) => assert_eq!(e.code(), "directory_in_use"),
        other => panic!("expected directory_in_use, got {other:?}"),
    }
    drop(first);
    env.open();
}
