//! A consumer session: one consumer (a name of its own) of the group's consumer group.
//!
//! `subscribe` creates the group from the start of the stream (`XGROUP CREATE ... 0
//! MKSTREAM`; an existing group is kept) and starts a task. The task reads new entries
//! with `XREADGROUP ... BLOCK` on a connection of its own (a blocking call holds its
//! connection), for exactly the free room of the credit window, blocking at most until
//! the next claim is due: every `reclaim_interval` it runs the claim script (XAUTOCLAIM, min idle = the lease,
//! with each entry's delivery count from XPENDING) for the room left, so entries of a
//! consumer that died, or whose handler overran its lease, or that were nacked (see
//! [`settle`](crate::settle)), come back. Settlements run concurrently on the shared
//! connection.
//!
//! Two kinds of entry never reach the driver: one delivered more often than
//! `max_deliveries` (its last lease ran out mid-handler) is dead-lettered unrun, and a
//! resent dead letter meant for another group (`surety.for-group`) is acked unrun.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use redis::Value;
use surety_core::{
    BoxFuture, Delivery, ErrorKind, RequestId, Session, SessionEvent, SettleOutcome, Subscription,
    TransportError, wire,
};
use surety_core::{ChannelSession, SessionCommand as Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::conn::Conn;
use crate::entry::{self, array, int, text};
use crate::keys;
use crate::receipt::{self, Parsed};
use crate::scripts;
use crate::settle::Settler;
use crate::topics;
use crate::transport::{Inner, MAX_CREDITS, ms, now_ms};

/// How much earlier than `received + lease` a delivery's lease is said to end.
const LEASE_MARGIN_MS: u64 = 10;

static SESSIONS: AtomicU64 = AtomicU64::new(0);

pub(crate) async fn subscribe(
    inner: Arc<Inner>,
    sub: &Subscription,
) -> Result<Box<dyn Session>, TransportError> {
    let keys = inner.keys(&sub.topic)?;
    keys::group(&sub.group)?;
    if sub.credits > MAX_CREDITS {
        return Err(TransportError::refused(
            ErrorKind::InvalidInput,
            format!("credits {} above {MAX_CREDITS}", sub.credits),
        ));
    }
    let settings = topics::settings(&inner, &keys).await?;
    let lease = sub.lease.unwrap_or(settings.ack_wait);
    match inner
        .conn
        .query::<()>(
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&keys.stream)
                .arg(&sub.group)
                .arg("0")
                .arg("MKSTREAM"),
        )
        .await
    {
        Ok(()) => {}
        Err(e) if e.message.contains("BUSYGROUP") => {}
        Err(e) => return Err(e),
    }
    let consumer = format!(
        "c-{}-{}-{}",
        std::process::id(),
        now_ms(),
        SESSIONS.fetch_add(1, Ordering::Relaxed)
    );
    let reader = Arc::new(Conn::new(
        inner.client.clone(),
        inner.options.request_timeout,
    ));
    let (session, command_rx, event_tx) = ChannelSession::new("the Redis session ended");
    let settler = Arc::new(Settler {
        inner: inner.clone(),
        keys,
        group: sub.group.clone(),
        max_deliveries: settings.max_deliveries,
        lease,
    });
    let pump = Pump {
        inner,
        settler,
        reader,
        consumer,
        lease,
        window: sub.credits,
        outstanding: HashSet::new(),
        asked: 0,
        cursor: "0-0".to_owned(),
        draining: false,
        events: event_tx,
    };
    tokio::spawn(pump.run(command_rx));
    Ok(Box::new(session))
}

type Answered = (RequestId, Vec<SettleOutcome>, Vec<String>);
/// A read or a claim: how many it asked for, and the entries with their counts.
type Fetched = (u32, Result<Vec<(Value, u32)>, TransportError>);

struct Pump {
    inner: Arc<Inner>,
    settler: Arc<Settler>,
    reader: Arc<Conn>,
    consumer: String,
    lease: Duration,
    window: u32,
    /// Entry ids of this session's unsettled deliveries.
    outstanding: HashSet<String>,
    /// Asked for by the read or claim in flight.
    asked: u32,
    /// XAUTOCLAIM's cursor over the group's pending entries.
    cursor: String,
    draining: bool,
    events: mpsc::UnboundedSender<Result<SessionEvent, TransportError>>,
}

impl Pump {
    fn room(&self) -> u32 {
        self.window
            .saturating_sub(self.outstanding.len() as u32)
            .saturating_sub(self.asked)
    }

