//! The header names in which a backend carries the layer's data through a broker that
//! has no field for it (NATS JetStream, Redis Streams, RabbitMQ, Kafka). One list, so
//! that every backend writes — and every tool reads — the same names. The Surety broker
//! reserves the `surety.` prefix and keeps these in its own record format instead.

/// The producer id of a stamped message.
pub const PRODUCER: &str = "surety.producer";
/// Its producer sequence (decimal).
pub const SEQUENCE: &str = "surety.seq";
/// The message's own id ([`Message::id`](crate::Message::id)).
pub const ID: &str = "surety.id";
/// The key, where it is UTF-8 text a header can hold.
pub const KEY: &str = "surety.key";
/// The key, base64 (standard alphabet), where it is not.
pub const KEY_B64: &str = "surety.key.b64";
/// Deliveries before this copy was made (a dead letter's attempts; on a resend, the
/// attempts of the life that ended in the dead letters).
pub const ATTEMPTS: &str = "surety.attempts";
/// When the message was first delivered to the group (ms since the Unix epoch).
pub const FIRST_DELIVERED: &str = "surety.first-delivered";
/// When it was last delivered (ms since the Unix epoch).
pub const LAST_DELIVERED: &str = "surety.last-delivered";
/// When it was dead-lettered (ms since the Unix epoch).
pub const DEAD_LETTERED: &str = "surety.dead-lettered";
/// Why it was dead-lettered (the last handler error).
pub const REASON: &str = "surety.reason";
/// The group a dead letter died in, or that a resent message is for: every other
/// group acks it unrun.
pub const FOR_GROUP: &str = "surety.for-group";
/// Where the original was stored ([`Position`](crate::Position) text: `s17`, `0:17`, ...).
pub const ORIGIN: &str = "surety.origin";

/// The prefix of every name above: applications' headers may not use it.
pub const RESERVED_PREFIX: &str = "surety.";
