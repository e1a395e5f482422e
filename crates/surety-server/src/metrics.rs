//! `/metrics`: Prometheus text. Request counters are recorded as requests happen (REST
//! and gRPC call the `record_*` functions); the group and scrub figures are read from the
//! broker at each scrape, so they are never stale: levels as gauges, the broker's
//! monotonic totals as counters (`counter!(..).absolute(v)`). Every metric has a `# HELP` line
//! ([`describe`]); names and kinds: docs/metrics.md.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use surety_broker::{Broker, GroupInfo, PublishResult};

use crate::rest::ApiError;

/// The process-wide recorder: the `metrics` facade allows only one per process.
static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Fsync latency buckets, seconds: from NVMe (~50 µs) to a struggling disk (1 s).
const FSYNC_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];
/// Records per group commit: powers of two up to a large batch.
const RECORDS_PER_FSYNC: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0,
];

/// Gauges not set for this long are dropped from the output. Every gauge of ours is set at
/// each scrape, so only those of a deleted group or topic go: a deleted group's last lag
/// must not keep a "consumer stuck" alert firing.
const GAUGE_IDLE: Duration = Duration::from_secs(60);

fn build() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
        .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE))
        .set_buckets_for_metric(
            Matcher::Full("surety_log_fsync_seconds".into()),
            FSYNC_SECONDS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("surety_log_records_per_fsync".into()),
            RECORDS_PER_FSYNC,
        )?
        .set_buckets_for_metric(
            Matcher::Full("surety_consume_deliveries_per_fetch".into()),
            RECORDS_PER_FSYNC,
        )?
        .set_buckets_for_metric(
            Matcher::Full("surety_consume_receipts_per_settle".into()),
            RECORDS_PER_FSYNC,
        )?
        .install_recorder()
}

/// Installs the recorder on first use, and describes every metric; later calls get the
/// same handle.
pub fn install() -> Result<&'static PrometheusHandle, String> {
    HANDLE
        .get_or_init(|| {
            let handle = build().map_err(|e| e.to_string())?;
            describe();
            Ok(handle)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Group levels, set at each scrape: (name, help).
const GROUP_GAUGES: &[(&str, &str)] = &[
    (
        "surety_group_lag",
        "Messages the group has not acked or dead-lettered yet",
    ),
    (
        "surety_group_in_flight",
        "Messages leased to a consumer of the group now",
    ),
    (
        "surety_group_pending",
        "Messages waiting for a (re)delivery to the group",
    ),
    (
        "surety_group_dead_letters",
        "Messages in the group's dead-letter queue now",
    ),
];

/// Group totals from broker state (monotonic while the group exists): (name, help).
const GROUP_TOTALS: &[(&str, &str)] = &[
    (
        "surety_group_accepted_total",
        "Messages the group took on (accepted = acked + in_flight + pending + dead_lettered + expired_unsettled + skipped_by_seek)",
    ),
    ("surety_group_acked_total", "Messages the group acked"),
    (
        "surety_group_dead_lettered_total",
        "Messages moved to the group's dead letters",
    ),
    (
        "surety_group_redeliveries_total",
        "Deliveries to the group after a message's first",
    ),
    (
        "surety_group_expired_unsettled_total",
        "Messages retention deleted before the group settled them (topics that allow it)",
    ),
    (
        "surety_group_skipped_by_seek_total",
        "Unsettled messages a seek of the group passed over",
    ),
];

/// A `# HELP` line for every metric this process exports (the broker's log histograms
/// included).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "surety_published_messages_total",
        "Messages stored (duplicates not counted)"
    );
    describe_counter!(
        "surety_published_bytes_total",
        "Payload bytes of the messages stored"
    );
    describe_counter!(
        "surety_duplicates_total",
        "Publishes answered duplicate: a retry found its original"
    );
    describe_gauge!(
        "surety_dedupe_hits",
        "The broker's dedupe hits since it opened"
    );
    describe_counter!("surety_acked_total", "Acks that changed a message's state");
    describe_counter!(
        "surety_nacked_total",
        "Nacks that changed a message's state"
    );
    for &(name, help) in GROUP_GAUGES {
        describe_gauge!(name, help);
    }
    for &(name, help) in GROUP_TOTALS {
        describe_counter!(name, help);
    }
    describe_histogram!(
        "surety_log_fsync_seconds",
        "Time inside each fdatasync, every log of the broker"
    );
    describe_histogram!(
        "surety_log_records_per_fsync",
        "Records made durable by one group commit"
    );
    describe_histogram!(
        "surety_consume_deliveries_per_fetch",
        "Deliveries one Consume-stream fetch handed out"
    );
    describe_histogram!(
        "surety_consume_receipts_per_settle",
        "Receipts in one Ack or Nack of a Consume stream"
    );
    describe_counter!(
        "surety_scrub_bytes_total",
        "Bytes of sealed segments the background scrub CRC-checked"
    );
    describe_counter!(
        "surety_scrub_passes_total",
        "Scrub passes completed: every sealed segment of every log checked once"
    );
    describe_gauge!(
        "surety_scrub_corrupt_segments",
        "Segments of the log found damaged (by the scrub or a read) since the server started"
    );
}

