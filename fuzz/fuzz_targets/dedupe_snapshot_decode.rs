//! Fuzzes the broker's decoder of the dedupe snapshot (`dedupe.snapshot`, read back from
//! disk at open): `decode_snapshot`, and `DedupeTable::from_snapshot` on whatever it
//! decodes to.
//!
//! Properties: nothing panics; a table restored from a decoded snapshot encodes a
//! snapshot that decodes again, and restoring that one encodes the same bytes (what
//! restore keeps is stable: a second restart changes nothing).

#![no_main]

use libfuzzer_sys::fuzz_target;
use surety_broker::{DedupeTable, decode_dedupe_snapshot};

fuzz_target!(|data: &[u8]| {
    // Let the fuzzer past the checksum: recompute it over the body.
    let mut bytes = data.to_vec();
    if bytes.len() >= 14 {
        let n = bytes.len();
        let crc = crc32c(&bytes[..n - 4]);
        bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
    }
    let Ok(snap) = decode_dedupe_snapshot(&bytes) else {
        return;
    };
    let (config, covered, taken_at) = (snap.config, snap.covered.clone(), snap.taken_at);
    let once = DedupeTable::from_snapshot(config, snap).encode_snapshot(&covered, taken_at);
    let again = decode_dedupe_snapshot(&once).expect("a restored table's snapshot decodes");
    let twice = DedupeTable::from_snapshot(config, again).encode_snapshot(&covered, taken_at);
    assert_eq!(once, twice, "a second restore changed the snapshot");
});

/// CRC-32C (Castagnoli), bitwise: the fuzz crate need not depend on the crc32c crate.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
