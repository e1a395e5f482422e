//! `surety ack` and `surety nack`: settle deliveries by their receipts, for scripts that
//! fetch with `consume --no-ack --json` and decide later. Each receipt stands on its
//! own: the server applies the valid ones and lists the refused ones.

use std::time::Duration;

use clap::Args;
use serde_json::Value;
use surety_wire::rest;

use super::error::CliError;
use super::http::{Client, decode};
use super::{ClientArgs, Conn, output, time};

pub const ACK_ABOUT: &str = "\
Acknowledge deliveries by receipt: the group is done with those messages. Receipts come
with every delivery (the \"receipt\" field of `surety consume --no-ack --json`).

Each receipt stands on its own: the valid ones are acked, the refused ones are listed
on stderr with the reason (a lease that ran out is lease_expired: that message is
delivered again). The exit status is 1 if any receipt was refused.

Examples:
  surety consume orders -g billing --no-ack --json > batch.jsonl
  jq -r .receipt batch.jsonl | xargs surety ack orders -g billing";

pub const NACK_ABOUT: &str = "\
Hand deliveries back by receipt: each message is delivered again after --delay (or the
topic's retry backoff, if longer), with its delivery count raised. A message nacked at
the topic's max_deliveries goes to the group's dead-letter queue with --reason, which
`surety dlq list` shows.

Each receipt stands on its own: the valid ones are nacked, the refused ones are listed
on stderr with the reason. The exit status is 1 if any receipt was refused.

Examples:
  surety consume orders -g billing --no-ack --json | jq -r .receipt > receipts
  xargs surety nack orders -g billing --delay 30s --reason 'payment service down' < receipts";

#[derive(Debug, Args)]
pub struct AckArgs {
    #[command(flatten)]
    receipts: Receipts,
    /// Last, so that its help heading does not swallow the options above.
    #[command(flatten)]
    pub conn: ClientArgs,
}

#[derive(Debug, Args)]
pub struct NackArgs {
    #[command(flatten)]
    receipts: Receipts,
    /// Deliver again no earlier than this: 1500ms, 30s, 5m, 1m30s (at most 12h)
    #[arg(long, value_name = "DURATION", value_parser = time::parse_duration,
          conflicts_with = "delay_ms")]
    delay: Option<Duration>,
    /// The same in milliseconds (0-43200000)
    #[arg(long, value_name = "MS")]
    delay_ms: Option<u64>,
    /// Why: kept with the message if this nack moves it to the dead letters (at most
    /// 4096 bytes)
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// Last, so that its help heading does not swallow the options above.
    #[command(flatten)]
    pub conn: ClientArgs,
}

#[derive(Debug, Args)]
struct Receipts {
    /// Topic of the deliveries
    topic: String,
    /// Consumer group the messages were delivered to
    #[arg(long, short)]
    group: String,
    /// Receipts of the deliveries (the "receipt" field of a delivery)
    #[arg(required = true, value_name = "RECEIPT")]
    receipts: Vec<String>,
}

/// The longest nack reason the server keeps.
const MAX_REASON_BYTES: usize = 4096;

/// How many receipts an ack (`done` = `"acked"`) or nack answer settled, and the ones
/// it refused, each on its own (docs: "each receipt stands on its own").
fn settled(answer: &Value, done: &str) -> Result<(usize, Vec<rest::ReceiptError>), CliError> {
    if done == "acked" {
        let a: rest::AckResponse = decode("ack answer", answer)?;
        Ok((a.acked, a.errors))
    } else {
        let n: rest::NackResponse = decode("nack answer", answer)?;
        Ok((n.nacked, n.errors))
    }
}

pub async fn ack(args: AckArgs, conn: &Conn) -> Result<(), CliError> {
    let client = Client::new(conn)?;
    let r = &args.receipts;
    let answer = client
        .post(
            &path(r, "ack"),
            &rest::AckRequest {
                receipts: r.receipts.clone(),
            },
            Duration::ZERO,
        )
        .await?;
    report(&answer, r, "acked", "", conn.json)
}

