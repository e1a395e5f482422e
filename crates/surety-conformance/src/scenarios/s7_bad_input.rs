//! Scenario 7: Bad input gets a typed error and stores nothing: a payload above the topic's
//! `max_message_bytes` is `TooLarge`, a topic that does not exist `TopicNotFound`, a bad
//! topic or group name `InvalidName` — all `Outcome::Refused`, through the `Producer`
//! and `Consumer` drivers and through the transport's own `publish`. A consume
//! afterwards finds nothing.

use std::sync::Arc;
use std::time::Duration;

use surety_core::{
    ConsumeError, ErrorKind, Message, Outcome, Producer, PublishError, TopicSpec, Transport,
    TransportError,
};

use crate::support::{
    ConsumerOpts, Record, create_topic, group_info, producer, start_recording, unique,
};
use crate::{TransportFixture, Verdict};

const MAX_BYTES: u32 = 1024;
const BAD_NAME: &str = "bad name/with*chars";

pub(crate) async fn run(fx: &dyn TransportFixture) -> Verdict {
    let t = fx.connect().await;
    let topic = unique("s7");
    create_topic(
        &t,
        &topic,
        TopicSpec {
            max_message_bytes: Some(MAX_BYTES),
            ..TopicSpec::default()
        },
    )
    .await;
    let missing_topic = unique("s7-no-such-topic");
    let p = producer(&t);
    let small = || Message::new("fine");
    let big = || Message::new(vec![b'x'; MAX_BYTES as usize * 2]);

    let cases: [(&str, &str, Message, ErrorKind); 3] = [
        ("oversized payload", &topic, big(), ErrorKind::TooLarge),
        (
            "unknown topic",
            &missing_topic,
            small(),
            ErrorKind::TopicNotFound,
        ),
        ("bad topic name", BAD_NAME, small(), ErrorKind::InvalidName),
    ];
    for (what, to, message, kind) in cases {
        through_producer(&p, what, to, message.clone(), kind).await;
        through_transport(&t, &p, what, to, message, kind).await;
    }

    // A bad group name: the consumer is refused, not retried forever.
    let record = Record::default();
    let refused = start_recording(
        &t,
        &topic,
        BAD_NAME,
        ConsumerOpts::lease(Duration::from_secs(5)),
        &record,
    )
    .ended(Duration::from_secs(30))
    .await;
    match refused {
        Err(ConsumeError::Refused(e)) => {
            assert_refused(&e, ErrorKind::InvalidName, "bad group name")
        }
        other => panic!("bad group name: the consumer must be refused, got {other:?}"),
    }

    // Nothing was stored: a new group finds the topic empty, and no topic was created.
    let group = unique("g");
    let consumer = start_recording(
        &t,
        &topic,
        &group,
        ConsumerOpts::lease(Duration::from_secs(5)),
        &record,
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    consumer.stop().await;
    assert!(
        record.all().is_empty(),
        "refused messages were delivered: {:?}",
        record.all()
    );
    if let Some(g) = group_info(&t, &topic, &group).await {
        assert_eq!(
            (g.lag, g.in_flight),
            (0, 0),
            "the group of an empty topic: {g:?}"
        );
    }
    let topics = t.list_topics().await.unwrap();
    assert!(
        !topics.iter().any(|n| n == &missing_topic || n == BAD_NAME),
        "a refused publish created a topic: {topics:?}"
    );
    let unknown = t.describe_topic(&missing_topic).await;
    match unknown {
        Err(e) => assert_refused(&e, ErrorKind::TopicNotFound, "describe an unknown topic"),
        Ok(info) => panic!("an unknown topic exists after a refused publish: {info:?}"),
    }
    Verdict::Passed
}

fn assert_refused(e: &TransportError, kind: ErrorKind, what: &str) {
    assert_eq!(e.kind, kind, "{what}: {e}");
    assert_eq!(e.outcome, Outcome::Refused, "{what}: {e}");
}

async fn through_producer(p: &Producer, what: &str, topic: &str, m: Message, kind: ErrorKind) {
    let got = tokio::time::timeout(Duration::from_secs(30), p.publish(topic, m))
        .await
        .unwrap_or_else(|_| panic!("{what}: the producer retried a refusal for 30 s"));
    match got {
        Err(PublishError::Refused(e)) => assert_refused(&e, kind, what),
        other => panic!("{what}: expected a {kind:?} refusal, got {other:?}"),
    }
}

/// The transport itself refuses it (the producer may have caught it before sending).
async fn through_transport(
    t: &Arc<dyn Transport>,
    p: &Producer,
    what: &str,
    topic: &str,
    m: Message,
    kind: ErrorKind,
) {
    let batch = p.prepare(vec![m]);
    match t.publish(topic, &batch).await {
        Err(e) => assert_refused(&e, kind, what),
        Ok(answers) => match answers.as_slice() {
            [Err(e)] => assert_refused(e, kind, what),
            other => panic!("{what}: the transport stored it: {other:?}"),
        },
    }
}
