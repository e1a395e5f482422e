//! [`RabbitTransport`]: a connection to one RabbitMQ broker (or cluster node), what it
//! declares about itself, and the trait impls that route each call to its module.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lapin::Channel;
use surety_core::{
    Admin, Batch, BoxFuture, Capabilities, Capable, Confirm, DeadLetterCap, DeadLetterPage,
    DeadLetterStore, DeadLetters, DeliveryCount, ErrorKind, LeaseKind, Mechanism, NackDelay,
    Ordering as Order, PublishAnswers, PublishDedupe, Publisher, Selection, Session, SettleAnswers,
    Subscriber, Subscription, TopicInfo, TopicSpec, TransportError,
};

use crate::conn::Conn;
use crate::management::Management;
use crate::names::RETRY_STEPS;
use crate::options::RabbitOptions;
use crate::topology::TopicSettings;
use crate::{dead_letters, publish, session, topics};

/// The largest credit window of a subscription (AMQP's prefetch is a u16).
pub const MAX_CREDITS: u32 = 10_000;

/// The Surety reliability layer's transport on RabbitMQ: a fanout exchange per topic, a
/// quorum queue per group, retry queues for nack delays and a dead-letter queue per
/// group. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct RabbitTransport {
    pub(crate) inner: Arc<Inner>,
}

/// This process's view of one group: its live sessions and their unsettled deliveries.
#[derive(Debug, Default)]
pub(crate) struct LocalGroup {
    pub sessions: AtomicU64,
    pub in_flight: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub conn: Conn,
    pub options: RabbitOptions,
    pub caps: Capabilities,
    pub management: Option<Management>,
    publish_channels: Vec<tokio::sync::Mutex<Option<Channel>>>,
    next_channel: AtomicUsize,
    /// Topic settings read or declared (they cannot change).
    pub settings: Mutex<HashMap<String, TopicSettings>>,
    /// Queues this transport declared (and bound), so each is declared once.
    pub declared: Mutex<HashSet<String>>,
    local: Mutex<HashMap<String, Arc<LocalGroup>>>,
}

impl Inner {
    /// A confirm channel for a publish: one of the pool, opened (again) where needed.
    pub async fn publish_channel(&self) -> Result<(usize, Channel), TransportError> {
        let slot = self.next_channel.fetch_add(1, Ordering::Relaxed) % self.publish_channels.len();
        let mut held = self.publish_channels[slot].lock().await;
        if let Some(ch) = held.as_ref()
            && ch.status().connected()
        {
            return Ok((slot, ch.clone()));
        }
        let ch = self.conn.confirm_channel().await?;
        *held = Some(ch.clone());
        Ok((slot, ch))
    }

    /// Forgets a publish channel that broke (the next publish opens another).
    pub fn drop_publish_channel(&self, slot: usize, ch: &Channel) {
        if let Ok(mut held) = self.publish_channels[slot].try_lock()
            && held.as_ref().is_some_and(|h| h.id() == ch.id())
        {
            *held = None;
        }
    }

    pub fn local_group(&self, queue: &str) -> Arc<LocalGroup> {
        self.local
            .lock()
            .unwrap()
            .entry(queue.to_owned())
            .or_default()
            .clone()
    }
}

