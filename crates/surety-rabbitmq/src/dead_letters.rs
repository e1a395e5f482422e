//! A group's dead letters: its quorum queue `<group queue>.dlq`. A queue cannot be read
//! without taking what it reads, so a page, a resend or a purge by id consumes the queue
//! from its head on a channel of its own, takes what it selected (a resend copies it
//! into the group's queue and waits for the confirm first) and leaves the rest unacked;
//! closing the channel puts those back in order. At most [`MAX_SCAN`] dead letters are
//! looked at per call.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{FieldTable, ShortString};
use surety_core::{
    DeadLetter, DeadLetterPage, ErrorKind, Outcome, Position, Selection, TransportError, wire,
};

use crate::headers::{self, DEAD_LETTER_ID, DELIVERIES};
use crate::names::{GroupNames, TopicNames};
use crate::topology;
use crate::transport::Inner;

/// Most dead letters one call reads.
pub const MAX_SCAN: u32 = 10_000;
/// Longest wait for the next dead letter of a scan before it counts as the end.
const QUIET: Duration = Duration::from_millis(500);

/// What a scan does with one dead letter.
enum Choice {
    Leave,
    Take { resend: bool },
    Stop,
}

/// Reads `dlq` from its head, calling `choose` on each dead letter; answers how many it took.
async fn scan(
    inner: &Inner,
    group: &GroupNames,
    mut choose: impl FnMut(&DeadLetter) -> Choice,
) -> Result<u64, TransportError> {
    let c = &inner.conn;
    let ch = c.confirm_channel().await?;
    let waiting = c
        .bounded(
            "queue.declare (passive)",
            ch.queue_declare(
                group.dlq.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
            Outcome::Retryable,
        )
        .await;
    let waiting = match waiting {
        Ok(q) => q.message_count().min(MAX_SCAN),
        Err(e) if e.kind == ErrorKind::TopicNotFound => return Ok(0), // no dead letter yet
        Err(e) => return Err(e),
    };
    let mut taken = 0;
    let mut seen = 0u64;
    if waiting > 0 {
        c.bounded(
            "basic.qos",
            ch.basic_qos(waiting as u16, BasicQosOptions::default()),
            Outcome::Retryable,
        )
        .await?;
        let mut consumer = c
            .bounded(
                "basic.consume",
                ch.basic_consume(
                    group.dlq.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                ),
                Outcome::Retryable,
            )
            .await?;
        for _ in 0..waiting {
            let Ok(Some(d)) = tokio::time::timeout(QUIET, consumer.next()).await else {
                break;
            };
            let d = d.map_err(|e| crate::conn::error(&e, Outcome::Retryable))?;
            seen += 1;
            let dl = decode(&d, &group.group);
            match choose(&dl) {
                Choice::Leave => {}
                Choice::Stop => break,
                Choice::Take { resend } => {
                    if resend {
                        let props = headers::copy_with(
                            &d.properties,
                            &[],
                            &[
                                wire::REASON,
                                DEAD_LETTER_ID,
                                wire::DEAD_LETTERED,
                                DELIVERIES,
                                wire::FIRST_DELIVERED,
                                wire::LAST_DELIVERED,
                                wire::FOR_GROUP,
                            ],
                        );
                        c.copy_into(&ch, &group.queue, &d.data, props).await?;
                    }
                    c.bounded(
                        "basic.ack",
                        ch.basic_ack(d.delivery_tag, BasicAckOptions::default()),
                        Outcome::Unknown,
                    )
                    .await?;
                    taken += 1;
                }
            }
        }
    }
    // What was left unacked goes back to the queue, in order. A quorum queue counts the
    // returns a little after the close: wait (briefly) until it does, so that the next
    // scan, which starts from the queue's count, sees them.
    let _ = ch.close(200, ShortString::from("done")).await;
    let back = seen - taken;
    if back > 0 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            match crate::topology::ready_counts(inner, &[group.dlq.as_str()]).await {
                Ok(n) if n[0] >= back => break,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
    Ok(taken)
}

fn decode(d: &lapin::message::Delivery, group: &str) -> DeadLetter {
    let h = headers::decode(&d.properties);
    let sequence = h.layer_u64(wire::SEQUENCE);
    let id = h.layer.get(DEAD_LETTER_ID).cloned().unwrap_or_else(|| {
        let mid = d
            .properties
            .message_id()
            .as_ref()
            .map_or("", |m| m.as_str());
        headers::dead_letter_id_of(mid).to_string()
    });
    let reason = h.layer.get(wire::REASON).cloned().unwrap_or_else(|| match &h.broker_death {
        Some(why) => format!("dead-lettered by RabbitMQ ({why}: its x-delivery-limit, or a consumer outside Surety)"),
        None => "dead-lettered outside Surety".to_owned(),
    });
    DeadLetter {
        id,
        group: h
            .layer
            .get(wire::FOR_GROUP)
            .cloned()
            .unwrap_or_else(|| group.to_owned()),
        reason,
        attempts: h.layer_u64(wire::ATTEMPTS).unwrap_or(0) as u32,
        first_delivered_ms: h.layer_u64(wire::FIRST_DELIVERED),
        last_delivered_ms: h.layer_u64(wire::LAST_DELIVERED),
        dead_lettered_ms: h
            .layer_u64(wire::DEAD_LETTERED)
            .or_else(|| d.properties.timestamp().map(|s| s.saturating_mul(1000)))
            .unwrap_or(0),
        origin: Position::Unaddressed,
        payload: d.data.clone(),
        key: h.key,
        headers: h.headers,
        message_id: h.layer.get(wire::ID).cloned(),
        producer_id: h.layer.get(wire::PRODUCER).cloned(),
        sequence,
    }
}

async fn group_of(inner: &Inner, topic: &str, group: &str) -> Result<GroupNames, TransportError> {
    let names = TopicNames::new(&inner.options.prefix, topic)?;
    topology::settings(inner, &names).await?;
    names.group(group)
}

pub(crate) async fn page(
    inner: &Inner,
    topic: &str,
    group: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<DeadLetterPage, TransportError> {
    let g = group_of(inner, topic, group).await?;
    let limit = limit.clamp(1, 1000) as usize;
    let mut past_after = after.is_none();
    let mut items = Vec::new();
    let mut more = false;
    scan(inner, &g, |dl| {
        if !past_after {
            past_after = Some(dl.id.as_str()) == after;
            return Choice::Leave;
        }
        if items.len() == limit {
            more = true;
            return Choice::Stop;
        }
        items.push(dl.clone());
        Choice::Leave
    })
    .await?;
    let next = if more {
        items.last().map(|d| d.id.clone())
    } else {
        None
    };
    Ok(DeadLetterPage { items, next })
}

pub(crate) async fn resend(
    inner: &Inner,
    topic: &str,
    group: &str,
    which: &Selection,
) -> Result<u64, TransportError> {
    take(inner, topic, group, which, true).await
}

pub(crate) async fn purge(
    inner: &Inner,
    topic: &str,
    group: &str,
    which: &Selection,
) -> Result<u64, TransportError> {
    if matches!(which, Selection::All) {
        let g = group_of(inner, topic, group).await?;
        let ch = inner.conn.channel().await?;
        let n = inner
            .conn
            .bounded(
                "queue.purge",
                ch.queue_purge(g.dlq.as_str().into(), QueuePurgeOptions::default()),
                Outcome::Unknown,
            )
            .await;
        let _ = ch.close(200, ShortString::from("done")).await;
        return match n {
            Ok(n) => Ok(n.into()),
            Err(e) if e.kind == ErrorKind::TopicNotFound => Ok(0),
            Err(e) => Err(e),
        };
    }
    take(inner, topic, group, which, false).await
}

async fn take(
    inner: &Inner,
    topic: &str,
    group: &str,
    which: &Selection,
    resend: bool,
) -> Result<u64, TransportError> {
    let g = group_of(inner, topic, group).await?;
    if let Selection::Ids(ids) = which
        && ids.is_empty()
    {
        return Ok(0);
    }
    scan(inner, &g, |dl| {
        let chosen = match which {
            Selection::All => true,
            Selection::Ids(ids) => ids.contains(&dl.id),
        };
        if chosen {
            Choice::Take { resend }
        } else {
            Choice::Leave
        }
    })
    .await
}
