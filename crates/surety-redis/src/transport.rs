//! [`RedisTransport`]: a connection to one Redis server, what it declares about itself,
//! and the trait impls that route each call to its module.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use surety_core::{
    Admin, Batch, BoxFuture, Capabilities, Capable, Confirm, DeadLetterCap, DeadLetterPage,
    DeadLetterStore, DeadLetters, DedupeWindow, DeliveryCount, ErrorKind, LeaseKind, Mechanism,
    NackDelay, Ordering, PublishAnswers, PublishDedupe, Publisher, Selection, Session,
    SettleAnswers, Subscriber, Subscription, TopicInfo, TopicSpec, TransportError,
};

use crate::conn::Conn;
use crate::durability::{DurabilityReport, Persistence};
use crate::entry;
use crate::keys::TopicKeys;
use crate::options::RedisOptions;
use crate::{dead_letters, publish, session, topics};

/// The largest credit window of a subscription.
pub const MAX_CREDITS: u32 = 10_000;

/// The Surety reliability layer's transport on Redis Streams: a stream per topic, a
/// consumer group per group, a dead-letter stream per topic. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct RedisTransport {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub client: redis::Client,
    pub conn: Conn,
    pub options: RedisOptions,
    pub caps: Capabilities,
    pub durability: DurabilityReport,
    pub first_seen: Mutex<FirstSeen>,
}

impl Inner {
    pub fn keys(&self, topic: &str) -> Result<TopicKeys, TransportError> {
        TopicKeys::new(&self.options.prefix, topic)
    }
}

impl RedisTransport {
    /// Connects to `url` (`redis://[user:pass@]host:port[/db]`; the query is ignored
    /// here: read it with [`RedisOptions::from_url_query`]) and reads what a confirm is
    /// worth on this server ([`DurabilityReport`]): logged as a warning and exported as
    /// a metric when confirms would not survive a power loss, and refused
    /// (`Unsupported`, `Refused`) then under `options.require_fsync`.
    pub async fn connect(
        url: &str,
        options: RedisOptions,
    ) -> Result<RedisTransport, TransportError> {
        let parsed = url::Url::parse(url).map_err(|e| {
            TransportError::refused(ErrorKind::InvalidInput, format!("Redis URL {url:?}: {e}"))
        })?;
        match parsed.scheme() {
            "redis" => {}
            "rediss" => {
                return Err(TransportError::refused(
                    ErrorKind::Unsupported,
                    format!(
                        "Redis URL {url:?}: TLS (rediss://) is not built into this surety; \
                         use redis:// (through a TLS tunnel where needed)"
                    ),
                ));
            }
            _ => {
                return Err(TransportError::refused(
                    ErrorKind::InvalidInput,
                    format!("Redis URL {url:?}: the scheme must be redis://"),
                ));
            }
        }
        let mut server = parsed.clone();
        server.set_query(None);
        let client = redis::Client::open(server.as_str()).map_err(|e| {
            TransportError::refused(ErrorKind::InvalidInput, format!("Redis URL {url:?}: {e}"))
        })?;
        let conn = Conn::new(client.clone(), options.request_timeout);
        let info: String = conn.query(redis::cmd("INFO").arg("server")).await?;
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_owned();
        let persistence = read_persistence(&conn).await;
        let at = format!(
            "{}:{}",
            parsed.host_str().unwrap_or("127.0.0.1"),
            parsed.port().unwrap_or(6379)
        );
        let durability = DurabilityReport::new(at, version, persistence);
        durability.publish();
        if options.require_fsync && !durability.is_safe() {
            return Err(durability.refusal());
        }
        let caps = capabilities(&options, &durability);
        Ok(RedisTransport {
            inner: Arc::new(Inner {
                client,
                conn,
                options,
                caps,
                durability,
                first_seen: Mutex::new(FirstSeen::default()),
            }),
        })
    }

    /// What was found at connect: the server, its persistence, what a confirm means.
    pub fn durability(&self) -> &DurabilityReport {
        &self.inner.durability
    }

    pub fn options(&self) -> &RedisOptions {
        &self.inner.options
    }

    /// The client underneath, for tools that need plain Redis beside the layer.
    pub fn client(&self) -> &redis::Client {
        &self.inner.client
    }

