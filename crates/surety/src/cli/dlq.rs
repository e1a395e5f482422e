//! `surety dlq list|show|resend|purge`: a consumer group's dead-letter queue.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::Value;
use surety_wire::rest;

use super::contract::Seam;
use super::error::CliError;
use super::http::{Client, decode};
use super::output::{self, Align, StreamTable};
use super::{ClientArgs, Conn};

pub const LONG_ABOUT: &str = "\
Inspect and settle a consumer group's dead-letter queue: messages that used up their
deliveries (the topic's max_deliveries), kept with the reason and attempts. Dead
letters never expire; resend delivers them to that group again, purge deletes them.

Examples:
  surety dlq list orders --group billing
  surety dlq list orders --group billing --json | jq -r .reason
  surety dlq show orders --group billing 3
  surety dlq resend orders --group billing --id 3 --id 4
  surety dlq resend orders --group billing --all
  surety dlq purge orders --group billing --all";

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(flatten)]
    pub conn: ClientArgs,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// The group's dead letters: id, partition:offset, attempts, reason, payload
    #[command(long_about = LIST_ABOUT)]
    List {
        #[command(flatten)]
        queue: Queue,
        /// Print at most this many dead letters [default: all]
        #[arg(long, short = 'n', value_name = "N",
              value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// Dead letters fetched per request (1-1000)
        #[arg(long, value_name = "N", default_value_t = 100,
              value_parser = clap::value_parser!(u32).range(1..=1000))]
        page_size: u32,
    },
    /// One dead letter in full: reason, attempts, delivery times, key, headers, payload
    #[command(long_about = "Show one dead letter in full.\n\n\
                            Example:\n  surety dlq show orders --group billing 3")]
    Show {
        #[command(flatten)]
        queue: Queue,
        /// Dead-letter id (from `surety dlq list`)
        id: u64,
    },
    /// Deliver dead letters to the group again (other groups are not affected)
    #[command(
        long_about = "Put dead letters back into the group's delivery, with a fresh \
                            delivery count. Other groups do not see them again.\n\n\
                            Examples:\n  surety dlq resend orders --group billing --id 3\n  \
                            surety dlq resend orders --group billing --all"
    )]
    Resend {
        #[command(flatten)]
        queue: Queue,
        #[command(flatten)]
        which: Which,
    },
    /// Delete dead letters for good (counted by the server); needs --id or --all
    #[command(
        long_about = "Delete dead letters for good. There is no confirmation prompt, \
                            so the selection must be explicit: --id (repeatable) or --all. \
                            The server counts purged dead letters.\n\n\
                            Examples:\n  surety dlq purge orders --group billing --id 3\n  \
                            surety dlq purge orders --group billing --all"
    )]
    Purge {
        #[command(flatten)]
        queue: Queue,
        #[command(flatten)]
        which: Which,
    },
}

const LIST_ABOUT: &str = "\
List a group's dead letters, oldest first: id, partition:offset, attempts, reason and
the start of the payload (`surety dlq show` prints one in full).

The list is fetched page by page (--page-size per request) and each page is printed as
it arrives, so a queue of any size lists in constant memory; --limit stops after that
many. --json prints one JSON object per dead letter per line (JSON lines, not one
array: pipe through `jq -s .` for an array).

Examples:
  surety dlq list orders --group billing
  surety dlq list orders --group billing --limit 20
  surety dlq list orders --group billing --json | jq -r '[.id, .reason] | @tsv'";

/// Dead-letter queues are per topic and group.
#[derive(Debug, Args)]
struct Queue {
    /// Topic of the dead letters
    topic: String,
    /// Consumer group whose dead letters these are
    #[arg(long, short)]
    group: String,
}

/// Resend and purge act on an explicit selection, never on a default.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Which {
    /// Dead-letter id; repeat for more
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<u64>,
    /// Every dead letter of the group
    #[arg(long)]
    all: bool,
}

impl Queue {
    fn path<'a>(&'a self, action: Option<&'a str>) -> Vec<&'a str> {
        let mut p = vec![
            "v1",
            "topics",
            &self.topic,
            "groups",
            &self.group,
            "dead-letters",
        ];
        p.extend(action);
        p
    }
}

