//! Shared by the broker's integration tests: a data directory with an injected clock,
//! and small constructors for messages and topic settings.
// Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use surety_broker::topic::TopicConfigPatch;
use surety_broker::{Broker, BrokerOptions, PublishMessage};

pub const NO_WAIT: Duration = Duration::ZERO;

/// A temporary data directory and a clock the test moves by hand. Small segments (64
/// KiB) and compaction every 20 journal records, so both happen in small tests.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub clock: Arc<AtomicU64>,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
            clock: Arc::new(AtomicU64::new(1_000_000)),
        }
    }

    pub fn open(&self) -> Broker {
        let clock = self.clock.clone();
        Broker::open(
            self.dir.path(),
            BrokerOptions {
                clock: Arc::new(move || clock.load(Ordering::SeqCst)),
                segment_bytes: 1 << 16,
                compact_after_records: 20,
                ..BrokerOptions::default()
            },
        )
        .unwrap()
    }

    pub fn advance(&self, ms: u64) {
        self.clock.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }
}

pub fn msg(text: &str) -> PublishMessage {
    PublishMessage {
        payload: text.as_bytes().to_vec(),
        ..PublishMessage::default()
    }
}

pub fn patch(json: &str) -> TopicConfigPatch {
    serde_json::from_str(json).unwrap()
}
