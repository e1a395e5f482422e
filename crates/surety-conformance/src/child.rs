//! The consumer that runs as a child process, to be SIGKILLed mid-handler (scenarios 4
//! and 5 under [`KillMode::Process`](crate::KillMode::Process)).
//!
//! A fixture starts it by re-executing its own test binary with [`ChildConsumer::command`]:
//! the spec travels in environment variables, which the runner's `main` reads first
//! ([`run_if_child`]) before any test harness runs. The child connects to the endpoint
//! with the fixture's own connect function and runs a plain
//! [`Consumer`](surety_core::Consumer) whose handler first appends a [`Marker`] line to
//! the log file (one `write` per line, so a kill never leaves half a line that looks
//! whole), then holds the delivery as [`Hold`] says. The parent reads the markers.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use surety_core::{BoxFuture, Consumer, Delivery, RetryPolicy, Transport};

use crate::support::now_ms;

/// Set (to `consumer`) in a child consumer's environment.
pub const ROLE_ENV: &str = "SURETY_CONFORMANCE_CHILD";
/// The fixture's endpoint (a URL, say) the child connects to.
pub const ENDPOINT_ENV: &str = "SURETY_CONFORMANCE_ENDPOINT";
const TOPIC_ENV: &str = "SURETY_CONFORMANCE_TOPIC";
const GROUP_ENV: &str = "SURETY_CONFORMANCE_GROUP";
const LEASE_ENV: &str = "SURETY_CONFORMANCE_LEASE_MS";
const LOG_ENV: &str = "SURETY_CONFORMANCE_LOG";
const HOLD_ENV: &str = "SURETY_CONFORMANCE_HOLD";

/// What the child's handler does after writing its marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Never returns: the delivery stays leased until the process dies.
    Forever,
    /// Sleeps this long, then returns `Ok` (acked).
    AckAfter(Duration),
}

/// A consumer process to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildConsumer {
    pub topic: String,
    pub group: String,
    pub lease: Duration,
    /// Where the markers go (appended, one line per delivery).
    pub log: PathBuf,
    pub hold: Hold,
}

impl ChildConsumer {
    /// `program` (the test binary: `std::env::current_exe()`) with this spec and
    /// `endpoint` in its environment; stderr goes to `<log>.stderr`.
    pub fn command(&self, program: &Path, endpoint: &str) -> Command {
        let hold = match self.hold {
            Hold::Forever => "forever".to_owned(),
            Hold::AckAfter(d) => format!("ack:{}", d.as_millis()),
        };
        let mut cmd = Command::new(program);
        cmd.env(ROLE_ENV, "consumer")
            .env(ENDPOINT_ENV, endpoint)
            .env(TOPIC_ENV, &self.topic)
            .env(GROUP_ENV, &self.group)
            .env(LEASE_ENV, self.lease.as_millis().to_string())
            .env(LOG_ENV, &self.log)
            .env(HOLD_ENV, hold)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        match std::fs::File::create(self.log.with_extension("stderr")) {
            Ok(f) => cmd.stderr(f),
            Err(_) => cmd.stderr(Stdio::null()),
        };
        cmd
    }

    /// The spec of this process, when it is a child consumer.
    pub fn from_env() -> Option<(ChildConsumer, String)> {
        if std::env::var(ROLE_ENV).ok()? != "consumer" {
            return None;
        }
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| panic!("child consumer without {name}"))
        };
        let hold = match var(HOLD_ENV).as_str() {
            "forever" => Hold::Forever,
            other => Hold::AckAfter(Duration::from_millis(
                other
                    .strip_prefix("ack:")
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or_else(|| panic!("bad {HOLD_ENV} {other:?}")),
            )),
        };
        let spec = ChildConsumer {
            topic: var(TOPIC_ENV),
            group: var(GROUP_ENV),
            lease: Duration::from_millis(var(LEASE_ENV).parse().expect("lease ms")),
            log: var(LOG_ENV).into(),
            hold,
        };
        Some((spec, var(ENDPOINT_ENV)))
    }

    /// Consumes until killed.
    pub async fn run(self, transport: Arc<dyn Transport>) {
        let log = Arc::new(self.log.clone());
        let hold = self.hold;
        let result = Consumer::builder_shared(transport, &self.topic, &self.group)
            .lease(self.lease)
            .max_in_flight(8)
            .reconnect(RetryPolicy {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(500),
                deadline: Duration::from_secs(120),
                ..RetryPolicy::default()
            })
            .run(move |d: Delivery| {
                let log = log.clone();
                async move {
                    append_line(&log, &Marker::of(&d).line());
                    match hold {
                        Hold::Forever => std::future::pending::<()>().await,
                        Hold::AckAfter(t) => tokio::time::sleep(t).await,
                    }
                    Ok::<(), String>(())
                }
            })
            .await;
        eprintln!("child consumer ended: {result:?}");
        std::process::exit(3);
    }
}

