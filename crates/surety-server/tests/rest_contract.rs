//! The REST table of docs/design.md, endpoint by endpoint, over a real socket against an
//! in-process server. Error answers: rest_errors.rs.

mod common;

use common::{TestServer, answer, assert_error, metric};
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

fn receipts_of(got: &[Value]) -> Vec<Value> {
    got.iter().map(|m| m["receipt"].clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_and_nack_batches_settle_each_receipt_alone() {
    let s = TestServer::start().await;
    s.topic("t", json!({"max_deliveries": 1})).await;
    s.publish_texts("t", &["a", "b", "c"]).await;
    let r = receipts_of(&s.fetch("t", "g", json!({"max": 3})).await);
    let (status, v) = s
        .post(
            "/v1/topics/t/groups/g/ack",
            json!({"receipts": [r[0], "forged", r[1]]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["acked"], 2, "{v}");
    assert_eq!(v["errors"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["errors"][0]["index"], 1);
    assert_eq!(v["errors"][0]["code"], "receipt_invalid");
    let (status, v) = s
        .post(
            "/v1/topics/t/groups/g/nack",
            json!({"receipts": ["forged", r[2]], "reason": "bad"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["nacked"], 1, "{v}");
    assert_eq!(v["errors"][0]["index"], 0, "{v}");
    // Settled receipts count zero but are no error; nothing refused: no "errors" at all.
    let (_, v) = s
        .post("/v1/topics/t/groups/g/ack", json!({"receipts": [r[0]]}))
        .await;
    assert_eq!(v, json!({"acked": 0}));
    let (_, v) = s
        .post("/v1/topics/t/groups/g/ack", json!({"receipts": []}))
        .await;
    assert_eq!(v, json!({"acked": 0}));
    let g = s.group("t", "g").await;
    assert_eq!(
        (g["acked"].as_u64(), g["dead_letters"].as_u64()),
        (Some(2), Some(1))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_list_get_create_delete() {
    let s = TestServer::start().await;
    s.topic("t", json!({"max_deliveries": 1})).await;
    s.publish_texts("t", &["a", "b", "c"]).await;
    let (status, v) = s.get("/v1/topics/t/groups").await;
    assert_eq!((status, v), (StatusCode::OK, json!({"groups": []})));

    // Created at the end: sees only what comes next.
    let (status, late) = s
        .put("/v1/topics/t/groups/late", json!({"start": "latest"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{late}");
    assert_eq!(
        (late["name"].as_str(), late["lag"].as_u64()),
        (Some("late"), Some(0))
    );
    // Again: 200, not moved.
    let (status, again) = s
        .put("/v1/topics/t/groups/late", json!({"start": "earliest"}))
        .await;
    assert_eq!((status, again["lag"].as_u64()), (StatusCode::OK, Some(0)));
    // No body: earliest.
    let res = s
        .request(Method::PUT, "/v1/topics/t/groups/early")
        .send()
        .await
        .unwrap();
    let (status, early) = answer(res).await;
    assert_eq!(
        (status, early["lag"].as_u64()),
        (StatusCode::CREATED, Some(3))
    );
    for field in [
        "name",
        "lag",
        "in_flight",
        "pending",
        "accepted",
        "acked",
        "dead_lettered",
        "expired_unsettled",
        "skipped_by_seek",
        "redeliveries",
        "dead_letters",
        "dead_letters_purged",
        "dead_letters_resent",
    ] {
        assert!(early.get(field).is_some(), "{field} in {early}");
    }

    let got = s.fetch("t", "early", json!({"max": 1})).await;
    let (status, _) = s
        .post(
            "/v1/topics/t/groups/early/nack",
            json!({"receipts": receipts_of(&got)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, early) = s.get("/v1/topics/t/groups/early").await;
    assert_eq!(status, StatusCode::OK, "{early}");
    assert_eq!(
        (early["lag"].as_u64(), early["dead_letters"].as_u64()),
        (Some(2), Some(1))
    );
    let (status, list) = s.get("/v1/topics/t/groups").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["early", "late"]);

    let (status, v) = s.delete("/v1/topics/t/groups/early").await;
    assert_eq!(
        (status, v),
        (
            StatusCode::OK,
            json!({"group": "early", "unsettled_dropped": 2, "dead_letters_dropped": 1})
        )
    );
    assert_error(
        &s.get("/v1/topics/t/groups/early").await,
        StatusCode::NOT_FOUND,
        "group_not_found",
    );
    let (_, list) = s.get("/v1/topics/t/groups").await;
    assert_eq!(list["groups"].as_array().unwrap().len(), 1, "{list}");

    // A fetch that creates its group may start it at the end; an existing group ignores it.
    assert!(
        s.fetch("t", "fresh", json!({"start": "latest"}))
            .await
            .is_empty()
    );
    s.publish_texts("t", &["d"]).await;
    let got = s
        .fetch("t", "fresh", json!({"start": "earliest", "max": 10}))
        .await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0]["offset"].as_u64(), got[0]["payload"].as_str()),
        (Some(3), Some("d"))
    );
    let got = s.fetch("t", "late", json!({"max": 10})).await;
    assert_eq!(got.len(), 1, "the group created at the end sees only d");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_counts_what_it_skips_and_replays() {
    let s = TestServer::start().await;
    s.topic("t", json!({})).await;
    s.publish_texts("t", &["a", "b", "c", "d"]).await;
    let seek = |to: Value| {
        let s = &s;
        async move {
            let (status, v) = s
                .post("/v1/topics/t/groups/g/seek", json!({"to": to}))
                .await;
            assert_eq!(status, StatusCode::OK, "{v}");
            v
        }
    };
    let got = s.fetch("t", "g", json!({"max": 2})).await;
    s.post(
        "/v1/topics/t/groups/g/ack",
        json!({"receipts": receipts_of(&got)}),
    )
    .await;

    // Past the end: c and d were never settled, so they are skipped (and counted).
    let v = seek(json!("latest")).await;
    assert_eq!(
        v,
        json!({"skipped": 2, "replayed": 0, "partitions": [
            {"partition": 0, "from": 2, "to": 4, "skipped": 2, "replayed": 0}
        ]})
    );
    let g = s.group("t", "g").await;
    assert_eq!(
        (g["skipped_by_seek"].as_u64(), g["lag"].as_u64()),
        (Some(2), Some(0))
    );
    assert!(s.fetch("t", "g", json!({})).await.is_empty());

    // Back to the start: all four are settled, all four come again.
    let v = seek(json!("earliest")).await;
    assert_eq!(
        (v["skipped"].as_u64(), v["replayed"].as_u64()),
        (Some(0), Some(4)),
        "{v}"
    );
    assert_eq!(v["partitions"][0]["to"], 0);
    let got = s.fetch("t", "g", json!({"max": 10})).await;
    let offsets: Vec<u64> = got.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [0, 1, 2, 3]);
    assert_eq!(got[0]["delivery_count"], 1);

    // To an offset: 0..3 were in flight, unsettled, and are passed over.
    let v = seek(json!({"partition": 0, "offset": 3})).await;
    assert_eq!(
        (v["skipped"].as_u64(), v["replayed"].as_u64()),
        (Some(3), Some(0)),
        "{v}"
    );
    assert_eq!(v["partitions"][0]["to"], 3);
    let got = s.fetch("t", "g", json!({"max": 10})).await;
    let offsets: Vec<u64> = got.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
    assert_eq!(
        offsets,
        [3],
        "only offset 3 (its earlier delivery was withdrawn)"
    );
    s.post(
        "/v1/topics/t/groups/g/ack",
        json!({"receipts": receipts_of(&got)}),
    )
    .await;
    // Offsets are clamped to what the partition holds.
    let v = seek(json!({"partition": 0, "offset": 999})).await;
    assert_eq!(v["partitions"][0]["to"], 4, "{v}");

    // To a time: the first message stored at or after it.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    s.publish_texts("t", &["e"]).await;
    let (_, peeked) = s.get("/v1/topics/t/messages?offset=4").await;
    let t_e = peeked["messages"][0]["timestamp_ms"].as_u64().unwrap();
    let v = seek(json!("earliest")).await;
    assert_eq!(v["replayed"], 4, "{v}");
    let v = seek(json!({"timestamp_ms": t_e})).await;
    assert_eq!(v["partitions"][0]["to"], 4, "{v}");
    assert_eq!(v["skipped"], 4, "{v}");
    let got = s.fetch("t", "g", json!({"max": 10})).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["payload"], "e");
    let g = s.group("t", "g").await;
    assert!(g["accepted"].as_u64().unwrap() >= 5, "{g}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_delete_refuses_while_busy_unless_forced() {
    let s = TestServer::start().await;
    s.topic("t", json!({})).await;
    s.publish_texts("t", &["a", "b"]).await;
    assert_eq!(s.fetch("t", "g", json!({"max": 1})).await.len(), 1);
    assert_error(
        &s.delete("/v1/topics/t").await,
        StatusCode::CONFLICT,
        "topic_busy",
    );
    assert_error(
        &s.delete("/v1/topics/t?force=false").await,
        StatusCode::CONFLICT,
        "topic_busy",
    );
    assert_eq!(
        s.end_offsets("t").await,
        json!([2]),
        "the refused delete changed nothing"
    );
    let (status, v) = s.delete("/v1/topics/t?force=true").await;
    assert_eq!(
        (status, v),
        (
            StatusCode::OK,
            json!({"topic": "t", "messages_dropped": 2, "groups_dropped": 1,
                   "unsettled_dropped": 2, "dead_letters_dropped": 0})
        )
    );
    assert_error(
        &s.get("/v1/topics/t").await,
        StatusCode::NOT_FOUND,
        "topic_not_found",
    );
    let (_, list) = s.get("/v1/topics").await;
    assert_eq!(list["topics"], json!([]));

    // Nothing unsettled: no force needed. A new topic of the same name starts empty.
    s.topic("t", json!({})).await;
    s.publish_texts("t", &["x"]).await;
    let (status, v) = s.delete("/v1/topics/t").await;
    assert_eq!(
        (status, v["messages_dropped"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    s.topic("t", json!({})).await;
    assert_eq!(s.end_offsets("t").await, json!([0]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_leaves_deliveries_untouched() {
    let s = TestServer::start().await;
    s.topic("t", json!({"partitions": 2})).await;
    s.publish_texts("t", &["a", "b", "c", "d", "e"]).await;
    let (status, p) = s.get("/v1/topics/t/messages").await;
    assert_eq!(status, StatusCode::OK, "{p}");
    let on0 = p["messages"].as_array().unwrap().len() as u64;
    assert_eq!(p["start_offset"], 0);
    assert_eq!(p["end_offset"], on0);
    assert_eq!(p["next_offset"], on0);
    let (_, p1) = s.get("/v1/topics/t/messages?partition=1").await;
    let on1 = p1["messages"].as_array().unwrap().len() as u64;
    assert_eq!(on0 + on1, 5, "{p} {p1}");
    let m = if on0 > 0 {
        &p["messages"][0]
    } else {
        &p1["messages"][0]
    };
    assert!(
        m["payload"].is_string() && m["timestamp_ms"].is_i64(),
        "{m}"
    );
    assert!(
        m.get("receipt").is_none() && m.get("delivery_count").is_none(),
        "{m}"
    );

    // A page: offset and limit, and where the next starts.
    let busy = if on0 >= on1 { 0 } else { 1 };
    let (_, page) = s
        .get(&format!(
            "/v1/topics/t/messages?partition={busy}&offset=1&limit=1"
        ))
        .await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["messages"][0]["offset"], 1);
    assert_eq!(page["messages"][0]["partition"], busy);
    assert_eq!(page["next_offset"], 2);
    // Past the end: empty.
    let (_, end) = s.get("/v1/topics/t/messages?offset=99").await;
    assert_eq!(end["messages"], json!([]));

    // Peeking made no group and no delivery.
    let (_, t) = s.get("/v1/topics/t").await;
    assert_eq!(t["groups"], json!([]));
    let got = s.fetch("t", "g", json!({"max": 10})).await;
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|m| m["delivery_count"] == 1), "{got:?}");
    // Nor does it touch the leases it sees.
    s.get("/v1/topics/t/messages").await;
    let g = s.group("t", "g").await;
    assert_eq!(
        (g["in_flight"].as_u64(), g["redeliveries"].as_u64()),
        (Some(5), Some(0))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_come_in_pages_with_a_next_cursor() {
    let s = TestServer::start().await;
    s.topic("t", json!({"max_deliveries": 1})).await;
    s.publish_texts("t", &["a", "b", "c", "d", "e"]).await;
    let got = s.fetch("t", "g", json!({"max": 5})).await;
    s.post(
        "/v1/topics/t/groups/g/nack",
        json!({"receipts": receipts_of(&got), "reason": "poison"}),
    )
    .await;
    let base = "/v1/topics/t/groups/g/dead-letters";
    let (status, all) = s.get(base).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all["dead_letters"].as_array().unwrap().len(), 5);
    assert_eq!(all["next"], Value::Null);

    let mut seen = Vec::new();
    let mut path = format!("{base}?limit=2");
    let mut pages = 0;
    loop {
        let (status, page) = s.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        let items = page["dead_letters"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|d| d["payload"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_u64() {
            Some(next) => {
                assert_eq!(items.last().unwrap()["id"], next);
                path = format!("{base}?limit=2&after={next}");
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    // An exact fit: the last full page already says there is no more.
    let (_, page) = s.get(&format!("{base}?limit=5")).await;
    assert_eq!(page["next"], Value::Null);
    // An unknown group has none.
    let (status, none) = s.get("/v1/topics/t/groups/nobody/dead-letters").await;
    assert_eq!(
        (status, none),
        (StatusCode::OK, json!({"dead_letters": [], "next": null}))
    );
    s.stop().await;
}

/// A dead letter of a message that has an `id` of its own: the dead letter's `id` (what
/// resend, purge and GET take) and the message's (`message_id`) are two keys, never one
/// key twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letters_id_and_its_messages_id_are_two_keys() {
    let s = TestServer::start().await;
    s.topic("t", json!({"max_deliveries": 1})).await;
    let (status, _) = s
        .post(
            "/v1/topics/t/messages",
            json!({"messages": [{"payload": "p", "id": "order-42"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let got = s.fetch("t", "g", json!({"max": 1})).await;
    s.post(
        "/v1/topics/t/groups/g/nack",
        json!({"receipts": [got[0]["receipt"]], "reason": "bad"}),
    )
    .await;
    let raw = s
        .request(Method::GET, "/v1/topics/t/groups/g/dead-letters")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(raw.matches("\"id\":").count(), 1, "{raw}");
    let page: Value = serde_json::from_str(&raw).unwrap();
    let d = &page["dead_letters"][0];
    assert_eq!(
        (d["id"].clone(), d["message_id"].clone()),
        (json!(0), json!("order-42"))
    );
    let (status, one) = s.get("/v1/topics/t/groups/g/dead-letters/0").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["message_id"], "order-42");
    s.stop().await;
}
