//! [`KafkaTransport`]: the clients of one Kafka cluster, what the backend declares about
//! itself, and the trait impls that route each call to its module.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureProducer;
use surety_core::{
    Admin, Batch, BoxFuture, Capabilities, Capable, Confirm, DeadLetterCap, DeadLetterPage,
    DeadLetterStore, DeadLetters, DeliveryCount, ErrorKind, LeaseKind, Mechanism, NackDelay,
    Ordering as Order, PublishAnswers, PublishDedupe, Publisher, Selection, Session, SettleAnswers,
    Subscriber, Subscription, TopicInfo, TopicSpec, TransportError,
};

use crate::options::{KafkaOptions, RetryMode};
use crate::topics::TopicSettings;
use crate::{dead_letters, publish, session, topics};

/// The largest credit window of a subscription.
pub const MAX_CREDITS: u32 = 10_000;

/// The Surety reliability layer's transport on Kafka. Cheap to clone (shared).
#[derive(Clone)]
pub struct KafkaTransport {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for KafkaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTransport")
            .field("bootstrap", &self.inner.options.bootstrap)
            .finish()
    }
}

pub(crate) struct Inner {
    pub options: KafkaOptions,
    pub caps: Capabilities,
    /// `acks=all`, idempotent: publishes and the layer's copies.
    pub producer: FutureProducer,
    pub admin: AdminClient<DefaultClientContext>,
    /// Settings of topics read or written by this transport.
    pub settings: Mutex<HashMap<String, TopicSettings>>,
    /// The cluster is librdkafka's MockCluster (its id says so), which has no
    /// CreateTopics or DescribeConfigs: topics are created by a metadata request that
    /// allows auto-creation, and broker configs are not read.
    pub mock: bool,
}

impl Inner {
    /// The client settings every client of this transport shares.
    pub fn config(&self) -> ClientConfig {
        base_config(&self.options)
    }
}

fn base_config(o: &KafkaOptions) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &o.bootstrap)
        .set(
            "socket.timeout.ms",
            o.request_timeout.as_millis().max(10).to_string(),
        )
        .set("log_level", "4");
    c
}

impl KafkaTransport {
    /// Connects to the cluster of `options.bootstrap` (see
    /// [`KafkaOptions::from_url`]) and checks that it answers.
    pub async fn connect(options: KafkaOptions) -> Result<KafkaTransport, TransportError> {
        let mut p = base_config(&options);
        p.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("max.in.flight.requests.per.connection", "5")
            .set("linger.ms", "1")
            .set(
                "message.timeout.ms",
                (options.request_timeout.as_millis() * 3).to_string(),
            )
            .set(
                "message.max.bytes",
                (options.max_message_bytes as u64 + 64 * 1024).to_string(),
            );
        let producer: FutureProducer = p
            .create()
            .map_err(|e| crate::error::unavailable("creating the Kafka producer", &e))?;
        let admin: AdminClient<DefaultClientContext> = base_config(&options)
            .create()
            .map_err(|e| crate::error::unavailable("creating the Kafka admin client", &e))?;
        let caps = capabilities(&options);
        let timeout = options.request_timeout;
        let probe = producer.clone();
        // Fails fast on a cluster that does not answer.
        let cluster_id = crate::error::blocking("cluster id", move || {
            use rdkafka::producer::Producer as _;
            probe.client().fetch_cluster_id(timeout)
        })
        .await?
        .ok_or_else(|| {
            TransportError::unavailable(format!(
                "no Kafka cluster answered at {} within {timeout:?}",
                options.bootstrap
            ))
        })?;
        Ok(KafkaTransport {
            inner: Arc::new(Inner {
                options,
                caps,
                producer,
                admin,
                settings: Mutex::new(HashMap::new()),
                mock: cluster_id.starts_with("mockCluster"),
            }),
        })
    }

    /// Connects to the URL (`kafka://host:9092[,host2:9092]?...`).
    pub async fn connect_url(url: &str) -> Result<KafkaTransport, TransportError> {
        KafkaTransport::connect(KafkaOptions::from_url(url)?).await
    }

    pub fn options(&self) -> &KafkaOptions {
        &self.inner.options
    }