impl RabbitTransport {
    /// Connects to `url` (`amqp://user:pass@host:5672/vhost`; the query is read with
    /// [`RabbitOptions::from_url_query`] and ignored here). `amqps://` is refused: this
    /// build has no TLS backend.
    pub async fn connect(
        url: &str,
        options: RabbitOptions,
    ) -> Result<RabbitTransport, TransportError> {
        let parsed = url::Url::parse(url).map_err(|e| {
            TransportError::refused(
                ErrorKind::InvalidInput,
                format!("RabbitMQ URL {url:?}: {e}"),
            )
        })?;
        match parsed.scheme() {
            "amqp" => {}
            "amqps" => {
                return Err(TransportError::refused(
                    ErrorKind::Unsupported,
                    format!(
                        "RabbitMQ URL {url:?}: TLS (amqps://) is not built into this surety; use amqp:// (through a TLS tunnel where needed)"
                    ),
                ));
            }
            _ => {
                return Err(TransportError::refused(
                    ErrorKind::InvalidInput,
                    format!("RabbitMQ URL {url:?}: the scheme must be amqp://"),
                ));
            }
        }
        let vhost = vhost(&parsed);
        let mut server = parsed.clone();
        server.set_query(None);
        let conn = Conn::new(server.to_string(), options.request_timeout);
        conn.connection().await?;
        let management = match &options.management {
            Some(m) => Some(Management::new(m, &vhost, options.request_timeout)?),
            None => None,
        };
        let caps = capabilities(&options);
        Ok(RabbitTransport {
            inner: Arc::new(Inner {
                publish_channels: (0..options.publish_channels)
                    .map(|_| tokio::sync::Mutex::new(None))
                    .collect(),
                next_channel: AtomicUsize::new(0),
                conn,
                caps,
                management,
                options,
                settings: Mutex::new(HashMap::new()),
                declared: Mutex::new(HashSet::new()),
                local: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn options(&self) -> &RabbitOptions {
        &self.inner.options
    }

    /// Deletes `topic` with its exchange, backlog and every queue of its groups
    /// (messages and dead letters included). Not part of the seam: for tools and tests.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), TransportError> {
        let names = crate::names::TopicNames::new(&self.inner.options.prefix, topic)?;
        crate::topology::delete_topic(&self.inner, &names).await
    }

    /// What a confirm means here, in one line (the CLI prints it at start-up).
    pub fn durability(&self) -> &'static str {
        "RabbitMQ quorum queues: a publish is confirmed once a quorum of each group's queue replicas fsynced it"
    }
}

/// The vhost of an AMQP URL: its path, percent-decoded (`/%2f` and no path are `/`).
fn vhost(url: &url::Url) -> String {
    let path = url.path().trim_start_matches('/');
    if path.is_empty() {
        return "/".to_owned();
    }
    url::form_urlencoded::parse(format!("v={path}").as_bytes())
        .next()
        .map_or_else(|| "/".to_owned(), |(_, v)| v.into_owned())
}

/// What this backend declares (docs/backends.md, RabbitMQ).
fn capabilities(o: &RabbitOptions) -> Capabilities {
    Capabilities {
        transport: "rabbitmq",
        publish_dedupe: PublishDedupe::None,
        id_dedupe: None,
        per_message_publish_answers: true,
        confirm: Confirm::FsyncedOnNode,
        unknown_topic: Mechanism::Native,
        per_message_settle: Mechanism::Native,
        receipts_survive_reconnect: false,
        settle_answers: SettleAnswers::Unanswered,
        nack_delay: NackDelay::Emulated {
            how: "a copy waits out its delay in a retry queue (message TTL), which dead-letters it \
                  back into the group's queue; the delay rounds up to the next step",
            granularity: RETRY_STEPS[0],
        },
        delivery_count: DeliveryCount::Emulated(
            "the broker's x-delivery-count of the copy plus the deliveries of earlier copies \
             (surety.deliveries); both persist",
        ),
        lease: LeaseKind::Connection,
        dead_letters: DeadLetters {
            store: DeadLetterStore::CopyThenSettle { atomic: false },
            cap: DeadLetterCap::Layer,
            now: true,
        },
        group_resend: Mechanism::Native,
        ordering: Order::Queue,
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

impl Capable for RabbitTransport {
    fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }
}

impl Publisher for RabbitTransport {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<PublishAnswers, TransportError>> {
        Box::pin(publish::publish(&self.inner, topic, batch))
    }
}

impl Subscriber for RabbitTransport {
    fn subscribe<'a>(
        &'a self,
        sub: &'a Subscription,
    ) -> BoxFuture<'a, Result<Box<dyn Session>, TransportError>> {
        Box::pin(session::subscribe(self.inner.clone(), sub))
    }
}

impl Admin for RabbitTransport {
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_vhost_is_the_decoded_path() {
        for (url, v) in [
            ("amqp://h", "/"),
            ("amqp://h/%2f", "/"),
            ("amqp://h/prod", "prod"),
            ("amqp://h/a%2Fb", "a/b"),
        ] {
            assert_eq!(super::vhost(&url::Url::parse(url).unwrap()), v, "{url}");
        }
    }
}
