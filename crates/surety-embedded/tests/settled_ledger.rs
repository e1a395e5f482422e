//! The consumer's settled ledger (`ConsumerBuilder::settled_ledger`) over a real broker:
//! a delivery whose handler panicked runs again — a panic must not leave its stamp
//! claimed, or the redelivery would be dropped as a duplicate (acked unrun) and the
//! message lost. (A handled copy being dropped is shown on NATS, whose dedupe window
//! lets a second copy be stored: crates/surety-nats/tests/duplicate_window.rs.)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Env, eventually};
use surety_core::{Consumer, Delivery, MemoryLedger, Message, Producer, TopicSpec};

#[tokio::test]
async fn a_panicked_handler_releases_its_claim() {
    let env = Env::new();
    env.topic("t", TopicSpec::default()).await;
    let p = Producer::new(env.transport.clone());
    let batch = p.prepare(vec![Message::new("once"), Message::new("panics-first")]);
    p.send("t", &batch).await.unwrap();

    let runs = Arc::new(AtomicU32::new(0));
    let consumer = Consumer::builder(env.transport.clone(), "t", "g")
        .settled_ledger(Arc::new(MemoryLedger::default()))
        .nack_delay(Duration::from_millis(50));
    let stop = consumer.stop_handle();
    let counted = runs.clone();
    let run = tokio::spawn(consumer.run(move |d: Delivery| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            if d.payload == b"panics-first" && d.delivery_count == 1 {
                panic!("first run panics");
            }
            Ok::<_, String>(())
        }
    }));
    eventually("both settled", || async {
        env.group("t", "g").await.0 == 0 && runs.load(Ordering::SeqCst) >= 3
    })
    .await;

    stop.stop();
    let stats = run.await.unwrap().unwrap();
    assert_eq!(stats.panicked, 1);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "once, panics-first twice (the panic released its claim)"
    );
}
