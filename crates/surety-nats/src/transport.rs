//! [`NatsTransport`]: one connection to a NATS server with JetStream, what it declares
//! about itself, and the trait impls that route each call to its module.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Client, ConnectOptions};
use surety_core::{
    Admin, Batch, BoxFuture, Capabilities, Capable, DeadLetterCap, DeadLetterPage, DeadLetterStore,
    DeadLetters, DedupeWindow, DeliveryCount, ErrorKind, LeaseKind, Mechanism, NackDelay, Ordering,
    PublishAnswers, PublishDedupe, Publisher, Selection, Session, SettleAnswers, Subscriber,
    Subscription, TopicInfo, TopicSpec, TransportError,
};

use crate::api::Api;
use crate::durability::{self, DurabilityReport, SyncSetting};
use crate::names::TopicNames;
use crate::options::NatsOptions;
use crate::{dead_letters, publish, session, topics};

/// The longest nack delay this backend passes to the server.
pub const MAX_NAK_DELAY: Duration = Duration::from_secs(24 * 3600);
/// The largest credit window of a subscription.
pub const MAX_CREDITS: u32 = 10_000;
/// The NATS monitoring endpoint's default port, tried when no `monitor` is given.
pub const DEFAULT_MONITOR_PORT: u16 = 8222;

/// The Surety reliability layer's transport on NATS JetStream: a stream per topic, a
/// durable pull consumer per group, a dead-letter stream. Cheap to clone (shared).
#[derive(Clone)]
pub struct NatsTransport {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("durability", &self.inner.durability)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub client: Client,
    pub api: Api,
    pub options: NatsOptions,
    pub caps: Capabilities,
    pub durability: DurabilityReport,
    /// When this process first saw each message delivered to a group (delivery 1), so
    /// that later deliveries and dead letters can say it.
    pub first_seen: Mutex<FirstSeen>,
}

impl Inner {
    pub fn names(&self, topic: &str) -> Result<TopicNames, TransportError> {
        TopicNames::new(
            &self.options.subject_prefix,
            topic,
            self.options.dead_letter_stream.as_deref(),
        )
    }
}

impl NatsTransport {
    /// Connects to `url` (`nats://[user:pass@]host:port`, query parameters ignored here:
    /// read them with [`NatsOptions::from_url_query`]), checks that JetStream is on, and
    /// reads what a PubAck is worth on this server ([`DurabilityReport`]): logged as a
    /// warning and exported as a metric when confirms would not survive a power loss,
    /// and refused (`Unsupported`, `Refused`) then under `options.require_fsync`.
    pub async fn connect(url: &str, options: NatsOptions) -> Result<NatsTransport, TransportError> {
        let parsed = url::Url::parse(url).map_err(|e| {
            TransportError::refused(ErrorKind::InvalidInput, format!("NATS URL {url:?}: {e}"))
        })?;
        if !matches!(parsed.scheme(), "nats" | "tls") {
            return Err(TransportError::refused(
                ErrorKind::InvalidInput,
                format!("NATS URL {url:?}: the scheme must be nats:// or tls://"),
            ));
        }
        let host = parsed.host_str().unwrap_or("127.0.0.1").to_owned();
        let mut server = parsed.clone();
        server.set_query(None);
        let client = ConnectOptions::new()
            .name("surety")
            .request_timeout(Some(options.request_timeout))
            .connection_timeout(options.request_timeout)
            .connect(server.as_str())
            .await
            .map_err(|e| TransportError::unavailable(format!("connect to {server}: {e}")))?;
        let info = client.server_info();
        if !info.jetstream {
            return Err(TransportError::refused(
                ErrorKind::Unsupported,
                format!(
                    "NATS server {}:{} ({}) has JetStream off: start it with -js",
                    info.host, info.port, info.version
                ),
            ));
        }
        let at = format!("{host}:{}", parsed.port().unwrap_or(4222));
        let (sync, source) = if options.no_monitor {
            (
                SyncSetting::Unreadable("monitor=none: not asked".to_owned()),
                None,
            )
        } else {
            let monitor = options
                .monitor
                .clone()
                .unwrap_or_else(|| format!("http://{host}:{DEFAULT_MONITOR_PORT}"));
            durability::probe(
                &monitor,
                &info.server_id,
                &info.version,
                options.request_timeout.min(Duration::from_secs(2)),
            )
            .await
        };
        let mut durability =
            DurabilityReport::new(at, info.version.clone(), sync, options.replicas);
        durability.source = source;
        durability.publish();
        if options.require_fsync && !durability.is_safe() {
            return Err(durability.refusal());
        }
        let caps = capabilities(&options, &durability, info.max_payload);
        Ok(NatsTransport {
            inner: Arc::new(Inner {
                api: Api {
                    client: client.clone(),
                    timeout: options.request_timeout,
                },
                client,
                options,
                caps,
                durability,
                first_seen: Mutex::new(FirstSeen::default()),
            }),
        })
    }

