//! Exponential backoff with jitter, and the seedable generator it draws from.
//!
//! The jitter modes are those of the AWS Architecture Blog post "Exponential Backoff And Jitter"
//! (Marc Brooker, 2015). With `d = min(max, base · 2^(attempt−1))`:
//!
//! | [`Jitter`] | delay |
//! |---|---|
//! | `None` | `d` |
//! | `Full` | uniform in `[0, d]` |
//! | `Equal` | `d/2` + uniform in `[0, d/2]` |
//! | `Decorrelated` | `min(max, uniform in [base, 3 · prev])`, `prev` = the previous delay |
//!
//! Arithmetic is in whole nanoseconds with saturation: no input overflows, `attempt = u32::MAX`
//! included, and every result lies in `[0, max]`.

use std::time::Duration;

use crate::clock::duration_nanos;
use crate::policy::Jitter;

/// A small, fast, seedable generator (SplitMix64). Not for secrets: it only spreads retries.
///
/// ```
/// use tollgate::retry::Rng;
/// let (mut a, mut b) = (Rng::new(7), Rng::new(7));
/// assert_eq!(a.next_u64(), b.next_u64());
/// let x = a.next_f64();
/// assert!((0.0..1.0).contains(&x));
/// ```
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)` (53 random bits).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `[0, n]`, both ends included (multiply-shift, no division).
    pub fn up_to(&mut self, n: u64) -> u64 {
        if n == u64::MAX {
            return self.next_u64();
        }
        ((u128::from(self.next_u64()) * (u128::from(n) + 1)) >> 64) as u64
    }

    /// A uniform integer in `[lo, hi]`; `hi < lo` gives `lo`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.up_to(hi.saturating_sub(lo))
    }
}

/// `min(max, base · 2^(attempt−1))` in nanoseconds, saturating; `attempt` 0 counts as 1.
pub fn exponential(attempt: u32, base: Duration, max: Duration) -> Duration {
    let (base, max) = (duration_nanos(base), duration_nanos(max));
    Duration::from_nanos(exp_nanos(attempt, base, max))
}

fn exp_nanos(attempt: u32, base: u64, max: u64) -> u64 {
    let shift = attempt.saturating_sub(1);
    let d = if base == 0 {
        0
    } else if shift >= 64 || base > (u64::MAX >> shift) {
        u64::MAX
    } else {
        base << shift
    };
    d.min(max)
}

/// The delay before the attempt after `attempt` (1-based: `attempt` is the one that just failed).
///
/// `prev` is the delay used before `attempt` (zero before the first retry); only
/// [`Jitter::Decorrelated`] reads it, and treats zero as `base`. The result is always within
/// `[0, max]`.
///
/// ```
/// use std::time::Duration;
/// use tollgate::policy::Jitter;
/// use tollgate::retry::{backoff, Rng};
/// let (base, max) = (Duration::from_millis(500), Duration::from_secs(8));
/// let mut rng = Rng::new(1);
/// assert_eq!(backoff(3, Duration::ZERO, base, max, Jitter::None, &mut rng), Duration::from_secs(2));
/// let d = backoff(u32::MAX, Duration::ZERO, base, max, Jitter::Full, &mut rng);
/// assert!(d <= max);
/// ```
pub fn backoff(
    attempt: u32,
    prev: Duration,
    base: Duration,
    max: Duration,
    jitter: Jitter,
    rng: &mut Rng,
) -> Duration {
    let (base_ns, max_ns) = (duration_nanos(base), duration_nanos(max));
    let nanos = match jitter {
        Jitter::None => exp_nanos(attempt, base_ns, max_ns),
        Jitter::Full => rng.up_to(exp_nanos(attempt, base_ns, max_ns)),
        Jitter::Equal => {
            let d = exp_nanos(attempt, base_ns, max_ns);
            let half = d / 2;
            // The upper half is rounded up so that odd `d` can still be reached.
            half + rng.up_to(d - half)
        }
        Jitter::Decorrelated => {
            let prev = match duration_nanos(prev) {
                0 => base_ns,
                p => p,
            };
            let hi = prev.saturating_mul(3).max(base_ns);
            rng.between(base_ns, hi).min(max_ns)
        }
    };
    Duration::from_nanos(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_doubles_then_caps() {
        let (b, m) = (Duration::from_millis(500), Duration::from_secs(8));
        let got: Vec<u64> = (0..8)
            .map(|a| exponential(a, b, m).as_millis() as u64)
            .collect();
        assert_eq!(got, [500, 500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(exponential(u32::MAX, b, m), m);
        assert_eq!(
            exponential(65, Duration::from_nanos(1), Duration::MAX),
            Duration::from_nanos(u64::MAX)
        );
        assert_eq!(
            exponential(64, Duration::from_nanos(1), Duration::MAX),
            Duration::from_nanos(1 << 63)
        );
    }

    #[test]
    fn up_to_hits_both_ends() {
        let mut rng = Rng::new(3);
        let mut seen = [false; 3];
        for _ in 0..1000 {
            seen[rng.up_to(2) as usize] = true;
        }
        assert_eq!(seen, [true; 3]);
        assert_eq!(rng.up_to(0), 0);
        assert_eq!(rng.between(5, 2), 5);
    }

    #[test]
    fn splitmix_reference_values() {
        // First outputs of SplitMix64 seeded with 0 (Vigna's reference implementation).
        let mut rng = Rng::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }
}
