//! Guards G5/G6 against damaged files: a torn tail is cut at exactly the last valid
//! record, a bit flip inside acknowledged data is never served or silently dropped (open
//! fails naming segment and offset; repair quarantines and reports the exact lost
//! offsets; with sealed segments trusted at open, reads, the scrub and the offline check
//! report it), a missing or damaged index is rebuilt from the log, and an index is never
//! trusted beyond what was checked against the segment.

use std::fs::{self, OpenOptions};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use surety_log::index::IndexFile;
use surety_log::record::{self, MIN_FRAME_LEN};
use surety_log::segment::{SEGMENT_HEADER_LEN, segment_file_name};
use surety_log::storage::FileStorage;
use surety_log::{
    Corruption, Finding, Log, LogConfig, NewRecord, OpenError, QUARANTINE_DIR, ReadError,
    VerifyOnOpen, verify_dir,
};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 8 * 1024,
        max_record_bytes: 2 * 1024,
        index_interval_bytes: 256,
        preallocate: false,
        ..LogConfig::default()
    }
}

fn payload(i: u64) -> Vec<u8> {
    format!("payload {i} ")
        .repeat(3 + (i % 5) as usize)
        .into_bytes()
}

/// Appends `n` records one at a time (each in its own synced batch).
fn build(dir: &Path, cfg: &LogConfig, n: u64) {
    let log = Log::open_dir(dir, cfg.clone()).unwrap();
    for i in 0..n {
        assert_eq!(log.append(NewRecord::new(payload(i))).unwrap(), i);
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

/// (offset, position, frame length) of every record in a segment file.
fn frames(path: &Path) -> Vec<(u64, usize, usize)> {
    let bytes = fs::read(path).unwrap();
    let mut pos = SEGMENT_HEADER_LEN;
    let mut out = Vec::new();
    while let Ok(f) = record::decode(&bytes[pos..], 1 << 20) {
        out.push((f.record.offset, pos, f.frame_len));
        pos += f.frame_len;
    }
    out
}

fn flip_bit(path: &Path, byte: usize, bit: u8) {
    let mut bytes = fs::read(path).unwrap();
    bytes[byte] ^= 1 << bit;
    fs::write(path, bytes).unwrap();
}

fn assert_intact(log: &Log, offsets: impl IntoIterator<Item = u64>) {
    for i in offsets {
        assert_eq!(
            log.read(i).unwrap().unwrap().payload,
            payload(i),
            "offset {i}"
        );
    }
}

#[test]
fn truncating_the_tail_at_every_byte_of_the_last_record_keeps_all_before_it() {
    let cfg = config();
    let src = tempfile::tempdir().unwrap();
    build(src.path(), &cfg, 12);
    let seg = segments(src.path()).pop().unwrap();
    let &(last_offset, start, len) = frames(&seg).last().unwrap();
    for cut in start..start + len {
        let dir = tempfile::tempdir().unwrap();
        for entry in fs::read_dir(src.path()).unwrap() {
            let p = entry.unwrap().path();
            fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
        let copy = dir.path().join(seg.file_name().unwrap());
        OpenOptions::new()
            .write(true)
            .open(&copy)
            .unwrap()
            .set_len(cut as u64)
            .unwrap();
        let log = Log::open_dir(dir.path(), cfg.clone()).unwrap();
        assert_eq!(log.durable_end(), last_offset, "cut at byte {cut}");
        assert_intact(&log, 0..last_offset);
        if cut > start {
            let t = log
                .recovery()
                .truncated_tail
                .clone()
                .expect("truncation reported");
            assert_eq!(t.position, start as u64);
        }
        // The log continues at the cut: the next append reuses the lost offset.
        assert_eq!(log.append(NewRecord::new("next")).unwrap(), last_offset);
    }
}

#[test]
fn a_bit_flip_in_acknowledged_data_fails_open_and_repair_reports_the_lost_offset() {
    let cfg = config();
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), &cfg, 20);
    let seg = segments(dir.path()).pop().unwrap();
    let (victim, pos, len) = frames(&seg)[5];
    // Flip a payload bit, a header-field bit and a length bit: all must be caught.
    for (byte, bit) in [(pos + len - 3, 2u8), (pos + 9, 0), (pos + 1, 4)] {
        let copy = tempfile::tempdir().unwrap();
        fs::copy(&seg, copy.path().join(seg.file_name().unwrap())).unwrap();
        let copy_seg = copy.path().join(seg.file_name().unwrap());
        flip_bit(&copy_seg, byte, bit);

        let err = Log::open_dir(copy.path(), cfg.clone()).unwrap_err();
        let OpenError::Corrupt(c) = err else {
            panic!("expected corruption, got {err:?}")
        };
        assert_eq!(c.segment, copy_seg);
        assert_eq!(c.offset, victim);
        assert_eq!(c.position, pos as u64);

        let (log, report) =
            Log::open_with_repair(Arc::new(FileStorage), copy.path(), cfg.clone()).unwrap();
        assert_eq!(report.quarantined.len(), 1);
        let q = &report.quarantined[0];
        assert_eq!(q.lost_offsets, vec![victim..=victim], "flip at byte {byte}");
        assert_eq!(q.kept_records, 19);
        assert!(q.moved_to.starts_with(copy.path().join(QUARANTINE_DIR)));
        assert!(q.moved_to.exists());
        assert_eq!(log.read(victim).unwrap(), None);
        assert_intact(&log, (0..20).filter(|&i| i != victim));
        assert_eq!(log.append(NewRecord::new("after repair")).unwrap(), 20);
        drop(log);
        // Repaired data opens cleanly without repair.
        let log = Log::open_dir(copy.path(), cfg.clone()).unwrap();
        assert_eq!(log.read(20).unwrap().unwrap().payload, b"after repair");
    }
}

#[test]
fn a_bit_flip_in_a_sealed_segment_is_caught_at_open_or_on_read() {
    let cfg = config();
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), &cfg, 200);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    let sealed = &segs[1];
    let (victim, pos, len) = frames(sealed)[3];
    flip_bit(sealed, pos + len - 1, 7);

    let err = Log::open_dir(dir.path(), cfg.clone()).unwrap_err();
    assert!(
        matches!(&err, OpenError::Corrupt(c) if c.segment == *sealed && c.offset == victim),
        "{err:?}"
    );

    // Trusting sealed segments at open still never serves the damaged record.
    let fast = LogConfig {
        verify_on_open: VerifyOnOpen::ActiveSegment,
        ..cfg.clone()
    };
    let log = Log::open_dir(dir.path(), fast).unwrap();
    let err = log.read(victim).unwrap_err();
    assert!(
        matches!(&err, ReadError::Corrupt(c) if c.segment == *sealed),
        "{err:?}"
    );
    // A read reaching the damage stops before it.
    let got = log.read_from(victim - 2, 10, usize::MAX).unwrap();
    assert_eq!(got.len(), 2);
    let err = log.read_from(victim, 10, usize::MAX).unwrap_err();
    assert!(matches!(err, ReadError::Corrupt(_)));
    drop(log);

    let (log, report) = Log::open_with_repair(Arc::new(FileStorage), dir.path(), cfg).unwrap();
    assert_eq!(report.quarantined[0].lost_offsets, vec![victim..=victim]);
    assert_intact(&log, (0..200).filter(|&i| i != victim));
}

