//! Dead letters: Redis has none (a failing entry sits in the group's pending list for
//! ever, or is XACKed away), so the backend makes them. At a group's `max_deliveries`
//! one script ([`scripts::DEAD_LETTER`](crate::scripts)) checks that the delivery is
//! still the caller's, XADDs a copy to `<stream>:dlq` with the reason, attempts, first
//! and last delivery, the time, the group and the original's entry id as `surety.*`
//! fields, counts it, and XACKs the original: a crash leaves both or neither.
//!
//! Administration: a page of a group's dead letters is read with XRANGE, oldest first.
//! A dead letter's id is its entry id `ms-seq` in one number, `ms × 1 000 000 + seq`
//! (so that tools that number dead letters, like the CLI, take it; both forms are
//! accepted back); a resend XADDs the message back to the
//! topic marked `surety.for-group: <group>` (every other group's session acks it unrun)
//! and deletes the dead letter, in one script; a purge deletes, counted.

use redis::Value;
use surety_core::{DeadLetter, DeadLetterPage, Position, Selection, TransportError, wire};

use crate::entry::{self, array};
use crate::keys::{self, TopicKeys};
use crate::scripts;
use crate::topics;
use crate::transport::Inner;

/// Entries read per XRANGE while looking for a group's dead letters.
const SCAN: usize = 200;
/// Ids per resend or purge script call.
const CHUNK: usize = 100;

/// Entries of one millisecond told apart in a dead letter's numeric id.
const PER_MS: u64 = 1_000_000;

/// `1700000000000-3` as `1700000000000000003`.
pub fn public_id(entry_id: &str) -> String {
    match entry::parse_id(entry_id) {
        Some(Position::EntryId { ms, seq }) if seq < PER_MS => ms
            .checked_mul(PER_MS)
            .and_then(|n| n.checked_add(seq))
            .map(|n| n.to_string())
            .unwrap_or_else(|| entry_id.to_owned()),
        _ => entry_id.to_owned(),
    }
}

/// A dead letter's id (either form) as its entry id.
pub fn entry_id(id: &str) -> Option<String> {
    if entry::parse_id(id).is_some() {
        return Some(id.to_owned());
    }
    let n: u64 = id.parse().ok()?;
    Some(format!("{}-{}", n / PER_MS, n % PER_MS))
}

fn bad_id(id: &str) -> TransportError {
    TransportError::refused(
        surety_core::ErrorKind::InvalidInput,
        format!("{id:?} is not a Redis dead letter id (a number, or an entry id ms-seq)"),
    )
}

async fn topic_keys(inner: &Inner, topic: &str, group: &str) -> Result<TopicKeys, TransportError> {
    let keys = inner.keys(topic)?;
    keys::group(group)?;
    topics::settings(inner, &keys).await?;
    Ok(keys)
}

/// Reads dead letters of `group` after `after` (exclusive), up to `limit` (`None`: all).
async fn scan(
    inner: &Inner,
    keys: &TopicKeys,
    group: &str,
    after: Option<&str>,
    limit: Option<usize>,
) -> Result<Vec<entry::Entry>, TransportError> {
    let mut out = Vec::new();
    let mut from = match after {
        Some(a) => format!("({}", entry_id(a).ok_or_else(|| bad_id(a))?),
        None => "-".to_owned(),
    };
    loop {
        let v: Value = inner
            .conn
            .query(
                redis::cmd("XRANGE")
                    .arg(&keys.dlq)
                    .arg(&from)
                    .arg("+")
                    .arg("COUNT")
                    .arg(SCAN),
            )
            .await?;
        let items = array(&v);
        for raw in items {
            let e = entry::decode(raw)?;
            from = format!("({}", e.id);
            if e.layer.get(wire::FOR_GROUP).map(String::as_str) == Some(group) {
                out.push(e);
                if limit.is_some_and(|l| out.len() >= l) {
                    return Ok(out);
                }
            }
        }
        if items.len() < SCAN {
            return Ok(out);
        }
    }
}

