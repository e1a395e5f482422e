//! RabbitMQ-specific cases against the machine's broker (`SURETY_TEST_AMQP_URL`, else
//! `amqp://guest:guest@127.0.0.1:5672/%2f`, management API on 15672): what the
//! conformance suite cannot say in transport-neutral terms. Each test works under a name
//! prefix of its own and deletes its topics at the end. Without a broker they skip with
//! the reason, except under `CI=true`, where that fails.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::QueueDeleteOptions;
use surety_core::{
    Admin, Consumer, ErrorKind, Message, Producer, Publisher, SessionEvent, Settle, Subscriber,
    Subscription, TopicSpec, Transport,
};
use surety_rabbitmq::{RabbitOptions, RabbitTransport, TopicNames};

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}{:x}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A transport under a prefix of its own, or `None` (said why) without a broker.
async fn rabbit() -> Option<(RabbitTransport, String)> {
    let base = std::env::var("SURETY_TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let url = format!("{base}?prefix={}", unique("t"));
    let parsed = url::Url::parse(&url).unwrap();
    let options = RabbitOptions::from_url_query(&parsed).unwrap();
    match RabbitTransport::connect(&url, options).await {
        Ok(t) => Some((t, url)),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true and no RabbitMQ at {base}: {e}")
        }
        Err(e) => {
            eprintln!("skipped: no RabbitMQ at {base}: {e} (set SURETY_TEST_AMQP_URL)");
            None
        }
    }
}

async fn cleanup(t: &RabbitTransport) {
    for topic in t.list_topics().await.unwrap_or_default() {
        let _ = t.delete_topic(&topic).await;
    }
}

