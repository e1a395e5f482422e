//! `/metrics`: Prometheus text. Counters are recorded as requests happen (REST and gRPC
//! call the `record_*` functions); group gauges are read from the broker at each scrape,
//! so they are never stale.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use surety_broker::{Broker, PublishResult};

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

fn build() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
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

/// Installs the recorder on first use; later calls get the same handle.
pub fn install() -> Result<&'static PrometheusHandle, String> {
    HANDLE
        .get_or_init(|| build().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
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

pub fn record_acked(n: usize) {
    metrics::counter!("surety_acked_total").increment(n as u64);
}

pub fn record_nacked(n: usize) {
    metrics::counter!("surety_nacked_total").increment(n as u64);
}

/// Sets the per-group and per-topic gauges from the broker's current state.
async fn refresh_gauges(broker: &Broker) {
    for topic in broker.topic_names() {
        // A topic that failed or vanished since `topic_names` just has no gauges now.
        let Ok(info) = broker.describe(&topic).await else {
            continue;
        };
        for g in info.groups {
            let labels = [("topic", topic.clone()), ("group", g.name.clone())];
            let s = &g.stats;
            for (name, value) in [
                ("surety_group_lag", g.lag),
                ("surety_group_in_flight", s.in_flight),
                ("surety_group_dead_letters", g.dead_letters_live),
                ("surety_group_redeliveries", s.redeliveries),
                ("surety_group_accepted", s.accepted),
                ("surety_group_acked", s.acked),
                ("surety_group_pending", s.pending),
                ("surety_group_dead_lettered", s.dead_lettered),
                ("surety_group_expired_unsettled", s.expired_unsettled),
            ] {
                metrics::gauge!(name, &labels).set(value as f64);
            }
        }
        if let Ok(d) = broker.dedupe_stats(&topic) {
            metrics::gauge!("surety_dedupe_hits", "topic" => topic.clone()).set(d.hits as f64);
        }
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
