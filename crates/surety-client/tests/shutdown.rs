//! Guards graceful shutdown against open consumer streams: a server asked to stop while
//! a Consume stream is open must end the stream and finish, not wait for the client.

use std::time::Duration;

use surety_client::{Client, Consumer};
use surety_server::{Config, Server, Settings};
use tokio::sync::oneshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_consume_streams() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        data: Some(dir.path().join("data")),
        listen: Some("127.0.0.1:0".into()),
        ..Settings::default()
    };
    let server = Server::bind(Config::from_settings(settings).unwrap())
        .await
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let client = Client::connect(&url, None).await.unwrap();
    client.create_topic("t", "").await.unwrap();
    let consumer = Consumer::builder(client, "t", "g");
    let consuming = tokio::spawn(consumer.run(|_d| async { Ok::<(), std::io::Error>(()) }));
    // Let the stream open and the server start long-polling for it.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let _ = stop.send(());
    let finished = tokio::time::timeout(Duration::from_secs(10), running).await;
    let result = finished.expect("server did not finish within 10 s with a Consume stream open");
    result.unwrap().unwrap();
    consuming.abort();
}

/// The same for the producer's publish stream, which stays open between publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_publish_streams() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        data: Some(dir.path().join("data")),
        listen: Some("127.0.0.1:0".into()),
        ..Settings::default()
    };
    let server = Server::bind(Config::from_settings(settings).unwrap())
        .await
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let client = Client::connect(&url, None).await.unwrap();
    client.create_topic("t", "").await.unwrap();
    let producer = surety_client::Producer::new(client);
    producer
        .publish("t", surety_client::Message::new("x"))
        .await
        .unwrap();

    let _ = stop.send(());
    let finished = tokio::time::timeout(Duration::from_secs(10), running).await;
    let result = finished.expect("server did not finish within 10 s with a publish stream open");
    result.unwrap().unwrap();
    drop(producer);
}
