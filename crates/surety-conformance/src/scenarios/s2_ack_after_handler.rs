//! Scenario 2: Ack after the handler. While a handler blocks, its message stays in flight (the
//! group shows it in flight and lagging) and is not delivered a second time; only its
//! `Ok` settles it. A handler error redelivers no sooner than the nack delay, with a
//! rising delivery count; after `Ok` nothing more comes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use surety_core::{DeliveryCount, Message, TopicSpec};
use tokio::sync::Semaphore;

use crate::support::{
    ConsumerOpts, Record, create_topic, eventually, group_info, producer, start_consumer, unique,
    wait_settled,
};
use crate::{TransportFixture, Verdict};

/// Long enough that a correct transport never redelivers during the test's blocks.
const LEASE: Duration = Duration::from_secs(4);
/// How long the handler blocks while the group is inspected.
const BLOCK: Duration = Duration::from_millis(800);
/// Above the topic's first retry backoff (0.8–1 s by default), so it is what holds the
/// message back.
const NACK_DELAY: Duration = Duration::from_millis(1200);
/// Runs of the failing message that return an error before one returns `Ok`.
const FAILURES: u32 = 2;

pub(crate) async fn run(fx: &dyn TransportFixture) -> Verdict {
    let t = fx.connect().await;
    let caps = t.capabilities().clone();
    let topic = unique("s2");
    create_topic(
        &t,
        &topic,
        TopicSpec {
            max_deliveries: Some(10),
            ack_wait: Some(LEASE),
            ..TopicSpec::default()
        },
    )
    .await;
    let group = unique("g");
    let record = Record::default();
    let release = Arc::new(Semaphore::new(0));
    let failing_runs = Arc::new(AtomicU32::new(0));
    // When each failing run returned its error.
    let errors: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
    let consumer = {
        let (record, release, failing_runs, errors) = (
            record.clone(),
            release.clone(),
            failing_runs.clone(),
            errors.clone(),
        );
        start_consumer(
            &t,
            &topic,
            &group,
            ConsumerOpts {
                nack_delay: NACK_DELAY,
                max_in_flight: 4,
                ..ConsumerOpts::lease(LEASE)
            },
            move |d| {
                record.push(&d);
                let (release, failing_runs, errors) =
                    (release.clone(), failing_runs.clone(), errors.clone());
                async move {
                    match d.payload.as_slice() {
                        b"block" => {
                            let permit =
                                tokio::time::timeout(Duration::from_secs(30), release.acquire())
                                    .await;
                            permit
                                .map_err(|_| "never released".to_owned())?
                                .unwrap()
                                .forget();
                            Ok(())
                        }
                        b"fail" => {
                            let run = failing_runs.fetch_add(1, Ordering::SeqCst) + 1;
                            if run <= FAILURES {
                                errors.lock().unwrap().push(Instant::now());
                                Err(format!("conformance: failing run {run}"))
                            } else {
                                Ok(())
                            }
                        }
                        _ => Ok(()),
                    }
                }
            },
        )
    };
    let p = producer(&t);

    // Ack after the handler: blocked means in flight, lagging, delivered once.
    p.publish(&topic, Message::new("block")).await.unwrap();
    eventually(Duration::from_secs(20), "the blocking delivery", || async {
        if record.with_payload("block").is_empty() {
            Err("not delivered".to_owned())
        } else {
            Ok(())
        }
    })
    .await;
    tokio::time::sleep(BLOCK).await;
    let g = group_info(&t, &topic, &group)
        .await
        .expect("the group exists");
    assert_eq!(
        (g.in_flight, g.lag),
        (1, 1),
        "while its handler blocks, the message must stay in flight and unacked: {g:?}"
    );
    let blocked = record.with_payload("block");
    assert_eq!(
        blocked.len(),
        1,
        "delivered again while its handler still ran: {blocked:?}"
    );
    release.add_permits(1);
    wait_settled(&t, &topic, &group, Duration::from_secs(10)).await;

    // Handler errors: redelivered after the nack delay, the count rising.
    p.publish(&topic, Message::new("fail")).await.unwrap();
    let runs = FAILURES as usize + 1;
    eventually(
        Duration::from_secs(30),
        &format!("{runs} runs of the failing message"),
        || async {
            let n = record.with_payload("fail").len();
            if n >= runs {
                Ok(())
            } else {
                Err(format!("{n} runs"))
            }
        },
    )
    .await;
    wait_settled(&t, &topic, &group, Duration::from_secs(10)).await;
    let fails = record.with_payload("fail");
    let errors = errors.lock().unwrap().clone();
    for (i, err_at) in errors.iter().enumerate() {
        let next = fails[i + 1].at;
        assert!(
            next.duration_since(*err_at) >= NACK_DELAY,
            "run {} came {:?} after the error of run {}, before the nack delay {NACK_DELAY:?}",
            i + 2,
            next.duration_since(*err_at),
            i + 1
        );
    }
    let counts: Vec<u32> = fails.iter().map(|s| s.delivery.delivery_count).collect();
    match caps.delivery_count {
        DeliveryCount::Persistent | DeliveryCount::Emulated(_) => assert_eq!(
            counts,
            (1..=runs as u32).collect::<Vec<_>>(),
            "delivery counts of a message redelivered after errors"
        ),
        DeliveryCount::SessionOnly => assert!(
            counts.windows(2).all(|w| w[0] < w[1]),
            "delivery counts must rise within a session: {counts:?}"
        ),
    }

    // After Ok: nothing more, not even once the lease would have run out.
    let settled = record.len();
    let last = fails.last().expect("the failing runs").at;
    tokio::time::sleep_until((last + LEASE + Duration::from_millis(300)).into()).await;
    let g = group_info(&t, &topic, &group).await.expect("the group");
    assert_eq!((g.lag, g.in_flight), (0, 0), "after Ok: {g:?}");
    let later: Vec<_> = record.all().into_iter().skip(settled).collect();
    assert!(later.is_empty(), "delivered again after Ok: {later:?}");
    consumer.stop().await;
    Verdict::Passed
}
