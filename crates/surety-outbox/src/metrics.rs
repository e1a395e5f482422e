//! Metric names the relay records through the `metrics` facade. Install any recorder
//! (e.g. `metrics-exporter-prometheus`, as `surety outbox relay --metrics-listen` does)
//! to export them; [`describe`] gives each its help text.

/// Gauge: rows in state `pending` (claimed or not), sampled by the active relay every
/// `RelayConfig::maintenance_interval` (and by `relay::sample_pending`).
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

/// Every metric above with its help text (the `# HELP` line in Prometheus text).
pub const DESCRIPTIONS: &[(&str, &str)] = &[
    (
        PENDING_ROWS,
        "Outbox rows not yet published (state pending, claimed or not), sampled by the relay",
    ),
    (
        OLDEST_PENDING_AGE_SECONDS,
        "Age in seconds of the oldest pending outbox row (0 when none)",
    ),
    (
        PUBLISHED,
        "Outbox rows the broker confirmed (duplicate hits included)",
    ),
    (
        DUPLICATES,
        "Confirmations that were broker duplicate hits: rows published again after a relay died before marking them sent",
    ),
    (FAILURES, "Failed publish attempts, counted per row"),
    (
        DEAD,
        "Outbox rows marked dead (refused by the broker, or out of attempts)",
    ),
];

/// Describes every outbox metric to the installed recorder and registers the counters at
/// their current value (0 in a new process), so that a scrape shows them, with help
/// text, before the first row is relayed. Idempotent; [`crate::Relay::run`] calls it.
pub fn describe() {
    for &(name, help) in DESCRIPTIONS {
        if name == PENDING_ROWS || name == OLDEST_PENDING_AGE_SECONDS {
            metrics::describe_gauge!(name, help);
        } else {
            metrics::describe_counter!(name, help);
            metrics::counter!(name).increment(0);
        }
    }
}
