//! Shared by the in-process tests: a real broker on a temporary directory (no mocks),
//! wrapped as the transport.
// Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use surety_broker::topic::{BackoffConfigPatch, TopicConfigPatch};
use surety_broker::{Broker, BrokerOptions};
use surety_core::{Admin, TopicSpec};
use surety_embedded::InProcess;

pub struct Env {
    /// Kept for the broker's lifetime.
    pub dir: tempfile::TempDir,
    pub transport: Arc<InProcess>,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(dir.path(), BrokerOptions::default()).unwrap();
        Env {
            dir,
            transport: Arc::new(InProcess::new(broker)),
        }
    }

    pub fn broker(&self) -> &Broker {
        self.transport.broker()
    }

    /// A topic through the seam, then with immediate redelivery (the default backoff
    /// starts at 1 s, which only slows tests down).
    pub async fn topic(&self, name: &str, spec: TopicSpec) {
        self.transport.create_topic(name, &spec).await.unwrap();
        let no_backoff = TopicConfigPatch {
            retry_backoff: Some(BackoffConfigPatch {
                initial_ms: Some(0),
                jitter: Some(0.0),
                ..BackoffConfigPatch::default()
            }),
            ..TopicConfigPatch::default()
        };
        self.broker().put_topic(name, &no_backoff).await.unwrap();
    }

    /// The group's (lag, in flight, dead letters), zeros for a group not created yet.
    pub async fn group(&self, topic: &str, group: &str) -> (u64, u64, u64) {
        let info = self.transport.describe_topic(topic).await.unwrap();
        info.groups
            .iter()
            .find(|g| g.name == group)
            .map_or((0, 0, 0), |g| (g.lag, g.in_flight, g.dead_letters))
    }
}

/// Polls `check` until it holds, failing after 10 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
