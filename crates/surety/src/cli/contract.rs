//! The commands of the backend contract (docs/design.md, "Backends") on a broker that is
//! not a Surety server: `topics create|list|describe`, `publish`, `consume` and
//! `dlq list|show|resend|purge`, each through the transport seam, so that they behave as
//! on the server — a publish answers once the broker confirmed it, a consumed message is
//! acked only after its line is out, and a dead letter keeps its reason.
//!
//! The command files parse their flags and call these for any backend but a Surety
//! server; what cannot mean the same elsewhere (`--config-json`, `--no-ack`, `peek`) is
//! refused there with the reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use surety_core::{
    Confirm, Consumer, DeadLetter, Delivery, Message, Producer, PublishError, Published, Selection,
    TopicInfo, TopicSpec, Transport, TransportError,
};

use super::Conn;
use super::backend::{Backend, seam_error};
use super::error::CliError;
use super::output::{self, Align, StreamTable, Table};

/// A connected seam transport and the backend it reaches (for error lines).
pub struct Seam {
    pub backend: Backend,
    pub transport: Arc<dyn Transport>,
    pub json: bool,
}

impl Seam {
    /// The seam to `conn`'s backend, or `None` for a Surety server (which the commands
    /// reach over REST). `topic`: the one topic of a `publish` or `consume`, whose
    /// settings some brokers check at start-up (Kafka's replication).
    pub async fn for_backend(conn: &Conn, topic: Option<&str>) -> Result<Option<Seam>, CliError> {
        let backend = conn.backend()?;
        if matches!(backend, Backend::Surety(_)) {
            return Ok(None);
        }
        let transport = backend
            .transport(conn.token.as_deref(), conn.require_fsync, topic)
            .await?;
        Ok(Some(Seam {
            backend,
            transport,
            json: conn.json,
        }))
    }

    fn err(&self, e: TransportError) -> CliError {
        seam_error(&self.backend, e)
    }

    // ---- topics ----

    pub async fn create_topic(&self, name: &str, spec: TopicSpec) -> Result<(), CliError> {
        let info = self
            .transport
            .create_topic(name, &spec)
            .await
            .map_err(|e| self.err(e))?;
        if self.json {
            output::json(&topic_json(&info))
        } else {
            output::line(&format!(
                "topic {} on {}: {}, {} deliveries, ack wait {}",
                info.name,
                self.backend.name(),
                output::plural(info.partitions as usize, "partition"),
                info.max_deliveries,
                super::time::human(info.ack_wait)
            ))
        }
    }

    pub async fn list_topics(&self) -> Result<(), CliError> {
        let names = self
            .transport
            .list_topics()
            .await
            .map_err(|e| self.err(e))?;
        let mut infos = Vec::with_capacity(names.len());
        for name in &names {
            infos.push(
                self.transport
                    .describe_topic(name)
                    .await
                    .map_err(|e| self.err(e))?,
            );
        }
        if self.json {
            return output::json(&infos.iter().map(topic_json).collect::<Vec<_>>());
        }
        let mut t = Table::new(&[
            ("topic", Align::Left),
            ("partitions", Align::Right),
            ("lag", Align::Right),
            ("dead letters", Align::Right),
            ("confirm", Align::Left),
        ]);
        for i in &infos {
            t.row(vec![
                i.name.clone(),
                i.partitions.to_string(),
                i.groups.iter().map(|g| g.lag).sum::<u64>().to_string(),
                i.groups
                    .iter()
                    .map(|g| g.dead_letters)
                    .sum::<u64>()
                    .to_string(),
                confirm_text(i.confirm),
            ]);
        }
        output::table(&t, infos.len(), "no topics")
    }

    pub async fn describe_topic(&self, name: &str) -> Result<(), CliError> {
        let info = self
            .transport
            .describe_topic(name)
            .await
            .map_err(|e| self.err(e))?;
        if self.json {
            return output::json(&topic_json(&info));
        }
        output::line(&format!(
            "topic {} on {}\n  partitions      {}\n  max deliveries  {}\n  ack wait        {}\n  \
             a confirm means {}",
            info.name,
            self.backend.name(),
            info.partitions,
            info.max_deliveries,
            super::time::human(info.ack_wait),
            confirm_text(info.confirm)
        ))?;
        let mut t = Table::new(&[
            ("group", Align::Left),
            ("lag", Align::Right),
            ("in flight", Align::Right),
            ("dead letters", Align::Right),
        ]);
        for g in &info.groups {
            t.row(vec![
                g.name.clone(),
                g.lag.to_string(),
                g.in_flight.to_string(),
                g.dead_letters.to_string(),
            ]);
        }
        output::table(&t, info.groups.len(), "no consumer groups yet")
    }