    /// Warnings about the cluster's settings on the topics Surety would use (replication
    /// factor 1, too few in-sync replicas for a power loss): the CLI prints them at
    /// start-up; under `require_fsync` they are errors.
    pub async fn safety_warnings(&self, topic: &str) -> Result<Vec<String>, TransportError> {
        topics::safety_warnings(&self.inner, topic).await
    }

    /// What a confirm means here, in one line (the CLI prints it at start-up).
    pub fn durability(&self) -> &'static str {
        "Kafka acks=all: a publish is confirmed once every in-sync replica has it in memory (page cache); \
         it survives a power loss only where min.insync.replicas >= 2 and the replicas fail apart"
    }
}

/// What this backend declares (docs/backends.md, Kafka).
fn capabilities(o: &KafkaOptions) -> Capabilities {
    Capabilities {
        transport: "kafka",
        publish_dedupe: PublishDedupe::ClientSession,
        id_dedupe: None,
        per_message_publish_answers: true,
        confirm: Confirm::Replicated {
            replicas: o.replication_factor.unwrap_or(1),
            fsynced: false,
        },
        unknown_topic: Mechanism::Emulated(
            "checked against the cluster's metadata before a publish (a broker may auto-create topics)",
        ),
        per_message_settle: Mechanism::Emulated(
            "settled records are tracked per partition; the committed offset moves up to the lowest \
             unsettled one, and the settled ones above it are kept in the commit's metadata",
        ),
        receipts_survive_reconnect: false,
        settle_answers: SettleAnswers::Confirmed,
        nack_delay: match o.retry {
            RetryMode::InPlace => NackDelay::Emulated {
                how: "the record is redelivered in place after the delay; later records of its key wait",
                granularity: Duration::from_millis(10),
            },
            RetryMode::Topic => NackDelay::Emulated {
                how: "a copy with its due time goes to the group's own topic and waits there",
                granularity: Duration::from_millis(10),
            },
        },
        delivery_count: DeliveryCount::Emulated(
            "deliveries are written into the group's offset commit (its metadata) before the records \
             are handed out, and carried in headers by the layer's copies",
        ),
        lease: LeaseKind::Connection,
        dead_letters: DeadLetters {
            store: DeadLetterStore::CopyThenSettle { atomic: false },
            cap: DeadLetterCap::Layer,
            now: true,
        },
        group_resend: Mechanism::Emulated("a resend is copied to the group's own topic"),
        ordering: Order::PerPartition,
        delayed_publish: false,
        max_credits: MAX_CREDITS,
        max_message_bytes: Some(o.max_message_bytes),
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn invalid(message: impl Into<String>) -> TransportError {
    TransportError::refused(ErrorKind::InvalidInput, message)
}

impl Capable for KafkaTransport {
    fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }
}

impl Publisher for KafkaTransport {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<PublishAnswers, TransportError>> {
        Box::pin(publish::publish(&self.inner, topic, batch))
    }
}

impl Subscriber for KafkaTransport {
    fn subscribe<'a>(
        &'a self,
        sub: &'a Subscription,
    ) -> BoxFuture<'a, Result<Box<dyn Session>, TransportError>> {
        Box::pin(session::subscribe(self.inner.clone(), sub))
    }
}

impl Admin for KafkaTransport {
    fn create_topic<'a>(
        &'a self,
        topic: &'a str,
        spec: &'a TopicSpec,
    ) -> BoxFuture<'a, Result<TopicInfo, TransportError>> {
        Box::pin(topics::create(&self.inner, topic, spec))
    }

    fn describe_topic<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<TopicInfo, TransportError>> {
        Box::pin(topics::describe(&self.inner, topic))
    }

    fn list_topics(&self) -> BoxFuture<'_, Result<Vec<String>, TransportError>> {
        Box::pin(topics::list(&self.inner))
    }

    fn dead_letters<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        after: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<DeadLetterPage, TransportError>> {
        Box::pin(dead_letters::page(&self.inner, topic, group, after, limit))
    }

    fn resend<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        which: &'a Selection,
    ) -> BoxFuture<'a, Result<u64, TransportError>> {
        Box::pin(dead_letters::resend(&self.inner, topic, group, which))
    }

    fn purge<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        which: &'a Selection,
    ) -> BoxFuture<'a, Result<u64, TransportError>> {
        Box::pin(dead_letters::purge(&self.inner, topic, group, which))
    }
}
