//! The two windows, at their edge: a retry of the same stamps inside the stream's
//! `duplicate_window` is answered as a duplicate of the original (same stream
//! sequence); past it the server stores a second copy — and the consumer's
//! `SettledLedger` drops that copy, while a consumer without one runs it twice. A
//! `FileLedger` drops it after a restart of the consumer too; the default memory does not.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{connect, eventually, group_info, options, unique};
use surety_core::{
    Consumer, FileLedger, FileLedgerOptions, Message, Producer, SettledLedger, StopHandle,
    TopicSpec,
};
use surety_nats::NatsOptions;
use surety_nats::server::Sync;

const WINDOW: Duration = Duration::from_secs(1);
const N: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_inside_the_window_are_duplicates_and_the_ledger_covers_the_rest() {
    let Some(server) = common::current(Sync::Always) else {
        return;
    };
    let t = connect(
        &server,
        NatsOptions {
            duplicate_window: WINDOW,
            ..options(&server)
        },
    )
    .await;
    let topic = unique("dw");
    t.create_topic(&topic, &TopicSpec::default()).await.unwrap();
    let p = Producer::builder_shared(t.clone()).build();
    let batch = p.prepare((0..N).map(|i| Message::new(format!("m{i}"))).collect());
    let first = p.send(&topic, &batch).await.unwrap();
    assert!(first.iter().all(|a| !a.duplicate));

    let inside = p.send(&topic, &batch).await.unwrap();
    for (a, f) in inside.iter().zip(&first) {
        assert!(
            a.duplicate,
            "a retry inside the window must be a duplicate: {a:?}"
        );
        assert_eq!(a.position, f.position, "a duplicate names the original");
    }

    // The server forgets message ids on a timer of the window's length: past twice
    // the window every id is gone.
    tokio::time::sleep(WINDOW * 3).await;
    let outside = p.send(&topic, &batch).await.unwrap();
    for (a, f) in outside.iter().zip(&first) {
        assert!(
            !a.duplicate,
            "past the window the server stores it again: {a:?}"
        );
        assert_ne!(a.position, f.position);
    }

    // Stored twice: a consumer with the ledger (the default here) handles each once…
    let (with, dropped) = handled(&t, &topic, &unique("ledger"), Ledger::Default).await;
    assert_eq!(dropped, N as u64);
    assert!(
        with.values().all(|&n| n == 1) && with.len() == N,
        "with the ledger each stamp runs once: {with:?}"
    );
    // …one without runs every copy.
    let (without, dropped) = handled(&t, &topic, &unique("plain"), Ledger::Off).await;
    assert_eq!(dropped, 0);
    assert!(
        without.values().all(|&n| n == 2) && without.len() == N,
        "without the ledger both copies run: {without:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_ledger_drops_the_second_copy_after_a_restart_the_memory_does_not() {
    let Some(server) = common::current(Sync::Always) else {
        return;
    };
    let t = connect(
        &server,
        NatsOptions {
            duplicate_window: WINDOW,
            ..options(&server)
        },
    )
    .await;
    let topic = unique("dwr");
    t.create_topic(&topic, &TopicSpec::default()).await.unwrap();
    let p = Producer::builder_shared(t.clone()).build();
    let batch = p.prepare((0..N).map(|i| Message::new(format!("m{i}"))).collect());
    p.send(&topic, &batch).await.unwrap();

    // Both groups handle the first copies, then their consumers stop.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("g.ledger");
    let (kept, forgot) = (unique("file"), unique("memory"));
    let (first, _) = handled(&t, &topic, &kept, Ledger::File(&file)).await;
    assert!(
        first.values().all(|&n| n == 1) && first.len() == N,
        "{first:?}"
    );
    handled(&t, &topic, &forgot, Ledger::Default).await;

    // A retry past the window: stored a second time.
    tokio::time::sleep(WINDOW * 3).await;
    let again = p.send(&topic, &batch).await.unwrap();
    assert!(again.iter().all(|a| !a.duplicate), "{again:?}");

    // New consumer processes: the file remembers, the memory started empty.
    let (after, dropped) = handled(&t, &topic, &kept, Ledger::File(&file)).await;
    assert!(
        after.is_empty() && dropped == N as u64,
        "with the file ledger no second copy runs after the restart: {after:?}"
    );
    let (twice, _) = handled(&t, &topic, &forgot, Ledger::Default).await;
    assert!(
        twice.values().all(|&n| n == 1) && twice.len() == N,
        "the memory ledger forgot across the restart, so the copies ran: {twice:?}"
    );
}

#[derive(Debug, Clone, Copy)]
enum Ledger<'a> {
    /// The driver's own: a `MemoryLedger` on this transport.
    Default,
    Off,
    File(&'a std::path::Path),
}

/// Runs a consumer of `group` until it settled everything; how often each sequence's
/// handler ran, and how many copies the ledger dropped unrun.
async fn handled(
    t: &Arc<dyn surety_core::Transport>,
    topic: &str,
    group: &str,
    ledger: Ledger<'_>,
) -> (BTreeMap<u64, u32>, u64) {
    let seen: Arc<Mutex<BTreeMap<u64, u32>>> = Arc::default();
    let stop = StopHandle::new();
    let mut b = Consumer::builder_shared(t.clone(), topic, group).stop_with(stop.clone());
    match ledger {
        Ledger::Default => {}
        Ledger::Off => b = b.without_settled_ledger(),
        Ledger::File(path) => {
            let file = FileLedger::open(path, FileLedgerOptions::default()).unwrap();
            b = b.settled_ledger(Arc::new(file) as Arc<dyn SettledLedger>);
        }
    }
    let running = tokio::spawn({
        let seen = seen.clone();
        b.run(move |d| {
            *seen.lock().unwrap().entry(d.sequence.unwrap()).or_default() += 1;
            async { Ok::<(), String>(()) }
        })
    });
    eventually(Duration::from_secs(20), "the group settled", || async {
        match group_info(t, topic, group).await {
            Some(g) if g.lag == 0 && g.in_flight == 0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    stop.stop();
    let stats = running.await.unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    (seen, stats.duplicates_dropped)
}
