//! `PUT /v1/topics/{topic}`, `GET /v1/topics`, `GET /v1/topics/{topic}`,
//! `DELETE /v1/topics/{topic}[?force=true]`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use surety_broker::{GroupInfo, TopicConfig, TopicConfigPatch, TopicDeleted, TopicInfo};
use surety_wire::rest;

use super::error::ApiError;
use super::json::OptionalJson;
use super::path::ApiPath;
use super::query::{ApiQuery, NoQuery};
use crate::state::AppState;

/// A group as REST shows it.
pub fn group_json(g: GroupInfo) -> rest::Group {
    let s = g.stats;
    rest::Group {
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

/// A topic as REST shows it; `config` is the broker's [`TopicConfig`] as it serializes.
pub fn topic_json(t: TopicInfo) -> rest::Topic {
    rest::Topic {
        name: t.name,
        partitions: t.end_offsets.len(),
        config: config_json(&t.config),
        end_offsets: t.end_offsets,
        start_offsets: t.start_offsets,
        groups: t.groups.into_iter().map(group_json).collect(),
        corrupt_segments: t
            .corrupt_segments
            .into_iter()
            .map(|s| rest::CorruptSegment {
                log: s.log.to_string(),
                segment: s
                    .corruption
                    .segment
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                position: s.corruption.position,
                offset: s.corruption.offset,
                detail: s.corruption.detail,
            })
            .collect(),
    }
}

/// A config is plain numbers, strings and structs: serializing it cannot fail.
fn config_json(config: &TopicConfig) -> serde_json::Value {
    serde_json::to_value(config).expect("a TopicConfig serializes to JSON")
}

/// Creates (201) or reconfigures (200) a topic; absent fields keep their value.
pub async fn put(
    State(state): State<AppState>,
    ApiPath(topic): ApiPath<String>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
    OptionalJson(patch): OptionalJson<TopicConfigPatch>,
) -> Result<(StatusCode, Json<rest::Topic>), ApiError> {
    let (info, created) = state.broker.put_topic(&topic, &patch).await?;
    let status = if created {
        tracing::info!(topic, "topic created");
        StatusCode::CREATED
    } else {
        tracing::info!(topic, "topic reconfigured");
        StatusCode::OK
    };
    Ok((status, Json(topic_json(info))))
}

pub async fn get(
    State(state): State<AppState>,
    ApiPath(topic): ApiPath<String>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
) -> Result<Json<rest::Topic>, ApiError> {
    Ok(Json(topic_json(state.broker.describe(&topic).await?)))
}

pub async fn list(
    State(state): State<AppState>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
) -> Result<Json<rest::TopicList>, ApiError> {
    let mut topics = Vec::new();
    for name in state.broker.topic_names() {
        match state.broker.describe(&name).await {
            Ok(info) => topics.push(topic_json(info)),
            // Deleted since `topic_names`: not in the list.
            Err(surety_broker::BrokerError::TopicNotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(rest::TopicList { topics }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    #[serde(default)]
    pub force: bool,
}

/// Deletes the topic with its messages, groups and dead letters; 409 `topic_busy` while a
/// group has unsettled messages or dead letters, unless `force=true`.
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(topic): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> Result<Json<rest::TopicDeleted>, ApiError> {
    let TopicDeleted {
        messages,
        groups,
        unsettled,
        dead_letters,
    } = state.broker.delete_topic(&topic, q.force).await?;
    Ok(Json(rest::TopicDeleted {
        topic,
        messages_dropped: messages,
        groups_dropped: groups,
        unsettled_dropped: unsettled,
        dead_letters_dropped: dead_letters,
    }))
}
