//! Consumers over a real socket: ack after the handler, nack on error or panic,
//! redelivery up to the dead-letter queue, credits, graceful stop.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestServer, eventually};
use surety_client::{Consumer, Delivery, Message, Producer};

async fn publish(server: &TestServer, topic: &str, payloads: &[&str]) {
    let producer = Producer::new(server.client().await);
    let batch = payloads.iter().map(|p| Message::new(*p)).collect();
    producer.publish_batch(topic, batch).await.unwrap();
}

async fn lag(server: &TestServer, topic: &str, group: &str) -> Option<u64> {
    let info = server.broker.describe(topic).await.unwrap();
    info.groups.iter().find(|g| g.name == group).map(|g| g.lag)
}

#[tokio::test]
async fn handled_messages_are_acked_and_not_delivered_again() {
    let server = TestServer::start().await;
    server.topic("t", 5).await;
    publish(&server, "t", &["a", "b", "c"]).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let consumer = Consumer::builder(server.client().await, "t", "g");
    let stop = consumer.stop_handle();
    let log = seen.clone();
    let run = tokio::spawn(consumer.run(move |d: Delivery| {
        let log = log.clone();
        async move {
            log.lock()
                .unwrap()
                .push(String::from_utf8(d.payload).unwrap());
            Ok::<_, std::convert::Infallible>(())
        }
    }));
    eventually("three acks", || async {
        lag(&server, "t", "g").await == Some(0)
    })
    .await;
    stop.stop();
    let stats = run.await.unwrap().unwrap();
    assert_eq!((stats.delivered, stats.acked, stats.nacked), (3, 3, 0));
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, ["a", "b", "c"]);
    let info = server.broker.describe("t").await.unwrap();
    assert_eq!(info.groups[0].stats.acked, 3);
}

#[tokio::test]
async fn handler_errors_are_redelivered_then_dead_lettered_with_the_reason() {
    let server = TestServer::start().await;
    server.topic("t", 3).await;
    publish(&server, "t", &["good", "bad"]).await;
    let attempts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let consumer = Consumer::builder(server.client().await, "t", "g");
    let stop = consumer.stop_handle();
    let counts = attempts.clone();
    let run = tokio::spawn(consumer.run(move |d: Delivery| {
        let counts = counts.clone();
        async move {
            let payload = String::from_utf8(d.payload).unwrap();
            *counts.lock().unwrap().entry(payload.clone()).or_default() += 1;
            if payload == "bad" {
                Err(format!("cannot handle attempt {}", d.delivery_count))
            } else {
                Ok(())
            }
        }
    }));
    eventually("a dead letter", || async {
        !server
            .broker
            .dead_letters("t", "g")
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    stop.stop();
    let stats = run.await.unwrap().unwrap();
    let dead = server.broker.dead_letters("t", "g").await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.payload, b"bad");
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].reason, "cannot handle attempt 3");
    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(attempts["bad"], 3);
    assert_eq!(attempts["good"], 1);
    assert_eq!((stats.acked, stats.nacked), (1, 3));
}

