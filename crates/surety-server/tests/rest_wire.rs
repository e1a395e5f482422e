//! Every answer of a short scenario, read as the CLI reads it: into the
//! `surety_wire::rest` types, from the raw body. Each must decode, and write back as the
//! same JSON (a field the types do not know, or one they lose, fails here rather than in
//! the CLI).

mod common;

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use surety_wire::rest;

/// Calls, checks the status, and reads the body into `T` (and back, unchanged).
async fn typed<T: DeserializeOwned + Serialize>(
    s: &TestServer,
    method: Method,
    path: &str,
    body: Option<Value>,
    status: StatusCode,
) -> T {
    let mut rb = s.request(method.clone(), path);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let res = rb.send().await.unwrap();
    let got = res.status();
    let bytes = res.bytes().await.unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(got, status, "{method} {path}: {text}");
    let value: T =
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"));
    let raw: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        serde_json::to_value(&value).unwrap(),
        raw,
        "{method} {path}: the wire type does not hold the whole answer"
    );
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_reads_into_the_wire_types() {
    let s = TestServer::start().await;
    let ok = StatusCode::OK;
    let t: rest::Topic = typed(
        &s,
        Method::PUT,
        "/v1/topics/t",
        Some(json!({"max_deliveries": 1})),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!((t.name.as_str(), t.partitions), ("t", 1));
    assert_eq!(t.config["max_deliveries"], 1);
    let _: rest::Topic = typed(&s, Method::PUT, "/v1/topics/t", Some(json!({})), ok).await;

    let p: rest::PublishResponse = typed(
        &s,
        Method::POST,
        "/v1/topics/t/messages",
        Some(json!({"messages": [
            {"payload": "a", "key": "k", "headers": {"h": "v"}, "id": "m-1"},
            {"payload_base64": "/wA=", "key_base64": "AP8=", "producer_id": "p", "sequence": 1},
            {"payload": "c"},
            {"payload": "d"},
        ]})),
        ok,
    )
    .await;
    assert_eq!(p.results.len(), 4);

    let g: rest::Group = typed(
        &s,
        Method::PUT,
        "/v1/topics/t/groups/g",
        Some(json!({"start": "earliest"})),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(g.name, "g");
    let _: rest::Group = typed(&s, Method::GET, "/v1/topics/t/groups/g", None, ok).await;
    let f: rest::FetchResponse = typed(
        &s,
        Method::POST,
        "/v1/topics/t/groups/g/fetch",
        Some(json!({"max": 4})),
        ok,
    )
    .await;
    assert_eq!(f.messages.len(), 4);
    assert_eq!(f.messages[0].message.id.as_deref(), Some("m-1"));
    assert_eq!(
        f.messages[1].message.payload_base64.as_deref(),
        Some("/wA=")
    );
    let receipts: Vec<&str> = f.messages.iter().map(|d| d.receipt.as_str()).collect();

    // Ack the first two with one bad receipt between: a per-receipt error.
    let a: rest::AckResponse = typed(
        &s,
        Method::POST,
        "/v1/topics/t/groups/g/ack",
        Some(json!({"receipts": [receipts[0], "nonsense", receipts[1]]})),
        ok,
    )
    .await;
    assert_eq!((a.acked, a.errors.len()), (2, 1));
    // max_deliveries 1: c and d go to the dead letters at once.
    let n: rest::NackResponse = typed(
        &s,
        Method::POST,
        "/v1/topics/t/groups/g/nack",
        Some(json!({"receipts": [receipts[2], receipts[3]], "reason": "worse"})),
        ok,
    )
    .await;
    assert_eq!((n.nacked, n.errors.len()), (2, 0));
    let page: rest::DeadLetterPage = typed(
        &s,
        Method::GET,
        "/v1/topics/t/groups/g/dead-letters?limit=1",
        None,
        ok,
    )
    .await;
    assert_eq!(page.dead_letters.len(), 1);
    let next = page.next.expect("a second page");
    let page: rest::DeadLetterPage = typed(
        &s,
        Method::GET,
        &format!("/v1/topics/t/groups/g/dead-letters?after={next}"),
        None,
        ok,
    )
    .await;
    assert_eq!(page.dead_letters.len(), 1);
    let id = page.dead_letters[0].id;
    let d: rest::DeadLetter = typed(
        &s,
        Method::GET,
        &format!("/v1/topics/t/groups/g/dead-letters/{id}"),
        None,
        ok,
    )
    .await;
    assert_eq!(d.reason, "worse");
    let r: rest::ResendResponse = typed(
        &s,
        Method::POST,
        "/v1/topics/t/groups/g/dead-letters/resend",
        Some(json!({"ids": [id]})),
        ok,
    )
    .await;
    assert_eq!(r.resent, 1);
    let pg: rest::PurgeResponse = typed(
        &s,
        Method::POST,
        "/v1/topics/t/groups/g/dead-letters/purge",
        Some(json!({"all": true})),
        ok,
    )
    .await;
    assert_eq!(pg.purged, 1);

    let peek: rest::PeekResponse =
        typed(&s, Method::GET, "/v1/topics/t/messages?limit=10", None, ok).await;
    // The four published, and the resent dead letter stored again with its lineage.
    assert_eq!(peek.messages.len(), 5);
    assert!(peek.messages[4].message.resent_from.is_some());
    let seek: rest::Seek = typed(
        &s,
        Method::POST,
        "/v1/topics/t/groups/g/seek",
        Some(json!({"to": "latest"})),
        ok,
    )
    .await;
    assert_eq!(seek.partitions.len(), 1);
    let gl: rest::GroupList = typed(&s, Method::GET, "/v1/topics/t/groups", None, ok).await;
    assert_eq!(gl.groups.len(), 1);
    let tl: rest::TopicList = typed(&s, Method::GET, "/v1/topics", None, ok).await;
    assert_eq!(tl.topics.len(), 1);
    let _: rest::Topic = typed(&s, Method::GET, "/v1/topics/t", None, ok).await;

    let e: rest::ErrorBody = typed(
        &s,
        Method::GET,
        "/v1/topics/nope",
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(e.error.code, "topic_not_found");
    let gd: rest::GroupDeleted = typed(&s, Method::DELETE, "/v1/topics/t/groups/g", None, ok).await;
    assert_eq!(gd.group, "g");
    let td: rest::TopicDeleted = typed(&s, Method::DELETE, "/v1/topics/t", None, ok).await;
    assert_eq!(td.topic, "t");
    s.stop().await;
}
