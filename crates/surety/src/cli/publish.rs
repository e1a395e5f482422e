//! `surety publish`: one message from the command line or a file, or one per line of
//! stdin in batches; prints where each landed once the server has it on disk.

use std::collections::BTreeMap;
use std::io::{self, BufRead, IsTerminal};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use surety_wire::rest;

use surety_core::{Message, Position, Producer};

use super::contract::Seam;
use super::error::CliError;
use super::http::{Client, decode};
use super::{ClientArgs, Conn, output, time};

pub const LONG_ABOUT: &str = "\
Publish messages to a topic. The command returns once the server has stored every
message on disk (fsync) and prints each one's partition:offset.

The payload is MESSAGE, or the whole of --file, or else every line of stdin (one
message per line, empty lines skipped, sent in batches of --batch).

A message with --key always goes to the same partition as every other message with
that key, and first deliveries leave a partition in offset order. That is not per-key
ordered processing: with several consumers in one group, or after a redelivery,
messages of one key can be processed at the same time or out of order.

--delay holds the messages back: they are stored at once, but no group gets them
before the delay has passed (at most 12h).

Examples:
  surety publish orders 'order 17 paid'
  surety publish orders --key customer-9 --header source=web 'order 18 paid'
  surety publish images --file cat.png
  seq 1 10000 | surety publish numbers
  surety publish reminders --delay 30m 'is the invoice paid?'
  # a retry of this exact command is stored once (idempotent producer):
  surety publish orders --producer-id billing-1 --sequence 42 'invoice 42'";

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Topic to publish to
    topic: String,
    /// The payload; without it (and without --file) stdin is read, one message per line
    #[arg(conflicts_with = "file")]
    message: Option<String>,
    /// Publish the whole file as one message (bytes that are not UTF-8 go as base64)
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Message key: messages with the same key go to the same partition (not a promise
    /// of per-key ordered processing; see above)
    #[arg(long)]
    key: Option<String>,
    /// A header NAME=VALUE; repeat for more
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Message id: a second message with the same id within the topic's dedupe window
    /// is not stored again (one message only)
    #[arg(long)]
    id: Option<String>,
    /// Idempotent producer: this id plus --sequence makes a retry store nothing new
    #[arg(long, requires = "sequence", value_name = "ID")]
    producer_id: Option<String>,
    /// Sequence of the first message for --producer-id; each further stdin line takes
    /// the next number
    #[arg(long, requires = "producer_id", value_name = "N")]
    sequence: Option<u64>,
    /// Deliver no earlier than this from now: 1500ms, 30s, 5m, 2h, 1m30s (at most 12h)
    #[arg(long, value_name = "DURATION", value_parser = time::parse_duration)]
    delay: Option<Duration>,
    /// Messages per request when reading stdin
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=surety_broker::limits::MAX_PUBLISH_BATCH as i64))]
    batch: u32,
    /// Last, so that its help heading does not swallow the options above.
    #[command(flatten)]
    pub conn: ClientArgs,
}

/// `--header` values: the name must be non-empty; the value may be.
fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.to_string()))
        }
        _ => Err(format!(
            "expected NAME=VALUE (for example --header source=web), got {s:?}"
        )),
    }
}

/// Everything of a message except its payload, shared by every message of one command.
#[derive(Debug)]
struct Envelope {
    key: Option<String>,
    headers: BTreeMap<String, String>,
    id: Option<String>,
    producer: Option<(String, u64)>,
    /// `--delay` in ms; each request sets `not_before_ms` = now + this.
    delay_ms: Option<u64>,
}

impl Envelope {
    fn from_args(args: &PublishArgs) -> Result<Self, CliError> {
        let mut headers = BTreeMap::new();
        for (name, value) in &args.headers {
            if headers.insert(name.clone(), value.clone()).is_some() {
                return Err(CliError::Usage(format!("--header {name} is given twice")));
            }
        }
        let delay_ms = args
            .delay
            .map(|d| time::check_delay("--delay", &time::human(d), d))
            .transpose()
            .map_err(CliError::Usage)?;
        Ok(Self {
            key: args.key.clone(),
            headers,
            id: args.id.clone(),
            producer: args.producer_id.clone().zip(args.sequence),
            delay_ms,
        })
    }

