//! The in-process Session spoken directly, as a driver does: the credit window, one
//! answer per receipt, drain, dead-letter-now refused, and a cancelled `next()` that
//! loses nothing.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Env;
use surety_core::{
    ErrorKind, Message, Outcome, Producer, Receipt, Session, SessionEvent, Settle, SettleOutcome,
    Subscriber, Subscription, TopicSpec,
};

async fn publish(env: &Env, n: usize) {
    let batch = (0..n).map(|i| Message::new(format!("m{i}"))).collect();
    Producer::new(env.transport.clone())
        .publish_batch("t", batch)
        .await
        .unwrap();
}

async fn open(env: &Env, credits: u32) -> Box<dyn Session> {
    let sub = Subscription {
        topic: "t".into(),
        group: "g".into(),
        credits,
        lease: None,
    };
    env.transport.subscribe(&sub).await.unwrap()
}

/// Every event that arrives until `quiet` passes without one (the first may take up to
/// 10 s, for a slow fsync).
async fn events(session: &mut dyn Session, quiet: Duration) -> Vec<SessionEvent> {
    let mut out = Vec::new();
    let mut wait = Duration::from_secs(10);
    while let Ok(event) = tokio::time::timeout(wait, session.next()).await {
        out.push(event.unwrap());
        wait = quiet;
    }
    out
}

fn receipts(events: &[SessionEvent]) -> Vec<Receipt> {
    events
        .iter()
        .flat_map(|e| match e {
            SessionEvent::Deliveries(b) => b.iter().map(|d| d.receipt.clone()).collect(),
            _ => Vec::new(),
        })
        .collect()
}

