//! Settling deliveries: `+ACK`; a nack is `-NAK {"delay": ns}` with the delay grown per
//! delivery (never a bare `-NAK`, which redelivers at once and burns through
//! `max_deliveries` in milliseconds) — or, at the group's `max_deliveries`, the copy to
//! the dead letters and `+TERM` ([`dead_letters::copy_then_term`]). Each is a request the
//! server answers, so every outcome is `Applied` or a refusal.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use surety_core::retry::nack_backoff;
use surety_core::{Settle, SettleOutcome, TransportError};

use crate::dead_letters::{self, Death};
use crate::names::TopicNames;
use crate::receipt::{self, Parsed};
use crate::transport::{Inner, MAX_NAK_DELAY};

/// What settling needs to know about a subscription.
#[derive(Debug)]
pub(crate) struct Settler {
    pub inner: Arc<Inner>,
    pub names: TopicNames,
    pub group: String,
    pub max_deliveries: u32,
}

impl Settler {
    /// Settles each receipt; one outcome per receipt, in order.
    pub async fn settle(&self, settle: Settle) -> Vec<SettleOutcome> {
        let parsed: Vec<Result<Parsed, TransportError>> =
            settle.receipts().iter().map(receipt::decode).collect();
        let runs = parsed.iter().map(|p| async {
            let p = match p {
                Ok(p) => p,
                Err(e) => return SettleOutcome::Refused(e.clone()),
            };
            let done = match &settle {
                Settle::Ack(_) => self.ack(p).await,
                Settle::Nack { delay, reason, .. } => self.nack(p, *delay, reason).await,
                Settle::DeadLetter { reason, .. } => {
                    self.dead_letter(p, reason, p.info.delivered).await
                }
            };
            match done {
                Ok(()) => SettleOutcome::Applied,
                Err(e) => SettleOutcome::Refused(e),
            }
        });
        join_all(runs).await
    }

    async fn ack(&self, p: &Parsed) -> Result<(), TransportError> {
        dead_letters::settle_reply(&self.inner, &p.reply, "+ACK").await
    }

    async fn nack(&self, p: &Parsed, delay: Duration, reason: &str) -> Result<(), TransportError> {
        if p.info.delivered >= u64::from(self.max_deliveries) {
            return self.dead_letter(p, reason, p.info.delivered).await;
        }
        let delay = self.nak_delay(delay, p.info.delivered, p.info.stream_seq);
        let body = format!("-NAK {{\"delay\":{}}}", delay.as_nanos());
        dead_letters::settle_reply(&self.inner, &p.reply, &body).await
    }

    pub async fn dead_letter(
        &self,
        p: &Parsed,
        reason: &str,
        attempts: u64,
    ) -> Result<(), TransportError> {
        dead_letters::copy_then_term(
            &self.inner,
            Death {
                names: &self.names,
                group: &self.group,
                receipt: p,
                reason,
                attempts,
            },
        )
        .await
    }

    /// The delay of a nack after `delivered` deliveries: the consumer's own, or the
    /// backoff where that is longer.
    pub fn nak_delay(&self, requested: Duration, delivered: u64, seq: u64) -> Duration {
        let o = &self.inner.options;
        nack_backoff(o.nak_backoff_initial, o.nak_backoff_max, delivered, seq)
            .max(requested)
            .min(MAX_NAK_DELAY)
    }
}
