//! Between protobuf messages and broker types.

use surety_broker::{DeadLetter, Delivery, PublishMessage, PublishResult, TopicInfo};

use super::proto;

pub(super) fn publish_message(m: proto::Message) -> PublishMessage {
    PublishMessage {
        key: m.key,
        headers: m.headers.into_iter().collect(),
        payload: m.payload,
        id: m.id,
        producer_id: m.producer_id,
        sequence: m.sequence,
        not_before: m.not_before_ms,
    }
}

pub(super) fn publish_result(r: PublishResult) -> proto::PublishResult {
    proto::PublishResult {
        partition: r.partition,
        offset: r.offset,
        duplicate: r.duplicate,
    }
}

pub(super) fn delivery(d: Delivery) -> proto::Delivery {
    let m = d.message;
    proto::Delivery {
        receipt: d.receipt,
        partition: d.partition,
        offset: m.offset,
        delivery_count: d.delivery_count,
        key: m.key,
        headers: m.headers.into_iter().collect(),
        payload: m.payload,
        timestamp_ms: m.timestamp_ms,
        id: m.id,
        producer_id: m.producer_id,
        sequence: m.sequence,
        lease_until_ms: d.lease_until,
    }
}

/// A dead letter with its message; the message's own id becomes `message_id`, apart from
/// the dead letter's `id`.
pub(super) fn dead_letter(d: DeadLetter) -> proto::DeadLetter {
    let m = d.message;
    proto::DeadLetter {
        id: d.id,
        partition: d.partition,
        offset: d.offset,
        group: d.group,
        reason: d.reason,
        attempts: d.attempts,
        first_delivered_ms: d.first_delivered_at,
        last_delivered_ms: d.last_delivered_at,
        dead_lettered_ms: d.dead_lettered_at,
        payload: m.payload,
        key: m.key,
        headers: m.headers.into_iter().collect(),
        message_id: m.id,
        producer_id: m.producer_id,
        sequence: m.sequence,
        timestamp_ms: m.timestamp_ms,
    }
}

pub(super) fn topic(info: TopicInfo, created: bool) -> proto::TopicResponse {
    proto::TopicResponse {
        topic: info.name,
        // TopicConfig is plain data; serializing it cannot fail.
        config_json: serde_json::to_string(&info.config).unwrap_or_default(),
        end_offsets: info.end_offsets,
        start_offsets: info.start_offsets,
        groups: info
            .groups
            .into_iter()
            .map(|g| proto::GroupInfo {
                name: g.name,
                lag: g.lag,
                in_flight: g.stats.in_flight,
                acked: g.stats.acked,
                dead_letters: g.dead_letters_live,
                redeliveries: g.stats.redeliveries,
            })
            .collect(),
        created,
    }
}
