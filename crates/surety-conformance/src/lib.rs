//! `surety-conformance`: the test kit every transport runs (issue 10, docs/seam.md §6).
//!
//! The same scenarios run against every transport, and each asserts what that
//! transport's declared [`Capabilities`](surety_core::Capabilities) promise — so a
//! transport that declares native publish dedupe must answer a retried batch
//! `duplicate: true` with the first positions, and one that declares a per-message lease
//! must not redeliver before it ran out. Scenario code is transport-neutral: it sees
//! only `surety-core` (and, for the outbox, `surety-outbox`) types, and reaches the
//! transport's server, processes and restarts through a [`TransportFixture`].
//!
//! | trial | what must hold |
//! |---|---|
//! | `s1_retried_batch_stored_once` | a batch sent twice (same stamps) is stored once, before and after a server restart |
//! | `s2_ack_after_handler` | in flight while the handler runs; an error redelivers no sooner than the nack delay with a rising count; nothing after `Ok` |
//! | `s3_dead_letters` | `max_deliveries` failures end as one dead letter (reason, attempts, times); resend reaches that group only; purge counts |
//! | `s4_consumer_killed_mid_handler` | a consumer killed (SIGKILL, or task abort) mid-handler loses nothing: back after the lease, count 2, lag 0 after its ack |
//! | `s5_no_gaps_under_kills_and_restarts` | one shared `GapDetector` sees no gap over a run with consumer kills, server restarts and publish retries |
//! | `s6_outbox_relay_exactly_once` | the outbox relay, killed repeatedly, stores every row once; the inbox applies each once under redelivery (Postgres) |
//! | `s7_bad_input_refused` | oversized, unknown topic, bad topic or group name: typed `Refused` errors, nothing stored |
//!
//! # Adding a transport
//!
//! Implement [`TransportFixture`] (start the server on fresh data, connect, restart,
//! how consumers die) and add one line to the runner,
//! `crates/surety/tests/conformance.rs` (a `harness = false` test target):
//!
//! ```ignore
//! surety_conformance::run(vec![
//!     Backend::new("grpc", grpc::start),
//!     Backend::new("nats", NatsFixture::start),   // <- the one line
//! ]);
//! ```
//!
//! Each scenario is then a trial `<transport>::<scenario>` that `cargo nextest` lists,
//! filters and runs on its own (`cargo nextest run -p surety --test conformance nats::`).
//! A step the fixture cannot do (no restart, no Postgres outside CI) prints why and the
//! trial passes, marked ignored where the whole scenario could not run; under `CI=true`
//! a missing Postgres fails instead.
//!
//! A fixture whose consumers die as processes ([`KillMode::Process`]) re-executes its
//! test binary as a child consumer: the runner's `main` must first call
//! [`child::run_if_child`] with a way to connect from an endpoint string.

pub mod child;
mod scenarios;
mod support;

use std::path::PathBuf;
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

pub use child::{ChildConsumer, Hold, Marker};
use libtest_mimic::{Arguments, Completion, Failed, Trial};
pub use surety_core::BoxFuture;
use surety_core::Transport;

/// A step this fixture cannot do, and why (printed; the step is skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a consumer dies in the kill scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillMode {
    /// A child process ([`TransportFixture::spawn_consumer`]), SIGKILLed.
    Process,
    /// A task in this process, aborted (its session dropped without a goodbye).
    Task,
}

/// An outbox relay to run as a child process (`surety outbox relay`, say).
#[derive(Debug, Clone)]
pub struct ChildRelay {
    /// The outbox database.
    pub database_url: String,
    /// Rows per claim (`--batch-size`).
    pub batch_size: usize,
    /// Where the child's stderr goes (shown when the scenario fails).
    pub log: PathBuf,
}

