//! `surety groups list|delete|seek` (and `surety groups TOPIC`, the same as `list`),
//! and the reading of a topic's per-group state that `topics describe` shares: lag, in
//! flight, dead letters and the conservation counters.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::error::CliError;
use super::http::Client;
use super::output::{self, Align, Table};
use super::{ClientArgs, Conn, time, topics};

pub const LONG_ABOUT: &str = "\
The consumer groups of a topic. A group exists once it has fetched; the server keeps
its position, acks, leases and dead letters.

  list    lag (messages not yet acked or dead-lettered), in flight (leased to a
          consumer, not yet acked), pending (waiting for a delivery or a retry), dead
          letters, redeliveries. `surety groups TOPIC` is the same as `list TOPIC`.
  delete  drop a group with its unsettled messages and dead letters (other groups
          keep theirs); prints the counts dropped.
  seek    move a group to the start or end of the topic, to an offset, or to a time;
          prints per partition how many unsettled messages it skipped and how many
          settled ones it will deliver again.

Examples:
  surety groups orders
  surety groups list orders --json | jq '.[] | select(.lag > 0)'
  surety groups seek orders billing --to earliest
  surety groups seek orders billing --to @2024-05-01T12:00:00Z
  surety groups delete orders old-billing";

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, arg_required_else_help = true)]
pub struct GroupsArgs {
    /// Topic whose groups to list (the same as `surety groups list TOPIC`)
    topic: Option<String>,
    #[command(subcommand)]
    command: Option<GroupsCommand>,
    /// Last, so that its help heading does not swallow the options above.
    #[command(flatten)]
    pub conn: ClientArgs,
}

#[derive(Debug, Subcommand)]
enum GroupsCommand {
    /// A topic's groups: lag, in flight, pending, dead letters, redeliveries
    #[command(long_about = "A topic's consumer groups: lag (not yet acked or \
                            dead-lettered), in flight, pending, dead letters and \
                            redeliveries.\n\n\
                            Examples:\n  surety groups list orders\n  \
                            surety groups list orders --json | jq -r '.[].name'")]
    List {
        /// Topic whose groups to list
        topic: String,
    },
    /// Drop a group: its position, unsettled messages and dead letters
    #[command(long_about = DELETE_ABOUT)]
    Delete {
        /// Topic of the group
        topic: String,
        /// Group to delete
        group: String,
    },
    /// Move a group's position: earliest, latest, PARTITION:OFFSET or @TIME
    #[command(long_about = SEEK_ABOUT)]
    Seek {
        /// Topic of the group
        topic: String,
        /// Group to move (it must exist: seek does not create groups)
        group: String,
        /// earliest, latest, PARTITION:OFFSET (e.g. 0:1200), or @TIME as ms since the
        /// epoch or RFC 3339 (e.g. @1714564800000, @2024-05-01T12:00:00Z)
        #[arg(long, value_name = "TARGET", value_parser = parse_target)]
        to: Value,
    },
}

const DELETE_ABOUT: &str = "\
Delete a consumer group of a topic: its position, its leases, its unsettled messages
and its dead letters. The topic's messages and its other groups are untouched. There is
no confirmation prompt; the command prints the counts the server dropped. A consumer
that fetches with this group name again starts a new group.

Example:
  surety groups delete orders old-billing";

const SEEK_ABOUT: &str = "\
Move a group's position in every partition (or in one, with PARTITION:OFFSET). Offsets
are clamped to what the partition retains. Nothing is skipped silently: the answer
counts, per partition, the unsettled messages the group passed over (skipped: they
will not be delivered to it) and the settled ones it will get again (replayed).

  earliest          the oldest retained message: replay everything
  latest            the end: skip everything not yet delivered
  PARTITION:OFFSET  that offset of that partition
  @TIME             the first message stored at or after TIME, in every partition

Examples:
  surety groups seek orders billing --to earliest
  surety groups seek orders billing --to latest
  surety groups seek orders billing --to 1:1200
  surety groups seek orders billing --to @2024-05-01T12:00:00Z";

/// `--to`: the JSON the seek endpoint takes.
fn parse_target(s: &str) -> Result<Value, String> {
    match s {
        "earliest" | "latest" => return Ok(json!(s)),
        _ => {}
    }
    if let Some(at) = s.strip_prefix('@') {
        return time::parse_timestamp_ms(at).map(|t| json!({ "timestamp_ms": t }));
    }
    let bad = || {
        format!(
            "{s:?} is not a seek target: use earliest, latest, PARTITION:OFFSET (0:1200) \
             or @TIME (@1714564800000, @2024-05-01T12:00:00Z)"
        )
    };
    let (p, o) = s.split_once(':').ok_or_else(bad)?;
    let p: u32 = p.parse().map_err(|_| bad())?;
    let o: u64 = o.parse().map_err(|_| bad())?;
    Ok(json!({ "partition": p, "offset": o }))
}

