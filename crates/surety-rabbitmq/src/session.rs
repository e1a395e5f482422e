//! A consumer session: one consuming channel on the group's quorum queue, its prefetch
//! the credit window, and one confirm channel for the copies the layer makes.
//!
//! - **Ack** is `basic.ack` after the handler (AMQP never answers it: `Sent`).
//! - **Nack** below `max_deliveries` copies the message into the retry queue of its delay
//!   step (headers: its deliveries so far, first/last delivery, the reason), waits for the
//!   confirm, then acks the original; the copy's TTL runs out and the broker dead-letters
//!   it (at least once) back into the group's queue. Never an immediate requeue, and the
//!   same on every RabbitMQ version: `basic.nack`/`basic.reject` are not used for retries,
//!   so RabbitMQ 4.3's change of what counts toward `x-delivery-limit` does not matter.
//! - At `max_deliveries` (and for `Settle::DeadLetter`) the copy goes into the group's
//!   dead-letter queue with reason, attempts and times instead.
//! - A delivery's count is the deliveries of its earlier copies (`surety.deliveries`)
//!   plus the broker's count of this copy's returns (`x-delivery-count`: a consumer that
//!   died or closed its channel) plus one. One above `max_deliveries` (its consumer died
//!   on the last one) is dead-lettered unrun.
//!
//! A delivery is held until its channel closes (RabbitMQ has no per-message lease;
//! `consumer_timeout`, 30 min by default, closes a channel whose delivery waits longer).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Consumer};
use surety_core::retry::nack_backoff;
use surety_core::{
    BoxFuture, Delivery, ErrorKind, Outcome, Position, RequestId, Session, SessionEvent, Settle,
    SettleOutcome, Subscription, TransportError, wire,
};
use surety_core::{ChannelSession, SessionCommand as Command};
use tokio::sync::mpsc;

use crate::headers::{self, DEAD_LETTER_ID, DELIVERIES};
use crate::names::{self, GroupNames, TopicNames};
use crate::receipt::{self, Parsed};
use crate::topology::{self, TopicSettings};
use crate::transport::{Inner, LocalGroup, MAX_CREDITS, now_ms};

/// The longest reason kept.
const MAX_REASON: usize = 1024;

static SESSIONS: AtomicU64 = AtomicU64::new(1);

pub(crate) async fn subscribe(
    inner: Arc<Inner>,
    sub: &Subscription,
) -> Result<Box<dyn Session>, TransportError> {
    let topic = TopicNames::new(&inner.options.prefix, &sub.topic)?;
    let group = topic.group(&sub.group)?;
    if sub.credits > MAX_CREDITS {
        return Err(TransportError::refused(
            ErrorKind::InvalidInput,
            format!("credits {} above {MAX_CREDITS}", sub.credits),
        ));
    }
    let settings = topology::settings(&inner, &topic).await?;
    topology::ensure_group(&inner, &topic, &group, &settings).await?;
    let consume = inner.conn.channel().await?;
    let copies = inner.conn.confirm_channel().await?;
    // Unique in this process; receipts never cross processes (a channel is local).
    let session = SESSIONS.fetch_add(1, Ordering::Relaxed);
    let (handle, command_rx, events_tx) = ChannelSession::new("the RabbitMQ session ended");
    let local = inner.local_group(&group.queue);
    local.sessions.fetch_add(1, Ordering::Relaxed);
    let settler = Arc::new(Settler {
        inner: inner.clone(),
        consume: consume.clone(),
        copies,
        group,
        settings,
        local,
    });
    let mut pump = Pump {
        settler,
        session,
        consumer: None,
        window: sub.credits,
        held: HashMap::new(),
        draining: false,
        events: events_tx,
    };
    if pump.window > 0 {
        pump.start().await?;
    }
    tokio::spawn(pump.run(command_rx));
    Ok(Box::new(handle))
}

