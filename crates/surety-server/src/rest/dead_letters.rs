//! `GET .../dead-letters?limit=N&after=ID` (one page), `GET .../dead-letters/{id}`,
//! `POST .../dead-letters/resend`, `POST .../dead-letters/purge`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use surety_broker::{BrokerError, DeadLetter, DeadLetterPage, Selection, limits};
use surety_wire::rest;

use super::error::ApiError;
use super::json::ApiJson;
use super::messages::message_json;
use super::path::ApiPath;
use super::query::{ApiQuery, NoQuery};
use crate::state::AppState;

/// A dead letter as REST shows it.
fn dead_letter_json(d: DeadLetter) -> rest::DeadLetter {
    let mut message = message_json(d.message);
    rest::DeadLetter {
        message_id: message.id.take(),
        id: d.id,
        partition: d.partition,
        offset: d.offset,
        reason: d.reason,
        attempts: d.attempts,
        first_delivered_at_ms: d.first_delivered_at,
        last_delivered_at_ms: d.last_delivered_at,
        dead_lettered_at_ms: d.dead_lettered_at,
        message,
    }
}

/// `?limit=N&after=ID`: up to `limit` (1 to 1000, default 100) dead letters with ids
/// above `after`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<usize>,
    pub after: Option<u64>,
}

/// One page, a [`rest::DeadLetterPage`]: `{"dead_letters":[...],"next":ID or null}`; pass
/// `after=<next>` for the next.
///
/// The page is written as it is read: each dead letter is read from the queue, its JSON
/// appended to the answer, and the record dropped, so the answer (at most `limit` dead
/// letters, about [`limits::PAGE_BYTES`] of payload) is the only copy held.
pub async fn list(
    State(state): State<AppState>,
    ApiPath((topic, group)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(limits::DEFAULT_DEAD_LETTER_PAGE);
    let page = state
        .broker
        .dead_letter_page(&topic, &group, q.after, limit)
        .await?;
    // The reads are file reads: off the async workers.
    let body = match tokio::task::spawn_blocking(move || write_page(page)).await {
        Ok(body) => body?,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => {
            let e = BrokerError::ShuttingDown(format!("dead-letter listing stopped: {e}"));
            return Err(e.into());
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn write_page(mut page: DeadLetterPage) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    out.extend_from_slice(br#"{"dead_letters":["#);
    let mut first = true;
    for d in page.by_ref() {
        if !first {
            out.push(b',');
        }
        first = false;
        serde_json::to_writer(&mut out, &dead_letter_json(d?)).map_err(unserializable)?;
    }
    out.extend_from_slice(br#"],"next":"#);
    serde_json::to_writer(&mut out, &page.next_cursor()).map_err(unserializable)?;
    out.push(b'}');
    Ok(out)
}

/// Writing plain data into a Vec cannot fail; should it, say so.
fn unserializable(e: serde_json::Error) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

pub async fn get(
    State(state): State<AppState>,
    ApiPath((topic, group, id)): ApiPath<(String, String, String)>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
) -> Result<Json<rest::DeadLetter>, ApiError> {
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
        Some(d) => Ok(Json(dead_letter_json(d))),
        None => Err(absent()),
    }
}

/// `{"ids":[...]}` or `{"all":true}`, exactly one.
fn selection(req: rest::SelectionRequest) -> Result<Selection, ApiError> {
    match (req.ids, req.all) {
        (Some(ids), None) => Ok(Selection::Ids(ids)),
        (None, Some(true)) => Ok(Selection::All),
        _ => Err(ApiError::invalid_request(
            r#"give exactly one of "ids":[...] or "all":true"#,
        )),
    }
}

/// Puts dead letters back into this group's delivery only. Unknown ids are skipped.
pub async fn resend(
    State(state): State<AppState>,
    ApiPath((topic, group)): ApiPath<(String, String)>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
    ApiJson(req): ApiJson<rest::SelectionRequest>,
) -> Result<Json<rest::ResendResponse>, ApiError> {
    let which = selection(req)?;
    let resent = state.broker.resend(&topic, &group, &which).await?;
    tracing::info!(topic, group, resent, "dead letters resent");
    Ok(Json(rest::ResendResponse { resent }))
}

/// Deletes dead letters for good (counted in the group's `dead_letters_purged`).
pub async fn purge(
    State(state): State<AppState>,
    ApiPath((topic, group)): ApiPath<(String, String)>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
    ApiJson(req): ApiJson<rest::SelectionRequest>,
) -> Result<Json<rest::PurgeResponse>, ApiError> {
    let which = selection(req)?;
    let purged = state.broker.purge(&topic, &group, &which).await?;
    tracing::info!(topic, group, purged, "dead letters purged");
    Ok(Json(rest::PurgeResponse { purged }))
}
