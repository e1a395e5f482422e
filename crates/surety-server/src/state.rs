//! What every request handler shares.

use std::sync::Arc;

use surety_broker::Broker;

/// Default of `max_message_bytes`: the broker's default topic limit.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Shared by REST and gRPC handlers. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub broker: Broker,
    /// Accepted bearer tokens; `None` disables auth.
    pub tokens: Option<Arc<Vec<String>>>,
    /// Server-wide cap on one message (payload + key + headers), on top of each topic's
    /// own `max_message_bytes`.
    pub max_message_bytes: usize,
}

impl AppState {
    /// No auth, default message cap.
    pub fn new(broker: Broker) -> Self {
        Self {
            broker,
            tokens: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}
