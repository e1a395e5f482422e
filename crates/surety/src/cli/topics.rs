//! `surety topics create|list|describe|delete`.

use clap::{Args, Subcommand};
use reqwest::StatusCode;
use serde_json::{Map, Value};
use surety_wire::rest;

use std::time::Duration;

use surety_core::TopicSpec;

use super::contract::Seam;
use super::error::CliError;
use super::http::{Client, decode};
use super::output::{self, Align, Table};
use super::{ClientArgs, Conn, groups};

pub const LONG_ABOUT: &str = "\
Create, list, describe and delete topics.

Examples:
  surety topics create orders --partitions 4 --max-deliveries 5 --ack-wait-ms 30000
  surety topics create audit --config-json '{\"durability\":\"fsync\",\"dedupe_window_ms\":60000}'
  surety topics list
  surety topics describe orders
  surety topics delete scratch";

#[derive(Debug, Args)]
pub struct TopicsArgs {
    #[command(flatten)]
    pub conn: ClientArgs,
    #[command(subcommand)]
    command: TopicsCommand,
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create a topic, or change an existing one's settings (partitions only grow)
    #[command(long_about = CREATE_ABOUT)]
    Create(CreateArgs),
    /// All topics with their partitions, messages, lag and dead letters
    #[command(
        long_about = "All topics with their partitions, retained messages, total \
                            lag and dead letters over all groups.\n\n\
                            Example:\n  surety topics list --json | jq -r '.[].name'"
    )]
    List,
    /// A topic's settings, partitions, and per-group state with conservation counters
    #[command(long_about = DESCRIBE_ABOUT)]
    Describe {
        /// Topic to describe
        name: String,
    },
    /// Delete a topic with its messages, groups and dead letters; prints what was dropped
    #[command(long_about = DELETE_ABOUT)]
    Delete {
        /// Topic to delete
        name: String,
        /// Delete even if a group has unsettled messages or dead letters (they are lost)
        #[arg(long)]
        force: bool,
    },
}

const DELETE_ABOUT: &str = "\
Delete a topic: its messages, its consumer groups and their dead letters, and prints
the counts of what was dropped. A topic where some group still has unsettled messages
(not yet acked or dead-lettered) or dead letters is refused (topic_busy) unless
--force is given, so nothing is dropped by accident; the refusal says what --force
would drop.

Examples:
  surety topics delete scratch
  surety topics delete orders --force";

const CREATE_ABOUT: &str = "\
Create a topic, or apply settings to an existing one (its partitions may grow, never
shrink). Flags override the same keys of --config-json; unset settings keep their
defaults (1 partition, 5 deliveries, 30 s ack wait).

Examples:
  surety topics create orders
  surety topics create orders --partitions 4 --max-deliveries 10 --ack-wait-ms 60000
  surety topics create audit --config-json '{\"durability\":\"fsync\"}'";

const DESCRIBE_ABOUT: &str = "\
Show a topic's settings, its partitions' offsets, and per consumer group: lag, in
flight, dead letters, and the conservation counters. For every group the server
keeps accepted = acked + in flight + pending + dead-lettered + expired; the
`conserved` column checks it.

Example:
  surety topics describe orders";

#[derive(Debug, Args)]
struct CreateArgs {
    /// Topic name: 1-249 characters of A-Z a-z 0-9 . _ -
    name: String,
    /// Partitions (1-1024)
    #[arg(long)]
    partitions: Option<u32>,
    /// Deliveries before a message goes to the dead-letter queue (1-1000)
    #[arg(long)]
    max_deliveries: Option<u32>,
    /// Lease of a delivery in ms: unacked after it, the message is delivered again
    #[arg(long, value_name = "MS")]
    ack_wait_ms: Option<u64>,
    /// Any topic settings as a JSON object, e.g. '{"retention":{"max_age_ms":86400000}}'
    #[arg(long, value_name = "JSON", value_parser = parse_object)]
    config_json: Option<Map<String, Value>>,
}

