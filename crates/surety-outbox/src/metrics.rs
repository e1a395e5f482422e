//! Metric names the relay records through the `metrics` facade. Install any recorder
//! (e.g. `metrics-exporter-prometheus`) to export them.

/// Gauge: rows in state `pending` (claimed or not), sampled every `metrics_interval`.
pub const PENDING_ROWS: &str = "surety_outbox_pending_rows";
/// Gauge: age in seconds of the oldest pending row (0 when none).
pub const OLDEST_PENDING_AGE_SECONDS: &str = "surety_outbox_oldest_pending_age_seconds";
/// Counter: rows the broker confirmed (stored now, or found stored before).
pub const PUBLISHED: &str = "surety_outbox_published_total";
/// Counter: confirmations that were broker-side duplicate hits (a row published again
/// after a relay died between publish and mark-sent).
pub const DUPLICATES: &str = "surety_outbox_duplicates_total";
/// Counter: failed publish attempts, per row.
pub const FAILURES: &str = "surety_outbox_publish_failures_total";
/// Counter: rows marked `dead`.
pub const DEAD: &str = "surety_outbox_dead_total";
