//! A consumer session: the group's durable pull consumer, pulled for exactly the free
//! room of the credit window.
//!
//! `subscribe` creates (or updates) the durable consumer — explicit acks, `AckWait` =
//! the lease, `MaxDeliver` = -1 so that the server never silently drops a message at a
//! limit (the backend dead-letters at the topic's `max_deliveries`), no ack-pending cap
//! (the window is the cap) — and starts a task that owns one inbox. The task sends pull
//! requests (`$JS.API.CONSUMER.MSG.NEXT`, with an expiry and idle heartbeats) for the
//! window's free room, hands deliveries on, and runs settlements concurrently. The
//! server serves one consumer's pull requests in order, so the task counts what each
//! of its requests still owes first-in first-out; a request whose expiry passed with
//! no word from the server is written off, so a lost status cannot shrink the window.
//!
//! Two kinds of message never reach the driver: one delivered more often than
//! `max_deliveries` (its last lease ran out mid-handler) is dead-lettered unrun, and a
//! resent dead letter meant for another group (`surety.for-group`) is acked unrun.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use serde_json::json;
use surety_core::{
    BoxFuture, Delivery, ErrorKind, Position, RequestId, Session, SessionEvent, SettleOutcome,
    Subscription, TransportError, wire,
};
use surety_core::{ChannelSession, SessionCommand as Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::dead_letters::now_ms;
use crate::headers;
use crate::names;
use crate::receipt;
use crate::settle::Settler;
use crate::topics;
use crate::transport::{Inner, MAX_CREDITS};

/// How long the server keeps one pull request.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// How often it says it is alive while a request waits.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence (no message, heartbeat or status) that means the server is gone.
const SILENCE: Duration = Duration::from_secs(4);
/// The most messages one pull request asks for.
const MAX_PULL: u32 = 256;
/// How much earlier than `received + lease` a delivery's lease is said to end.
const LEASE_MARGIN_MS: u64 = 10;

pub(crate) async fn subscribe(
    inner: Arc<Inner>,
    sub: &Subscription,
) -> Result<Box<dyn Session>, TransportError> {
    let names = inner.names(&sub.topic)?;
    names::group(&sub.group)?;
    if sub.credits > MAX_CREDITS {
        return Err(TransportError::refused(
            ErrorKind::InvalidInput,
            format!("credits {} above {MAX_CREDITS}", sub.credits),
        ));
    }
    let settings = topics::settings(&inner, &names).await?;
    let lease = sub.lease.unwrap_or(settings.ack_wait);
    let config = json!({
        "stream_name": names.stream,
        "config": {
            "durable_name": sub.group,
            "description": format!("Surety group {} of topic {}", sub.group, sub.topic),
            "deliver_policy": "all",
            "ack_policy": "explicit",
            "ack_wait": u64::try_from(lease.as_nanos()).unwrap_or(u64::MAX),
            "max_deliver": -1,
            "max_ack_pending": -1,
            "replay_policy": "instant",
        }
    });
    inner
        .api
        .call::<serde_json::Value>(
            &format!("CONSUMER.DURABLE.CREATE.{}.{}", names.stream, sub.group),
            &config,
        )
        .await
        .map_err(|f| f.into_transport(&format!("consumer {} on {}", sub.group, names.stream)))?;
    let inbox = inner.client.new_inbox();
    let messages = inner
        .client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| TransportError::unavailable(format!("subscribe {inbox}: {e}")))?;
    let (session, command_rx, event_tx) = ChannelSession::new("the NATS session ended");
    let next_subject = format!("$JS.API.CONSUMER.MSG.NEXT.{}.{}", names.stream, sub.group);
    let settler = Arc::new(Settler {
        inner: inner.clone(),
        names,
        group: sub.group.clone(),
        max_deliveries: settings.max_deliveries,
    });
    let pump = Pump {
        inner,
        settler,
        lease,
        inbox,
        next_subject,
        window: sub.credits,
        outstanding: HashSet::new(),
        pulls: VecDeque::new(),
        draining: false,
        last_heard: Instant::now(),
        events: event_tx,
    };
    tokio::spawn(pump.run(messages, command_rx));
    Ok(Box::new(session))
}

/// One pull request of ours the server has not finished.
#[derive(Debug)]
struct Pull {
    owed: u32,
    /// Past this with no word, it is written off.
    deadline: Instant,
}

