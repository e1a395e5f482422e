//! Between the broker's types and the seam's. Plain copies: both sides keep headers as a
//! `BTreeMap`, and the broker's stamps are the core's stamps.

use std::time::Duration;

use surety_broker::topic::DurabilityConfig;
use surety_broker::{PublishMessage, PublishResult, StoredMessage, TopicConfigPatch};
use surety_core::{
    Confirm, DeadLetter, Delivery, GroupInfo, Position, Published, Receipt, StampedMessage,
    TopicInfo, TopicSpec,
};

pub(crate) fn publish_message(m: &StampedMessage) -> PublishMessage {
    let msg = &m.message;
    PublishMessage {
        key: msg.key.clone(),
        headers: msg.headers.clone(),
        payload: msg.payload.clone(),
        id: msg.id.clone(),
        producer_id: Some(m.producer_id.to_string()),
        sequence: Some(m.sequence),
        not_before: msg.not_before_ms,
    }
}

pub(crate) fn published(sequence: u64, r: PublishResult) -> Published {
    Published {
        sequence,
        position: Position::Offset {
            partition: r.partition,
            offset: r.offset,
        },
        duplicate: r.duplicate,
    }
}

pub(crate) fn delivery(d: surety_broker::Delivery) -> Delivery {
    let m = d.message;
    Delivery {
        receipt: Receipt::from(d.receipt),
        position: Position::Offset {
            partition: d.partition,
            offset: m.offset,
        },
        partition: d.partition,
        delivery_count: d.delivery_count,
        // The broker tracks it, but a delivery does not carry it (nor does gRPC's).
        first_delivered_ms: None,
        lease_until_ms: Some(d.lease_until),
        timestamp_ms: m.timestamp_ms,
        key: m.key,
        headers: m.headers,
        payload: m.payload,
        id: m.id,
        producer_id: m.producer_id,
        sequence: m.sequence,
    }
}

pub(crate) fn dead_letter(d: surety_broker::DeadLetter) -> DeadLetter {
    let StoredMessage {
        key,
        headers,
        payload,
        id,
        producer_id,
        sequence,
        ..
    } = d.message;
    DeadLetter {
        id: d.id.to_string(),
        group: d.group,
        reason: d.reason,
        attempts: d.attempts,
        first_delivered_ms: d.first_delivered_at,
        last_delivered_ms: d.last_delivered_at,
        dead_lettered_ms: d.dead_lettered_at,
        origin: Position::Offset {
            partition: d.partition,
            offset: d.offset,
        },
        payload,
        key,
        headers,
        message_id: id,
        producer_id,
        sequence,
    }
}

/// Only the settings `spec` names; the rest keep their value (the default for a new
/// topic), as a REST `PUT /v1/topics/{topic}` or a gRPC `CreateTopic` with those fields.
pub(crate) fn topic_patch(spec: &TopicSpec) -> TopicConfigPatch {
    TopicConfigPatch {
        partitions: spec.partitions,
        max_deliveries: spec.max_deliveries,
        ack_wait_ms: spec
            .ack_wait
            .map(|d| d.as_millis().try_into().unwrap_or(u64::MAX)),
        max_message_bytes: spec.max_message_bytes,
        ..TopicConfigPatch::default()
    }
}

/// What a confirm means on a topic of this durability.
pub(crate) fn confirm(durability: DurabilityConfig) -> Confirm {
    match durability {
        DurabilityConfig::Fsync => Confirm::FsyncedOnNode,
        // Written to the OS, not synced: survives a process kill, not a power loss; the
        // OS decides when it is flushed.
        DurabilityConfig::None => Confirm::PageCache { max_loss: None },
    }
}

pub(crate) fn topic_info(info: surety_broker::TopicInfo) -> TopicInfo {
    let c = &info.config;
    TopicInfo {
        partitions: c.partitions,
        max_deliveries: c.max_deliveries,
        ack_wait: Duration::from_millis(c.ack_wait_ms),
        confirm: confirm(c.durability),
        groups: info
            .groups
            .into_iter()
            .map(|g| GroupInfo {
                name: g.name,
                lag: g.lag,
                in_flight: g.stats.in_flight,
                dead_letters: g.dead_letters_live,
            })
            .collect(),
        name: info.name,
    }
}