    /// The `index`-th message of this command (its sequence is offset by it), sent at
    /// `now_ms`.
    fn message(
        &self,
        payload: Vec<u8>,
        index: u64,
        now_ms: u64,
    ) -> Result<rest::NewMessage, CliError> {
        let (payload, payload_base64) = match String::from_utf8(payload) {
            Ok(text) => (Some(text), None),
            Err(e) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
            ),
        };
        let (producer_id, sequence) = match &self.producer {
            Some((producer, first)) => {
                let seq = first.checked_add(index).ok_or_else(|| {
                    CliError::Usage("--sequence overflows for this many messages".into())
                })?;
                (Some(producer.clone()), Some(seq))
            }
            None => (None, None),
        };
        Ok(rest::NewMessage {
            payload,
            payload_base64,
            key: self.key.clone(),
            key_base64: None,
            headers: self.headers.clone(),
            id: self.id.clone(),
            producer_id,
            sequence,
            not_before_ms: self
                .delay_ms
                .filter(|&d| d > 0)
                .map(|d| now_ms.saturating_add(d)),
        })
    }

    /// The message for the seam: the producer stamps its id and sequence.
    fn seam_message(&self, payload: Vec<u8>, now_ms: u64) -> Message {
        Message {
            payload,
            key: self.key.clone().map(String::into_bytes),
            headers: self.headers.clone(),
            id: self.id.clone(),
            not_before_ms: self
                .delay_ms
                .filter(|&d| d > 0)
                .map(|d| now_ms.saturating_add(d)),
        }
    }
}

pub async fn run(args: PublishArgs, conn: &Conn) -> Result<(), CliError> {
    let envelope = Envelope::from_args(&args)?;
    let target = match Seam::for_backend(conn, Some(&args.topic)).await? {
        Some(seam) => {
            let producer = seam.producer(envelope.producer.clone());
            Target::Seam(seam, producer)
        }
        None => Target::Rest(Client::new(conn)?),
    };
    let mut publisher = Publisher {
        target: &target,
        topic: &args.topic,
        envelope: &envelope,
        results: Vec::new(),
    };
    let outcome = match (&args.message, &args.file) {
        (Some(text), _) => publisher.send(vec![text.clone().into_bytes()]).await,
        (None, Some(path)) => {
            let bytes = std::fs::read(path).map_err(|source| CliError::Io {
                what: format!("cannot read {}", path.display()),
                source,
            })?;
            publisher.send(vec![bytes]).await
        }
        (None, None) => publisher.stdin(args.batch as usize).await,
    };
    if let Err(e) = outcome {
        if !publisher.results.is_empty() {
            // Those are durable: say so, so that a retry does not publish them twice.
            eprintln!(
                "note: {} before the error were stored ({}); the rest were not",
                output::plural(publisher.results.len(), "message"),
                publisher.summary().1
            );
        }
        return Err(e);
    }
    if conn.json {
        publisher.print_json()
    } else {
        let (count, ranges, dups) = publisher.summary();
        let mut text = format!(
            "published {} to {} ({ranges})",
            output::plural(count, "message"),
            args.topic
        );
        if dups > 0 {
            text.push_str(&format!(
                "; {dups} of them {} already stored (duplicate)",
                if dups == 1 { "was" } else { "were" }
            ));
        }
        if let Some(d) = args.delay.filter(|d| !d.is_zero()) {
            text.push_str(&format!("; delivered from {} on", time::human(d)));
        }
        output::line(&text)
    }
}

/// Where the messages go: a Surety server's REST API, or any backend through the seam
/// (with one producer for the whole command, so its sequences run on across batches).
enum Target {
    Rest(Client),
    Seam(Seam, Producer),
}

