//! What a confirmed XADD is worth on this server, read at connect with
//! `CONFIG GET appendonly` and `CONFIG GET appendfsync` (a managed Redis may refuse
//! CONFIG: the answer is then "unknown", never assumed safe).
//!
//! | appendonly | appendfsync | a confirm means |
//! |---|---|---|
//! | yes | always | `FsyncedOnNode`: in the AOF on disk before the answer |
//! | yes | everysec | `PageCache { 1 s }`: a power loss loses up to about a second (a process kill nothing) |
//! | yes | no | `PageCache { unknown }`: the kernel flushes when it likes |
//! | no | — | `Memory`: only RDB snapshots, if any; a crash loses everything since the last |
//! | refused | | `Unknown` |

use std::fmt;
use std::time::Duration;

use surety_core::{Confirm, ErrorKind, TransportError};

/// The persistence settings found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persistence {
    /// `appendonly yes` with this `appendfsync`.
    Aof(String),
    /// `appendonly no`.
    NoAof,
    /// CONFIG GET failed (why).
    Unreadable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurabilityReport {
    /// `host:port`.
    pub server: String,
    pub version: String,
    pub persistence: Persistence,
    pub confirm: Confirm,
}

impl DurabilityReport {
    pub fn new(server: String, version: String, persistence: Persistence) -> Self {
        let confirm = match &persistence {
            Persistence::Aof(f) if f == "always" => Confirm::FsyncedOnNode,
            Persistence::Aof(f) if f == "everysec" => Confirm::PageCache {
                max_loss: Some(Duration::from_secs(1)),
            },
            Persistence::Aof(_) => Confirm::PageCache { max_loss: None },
            Persistence::NoAof => Confirm::Memory,
            Persistence::Unreadable(_) => Confirm::Unknown,
        };
        Self {
            server,
            version,
            persistence,
            confirm,
        }
    }

    /// Confirms survive a power loss.
    pub fn is_safe(&self) -> bool {
        self.confirm.survives_power_loss()
    }

    /// The metric's `reason` label.
    pub fn reason(&self) -> &'static str {
        match &self.persistence {
            Persistence::Aof(f) if f == "always" => "none",
            Persistence::Aof(_) => "appendfsync",
            Persistence::NoAof => "appendonly",
            Persistence::Unreadable(_) => "unknown",
        }
    }

    /// The refusal under `require_fsync`.
    pub fn refusal(&self) -> TransportError {
        TransportError::refused(
            ErrorKind::Unsupported,
            format!(
                "refusing to run under require_fsync: {self}. Fix: set `appendonly yes` and \
                 `appendfsync always` (redis.conf, or CONFIG SET appendonly yes and CONFIG SET \
                 appendfsync always), allow CONFIG GET for this user so that it can be checked, \
                 or run without require_fsync and accept the risk"
            ),
        )
        .with_code("unsafe_durability")
    }

    /// Exports `surety_transport_unsafe{transport="redis",reason}` (1 where it applies)
    /// and warns once when confirms would not survive a power loss.
    pub(crate) fn publish(&self) {
        let reason = self.reason();
        for r in ["appendonly", "appendfsync", "unknown"] {
            metrics::gauge!("surety_transport_unsafe", "transport" => "redis", "reason" => r)
                .set(f64::from(u8::from(r == reason)));
        }
        if !self.is_safe() {
            tracing::warn!(reason, "{self}");
        }
    }
}

impl fmt::Display for DurabilityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redis {} at {}: ", self.version, self.server)?;
        match &self.persistence {
            Persistence::Aof(s) if s == "always" => {
                f.write_str("appendonly yes, appendfsync always (fsync before each answer)")?
            }
            Persistence::Aof(s) if s == "everysec" => f.write_str(
                "appendonly yes, appendfsync everysec — a confirm means page cache only, and a \
                 power loss can lose about a second of confirmed messages",
            )?,
            Persistence::Aof(s) => write!(
                f,
                "appendonly yes, appendfsync {s} — a confirm means page cache only, flushed \
                 when the kernel likes"
            )?,
            Persistence::NoAof => f.write_str(
                "appendonly no — a confirm means memory only: a crash or restart loses every \
                 message since the last RDB snapshot",
            )?,
            Persistence::Unreadable(why) => write!(
                f,
                "persistence unknown (CONFIG GET refused: {why}) — a confirm may mean memory only"
            )?,
        }
        if self.is_safe() {
            f.write_str(": confirms survive a power loss")
        } else {
            f.write_str(": confirms may not survive a power loss")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_aof_always_is_safe() {
        let r = |p| DurabilityReport::new("h:1".into(), "7.0.15".into(), p);
        assert!(r(Persistence::Aof("always".into())).is_safe());
        for p in [
            Persistence::Aof("everysec".into()),
            Persistence::Aof("no".into()),
            Persistence::NoAof,
            Persistence::Unreadable("NOPERM".into()),
        ] {
            let report = r(p.clone());
            assert!(!report.is_safe(), "{p:?}");
            let e = report.refusal();
            assert_eq!(
                (e.kind, e.retryable()),
                (ErrorKind::Unsupported, false),
                "{p:?}"
            );
            assert!(e.message.contains("appendfsync always"), "{}", e.message);
        }
        assert_eq!(
            r(Persistence::Aof("everysec".into())).confirm,
            Confirm::PageCache {
                max_loss: Some(Duration::from_secs(1))
            }
        );
        assert_eq!(r(Persistence::NoAof).confirm, Confirm::Memory);
    }
}
