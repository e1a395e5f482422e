//! Dead letters: JetStream has none (at `MaxDeliver` a message is only left behind, with
//! an advisory), so the backend makes them. At a group's `max_deliveries` it copies the
//! message to the dead-letter stream, on subject `<prefix>.dlq.<topic>.<group>`, with
//! the reason, attempts, first and last delivery, the time and the original's stream
//! sequence as `surety.*` headers; it waits for that copy's PubAck, and only then sends
//! `+TERM` for the original. A process that dies between the two leaves the original
//! unsettled: it is delivered again, fails or expires again, and is copied again — under
//! the same `Nats-Msg-Id` (`dlq:<stream>:<group>:<seq>`), so inside the duplicate window
//! the second copy is answered as a duplicate, and after it at most a duplicate dead
//! letter is stored. Never a loss.
//!
//! Administration: a page of a group's dead letters is read message by message
//! (`next_by_subj`, ids are the dead-letter stream's sequences); a resend publishes the
//! message to the topic again marked `surety.for-group: <group>` (every other group's
//! session acks it unrun), then deletes the dead letter; a purge deletes, counted.

use async_nats::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use surety_core::{
    DeadLetter, DeadLetterPage, ErrorKind, Outcome, Position, Selection, TransportError, wire,
};

use crate::api::{self, Failure, code};
use crate::headers::{self, MSG_ID};
use crate::names::{self, TopicNames};
use crate::options::Fault;
use crate::receipt::Parsed;
use crate::topics;
use crate::transport::Inner;

/// The longest reason kept (a header value).
const MAX_REASON: usize = 1024;

/// A message read back from a stream.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub subject: String,
    pub seq: u64,
    pub headers: HeaderMap,
    pub payload: Bytes,
    pub time_ms: u64,
}

#[derive(Debug, Deserialize)]
struct MsgGet {
    message: RawMsg,
}

#[derive(Debug, Deserialize)]
struct RawMsg {
    subject: String,
    seq: u64,
    #[serde(default)]
    hdrs: Option<String>,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    time: Option<String>,
}

/// Reads message `seq` of `stream` (or, with `next_by_subject`, the first at or after
/// `seq` on that subject); `None` if there is none.
pub(crate) async fn get(
    inner: &Inner,
    stream: &str,
    seq: u64,
    next_by_subject: Option<&str>,
) -> Result<Option<Stored>, TransportError> {
    let mut body = json!({ "seq": seq });
    if let Some(s) = next_by_subject {
        body["next_by_subj"] = json!(s);
    }
    let got: MsgGet = match inner
        .api
        .call(&format!("STREAM.MSG.GET.{stream}"), &body)
        .await
    {
        Ok(m) => m,
        Err(f) if f.is(code::NO_MESSAGE_FOUND) => return Ok(None),
        Err(f) => return Err(f.into_transport(&format!("read message {seq} of {stream}"))),
    };
    let m = got.message;
    let decode = |b: Option<String>| {
        b.map(|b| B64.decode(b))
            .transpose()
            .map(Option::unwrap_or_default)
            .map_err(|e| {
                TransportError::new(
                    ErrorKind::Protocol,
                    Outcome::Unknown,
                    format!("message {seq} of {stream}: bad base64 ({e})"),
                )
            })
    };
    let headers = headers::parse_block(&decode(m.hdrs)?);
    let payload = Bytes::from(decode(m.data)?);
    Ok(Some(Stored {
        subject: m.subject,
        seq: m.seq,
        headers,
        payload,
        time_ms: m.time.as_deref().and_then(rfc3339_ms).unwrap_or(0),
    }))
}

