//! `POST /v1/topics/{topic}/groups/{group}/fetch`, `.../ack`, `.../nack`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use surety_broker::Delivery;
use surety_broker::topic::MAX_ACK_WAIT_MS;

use super::error::ApiError;
use super::json::ApiJson;
use super::messages::MessageJson;
use super::path::ApiPath;
use crate::state::AppState;

/// Most messages one fetch may ask for.
pub const MAX_FETCH: usize = 1000;
/// Longest a fetch may wait for messages: bounds how long shutdown waits for a poll.
pub const MAX_WAIT_MS: u64 = 30_000;
const DEFAULT_FETCH: usize = 10;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    pub max: Option<usize>,
    pub wait_ms: Option<u64>,
    /// Defaults to the topic's `ack_wait_ms`.
    pub lease_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct FetchResponse {
    pub messages: Vec<DeliveryJson>,
}

#[derive(Debug, Serialize)]
pub struct DeliveryJson {
    pub receipt: String,
    pub partition: u32,
    pub offset: u64,
    pub delivery_count: u32,
    pub lease_until_ms: u64,
    #[serde(flatten)]
    pub message: MessageJson,
}

impl From<Delivery> for DeliveryJson {
    fn from(d: Delivery) -> Self {
        Self {
            receipt: d.receipt,
            partition: d.partition,
            offset: d.message.offset,
            delivery_count: d.delivery_count,
            lease_until_ms: d.lease_until,
            message: d.message.into(),
        }
    }
}

fn check_range(field: &str, got: u64, min: u64, max: u64) -> Result<(), ApiError> {
    if (min..=max).contains(&got) {
        Ok(())
    } else {
        Err(ApiError::invalid_request(format!(
            "{field} must be between {min} and {max}, got {got}"
        )))
    }
}

pub async fn fetch(
    State(state): State<AppState>,
    ApiPath((topic, group)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<FetchRequest>,
) -> Result<Json<FetchResponse>, ApiError> {
    let max = req.max.unwrap_or(DEFAULT_FETCH);
    check_range("max", max as u64, 1, MAX_FETCH as u64)?;
    let wait_ms = req.wait_ms.unwrap_or(0);
    check_range("wait_ms", wait_ms, 0, MAX_WAIT_MS)?;
    if let Some(lease) = req.lease_ms {
        check_range("lease_ms", lease, 1, MAX_ACK_WAIT_MS)?;
    }
    let deliveries = state
        .broker
        .fetch(
            &topic,
            &group,
            max,
            Duration::from_millis(wait_ms),
            req.lease_ms.map(Duration::from_millis),
        )
        .await?;
    Ok(Json(FetchResponse {
        messages: deliveries.into_iter().map(Into::into).collect(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    pub receipts: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct AckResponse {
    pub acked: usize,
}

/// All or nothing: one bad receipt refuses the batch.
pub async fn ack(
    State(state): State<AppState>,
    ApiPath((topic, group)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<AckRequest>,
) -> Result<Json<AckResponse>, ApiError> {
    let acked = state.broker.ack(&topic, &group, &req.receipts).await?;
    crate::metrics::record_acked(acked);
    Ok(Json(AckResponse { acked }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NackRequest {
    pub receipts: Vec<String>,
    #[serde(default)]
    pub delay_ms: u64,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct NackResponse {
    pub nacked: usize,
}

/// All or nothing, like ack. Each message comes back after `max(delay_ms, backoff)`, or
/// goes to the dead letters at the topic's `max_deliveries`.
pub async fn nack(
    State(state): State<AppState>,
    ApiPath((topic, group)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<NackRequest>,
) -> Result<Json<NackResponse>, ApiError> {
    check_range("delay_ms", req.delay_ms, 0, MAX_ACK_WAIT_MS)?;
    let nacked = state
        .broker
        .nack(
            &topic,
            &group,
            &req.receipts,
            Duration::from_millis(req.delay_ms),
            &req.reason,
        )
        .await?;
    crate::metrics::record_nacked(nacked);
    Ok(Json(NackResponse { nacked }))
}
