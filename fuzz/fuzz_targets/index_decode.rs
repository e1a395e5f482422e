//! Fuzzes the sparse index file decoder (`surety_log::index::IndexFile::decode`), which
//! parses `.index` files read back from disk.
//!
//! Input: one option byte, then the file bytes. The options patch fields the fuzzer can
//! hardly guess, so that it also reaches the code behind each check:
//! - bit 0: write the magic, version and entry length a valid file has;
//! - bit 1: set the entry count to match the file length;
//! - bit 2: patch every entry's CRC;
//! - bit 3: patch the header CRC (done last, over the patched header).
//!
//! Properties: `decode` never panics, and when it returns `Ok`, `encode()` gives back
//! exactly the same bytes (the reserved word outside the header CRC must be zero).

#![no_main]

use libfuzzer_sys::fuzz_target;
use surety_fuzz::crc32c;
use surety_log::index::{
    INDEX_ENTRY_LEN, INDEX_FORMAT_VERSION, INDEX_HEADER_LEN, INDEX_MAGIC, IndexFile,
};

fuzz_target!(|input: &[u8]| {
    let Some((&opts, data)) = input.split_first() else {
        return;
    };
    let mut data = data.to_vec();
    if data.len() >= INDEX_HEADER_LEN {
        if opts & 1 != 0 {
            data[0..8].copy_from_slice(&INDEX_MAGIC);
            data[8..10].copy_from_slice(&INDEX_FORMAT_VERSION.to_le_bytes());
            data[10..12].copy_from_slice(&(INDEX_ENTRY_LEN as u16).to_le_bytes());
        }
        if opts & 2 != 0 {
            let count = ((data.len() - INDEX_HEADER_LEN) / INDEX_ENTRY_LEN) as u32;
            data[12..16].copy_from_slice(&count.to_le_bytes());
        }
        if opts & 4 != 0 {
            let mut at = INDEX_HEADER_LEN;
            while at + INDEX_ENTRY_LEN <= data.len() {
                let crc = crc32c(&data[at..at + 12]);
                data[at + 12..at + 16].copy_from_slice(&crc.to_le_bytes());
                at += INDEX_ENTRY_LEN;
            }
        }
        if opts & 8 != 0 {
            let crc = crc32c(&data[0..48]);
            data[48..52].copy_from_slice(&crc.to_le_bytes());
        }
    }

    let Ok(file) = IndexFile::decode(&data) else {
        return;
    };
    assert_eq!(
        data.len(),
        INDEX_HEADER_LEN + file.entries.len() * INDEX_ENTRY_LEN,
        "decoded entry count does not match the file length"
    );
    for pair in file.entries.windows(2) {
        assert!(
            pair[0].offset < pair[1].offset && pair[0].position < pair[1].position,
            "decode accepted entries out of order: {pair:?}"
        );
    }
    let encoded = file.encode();
    let expected = data.clone();
    assert!(
        encoded == expected,
        "re-encoding does not reproduce the file:\n  read    {expected:02x?}\n  encoded {encoded:02x?}"
    );
    assert_eq!(
        IndexFile::decode(&encoded).as_ref(),
        Ok(&file),
        "the re-encoded file decodes differently"
    );
});
