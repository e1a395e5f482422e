//! Connection failures: the consumer reconnects and the producer retries, with nothing
//! lost and nothing stored twice.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use common::{CutProxy, TestServer, eventually};
use surety_client::{Client, Consumer, Delivery, Message, Producer};

#[tokio::test]
async fn consumer_and_producer_survive_cut_connections() {
    let server = TestServer::start().await;
    server.topic("t", 5).await;
    let proxy = CutProxy::start(&server.url).await;
    let client = Client::connect(&proxy.url, None).await.unwrap();
    let producer = Producer::new(client.clone());
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let consumer = Consumer::builder(client, "t", "g").max_in_flight(4);
    let stop = consumer.stop_handle();
    let log = seen.clone();
    let run = tokio::spawn(consumer.run(move |d: Delivery| {
        let log = log.clone();
        async move {
            log.lock().unwrap().insert(d.sequence.unwrap());
            Ok::<_, String>(())
        }
    }));
    for round in 0..3u64 {
        let batch = (0..5)
            .map(|i| Message::new(format!("{round}-{i}")))
            .collect();
        let published = producer.publish_batch("t", batch).await.unwrap();
        assert!(published.iter().all(|p| !p.duplicate));
        let want = (round + 1) * 5;
        eventually("the round consumed", || async {
            seen.lock().unwrap().len() as u64 == want
        })
        .await;
        proxy.cut();
    }
    eventually("all acked", || async {
        let info = server.broker.describe("t").await.unwrap();
        info.groups[0].stats.acked == 15
    })
    .await;
    stop.stop();
    let stats = run.await.unwrap().unwrap();
    assert!(stats.reconnects >= 2, "{stats:?}");
    assert_eq!(*seen.lock().unwrap(), (0..15).collect());
    assert_eq!(server.broker.describe("t").await.unwrap().end_offsets, [15]);
}
