//! The one place core types become protobuf messages and back.

use surety_core::{Delivery, Position, Published, Receipt, StampedMessage};

use crate::proto;

/// A copy per attempt, like every transport that owns its request bytes.
pub(crate) fn message_to_proto(m: &StampedMessage) -> proto::Message {
    proto::Message {
        payload: m.message.payload.clone(),
        key: m.message.key.clone(),
        headers: m
            .message
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        id: m.message.id.clone(),
        producer_id: Some(m.producer_id.to_string()),
        sequence: Some(m.sequence),
        not_before_ms: m.message.not_before_ms,
    }
}

pub(crate) fn published(r: &proto::PublishResult, sequence: u64) -> Published {
    Published {
        sequence,
        position: Position::Offset {
            partition: r.partition,
            offset: r.offset,
        },
        duplicate: r.duplicate,
    }
}

pub(crate) fn delivery(d: proto::Delivery) -> Delivery {
    Delivery {
        receipt: Receipt::from(d.receipt),
        position: Position::Offset {
            partition: d.partition,
            offset: d.offset,
        },
        partition: d.partition,
        delivery_count: d.delivery_count,
        first_delivered_ms: None,
        lease_until_ms: Some(d.lease_until_ms),
        timestamp_ms: d.timestamp_ms,
        key: d.key,
        headers: d.headers.into_iter().collect(),
        payload: d.payload,
        id: d.id,
        producer_id: d.producer_id,
        sequence: d.sequence,
    }
}

pub(crate) fn dead_letter(d: proto::DeadLetter) -> surety_core::DeadLetter {
    surety_core::DeadLetter {
        id: d.id.to_string(),
        group: d.group,
        reason: d.reason,
        attempts: d.attempts,
        first_delivered_ms: d.first_delivered_ms,
        last_delivered_ms: d.last_delivered_ms,
        dead_lettered_ms: d.dead_lettered_ms,
        origin: Position::Offset {
            partition: d.partition,
            offset: d.offset,
        },
        payload: d.payload,
        key: d.key,
        headers: d.headers.into_iter().collect(),
        message_id: d.message_id,
        producer_id: d.producer_id,
        sequence: d.sequence,
    }
}
