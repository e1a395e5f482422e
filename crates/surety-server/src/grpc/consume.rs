//! One `Consume` stream: the reader applies the client's credits, acks, nacks and drain
//! to a [`surety_broker::session::Session`], whose fetcher long-polls the broker while
//! the window has room. The window logic (credits, the outstanding set, concurrent
//! per-receipt settles, drain) is the broker's, shared with the in-process transport;
//! this module only speaks the protocol: it checks the Subscribe, turns session items
//! into `ConsumeResponse`s (a large fetch split into several), and judges each Ack or
//! Nack batch by the REST/gRPC rule (`crate::settle`).
//!
//! Credits are a window: the server never has more unsettled deliveries outstanding on
//! the stream than granted, at most `limits::MAX_CREDITS`. Settling (ack or nack,
//! accepted or refused) frees a credit, unless the request was refused as a whole for
//! its own fields. When the client goes away, fetching stops; deliveries it never
//! settled are left to their leases, which expire into redelivery (at-least-once).

use std::time::Duration;

use surety_broker::session::{self, Outlet, SessionSpec, SettleAnswer, SettleOp};
use surety_broker::{Broker, Delivery};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::convert;
use super::proto::{self, consume_request::Kind as In, consume_response::Kind as Out};
use super::status::{invalid_request, receipt_error, status_of, stream_error};
use crate::metrics;
use crate::settle::Batch;

/// Long-poll time of one fetch; bounds how long a drain waits for the fetcher.
const FETCH_WAIT: Duration = session::DEFAULT_FETCH_WAIT;
/// A fetch's deliveries are split into responses of about this many bytes.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Responses buffered towards a slow reader before the session waits for it.
const OUTBOUND_BUFFER: usize = 64;

type Item = Result<proto::ConsumeResponse, Status>;
type Session = session::Session<Grpc>;

/// Session items as `ConsumeResponse`s.
struct Grpc {
    topic: String,
    group: String,
}

fn response(kind: Out) -> Item {
    Ok(proto::ConsumeResponse { kind: Some(kind) })
}

impl Outlet for Grpc {
    type Item = Item;

    fn deliveries(&self, deliveries: Vec<Delivery>) -> Vec<Item> {
        metrics::record_fetch_batch(deliveries.len());
        // One response per fetch (split when large): a response per delivery would cost
        // a channel send, an HTTP/2 frame and a client wake-up each.
        let mut out = Vec::new();
        let mut deliveries = deliveries.into_iter().peekable();
        while deliveries.peek().is_some() {
            let mut batch = Vec::new();
            let mut bytes = 0;
            while bytes < MAX_RESPONSE_BYTES {
                let Some(d) = deliveries.next() else { break };
                bytes += d.message.payload.len() + d.receipt.len();
                batch.push(convert::delivery(d));
            }
            out.push(response(Out::Deliveries(proto::Deliveries {
                deliveries: batch,
            })));
        }
        out
    }

    fn undelivered(&self, item: Item) -> Vec<String> {
        match item {
            Ok(proto::ConsumeResponse {
                kind: Some(Out::Deliveries(b)),
            }) => b.deliveries.into_iter().map(|d| d.receipt).collect(),
            _ => Vec::new(),
        }
    }

    fn settled(
        &self,
        request_id: u64,
        op: &SettleOp,
        _receipts: &[String],
        answer: SettleAnswer,
    ) -> Item {
        let (t, g) = (&self.topic, &self.group);
        let kind = match answer.and_then(Batch::judge) {
            Ok(batch) => {
                let errors = batch
                    .errors
                    .iter()
                    .map(|(i, e)| receipt_error(*i, e))
                    .collect();
                match op {
                    SettleOp::Ack => {
                        metrics::record_acked(t, g, batch.applied);
                        Out::AckResult(proto::AckResult {
                            request_id,
                            acked: batch.applied as u64,
                            errors,
                        })
                    }
                    SettleOp::Nack { .. } => {
                        metrics::record_nacked(t, g, batch.applied);
                        Out::NackResult(proto::NackResult {
                            request_id,
                            nacked: batch.applied as u64,
                            errors,
                        })
                    }
                }
            }
            Err(e) => Out::Error(stream_error(request_id, &status_of(&e))),
        };
        response(kind)
    }

    fn drained(&self) -> Item {
        response(Out::Drained(proto::Drained {}))
    }

    fn failed(&self, error: surety_broker::BrokerError) -> Item {
        Err(status_of(&error))
    }
}

/// Reads the Subscribe, checks it, and starts the session.
pub(super) async fn start(
    broker: Broker,
    shutdown: watch::Receiver<bool>,
    mut inbound: Streaming<proto::ConsumeRequest>,
) -> Result<ReceiverStream<Item>, Status> {
    let sub = match inbound.message().await? {
        Some(proto::ConsumeRequest {
            kind: Some(In::Subscribe(s)),
        }) => s,
        _ => {
            return Err(invalid_request(
                "a Consume stream must start with Subscribe",
            ));
        }
    };
    // Refused before the stream starts, with the broker's own bounds.
    let spec = SessionSpec {
        lease: (sub.lease_ms > 0).then(|| Duration::from_millis(sub.lease_ms)),
        fetch_wait: FETCH_WAIT,
        ..SessionSpec::new(sub.topic, sub.group, sub.credits)
    };
    let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
    let outlet = Grpc {
        topic: spec.topic.clone(),
        group: spec.group.clone(),
    };
    let session = Session::start(broker, spec, outlet, tx.clone()).map_err(|e| status_of(&e))?;
    tokio::spawn(read(session, tx, shutdown, inbound));
    Ok(ReceiverStream::new(rx))
}

/// The reader: runs until the client's stream ends (or the server shuts down), then
/// drops the session, which stops the fetcher.
async fn read(
    session: Session,
    tx: mpsc::Sender<Item>,
    mut shutdown: watch::Receiver<bool>,
    mut inbound: Streaming<proto::ConsumeRequest>,
) {
    // A transport error ends the session like a clean end: leases do the rest.
    loop {
        let req = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            req = inbound.message() => match req {
                Ok(Some(req)) => req,
                _ => break,
            },
        };
        match req.kind {
            Some(In::Credit(c)) => {
                if let Err(e) = session.credit(c.n) {
                    // A session problem, not an answer to a request: request_id 0.
                    let error = Out::Error(stream_error(0, &status_of(&e)));
                    if tx.send(response(error)).await.is_err() {
                        break;
                    }
                }
            }
            Some(In::Ack(a)) => {
                metrics::record_settle_batch(a.receipts.len());
                session
                    .settle(a.request_id, a.receipts, SettleOp::Ack)
                    .await;
            }
            Some(In::Nack(n)) => {
                metrics::record_settle_batch(n.receipts.len());
                let op = SettleOp::Nack {
                    delay: Duration::from_millis(n.delay_ms),
                    reason: n.reason,
                };
                session.settle(n.request_id, n.receipts, op).await;
            }
            Some(In::Drain(_)) => session.drain(),
            Some(In::Subscribe(_)) | None => {
                let _ = tx
                    .send(Err(invalid_request(
                        "expected Credit, Ack, Nack or Drain after Subscribe",
                    )))
                    .await;
                break;
            }
        }
    }
    drop(session);
}