    // ---- publish ----

    /// A producer with the command's identity (`--producer-id`/`--sequence`), else a
    /// fresh one: a retry inside the command never stores a message twice either way.
    pub fn producer(&self, identity: Option<(String, u64)>) -> Producer {
        let builder = Producer::builder_shared(self.transport.clone());
        match identity {
            Some((id, first)) => builder.identity(id, first),
            None => builder,
        }
        .build()
    }

    /// Publishes `messages` in one batch, retried without duplicates until confirmed.
    pub async fn publish(
        &self,
        producer: &Producer,
        topic: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<Published>, CliError> {
        producer
            .publish_batch(topic, messages)
            .await
            .map_err(|e| match e {
                PublishError::Refused(t) => self.err(t),
                other => CliError::Transport {
                    url: self.backend.url().to_string(),
                    reason: super::error::one_line(&other),
                },
            })
    }

    // ---- consume ----

    /// Prints and acks up to `max` messages (each acked after its line is written);
    /// stops after `max`, or once none came for `idle` (never with `follow`), or at
    /// Ctrl-C / SIGTERM.
    pub async fn consume(
        &self,
        topic: &str,
        group: &str,
        max: Option<u32>,
        idle: Option<Duration>,
        lease: Option<Duration>,
        ledger: Option<&std::path::Path>,
    ) -> Result<(), CliError> {
        let mut builder = Consumer::builder_shared(self.transport.clone(), topic, group)
            .max_in_flight(max.unwrap_or(64).clamp(1, 64));
        if let Some(lease) = lease {
            builder = builder.lease(lease);
        }
        if let Some(path) = ledger {
            builder = builder.settled_ledger(open_ledger(path)?);
        }
        let stop = builder.stop_handle();
        super::exec::stop_on_signals(stop.clone())?;
        let printed = Arc::new(AtomicU64::new(0));
        // The idle window starts once the group could have handed anything out.
        let last = Arc::new(std::sync::Mutex::new(
            Instant::now() + self.backend.join_allowance(),
        ));
        if let Some(idle) = idle {
            let (stop, last) = (stop.clone(), last.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(idle / 4).await;
                    if last.lock().unwrap().elapsed() >= idle {
                        stop.stop();
                        return;
                    }
                }
            });
        }
        let json = self.json;
        let handler_printed = printed.clone();
        let stats = builder
            .run(move |d: Delivery| {
                let (printed, last, stop) = (handler_printed.clone(), last.clone(), stop.clone());
                async move {
                    *last.lock().unwrap() = Instant::now();
                    if max.is_some_and(|m| printed.load(Ordering::SeqCst) >= u64::from(m)) {
                        // Over --max: not printed, so handed back unacked.
                        return Err("the consumer stopped at --max".to_owned());
                    }
                    let line = if json {
                        serde_json::to_string(&delivery_json(&d)).expect("serializes")
                    } else {
                        human_line(&d)
                    };
                    output::line(&line).map_err(|e| e.one_line())?;
                    let n = printed.fetch_add(1, Ordering::SeqCst) + 1;
                    if max.is_some_and(|m| n >= u64::from(m)) {
                        stop.stop();
                    }
                    Ok(())
                }
            })
            .await
            .map_err(|e| super::exec::consume_error(&self.backend, e))?;
        if !json && stats.delivered == 0 {
            eprintln!("no messages ready for group {group} on topic {topic}");
        }
        Ok(())
    }

    // ---- dead letters ----

    pub async fn dead_letters(
        &self,
        topic: &str,
        group: &str,
        limit: Option<u64>,
        page_size: u32,
    ) -> Result<(), CliError> {
        let mut table = StreamTable::new(&[
            ("id", Align::Right),
            ("origin", Align::Left),
            ("attempts", Align::Right),
            ("reason", Align::Left),
            ("payload", Align::Left),
        ]);
        let mut after: Option<String> = None;
        let mut shown = 0u64;
        loop {
            let page = self
                .transport
                .dead_letters(topic, group, after.as_deref(), page_size)
                .await
                .map_err(|e| self.err(e))?;
            let mut rows = Vec::new();
            for d in &page.items {
                if limit.is_some_and(|l| shown >= l) {
                    break;
                }
                shown += 1;
                if self.json {
                    output::json_line(&dead_letter_json(d))?;
                } else {
                    rows.push(vec![
                        d.id.clone(),
                        d.origin.to_string(),
                        d.attempts.to_string(),
                        output::truncate(&d.reason, 40),
                        output::truncate(&bytes_text(&d.payload), 40),
                    ]);
                }
            }
            for line in table.page(&rows) {
                output::line(line.trim_end())?;
            }
            match page.next {
                Some(next) if limit.is_none_or(|l| shown < l) => after = Some(next),
                _ => break,
            }
        }
        if shown == 0 && !self.json {
            output::line(&format!(
                "no dead letters for group {group} on topic {topic}"
            ))?;
        }
        Ok(())
    }

    pub async fn show_dead_letter(
        &self,
        topic: &str,
        group: &str,
        id: &str,
    ) -> Result<(), CliError> {
        // The seam lists, it does not look up: page until the id.
        let mut after: Option<String> = None;
        loop {
            let page = self
                .transport
                .dead_letters(topic, group, after.as_deref(), 1000)
                .await
                .map_err(|e| self.err(e))?;
            if let Some(d) = page.items.iter().find(|d| d.id == id) {
                return if self.json {
                    output::json(&dead_letter_json(d))
                } else {
                    output::line(&dead_letter_text(d))
                };
            }
            match page.next {
                Some(next) => after = Some(next),
                None => {
                    return Err(CliError::Server {
                        status: 404,
                        code: "dead_letter_not_found".into(),
                        message: format!("no dead letter {id} for group {group} on topic {topic}"),
                    });
                }
            }
        }
    }

    /// Resends (or purges) the selection; prints the count.
    pub async fn settle_dead_letters(
        &self,
        topic: &str,
        group: &str,
        ids: &[u64],
        purge: bool,
    ) -> Result<(), CliError> {
        let which = if ids.is_empty() {
            Selection::All
        } else {
            Selection::Ids(ids.iter().map(u64::to_string).collect())
        };
        let n = if purge {
            self.transport.purge(topic, group, &which).await
        } else {
            self.transport.resend(topic, group, &which).await
        }
        .map_err(|e| self.err(e))?;
        let verb = if purge { "purged" } else { "resent" };
        if self.json {
            output::json(&json!({ verb: n }))
        } else {
            output::line(&format!(
                "{verb} {} of group {group} on topic {topic}",
                output::plural(n as usize, "dead letter")
            ))
        }
    }
}

