//! Confirmed, idempotent publishing over a real socket.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::TestServer;
use surety_client::{Client, ErrorKind, Message, Producer, PublishError, RetryPolicy};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

#[tokio::test]
async fn publish_answers_offsets_in_order_and_stores_each_message_once() {
    let server = TestServer::start().await;
    server.topic("orders", 5).await;
    let producer = Producer::new(server.client().await);
    let one = producer.publish("orders", Message::new("a")).await.unwrap();
    let batch = (0..3).map(|i| Message::new(format!("b{i}"))).collect();
    let many = producer.publish_batch("orders", batch).await.unwrap();
    assert_eq!((one.offset(), one.sequence, one.duplicate), (0, 0, false));
    let offsets: Vec<_> = many.iter().map(|p| (p.offset(), p.sequence)).collect();
    assert_eq!(offsets, [(1, 1), (2, 2), (3, 3)]);
    let info = server.broker.describe("orders").await.unwrap();
    assert_eq!(info.end_offsets, [4]);
}

#[tokio::test]
async fn a_replayed_batch_is_answered_with_the_original_offsets_not_stored_again() {
    let server = TestServer::start().await;
    server.topic("t", 5).await;
    let producer = Producer::new(server.client().await);
    producer.publish("t", Message::new("before")).await.unwrap();
    let batch = producer.prepare(vec![Message::new("x"), Message::new("y")]);
    let first = producer.send("t", &batch).await.unwrap();
    let again = producer.send("t", &batch).await.unwrap();
    assert!(first.iter().all(|p| !p.duplicate));
    assert!(again.iter().all(|p| p.duplicate));
    let offsets = |r: &[surety_client::Published]| r.iter().map(|p| p.offset()).collect::<Vec<_>>();
    assert_eq!(offsets(&first), offsets(&again));
    assert_eq!(server.broker.describe("t").await.unwrap().end_offsets, [3]);
}

/// The first publish reaches the broker (and is stored), but the stream breaks before its
/// answer arrives, as when a connection drops after the fsync. The producer retries with
/// the same sequence on a new stream and gets the original offset back, marked duplicate.
#[tokio::test]
async fn a_retry_after_a_lost_answer_stores_one_copy() {
    let dropped = Arc::new(AtomicBool::new(false));
    let hook = dropped.clone();
    let server = TestServer::start_with(None, move |routes| {
        routes.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let hook = hook.clone();
                async move {
                    let is_publish = req.uri().path() == "/surety.v1.Surety/PublishStream";
                    let response = next.run(req).await;
                    if !is_publish || hook.swap(true, Ordering::SeqCst) {
                        return response;
                    }
                    // Swallow the first answer (sent once the publish is durable), then
                    // break the stream.
                    let (parts, body) = response.into_parts();
                    let (tx, rx) = tokio::sync::mpsc::channel(1);
                    tokio::spawn(async move {
                        let mut answers = body.into_data_stream();
                        let _ = answers.next().await;
                        let lost = std::io::Error::other("answer lost (test hook)");
                        let _ = tx.send(Err::<axum::body::Bytes, _>(lost)).await;
                    });
                    let body = axum::body::Body::from_stream(ReceiverStream::new(rx));
                    axum::response::Response::from_parts(parts, body)
                }
            },
        ))
    })
    .await;
    server.topic("t", 5).await;
    let producer = Producer::new(server.client().await);
    let published = producer.publish("t", Message::new("once")).await.unwrap();
    assert!(dropped.load(Ordering::SeqCst), "the hook dropped an answer");
    assert!(published.duplicate, "the retry was recognized");
    assert_eq!(published.offset(), 0);
    assert_eq!(server.broker.describe("t").await.unwrap().end_offsets, [1]);
    assert_eq!(server.broker.dedupe_stats("t").unwrap().hits, 1);
}

#[tokio::test]
async fn refusals_are_final_and_typed() {
    let server = TestServer::start().await;
    server
        .client()
        .await
        .create_topic("small", r#"{"max_message_bytes":8}"#)
        .await
        .unwrap();
    let producer = Producer::builder(server.client().await)
        .retry(RetryPolicy {
            deadline: std::time::Duration::from_secs(60),
            ..RetryPolicy::default()
        })
        .build();
    let code = |e: PublishError| match e {
        PublishError::Refused(e) => (e.kind, e.code.unwrap()),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let e = producer
        .publish("nope", Message::new("x"))
        .await
        .unwrap_err();
    assert_eq!(
        code(e),
        (ErrorKind::TopicNotFound, "topic_not_found".into())
    );
    let e = producer
        .publish("small", Message::new("too large"))
        .await
        .unwrap_err();
    assert_eq!(code(e), (ErrorKind::TooLarge, "message_too_large".into()));
    let bad = Message::new("x").with_header("surety.seq", "1");
    let e = producer.publish("small", bad).await.unwrap_err();
    assert_eq!(code(e), (ErrorKind::InvalidInput, "invalid_message".into()));
}

#[tokio::test]
async fn many_tasks_share_one_producer_and_sequences_stay_unique() {
    let server = TestServer::start().await;
    server.topic("t", 5).await;
    let producer = Arc::new(Producer::new(server.client().await));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8 {
        let producer = producer.clone();
        tasks.spawn(async move {
            let batch = (0..10).map(|i| Message::new(format!("{t}-{i}"))).collect();
            producer.publish_batch("t", batch).await.unwrap()
        });
    }
    let mut sequences: Vec<u64> = Vec::new();
    while let Some(r) = tasks.join_next().await {
        sequences.extend(r.unwrap().iter().map(|p| p.sequence));
    }
    sequences.sort_unstable();
    assert_eq!(sequences, (0..80).collect::<Vec<_>>());
    assert_eq!(server.broker.describe("t").await.unwrap().end_offsets, [80]);
}

#[tokio::test]
async fn with_tokens_configured_calls_need_a_valid_bearer_token() {
    let server = TestServer::start_with(Some(vec!["s3cret".into()]), |r| r).await;
    let anonymous = Client::connect(&server.url, None).await.unwrap();
    let e = anonymous.list_topics().await.unwrap_err();
    assert_eq!(e.source.grpc, tonic::Code::Unauthenticated);
    let wrong = Client::connect(&server.url, Some("guess")).await.unwrap();
    let e = wrong.create_topic("t", "").await.unwrap_err();
    assert_eq!(e.source.grpc, tonic::Code::Unauthenticated);
    let e = Producer::new(wrong)
        .publish("t", Message::new("x"))
        .await
        .unwrap_err();
    assert!(matches!(e, PublishError::Refused(ref s) if s.kind == ErrorKind::Unauthorized));
    let client = Client::connect(&server.url, Some("s3cret")).await.unwrap();
    client.create_topic("t", "").await.unwrap();
    assert_eq!(client.list_topics().await.unwrap(), ["t"]);
}
