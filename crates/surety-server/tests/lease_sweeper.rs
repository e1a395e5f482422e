//! The server runs the broker's lease sweeper: a lease that runs out turns into a
//! redelivery or, at `max_deliveries`, a dead letter, even when nobody fetches again —
//! and leases held when the server stops expire after it restarts.

mod common;

use common::{TestServer, eventually, metric};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_leases_settle_without_a_fetch_and_after_a_restart() {
    let s = TestServer::start().await;
    // Leases of 1 s; no backoff, so an expired delivery is due again at once.
    let config = json!({"ack_wait_ms": 1000, "max_deliveries": 2,
                        "retry_backoff": {"initial_ms": 0, "max_ms": 0}});
    s.topic("t", config).await;
    s.publish_texts("t", &["a", "b"]).await;
    assert_eq!(s.fetch("t", "g", json!({"max": 2})).await.len(), 2);
    assert_eq!(s.group("t", "g").await["in_flight"], 2);

    // Delivery 1 expires: waiting for delivery 2, nobody having fetched.
    eventually("the first leases to expire", || async {
        let g = s.group("t", "g").await;
        g["in_flight"] == 0 && g["pending"] == 2
    })
    .await;
    let got = s.fetch("t", "g", json!({"max": 2})).await;
    assert!(got.iter().all(|m| m["delivery_count"] == 2), "{got:?}");

    // Delivery 2 expires too: out of deliveries, dead letters, again without a fetch.
    eventually("the second leases to dead-letter", || async {
        let g = s.group("t", "g").await;
        g["in_flight"] == 0 && g["dead_letters"] == 2
    })
    .await;
    let (status, v) = s.get("/v1/topics/t/groups/g/dead-letters").await;
    assert_eq!(status, StatusCode::OK);
    let dls = v["dead_letters"].as_array().unwrap();
    assert_eq!(dls.len(), 2, "{v}");
    for d in dls {
        assert_eq!(
            (d["reason"].as_str(), d["attempts"].as_u64()),
            (Some("lease expired"), Some(2)),
            "{d}"
        );
    }
    let g = s.group("t", "g").await;
    assert_eq!(
        (g["lag"].as_u64(), g["dead_lettered"].as_u64()),
        (Some(0), Some(2)),
        "{g}"
    );
    let text = s.metrics().await;
    let labels = r#"{topic="t",group="g"}"#;
    for (name, want) in [
        ("surety_group_in_flight", 0.0),
        ("surety_group_dead_letters", 2.0),
        ("surety_group_dead_lettered_total", 2.0),
        ("surety_group_redeliveries_total", 2.0),
        ("surety_group_lag", 0.0),
    ] {
        assert_eq!(
            metric(&text, &format!("{name}{labels}")),
            Some(want),
            "{name} in\n{text}"
        );
    }

    // Leases held across a restart: the broker re-schedules them at open.
    s.topic("r", json!({"ack_wait_ms": 3000, "max_deliveries": 1}))
        .await;
    s.publish_texts("r", &["c"]).await;
    assert_eq!(s.fetch("r", "g", json!({})).await.len(), 1);
    let s = s.restart().await;
    assert_eq!(
        s.group("r", "g").await["in_flight"],
        1,
        "still leased after the restart"
    );
    eventually("the lease held across the restart to expire", || async {
        let g = s.group("r", "g").await;
        g["in_flight"] == 0 && g["dead_letters"] == 1
    })
    .await;
    let (_, v) = s.get("/v1/topics/r/groups/g/dead-letters").await;
    assert_eq!(v["dead_letters"][0]["reason"], "lease expired", "{v}");
    assert_eq!(v["dead_letters"][0]["payload"], "c", "{v}");
    s.stop().await;
}
