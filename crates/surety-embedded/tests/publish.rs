//! Publishing in process: a retried batch is stored once and answered with the original
//! positions; bad input is refused with a typed, final error and stores nothing.

mod common;

use common::Env;
use surety_core::{
    Admin, Confirm, ErrorKind, Message, Outcome, Position, Producer, PublishError, Publisher,
    Subscriber, Subscription, TopicSpec, TransportError,
};

fn refusal(e: PublishError) -> TransportError {
    match e {
        PublishError::Refused(e) => e,
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn a_retried_batch_is_answered_with_the_original_offsets() {
    let env = Env::new();
    let spec = TopicSpec {
        partitions: Some(2),
        ..TopicSpec::default()
    };
    env.topic("t", spec).await;
    let producer = Producer::new(env.transport.clone());
    let batch = producer.prepare(
        (0..4)
            .map(|i| Message::new(format!("m{i}")).with_key(vec![i]))
            .collect(),
    );
    let first = producer.send("t", &batch).await.unwrap();
    assert!(first.iter().all(|p| !p.duplicate));
    assert_eq!(
        first.iter().map(|p| p.sequence).collect::<Vec<_>>(),
        batch.sequences().collect::<Vec<_>>()
    );
    assert!(
        first
            .iter()
            .all(|p| matches!(p.position, Position::Offset { .. }))
    );

    // The same stamps again, as a retry after a lost answer would send them.
    let again = env.transport.publish("t", &batch).await.unwrap();
    let again: Vec<_> = again.into_iter().map(Result::unwrap).collect();
    assert!(again.iter().all(|p| p.duplicate));
    let positions =
        |ps: &[surety_core::Published]| ps.iter().map(|p| p.position).collect::<Vec<_>>();
    assert_eq!(positions(&again), positions(&first));

    // Stored once: four messages over the two partitions.
    let info = env.broker().describe("t").await.unwrap();
    assert_eq!(info.end_offsets.iter().sum::<u64>(), 4);
}

#[tokio::test]
async fn a_repeated_message_id_is_a_duplicate() {
    let env = Env::new();
    env.topic("t", TopicSpec::default()).await;
    // Two producers, so the stamps differ and only the id can match.
    let a = Producer::new(env.transport.clone());
    let b = Producer::new(env.transport.clone());
    let first = a
        .publish("t", Message::new("x").with_id("order-7"))
        .await
        .unwrap();
    let second = b
        .publish("t", Message::new("x").with_id("order-7"))
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(second.position, first.position);
}

#[tokio::test]
async fn bad_input_is_refused_with_a_typed_error() {
    let env = Env::new();
    let spec = TopicSpec {
        max_message_bytes: Some(16),
        ..TopicSpec::default()
    };
    env.topic("t", spec).await;
    let producer = Producer::new(env.transport.clone());

    let e = refusal(
        producer
            .publish("nope", Message::new("x"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.kind, e.outcome),
        (ErrorKind::TopicNotFound, Outcome::Refused)
    );
    assert_eq!(e.code.as_deref(), Some("topic_not_found"));

    let e = refusal(
        producer
            .publish("t", Message::new(vec![0; 17]))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.kind, e.outcome), (ErrorKind::TooLarge, Outcome::Refused));
    assert_eq!(e.code.as_deref(), Some("message_too_large"));

    let e = refusal(
        producer
            .publish("no/such", Message::new("x"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.kind, e.outcome),
        (ErrorKind::InvalidName, Outcome::Refused)
    );

    let reserved = Message::new("x").with_header("surety.seq", "1");
    let e = refusal(producer.publish("t", reserved).await.unwrap_err());
    assert_eq!(
        (e.kind, e.code.as_deref()),
        (ErrorKind::InvalidInput, Some("invalid_message"))
    );

    let far = Message::new("x").with_not_before_ms(u64::MAX);
    let e = refusal(producer.publish("t", far).await.unwrap_err());
    assert_eq!(
        (e.kind, e.code.as_deref()),
        (ErrorKind::InvalidInput, Some("invalid_request"))
    );

    // A batch is refused whole: the good message with the oversized one is not stored.
    let batch = vec![Message::new("ok"), Message::new(vec![0; 17])];
    let e = refusal(producer.publish_batch("t", batch).await.unwrap_err());
    assert_eq!(e.kind, ErrorKind::TooLarge);

    // Subscriptions are checked the same way, before any session starts.
    let sub = |topic: &str, group: &str, credits: u32| Subscription {
        topic: topic.into(),
        group: group.into(),
        credits,
        lease: None,
    };
    let refused = |r: Result<Box<dyn surety_core::Session>, TransportError>| match r {
        Err(e) => e,
        Ok(_) => panic!("subscription accepted"),
    };
    let e = refused(env.transport.subscribe(&sub("nope", "g", 1)).await);
    assert_eq!(
        (e.kind, e.outcome),
        (ErrorKind::TopicNotFound, Outcome::Refused)
    );
    let e = refused(env.transport.subscribe(&sub("t", "bad group", 1)).await);
    assert_eq!(e.kind, ErrorKind::InvalidName);
    let e = refused(env.transport.subscribe(&sub("t", "g", 10_001)).await);
    assert_eq!(
        (e.kind, e.code.as_deref()),
        (ErrorKind::InvalidInput, Some("invalid_request"))
    );

    // Nothing was stored.
    assert_eq!(env.broker().describe("t").await.unwrap().end_offsets, [0]);
}

#[tokio::test]
async fn topics_are_created_described_and_listed_through_the_seam() {
    let env = Env::new();
    let spec = TopicSpec {
        partitions: Some(3),
        max_deliveries: Some(4),
        ack_wait: Some(std::time::Duration::from_secs(7)),
        max_message_bytes: Some(1000),
    };
    let info = env.transport.create_topic("a", &spec).await.unwrap();
    assert_eq!((info.partitions, info.max_deliveries), (3, 4));
    assert_eq!(info.ack_wait, std::time::Duration::from_secs(7));
    assert_eq!(info.confirm, Confirm::FsyncedOnNode);
    assert_eq!(
        env.broker()
            .describe("a")
            .await
            .unwrap()
            .config
            .max_message_bytes,
        1000
    );

    // An update names only what changes; the rest stays.
    let more = TopicSpec {
        partitions: Some(4),
        ..TopicSpec::default()
    };
    let info = env.transport.create_topic("a", &more).await.unwrap();
    assert_eq!((info.partitions, info.max_deliveries), (4, 4));
    let fewer = TopicSpec {
        partitions: Some(1),
        ..TopicSpec::default()
    };
    let e = env.transport.create_topic("a", &fewer).await.unwrap_err();
    assert_eq!(
        (e.kind, e.outcome),
        (ErrorKind::InvalidInput, Outcome::Refused)
    );

    // A topic that only writes to the OS says so in its confirm.
    let patch = unsynced();
    env.broker().put_topic("b", &patch).await.unwrap();
    let info = env.transport.describe_topic("b").await.unwrap();
    assert_eq!(info.confirm, Confirm::PageCache { max_loss: None });

    assert_eq!(env.transport.list_topics().await.unwrap(), ["a", "b"]);
    let e = env.transport.describe_topic("c").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::TopicNotFound);
}

/// A topic with `durability: none`.
fn unsynced() -> surety_broker::TopicConfigPatch {
    surety_broker::TopicConfigPatch {
        durability: Some(surety_broker::topic::DurabilityConfig::None),
        ..Default::default()
    }
}
