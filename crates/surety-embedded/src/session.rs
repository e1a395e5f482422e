//! A core [`Session`] over the broker's own session ([`surety_broker::session`]), the same
//! window logic the gRPC `Consume` stream runs: a fetcher under the credits, the
//! outstanding set, concurrent per-receipt settles, drain. Only the front is here:
//!
//! - Commands (`settle`, `credit`, `drain`) never block: they go onto an unbounded
//!   channel, and a command task applies them in order (waiting, like the gRPC reader,
//!   while the broker session has as many settles in flight as it allows). The driver's
//!   window bounds what can pile up there.
//! - Events come from one bounded channel that the fetcher, the settle tasks and the
//!   command task all send to; [`Session::next`] is a `recv` on it, so it is cancel-safe.
//! - Dropping the session closes both channels: the command task ends and drops the
//!   broker session (stopping the fetcher), and deliveries fetched but not yet taken are
//!   released by the broker session at once; taken but unsettled ones are left to their
//!   leases, exactly as when a gRPC client goes away.

use surety_broker::session::{self, Outlet, SessionSpec, SettleAnswer, SettleOp};
use surety_broker::{Broker, BrokerError, Delivery};
use surety_core::{
    BoxFuture, ErrorKind, RequestId, Session, SessionEvent, Settle, SettleOutcome, Subscription,
    TransportError,
};
use tokio::sync::mpsc;

use crate::convert;
use crate::error::transport_error;

/// Events buffered towards a driver that does not call `next` before the fetcher waits.
const EVENT_BUFFER: usize = 64;

type Item = Result<SessionEvent, TransportError>;

/// Broker session items as core session events: one fetch is one `Deliveries`.
struct Events;

impl Outlet for Events {
    type Item = Item;

    fn deliveries(&self, deliveries: Vec<Delivery>) -> Vec<Item> {
        let batch = deliveries.into_iter().map(convert::delivery).collect();
        vec![Ok(SessionEvent::Deliveries(batch))]
    }

    fn undelivered(&self, item: Item) -> Vec<String> {
        match item {
            Ok(SessionEvent::Deliveries(batch)) => batch
                .into_iter()
                .map(|d| d.receipt.as_str().to_owned())
                .collect(),
            _ => Vec::new(),
        }
    }

    fn settled(
        &self,
        request_id: u64,
        _op: &SettleOp,
        receipts: &[String],
        answer: SettleAnswer,
    ) -> Item {
        Ok(SessionEvent::Settled {
            id: request_id,
            outcomes: outcomes(receipts.len(), answer),
        })
    }

    fn drained(&self) -> Item {
        Ok(SessionEvent::Drained)
    }

    fn failed(&self, error: BrokerError) -> Item {
        Err(transport_error(&error))
    }
}

/// One outcome per receipt: each stands on its own; a request refused whole refuses
/// every receipt with the same error.
fn outcomes(receipts: usize, answer: SettleAnswer) -> Vec<SettleOutcome> {
    match answer {
        Ok(each) => each
            .into_iter()
            .map(|o| match o {
                Ok(true) => SettleOutcome::Applied,
                Ok(false) => SettleOutcome::AlreadySettled,
                Err(e) => SettleOutcome::Refused(transport_error(&e)),
            })
            .collect(),
        Err(e) => vec![SettleOutcome::Refused(transport_error(&e)); receipts],
    }
}

enum Command {
    Settle(RequestId, Settle),
    Credit(u32),
    Drain,
}

/// The in-process session handed to a driver.
pub(crate) struct InProcessSession {
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::Receiver<Item>,
    /// The error that ended the session, answered again to every later `next`.
    ended: Option<TransportError>,
}

