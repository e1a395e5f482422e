//! `POST /v1/topics/{topic}/groups/{group}/fetch`, `.../ack`, `.../nack`. Every number
//! is bounded by `surety_broker::limits` (the broker checks them; fetch checks them again
//! before it may create a group, so a refused fetch changes nothing).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use surety_broker::{Delivery, StartAt, limits};
use surety_wire::rest;

use super::error::ApiError;
use super::json::ApiJson;
use super::messages::message_json;
use super::path::ApiPath;
use super::query::{ApiQuery, NoQuery};
use crate::settle::Batch;
use crate::state::AppState;

const DEFAULT_FETCH: usize = 10;

/// Where a new group starts, in broker terms.
pub fn start_at(s: rest::Start) -> StartAt {
    match s {
        rest::Start::Earliest => StartAt::Earliest,
        rest::Start::Latest => StartAt::Latest,
    }
}

/// A delivery as REST shows it.
fn delivery_json(d: Delivery) -> rest::Delivery {
    rest::Delivery {
        receipt: d.receipt,
        partition: d.partition,
        offset: d.message.offset,
        delivery_count: d.delivery_count,
        lease_until_ms: d.lease_until,
        message: message_json(d.message),
    }
}

pub async fn fetch(
    State(state): State<AppState>,
    ApiPath((topic, group)): ApiPath<(String, String)>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
    ApiJson(req): ApiJson<rest::FetchRequest>,
) -> Result<Json<rest::FetchResponse>, ApiError> {
    let max = req.max.unwrap_or(DEFAULT_FETCH);
    let wait_ms = req.wait_ms.unwrap_or(0);
    limits::check_fetch(max, wait_ms)?;
    if let Some(lease) = req.lease_ms {
        limits::check_lease_ms(lease)?;
    }
    if let Some(start) = req.start {
        state
            .broker
            .create_group(&topic, &group, start_at(start))
            .await?;
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
    Ok(Json(rest::FetchResponse {
        messages: deliveries.into_iter().map(delivery_json).collect(),
    }))
}

/// The refused receipts of an ack or nack: index in `receipts`, and why.
fn receipt_errors(batch: &Batch) -> Vec<rest::ReceiptError> {
    batch
        .errors
        .iter()
        .map(|(index, e)| rest::ReceiptError {
            index: *index,
            code: e.code().to_owned(),
            message: e.to_string(),
        })
        .collect()
}

/// Each receipt on its own (crate::settle): the valid ones are acked, the refused ones
/// listed; the request fails only when every receipt was refused.
pub async fn ack(
    State(state): State<AppState>,
    ApiPath((topic, group)): ApiPath<(String, String)>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
    ApiJson(req): ApiJson<rest::AckRequest>,
) -> Result<Json<rest::AckResponse>, ApiError> {
    let outcomes = state.broker.ack_each(&topic, &group, &req.receipts).await;
    let batch = outcomes.and_then(Batch::judge)?;
    crate::metrics::record_acked(&topic, &group, batch.applied);
    Ok(Json(rest::AckResponse {
        acked: batch.applied,
        errors: receipt_errors(&batch),
    }))
}

/// Each receipt on its own, like ack. Each message comes back after
/// `max(delay_ms, backoff)`, or goes to the dead letters at the topic's `max_deliveries`.
/// `delay_ms` and `reason` out of bounds refuse the whole request.
pub async fn nack(
    State(state): State<AppState>,
    ApiPath((topic, group)): ApiPath<(String, String)>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
    ApiJson(req): ApiJson<rest::NackRequest>,
) -> Result<Json<rest::NackResponse>, ApiError> {
    let outcomes = state
        .broker
        .nack_each(
            &topic,
            &group,
            &req.receipts,
            Duration::from_millis(req.delay_ms),
            &req.reason,
        )
        .await;
    let batch = outcomes.and_then(Batch::judge)?;
    crate::metrics::record_nacked(&topic, &group, batch.applied);
    Ok(Json(rest::NackResponse {
        nacked: batch.applied,
        errors: receipt_errors(&batch),
    }))
}
