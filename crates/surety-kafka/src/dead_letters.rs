//! Dead letters: the topic's dead-letter topic (`<topic>.dlq`) holds every group's, each
//! with `surety.for-group`, the reason, attempts and times in headers. Kafka cannot
//! delete one record, so a resend or a purge appends an operation record naming the ids
//! it took; a dead letter is live until one names it. A dead letter's id is a number,
//! as on every backend: `partition << 40 | offset` (below 2^53).
//!
//! A resend copies the message to the group's own topic (so only that group gets it
//! again, with a new life: its count starts over), then appends the `resend` record; a
//! crash between the two resends it twice, and the consumer side drops the second copy
//! by its stamps.

use std::collections::{HashMap, HashSet};

use rdkafka::Message as _;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureRecord;
use surety_core::{
    DeadLetter, DeadLetterPage, ErrorKind, Position, Selection, TransportError, wire,
};

use crate::names::TopicNames;
use crate::record::{self, DLQ_OP};
use crate::transport::{Inner, now_ms};
use crate::{scan, topics};

/// The longest reason kept.
pub const MAX_REASON: usize = 1024;

fn id_of(m: &OwnedMessage) -> u64 {
    ((m.partition() as u64) << 40) | (m.offset() as u64 & ((1 << 40) - 1))
}

/// What a dead letter records about its life.
#[derive(Debug, Clone)]
pub(crate) struct Death<'a> {
    pub group: &'a str,
    pub reason: &'a str,
    pub attempts: u32,
    pub first_ms: Option<u64>,
    pub last_ms: u64,
    pub origin: Position,
}

/// Writes `m` as a dead letter of `death.group` and waits for the confirm.
pub(crate) async fn write(
    inner: &Inner,
    names: &TopicNames,
    m: &OwnedMessage,
    death: &Death<'_>,
) -> Result<(), TransportError> {
    let reason: String = death.reason.chars().take(MAX_REASON).collect();
    let mut set = vec![
        (wire::FOR_GROUP, death.group.to_owned()),
        (wire::REASON, reason),
        (wire::ATTEMPTS, death.attempts.to_string()),
        (wire::LAST_DELIVERED, death.last_ms.to_string()),
        (wire::DEAD_LETTERED, now_ms().to_string()),
        (wire::ORIGIN, death.origin.to_string()),
    ];
    if let Some(f) = death.first_ms {
        set.push((wire::FIRST_DELIVERED, f.to_string()));
    }
    let headers = record::copy_with(m, &set, &[record::DELIVERIES, record::NOT_BEFORE]);
    send(inner, &names.dlq, m.key(), m.payload(), headers).await
}

pub(crate) async fn send(
    inner: &Inner,
    topic: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: rdkafka::message::OwnedHeaders,
) -> Result<(), TransportError> {
    let mut r = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
    if let Some(k) = key {
        r = r.key(k);
    }
    if let Some(p) = payload {
        r = r.payload(p);
    }
    inner
        .producer
        .send(r, inner.options.request_timeout)
        .await
        .map(|_| ())
        .map_err(|(e, _)| crate::error::produce(&e))
}

/// A live dead letter and the record it is.
pub(crate) struct Live {
    pub letter: DeadLetter,
    pub record: OwnedMessage,
}

/// Every live dead letter of the topic, in the dead-letter topic's order.
pub(crate) async fn live_records(
    inner: &Inner,
    names: &TopicNames,
) -> Result<Vec<Live>, TransportError> {
    let records = scan::read_all(inner, &names.dlq).await?;
    let mut taken: HashMap<String, HashSet<u64>> = HashMap::new();
    let mut letters = Vec::new();
    for r in records {
        let d = record::decode(&r);
        let Some(group) = d.layer.get(wire::FOR_GROUP).cloned() else {
            continue;
        };
        if d.layer.contains_key(DLQ_OP) {
            let ids = r
                .payload()
                .and_then(|p| std::str::from_utf8(p).ok())
                .unwrap_or("");
            taken
                .entry(group)
                .or_default()
                .extend(ids.split(',').filter_map(|i| i.parse::<u64>().ok()));
            continue;
        }
        let letter = DeadLetter {
            id: id_of(&r).to_string(),
            group,
            reason: d.layer.get(wire::REASON).cloned().unwrap_or_default(),
            attempts: d.layer_u64(wire::ATTEMPTS).unwrap_or(0) as u32,
            first_delivered_ms: d.layer_u64(wire::FIRST_DELIVERED),
            last_delivered_ms: d.layer_u64(wire::LAST_DELIVERED),
            dead_lettered_ms: d.layer_u64(wire::DEAD_LETTERED).unwrap_or(0),
            origin: parse_position(d.layer.get(wire::ORIGIN).map_or("", String::as_str)),
            payload: r.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            key: r.key().map(<[u8]>::to_vec),
            sequence: d.layer_u64(wire::SEQUENCE),
            headers: d.headers,
            message_id: d.layer.get(wire::ID).cloned(),
            producer_id: d.layer.get(wire::PRODUCER).cloned(),
        };
        letters.push(Live { letter, record: r });
    }
    letters.retain(|l| {
        let id: u64 = l.letter.id.parse().unwrap_or(u64::MAX);
        !taken.get(&l.letter.group).is_some_and(|t| t.contains(&id))
    });
    Ok(letters)
}

