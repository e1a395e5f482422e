//! Kafka-specific cases, against librdkafka's MockCluster (an in-memory Kafka-protocol
//! cluster inside the test process, with real TCP listeners and a real group
//! coordinator): what the conformance suite cannot say in transport-neutral terms —
//! commits never pass an unsettled record, a parked key holds only its own records, a
//! session that ends loses nothing and repeats only what it had not settled, a second
//! member joining and the first leaving loses nothing, delivery counts survive the
//! session, and injected broker errors never turn into a confirm or a loss.
//!
//! Sessions are driven through the raw seam (`Session`), so each test says exactly which
//! record is settled when.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use surety_core::{
    Admin, Batch, Delivery, Message, Publisher, Receipt, Session, SessionEvent, Settle,
    SettleOutcome, StampedMessage, Subscriber, Subscription, TopicSpec,
};
use surety_kafka::KafkaTransport;

struct Cluster {
    mock: MockCluster<'static, DefaultProducerContext>,
    url: String,
}

fn cluster() -> Cluster {
    let mock = MockCluster::new(1).expect("a MockCluster");
    let url = format!("kafka://{}", mock.bootstrap_servers());
    Cluster { mock, url }
}

async fn connect(c: &Cluster, query: &str) -> KafkaTransport {
    KafkaTransport::connect_url(&format!("{}{query}", c.url))
        .await
        .expect("connect to the MockCluster")
}

fn batch(topic_tag: &str, items: &[(&str, Option<&str>)]) -> Batch {
    Batch::new(
        items
            .iter()
            .enumerate()
            .map(|(i, (payload, key))| {
                let mut m = Message::new(payload.as_bytes().to_vec());
                if let Some(k) = key {
                    m = m.with_key(k.as_bytes().to_vec());
                }
                StampedMessage {
                    message: m,
                    producer_id: format!("p-{topic_tag}").into(),
                    sequence: i as u64 + 1,
                }
            })
            .collect(),
    )
}

async fn topic_with(t: &KafkaTransport, topic: &str, partitions: u32) {
    t.create_topic(
        topic,
        &TopicSpec {
            partitions: Some(partitions),
            max_deliveries: Some(3),
            ..TopicSpec::default()
        },
    )
    .await
    .unwrap();
}

async fn open(t: &KafkaTransport, topic: &str, group: &str, credits: u32) -> Box<dyn Session> {
    t.subscribe(&Subscription {
        topic: topic.to_owned(),
        group: group.to_owned(),
        credits,
        lease: Some(Duration::from_secs(6)),
    })
    .await
    .unwrap()
}

/// Deliveries until `n` have come (or `limit` passes).
async fn take(s: &mut Box<dyn Session>, n: usize, limit: Duration) -> Vec<Delivery> {
    let mut out = Vec::new();
    let deadline = Instant::now() + limit;
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.next()).await {
            Err(_) => break,
            Ok(Ok(SessionEvent::Deliveries(d))) => out.extend(d),
            // Answers to settlements sent without waiting.
            Ok(Ok(SessionEvent::Settled { outcomes, .. })) => assert!(
                outcomes.iter().all(|o| *o == SettleOutcome::Applied),
                "{outcomes:?}"
            ),
            Ok(Ok(other)) => panic!("unexpected {other:?}"),
            Ok(Err(e)) => panic!("session ended: {e}"),
        }
    }
    out
}

/// Nothing delivered for `quiet`.
async fn nothing_more(s: &mut Box<dyn Session>, quiet: Duration) {
    if let Ok(e) = tokio::time::timeout(quiet, s.next()).await {
        panic!("expected nothing, got {e:?}");
    }
}

async fn settle(s: &mut Box<dyn Session>, id: u64, settle: Settle) -> Vec<SettleOutcome> {
    let (outcomes, more) = settle_taking(s, id, settle).await;
    assert!(more.is_empty(), "unexpected deliveries {more:?}");
    outcomes
}

/// Settles and waits for the answer, keeping the deliveries that come meanwhile.
async fn settle_taking(
    s: &mut Box<dyn Session>,
    id: u64,
    settle: Settle,
) -> (Vec<SettleOutcome>, Vec<Delivery>) {
    s.settle(id, settle);
    let mut more = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), s.next())
            .await
            .expect("a settlement answer")
            .expect("the session")
        {
            SessionEvent::Settled { id: got, outcomes } if got == id => return (outcomes, more),
            SessionEvent::Deliveries(d) => more.extend(d),
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn payload(d: &Delivery) -> String {
    String::from_utf8(d.payload.clone()).unwrap()
}

fn receipts<'a>(ds: impl IntoIterator<Item = &'a Delivery>) -> Vec<Receipt> {
    ds.into_iter().map(|d| d.receipt.clone()).collect()
}

