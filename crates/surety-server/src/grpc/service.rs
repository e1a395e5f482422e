//! The `Surety` service: each RPC is a thin call into the broker.

use std::pin::Pin;

use surety_broker::{BrokerError, PublishMessage, TopicConfigPatch};
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::proto::{self, surety_server::Surety};
use super::status::{status_of, with_code};
use super::{consume, convert, dead_letters, publish_stream};
use crate::metrics;
use crate::state::AppState;

#[derive(Debug, Clone)]
pub(super) struct Service {
    state: AppState,
}

impl Service {
    pub(super) fn new(state: AppState) -> Self {
        Self { state }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<proto::ConsumeResponse, Status>> + Send>>;
type PublishResponseStream =
    Pin<Box<dyn Stream<Item = Result<proto::PublishStreamResponse, Status>> + Send>>;

/// One publish request, unary or on a stream: answered only once every new message is
/// durable.
pub(super) async fn publish(
    state: &AppState,
    req: proto::PublishRequest,
) -> Result<proto::PublishResponse, Status> {
    let messages: Vec<_> = req
        .messages
        .into_iter()
        .map(convert::publish_message)
        .collect();
    // All or nothing: one message over the server-wide cap refuses the batch.
    let max = state.max_message_bytes;
    let sizes = messages.iter().map(PublishMessage::size);
    if let Some((i, size)) = sizes.enumerate().find(|&(_, size)| size > max) {
        return Err(with_code(
            Code::InvalidArgument,
            "message_too_large",
            format!(
                "messages[{i}]: message of {size} bytes exceeds the server limit of {max} bytes"
            ),
        ));
    }
    let payload_sizes: Vec<u64> = messages.iter().map(|m| m.payload.len() as u64).collect();
    // Broker::publish is cancel-safe: a client that disconnects cannot strand it.
    let results = state
        .broker
        .publish(&req.topic, messages)
        .await
        .map_err(|e| status_of(&e))?;
    metrics::record_publish(&req.topic, &results, &payload_sizes);
    Ok(proto::PublishResponse {
        results: results.into_iter().map(convert::publish_result).collect(),
    })
}

#[tonic::async_trait]
impl Surety for Service {
    async fn publish(
        &self,
        request: Request<proto::PublishRequest>,
    ) -> Result<Response<proto::PublishResponse>, Status> {
        publish(&self.state, request.into_inner())
            .await
            .map(Response::new)
    }

    type PublishStreamStream = PublishResponseStream;

    async fn publish_stream(
        &self,
        request: Request<Streaming<proto::PublishStreamRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let stream = publish_stream::start(self.state.clone(), request.into_inner());
        Ok(Response::new(Box::pin(stream)))
    }

    type ConsumeStream = ResponseStream;

    async fn consume(
        &self,
        request: Request<Streaming<proto::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let stream = consume::start(
            self.state.broker.clone(),
            self.state.shutting_down(),
            request.into_inner(),
        )
        .await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create_topic(
        &self,
        request: Request<proto::CreateTopicRequest>,
    ) -> Result<Response<proto::TopicResponse>, Status> {
        let req = request.into_inner();
        let patch: TopicConfigPatch = if req.config_json.trim().is_empty() {
            TopicConfigPatch::default()
        } else {
            serde_json::from_str(&req.config_json)
                .map_err(|e| status_of(&BrokerError::InvalidConfig(e.to_string())))?
        };
        let (info, created) = self
            .state
            .broker
            .put_topic(&req.topic, &patch)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(convert::topic(info, created)))
    }

    async fn list_topics(
        &self,
        _request: Request<proto::ListTopicsRequest>,
    ) -> Result<Response<proto::ListTopicsResponse>, Status> {
        Ok(Response::new(proto::ListTopicsResponse {
            topics: self.state.broker.topic_names(),
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<proto::DescribeTopicRequest>,
    ) -> Result<Response<proto::TopicResponse>, Status> {
        let info = self
            .state
            .broker
            .describe(&request.into_inner().topic)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(convert::topic(info, false)))
    }

    async fn list_dead_letters(
        &self,
        request: Request<proto::ListDeadLettersRequest>,
    ) -> Result<Response<proto::DeadLetterPage>, Status> {
        dead_letters::list(&self.state, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn resend_dead_letters(
        &self,
        request: Request<proto::DeadLetterSelection>,
    ) -> Result<Response<proto::ResendResponse>, Status> {
        dead_letters::resend(&self.state, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn purge_dead_letters(
        &self,
        request: Request<proto::DeadLetterSelection>,
    ) -> Result<Response<proto::PurgeResponse>, Status> {
        dead_letters::purge(&self.state, request.into_inner())
            .await
            .map(Response::new)
    }
}
