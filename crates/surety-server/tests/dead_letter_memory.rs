//! Listing a large dead-letter queue holds one page at a time: 200 dead letters of
//! 500 KiB each (~100 MB; before paging this was one answer of that size) are listed
//! page by page, and the process (server and client in one) grows by less than twice
//! the largest page's answer.

mod common;

use common::TestServer;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

const COUNT: usize = 200;
const PAYLOAD: usize = 500 * 1024;

/// A figure of /proc/self/status (`VmRSS`, `VmHWM`), bytes.
fn status(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    kb * 1024
}

/// Resident set size of this process, bytes.
fn rss() -> u64 {
    status("VmRSS")
}

/// What the test reads of a page; the payloads are skipped, never held as values.
#[derive(Deserialize)]
struct Page {
    dead_letters: Vec<Id>,
    next: Option<u64>,
}

#[derive(Deserialize)]
struct Id {
    id: u64,
    reason: String,
}

/// One page: its size on the wire and what it holds.
async fn page(s: &TestServer, after: Option<u64>) -> (usize, Page) {
    let path = match after {
        Some(a) => format!("/v1/topics/t/groups/g/dead-letters?after={a}"),
        None => "/v1/topics/t/groups/g/dead-letters".to_owned(),
    };
    let res = s.request(reqwest::Method::GET, &path).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.bytes().await.unwrap();
    let page: Page = serde_json::from_slice(&body).unwrap();
    (body.len(), page)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_a_large_dead_letter_queue_holds_one_page_at_a_time() {
    let s = TestServer::start().await;
    s.topic("t", json!({"max_deliveries": 1})).await;
    // Distinct texts: ASCII, so the JSON is about as large as the payloads.
    for batch in 0..COUNT / 4 {
        let messages: Vec<Value> = (0..4)
            .map(|i| {
                let mut text = format!("{:08}", batch * 4 + i);
                text.push_str(&"x".repeat(PAYLOAD - text.len()));
                json!({"payload": text})
            })
            .collect();
        let (status, v) = s
            .post("/v1/topics/t/messages", json!({"messages": messages}))
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    // max_deliveries 1: each nack dead-letters its message.
    let mut dead = 0;
    while dead < COUNT {
        let got = s.fetch("t", "g", json!({"max": 100})).await;
        assert!(!got.is_empty(), "{dead} of {COUNT} dead-lettered");
        let receipts: Vec<Value> = got.iter().map(|m| m["receipt"].clone()).collect();
        let (status, v) = s
            .post(
                "/v1/topics/t/groups/g/nack",
                json!({"receipts": receipts, "reason": "poison"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        dead += got.len();
    }
    assert_eq!(s.group("t", "g").await["dead_letters"], COUNT);

    // Warm-up: one page, so allocator and connection pools are in their steady state.
    let (warm, _) = page(&s, None).await;
    let before = rss();
    // Resets the peak (VmHWM) to now, for the report; not every kernel allows it.
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let (mut largest, mut pages, mut ids) = (warm, 0, Vec::new());
    let mut after = None;
    loop {
        let (size, p) = page(&s, after).await;
        largest = largest.max(size);
        pages += 1;
        assert!(p.dead_letters.iter().all(|d| d.reason == "poison"));
        ids.extend(p.dead_letters.iter().map(|d| d.id));
        match p.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let after_listing = rss();
    let grown = after_listing.saturating_sub(before);
    let peak = peak_reset.then(|| status("VmHWM").saturating_sub(before));
    eprintln!(
        "RSS before {before} B, after {after_listing} B, grown {grown} B (peak while \
         listing: {peak:?} B above before, server and client together); {pages} pages, \
         largest {largest} B, warm-up page {warm} B; whole queue ~{} B",
        COUNT * PAYLOAD
    );
    assert_eq!(ids.len(), COUNT);
    ids.dedup();
    assert_eq!(ids.len(), COUNT, "every dead letter once, in order");
    assert!(pages > 1, "the queue spans several pages");
    assert!(
        (largest as u64) < 8 * 1024 * 1024,
        "a page ends after ~4 MiB of payload, got {largest} B"
    );
    assert!(
        grown < 2 * largest as u64,
        "RSS grew by {grown} B listing the queue; the largest page is {largest} B"
    );
    s.stop().await;
}
