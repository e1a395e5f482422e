//! `PUT /v1/topics/{topic}`, `GET /v1/topics`, `GET /v1/topics/{topic}`,
//! `DELETE /v1/topics/{topic}[?force=true]`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use surety_broker::{GroupInfo, TopicConfig, TopicConfigPatch, TopicDeleted, TopicInfo};

use super::error::ApiError;
use super::json::OptionalJson;
use super::path::ApiPath;
use super::query::{ApiQuery, NoQuery};
use crate::state::AppState;

/// A topic as REST shows it.
#[derive(Debug, Serialize)]
pub struct TopicJson {
    pub name: String,
    pub config: TopicConfig,
    pub partitions: usize,
    /// Per partition: one past the last durable offset.
    pub end_offsets: Vec<u64>,
    /// Per partition: the oldest offset still stored.
    pub start_offsets: Vec<u64>,
    pub groups: Vec<GroupJson>,
}

/// One consumer group: its lag, and the conservation counters summed over partitions
/// (`accepted = acked + in_flight + pending + dead_lettered + expired_unsettled +
/// skipped_by_seek`).
#[derive(Debug, Serialize)]
pub struct GroupJson {
    pub name: String,
    pub lag: u64,
    pub in_flight: u64,
    pub pending: u64,
    pub accepted: u64,
    pub acked: u64,
    pub dead_lettered: u64,
    pub expired_unsettled: u64,
    /// Unsettled messages a seek passed over.
    pub skipped_by_seek: u64,
    pub redeliveries: u64,
    /// Dead letters in the queue now.
    pub dead_letters: u64,
    pub dead_letters_purged: u64,
    pub dead_letters_resent: u64,
}

impl From<GroupInfo> for GroupJson {
    fn from(g: GroupInfo) -> Self {
        let s = g.stats;
        Self {
            name: g.name,
            lag: g.lag,
            in_flight: s.in_flight,
            pending: s.pending,
            accepted: s.accepted,
            acked: s.acked,
            dead_lettered: s.dead_lettered,
            expired_unsettled: s.expired_unsettled,
            skipped_by_seek: s.skipped_by_seek,
            redeliveries: s.redeliveries,
            dead_letters: g.dead_letters_live,
            dead_letters_purged: g.dead_letters_purged,
            dead_letters_resent: g.dead_letters_resent,
        }
    }
}

impl From<TopicInfo> for TopicJson {
    fn from(t: TopicInfo) -> Self {
        Self {
            name: t.name,
            partitions: t.end_offsets.len(),
            config: t.config,
            end_offsets: t.end_offsets,
            start_offsets: t.start_offsets,
            groups: t.groups.into_iter().map(GroupJson::from).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TopicList {
    pub topics: Vec<TopicJson>,
}

/// Creates (201) or reconfigures (200) a topic; absent fields keep their value.
pub async fn put(
    State(state): State<AppState>,
    ApiPath(topic): ApiPath<String>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
    OptionalJson(patch): OptionalJson<TopicConfigPatch>,
) -> Result<(StatusCode, Json<TopicJson>), ApiError> {
    let (info, created) = state.broker.put_topic(&topic, &patch).await?;
    let status = if created {
        tracing::info!(topic, "topic created");
        StatusCode::CREATED
    } else {
        tracing::info!(topic, "topic reconfigured");
        StatusCode::OK
    };
    Ok((status, Json(info.into())))
}

pub async fn get(
    State(state): State<AppState>,
    ApiPath(topic): ApiPath<String>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
) -> Result<Json<TopicJson>, ApiError> {
    Ok(Json(state.broker.describe(&topic).await?.into()))
}

pub async fn list(
    State(state): State<AppState>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
) -> Result<Json<TopicList>, ApiError> {
    let mut topics = Vec::new();
    for name in state.broker.topic_names() {
        match state.broker.describe(&name).await {
            Ok(info) => topics.push(info.into()),
            // Deleted since `topic_names`: not in the list.
            Err(surety_broker::BrokerError::TopicNotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(TopicList { topics }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Serialize)]
pub struct TopicDeletedJson {
    pub topic: String,
    pub messages_dropped: u64,
    pub groups_dropped: u64,
    pub unsettled_dropped: u64,
    pub dead_letters_dropped: u64,
}

/// Deletes the topic with its messages, groups and dead letters; 409 `topic_busy` while a
/// group has unsettled messages or dead letters, unless `force=true`.
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(topic): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> Result<Json<TopicDeletedJson>, ApiError> {
    let TopicDeleted {
        messages,
        groups,
        unsettled,
        dead_letters,
    } = state.broker.delete_topic(&topic, q.force).await?;
    Ok(Json(TopicDeletedJson {
        topic,
        messages_dropped: messages,
        groups_dropped: groups,
        unsettled_dropped: unsettled,
        dead_letters_dropped: dead_letters,
    }))
}
