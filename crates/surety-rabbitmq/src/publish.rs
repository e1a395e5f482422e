//! Publishing a batch: every message persistent and `mandatory` on the topic's
//! exchange, over one of a few confirm channels, all sent before any confirm is awaited
//! (one round trip per batch, not per message). An answer is per message: a confirm is
//! `Ok`; a returned (unroutable) message is refused, never confirmed; a broker nack, a
//! channel that broke or a confirm that did not come is `Unknown` — it may be stored in
//! some group queues, and a retry with the same stamps is dropped by the consumers'
//! ledgers where it is.

use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use surety_core::{Batch, ErrorKind, Outcome, Position, PublishAnswers, Published, TransportError};

use crate::headers;
use crate::names::TopicNames;
use crate::topology;
use crate::transport::{Inner, now_ms};

pub(crate) async fn publish(
    inner: &Inner,
    topic: &str,
    batch: &Batch,
) -> Result<PublishAnswers, TransportError> {
    let names = TopicNames::new(&inner.options.prefix, topic)?;
    let settings = topology::settings(inner, &names).await?;
    let now = now_ms();
    let mut answers: Vec<Option<Result<Published, TransportError>>> =
        Vec::with_capacity(batch.len());
    let mut prepared = Vec::with_capacity(batch.len());
    for m in batch {
        let size = m.message.payload.len();
        if size > settings.max_message_bytes as usize {
            answers.push(Some(Err(TransportError::refused(
                ErrorKind::TooLarge,
                format!(
                    "message of {size} bytes above the topic's max_message_bytes {}",
                    settings.max_message_bytes
                ),
            )
            .with_code("message_too_large"))));
            prepared.push(None);
            continue;
        }
        if m.message.not_before_ms.is_some() {
            answers.push(Some(Err(TransportError::refused(
                ErrorKind::Unsupported,
                "delayed publish (not_before_ms) is not built on RabbitMQ",
            ))));
            prepared.push(None);
            continue;
        }
        match headers::encode(m, now) {
            Ok(p) => {
                answers.push(None);
                prepared.push(Some(p));
            }
            Err(e) => {
                answers.push(Some(Err(e)));
                prepared.push(None);
            }
        }
    }
    let (slot, ch) = inner.publish_channel().await?;
    let mut pending = Vec::new();
    let mut broken: Option<TransportError> = None;
    for (i, (m, props)) in batch.iter().zip(prepared).enumerate() {
        let Some(props) = props else { continue };
        if let Some(e) = &broken {
            answers[i] = Some(Err(e.clone()));
            continue;
        }
        let sent = inner
            .conn
            .bounded(
                "basic.publish",
                ch.basic_publish(
                    names.exchange.as_str().into(),
                    "".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &m.message.payload,
                    props,
                ),
                Outcome::Unknown,
            )
            .await;
        match sent {
            Ok(confirm) => pending.push((i, m.sequence, confirm)),
            Err(e) => {
                answers[i] = Some(Err(e.clone()));
                broken = Some(e);
            }
        }
    }
    for (i, sequence, confirm) in pending {
        let answer = match inner.conn.bounded("publisher confirm", confirm, Outcome::Unknown).await {
            Ok(Confirmation::Ack(None)) => Ok(Published { sequence, position: Position::Unaddressed, duplicate: false }),
            Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))) => Err(TransportError::refused(
                ErrorKind::Other,
                format!(
                    "the broker returned the message unroutable ({} {}): topic {topic} has no queue to take it \
                     (was its history stream {} deleted?)",
                    returned.reply_code, returned.reply_text, names.log
                ),
            )
            .with_code("unroutable")),
            Ok(Confirmation::Nack(None)) => Err(TransportError::new(
                ErrorKind::Storage,
                Outcome::Unknown,
                "the broker nacked the publish (a queue refused it: full, or a quorum unavailable); \
                 other group queues may have it",
            )
            .with_code("nacked")),
            Ok(Confirmation::NotRequested) => Err(TransportError::new(
                ErrorKind::Protocol,
                Outcome::Unknown,
                "a publish on a channel without confirms (a bug)",
            )),
            Err(e) => {
                broken.get_or_insert(e.clone());
                Err(e)
            }
        };
        answers[i] = Some(answer);
    }
    if let Some(e) = broken {
        inner.drop_publish_channel(slot, &ch);
        if e.kind == ErrorKind::TopicNotFound {
            inner.settings.lock().unwrap().remove(topic);
            return Err(topology::not_found(topic));
        }
    }
    Ok(answers
        .into_iter()
        .map(|a| {
            a.unwrap_or_else(|| {
                Err(TransportError::new(
                    ErrorKind::Protocol,
                    Outcome::Unknown,
                    "no answer",
                ))
            })
        })
        .collect())
}
