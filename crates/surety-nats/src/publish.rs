//! Publishing: each message of a batch is one request to the topic's subject, all sent
//! at once (pipelined on the connection) and each answered by its own PubAck. A PubAck
//! with `duplicate: true` names the original's stream sequence: the server saw this
//! `Nats-Msg-Id` (producer id + sequence) inside the stream's `duplicate_window`.

use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::future::join_all;
use serde::Deserialize;
use surety_core::{Batch, ErrorKind, Outcome, Position, PublishAnswers, Published, TransportError};

use crate::api::{self, Failure, code};
use crate::headers;
use crate::transport::Inner;

/// A PubAck's body.
#[derive(Debug, Deserialize)]
struct PubAck {
    seq: u64,
    #[serde(default)]
    duplicate: bool,
}

/// One publish attempt of `batch` to `topic`.
pub(crate) async fn publish(
    inner: &Inner,
    topic: &str,
    batch: &Batch,
) -> Result<PublishAnswers, TransportError> {
    let names = inner.names(topic)?;
    let max_payload = inner.client.max_payload();
    let sends = batch.iter().map(|m| {
        let prepared = prepare(m, max_payload);
        let subject = names.subject.clone();
        async move {
            let (h, payload) = prepared?;
            send(inner, subject, h, payload, m.sequence).await
        }
    });
    let mut answers = join_all(sends).await;
    // No stream bound to the subject: the topic does not exist, or JetStream is not up
    // yet after a restart. The stream's own info tells them apart.
    if answers
        .iter()
        .any(|a| matches!(a, Err(e) if e.code.as_deref() == Some(NO_STREAM)))
    {
        let missing = matches!(
            inner
                .api
                .call::<serde_json::Value>(
                    &format!("STREAM.INFO.{}", names.stream),
                    &serde_json::json!({}),
                )
                .await,
            Err(f) if f.is(code::STREAM_NOT_FOUND)
        );
        for a in &mut answers {
            if let Err(e) = a
                && e.code.as_deref() == Some(NO_STREAM)
            {
                *e = if missing {
                    TransportError::refused(
                        ErrorKind::TopicNotFound,
                        format!("no topic {topic:?} (no stream {})", names.stream),
                    )
                    .with_code("topic_not_found")
                } else {
                    TransportError::unavailable(format!(
                        "stream {} did not answer the publish (JetStream starting?)",
                        names.stream
                    ))
                };
            }
        }
    }
    Ok(answers)
}

/// Marks a no-responders answer until the stream lookup decides what it means.
const NO_STREAM: &str = "nats_no_responders";

fn prepare(
    m: &surety_core::StampedMessage,
    max_payload: usize,
) -> Result<(HeaderMap, Bytes), TransportError> {
    if m.message.not_before_ms.is_some() {
        return Err(TransportError::refused(
            ErrorKind::Unsupported,
            "NATS JetStream cannot delay a publish (not_before_ms)",
        ));
    }
    if m.message.payload.len() > max_payload {
        return Err(too_large(m.message.payload.len(), max_payload));
    }
    let h = headers::encode(m)?;
    Ok((h, Bytes::copy_from_slice(&m.message.payload)))
}

fn too_large(len: usize, max: usize) -> TransportError {
    TransportError::refused(
        ErrorKind::TooLarge,
        format!("payload of {len} bytes is above the server's max_payload of {max}"),
    )
    .with_code("message_too_large")
}

async fn send(
    inner: &Inner,
    subject: String,
    h: HeaderMap,
    payload: Bytes,
    sequence: u64,
) -> Result<Published, TransportError> {
    let request = async_nats::Request::new()
        .headers(h)
        .payload(payload)
        .timeout(Some(inner.options.request_timeout));
    let answer = match inner.client.send_request(subject, request).await {
        Ok(a) => a,
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            return Err(
                TransportError::refused(ErrorKind::TopicNotFound, "no stream").with_code(NO_STREAM),
            );
        }
        Err(e) => return Err(api::request_error(&e, "publish")),
    };
    match api::decode::<PubAck>(&answer.payload, "publish") {
        Ok(ack) => Ok(Published {
            sequence,
            position: Position::StreamSeq(ack.seq),
            duplicate: ack.duplicate,
        }),
        Err(Failure::Api(e)) => Err(api::api_error(&e, "publish")),
        Err(Failure::Transport(mut e)) => {
            // An answer we cannot read may still mean it was stored.
            e.outcome = Outcome::Unknown;
            Err(e)
        }
    }
}
