//! The REST API's JSON bodies (docs/design.md, "Interfaces"), shared by the server, which
//! writes them, and the CLI, which reads them: a field renamed here is renamed at both
//! ends, and `tests/rest_wire.rs` in surety-server reads real answers into these types.
//!
//! Plain data only: the server converts broker types into these (`surety-wire` depends on
//! neither axum nor the broker). Bytes are carried as a text field and its `_base64` twin,
//! exactly one set (`payload` / `payload_base64`, `key` / `key_base64`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

// Request bodies. The server refuses unknown fields; absent optional fields are left
// out when written.

/// `POST /v1/topics/{topic}/messages`: 1 to 10000 messages, stored all or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub messages: Vec<NewMessage>,
}

/// One message to publish: exactly one of `payload` / `payload_base64`; at most one of
/// `key` / `key_base64`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
}

/// Where a new group starts: `"earliest"` (the default) or `"latest"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    #[default]
    Earliest,
    Latest,
}

/// `PUT /v1/topics/{topic}/groups/{group}` (the body may be left out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    #[serde(default)]
    pub start: Start,
}

/// `POST .../fetch`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    /// Defaults to the topic's `ack_wait_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    /// Where the group starts if this fetch creates it; ignored if it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Start>,
}

/// `POST .../ack`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    pub receipts: Vec<String>,
}

/// `POST .../nack`: each message comes back after `max(delay_ms, backoff)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NackRequest {
    pub receipts: Vec<String>,
    #[serde(default)]
    pub delay_ms: u64,
    #[serde(default)]
    pub reason: String,
}

/// `POST .../dead-letters/resend|purge`: `{"ids":[...]}` or `{"all":true}`, exactly one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
}

// Answers.

/// Every error answer: `{"error":{"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// `code` is stable (docs/errors.md); `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// A topic (`GET|PUT /v1/topics/{topic}`, and each entry of [`TopicList`]).
///
/// `config` is the broker's `TopicConfig` as it serializes itself, kept as a
/// [`serde_json::Value`] rather than mirrored: this crate does not depend on the broker,
/// a mirror struct would have to follow every config field the broker adds, and its only
/// reader (the CLI) shows the config key by key whatever its keys are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topic {
    pub name: String,
    pub config: serde_json::Value,
    pub partitions: usize,
    /// Per partition: one past the last durable offset.
    pub end_offsets: Vec<u64>,
    /// Per partition: the oldest offset still stored.
    pub start_offsets: Vec<u64>,
    pub groups: Vec<Group>,
    /// Segments of the topic's logs found damaged (by a read or the scrub) since the
    /// server started: their damaged records are never served (`data_corrupt`), the rest
    /// is. Empty when all is well.
    #[serde(default)]
    pub corrupt_segments: Vec<CorruptSegment>,
}

/// A damaged segment of one of a topic's logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorruptSegment {
    /// Which log: `p<N>` (a partition), `journal`, or `dlq/<group>`.
    pub log: String,
    /// The segment file's name in that log's directory.
    pub segment: String,
    /// Byte position of the first damage found, and the offset it should have held.
    pub position: u64,
    pub offset: u64,
    pub detail: String,
}

/// One consumer group: its lag, and the conservation counters summed over partitions
/// (`accepted = acked + in_flight + pending + dead_lettered + expired_unsettled +
/// skipped_by_seek`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub lag: u64,
    pub in_flight: u64,
    pub pending: u64,
    pub accepted: u64,
    pub acked: u64,
    pub dead_lettered: u64,
    pub expired_unsettled: u64,
    /// Unsettled messages a seek passed over.
    pub skipped_by_seek: u64,
    pub redeliveries: u64,
    /// Dead letters in the queue now.
    pub dead_letters: u64,
    pub dead_letters_purged: u64,
    pub dead_letters_resent: u64,
}

impl Group {
    /// Whether the counters add up: `accepted = acked + in_flight + pending +
    /// dead_lettered + expired_unsettled + skipped_by_seek`.
    pub fn conserved(&self) -> bool {
        self.accepted
            == self.acked
                + self.in_flight
                + self.pending
                + self.dead_lettered
                + self.expired_unsettled
                + self.skipped_by_seek
    }
}

/// `GET /v1/topics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicList {
    pub topics: Vec<Topic>,
}

/// `GET /v1/topics/{topic}/groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupList {
    pub groups: Vec<Group>,
}

/// `DELETE /v1/topics/{topic}`: what went with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicDeleted {
    pub topic: String,
    pub messages_dropped: u64,
    pub groups_dropped: u64,
    pub unsettled_dropped: u64,
    pub dead_letters_dropped: u64,
}