/// Milliseconds since the Unix epoch of an RFC 3339 UTC time (`2026-11-01T12:00:00.5Z`).
fn rfc3339_ms(t: &str) -> Option<u64> {
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.trim_end_matches('Z');
    let time = time.split(['+']).next()?;
    let mut parts = time.split(':');
    let (h, min) = (
        parts.next()?.parse::<i64>().ok()?,
        parts.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = parts.next()?.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = (days * 86_400 + h * 3600 + min * 60) * 1000 + (sec * 1000.0) as i64;
    u64::try_from(ms).ok()
}

/// Publishes `payload` with `h` to `subject` and waits for its PubAck.
async fn publish_confirmed(
    inner: &Inner,
    subject: &str,
    h: HeaderMap,
    payload: Bytes,
) -> Result<(), TransportError> {
    let request = async_nats::Request::new()
        .headers(h)
        .payload(payload)
        .timeout(Some(inner.options.request_timeout));
    let answer = inner
        .client
        .send_request(subject.to_owned(), request)
        .await
        .map_err(|e| api::request_error(&e, &format!("publish to {subject}")))?;
    api::decode::<Value>(&answer.payload, subject)
        .map(|_| ())
        .map_err(|f| f.into_transport(&format!("publish to {subject}")))
}

fn put(h: &mut HeaderMap, name: &str, value: &str) {
    // Values here are numbers, names and one-line text: valid by construction.
    let _ = headers::put(h, name, value);
}

/// What a copy to the dead letters records.
#[derive(Debug, Clone)]
pub(crate) struct Death<'a> {
    pub names: &'a TopicNames,
    pub group: &'a str,
    pub receipt: &'a Parsed,
    pub reason: &'a str,
    pub attempts: u64,
}

/// Copies the delivered message to the group's dead letters, waits for that PubAck,
/// then terminates the original. Either step failing leaves the original unsettled
/// (it comes back, and is copied again).
pub(crate) async fn copy_then_term(inner: &Inner, death: Death<'_>) -> Result<(), TransportError> {
    let Death {
        names,
        group,
        receipt,
        reason,
        attempts,
    } = death;
    let seq = receipt.info.stream_seq;
    if let Some(original) = get(inner, &names.stream, seq, None).await? {
        let mut h = HeaderMap::new();
        for (name, values) in original.headers.iter() {
            let name: &str = name.as_ref();
            if name.to_ascii_lowercase().starts_with("nats-") {
                continue;
            }
            for v in values {
                put(&mut h, name, v.as_str());
            }
        }
        let first = inner
            .first_seen
            .lock()
            .unwrap()
            .get(&names.stream, group, seq);
        put(&mut h, wire::REASON, &headers::one_line(reason, MAX_REASON));
        put(&mut h, wire::ATTEMPTS, &attempts.to_string());
        if let Some(first) = first {
            put(&mut h, wire::FIRST_DELIVERED, &first.to_string());
        }
        put(
            &mut h,
            wire::LAST_DELIVERED,
            &receipt.received_ms.to_string(),
        );
        put(&mut h, wire::DEAD_LETTERED, &now_ms().to_string());
        put(&mut h, wire::ORIGIN, &Position::StreamSeq(seq).to_string());
        put(&mut h, wire::FOR_GROUP, group);
        put(
            &mut h,
            MSG_ID,
            &format!("dlq:{}:{group}:{seq}", names.stream),
        );
        let subject = names.dlq_subject(group);
        match publish_confirmed(inner, &subject, h.clone(), original.payload.clone()).await {
            Ok(()) => {}
            // No dead-letter stream (the topic's stream was made by hand): make it, once.
            Err(e) if e.kind == ErrorKind::Unavailable => {
                topics::ensure_dlq_stream(inner, names).await?;
                publish_confirmed(inner, &subject, h, original.payload).await?;
            }
            Err(e) => return Err(e),
        }
    } else {
        tracing::warn!(
            stream = %names.stream,
            seq,
            "a message to dead-letter is no longer in its stream; terminating it"
        );
    }
    if let Some(Fault::HangAfterDeadLetterCopy(marker)) = &inner.options.fault {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(marker)
            .expect("fault marker file");
        let _ = writeln!(f, "copied {seq}");
        std::future::pending::<()>().await;
    }
    settle_reply(inner, &receipt.reply, "+TERM").await
}

