//! A failed delivery comes back after a delay that grows per delivery — never at once
//! (a bare `-NAK` redelivers immediately and burns through `max_deliveries` in
//! milliseconds) — and at `max_deliveries` it ends in the dead letters with its attempts.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{connect, eventually, options, unique};
use surety_core::{Consumer, Message, Producer, StopHandle, TopicSpec};
use surety_nats::NatsOptions;
use surety_nats::server::Sync;

const INITIAL: Duration = Duration::from_millis(250);
const MAX_DELIVERIES: u32 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nak_delays_grow_per_delivery() {
    let Some(server) = common::current(Sync::Always) else {
        return;
    };
    let t = connect(
        &server,
        NatsOptions {
            nak_backoff_initial: INITIAL,
            ..options(&server)
        },
    )
    .await;
    let (topic, group) = (unique("nak"), unique("g"));
    t.create_topic(
        &topic,
        &TopicSpec {
            max_deliveries: Some(MAX_DELIVERIES),
            ack_wait: Some(Duration::from_secs(30)),
            ..TopicSpec::default()
        },
    )
    .await
    .unwrap();
    Producer::builder_shared(t.clone())
        .build()
        .publish(&topic, Message::new("fails"))
        .await
        .unwrap();
    let runs: Arc<Mutex<Vec<(Instant, u32)>>> = Arc::default();
    let stop = StopHandle::new();
    let consumer = tokio::spawn({
        let runs = runs.clone();
        // The consumer asks for no delay of its own: the backend's backoff is all.
        Consumer::builder_shared(t.clone(), &topic, &group)
            .nack_delay(Duration::ZERO)
            .stop_with(stop.clone())
            .run(move |d| {
                runs.lock()
                    .unwrap()
                    .push((Instant::now(), d.delivery_count));
                async { Err::<(), _>("always fails".to_owned()) }
            })
    });
    let dead = eventually(Duration::from_secs(30), "the dead letter", || async {
        let page = t.dead_letters(&topic, &group, None, 10).await.unwrap();
        page.items
            .into_iter()
            .next()
            .ok_or_else(|| "none yet".to_owned())
    })
    .await;
    stop.stop();
    consumer.await.unwrap().unwrap();

    let runs = runs.lock().unwrap().clone();
    let counts: Vec<u32> = runs.iter().map(|r| r.1).collect();
    assert_eq!(counts, (1..=MAX_DELIVERIES).collect::<Vec<_>>());
    assert_eq!(dead.attempts, MAX_DELIVERIES);
    let gaps: Vec<Duration> = runs.windows(2).map(|w| w[1].0 - w[0].0).collect();
    println!("gaps between deliveries: {gaps:?}");
    for (i, gap) in gaps.iter().enumerate() {
        // The delay after delivery n is INITIAL × 2^(n−1), less at most 20 % jitter.
        let floor = INITIAL.mul_f64(0.8 * f64::from(1u32 << i));
        assert!(
            *gap >= floor,
            "redelivery {} came {gap:?} after the failure, below the backoff {floor:?}",
            i + 2
        );
    }
    assert!(
        gaps.windows(2).all(|w| w[1] > w[0]),
        "the delays must grow: {gaps:?}"
    );
}