/// `DELETE /v1/topics/{topic}/groups/{group}`: what went with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDeleted {
    pub group: String,
    pub unsettled_dropped: u64,
    pub dead_letters_dropped: u64,
}

/// `POST .../seek`: what the seek passed over (`skipped`) and what will be delivered
/// again (`replayed`), in all and per partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seek {
    pub skipped: u64,
    pub replayed: u64,
    pub partitions: Vec<PartitionSeek>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSeek {
    pub partition: u32,
    pub from: u64,
    pub to: u64,
    pub skipped: u64,
    pub replayed: u64,
}

/// `POST /v1/topics/{topic}/messages`: one result per message, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResponse {
    pub results: Vec<PublishResult>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResult {
    pub partition: u32,
    pub offset: u64,
    pub duplicate: bool,
}

/// Where a resent dead letter came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResentFrom {
    pub group: String,
    pub dead_letter_id: u64,
    pub prior_attempts: u32,
}

/// The user-visible parts of a stored message, flattened into fetch, peek and
/// dead-letter answers. Absent optional fields are left out, not `null`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    pub timestamp_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resent_from: Option<ResentFrom>,
}

/// `POST .../fetch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchResponse {
    pub messages: Vec<Delivery>,
}

/// One delivered message: its receipt (for ack / nack) and lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub receipt: String,
    pub partition: u32,
    pub offset: u64,
    pub delivery_count: u32,
    pub lease_until_ms: u64,
    #[serde(flatten)]
    pub message: Message,
}

/// One refused receipt of an ack or nack: its index in `receipts`, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptError {
    pub index: usize,
    pub code: String,
    pub message: String,
}

/// `POST .../ack`; `errors` is left out when every receipt was acked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckResponse {
    pub acked: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ReceiptError>,
}

/// `POST .../nack`; `errors` is left out when every receipt was nacked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NackResponse {
    pub nacked: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ReceiptError>,
}

/// `GET /v1/topics/{topic}/messages` (peek): `next_offset` is the `offset` of the next
/// page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeekResponse {
    pub messages: Vec<Peeked>,
    pub next_offset: u64,
    pub start_offset: u64,
    pub end_offset: u64,
}

/// A stored message as peek shows it: no receipt, no delivery count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peeked {
    pub partition: u32,
    pub offset: u64,
    #[serde(flatten)]
    pub message: Message,
}

/// A dead letter (`GET .../dead-letters/{id}`, and each entry of [`DeadLetterPage`]):
/// its own fields, the message's `id` as `message_id`, and the message's other fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: u64,
    pub partition: u32,
    pub offset: u64,
    pub reason: String,
    pub attempts: u32,
    pub first_delivered_at_ms: Option<u64>,
    pub last_delivered_at_ms: Option<u64>,
    pub dead_lettered_at_ms: u64,
    /// The message's own `id`, if it has one. Named apart from the dead letter's `id`
    /// (which `resend`, `purge` and `GET .../dead-letters/{id}` take): in one object the
    /// two would be one key twice, and a JSON reader keeps only the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The message; its `id` is always absent here (see `message_id`).
    #[serde(flatten)]
    pub message: Message,
}

/// `GET .../dead-letters`: one page; pass `after=<next>` for the next, `null` at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetter>,
    pub next: Option<u64>,
}

/// `POST .../dead-letters/resend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResendResponse {
    pub resent: usize,
}

