//! `surety verify`, the full offline check that start-up no longer does: a flipped byte
//! anywhere in a sealed segment is reported (segment, offset) with exit status 1, a sound
//! directory passes with 0, nothing is written, and it refuses (2) a directory a running
//! server holds or one that holds no data.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::cli::{Server, run};
use serde_json::Value;
use surety_log::record;
use surety_log::segment::SEGMENT_HEADER_LEN;

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// Every file under `dir` with its bytes, to show nothing was changed.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.push((p.clone(), fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

fn verify_json(data: &Path, code: i32) -> Value {
    let r = run(&["verify", "--data", data.to_str().unwrap(), "--json"], b"");
    assert_eq!(
        r.code(),
        code,
        "stdout: {} stderr: {}",
        r.stdout(),
        r.stderr()
    );
    serde_json::from_str(&r.stdout()).unwrap_or_else(|e| panic!("{e}: {}", r.stdout()))
}

fn log<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["logs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["topic"] == "t" && l["log"] == name)
        .unwrap_or_else(|| panic!("no log t/{name} in {report}"))
}

#[test]
fn verify_reports_a_flipped_byte_in_a_sealed_segment_and_changes_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let data_arg = data.to_str().unwrap();
    let mut server = Server::start_at(&data, "127.0.0.1:0", &[]);
    server.ok(&[
        "topics",
        "create",
        "t",
        "--config-json",
        r#"{"segment_bytes":1048576,"max_message_bytes":4096}"#,
    ]);
    let line = "y".repeat(1000);
    let lines: String = (0..3000).map(|_| format!("{line}\n")).collect();
    server.run(&["publish", "t"], lines.as_bytes()).success();

    let busy = run(&["verify", "--data", data_arg], b"");
    assert!(
        busy.fails(2).contains("directory_in_use"),
        "{}",
        busy.stderr()
    );
    server.kill();

    // Sound: exit 0, every record counted, nothing written.
    let before = snapshot(&data);
    let report = verify_json(&data, 0);
    assert_eq!(report["corrupt_segments"], 0);
    assert_eq!(log(&report, "p0")["records"], 3000);
    assert!(log(&report, "p0")["segments"].as_u64().unwrap() >= 3);
    log(&report, "journal");
    let human = run(&["verify", "--data", data_arg], b"").success();
    assert!(human.contains("no damage found"), "{human}");
    assert!(
        snapshot(&data) == before,
        "verify changed the data directory"
    );

    // One flipped byte inside a sealed segment's records.
    let seg = segments(&data.join("topics/t/p0"))[1].clone();
    let mut bytes = fs::read(&seg).unwrap();
    let first = record::decode(&bytes[SEGMENT_HEADER_LEN..], 1 << 24).unwrap();
    let pos = SEGMENT_HEADER_LEN + first.frame_len + 40;
    bytes[pos] ^= 0x04;
    fs::write(&seg, &bytes).unwrap();

    let report = verify_json(&data, 1);
    assert_eq!(report["corrupt_segments"], 1);
    let findings = log(&report, "p0")["findings"].as_array().unwrap().clone();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0]["kind"], "corrupt");
    assert_eq!(findings[0]["segment"], seg.to_str().unwrap());
    assert_eq!(findings[0]["offset"], first.record.offset + 1);
    let human = run(&["verify", "--data", data_arg], b"");
    assert_eq!(human.code(), 1);
    let out = human.stdout();
    assert!(out.contains("CORRUPT (1 segment)"), "{out}");
    assert!(out.contains(seg.to_str().unwrap()), "{out}");

    let nowhere = run(&["verify", "--data", temp.path().to_str().unwrap()], b"");
    assert!(nowhere.fails(2).contains("not a Surety data directory"));
}
