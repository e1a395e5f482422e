//! What Surety declares on the broker (the table in [`names`](crate::names)), and a
//! topic's settings, which live in its exchange's arguments: AMQP has nowhere else to
//! keep them, and an exchange's arguments cannot change, so neither can a topic's
//! settings once it exists (`create_topic` with other values is refused, with the reason).

use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use surety_core::{ErrorKind, Outcome, TopicSpec, TransportError};

use crate::conn;
use crate::names::{GroupNames, TopicNames};
use crate::transport::Inner;

const ARG_MAX_DELIVERIES: &str = "x-surety-max-deliveries";
const ARG_ACK_WAIT_MS: &str = "x-surety-ack-wait-ms";
const ARG_MAX_MESSAGE_BYTES: &str = "x-surety-max-message-bytes";

/// A topic's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSettings {
    pub max_deliveries: u32,
    pub ack_wait: Duration,
    pub max_message_bytes: u32,
}

impl TopicSettings {
    fn arguments(&self) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert(
            ARG_MAX_DELIVERIES.into(),
            AMQPValue::LongLongInt(self.max_deliveries.into()),
        );
        t.insert(
            ARG_ACK_WAIT_MS.into(),
            AMQPValue::LongLongInt(self.ack_wait.as_millis().min(i64::MAX as u128) as i64),
        );
        t.insert(
            ARG_MAX_MESSAGE_BYTES.into(),
            AMQPValue::LongLongInt(self.max_message_bytes.into()),
        );
        t
    }

    fn from_arguments(
        a: &serde_json::Map<String, serde_json::Value>,
        defaults: TopicSettings,
    ) -> TopicSettings {
        let get = |k: &str| a.get(k).and_then(serde_json::Value::as_u64);
        TopicSettings {
            max_deliveries: get(ARG_MAX_DELIVERIES).map_or(defaults.max_deliveries, |n| n as u32),
            ack_wait: get(ARG_ACK_WAIT_MS).map_or(defaults.ack_wait, Duration::from_millis),
            max_message_bytes: get(ARG_MAX_MESSAGE_BYTES)
                .map_or(defaults.max_message_bytes, |n| n as u32),
        }
    }
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// The arguments every quorum queue Surety declares has: at-least-once dead-lettering
/// (a message is removed only once its dead-letter target confirmed it), which needs
/// `reject-publish` overflow.
fn quorum(dead_letter_to: Option<&str>) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-queue-type".into(), text("quorum"));
    if let Some(to) = dead_letter_to {
        t.insert("x-dead-letter-exchange".into(), text(""));
        t.insert("x-dead-letter-routing-key".into(), text(to));
        t.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        t.insert("x-overflow".into(), text("reject-publish"));
    }
    t
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

/// A channel for one topology step, closed after it (a refused declare closes it anyway).
async fn with_channel<T>(
    inner: &Inner,
    what: &str,
    f: impl AsyncFnOnce(&Channel) -> Result<T, TransportError>,
) -> Result<T, TransportError> {
    let ch = inner.conn.channel().await?;
    let r = f(&ch).await;
    if ch.status().connected() {
        let _ = ch.close(200, ShortString::from("done")).await;
    }
    r.map_err(|mut e| {
        e.message = format!("{what}: {}", e.message);
        e
    })
}

async fn declare_queue(
    inner: &Inner,
    ch: &Channel,
    name: &str,
    args: FieldTable,
) -> Result<u32, TransportError> {
    let q = inner
        .conn
        .bounded(
            "queue.declare",
            ch.queue_declare(name.into(), QueueDeclareOptions::durable(), args),
            Outcome::Retryable,
        )
        .await?;
    Ok(q.message_count())
}

/// The settings `spec` asks for, the defaults where it names none.
fn wanted(inner: &Inner, spec: &TopicSpec) -> Result<TopicSettings, TransportError> {
    let o = &inner.options;
    if spec.partitions.is_some_and(|p| p != 1) {
        return Err(TransportError::refused(
            ErrorKind::InvalidInput,
            "RabbitMQ topics have one partition (a queue per group)",
        ));
    }
    let s = TopicSettings {
        max_deliveries: spec.max_deliveries.unwrap_or(o.default_max_deliveries),
        ack_wait: spec.ack_wait.unwrap_or(o.default_ack_wait),
        max_message_bytes: spec.max_message_bytes.unwrap_or(o.max_message_bytes),
    };
    if !(1..=1000).contains(&s.max_deliveries) {
        return Err(TransportError::refused(
            ErrorKind::InvalidInput,
            "max_deliveries must be 1 to 1000",
        ));
    }
    if s.max_message_bytes == 0 || s.max_message_bytes > o.max_message_bytes {
        return Err(TransportError::refused(
            ErrorKind::InvalidInput,
            format!("max_message_bytes must be 1 to {}", o.max_message_bytes),
        ));
    }
    if s.ack_wait < Duration::from_millis(100) || s.ack_wait > Duration::from_secs(86_400) {
        return Err(TransportError::refused(
            ErrorKind::InvalidInput,
            "ack_wait must be 100ms to 1d",
        ));
    }
    Ok(s)
}

