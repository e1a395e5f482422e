//! Guards what a damaged record looks like from outside once opening no longer checks
//! sealed segments: the scrub finds it and `/metrics` counts it (what the
//! `SuretyCorruptSegment` alert watches), the topic names it, and a read of it is
//! `500 data_corrupt` rather than data, while the rest of the topic keeps serving.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{TestServer, assert_error, eventually, metric};
use reqwest::StatusCode;
use serde_json::json;
use surety_log::index::IndexFile;
use surety_log::record;
use surety_log::segment::SEGMENT_HEADER_LEN;

/// The second segment of partition 0 (sealed), and the offset, position and length of
/// its second record (in its first index interval, which open does not check).
fn victim(data: &Path) -> (PathBuf, u64, usize, usize) {
    let p0 = data.join("topics/t/p0");
    let mut segs: Vec<PathBuf> = fs::read_dir(&p0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 3, "{} segments", segs.len());
    let seg = segs[1].clone();
    let bytes = fs::read(&seg).unwrap();
    let first = record::decode(&bytes[SEGMENT_HEADER_LEN..], 1 << 24).unwrap();
    let pos = SEGMENT_HEADER_LEN + first.frame_len;
    let second = record::decode(&bytes[pos..], 1 << 24).unwrap();
    let idx = IndexFile::decode(&fs::read(seg.with_extension("index")).unwrap()).unwrap();
    assert!(second.record.offset < idx.entries[1].offset);
    (seg, second.record.offset, pos, second.frame_len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_is_found_by_the_scrub_counted_named_and_never_served() {
    let s = TestServer::start().await;
    // The smallest segments a topic may have (1 MiB, given small messages): 3000
    // messages of 1 KiB fill more than two.
    s.topic(
        "t",
        json!({"segment_bytes": 1 << 20, "max_message_bytes": 4096}),
    )
    .await;
    let text = "x".repeat(1000);
    for _ in 0..8 {
        let texts: Vec<&str> = vec![text.as_str(); 500];
        s.publish_texts("t", &texts).await;
    }
    let mut found = None;
    let s = s
        .restart_with(|data| {
            let (seg, offset, pos, len) = victim(data);
            let mut bytes = fs::read(&seg).unwrap();
            bytes[pos + len - 5] ^= 0x01;
            fs::write(&seg, bytes).unwrap();
            found = Some((seg, offset, pos));
        })
        .await;
    let (seg, offset, pos) = found.unwrap();

    // The scrub runs at the default rate and starts at once.
    eventually("a scrub pass", || async {
        metric(&s.metrics().await, "surety_scrub_passes_total").is_some_and(|n| n >= 1.0)
    })
    .await;
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, r#"surety_scrub_corrupt_segments{topic="t",log="p0"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"surety_scrub_corrupt_segments{topic="t",log="journal"}"#
        ),
        Some(0.0),
        "{m}"
    );
    assert!(
        metric(&m, r#"surety_scrub_bytes_total{topic="t",log="p0"}"#).is_some_and(|b| b >= 2e6)
    );

    let (status, t) = s.get("/v1/topics/t").await;
    assert_eq!(status, StatusCode::OK);
    let c = &t["corrupt_segments"];
    assert_eq!(c.as_array().map(Vec::len), Some(1), "{t}");
    assert_eq!(c[0]["log"], "p0");
    assert_eq!(c[0]["segment"], seg.file_name().unwrap().to_str().unwrap());
    assert_eq!(
        (c[0]["offset"].as_u64(), c[0]["position"].as_u64()),
        (Some(offset), Some(pos as u64))
    );

    let peek = |o: u64| format!("/v1/topics/t/messages?partition=0&offset={o}&limit=1");
    assert_error(
        &s.get(&peek(offset)).await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "data_corrupt",
    );
    let (status, v) = s.get(&peek(offset - 1)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = s.get(&peek(0)).await;
    assert_eq!(
        (status, v["messages"][0]["offset"].as_u64()),
        (StatusCode::OK, Some(0))
    );
    s.stop().await;
}