/// The target as people read it back.
fn target_text(to: &Value) -> String {
    match to {
        Value::String(s) => s.clone(),
        v => match (
            v.get("partition").and_then(Value::as_u64),
            v.get("offset").and_then(Value::as_u64),
            v.get("timestamp_ms").and_then(Value::as_u64),
        ) {
            (Some(p), Some(o), _) => format!("{p}:{o}"),
            (_, _, Some(t)) => format!("@{t}"),
            _ => v.to_string(),
        },
    }
}

pub async fn run(args: GroupsArgs, conn: &Conn) -> Result<(), CliError> {
    let client = Client::new(conn)?;
    let json = conn.json;
    match (args.command, args.topic) {
        (Some(GroupsCommand::List { topic }), _) | (None, Some(topic)) => {
            list(&client, &topic, json).await
        }
        (Some(GroupsCommand::Delete { topic, group }), _) => {
            delete(&client, &topic, &group, json).await
        }
        (Some(GroupsCommand::Seek { topic, group, to }), _) => {
            seek(&client, &topic, &group, &to, json).await
        }
        (None, None) => Err(CliError::Usage(
            "give a TOPIC, or a command: surety groups list|delete|seek".into(),
        )),
    }
}

async fn list(client: &Client, topic: &str, json: bool) -> Result<(), CliError> {
    let groups = fetch_groups(client, topic).await?;
    if json {
        return output::json(&Value::Array(groups));
    }
    output::table(
        &list_table(&groups),
        groups.len(),
        &format!("topic {topic} has no consumer groups yet"),
    )
}

/// GET /v1/topics/{topic}/groups; from a server without that route, the groups of
/// the topic's description (the same objects).
async fn fetch_groups(client: &Client, topic: &str) -> Result<Vec<Value>, CliError> {
    let answer = match client.get(&["v1", "topics", topic, "groups"]).await {
        Ok(a) => a,
        Err(CliError::Server { code, .. })
            if code == "not_found" || code == "method_not_allowed" =>
        {
            return Ok(of(&topics::fetch(client, topic).await?).to_vec());
        }
        Err(CliError::Http {
            status: 404 | 405, ..
        }) => return Ok(of(&topics::fetch(client, topic).await?).to_vec()),
        Err(e) => return Err(e),
    };
    answer
        .get("groups")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| CliError::Protocol("group list without \"groups\"".into()))
}

async fn delete(client: &Client, topic: &str, group: &str, json: bool) -> Result<(), CliError> {
    let answer = client
        .delete(&["v1", "topics", topic, "groups", group], &[])
        .await?;
    if json {
        return output::json(&answer);
    }
    let n = |field: &str| output::number(&answer, &[&format!("/{field}")]).unwrap_or(0) as usize;
    output::line(&format!(
        "deleted group {group} of topic {topic}: dropped {} and {}",
        output::plural(n("unsettled_dropped"), "unsettled message"),
        output::plural(n("dead_letters_dropped"), "dead letter"),
    ))
}

async fn seek(
    client: &Client,
    topic: &str,
    group: &str,
    to: &Value,
    json: bool,
) -> Result<(), CliError> {
    let answer = client
        .post(
            &["v1", "topics", topic, "groups", group, "seek"],
            &json!({ "to": to }),
            Duration::ZERO,
        )
        .await?;
    if json {
        return output::json(&answer);
    }
    output::line(&seek_text(topic, group, to, &answer))
}

/// A summary line, then one row per partition.
fn seek_text(topic: &str, group: &str, to: &Value, answer: &Value) -> String {
    let n = |v: &Value, field: &str| output::number(v, &[&format!("/{field}")]);
    let mut out = format!(
        "moved group {group} of topic {topic} to {}: {} skipped, {} replayed",
        target_text(to),
        output::plural(
            n(answer, "skipped").unwrap_or(0) as usize,
            "unsettled message"
        ),
        output::plural(
            n(answer, "replayed").unwrap_or(0) as usize,
            "settled message"
        ),
    );
    let parts = answer
        .get("partitions")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    if !parts.is_empty() {
        let mut t = Table::new(&[
            ("partition", Align::Right),
            ("from", Align::Right),
            ("to", Align::Right),
            ("skipped", Align::Right),
            ("replayed", Align::Right),
        ]);
        for p in parts {
            t.row(
                ["partition", "from", "to", "skipped", "replayed"]
                    .iter()
                    .map(|f| output::cell(n(p, f)))
                    .collect(),
            );
        }
        out.push('\n');
        out.push_str(t.to_text().trim_end());
    }
    out
}

