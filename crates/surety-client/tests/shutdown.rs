//! Guards graceful shutdown against open streams: a server asked to stop while a
//! Consume or PublishStream stream is open must end the stream and finish, not wait for
//! the client.

use std::time::Duration;

use surety_client::{Client, Consumer, Message, Producer};
use surety_server::{Config, Server, Settings};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A real server on a free port: its URL, the trigger of its shutdown, and its run.
struct Running {
    client: Client,
    stop: oneshot::Sender<()>,
    run: JoinHandle<Result<(), surety_server::ServerError>>,
    _dir: tempfile::TempDir,
}

async fn start() -> Running {
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
    let run = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let client = Client::connect(&url, None).await.unwrap();
    client.create_topic("t", "").await.unwrap();
    Running {
        client,
        stop,
        run,
        _dir: dir,
    }
}

impl Running {
    async fn stop_within_10s(self, what: &str) {
        let _ = self.stop.send(());
        let finished = tokio::time::timeout(Duration::from_secs(10), self.run).await;
        let result =
            finished.unwrap_or_else(|_| panic!("server did not finish within 10 s with {what}"));
        result.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_consume_streams() {
    let server = start().await;
    let consumer = Consumer::builder(server.client.clone(), "t", "g");
    let consuming = tokio::spawn(consumer.run(|_d| async { Ok::<(), std::io::Error>(()) }));
    // Let the stream open and the server start long-polling for it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop_within_10s("a Consume stream open").await;
    consuming.abort();
}

/// The producer's publish stream stays open between publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_publish_streams() {
    let server = start().await;
    let producer = Producer::new(server.client.clone());
    producer.publish("t", Message::new("x")).await.unwrap();
    server.stop_within_10s("a publish stream open").await;
    drop(producer);
}
