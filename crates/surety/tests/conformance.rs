//! The conformance suite (crates/surety-conformance) against Surety's own transports:
//! `grpc` (a real `surety serve` child on a temp data dir; restarts are SIGKILL + restart
//! on the same dir; consumers and outbox relays die as SIGKILLed processes) and
//! `in_process` (`surety_embedded::InProcess` over a `surety_broker::Broker` on a temp
//! dir; restarts close and reopen the broker; consumers and relays die as aborted tasks).
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

use surety_conformance::Backend;

fn main() {
    // A child consumer re-executed by the gRPC fixture: runs until SIGKILLed.
    surety_conformance::child::run_if_child(grpc::connect_endpoint);
    surety_conformance::run(vec![
        Backend::new("grpc", grpc::start),
        Backend::new("in_process", in_process::start),
    ]);
}