impl Which {
    fn body(&self) -> rest::SelectionRequest {
        if self.all {
            rest::SelectionRequest {
                ids: None,
                all: Some(true),
            }
        } else {
            rest::SelectionRequest {
                ids: Some(self.ids.clone()),
                all: None,
            }
        }
    }
}

pub async fn run(args: DlqArgs, conn: &Conn) -> Result<(), CliError> {
    if let Some(seam) = Seam::for_backend(conn, None).await? {
        return match args.command {
            DlqCommand::List {
                queue,
                limit,
                page_size,
            } => {
                seam.dead_letters(&queue.topic, &queue.group, limit, page_size)
                    .await
            }
            DlqCommand::Show { queue, id } => {
                seam.show_dead_letter(&queue.topic, &queue.group, &id.to_string())
                    .await
            }
            DlqCommand::Resend { queue, which } => {
                seam.settle_dead_letters(&queue.topic, &queue.group, &which.ids, false)
                    .await
            }
            DlqCommand::Purge { queue, which } => {
                seam.settle_dead_letters(&queue.topic, &queue.group, &which.ids, true)
                    .await
            }
        };
    }
    let client = Client::new(conn)?;
    let json = conn.json;
    match args.command {
        DlqCommand::List {
            queue,
            limit,
            page_size,
        } => list(&client, &queue, limit, page_size, json).await,
        DlqCommand::Show { queue, id } => {
            let id = id.to_string();
            let letter = client.get(&queue.path(Some(&id))).await?;
            if json {
                output::json(&letter)
            } else {
                output::line(&show(&letter))
            }
        }
        DlqCommand::Resend { queue, which } => {
            settle(&client, &queue, &which, "resend", "resent", json).await
        }
        DlqCommand::Purge { queue, which } => {
            settle(&client, &queue, &which, "purge", "purged", json).await
        }
    }
}

/// [`rest::DeadLetterPage`] with each dead letter left as JSON: a dead letter's `id`
/// and its message's `id` share one key (see `rest::DeadLetter`), so a letter whose
/// message has an id does not read into the typed struct; the rows read what they need
/// from the JSON, and `--json` prints it as it came.
#[derive(Debug, Deserialize)]
struct Page {
    dead_letters: Vec<Value>,
    next: Option<u64>,
}

/// Follows the `next` cursor (`?limit=N&after=ID`) page by page, printing each page
/// as it arrives, until the server says there is no next page or `limit` are printed.
/// A server without paging answers everything at once, without `next`: one page.
async fn list(
    client: &Client,
    q: &Queue,
    limit: Option<u64>,
    page_size: u32,
    json: bool,
) -> Result<(), CliError> {
    let mut left = limit.unwrap_or(u64::MAX);
    let mut after: Option<String> = None;
    let mut printed = StreamTable::new(&COLUMNS);
    while left > 0 {
        let mut query = vec![("limit", left.min(u64::from(page_size)).to_string())];
        if let Some(a) = &after {
            query.push(("after", a.clone()));
        }
        let answer: Page = decode(
            "dead-letter page",
            &client.get_query(&q.path(None), &query).await?,
        )?;
        let letters = &answer.dead_letters;
        let page = &letters[..letters
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX))];
        left -= page.len() as u64;
        if json {
            for l in page {
                output::json_line(l)?;
            }
        } else {
            for line in printed.page(&page.iter().map(row).collect::<Vec<_>>()) {
                output::line(&line)?;
            }
        }
        let Some(next) = answer.next.map(|n| n.to_string()) else {
            break;
        };
        // An empty page, or a cursor that does not move, would loop forever.
        if page.is_empty() || after.as_ref() == Some(&next) {
            break;
        }
        after = Some(next);
    }
    if !json && !printed.started() {
        output::line(&format!(
            "no dead letters for group {} on topic {}",
            q.group, q.topic
        ))?;
    }
    Ok(())
}

