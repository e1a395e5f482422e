//! `surety consume --exec CMD`: runs `CMD` once per delivery and settles by its exit
//! status (docs/design.md, "Backends"): 0 acks; anything else nacks with the last line of
//! its stderr as the reason, so a message that keeps failing ends in the dead letters
//! with the script's own words. Runs on the consumer driver of the transport seam, the
//! same on every backend: a delivery is acked only after its command exited 0.

use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use surety_core::{Consumer, ConsumerStats, Delivery, StopHandle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};

use super::backend::{Backend, seam_error};
use super::error::CliError;
use super::{Conn, output};

/// Longest reason kept from a command's stderr (the broker's own limit).
const MAX_REASON_BYTES: usize = surety_broker::limits::MAX_REASON_BYTES;

/// What `--exec` runs with.
#[derive(Debug, Clone)]
pub struct ExecSettings {
    pub topic: String,
    pub group: String,
    pub command: String,
    /// Commands running at once (the consumer's window).
    pub concurrency: u32,
    /// Stop taking messages once this many commands finished.
    pub max: Option<u64>,
    pub lease: Option<Duration>,
    pub nack_delay: Duration,
    /// `--ledger`: the settled ledger's file.
    pub ledger: Option<std::path::PathBuf>,
}

/// Runs `--exec` until Ctrl-C / SIGTERM (or `--max`); commands already running finish
/// and are settled before it returns.
pub async fn run(settings: ExecSettings, conn: &Conn) -> Result<(), CliError> {
    let backend = conn.backend()?;
    let transport = backend
        .transport(
            conn.token.as_deref(),
            conn.require_fsync,
            Some(&settings.topic),
        )
        .await?;
    // Refusals (no such topic, a bad name) before the banner, as one error line.
    transport
        .describe_topic(&settings.topic)
        .await
        .map_err(|e| seam_error(&backend, e))?;
    let mut builder = Consumer::builder_shared(
        transport.clone(),
        settings.topic.clone(),
        settings.group.clone(),
    )
    .max_in_flight(settings.concurrency)
    .nack_delay(settings.nack_delay);
    if let Some(lease) = settings.lease {
        builder = builder.lease(lease);
    }
    if let Some(path) = &settings.ledger {
        builder = builder.settled_ledger(super::contract::open_ledger(path)?);
    }
    let stop = builder.stop_handle();
    stop_on_signals(stop.clone())?;
    if !conn.json {
        eprintln!(
            "running {:?} for each message of {} (group {}) on {}, {} at a time; \
             Ctrl-C or SIGTERM stops after the running ones finish",
            settings.command,
            settings.topic,
            settings.group,
            backend.name(),
            settings.concurrency
        );
    }
    let job = Arc::new(Job {
        settings: settings.clone(),
        finished: AtomicU64::new(0),
        stop,
        json: conn.json,
    });
    let stats = builder
        .run(move |d| {
            let job = job.clone();
            async move { job.handle(d).await }
        })
        .await
        .map_err(|e| consume_error(&backend, e))?;
    report(&stats, conn.json)
}

/// Stops the consumer at the first Ctrl-C or SIGTERM.
pub fn stop_on_signals(stop: StopHandle) -> Result<(), CliError> {
    let listen = |kind: SignalKind, what: &str| {
        signal(kind).map_err(|source| CliError::Io {
            what: format!("cannot listen for {what}"),
            source,
        })
    };
    let mut interrupt = listen(SignalKind::interrupt(), "Ctrl-C")?;
    let mut terminate = listen(SignalKind::terminate(), "SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        stop.stop();
    });
    Ok(())
}

struct Job {
    settings: ExecSettings,
    finished: AtomicU64,
    stop: StopHandle,
    json: bool,
}

impl Job {
    /// One delivery: the command's verdict, `Err(reason)` to nack.
    async fn handle(&self, d: Delivery) -> Result<(), String> {
        let place = place(&d);
        let verdict = self.exec(&d).await;
        if let Err(reason) = &verdict
            && !self.json
        {
            eprintln!("{place} nacked: {reason}");
        }
        let done = self.finished.fetch_add(1, Ordering::Relaxed) + 1;
        if self.settings.max.is_some_and(|max| done >= max) {
            self.stop.stop();
        }
        verdict
    }