#[test]
fn a_damaged_header_of_a_sealed_segment_is_corruption_and_repair_keeps_its_records() {
    let cfg = config();
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), &cfg, 200);
    let segs = segments(dir.path());
    let sealed = &segs[1];
    let offsets: Vec<u64> = frames(sealed).iter().map(|f| f.0).collect();
    flip_bit(sealed, 3, 1);
    let err = Log::open_dir(dir.path(), cfg.clone()).unwrap_err();
    assert!(
        matches!(&err, OpenError::Corrupt(c) if c.segment == *sealed && c.position == 0),
        "{err:?}"
    );
    let (log, report) = Log::open_with_repair(Arc::new(FileStorage), dir.path(), cfg).unwrap();
    assert_eq!(report.quarantined[0].lost_offsets, vec![]);
    assert_eq!(report.quarantined[0].kept_records, offsets.len() as u64);
    assert_intact(&log, 0..200);
}

#[test]
fn a_missing_or_damaged_index_is_rebuilt_from_the_log() {
    let cfg = config();
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), &cfg, 300);
    let indexes: Vec<PathBuf> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "index"))
        .collect();
    assert!(indexes.len() >= 2, "sealed segments have index files");
    let original = fs::read(&indexes[0]).unwrap();
    for verify in [VerifyOnOpen::All, VerifyOnOpen::ActiveSegment] {
        let cfg = LogConfig {
            verify_on_open: verify,
            ..cfg.clone()
        };
        // Deleted.
        for p in &indexes {
            fs::remove_file(p).unwrap();
        }
        let log = Log::open_dir(dir.path(), cfg.clone()).unwrap();
        assert_intact(&log, 0..300);
        drop(log);
        assert_eq!(fs::read(&indexes[0]).unwrap(), original, "index rewritten");
        // Damaged: a flipped bit, a truncation, and another segment's index.
        flip_bit(&indexes[0], 60, 3);
        let len = fs::metadata(&indexes[1]).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&indexes[1])
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let log = Log::open_dir(dir.path(), cfg.clone()).unwrap();
        assert_intact(&log, 0..300);
        drop(log);
        fs::copy(&indexes[1], &indexes[0]).unwrap();
        let log = Log::open_dir(dir.path(), cfg.clone()).unwrap();
        assert_intact(&log, 0..300);
        drop(log);
        assert_eq!(fs::read(&indexes[0]).unwrap(), original);
    }
}

