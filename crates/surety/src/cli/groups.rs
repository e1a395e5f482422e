//! `surety groups TOPIC`, and the reading of a topic's per-group state that `topics
//! describe` shares: lag, in flight, dead letters and the conservation counters.

use clap::Args;
use serde_json::Value;

use super::error::CliError;
use super::http::Client;
use super::output::{self, Align, Table};
use super::{ClientArgs, topics};

pub const LONG_ABOUT: &str = "\
List the consumer groups of a topic: lag (messages not yet acked or dead-lettered),
messages in flight (leased to a consumer, not yet acked) and dead letters waiting in
the group's dead-letter queue. A group exists once it has fetched.

Examples:
  surety groups orders
  surety groups orders --json | jq '.[] | select(.lag > 0)'";

#[derive(Debug, Args)]
pub struct GroupsArgs {
    /// Topic whose groups to list
    topic: String,
    /// Last, so that its help heading does not swallow the options above.
    #[command(flatten)]
    pub conn: ClientArgs,
}

pub async fn run(args: GroupsArgs) -> Result<(), CliError> {
    let client = Client::new(&args.conn)?;
    let topic = topics::fetch(&client, &args.topic).await?;
    let groups = of(&topic);
    if args.conn.json {
        return output::json(&Value::Array(groups.to_vec()));
    }
    output::table(
        &table(groups, false),
        groups.len(),
        &format!("topic {} has no consumer groups yet", args.topic),
    )
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

/// One row per group; `counters` adds the conservation counters (`topics describe`).
pub fn table(groups: &[Value], counters: bool) -> Table {
    let mut columns = vec![
        ("group", Align::Left),
        ("lag", Align::Right),
        ("in flight", Align::Right),
        ("dead letters", Align::Right),
    ];
    if counters {
        columns.extend([
            ("accepted", Align::Right),
            ("acked", Align::Right),
            ("pending", Align::Right),
            ("dead-lettered", Align::Right),
            ("expired", Align::Right),
            ("redelivered", Align::Right),
            ("conserved", Align::Left),
        ]);
    }
    let mut t = Table::new(&columns);
    for g in groups {
        let name = g
            .get("name")
            .or_else(|| g.get("group"))
            .and_then(Value::as_str)
            .unwrap_or("?");
        let mut row = vec![
            name.to_string(),
            output::cell(counter(g, "lag")),
            output::cell(counter(g, "in_flight")),
            output::cell(dead_letters(g)),
        ];
        if counters {
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
        }
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
        assert_eq!(
            table(&groups, false).to_text(),
            "group    lag  in flight  dead letters\n\
             -------  ---  ---------  ------------\n\
             billing    2          1             3\n\
             audit      0          -             -\n"
        );
        let text = table(&groups, true).to_text();
        assert!(text.lines().nth(2).unwrap().ends_with("4  yes"), "{text}");
    }
}