    /// Runs the session; at its end, forgets this consumer if it holds nothing (so the
    /// group's consumer list does not grow with every session).
    async fn run(mut self, commands: mpsc::UnboundedReceiver<Command>) {
        self.serve(commands).await;
        let args = [
            self.settler.group.clone().into_bytes(),
            self.consumer.clone().into_bytes(),
        ];
        if let Err(e) = self
            .inner
            .conn
            .script::<i64>(
                &scripts::FORGET_CONSUMER,
                &[&self.settler.keys.stream],
                &args,
            )
            .await
        {
            tracing::debug!(error = %e, consumer = %self.consumer, "forgetting an ended session's consumer failed");
        }
    }

    async fn serve(&mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut settles: FuturesUnordered<BoxFuture<'static, Answered>> = FuturesUnordered::new();
        let mut internal: FuturesUnordered<BoxFuture<'static, ()>> = FuturesUnordered::new();
        // One read or claim at a time, each for the whole free room: a read blocks at
        // most `reclaim_interval`, and a claim runs whenever one is due, so neither
        // starves the other and the window is never exceeded.
        let mut fetch: Option<BoxFuture<'static, (Fetched, Option<String>)>> = None;
        let interval = self.inner.options.reclaim_interval;
        let mut claim_due = Instant::now();
        loop {
            if fetch.is_none() && !self.draining {
                let n = self.room().min(1000);
                if n > 0 {
                    self.asked += n;
                    if Instant::now() >= claim_due {
                        claim_due = Instant::now() + interval;
                        fetch = Some(self.claim(n));
                    } else {
                        let block = claim_due.saturating_duration_since(Instant::now());
                        fetch = Some(self.read(n, block));
                    }
                }
            }
            tokio::select! {
                command = commands.recv() => match command {
                    None => return,
                    Some(Command::Settle(id, settle)) => {
                        let settler = self.settler.clone();
                        let ids: Vec<String> = settle
                            .receipts()
                            .iter()
                            .filter_map(|r| receipt::decode(r).ok().map(|p| p.id))
                            .collect();
                        settles.push(Box::pin(async move {
                            (id, settler.settle(settle).await, ids)
                        }));
                    }
                    Some(Command::Credit(n)) => {
                        self.window = self.window.saturating_add(n).min(MAX_CREDITS);
                    }
                    Some(Command::Drain) => {
                        self.draining = true;
                        let _ = self.events.send(Ok(SessionEvent::Drained));
                    }
                },
                (fetched, cursor) = async { fetch.as_mut().expect("fetch in flight").await }, if fetch.is_some() => {
                    fetch = None;
                    if let Some(c) = cursor {
                        self.cursor = c;
                    }
                    if let Err(e) = self.on_fetched(fetched, &mut internal) {
                        let _ = self.events.send(Err(e));
                        return;
                    }
                }
                Some((id, outcomes, ids)) = settles.next(), if !settles.is_empty() => {
                    for i in ids {
                        self.outstanding.remove(&i);
                    }
                    let _ = self.events.send(Ok(SessionEvent::Settled { id, outcomes }));
                }
                Some(()) = internal.next(), if !internal.is_empty() => {}
            }
        }
    }

