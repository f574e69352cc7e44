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
use crate::rng::SplitMix64 as Rng;

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
}
