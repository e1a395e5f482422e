//! `surety consume`: fetch messages of a consumer group, print them, and only then
//! ack them, so a message is acked only once it is out of this process.

use std::time::Duration;

use clap::Args;
use surety_wire::rest;
use tokio::signal::unix::{SignalKind, signal};

use super::contract::Seam;
use super::error::CliError;
use super::exec::{self, ExecSettings};
use super::http::{Client, decode};
use super::settle::refused_line;
use super::{ClientArgs, Conn, output};
pub const LONG_ABOUT: &str = "\
Fetch messages for a consumer group, print them, then acknowledge them. Each group
gets every message of the topic; within a group each message goes to one consumer.

Human output is one line per message: partition:offset [delivery N] key=K payload.
--json prints each message as one JSON object per line (for jq).

A message is acked only after its line is written. With --no-ack nothing is acked:
the messages are delivered again once their lease (--lease-ms) runs out, and a
message delivered max_deliveries times moves to the group's dead-letter queue
(see `surety dlq`). Settle them yourself with `surety ack` / `surety nack` and the
\"receipt\" of each --json line.

Delivery is at least once. First deliveries leave a partition in offset order, and
messages with the same key are always in the same partition; but with several
consumers in one group, or after a redelivery, messages of one key can be processed
at the same time or out of order (per-key ordered delivery is not provided yet).

--follow keeps fetching until Ctrl-C or SIGTERM, and rides out a server restart: when
the server is unreachable it says so once on stderr, retries with backoff (100ms
doubling to 5s), and resumes when it answers. Messages printed just before the
connection dropped are acked after the reconnect; if their lease ran out meanwhile
(lease_expired, receipt_stale) the server delivers them again, so they are printed
again: at least once. A refusal by the server (topic_not_found, invalid_name, ...)
still ends the command.

--exec CMD runs CMD (through sh -c) once per message, with the payload on stdin and
SURETY_TOPIC, SURETY_GROUP, SURETY_KEY, SURETY_DELIVERY_COUNT, SURETY_PRODUCER_ID,
SURETY_SEQUENCE, SURETY_MESSAGE_ID, SURETY_POSITION and SURETY_PARTITION in its
environment (empty where the message has none). Exit status 0 acks the message; any
other nacks it with the last line of the command's stderr as the reason, so a message
that fails max_deliveries times ends in the dead letters with that reason. It runs until
Ctrl-C or SIGTERM (or until --max commands finished, if given), --concurrency commands
at a time; commands already running finish and are settled before it exits. A command
that outlives the lease (--lease-ms) loses its message to a redelivery. It works the
same on every --backend.

Examples:
  surety consume orders --group billing
  surety consume orders --group billing --follow --json | jq .payload
  surety consume orders --group billing --no-ack --max 1 --lease-ms 5000
  surety consume orders --group billing --exec './bill.sh' --concurrency 4
  surety consume orders --group mail --exec 'jq -e .email >/dev/null || { echo no email >&2; exit 1; }'";

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to consume from
    topic: String,
    /// Consumer group: its position and acks are kept by the server
    #[arg(long, short)]
    group: String,
    /// Messages to fetch (with --follow: per fetch; with --exec: commands to run, then
    /// stop) [default: 10; with --exec unlimited]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max: Option<u32>,
    /// Keep fetching (long polling) until Ctrl-C or SIGTERM; survives server restarts
    #[arg(long, short)]
    follow: bool,
    /// Do not ack: the messages come back after their lease
    #[arg(long)]
    no_ack: bool,
    /// How long the server may wait for messages [default: 0, with --follow 5000]
    #[arg(long, value_name = "MS")]
    wait_ms: Option<u64>,
    /// How long the messages stay leased to us before redelivery [default: the topic's ack wait]
    #[arg(long, value_name = "MS")]
    lease_ms: Option<u64>,
    /// Run CMD (sh -c) per message, payload on stdin: exit 0 acks, else nack with the
    /// last line of its stderr as the reason (see above)
    #[arg(long, value_name = "CMD", conflicts_with_all = ["no_ack", "follow", "wait_ms"])]
    exec: Option<String>,
    /// With --exec: commands running at once
    #[arg(long, value_name = "N", default_value_t = 1, requires = "exec",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    concurrency: u32,
    /// With --exec: a failed message comes back no sooner than this (the topic's
    /// backoff applies too): 500ms, 5s, 1m
    #[arg(long, value_name = "DURATION", requires = "exec", value_parser = super::time::parse_duration)]
    nack_delay: Option<Duration>,
    /// Remember handled (producer id, sequence) pairs in FILE, so that a copy the backend
    /// stored twice is acked unrun after a restart of this consumer too (one process per
    /// file). Without it they are remembered in memory while it runs, on backends whose
    /// dedupe is a time window or none
    #[arg(long, value_name = "FILE")]
    ledger: Option<std::path::PathBuf>,
    /// Last, so that its help heading does not swallow the options above.
    #[command(flatten)]
    pub conn: ClientArgs,
}

