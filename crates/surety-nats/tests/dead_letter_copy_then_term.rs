//! A consumer SIGKILLed between the dead-letter copy and the `+TERM` of the original
//! loses nothing: the copy is confirmed first, the original stays unsettled and comes
//! back, and the next consumer dead-letters it again under the same `Nats-Msg-Id` — one
//! dead letter, not two, and never none.
//!
//! The child is this test binary re-executed (the ignored test below, by name) with
//! `Fault::HangAfterDeadLetterCopy`: after the copy's PubAck it writes a marker and
//! hangs; the parent SIGKILLs it on the marker.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{connect, eventually, group_info, options, unique};
use surety_core::{Consumer, Message, Producer, StopHandle, TopicSpec};
use surety_nats::server::Sync;
use surety_nats::{Fault, NatsOptions};

const LEASE: Duration = Duration::from_secs(2);
const CHILD_ENV: &str = "SURETY_NATS_TEST_DLQ_CHILD";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_between_copy_and_term_loses_nothing() {
    let Some(server) = common::current(Sync::Always) else {
        return;
    };
    let t = connect(&server, options(&server)).await;
    let (topic, group) = (unique("dlq"), unique("g"));
    t.create_topic(
        &topic,
        &TopicSpec {
            max_deliveries: Some(1),
            ack_wait: Some(LEASE),
            ..TopicSpec::default()
        },
    )
    .await
    .unwrap();
    let published = Producer::builder_shared(t.clone())
        .build()
        .publish(&topic, Message::new("doomed"))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("copied");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_fails_and_hangs_after_the_copy",
            "--ignored",
            "--nocapture",
        ])
        .env(
            CHILD_ENV,
            format!(
                "{}|{topic}|{group}|{}",
                server.backend_url(),
                marker.display()
            ),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("child.stderr")).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        if std::fs::read_to_string(&marker).is_ok_and(|m| m.ends_with('\n')) {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the child exited ({status}): {}",
                std::fs::read_to_string(dir.path().join("child.stderr")).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no copy marker from the child in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // Killed after the copy was confirmed and before the original was terminated.
    let page = t.dead_letters(&topic, &group, None, 10).await.unwrap();
    assert_eq!(
        page.items.len(),
        1,
        "the copy must be stored before the original is terminated: {page:?}"
    );
    assert_eq!(page.items[0].origin, published.position);
    let g = group_info(&t, &topic, &group).await.unwrap();
    assert_eq!(g.lag, 1, "the original must still be unsettled: {g:?}");

    // The next consumer gets it back after the lease, past max_deliveries: dead-lettered
    // again without running the handler, deduplicated into the same dead letter.
    let runs = Arc::new(AtomicU32::new(0));
    let consumer = StopHandle::new();
    let running = tokio::spawn({
        let runs = runs.clone();
        Consumer::builder_shared(t.clone(), &topic, &group)
            .lease(LEASE)
            .stop_with(consumer.clone())
            .run(move |_| {
                runs.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>("should not run".to_owned()) }
            })
    });
    eventually(Duration::from_secs(30), "the original settled", || async {
        match group_info(&t, &topic, &group).await {
            Some(g) if g.lag == 0 && g.in_flight == 0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    consumer.stop();
    running.await.unwrap().unwrap();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "a delivery past max_deliveries must be dead-lettered unrun"
    );
    let page = t.dead_letters(&topic, &group, None, 10).await.unwrap();
    assert_eq!(
        page.items.len(),
        1,
        "the repeated copy must collapse into the first (Nats-Msg-Id): {page:?}"
    );
    assert!(
        page.items[0].reason.contains("first run failed"),
        "{:?}",
        page.items[0]
    );
}

/// The child: a consumer whose handler fails; its dead-letter copy hangs before +TERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_consumer_killed_between_copy_and_term_loses_nothing as its child"]
async fn child_fails_and_hangs_after_the_copy() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.split('|');
    let (url, topic, group, marker) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let parsed = url::Url::parse(url).unwrap();
    let options = NatsOptions {
        fault: Some(Fault::HangAfterDeadLetterCopy(marker.into())),
        ..NatsOptions::from_url_query(&parsed).unwrap()
    };
    let t = surety_nats::NatsTransport::connect(url, options)
        .await
        .unwrap();
    let _ = Consumer::builder(t, topic, group)
        .lease(LEASE)
        .run(|_| async { Err::<(), _>("first run failed".to_owned()) })
        .await;
}
