//! `GET /v1/topics/{topic}/groups`, `GET|PUT|DELETE /v1/topics/{topic}/groups/{group}`,
//! `POST /v1/topics/{topic}/groups/{group}/seek`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_json::Value;
use surety_broker::{GroupDeleted, SeekOutcome, SeekTo};
use surety_wire::rest;

use super::error::ApiError;
use super::groups::start_at;
use super::json::{ApiJson, OptionalJson};
use super::path::ApiPath;
use super::query::{ApiQuery, NoQuery};
use super::topics::group_json;
use crate::state::AppState;

pub async fn list(
    State(state): State<AppState>,
    ApiPath(topic): ApiPath<String>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
) -> Result<Json<rest::GroupList>, ApiError> {
    let groups = state.broker.groups(&topic).await?;
    Ok(Json(rest::GroupList {
        groups: groups.into_iter().map(group_json).collect(),
    }))
}

/// One group, or 404 `group_not_found`.
pub async fn get(
    State(state): State<AppState>,
    ApiPath((topic, group)): ApiPath<(String, String)>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
) -> Result<Json<rest::Group>, ApiError> {
    Ok(Json(group_json(
        state.broker.group_info(&topic, &group).await?,
    )))
}

/// Creates the group at `start` (201), or leaves an existing one where it is (200; seek
/// moves groups).
pub async fn put(
    State(state): State<AppState>,
    ApiPath((topic, group)): ApiPath<(String, String)>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
    OptionalJson(req): OptionalJson<rest::CreateGroupRequest>,
) -> Result<(StatusCode, Json<rest::Group>), ApiError> {
    let (info, created) = state
        .broker
        .create_group(&topic, &group, start_at(req.start))
        .await?;
    let status = if created {
        tracing::info!(topic, group, start = ?req.start, "group created");
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(group_json(info))))
}

/// Deletes the group with its state and dead letters; answers what was dropped.
pub async fn delete(
    State(state): State<AppState>,
    ApiPath((topic, group)): ApiPath<(String, String)>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
) -> Result<Json<rest::GroupDeleted>, ApiError> {
    let GroupDeleted {
        unsettled,
        dead_letters,
    } = state.broker.delete_group(&topic, &group).await?;
    Ok(Json(rest::GroupDeleted {
        group,
        unsettled_dropped: unsettled,
        dead_letters_dropped: dead_letters,
    }))
}

/// `{"to": ...}`: `"earliest"`, `"latest"`, `{"partition":P,"offset":N}` or
/// `{"timestamp_ms":T}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeekRequest {
    pub to: SeekTarget,
}

/// A seek target. Anything else is a body of the wrong shape (`invalid_json`), with a
/// message listing the four forms; a partition the topic lacks is the broker's
/// `invalid_request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeekTarget(pub SeekTo);

const SEEK_FORMS: &str =
    r#""to" must be "earliest", "latest", {"partition":P,"offset":N} or {"timestamp_ms":T}"#;

impl<'de> Deserialize<'de> for SeekTarget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        seek_target(&v)
            .map(SeekTarget)
            .ok_or_else(|| de::Error::custom(format!("{SEEK_FORMS}, got {v}")))
    }
}

fn seek_target(v: &Value) -> Option<SeekTo> {
    match v {
        Value::String(s) if s == "earliest" => Some(SeekTo::Earliest),
        Value::String(s) if s == "latest" => Some(SeekTo::Latest),
        Value::Object(o) if o.len() == 2 => Some(SeekTo::Offset {
            partition: o.get("partition")?.as_u64()?.try_into().ok()?,
            offset: o.get("offset")?.as_u64()?,
        }),
        Value::Object(o) if o.len() == 1 => {
            Some(SeekTo::Timestamp(o.get("timestamp_ms")?.as_u64()?))
        }
        _ => None,
    }
}

fn seek_json(o: SeekOutcome) -> rest::Seek {
    rest::Seek {
        skipped: o.skipped,
        replayed: o.replayed,
        partitions: o
            .partitions
            .into_iter()
            .map(|p| rest::PartitionSeek {
                partition: p.partition,
                from: p.from,
                to: p.to,
                skipped: p.skipped,
                replayed: p.replayed,
            })
            .collect(),
    }
}

/// Moves an existing group (never creates one); counts what it passed over (`skipped`)
/// and what will be delivered again (`replayed`).
pub async fn seek(
    State(state): State<AppState>,
    ApiPath((topic, group)): ApiPath<(String, String)>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
    ApiJson(req): ApiJson<SeekRequest>,
) -> Result<Json<rest::Seek>, ApiError> {
    let outcome = state.broker.seek(&topic, &group, req.to.0).await?;
    Ok(Json(seek_json(outcome)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target(v: Value) -> Result<SeekTo, String> {
        serde_json::from_value::<SeekRequest>(json!({ "to": v }))
            .map(|r| r.to.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_four_seek_forms_and_nothing_else() {
        assert_eq!(target(json!("earliest")), Ok(SeekTo::Earliest));
        assert_eq!(target(json!("latest")), Ok(SeekTo::Latest));
        assert_eq!(
            target(json!({"partition": 1, "offset": 7})),
            Ok(SeekTo::Offset {
                partition: 1,
                offset: 7
            })
        );
        assert_eq!(target(json!({"timestamp_ms": 5})), Ok(SeekTo::Timestamp(5)));
        for bad in [
            json!("sideways"),
            json!(3),
            json!({"partition": 1}),
            json!({"partition": -1, "offset": 0}),
            json!({"partition": 4_294_967_296u64, "offset": 0}),
            json!({"offset": 0, "timestamp_ms": 1}),
            json!({"timestamp_ms": "now"}),
        ] {
            let e = target(bad.clone()).unwrap_err();
            assert!(e.contains("\"earliest\""), "{bad}: {e}");
        }
    }
}
