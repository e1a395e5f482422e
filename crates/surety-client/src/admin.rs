//! Topic administration over gRPC.

use crate::client::Client;
use crate::proto;
use crate::server_error::ServerError;

/// A topic as the server describes it (configuration as JSON, offsets, groups).
pub type TopicDescription = proto::TopicResponse;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} failed: {source}")]
pub struct AdminError {
    pub op: &'static str,
    #[source]
    pub source: ServerError,
}

impl Client {
    /// Creates `topic`, or updates it, with a JSON `TopicConfigPatch` (`""` = defaults),
    /// e.g. `{"partitions":2,"max_deliveries":3}`.
    pub async fn create_topic(
        &self,
        topic: &str,
        config_json: &str,
    ) -> Result<TopicDescription, AdminError> {
        let req = proto::CreateTopicRequest {
            topic: topic.to_owned(),
            config_json: config_json.to_owned(),
        };
        let res = self.raw().create_topic(req).await;
        res.map(tonic::Response::into_inner)
            .map_err(|s| AdminError {
                op: "create topic",
                source: s.into(),
            })
    }

    pub async fn list_topics(&self) -> Result<Vec<String>, AdminError> {
        let res = self.raw().list_topics(proto::ListTopicsRequest {}).await;
        res.map(|r| r.into_inner().topics).map_err(|s| AdminError {
            op: "list topics",
            source: s.into(),
        })
    }

    pub async fn describe_topic(&self, topic: &str) -> Result<TopicDescription, AdminError> {
        let req = proto::DescribeTopicRequest {
            topic: topic.to_owned(),
        };
        let res = self.raw().describe_topic(req).await;
        res.map(tonic::Response::into_inner)
            .map_err(|s| AdminError {
                op: "describe topic",
                source: s.into(),
            })
    }
}
