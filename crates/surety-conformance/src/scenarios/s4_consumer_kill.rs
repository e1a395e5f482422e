//! Scenario 4: A consumer killed mid-handler (a process SIGKILLed, or an in-process consumer task
//! aborted, per [`KillMode`]) loses nothing: the message comes back to the group after
//! the lease and no sooner (for a per-message lease), with count 2 where counts
//! persist, and once that delivery is acked the group's lag is 0.

use std::sync::Arc;
use std::time::Duration;

use surety_core::{DeliveryCount, LeaseKind, Message, TopicSpec, Transport};

use crate::child::{ChildConsumer, Hold, Marker};
use crate::support::{
    ConsumerOpts, Proc, Record, create_topic, eventually, now_ms, producer, start_consumer,
    start_recording, unique, wait_settled,
};
use crate::{KillMode, TransportFixture, Verdict};

const LEASE: Duration = Duration::from_millis(1500);

pub(crate) async fn run(fx: &dyn TransportFixture) -> Verdict {
    let t = fx.connect().await;
    let caps = t.capabilities().clone();
    let topic = unique("s4");
    create_topic(
        &t,
        &topic,
        TopicSpec {
            max_deliveries: Some(5),
            ack_wait: Some(LEASE),
            ..TopicSpec::default()
        },
    )
    .await;
    let group = unique("g");
    let published = producer(&t)
        .publish(&topic, Message::new("killed-mid-handler"))
        .await
        .unwrap();

    // The message cannot be leased before its consumer starts.
    let consumer_started_ms = now_ms();
    let first = kill_mid_handler(fx, &t, &topic, &group).await;
    let killed_ms = now_ms();
    assert_eq!(first.sequence, published.sequence);
    assert_eq!(first.delivery_count, 1, "first delivery: {first:?}");

    let record = Record::default();
    let consumer = start_recording(&t, &topic, &group, ConsumerOpts::lease(LEASE), &record);
    eventually(Duration::from_secs(30), "the redelivery", || async {
        if record.len() > 0 {
            Ok(())
        } else {
            Err("nothing yet".into())
        }
    })
    .await;
    wait_settled(&t, &topic, &group, Duration::from_secs(10)).await;
    let again = &record.all()[0];
    assert_eq!(again.delivery.sequence, Some(published.sequence));
    assert_eq!(
        again.delivery.producer_id.as_deref(),
        Some(&*first.producer_id)
    );
    assert!(again.wall_ms >= killed_ms);
    if let LeaseKind::PerMessage { .. } = caps.lease {
        let lease_until = first
            .lease_until_ms
            .expect("a per-message lease names its end in the delivery");
        assert!(
            again.wall_ms >= lease_until,
            "redelivered at {} before the first lease ran out at {lease_until}",
            again.wall_ms
        );
        let since_start = again.wall_ms.saturating_sub(consumer_started_ms);
        assert!(
            since_start >= LEASE.as_millis() as u64,
            "redelivered {since_start} ms after the killed consumer started; the lease is {LEASE:?}"
        );
    }
    match caps.delivery_count {
        DeliveryCount::Persistent | DeliveryCount::Emulated(_) => assert_eq!(
            again.delivery.delivery_count, 2,
            "the redelivery after a kill: {:?}",
            again.delivery
        ),
        DeliveryCount::SessionOnly => {}
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(record.len(), 1, "delivered again after its ack");
    consumer.stop().await;
    Verdict::Passed
}

/// Delivers the message to a consumer whose handler never returns and kills that
/// consumer as soon as the handler runs; returns what the handler saw.
async fn kill_mid_handler(
    fx: &dyn TransportFixture,
    t: &Arc<dyn Transport>,
    topic: &str,
    group: &str,
) -> Marker {
    match fx.consumer_kill() {
        KillMode::Process => {
            let dir = tempfile::tempdir().unwrap();
            let spec = ChildConsumer {
                topic: topic.to_owned(),
                group: group.to_owned(),
                lease: LEASE,
                log: dir.path().join("markers"),
                hold: Hold::Forever,
            };
            let mut child = fx
                .spawn_consumer(&spec)
                .map(Proc)
                .unwrap_or_else(|e| panic!("KillMode::Process without a consumer process: {e}"));
            let started = std::time::Instant::now();
            let marker = loop {
                if let Some(m) = Marker::read_all(&spec.log).pop() {
                    break m;
                }
                if let Some(status) = child.exited() {
                    panic!(
                        "the child consumer exited ({status}): {}",
                        std::fs::read_to_string(spec.log.with_extension("stderr"))
                            .unwrap_or_default()
                    );
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "the child consumer's handler did not run within 30 s"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            let status = child.sigkill();
            assert!(!status.success(), "the child consumer was killed: {status}");
            marker
        }
        KillMode::Task => {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let running = start_consumer(t, topic, group, ConsumerOpts::lease(LEASE), move |d| {
                let _ = tx.send(Marker::of(&d));
                std::future::pending()
            });
            let marker = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .expect("the consumer task's handler ran")
                .unwrap();
            running.abort().await;
            marker
        }
    }
}
