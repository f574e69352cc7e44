//! The one seeded generator tollgate uses (SplitMix64, Vigna): for retry jitter, weighted and
//! random target choice, eviction samples, and the test upstream's fault draws. Small, fast,
//! reproducible from a seed; not for secrets.

use std::sync::atomic::{AtomicU64, Ordering};

/// SplitMix64's increment (the golden ratio in 64 bits).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a well-mixed 64-bit value from a counter.
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seedable generator (SplitMix64) for one thread.
///
/// ```
/// use tollgate::rng::SplitMix64;
/// let (mut a, mut b) = (SplitMix64::new(7), SplitMix64::new(7));
/// assert_eq!(a.next_u64(), b.next_u64());
/// let x = a.next_f64();
/// assert!((0.0..1.0).contains(&x));
/// ```
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
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

/// SplitMix64 over a shared atomic counter: one generator for many threads, lock-free (each
/// draw is one `fetch_add`). The sequence over all threads is SplitMix64's from `seed`.
#[derive(Debug)]
pub struct SharedSplitMix64 {
    state: AtomicU64,
}

impl SharedSplitMix64 {
    /// A shared generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> SharedSplitMix64 {
        SharedSplitMix64 {
            state: AtomicU64::new(seed),
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        mix(self
            .state
            .fetch_add(GOLDEN, Ordering::Relaxed)
            .wrapping_add(GOLDEN))
    }
}

#[cfg(test)]
mod tests {
    use super::SplitMix64 as Rng;
    use super::*;

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

    #[test]
    fn shared_follows_the_same_sequence() {
        let (mut one, shared) = (Rng::new(42), SharedSplitMix64::new(42));
        for _ in 0..4 {
            assert_eq!(one.next_u64(), shared.next_u64());
        }
    }
}
