//! One `PublishStream` session: every request is published on its own (so several
//! share group commits) and answered with its `request_id` once durable, or with the
//! error a unary `Publish` would have returned; the stream goes on either way.
//!
//! At most `MAX_IN_FLIGHT` requests of one stream are worked on at once; beyond that the
//! session stops reading, and HTTP/2 flow control holds the client back. When the server
//! shuts down, the session stops reading, answers what it holds, and ends the stream.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::proto::{self, publish_stream_response::Outcome};
use super::service::publish;
use super::status::stream_error;
use crate::state::AppState;

/// Requests of one stream being published at once.
const MAX_IN_FLIGHT: usize = 1024;
/// Answers buffered towards a slow reader before publishing waits for it.
const OUTBOUND_BUFFER: usize = 256;

type Outbound = mpsc::Sender<Result<proto::PublishStreamResponse, Status>>;

/// Starts the session; the returned stream carries its answers.
pub(super) fn start(
    state: AppState,
    inbound: Streaming<proto::PublishStreamRequest>,
) -> ReceiverStream<Result<proto::PublishStreamResponse, Status>> {
    let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
    tokio::spawn(read(state, inbound, tx));
    ReceiverStream::new(rx)
}

async fn read(state: AppState, mut inbound: Streaming<proto::PublishStreamRequest>, tx: Outbound) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut shutdown = state.shutting_down();
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // A transport error ends the session like a clean end: unanswered requests are
        // the client's to retry (their sequences make that safe).
        let req = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            req = inbound.message() => match req {
                Ok(Some(req)) => req,
                _ => break,
            },
        };
        let (state, tx) = (state.clone(), tx.clone());
        tokio::spawn(async move {
            let outcome = match req.publish {
                Some(publish_req) => match publish(&state, publish_req).await {
                    Ok(published) => Outcome::Published(published),
                    Err(status) => Outcome::Error(stream_error(req.request_id, &status)),
                },
                None => Outcome::Error(stream_error(
                    req.request_id,
                    &super::status::invalid_request("a PublishStreamRequest needs `publish`"),
                )),
            };
            let answer = proto::PublishStreamResponse {
                request_id: req.request_id,
                outcome: Some(outcome),
            };
            let _ = tx.send(Ok(answer)).await;
            drop(permit);
        });
    }
    // The stream ends once every spawned publish has answered and dropped its sender.
}
