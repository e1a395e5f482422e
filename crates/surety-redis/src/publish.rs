//! Publishing: one script call per batch ([`scripts::PUBLISH`]) checks each message's
//! (producer id, sequence) against the producer's dedupe record on that topic and XADDs
//! only what is new; a repeat is answered `duplicate: true` with the original's entry
//! id. Atomic on the server, so two producers retrying the same sequence concurrently
//! store it once. A sequence below the newest `dedupe_window` of its producer cannot be
//! checked, so it is refused (`SequenceTooOld`), as Surety's own broker does.
//!
//! With `wait_replicas` N > 0 the answers wait for `WAIT N wait_timeout` on the same
//! connection, which covers every write sent on it before (this batch's, duplicates'
//! originals included): fewer than N replicas in time fails the whole attempt as
//! `Unknown` — the entries are on the primary, and the retry the driver makes with the
//! same stamps is answered as duplicates and waits again.

use redis::Value;
use surety_core::{Batch, ErrorKind, Outcome, PublishAnswers, Published, TransportError};

use crate::entry::{self, array, text};
use crate::scripts;
use crate::transport::Inner;

pub(crate) async fn publish(
    inner: &Inner,
    topic: &str,
    batch: &Batch,
) -> Result<PublishAnswers, TransportError> {
    let keys = inner.keys(topic)?;
    let limit = inner.options.max_message_bytes;
    let mut answers: Vec<Option<Result<Published, TransportError>>> = vec![None; batch.len()];
    let mut dedupe_keys: Vec<String> = Vec::new();
    let mut args: Vec<Vec<u8>> = vec![
        inner.options.dedupe_window.to_string().into_bytes(),
        Vec::new(),
    ];
    let mut sent: Vec<usize> = Vec::new();
    for (i, m) in batch.iter().enumerate() {
        if m.message.not_before_ms.is_some() {
            answers[i] = Some(Err(TransportError::refused(
                ErrorKind::Unsupported,
                "Redis Streams cannot delay a publish (not_before)",
            )));
            continue;
        }
        if m.message.payload.len() > limit as usize {
            answers[i] = Some(Err(too_large(m.message.payload.len(), limit)));
            continue;
        }
        let fields = match entry::encode(m) {
            Ok(f) => f,
            Err(e) => {
                answers[i] = Some(Err(e));
                continue;
            }
        };
        let dk = keys.dedupe(&m.producer_id);
        let at = match dedupe_keys.iter().position(|k| *k == dk) {
            Some(at) => at,
            None => {
                dedupe_keys.push(dk);
                dedupe_keys.len() - 1
            }
        };
        // KEYS[1] is the stream, KEYS[2] the config: dedupe records start at 3.
        args.push((at + 3).to_string().into_bytes());
        args.push(m.sequence.to_string().into_bytes());
        args.push(m.message.payload.len().to_string().into_bytes());
        args.push((fields.len()).to_string().into_bytes());
        args.extend(fields);
        sent.push(i);
    }
    if !sent.is_empty() {
        args[1] = sent.len().to_string().into_bytes();
        let mut all_keys: Vec<&str> = vec![&keys.stream, &keys.config];
        all_keys.extend(dedupe_keys.iter().map(String::as_str));
        let answer: Value = inner
            .conn
            .script(&scripts::PUBLISH, &all_keys, &args)
            .await?;
        let items = array(&answer);
        if items.len() == 1 && text(&items[0]).as_deref() == Some("topic_not_found") {
            return Err(TransportError::refused(
                ErrorKind::TopicNotFound,
                format!("no topic {topic:?} on this Redis (create it first)"),
            )
            .with_code("topic_not_found"));
        }
        if items.len() != sent.len() {
            return Err(entry::protocol(&format!(
                "{} publish answers for {} messages",
                items.len(),
                sent.len()
            )));
        }
        for (&i, item) in sent.iter().zip(items) {
            let seq = batch.messages()[i].sequence;
            let parts = array(item);
            let status = parts.first().and_then(text).unwrap_or_default();
            let detail = parts.get(1).and_then(text).unwrap_or_default();
            answers[i] = Some(match status.as_str() {
                "new" | "dup" => entry::parse_id(&detail)
                    .map(|position| Published {
                        sequence: seq,
                        position,
                        duplicate: status == "dup",
                    })
                    .ok_or_else(|| entry::protocol(&format!("entry id {detail:?}"))),
                "too_large" => Err(too_large(
                    batch.messages()[i].message.payload.len(),
                    detail.parse().unwrap_or(0),
                )),
                "too_old" => Err(TransportError::refused(
                    ErrorKind::SequenceTooOld,
                    format!(
                        "sequence {seq} is below the dedupe window of its producer (newest \
                         {detail}, window {})",
                        inner.options.dedupe_window
                    ),
                )
                .with_code("sequence_too_old")),
                other => Err(entry::protocol(&format!("publish status {other:?}"))),
            });
        }
    }
    if inner.options.wait_replicas > 0 && !sent.is_empty() {
        wait_for_replicas(inner).await?;
    }
    Ok(answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(entry::protocol("a message without an answer"))))
        .collect())
}

async fn wait_for_replicas(inner: &Inner) -> Result<(), TransportError> {
    let want = inner.options.wait_replicas;
    let timeout = inner.options.wait_timeout;
    let got: u64 = inner
        .conn
        .query(
            redis::cmd("WAIT")
                .arg(want)
                .arg(timeout.as_millis().max(1) as u64),
        )
        .await?;
    if got >= u64::from(want) {
        return Ok(());
    }
    Err(TransportError::new(
        ErrorKind::TimedOut,
        Outcome::Unknown,
        format!(
            "stored on the Redis primary but on {got} of {want} replicas within {timeout:?} \
             (wait_replicas): not confirmed; a retry is answered as a duplicate once they have it"
        ),
    )
    .with_code("not_replicated"))
}

fn too_large(size: usize, limit: u32) -> TransportError {
    TransportError::refused(
        ErrorKind::TooLarge,
        format!("payload of {size} bytes is above the limit of {limit}"),
    )
    .with_code("message_too_large")
}
