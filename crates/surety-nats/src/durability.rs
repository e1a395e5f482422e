//! What a PubAck from this server is worth, read at connect.
//!
//! JetStream's file store writes each message to the page cache and fsyncs on a timer,
//! `sync_interval`, two minutes by default: a PubAck survives `kill -9` of the server
//! but not a power loss of its machine (Jepsen, NATS 2.12.1: 131 418 of 930 005
//! acknowledged writes lost in a simulated power failure). `sync_interval: always`
//! (nats-server 2.10+) fsyncs before every PubAck. The setting is not in the client
//! protocol's INFO: the monitoring endpoint's `/varz` has it (`jetstream.config.
//! sync_always`, `sync_interval` in ns), so that is where it is read, and the varz must
//! name the server this connection reached (`server_id`). A server older than 2.10 has
//! no such setting to read or set. Anything but `always` is logged as a warning,
//! exported as `surety_transport_unsafe{transport="nats",reason}` and, under
//! `require_fsync`, refuses the connection.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use surety_core::{Confirm, ErrorKind, TransportError};

/// How the server syncs its file store, as far as it could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncSetting {
    /// `sync_interval: always`: fsync before each PubAck.
    Always,
    /// fsync every this long; a power loss loses up to that much confirmed data.
    Interval(Duration),
    /// Could not be read; why.
    Unreadable(String),
}

/// What was found at connect: the server, its sync setting, and what a confirm means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurabilityReport {
    /// `host:port` the connection reached.
    pub server: String,
    pub version: String,
    pub sync: SyncSetting,
    /// Replicas of the streams this transport creates.
    pub replicas: usize,
    /// Where the sync setting was read (`http://host:8222/varz`), if it was.
    pub source: Option<String>,
    pub confirm: Confirm,
}

impl DurabilityReport {
    pub fn new(server: String, version: String, sync: SyncSetting, replicas: usize) -> Self {
        let r = u16::try_from(replicas).unwrap_or(u16::MAX);
        let confirm = match (&sync, replicas) {
            (SyncSetting::Always, 1) => Confirm::FsyncedOnNode,
            (SyncSetting::Always, _) => Confirm::Replicated {
                replicas: r,
                fsynced: true,
            },
            (SyncSetting::Interval(d), 1) => Confirm::PageCache { max_loss: Some(*d) },
            (SyncSetting::Interval(_), _) => Confirm::Replicated {
                replicas: r,
                fsynced: false,
            },
            (SyncSetting::Unreadable(_), _) => Confirm::Unknown,
        };
        Self {
            server,
            version,
            sync,
            replicas,
            source: None,
            confirm,
        }
    }

    /// A confirmed message survives a power loss of the server.
    pub fn is_safe(&self) -> bool {
        self.confirm.survives_power_loss()
    }

    /// The short reason for the metric's label: `sync_interval` (set, and not `always`),
    /// `unknown` (not readable), or `none`.
    pub fn reason(&self) -> &'static str {
        match self.sync {
            SyncSetting::Always => "none",
            SyncSetting::Interval(_) => "sync_interval",
            SyncSetting::Unreadable(_) => "unknown",
        }
    }

    /// The refusal under `require_fsync`: what is unsafe, and how to fix it.
    pub fn refusal(&self) -> TransportError {
        TransportError::refused(
            ErrorKind::Unsupported,
            format!(
                "refusing to run under require_fsync: {self}. Fix: run nats-server 2.10 or \
                 later with `jetstream {{ sync_interval: always }}` and its monitoring \
                 endpoint on (`http: 8222`; pass ?monitor=http://host:port when it is not \
                 the default), or run without require_fsync and accept the risk"
            ),
        )
        .with_code("unsafe_durability")
    }

    /// Logs a warning and sets the gauge: once per connect.
    pub(crate) fn publish(&self) {
        let unsafe_sync = matches!(self.sync, SyncSetting::Interval(_));
        let unknown = matches!(self.sync, SyncSetting::Unreadable(_));
        metrics::gauge!("surety_transport_unsafe", "transport" => "nats", "reason" => "sync_interval")
            .set(f64::from(u8::from(unsafe_sync)));
        metrics::gauge!("surety_transport_unsafe", "transport" => "nats", "reason" => "unknown")
            .set(f64::from(u8::from(unknown)));
        if !self.is_safe() {
            tracing::warn!(reason = self.reason(), "{self}");
        }
    }
}

impl fmt::Display for DurabilityReport {
    /// One line, for the CLI's start-up warning.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NATS {} at {}: ", self.version, self.server)?;
        match &self.sync {
            SyncSetting::Always => write!(f, "sync_interval always (fsync before each PubAck)")?,
            SyncSetting::Interval(d) => write!(
                f,
                "sync_interval {} — a PubAck means page cache only, and a power loss can \
                 lose up to {} of confirmed messages",
                human(*d),
                human(*d)
            )?,
            SyncSetting::Unreadable(why) => write!(
                f,
                "sync_interval unknown ({why}) — a PubAck may mean page cache only \
                 (the file store's default is an fsync every 2 min)"
            )?,
        }
        write!(f, ", streams R{}", self.replicas)?;
        if self.is_safe() {
            f.write_str(": confirms survive a power loss")
        } else {
            f.write_str(": confirms may not survive a power loss")
        }
    }
}

fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) {
        format!("{} min", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{} s", ms / 1_000)
    } else {
        format!("{ms} ms")
    }
}

/// `(major, minor)` of a version string such as `2.10.3` or `v2.9.10-beta`.
pub fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim_start_matches('v').split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The parts of `/varz` this reads.
#[derive(Debug, Deserialize)]
struct Varz {
    server_id: String,
    #[serde(default)]
    jetstream: Option<VarzJetStream>,
}

#[derive(Debug, Deserialize)]
struct VarzJetStream {
    #[serde(default)]
    config: Option<VarzJsConfig>,
}

#[derive(Debug, Deserialize)]
struct VarzJsConfig {
    #[serde(default)]
    sync_always: bool,
    /// Nanoseconds; absent before 2.10.
    #[serde(default)]
    sync_interval: Option<u64>,
}

/// Reads the sync setting of the server `server_id` (version `version`) from the
/// monitoring endpoint `monitor` (`http://host:port`). Returns the setting and where it
/// was read from.
pub async fn probe(
    monitor: &str,
    server_id: &str,
    version: &str,
    timeout: Duration,
) -> (SyncSetting, Option<String>) {
    let url = format!("{monitor}/varz");
    let too_old = major_minor(version).is_some_and(|v| v < (2, 10));
    let fetched = async {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let response = client.get(&url).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        response.json::<Varz>().await.map_err(|e| e.to_string())
    }
    .await;
    let varz = match fetched {
        Ok(v) => v,
        Err(e) if too_old => {
            return (
                SyncSetting::Unreadable(format!(
                    "server {version} predates sync_interval (2.10), and {url}: {e}"
                )),
                None,
            );
        }
        Err(e) => {
            return (
                SyncSetting::Unreadable(format!("no monitoring endpoint answered at {url}: {e}")),
                None,
            );
        }
    };
    if varz.server_id != server_id {
        return (
            SyncSetting::Unreadable(format!(
                "{url} belongs to another server ({}, not {server_id})",
                varz.server_id
            )),
            None,
        );
    }
    let config = varz.jetstream.and_then(|j| j.config);
    let setting = match config {
        None => SyncSetting::Unreadable(format!("{url} shows no JetStream configuration")),
        Some(c) if c.sync_always => SyncSetting::Always,
        Some(VarzJsConfig {
            sync_interval: Some(ns),
            ..
        }) => SyncSetting::Interval(Duration::from_nanos(ns)),
        Some(_) if too_old => SyncSetting::Unreadable(format!(
            "server {version} predates sync_interval (2.10): it cannot be asked or set"
        )),
        Some(_) => SyncSetting::Unreadable(format!("{url} does not say sync_interval")),
    };
    (setting, Some(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirm_follows_sync_and_replicas() {
        let at = |sync, r| DurabilityReport::new("h:1".into(), "2.10.0".into(), sync, r).confirm;
        assert_eq!(at(SyncSetting::Always, 1), Confirm::FsyncedOnNode);
        assert_eq!(
            at(SyncSetting::Always, 3),
            Confirm::Replicated {
                replicas: 3,
                fsynced: true
            }
        );
        let two_min = Duration::from_secs(120);
        assert_eq!(
            at(SyncSetting::Interval(two_min), 1),
            Confirm::PageCache {
                max_loss: Some(two_min)
            }
        );
        assert_eq!(
            at(SyncSetting::Interval(two_min), 3),
            Confirm::Replicated {
                replicas: 3,
                fsynced: false
            }
        );
        assert_eq!(at(SyncSetting::Unreadable("x".into()), 1), Confirm::Unknown);
    }

    #[test]
    fn the_report_is_one_readable_line_and_the_refusal_says_the_fix() {
        let r = DurabilityReport::new(
            "127.0.0.1:4222".into(),
            "2.15.1".into(),
            SyncSetting::Interval(Duration::from_secs(120)),
            1,
        );
        let line = r.to_string();
        assert!(!line.contains('\n'));
        assert!(line.contains("sync_interval 2 min"), "{line}");
        assert!(line.contains("may not survive a power loss"), "{line}");
        let e = r.refusal();
        assert_eq!((e.kind, e.retryable()), (ErrorKind::Unsupported, false));
        assert!(e.message.contains("sync_interval: always"), "{}", e.message);
        let safe = DurabilityReport::new("h:1".into(), "2.15.1".into(), SyncSetting::Always, 1);
        assert!(safe.is_safe() && safe.to_string().contains("survive a power loss"));
    }

    #[test]
    fn versions_parse() {
        assert_eq!(major_minor("2.9.10"), Some((2, 9)));
        assert_eq!(major_minor("v2.10.0-beta.1"), Some((2, 10)));
        assert_eq!(major_minor("x"), None);
    }
}