/// The group's committed offset of partition 0 of `kafka_topic`, read as any Kafka tool
/// would.
fn committed(c: &Cluster, group: &str, kafka_topic: &str) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", c.mock.bootstrap_servers())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(kafka_topic, 0);
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .unwrap();
    match got.elements()[0].offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_acks_never_commit_past_an_unsettled_record() {
    let c = cluster();
    c.mock.create_topic("ooo", 1, 1).unwrap();
    let t = connect(&c, "").await;
    topic_with(&t, "ooo", 1).await;
    let names: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
    let items: Vec<(&str, Option<&str>)> = names.iter().map(|n| (n.as_str(), None)).collect();
    let answers = t.publish("ooo", &batch("ooo", &items)).await.unwrap();
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");

    let mut s = open(&t, "ooo", "g", 10).await;
    let got = take(&mut s, 6, Duration::from_secs(30)).await;
    assert_eq!(got.iter().map(payload).collect::<Vec<_>>(), names);
    // Everything but m1 is acked: the commit must stay at m1's offset.
    let acked: Vec<&Delivery> = got.iter().filter(|d| payload(d) != "m1").collect();
    let outcomes = settle(&mut s, 1, Settle::Ack(receipts(acked))).await;
    assert!(
        outcomes.iter().all(|o| *o == SettleOutcome::Applied),
        "{outcomes:?}"
    );
    assert_eq!(committed(&c, "g", "ooo"), Some(got[1].offset() as i64));
    drop(s);

    // A new session gets m1 only, counted as its second delivery.
    let mut s = open(&t, "ooo", "g", 10).await;
    let again = take(&mut s, 1, Duration::from_secs(30)).await;
    assert_eq!(again.iter().map(payload).collect::<Vec<_>>(), ["m1"]);
    assert_eq!(again[0].delivery_count, 2);
    nothing_more(&mut s, Duration::from_millis(1500)).await;
    let outcomes = settle(&mut s, 2, Settle::Ack(receipts(&again))).await;
    assert_eq!(outcomes, [SettleOutcome::Applied]);
    assert_eq!(committed(&c, "g", "ooo"), Some(6));
    // A second ack of a settled record is no error and changes nothing.
    let outcomes = settle(&mut s, 3, Settle::Ack(receipts(&again))).await;
    assert_eq!(outcomes, [SettleOutcome::AlreadySettled]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_key_holds_only_its_own_later_records() {
    let c = cluster();
    c.mock.create_topic("keys", 1, 1).unwrap();
    let t = connect(&c, "").await;
    topic_with(&t, "keys", 1).await;
    let items = [
        ("a1", Some("a")),
        ("b1", Some("b")),
        ("a2", Some("a")),
        ("b2", Some("b")),
        ("c1", Some("c")),
        ("a3", Some("a")),
    ];
    t.publish("keys", &batch("keys", &items)).await.unwrap();
    let mut s = open(&t, "keys", "g", 10).await;
    let first = take(&mut s, 3, Duration::from_secs(30)).await;
    // One record per key at a time: a1, b1, c1.
    assert_eq!(
        first.iter().map(payload).collect::<Vec<_>>(),
        ["a1", "b1", "c1"]
    );
    nothing_more(&mut s, Duration::from_millis(500)).await;
    // b1 done: b2 comes, a's records still wait for a1.
    let b1 = first.iter().find(|d| payload(d) == "b1").unwrap();
    s.settle(1, Settle::Ack(vec![b1.receipt.clone()]));
    let next = take(&mut s, 1, Duration::from_secs(10)).await;
    assert_eq!(next.iter().map(payload).collect::<Vec<_>>(), ["b2"]);
    // a1 fails: it comes back after the delay, before a2; a2 and a3 wait.
    let a1 = first.iter().find(|d| payload(d) == "a1").unwrap();
    s.settle(
        2,
        Settle::Nack {
            receipts: vec![a1.receipt.clone()],
            delay: Duration::from_millis(300),
            reason: "not yet".into(),
        },
    );
    let again = take(&mut s, 1, Duration::from_secs(10)).await;
    assert_eq!(payload(&again[0]), "a1");
    assert_eq!(again[0].delivery_count, 2);
    s.settle(3, Settle::Ack(vec![again[0].receipt.clone()]));
    let a2 = take(&mut s, 1, Duration::from_secs(10)).await;
    assert_eq!(payload(&a2[0]), "a2");
    assert_eq!(a2[0].delivery_count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_failing_max_deliveries_times_is_dead_lettered_with_its_reason_and_resent() {
    let c = cluster();
    c.mock.create_topic("dl", 1, 1).unwrap();
    let t = connect(&c, "").await;
    topic_with(&t, "dl", 1).await;
    t.publish(
        "dl",
        &batch("dl", &[("poison", Some("k")), ("after", Some("k"))]),
    )
    .await
    .unwrap();
    let mut s = open(&t, "dl", "g", 10).await;
    for n in 1..=3u32 {
        let d = take(&mut s, 1, Duration::from_secs(30)).await;
        assert_eq!((payload(&d[0]), d[0].delivery_count), ("poison".into(), n));
        s.settle(
            u64::from(n),
            Settle::Nack {
                receipts: receipts(&d),
                delay: Duration::from_millis(50),
                reason: format!("failure {n}"),
            },
        );
    }
    // The key's next record flows once the poison is a dead letter.
    let after = take(&mut s, 1, Duration::from_secs(30)).await;
    assert_eq!(payload(&after[0]), "after");
    let page = t.dead_letters("dl", "g", None, 10).await.unwrap();
    assert_eq!(page.items.len(), 1, "{page:?}");
    let dl = &page.items[0];
    assert_eq!((dl.reason.as_str(), dl.attempts), ("failure 3", 3));
    assert_eq!(dl.payload, b"poison");
    assert!(dl.first_delivered_ms.is_some() && dl.last_delivered_ms.is_some());
    assert!(
        t.dead_letters("dl", "other", None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // Resent to g only, with a new life.
    assert_eq!(
        t.resend("dl", "g", &surety_core::Selection::All)
            .await
            .unwrap(),
        1
    );
    s.settle(10, Settle::Ack(receipts(&after)));
    let back = take(&mut s, 1, Duration::from_secs(30)).await;
    assert_eq!(
        (payload(&back[0]), back[0].delivery_count),
        ("poison".into(), 1)
    );
    assert!(
        t.dead_letters("dl", "g", None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let info = t.describe_topic("dl").await.unwrap();
    let g: BTreeMap<_, _> = info.groups.iter().map(|g| (g.name.clone(), g)).collect();
    assert_eq!(g["g"].dead_letters, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_member_joining_and_the_first_leaving_loses_nothing() {
    let c = cluster();
    c.mock.create_topic("rb", 4, 1).unwrap();
    let t = connect(&c, "").await;
    topic_with(&t, "rb", 4).await;
    let names: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    let items: Vec<(&str, Option<&str>)> = names
        .iter()
        .zip(&keys)
        .map(|(n, k)| (n.as_str(), Some(k.as_str())))
        .collect();
    t.publish("rb", &batch("rb", &items)).await.unwrap();

    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut first = open(&t, "rb", "g", 6).await;
    let got = take(&mut first, 6, Duration::from_secs(30)).await;
    // Three acked and confirmed; three still out when the second member joins.
    let (outcomes, more) = settle_taking(&mut first, 1, Settle::Ack(receipts(&got[..3]))).await;
    assert!(outcomes.iter().all(|o| *o == SettleOutcome::Applied));
    let confirmed: Vec<String> = got[..3].iter().map(payload).collect();
    for p in &confirmed {
        *seen.entry(p.clone()).or_default() += 1;
    }
    let mut second = open(&t, "rb", "g", 100).await;
    // Deliveries that came with the answer are out, unsettled, when the first leaves.
    for d in &more {
        *seen.entry(payload(d)).or_default() += 1;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut id = 10;
    while seen.len() < names.len() {
        assert!(
            Instant::now() < deadline,
            "lost: {:?}",
            names
                .iter()
                .filter(|n| !seen.contains_key(*n))
                .collect::<Vec<_>>()
        );
        if let Ok(Ok(SessionEvent::Deliveries(ds))) =
            tokio::time::timeout(Duration::from_millis(500), second.next()).await
        {
            for d in &ds {
                *seen.entry(payload(d)).or_default() += 1;
            }
            id += 1;
            second.settle(id, Settle::Ack(receipts(&ds)));
        }
    }
    // What was acked and confirmed is never delivered again.
    for p in &confirmed {
        assert_eq!(
            seen[p], 1,
            "{p} was acked and confirmed, then delivered again"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_produce_errors_are_retried_and_each_record_lands_once() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let c = cluster();
    c.mock.create_topic("perr", 1, 1).unwrap();
    let t = connect(&c, "").await;
    topic_with(&t, "perr", 1).await;
    // The broker refuses the next produce requests as a busy cluster would.
    c.mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 3],
    );
    let items = [("e1", None), ("e2", None), ("e3", None)];
    let answers = t.publish("perr", &batch("perr", &items)).await.unwrap();
    let offsets: Vec<u64> = answers
        .iter()
        .map(|a| a.as_ref().unwrap().offset())
        .collect();
    assert_eq!(offsets, [0, 1, 2], "{answers:?}");
    let mut s = open(&t, "perr", "g", 10).await;
    let got = take(&mut s, 3, Duration::from_secs(30)).await;
    assert_eq!(
        got.iter().map(payload).collect::<Vec<_>>(),
        ["e1", "e2", "e3"]
    );
    nothing_more(&mut s, Duration::from_millis(1000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_commit_delays_the_ack_answer_and_loses_nothing() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let c = cluster();
    c.mock.create_topic("cerr", 1, 1).unwrap();
    let t = connect(&c, "").await;
    topic_with(&t, "cerr", 1).await;
    t.publish("cerr", &batch("cerr", &[("c1", None), ("c2", None)]))
        .await
        .unwrap();
    let mut s = open(&t, "cerr", "g", 10).await;
    let got = take(&mut s, 2, Duration::from_secs(30)).await;
    // The coordinator refuses the next commits: the acks are answered only once one
    // carrying them got through, and then the group's offset says so.
    c.mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR; 3],
    );
    let (outcomes, mut again) = settle_taking(&mut s, 1, Settle::Ack(receipts(&got))).await;
    if outcomes.iter().all(|o| *o == SettleOutcome::Applied) {
        assert_eq!(committed(&c, "g", "cerr"), Some(2));
    } else {
        // The refused commit cost this member its membership (the coordinator forgot it):
        // the acks were never recorded, so they are refused as stale, never answered
        // Applied, and the records come back.
        for o in &outcomes {
            assert!(
                matches!(o, SettleOutcome::Refused(e) if e.kind == surety_core::ErrorKind::Stale),
                "{outcomes:?}"
            );
        }
        if again.len() < 2 {
            again.extend(take(&mut s, 2 - again.len(), Duration::from_secs(30)).await);
        }
        assert_eq!(again.iter().map(payload).collect::<Vec<_>>(), ["c1", "c2"]);
        let outcomes = settle(&mut s, 2, Settle::Ack(receipts(&again))).await;
        assert_eq!(outcomes, [SettleOutcome::Applied, SettleOutcome::Applied]);
        assert_eq!(committed(&c, "g", "cerr"), Some(2));
    }
    drop(s);
    let mut s = open(&t, "cerr", "g", 10).await;
    nothing_more(&mut s, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_copy_of_a_stamp_waits_behind_the_first_copy() {
    let c = cluster();
    c.mock.create_topic("dup", 1, 1).unwrap();
    let t = connect(&c, "").await;
    topic_with(&t, "dup", 1).await;
    // The same stamp twice (a publish retried after its answer was lost), then another.
    let once = batch("dup", &[("x", None)]);
    t.publish("dup", &once).await.unwrap();
    t.publish("dup", &once).await.unwrap();
    let other = Batch::new(vec![StampedMessage {
        sequence: 2,
        ..once.messages()[0].clone()
    }]);
    t.publish("dup", &other).await.unwrap();
    let mut s = open(&t, "dup", "g", 10).await;
    let first = take(&mut s, 2, Duration::from_secs(30)).await;
    assert_eq!(
        first.iter().map(|d| d.sequence).collect::<Vec<_>>(),
        [Some(1), Some(2)],
        "the second copy of sequence 1 waits"
    );
    nothing_more(&mut s, Duration::from_millis(500)).await;
    s.settle(1, Settle::Ack(vec![first[0].receipt.clone()]));
    let copy = take(&mut s, 1, Duration::from_secs(10)).await;
    assert_eq!((copy[0].sequence, copy[0].offset()), (Some(1), 1));
}
