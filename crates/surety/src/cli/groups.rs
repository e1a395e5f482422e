//! `surety groups list|delete|seek` (and `surety groups TOPIC`, the same as `list`),
//! and the reading of a topic's per-group state that `topics describe` shares: lag, in
//! flight, dead letters and the conservation counters.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use surety_wire::rest;

use super::error::CliError;
use super::http::{Client, decode};
use super::output::{self, Align, Table};
use super::{ClientArgs, Conn, time};

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
    let answer: rest::GroupList = client
        .get_as("group list", &["v1", "topics", topic, "groups"])
        .await?;
    let groups = answer.groups;
    if json {
        return output::json(&groups);
    }
    output::table(
        &list_table(&groups),
        groups.len(),
        &format!("topic {topic} has no consumer groups yet"),
    )
}

async fn delete(client: &Client, topic: &str, group: &str, json: bool) -> Result<(), CliError> {
    let answer = client
        .delete(&["v1", "topics", topic, "groups", group], &[])
        .await?;
    if json {
        return output::json(&answer);
    }
    let d: rest::GroupDeleted = decode("group deletion answer", &answer)?;
    output::line(&format!(
        "deleted group {group} of topic {topic}: dropped {} and {}",
        output::plural(d.unsettled_dropped as usize, "unsettled message"),
        output::plural(d.dead_letters_dropped as usize, "dead letter"),
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
    let answer: rest::Seek = decode("seek answer", &answer)?;
    output::line(&seek_text(topic, group, to, &answer))
}

/// A summary line, then one row per partition.
fn seek_text(topic: &str, group: &str, to: &Value, answer: &rest::Seek) -> String {
    let mut out = format!(
        "moved group {group} of topic {topic} to {}: {} skipped, {} replayed",
        target_text(to),
        output::plural(answer.skipped as usize, "unsettled message"),
        output::plural(answer.replayed as usize, "settled message"),
    );
    if !answer.partitions.is_empty() {
        let mut t = Table::new(&[
            ("partition", Align::Right),
            ("from", Align::Right),
            ("to", Align::Right),
            ("skipped", Align::Right),
            ("replayed", Align::Right),
        ]);
        for p in &answer.partitions {
            t.row(
                [u64::from(p.partition), p.from, p.to, p.skipped, p.replayed]
                    .iter()
                    .map(u64::to_string)
                    .collect(),
            );
        }
        out.push('\n');
        out.push_str(t.to_text().trim_end());
    }
    out
}

/// `groups list`: one row per group.
fn list_table(groups: &[rest::Group]) -> Table {
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
            g.name.clone(),
            g.lag.to_string(),
            g.in_flight.to_string(),
            g.pending.to_string(),
            g.dead_letters.to_string(),
            g.redeliveries.to_string(),
        ]);
    }
    t
}

/// `topics describe`: one row per group with the conservation counters, and whether
/// they add up ([`rest::Group::conserved`]).
pub fn table(groups: &[rest::Group]) -> Table {
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
        let mut row = vec![g.name.clone()];
        for n in [
            g.lag,
            g.in_flight,
            g.dead_letters,
            g.accepted,
            g.acked,
            g.pending,
            g.dead_lettered,
            g.expired_unsettled,
            g.redeliveries,
        ] {
            row.push(n.to_string());
        }
        row.push(if g.conserved() { "yes" } else { "NO" }.into());
        t.row(row);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn group_tables() {
        let groups = [
            rest::Group {
                name: "billing".into(),
                lag: 2,
                in_flight: 1,
                pending: 1,
                accepted: 10,
                acked: 5,
                dead_lettered: 3,
                redeliveries: 4,
                dead_letters: 3,
                ..rest::Group::default()
            },
            rest::Group {
                name: "audit".into(),
                accepted: 1,
                ..rest::Group::default()
            },
        ];
        let text = table(&groups).to_text();
        assert!(text.lines().nth(2).unwrap().ends_with("4  yes"), "{text}");
        assert!(text.lines().nth(3).unwrap().ends_with("0  NO"), "{text}");
        assert_eq!(
            list_table(&groups).to_text(),
            "group    lag  in flight  pending  dead letters  redeliveries\n\
             -------  ---  ---------  -------  ------------  ------------\n\
             billing    2          1        1             3             4\n\
             audit      0          0        0             0             0\n"
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
        let answer: rest::Seek = serde_json::from_value(json!({"skipped": 2, "replayed": 5,
            "partitions": [
            {"partition": 0, "from": 7, "to": 0, "skipped": 0, "replayed": 5},
            {"partition": 1, "from": 3, "to": 5, "skipped": 2, "replayed": 0}]}))
        .unwrap();
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