pub(crate) async fn live(
    inner: &Inner,
    names: &TopicNames,
) -> Result<Vec<DeadLetter>, TransportError> {
    Ok(live_records(inner, names)
        .await?
        .into_iter()
        .map(|l| l.letter)
        .collect())
}

fn parse_position(s: &str) -> Position {
    s.split_once(':')
        .and_then(|(p, o)| {
            Some(Position::Offset {
                partition: p.parse().ok()?,
                offset: o.parse().ok()?,
            })
        })
        .unwrap_or(Position::Unaddressed)
}

/// Checks the names and that the topic exists.
async fn open(inner: &Inner, topic: &str, group: &str) -> Result<TopicNames, TransportError> {
    let names = TopicNames::new(&inner.options.prefix, topic)?;
    names.group(group)?;
    topics::settings(inner, &names).await?;
    Ok(names)
}

pub(crate) async fn page(
    inner: &Inner,
    topic: &str,
    group: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<DeadLetterPage, TransportError> {
    let names = open(inner, topic, group).await?;
    let after = match after {
        None => None,
        Some(a) => Some(a.parse::<u64>().map_err(|_| {
            TransportError::refused(
                ErrorKind::InvalidInput,
                format!("dead-letter id {a:?} is not a number"),
            )
        })?),
    };
    let limit = limit.clamp(1, 1000) as usize;
    let mut items: Vec<DeadLetter> = live(inner, &names)
        .await?
        .into_iter()
        .filter(|d| d.group == group)
        .filter(|d| after.is_none_or(|a| d.id.parse::<u64>().is_ok_and(|i| i > a)))
        .collect();
    items.sort_by_key(|d| d.id.parse::<u64>().unwrap_or(u64::MAX));
    let next = (items.len() > limit).then(|| items[limit - 1].id.clone());
    items.truncate(limit);
    Ok(DeadLetterPage { items, next })
}

fn selected(which: &Selection, id: &str) -> bool {
    match which {
        Selection::All => true,
        Selection::Ids(ids) => ids.iter().any(|i| i == id),
    }
}

fn check_ids(which: &Selection) -> Result<(), TransportError> {
    if let Selection::Ids(ids) = which {
        if ids.len() > 10_000 {
            return Err(TransportError::refused(
                ErrorKind::InvalidInput,
                "at most 10000 ids at once",
            ));
        }
        if let Some(bad) = ids.iter().find(|i| i.parse::<u64>().is_err()) {
            return Err(TransportError::refused(
                ErrorKind::InvalidInput,
                format!("dead-letter id {bad:?} is not a number"),
            ));
        }
    }
    Ok(())
}

/// Appends the operation record that retires `ids` of `group`.
async fn retire(
    inner: &Inner,
    names: &TopicNames,
    group: &str,
    op: &str,
    ids: &[String],
) -> Result<(), TransportError> {
    for chunk in ids.chunks(1000) {
        let headers = record::put(
            record::put(
                rdkafka::message::OwnedHeaders::new(),
                wire::FOR_GROUP,
                group.as_bytes(),
            ),
            DLQ_OP,
            op.as_bytes(),
        );
        send(
            inner,
            &names.dlq,
            None,
            Some(chunk.join(",").as_bytes()),
            headers,
        )
        .await?;
    }
    Ok(())
}

pub(crate) async fn resend(
    inner: &Inner,
    topic: &str,
    group: &str,
    which: &Selection,
) -> Result<u64, TransportError> {
    check_ids(which)?;
    let names = open(inner, topic, group).await?;
    let g = names.group(group)?;
    crate::session::ensure_group(inner, &g).await?;
    let mut done = Vec::new();
    for l in live_records(inner, &names).await? {
        if l.letter.group != group || !selected(which, &l.letter.id) {
            continue;
        }
        let headers = record::copy_with(
            &l.record,
            &[],
            &[
                wire::FOR_GROUP,
                wire::REASON,
                wire::FIRST_DELIVERED,
                wire::LAST_DELIVERED,
                wire::DEAD_LETTERED,
            ],
        );
        send(inner, &g.redo, l.record.key(), l.record.payload(), headers).await?;
        done.push(l.letter.id);
    }
    retire(inner, &names, group, "resend", &done).await?;
    Ok(done.len() as u64)
}

pub(crate) async fn purge(
    inner: &Inner,
    topic: &str,
    group: &str,
    which: &Selection,
) -> Result<u64, TransportError> {
    check_ids(which)?;
    let names = open(inner, topic, group).await?;
    let done: Vec<String> = live(inner, &names)
        .await?
        .into_iter()
        .filter(|d| d.group == group && selected(which, &d.id))
        .map(|d| d.id)
        .collect();
    retire(inner, &names, group, "purge", &done).await?;
    Ok(done.len() as u64)
}
