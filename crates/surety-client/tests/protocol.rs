//! The Consume stream protocol itself, spoken with the generated client: the credit
//! window, per-request answers, drain.

mod common;

use std::time::Duration;

use common::TestServer;
use surety_client::Message;
use surety_client::Producer;
use surety_client::proto::{
    self, ConsumeRequest, ConsumeResponse, consume_request::Kind as In,
    consume_response::Kind as Out,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

fn req(kind: In) -> ConsumeRequest {
    ConsumeRequest { kind: Some(kind) }
}

/// Responses that arrive within `quiet` of each other.
/// Collects what the server sends until `quiet` passes without a message. The first
/// message may take longer (up to 20 s): on a loaded CI machine a fetch's journal fsync
/// alone can exceed `quiet`, and every caller expects at least one message.
async fn drain_for(stream: &mut tonic::Streaming<ConsumeResponse>, quiet: Duration) -> Vec<Out> {
    let mut out = Vec::new();
    let mut wait = Duration::from_secs(20);
    while let Ok(Ok(Some(r))) = tokio::time::timeout(wait, stream.message()).await {
        out.extend(r.kind);
        wait = quiet;
    }
    out
}

fn receipts(out: &[Out]) -> Vec<String> {
    out.iter()
        .flat_map(|k| match k {
            Out::Deliveries(b) => b.deliveries.iter().map(|d| d.receipt.clone()).collect(),
            _ => Vec::new(),
        })
        .collect()
}

#[tokio::test]
async fn the_server_keeps_to_the_credit_window() {
    let server = TestServer::start().await;
    server.topic("t", 5).await;
    let client = server.client().await;
    let batch = (0..10).map(|i| Message::new(vec![i])).collect();
    Producer::new(client.clone())
        .publish_batch("t", batch)
        .await
        .unwrap();

    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(req(In::Subscribe(proto::Subscribe {
        topic: "t".into(),
        group: "g".into(),
        credits: 3,
        lease_ms: 0,
    })))
    .unwrap();
    let mut stream = client
        .raw()
        .consume(UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // Fetches long-poll for 500 ms: a second of quiet shows nothing more is coming.
    let first = receipts(&drain_for(&mut stream, Duration::from_secs(1)).await);
    assert_eq!(first.len(), 3);

    // Settling one frees one credit.
    tx.send(req(In::Ack(proto::Ack {
        request_id: 7,
        receipts: vec![first[0].clone()],
    })))
    .unwrap();
    let out = drain_for(&mut stream, Duration::from_secs(1)).await;
    assert!(out.contains(&Out::AckResult(proto::AckResult {
        request_id: 7,
        acked: 1,
        errors: Vec::new(),
    })));
    assert_eq!(receipts(&out).len(), 1);

    // A refused ack is answered with its request id; the stream goes on.
    tx.send(req(In::Ack(proto::Ack {
        request_id: 8,
        receipts: vec!["forged".into()],
    })))
    .unwrap();
    // Widening the window sends more.
    tx.send(req(In::Credit(proto::Credit { n: 2 }))).unwrap();
    let out = drain_for(&mut stream, Duration::from_secs(1)).await;
    let refused = out.iter().find_map(|k| match k {
        Out::Error(e) => Some(e.clone()),
        _ => None,
    });
    let refused = refused.expect("an error answer");
    assert_eq!(
        (refused.request_id, refused.code.as_str()),
        (8, "receipt_invalid")
    );
    assert_eq!(receipts(&out).len(), 2);

    // Drain: answered with Drained, and then nothing more is delivered even with credit.
    tx.send(req(In::Drain(proto::Drain {}))).unwrap();
    tx.send(req(In::Credit(proto::Credit { n: 5 }))).unwrap();
    let out = drain_for(&mut stream, Duration::from_secs(1)).await;
    assert_eq!(out, [Out::Drained(proto::Drained {})]);
}

#[tokio::test]
async fn a_stream_must_start_with_subscribe() {
    let server = TestServer::start().await;
    server.topic("t", 5).await;
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(req(In::Credit(proto::Credit { n: 1 }))).unwrap();
    let status = server
        .client()
        .await
        .raw()
        .consume(UnboundedReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

/// PublishStream answers every request by its id, refusals included, and a refusal does
/// not end the stream.
#[tokio::test]
async fn publish_stream_answers_each_request_by_id_and_goes_on_after_a_refusal() {
    let server = TestServer::start().await;
    server.topic("t", 5).await;
    let client = server.client().await;
    let (tx, rx) = mpsc::unbounded_channel();
    let request = |id: u64, topic: &str, payload: &str| proto::PublishStreamRequest {
        request_id: id,
        publish: Some(proto::PublishRequest {
            topic: topic.into(),
            messages: vec![proto::Message {
                payload: payload.as_bytes().to_vec(),
                ..proto::Message::default()
            }],
        }),
    };
    tx.send(request(10, "t", "a")).unwrap();
    tx.send(request(11, "missing", "b")).unwrap();
    let mut answers = client
        .raw()
        .publish_stream(UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(answers.message().await.unwrap().unwrap());
    }
    tx.send(request(12, "t", "c")).unwrap();
    got.push(answers.message().await.unwrap().unwrap());
    got.sort_by_key(|r| r.request_id);
    use proto::publish_stream_response::Outcome;
    let offsets: Vec<_> = got
        .iter()
        .map(|r| match &r.outcome {
            Some(Outcome::Published(p)) => Ok(p.results[0].offset),
            Some(Outcome::Error(e)) => Err((e.code.clone(), e.grpc_status)),
            None => panic!("empty answer"),
        })
        .collect();
    assert_eq!(
        got.iter().map(|r| r.request_id).collect::<Vec<_>>(),
        [10, 11, 12]
    );
    assert_eq!(
        offsets,
        [
            Ok(0),
            Err(("topic_not_found".to_owned(), tonic::Code::NotFound as i32)),
            Ok(1)
        ]
    );
    assert_eq!(server.broker.describe("t").await.unwrap().end_offsets, [2]);
}
