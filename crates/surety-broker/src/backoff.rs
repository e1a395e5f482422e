//! Retry backoff: exponential, capped, with jitter.
//!
//! The jitter is derived from (offset, delivery) by a hash rather than drawn from an RNG,
//! so replaying the group journal after a restart computes the same visibility times and
//! the state machine stays deterministic (a property the simulation tests rely on).

/// Exponential backoff with jitter, capped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the second delivery.
    pub initial_ms: u64,
    /// Upper bound of any delay.
    pub max_ms: u64,
    /// Growth per delivery (2.0 doubles).
    pub multiplier: f64,
    /// Fraction of the delay that is randomized: 0.2 gives delay × [0.8, 1.0].
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial_ms: 1_000,
            max_ms: 60_000,
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// No delay at all (tests, and topics that want immediate redelivery).
    pub const NONE: Backoff = Backoff {
        initial_ms: 0,
        max_ms: 0,
        multiplier: 1.0,
        jitter: 0.0,
    };

    /// Delay before redelivering a message that has been delivered `deliveries` times.
    pub fn delay_ms(&self, offset: u64, deliveries: u32) -> u64 {
        if deliveries == 0 || self.initial_ms == 0 {
            return 0;
        }
        let exp = self
            .multiplier
            .powi(deliveries.saturating_sub(1).min(64) as i32);
        let full = (self.initial_ms as f64 * exp).min(self.max_ms as f64);
        let unit = (mix(offset ^ (u64::from(deliveries) << 48)) >> 11) as f64 / (1u64 << 53) as f64;
        let jitter = self.jitter.clamp(0.0, 1.0);
        (full * (1.0 - jitter * unit)) as u64
    }
}

/// SplitMix64 finalizer: a cheap, well-distributed hash of one word.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_is_capped_and_jittered_downward() {
        let b = Backoff {
            initial_ms: 100,
            max_ms: 1_000,
            multiplier: 2.0,
            jitter: 0.5,
        };
        assert_eq!(b.delay_ms(7, 0), 0);
        for d in 1..20 {
            let full = (100.0 * 2f64.powi(d as i32 - 1)).min(1000.0) as u64;
            let got = b.delay_ms(7, d);
            assert!(
                got <= full && got >= full / 2,
                "delivery {d}: {got} vs {full}"
            );
        }
        assert_eq!(b.delay_ms(7, 3), b.delay_ms(7, 3), "deterministic");
        assert_eq!(Backoff::NONE.delay_ms(1, 5), 0);
    }
}
