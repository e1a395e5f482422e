//! Publishing a batch: every record handed to the idempotent `acks=all` producer before
//! any delivery report is awaited (librdkafka pipelines them), then one answer per
//! message: its partition and offset once every in-sync replica has it, else the error.
//!
//! What covers a retry: librdkafka's idempotence (producer id + epoch + sequence per
//! partition) makes its own resends inside one producer session land once. A retry by
//! the caller after an `Unknown` answer, or after a restart, is a new record: it carries
//! the same `surety.producer`/`surety.seq` headers, and the consumer side's settled
//! ledger drops the second one (`PublishDedupe::ClientSession`).

use rdkafka::producer::FutureRecord;
use surety_core::{Batch, ErrorKind, Outcome, Position, PublishAnswers, Published, TransportError};

use crate::names::TopicNames;
use crate::transport::Inner;
use crate::{record, topics};

pub(crate) async fn publish(
    inner: &Inner,
    topic: &str,
    batch: &Batch,
) -> Result<PublishAnswers, TransportError> {
    let names = TopicNames::new(&inner.options.prefix, topic)?;
    let settings = topics::settings(inner, &names).await?;
    let mut pending = Vec::with_capacity(batch.len());
    for m in batch {
        let size = m.message.payload.len();
        if size > settings.max_message_bytes as usize {
            pending.push(Err(TransportError::refused(
                ErrorKind::TooLarge,
                format!(
                    "message of {size} bytes above the topic's max_message_bytes {}",
                    settings.max_message_bytes
                ),
            )
            .with_code("message_too_large")));
            continue;
        }
        if m.message.not_before_ms.is_some() {
            pending.push(Err(TransportError::refused(
                ErrorKind::Unsupported,
                "delayed publish (not_before_ms) is not built on Kafka",
            )));
            continue;
        }
        let headers = match record::encode(m) {
            Ok(h) => h,
            Err(e) => {
                pending.push(Err(e));
                continue;
            }
        };
        let mut r = FutureRecord::to(&names.kafka)
            .payload(&m.message.payload[..])
            .headers(headers);
        if let Some(key) = &m.message.key {
            r = r.key(&key[..]);
        }
        // Queued at once (the awaits come after the whole batch is queued); a full
        // queue sent nothing.
        pending.push(
            inner
                .producer
                .send_result(r)
                .map_err(|(e, _)| crate::error::produce(&e)),
        );
    }
    let mut answers = Vec::with_capacity(batch.len());
    for (m, p) in batch.iter().zip(pending) {
        answers.push(match p {
            Err(e) => Err(e),
            Ok(fut) => match fut.await {
                Err(_) => Err(TransportError::new(
                    ErrorKind::Unavailable,
                    Outcome::Unknown,
                    "the Kafka producer was closed before the delivery report",
                )),
                Ok(Ok(delivery)) => Ok(Published {
                    sequence: m.sequence,
                    position: Position::Offset {
                        partition: delivery.partition as u32,
                        offset: delivery.offset as u64,
                    },
                    duplicate: false,
                }),
                Ok(Err((e, _))) => Err(crate::error::produce(&e)),
            },
        });
    }
    Ok(answers)
}