pub(crate) async fn page(
    inner: &Inner,
    topic: &str,
    group: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<DeadLetterPage, TransportError> {
    let keys = topic_keys(inner, topic, group).await?;
    let limit = limit.clamp(1, 10_000) as usize;
    let mut found = scan(inner, &keys, group, after, Some(limit + 1)).await?;
    let more = found.len() > limit;
    found.truncate(limit);
    let next = if more {
        found.last().map(|e| public_id(&e.id))
    } else {
        None
    };
    Ok(DeadLetterPage {
        items: found
            .into_iter()
            .map(|e| to_dead_letter(e, group))
            .collect(),
        next,
    })
}

fn to_dead_letter(e: entry::Entry, group: &str) -> DeadLetter {
    let dead_lettered_ms = e
        .layer_u64(wire::DEAD_LETTERED)
        .unwrap_or_else(|| match e.position() {
            Position::EntryId { ms, .. } => ms,
            _ => 0,
        });
    let origin = e
        .layer
        .get(wire::ORIGIN)
        .and_then(|o| o.strip_prefix('e'))
        .and_then(entry::parse_id)
        .unwrap_or(Position::Unaddressed);
    DeadLetter {
        group: group.to_owned(),
        reason: e.layer.get(wire::REASON).cloned().unwrap_or_default(),
        attempts: e
            .layer_u64(wire::ATTEMPTS)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
        first_delivered_ms: e.layer_u64(wire::FIRST_DELIVERED),
        last_delivered_ms: e.layer_u64(wire::LAST_DELIVERED),
        dead_lettered_ms,
        origin,
        message_id: e.layer.get(wire::ID).cloned(),
        producer_id: e.layer.get(wire::PRODUCER).cloned(),
        sequence: e.layer_u64(wire::SEQUENCE),
        payload: e.payload,
        key: e.key,
        headers: e.headers,
        id: public_id(&e.id),
    }
}

async fn selected(
    inner: &Inner,
    keys: &TopicKeys,
    group: &str,
    which: &Selection,
) -> Result<Vec<String>, TransportError> {
    Ok(match which {
        Selection::All => scan(inner, keys, group, None, None)
            .await?
            .into_iter()
            .map(|e| e.id)
            .collect(),
        Selection::Ids(ids) => ids
            .iter()
            .map(|i| entry_id(i).ok_or_else(|| bad_id(i)))
            .collect::<Result<_, _>>()?,
    })
}

pub(crate) async fn resend(
    inner: &Inner,
    topic: &str,
    group: &str,
    which: &Selection,
) -> Result<u64, TransportError> {
    let keys = topic_keys(inner, topic, group).await?;
    let ids = selected(inner, &keys, group, which).await?;
    let mut n = 0u64;
    for chunk in ids.chunks(CHUNK) {
        let mut args = vec![group.as_bytes().to_vec()];
        args.extend(chunk.iter().map(|i| i.as_bytes().to_vec()));
        let done: i64 = inner
            .conn
            .script(
                &scripts::RESEND,
                &[&keys.stream, &keys.dlq, &keys.dlq_count],
                &args,
            )
            .await?;
        n += done.max(0) as u64;
    }
    Ok(n)
}

pub(crate) async fn purge(
    inner: &Inner,
    topic: &str,
    group: &str,
    which: &Selection,
) -> Result<u64, TransportError> {
    let keys = topic_keys(inner, topic, group).await?;
    let ids = selected(inner, &keys, group, which).await?;
    let mut n = 0u64;
    for chunk in ids.chunks(CHUNK) {
        let mut args = vec![group.as_bytes().to_vec()];
        args.extend(chunk.iter().map(|i| i.as_bytes().to_vec()));
        let done: i64 = inner
            .conn
            .script(&scripts::PURGE, &[&keys.dlq, &keys.dlq_count], &args)
            .await?;
        n += done.max(0) as u64;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_ids_are_numbers_and_come_back() {
        assert_eq!(public_id("1796241024930-7"), "1796241024930000007");
        assert_eq!(entry_id("1796241024930000007").unwrap(), "1796241024930-7");
        assert_eq!(entry_id("5-1").unwrap(), "5-1");
        assert!(entry_id("x").is_none());
    }
}
