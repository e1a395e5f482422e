//! `POST /v1/topics/{topic}/messages` (publish), `GET /v1/topics/{topic}/messages`
//! (peek), and how a stored message looks in JSON (shared by fetch, peek and dead-letter
//! answers).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use surety_broker::{Peek, PublishMessage, PublishResult, StoredMessage, limits};
use surety_wire::rest;

use super::bytes;
use super::error::ApiError;
use super::json::ApiJson;
use super::path::ApiPath;
use super::query::{ApiQuery, NoQuery};
use crate::state::AppState;

fn publish_result_json(r: PublishResult) -> rest::PublishResult {
    rest::PublishResult {
        partition: r.partition,
        offset: r.offset,
        duplicate: r.duplicate,
    }
}

/// A message to publish in broker terms; exactly one of `payload` / `payload_base64`,
/// at most one of `key` / `key_base64`, and no larger than `max_bytes`.
fn into_publish(new: rest::NewMessage, max_bytes: usize) -> Result<PublishMessage, ApiError> {
    let payload = bytes::decode("payload", new.payload, new.payload_base64)?
        .ok_or_else(|| ApiError::invalid_message("give payload or payload_base64"))?;
    let m = PublishMessage {
        key: bytes::decode("key", new.key, new.key_base64)?,
        headers: new.headers,
        payload,
        id: new.id,
        producer_id: new.producer_id,
        sequence: new.sequence,
        not_before: new.not_before_ms,
    };
    let size = m.size();
    if size > max_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!("message of {size} bytes exceeds the server limit of {max_bytes} bytes"),
        ));
    }
    Ok(m)
}

/// Stores the batch (all or nothing: any invalid message refuses the whole batch) and
/// answers once every message is durable. The broker bounds the batch (1 to 10000
/// messages) and `not_before_ms`.
pub async fn publish(
    State(state): State<AppState>,
    ApiPath(topic): ApiPath<String>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
    ApiJson(req): ApiJson<rest::PublishRequest>,
) -> Result<Json<rest::PublishResponse>, ApiError> {
    let mut batch = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        let m = into_publish(m, state.max_message_bytes).map_err(|mut e| {
            e.message = format!("messages[{i}]: {}", e.message);
            e
        })?;
        batch.push(m);
    }
    let sizes: Vec<u64> = batch.iter().map(|m| m.payload.len() as u64).collect();
    // Broker::publish is cancel-safe: a client that disconnects cannot strand it.
    let results = state.broker.publish(&topic, batch).await?;
    crate::metrics::record_publish(&topic, &results, &sizes);
    Ok(Json(rest::PublishResponse {
        results: results.into_iter().map(publish_result_json).collect(),
    }))
}

/// The user-visible parts of a stored message, flattened into fetch, peek and
/// dead-letter answers.
pub fn message_json(m: StoredMessage) -> rest::Message {
    let (key, key_base64) = m.key.map(bytes::encode_owned).unwrap_or_default();
    let (payload, payload_base64) = bytes::encode_owned(m.payload);
    rest::Message {
        key,
        key_base64,
        headers: m.headers,
        payload,
        payload_base64,
        timestamp_ms: m.timestamp_ms,
        id: m.id,
        producer_id: m.producer_id,
        sequence: m.sequence,
        not_before_ms: m.not_before,
        resent_from: m.lineage.map(|l| rest::ResentFrom {
            group: l.group,
            dead_letter_id: l.dead_letter_id,
            prior_attempts: l.prior_attempts,
        }),
    }
}

/// `?partition=P&offset=O&limit=N`: all optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeekQuery {
    pub partition: Option<u32>,
    /// Default: the partition's oldest stored message.
    pub offset: Option<u64>,
    pub limit: Option<usize>,
}

fn peek_json(p: Peek) -> rest::PeekResponse {
    let partition = p.partition;
    rest::PeekResponse {
        messages: p
            .messages
            .into_iter()
            .map(|m| rest::Peeked {
                partition,
                offset: m.offset,
                message: message_json(m),
            })
            .collect(),
        next_offset: p.next_offset,
        start_offset: p.start_offset,
        end_offset: p.end_offset,
    }
}

/// Reads messages without delivering them: no lease, no delivery count, no group.
pub async fn peek(
    State(state): State<AppState>,
    ApiPath(topic): ApiPath<String>,
    ApiQuery(q): ApiQuery<PeekQuery>,
) -> Result<Json<rest::PeekResponse>, ApiError> {
    let limit = q.limit.unwrap_or(limits::DEFAULT_PEEK);
    let peek = state
        .broker
        .peek(&topic, q.partition.unwrap_or(0), q.offset, limit)
        .await?;
    Ok(Json(peek_json(peek)))
}