    /// New entries for this consumer (delivery 1).
    fn read(&self, n: u32, block: Duration) -> BoxFuture<'static, (Fetched, Option<String>)> {
        let reader = self.reader.clone();
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.settler.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(n)
            .arg("BLOCK")
            .arg(ms(block))
            .arg("STREAMS")
            .arg(&self.settler.keys.stream)
            .arg(">");
        let wait = block + reader.timeout;
        Box::pin(async move {
            let got = reader.query_for::<Value>(&cmd, wait).await.map(|v| {
                // [[stream, [entry, ...]]], or nil when the block ran out.
                array(&v)
                    .first()
                    .map(|s| array(s).get(1).map(array).unwrap_or(&[]).to_vec())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| (e, 1))
                    .collect()
            });
            ((n, got), None)
        })
    }

    /// Entries idle past the lease, taken over with their counts.
    fn claim(&self, n: u32) -> BoxFuture<'static, (Fetched, Option<String>)> {
        let inner = self.inner.clone();
        let stream = self.settler.keys.stream.clone();
        let args: Vec<Vec<u8>> = vec![
            self.settler.group.clone().into_bytes(),
            self.consumer.clone().into_bytes(),
            ms(self.lease).to_string().into_bytes(),
            n.to_string().into_bytes(),
            self.cursor.clone().into_bytes(),
        ];
        Box::pin(async move {
            let got: Result<Value, TransportError> =
                inner.conn.script(&scripts::CLAIM, &[&stream], &args).await;
            match got {
                Err(e) => ((n, Err(e)), None),
                Ok(v) => {
                    let parts = array(&v);
                    let cursor = parts.first().and_then(text);
                    let entries = parts
                        .get(1)
                        .map(array)
                        .unwrap_or(&[])
                        .iter()
                        .map(|e| {
                            let t = array(e);
                            let entry = Value::Array(t.iter().take(2).cloned().collect());
                            let count = t.get(2).and_then(int).unwrap_or(1).max(1) as u32;
                            (entry, count)
                        })
                        .collect();
                    ((n, Ok(entries)), cursor)
                }
            }
        })
    }

    fn on_fetched(
        &mut self,
        (asked, got): Fetched,
        internal: &mut FuturesUnordered<BoxFuture<'static, ()>>,
    ) -> Result<(), TransportError> {
        self.asked = self.asked.saturating_sub(asked);
        let entries = match got {
            Ok(e) => e,
            Err(e) if e.kind == ErrorKind::GroupNotFound || e.message.contains("NOGROUP") => {
                return Err(TransportError::refused(
                    ErrorKind::GroupNotFound,
                    format!(
                        "the consumer group {} of topic {} is gone (the stream was deleted?)",
                        self.settler.group, self.settler.keys.topic
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        let mut batch = Vec::new();
        for (raw, count) in entries {
            let e = entry::decode(&raw)?;
            self.on_entry(e, count, &mut batch, internal);
        }
        if !batch.is_empty() {
            let _ = self.events.send(Ok(SessionEvent::Deliveries(batch)));
        }
        Ok(())
    }

    fn on_entry(
        &mut self,
        e: entry::Entry,
        count: u32,
        batch: &mut Vec<Delivery>,
        internal: &mut FuturesUnordered<BoxFuture<'static, ()>>,
    ) {
        let received = now_ms();
        let first = self.inner.first_seen.lock().unwrap().note(
            &self.settler.keys.stream,
            &self.settler.group,
            &e.id,
            count,
            received,
        );
        let parsed = Parsed {
            id: e.id.clone(),
            consumer: self.consumer.clone(),
            count,
            received_ms: received,
        };
        let max = self.settler.max_deliveries;
        if count > max {
            // Its lease ran out on the last allowed delivery: dead-letter it unrun.
            let settler = self.settler.clone();
            internal.push(Box::pin(async move {
                let reason = format!(
                    "lease expired on delivery {} of {max} (max_deliveries)",
                    count - 1
                );
                if let Err(e) = settler.dead_letter(&parsed, &reason, count - 1).await {
                    tracing::warn!(error = %e, "dead-lettering an entry past max_deliveries failed; it comes back");
                }
            }));
            return;
        }
        if let Some(for_group) = e.layer.get(wire::FOR_GROUP)
            && for_group != &self.settler.group
        {
            let settler = self.settler.clone();
            internal.push(Box::pin(async move {
                if let Err(e) = settler.ack(&parsed).await {
                    tracing::warn!(error = %e, "acking another group's resend failed; it comes back");
                }
            }));
            return;
        }
        if self.draining {
            // Asked for before the drain and never handled: released at once.
            let settler = self.settler.clone();
            internal.push(Box::pin(async move {
                let _ = settler.release(&parsed, Duration::ZERO).await;
            }));
            return;
        }
        self.outstanding.insert(e.id.clone());
        let position = e.position();
        let sequence = e.layer_u64(wire::SEQUENCE);
        let first_delivered_ms = first.or_else(|| e.layer_u64(wire::FIRST_DELIVERED));
        let timestamp_ms = match position {
            surety_core::Position::EntryId { ms, .. } => ms as i64,
            _ => 0,
        };
        batch.push(Delivery {
            receipt: receipt::encode(&parsed),
            position,
            partition: 0,
            delivery_count: count,
            first_delivered_ms,
            lease_until_ms: Some((received + ms(self.lease)).saturating_sub(LEASE_MARGIN_MS)),
            timestamp_ms,
            key: e.key,
            headers: e.headers,
            payload: e.payload,
            id: e.layer.get(wire::ID).cloned(),
            producer_id: e.layer.get(wire::PRODUCER).cloned(),
            sequence,
        });
    }
}
