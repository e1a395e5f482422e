//! The REST table of docs/design.md, endpoint by endpoint, over a real socket against an
//! in-process server. Error answers: rest_errors.rs.

mod common;

use common::{TestServer, answer, assert_error};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_create_update_get_list() {
    let s = TestServer::start().await;
    // Empty body: defaults, 201.
    let res = s
        .request(Method::PUT, "/v1/topics/orders")
        .send()
        .await
        .unwrap();
    let (status, t) = answer(res).await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    assert_eq!(t["name"], "orders");
    assert_eq!(t["partitions"], 1);
    assert_eq!(t["config"]["max_deliveries"], 5);
    assert_eq!(t["end_offsets"], json!([0]));
    assert_eq!(t["start_offsets"], json!([0]));
    assert_eq!(t["groups"], json!([]));

    // Existing topic: 200, absent fields keep their value.
    let (status, t) = s
        .put(
            "/v1/topics/orders",
            json!({"partitions": 3, "ack_wait_ms": 5000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(t["partitions"], 3);
    assert_eq!(t["config"]["ack_wait_ms"], 5000);
    assert_eq!(t["config"]["max_deliveries"], 5);
    assert_eq!(t["end_offsets"], json!([0, 0, 0]));

    s.topic("audit", json!({"max_deliveries": 2})).await;
    let (status, one) = s.get("/v1/topics/audit").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["config"]["max_deliveries"], 2);
    let (status, list) = s.get("/v1/topics").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["audit", "orders"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_fetch_ack_with_counters() {
    let s = TestServer::start().await;
    s.topic("t", json!({})).await;
    let (status, v) = s
        .post(
            "/v1/topics/t/messages",
            json!({"messages": [
                {"payload": "hello", "key": "k1", "headers": {"h": "v"}, "id": "m-1"},
                {"payload_base64": "/wA=", "key_base64": "AP8="},
                {"payload": "seq", "producer_id": "p", "sequence": 7},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        v["results"],
        json!([
            {"partition": 0, "offset": 0, "duplicate": false},
            {"partition": 0, "offset": 1, "duplicate": false},
            {"partition": 0, "offset": 2, "duplicate": false},
        ])
    );
    // Retries of the same id and producer sequence: the original offsets, not stored again.
    let (_, dup) = s
        .post(
            "/v1/topics/t/messages",
            json!({"messages": [{"payload": "x", "id": "m-1"}, {"payload": "y", "producer_id": "p", "sequence": 7}]}),
        )
        .await;
    assert_eq!(
        dup["results"],
        json!([
            {"partition": 0, "offset": 0, "duplicate": true},
            {"partition": 0, "offset": 2, "duplicate": true},
        ])
    );
    assert_eq!(s.end_offsets("t").await, json!([3]));

    let got = s
        .fetch(
            "t",
            "g",
            json!({"max": 10, "wait_ms": 0, "lease_ms": 30000}),
        )
        .await;
    assert_eq!(got.len(), 3);
    let m = &got[0];
    assert_eq!(m["partition"], 0);
    assert_eq!(m["offset"], 0);
    assert_eq!(m["delivery_count"], 1);
    assert_eq!(m["payload"], "hello");
    assert_eq!(m["key"], "k1");
    assert_eq!(m["headers"], json!({"h": "v"}));
    assert_eq!(m["id"], "m-1");
    assert!(m["timestamp_ms"].as_i64().unwrap() > 0);
    assert!(m["receipt"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(got[1]["payload_base64"], "/wA=");
    assert_eq!(got[1]["key_base64"], "AP8=");
    assert!(got[1].get("payload").is_none());
    assert_eq!(got[2]["producer_id"], "p");
    assert_eq!(got[2]["sequence"], 7);

    let receipts: Vec<Value> = got.iter().map(|m| m["receipt"].clone()).collect();
    let (status, v) = s
        .post(
            "/v1/topics/t/groups/g/ack",
            json!({"receipts": receipts[..2]}),
        )
        .await;
    assert_eq!((status, v), (StatusCode::OK, json!({"acked": 2})));
    // Repeating an ack is harmless and counts zero.
    let (_, v) = s
        .post(
            "/v1/topics/t/groups/g/ack",
            json!({"receipts": receipts[..1]}),
        )
        .await;
    assert_eq!(v, json!({"acked": 0}));

    let (_, t) = s.get("/v1/topics/t").await;
    let g = &t["groups"][0];
    assert_eq!(g["name"], "g");
    assert_eq!(g["accepted"], 3);
    assert_eq!(g["acked"], 2);
    assert_eq!(g["in_flight"], 1);
    assert_eq!(g["pending"], 0);
    assert_eq!(g["lag"], 1);
    assert_eq!(g["dead_letters"], 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_fetch_wakes_on_publish() {
    let s = TestServer::start().await;
    s.topic("t", json!({})).await;
    let poll = {
        let client = s.client.clone();
        let url = format!("{}/v1/topics/t/groups/g/fetch", s.base);
        tokio::spawn(async move {
            let res = client
                .post(url)
                .json(&json!({"wait_ms": 10000}))
                .send()
                .await
                .unwrap();
            answer(res).await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    s.publish_texts("t", &["late"]).await;
    let (status, v) = tokio::time::timeout(std::time::Duration::from_secs(5), poll)
        .await
        .expect("the publish wakes the poll")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["messages"][0]["payload"], "late");
    s.stop().await;
}

/// max_deliveries 1: a nack dead-letters at once.
async fn dead_letter_two(s: &TestServer) -> Vec<Value> {
    s.topic("t", json!({"max_deliveries": 1})).await;
    s.publish_texts("t", &["a", "b"]).await;
    let got = s.fetch("t", "g", json!({"max": 2})).await;
    let receipts: Vec<Value> = got.iter().map(|m| m["receipt"].clone()).collect();
    let (status, v) = s
        .post(
            "/v1/topics/t/groups/g/nack",
            json!({"receipts": receipts, "delay_ms": 0, "reason": "poison"}),
        )
        .await;
    assert_eq!((status, v), (StatusCode::OK, json!({"nacked": 2})));
    let (status, v) = s.get("/v1/topics/t/groups/g/dead-letters").await;
    assert_eq!(status, StatusCode::OK);
    v["dead_letters"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_dead_letters_show_resend_purge() {
    let s = TestServer::start().await;
    let dls = dead_letter_two(&s).await;
    assert_eq!(dls.len(), 2);
    let d = &dls[0];
    assert_eq!(d["partition"], 0);
    assert_eq!(d["offset"], 0);
    assert_eq!(d["reason"], "poison");
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["payload"], "a");
    assert_eq!(d["headers"], json!({}));
    for f in [
        "first_delivered_at_ms",
        "last_delivered_at_ms",
        "dead_lettered_at_ms",
    ] {
        assert!(d[f].as_u64().is_some_and(|t| t > 0), "{f}: {d}");
    }
    let (_, t) = s.get("/v1/topics/t").await;
    assert_eq!(t["groups"][0]["dead_letters"], 2);
    assert_eq!(t["groups"][0]["dead_lettered"], 2);

    let id = d["id"].as_u64().unwrap();
    let (status, one) = s
        .get(&format!("/v1/topics/t/groups/g/dead-letters/{id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one, *d);

    // Resend one: it comes back to this group, with its lineage.
    let (status, v) = s
        .post(
            "/v1/topics/t/groups/g/dead-letters/resend",
            json!({"ids": [id]}),
        )
        .await;
    assert_eq!((status, v), (StatusCode::OK, json!({"resent": 1})));
    let got = s.fetch("t", "g", json!({"max": 5})).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["payload"], "a");
    assert_eq!(got[0]["resent_from"]["dead_letter_id"], id);
    // Another group never sees the resend.
    assert_eq!(s.fetch("t", "other", json!({"max": 5})).await.len(), 2);

    let (status, v) = s
        .post(
            "/v1/topics/t/groups/g/dead-letters/purge",
            json!({"all": true}),
        )
        .await;
    assert_eq!((status, v), (StatusCode::OK, json!({"purged": 1})));
    let (_, v) = s.get("/v1/topics/t/groups/g/dead-letters").await;
    assert_eq!(v["dead_letters"], json!([]));
    let (_, t) = s.get("/v1/topics/t").await;
    let g = t["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "g")
        .unwrap();
    assert_eq!(g["dead_letters_purged"], 1);
    assert_eq!(g["dead_letters_resent"], 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_plain_ok() {
    let s = TestServer::start().await;
    let res = s
        .client
        .get(format!("{}/healthz", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(res.text().await.unwrap(), "ok");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_guards_everything_but_healthz() {
    let mut s = TestServer::start_with(|settings, dir| {
        let file = dir.join("tokens");
        std::fs::write(&file, "# ops\n\nsecret-1\n  secret-2  \n").unwrap();
        settings.auth_token_file = Some(file);
    })
    .await;
    let healthz = s
        .client
        .get(format!("{}/healthz", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), StatusCode::OK);
    for path in ["/v1/topics", "/metrics"] {
        assert_error(&s.get(path).await, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    assert_error(
        &s.post(
            "/v1/topics/t/messages",
            json!({"messages": [{"payload": "x"}]}),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    s.token = Some("secret-3".into());
    assert_error(
        &s.get("/v1/topics").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    s.token = Some("secret-2".into());
    assert_eq!(s.get("/v1/topics").await.0, StatusCode::OK);
    let metrics = s.request(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    // The refused publish stored nothing and created nothing.
    let (_, v) = s.get("/v1/topics").await;
    assert_eq!(v["topics"], json!([]));
    s.stop().await;
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_traffic() {
    let s = TestServer::start().await;
    s.topic("mt", json!({"max_deliveries": 1})).await;
    s.publish_texts("mt", &["one", "two", "three"]).await;
    let (_, v) = s
        .post(
            "/v1/topics/mt/messages",
            json!({"messages": [{"payload": "d", "id": "x"}]}),
        )
        .await;
    assert_eq!(v["results"][0]["duplicate"], false);
    let (_, v) = s
        .post(
            "/v1/topics/mt/messages",
            json!({"messages": [{"payload": "d", "id": "x"}]}),
        )
        .await;
    assert_eq!(v["results"][0]["duplicate"], true);
    let got = s.fetch("mt", "g", json!({"max": 2})).await;
    s.post(
        "/v1/topics/mt/groups/g/ack",
        json!({"receipts": [got[0]["receipt"]]}),
    )
    .await;
    s.post(
        "/v1/topics/mt/groups/g/nack",
        json!({"receipts": [got[1]["receipt"]]}),
    )
    .await;

    let res = s.request(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.unwrap();
    let g = r#"{topic="mt",group="g"}"#;
    for (name, want) in [
        ("surety_group_accepted_total", 4.0),
        ("surety_group_acked_total", 1.0),
        ("surety_group_in_flight", 0.0),
        ("surety_group_pending", 2.0),
        ("surety_group_lag", 2.0),
        ("surety_group_dead_lettered_total", 1.0),
        ("surety_group_dead_letters", 1.0),
        ("surety_group_expired_unsettled_total", 0.0),
        ("surety_group_redeliveries_total", 0.0),
        ("surety_group_skipped_by_seek_total", 0.0),
        ("surety_acked_total", 1.0),
        ("surety_nacked_total", 1.0),
    ] {
        assert_eq!(
            metric(&text, &format!("{name}{g}")),
            Some(want),
            "{name} in\n{text}"
        );
    }
    let t = r#"{topic="mt"}"#;
    assert_eq!(
        metric(&text, &format!("surety_published_messages_total{t}")),
        Some(4.0)
    );
    assert_eq!(
        metric(&text, &format!("surety_published_bytes_total{t}")),
        Some(12.0)
    );
    assert_eq!(
        metric(&text, &format!("surety_duplicates_total{t}")),
        Some(1.0)
    );
    assert_eq!(metric(&text, &format!("surety_dedupe_hits{t}")), Some(1.0));
    // Every metric is described, and totals are counters, levels gauges.
    for (name, kind) in [
        ("surety_published_messages_total", "counter"),
        ("surety_published_bytes_total", "counter"),
        ("surety_duplicates_total", "counter"),
        ("surety_dedupe_hits", "gauge"),
        ("surety_acked_total", "counter"),
        ("surety_nacked_total", "counter"),
        ("surety_group_lag", "gauge"),
        ("surety_group_in_flight", "gauge"),
        ("surety_group_pending", "gauge"),
        ("surety_group_dead_letters", "gauge"),
        ("surety_group_accepted_total", "counter"),
        ("surety_group_acked_total", "counter"),
        ("surety_group_dead_lettered_total", "counter"),
        ("surety_group_redeliveries_total", "counter"),
        ("surety_group_expired_unsettled_total", "counter"),
        ("surety_group_skipped_by_seek_total", "counter"),
        ("surety_log_fsync_seconds", "histogram"),
        ("surety_log_records_per_fsync", "histogram"),
    ] {
        let help = format!("# HELP {name} ");
        assert!(
            text.lines()
                .any(|l| l.starts_with(&help) && l.len() > help.len()),
            "no HELP for {name} in\n{text}"
        );
        let ty = format!("# TYPE {name} {kind}");
        assert!(text.lines().any(|l| l == ty), "no {ty:?} in\n{text}");
    }
    // Every series has a HELP line.
    for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = l.split(' ').nth(2).unwrap();
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP in\n{text}"
        );
    }
    assert!(
        text.contains("surety_log_fsync_seconds_bucket{le="),
        "{text}"
    );
    assert!(
        text.contains("surety_log_records_per_fsync_bucket{le="),
        "{text}"
    );
    s.stop().await;
}