#[tokio::test]
async fn a_panicking_handler_is_nacked_and_the_consumer_goes_on() {
    let server = TestServer::start().await;
    server.topic("t", 2).await;
    publish(&server, "t", &["boom", "fine"]).await;
    let consumer = Consumer::builder(server.client().await, "t", "g");
    let stop = consumer.stop_handle();
    let run = tokio::spawn(consumer.run(|d: Delivery| async move {
        if d.payload == b"boom" {
            panic!("handler exploded on {}", d.offset());
        }
        Ok::<_, String>(())
    }));
    eventually("a dead letter", || async {
        !server
            .broker
            .dead_letters("t", "g")
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    eventually("the good message acked", || async {
        lag(&server, "t", "g").await == Some(0)
    })
    .await;
    stop.stop();
    let stats = run.await.unwrap().unwrap();
    assert_eq!((stats.panicked, stats.acked), (2, 1));
    let dead = server.broker.dead_letters("t", "g").await.unwrap();
    assert_eq!(dead[0].reason, "handler panicked: handler exploded on 0");
}

#[tokio::test]
async fn no_more_handlers_run_at_once_than_max_in_flight() {
    let server = TestServer::start().await;
    server.topic("t", 5).await;
    let payloads: Vec<String> = (0..40).map(|i| i.to_string()).collect();
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    publish(&server, "t", &refs).await;
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let consumer = Consumer::builder(server.client().await, "t", "g").max_in_flight(4);
    let stop = consumer.stop_handle();
    let (r, p) = (running.clone(), peak.clone());
    let run = tokio::spawn(consumer.run(move |_d: Delivery| {
        let (running, peak) = (r.clone(), p.clone());
        async move {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            running.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, String>(())
        }
    }));
    eventually("all acked", || async {
        lag(&server, "t", "g").await == Some(0)
    })
    .await;
    stop.stop();
    let stats = run.await.unwrap().unwrap();
    assert_eq!(stats.acked, 40);
    // The bound holds, and is actually used (handlers did run in parallel).
    assert_eq!(peak.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn stop_finishes_and_acks_the_running_handlers_then_returns() {
    let server = TestServer::start().await;
    server.topic("t", 5).await;
    let payloads: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    publish(&server, "t", &refs).await;
    let started = Arc::new(AtomicUsize::new(0));
    let consumer = Consumer::builder(server.client().await, "t", "g").max_in_flight(3);
    let stop = consumer.stop_handle();
    let s = started.clone();
    let run = tokio::spawn(consumer.run(move |_d: Delivery| {
        let started = s.clone();
        async move {
            started.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, String>(())
        }
    }));
    eventually("handlers running", || async {
        started.load(Ordering::SeqCst) == 3
    })
    .await;
    stop.stop();
    let stats = run.await.unwrap().unwrap();
    // Everything delivered was handled and acked; nothing is left leased.
    assert_eq!(stats.delivered, stats.acked);
    assert_eq!(stats.delivered, started.load(Ordering::SeqCst) as u64);
    assert!(stats.acked >= 3 && stats.acked < 20, "{stats:?}");
    let info = server.broker.describe("t").await.unwrap();
    assert_eq!(info.groups[0].stats.in_flight, 0);
    assert_eq!(info.groups[0].stats.acked, stats.acked);
}

#[tokio::test]
async fn consuming_an_unknown_topic_is_refused() {
    let server = TestServer::start().await;
    let e = Consumer::builder(server.client().await, "missing", "g")
        .run(|_d: Delivery| async { Ok::<_, String>(()) })
        .await
        .unwrap_err();
    match e {
        surety_client::ConsumeError::Refused(e) => {
            assert_eq!(e.code.as_deref(), Some("topic_not_found"))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn acked(server: &TestServer, topic: &str, group: &str) -> u64 {
    let info = server.broker.describe(topic).await.unwrap();
    info.groups
        .iter()
        .find(|g| g.name == group)
        .map_or(0, |g| g.stats.acked)
}

/// A running consumer: its stop, the gate its "slow" handler waits on, the count of
/// handlers that ran, and its task.
type FastAndSlow = (
    surety_client::StopHandle,
    Arc<tokio::sync::Notify>,
    Arc<AtomicUsize>,
    tokio::task::JoinHandle<Result<surety_client::ConsumerStats, surety_client::ConsumeError>>,
);

/// A consumer of "t" whose "slow" handler waits for the gate; counts handlers that ran.
fn fast_and_slow(server_client: surety_client::Client, linger: Duration) -> FastAndSlow {
    let release = Arc::new(tokio::sync::Notify::new());
    let handled = Arc::new(AtomicUsize::new(0));
    let consumer = Consumer::builder(server_client, "t", "g")
        .max_in_flight(2)
        .ack_linger(linger);
    let stop = consumer.stop_handle();
    let (gate, counted) = (release.clone(), handled.clone());
    let run = tokio::spawn(consumer.run(move |d: Delivery| {
        let (gate, counted) = (gate.clone(), counted.clone());
        async move {
            if d.payload == b"slow" {
                gate.notified().await;
            }
            counted.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::convert::Infallible>(())
        }
    }));
    (stop, release, handled, run)
}

/// Acks wait up to the linger for other handlers' acks, but never past it, and never
/// while nothing else runs; a stop sends whatever still waits.
#[tokio::test]
async fn acks_linger_briefly_and_are_never_held_back() {
    let server = TestServer::start().await;
    server.topic("t", 5).await;
    publish(&server, "t", &["fast", "slow"]).await;
    let (stop, release, _, run) = fast_and_slow(server.client().await, Duration::from_millis(50));
    // "fast" is done while "slow" still runs: its ack goes out when the linger ends.
    eventually("the fast handler's ack, after the linger", || async {
        acked(&server, "t", "g").await == 1
    })
    .await;
    release.notify_one();
    // "slow" ends with nothing else running: acked without waiting.
    eventually("the slow handler's ack", || async {
        acked(&server, "t", "g").await == 2
    })
    .await;
    stop.stop();
    let stats = run.await.unwrap().unwrap();
    assert_eq!((stats.delivered, stats.acked), (2, 2));

    // A very long linger: a stop still sends the waiting ack before returning.
    publish(&server, "t", &["fast", "slow"]).await;
    let (stop, release, handled, run) =
        fast_and_slow(server.client().await, Duration::from_secs(3600));
    eventually("the fast handler ran", || async {
        handled.load(Ordering::SeqCst) == 1
    })
    .await;
    // Time enough for an ack sent at once to be applied.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(acked(&server, "t", "g").await, 2, "held back by the linger");
    stop.stop();
    release.notify_one();
    let stats = run.await.unwrap().unwrap();
    assert_eq!((stats.delivered, stats.acked), (2, 2));
    assert_eq!(acked(&server, "t", "g").await, 4);
    assert_eq!(lag(&server, "t", "g").await, Some(0));
}