/// Where one message was stored.
#[derive(Debug, Clone, Copy)]
struct Stored {
    position: Position,
    duplicate: bool,
}

struct Publisher<'a> {
    target: &'a Target,
    topic: &'a str,
    envelope: &'a Envelope,
    /// The broker's results, in input order.
    results: Vec<Stored>,
}

impl Publisher<'_> {
    /// One request of `payloads`, numbered after those already sent.
    async fn send(&mut self, payloads: Vec<Vec<u8>>) -> Result<(), CliError> {
        match self.target {
            Target::Rest(client) => self.send_rest(client, payloads).await,
            Target::Seam(seam, producer) => {
                let now = time::now_ms();
                let messages = payloads
                    .into_iter()
                    .map(|p| self.envelope.seam_message(p, now))
                    .collect();
                let stored = seam.publish(producer, self.topic, messages).await?;
                self.results.extend(stored.into_iter().map(|p| Stored {
                    position: p.position,
                    duplicate: p.duplicate,
                }));
                Ok(())
            }
        }
    }

    async fn send_rest(&mut self, client: &Client, payloads: Vec<Vec<u8>>) -> Result<(), CliError> {
        let first = self.results.len() as u64;
        let now = time::now_ms();
        let messages = payloads
            .into_iter()
            .enumerate()
            .map(|(i, p)| self.envelope.message(p, first + i as u64, now))
            .collect::<Result<Vec<_>, _>>()?;
        let sent = messages.len();
        let answer = client
            .post(
                &["v1", "topics", self.topic, "messages"],
                &rest::PublishRequest { messages },
                Duration::ZERO,
            )
            .await?;
        let resp: rest::PublishResponse = decode("publish answer", &answer)?;
        if resp.results.len() != sent {
            return Err(CliError::Protocol(format!(
                "sent {sent} messages, got {} results",
                resp.results.len()
            )));
        }
        self.results
            .extend(resp.results.into_iter().map(|r| Stored {
                position: Position::Offset {
                    partition: r.partition,
                    offset: r.offset,
                },
                duplicate: r.duplicate,
            }));
        Ok(())
    }

    /// `--json`: the REST answer's shape on a Surety server; elsewhere each result
    /// names its position in the broker's terms (`s17`: NATS stream sequence 17).
    fn print_json(&self) -> Result<(), CliError> {
        match self.target {
            Target::Rest(_) => output::json(&rest::PublishResponse {
                results: self
                    .results
                    .iter()
                    .map(|s| rest::PublishResult {
                        partition: s.position.partition(),
                        offset: s.position.offset().unwrap_or(0),
                        duplicate: s.duplicate,
                    })
                    .collect(),
            }),
            Target::Seam(..) => output::json(&serde_json::json!({
                "results": self.results.iter().map(|s| serde_json::json!({
                    "position": s.position.to_string(),
                    "duplicate": s.duplicate,
                })).collect::<Vec<_>>()
            })),
        }
    }

    /// Stdin, one message per line, `batch` per request; a progress bar on stderr once
    /// there is more than one batch of piped input.
    async fn stdin(&mut self, batch: usize) -> Result<(), CliError> {
        let stdin = io::stdin();
        let interactive = stdin.is_terminal();
        if interactive {
            eprintln!("reading messages from stdin, one per line; end with Ctrl-D");
        }
        let mut reader = stdin.lock();
        let mut bar: Option<ProgressBar> = None;
        let outcome = async {
            loop {
                let lines = read_lines(&mut reader, batch)?;
                if lines.is_empty() {
                    break;
                }
                // An id names one message: refuse before anything is stored.
                if self.envelope.id.is_some() && (lines.len() > 1 || !self.results.is_empty()) {
                    return Err(CliError::Usage(
                        "--id names a single message, but stdin has more than one line".into(),
                    ));
                }
                let full = lines.len() == batch;
                self.send(lines).await?;
                if full && !interactive && bar.is_none() {
                    bar = Some(progress_bar());
                }
                if let Some(b) = &bar {
                    b.set_position(self.results.len() as u64);
                }
            }
            Ok(())
        }
        .await;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        outcome?;
        if self.results.is_empty() {
            return Err(CliError::Usage(
                "nothing to publish: give MESSAGE, --file PATH, or lines on stdin".into(),
            ));
        }
        Ok(())
    }

    /// (messages, their partition:offset ranges, how many were duplicates)
    fn summary(&self) -> (usize, String, usize) {
        let stored = &self.results;
        let dups = stored.iter().filter(|s| s.duplicate).count();
        let offsets: Option<Vec<(u32, u64)>> = stored
            .iter()
            .map(|s| match s.position {
                Position::Offset { partition, offset } => Some((partition, offset)),
                _ => None,
            })
            .collect();
        let places = match offsets {
            Some(offsets) => output::offset_ranges(&offsets),
            None => match (stored.first(), stored.last()) {
                (Some(a), Some(b)) if stored.len() > 1 => {
                    format!("{} … {}", a.position, b.position)
                }
                (Some(a), _) => a.position.to_string(),
                _ => String::new(),
            },
        };
        (stored.len(), places, dups)
    }
}