    /// What was found at connect: the server, its `sync_interval`, what a confirm means.
    pub fn durability(&self) -> &DurabilityReport {
        &self.inner.durability
    }

    pub fn options(&self) -> &NatsOptions {
        &self.inner.options
    }

    /// The connection underneath, for tools that need plain NATS beside the layer.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }
}

/// What this backend declares (docs/seam.md §4, the NATS column).
fn capabilities(o: &NatsOptions, d: &DurabilityReport, max_payload: usize) -> Capabilities {
    Capabilities {
        transport: "nats",
        publish_dedupe: PublishDedupe::Native {
            window: DedupeWindow::Time(o.duplicate_window),
        },
        // `Nats-Msg-Id` carries the stamp; a message id is not deduped by the server.
        id_dedupe: None,
        per_message_publish_answers: true,
        confirm: d.confirm,
        unknown_topic: Mechanism::Native,
        per_message_settle: Mechanism::Native,
        // Settling is a publish to the delivery's `$JS.ACK` subject, valid on any
        // connection.
        receipts_survive_reconnect: true,
        // Every +ACK, -NAK and +TERM is sent as a request; the server answers each.
        settle_answers: SettleAnswers::Confirmed,
        nack_delay: NackDelay::Native { max: MAX_NAK_DELAY },
        delivery_count: DeliveryCount::Persistent,
        // +WPI would extend it; the seam has no Extend settlement yet.
        lease: LeaseKind::PerMessage { extend: false },
        dead_letters: DeadLetters {
            store: DeadLetterStore::CopyThenSettle { atomic: false },
            cap: DeadLetterCap::Layer,
            now: true,
        },
        group_resend: Mechanism::Emulated(
            "a resent message carries surety.for-group; other groups ack it unrun",
        ),
        ordering: Ordering::Queue,
        delayed_publish: false,
        max_credits: MAX_CREDITS,
        max_message_bytes: u32::try_from(max_payload).ok(),
    }
}

/// First-delivery times of recent messages, bounded.
#[derive(Debug, Default)]
pub(crate) struct FirstSeen {
    at: HashMap<(String, String, u64), u64>,
    order: VecDeque<(String, String, u64)>,
}

const FIRST_SEEN_CAPACITY: usize = 100_000;

impl FirstSeen {
    /// Records delivery 1 of (stream, consumer, seq) at `ms`; answers the first time known.
    pub fn note(
        &mut self,
        stream: &str,
        consumer: &str,
        seq: u64,
        delivered: u64,
        ms: u64,
    ) -> Option<u64> {
        let key = (stream.to_owned(), consumer.to_owned(), seq);
        if let Some(&first) = self.at.get(&key) {
            return Some(first);
        }
        if delivered != 1 {
            return None;
        }
        if self.order.len() >= FIRST_SEEN_CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.at.remove(&old);
        }
        self.order.push_back(key.clone());
        self.at.insert(key, ms);
        Some(ms)
    }

    pub fn get(&self, stream: &str, consumer: &str, seq: u64) -> Option<u64> {
        self.at
            .get(&(stream.to_owned(), consumer.to_owned(), seq))
            .copied()
    }
}

impl Capable for NatsTransport {
    fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }
}

impl Publisher for NatsTransport {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<PublishAnswers, TransportError>> {
        Box::pin(publish::publish(&self.inner, topic, batch))
    }
}

impl Subscriber for NatsTransport {
    fn subscribe<'a>(
        &'a self,
        sub: &'a Subscription,
    ) -> BoxFuture<'a, Result<Box<dyn Session>, TransportError>> {
        Box::pin(session::subscribe(self.inner.clone(), sub))
    }
}

impl Admin for NatsTransport {
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
