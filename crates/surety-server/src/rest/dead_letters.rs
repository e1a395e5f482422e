//! `GET .../dead-letters`, `GET .../dead-letters/{id}`, `POST .../dead-letters/resend`,
//! `POST .../dead-letters/purge`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use surety_broker::{DeadLetter, Selection};

use super::error::ApiError;
use super::json::ApiJson;
use super::messages::MessageJson;
use super::path::ApiPath;
use crate::state::AppState;

#[derive(Debug, Serialize)]
pub struct DeadLetterJson {
    pub id: u64,
    pub partition: u32,
    pub offset: u64,
    pub reason: String,
    pub attempts: u32,
    pub first_delivered_at_ms: Option<u64>,
    pub last_delivered_at_ms: Option<u64>,
    pub dead_lettered_at_ms: u64,
    #[serde(flatten)]
    pub message: MessageJson,
}

impl From<DeadLetter> for DeadLetterJson {
    fn from(d: DeadLetter) -> Self {
        Self {
            id: d.id,
            partition: d.partition,
            offset: d.offset,
            reason: d.reason,
            attempts: d.attempts,
            first_delivered_at_ms: d.first_delivered_at,
            last_delivered_at_ms: d.last_delivered_at,
            dead_lettered_at_ms: d.dead_lettered_at,
            message: d.message.into(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DeadLetterList {
    pub dead_letters: Vec<DeadLetterJson>,
}

pub async fn list(
    State(state): State<AppState>,
    ApiPath((topic, group)): ApiPath<(String, String)>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let dead_letters = state.broker.dead_letters(&topic, &group).await?;
    Ok(Json(DeadLetterList {
        dead_letters: dead_letters.into_iter().map(Into::into).collect(),
    }))
}

pub async fn get(
    State(state): State<AppState>,
    ApiPath((topic, group, id)): ApiPath<(String, String, String)>,
) -> Result<Json<DeadLetterJson>, ApiError> {
    let absent = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "dead_letter_not_found",
            format!("group {group:?} of topic {topic:?} has no dead letter {id:?}"),
        )
    };
    // Ids are whole numbers; anything else names no dead letter.
    let Ok(n) = id.parse::<u64>() else {
        return Err(absent());
    };
    match state.broker.dead_letter(&topic, &group, n).await? {
        Some(d) => Ok(Json(d.into())),
        None => Err(absent()),
    }
}

/// `{"ids":[...]}` or `{"all":true}`, exactly one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionRequest {
    pub ids: Option<Vec<u64>>,
    pub all: Option<bool>,
}

impl SelectionRequest {
    fn selection(self) -> Result<Selection, ApiError> {
        match (self.ids, self.all) {
            (Some(ids), None) => Ok(Selection::Ids(ids)),
            (None, Some(true)) => Ok(Selection::All),
            _ => Err(ApiError::invalid_request(
                r#"give exactly one of "ids":[...] or "all":true"#,
            )),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ResendResponse {
    pub resent: usize,
}

#[derive(Debug, Serialize)]
pub struct PurgeResponse {
    pub purged: usize,
}

/// Puts dead letters back into this group's delivery only. Unknown ids are skipped.
pub async fn resend(
    State(state): State<AppState>,
    ApiPath((topic, group)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<SelectionRequest>,
) -> Result<Json<ResendResponse>, ApiError> {
    let which = req.selection()?;
    let resent = state.broker.resend(&topic, &group, &which).await?;
    tracing::info!(topic, group, resent, "dead letters resent");
    Ok(Json(ResendResponse { resent }))
}

/// Deletes dead letters for good (counted in the group's `dead_letters_purged`).
pub async fn purge(
    State(state): State<AppState>,
    ApiPath((topic, group)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<SelectionRequest>,
) -> Result<Json<PurgeResponse>, ApiError> {
    let which = req.selection()?;
    let purged = state.broker.purge(&topic, &group, &which).await?;
    tracing::info!(topic, group, purged, "dead letters purged");
    Ok(Json(PurgeResponse { purged }))
}
