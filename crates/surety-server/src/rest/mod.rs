//! The REST API under `/v1` (docs/design.md, "Interfaces"), one file per resource. Every
//! answer that is not a success is an [`ApiError`], including the framework's own
//! rejections (see [`json`], [`path`], [`query`], [`not_found`], [`method_not_allowed`]).

pub mod auth;
pub mod bytes;
pub mod dead_letters;
pub mod error;
pub mod group_admin;
pub mod groups;
pub mod json;
pub mod messages;
pub mod path;
pub mod query;
pub mod topics;

use axum::Router;
use axum::http::{Method, StatusCode, Uri};
use axum::routing::{get, post};

pub use error::ApiError;

use crate::state::AppState;

/// The `/v1` routes (without auth, fallbacks or body limit; the server adds those).
pub fn routes() -> Router<AppState> {
    const GROUP: &str = "/v1/topics/{topic}/groups/{group}";
    Router::new()
        .route("/v1/topics", get(topics::list))
        .route(
            "/v1/topics/{topic}",
            get(topics::get).put(topics::put).delete(topics::delete),
        )
        .route(
            "/v1/topics/{topic}/messages",
            post(messages::publish).get(messages::peek),
        )
        .route("/v1/topics/{topic}/groups", get(group_admin::list))
        .route(
            GROUP,
            get(group_admin::get)
                .put(group_admin::put)
                .delete(group_admin::delete),
        )
        .route(&format!("{GROUP}/seek"), post(group_admin::seek))
        .route(&format!("{GROUP}/fetch"), post(groups::fetch))
        .route(&format!("{GROUP}/ack"), post(groups::ack))
        .route(&format!("{GROUP}/nack"), post(groups::nack))
        .route(&format!("{GROUP}/dead-letters"), get(dead_letters::list))
        .route(
            &format!("{GROUP}/dead-letters/{{id}}"),
            get(dead_letters::get),
        )
        .route(
            &format!("{GROUP}/dead-letters/resend"),
            post(dead_letters::resend),
        )
        .route(
            &format!("{GROUP}/dead-letters/purge"),
            post(dead_letters::purge),
        )
}

/// Fallback for paths no route matches.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

/// For paths that exist, called with a method they do not take.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method}", uri.path()),
    )
}
