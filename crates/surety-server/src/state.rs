//! What every request handler shares.

use std::sync::Arc;

use surety_broker::Broker;

/// Shared by REST and gRPC handlers. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub broker: Broker,
    /// Accepted bearer tokens; `None` disables auth.
    pub tokens: Option<Arc<Vec<String>>>,
}