/// Up to `max` non-empty lines, without their line ending.
fn read_lines(reader: &mut impl BufRead, max: usize) -> Result<Vec<Vec<u8>>, CliError> {
    let mut lines = Vec::new();
    while lines.len() < max {
        let mut line = Vec::new();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|source| CliError::Io {
                what: "cannot read stdin".into(),
                source,
            })?;
        if n == 0 {
            break;
        }
        if line.ends_with(b"\n") {
            line.pop();
            if line.ends_with(b"\r") {
                line.pop();
            }
        }
        if !line.is_empty() {
            lines.push(line);
        }
    }
    Ok(lines)
}

/// Stdin has no known length: a counter with a rate, not a percentage.
fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {human_pos} messages published in {elapsed}")
            .expect("static template"),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn headers_parse_or_explain() {
        assert_eq!(parse_header("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_header("a=").unwrap(), ("a".into(), String::new()));
        assert!(parse_header("nope").unwrap_err().contains("NAME=VALUE"));
        assert!(parse_header("=v").is_err());
    }

    #[test]
    fn envelope_numbers_sequences_and_encodes_bytes() {
        let e = Envelope {
            key: Some("k".into()),
            headers: BTreeMap::from([("h".into(), "v".into())]),
            id: None,
            producer: Some(("p".into(), 41)),
            delay_ms: None,
        };
        assert_eq!(
            serde_json::to_value(e.message(b"hi".to_vec(), 1, 7).unwrap()).unwrap(),
            json!({"payload":"hi","key":"k","headers":{"h":"v"},"producer_id":"p","sequence":42})
        );
        let bare = Envelope {
            key: None,
            headers: BTreeMap::new(),
            id: Some("x".into()),
            producer: None,
            delay_ms: Some(1500),
        };
        assert_eq!(
            serde_json::to_value(bare.message(vec![0xff, 0], 0, 1_000_000).unwrap()).unwrap(),
            json!({"payload_base64":"/wA=","id":"x","not_before_ms":1_001_500})
        );
        let full = Envelope {
            producer: Some(("p".into(), u64::MAX)),
            ..bare
        };
        assert!(matches!(
            full.message(vec![], 1, 0),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn stdin_lines_skip_blanks_and_strip_endings() {
        let mut input = io::Cursor::new(b"a\r\n\nb\nc".to_vec());
        assert_eq!(
            read_lines(&mut input, 2).unwrap(),
            [b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(read_lines(&mut input, 2).unwrap(), [b"c".to_vec()]);
        assert!(read_lines(&mut input, 2).unwrap().is_empty());
    }
}
