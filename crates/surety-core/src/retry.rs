//! Exponential backoff with jitter, bounded by an overall deadline.

use std::time::Duration;

use rand::Rng;

/// How a failed call is retried: delays grow by `multiplier` from `initial` up to `max`,
/// each randomized down by up to `jitter` (a fraction) so that many clients do not retry
/// in step; no new attempt starts after `deadline`; each attempt may take `attempt_timeout`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    pub jitter: f64,
    pub deadline: Duration,
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
            multiplier: 2.0,
            jitter: 0.5,
            deadline: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The pause after failed attempt number `attempt` (1 for the first).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let full = self.initial.as_secs_f64() * exp;
        let capped = full.min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 - jitter * rand::rng().random::<f64>();
        Duration::from_secs_f64(capped * factor)
    }
}

/// The delay of a nack after `delivered` deliveries, for a backend that must choose it
/// itself (NATS `-NAK {"delay"}`, Redis idle time): `initial × 2^(delivered−1)`, capped
/// at `max`, less up to 20 % (a hash of `seed` and the count, so that messages failing
/// together do not come back together; never below 80 % of the step, and never zero: a
/// bare retry burns through `max_deliveries` in milliseconds).
pub fn nack_backoff(initial: Duration, max: Duration, delivered: u64, seed: u64) -> Duration {
    let step = delivered.saturating_sub(1).min(32) as u32;
    let full = initial
        .saturating_mul(2u32.saturating_pow(step))
        .min(max)
        .max(Duration::from_millis(1));
    let mut z = seed ^ (delivered << 48);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
    full.mul_f64(1.0 - 0.2 * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_up_to_the_cap_and_jitter_only_shortens() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            multiplier: 2.0,
            jitter: 0.5,
            ..RetryPolicy::default()
        };
        for _ in 0..100 {
            let d1 = p.delay(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = p.delay(3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            let d30 = p.delay(30);
            assert!(d30 >= Duration::from_millis(500) && d30 <= Duration::from_millis(1000));
        }
        let fixed = RetryPolicy { jitter: 0.0, ..p };
        assert_eq!(fixed.delay(2), Duration::from_millis(200));
    }

    #[test]
    fn nack_delays_grow_per_delivery_up_to_the_cap() {
        let (i, m) = (Duration::from_secs(1), Duration::from_secs(60));
        let mut last = Duration::ZERO;
        for n in 1..=6 {
            let d = nack_backoff(i, m, n, 42);
            let full = Duration::from_secs(1 << (n - 1));
            assert!(d <= full && d >= full.mul_f64(0.8), "delivery {n}: {d:?}");
            assert!(d > last, "delivery {n}: {d:?} after {last:?}");
            last = d;
        }
        assert!(nack_backoff(i, m, 30, 42) <= m && nack_backoff(i, m, 30, 42) >= m.mul_f64(0.8));
        assert!(
            nack_backoff(Duration::ZERO, m, 1, 1) > Duration::ZERO,
            "never a bare nak"
        );
    }
}
