//! Over gRPC, every number a client sends is bounded by the broker's limits and refused
//! with `INVALID_ARGUMENT` / `invalid_request` naming the field; the receipts of one Ack
//! or Nack stand each on its own (docs/grpc.md).

mod common;

use std::time::Duration;

use common::TestServer;
use surety_client::proto::{
    self, ConsumeRequest, ConsumeResponse, consume_request::Kind as In,
    consume_response::Kind as Out,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Code;

fn req(kind: In) -> ConsumeRequest {
    ConsumeRequest { kind: Some(kind) }
}

fn subscribe(topic: &str, credits: u32, lease_ms: u64) -> ConsumeRequest {
    req(In::Subscribe(proto::Subscribe {
        topic: topic.into(),
        group: "g".into(),
        credits,
        lease_ms,
    }))
}

/// The status code, the stable code, and the message.
fn refusal(s: &tonic::Status) -> (Code, String, String) {
    let code = s
        .metadata()
        .get(surety_server::grpc::ERROR_CODE_METADATA)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (s.code(), code, s.message().to_owned())
}

fn assert_invalid_request(s: &tonic::Status, field: &str) {
    let (code, stable, message) = refusal(s);
    assert_eq!(
        (code, stable.as_str()),
        (Code::InvalidArgument, "invalid_request"),
        "{message}"
    );
    assert!(message.contains(field), "{field} not in {message:?}");
}

/// A Consume call opened with `first`: its refusal, if it is refused at once.
async fn open(
    server: &TestServer,
    first: ConsumeRequest,
) -> (
    mpsc::UnboundedSender<ConsumeRequest>,
    Result<tonic::Streaming<ConsumeResponse>, tonic::Status>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(first).unwrap();
    let call = server
        .client()
        .await
        .raw()
        .consume(UnboundedReceiverStream::new(rx))
        .await
        .map(tonic::Response::into_inner);
    (tx, call)
}

/// The next response that is not a batch of deliveries.
async fn next_answer(stream: &mut tonic::Streaming<ConsumeResponse>) -> Out {
    loop {
        let r = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("an answer within 20 s")
            .unwrap()
            .expect("the stream goes on");
        match r.kind {
            Some(Out::Deliveries(_)) | None => continue,
            Some(other) => return other,
        }
    }
}

/// Deliveries until `n` have come.
async fn deliveries(
    stream: &mut tonic::Streaming<ConsumeResponse>,
    n: usize,
) -> Vec<proto::Delivery> {
    let mut got = Vec::new();
    while got.len() < n {
        let r = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("deliveries within 20 s")
            .unwrap()
            .unwrap();
        if let Some(Out::Deliveries(b)) = r.kind {
            got.extend(b.deliveries);
        }
    }
    got
}

async fn publish(
    server: &TestServer,
    topic: &str,
    messages: Vec<proto::Message>,
) -> Result<proto::PublishResponse, tonic::Status> {
    let request = proto::PublishRequest {
        topic: topic.into(),
        messages,
    };
    server
        .client()
        .await
        .raw()
        .publish(request)
        .await
        .map(tonic::Response::into_inner)
}

fn text(payload: &str) -> proto::Message {
    proto::Message {
        payload: payload.as_bytes().to_vec(),
        ..proto::Message::default()
    }
}

#[tokio::test]
async fn publish_bounds_and_names() {
    let server = TestServer::start().await;
    server.topic("t", 5).await;
    let e = publish(&server, "t", Vec::new()).await.unwrap_err();
    assert_invalid_request(&e, "messages");
    let late = proto::Message {
        not_before_ms: Some(99_999_999_999_999_999),
        ..text("x")
    };
    let e = publish(&server, "t", vec![text("ok"), late])
        .await
        .unwrap_err();
    assert_invalid_request(&e, "not_before_ms");
    let e = publish(&server, "a:b", vec![text("x")]).await.unwrap_err();
    assert_eq!(refusal(&e).0, Code::InvalidArgument);
    assert_eq!(refusal(&e).1, "invalid_name");
    // Nothing refused was stored.
    assert_eq!(server.broker.describe("t").await.unwrap().end_offsets, [0]);
    let past = proto::Message {
        not_before_ms: Some(1),
        ..text("y")
    };
    publish(&server, "t", vec![past]).await.unwrap();
}

#[tokio::test]
async fn subscribe_bounds_and_names() {
    let server = TestServer::start().await;
    server.topic("t", 5).await;
    let (_tx, call) = open(&server, subscribe("t", 10, u64::MAX)).await;
    assert_invalid_request(&call.unwrap_err(), "lease_ms");
    let (_tx, call) = open(&server, subscribe("t", 10, 43_200_001)).await;
    assert_invalid_request(&call.unwrap_err(), "43200000");
    let (_tx, call) = open(&server, subscribe("t", 10_001, 0)).await;
    assert_invalid_request(&call.unwrap_err(), "credits");
    let (_tx, call) = open(&server, subscribe("a:b", 10, 0)).await;
    let e = call.unwrap_err();
    assert_eq!(
        (refusal(&e).0, refusal(&e).1.as_str()),
        (Code::InvalidArgument, "invalid_name")
    );
    let (_tx, call) = open(&server, subscribe("missing", 10, 0)).await;
    assert_eq!(refusal(&call.unwrap_err()).1, "topic_not_found");
    // The largest window, and a lease at the bound, are fine.
    let (_tx, call) = open(&server, subscribe("t", 10_000, 43_200_000)).await;
    call.unwrap();
}

#[tokio::test]
async fn a_credit_beyond_the_window_bound_is_refused_and_the_stream_goes_on() {
    let server = TestServer::start().await;
    server.topic("t", 5).await;
    publish(&server, "t", vec![text("a")]).await.unwrap();
    let (tx, call) = open(&server, subscribe("t", 9_999, 0)).await;
    let mut stream = call.unwrap();
    let got = deliveries(&mut stream, 1).await;
    tx.send(req(In::Credit(proto::Credit { n: 2 }))).unwrap();
    match next_answer(&mut stream).await {
        Out::Error(e) => {
            assert_eq!((e.request_id, e.code.as_str()), (0, "invalid_request"));
            assert!(e.message.contains("credits"), "{}", e.message);
        }
        other => panic!("expected an Error, got {other:?}"),
    }
    // Still served: the ack is answered.
    tx.send(req(In::Ack(proto::Ack {
        request_id: 1,
        receipts: vec![got[0].receipt.clone()],
    })))
    .unwrap();
    assert_eq!(
        next_answer(&mut stream).await,
        Out::AckResult(proto::AckResult {
            request_id: 1,
            acked: 1,
            errors: Vec::new(),
        })
    );
}

#[tokio::test]
async fn nack_bounds_refuse_the_request_and_the_stream_goes_on() {
    let server = TestServer::start().await;
    server.topic("t", 5).await;
    publish(&server, "t", vec![text("a")]).await.unwrap();
    let (tx, call) = open(&server, subscribe("t", 1, 0)).await;
    let mut stream = call.unwrap();
    let receipt = deliveries(&mut stream, 1).await[0].receipt.clone();
    let nack = |request_id: u64, delay_ms: u64, reason: String| {
        req(In::Nack(proto::Nack {
            request_id,
            receipts: vec![receipt.clone()],
            delay_ms,
            reason,
        }))
    };
    for (id, delay_ms, reason, field) in [
        (1, u64::MAX, String::new(), "delay_ms"),
        (2, 0, "x".repeat(4097), "reason"),
    ] {
        tx.send(nack(id, delay_ms, reason)).unwrap();
        match next_answer(&mut stream).await {
            Out::Error(e) => {
                assert_eq!((e.request_id, e.code.as_str()), (id, "invalid_request"));
                assert_eq!(e.grpc_status, Code::InvalidArgument as i32);
                assert!(e.message.contains(field), "{field} not in {}", e.message);
            }
            other => panic!("expected an Error, got {other:?}"),
        }
    }
    // The delivery is still leased to this stream: a valid nack applies.
    tx.send(nack(3, 0, "fine".into())).unwrap();
    assert_eq!(
        next_answer(&mut stream).await,
        Out::NackResult(proto::NackResult {
            request_id: 3,
            nacked: 1,
            errors: Vec::new(),
        })
    );
}

#[tokio::test]
async fn each_receipt_of_an_ack_or_nack_stands_alone() {
    let server = TestServer::start().await;
    server.topic("t", 5).await;
    publish(&server, "t", vec![text("a"), text("b")])
        .await
        .unwrap();
    let (tx, call) = open(&server, subscribe("t", 2, 0)).await;
    let mut stream = call.unwrap();
    let got = deliveries(&mut stream, 2).await;
    tx.send(req(In::Ack(proto::Ack {
        request_id: 1,
        receipts: vec![got[0].receipt.clone(), "forged".into()],
    })))
    .unwrap();
    match next_answer(&mut stream).await {
        Out::AckResult(r) => {
            assert_eq!((r.request_id, r.acked, r.errors.len()), (1, 1, 1), "{r:?}");
            let e = &r.errors[0];
            assert_eq!(
                (e.request_id, e.index, e.code.as_str()),
                (0, 1, "receipt_invalid")
            );
            assert_eq!(e.grpc_status, Code::InvalidArgument as i32);
        }
        other => panic!("expected an AckResult, got {other:?}"),
    }
    tx.send(req(In::Nack(proto::Nack {
        request_id: 2,
        receipts: vec!["forged".into(), got[1].receipt.clone()],
        delay_ms: 60_000,
        reason: "later".into(),
    })))
    .unwrap();
    match next_answer(&mut stream).await {
        Out::NackResult(r) => {
            assert_eq!((r.request_id, r.nacked, r.errors.len()), (2, 1, 1), "{r:?}");
            assert_eq!(r.errors[0].index, 0);
        }
        other => panic!("expected a NackResult, got {other:?}"),
    }
    // Every receipt refused: the request fails with the first refusal.
    tx.send(req(In::Ack(proto::Ack {
        request_id: 3,
        receipts: vec!["forged".into(), "also forged".into()],
    })))
    .unwrap();
    match next_answer(&mut stream).await {
        Out::Error(e) => assert_eq!((e.request_id, e.code.as_str()), (3, "receipt_invalid")),
        other => panic!("expected an Error, got {other:?}"),
    }
    let g = &server.broker.describe("t").await.unwrap().groups[0];
    assert_eq!((g.stats.acked, g.stats.pending), (1, 1));
}