/// A delivery handed to the driver and not settled yet: what a copy of it needs.
#[derive(Debug)]
struct Held {
    tag: u64,
    data: Vec<u8>,
    properties: lapin::BasicProperties,
    count: u32,
    /// When the message was first delivered to the group, where known (a copy carries
    /// it; a first copy redelivered after a consumer died does not say).
    first_ms: Option<u64>,
    received_ms: u64,
}

impl Held {
    fn times(&self) -> Vec<(&'static str, String)> {
        let mut t = vec![(wire::LAST_DELIVERED, self.received_ms.to_string())];
        if let Some(first) = self.first_ms {
            t.push((wire::FIRST_DELIVERED, first.to_string()));
        }
        t
    }
}

/// What settles: shared by the settlements in flight.
struct Settler {
    inner: Arc<Inner>,
    consume: Channel,
    copies: Channel,
    group: GroupNames,
    settings: TopicSettings,
    local: Arc<LocalGroup>,
}

impl Settler {
    async fn ack(&self, tag: u64) -> Result<(), TransportError> {
        self.inner
            .conn
            .bounded(
                "basic.ack",
                self.consume.basic_ack(tag, BasicAckOptions::default()),
                Outcome::Unknown,
            )
            .await
    }

    /// Puts an unsettled delivery back at once (after a failed copy, or at a drain).
    async fn requeue(&self, tag: u64) -> Result<(), TransportError> {
        self.inner
            .conn
            .bounded(
                "basic.nack",
                self.consume.basic_nack(
                    tag,
                    BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    },
                ),
                Outcome::Unknown,
            )
            .await
    }

    async fn settle_one(&self, held: Held, how: &Settle) -> SettleOutcome {
        let r = match how {
            Settle::Ack(_) => self.ack(held.tag).await,
            Settle::Nack { delay, reason, .. } if held.count < self.settings.max_deliveries => {
                self.retry(&held, *delay, reason).await
            }
            Settle::Nack { reason, .. } | Settle::DeadLetter { reason, .. } => {
                self.dead_letter(&held, reason, held.count).await
            }
        };
        self.local.in_flight.fetch_sub(1, Ordering::Relaxed);
        match r {
            Ok(()) => SettleOutcome::Sent,
            Err(e) => SettleOutcome::Refused(e),
        }
    }

    /// The delayed retry: a copy into the retry queue of the delay's step, then the ack.
    async fn retry(
        &self,
        held: &Held,
        requested: Duration,
        reason: &str,
    ) -> Result<(), TransportError> {
        let o = &self.inner.options;
        let delay = nack_backoff(
            o.nak_backoff_initial,
            o.nak_backoff_max,
            held.count.into(),
            held.tag,
        )
        .max(requested);
        let copied = async {
            let queue =
                topology::ensure_retry(&self.inner, &self.group, names::retry_step(delay)).await?;
            let mut set = held.times();
            set.extend([
                (DELIVERIES, held.count.to_string()),
                (wire::REASON, clip(reason)),
            ]);
            let props = headers::copy_with(&held.properties, &set, &[]);
            self.inner
                .conn
                .copy_into(&self.copies, &queue, &held.data, props)
                .await
        };
        self.copy_then_ack(held, copied.await).await
    }

    async fn dead_letter(
        &self,
        held: &Held,
        reason: &str,
        attempts: u32,
    ) -> Result<(), TransportError> {
        let now = now_ms();
        let mut set = held.times();
        set.extend([
            (wire::ATTEMPTS, attempts.to_string()),
            (wire::REASON, clip(reason)),
            (wire::DEAD_LETTERED, now.to_string()),
            (wire::FOR_GROUP, self.group.group.clone()),
            (DEAD_LETTER_ID, headers::new_dead_letter_id().to_string()),
        ]);
        let props = headers::copy_with(&held.properties, &set, &[DELIVERIES]);
        let copied = self
            .inner
            .conn
            .copy_into(&self.copies, &self.group.dlq, &held.data, props)
            .await;
        self.copy_then_ack(held, copied).await
    }

    /// The second half of a copy: ack the original once the copy is confirmed; else put
    /// the original back at once (it is not lost, only not delayed) and say why.
    async fn copy_then_ack(
        &self,
        held: &Held,
        copied: Result<(), TransportError>,
    ) -> Result<(), TransportError> {
        match copied {
            Ok(()) => self.ack(held.tag).await,
            Err(e) => {
                let _ = self.requeue(held.tag).await;
                Err(TransportError {
                    message: format!("{} (the message was put back at once)", e.message),
                    ..e
                })
            }
        }
    }
}

