//! What every request handler shares.

use std::sync::Arc;

use surety_broker::Broker;
use tokio::sync::watch;

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
    /// Turns true when the server begins to shut down, so long-lived streams (gRPC
    /// Consume) end and graceful shutdown does not wait for them forever.
    pub shutdown: Arc<watch::Sender<bool>>,
}

impl AppState {
    /// No auth, default message cap.
    pub fn new(broker: Broker) -> Self {
        Self {
            broker,
            tokens: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            shutdown: Arc::new(watch::channel(false).0),
        }
    }

    /// A receiver that sees the shutdown signal.
    pub fn shutting_down(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}
