//! Settings of one log.

use crate::record::MIN_FRAME_LEN;
use crate::segment::SEGMENT_HEADER_LEN;

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After the fdatasync that covers the record returned (the default; guarantee G1).
    #[default]
    Fsync,
    /// After the write reached the page cache. A power loss or kernel crash can lose
    /// acknowledged records, and recovery then truncates at the first damaged record
    /// instead of reporting corruption (it cannot tell the two apart without fsync).
    None,
}

/// How much of the log is CRC-checked when it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyOnOpen {
    /// Every record of every segment (the default): corruption is found at open.
    #[default]
    All,
    /// Only the last segment; sealed segments are trusted if their index is intact, and
    /// their records are still CRC-checked on every read.
    ActiveSegment,
}

/// Settings of one log; `LogConfig::default()` is what a broker topic partition uses.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A new segment starts when the next record would take the active one past this.
    pub segment_bytes: u64,
    /// Largest encoded record frame accepted by `append`.
    pub max_record_bytes: usize,
    /// One sparse index entry per this many bytes of records.
    pub index_interval_bytes: u64,
    pub durability: Durability,
    /// Reserve the active segment's blocks ahead of the writes: measured about 30% faster
    /// per fdatasync on ext4 here, because overwrites need no block allocation.
    ///
    /// The reservation grows with the data, so a segment costs about what it holds (an
    /// idle partition or an empty dead-letter log takes 64 KiB, not `segment_bytes`): a
    /// new segment reserves its first extent ([`LogConfig::first_preallocation`]: 64 KiB,
    /// or an eighth of a smaller segment); when a write would end past the reserved end,
    /// the writer first doubles the reservation, capped at `segment_bytes` and never
    /// less than the write needs ([`LogConfig::preallocation_after`]). In the steady
    /// state every write still lands in reserved blocks; growing a 64 MiB segment takes
    /// 10 extensions. A segment that follows a full one is reserved in full at once: the
    /// log is busy, and each extension's first fdatasync also commits the file's new size
    /// (growing every segment in steps cost ~25% of `bench server`'s 256-appender log
    /// baseline here). Sealing trims the unused rest. The reserved, never-written tail
    /// reads as zeros, which recovery takes as the end of data whatever the file's
    /// length is.
    pub preallocate: bool,
    pub verify_on_open: VerifyOnOpen,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 64 * 1024 * 1024,
            max_record_bytes: 8 * 1024 * 1024,
            index_interval_bytes: 4096,
            durability: Durability::Fsync,
            preallocate: true,
            verify_on_open: VerifyOnOpen::All,
        }
    }
}

/// The largest first extent a new segment reserves when [`LogConfig::preallocate`] is on.
pub const PREALLOCATE_FIRST_BYTES: u64 = 64 * 1024;

impl LogConfig {
    /// The growth rule of preallocation: with blocks reserved up to `reserved` and a write
    /// that must end at `needed`, where the reservation should end. Unchanged while the
    /// write fits; else doubled (at least the first extent), capped at
    /// `segment_bytes`, and never short of `needed`.
    pub fn preallocation_after(&self, reserved: u64, needed: u64) -> u64 {
        if needed <= reserved {
            return reserved;
        }
        reserved
            .saturating_mul(2)
            .max(self.first_preallocation())
            .min(self.segment_bytes)
            .max(needed)
    }

    /// What a new segment reserves: [`PREALLOCATE_FIRST_BYTES`], or an eighth of a
    /// segment smaller than 512 KiB, so that it too grows in steps.
    pub fn first_preallocation(&self) -> u64 {
        PREALLOCATE_FIRST_BYTES.min(self.segment_bytes / 8)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.max_record_bytes < MIN_FRAME_LEN {
            return Err(format!("max_record_bytes must be at least {MIN_FRAME_LEN}"));
        }
        if self.segment_bytes < (SEGMENT_HEADER_LEN + self.max_record_bytes) as u64 {
            return Err(
                "segment_bytes must hold the segment header plus one record of max_record_bytes"
                    .into(),
            );
        }
        if self.segment_bytes > u64::from(u32::MAX) {
            return Err("segment_bytes must be below 4 GiB (index positions are 32-bit)".into());
        }
        if self.index_interval_bytes == 0 {
            return Err("index_interval_bytes must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preallocation_doubles_from_the_first_extent_up_to_the_segment() {
        let c = LogConfig::default();
        let first = c.first_preallocation();
        assert_eq!(first, PREALLOCATE_FIRST_BYTES);
        // Fits: unchanged.
        assert_eq!(c.preallocation_after(first, first), first);
        assert_eq!(c.preallocation_after(first, 100), first);
        // Past the end: doubled.
        assert_eq!(c.preallocation_after(first, first + 1), 2 * first);
        // A write larger than the doubling gets exactly what it needs.
        assert_eq!(c.preallocation_after(first, 5 * first), 5 * first);
        // A reservation below the first extent (a trimmed or old file) grows to it.
        assert_eq!(c.preallocation_after(1000, 1001), first);
        // Capped at the segment size.
        let seg = c.segment_bytes;
        assert_eq!(c.preallocation_after(seg / 2 + 1, seg / 2 + 2), seg);
        assert_eq!(c.preallocation_after(seg, seg), seg);
        // Small segments start at an eighth.
        let small = LogConfig {
            segment_bytes: 8 * 1024,
            max_record_bytes: 2 * 1024,
            ..LogConfig::default()
        };
        assert_eq!(small.first_preallocation(), 1024);
        assert_eq!(small.preallocation_after(1024, 1500), 2048);
    }
}