/// Resend or purge: POST `{ids}|{all}` to `.../dead-letters/{action}`, which answers
/// `{"<done>": n}` (unknown ids are skipped, not refused).
async fn settle(
    client: &Client,
    q: &Queue,
    which: &Which,
    action: &str,
    done: &str,
    json: bool,
) -> Result<(), CliError> {
    let answer = client
        .post(&q.path(Some(action)), &which.body(), Duration::ZERO)
        .await?;
    if json {
        return output::json(&answer);
    }
    let what = format!("{action} answer");
    let n = if action == "resend" {
        decode::<rest::ResendResponse>(&what, &answer)?.resent
    } else {
        decode::<rest::PurgeResponse>(&what, &answer)?.purged
    };
    output::line(&format!(
        "{done} {} of group {} on topic {}",
        output::plural(n, "dead letter"),
        q.group,
        q.topic
    ))
}

const COLUMNS: [(&str, Align); 5] = [
    ("id", Align::Right),
    ("message", Align::Left),
    ("attempts", Align::Right),
    ("reason", Align::Left),
    ("payload", Align::Left),
];

/// One dead letter as a row of [`COLUMNS`].
fn row(l: &Value) -> Vec<String> {
    let at = match (
        output::number(l, &["/partition"]),
        output::number(l, &["/offset"]),
    ) {
        (Some(p), Some(o)) => format!("{p}:{o}"),
        _ => "-".into(),
    };
    vec![
        output::cell(output::number(l, &["/id"])),
        at,
        output::cell(output::number(l, &["/attempts"])),
        output::truncate(l.get("reason").and_then(Value::as_str).unwrap_or(""), 40),
        output::truncate(&output::bytes_field(l, "payload").unwrap_or_default(), 40),
    ]
}

/// Every field as `name  value`: where and why first, the message itself last and
/// whole (payload unabridged).
fn show(letter: &Value) -> String {
    const FIRST: [&str; 9] = [
        "id",
        "partition",
        "offset",
        "group",
        "reason",
        "attempts",
        "first_delivered_at_ms",
        "last_delivered_at_ms",
        "dead_lettered_at_ms",
    ];
    const MESSAGE: [&str; 5] = ["key", "key_base64", "headers", "payload", "payload_base64"];
    let empty = serde_json::Map::new();
    let map = letter.as_object().unwrap_or(&empty);
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut rows: Vec<(String, String)> = Vec::new();
    let known = FIRST.iter().filter_map(|k| map.get(*k).map(|v| (*k, v)));
    let others = map
        .iter()
        .filter(|(k, _)| !FIRST.contains(&k.as_str()) && !MESSAGE.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v));
    for (k, v) in known.chain(others) {
        if !v.is_null() {
            rows.push((k.to_string(), text(v)));
        }
    }
    if let Some(key) = output::bytes_field(letter, "key") {
        rows.push(("key".into(), key));
    }
    if let Some(h) = map
        .get("headers")
        .filter(|h| h.as_object().is_some_and(|m| !m.is_empty()))
    {
        rows.push(("headers".into(), h.to_string()));
    }
    rows.push((
        "payload".into(),
        output::bytes_field(letter, "payload").unwrap_or_default(),
    ));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selection_bodies() {
        let all = Which {
            ids: vec![],
            all: true,
        };
        assert_eq!(
            serde_json::to_value(all.body()).unwrap(),
            json!({"all": true})
        );
        let some = Which {
            ids: vec![3, 4],
            all: false,
        };
        assert_eq!(
            serde_json::to_value(some.body()).unwrap(),
            json!({"ids": [3, 4]})
        );
    }

    #[test]
    fn list_and_show_render() {
        let l = json!({"id":7,"partition":0,"offset":12,"reason":"lease expired","attempts":5,
                       "key":"k","headers":{"a":"b"},"payload":"boom"});
        assert_eq!(
            StreamTable::new(&COLUMNS).page(&[row(&l)]).join("\n"),
            "id  message  attempts  reason         payload\n\
             --  -------  --------  -------------  -------\n \
             7  0:12            5  lease expired  boom"
        );
        let s = show(&l);
        assert_eq!(
            s,
            "id         7\npartition  0\noffset     12\nreason     lease expired\n\
             attempts   5\nkey        k\nheaders    {\"a\":\"b\"}\npayload    boom"
        );
    }
}
