//! Append, read, reopen, roll and retention on real files: the everyday contract.

use std::sync::Arc;
use std::time::Duration;

use surety_log::{AppendError, Log, LogConfig, NewRecord, ReadError, RetentionPolicy};

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        max_record_bytes: 4 * 1024,
        index_interval_bytes: 512,
        ..LogConfig::default()
    }
}

fn payload(i: u64) -> Vec<u8> {
    format!("record-{i:06}-")
        .repeat(1 + (i % 7) as usize)
        .into_bytes()
}

#[test]
fn appended_records_read_back_across_segments_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open_dir(dir.path(), small_config()).unwrap();
        for i in 0..500 {
            let off = log
                .append(
                    NewRecord::new(payload(i))
                        .with_key(i.to_le_bytes())
                        .with_header("n", i.to_string()),
                )
                .unwrap();
            assert_eq!(off, i);
        }
        assert!(
            log.segment_count() > 3,
            "expected rolls, got {}",
            log.segment_count()
        );
        assert_eq!(log.durable_end(), 500);
    }
    let log = Log::open_dir(dir.path(), small_config()).unwrap();
    assert_eq!(log.durable_end(), 500);
    for i in [0u64, 1, 77, 250, 499] {
        let r = log.read(i).unwrap().unwrap();
        assert_eq!(r.offset, i);
        assert_eq!(r.payload, payload(i));
        assert_eq!(r.key.as_deref(), Some(&i.to_le_bytes()[..]));
        assert_eq!(r.headers[0].value, i.to_string().into_bytes());
    }
    let all = log.read_from(0, usize::MAX, usize::MAX).unwrap();
    assert_eq!(all.len(), 500);
    assert!(all.iter().enumerate().all(|(i, r)| r.offset == i as u64));
    assert_eq!(log.read(500).unwrap(), None);
    assert_eq!(log.append(NewRecord::new("after reopen")).unwrap(), 500);
}

#[test]
fn concurrent_appenders_get_unique_dense_offsets_and_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open_dir(dir.path(), LogConfig::default()).unwrap());
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..100)
                    .map(|i| {
                        let p = format!("{t}:{i}");
                        (log.append(NewRecord::new(p.clone())).unwrap(), p)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<(u64, String)> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort();
    assert_eq!(all.len(), 1600);
    for (i, (off, p)) in all.iter().enumerate() {
        assert_eq!(*off, i as u64);
        assert_eq!(log.read(*off).unwrap().unwrap().payload, p.as_bytes());
    }
    let stats = log.stats();
    assert_eq!(stats.records_appended, 1600);
    assert!(stats.syncs <= 1600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_appenders_are_answered_after_sync() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open_dir(dir.path(), LogConfig::default()).unwrap());
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let off = log
                .append_async(NewRecord::new(t.to_le_bytes()))
                .await
                .unwrap();
            // Acknowledged means durable means readable.
            assert!(log.durable_end() > off);
            off
        }));
    }
    let mut offs = Vec::new();
    for t in tasks {
        offs.push(t.await.unwrap());
    }
    offs.sort();
    assert_eq!(offs, (0..64).collect::<Vec<_>>());
}

#[test]
fn oversized_and_empty_appends_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_dir(dir.path(), small_config()).unwrap();
    let err = log.append(NewRecord::new(vec![0u8; 5000])).unwrap_err();
    assert!(
        matches!(err, AppendError::TooLarge { max: 4096, .. }),
        "{err:?}"
    );
    assert!(matches!(
        log.append_batch(vec![]),
        Err(AppendError::EmptyBatch)
    ));
    assert_eq!(log.durable_end(), 0);
    assert_eq!(log.append(NewRecord::new("ok")).unwrap(), 0);
}

#[test]
fn batch_append_gets_consecutive_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_dir(dir.path(), small_config()).unwrap();
    log.append(NewRecord::new("a")).unwrap();
    let range = log
        .append_batch((0..50).map(|i| NewRecord::new(payload(i))).collect())
        .unwrap();
    assert_eq!(range, 1..51);
}

#[test]
fn retention_deletes_only_whole_segments_below_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_dir(dir.path(), small_config()).unwrap();
    for i in 0..400 {
        log.append(NewRecord::new(payload(i))).unwrap();
    }
    let segments = log.segment_count();
    let keep_all = RetentionPolicy {
        max_bytes: Some(0),
        max_age: None,
    };
    // A floor of 0 protects everything, however small max_bytes is.
    let out = log.apply_retention(0, &keep_all).unwrap();
    assert_eq!(out.deleted_segments, 0);
    // A floor in the middle deletes only segments wholly below it.
    let out = log.apply_retention(200, &keep_all).unwrap();
    assert!(out.deleted_segments > 0);
    assert!(out.start_offset <= 200 && out.start_offset > 0, "{out:?}");
    assert!(matches!(log.read(0), Err(ReadError::BelowStart { .. })));
    assert_eq!(log.read(200).unwrap().unwrap().payload, payload(200));
    // No policy: nothing is deleted even below the floor.
    let before = log.segment_count();
    assert_eq!(
        log.apply_retention(400, &RetentionPolicy::default())
            .unwrap()
            .deleted_segments,
        0
    );
    // Age: everything is "old" with a zero max_age; the active segment always stays.
    let old = RetentionPolicy {
        max_age: Some(Duration::ZERO),
        max_bytes: None,
    };
    std::thread::sleep(Duration::from_millis(5));
    log.apply_retention(u64::MAX, &old).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert!(before < segments);
    drop(log);
    let log = Log::open_dir(dir.path(), small_config()).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.durable_end(), 400);
    assert_eq!(log.read(399).unwrap().unwrap().payload, payload(399));
}
