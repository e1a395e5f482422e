//! Guards the background scrub: opening trusts sealed segments through their indexes, so
//! damage in a record nobody reads must still be found (by the scrub, reported in the
//! topic's info and its stats), never delivered, and must not stop the partitions and
//! records around it from serving.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{NO_WAIT, patch};
use surety_broker::{Broker, BrokerError, BrokerOptions, LogName, PublishMessage};
use surety_log::index::IndexFile;
use surety_log::record;
use surety_log::segment::SEGMENT_HEADER_LEN;

const TOPIC: &str = "orders";

fn options() -> BrokerOptions {
    BrokerOptions {
        // Small messages keep segments at their floor (about 130 KiB), so a few hundred
        // messages seal several.
        segment_bytes: 1 << 16,
        scrub_bytes_per_sec: surety_broker::scrub::MAX_SCRUB_BYTES_PER_SEC,
        scrub_interval: Duration::from_millis(20),
        ..BrokerOptions::default()
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// (offset, position, length) of every frame of a segment file.
fn frames(path: &Path) -> Vec<(u64, usize, usize)> {
    let bytes = fs::read(path).unwrap();
    let mut pos = SEGMENT_HEADER_LEN;
    let mut out = Vec::new();
    while let Ok(f) = record::decode(&bytes[pos..], 1 << 24) {
        out.push((f.record.offset, pos, f.frame_len));
        pos += f.frame_len;
    }
    out
}

/// Fetches and acks everything a group can get until a fetch fails; the (partition,
/// offset) pairs delivered and the error.
async fn drain(b: &Broker, group: &str) -> (BTreeSet<(u32, u64)>, BrokerError) {
    let mut delivered = BTreeSet::new();
    loop {
        match b.fetch(TOPIC, group, 100, NO_WAIT, None).await {
            Ok(batch) => {
                assert!(
                    !batch.is_empty(),
                    "a fetch came back empty before the damage"
                );
                let receipts: Vec<String> = batch.iter().map(|d| d.receipt.clone()).collect();
                for d in batch {
                    assert!(delivered.insert((d.partition, d.message.offset)));
                }
                b.ack(TOPIC, group, &receipts).await.unwrap();
            }
            Err(e) => return (delivered, e),
        }
    }
}

#[tokio::test]
async fn the_scrub_finds_a_damaged_sealed_segment_and_the_rest_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut published = BTreeSet::new();
    {
        let b = Broker::open(dir.path(), options()).unwrap();
        b.put_topic(
            TOPIC,
            &patch(r#"{"partitions":2,"max_message_bytes":1024}"#),
        )
        .await
        .unwrap();
        for i in 0..30 {
            let batch = (0..100)
                .map(|j| PublishMessage {
                    payload: format!("message {i}-{j} ").repeat(20).into_bytes(),
                    ..PublishMessage::default()
                })
                .collect();
            for r in b.publish(TOPIC, batch).await.unwrap() {
                published.insert((r.partition, r.offset));
            }
        }
        b.close();
    }
    let p0 = dir.path().join("topics").join(TOPIC).join("p0");
    let segs = segments(&p0);
    assert!(segs.len() >= 3, "{} segments", segs.len());
    let sealed = &segs[1];
    // In the segment's first index interval: open checks only the last one, so only a
    // reader or the scrub can find this.
    let idx = IndexFile::decode(&fs::read(sealed.with_extension("index")).unwrap()).unwrap();
    let (victim, pos, len) = frames(sealed)[1];
    assert!(victim < idx.entries[1].offset);
    let mut bytes = fs::read(sealed).unwrap();
    bytes[pos + len - 3] ^= 0x10;
    fs::write(sealed, bytes).unwrap();

    let b = Broker::open(dir.path(), options()).unwrap();
    assert!(b.describe(TOPIC).await.unwrap().corrupt_segments.is_empty());
    let scrubber = b.spawn_scrubber().unwrap().expect("the scrub is on");
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.scrub_stats().await.passes < 1 {
        assert!(Instant::now() < deadline, "no scrub pass within a minute");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    scrubber.stop();

    // Found, and where.
    let info = b.describe(TOPIC).await.unwrap();
    assert_eq!(
        info.corrupt_segments.len(),
        1,
        "{:?}",
        info.corrupt_segments
    );
    let found = &info.corrupt_segments[0];
    assert_eq!(found.log, LogName::Partition(0));
    assert_eq!(found.corruption.segment, *sealed);
    assert_eq!(found.corruption.offset, victim);
    assert_eq!(found.corruption.position, pos as u64);
    let stats = b.scrub_stats().await;
    for log in &stats.logs {
        let damaged = log.log == LogName::Partition(0);
        assert_eq!(log.corrupt_segments, u64::from(damaged), "{log:?}");
        if matches!(log.log, LogName::Partition(_)) {
            assert!(log.bytes_scrubbed > 0, "{log:?}");
        }
    }

    // A group gets everything but the damaged record and what follows it in its
    // partition (held back, never skipped), then the error naming the damage.
    let (delivered, err) = drain(&b, "billing").await;
    let expected: BTreeSet<(u32, u64)> = published
        .iter()
        .copied()
        .filter(|&(p, o)| p == 1 || o < victim)
        .collect();
    assert_eq!(delivered, expected);
    assert_eq!(err.code(), "data_corrupt");
    assert!(
        matches!(&err, BrokerError::Corrupt(c) if c.offset == victim),
        "{err}"
    );

    // Reading the damaged record fails; the records around it are served.
    let e = b.peek(TOPIC, 0, Some(victim), 1).await.unwrap_err();
    assert_eq!(e.code(), "data_corrupt");
    let before = b.peek(TOPIC, 0, Some(victim - 1), 10).await.unwrap();
    assert_eq!(before.messages.len(), 1, "stops before the damage");
    let later = idx.entries[1].offset;
    let after = b.peek(TOPIC, 0, Some(later), 10).await.unwrap();
    assert_eq!(after.messages[0].offset, later);
    b.close();
}
