//! Settling deliveries, each by an owner-checked script: ack = XACK; nack = the entry
//! left pending with its idle time set so that the reclaim loop takes it back after the
//! delay (grown per delivery, never an immediate retry); at the group's
//! `max_deliveries`, or on `Settle::DeadLetter`, the dead-letter move. Every answer is
//! the server's: `Applied`, `AlreadySettled` (no longer pending: settled before), or
//! `Refused(Stale)` (another consumer holds it now, or it was delivered again).

use std::time::Duration;

use futures_util::future::join_all;
use surety_core::retry::nack_backoff;
use surety_core::{ErrorKind, Settle, SettleOutcome, TransportError};

use crate::keys::TopicKeys;
use crate::receipt::{self, Parsed};
use crate::scripts;
use crate::transport::{Inner, now_ms};

/// The longest reason kept.
const MAX_REASON: usize = 1024;

#[derive(Debug)]
pub(crate) struct Settler {
    pub inner: std::sync::Arc<Inner>,
    pub keys: TopicKeys,
    pub group: String,
    pub max_deliveries: u32,
    pub lease: Duration,
}

/// What a settlement script answered.
pub(crate) enum Done {
    Applied,
    NotPending,
    Stale,
}

impl Settler {
    pub async fn settle(&self, settle: Settle) -> Vec<SettleOutcome> {
        if let Settle::Ack(receipts) = &settle
            && receipts.len() > 1
        {
            return self.ack_many(receipts).await;
        }
        let runs = settle.receipts().iter().map(|r| async {
            let p = match receipt::decode(r) {
                Ok(p) => p,
                Err(e) => return SettleOutcome::Refused(e),
            };
            let done = match &settle {
                Settle::Ack(_) => self.ack(&p).await,
                Settle::Nack { delay, reason, .. } => self.nack(&p, *delay, reason).await,
                Settle::DeadLetter { reason, .. } => self.dead_letter(&p, reason, p.count).await,
            };
            match done {
                Ok(Done::Applied) => SettleOutcome::Applied,
                Ok(Done::NotPending) if matches!(settle, Settle::Ack(_)) => {
                    SettleOutcome::AlreadySettled
                }
                Ok(Done::NotPending) | Ok(Done::Stale) => SettleOutcome::Refused(stale(&p)),
                Err(e) => SettleOutcome::Refused(e),
            }
        });
        join_all(runs).await
    }

    /// Acks a batch in one script call (one round trip, one AOF write).
    async fn ack_many(&self, receipts: &[surety_core::Receipt]) -> Vec<SettleOutcome> {
        let parsed: Vec<Result<Parsed, TransportError>> =
            receipts.iter().map(receipt::decode).collect();
        let mut args = vec![self.group.clone().into_bytes()];
        for p in parsed.iter().flatten() {
            args.push(p.id.clone().into_bytes());
            args.push(p.consumer.clone().into_bytes());
            args.push(p.count.to_string().into_bytes());
        }
        let answers: Result<Vec<i64>, TransportError> = self
            .inner
            .conn
            .script(&scripts::ACK_MANY, &[&self.keys.stream], &args)
            .await;
        let mut answers = match answers {
            Ok(a) => a.into_iter(),
            Err(e) => {
                return receipts
                    .iter()
                    .map(|_| SettleOutcome::Refused(e.clone()))
                    .collect();
            }
        };
        parsed
            .into_iter()
            .map(|p| match p {
                Err(e) => SettleOutcome::Refused(e),
                Ok(p) => match answers.next().map(done) {
                    Some(Done::Applied) => SettleOutcome::Applied,
                    Some(Done::NotPending) => SettleOutcome::AlreadySettled,
                    Some(Done::Stale) => SettleOutcome::Refused(stale(&p)),
                    None => {
                        SettleOutcome::Refused(crate::entry::protocol("an ack without an answer"))
                    }
                },
            })
            .collect()
    }

    fn owner_args(&self, p: &Parsed) -> Vec<Vec<u8>> {
        vec![
            self.group.clone().into_bytes(),
            p.id.clone().into_bytes(),
            p.consumer.clone().into_bytes(),
            p.count.to_string().into_bytes(),
        ]
    }

    pub async fn ack(&self, p: &Parsed) -> Result<Done, TransportError> {
        let n: i64 = self
            .inner
            .conn
            .script(&scripts::ACK, &[&self.keys.stream], &self.owner_args(p))
            .await?;
        Ok(done(n))
    }

    async fn nack(
        &self,
        p: &Parsed,
        delay: Duration,
        reason: &str,
    ) -> Result<Done, TransportError> {
        if p.count >= self.max_deliveries {
            return self.dead_letter(p, reason, p.count).await;
        }
        let delay = self.nak_delay(delay, p.count, &p.id);
        self.release(p, delay).await
    }

    /// Leaves the entry pending, to be reclaimed `delay` from now.
    pub async fn release(&self, p: &Parsed, delay: Duration) -> Result<Done, TransportError> {
        let idle = self.lease.saturating_sub(delay);
        let mut args = self.owner_args(p);
        args.push((idle.as_millis() as u64).to_string().into_bytes());
        let n: i64 = self
            .inner
            .conn
            .script(&scripts::NACK, &[&self.keys.stream], &args)
            .await?;
        Ok(done(n))
    }

    pub async fn dead_letter(
        &self,
        p: &Parsed,
        reason: &str,
        attempts: u32,
    ) -> Result<Done, TransportError> {
        let mut reason = reason.to_owned();
        if reason.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        let first = self
            .inner
            .first_seen
            .lock()
            .unwrap()
            .get(&self.keys.stream, &self.group, &p.id)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let mut args = self.owner_args(p);
        args.push(reason.into_bytes());
        args.push(attempts.to_string().into_bytes());
        args.push(first.into_bytes());
        args.push(p.received_ms.to_string().into_bytes());
        args.push(now_ms().to_string().into_bytes());
        let answer: redis::Value = self
            .inner
            .conn
            .script(
                &scripts::DEAD_LETTER,
                &[&self.keys.stream, &self.keys.dlq, &self.keys.dlq_count],
                &args,
            )
            .await?;
        Ok(match answer {
            redis::Value::Int(n) => done(n),
            _ => Done::Applied,
        })
    }

    /// The delay of a nack after `count` deliveries: the consumer's own, or the backoff
    /// where that is longer; capped at the lease (see the capability).
    pub fn nak_delay(&self, requested: Duration, count: u32, id: &str) -> Duration {
        let o = &self.inner.options;
        let seed = id
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        nack_backoff(
            o.nak_backoff_initial,
            o.nak_backoff_max,
            u64::from(count),
            seed,
        )
        .max(requested)
        .min(self.lease)
    }
}

fn done(n: i64) -> Done {
    match n {
        1 => Done::Applied,
        0 => Done::NotPending,
        _ => Done::Stale,
    }
}

fn stale(p: &Parsed) -> TransportError {
    TransportError::refused(
        ErrorKind::Stale,
        format!(
            "entry {} (delivery {} to {}) is no longer this delivery's: its lease ran out and \
             it was reclaimed, or it was settled",
            p.id, p.count, p.consumer
        ),
    )
    .with_code("receipt_stale")
}
