//! The `kafka` fixture: librdkafka's MockCluster (an in-memory Kafka-protocol cluster
//! with real TCP listeners and a real group coordinator) of its own per trial, hosted on
//! a thread of this test process, reached with `surety_kafka::KafkaTransport`. A
//! "restart" is an outage: the broker is taken down (its connections drop, new ones are
//! refused) and brought up again on the same in-memory data — MockCluster keeps no files,
//! so Kafka's own durability is not what this tests; the layer's retries, commits and
//! journal across an outage are. Consumers die as SIGKILLed child processes that connect
//! to the mock's port, and outbox relays are `surety outbox relay --backend kafka://...`
//! processes. The opt-in run against a real Kafka-protocol broker is in the README.

use std::process::Child;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use surety_conformance::{
    BoxFuture, ChildConsumer, ChildRelay, KillMode, TransportFixture, Unsupported,
};
use surety_core::{
    Admin, Batch, Capable, DeadLetterPage, PublishAnswers, Publisher, Selection, Session,
    Subscriber, Subscription, TopicInfo, TopicSpec, Transport, TransportError,
};
use surety_kafka::KafkaTransport;

enum Cmd {
    Outage(Duration, mpsc::Sender<()>),
    /// MockCluster has no CreateTopics (the transport's auto-created topics get its
    /// default 4 partitions): the fixture creates a topic through the cluster's handle
    /// with the partitions asked for, before the transport's `create_topic` runs.
    CreateTopic(String, u32, mpsc::Sender<()>),
}

/// A MockCluster on a thread of its own (its handle is not `Send`); dropping the
/// fixture ends the thread and the cluster.
pub struct Kafka {
    url: String,
    commands: Mutex<Option<mpsc::Sender<Cmd>>>,
    host: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Kafka {
    fn drop(&mut self) {
        self.commands.lock().unwrap().take();
        if let Some(h) = self.host.take() {
            let _ = h.join();
        }
    }
}

pub fn start() -> BoxFuture<'static, Arc<dyn TransportFixture>> {
    Box::pin(async {
        let (ready_tx, ready) = mpsc::channel();
        let (commands, rx) = mpsc::channel::<Cmd>();
        let host = std::thread::spawn(move || {
            let mock = rdkafka::mocking::MockCluster::new(1).expect("a MockCluster");
            ready_tx.send(mock.bootstrap_servers()).unwrap();
            while let Ok(cmd) = rx.recv() {
                match cmd {
                    Cmd::Outage(d, done) => {
                        mock.broker_down(1).expect("broker down");
                        std::thread::sleep(d);
                        mock.broker_up(1).expect("broker up");
                        let _ = done.send(());
                    }
                    Cmd::CreateTopic(name, partitions, done) => {
                        // An existing topic keeps its partitions (the transport says so).
                        let _ = mock.create_topic(&name, partitions as i32, 1);
                        let _ = done.send(());
                    }
                }
            }
        });
        let bootstrap = ready.recv().expect("the MockCluster started");
        Arc::new(Kafka {
            url: format!("kafka://{bootstrap}"),
            commands: Mutex::new(Some(commands)),
            host: Some(host),
        }) as Arc<dyn TransportFixture>
    })
}

/// What a child consumer connects with.
pub fn connect_endpoint(url: String) -> BoxFuture<'static, Arc<dyn Transport>> {
    Box::pin(async move { Arc::new(connect_kafka(&url).await) as Arc<dyn Transport> })
}

async fn connect_kafka(url: &str) -> KafkaTransport {
    {
        let mut attempts = 0;
        loop {
            match KafkaTransport::connect_url(url).await {
                Ok(t) => return t,
                Err(e) if attempts < 50 => {
                    attempts += 1;
                    eprintln!("connect {url}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("connect {url}: {e}"),
            }
        }
    }
}

impl Kafka {
    fn command(&self, cmd: impl FnOnce(mpsc::Sender<()>) -> Cmd) -> Option<mpsc::Receiver<()>> {
        let (done_tx, done) = mpsc::channel();
        let sent = self
            .commands
            .lock()
            .unwrap()
            .as_ref()
            .map(|c| c.send(cmd(done_tx)));
        matches!(sent, Some(Ok(()))).then_some(done)
    }
}

/// The transport, with topics created at the partitions asked for (see [`Cmd::CreateTopic`]).
struct WithTopics {
    kafka: KafkaTransport,
    host: mpsc::Sender<Cmd>,
}

impl Capable for WithTopics {
    fn capabilities(&self) -> &surety_core::Capabilities {
        self.kafka.capabilities()
    }
}

impl Publisher for WithTopics {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<PublishAnswers, TransportError>> {
        self.kafka.publish(topic, batch)
    }
}

impl Subscriber for WithTopics {
    fn subscribe<'a>(
        &'a self,
        sub: &'a Subscription,
    ) -> BoxFuture<'a, Result<Box<dyn Session>, TransportError>> {
        self.kafka.subscribe(sub)
    }
}