fn parse_object(s: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("must be a JSON object, like '{\"partitions\":2}'".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

pub async fn run(args: TopicsArgs, conn: &Conn) -> Result<(), CliError> {
    if let Some(seam) = Seam::for_backend(conn, None).await? {
        return match args.command {
            TopicsCommand::Create(c) => {
                if c.config_json.is_some() {
                    return Err(CliError::Usage(format!(
                        "--config-json holds Surety server settings; on {} use \
                         --partitions, --max-deliveries and --ack-wait-ms",
                        seam.backend.name()
                    )));
                }
                let spec = TopicSpec {
                    partitions: c.partitions,
                    max_deliveries: c.max_deliveries,
                    ack_wait: c.ack_wait_ms.map(Duration::from_millis),
                    max_message_bytes: None,
                };
                seam.create_topic(&c.name, spec).await
            }
            TopicsCommand::List => seam.list_topics().await,
            TopicsCommand::Describe { name } => seam.describe_topic(&name).await,
            TopicsCommand::Delete { .. } => Err(CliError::Usage(format!(
                "`topics delete` is not part of the backend contract: on {} delete the \
                 topic with the broker's own tools, where its retention and replicas are \
                 managed",
                seam.backend.name()
            ))),
        };
    }
    let client = Client::new(conn)?;
    let json = conn.json;
    match args.command {
        TopicsCommand::Create(c) => create(&client, c, json).await,
        TopicsCommand::List => list(&client, json).await,
        TopicsCommand::Describe { name } => describe(&client, &name, json).await,
        TopicsCommand::Delete { name, force } => delete(&client, &name, force, json).await,
    }
}

/// DELETE /v1/topics/{topic}[?force=true]. A `topic_busy` refusal gets the command
/// with `--force` and what it would drop, read from the topic's description.
async fn delete(client: &Client, name: &str, force: bool, json: bool) -> Result<(), CliError> {
    let query = if force {
        vec![("force", "true".to_string())]
    } else {
        Vec::new()
    };
    let answer = match client.delete(&["v1", "topics", name], &query).await {
        Ok(a) => a,
        Err(e @ CliError::Server { .. }) if is_code(&e, "topic_busy") => {
            let drops = match fetch(client, name).await {
                Ok(topic) => would_drop(&topic),
                Err(_) => "them".into(),
            };
            return Err(CliError::WithHint {
                error: Box::new(e),
                hint: format!("`surety topics delete {name} --force` drops {drops}"),
            });
        }
        Err(e) => return Err(e),
    };
    if json {
        return output::json(&answer);
    }
    let d: rest::TopicDeleted = decode("topic deletion answer", &answer)?;
    output::line(&format!(
        "deleted topic {name}: dropped {}, {}, {} and {}",
        output::plural(d.messages_dropped as usize, "message"),
        output::plural(d.groups_dropped as usize, "group"),
        output::plural(d.unsettled_dropped as usize, "unsettled message"),
        output::plural(d.dead_letters_dropped as usize, "dead letter"),
    ))
}

fn is_code(e: &CliError, want: &str) -> bool {
    matches!(e, CliError::Server { code, .. } if code == want)
}

/// `12 messages, 2 groups, 3 unsettled messages and 1 dead letter`, from a topic's
/// description: retained messages, groups, their lag and their dead letters.
fn would_drop(topic: &rest::Topic) -> String {
    let gs = &topic.groups;
    format!(
        "{}, {}, {} and {}",
        output::plural(retained(topic) as usize, "message"),
        output::plural(gs.len(), "group"),
        output::plural(
            gs.iter().map(|g| g.lag).sum::<u64>() as usize,
            "unsettled message"
        ),
        output::plural(
            gs.iter().map(|g| g.dead_letters).sum::<u64>() as usize,
            "dead letter"
        ),
    )
}

/// GET /v1/topics/{topic}.
async fn fetch(client: &Client, topic: &str) -> Result<rest::Topic, CliError> {
    client.get_as("topic", &["v1", "topics", topic]).await
}

async fn create(client: &Client, c: CreateArgs, json: bool) -> Result<(), CliError> {
    let mut body = c.config_json.unwrap_or_default();
    let flags = [
        ("partitions", c.partitions.map(u64::from)),
        ("max_deliveries", c.max_deliveries.map(u64::from)),
        ("ack_wait_ms", c.ack_wait_ms),
    ];
    for (name, v) in flags {
        if let Some(v) = v {
            body.insert(name.into(), v.into());
        }
    }
    let changes = !body.is_empty();
    let (status, answer) = client
        .put(&["v1", "topics", &c.name], &Value::Object(body))
        .await?;
    if json {
        return output::json(&answer);
    }
    let verb = match (status == StatusCode::CREATED, changes) {
        (true, _) => "created topic",
        (false, true) => "updated topic",
        (false, false) => "topic already exists:",
    };
    let topic: rest::Topic = decode("topic", &answer)?;
    let setting = |name: &str| topic.config.get(name).and_then(Value::as_u64);
    output::line(&format!(
        "{verb} {} ({}, max deliveries {}, ack wait {} ms)",
        c.name,
        output::plural(topic.partitions, "partition"),
        output::cell(setting("max_deliveries")),
        output::cell(setting("ack_wait_ms")),
    ))
}

async fn list(client: &Client, json: bool) -> Result<(), CliError> {
    let answer: rest::TopicList = client.get_as("topic list", &["v1", "topics"]).await?;
    let topics = answer.topics;
    if json {
        return output::json(&topics);
    }
    let mut t = Table::new(&[
        ("topic", Align::Left),
        ("partitions", Align::Right),
        ("messages", Align::Right),
        ("groups", Align::Right),
        ("lag", Align::Right),
        ("dead letters", Align::Right),
    ]);
    for topic in &topics {
        let gs = &topic.groups;
        t.row(vec![
            topic.name.clone(),
            topic.partitions.to_string(),
            retained(topic).to_string(),
            gs.len().to_string(),
            gs.iter().map(|g| g.lag).sum::<u64>().to_string(),
            gs.iter().map(|g| g.dead_letters).sum::<u64>().to_string(),
        ]);
    }
    output::table(
        &t,
        topics.len(),
        "no topics yet (create one: surety topics create NAME)",
    )
}

async fn describe(client: &Client, name: &str, json: bool) -> Result<(), CliError> {
    let topic = fetch(client, name).await?;
    if json {
        return output::json(&topic);
    }
    let mut out = format!("topic {name}\n");
    let mut settings = Vec::new();
    flatten("", &topic.config, &mut settings);
    let width = settings.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &settings {
        out.push_str(&format!("  {k:<width$}  {v}\n"));
    }
    if !topic.end_offsets.is_empty() {
        let mut t = Table::new(&[
            ("partition", Align::Right),
            ("start", Align::Right),
            ("end", Align::Right),
            ("messages", Align::Right),
        ]);
        for (p, end) in topic.end_offsets.iter().enumerate() {
            let start = topic.start_offsets.get(p).copied().unwrap_or(0);
            t.row(vec![
                p.to_string(),
                start.to_string(),
                end.to_string(),
                end.saturating_sub(start).to_string(),
            ]);
        }
        out.push('\n');
        out.push_str(&t.to_text());
    }
    out.push('\n');
    if topic.groups.is_empty() {
        out.push_str("no consumer groups yet\n");
    } else {
        out.push_str(&groups::table(&topic.groups).to_text());
    }
    if !topic.corrupt_segments.is_empty() {
        out.push_str(&corrupt_table(&topic.corrupt_segments));
    }
    output::line(out.trim_end())
}

/// Damaged segments, with what to do about them.
fn corrupt_table(segments: &[rest::CorruptSegment]) -> String {
    let mut t = Table::new(&[
        ("log", Align::Left),
        ("segment", Align::Left),
        ("offset", Align::Right),
        ("byte", Align::Right),
        ("damage", Align::Left),
    ]);
    for s in segments {
        t.row(vec![
            s.log.clone(),
            s.segment.clone(),
            s.offset.to_string(),
            s.position.to_string(),
            s.detail.clone(),
        ]);
    }
    format!(
        "\nCORRUPT SEGMENTS: their damaged records are never served (data_corrupt); a \
         group stops at the first one. Stop the server and run `surety verify --data DIR` \
         for the full picture.\n{}",
        t.to_text()
    )
}

/// Messages still retained: the sum over partitions of end - start.
fn retained(topic: &rest::Topic) -> u64 {
    topic
        .end_offsets
        .iter()
        .enumerate()
        .map(|(p, e)| e.saturating_sub(topic.start_offsets.get(p).copied().unwrap_or(0)))
        .sum()
}

/// A topic's `config` as `a.b  value` lines, nested objects dotted.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    let Some(map) = v.as_object() else { return };
    for (k, v) in map {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Object(_) => flatten(&key, v, out),
            Value::String(s) => out.push((key, s.clone())),
            Value::Null => out.push((key, "none".into())),
            other => out.push((key, other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_json_must_be_an_object() {
        assert!(parse_object(r#"{"partitions":2}"#).is_ok());
        assert!(parse_object("[1]").unwrap_err().contains("object"));
        assert!(parse_object("{").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn busy_topic_says_what_force_drops() {
        let topic = rest::Topic {
            name: "t".into(),
            config: json!({}),
            partitions: 2,
            start_offsets: vec![0, 2],
            end_offsets: vec![10, 4],
            groups: vec![
                rest::Group {
                    name: "a".into(),
                    lag: 3,
                    dead_letters: 1,
                    ..rest::Group::default()
                },
                rest::Group {
                    name: "b".into(),
                    ..rest::Group::default()
                },
            ],
            corrupt_segments: vec![],
        };
        assert_eq!(
            would_drop(&topic),
            "12 messages, 2 groups, 3 unsettled messages and 1 dead letter"
        );
        let e = CliError::WithHint {
            error: Box::new(CliError::Server {
                status: 409,
                code: "topic_busy".into(),
                message: "topic \"t\" has unsettled messages".into(),
            }),
            hint: format!(
                "`surety topics delete t --force` drops {}",
                would_drop(&topic)
            ),
        };
        assert_eq!(
            e.one_line(),
            "topic \"t\" has unsettled messages (topic_busy); `surety topics delete t \
             --force` drops 12 messages, 2 groups, 3 unsettled messages and 1 dead letter"
        );
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn settings_flatten_and_offsets_sum() {
        let topic: rest::Topic = serde_json::from_value(json!({"name":"t","config":{
            "partitions":2,"retention":{"max_age_ms":5},"durability":"fsync"},
            "partitions":2,"start_offsets":[1,0],"end_offsets":[4,2],"groups":[]}))
        .unwrap();
        let mut s = Vec::new();
        flatten("", &topic.config, &mut s);
        assert_eq!(
            s,
            [
                ("durability".to_string(), "fsync".to_string()),
                ("partitions".into(), "2".into()),
                ("retention.max_age_ms".into(), "5".into()),
            ]
        );
        assert_eq!(retained(&topic), 5);
    }
}
