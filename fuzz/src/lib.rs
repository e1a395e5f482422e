//! What the fuzz targets share.

/// CRC-32C (Castagnoli), bitwise: independent of the implementation under test (the
/// crates use the `crc32c` crate), so a target checks it rather than trusting it.
pub fn crc32c(bytes: &[u8]) -> u32 {
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

/// `data` with its last 4 bytes replaced by the little-endian CRC-32C of the rest, when
/// it is at least `min_len` long: lets the fuzzer past a trailing checksum to the
/// decoder behind it.
pub fn with_trailing_crc(data: &[u8], min_len: usize) -> Vec<u8> {
    let mut bytes = data.to_vec();
    let n = bytes.len();
    if n >= min_len.max(4) {
        let crc = crc32c(&bytes[..n - 4]);
        bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
    }
    bytes
}
