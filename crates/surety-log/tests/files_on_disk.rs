//! What the log leaves on the real file system: every file it creates is private (0600,
//! directories 0700), and preallocation grows with the data, so a segment takes about
//! what it holds on disk rather than `segment_bytes` from its creation.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use surety_log::segment::{SEGMENT_HEADER_LEN, segment_file_name};
use surety_log::storage::{DIR_MODE, FILE_MODE, FileStorage};
use surety_log::{Log, LogConfig, NewRecord, PREALLOCATE_FIRST_BYTES, QUARANTINE_DIR};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every file and directory under `dir` (not `dir` itself).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if p.is_dir() {
            walk(&p, out);
        }
    }
}

#[test]
fn every_file_is_0600_and_every_directory_0700() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data").join("topic").join("p0");
    let cfg = LogConfig {
        segment_bytes: 8 * 1024,
        max_record_bytes: 2 * 1024,
        index_interval_bytes: 256,
        ..LogConfig::default()
    };
    {
        let log = Log::open_dir(&dir, cfg.clone()).unwrap();
        for i in 0..200u64 {
            log.append(NewRecord::new(format!("record {i} ").repeat(8)))
                .unwrap();
        }
        assert!(log.segment_count() > 2, "rolled segments (with indexes)");
    }
    // Damage a sealed segment so that repair writes a repaired copy and a quarantine
    // directory: those are the log's files too.
    let first = dir.join(segment_file_name(0));
    let mut bytes = fs::read(&first).unwrap();
    bytes[SEGMENT_HEADER_LEN + 20] ^= 1;
    fs::write(&first, bytes).unwrap();
    let (_log, report) = Log::open_with_repair(Arc::new(FileStorage), &dir, cfg).unwrap();
    assert_eq!(report.quarantined.len(), 1);

    let mut paths = Vec::new();
    walk(tmp.path().join("data").as_path(), &mut paths);
    paths.push(tmp.path().join("data"));
    assert!(paths.iter().any(|p| p.ends_with(QUARANTINE_DIR)));
    assert!(
        paths
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "index"))
    );
    for p in &paths {
        let want = if p.is_dir() { DIR_MODE } else { FILE_MODE };
        assert_eq!(mode(p), want, "{} has mode {:o}", p.display(), mode(p));
    }
    assert_eq!((FILE_MODE, DIR_MODE), (0o600, 0o700));
}

/// Length and allocated bytes of a file.
fn size(path: &Path) -> (u64, u64) {
    let m = fs::metadata(path).unwrap();
    (m.len(), m.blocks() * 512)
}

#[test]
fn preallocation_starts_small_and_doubles_up_to_the_segment_size() {
    const SEGMENT: u64 = 1024 * 1024;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let cfg = LogConfig {
        segment_bytes: SEGMENT,
        max_record_bytes: 64 * 1024,
        ..LogConfig::default()
    };
    // The newest segment file: the active one.
    let active = |_: &Log| {
        let mut v = Vec::new();
        walk(&dir, &mut v);
        v.retain(|p| p.extension().is_some_and(|e| e == "log"));
        v.sort();
        v.pop().unwrap()
    };
    let log = Log::open_dir(&dir, cfg.clone()).unwrap();
    let seg0 = dir.join(segment_file_name(0));
    let (len, allocated) = size(&seg0);
    if len == SEGMENT_HEADER_LEN as u64 {
        eprintln!("SKIPPED: this file system cannot preallocate (posix_fallocate)");
        return;
    }
    // An empty log costs its first extent, not a whole segment.
    assert_eq!(len, PREALLOCATE_FIRST_BYTES);
    assert!(allocated <= 2 * PREALLOCATE_FIRST_BYTES, "{allocated}");

    // 1000-byte payloads: the reservation doubles when the data passes its end, so it
    // is always at least the data and less than twice it (beyond the first extent).
    let record = vec![7u8; 1000];
    let mut lens = vec![len];
    while log.segment_count() == 1 {
        log.append(NewRecord::new(record.clone())).unwrap();
        let data = log.size_bytes();
        let (len, _) = size(&seg0);
        if log.segment_count() == 1 {
            assert!(len >= data, "reserved {len} < data {data}");
            assert!(
                len <= (2 * data).max(PREALLOCATE_FIRST_BYTES),
                "reserved {len} for {data}"
            );
            if lens.last() != Some(&len) {
                lens.push(len);
            }
        }
    }
    let expect: Vec<u64> = std::iter::successors(Some(PREALLOCATE_FIRST_BYTES), |l| {
        (*l < SEGMENT).then(|| (2 * l).min(SEGMENT))
    })
    .collect();
    assert_eq!(lens, expect);
    // Sealed: trimmed to its data. The log is busy: the next segment is reserved whole.
    let sealed = size(&seg0).0;
    assert!(sealed <= SEGMENT && sealed > SEGMENT - 2000, "{sealed}");
    assert_eq!(size(&active(&log)).0, SEGMENT);
}

#[test]
fn a_log_reopened_mid_growth_keeps_every_record_and_grows_on() {
    const SEGMENT: u64 = 1024 * 1024;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let cfg = LogConfig {
        segment_bytes: SEGMENT,
        max_record_bytes: 64 * 1024,
        ..LogConfig::default()
    };
    let seg0 = dir.join(segment_file_name(0));
    let record = vec![7u8; 1000];
    let log = Log::open_dir(&dir, cfg.clone()).unwrap();
    if size(&seg0).0 == SEGMENT_HEADER_LEN as u64 {
        eprintln!("SKIPPED: this file system cannot preallocate (posix_fallocate)");
        return;
    }
    for _ in 0..100 {
        log.append(NewRecord::new(record.clone())).unwrap();
    }
    let grown = size(&seg0).0;
    assert!(
        grown > PREALLOCATE_FIRST_BYTES && grown < SEGMENT,
        "{grown}"
    );
    drop(log);
    let log = Log::open_dir(&dir, cfg).unwrap();
    assert_eq!(log.durable_end(), 100);
    assert!(log.recovery().truncated_tail.is_none());
    let all = log.read_from(0, usize::MAX, usize::MAX).unwrap();
    assert_eq!(all.len(), 100);
    assert!(all.iter().all(|r| r.payload == record));
    for _ in 0..200 {
        log.append(NewRecord::new(record.clone())).unwrap();
    }
    assert_eq!(log.durable_end(), 300);
    assert!(
        size(&seg0).0 > grown,
        "the reservation grows on after the reopen"
    );
}

#[test]
fn a_large_first_record_gets_room_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let cfg = LogConfig {
        segment_bytes: 4 * 1024 * 1024,
        max_record_bytes: 1024 * 1024,
        ..LogConfig::default()
    };
    let log = Log::open_dir(&dir, cfg.clone()).unwrap();
    let seg0 = dir.join(segment_file_name(0));
    if size(&seg0).0 == SEGMENT_HEADER_LEN as u64 {
        eprintln!("SKIPPED: this file system cannot preallocate (posix_fallocate)");
        return;
    }
    log.append(NewRecord::new(vec![1u8; 500 * 1024])).unwrap();
    let len = size(&seg0).0;
    assert!(len >= log.size_bytes() && len < 1024 * 1024, "{len}");
    drop(log);
    let log = Log::open_dir(&dir, cfg).unwrap();
    assert_eq!(log.read(0).unwrap().unwrap().payload.len(), 500 * 1024);
}
