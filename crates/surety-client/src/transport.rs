//! Surety's gRPC transport: [`Client`] implements the `surety-core` seam. Publishing is
//! the pipelined `PublishStream` (`pipeline.rs`); a [`Session`] is one `Consume` stream,
//! whose settlements are commands answered on the stream by `request_id`.

use std::collections::{HashMap, VecDeque};
use std::sync::LazyLock;
use std::time::Duration;

use surety_core::surety;
use surety_core::{
    Admin, Batch, BoxFuture, Capabilities, Capable, Confirm, DeadLetterPage, ErrorKind, GroupInfo,
    PublishAnswers, Publisher, RequestId, Selection, Session, SessionEvent, Settle, SettleOutcome,
    Subscriber, Subscription, TopicInfo, TopicSpec, TransportError,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Code, Streaming};

use crate::client::Client;
use crate::convert;
use crate::proto::{self, consume_request::Kind as In, consume_response::Kind as Out};
use crate::server_error::ServerError;

/// A Surety server's capabilities (`surety_core::surety`, shared with the in-process
/// transport; docs/design.md, "The transport seam").
pub static CAPABILITIES: LazyLock<Capabilities> =
    LazyLock::new(|| surety::capabilities("surety-grpc"));

impl Capable for Client {
    fn capabilities(&self) -> &Capabilities {
        &CAPABILITIES
    }
}

impl Publisher for Client {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<PublishAnswers, TransportError>> {
        Box::pin(async move {
            let request = proto::PublishRequest {
                topic: topic.to_owned(),
                messages: batch.iter().map(convert::message_to_proto).collect(),
            };
            let response = self.pipeline.publish(request).await?;
            Ok(response
                .results
                .iter()
                .zip(batch.sequences())
                .map(|(r, sequence)| Ok(convert::published(r, sequence)))
                .collect())
        })
    }
}

impl Subscriber for Client {
    fn subscribe<'a>(
        &'a self,
        sub: &'a Subscription,
    ) -> BoxFuture<'a, Result<Box<dyn Session>, TransportError>> {
        Box::pin(async move {
            // Unbounded, so a command never waits on the server while it waits on us; it
            // holds at most a window's worth of settlements.
            let (tx, rx) = mpsc::unbounded_channel();
            let _ = tx.send(request(In::Subscribe(proto::Subscribe {
                topic: sub.topic.clone(),
                group: sub.group.clone(),
                credits: sub.credits,
                lease_ms: sub
                    .lease
                    .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX)),
            })));
            let responses = self
                .raw()
                .consume(UnboundedReceiverStream::new(rx))
                .await
                .map_err(crate::server_error::transport_error)?
                .into_inner();
            Ok(Box::new(GrpcSession {
                tx,
                responses,
                sizes: HashMap::new(),
                local: VecDeque::new(),
            }) as Box<dyn Session>)
        })
    }
}

fn request(kind: In) -> proto::ConsumeRequest {
    proto::ConsumeRequest { kind: Some(kind) }
}

/// One `Consume` stream.
struct GrpcSession {
    tx: mpsc::UnboundedSender<proto::ConsumeRequest>,
    responses: Streaming<proto::ConsumeResponse>,
    /// Receipts per settlement not answered yet: an answer lists only refusals.
    sizes: HashMap<RequestId, usize>,
    /// Answers this side gives itself, returned before the stream's.
    local: VecDeque<SessionEvent>,
}

impl GrpcSession {
    fn settled(&mut self, id: RequestId, errors: Vec<proto::Error>) -> SessionEvent {
        let n = self.sizes.remove(&id).unwrap_or(errors.len());
        let mut outcomes = vec![SettleOutcome::Applied; n];
        for e in errors {
            let index = e.index as usize;
            if let Some(slot) = outcomes.get_mut(index) {
                *slot = SettleOutcome::Refused(refusal(e));
            }
        }
        SessionEvent::Settled { id, outcomes }
    }
}

/// A refusal sent inside the stream.
fn refusal(e: proto::Error) -> TransportError {
    ServerError {
        grpc: Code::from_i32(e.grpc_status),
        code: Some(e.code),
        message: e.message,
    }
    .into()
}