/// Counts a publish: stored messages and their payload bytes, and duplicates.
/// `payload_sizes[i]` belongs to `results[i]`.
pub fn record_publish(topic: &str, results: &[PublishResult], payload_sizes: &[u64]) {
    let (mut stored, mut bytes, mut duplicates) = (0u64, 0u64, 0u64);
    for (r, size) in results.iter().zip(payload_sizes) {
        if r.duplicate {
            duplicates += 1;
        } else {
            stored += 1;
            bytes += size;
        }
    }
    let topic = topic.to_owned();
    metrics::counter!("surety_published_messages_total", "topic" => topic.clone())
        .increment(stored);
    metrics::counter!("surety_published_bytes_total", "topic" => topic.clone()).increment(bytes);
    metrics::counter!("surety_duplicates_total", "topic" => topic).increment(duplicates);
}

/// Deliveries one Consume-stream fetch handed out: small numbers under load mean a
/// journal commit and a response for a handful of messages each.
pub fn record_fetch_batch(n: usize) {
    metrics::histogram!("surety_consume_deliveries_per_fetch").record(n as f64);
}

/// Receipts in one Ack or Nack request of a Consume stream (one journal commit each).
pub fn record_settle_batch(n: usize) {
    metrics::histogram!("surety_consume_receipts_per_settle").record(n as f64);
}

/// Acks that changed state, REST or gRPC.
pub fn record_acked(topic: &str, group: &str, n: usize) {
    let labels = [("topic", topic.to_owned()), ("group", group.to_owned())];
    metrics::counter!("surety_acked_total", &labels).increment(n as u64);
}

/// Nacks that changed state, REST or gRPC.
pub fn record_nacked(topic: &str, group: &str, n: usize) {
    let labels = [("topic", topic.to_owned()), ("group", group.to_owned())];
    metrics::counter!("surety_nacked_total", &labels).increment(n as u64);
}

/// The exported value of each group total. A group deleted and created again under the
/// same name starts its totals at zero, but a Prometheus counter must not go down (and
/// `absolute` never lowers one): a total that went down continues from where the old
/// group's ended.
#[derive(Default)]
struct Totals {
    /// (topic, group, metric) -> (the broker's last value, what is added to it).
    seen: HashMap<(String, String, &'static str), (u64, u64)>,
}

impl Totals {
    fn exported(&mut self, topic: &str, group: &str, name: &'static str, value: u64) -> u64 {
        let entry = self
            .seen
            .entry((topic.to_owned(), group.to_owned(), name))
            .or_default();
        let (last, base) = entry;
        if value < *last {
            *base += *last;
        }
        *last = value;
        *base + value
    }
}

static TOTALS: OnceLock<Mutex<Totals>> = OnceLock::new();

fn group_totals(g: &GroupInfo) -> [u64; 6] {
    let s = &g.stats;
    [
        s.accepted,
        s.acked,
        s.dead_lettered,
        s.redeliveries,
        s.expired_unsettled,
        s.skipped_by_seek,
    ]
}

/// Sets the per-group and per-topic figures from the broker's current state.
async fn refresh_gauges(broker: &Broker) {
    for topic in broker.topic_names() {
        // A topic that failed or vanished since `topic_names` just has no gauges now.
        let Ok(info) = broker.describe(&topic).await else {
            continue;
        };
        for g in info.groups {
            let labels = [("topic", topic.clone()), ("group", g.name.clone())];
            let levels = [
                g.lag,
                g.stats.in_flight,
                g.stats.pending,
                g.dead_letters_live,
            ];
            for (&(name, _), value) in GROUP_GAUGES.iter().zip(levels) {
                metrics::gauge!(name, &labels).set(value as f64);
            }
            let mut totals = TOTALS.get_or_init(Default::default).lock().unwrap();
            for (&(name, _), value) in GROUP_TOTALS.iter().zip(group_totals(&g)) {
                let value = totals.exported(&topic, &g.name, name, value);
                metrics::counter!(name, &labels).absolute(value);
            }
        }
        if let Ok(d) = broker.dedupe_stats(&topic) {
            metrics::gauge!("surety_dedupe_hits", "topic" => topic.clone()).set(d.hits as f64);
        }
    }
    let scrub = broker.scrub_stats().await;
    metrics::counter!("surety_scrub_passes_total").absolute(scrub.passes);
    for l in scrub.logs {
        let labels = [("topic", l.topic), ("log", l.log.to_string())];
        metrics::counter!("surety_scrub_bytes_total", &labels).absolute(l.bytes_scrubbed);
        metrics::gauge!("surety_scrub_corrupt_segments", &labels).set(l.corrupt_segments as f64);
    }
}

/// `GET /metrics`.
pub async fn scrape(State(state): State<crate::state::AppState>) -> Response {
    let handle = match install() {
        Ok(h) => h,
        Err(e) => {
            return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e).into_response();
        }
    };
    refresh_gauges(&state.broker).await;
    // Without an exporter task, histogram upkeep is ours to run.
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recreated_group_continues_its_totals() {
        let mut t = Totals::default();
        assert_eq!(t.exported("t", "g", "x", 5), 5);
        assert_eq!(t.exported("t", "g", "x", 7), 7);
        // Deleted and created again: the broker starts over at 0.
        assert_eq!(t.exported("t", "g", "x", 0), 7);
        assert_eq!(t.exported("t", "g", "x", 2), 9);
        assert_eq!(t.exported("t", "h", "x", 1), 1);
    }
}