/// What a publish confirm promises, in words.
fn confirm_text(c: Confirm) -> String {
    match c {
        Confirm::FsyncedOnNode => "on disk (fsync) before the answer".to_owned(),
        Confirm::Replicated { replicas, fsynced } => format!(
            "on {replicas} replicas{}",
            if fsynced {
                ", fsynced"
            } else {
                ", in their page caches"
            }
        ),
        Confirm::PageCache { max_loss } => match max_loss {
            Some(d) => format!(
                "in the page cache: a power loss can lose up to {}",
                super::time::human(d)
            ),
            None => "in the page cache: a power loss can lose it".to_owned(),
        },
        Confirm::Memory => "in memory only".to_owned(),
        Confirm::Unknown => "unknown (not readable at connect)".to_owned(),
    }
}

fn topic_json(i: &TopicInfo) -> Value {
    // The REST answer's shape where the seam has the same fields.
    json!({
        "name": i.name,
        "partitions": i.partitions,
        "config": {
            "partitions": i.partitions,
            "max_deliveries": i.max_deliveries,
            "ack_wait_ms": i.ack_wait.as_millis() as u64,
        },
        "confirm": confirm_text(i.confirm),
        "survives_power_loss": i.confirm.survives_power_loss(),
        "groups": i.groups.iter().map(|g| json!({
            "name": g.name,
            "lag": g.lag,
            "in_flight": g.in_flight,
            "dead_letters": g.dead_letters,
        })).collect::<Vec<_>>(),
    })
}