/// `POST .../dead-letters/purge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeResponse {
    pub purged: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use serde_json::json;

    /// `value` reads into `T` and writes back as the same JSON.
    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
        value: serde_json::Value,
    ) {
        let typed: T = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), value);
        let again: T = serde_json::from_value(serde_json::to_value(&typed).unwrap()).unwrap();
        assert_eq!(again, typed);
    }

    fn group() -> serde_json::Value {
        json!({"name": "g", "lag": 1, "in_flight": 2, "pending": 3, "accepted": 6,
               "acked": 1, "dead_lettered": 0, "expired_unsettled": 0, "skipped_by_seek": 0,
               "redeliveries": 4, "dead_letters": 0, "dead_letters_purged": 5,
               "dead_letters_resent": 6})
    }

    fn topic() -> serde_json::Value {
        json!({"name": "t", "config": {"partitions": 2, "retention": {"max_age_ms": null}},
               "partitions": 2, "end_offsets": [3, 4], "start_offsets": [0, 1],
               "groups": [group()], "corrupt_segments": []})
    }

    fn message() -> serde_json::Map<String, serde_json::Value> {
        let m = json!({"key": "k", "headers": {"h": "v"}, "payload_base64": "/wA=",
                       "timestamp_ms": -1, "id": "i", "producer_id": "p", "sequence": 9,
                       "not_before_ms": 10,
                       "resent_from": {"group": "g", "dead_letter_id": 2, "prior_attempts": 3}});
        m.as_object().unwrap().clone()
    }

    fn with(
        fields: serde_json::Value,
        message: serde_json::Map<String, serde_json::Value>,
    ) -> serde_json::Value {
        let mut o = fields.as_object().unwrap().clone();
        o.extend(message);
        serde_json::Value::Object(o)
    }

    #[test]
    fn every_answer_round_trips() {
        round_trip::<ErrorBody>(json!({"error": {"code": "topic_not_found", "message": "no"}}));
        round_trip::<Group>(group());
        round_trip::<Topic>(topic());
        round_trip::<TopicList>(json!({"topics": [topic()]}));
        round_trip::<GroupList>(json!({"groups": [group()]}));
        round_trip::<TopicDeleted>(json!({"topic": "t", "messages_dropped": 1,
            "groups_dropped": 2, "unsettled_dropped": 3, "dead_letters_dropped": 4}));
        round_trip::<GroupDeleted>(
            json!({"group": "g", "unsettled_dropped": 3, "dead_letters_dropped": 4}),
        );
        round_trip::<Seek>(json!({"skipped": 1, "replayed": 2, "partitions": [
            {"partition": 0, "from": 5, "to": 0, "skipped": 1, "replayed": 2}]}));
        round_trip::<PublishResponse>(
            json!({"results": [{"partition": 1, "offset": 2, "duplicate": false}]}),
        );
        let delivery = with(
            json!({"receipt": "r", "partition": 0, "offset": 1, "delivery_count": 2,
                   "lease_until_ms": 3}),
            message(),
        );
        round_trip::<Delivery>(delivery.clone());
        round_trip::<FetchResponse>(json!({"messages": [delivery]}));
        // Only the required fields of a message: the optional ones stay absent.
        let bare = json!({"receipt": "r", "partition": 0, "offset": 1, "delivery_count": 1,
                          "lease_until_ms": 3, "headers": {}, "payload": "p",
                          "timestamp_ms": 5});
        round_trip::<Delivery>(bare);
        round_trip::<AckResponse>(json!({"acked": 2}));
        round_trip::<AckResponse>(json!({"acked": 0, "errors": [
            {"index": 1, "code": "receipt_stale", "message": "m"}]}));
        round_trip::<NackResponse>(json!({"nacked": 1}));
        round_trip::<NackResponse>(json!({"nacked": 1, "errors": [
            {"index": 0, "code": "receipt_invalid", "message": "m"}]}));
        let peeked = with(json!({"partition": 0, "offset": 7}), message());
        round_trip::<PeekResponse>(json!({"messages": [peeked], "next_offset": 8,
            "start_offset": 0, "end_offset": 8}));
        let letter = with(
            json!({"id": 1, "partition": 0, "offset": 2, "reason": "r", "attempts": 5,
                   "first_delivered_at_ms": 1, "last_delivered_at_ms": null,
                   "dead_lettered_at_ms": 3}),
            {
                // The dead letter's `id` and its message's `id` share one key (see
                // DeadLetter).
                let mut m = message();
                m.remove("id");
                m
            },
        );
        round_trip::<DeadLetter>(letter.clone());
        round_trip::<DeadLetterPage>(json!({"dead_letters": [letter], "next": 1}));
        round_trip::<DeadLetterPage>(json!({"dead_letters": [], "next": null}));
        round_trip::<ResendResponse>(json!({"resent": 3}));
        round_trip::<PurgeResponse>(json!({"purged": 3}));
    }

    #[test]
    fn every_request_round_trips() {
        round_trip::<PublishRequest>(json!({"messages": [
            {"payload": "p", "key_base64": "AP8=", "headers": {"h": "v"}, "id": "i",
             "producer_id": "p", "sequence": 1, "not_before_ms": 2},
            {"payload_base64": "/wA="}]}));
        round_trip::<CreateGroupRequest>(json!({"start": "latest"}));
        round_trip::<FetchRequest>(json!({"max": 1, "wait_ms": 2, "lease_ms": 3,
            "start": "earliest"}));
        round_trip::<FetchRequest>(json!({}));
        round_trip::<AckRequest>(json!({"receipts": ["a"]}));
        round_trip::<NackRequest>(json!({"receipts": ["a"], "delay_ms": 5, "reason": "r"}));
        round_trip::<SelectionRequest>(json!({"ids": [1, 2]}));
        round_trip::<SelectionRequest>(json!({"all": true}));
        assert!(serde_json::from_value::<AckRequest>(json!({"receipts": [], "x": 1})).is_err());
    }

    #[test]
    fn conservation() {
        let g: Group = serde_json::from_value(group()).unwrap();
        assert!(g.conserved());
        assert!(!Group { accepted: 1, ..g }.conserved());
    }
}