impl std::fmt::Debug for InProcessSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessSession")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl InProcessSession {
    /// Checks `sub` as the gRPC front checks a Subscribe (the broker's own bounds), then
    /// starts fetching.
    pub(crate) fn start(
        broker: Broker,
        sub: &Subscription,
        fetch_wait: std::time::Duration,
    ) -> Result<Self, TransportError> {
        let (tx, events) = mpsc::channel(EVENT_BUFFER);
        let spec = SessionSpec {
            lease: sub.lease,
            fetch_wait,
            ..SessionSpec::new(sub.topic.clone(), sub.group.clone(), sub.credits)
        };
        let session = session::Session::start(broker, spec, Events, tx.clone())
            .map_err(|e| transport_error(&e))?;
        let (commands, rx) = mpsc::unbounded_channel();
        tokio::spawn(apply(session, tx, rx));
        Ok(Self {
            commands,
            events,
            ended: None,
        })
    }

    fn send(&self, command: Command) {
        // Fails only once the command task ended after a session error, which `next`
        // reports.
        let _ = self.commands.send(command);
    }
}

/// The command task: applies commands in order until the session is dropped (or a
/// command ended it); then drops the broker session, which stops the fetcher.
async fn apply(
    session: session::Session<Events>,
    tx: mpsc::Sender<Item>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    while let Some(command) = commands.recv().await {
        match command {
            Command::Settle(id, Settle::Ack(receipts)) => {
                session.settle(id, strings(&receipts), SettleOp::Ack).await;
            }
            Command::Settle(
                id,
                Settle::Nack {
                    receipts,
                    delay,
                    reason,
                },
            ) => {
                let op = SettleOp::Nack { delay, reason };
                session.settle(id, strings(&receipts), op).await;
            }
            // The broker cannot dead-letter on demand yet (`dead_letters.now` is false):
            // refused, receipt by receipt. Like any request refused whole for its own
            // fields, it judged no delivery, so their places stay taken until they are
            // acked or nacked.
            Command::Settle(id, Settle::DeadLetter { receipts, .. }) => {
                let refused = TransportError::refused(
                    ErrorKind::Unsupported,
                    "the in-process broker cannot dead-letter a delivery now; nack it \
                     (it is dead-lettered at the group's max_deliveries)",
                );
                let outcomes = vec![SettleOutcome::Refused(refused); receipts.len()];
                if tx
                    .send(Ok(SessionEvent::Settled { id, outcomes }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Command::Credit(n) => {
                if let Err(e) = session.credit(n) {
                    // No request to answer: the session's own bound was crossed, which
                    // ends it.
                    let _ = tx.send(Err(transport_error(&e))).await;
                    break;
                }
            }
            Command::Drain => session.drain(),
        }
    }
    drop(session);
}

fn strings(receipts: &[surety_core::Receipt]) -> Vec<String> {
    receipts.iter().map(|r| r.as_str().to_owned()).collect()
}

impl Session for InProcessSession {
    fn next(&mut self) -> BoxFuture<'_, Result<SessionEvent, TransportError>> {
        Box::pin(async move {
            if let Some(e) = &self.ended {
                return Err(e.clone());
            }
            // `recv` is cancel-safe, and nothing below it awaits.
            let item = self.events.recv().await.unwrap_or_else(|| {
                Err(TransportError::unavailable("the in-process session ended"))
            });
            if let Err(e) = &item {
                self.ended = Some(e.clone());
            }
            item
        })
    }

    fn settle(&mut self, id: RequestId, settle: Settle) {
        self.send(Command::Settle(id, settle));
    }

    fn credit(&mut self, n: u32) {
        self.send(Command::Credit(n));
    }

    fn drain(&mut self) {
        self.send(Command::Drain);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_receipt_gets_its_own_outcome() {
        let lease = BrokerError::Settle(surety_broker::SettleError::LeaseExpired {
            offset: 3,
            delivery: 1,
        });
        let got = outcomes(3, Ok(vec![Ok(true), Ok(false), Err(lease)]));
        assert_eq!(got[0], SettleOutcome::Applied);
        assert_eq!(got[1], SettleOutcome::AlreadySettled);
        match &got[2] {
            SettleOutcome::Refused(e) => assert_eq!(e.kind, ErrorKind::LeaseExpired),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_request_refused_whole_refuses_every_receipt() {
        let bad = surety_broker::limits::check_nack(u64::MAX, "").unwrap_err();
        let got = outcomes(2, Err(bad));
        assert_eq!(got.len(), 2);
        for o in got {
            match o {
                SettleOutcome::Refused(e) => {
                    assert_eq!(e.kind, ErrorKind::InvalidInput);
                    assert_eq!(e.code.as_deref(), Some("invalid_request"));
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
