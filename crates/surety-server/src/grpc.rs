//! gRPC service (placeholder until the proto service lands).

use crate::state::AppState;

/// The gRPC routes, to be merged into the server's router.
pub fn routes(_state: AppState) -> axum::Router {
    axum::Router::new()
}