/// Declares `topic` (its exchange and backlog), or checks an existing one against `spec`.
pub(crate) async fn declare_topic(
    inner: &Inner,
    names: &TopicNames,
    spec: &TopicSpec,
) -> Result<TopicSettings, TransportError> {
    let mut want = wanted(inner, spec)?;
    if let Some(have) = read_settings(inner, names).await? {
        // A setting the spec names must match; one it leaves out keeps what exists.
        let differs = |named: bool, equal: bool| named && !equal;
        if differs(
            spec.max_deliveries.is_some(),
            want.max_deliveries == have.max_deliveries,
        ) || differs(spec.ack_wait.is_some(), want.ack_wait == have.ack_wait)
            || differs(
                spec.max_message_bytes.is_some(),
                want.max_message_bytes == have.max_message_bytes,
            )
        {
            return Err(TransportError::refused(
                ErrorKind::InvalidInput,
                format!(
                    "topic {} exists with {have:?}: a RabbitMQ exchange's arguments cannot change \
                     (delete the exchange {} and its queues to recreate it)",
                    names.topic, names.exchange
                ),
            )
            .with_code("topic_exists"));
        }
        want = have;
    }
    with_channel(inner, "declaring the topic", async |ch| {
        let c = &inner.conn;
        let mut log = FieldTable::default();
        log.insert("x-queue-type".into(), text("stream"));
        log.insert(
            "x-max-age".into(),
            text(&format!("{}s", inner.options.log_max_age.as_secs())),
        );
        declare_queue(inner, ch, &names.log, log).await?;
        c.bounded(
            "exchange.declare",
            ch.exchange_declare(
                names.exchange.as_str().into(),
                ExchangeKind::Fanout,
                durable_exchange(),
                want.arguments(),
            ),
            Outcome::Retryable,
        )
        .await?;
        c.bounded(
            "queue.bind",
            ch.queue_bind(
                names.log.as_str().into(),
                names.exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
            Outcome::Retryable,
        )
        .await
    })
    .await
    .map_err(|e| {
        if e.code.as_deref() == Some("precondition_failed") {
            TransportError::refused(
                ErrorKind::InvalidInput,
                format!(
                    "topic {} exists with other settings: {}",
                    names.topic, e.message
                ),
            )
            .with_code("topic_exists")
        } else {
            e
        }
    })?;
    inner
        .settings
        .lock()
        .unwrap()
        .insert(names.topic.clone(), want);
    Ok(want)
}

/// The settings of an existing topic (cached: they cannot change); `TopicNotFound` if
/// there is none.
pub(crate) async fn settings(
    inner: &Inner,
    names: &TopicNames,
) -> Result<TopicSettings, TransportError> {
    if let Some(s) = inner.settings.lock().unwrap().get(&names.topic) {
        return Ok(*s);
    }
    let s = read_settings(inner, names)
        .await?
        .ok_or_else(|| not_found(&names.topic))?;
    inner
        .settings
        .lock()
        .unwrap()
        .insert(names.topic.clone(), s);
    Ok(s)
}

pub(crate) fn not_found(topic: &str) -> TransportError {
    TransportError::refused(ErrorKind::TopicNotFound, format!("topic {topic} not found"))
        .with_code("topic_not_found")
}

async fn read_settings(
    inner: &Inner,
    names: &TopicNames,
) -> Result<Option<TopicSettings>, TransportError> {
    let defaults = wanted(inner, &TopicSpec::default())?;
    if let Some(m) = &inner.management {
        return Ok(m
            .exchange_arguments(&names.exchange)
            .await?
            .map(|a| TopicSettings::from_arguments(&a, defaults)));
    }
    // No management API: the exchange's existence is all AMQP can tell.
    let found = with_channel(inner, "checking the topic", async |ch| {
        inner
            .conn
            .bounded(
                "exchange.declare (passive)",
                ch.exchange_declare(
                    names.exchange.as_str().into(),
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..durable_exchange()
                    },
                    FieldTable::default(),
                ),
                Outcome::Retryable,
            )
            .await
    })
    .await;
    match found {
        Ok(()) => Ok(Some(defaults)),
        Err(e) if e.kind == ErrorKind::TopicNotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes sure `group` exists: on its first subscribe, declares its queue and dead-letter
/// queue, binds the queue to the topic (from then on it gets every publish) and copies the
/// topic's history into it, then marks the group ready. A copy that a crash cut short is
/// run again by the next subscribe (messages copied twice are dropped by the consumers'
/// ledgers: the stamps are the same). Once per group and transport.
pub(crate) async fn ensure_group(
    inner: &Inner,
    names: &TopicNames,
    group: &GroupNames,
    settings: &TopicSettings,
) -> Result<(), TransportError> {
    if inner.declared.lock().unwrap().contains(&group.queue) {
        return Ok(());
    }
    let marker = names.ready_marker(group);
    let ready = with_channel(inner, "checking the group", async |ch| {
        inner
            .conn
            .bounded(
                "exchange.declare (passive)",
                ch.exchange_declare(
                    marker.as_str().into(),
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..durable_exchange()
                    },
                    FieldTable::default(),
                ),
                Outcome::Retryable,
            )
            .await
    })
    .await;
    match ready {
        Ok(()) => {}
        Err(e) if e.kind == ErrorKind::TopicNotFound => {
            with_channel(inner, "declaring the group", async |ch| {
                declare_queue(inner, ch, &group.dlq, quorum(None)).await?;
                let mut args = quorum(Some(&group.dlq));
                // The broker's own cap, behind the layer's: it catches a message whose
                // consumers keep dying before they can settle it (each death is a return).
                args.insert(
                    "x-delivery-limit".into(),
                    AMQPValue::LongLongInt(settings.max_deliveries.into()),
                );
                declare_queue(inner, ch, &group.queue, args).await?;
                inner
                    .conn
                    .bounded(
                        "queue.bind",
                        ch.queue_bind(
                            group.queue.as_str().into(),
                            names.exchange.as_str().into(),
                            "".into(),
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        ),
                        Outcome::Retryable,
                    )
                    .await
            })
            .await?;
            copy_history(inner, names, group).await?;
            with_channel(inner, "marking the group ready", async |ch| {
                inner
                    .conn
                    .bounded(
                        "exchange.declare",
                        ch.exchange_declare(
                            marker.as_str().into(),
                            ExchangeKind::Fanout,
                            durable_exchange(),
                            FieldTable::default(),
                        ),
                        Outcome::Retryable,
                    )
                    .await
            })
            .await?;
        }
        Err(e) => return Err(e),
    }
    inner.declared.lock().unwrap().insert(group.queue.clone());
    Ok(())
}

/// Copies of the history are confirmed this many at a time.
const COPY_BATCH: usize = 256;

/// Copies the topic's history (its stream, from the first message it retains) into a new
/// group's queue, up to the point where the queue was bound: a marker published into the
/// stream after the bind ends the copy (everything after it reached the queue directly).
/// Each copy is confirmed before its stream message is acked (a stream ack is only credit).
async fn copy_history(
    inner: &Inner,
    names: &TopicNames,
    group: &GroupNames,
) -> Result<(), TransportError> {
    use futures_util::StreamExt;
    let c = &inner.conn;
    let ch = c.confirm_channel().await?;
    let end = format!("{}-{}", group.group, crate::transport::now_ms());
    let mut props = lapin::BasicProperties::default().with_delivery_mode(2);
    let mut h = FieldTable::default();
    h.insert(COPY_END.into(), text(&end));
    props = props.with_headers(h);
    c.copy_into(&ch, &names.log, b"", props).await?;
    c.bounded(
        "basic.qos",
        ch.basic_qos(COPY_BATCH as u16, BasicQosOptions::default()),
        Outcome::Retryable,
    )
    .await?;
    let mut from = FieldTable::default();
    from.insert("x-stream-offset".into(), text("first"));
    let mut consumer = c
        .bounded(
            "basic.consume",
            ch.basic_consume(
                names.log.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                from,
            ),
            Outcome::Retryable,
        )
        .await?;
    let mut copied = 0u64;
    let mut done = false;
    while !done {
        let mut confirms = Vec::new();
        let mut last_tag = None;
        while confirms.len() < COPY_BATCH {
            let wait = if confirms.is_empty() {
                c.timeout
            } else {
                Duration::from_millis(20)
            };
            let Ok(next) = tokio::time::timeout(wait, consumer.next()).await else {
                break;
            };
            let d = next
                .ok_or_else(|| TransportError::unavailable("the history stream's consumer ended"))?
                .map_err(|e| conn::error(&e, Outcome::Retryable))?;
            last_tag = Some(d.delivery_tag);
            match crate::headers::decode(&d.properties).layer.get(COPY_END) {
                Some(mark) if *mark == end => {
                    done = true;
                    break;
                }
                Some(_) => continue, // another group's end marker
                None => {}
            }
            let confirm = c
                .bounded(
                    "basic.publish",
                    ch.basic_publish(
                        "".into(),
                        group.queue.as_str().into(),
                        lapin::options::BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &d.data,
                        // Without the stream's own headers (x-stream-offset).
                        crate::headers::copy_with(&d.properties, &[], &[]),
                    ),
                    Outcome::Unknown,
                )
                .await?;
            confirms.push(confirm);
        }
        if confirms.is_empty() && last_tag.is_none() {
            return Err(TransportError::timed_out(
                "copying the topic's history (no end marker)",
            ));
        }
        for confirm in confirms {
            let answer = c
                .bounded("publisher confirm", confirm, Outcome::Unknown)
                .await?;
            if !answer.is_ack() || answer.take_message().is_some() {
                return Err(TransportError::new(
                    ErrorKind::Storage,
                    Outcome::Unknown,
                    "copying the history: a copy was not confirmed",
                ));
            }
            copied += 1;
        }
        if let Some(tag) = last_tag {
            c.bounded(
                "basic.ack",
                ch.basic_ack(tag, BasicAckOptions { multiple: true }),
                Outcome::Unknown,
            )
            .await?;
        }
    }
    let _ = ch.close(200, ShortString::from("done")).await;
    if copied > 0 {
        tracing::info!(topic = %names.topic, group = %group.group, copied, "a new group was given the topic's history");
    }
    Ok(())
}

/// The header of the marker that ends a history copy (published into the stream only).
const COPY_END: &str = "surety.copy-end";

/// Declares the retry queue of one delay step: its messages wait out the TTL, then are
/// dead-lettered (at least once) back into the group's queue.
pub(crate) async fn ensure_retry(
    inner: &Inner,
    group: &GroupNames,
    step: Duration,
) -> Result<String, TransportError> {
    let name = group.retry(step);
    if inner.declared.lock().unwrap().contains(&name) {
        return Ok(name);
    }
    with_channel(inner, "declaring a retry queue", async |ch| {
        let mut args = quorum(Some(&group.queue));
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(step.as_millis() as i64),
        );
        declare_queue(inner, ch, &name, args).await
    })
    .await?;
    inner.declared.lock().unwrap().insert(name.clone());
    Ok(name)
}