fn clip(reason: &str) -> String {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

type Answered = (RequestId, Vec<SettleOutcome>);

struct Pump {
    settler: Arc<Settler>,
    session: u64,
    consumer: Option<Consumer>,
    window: u32,
    held: HashMap<u64, Held>,
    draining: bool,
    events: mpsc::UnboundedSender<Result<SessionEvent, TransportError>>,
}

impl Pump {
    /// Starts consuming (a prefetch of 0 would mean no limit in AMQP, so a session with
    /// no credit does not consume at all).
    async fn start(&mut self) -> Result<(), TransportError> {
        let c = &self.settler.inner.conn;
        let ch = &self.settler.consume;
        c.bounded(
            "basic.qos",
            ch.basic_qos(self.window as u16, BasicQosOptions::default()),
            Outcome::Retryable,
        )
        .await?;
        let consumer = c
            .bounded(
                "basic.consume",
                ch.basic_consume(
                    self.settler.group.queue.as_str().into(),
                    format!("surety-{}-{}", std::process::id(), self.session).into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                ),
                Outcome::Retryable,
            )
            .await?;
        self.consumer = Some(consumer);
        Ok(())
    }

    async fn run(mut self, commands: mpsc::UnboundedReceiver<Command>) {
        if let Err(e) = self.serve(commands).await {
            let _ = self.events.send(Err(e));
        }
        // Unsettled deliveries go back to the queue when the channel closes.
        for ch in [&self.settler.consume, &self.settler.copies] {
            if ch.status().connected() {
                let _ = ch.close(200, ShortString::from("session ended")).await;
            }
        }
        self.settler
            .local
            .in_flight
            .fetch_sub(self.held.len() as u64, Ordering::Relaxed);
        self.settler.local.sessions.fetch_sub(1, Ordering::Relaxed);
    }

    async fn serve(
        &mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), TransportError> {
        let mut settles: FuturesUnordered<BoxFuture<'static, Answered>> = FuturesUnordered::new();
        let mut internal: FuturesUnordered<BoxFuture<'static, ()>> = FuturesUnordered::new();
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None => return Ok(()),
                    Some(Command::Settle(id, settle)) => settles.push(self.settle(id, settle)),
                    Some(Command::Credit(n)) => {
                        let was = self.window;
                        self.window = self.window.saturating_add(n).min(MAX_CREDITS);
                        if self.draining || self.window == was {
                        } else if self.consumer.is_none() {
                            self.start().await?;
                        } else {
                            let s = self.settler.clone();
                            let window = self.window as u16;
                            internal.push(Box::pin(async move {
                                let _ = s.consume.basic_qos(window, BasicQosOptions::default()).await;
                            }));
                        }
                    }
                    Some(Command::Drain) => {
                        self.draining = true;
                        if let Some(c) = &self.consumer {
                            let tag = c.tag();
                            let _ = self
                                .settler
                                .inner
                                .conn
                                .bounded("basic.cancel", self.settler.consume.basic_cancel(tag, BasicCancelOptions::default()), Outcome::Retryable)
                                .await;
                        }
                        let _ = self.events.send(Ok(SessionEvent::Drained));
                    }
                },
                next = async { self.consumer.as_mut().expect("consuming").next().await }, if self.consumer.is_some() => {
                    match next {
                        Some(Ok(d)) => self.on_delivery(d, &mut internal),
                        Some(Err(e)) => return Err(crate::conn::error(&e, Outcome::Retryable)),
                        None if self.draining => self.consumer = None,
                        None => {
                            return Err(TransportError::unavailable(format!(
                                "RabbitMQ ended the consumer of {} (queue deleted, or the channel closed)",
                                self.settler.group.queue
                            )));
                        }
                    }
                }
                Some((id, outcomes)) = settles.next(), if !settles.is_empty() => {
                    let _ = self.events.send(Ok(SessionEvent::Settled { id, outcomes }));
                }
                Some(()) = internal.next(), if !internal.is_empty() => {}
            }
        }
    }

    fn settle(&mut self, id: RequestId, settle: Settle) -> BoxFuture<'static, Answered> {
        let mut work = Vec::with_capacity(settle.receipts().len());
        for r in settle.receipts() {
            work.push(match receipt::decode(r) {
                Err(e) => Err(SettleOutcome::Refused(e)),
                Ok(p) if p.session != self.session => Err(SettleOutcome::Refused(
                    TransportError::refused(
                        ErrorKind::Stale,
                        "a receipt of another session: its channel closed and RabbitMQ put the delivery back",
                    )
                    .with_code("receipt_stale"),
                )),
                Ok(p) => self.held.remove(&p.tag).ok_or(SettleOutcome::AlreadySettled),
            });
        }
        let settler = self.settler.clone();
        Box::pin(async move {
            let mut outcomes = Vec::with_capacity(work.len());
            for w in work {
                outcomes.push(match w {
                    Err(o) => o,
                    Ok(held) => settler.settle_one(held, &settle).await,
                });
            }
            (id, outcomes)
        })
    }

    fn on_delivery(
        &mut self,
        d: AmqpDelivery,
        internal: &mut FuturesUnordered<BoxFuture<'static, ()>>,
    ) {
        let received = now_ms();
        let h = headers::decode(&d.properties);
        let sequence = h.layer_u64(wire::SEQUENCE);
        let earlier = h
            .layer_u64(DELIVERIES)
            .unwrap_or(0)
            .min(u64::from(u32::MAX)) as u32;
        let count = earlier.saturating_add(h.broker_returns).saturating_add(1);
        let first_ms = h
            .layer_u64(wire::FIRST_DELIVERED)
            .or((count == 1).then_some(received));
        let held = Held {
            tag: d.delivery_tag,
            data: d.data,
            properties: d.properties,
            count,
            first_ms,
            received_ms: received,
        };
        self.settler.local.in_flight.fetch_add(1, Ordering::Relaxed);
        let max = self.settler.settings.max_deliveries;
        if self.draining {
            // Asked for before the drain and never handed out: back at once.
            let s = self.settler.clone();
            internal.push(Box::pin(async move {
                let _ = s.requeue(held.tag).await;
                s.local.in_flight.fetch_sub(1, Ordering::Relaxed);
            }));
            return;
        }
        if count > max {
            // Its consumer died (or closed its channel) on the last allowed delivery.
            let s = self.settler.clone();
            internal.push(Box::pin(async move {
                let reason = format!("the consumer died on delivery {} of {max} (max_deliveries)", count - 1);
                if let Err(e) = s.dead_letter(&held, &reason, count - 1).await {
                    tracing::warn!(error = %e, "dead-lettering a delivery past max_deliveries failed; it comes back");
                }
                s.local.in_flight.fetch_sub(1, Ordering::Relaxed);
            }));
            return;
        }
        let delivery = Delivery {
            receipt: receipt::encode(Parsed {
                session: self.session,
                tag: held.tag,
            }),
            position: Position::Unaddressed,
            partition: 0,
            delivery_count: count,
            first_delivered_ms: first_ms,
            lease_until_ms: None,
            timestamp_ms: held
                .properties
                .timestamp()
                .map_or(0, |s| (s as i64).saturating_mul(1000)),
            key: h.key,
            headers: h.headers,
            payload: held.data.clone(),
            id: h.layer.get(wire::ID).cloned(),
            producer_id: h.layer.get(wire::PRODUCER).cloned(),
            sequence,
        };
        self.held.insert(held.tag, held);
        let _ = self
            .events
            .send(Ok(SessionEvent::Deliveries(vec![delivery])));
    }
}
