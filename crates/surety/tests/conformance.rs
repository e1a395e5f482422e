//! The conformance suite (crates/surety-conformance) against every transport:
//! `grpc` (a real `surety serve` child on a temp data dir; restarts are SIGKILL + restart
//! on the same dir; consumers and outbox relays die as SIGKILLed processes),
//! `in_process` (`surety_embedded::InProcess` over a `surety_broker::Broker` on a temp
//! dir; restarts close and reopen the broker; consumers and relays die as aborted tasks);
//! `nats` / `nats_2_9` (a real `nats-server` child per trial, 2.10+ with
//! `sync_interval: always` and the machine's 2.9; restarts are SIGKILL + restart on the
//! same store; consumers and relays die as SIGKILLed processes); and `redis`
//! (surety-redis on a `redis-server` of its own with `appendfsync always`, started by
//! scripts/redis-durable; restarts are SIGKILL + restart on the same AOF; consumers die
//! as SIGKILLed processes); `rabbitmq` (the machine's RabbitMQ, under a name prefix per
//! trial; no restarts); and `kafka` (librdkafka's MockCluster per trial, inside this
//! process; restarts are broker outages on the same in-memory data; consumers die as
//! SIGKILLed processes). Without a nats-server or redis-server binary those trials
//! are not registered and the reason is printed; under `CI=true` that fails instead.
//!
//! Each scenario is its own trial, `<transport>::<scenario>`:
//! `cargo nextest run -p surety --test conformance` (or `... nats::`), and
//! `cargo nextest list -p surety --test conformance` lists them. A harness of its own
//! (`harness = false`, libtest-mimic), so that this binary can also be the child consumer
//! (and NATS relay) that the fixtures start and SIGKILL (see `surety_conformance::child`).

mod common;
#[path = "conformance/grpc.rs"]
mod grpc;
#[path = "conformance/in_process.rs"]
mod in_process;
#[path = "conformance/kafka.rs"]
mod kafka;
#[path = "conformance/nats.rs"]
mod nats;
#[path = "conformance/rabbitmq.rs"]
mod rabbitmq;
#[path = "conformance/redis.rs"]
mod redis;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use surety_conformance::{Backend, BoxFuture, ChildConsumer, ChildRelay, Unsupported};
use surety_core::Transport;

/// A child consumer connects to its fixture's endpoint: a NATS, Redis or AMQP URL, or a
/// Surety server's.
fn connect_endpoint(endpoint: String) -> BoxFuture<'static, Arc<dyn Transport>> {
    if endpoint.starts_with("nats://") {
        nats::connect_endpoint(endpoint)
    } else if endpoint.starts_with("redis://") {
        redis::connect_endpoint(endpoint)
    } else if endpoint.starts_with("amqp://") {
        rabbitmq::connect_endpoint(endpoint)
    } else if endpoint.starts_with("kafka://") {
        kafka::connect_endpoint(endpoint)
    } else {
        grpc::connect_endpoint(endpoint)
    }
}

/// `base` with a name prefix of this trial's own (`prefix=conf<pid>-<nanos>-<n>`), for a
/// broker shared by trials running in parallel.
fn trial_url(base: &str) -> String {
    static TRIALS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = TRIALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let sep = if base.contains('?') { '&' } else { '?' };
    format!(
        "{base}{sep}prefix=conf{:x}-{nanos:x}-{n}",
        std::process::id()
    )
}

/// A child consumer of the fixture at `endpoint`: this test binary, re-executed.
fn spawn_consumer(spec: &ChildConsumer, endpoint: &str) -> Result<Child, Unsupported> {
    let exe = std::env::current_exe().map_err(|e| Unsupported(e.to_string()))?;
    spec.command(&exe, endpoint)
        .env("RUST_LOG", "warn")
        .spawn()
        .map_err(|e| Unsupported(format!("spawn {}: {e}", exe.display())))
}

/// `surety outbox relay --backend <backend>`, its stderr in the relay's log.
fn spawn_cli_relay(relay: &ChildRelay, backend: &str) -> Result<Child, Unsupported> {
    let bin = common::cli::BIN;
    let log = std::fs::File::create(&relay.log).map_err(|e| Unsupported(e.to_string()))?;
    Command::new(bin)
        .args(["outbox", "relay", "--database-url", &relay.database_url])
        .args(["--backend", backend, "--poll-interval-ms", "20"])
        .args(["--batch-size", &relay.batch_size.to_string()])
        .env("RUST_LOG", "info,sqlx=warn")
        .env_remove("SURETY_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| Unsupported(format!("spawn {bin}: {e}")))
}

fn main() {
    // A child consumer or relay re-executed by a fixture: runs until SIGKILLed.
    surety_conformance::child::run_if_child(connect_endpoint);
    nats::run_relay_if_child();
    let mut backends = vec![
        Backend::new("grpc", grpc::start),
        Backend::new("in_process", in_process::start),
    ];
    for (name, old, start) in [
        ("nats", false, nats::start as fn() -> _),
        ("nats_2_9", true, nats::start_2_9),
    ] {
        match nats::binary(old) {
            Ok(_) => backends.push(Backend::new(name, start)),
            Err(why) if surety_nats::server::required() => {
                panic!("{name}: {why} (required under CI=true)")
            }
            // stderr: stdout is the trial list nextest reads.
            Err(why) => eprintln!("SKIPPED {name}::*: {why}"),
        }
    }
    if redis::available() {
        backends.push(Backend::new("redis", redis::start));
    } else if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and no redis-server: the Redis conformance trials cannot run");
    } else {
        eprintln!("SKIPPED redis::*: no redis-server on this machine");
    }
    if rabbitmq::available().is_some() {
        backends.push(Backend::new("rabbitmq", rabbitmq::start));
    } else if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "CI=true and no RabbitMQ at 127.0.0.1:5672: the RabbitMQ conformance trials cannot run"
        );
    } else {
        eprintln!("SKIPPED rabbitmq::*: no RabbitMQ at 127.0.0.1:5672 (set SURETY_TEST_AMQP_URL)");
    }
    // librdkafka's MockCluster runs inside this process: always there.
    backends.push(Backend::new("kafka", kafka::start));
    // Opt-in (README): the same trials against a real Kafka-protocol broker.
    if kafka::broker_url().is_some() {
        backends.push(Backend::new("kafka_broker", kafka::start_broker));
    }
    surety_conformance::run(backends);
}
