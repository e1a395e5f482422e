//! Fuzzes the record frame decoder (`surety_log::record::decode`), which parses bytes
//! read from segment files.
//!
//! Input: one option byte, then the bytes handed to `decode`.
//! - bits 0-1 pick `max_frame_len` (1 MiB, 16 KiB, half the input, `usize::MAX`);
//! - bit 2 patches a correct CRC over the body the length field announces, so the
//!   fuzzer also reaches the body parser past the CRC check.
//!
//! Properties: `decode` never panics; its error agrees with the buffer it was given; and
//! when it returns `Ok`, re-encoding the decoded record with `record::encode` gives back
//! exactly `data[..frame_len]`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use surety_fuzz::crc32c;
use surety_log::NewRecord;
use surety_log::record::{self, DecodeError, FRAME_PREFIX_LEN, MIN_FRAME_LEN};

fuzz_target!(|input: &[u8]| {
    let Some((&opts, data)) = input.split_first() else {
        return;
    };
    let max = match opts & 3 {
        0 => 1 << 20,
        1 => 16 * 1024,
        2 => MIN_FRAME_LEN.max(data.len() / 2),
        _ => usize::MAX,
    };
    let mut data = data.to_vec();
    if opts & 4 != 0 && data.len() >= FRAME_PREFIX_LEN {
        let announced = u32::from_le_bytes(data[..4].try_into().unwrap()) as usize + 4;
        let end = announced.clamp(FRAME_PREFIX_LEN, data.len());
        let crc = crc32c(&data[FRAME_PREFIX_LEN..end]);
        data[4..8].copy_from_slice(&crc.to_le_bytes());
    }
    check(&data, max);
});

fn check(data: &[u8], max: usize) {
    let decoded = record::decode(data, max);
    let frame = match decoded {
        Ok(frame) => frame,
        Err(DecodeError::Truncated { needed, available }) => {
            assert_eq!(
                available,
                data.len(),
                "Truncated must report the buffer length"
            );
            assert!(
                needed > available,
                "Truncated although {needed} <= {available}"
            );
            return;
        }
        Err(DecodeError::EndOfData) => {
            assert_eq!(&data[..4], &[0; 4], "EndOfData without a zero length field");
            return;
        }
        Err(_) => return,
    };
    assert!(frame.frame_len <= data.len(), "frame runs past the buffer");
    assert!(frame.frame_len <= max, "frame longer than max_frame_len");
    assert!(
        frame.frame_len >= MIN_FRAME_LEN,
        "frame shorter than the minimum"
    );
    assert_eq!(
        record::peek_frame_len(data, max),
        Ok(frame.frame_len),
        "peek_frame_len disagrees with decode"
    );

    let r = &frame.record;
    let rec = NewRecord {
        timestamp_ms: r.timestamp_ms,
        key: r.key.clone(),
        headers: r.headers.clone(),
        payload: r.payload.clone(),
    };
    assert_eq!(
        rec.encoded_len(),
        Ok(frame.frame_len),
        "encoded_len of the decoded record differs from its frame length"
    );
    let encoded = record::encode(&rec, r.offset, frame.batch_delta);
    assert!(
        encoded == data[..frame.frame_len],
        "re-encoding does not reproduce the frame:\n  read    {:02x?}\n  encoded {:02x?}",
        &data[..frame.frame_len],
        encoded
    );
    // Bytes after the frame do not change what it decodes to.
    assert_eq!(
        record::decode(&data[..frame.frame_len], max).as_ref(),
        Ok(&frame),
        "decoding the frame alone gives a different result"
    );
}
