//! Every REST error is JSON `{"error":{"code","message"}}` with the status of
//! docs/errors.md, and a refused request changes nothing.

mod common;

use std::time::Duration;

use common::{TestServer, answer, assert_error};
use reqwest::{Method, StatusCode};
use serde_json::json;

const BAD: StatusCode = StatusCode::BAD_REQUEST;

async fn raw(
    s: &TestServer,
    method: Method,
    path: &str,
    ct: Option<&str>,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let mut rb = s.request(method, path).body(body.to_owned());
    if let Some(ct) = ct {
        rb = rb.header("content-type", ct);
    }
    answer(rb.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies() {
    let s = TestServer::start().await;
    s.topic("t", json!({})).await;
    let json = Some("application/json");
    let publish = "/v1/topics/t/messages";
    for body in [
        "{",                                              // syntax
        "[]",                                             // not an object
        "5",                                              // not an object
        r#"{"messages": "x"}"#,                           // wrong type
        r#"{"messages": [{"payload": 5}]}"#,              // wrong type inside
        r#"{"messages": [{"payload": "x", "nope": 1}]}"#, // unknown field
        r#"{"messages": []} trailing"#,                   // trailing garbage
    ] {
        assert_error(
            &raw(&s, Method::POST, publish, json, body).await,
            BAD,
            "invalid_json",
        );
    }
    // Topic settings: arrays would otherwise map onto fields by position.
    for body in [
        "[2, 5]",
        r#"{"partitions": "2"}"#,
        r#"{"max_delivery": 3}"#,
        "null",
    ] {
        assert_error(
            &raw(&s, Method::PUT, "/v1/topics/u", json, body).await,
            BAD,
            "invalid_json",
        );
    }
    let unsupported = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    let body = r#"{"messages": [{"payload": "x"}]}"#;
    assert_error(
        &raw(&s, Method::POST, publish, None, body).await,
        unsupported,
        "unsupported_media_type",
    );
    assert_error(
        &raw(&s, Method::POST, publish, Some("text/plain"), body).await,
        unsupported,
        "unsupported_media_type",
    );
    assert_error(
        &raw(&s, Method::PUT, "/v1/topics/u", None, "{}").await,
        unsupported,
        "unsupported_media_type",
    );
    // `application/*+json` with parameters is JSON.
    let (status, _) = raw(
        &s,
        Method::POST,
        publish,
        Some("application/vnd.x+json; charset=utf-8"),
        body,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Nothing refused was stored or created.
    assert_eq!(s.end_offsets("t").await, json!([1]));
    assert_error(
        &s.get("/v1/topics/u").await,
        StatusCode::NOT_FOUND,
        "topic_not_found",
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_methods_names_and_topics() {
    let s = TestServer::start().await;
    assert_error(&s.get("/nope").await, StatusCode::NOT_FOUND, "not_found");
    assert_error(
        &s.get("/v1/topics/t/whatever").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let res = s
        .request(Method::POST, "/v1/topics/t")
        .send()
        .await
        .unwrap();
    let allow = res.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("PUT") && allow.contains("DELETE"), "{allow}");
    assert_error(
        &answer(res).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    assert_error(
        &s.call(Method::DELETE, "/v1/topics/t/messages", None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );

    assert_error(
        &s.put("/v1/topics/bad%20name", json!({})).await,
        BAD,
        "invalid_name",
    );
    assert_error(
        &s.put("/v1/topics/a:b", json!({})).await,
        BAD,
        "invalid_name",
    );
    assert_error(
        &s.put("/v1/topics/%FF", json!({})).await,
        BAD,
        "invalid_name",
    );
    assert_error(
        &s.put("/v1/topics/t", json!({"partitions": 0})).await,
        BAD,
        "invalid_config",
    );
    s.topic("t", json!({"partitions": 2})).await;
    assert_error(
        &s.put("/v1/topics/t", json!({"partitions": 1})).await,
        BAD,
        "invalid_config",
    );
    assert_error(
        &s.post("/v1/topics/t/groups/bad%20g/fetch", json!({})).await,
        BAD,
        "invalid_name",
    );

    let nf = StatusCode::NOT_FOUND;
    assert_error(&s.get("/v1/topics/missing").await, nf, "topic_not_found");
    assert_error(
        &s.post(
            "/v1/topics/missing/messages",
            json!({"messages": [{"payload": "x"}]}),
        )
        .await,
        nf,
        "topic_not_found",
    );
    assert_error(
        &s.post("/v1/topics/missing/groups/g/fetch", json!({})).await,
        nf,
        "topic_not_found",
    );
    assert_error(
        &s.post("/v1/topics/missing/groups/g/ack", json!({"receipts": []}))
            .await,
        nf,
        "topic_not_found",
    );
    assert_error(
        &s.post("/v1/topics/missing/groups/g/nack", json!({"receipts": []}))
            .await,
        nf,
        "topic_not_found",
    );
    assert_error(
        &s.get("/v1/topics/missing/groups/g/dead-letters").await,
        nf,
        "topic_not_found",
    );
    assert_error(
        &s.post(
            "/v1/topics/missing/groups/g/dead-letters/resend",
            json!({"all": true}),
        )
        .await,
        nf,
        "topic_not_found",
    );
    assert_error(
        &s.get("/v1/topics/t/groups/g/dead-letters/42").await,
        nf,
        "dead_letter_not_found",
    );
    assert_error(
        &s.get("/v1/topics/t/groups/g/dead-letters/abc").await,
        nf,
        "dead_letter_not_found",
    );
    // The refused partition decrease changed nothing.
    let (_, t) = s.get("/v1/topics/t").await;
    assert_eq!(t["partitions"], 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_refuse_the_whole_batch() {
    let s = TestServer::start_with(|settings, _| {
        settings.max_message_bytes = Some(1000);
        settings.max_request_bytes = Some(4000);
    })
    .await;
    s.topic("t", json!({})).await;
    let publish = |messages: serde_json::Value| {
        let s = &s;
        async move {
            s.post("/v1/topics/t/messages", json!({"messages": messages}))
                .await
        }
    };
    let ok = json!({"payload": "fine"});
    let big = "x".repeat(1001);
    let too_large = StatusCode::PAYLOAD_TOO_LARGE;
    assert_error(
        &publish(json!([ok, {"payload": big}])).await,
        too_large,
        "message_too_large",
    );
    assert_error(
        &publish(json!([ok, {"payload": "x".repeat(900), "key": "y".repeat(101)}])).await,
        too_large,
        "message_too_large",
    );
    assert_error(
        &publish(json!([ok, {"payload_base64": "not base64!"}])).await,
        BAD,
        "invalid_base64",
    );
    assert_error(
        &publish(json!([ok, {"payload": "x", "key_base64": "%%%"}])).await,
        BAD,
        "invalid_base64",
    );
    assert_error(
        &publish(json!([ok, {"payload": "x", "payload_base64": "eA=="}])).await,
        BAD,
        "invalid_message",
    );
    assert_error(
        &publish(json!([ok, {"key": "k"}])).await,
        BAD,
        "invalid_message",
    );
    assert_error(
        &publish(json!([ok, {"payload": "x", "headers": {"surety.id": "1"}}])).await,
        BAD,
        "invalid_message",
    );
    assert_error(
        &publish(json!([ok, {"payload": "x", "producer_id": "p"}])).await,
        BAD,
        "invalid_message",
    );
    assert_error(&publish(json!([])).await, BAD, "invalid_request");
    // Over max_request_bytes: refused before parsing.
    let many: Vec<_> = (0..10)
        .map(|_| json!({"payload": "z".repeat(500)}))
        .collect();
    assert_error(&publish(json!(many)).await, too_large, "payload_too_large");
    let (_, v) = publish(json!([ok, {"payload": big}])).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("messages[1]:"),
        "{v}"
    );
    assert_eq!(s.end_offsets("t").await, json!([0]), "nothing stored");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_ack_nack_and_dead_letter_bounds() {
    let s = TestServer::start().await;
    s.topic("t", json!({})).await;
    let fetch = "/v1/topics/t/groups/g/fetch";
    for body in [
        json!({"max": 0}),
        json!({"max": 1001}),
        json!({"wait_ms": 30001}),
        json!({"lease_ms": 0}),
    ] {
        assert_error(&s.post(fetch, body).await, BAD, "invalid_request");
    }
    assert_error(
        &s.post(fetch, json!({"max": -1})).await,
        BAD,
        "invalid_json",
    );
    assert_error(
        &s.post("/v1/topics/t/groups/g/ack", json!({})).await,
        BAD,
        "invalid_json",
    );
    assert_error(
        &s.post(
            "/v1/topics/t/groups/g/nack",
            json!({"receipts": [], "delay_ms": 100_000_000}),
        )
        .await,
        BAD,
        "invalid_request",
    );
    for body in [
        json!({}),
        json!({"all": false}),
        json!({"ids": [1], "all": true}),
    ] {
        for action in ["resend", "purge"] {
            let path = format!("/v1/topics/t/groups/g/dead-letters/{action}");
            assert_error(&s.post(&path, body.clone()).await, BAD, "invalid_request");
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_forged_foreign_stale_expired() {
    let s = TestServer::start().await;
    s.topic("t", json!({"retry_backoff": {"initial_ms": 0}}))
        .await;
    s.topic("u", json!({})).await;
    s.publish_texts("t", &["a", "b"]).await;
    let got = s.fetch("t", "g", json!({"max": 2})).await;
    let (r0, r1) = (got[0]["receipt"].clone(), got[1]["receipt"].clone());
    let ack = "/v1/topics/t/groups/g/ack";
    assert_error(
        &s.post(ack, json!({"receipts": ["forged"]})).await,
        BAD,
        "receipt_invalid",
    );
    // Signed for another group or topic.
    assert_error(
        &s.post("/v1/topics/t/groups/h/ack", json!({"receipts": [r0]}))
            .await,
        BAD,
        "receipt_invalid",
    );
    assert_error(
        &s.post("/v1/topics/u/groups/g/ack", json!({"receipts": [r0]}))
            .await,
        BAD,
        "receipt_invalid",
    );
    // Each receipt stands on its own: r0 is acked, the forged one is listed at index 1.
    let (status, v) = s.post(ack, json!({"receipts": [r0, "forged"]})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["acked"], 1, "{v}");
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{v}");
    assert_eq!(errors[0]["index"], 1, "{v}");
    assert_eq!(errors[0]["code"], "receipt_invalid", "{v}");
    assert!(errors[0]["message"].as_str().is_some_and(|m| !m.is_empty()));
    let (_, t) = s.get("/v1/topics/t").await;
    let g = t["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "g")
        .unwrap();
    assert_eq!(g["acked"], 1, "{t}");

    // After a nack, r1 names an older delivery once the message is delivered again.
    let (status, _) = s
        .post("/v1/topics/t/groups/g/nack", json!({"receipts": [r1]}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let again = s
        .fetch("t", "g", json!({"max": 1, "wait_ms": 5000, "lease_ms": 1}))
        .await;
    assert_eq!(again[0]["delivery_count"], 2);
    assert_error(
        &s.post(ack, json!({"receipts": [r1]})).await,
        StatusCode::CONFLICT,
        "receipt_stale",
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r2 = again[0]["receipt"].clone();
    assert_error(
        &s.post(ack, json!({"receipts": [r2]})).await,
        StatusCode::CONFLICT,
        "lease_expired",
    );
    s.stop().await;
}

/// An `invalid_request` whose message names `what`.
fn assert_names(got: &(StatusCode, serde_json::Value), what: &str) {
    assert_error(got, BAD, "invalid_request");
    let message = got.1["error"]["message"].as_str().unwrap();
    assert!(message.contains(what), "{what} not in {message:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_strings_are_parsed_strictly() {
    let s = TestServer::start().await;
    s.topic("t", json!({"partitions": 2})).await;
    let dl = "/v1/topics/t/groups/g/dead-letters";
    let peek = "/v1/topics/t/messages";
    for (path, what) in [
        (format!("{dl}?colour=red"), "colour"),
        (format!("{dl}?limit=0"), "limit"),
        (format!("{dl}?limit=1001"), "limit"),
        (format!("{dl}?limit=ten"), "limit"),
        (format!("{dl}?after=abc"), "after"),
        (format!("{dl}?after=-1"), "after"),
        (format!("{dl}?after="), "after"),
        (format!("{dl}?limit=1&limit=2"), "limit"),
        (format!("{peek}?limit=0"), "limit"),
        (format!("{peek}?limit=1001"), "limit"),
        (format!("{peek}?offset=x"), "offset"),
        (format!("{peek}?partition=x"), "partition"),
        (format!("{peek}?partition=2"), "partition"),
        (format!("{peek}?group=g"), "group"),
        ("/v1/topics?verbose=1".to_owned(), "verbose"),
        ("/v1/topics/t?x=1".to_owned(), "x"),
        ("/v1/topics/t/groups?all=1".to_owned(), "all"),
        (
            "/v1/topics/t/groups/g/dead-letters/1?full=1".to_owned(),
            "full",
        ),
    ] {
        assert_names(&s.get(&path).await, what);
    }
    // On bodies' routes too: a parameter no route knows is never silently ignored.
    assert_names(
        &s.post("/v1/topics/t/groups/g/fetch?max=5", json!({})).await,
        "max",
    );
    assert_names(
        &s.post(
            "/v1/topics/t/messages?sync=0",
            json!({"messages": [{"payload": "x"}]}),
        )
        .await,
        "sync",
    );
    assert_names(&s.delete("/v1/topics/t?forse=true").await, "forse");
    assert_names(&s.delete("/v1/topics/t?force=yes").await, "force");
    // None of it changed anything.
    assert_eq!(s.end_offsets("t").await, json!([0, 0]));
    let (_, groups) = s.get("/v1/topics/t/groups").await;
    assert_eq!(groups["groups"], json!([]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_admin_bad_inputs() {
    let s = TestServer::start().await;
    s.topic("t", json!({"partitions": 2})).await;
    s.publish_texts("t", &["a"]).await;
    s.fetch("t", "g", json!({})).await;
    let seek = "/v1/topics/t/groups/g/seek";
    let nf = StatusCode::NOT_FOUND;

    assert_names(
        &s.post(seek, json!({"to": {"partition": 2, "offset": 0}}))
            .await,
        "partition",
    );
    for body in [
        json!({"to": "sideways"}),
        json!({"to": {"partition": 0}}),
        json!({"to": {"timestamp_ms": "now"}}),
        json!({"to": 5}),
        json!({}),
        json!({"to": "latest", "force": true}),
    ] {
        assert_error(&s.post(seek, body).await, BAD, "invalid_json");
    }
    assert_error(
        &s.put("/v1/topics/t/groups/h", json!({"start": "middle"}))
            .await,
        BAD,
        "invalid_json",
    );
    assert_error(
        &s.post("/v1/topics/t/groups/h/fetch", json!({"start": "middle"}))
            .await,
        BAD,
        "invalid_json",
    );
    // A refused fetch does not create its group, start or not.
    assert_names(
        &s.post(
            "/v1/topics/t/groups/h/fetch",
            json!({"start": "latest", "max": 0}),
        )
        .await,
        "max",
    );

    // Groups that do not exist: seek and delete never create one.
    for (method, path) in [
        (Method::GET, "/v1/topics/t/groups/h"),
        (Method::DELETE, "/v1/topics/t/groups/h"),
    ] {
        assert_error(&s.call(method, path, None).await, nf, "group_not_found");
    }
    assert_error(
        &s.post("/v1/topics/t/groups/h/seek", json!({"to": "earliest"}))
            .await,
        nf,
        "group_not_found",
    );
    let (_, groups) = s.get("/v1/topics/t/groups").await;
    assert_eq!(groups["groups"].as_array().unwrap().len(), 1, "{groups}");

    // Topics that do not exist.
    assert_error(&s.delete("/v1/topics/missing").await, nf, "topic_not_found");
    assert_error(
        &s.delete("/v1/topics/missing?force=true").await,
        nf,
        "topic_not_found",
    );
    for path in [
        "/v1/topics/missing/groups",
        "/v1/topics/missing/groups/g",
        "/v1/topics/missing/messages",
    ] {
        assert_error(&s.get(path).await, nf, "topic_not_found");
    }
    assert_error(
        &s.put("/v1/topics/missing/groups/g", json!({})).await,
        nf,
        "topic_not_found",
    );
    assert_error(
        &s.post("/v1/topics/missing/groups/g/seek", json!({"to": "latest"}))
            .await,
        nf,
        "topic_not_found",
    );

    // Bad names are invalid_name on every call, never "not found".
    for (method, path) in [
        (Method::DELETE, "/v1/topics/a:b"),
        (Method::GET, "/v1/topics/a:b"),
        (Method::GET, "/v1/topics/a:b/groups"),
        (Method::GET, "/v1/topics/a:b/messages"),
        (Method::GET, "/v1/topics/t/groups/bad%20g"),
        (Method::DELETE, "/v1/topics/t/groups/bad%20g"),
        (Method::PUT, "/v1/topics/t/groups/bad%20g"),
        (Method::GET, "/v1/topics/t/groups/a:b/dead-letters"),
        (Method::GET, "/v1/topics/a:b/groups/g/dead-letters"),
    ] {
        let got = s.call(method.clone(), path, None).await;
        assert_error(&got, BAD, "invalid_name");
    }
    for (path, body) in [
        ("/v1/topics/t/groups/bad%20g/seek", json!({"to": "latest"})),
        ("/v1/topics/a:b/groups/g/seek", json!({"to": "latest"})),
        ("/v1/topics/a:b/groups/g/fetch", json!({})),
        (
            "/v1/topics/a:b/messages",
            json!({"messages": [{"payload": "x"}]}),
        ),
        ("/v1/topics/t/groups/a:b/ack", json!({"receipts": []})),
    ] {
        assert_error(&s.post(path, body).await, BAD, "invalid_name");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_beyond_the_broker_limits_are_refused() {
    let s = TestServer::start().await;
    s.topic("t", json!({})).await;
    s.publish_texts("t", &["a"]).await;
    let got = s.fetch("t", "g", json!({})).await;
    let r = got[0]["receipt"].clone();
    let max = u64::MAX;
    assert_names(
        &s.post("/v1/topics/t/groups/g/fetch", json!({"lease_ms": max}))
            .await,
        "lease_ms",
    );
    assert_names(
        &s.post(
            "/v1/topics/t/groups/g/fetch",
            json!({"lease_ms": 43_200_001}),
        )
        .await,
        "43200000",
    );
    let nack = "/v1/topics/t/groups/g/nack";
    assert_names(
        &s.post(nack, json!({"receipts": [r], "delay_ms": max}))
            .await,
        "delay_ms",
    );
    assert_names(
        &s.post(nack, json!({"receipts": [r], "reason": "x".repeat(4097)}))
            .await,
        "reason",
    );
    // The refused nacks left the delivery leased.
    assert_eq!(s.group("t", "g").await["in_flight"], 1);
    let (status, v) = s
        .post(nack, json!({"receipts": [r], "reason": "x".repeat(4096)}))
        .await;
    assert_eq!((status, v), (StatusCode::OK, json!({"nacked": 1})));

    assert_names(
        &s.post(
            "/v1/topics/t/messages",
            json!({"messages": [{"payload": "x", "not_before_ms": 99_999_999_999_999_999u64}]}),
        )
        .await,
        "not_before_ms",
    );
    // Empty: refused by the broker's batch bound.
    assert_names(
        &s.post("/v1/topics/t/messages", json!({"messages": []}))
            .await,
        "messages",
    );
    // In the past: delivered at once.
    let (status, _) = s
        .post(
            "/v1/topics/t/messages",
            json!({"messages": [{"payload": "y", "not_before_ms": 1}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.end_offsets("t").await, json!([2]));
    s.stop().await;
}