const FOLLOW_WAIT_MS: u64 = 5_000;

/// `--follow` retries an unreachable server after this, doubling up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The most the server hands out per fetch; larger `--max` takes several fetches.
const MAX_PER_FETCH: u32 = 1_000;

pub async fn run(args: ConsumeArgs, conn: &Conn) -> Result<(), CliError> {
    if let Some(command) = &args.exec {
        let nack_delay = args.nack_delay.unwrap_or_default();
        super::time::check_delay("--nack-delay", &super::time::human(nack_delay), nack_delay)
            .map_err(CliError::Usage)?;
        let settings = ExecSettings {
            topic: args.topic.clone(),
            group: args.group.clone(),
            command: command.clone(),
            concurrency: args.concurrency,
            max: args.max.map(u64::from),
            lease: args.lease_ms.map(Duration::from_millis),
            nack_delay,
            ledger: args.ledger.clone(),
        };
        return exec::run(settings, conn).await;
    }
    if let Some(seam) = Seam::for_backend(conn, Some(&args.topic)).await? {
        if args.no_ack {
            return Err(CliError::Usage(format!(
                "--no-ack leaves receipts to settle later with `surety ack`, which needs a \
                 Surety server; on {} use --exec, whose command's exit status settles",
                seam.backend.name()
            )));
        }
        // Without --follow: stop once nothing came for --wait-ms (at least a second:
        // a new subscription takes a moment to fill).
        let idle = (!args.follow)
            .then(|| Duration::from_millis(args.wait_ms.unwrap_or(0).max(SEAM_MIN_IDLE_MS)));
        let max = if args.follow {
            None
        } else {
            Some(args.max.unwrap_or(DEFAULT_MAX))
        };
        return seam
            .consume(
                &args.topic,
                &args.group,
                max,
                idle,
                args.lease_ms.map(Duration::from_millis),
                args.ledger.as_deref(),
            )
            .await;
    }
    if args.ledger.is_some() {
        return Err(CliError::Usage(
            "--ledger is not needed on a Surety server: it refuses a repeated (producer id, \
             sequence) itself, across restarts (with --exec the option is accepted)"
                .into(),
        ));
    }
    let client = Client::new(conn)?;
    let consumer = Consumer {
        client: &client,
        args: &args,
        json: conn.json,
    };
    if args.follow {
        consumer.follow().await
    } else {
        consumer.once().await
    }
}

struct Consumer<'a> {
    client: &'a Client,
    args: &'a ConsumeArgs,
    json: bool,
}

/// `--max` when not given.
const DEFAULT_MAX: u32 = 10;

/// Through the seam, a `consume` without `--follow` ends once no message came for this
/// long (or `--wait-ms`, if longer).
const SEAM_MIN_IDLE_MS: u64 = 1_000;