#[test]
fn a_segment_whose_creation_never_completed_is_removed() {
    let cfg = config();
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), &cfg, 10);
    // A crash right after creating the next segment's file, before its header was synced.
    let half = dir.path().join(segment_file_name(10));
    fs::write(&half, &b"SURETYLG\x01"[..]).unwrap();
    let log = Log::open_dir(dir.path(), cfg).unwrap();
    assert_eq!(
        log.recovery().removed_incomplete_segment.as_deref(),
        Some(half.as_path())
    );
    assert!(!half.exists());
    assert_intact(&log, 0..10);
    assert_eq!(log.append(NewRecord::new("x")).unwrap(), 10);
}

#[test]
fn a_torn_tail_leaves_nothing_a_later_crash_could_resurrect() {
    // Records 0..=2 written in one batch that was torn: 1 is garbage, 0 and 2 landed.
    let cfg = config();
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_dir(dir.path(), cfg.clone()).unwrap();
    let same = |i: u8| NewRecord::new(vec![i; 100]);
    log.append_batch(vec![same(0), same(1), same(2)]).unwrap();
    drop(log);
    let seg = segments(dir.path()).pop().unwrap();
    let (_, pos1, _) = frames(&seg)[1];
    flip_bit(&seg, pos1 + 20, 0);
    let log = Log::open_dir(dir.path(), cfg.clone()).unwrap();
    assert_eq!(
        log.durable_end(),
        1,
        "torn batch cut after its last valid prefix record"
    );
    // Re-append a frame of exactly the torn one's size: if the old record 2 were still
    // on disk behind it, the next open would chain into it and serve a phantom.
    assert_eq!(log.append(same(9)).unwrap(), 1);
    drop(log);
    let log = Log::open_dir(dir.path(), cfg).unwrap();
    assert_eq!(log.durable_end(), 2);
    assert_eq!(log.read(1).unwrap().unwrap().payload, vec![9; 100]);
}