/// Payload or key as in the REST JSON: `payload` when it is text, else `payload_base64`.
fn put_bytes(obj: &mut serde_json::Map<String, Value>, field: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => obj.insert(field.to_owned(), Value::from(s)),
        Err(_) => obj.insert(
            format!("{field}_base64"),
            Value::from(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
}

/// `--ledger FILE`: the consumer's settled ledger, kept in FILE across restarts.
pub(super) fn open_ledger(
    path: &std::path::Path,
) -> Result<Arc<dyn surety_core::SettledLedger>, CliError> {
    let ledger = surety_core::FileLedger::open(path, surety_core::FileLedgerOptions::default())
        .map_err(|e| CliError::Refused(format!("--ledger: {e}")))?;
    let r = ledger.recovery();
    if r.truncated_bytes > 0 {
        eprintln!(
            "warning: --ledger {}: cut {} damaged or torn bytes off its end ({} stamps read)",
            path.display(),
            r.truncated_bytes,
            r.records
        );
    }
    Ok(Arc::new(ledger))
}

fn bytes_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.escape_default().to_string(),
        Err(_) => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
    }
}

fn delivery_json(d: &Delivery) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("position".into(), d.position.to_string().into());
    o.insert("partition".into(), d.partition.into());
    o.insert("delivery_count".into(), d.delivery_count.into());
    o.insert("timestamp_ms".into(), d.timestamp_ms.into());
    match &d.key {
        Some(k) => put_bytes(&mut o, "key", k),
        None => {
            o.insert("key".into(), Value::Null);
        }
    }
    o.insert("headers".into(), json!(d.headers));
    put_bytes(&mut o, "payload", &d.payload);
    o.insert("id".into(), json!(d.id));
    o.insert("producer_id".into(), json!(d.producer_id));
    o.insert("sequence".into(), json!(d.sequence));
    Value::Object(o)
}

/// `s17 [delivery 1] key=k payload`
fn human_line(d: &Delivery) -> String {
    let mut s = format!("{} [delivery {}]", d.position, d.delivery_count);
    if let Some(k) = &d.key {
        s.push_str(" key=");
        s.push_str(&bytes_text(k));
    }
    s.push(' ');
    s.push_str(&bytes_text(&d.payload));
    s
}

fn dead_letter_json(d: &DeadLetter) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("id".into(), d.id.clone().into());
    o.insert("group".into(), d.group.clone().into());
    o.insert("reason".into(), d.reason.clone().into());
    o.insert("attempts".into(), d.attempts.into());
    o.insert("first_delivered_ms".into(), json!(d.first_delivered_ms));
    o.insert("last_delivered_ms".into(), json!(d.last_delivered_ms));
    o.insert("dead_lettered_ms".into(), d.dead_lettered_ms.into());
    o.insert("origin".into(), d.origin.to_string().into());
    match &d.key {
        Some(k) => put_bytes(&mut o, "key", k),
        None => {
            o.insert("key".into(), Value::Null);
        }
    }
    o.insert("headers".into(), json!(d.headers));
    put_bytes(&mut o, "payload", &d.payload);
    o.insert("message_id".into(), json!(d.message_id));
    o.insert("producer_id".into(), json!(d.producer_id));
    o.insert("sequence".into(), json!(d.sequence));
    Value::Object(o)
}

fn dead_letter_text(d: &DeadLetter) -> String {
    let when = |ms: Option<u64>| ms.map_or_else(|| "-".to_owned(), |m| m.to_string());
    let mut s = format!(
        "dead letter {} of group {}\n  reason          {}\n  attempts        {}\n  \
         first delivered {}\n  last delivered  {}\n  dead-lettered   {}\n  origin          {}",
        d.id,
        d.group,
        d.reason,
        d.attempts,
        when(d.first_delivered_ms),
        when(d.last_delivered_ms),
        d.dead_lettered_ms,
        d.origin
    );
    if let Some(k) = &d.key {
        s.push_str(&format!("\n  key             {}", bytes_text(k)));
    }
    for (name, value) in &d.headers {
        s.push_str(&format!("\n  header          {name}={value}"));
    }
    s.push_str(&format!("\n  payload         {}", bytes_text(&d.payload)));
    s
}
