//! The core Consumer over the in-process transport: ack after the handler, a nack brings
//! the message back with a higher count, and at `max_deliveries` it is dead-lettered,
//! where the Admin side of the seam finds, resends and purges it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Env, eventually};
use surety_core::{
    Admin, Consumer, ConsumerStats, Delivery, ErrorKind, Message, Producer, Selection, TopicSpec,
};

async fn publish(env: &Env, topic: &str, payloads: &[&str]) {
    let batch = payloads.iter().map(|p| Message::new(*p)).collect();
    Producer::new(env.transport.clone())
        .publish_batch(topic, batch)
        .await
        .unwrap();
}

type Seen = Arc<Mutex<Vec<(String, u32, Instant)>>>;

/// Runs a consumer whose handler records each delivery and fails while `fail` says so.
fn consume(
    env: &Env,
    topic: &str,
    group: &str,
    nack_delay: Duration,
    fail: impl Fn(&Delivery) -> bool + Send + Sync + 'static,
) -> (
    Seen,
    surety_core::StopHandle,
    tokio::task::JoinHandle<Result<ConsumerStats, surety_core::ConsumeError>>,
) {
    let seen: Seen = Arc::default();
    let consumer = Consumer::builder(env.transport.clone(), topic, group).nack_delay(nack_delay);
    let stop = consumer.stop_handle();
    let log = seen.clone();
    let fail = Arc::new(fail);
    let run = tokio::spawn(consumer.run(move |d: Delivery| {
        let (log, fail) = (log.clone(), fail.clone());
        async move {
            let payload = String::from_utf8(d.payload.clone()).unwrap();
            log.lock()
                .unwrap()
                .push((payload, d.delivery_count, Instant::now()));
            if fail(&d) {
                Err(format!("failed delivery {}", d.delivery_count))
            } else {
                Ok(())
            }
        }
    }));
    (seen, stop, run)
}

#[tokio::test]
async fn the_consumer_acks_after_its_handler() {
    let env = Env::new();
    env.topic("t", TopicSpec::default()).await;
    publish(&env, "t", &["a", "b", "c"]).await;
    let (seen, stop, run) = consume(&env, "t", "g", Duration::ZERO, |_| false);
    eventually("three acks", || async {
        env.group("t", "g").await.0 == 0 && seen.lock().unwrap().len() == 3
    })
    .await;
    stop.stop();
    let stats = run.await.unwrap().unwrap();
    assert_eq!((stats.delivered, stats.acked, stats.nacked), (3, 3, 0));
    assert_eq!(stats.settle_errors, 0);
    let mut payloads: Vec<_> = seen.lock().unwrap().iter().map(|s| s.0.clone()).collect();
    payloads.sort();
    assert_eq!(payloads, ["a", "b", "c"]);
    assert_eq!(env.group("t", "g").await, (0, 0, 0));
    let info = env.broker().describe("t").await.unwrap();
    assert_eq!(info.groups[0].stats.acked, 3);
}

#[tokio::test]
async fn a_handler_holds_its_delivery_until_it_returns() {
    let env = Env::new();
    env.topic("t", TopicSpec::default()).await;
    publish(&env, "t", &["slow"]).await;
    let release = Arc::new(tokio::sync::Notify::new());
    let consumer = Consumer::builder(env.transport.clone(), "t", "g");
    let stop = consumer.stop_handle();
    let gate = release.clone();
    let run = tokio::spawn(consumer.run(move |_d: Delivery| {
        let gate = gate.clone();
        async move {
            gate.notified().await;
            Ok::<_, String>(())
        }
    }));
    eventually("the delivery in flight", || async {
        env.group("t", "g").await == (1, 1, 0)
    })
    .await;
    // Still unsettled while the handler runs: no ack before it returns.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(env.group("t", "g").await, (1, 1, 0));
    release.notify_one();
    eventually("the ack", || async {
        env.group("t", "g").await == (0, 0, 0)
    })
    .await;
    stop.stop();
    assert_eq!(run.await.unwrap().unwrap().acked, 1);
}

#[tokio::test]
async fn a_nack_redelivers_after_the_delay_with_count_two() {
    let env = Env::new();
    env.topic("t", TopicSpec::default()).await;
    publish(&env, "t", &["once-bad"]).await;
    let delay = Duration::from_millis(150);
    let (seen, stop, run) = consume(&env, "t", "g", delay, |d| d.delivery_count == 1);
    eventually("the redelivery acked", || async {
        seen.lock().unwrap().len() == 2 && env.group("t", "g").await.0 == 0
    })
    .await;
    stop.stop();
    let stats = run.await.unwrap().unwrap();
    assert_eq!((stats.delivered, stats.acked, stats.nacked), (2, 1, 1));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].1, 1);
    assert_eq!(seen[1].1, 2);
    assert!(
        seen[1].2 - seen[0].2 >= delay,
        "{:?}",
        seen[1].2 - seen[0].2
    );
}

#[tokio::test]
async fn max_deliveries_dead_letters_then_resend_and_purge() {
    let env = Env::new();
    let spec = TopicSpec {
        max_deliveries: Some(2),
        ..TopicSpec::default()
    };
    env.topic("t", spec).await;
    publish(&env, "t", &["poison"]).await;
    let (seen, stop, run) = consume(&env, "t", "g", Duration::ZERO, |_| true);
    eventually("a dead letter", || async {
        env.group("t", "g").await == (0, 0, 1)
    })
    .await;
    stop.stop();
    let stats = run.await.unwrap().unwrap();
    assert_eq!((stats.delivered, stats.nacked), (2, 2));
    assert_eq!(seen.lock().unwrap().len(), 2);

    let t = &env.transport;
    let page = t.dead_letters("t", "g", None, 10).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.next, None);
    let dl = &page.items[0];
    assert_eq!((dl.group.as_str(), dl.attempts), ("g", 2));
    assert_eq!(dl.reason, "failed delivery 2");
    assert_eq!(dl.payload, b"poison");
    assert!(dl.producer_id.is_some() && dl.sequence.is_some());
    assert_eq!(dl.origin.offset(), Some(0));
    assert!(dl.first_delivered_ms.is_some() && dl.last_delivered_ms.is_some());
    // Paging after the last id finds nothing; junk ids are refused, typed.
    assert!(
        t.dead_letters("t", "g", Some(&dl.id), 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let e = t
        .dead_letters("t", "g", Some("first"), 10)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    let e = t
        .resend("t", "g", &Selection::Ids(vec!["x".into()]))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);

    // Resent to this group: delivered again; it fails twice more and dies again.
    assert_eq!(
        t.resend("t", "g", &Selection::Ids(vec![dl.id.clone()]))
            .await
            .unwrap(),
        1
    );
    assert_eq!(env.group("t", "g").await.2, 0);
    let (seen, stop, run) = consume(&env, "t", "g", Duration::ZERO, |_| true);
    eventually("the resent message dead again", || async {
        seen.lock().unwrap().len() == 2 && env.group("t", "g").await == (0, 0, 1)
    })
    .await;
    stop.stop();
    run.await.unwrap().unwrap();
    assert_eq!(seen.lock().unwrap()[0].0, "poison");

    // Purged for good, and counted.
    assert_eq!(t.purge("t", "g", &Selection::All).await.unwrap(), 1);
    assert!(
        t.dead_letters("t", "g", None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(env.group("t", "g").await, (0, 0, 0));
    let info = env.broker().describe("t").await.unwrap();
    assert_eq!(info.groups[0].dead_letters_purged, 1);
}