#[test]
fn a_damaged_last_record_with_nothing_after_it_is_treated_as_a_torn_tail() {
    // The documented ambiguity (docs/format.md, "Recovery"): the last record of the last
    // synced batch cannot be told apart from a torn write, so it is truncated, reported.
    let cfg = config();
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), &cfg, 5);
    let seg = segments(dir.path()).pop().unwrap();
    let (_, pos, len) = *frames(&seg).last().unwrap();
    flip_bit(&seg, pos + len - 1, 0);
    let log = Log::open_dir(dir.path(), cfg).unwrap();
    assert_eq!(log.durable_end(), 4);
    assert!(log.recovery().truncated_tail.is_some());
    assert!(MIN_FRAME_LEN < len);
}

#[test]
fn an_incomplete_last_segment_after_a_trusted_sealed_one_still_gets_tail_recovery() {
    // Found by fuzzing: with VerifyOnOpen::ActiveSegment the sealed segment was trusted
    // via its index, then became the active one when the half-created segment after it
    // was removed — without the tail scan an active segment needs.
    let cfg = LogConfig {
        verify_on_open: VerifyOnOpen::ActiveSegment,
        ..config()
    };
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), &cfg, 200);
    let segs = segments(dir.path());
    let last = segs.last().unwrap();
    let last_base: u64 = frames(last)[0].0;
    fs::remove_file(last).unwrap();
    let _ = fs::remove_file(dir.path().join(format!("{last_base:020}.index")));
    let prev = &segs[segs.len() - 2];
    // Damage the previous (sealed, index-trusted) segment's last record.
    let (_, pos, len) = *frames(prev).last().unwrap();
    flip_bit(prev, pos + len - 1, 0);
    fs::write(last, &b"SURETY"[..]).unwrap();
    let log = Log::open_dir(dir.path(), cfg).unwrap();
    assert!(log.recovery().removed_incomplete_segment.is_some());
    // The damaged last record was cut as a torn tail, not served.
    let end = log.durable_end();
    assert!(end < last_base);
    for i in 0..end {
        assert_eq!(log.read(i).unwrap().unwrap().payload, payload(i));
    }
    assert_eq!(log.append(NewRecord::new("next")).unwrap(), end);
}

fn trusting() -> LogConfig {
    LogConfig {
        verify_on_open: VerifyOnOpen::ActiveSegment,
        ..config()
    }
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        fs::copy(&p, to.path().join(p.file_name().unwrap())).unwrap();
    }
    to
}

fn index_of(segment: &Path) -> PathBuf {
    segment.with_extension("index")
}

