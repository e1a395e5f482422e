//! One `PublishStream` session: every request is published on its own (so several
//! share group commits) and answered with its `request_id` once durable, or with the
//! error a unary `Publish` would have returned; the stream goes on either way.
//!
//! At most `MAX_IN_FLIGHT` requests of one stream are worked on at once; beyond that the
//! session stops reading, and HTTP/2 flow control holds the client back. When the server
//! shuts down, the session stops reading, answers what it holds, and ends the stream.

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
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
    let mut shutdown = state.shutting_down();
    // Polled here rather than spawned each: `Broker::publish` runs its work in a task of
    // its own already (it is cancel-safe), so a second task per request only cost a spawn.
    let mut in_flight = FuturesUnordered::new();
    let mut reading = true;
    while reading || !in_flight.is_empty() {
        tokio::select! {
            Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                if tx.send(Ok(answer)).await.is_err() {
                    // The client is gone; the publishes still complete in their own tasks.
                    return;
                }
            }
            // (mapped to `()`: the watch guard it returns must not live across an await)
            () = async { drop(shutdown.wait_for(|s| *s).await) }, if reading => reading = false,
            // A transport error ends the session like a clean end: unanswered requests are
            // the client's to retry (their sequences make that safe).
            req = inbound.message(), if reading && in_flight.len() < MAX_IN_FLIGHT => match req {
                Ok(Some(req)) => in_flight.push(answer(state.clone(), req)),
                _ => reading = false,
            },
        }
    }
}

/// Publishes one request and frames its answer.
async fn answer(state: AppState, req: proto::PublishStreamRequest) -> proto::PublishStreamResponse {
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
    proto::PublishStreamResponse {
        request_id: req.request_id,
        outcome: Some(outcome),
    }
}