/// The groups of a topic as the server describes it.
pub fn of(topic: &Value) -> &[Value] {
    topic
        .get("groups")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// A counter of a group, flat or under `stats` (the conservation counters).
fn counter(g: &Value, name: &str) -> Option<u64> {
    output::number(
        g,
        &[
            &format!("/{name}"),
            &format!("/stats/{name}"),
            &format!("/counters/{name}"),
        ],
    )
}

/// Live dead letters: a plain count, or the live part of a dead-letter summary.
fn dead_letters(g: &Value) -> Option<u64> {
    output::number(
        g,
        &[
            "/dead_letters",
            "/dead_letters_live",
            "/dead_letters/live",
            "/dlq/live",
        ],
    )
}

/// accepted = acked + in_flight + pending + dead_lettered + expired_unsettled
/// (docs/broker.md); `None` when the server did not send all the counters.
fn conserved(g: &Value) -> Option<bool> {
    let parts = [
        "acked",
        "in_flight",
        "pending",
        "dead_lettered",
        "expired_unsettled",
    ]
    .iter()
    .map(|n| counter(g, n))
    .sum::<Option<u64>>()?;
    Some(counter(g, "accepted")? == parts)
}

/// `groups list`: one row per group.
fn list_table(groups: &[Value]) -> Table {
    let mut t = Table::new(&[
        ("group", Align::Left),
        ("lag", Align::Right),
        ("in flight", Align::Right),
        ("pending", Align::Right),
        ("dead letters", Align::Right),
        ("redeliveries", Align::Right),
    ]);
    for g in groups {
        t.row(vec![
            name(g).to_string(),
            output::cell(counter(g, "lag")),
            output::cell(counter(g, "in_flight")),
            output::cell(counter(g, "pending")),
            output::cell(dead_letters(g)),
            output::cell(counter(g, "redeliveries")),
        ]);
    }
    t
}

fn name(g: &Value) -> &str {
    g.get("name")
        .or_else(|| g.get("group"))
        .and_then(Value::as_str)
        .unwrap_or("?")
}

/// `topics describe`: one row per group with the conservation counters.
pub fn table(groups: &[Value]) -> Table {
    let mut t = Table::new(&[
        ("group", Align::Left),
        ("lag", Align::Right),
        ("in flight", Align::Right),
        ("dead letters", Align::Right),
        ("accepted", Align::Right),
        ("acked", Align::Right),
        ("pending", Align::Right),
        ("dead-lettered", Align::Right),
        ("expired", Align::Right),
        ("redelivered", Align::Right),
        ("conserved", Align::Left),
    ]);
    for g in groups {
        let mut row = vec![
            name(g).to_string(),
            output::cell(counter(g, "lag")),
            output::cell(counter(g, "in_flight")),
            output::cell(dead_letters(g)),
        ];
        for n in [
            "accepted",
            "acked",
            "pending",
            "dead_lettered",
            "expired_unsettled",
            "redeliveries",
        ] {
            row.push(output::cell(counter(g, n)));
        }
        row.push(
            match conserved(g) {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            }
            .into(),
        );
        t.row(row);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_flat_and_nested_counters() {
        let groups = [
            json!({"name":"billing","lag":2,"in_flight":1,"dead_letters":3,
                   "stats":{"accepted":10,"acked":5,"in_flight":1,"pending":1,
                            "dead_lettered":3,"expired_unsettled":0,"redeliveries":4}}),
            json!({"name":"audit","lag":0}),
        ];
        assert_eq!(conserved(&groups[0]), Some(true));
        assert_eq!(conserved(&groups[1]), None);
        let text = table(&groups).to_text();
        assert!(text.lines().nth(2).unwrap().ends_with("4  yes"), "{text}");
        assert_eq!(
            list_table(&groups).to_text(),
            "group    lag  in flight  pending  dead letters  redeliveries\n\
             -------  ---  ---------  -------  ------------  ------------\n\
             billing    2          1        1             3             4\n\
             audit      0          -        -             -             -\n"
        );
    }

    #[test]
    fn seek_targets() {
        assert_eq!(parse_target("earliest").unwrap(), json!("earliest"));
        assert_eq!(parse_target("latest").unwrap(), json!("latest"));
        assert_eq!(
            parse_target("1:1200").unwrap(),
            json!({"partition": 1, "offset": 1200})
        );
        assert_eq!(
            parse_target("@1714564800000").unwrap(),
            json!({"timestamp_ms": 1_714_564_800_000_u64})
        );
        assert_eq!(
            parse_target("@2024-05-01T12:00:00Z").unwrap(),
            json!({"timestamp_ms": 1_714_564_800_000_u64})
        );
        for bad in ["first", "1:", ":3", "-1:3", "1:x", "@yesterday", "1:2:3"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        for t in ["earliest", "1:1200", "@5"] {
            assert_eq!(target_text(&parse_target(t).unwrap()), t);
        }
    }

    #[test]
    fn seek_is_summarised_per_partition() {
        let answer = json!({"skipped": 2, "replayed": 5, "partitions": [
            {"partition": 0, "from": 7, "to": 0, "skipped": 0, "replayed": 5},
            {"partition": 1, "from": 3, "to": 5, "skipped": 2, "replayed": 0}]});
        assert_eq!(
            seek_text("t", "g", &json!("earliest"), &answer),
            "moved group g of topic t to earliest: 2 unsettled messages skipped, \
             5 settled messages replayed\n\
             partition  from  to  skipped  replayed\n\
             ---------  ----  --  -------  --------\n\
             \x20       0     7   0        0         5\n\
             \x20       1     3   5        2         0"
        );
    }
}