fn settled(events: &[SessionEvent], request: u64) -> Vec<SettleOutcome> {
    events
        .iter()
        .find_map(|e| match e {
            SessionEvent::Settled { id, outcomes } if *id == request => Some(outcomes.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no answer to request {request} in {events:?}"))
}

/// Longer than a fetch's long poll (200 ms): nothing more is coming.
const QUIET: Duration = Duration::from_millis(400);

#[tokio::test]
async fn the_window_bounds_deliveries_and_settling_frees_a_place() {
    let env = Env::new();
    env.topic("t", TopicSpec::default()).await;
    publish(&env, 10).await;
    let mut s = open(&env, 3).await;
    let first = receipts(&events(&mut *s, QUIET).await);
    assert_eq!(first.len(), 3);

    // Each receipt answered on its own; settling one (accepted) frees one place.
    s.settle(1, Settle::Ack(vec![first[0].clone()]));
    let out = events(&mut *s, QUIET).await;
    assert_eq!(settled(&out, 1), [SettleOutcome::Applied]);
    assert_eq!(receipts(&out).len(), 1);

    // A repeat is AlreadySettled, a forged receipt refused, and a refused one frees
    // nothing (it never was this session's).
    s.settle(
        2,
        Settle::Ack(vec![first[0].clone(), Receipt::from("forged")]),
    );
    let out = events(&mut *s, QUIET).await;
    let outcomes = settled(&out, 2);
    assert_eq!(outcomes[0], SettleOutcome::AlreadySettled);
    match &outcomes[1] {
        SettleOutcome::Refused(e) => {
            assert_eq!(
                (e.kind, e.outcome),
                (ErrorKind::UnknownReceipt, Outcome::Refused)
            );
            assert_eq!(e.code.as_deref(), Some("receipt_invalid"));
        }
        other => panic!("{other:?}"),
    }
    assert!(receipts(&out).is_empty());

    // A nack refused whole for its own fields judges no receipt: the place stays taken.
    s.settle(
        3,
        Settle::Nack {
            receipts: vec![first[1].clone()],
            delay: Duration::from_secs(13 * 60 * 60),
            reason: "too late".into(),
        },
    );
    let out = events(&mut *s, QUIET).await;
    match &settled(&out, 3)[..] {
        [SettleOutcome::Refused(e)] => assert_eq!(e.kind, ErrorKind::InvalidInput),
        other => panic!("{other:?}"),
    }
    assert!(receipts(&out).is_empty());

    // Widening the window sends more.
    s.credit(2);
    assert_eq!(receipts(&events(&mut *s, QUIET).await).len(), 2);
    assert_eq!(env.group("t", "g").await, (9, 5, 0));
}

#[tokio::test]
async fn drain_answers_drained_and_then_nothing_is_delivered() {
    let env = Env::new();
    env.topic("t", TopicSpec::default()).await;
    publish(&env, 5).await;
    let mut s = open(&env, 2).await;
    let got = receipts(&events(&mut *s, QUIET).await);
    assert_eq!(got.len(), 2);
    s.drain();
    s.credit(3);
    let started = std::time::Instant::now();
    let out = events(&mut *s, QUIET).await;
    assert_eq!(out, [SessionEvent::Drained]);
    // Prompt: at most one long poll.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Settlements after the drain are still answered.
    s.settle(9, Settle::Ack(got));
    let out = events(&mut *s, QUIET).await;
    assert_eq!(
        settled(&out, 9),
        [SettleOutcome::Applied, SettleOutcome::Applied]
    );
    assert!(receipts(&out).is_empty());
    assert_eq!(env.group("t", "g").await, (3, 0, 0));
}

#[tokio::test]
async fn dead_letter_now_is_refused_as_unsupported() {
    let env = Env::new();
    env.topic("t", TopicSpec::default()).await;
    publish(&env, 2).await;
    let mut s = open(&env, 2).await;
    let got = receipts(&events(&mut *s, QUIET).await);
    s.settle(
        4,
        Settle::DeadLetter {
            receipts: got.clone(),
            reason: "poison".into(),
        },
    );
    let out = events(&mut *s, QUIET).await;
    let outcomes = settled(&out, 4);
    assert_eq!(outcomes.len(), 2);
    for o in outcomes {
        match o {
            SettleOutcome::Refused(e) => {
                assert_eq!(
                    (e.kind, e.outcome),
                    (ErrorKind::Unsupported, Outcome::Refused)
                )
            }
            other => panic!("{other:?}"),
        }
    }
    // Nothing was dead-lettered; the deliveries are still this consumer's to settle.
    assert_eq!(env.group("t", "g").await, (2, 2, 0));
    s.settle(5, Settle::Ack(got));
    let out = events(&mut *s, QUIET).await;
    assert_eq!(
        settled(&out, 5),
        [SettleOutcome::Applied, SettleOutcome::Applied]
    );
}

#[tokio::test]
async fn a_cancelled_next_loses_nothing() {
    let env = Env::new();
    env.topic("t", TopicSpec::default()).await;
    let mut s = open(&env, 20).await;
    // Cancelled while nothing is there...
    for _ in 0..5 {
        assert!(
            tokio::time::timeout(Duration::from_millis(5), s.next())
                .await
                .is_err()
        );
    }
    // ...and while deliveries are arriving: every `next` given only a moment.
    let producer = tokio::spawn({
        let env_transport = env.transport.clone();
        async move {
            let p = Producer::new(env_transport);
            for i in 0..20 {
                p.publish("t", Message::new(format!("m{i}"))).await.unwrap();
            }
        }
    });
    let mut seen = BTreeSet::new();
    let mut cancelled = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 20",
            seen.len()
        );
        match tokio::time::timeout(Duration::from_micros(200), s.next()).await {
            Err(_) => cancelled += 1,
            Ok(Ok(SessionEvent::Deliveries(batch))) => {
                for d in batch {
                    assert!(seen.insert(d.payload), "delivered twice");
                }
            }
            Ok(other) => panic!("{other:?}"),
        }
    }
    producer.await.unwrap();
    assert!(cancelled > 0);
    // All twenty are here, none stranded in between: each is in flight to this session.
    assert_eq!(env.group("t", "g").await, (20, 20, 0));
    assert!(tokio::time::timeout(QUIET, s.next()).await.is_err());
}

#[tokio::test]
async fn a_dropped_session_leaves_its_deliveries_to_their_leases() {
    let env = Env::new();
    env.topic("t", TopicSpec::default()).await;
    publish(&env, 3).await;
    let sub = Subscription {
        topic: "t".into(),
        group: "g".into(),
        credits: 3,
        lease: Some(Duration::from_millis(1500)),
    };
    let mut s = env.transport.subscribe(&sub).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(receipts(&[s.next().await.unwrap()]));
    }
    drop(s);
    // Receipts outlive the session: a new one settles one of them...
    let mut s = open(&env, 3).await;
    s.settle(1, Settle::Ack(vec![got[0].clone()]));
    let mut again = Vec::new();
    loop {
        match s.next().await.unwrap() {
            SessionEvent::Settled { id: 1, outcomes } => {
                assert_eq!(outcomes, [SettleOutcome::Applied]);
                break;
            }
            SessionEvent::Deliveries(b) => again.extend(b),
            other => panic!("{other:?}"),
        }
    }
    // ...and the other two come back once their leases ran out, counted twice.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while again.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        if let Ok(Ok(SessionEvent::Deliveries(b))) =
            tokio::time::timeout(Duration::from_secs(1), s.next()).await
        {
            again.extend(b);
        }
    }
    assert!(again.iter().all(|d| d.delivery_count == 2));
    assert!(again.iter().all(|d| d.lease_until_ms.is_some()));
}