impl Session for GrpcSession {
    fn next(&mut self) -> BoxFuture<'_, Result<SessionEvent, TransportError>> {
        Box::pin(async move {
            if let Some(event) = self.local.pop_front() {
                return Ok(event);
            }
            loop {
                // `Streaming::message` is cancel-safe: a dropped call loses no message.
                let kind = match self.responses.message().await {
                    Ok(Some(proto::ConsumeResponse { kind: Some(kind) })) => kind,
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        return Err(TransportError::unavailable("the server ended the stream"));
                    }
                    Err(status) => return Err(ServerError::broken_stream(status).into()),
                };
                return Ok(match kind {
                    Out::Deliveries(batch) => SessionEvent::Deliveries(
                        batch
                            .deliveries
                            .into_iter()
                            .map(convert::delivery)
                            .collect(),
                    ),
                    Out::AckResult(r) => self.settled(r.request_id, r.errors),
                    Out::NackResult(r) => self.settled(r.request_id, r.errors),
                    // The whole request was refused: every receipt with it.
                    Out::Error(e) => {
                        let id = e.request_id;
                        let n = self.sizes.remove(&id).unwrap_or(1);
                        let refused = refusal(e);
                        SessionEvent::Settled {
                            id,
                            outcomes: vec![SettleOutcome::Refused(refused); n],
                        }
                    }
                    Out::Drained(_) => SessionEvent::Drained,
                });
            }
        })
    }

    fn settle(&mut self, id: RequestId, settle: Settle) {
        let receipts = |r: Vec<surety_core::Receipt>| -> Vec<String> {
            r.iter().map(|r| r.as_str().to_owned()).collect()
        };
        self.sizes.insert(id, settle.receipts().len());
        let kind = match settle {
            Settle::Ack(r) => In::Ack(proto::Ack {
                request_id: id,
                receipts: receipts(r),
            }),
            Settle::Nack {
                receipts: r,
                delay,
                reason,
            } => In::Nack(proto::Nack {
                request_id: id,
                receipts: receipts(r),
                delay_ms: delay.as_millis().try_into().unwrap_or(u64::MAX),
                reason,
            }),
            Settle::DeadLetter { receipts: r, .. } => {
                // Not in the protocol (capabilities say `dead_letters.now = false`):
                // answered on this side, as the server would refuse it.
                self.sizes.remove(&id);
                let refused = TransportError::refused(
                    ErrorKind::Unsupported,
                    "a Surety server dead-letters at max_deliveries only",
                );
                self.local.push_back(SessionEvent::Settled {
                    id,
                    outcomes: vec![SettleOutcome::Refused(refused); r.len()],
                });
                return;
            }
        };
        let _ = self.tx.send(request(kind));
    }

    fn credit(&mut self, n: u32) {
        let _ = self.tx.send(request(In::Credit(proto::Credit { n })));
    }

    fn drain(&mut self) {
        let _ = self.tx.send(request(In::Drain(proto::Drain {})));
    }
}

impl Admin for Client {
    fn create_topic<'a>(
        &'a self,
        topic: &'a str,
        spec: &'a TopicSpec,
    ) -> BoxFuture<'a, Result<TopicInfo, TransportError>> {
        Box::pin(async move {
            let response = self
                .raw()
                .create_topic(proto::CreateTopicRequest {
                    topic: topic.to_owned(),
                    config_json: config_patch(spec),
                })
                .await
                .map_err(crate::server_error::transport_error)?;
            topic_info(response.into_inner())
        })
    }

    fn describe_topic<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<TopicInfo, TransportError>> {
        Box::pin(async move {
            let response = self
                .raw()
                .describe_topic(proto::DescribeTopicRequest {
                    topic: topic.to_owned(),
                })
                .await
                .map_err(crate::server_error::transport_error)?;
            topic_info(response.into_inner())
        })
    }

    fn list_topics(&self) -> BoxFuture<'_, Result<Vec<String>, TransportError>> {
        Box::pin(async move {
            let response = self
                .raw()
                .list_topics(proto::ListTopicsRequest {})
                .await
                .map_err(crate::server_error::transport_error)?;
            Ok(response.into_inner().topics)
        })
    }

    fn dead_letters<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        after: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<DeadLetterPage, TransportError>> {
        Box::pin(async move {
            let after = after.map(surety::dead_letter_id).transpose()?;
            let page = self
                .raw()
                .list_dead_letters(proto::ListDeadLettersRequest {
                    topic: topic.to_owned(),
                    group: group.to_owned(),
                    after,
                    limit,
                })
                .await
                .map_err(crate::server_error::transport_error)?
                .into_inner();
            Ok(DeadLetterPage {
                items: page
                    .dead_letters
                    .into_iter()
                    .map(convert::dead_letter)
                    .collect(),
                next: page.next.map(|n| n.to_string()),
            })
        })
    }

    fn resend<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        which: &'a Selection,
    ) -> BoxFuture<'a, Result<u64, TransportError>> {
        Box::pin(async move {
            let selection = selection(topic, group, which)?;
            let r = self
                .raw()
                .resend_dead_letters(selection)
                .await
                .map_err(crate::server_error::transport_error)?;
            Ok(r.into_inner().resent)
        })
    }

    fn purge<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        which: &'a Selection,
    ) -> BoxFuture<'a, Result<u64, TransportError>> {
        Box::pin(async move {
            let selection = selection(topic, group, which)?;
            let r = self
                .raw()
                .purge_dead_letters(selection)
                .await
                .map_err(crate::server_error::transport_error)?;
            Ok(r.into_inner().purged)
        })
    }
}

