//! The `rabbitmq` fixture: the machine's RabbitMQ (`SURETY_TEST_AMQP_URL`, else
//! `amqp://guest:guest@127.0.0.1:5672/%2f`, with its management API on 15672), reached
//! with `surety_rabbitmq::RabbitTransport` under a name prefix of the trial's own, so
//! trials share nothing; everything under that prefix is deleted when the fixture is
//! dropped. The broker is the machine's, shared by trials running in parallel, so it is
//! not restarted (`restart_server` is unsupported; RabbitMQ's own restart safety is its
//! quorum queues'). Consumers die as SIGKILLed child processes, and outbox relays are
//! `surety outbox relay --backend amqp://...` processes.

use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use surety_conformance::{
    BoxFuture, ChildConsumer, ChildRelay, KillMode, TransportFixture, Unsupported,
};
use surety_core::{Admin, Transport};
use surety_rabbitmq::{RabbitOptions, RabbitTransport};

pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The broker's URL, and whether something answers there.
pub fn available() -> Option<String> {
    let url = std::env::var("SURETY_TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let parsed = url::Url::parse(&url).ok()?;
    let addr = (parsed.host_str()?.to_owned(), parsed.port().unwrap_or(5672));
    std::net::TcpStream::connect(addr).ok().map(|_| url)
}

pub struct Rabbit {
    url: String,
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        // Delete what the trial declared (quorum queues hold broker resources).
        let url = self.url.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let t = connect_rabbit(&url).await;
                for topic in t.list_topics().await.unwrap_or_default() {
                    if let Err(e) = t.delete_topic(&topic).await {
                        eprintln!("cleaning up topic {topic}: {e}");
                    }
                }
            });
        })
        .join();
    }
}

pub fn start() -> BoxFuture<'static, Arc<dyn TransportFixture>> {
    Box::pin(async {
        let base = available().expect("checked before the trials were registered");
        Arc::new(Rabbit {
            url: crate::trial_url(&base),
        }) as Arc<dyn TransportFixture>
    })
}

/// What a child consumer connects with.
pub fn connect_endpoint(url: String) -> BoxFuture<'static, Arc<dyn Transport>> {
    Box::pin(async move { Arc::new(connect_rabbit(&url).await) as Arc<dyn Transport> })
}

async fn connect_rabbit(url: &str) -> RabbitTransport {
    let parsed = url::Url::parse(url).unwrap();
    let options = RabbitOptions::from_url_query(&parsed).unwrap();
    let mut attempts = 0;
    loop {
        match RabbitTransport::connect(url, options.clone()).await {
            Ok(t) => return t,
            Err(e) if attempts < 100 => {
                attempts += 1;
                eprintln!("connect {url}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("connect {url}: {e}"),
        }
    }
}

impl TransportFixture for Rabbit {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    fn connect(&self) -> BoxFuture<'_, Arc<dyn Transport>> {
        connect_endpoint(self.url.clone())
    }

    fn restart_server(&self) -> BoxFuture<'_, Result<(), Unsupported>> {
        Box::pin(async {
            Err(Unsupported(
                "the machine's RabbitMQ is shared by the trials running beside this one".to_owned(),
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