impl Consumer<'_> {
    fn max(&self) -> u32 {
        self.args.max.unwrap_or(DEFAULT_MAX)
    }

    /// Up to `--max` messages, then exit.
    async fn once(&self) -> Result<(), CliError> {
        let mut left = self.max();
        let mut wait = self.args.wait_ms.unwrap_or(0);
        let mut total = 0;
        // The server may hand out fewer than asked per fetch: ask again until
        // `--max` or nothing is ready.
        while left > 0 {
            let batch = self.fetch(left.min(MAX_PER_FETCH), wait).await?;
            if batch.is_empty() {
                break;
            }
            left = left.saturating_sub(batch.len() as u32);
            let (receipts, printed) = self.print(batch)?;
            if !self.args.no_ack {
                self.ack(&receipts).await?;
            }
            total += receipts.len();
            printed?;
            wait = 0;
        }
        if !self.json {
            if total == 0 {
                eprintln!(
                    "no messages ready for group {} on topic {}",
                    self.args.group, self.args.topic
                );
            } else if self.args.no_ack {
                eprintln!(
                    "not acked (--no-ack): {} will be delivered again after the lease",
                    output::plural(total, "message")
                );
            }
        }
        Ok(())
    }

    /// Fetch, print, ack, until Ctrl-C or SIGTERM. A signal during a fetch abandons it
    /// (anything the server leased meanwhile comes back after the lease); during print
    /// and the first ack attempt it waits for them, so printed messages are acked.
    ///
    /// Transport failures (server down, connection dropped, a proxy's 502/503, the
    /// server shutting down) never end the loop: one line on stderr, then retries with
    /// backoff until the server answers. Acks that failed that way are kept and sent
    /// again first; typed refusals of the server end the command as usual.
    async fn follow(&self) -> Result<(), CliError> {
        let listen = |kind: SignalKind, what: &str| {
            signal(kind).map_err(|source| CliError::Io {
                what: format!("cannot listen for {what}"),
                source,
            })
        };
        let mut interrupt = listen(SignalKind::interrupt(), "Ctrl-C")?;
        let mut terminate = listen(SignalKind::terminate(), "SIGTERM")?;
        let wait = self.args.wait_ms.unwrap_or(FOLLOW_WAIT_MS);
        let mut outage = Outage::default();
        // Receipts of printed messages whose ack has not gone through yet.
        let mut unacked: Vec<String> = Vec::new();
        loop {
            if !unacked.is_empty() {
                let acked = if outage.down() {
                    tokio::select! {
                        biased;
                        _ = interrupt.recv() => return self.stop_unacked(&unacked),
                        _ = terminate.recv() => return self.stop_unacked(&unacked),
                        r = self.ack(&unacked) => r,
                    }
                } else {
                    self.ack(&unacked).await
                };
                match acked {
                    Ok(()) => unacked.clear(),
                    Err(e) if retryable(&e) => {
                        if outage.wait(&e, &mut interrupt, &mut terminate).await {
                            return self.stop_unacked(&unacked);
                        }
                        continue;
                    }
                    Err(e) if is_settle_refusal(&e, outage.down()) => {
                        // Every lease ran out (a restart, a slow reader): redelivered.
                        self.note_redelivery(unacked.len(), &e.one_line());
                        unacked.clear();
                    }
                    Err(e) => return Err(e),
                }
                outage.over();
            }
            let fetched = tokio::select! {
                biased;
                _ = interrupt.recv() => return Ok(()),
                _ = terminate.recv() => return Ok(()),
                batch = self.fetch(self.max().min(MAX_PER_FETCH), wait) => batch,
            };
            let batch = match fetched {
                Ok(b) => b,
                Err(e) if retryable(&e) => {
                    if outage.wait(&e, &mut interrupt, &mut terminate).await {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            outage.over();
            let (receipts, printed) = self.print(batch)?;
            if !self.args.no_ack {
                unacked = receipts;
            }
            if let Err(e) = printed {
                // stdout is gone: ack what it took, then stop.
                if !unacked.is_empty() {
                    self.ack(&unacked).await?;
                }
                return Err(e);
            }
        }
    }

    /// Stopped by a signal while acks are still owed: say what happens to them.
    fn stop_unacked(&self, unacked: &[String]) -> Result<(), CliError> {
        self.note_redelivery(unacked.len(), "stopped before the server was back");
        Ok(())
    }

    fn note_redelivery(&self, n: usize, why: &str) {
        eprintln!(
            "note: {} printed but not acked ({why}); the server delivers {} again \
             after the lease (at least once)",
            output::plural(n, "message"),
            if n == 1 { "it" } else { "them" }
        );
    }

    async fn fetch(&self, max: u32, wait_ms: u64) -> Result<Vec<rest::Delivery>, CliError> {
        let body = rest::FetchRequest {
            max: Some(max as usize),
            wait_ms: Some(wait_ms),
            lease_ms: self.args.lease_ms,
            start: None,
        };
        let answer = self
            .client
            .post(
                &self.group_path("fetch"),
                &body,
                Duration::from_millis(wait_ms),
            )
            .await?;
        Ok(decode::<rest::FetchResponse>("fetch answer", &answer)?.messages)
    }

    /// Prints `batch` (all of it unless stdout fails): the receipts of what was
    /// printed, and how printing ended. The whole answer was decoded before any is
    /// printed, so a bad answer leaves nothing printed unacked.
    fn print(
        &self,
        batch: Vec<rest::Delivery>,
    ) -> Result<(Vec<String>, Result<(), CliError>), CliError> {
        let mut receipts = Vec::with_capacity(batch.len());
        for d in batch {
            let printed = if self.json {
                output::json_line(&d)
            } else {
                output::line(&human_line(&d))
            };
            if printed.is_err() {
                return Ok((receipts, printed));
            }
            receipts.push(d.receipt);
        }
        Ok((receipts, Ok(())))
    }

    /// Acks `receipts`; receipts the server refused one by one (their lease ran out:
    /// the message comes again) are reported on stderr, not fatal.
    async fn ack(&self, receipts: &[String]) -> Result<(), CliError> {
        if receipts.is_empty() {
            return Ok(());
        }
        let answer = self
            .client
            .post(
                &self.group_path("ack"),
                &rest::AckRequest {
                    receipts: receipts.to_vec(),
                },
                Duration::ZERO,
            )
            .await?;
        let refused = decode::<rest::AckResponse>("ack answer", &answer)?.errors;
        for e in &refused {
            let receipt = receipts.get(e.index).map_or("?", String::as_str);
            eprintln!("{}", refused_line(e, receipt));
        }
        if !refused.is_empty() {
            self.note_redelivery(refused.len(), "the server refused the ack");
        }
        Ok(())
    }

    fn group_path<'a>(&'a self, action: &'a str) -> [&'a str; 6] {
        [
            "v1",
            "topics",
            &self.args.topic,
            "groups",
            &self.args.group,
            action,
        ]
    }
}

/// Worth retrying in --follow: the server did not answer, or answered that it is
/// going away; not a typed refusal of this request.
fn retryable(e: &CliError) -> bool {
    match e {
        CliError::Unreachable { .. } | CliError::Transport { .. } => true,
        CliError::Http { status, .. } => matches!(status, 502..=504),
        CliError::Server { code, .. } => code == "shutting_down",
        _ => false,
    }
}

/// An ack refused because the deliveries are no longer ours (their leases ran out, or
/// the group moved on): they will be delivered again. After an outage (`retry`) a
/// receipt the server no longer knows (its data was replaced) counts too; otherwise
/// `receipt_invalid` is a bug worth stopping for.
fn is_settle_refusal(e: &CliError, retry: bool) -> bool {
    let CliError::Server { code, .. } = e else {
        return false;
    };
    matches!(
        code.as_str(),
        "lease_expired" | "receipt_stale" | "not_delivered"
    ) || (retry && code == "receipt_invalid")
}

/// --follow's view of a server that does not answer: one line when it goes away, one
/// when it is back, and the backoff in between.
#[derive(Debug, Default)]
struct Outage {
    /// `Some` while the server is unreachable: the next wait.
    backoff: Option<Duration>,
}

impl Outage {
    fn down(&self) -> bool {
        self.backoff.is_some()
    }

    /// Sleeps the next backoff (saying so the first time); `true` if a signal came.
    async fn wait(
        &mut self,
        e: &CliError,
        interrupt: &mut tokio::signal::unix::Signal,
        terminate: &mut tokio::signal::unix::Signal,
    ) -> bool {
        if !self.down() {
            let what = match e {
                CliError::Unreachable { url } => format!("server {url} unreachable"),
                other => format!("server unreachable ({})", other.one_line()),
            };
            eprintln!(
                "{what}, retrying in {}ms and backing off to every {}s… (Ctrl-C to stop)",
                FIRST_BACKOFF.as_millis(),
                MAX_BACKOFF.as_secs()
            );
        }
        let delay = self.next_delay();
        tokio::select! {
            biased;
            _ = interrupt.recv() => true,
            _ = terminate.recv() => true,
            () = tokio::time::sleep(delay) => false,
        }
    }

    /// 100ms, 200ms, 400ms, … 5s, 5s, …
    fn next_delay(&mut self) -> Duration {
        let delay = self.backoff.unwrap_or(FIRST_BACKOFF);
        self.backoff = Some((delay * 2).min(MAX_BACKOFF));
        delay
    }

    /// The server answered again.
    fn over(&mut self) {
        if self.backoff.take().is_some() {
            eprintln!("server reachable again, resuming");
        }
    }
}

/// `0:17 [delivery 1] key=k payload`
fn human_line(d: &rest::Delivery) -> String {
    let mut s = format!(
        "{}:{} [delivery {}]",
        d.partition, d.offset, d.delivery_count
    );
    if let Some(key) = output::key(&d.message) {
        s.push_str(" key=");
        s.push_str(&key);
    }
    s.push(' ');
    s.push_str(&output::payload(&d.message));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_follow_retries() {
        assert!(retryable(&CliError::Unreachable { url: "u".into() }));
        assert!(retryable(&CliError::Transport {
            url: "u".into(),
            reason: "connection reset".into()
        }));
        assert!(retryable(&CliError::Http {
            status: 503,
            body: String::new()
        }));
        let server = |code: &str| CliError::Server {
            status: 400,
            code: code.into(),
            message: "m".into(),
        };
        assert!(retryable(&server("shutting_down")));
        for code in ["topic_not_found", "invalid_name", "unauthorized"] {
            assert!(!retryable(&server(code)), "{code}");
        }
        assert!(is_settle_refusal(&server("lease_expired"), false));
        assert!(!is_settle_refusal(&server("receipt_invalid"), false));
        assert!(is_settle_refusal(&server("receipt_invalid"), true));
        assert!(!is_settle_refusal(&server("topic_not_found"), true));
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let mut o = Outage::default();
        assert!(!o.down());
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(o.next_delay().as_millis());
        }
        assert_eq!(seen, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert!(o.down());
    }

    #[test]
    fn human_lines() {
        let m = json!({"receipt":"r","partition":1,"offset":17,"delivery_count":2,
                       "lease_until_ms":9,"key":"k","headers":{},"payload":"hello\nworld",
                       "timestamp_ms":1});
        let d: rest::Delivery = decode("m", &m).unwrap();
        assert_eq!(human_line(&d), "1:17 [delivery 2] key=k hello\\nworld");
        let m = json!({"receipt":"r","partition":0,"offset":3,"delivery_count":1,
                       "lease_until_ms":9,"key":null,"headers":{},"payload_base64":"AAE=",
                       "timestamp_ms":1});
        let d: rest::Delivery = decode("m", &m).unwrap();
        assert_eq!(human_line(&d), "0:3 [delivery 1] base64:AAE=");
    }
}
