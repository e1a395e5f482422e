//! The producer's publish path: requests pipelined on one long-lived `PublishStream`
//! call, each answered by `request_id`. A unary call per batch costs a new HTTP/2 stream
//! (headers, trailers, a task on each side); on a stream a batch costs one message each
//! way.
//!
//! One session task owns the stream. When it breaks, every request it had not answered
//! fails with an unknown outcome (the producer retries it with the same sequences, so
//! nothing is stored twice) and the next publish opens a new session.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use surety_core::{Outcome as Happened, TransportError};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Code;

use crate::client::Raw;
use crate::proto::{self, publish_stream_response::Outcome};
use crate::server_error::ServerError;

type Answer = Result<proto::PublishResponse, TransportError>;

struct Call {
    request: proto::PublishStreamRequest,
    answer: oneshot::Sender<Answer>,
}

/// Sends publish requests over the current session, opening one when needed.
pub(crate) struct Pipeline {
    raw: Raw,
    session: Mutex<Option<mpsc::UnboundedSender<Call>>>,
    next_request_id: AtomicU64,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("next_request_id", &self.next_request_id)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    pub(crate) fn new(raw: Raw) -> Self {
        Self {
            raw,
            session: Mutex::new(None),
            next_request_id: AtomicU64::new(1),
        }
    }

    /// One attempt: the server's answer, or why there was none.
    pub(crate) async fn publish(&self, publish: proto::PublishRequest) -> Answer {
        let (answer, answered) = oneshot::channel();
        let call = Call {
            request: proto::PublishStreamRequest {
                request_id: self.next_request_id.fetch_add(1, Ordering::Relaxed),
                publish: Some(publish),
            },
            answer,
        };
        // A session that ended between `sender`'s check and the send refuses the call;
        // `sender` then opens a new one. A call refused twice is dropped here, with its
        // answer sender, so the wait below ends as unavailable (and is retried).
        let refused = self.sender().send(call).err();
        if let Some(refused) = refused {
            let _ = self.sender().send(refused.0);
        }
        answered.await.unwrap_or_else(|_| {
            Err(TransportError::new(
                surety_core::ErrorKind::Unavailable,
                Happened::Unknown,
                "the publish stream closed before answering",
            ))
        })
    }

    fn sender(&self) -> mpsc::UnboundedSender<Call> {
        let mut session = self.session.lock().unwrap();
        match &*session {
            Some(tx) if !tx.is_closed() => tx.clone(),
            _ => {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(run_session(self.raw.clone(), rx));
                *session = Some(tx.clone());
                tx
            }
        }
    }
}

/// Forwards calls onto one stream and answers them as responses arrive, until the stream
/// breaks or the producer is gone and every call is answered.
async fn run_session(mut raw: Raw, mut calls: mpsc::UnboundedReceiver<Call>) {
    let (requests, outgoing) = mpsc::unbounded_channel();
    let mut responses = match raw
        .publish_stream(UnboundedReceiverStream::new(outgoing))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => {
            let e = crate::server_error::transport_error(status);
            calls.close();
            while let Some(call) = calls.recv().await {
                let _ = call.answer.send(Err(e.clone()));
            }
            return;
        }
    };
    let mut waiting: HashMap<u64, oneshot::Sender<Answer>> = HashMap::new();
    let mut producer_gone = false;
    let broken = loop {
        if producer_gone && waiting.is_empty() {
            return;
        }
        tokio::select! {
            call = calls.recv(), if !producer_gone => match call {
                Some(call) => {
                    waiting.insert(call.request.request_id, call.answer);
                    if requests.send(call.request).is_err() {
                        break ServerError::unavailable("the publish stream closed");
                    }
                }
                None => producer_gone = true,
            },
            response = responses.message() => match response {
                Ok(Some(r)) => {
                    if let Some(answer) = waiting.remove(&r.request_id) {
                        let _ = answer.send(outcome(r.outcome));
                    }
                }
                Ok(None) => break ServerError::unavailable("the server ended the publish stream"),
                Err(status) => break ServerError::broken_stream(status),
            },
        }
    };
    // Stop taking calls, then fail every one not answered: the producer retries them.
    // Each may have been stored: its outcome is unknown unless the server refused it.
    let mut broken = TransportError::from(broken);
    if broken.retryable() {
        broken.outcome = Happened::Unknown;
    }
    calls.close();
    while let Ok(call) = calls.try_recv() {
        waiting.insert(call.request.request_id, call.answer);
    }
    for (_, answer) in waiting {
        let _ = answer.send(Err(broken.clone()));
    }
}

fn outcome(outcome: Option<Outcome>) -> Answer {
    match outcome {
        Some(Outcome::Published(p)) => Ok(p),
        Some(Outcome::Error(e)) => Err(ServerError {
            grpc: Code::from_i32(e.grpc_status),
            code: Some(e.code),
            message: e.message,
        }
        .into()),
        None => Err(TransportError::refused(
            surety_core::ErrorKind::Protocol,
            "the server answered a publish with neither a result nor an error",
        )),
    }
}
