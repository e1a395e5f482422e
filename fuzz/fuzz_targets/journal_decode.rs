//! Fuzzes the broker's decoders of group-journal bytes read back from disk:
//! `decode_event`, `decode_events` and `decode_snapshot`, and `GroupPartition::restore`
//! on whatever a snapshot decodes to.
//!
//! Input: one selector byte, then the bytes. Properties: nothing panics; whatever decodes
//! re-encodes to exactly the input (a snapshot of an older version re-encodes in the
//! current one, and decodes back to the same snapshot); a restored group partition
//! snapshots back to the same snapshot (restore accepts only consistent states).

#![no_main]

use libfuzzer_sys::fuzz_target;
use surety_broker::codec::{
    SNAPSHOT_VERSION, decode_event, decode_events, decode_snapshot, encode_event, encode_events,
    encode_snapshot,
};
use surety_broker::{GroupPartition, GroupPolicy};
use surety_fuzz::with_trailing_crc;

fuzz_target!(|input: &[u8]| {
    let Some((&which, data)) = input.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok((p, e)) = decode_event(data) {
                assert_eq!(encode_event(p, &e), data, "event re-encodes differently");
            }
        }
        1 => {
            if let Ok(events) = decode_events(data) {
                assert_eq!(
                    encode_events(&events),
                    data,
                    "event batch re-encodes differently"
                );
            }
        }
        _ => {
            let bytes = with_trailing_crc(data, 14);
            if let Ok(snap) = decode_snapshot(&bytes) {
                let encoded = encode_snapshot(&snap);
                if bytes[8..10] == SNAPSHOT_VERSION.to_le_bytes() {
                    assert_eq!(encoded, bytes, "snapshot re-encodes differently");
                } else {
                    let again = decode_snapshot(&encoded).expect("re-encoded snapshot decodes");
                    assert_eq!(again, snap, "an older snapshot changes when upgraded");
                }
                for g in &snap.groups {
                    for part in &g.parts {
                        if let Ok(restored) =
                            GroupPartition::restore(GroupPolicy::default(), part.clone())
                        {
                            assert_eq!(&restored.snapshot(), part, "restore changed the state");
                        }
                    }
                }
            }
        }
    }
});