impl Admin for WithTopics {
    fn create_topic<'a>(
        &'a self,
        topic: &'a str,
        spec: &'a TopicSpec,
    ) -> BoxFuture<'a, Result<TopicInfo, TransportError>> {
        Box::pin(async move {
            let name = surety_kafka::TopicNames::new(&self.kafka.options().prefix, topic)?.kafka;
            let partitions = spec
                .partitions
                .unwrap_or(self.kafka.options().default_partitions);
            let (done_tx, done) = mpsc::channel();
            if self
                .host
                .send(Cmd::CreateTopic(name, partitions, done_tx))
                .is_ok()
            {
                let _ = tokio::task::spawn_blocking(move || done.recv()).await;
            }
            self.kafka.create_topic(topic, spec).await
        })
    }
    fn describe_topic<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<TopicInfo, TransportError>> {
        self.kafka.describe_topic(topic)
    }
    fn list_topics(&self) -> BoxFuture<'_, Result<Vec<String>, TransportError>> {
        self.kafka.list_topics()
    }
    fn dead_letters<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        after: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<DeadLetterPage, TransportError>> {
        self.kafka.dead_letters(topic, group, after, limit)
    }
    fn resend<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        which: &'a Selection,
    ) -> BoxFuture<'a, Result<u64, TransportError>> {
        self.kafka.resend(topic, group, which)
    }
    fn purge<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        which: &'a Selection,
    ) -> BoxFuture<'a, Result<u64, TransportError>> {
        self.kafka.purge(topic, group, which)
    }
}

impl TransportFixture for Kafka {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn connect(&self) -> BoxFuture<'_, Arc<dyn Transport>> {
        Box::pin(async {
            let kafka = connect_kafka(&self.url).await;
            let host = self
                .commands
                .lock()
                .unwrap()
                .clone()
                .expect("the MockCluster thread");
            Arc::new(WithTopics { kafka, host }) as Arc<dyn Transport>
        })
    }

    fn restart_server(&self) -> BoxFuture<'_, Result<(), Unsupported>> {
        Box::pin(async {
            let Some(done) = self.command(|d| Cmd::Outage(Duration::from_millis(500), d)) else {
                return Err(Unsupported("the MockCluster thread is gone".to_owned()));
            };
            tokio::task::spawn_blocking(move || done.recv())
                .await
                .unwrap()
                .map_err(|_| Unsupported("the MockCluster thread ended".to_owned()))
        })
    }

    fn consumer_kill(&self) -> KillMode {
        KillMode::Process
    }

    fn spawn_consumer(&self, spec: &ChildConsumer) -> Result<Child, Unsupported> {
        crate::spawn_consumer(spec, &self.url)
    }

    fn spawn_relay(&self, relay: &ChildRelay) -> Result<Child, Unsupported> {
        crate::spawn_cli_relay(relay, &self.url)
    }
}

/// The opt-in `kafka_broker` trials: a real Kafka-protocol broker at
/// `SURETY_TEST_KAFKA_URL` (README: tansu, or any Kafka), each trial under a name prefix
/// of its own. The suite did not start that broker, so it does not restart it.
pub struct KafkaBroker {
    url: String,
}

/// The real broker's URL, where the opt-in run asks for one.
pub fn broker_url() -> Option<String> {
    std::env::var("SURETY_TEST_KAFKA_URL").ok()
}

pub fn start_broker() -> BoxFuture<'static, Arc<dyn TransportFixture>> {
    Box::pin(async {
        let base = broker_url().expect("checked before the trials were registered");
        Arc::new(KafkaBroker {
            url: crate::trial_url(&base),
        }) as Arc<dyn TransportFixture>
    })
}

impl TransportFixture for KafkaBroker {
    fn name(&self) -> &'static str {
        "kafka_broker"
    }

    fn connect(&self) -> BoxFuture<'_, Arc<dyn Transport>> {
        connect_endpoint(self.url.clone())
    }

    fn restart_server(&self) -> BoxFuture<'_, Result<(), Unsupported>> {
        Box::pin(async {
            Err(Unsupported(
                "the broker at SURETY_TEST_KAFKA_URL was not started by this suite".to_owned(),
            ))
        })
    }

    fn consumer_kill(&self) -> KillMode {
        KillMode::Process
    }

    fn spawn_consumer(&self, spec: &ChildConsumer) -> Result<Child, Unsupported> {
        crate::spawn_consumer(spec, &self.url)
    }

    fn spawn_relay(&self, relay: &ChildRelay) -> Result<Child, Unsupported> {
        crate::spawn_cli_relay(relay, &self.url)
    }
}
