//! The gap detector end to end: a consumer observing a producer's sequences.

mod common;

use std::sync::{Arc, Mutex};

use common::{TestServer, eventually};
use surety_client::{Consumer, Delivery, GapDetector, GapStats, Message, Producer};

/// Consumes `topic` one message at a time (so observation order is delivery order)
/// through a consumer that feeds its detector itself, and returns what it saw.
async fn observe_all(server: &TestServer, topic: &str, expected: u64) -> (GapStats, GapDetector) {
    let detector = Arc::new(Mutex::new(GapDetector::starting_at(0)));
    let consumer = Consumer::builder(server.client().await, topic, "audit")
        .max_in_flight(1)
        .detect_gaps(detector.clone());
    let stop = consumer.stop_handle();
    let run = tokio::spawn(consumer.run(|_: Delivery| async { Ok::<_, String>(()) }));
    eventually("every message observed", || async {
        let s = detector.lock().unwrap().stats();
        s.in_order + s.gaps + s.reordered >= expected
    })
    .await;
    stop.stop();
    run.await.unwrap().unwrap();
    let detector = Arc::into_inner(detector).unwrap().into_inner().unwrap();
    (detector.stats(), detector)
}

#[tokio::test]
async fn nothing_lost_means_no_gaps() {
    let server = TestServer::start().await;
    server.topic("t", 5).await;
    let producer = Producer::new(server.client().await);
    for b in 0..5 {
        let batch = (0..10).map(|i| Message::new(format!("{b}-{i}"))).collect();
        producer.publish_batch("t", batch).await.unwrap();
    }
    let (stats, _) = observe_all(&server, "t", 50).await;
    assert_eq!(
        stats,
        GapStats {
            in_order: 50,
            ..GapStats::default()
        }
    );
}

#[tokio::test]
async fn skipped_sequences_are_reported_as_a_gap() {
    let server = TestServer::start().await;
    server.topic("t", 5).await;
    let client = server.client().await;
    let before = Producer::builder(client.clone()).identity("p1", 0).build();
    before
        .publish_batch(
            "t",
            vec![Message::new("0"), Message::new("1"), Message::new("2")],
        )
        .await
        .unwrap();
    // The same producer resuming at 5: sequences 3 and 4 never reach the broker.
    let after = Producer::builder(client).identity("p1", 5).build();
    after.publish("t", Message::new("5")).await.unwrap();
    let (stats, detector) = observe_all(&server, "t", 4).await;
    assert_eq!((stats.in_order, stats.gaps, stats.missing), (3, 1, 2));
    assert_eq!(detector.open_gaps("p1", 0), vec![3..5]);
}

#[tokio::test]
async fn a_redelivery_is_a_duplicate_not_a_gap() {
    let server = TestServer::start().await;
    server.topic("t", 5).await;
    let producer = Producer::new(server.client().await);
    let batch = (0..3).map(|i| Message::new(format!("m{i}"))).collect();
    producer.publish_batch("t", batch).await.unwrap();

    let detector = Arc::new(Mutex::new(GapDetector::starting_at(0)));
    let consumer = Consumer::builder(server.client().await, "t", "audit")
        .max_in_flight(1)
        .detect_gaps(detector.clone());
    let stop = consumer.stop_handle();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let h = handled.clone();
    // The first delivery of sequence 1 fails once; its redelivery must not look like loss.
    let run = tokio::spawn(consumer.run(move |d: Delivery| {
        let h = h.clone();
        async move {
            h.lock().unwrap().push((d.sequence, d.delivery_count));
            if d.sequence == Some(1) && d.delivery_count == 1 {
                return Err("try again".to_owned());
            }
            Ok(())
        }
    }));
    eventually("all three handled, one of them twice", || async {
        handled.lock().unwrap().len() >= 4
    })
    .await;
    stop.stop();
    run.await.unwrap().unwrap();
    let stats = detector.lock().unwrap().stats();
    assert_eq!(
        (stats.in_order, stats.gaps, stats.missing, stats.duplicates),
        (3, 0, 0, 1),
        "handled: {:?}",
        handled.lock().unwrap()
    );
}
