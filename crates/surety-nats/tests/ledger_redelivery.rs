//! The consumer's settled ledger (on by default over JetStream, whose publish dedupe is a
//! time window) must never ack a redelivery of a message whose handler is still running:
//! that handler may yet fail, and the ack would then have settled a message nobody
//! handled. Here the first handler outlives its lease and fails; the message must still
//! come back and be handled.
//!
//! Needs a NATS server with JetStream at `SURETY_TEST_NATS_URL` (default
//! `nats://127.0.0.1:4222`); skipped with a printed reason when none answers, except under
//! `CI=true`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use surety_core::{Consumer, Message, Producer, TopicSpec, Transport};
use surety_nats::{NatsOptions, NatsTransport};

async fn connect() -> Option<Arc<dyn Transport>> {
    let url = std::env::var("SURETY_TEST_NATS_URL")
        .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let options = NatsOptions {
        nak_backoff_initial: Duration::from_millis(200),
        ..NatsOptions::default()
    };
    match NatsTransport::connect(&url, options).await {
        Ok(t) => Some(Arc::new(t)),
        Err(e) => {
            assert!(std::env::var("CI").is_err(), "no NATS at {url}: {e}");
            eprintln!("skipped: no NATS at {url}: {e}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_while_the_handler_runs_is_not_acked_unhandled() {
    let Some(t) = connect().await else { return };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let topic = format!("ledger{nanos}");
    t.create_topic(
        &topic,
        &TopicSpec {
            max_deliveries: Some(10),
            ack_wait: Some(Duration::from_secs(1)),
            ..TopicSpec::default()
        },
    )
    .await
    .unwrap();
    Producer::new(t.clone())
        .publish(&topic, Message::new("slow then fine"))
        .await
        .unwrap();

    let calls = Arc::new(AtomicU32::new(0));
    let handled = Arc::new(AtomicU32::new(0));
    let consumer = Consumer::builder_shared(t.clone(), &topic, "g").max_in_flight(4);
    let stop = consumer.stop_handle();
    let run = {
        let (calls, handled) = (calls.clone(), handled.clone());
        tokio::spawn(consumer.run(move |_d| {
            let (calls, handled) = (calls.clone(), handled.clone());
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    // Past the 1 s lease: the message is redelivered meanwhile.
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                    return Err("the first attempt fails".to_owned());
                }
                handled.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while handled.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.stop();
    let stats = run.await.unwrap().unwrap();
    assert_eq!(
        handled.load(Ordering::SeqCst),
        1,
        "the message came back after its failed attempt and was handled: {stats:?}"
    );
    assert_eq!(stats.duplicates_dropped, 0, "{stats:?}");
    let info = t.describe_topic(&topic).await.unwrap();
    let g = info.groups.iter().find(|g| g.name == "g").unwrap();
    assert_eq!((g.lag, g.in_flight, g.dead_letters), (0, 0, 0), "{info:?}");
}
