//! The conformance suite (crates/surety-conformance) against Surety's own transports:
//! `grpc` (a real `surety serve` child on a temp data dir; restarts are SIGKILL + restart
//! on the same dir; consumers and outbox relays die as SIGKILLed processes) and
//! `in_process` (`surety_embedded::InProcess` over a `surety_broker::Broker` on a temp
//! dir; restarts close and reopen the broker; consumers and relays die as aborted tasks);
//! and `redis` (surety-redis on a `redis-server` of its own with `appendfsync always`,
//! started by scripts/redis-durable; restarts are SIGKILL + restart on the same AOF;
//! consumers die as SIGKILLed processes).
//!
//! Each scenario is its own trial, `<transport>::<scenario>`:
//! `cargo nextest run -p surety --test conformance` (or `... grpc::`), and
//! `cargo nextest list -p surety --test conformance` lists them. A harness of its own
//! (`harness = false`, libtest-mimic), so that this binary can also be the child consumer
//! that the gRPC fixture starts and SIGKILLs (see `surety_conformance::child`).

mod common;
#[path = "conformance/grpc.rs"]
mod grpc;
#[path = "conformance/in_process.rs"]
mod in_process;
#[path = "conformance/redis.rs"]
mod redis;

use std::sync::Arc;

use surety_conformance::{Backend, BoxFuture};
use surety_core::Transport;

/// A child consumer connects by its endpoint's scheme: `redis://` to the Redis fixture,
/// anything else to the gRPC one.
fn connect_endpoint(endpoint: String) -> BoxFuture<'static, Arc<dyn Transport>> {
    if endpoint.starts_with("redis://") {
        redis::connect_endpoint(endpoint)
    } else {
        grpc::connect_endpoint(endpoint)
    }
}

fn main() {
    // A child consumer re-executed by the gRPC fixture: runs until SIGKILLed.
    surety_conformance::child::run_if_child(connect_endpoint);
    let mut backends = vec![
        Backend::new("grpc", grpc::start),
        Backend::new("in_process", in_process::start),
    ];
    if redis::available() {
        backends.push(Backend::new("redis", redis::start));
    } else if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and no redis-server: the Redis conformance trials cannot run");
    } else {
        println!("SKIPPED redis::*: no redis-server on this machine");
    }
    surety_conformance::run(backends);
}