type Answered = (RequestId, Vec<SettleOutcome>, Vec<String>);

/// The session's task.
struct Pump {
    inner: Arc<Inner>,
    settler: Arc<Settler>,
    lease: Duration,
    inbox: String,
    next_subject: String,
    window: u32,
    /// Reply subjects of this session's unsettled deliveries.
    outstanding: HashSet<String>,
    pulls: VecDeque<Pull>,
    draining: bool,
    last_heard: Instant,
    events: mpsc::UnboundedSender<Result<SessionEvent, TransportError>>,
}

impl Pump {
    async fn run(
        mut self,
        mut messages: async_nats::Subscriber,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let mut settles: FuturesUnordered<BoxFuture<'static, Answered>> = FuturesUnordered::new();
        let mut internal: FuturesUnordered<BoxFuture<'static, ()>> = FuturesUnordered::new();
        loop {
            if let Err(e) = self.pull().await {
                let _ = self.events.send(Err(e));
                return;
            }
            let wake = self
                .pulls
                .front()
                .map(|p| p.deadline.min(self.last_heard + SILENCE))
                .unwrap_or_else(|| Instant::now() + PULL_EXPIRES);
            tokio::select! {
                command = commands.recv() => match command {
                    // The driver dropped the session.
                    None => return,
                    Some(Command::Settle(id, settle)) => {
                        let settler = self.settler.clone();
                        let replies: Vec<String> = settle
                            .receipts()
                            .iter()
                            .filter_map(|r| receipt::decode(r).ok().map(|p| p.reply))
                            .collect();
                        settles.push(Box::pin(async move {
                            (id, settler.settle(settle).await, replies)
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
                message = messages.next() => {
                    let Some(first) = message else {
                        let _ = self.events.send(Err(TransportError::unavailable(
                            "the NATS connection closed the session's inbox",
                        )));
                        return;
                    };
                    let mut batch = Vec::new();
                    let mut next = Some(first);
                    while let Some(m) = next {
                        if let Err(e) = self.on_message(m, &mut batch, &mut internal) {
                            let _ = self.events.send(Err(e));
                            return;
                        }
                        next = messages.next().now_or_never().flatten();
                    }
                    if !batch.is_empty() {
                        let _ = self.events.send(Ok(SessionEvent::Deliveries(batch)));
                    }
                }
                Some((id, outcomes, replies)) = settles.next(), if !settles.is_empty() => {
                    for r in replies {
                        self.outstanding.remove(&r);
                    }
                    let _ = self.events.send(Ok(SessionEvent::Settled { id, outcomes }));
                }
                Some(()) = internal.next(), if !internal.is_empty() => {}
                () = tokio::time::sleep_until(wake) => {
                    if !self.pulls.is_empty() && self.last_heard.elapsed() >= SILENCE {
                        let _ = self.events.send(Err(TransportError::unavailable(format!(
                            "no word from the NATS server for {SILENCE:?} while pulling"
                        ))));
                        return;
                    }
                    let now = Instant::now();
                    while self.pulls.front().is_some_and(|p| p.deadline <= now) {
                        self.pulls.pop_front();
                    }
                }
            }
        }
    }

    /// Room in the window nobody has asked for yet.
    fn room(&self) -> u32 {
        let owed: u32 = self.pulls.iter().map(|p| p.owed).sum();
        self.window
            .saturating_sub(self.outstanding.len() as u32)
            .saturating_sub(owed)
    }

    /// Asks for the free room, if any.
    async fn pull(&mut self) -> Result<(), TransportError> {
        let n = self.room().min(MAX_PULL);
        if self.draining || n == 0 {
            return Ok(());
        }
        let body = json!({
            "batch": n,
            "expires": PULL_EXPIRES.as_nanos() as u64,
            "idle_heartbeat": HEARTBEAT.as_nanos() as u64,
        });
        self.inner
            .client
            .publish_with_reply(
                self.next_subject.clone(),
                self.inbox.clone(),
                serde_json::to_vec(&body).expect("JSON").into(),
            )
            .await
            .map_err(|e| TransportError::unavailable(format!("pull request: {e}")))?;
        if self.pulls.is_empty() {
            self.last_heard = Instant::now();
        }
        self.pulls.push_back(Pull {
            owed: n,
            deadline: Instant::now() + PULL_EXPIRES + Duration::from_secs(1),
        });
        Ok(())
    }

    /// One message on the inbox: a delivery, or the server's word about our requests.
    fn on_message(
        &mut self,
        m: async_nats::Message,
        batch: &mut Vec<Delivery>,
        internal: &mut FuturesUnordered<BoxFuture<'static, ()>>,
    ) -> Result<(), TransportError> {
        self.last_heard = Instant::now();
        match m.status.map(u16::from) {
            None | Some(200) => {}
            Some(100) => return Ok(()),
            // The oldest request expired (408), or ended unfilled (404, and 409 for
            // limits); how much it still owed no longer matters.
            Some(404 | 408) => {
                self.pulls.pop_front();
                return Ok(());
            }
            Some(409) => {
                let why = m.description.unwrap_or_default();
                if why.to_ascii_lowercase().contains("deleted") {
                    return Err(TransportError::refused(
                        ErrorKind::GroupNotFound,
                        format!("the group's consumer was deleted ({why})"),
                    ));
                }
                if why.to_ascii_lowercase().contains("leadership") {
                    self.pulls.clear();
                } else {
                    self.pulls.pop_front();
                }
                return Ok(());
            }
            Some(other) => {
                tracing::debug!(status = other, "unexpected status on a pull inbox");
                return Ok(());
            }
        }
        let Some(reply) = m.reply.as_ref().map(|r| r.as_str().to_owned()) else {
            return Ok(());
        };
        let Some(info) = receipt::parse_ack_subject(&reply) else {
            return Ok(());
        };
        if let Some(front) = self.pulls.front_mut() {
            front.owed = front.owed.saturating_sub(1);
            if front.owed == 0 {
                self.pulls.pop_front();
            }
        }
        let received = now_ms();
        let first = self.inner.first_seen.lock().unwrap().note(
            &info.stream,
            &info.consumer,
            info.stream_seq,
            info.delivered,
            received,
        );
        let parsed = receipt::Parsed {
            reply: reply.clone(),
            info: info.clone(),
            received_ms: received,
        };
        let max = u64::from(self.settler.max_deliveries);
        if info.delivered > max {
            // Its lease ran out on the last allowed delivery: dead-letter it unrun.
            let settler = self.settler.clone();
            internal.push(Box::pin(async move {
                let reason = format!(
                    "lease expired on delivery {} of {max} (max_deliveries)",
                    parsed.info.delivered - 1
                );
                let attempts = parsed.info.delivered - 1;
                if let Err(e) = settler.dead_letter(&parsed, &reason, attempts).await {
                    tracing::warn!(error = %e, "dead-lettering a message past max_deliveries failed; it comes back");
                }
            }));
            return Ok(());
        }
        let d = headers::decode(m.headers.as_ref());
        if let Some(for_group) = d.layer.get(wire::FOR_GROUP)
            && for_group != &self.settler.group
        {
            // A dead letter of another group, resent for that group alone.
            let inner = self.inner.clone();
            internal.push(Box::pin(async move {
                if let Err(e) =
                    crate::dead_letters::settle_reply(&inner, &parsed.reply, "+ACK").await
                {
                    tracing::warn!(error = %e, "acking another group's resend failed; it comes back");
                }
            }));
            return Ok(());
        }
        if self.draining {
            // Asked for before the drain and never handled: released at once (a bare
            // -NAK is right here, unlike for a failure: nothing ran, nothing to wait for).
            let inner = self.inner.clone();
            internal.push(Box::pin(async move {
                let _ = crate::dead_letters::settle_reply(&inner, &parsed.reply, "-NAK").await;
            }));
            return Ok(());
        }
        self.outstanding.insert(reply.clone());
        batch.push(Delivery {
            receipt: receipt::encode(&reply, received),
            position: Position::StreamSeq(info.stream_seq),
            partition: 0,
            delivery_count: u32::try_from(info.delivered).unwrap_or(u32::MAX),
            first_delivered_ms: first,
            // The server's clock started a little before we received it: err early.
            lease_until_ms: Some(
                (received + self.lease.as_millis() as u64).saturating_sub(LEASE_MARGIN_MS),
            ),
            timestamp_ms: (info.published_ns / 1_000_000) as i64,
            key: d.key,
            headers: d.headers,
            payload: m.payload.to_vec(),
            id: d.id,
            producer_id: d.producer_id,
            sequence: d.sequence,
        });
        Ok(())
    }
}
