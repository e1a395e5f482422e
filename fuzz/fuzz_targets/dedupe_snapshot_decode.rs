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
use surety_fuzz::with_trailing_crc;

fuzz_target!(|data: &[u8]| {
    let bytes = with_trailing_crc(data, 14);
    let Ok(snap) = decode_dedupe_snapshot(&bytes) else {
        return;
    };
    let (config, covered, taken_at) = (snap.config, snap.covered.clone(), snap.taken_at);
    let once = DedupeTable::from_snapshot(config, snap).encode_snapshot(&covered, taken_at);
    let again = decode_dedupe_snapshot(&once).expect("a restored table's snapshot decodes");
    let twice = DedupeTable::from_snapshot(config, again).encode_snapshot(&covered, taken_at);
    assert_eq!(once, twice, "a second restore changed the snapshot");
});