fn selection(
    topic: &str,
    group: &str,
    which: &Selection,
) -> Result<proto::DeadLetterSelection, TransportError> {
    let ids = surety::dead_letter_ids(which)?;
    Ok(proto::DeadLetterSelection {
        topic: topic.to_owned(),
        group: group.to_owned(),
        all: ids.is_none(),
        ids: ids.unwrap_or_default(),
    })
}

/// A `TopicConfigPatch` naming only what `spec` sets.
fn config_patch(spec: &TopicSpec) -> String {
    let mut patch = serde_json::Map::new();
    if let Some(n) = spec.partitions {
        patch.insert("partitions".into(), n.into());
    }
    if let Some(n) = spec.max_deliveries {
        patch.insert("max_deliveries".into(), n.into());
    }
    if let Some(d) = spec.ack_wait {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        patch.insert("ack_wait_ms".into(), ms.into());
    }
    if let Some(n) = spec.max_message_bytes {
        patch.insert("max_message_bytes".into(), n.into());
    }
    serde_json::Value::Object(patch).to_string()
}

fn topic_info(t: proto::TopicResponse) -> Result<TopicInfo, TransportError> {
    let config: serde_json::Value = serde_json::from_str(&t.config_json).map_err(|e| {
        TransportError::refused(
            ErrorKind::Protocol,
            format!("the server sent a topic configuration that is not JSON: {e}"),
        )
    })?;
    let number = |name: &str| config.get(name).and_then(serde_json::Value::as_u64);
    let confirm = match config.get("durability").and_then(|d| d.as_str()) {
        Some("none") => Confirm::PageCache { max_loss: None },
        _ => Confirm::FsyncedOnNode,
    };
    Ok(TopicInfo {
        name: t.topic,
        partitions: number("partitions").unwrap_or(1) as u32,
        max_deliveries: number("max_deliveries").unwrap_or(0) as u32,
        ack_wait: Duration::from_millis(number("ack_wait_ms").unwrap_or(0)),
        confirm,
        groups: t
            .groups
            .into_iter()
            .map(|g| GroupInfo {
                name: g.name,
                lag: g.lag,
                in_flight: g.in_flight,
                dead_letters: g.dead_letters,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_patches_only_what_it_names() {
        assert_eq!(config_patch(&TopicSpec::default()), "{}");
        let spec = TopicSpec {
            max_deliveries: Some(3),
            ack_wait: Some(Duration::from_millis(1500)),
            ..TopicSpec::default()
        };
        let patch: serde_json::Value = serde_json::from_str(&config_patch(&spec)).unwrap();
        assert_eq!(
            patch,
            serde_json::json!({"max_deliveries": 3, "ack_wait_ms": 1500})
        );
    }

    #[test]
    fn a_topic_description_says_what_its_confirm_means() {
        let described = |durability: &str| proto::TopicResponse {
            topic: "t".into(),
            config_json: format!(
                r#"{{"partitions":2,"max_deliveries":4,"ack_wait_ms":900,"durability":"{durability}"}}"#
            ),
            ..proto::TopicResponse::default()
        };
        let info = topic_info(described("fsync")).unwrap();
        assert_eq!(
            (info.partitions, info.max_deliveries, info.ack_wait),
            (2, 4, Duration::from_millis(900))
        );
        assert!(info.confirm.survives_power_loss());
        let info = topic_info(described("none")).unwrap();
        assert!(!info.confirm.survives_power_loss());
    }
}