fn corrupt_open(dir: &Path, cfg: &LogConfig) -> Corruption {
    match Log::open_dir(dir, cfg.clone()) {
        Err(OpenError::Corrupt(c)) => *c,
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn an_index_that_verifies_but_points_at_the_wrong_record_is_never_trusted_to_skip() {
    let cfg = trusting();
    let src = tempfile::tempdir().unwrap();
    build(src.path(), &cfg, 300);
    let sealed = segments(src.path())[1].clone();
    let original = fs::read(index_of(&sealed)).unwrap();
    let idx = IndexFile::decode(&original).unwrap();
    assert!(idx.entries.len() >= 4, "{} entries", idx.entries.len());
    let positions: Vec<(u64, u32)> = frames(&sealed)
        .iter()
        .map(|&(o, p, _)| (o, p as u32))
        .collect();
    // A middle entry, so that what open checks (first and last entries, last interval)
    // still agrees and only a read can notice.
    let k = 1;
    let e = idx.entries[k];
    let after = positions.iter().find(|&&(_, p)| p > e.position).unwrap().1;
    assert!(e.offset - 1 > idx.entries[k - 1].offset);
    assert!(after < idx.entries[k + 1].position);
    let lies = [
        // Names the offset before the record it points at.
        (e.offset - 1, e.position),
        // Names its offset but points at the record after it.
        (e.offset, after),
    ];
    for (offset, position) in lies {
        let dir = copy_dir(src.path());
        let ix = index_of(&dir.path().join(sealed.file_name().unwrap()));
        let mut bad = idx.clone();
        bad.entries[k] = surety_log::index::IndexEntry { offset, position };
        // Encoded with valid CRCs: only the check against the segment can catch it.
        fs::write(&ix, bad.encode()).unwrap();
        let log = Log::open_dir(dir.path(), cfg.clone()).unwrap();
        assert_eq!(
            fs::read(&ix).unwrap(),
            bad.encode(),
            "open trusted the index, so the reads below are what is tested"
        );
        for o in e.offset - 1..=e.offset + 1 {
            assert_eq!(
                log.read(o).unwrap().map(|r| r.payload),
                Some(payload(o)),
                "offset {o}, entry lying ({offset}, {position})"
            );
        }
        let got: Vec<u64> = log
            .read_from(e.offset - 1, 3, usize::MAX)
            .unwrap()
            .iter()
            .map(|r| r.offset)
            .collect();
        assert_eq!(got, vec![e.offset - 1, e.offset, e.offset + 1]);
        assert_intact(&log, 0..300);
        drop(log);
        assert_eq!(
            fs::read(&ix).unwrap(),
            original,
            "the lying index was rebuilt from the segment"
        );
    }
}

#[test]
fn a_sealed_segment_whose_last_records_or_length_disagree_with_its_index_is_rescanned() {
    let cfg = trusting();
    let src = tempfile::tempdir().unwrap();
    build(src.path(), &cfg, 300);
    let name = segments(src.path())[1].file_name().unwrap().to_owned();
    let sealed_frames = frames(&segments(src.path())[1]);
    let &(last, last_pos, last_len) = sealed_frames.last().unwrap();
    let seg_len = (last_pos + last_len) as u64;

    // Damage the open-time check must find, each in a fresh copy: (what, change, the
    // offset corruption is reported at).
    type Change = Box<dyn Fn(&Path)>;
    let damaged: Vec<(&str, Change, u64)> = vec![
        (
            "a flipped bit in the last record",
            Box::new(move |seg| flip_bit(seg, last_pos + last_len - 2, 5)),
            last,
        ),
        (
            "cut at the start of the last record",
            Box::new(move |seg| truncate(seg, last_pos as u64)),
            last,
        ),
        (
            "cut inside the last record",
            Box::new(move |seg| truncate(seg, (last_pos + 20) as u64)),
            last,
        ),
        (
            "garbage appended",
            Box::new(move |seg| {
                let f = OpenOptions::new().write(true).open(seg).unwrap();
                f.write_all_at(&[0xA5; 64], seg_len).unwrap();
            }),
            last + 1,
        ),
    ];
    for (what, change, offset) in damaged {
        let dir = copy_dir(src.path());
        let seg = dir.path().join(&name);
        change(&seg);
        let c = corrupt_open(dir.path(), &cfg);
        assert_eq!(
            (c.segment.as_path(), c.offset),
            (seg.as_path(), offset),
            "{what}: {c:?}"
        );
    }

    // Disagreements that are the index's own fault or harmless: rescanned, the index
    // rewritten from the segment, everything served.
    let dir = copy_dir(src.path());
    let seg = dir.path().join(&name);
    let ix = index_of(&seg);
    let original = fs::read(&ix).unwrap();
    let mut lying = IndexFile::decode(&original).unwrap();
    lying.next_offset += 1;
    fs::write(&ix, lying.encode()).unwrap();
    let log = Log::open_dir(dir.path(), cfg.clone()).unwrap();
    assert_intact(&log, 0..300);
    drop(log);
    assert_eq!(
        fs::read(&ix).unwrap(),
        original,
        "next offset: rescanned and rewritten"
    );

    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&[0; 100], seg_len).unwrap();
    let log = Log::open_dir(dir.path(), cfg).unwrap();
    assert_intact(&log, 0..300);
    assert_eq!(log.append(NewRecord::new(payload(300))).unwrap(), 300);
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_is_reported_by_scrub_verify_and_reads_never_as_data() {
    let cfg = trusting();
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), &cfg, 300);
    let segs = segments(dir.path());
    let sealed = &segs[1];
    let sealed_frames = frames(sealed);
    let base = sealed_frames[0].0;
    // In the first index interval: open checks only the last one, so the damage is left
    // for reads, the scrub and the offline check to find.
    let (victim, pos, len) = sealed_frames[2];
    let idx = IndexFile::decode(&fs::read(index_of(sealed)).unwrap()).unwrap();
    assert!(victim < idx.entries[1].offset);
    flip_byte(sealed, pos + len - 4);

    // The offline check, changing nothing.
    let before: Vec<Vec<u8>> = segs.iter().map(|s| fs::read(s).unwrap()).collect();
    let check = verify_dir(&FileStorage, dir.path(), &cfg, &mut |_| {}).unwrap();
    let found: Vec<&Corruption> = check.corruptions().collect();
    assert_eq!(found.len(), 1, "{check:?}");
    assert_eq!((&found[0].segment, found[0].offset), (sealed, victim));
    assert_eq!((found[0].position), pos as u64);
    assert!(check.segments.iter().all(|s| s.finding.is_none()
        || matches!(&s.finding, Some(Finding::Corrupt(c)) if c.segment == *sealed)));
    let after: Vec<Vec<u8>> = segs.iter().map(|s| fs::read(s).unwrap()).collect();
    assert!(before == after, "verify_dir wrote to the log");

    // Open trusts the segment; a read reaching the damage fails, naming it.
    let log = Log::open_dir(dir.path(), cfg.clone()).unwrap();
    assert!(log.corrupt_segments().is_empty());
    for n in [1, 10] {
        match log.read_from(victim, n, usize::MAX) {
            Err(ReadError::Corrupt(c)) => {
                assert_eq!(
                    (&c.segment, c.offset, c.position),
                    (sealed, victim, pos as u64)
                )
            }
            other => panic!("expected corruption, got {other:?}"),
        }
    }
    // A read that reaches the damage stops before it: all it returns verified.
    for from in [victim - 2, base] {
        let got = log.read_from(from, usize::MAX, usize::MAX).unwrap();
        let offsets: Vec<u64> = got.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (from..victim).collect::<Vec<_>>());
        assert!(got.iter().all(|r| r.payload == payload(r.offset)));
    }
    assert_eq!(log.corrupt_segments().len(), 1);
    assert_eq!(log.corrupt_segments()[0].offset, victim);
    // The rest of the log keeps serving: the records before the damage, those past the
    // next index entry of the segment, and every other segment.
    let past = idx.entries[1].offset;
    assert_intact(&log, (0..300).filter(|&o| o < victim || o >= past));
    drop(log);

    // The scrub finds it with no read, and passes every other sealed segment.
    let log = Log::open_dir(dir.path(), cfg).unwrap();
    // A check its caller stops judges nothing.
    assert!(
        log.verify_sealed(base, &mut |_| ControlFlow::Break(()))
            .unwrap()
            .is_none()
    );
    assert!(log.corrupt_segments().is_empty());
    let sealed_bases = log.sealed_segments();
    assert!(sealed_bases.len() >= 2 && sealed_bases.contains(&base));
    for b in sealed_bases {
        let mut paced = 0;
        let checked = log
            .verify_sealed(b, &mut |n| {
                paced += n;
                ControlFlow::Continue(())
            })
            .unwrap()
            .unwrap();
        assert_eq!(checked.base_offset, b);
        if b == base {
            let c = checked.corruption.expect("scrub finds the flipped byte");
            assert_eq!((c.offset, c.position), (victim, pos as u64));
        } else {
            assert_eq!(checked.corruption, None, "segment {b}");
            assert_eq!(paced + SEGMENT_HEADER_LEN as u64, checked.bytes);
        }
    }
    assert_eq!(log.corrupt_segments().len(), 1);
    assert!(
        log.verify_sealed(299, &mut |_| ControlFlow::Continue(()))
            .unwrap()
            .is_none(),
        "the active segment is not sealed"
    );
}

fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn flip_byte(path: &Path, byte: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[byte] ^= 0xFF;
    fs::write(path, bytes).unwrap();
}
