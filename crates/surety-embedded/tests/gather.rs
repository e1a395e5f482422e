//! The producer's gathering of concurrent single publishes (`ProducerBuilder::linger`),
//! on a real broker: fewer requests than messages, every message stored once with its
//! own answer, sequences in request order, and a bad message refused alone.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::Env;
use surety_core::{
    Batch, BoxFuture, Capabilities, Capable, ErrorKind, Message, Producer, PublishAnswers,
    PublishError, Publisher, TopicSpec, TransportError,
};
use surety_embedded::InProcess;

/// Forwards to the real transport and counts the requests (not a mock: every call
/// reaches the broker).
struct Counted {
    inner: Arc<InProcess>,
    requests: AtomicUsize,
    messages: AtomicUsize,
}

impl Capable for Counted {
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
}

impl Publisher for Counted {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<PublishAnswers, TransportError>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.messages.fetch_add(batch.len(), Ordering::Relaxed);
        self.inner.publish(topic, batch)
    }
}

fn counted(env: &Env) -> Arc<Counted> {
    Arc::new(Counted {
        inner: env.transport.clone(),
        requests: AtomicUsize::new(0),
        messages: AtomicUsize::new(0),
    })
}

async fn publish_concurrently(
    producer: &Arc<Producer>,
    topic: &str,
    payloads: Vec<Vec<u8>>,
) -> Vec<Result<surety_core::Published, PublishError>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, payload) in payloads.into_iter().enumerate() {
        let (producer, topic) = (producer.clone(), topic.to_owned());
        tasks.spawn(async move { (i, producer.publish(&topic, Message::new(payload)).await) });
    }
    let mut answers: Vec<_> = tasks.join_all().await;
    answers.sort_by_key(|(i, _)| *i);
    answers.into_iter().map(|(_, r)| r).collect()
}

#[tokio::test]
async fn concurrent_single_publishes_share_requests_and_each_is_stored_once() {
    let env = Env::new();
    env.topic("t", TopicSpec::default()).await;
    let transport = counted(&env);
    let producer = Arc::new(Producer::builder(transport.clone()).build());
    let n = 500;
    let answers =
        publish_concurrently(&producer, "t", (0..n).map(|i| vec![i as u8; 8]).collect()).await;
    let mut offsets: Vec<u64> = answers
        .iter()
        .map(|r| r.as_ref().unwrap().offset())
        .collect();
    let mut sequences: Vec<u64> = answers
        .iter()
        .map(|r| r.as_ref().unwrap().sequence)
        .collect();
    offsets.sort_unstable();
    sequences.sort_unstable();
    assert_eq!(
        offsets,
        (0..n as u64).collect::<Vec<_>>(),
        "each stored once"
    );
    assert_eq!(sequences, (0..n as u64).collect::<Vec<_>>());
    assert_eq!(transport.messages.load(Ordering::Relaxed), n);
    let requests = transport.requests.load(Ordering::Relaxed);
    assert!(
        requests < n / 4,
        "{requests} requests for {n} concurrent publishes: not gathered"
    );
    // Sequences follow the order of the log: stamped as they joined the request.
    let stored = env.broker().peek("t", 0, Some(0), n).await.unwrap();
    let in_log: Vec<u64> = stored.messages.iter().filter_map(|m| m.sequence).collect();
    assert_eq!(in_log, (0..n as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn without_linger_each_publish_is_its_own_request() {
    let env = Env::new();
    env.topic("t", TopicSpec::default()).await;
    let transport = counted(&env);
    let producer = Arc::new(
        Producer::builder(transport.clone())
            .linger(Duration::ZERO)
            .build(),
    );
    let answers = publish_concurrently(&producer, "t", vec![b"x".to_vec(); 40]).await;
    assert!(answers.iter().all(Result::is_ok));
    assert_eq!(transport.requests.load(Ordering::Relaxed), 40);
}

#[tokio::test]
async fn a_lone_publish_does_not_wait_for_the_linger() {
    let env = Env::new();
    env.topic("t", TopicSpec::default()).await;
    let producer = Producer::builder(env.transport.clone())
        .linger(Duration::from_secs(30))
        .build();
    let answered = tokio::time::timeout(
        Duration::from_secs(10),
        producer.publish("t", Message::new("alone")),
    )
    .await;
    assert!(answered.expect("a lone publish went out at once").is_ok());
}

#[tokio::test]
async fn a_bad_message_gathered_with_good_ones_is_refused_alone() {
    let env = Env::new();
    env.topic(
        "t",
        TopicSpec {
            max_message_bytes: Some(100),
            ..TopicSpec::default()
        },
    )
    .await;
    let producer = Arc::new(Producer::new(env.transport.clone()));
    let mut payloads = vec![vec![1u8; 10]; 60];
    payloads[17] = vec![0u8; 1000];
    let answers = publish_concurrently(&producer, "t", payloads).await;
    for (i, answer) in answers.iter().enumerate() {
        match (i, answer) {
            (17, Err(PublishError::Refused(e))) => assert_eq!(e.kind, ErrorKind::TooLarge),
            (17, other) => panic!("the oversized message was answered {other:?}"),
            (_, Ok(_)) => {}
            (i, Err(e)) => panic!("message {i} was refused with the bad one: {e}"),
        }
    }
    let described = env.broker().describe("t").await.unwrap();
    assert_eq!(
        described.end_offsets,
        [59],
        "the 59 good messages, once each"
    );
}