async fn eventually<T>(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_publish_is_an_error_never_a_confirm() {
    let Some((t, url)) = rabbit().await else {
        return;
    };
    let topic = "orders";
    t.create_topic(topic, &TopicSpec::default()).await.unwrap();
    // Take away the only queue bound to the topic's exchange: its history stream.
    let names = TopicNames::new(&t.options().prefix, topic).unwrap();
    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(names.log.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let p = Producer::builder(t.clone()).build();
    let batch = p.prepare(vec![Message::new("nowhere")]);
    let answers = t.publish(topic, &batch).await.unwrap();
    let e = answers[0]
        .clone()
        .expect_err("an unroutable message must not be confirmed");
    assert_eq!(e.code.as_deref(), Some("unroutable"), "{e}");
    assert!(!e.retryable(), "{e}");
    cleanup(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stamp_published_twice_is_handled_once() {
    let Some((rt, _)) = rabbit().await else {
        return;
    };
    let t: Arc<dyn Transport> = Arc::new(rt.clone());
    let topic = "dup";
    t.create_topic(topic, &TopicSpec::default()).await.unwrap();
    let p = Producer::builder_shared(t.clone()).build();
    let batch = p.prepare(vec![Message::new("once"), Message::new("also once")]);
    // The confirm was "lost": the same batch, same stamps, again. RabbitMQ stores both.
    p.send(topic, &batch).await.unwrap();
    p.send(topic, &batch).await.unwrap();
    let runs = Arc::new(Mutex::new(Vec::new()));
    let consumer = Consumer::builder_shared(t.clone(), topic, "billing");
    let stop = consumer.stop_handle();
    let running = {
        let runs = runs.clone();
        tokio::spawn(consumer.run(move |d| {
            let runs = runs.clone();
            async move {
                runs.lock().unwrap().push(d.sequence.unwrap());
                Ok::<(), String>(())
            }
        }))
    };
    eventually(Duration::from_secs(20), "both copies settled", async || {
        let info = t.describe_topic(topic).await.ok()?;
        let g = info.groups.into_iter().find(|g| g.name == "billing")?;
        (g.lag == 0 && runs.lock().unwrap().len() >= 2).then_some(())
    })
    .await;
    stop.stop();
    let stats = running.await.unwrap().unwrap();
    let mut seen = runs.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, vec![0, 1], "each stamp's handler ran once");
    assert_eq!(
        stats.duplicates_dropped, 2,
        "the second copies were dropped unrun: {stats:?}"
    );
    cleanup(&rt).await;
}

/// The next event of `session` that is a batch of deliveries (settle answers skipped).
async fn next_delivery(s: &mut Box<dyn surety_core::Session>) -> surety_core::Delivery {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), s.next()).await {
            Ok(Ok(SessionEvent::Deliveries(mut d))) => return d.remove(0),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("session: {e}"),
            Err(_) => panic!("no delivery in 20 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_waits_its_delay_in_a_retry_queue_and_counts_up() {
    let Some((t, _)) = rabbit().await else { return };
    let topic = "retry";
    t.create_topic(topic, &TopicSpec::default()).await.unwrap();
    let sub = Subscription {
        topic: topic.into(),
        group: "g".into(),
        credits: 10,
        lease: None,
    };
    let mut s = t.subscribe(&sub).await.unwrap();
    let p = Producer::builder(t.clone()).build();
    p.publish(topic, Message::new("flaky")).await.unwrap();
    let first = next_delivery(&mut s).await;
    assert_eq!(first.delivery_count, 1);
    let delay = Duration::from_millis(1500);
    let nacked_at = Instant::now();
    s.settle(
        1,
        Settle::Nack {
            receipts: vec![first.receipt.clone()],
            delay,
            reason: "try later".into(),
        },
    );
    // While it waits: unsettled (counted in lag), not in flight, not back yet.
    let waiting = eventually(
        Duration::from_secs(5),
        "the copy in its retry queue",
        async || {
            let g = t
                .describe_topic(topic)
                .await
                .ok()?
                .groups
                .into_iter()
                .find(|g| g.name == "g")?;
            (g.in_flight == 0 && g.lag == 1).then_some(g)
        },
    )
    .await;
    assert_eq!(waiting.dead_letters, 0);
    let again = next_delivery(&mut s).await;
    let waited = nacked_at.elapsed();
    assert!(
        waited >= delay,
        "redelivered after {waited:?}, before the nack's delay {delay:?}"
    );
    assert_eq!(
        (again.delivery_count, again.payload.as_slice()),
        (2, &b"flaky"[..])
    );
    assert_eq!(again.sequence, first.sequence, "the same stamp comes back");
    assert_eq!(
        again.first_delivered_ms, first.first_delivered_ms,
        "first delivery time kept"
    );
    drop(s);
    cleanup(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_consumers_keep_dying_is_dead_lettered_unrun_at_the_cap() {
    let Some((t, _)) = rabbit().await else { return };
    let topic = "poison";
    let spec = TopicSpec {
        max_deliveries: Some(2),
        ..TopicSpec::default()
    };
    t.create_topic(topic, &spec).await.unwrap();
    let p = Producer::builder(t.clone()).build();
    p.publish(topic, Message::new("crashes its consumer"))
        .await
        .unwrap();
    let sub = Subscription {
        topic: topic.into(),
        group: "g".into(),
        credits: 1,
        lease: None,
    };
    // Two consumers take it and die (their channels close unsettled): the broker counts
    // each return, and the count survives the sessions.
    for expected in 1..=2 {
        let mut s = t.subscribe(&sub).await.unwrap();
        let d = next_delivery(&mut s).await;
        assert_eq!(d.delivery_count, expected);
        drop(s);
    }
    // A third session never sees it: delivery 3 of 2 goes to the dead letters unrun.
    let mut s = t.subscribe(&sub).await.unwrap();
    let page = eventually(Duration::from_secs(20), "the dead letter", async || {
        let page = t.dead_letters(topic, "g", None, 10).await.ok()?;
        (!page.items.is_empty()).then_some(page)
    })
    .await;
    let dl = &page.items[0];
    assert_eq!(dl.attempts, 2, "{dl:?}");
    assert!(
        dl.reason.contains("died on delivery 2 of 2"),
        "{}",
        dl.reason
    );
    assert_eq!(dl.payload, b"crashes its consumer");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), s.next())
            .await
            .is_err(),
        "the session got something after the dead letter"
    );
    // Resend gives it a new life in this group; purge by id counts.
    assert_eq!(
        t.resend(topic, "g", &surety_core::Selection::All)
            .await
            .unwrap(),
        1
    );
    let back = next_delivery(&mut s).await;
    assert_eq!(
        (back.delivery_count, back.payload.as_slice()),
        (1, &b"crashes its consumer"[..])
    );
    s.settle(
        2,
        Settle::DeadLetter {
            receipts: vec![back.receipt],
            reason: "by hand".into(),
        },
    );
    let page = eventually(
        Duration::from_secs(10),
        "the second dead letter",
        async || {
            let page = t.dead_letters(topic, "g", None, 10).await.ok()?;
            (page.items.len() == 1 && page.items[0].reason == "by hand").then_some(page)
        },
    )
    .await;
    let which = surety_core::Selection::Ids(vec![page.items[0].id.clone()]);
    assert_eq!(t.purge(topic, "g", &which).await.unwrap(), 1);
    assert!(
        t.dead_letters(topic, "g", None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    drop(s);
    cleanup(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_created_later_starts_from_the_topics_history() {
    let Some((t, _)) = rabbit().await else { return };
    let topic = "history";
    t.create_topic(topic, &TopicSpec::default()).await.unwrap();
    let p = Producer::builder(t.clone()).build();
    for i in 0..5 {
        p.publish(topic, Message::new(format!("before-{i}")))
            .await
            .unwrap();
    }
    let sub = |group: &str| Subscription {
        topic: topic.into(),
        group: group.into(),
        credits: 100,
        lease: None,
    };
    let mut early = t.subscribe(&sub("early")).await.unwrap();
    p.publish(topic, Message::new("between")).await.unwrap();
    let mut late = t.subscribe(&sub("late")).await.unwrap();
    p.publish(topic, Message::new("after")).await.unwrap();
    for (name, s) in [("early", &mut early), ("late", &mut late)] {
        let mut got = Vec::new();
        while got.len() < 7 {
            got.push(String::from_utf8(next_delivery(s).await.payload).unwrap());
        }
        got.sort();
        assert_eq!(
            got,
            [
                "after", "before-0", "before-1", "before-2", "before-3", "before-4", "between"
            ],
            "group {name} sees the whole history"
        );
    }
    // A second subscribe of an existing group copies nothing again.
    drop(late);
    let g = eventually(
        Duration::from_secs(10),
        "late's deliveries back",
        async || {
            let g = t
                .describe_topic(topic)
                .await
                .ok()?
                .groups
                .into_iter()
                .find(|g| g.name == "late")?;
            (g.in_flight == 0).then_some(g)
        },
    )
    .await;
    let mut again = t.subscribe(&sub("late")).await.unwrap();
    let counted = t
        .describe_topic(topic)
        .await
        .unwrap()
        .groups
        .into_iter()
        .find(|g| g.name == "late")
        .unwrap();
    assert_eq!(
        counted.lag, g.lag,
        "a second subscribe copied the history again"
    );
    assert_eq!(g.lag, 7);
    let _ = next_delivery(&mut again).await;
    drop((early, again));
    cleanup(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_and_changed_settings_are_refused() {
    let Some((t, _)) = rabbit().await else { return };
    for bad in ["a.b", "a b", "x~y", ""] {
        let e = t
            .create_topic(bad, &TopicSpec::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidName, "{bad:?}: {e}");
    }
    let spec = TopicSpec {
        max_deliveries: Some(3),
        ..TopicSpec::default()
    };
    t.create_topic("fixed", &spec).await.unwrap();
    t.create_topic("fixed", &spec)
        .await
        .expect("the same settings again are fine");
    let other = TopicSpec {
        max_deliveries: Some(4),
        ..TopicSpec::default()
    };
    let e = t.create_topic("fixed", &other).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("topic_exists"), "{e}");
    assert_eq!(t.describe_topic("fixed").await.unwrap().max_deliveries, 3);
    let e = t.describe_topic("missing").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::TopicNotFound);
    cleanup(&t).await;
}