    async fn exec(&self, d: &Delivery) -> Result<(), String> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.settings.command)
            .envs(environment(&self.settings, d))
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run sh -c {:?}: {e}", self.settings.command))?;
        let stdin = child.stdin.take();
        let payload = d.payload.clone();
        // A command that never reads its stdin must not block on a full pipe, nor we
        // on it: the payload is written beside the wait, and a closed pipe is fine.
        let feed = async move {
            if let Some(mut stdin) = stdin {
                let _ = stdin.write_all(&payload).await;
            }
        };
        let stderr = child.stderr.take().map(relay_stderr);
        let (_, last_line, status) = tokio::join!(
            feed,
            async {
                match stderr {
                    Some(s) => s.await,
                    None => None,
                }
            },
            child.wait()
        );
        let status = status.map_err(|e| format!("waiting for the command failed: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(reason(last_line, status))
        }
    }
}

/// Passes the command's stderr through, line by line, and keeps its last non-empty line.
async fn relay_stderr(stderr: tokio::process::ChildStderr) -> Option<String> {
    let mut lines = BufReader::new(stderr).lines();
    let mut last = None;
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("{line}");
        if !line.trim().is_empty() {
            last = Some(line);
        }
    }
    last
}

/// The nack reason: stderr's last line, else how the command ended.
fn reason(last_line: Option<String>, status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    let mut text = match (last_line, status.code(), status.signal()) {
        (Some(line), _, _) => line.trim().to_owned(),
        (None, Some(code), _) => format!("command exited with status {code}"),
        (None, None, Some(sig)) => format!("command killed by signal {sig}"),
        (None, None, None) => "command failed".to_owned(),
    };
    if text.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The `SURETY_*` variables of one delivery (empty where the message has no such field,
/// so that `set -u` scripts can read every one).
fn environment(settings: &ExecSettings, d: &Delivery) -> Vec<(&'static str, String)> {
    vec![
        ("SURETY_TOPIC", settings.topic.clone()),
        ("SURETY_GROUP", settings.group.clone()),
        (
            "SURETY_KEY",
            d.key.as_deref().map(text_or_base64).unwrap_or_default(),
        ),
        ("SURETY_DELIVERY_COUNT", d.delivery_count.to_string()),
        (
            "SURETY_PRODUCER_ID",
            d.producer_id
                .as_ref()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
        ),
        (
            "SURETY_SEQUENCE",
            d.sequence.map(|s| s.to_string()).unwrap_or_default(),
        ),
        (
            "SURETY_MESSAGE_ID",
            d.message_id()
                .map(|m| m.as_str().to_owned())
                .unwrap_or_default(),
        ),
        ("SURETY_POSITION", d.position.to_string()),
        ("SURETY_PARTITION", d.partition.to_string()),
    ]
}

/// A key as text, or `base64:…` where it is not UTF-8 (as `consume` prints it).
fn text_or_base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
    }
}

/// `0:17 [delivery 2]`
fn place(d: &Delivery) -> String {
    format!("{} [delivery {}]", d.position, d.delivery_count)
}

pub fn consume_error(backend: &Backend, e: surety_core::ConsumeError) -> CliError {
    match e {
        surety_core::ConsumeError::Refused(t) => seam_error(backend, t),
        other => CliError::Transport {
            url: backend.url().to_string(),
            reason: super::error::one_line(&other),
        },
    }
}

fn report(stats: &ConsumerStats, json: bool) -> Result<(), CliError> {
    if json {
        return output::json(&serde_json::json!({
            "delivered": stats.delivered,
            "acked": stats.acked,
            "nacked": stats.nacked,
            "settle_errors": stats.settle_errors,
            "reconnects": stats.reconnects,
        }));
    }
    eprintln!(
        "stopped: {} handled, {} acked, {} nacked{}",
        output::plural(stats.delivered as usize, "message"),
        stats.acked,
        stats.nacked,
        if stats.settle_errors > 0 {
            format!(
                ", {} settlements refused (redelivered)",
                stats.settle_errors
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn reasons_come_from_stderr_else_the_status() {
        let failed = ExitStatus::from_raw(3 << 8);
        assert_eq!(
            reason(Some("  no such customer ".into()), failed),
            "no such customer"
        );
        assert_eq!(reason(None, failed), "command exited with status 3");
        assert_eq!(
            reason(None, ExitStatus::from_raw(9)),
            "command killed by signal 9"
        );
        let long = "é".repeat(MAX_REASON_BYTES);
        let cut = reason(Some(long), failed);
        assert!(cut.len() <= MAX_REASON_BYTES && cut.len() >= MAX_REASON_BYTES - 1);
    }

    #[test]
    fn keys_that_are_not_text_go_as_base64() {
        assert_eq!(text_or_base64(b"customer-9"), "customer-9");
        assert_eq!(text_or_base64(&[0xff, 0]), "base64:/wA=");
    }
}
