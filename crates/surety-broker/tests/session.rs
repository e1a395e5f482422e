//! The shared consumer session (`surety_broker::session`) on its own, with a plain
//! outlet: what the gRPC front and the in-process transport both rely on and neither
//! can easily show — receipts of other sessions free no place, and deliveries fetched
//! after the front stopped listening are released at once instead of waiting out their
//! leases.

mod common;

use std::time::Duration;

use common::{Env, NO_WAIT, msg, patch};
use surety_broker::session::{Outlet, Session, SessionSpec, SettleAnswer, SettleOp};
use surety_broker::{BrokerError, Delivery};
use tokio::sync::mpsc;

#[derive(Debug)]
enum Item {
    Deliveries(Vec<Delivery>),
    Settled(u64, SettleAnswer),
    Drained,
    Failed(BrokerError),
}

struct Plain;

impl Outlet for Plain {
    type Item = Item;
    fn deliveries(&self, deliveries: Vec<Delivery>) -> Vec<Item> {
        vec![Item::Deliveries(deliveries)]
    }
    fn undelivered(&self, item: Item) -> Vec<String> {
        match item {
            Item::Deliveries(d) => d.into_iter().map(|d| d.receipt).collect(),
            _ => Vec::new(),
        }
    }
    fn settled(&self, id: u64, _op: &SettleOp, _r: &[String], answer: SettleAnswer) -> Item {
        Item::Settled(id, answer)
    }
    fn drained(&self) -> Item {
        Item::Drained
    }
    fn failed(&self, error: BrokerError) -> Item {
        Item::Failed(error)
    }
}

const WAIT: Duration = Duration::from_millis(100);

fn spec(credits: u32, fetch_wait: Duration) -> SessionSpec {
    SessionSpec {
        fetch_wait,
        ..SessionSpec::new("t", "g", credits)
    }
}

/// What arrives until three long polls pass without an item.
async fn items(rx: &mut mpsc::Receiver<Item>) -> Vec<Item> {
    let mut out = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout(WAIT * 3, rx.recv()).await {
        if let Item::Failed(e) = &item {
            panic!("the session failed: {e}");
        }
        out.push(item);
    }
    out
}

fn delivered(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .flat_map(|i| match i {
            Item::Deliveries(d) => d.iter().map(|d| d.receipt.clone()).collect(),
            _ => Vec::new(),
        })
        .collect()
}

#[tokio::test]
async fn only_this_sessions_receipts_free_places_in_its_window() {
    let env = Env::new();
    let b = env.open();
    b.put_topic("t", &patch("{}")).await.unwrap();
    b.publish("t", (0..5).map(|i| msg(&format!("m{i}"))).collect())
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let session = Session::start(b.clone(), spec(2, WAIT), Plain, tx).unwrap();
    let ours = delivered(&items(&mut rx).await);
    assert_eq!(ours.len(), 2);

    // Another consumer of the group (an earlier session's handler, say) settles through
    // this session: answered, but the window stays full.
    let other = b.fetch("t", "g", 1, NO_WAIT, None).await.unwrap();
    session
        .settle(1, vec![other[0].receipt.clone()], SettleOp::Ack)
        .await;
    let out = items(&mut rx).await;
    assert!(matches!(&out[..], [Item::Settled(1, Ok(each))] if matches!(each[..], [Ok(true)])));

    // One of ours frees one place.
    session
        .settle(2, vec![ours[0].clone()], SettleOp::Ack)
        .await;
    let out = items(&mut rx).await;
    assert_eq!(delivered(&out).len(), 1);
    assert!(out.iter().any(|i| matches!(i, Item::Settled(2, Ok(_)))));

    // Past the bound, a wider window is refused and the window unchanged.
    assert!(session.credit(10_000).is_err());
    session.credit(1).unwrap();
    assert_eq!(delivered(&items(&mut rx).await).len(), 1);

    session.drain();
    assert!(matches!(&items(&mut rx).await[..], [Item::Drained]));
}

#[tokio::test]
async fn deliveries_fetched_after_the_front_left_are_released_at_once() {
    let env = Env::new();
    let b = env.open();
    // No backoff: a release makes the message visible again right away.
    b.put_topic(
        "t",
        &patch(r#"{"retry_backoff":{"initial_ms":0,"jitter":0.0}}"#),
    )
    .await
    .unwrap();
    let (tx, rx) = mpsc::channel(16);
    let session = Session::start(b.clone(), spec(2, Duration::from_secs(5)), Plain, tx).unwrap();
    // The fetcher is in its long poll when the front goes away.
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(rx);
    b.publish("t", vec![msg("late")]).await.unwrap();
    // Leased to the session, which cannot hand it on: nacked back, not held for the
    // topic's 30 s lease.
    let mut again = Vec::new();
    for _ in 0..100 {
        again = b.fetch("t", "g", 1, NO_WAIT, None).await.unwrap();
        if !again.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(again.len(), 1, "the message was not released");
    assert_eq!(again[0].delivery_count, 2);
    assert_eq!(again[0].message.payload, b"late");
    drop(session);
}

#[tokio::test]
async fn a_subscription_is_checked_before_it_starts() {
    let env = Env::new();
    let b = env.open();
    b.put_topic("t", &patch("{}")).await.unwrap();
    let start = |s: SessionSpec| Session::start(b.clone(), s, Plain, mpsc::channel(1).0);
    let code = |r: Result<Session<Plain>, BrokerError>| r.unwrap_err().code();
    assert_eq!(
        code(start(SessionSpec::new("nope", "g", 1))),
        "topic_not_found"
    );
    assert_eq!(code(start(SessionSpec::new("t", "a b", 1))), "invalid_name");
    assert_eq!(code(start(spec(10_001, WAIT))), "invalid_request");
    let long_lease = SessionSpec {
        lease: Some(Duration::from_secs(13 * 60 * 60)),
        ..spec(1, WAIT)
    };
    assert_eq!(code(start(long_lease)), "invalid_request");
    assert!(start(spec(0, WAIT)).is_ok());
}
