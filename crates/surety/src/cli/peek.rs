//! `surety peek`: read a partition's messages as stored, without delivering them.

use clap::Args;
use surety_wire::rest;

use super::error::CliError;
use super::http::{Client, decode};
use super::{ClientArgs, Conn, output};

pub const LONG_ABOUT: &str = "\
Read the messages of one partition as they are stored, from an offset on. Peeking is
not a delivery: no group sees a lease, an ack or a raised delivery count, so it is safe
on a topic in production use.

Human output is one line per message: partition:offset key=K payload; when the
partition holds more, a line on stderr gives the command for the next page.
--json prints each message as one JSON object per line (for jq).

Examples:
  surety peek orders
  surety peek orders --partition 1 --offset 1200 --limit 50
  surety peek orders --json | jq .headers";

#[derive(Debug, Args)]
pub struct PeekArgs {
    /// Topic to read
    topic: String,
    /// Partition to read
    #[arg(long, short, default_value_t = 0)]
    partition: u32,
    /// First offset to read [default: the oldest one retained]
    #[arg(long, short)]
    offset: Option<u64>,
    /// Most messages to print (1-1000)
    #[arg(long, short = 'n', default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Last, so that its help heading does not swallow the options above.
    #[command(flatten)]
    pub conn: ClientArgs,
}

pub async fn run(args: PeekArgs, conn: &Conn) -> Result<(), CliError> {
    let client = Client::new(conn)?;
    let mut query = vec![
        ("partition", args.partition.to_string()),
        ("limit", args.limit.to_string()),
    ];
    if let Some(o) = args.offset {
        query.push(("offset", o.to_string()));
    }
    let answer = client
        .get_query(&["v1", "topics", &args.topic, "messages"], &query)
        .await?;
    let page: rest::PeekResponse = decode("peek answer", &answer)?;
    for m in &page.messages {
        if conn.json {
            output::json_line(m)?;
        } else {
            output::line(&human_line(m))?;
        }
    }
    if !conn.json
        && let Some(note) = footer(&args, &page)
    {
        eprintln!("{note}");
    }
    Ok(())
}

/// `0:17 key=k payload`, like `consume` without the delivery count.
fn human_line(m: &rest::Peeked) -> String {
    let mut s = format!("{}:{}", m.partition, m.offset);
    if let Some(key) = output::key(&m.message) {
        s.push_str(" key=");
        s.push_str(&key);
    }
    s.push(' ');
    s.push_str(&output::payload(&m.message));
    s
}

/// What is left to read, on stderr, so stdout holds only messages.
fn footer(args: &PeekArgs, page: &rest::PeekResponse) -> Option<String> {
    let range = format!(
        " (partition {} holds {}..{})",
        args.partition, page.start_offset, page.end_offset
    );
    if page.messages.is_empty() {
        let from = args
            .offset
            .map_or_else(String::new, |o| format!(" from offset {o}"));
        return Some(format!(
            "no messages in partition {} of topic {}{from}{range}",
            args.partition, args.topic
        ));
    }
    let next = page.next_offset;
    if next >= page.end_offset {
        return None;
    }
    Some(format!(
        "more: surety peek {} --partition {} --offset {next}{range}",
        args.topic, args.partition
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(offset: Option<u64>) -> PeekArgs {
        PeekArgs {
            topic: "t".into(),
            partition: 1,
            offset,
            limit: 2,
            conn: ClientArgs::default(),
        }
    }

    #[test]
    fn lines_and_footer() {
        let m = json!({"partition":1,"offset":4,"key":"k","payload":"a\nb","headers":{},
                       "timestamp_ms":1});
        assert_eq!(human_line(&decode("m", &m).unwrap()), "1:4 key=k a\\nb");
        let page: rest::PeekResponse = decode(
            "p",
            &json!({"messages":[m],"next_offset":5,"start_offset":0,"end_offset":9}),
        )
        .unwrap();
        assert_eq!(
            footer(&args(None), &page).unwrap(),
            "more: surety peek t --partition 1 --offset 5 (partition 1 holds 0..9)"
        );
        let last: rest::PeekResponse = decode(
            "p",
            &json!({"messages":[{"partition":1,"offset":8,"payload":"x","headers":{},
                    "timestamp_ms":1}],"next_offset":9,"start_offset":0,"end_offset":9}),
        )
        .unwrap();
        assert_eq!(footer(&args(None), &last), None);
        let empty: rest::PeekResponse = decode(
            "p",
            &json!({"messages":[],"next_offset":9,"start_offset":0,"end_offset":9}),
        )
        .unwrap();
        assert_eq!(
            footer(&args(Some(9)), &empty).unwrap(),
            "no messages in partition 1 of topic t from offset 9 (partition 1 holds 0..9)"
        );
    }
}