/// One transport under test: its server on fresh data, connections to it, and the
/// faults the scenarios inject. Dropping the fixture stops everything it started.
pub trait TransportFixture: Send + Sync + 'static {
    /// The transport's name in trial names: `grpc`, `in_process`, ...
    fn name(&self) -> &'static str;

    /// A new connection. It must survive [`restart_server`](Self::restart_server): calls
    /// during the outage fail as retryable, later ones reach the new server.
    fn connect(&self) -> BoxFuture<'_, Arc<dyn Transport>>;

    /// Stops the server abruptly (SIGKILL, or dropping the broker) and starts it again on
    /// the same data; returns once it serves again.
    fn restart_server(&self) -> BoxFuture<'_, Result<(), Unsupported>>;

    /// How consumers die in scenarios 4 and 5.
    fn consumer_kill(&self) -> KillMode;

    /// Starts a consumer process (for [`KillMode::Process`]); see [`ChildConsumer::command`].
    fn spawn_consumer(&self, spec: &ChildConsumer) -> Result<Child, Unsupported> {
        let _ = spec;
        Err(Unsupported(format!(
            "{} has no consumer process",
            self.name()
        )))
    }

    /// Starts an outbox relay process publishing through this transport (scenario 6
    /// under [`KillMode::Process`]); without one the relay runs as a task.
    fn spawn_relay(&self, relay: &ChildRelay) -> Result<Child, Unsupported> {
        let _ = relay;
        Err(Unsupported(format!("{} has no relay process", self.name())))
    }

    /// The Postgres database of scenario 6: `SURETY_TEST_PG`, else the machine's
    /// (`postgres://postgres@127.0.0.1:5432/test`).
    fn postgres_url(&self) -> String {
        std::env::var("SURETY_TEST_PG").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
    }
}

/// The machine's Postgres (trust auth, database `test`), as the other outbox tests use it.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// How a trial ended when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// The whole scenario could not run here (reason printed).
    Skipped(String),
}

type StartFn = fn() -> BoxFuture<'static, Arc<dyn TransportFixture>>;

/// A transport to run the suite against: its name and how to start a fixture (once per
/// trial, so trials share nothing and can run in parallel).
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    pub name: &'static str,
    pub start: StartFn,
}

impl Backend {
    pub fn new(name: &'static str, start: StartFn) -> Backend {
        Backend { name, start }
    }
}

type ScenarioFn = for<'a> fn(&'a dyn TransportFixture) -> BoxFuture<'a, Verdict>;

/// The scenarios, by trial name.
pub fn scenarios() -> Vec<(&'static str, ScenarioFn)> {
    scenarios::ALL.to_vec()
}

/// Longest a fixture may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest one scenario may take (they take seconds; this only bounds a hang).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(180);

/// The trials of one backend: `<backend>::<scenario>`.
pub fn trials(backend: Backend) -> Vec<Trial> {
    scenarios()
        .into_iter()
        .map(|(scenario, run)| {
            Trial::ignorable_test(format!("{}::{scenario}", backend.name), move || {
                run_trial(backend, scenario, run)
            })
        })
        .collect()
}

/// Runs every trial of `backends` as libtest does (filters, `--list`, `--exact`, ...) and
/// exits with its status.
pub fn run(backends: Vec<Backend>) -> ! {
    let args = Arguments::from_args();
    let trials = backends.into_iter().flat_map(trials).collect();
    libtest_mimic::run(&args, trials).exit()
}

fn run_trial(backend: Backend, scenario: &str, run: ScenarioFn) -> Result<Completion, Failed> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let verdict = rt.block_on(async {
        let fixture = tokio::time::timeout(START_TIMEOUT, (backend.start)())
            .await
            .map_err(|_| {
                format!(
                    "{} fixture did not start in {START_TIMEOUT:?}",
                    backend.name
                )
            })?;
        assert_eq!(fixture.name(), backend.name, "fixture name");
        let verdict = tokio::time::timeout(SCENARIO_TIMEOUT, run(&*fixture)).await;
        drop(fixture);
        verdict.map_err(|_| format!("{scenario} did not finish in {SCENARIO_TIMEOUT:?}"))
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    match verdict? {
        Verdict::Passed => Ok(Completion::Completed),
        Verdict::Skipped(reason) => {
            println!("SKIPPED {}::{scenario}: {reason}", backend.name);
            Ok(Completion::ignored_with(reason))
        }
    }
}