/// Sends one settlement (`+ACK`, `-NAK {…}`, `+TERM`) and waits for the server's answer.
pub(crate) async fn settle_reply(
    inner: &Inner,
    reply: &str,
    body: &str,
) -> Result<(), TransportError> {
    let request = async_nats::Request::new()
        .payload(Bytes::copy_from_slice(body.as_bytes()))
        .timeout(Some(inner.options.request_timeout));
    inner
        .client
        .send_request(reply.to_owned(), request)
        .await
        .map(|_| ())
        .map_err(|e| api::request_error(&e, body.split(' ').next().unwrap_or(body)))
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn dead_letter_id(id: &str) -> Result<u64, TransportError> {
    id.parse().map_err(|_| {
        TransportError::refused(
            ErrorKind::InvalidInput,
            format!("dead-letter id {id:?} is not a NATS one (a dead-letter stream sequence)"),
        )
        .with_code("invalid_request")
    })
}

fn of_stored(group: &str, m: &Stored) -> DeadLetter {
    let d = headers::decode(Some(&m.headers));
    let origin = d
        .layer
        .get(wire::ORIGIN)
        .and_then(|o| o.strip_prefix('s'))
        .and_then(|s| s.parse().ok())
        .map_or(Position::Unaddressed, Position::StreamSeq);
    DeadLetter {
        id: m.seq.to_string(),
        group: group.to_owned(),
        reason: d.layer.get(wire::REASON).cloned().unwrap_or_default(),
        attempts: d
            .layer_u64(wire::ATTEMPTS)
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or(0),
        first_delivered_ms: d.layer_u64(wire::FIRST_DELIVERED),
        last_delivered_ms: d.layer_u64(wire::LAST_DELIVERED),
        dead_lettered_ms: d.layer_u64(wire::DEAD_LETTERED).unwrap_or(m.time_ms),
        origin,
        payload: m.payload.to_vec(),
        key: d.key,
        headers: d.headers,
        message_id: d.id,
        producer_id: d.producer_id,
        sequence: d.sequence,
    }
}

fn checked(inner: &Inner, topic: &str, group: &str) -> Result<TopicNames, TransportError> {
    let n = inner.names(topic)?;
    names::group(group)?;
    Ok(n)
}

/// Fails unless the topic exists.
async fn topic_exists(inner: &Inner, n: &TopicNames) -> Result<(), TransportError> {
    topics::settings(inner, n).await.map(|_| ())
}

pub(crate) async fn page(
    inner: &Inner,
    topic: &str,
    group: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<DeadLetterPage, TransportError> {
    let n = checked(inner, topic, group)?;
    topic_exists(inner, &n).await?;
    let mut next = match after {
        Some(a) => dead_letter_id(a)? + 1,
        None => 1,
    };
    let subject = n.dlq_subject(group);
    let mut items = Vec::new();
    let mut more = false;
    loop {
        let got = match get(inner, &n.dlq_stream, next, Some(&subject)).await {
            Ok(g) => g,
            // No dead-letter stream yet: no dead letters.
            Err(e) if e.kind == ErrorKind::TopicNotFound => None,
            Err(e) => return Err(e),
        };
        let Some(m) = got else { break };
        if items.len() as u32 >= limit.max(1) {
            more = true;
            break;
        }
        next = m.seq + 1;
        items.push(of_stored(group, &m));
    }
    let next = more.then(|| items.last().map(|d| d.id.clone())).flatten();
    Ok(DeadLetterPage { items, next })
}

/// The dead letters a selection names, read back (ids of other groups are skipped).
async fn selected(
    inner: &Inner,
    n: &TopicNames,
    group: &str,
    which: &Selection,
) -> Result<Vec<Stored>, TransportError> {
    let subject = n.dlq_subject(group);
    let mut out = Vec::new();
    match which {
        Selection::All => {
            let mut next = 1;
            loop {
                let got = match get(inner, &n.dlq_stream, next, Some(&subject)).await {
                    Ok(g) => g,
                    Err(e) if e.kind == ErrorKind::TopicNotFound => None,
                    Err(e) => return Err(e),
                };
                let Some(m) = got else { break };
                next = m.seq + 1;
                out.push(m);
            }
        }
        Selection::Ids(ids) => {
            for id in ids {
                let seq = dead_letter_id(id)?;
                if let Some(m) = get(inner, &n.dlq_stream, seq, None).await?
                    && m.subject == subject
                {
                    out.push(m);
                }
            }
        }
    }
    Ok(out)
}

async fn delete(inner: &Inner, stream: &str, seq: u64) -> Result<bool, TransportError> {
    match inner
        .api
        .call::<Value>(
            &format!("STREAM.MSG.DELETE.{stream}"),
            &json!({"seq": seq, "no_erase": true}),
        )
        .await
    {
        Ok(v) => Ok(v["success"].as_bool().unwrap_or(false)),
        Err(Failure::Api(e)) if e.err_code == code::NO_MESSAGE_FOUND || e.code == 404 => Ok(false),
        Err(f) => Err(f.into_transport(&format!("delete dead letter {seq}"))),
    }
}

pub(crate) async fn resend(
    inner: &Inner,
    topic: &str,
    group: &str,
    which: &Selection,
) -> Result<u64, TransportError> {
    let n = checked(inner, topic, group)?;
    topic_exists(inner, &n).await?;
    let mut resent = 0;
    for m in selected(inner, &n, group, which).await? {
        let d = headers::decode(Some(&m.headers));
        let mut h = HeaderMap::new();
        for (name, values) in m.headers.iter() {
            let name: &str = name.as_ref();
            let dead_letter_only = [
                wire::REASON,
                wire::FIRST_DELIVERED,
                wire::LAST_DELIVERED,
                wire::DEAD_LETTERED,
                wire::ATTEMPTS,
                wire::FOR_GROUP,
            ];
            if dead_letter_only.contains(&name) || name.to_ascii_lowercase().starts_with("nats-") {
                continue;
            }
            for v in values {
                put(&mut h, name, v.as_str());
            }
        }
        put(&mut h, wire::FOR_GROUP, group);
        if let Some(a) = d.layer.get(wire::ATTEMPTS) {
            put(&mut h, wire::ATTEMPTS, a);
        }
        // Its own dedupe id: the stamp's would be answered as a duplicate of the
        // original inside the window. A repeated resend of this dead letter is one.
        put(
            &mut h,
            MSG_ID,
            &format!("resend:{}:{}", n.dlq_stream, m.seq),
        );
        publish_confirmed(inner, &n.subject, h, m.payload.clone()).await?;
        delete(inner, &n.dlq_stream, m.seq).await?;
        resent += 1;
    }
    Ok(resent)
}

pub(crate) async fn purge(
    inner: &Inner,
    topic: &str,
    group: &str,
    which: &Selection,
) -> Result<u64, TransportError> {
    let n = checked(inner, topic, group)?;
    topic_exists(inner, &n).await?;
    match which {
        Selection::All => {
            match inner
                .api
                .call::<Value>(
                    &format!("STREAM.PURGE.{}", n.dlq_stream),
                    &json!({"filter": n.dlq_subject(group)}),
                )
                .await
            {
                Ok(v) => Ok(v["purged"].as_u64().unwrap_or(0)),
                Err(f) if f.is(code::STREAM_NOT_FOUND) => Ok(0),
                Err(f) => Err(f.into_transport(&format!("purge {}", n.dlq_stream))),
            }
        }
        Selection::Ids(_) => {
            let mut purged = 0;
            for m in selected(inner, &n, group, which).await? {
                purged += u64::from(delete(inner, &n.dlq_stream, m.seq).await?);
            }
            Ok(purged)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_read_as_epoch_ms() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_ms("2026-11-01T12:00:00.5Z"),
            Some(1_793_534_400_500)
        );
        assert_eq!(
            rfc3339_ms("2000-03-01T00:00:01.123456789Z"),
            Some(951_868_801_123)
        );
        assert_eq!(rfc3339_ms("garbage"), None);
    }
}