    /// The keys of `topic` (docs/backends.md, "Key layout").
    pub fn keys(&self, topic: &str) -> Result<TopicKeys, TransportError> {
        self.inner.keys(topic)
    }
}

async fn read_persistence(conn: &Conn) -> Persistence {
    let get = |name: &'static str| async move {
        let v: Vec<String> = conn
            .query(redis::cmd("CONFIG").arg("GET").arg(name))
            .await?;
        v.get(1)
            .cloned()
            .ok_or_else(|| entry::protocol(&format!("CONFIG GET {name} answered nothing")))
    };
    match get("appendonly").await {
        Err(e) => Persistence::Unreadable(e.message),
        Ok(a) if a != "yes" => Persistence::NoAof,
        Ok(_) => match get("appendfsync").await {
            Ok(f) => Persistence::Aof(f),
            Err(e) => Persistence::Unreadable(e.message),
        },
    }
}

/// What this backend declares (docs/seam.md §4, the Redis column).
fn capabilities(o: &RedisOptions, d: &DurabilityReport) -> Capabilities {
    Capabilities {
        transport: "redis",
        publish_dedupe: PublishDedupe::Native {
            window: DedupeWindow::Sequences(o.dedupe_window),
        },
        id_dedupe: None,
        per_message_publish_answers: true,
        confirm: match d.confirm {
            // The primary's own fsync is the stronger promise for a power loss.
            Confirm::FsyncedOnNode => Confirm::FsyncedOnNode,
            _ if o.wait_replicas > 0 => Confirm::Replicated {
                replicas: o.wait_replicas + 1,
                fsynced: false,
            },
            other => other,
        },
        unknown_topic: Mechanism::Emulated(
            "the publish script refuses a topic without its config hash (XADD would create it)",
        ),
        per_message_settle: Mechanism::Native,
        receipts_survive_reconnect: true,
        settle_answers: SettleAnswers::Confirmed,
        nack_delay: NackDelay::Emulated {
            how: "the entry stays pending with its idle time set to lease − delay, so the \
                  reclaim loop (XAUTOCLAIM) takes it back after the delay; a delay is capped \
                  at the lease",
            granularity: o.reclaim_interval,
        },
        delivery_count: DeliveryCount::Persistent,
        lease: LeaseKind::PerMessage { extend: false },
        dead_letters: DeadLetters {
            store: DeadLetterStore::CopyThenSettle { atomic: true },
            cap: DeadLetterCap::Layer,
            now: true,
        },
        group_resend: Mechanism::Emulated(
            "a resent message carries surety.for-group; other groups ack it unrun",
        ),
        ordering: Ordering::Queue,
        delayed_publish: false,
        max_credits: MAX_CREDITS,
        max_message_bytes: Some(o.max_message_bytes),
    }
}

/// First-delivery times of recent messages, bounded.
#[derive(Debug, Default)]
pub(crate) struct FirstSeen {
    at: HashMap<(String, String, String), u64>,
    order: VecDeque<(String, String, String)>,
}

const FIRST_SEEN_CAPACITY: usize = 100_000;

impl FirstSeen {
    /// Records delivery `count` of (stream, group, id) at `ms`; answers the first time known.
    pub fn note(
        &mut self,
        stream: &str,
        group: &str,
        id: &str,
        count: u32,
        ms: u64,
    ) -> Option<u64> {
        let key = (stream.to_owned(), group.to_owned(), id.to_owned());
        if let Some(&first) = self.at.get(&key) {
            return Some(first);
        }
        if count != 1 {
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

    pub fn get(&self, stream: &str, group: &str, id: &str) -> Option<u64> {
        self.at
            .get(&(stream.to_owned(), group.to_owned(), id.to_owned()))
            .copied()
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A duration as whole milliseconds, at least 1.
pub(crate) fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

impl Capable for RedisTransport {
    fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }
}

impl Publisher for RedisTransport {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<PublishAnswers, TransportError>> {
        Box::pin(publish::publish(&self.inner, topic, batch))
    }
}

impl Subscriber for RedisTransport {
    fn subscribe<'a>(
        &'a self,
        sub: &'a Subscription,
    ) -> BoxFuture<'a, Result<Box<dyn Session>, TransportError>> {
        Box::pin(session::subscribe(self.inner.clone(), sub))
    }
}

impl Admin for RedisTransport {
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
