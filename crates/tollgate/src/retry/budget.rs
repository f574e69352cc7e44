//! The retry budget: gRPC's retry throttling (proposal A6, "Throttling Retry Attempts and
//! Hedged RPCs"), chosen over a per-second retry allowance because it needs no clock and reacts
//! to the failure *ratio*, which is what a sick upstream changes.
//!
//! A token count starts at `max_tokens` and stays within `[0, max_tokens]`. Every failure that
//! would be retried costs 1 token; every success adds `token_ratio`. Retries are allowed only
//! while the count is above `max_tokens / 2`; below, failures go back to the caller at once, so a
//! struggling upstream sees at most about `1 + token_ratio` times the normal load, not
//! `max_attempts` times.
//!
//! A6 supports three decimal places of `token_ratio`, so the count is kept as a fixed-point
//! integer in thousandths, in one atomic updated by compare-and-swap: lock-free, and exact
//! (0.1 + 0.1 + … never drifts).
//!
//! Which outcomes count is the caller's choice; A6 counts as failures only the ones that are
//! retryable (or that the server said not to retry), so a client error such as a 400 does not
//! drain the budget. [`crate::retry::decide()`] only reads the budget: record the attempt's outcome
//! first, then decide.

use std::sync::atomic::{AtomicI64, Ordering};

/// Fixed-point scale: thousandths of a token.
const SCALE: f64 = 1000.0;
/// Largest bucket accepted, in thousandths (a trillion tokens: far beyond any real setting).
const MAX_MILLI: i64 = 1_000_000_000_000_000;

/// A6 retry throttling for one upstream. Shared between threads by reference.
///
/// ```
/// use tollgate::retry::RetryBudget;
/// let budget = RetryBudget::new(10.0, 0.1);
/// for _ in 0..5 {
///     budget.on_failure();
/// }
/// assert!(!budget.allows_retry()); // 5 tokens: not above 10 / 2
/// budget.on_success();
/// assert!(budget.allows_retry()); // 5.1 > 5
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    /// Thousandths of a token.
    count: AtomicI64,
    max: i64,
    ratio: i64,
}

fn to_milli(x: f64) -> i64 {
    if x.is_nan() || x <= 0.0 {
        0
    } else {
        (x * SCALE).round().min(MAX_MILLI as f64) as i64
    }
}

impl RetryBudget {
    /// A full bucket of `max_tokens`, refilled by `token_ratio` per success; both are rounded to
    /// three decimal places. A bucket of zero (or a negative or NaN size) refuses every retry.
    pub fn new(max_tokens: f64, token_ratio: f64) -> RetryBudget {
        let max = to_milli(max_tokens);
        RetryBudget {
            count: AtomicI64::new(max),
            max,
            ratio: to_milli(token_ratio),
        }
    }

    /// The budget of a policy's `[retry]` table.
    pub fn from_policy(retry: &crate::policy::Retry) -> RetryBudget {
        RetryBudget::new(retry.budget_max_tokens, retry.budget_ratio)
    }

    fn update(&self, f: impl Fn(i64) -> i64) {
        // The closure always returns Some, so this cannot fail.
        let _ = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| Some(f(c)));
    }

    /// A success: adds `token_ratio`, up to `max_tokens`.
    pub fn on_success(&self) {
        let (max, ratio) = (self.max, self.ratio);
        self.update(|c| c.saturating_add(ratio).min(max));
    }

    /// A failure: takes one token, down to zero.
    pub fn on_failure(&self) {
        self.update(|c| (c - 1000).max(0));
    }

    /// Whether a retry may be made now: the count is above `max_tokens / 2`.
    pub fn allows_retry(&self) -> bool {
        // count > max / 2, without rounding the half.
        self.count.load(Ordering::Acquire) * 2 > self.max
    }

    /// The current token count.
    pub fn tokens(&self) -> f64 {
        self.count.load(Ordering::Acquire) as f64 / SCALE
    }

    /// The bucket size.
    pub fn max_tokens(&self) -> f64 {
        self.max as f64 / SCALE
    }

    /// Tokens added per success.
    pub fn token_ratio(&self) -> f64 {
        self.ratio as f64 / SCALE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_is_exact() {
        let b = RetryBudget::new(10.0, 0.1);
        for _ in 0..10 {
            b.on_failure();
        }
        assert_eq!(b.tokens(), 0.0);
        for _ in 0..51 {
            b.on_success();
        }
        assert_eq!(b.tokens(), 5.1);
        assert!(b.allows_retry());
    }

    #[test]
    fn odd_sizes_and_degenerate_input() {
        let b = RetryBudget::new(3.0, 0.5); // threshold 1.5
        b.on_failure(); // 2
        assert!(b.allows_retry());
        b.on_failure(); // 1
        assert!(!b.allows_retry());
        b.on_success(); // 1.5: not above 1.5
        assert!(!b.allows_retry());
        b.on_success(); // 2
        assert!(b.allows_retry());
        for bad in [0.0, -1.0, f64::NAN] {
            assert!(!RetryBudget::new(bad, 0.1).allows_retry());
        }
        let huge = RetryBudget::new(f64::INFINITY, f64::INFINITY);
        huge.on_success();
        assert!(huge.allows_retry());
        assert_eq!(RetryBudget::new(10.0, 0.0004).token_ratio(), 0.0);
    }
}
