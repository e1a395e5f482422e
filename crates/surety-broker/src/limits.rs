//! The one place where every number a client sends is bounded.
//!
//! The broker checks these itself, so REST, gRPC and in-process callers are refused the
//! same way (`invalid_request`, naming the field and the bound) and none can hold a
//! message for good: a lease or a nack delay of 2^64-1 ms would otherwise keep a message
//! from every consumer across restarts, with nothing able to release it. The fronts call
//! the same functions early (before a stream starts, say) to fail fast, never with
//! bounds of their own.

use crate::error::BrokerError;
use crate::group::Millis;

const HOUR_MS: u64 = 60 * 60 * 1000;

/// Longest lease a consumer may take, and the topic's `ack_wait_ms` upper bound.
pub const MAX_LEASE_MS: u64 = 12 * HOUR_MS;
/// Longest delay a nack may ask for.
pub const MAX_NACK_DELAY_MS: u64 = 12 * HOUR_MS;
/// Furthest in the future a message's `not_before_ms` may lie.
pub const MAX_NOT_BEFORE_AHEAD_MS: u64 = 12 * HOUR_MS;
/// Most messages one fetch may ask for.
pub const MAX_FETCH: usize = 1000;
/// Longest a fetch may wait for messages (bounds how long a shutdown waits for a poll).
pub const MAX_WAIT_MS: u64 = 30_000;
/// Longest nack reason kept; it is stored with every release and dead letter.
pub const MAX_REASON_BYTES: usize = 4096;
/// Largest window of unsettled deliveries one consume stream may hold (gRPC `credits`):
/// more would only pin leases nobody works on.
pub const MAX_CREDITS: usize = 10_000;
/// Most messages one publish call may carry.
pub const MAX_PUBLISH_BATCH: usize = 10_000;
/// Most dead letters one page may hold, and the default.
pub const MAX_PAGE: usize = 1000;
pub const DEFAULT_DEAD_LETTER_PAGE: usize = 100;
/// A page of dead letters or peeked messages also ends once it holds this many payload
/// bytes (after at least one), so a page of large messages stays small in memory.
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Most messages one peek may return, and the default.
pub const MAX_PEEK: usize = 1000;
pub const DEFAULT_PEEK: usize = 10;

/// `field` must lie in `min..=max`.
pub fn check(field: &'static str, got: u64, min: u64, max: u64) -> Result<(), BrokerError> {
    if (min..=max).contains(&got) {
        Ok(())
    } else {
        Err(BrokerError::OutOfRange {
            field,
            min,
            max,
            got,
        })
    }
}

pub fn check_lease_ms(lease_ms: u64) -> Result<(), BrokerError> {
    check("lease_ms", lease_ms, 1, MAX_LEASE_MS)
}

pub fn check_fetch(max: usize, wait_ms: u64) -> Result<(), BrokerError> {
    check("max", max as u64, 1, MAX_FETCH as u64)?;
    check("wait_ms", wait_ms, 0, MAX_WAIT_MS)
}

pub fn check_nack(delay_ms: u64, reason: &str) -> Result<(), BrokerError> {
    check("delay_ms", delay_ms, 0, MAX_NACK_DELAY_MS)?;
    check_reason(reason)
}

pub fn check_reason(reason: &str) -> Result<(), BrokerError> {
    check(
        "reason (bytes)",
        reason.len() as u64,
        0,
        MAX_REASON_BYTES as u64,
    )
}

pub fn check_publish_batch(len: usize) -> Result<(), BrokerError> {
    check("messages", len as u64, 1, MAX_PUBLISH_BATCH as u64)
}

/// A `not_before` at `now` or earlier means "at once"; later than 12 h ahead is refused.
pub fn check_not_before(not_before: Option<Millis>, now: Millis) -> Result<(), BrokerError> {
    match not_before {
        Some(nb) if nb > now.saturating_add(MAX_NOT_BEFORE_AHEAD_MS) => {
            Err(BrokerError::OutOfRange {
                field: "not_before_ms",
                min: 0,
                max: now.saturating_add(MAX_NOT_BEFORE_AHEAD_MS),
                got: nb,
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_inclusive_and_name_the_field() {
        assert!(check_lease_ms(1).is_ok());
        assert!(check_lease_ms(MAX_LEASE_MS).is_ok());
        let e = check_lease_ms(u64::MAX).unwrap_err();
        assert_eq!(e.code(), "invalid_request");
        assert!(e.to_string().contains("lease_ms"), "{e}");
        assert!(e.to_string().contains(&MAX_LEASE_MS.to_string()), "{e}");
        assert!(check_lease_ms(0).is_err());
        assert!(check_nack(MAX_NACK_DELAY_MS, "").is_ok());
        assert!(check_nack(MAX_NACK_DELAY_MS + 1, "").is_err());
        assert!(check_nack(0, &"x".repeat(MAX_REASON_BYTES + 1)).is_err());
        assert!(check_fetch(0, 0).is_err());
        assert!(check_fetch(MAX_FETCH, MAX_WAIT_MS).is_ok());
        assert!(check_fetch(1, MAX_WAIT_MS + 1).is_err());
        assert!(check_publish_batch(0).is_err());
    }

    #[test]
    fn not_before_allows_the_past_and_twelve_hours_ahead() {
        let now = 1_000_000;
        assert!(check_not_before(None, now).is_ok());
        assert!(check_not_before(Some(0), now).is_ok());
        assert!(check_not_before(Some(now + MAX_NOT_BEFORE_AHEAD_MS), now).is_ok());
        let e = check_not_before(Some(99_999_999_999_999_999), now).unwrap_err();
        assert!(e.to_string().contains("not_before_ms"), "{e}");
    }
}