/// If this process is a child consumer, runs it (connecting with `connect(endpoint)`) and
/// never returns; otherwise returns at once. Call it first thing in the runner's `main`.
pub fn run_if_child(connect: fn(String) -> BoxFuture<'static, Arc<dyn Transport>>) {
    let Some((spec, endpoint)) = ChildConsumer::from_env() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let transport = connect(endpoint).await;
        spec.run(transport).await
    });
    std::process::exit(3);
}

/// What a child consumer's handler saw, one line per delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub producer_id: String,
    pub partition: u32,
    pub sequence: u64,
    pub delivery_count: u32,
    pub lease_until_ms: Option<u64>,
    /// When the handler started (ms since the Unix epoch).
    pub at_ms: u64,
    pub payload: String,
}

impl Marker {
    pub fn of(d: &Delivery) -> Marker {
        Marker {
            producer_id: d.producer_id.clone().unwrap_or_else(|| "-".into()),
            partition: d.partition,
            sequence: d.sequence.unwrap_or(u64::MAX),
            delivery_count: d.delivery_count,
            lease_until_ms: d.lease_until_ms,
            at_ms: now_ms(),
            payload: String::from_utf8_lossy(&d.payload).replace(char::is_whitespace, "_"),
        }
    }

    pub fn line(&self) -> String {
        let lease = self
            .lease_until_ms
            .map_or_else(|| "-".to_owned(), |l| l.to_string());
        format!(
            "delivered {} {} {} {} {lease} {} {}\n",
            self.producer_id,
            self.partition,
            self.sequence,
            self.delivery_count,
            self.at_ms,
            self.payload
        )
    }

    pub fn parse(line: &str) -> Option<Marker> {
        let mut f = line.strip_prefix("delivered ")?.split(' ');
        let m = Marker {
            producer_id: f.next()?.to_owned(),
            partition: f.next()?.parse().ok()?,
            sequence: f.next()?.parse().ok()?,
            delivery_count: f.next()?.parse().ok()?,
            lease_until_ms: match f.next()? {
                "-" => None,
                l => Some(l.parse().ok()?),
            },
            at_ms: f.next()?.parse().ok()?,
            payload: f.next()?.to_owned(),
        };
        f.next().is_none().then_some(m)
    }

    /// The complete lines of a marker log (a missing file is empty).
    pub fn read_all(path: &Path) -> Vec<Marker> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(|l| {
                Marker::parse(l.trim_end_matches('\n'))
                    .unwrap_or_else(|| panic!("bad marker line {l:?} in {}", path.display()))
            })
            .collect()
    }
}

/// Appends `line` with one `write(2)` on an `O_APPEND` file.
fn append_line(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(line.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_reads_back_as_written() {
        let m = Marker {
            producer_id: "ab12".into(),
            partition: 1,
            sequence: 7,
            delivery_count: 2,
            lease_until_ms: Some(1_700_000_000_123),
            at_ms: 1_700_000_000_000,
            payload: "s4-x".into(),
        };
        let line = m.line();
        assert_eq!(Marker::parse(line.trim_end()), Some(m.clone()));
        let none = Marker {
            lease_until_ms: None,
            ..m
        };
        assert_eq!(Marker::parse(none.line().trim_end()), Some(none));
    }
}