/// Exact ready counts of `queues` (AMQP passive declares); a queue that does not exist
/// counts 0.
pub(crate) async fn ready_counts(
    inner: &Inner,
    queues: &[&str],
) -> Result<Vec<u64>, TransportError> {
    let mut out = Vec::with_capacity(queues.len());
    let mut ch = inner.conn.channel().await?;
    for q in queues {
        let r = inner
            .conn
            .bounded(
                "queue.declare (passive)",
                ch.queue_declare(
                    (*q).into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                ),
                Outcome::Retryable,
            )
            .await;
        match r {
            Ok(q) => out.push(u64::from(q.message_count())),
            Err(e) if e.kind == ErrorKind::TopicNotFound => {
                out.push(0);
                ch = inner.conn.channel().await?; // the 404 closed it
            }
            Err(e) => return Err(e),
        }
    }
    if ch.status().connected() {
        let _ = ch.close(200, ShortString::from("done")).await;
    }
    Ok(out)
}

/// Deletes `topic`: its exchange, its backlog, and every queue of its groups (their
/// messages and dead letters with them). Needs the management API to find the queues.
pub(crate) async fn delete_topic(inner: &Inner, names: &TopicNames) -> Result<(), TransportError> {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let Some(m) = &inner.management else {
        return Err(TransportError::refused(
            ErrorKind::Unsupported,
            "deleting a topic needs the management API (to find its queues)",
        ));
    };
    let mut queues: Vec<String> = m
        .queues(&names.group_prefix)
        .await?
        .into_iter()
        .map(|q| q.name)
        .collect();
    queues.push(names.log.clone());
    with_channel(inner, "deleting the topic", async |ch| {
        let c = &inner.conn;
        c.bounded(
            "exchange.delete",
            ch.exchange_delete(
                names.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            ),
            Outcome::Unknown,
        )
        .await?;
        for g in &queues {
            if let Some(crate::names::QueueRole::Group(g)) = names.classify(g) {
                let marker = names.ready_marker(&names.group(g)?);
                c.bounded(
                    "exchange.delete",
                    ch.exchange_delete(marker.as_str().into(), ExchangeDeleteOptions::default()),
                    Outcome::Unknown,
                )
                .await?;
            }
        }
        for q in &queues {
            c.bounded(
                "queue.delete",
                ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
                Outcome::Unknown,
            )
            .await?;
        }
        Ok(())
    })
    .await?;
    inner.settings.lock().unwrap().remove(&names.topic);
    inner
        .declared
        .lock()
        .unwrap()
        .retain(|q| !q.starts_with(&names.group_prefix));
    Ok(())
}
