//! `surety consume`: fetch messages of a consumer group, print them, and only then
//! ack them, so a message is acked only once it is out of this process.

use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};

use super::error::CliError;
use super::http::{Client, decode};
use super::{ClientArgs, output};

pub const LONG_ABOUT: &str = "\
Fetch messages for a consumer group, print them, then acknowledge them. Each group
gets every message of the topic; within a group each message goes to one consumer.

Human output is one line per message: partition:offset [delivery N] key=K payload.
--json prints each message as one JSON object per line (for jq).

A message is acked only after its line is written. With --no-ack nothing is acked:
the messages are delivered again once their lease (--lease-ms) runs out, and a
message delivered max_deliveries times moves to the group's dead-letter queue
(see `surety dlq`).

Examples:
  surety consume orders --group billing
  surety consume orders --group billing --follow --json | jq .payload
  surety consume orders --group billing --no-ack --max 1 --lease-ms 5000";

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to consume from
    topic: String,
    /// Consumer group: its position and acks are kept by the server
    #[arg(long, short)]
    group: String,
    /// Messages to fetch (with --follow: per fetch)
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    max: u32,
    /// Keep fetching (long polling) until Ctrl-C
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
    /// Last, so that its help heading does not swallow the options above.
    #[command(flatten)]
    pub conn: ClientArgs,
}

/// What `consume` needs of a delivery; the rest is printed as the server sent it.
#[derive(Debug, Deserialize)]
struct Delivery {
    receipt: String,
    partition: u32,
    offset: u64,
    delivery_count: u32,
}

#[derive(Debug, Deserialize)]
struct FetchResponse {
    messages: Vec<Value>,
}

const FOLLOW_WAIT_MS: u64 = 5_000;

/// The most the server hands out per fetch; larger `--max` takes several fetches.
const MAX_PER_FETCH: u32 = 1_000;

pub async fn run(args: ConsumeArgs) -> Result<(), CliError> {
    let client = Client::new(&args.conn)?;
    let consumer = Consumer {
        client: &client,
        args: &args,
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
}

impl Consumer<'_> {
    /// Up to `--max` messages, then exit.
    async fn once(&self) -> Result<(), CliError> {
        let mut left = self.args.max;
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
            total += self.deliver(&batch).await?;
            wait = 0;
        }
        if !self.args.conn.json {
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

    /// Fetch, print, ack, until Ctrl-C. Ctrl-C during a fetch abandons it (anything the
    /// server leased meanwhile comes back after the lease); during print and ack it
    /// waits for them to finish, so printed messages are acked.
    async fn follow(&self) -> Result<(), CliError> {
        let mut interrupt = signal(SignalKind::interrupt()).map_err(|source| CliError::Io {
            what: "cannot listen for Ctrl-C".into(),
            source,
        })?;
        let wait = self.args.wait_ms.unwrap_or(FOLLOW_WAIT_MS);
        loop {
            let batch = tokio::select! {
                biased;
                _ = interrupt.recv() => return Ok(()),
                batch = self.fetch(self.args.max.min(MAX_PER_FETCH), wait) => batch?,
            };
            self.deliver(&batch).await?;
        }
    }

    async fn fetch(&self, max: u32, wait_ms: u64) -> Result<Vec<Value>, CliError> {
        let mut body = json!({ "max": max, "wait_ms": wait_ms });
        if let Some(lease) = self.args.lease_ms {
            body["lease_ms"] = lease.into();
        }
        let answer = self
            .client
            .post(
                &self.group_path("fetch"),
                &body,
                Duration::from_millis(wait_ms),
            )
            .await?;
        Ok(decode::<FetchResponse>("fetch answer", &answer)?.messages)
    }

    /// Prints `batch` and acks what was printed (all of it unless stdout failed).
    /// Returns how many were printed.
    async fn deliver(&self, batch: &[Value]) -> Result<usize, CliError> {
        let mut receipts = Vec::with_capacity(batch.len());
        let mut printed = Ok(());
        // Decode all before printing any, so a bad answer leaves nothing printed unacked.
        let deliveries: Vec<Delivery> = batch
            .iter()
            .map(|m| decode("delivered message", m))
            .collect::<Result<_, _>>()?;
        for (d, m) in deliveries.into_iter().zip(batch) {
            printed = if self.args.conn.json {
                output::json_line(m)
            } else {
                output::line(&human_line(&d, m))
            };
            if printed.is_err() {
                break;
            }
            receipts.push(d.receipt);
        }
        let count = receipts.len();
        if !self.args.no_ack && !receipts.is_empty() {
            self.client
                .post(
                    &self.group_path("ack"),
                    &json!({ "receipts": receipts }),
                    Duration::ZERO,
                )
                .await?;
        }
        printed.map(|()| count)
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

/// `0:17 [delivery 1] key=k payload`
fn human_line(d: &Delivery, m: &Value) -> String {
    let mut s = format!(
        "{}:{} [delivery {}]",
        d.partition, d.offset, d.delivery_count
    );
    if let Some(key) = output::bytes_field(m, "key") {
        s.push_str(" key=");
        s.push_str(&key);
    }
    s.push(' ');
    s.push_str(&output::bytes_field(m, "payload").unwrap_or_default());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_lines() {
        let m = json!({"receipt":"r","partition":1,"offset":17,"delivery_count":2,
                       "key":"k","headers":{},"payload":"hello\nworld"});
        let d: Delivery = decode("m", &m).unwrap();
        assert_eq!(human_line(&d, &m), "1:17 [delivery 2] key=k hello\\nworld");
        let m = json!({"receipt":"r","partition":0,"offset":3,"delivery_count":1,
                       "key":null,"payload_base64":"AAE="});
        let d: Delivery = decode("m", &m).unwrap();
        assert_eq!(human_line(&d, &m), "0:3 [delivery 1] base64:AAE=");
    }
}