pub async fn nack(args: NackArgs, conn: &Conn) -> Result<(), CliError> {
    let delay_ms = match (args.delay, args.delay_ms) {
        (Some(d), _) => {
            time::check_delay("--delay", &time::human(d), d).map_err(CliError::Usage)?
        }
        (None, Some(ms)) => {
            time::check_delay("--delay-ms", &ms.to_string(), Duration::from_millis(ms))
                .map_err(CliError::Usage)?
        }
        (None, None) => 0,
    };
    let reason = args.reason.unwrap_or_default();
    if reason.len() > MAX_REASON_BYTES {
        return Err(CliError::Usage(format!(
            "--reason is {} bytes; the server keeps at most {MAX_REASON_BYTES}",
            reason.len()
        )));
    }
    let client = Client::new(conn)?;
    let r = &args.receipts;
    let answer = client
        .post(
            &path(r, "nack"),
            &rest::NackRequest {
                receipts: r.receipts.clone(),
                delay_ms,
                reason,
            },
            Duration::ZERO,
        )
        .await?;
    let after = if delay_ms > 0 {
        format!(
            "; delivered again in {} at the earliest",
            time::human(Duration::from_millis(delay_ms))
        )
    } else {
        String::new()
    };
    report(&answer, r, "nacked", &after, conn.json)
}

fn path<'a>(r: &'a Receipts, action: &'a str) -> [&'a str; 6] {
    ["v1", "topics", &r.topic, "groups", &r.group, action]
}

/// The count on stdout (or the answer as JSON), each refused receipt on stderr, and
/// exit status 1 when any was refused.
fn report(
    answer: &Value,
    r: &Receipts,
    done: &str,
    tail: &str,
    json: bool,
) -> Result<(), CliError> {
    let (n, refused) = settled(answer, done)?;
    if json {
        output::json(answer)?;
    } else {
        let counted = if refused.is_empty() {
            match n {
                1 => "1 delivery".to_string(),
                n => format!("{n} deliveries"),
            }
        } else {
            format!("{n} of {} deliveries", r.receipts.len())
        };
        output::line(&format!(
            "{done} {counted} of group {} on topic {}{tail}",
            r.group, r.topic
        ))?;
    }
    if refused.is_empty() {
        return Ok(());
    }
    for e in &refused {
        let receipt = r.receipts.get(e.index).map_or("?", String::as_str);
        eprintln!("{}", refused_line(e, receipt));
    }
    Err(CliError::Refused(format!(
        "{} of {} receipts refused",
        refused.len(),
        r.receipts.len()
    )))
}

/// `refused receipt 2 (abcd…): lease expired (lease_expired)`
pub fn refused_line(e: &rest::ReceiptError, receipt: &str) -> String {
    let message = if e.message.is_empty() {
        e.code.clone()
    } else {
        format!("{} ({})", e.message, e.code)
    };
    format!(
        "refused receipt {} ({}): {message}",
        e.index,
        output::truncate(receipt, 24)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refused_receipts_are_read_and_named() {
        assert_eq!(settled(&json!({"acked": 2}), "acked").unwrap(), (2, vec![]));
        let answer = json!({"nacked": 1, "errors": [
            {"index": 1, "code": "receipt_invalid", "message": "receipt is malformed"}]});
        let (n, r) = settled(&answer, "nacked").unwrap();
        assert_eq!((n, r.len()), (1, 1));
        assert_eq!(
            refused_line(&r[0], "not-a-receipt"),
            "refused receipt 1 (not-a-receipt): receipt is malformed (receipt_invalid)"
        );
        assert!(settled(&json!({"acked": 1, "errors": 3}), "acked").is_err());
        assert!(settled(&json!({"acked": 1}), "nacked").is_err());
    }
}
