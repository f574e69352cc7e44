//! The retry budget: gRPC's retry throttling (proposal A6, "Throttling Retry Attempts and
//! Hedged RPCs"), with two additions for LLM traffic (decision notes 0004 and 0012).
//!
//! A token count starts at `max_tokens` and stays within `[0, max_tokens]`. Every failure that
//! would be retried costs 1 token; every success adds `token_ratio`. Retries are allowed only
//! while the count is above `max_tokens / 2`; below, failures go back to the caller at once, so a
//! struggling upstream sees at most about `1 + token_ratio` times the normal load, not
//! `max_attempts` times.
//!
//! The additions, both off in [`RetryBudget::new`] (plain A6) and on in the policy's defaults:
//!
//! - **Refill with time** ([`RetryBudget::with_refill`]): the count also grows by
//!   `refill_per_second` tokens per second of the caller's clock, so a quiet client (a call a
//!   second earns A6 0.1 token a second) is not left without retries for minutes after a short
//!   burst of failures. Under a hard outage a client whose attempts fail faster than the refill
//!   (more than `refill_per_second` a second) stays at the bottom: no retries, as in A6; a
//!   quieter one keeps retrying, but spends at most `refill_per_second` tokens a second on it.
//! - **A cheaper 429 with a server delay** ([`RetryBudget::with_retry_after_cost`]): a 429 whose
//!   response says when to come back (`retry-after-ms`, `Retry-After`, or the reset of an
//!   exhausted `x-ratelimit-*` limit: what [`crate::retry::server_delay`] reads) is the server
//!   pacing its clients rather than failing; it costs `retry_after_cost` tokens instead of 1. Half
//!   a token keeps the storm bound: retries of such 429s are at most `token_ratio / cost` of
//!   the successes (0.2 with the defaults), where a free 429 would let every call make all its
//!   attempts against an upstream that sheds load.
//!
//! A6 supports three decimal places of `token_ratio`, so the count is kept as a fixed-point
//! integer in thousandths, in one atomic updated by compare-and-swap: lock-free, and exact
//! (0.1 + 0.1 + … never drifts). A success is one atomic update and reads no clock; the refill is
//! applied lazily, when a failure is recorded ([`RetryBudget::on_failure_at`]) or on
//! [`RetryBudget::refill`], from the time passed in: the module never reads a clock, so the
//! budget is exact under a virtual one.
//!
//! Which outcomes count is the caller's choice; A6 counts as failures only the ones that are
//! retryable (or that the server said not to retry), so a client error such as a 400 does not
//! drain the budget. [`crate::retry::decide()`] only reads the budget: record the attempt's outcome
//! first, then decide.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::clock::Nanos;

/// Fixed-point scale: thousandths of a token.
const SCALE: f64 = 1000.0;
/// Largest bucket accepted, in thousandths (a trillion tokens: far beyond any real setting).
const MAX_MILLI: i64 = 1_000_000_000_000_000;
/// Nanoseconds per second.
const NANOS: u128 = 1_000_000_000;

/// A6 retry throttling for one upstream, optionally refilled with time and charging less for a
/// server-paced 429. Shared between threads by reference.
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
    /// Thousandths of a token per second; 0: no refill with time.
    refill: i64,
    /// Time up to which the refill has been credited.
    refilled_to: AtomicU64,
    /// Thousandths of a token charged for a 429 with a server delay.
    retry_after_cost: i64,
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
            refill: 0,
            refilled_to: AtomicU64::new(0),
            retry_after_cost: 1000,
        }
    }

    /// The same budget, also refilled by `tokens_per_second` (rounded to thousandths) as time
    /// passes; 0 (or a negative or NaN rate) turns the refill off. Time is what the caller passes
    /// to [`RetryBudget::refill`] and [`RetryBudget::on_failure_at`].
    ///
    /// ```
    /// use tollgate::retry::RetryBudget;
    /// let second = 1_000_000_000;
    /// let budget = RetryBudget::new(10.0, 0.1).with_refill(0.5);
    /// for _ in 0..10 {
    ///     budget.on_failure_at(0);
    /// }
    /// assert!(!budget.allows_retry());
    /// budget.refill(10 * second); // 10 s at 0.5 token/s: 5 tokens, not above half
    /// assert!(!budget.allows_retry());
    /// budget.refill(11 * second);
    /// assert!(budget.allows_retry()); // 5.5
    /// ```
    pub fn with_refill(mut self, tokens_per_second: f64) -> RetryBudget {
        self.refill = to_milli(tokens_per_second);
        self
    }

    /// The same budget, charging `cost` tokens (rounded to thousandths, at most 1) instead of 1
    /// for a failure recorded with [`RetryBudget::on_rate_limited_at`]: a 429 whose response
    /// said when to retry.
    ///
    /// ```
    /// use tollgate::retry::RetryBudget;
    /// let budget = RetryBudget::new(10.0, 0.1).with_retry_after_cost(0.0);
    /// for _ in 0..100 {
    ///     budget.on_rate_limited_at(0);
    /// }
    /// assert!(budget.allows_retry()); // still 10 tokens
    /// ```
    pub fn with_retry_after_cost(mut self, cost: f64) -> RetryBudget {
        self.retry_after_cost = to_milli(cost).min(1000);
        self
    }

    /// The budget of a policy's `[retry]` table.
    pub fn from_policy(retry: &crate::policy::Retry) -> RetryBudget {
        RetryBudget::new(retry.budget_max_tokens, retry.budget_ratio)
            .with_refill(retry.budget_refill_per_second)
            .with_retry_after_cost(retry.budget_retry_after_cost)
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

    /// A failure: takes one token, down to zero. Applies no refill: use
    /// [`RetryBudget::on_failure_at`] when the budget refills with time.
    pub fn on_failure(&self) {
        self.take(1000);
    }

    /// A failure at `now`: credits the refill up to `now`, then takes one token, down to zero.
    pub fn on_failure_at(&self, now: Nanos) {
        self.refill(now);
        self.take(1000);
    }

    /// A 429 whose response said when to retry ([`crate::retry::server_delay`] finds a delay),
    /// at `now`:
    /// credits the refill up to `now`, then takes `retry_after_cost` tokens (1 unless set with
    /// [`RetryBudget::with_retry_after_cost`]), down to zero.
    pub fn on_rate_limited_at(&self, now: Nanos) {
        self.refill(now);
        self.take(self.retry_after_cost);
    }

    fn take(&self, milli: i64) {
        if milli > 0 {
            self.update(|c| (c - milli).max(0));
        }
    }

    /// Credits the refill for the time up to `now` (nothing without a refill rate, or when `now`
    /// is not later than the last time credited). Each stretch of time is credited once, however
    /// many threads call this, and exactly: the thousandths earned by time `t` are
    /// `floor(t × rate)`, so cutting the time into more calls never loses a fraction.
    pub fn refill(&self, now: Nanos) {
        let rate = self.refill;
        if rate <= 0 {
            return;
        }
        let earned_by = |t: Nanos| u128::from(t) * rate as u128 / NANOS;
        let mut from = self.refilled_to.load(Ordering::Acquire);
        loop {
            if now <= from {
                return;
            }
            let earned = earned_by(now) - earned_by(from);
            if earned == 0 {
                return;
            }
            match self.refilled_to.compare_exchange_weak(
                from,
                now,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    let add = i64::try_from(earned).unwrap_or(MAX_MILLI).min(MAX_MILLI);
                    let max = self.max;
                    self.update(|c| c.saturating_add(add).min(max));
                    return;
                }
                Err(actual) => from = actual,
            }
        }
    }

    /// Whether a retry may be made now: the count is above `max_tokens / 2`.
    pub fn allows_retry(&self) -> bool {
        // count > max / 2, without rounding the half.
        self.count.load(Ordering::Acquire) * 2 > self.max
    }

    /// The current token count, as of the last update: refill earned since the last
    /// [`RetryBudget::refill`] or failure is not in it yet.
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

    /// Tokens added per second of time passed (0: no refill with time).
    pub fn refill_per_second(&self) -> f64 {
        self.refill as f64 / SCALE
    }

    /// Tokens a 429 with a server delay costs ([`RetryBudget::on_rate_limited_at`]).
    pub fn retry_after_cost(&self) -> f64 {
        self.retry_after_cost as f64 / SCALE
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

    const SECOND: Nanos = 1_000_000_000;

    fn drained(refill: f64) -> RetryBudget {
        let b = RetryBudget::new(10.0, 0.1).with_refill(refill);
        for _ in 0..10 {
            b.on_failure_at(0);
        }
        assert_eq!(b.tokens(), 0.0);
        b
    }

    #[test]
    fn refill_is_exact_however_the_time_is_cut() {
        // 0.3 token/s in one step or in 7 ms steps (0.0021 token each: fractions of a
        // thousandth carry over) gives the same count.
        let whole = drained(0.3);
        whole.refill(10 * SECOND);
        assert_eq!(whole.tokens(), 3.0);
        let steps = drained(0.3);
        let mut t = 0;
        while t < 10 * SECOND {
            t = (t + 7_000_000).min(10 * SECOND);
            steps.refill(t);
        }
        assert_eq!(steps.tokens(), 3.0);
        // Earlier or equal times credit nothing.
        steps.refill(5 * SECOND);
        steps.refill(10 * SECOND);
        assert_eq!(steps.tokens(), 3.0);
    }

    #[test]
    fn a_full_bucket_banks_no_time() {
        let b = RetryBudget::new(10.0, 0.1).with_refill(1.0);
        b.refill(100 * SECOND); // full all along
        for _ in 0..6 {
            b.on_failure_at(100 * SECOND);
        }
        assert_eq!(b.tokens(), 4.0);
        assert!(!b.allows_retry());
        b.on_failure_at(102 * SECOND); // 4 + 2 - 1
        assert_eq!(b.tokens(), 5.0);
        b.refill(102 * SECOND + SECOND / 2);
        assert!(b.allows_retry()); // 5.5
    }

    #[test]
    fn without_refill_time_changes_nothing() {
        let b = drained(0.0);
        b.refill(u64::MAX);
        b.on_failure_at(u64::MAX);
        assert_eq!(b.tokens(), 0.0);
        assert_eq!(b.refill_per_second(), 0.0);
        let b = drained(f64::NAN);
        b.refill(1000 * SECOND);
        assert_eq!(b.tokens(), 0.0);
        // A huge rate fills the bucket and no more.
        let b = drained(f64::INFINITY);
        b.refill(1);
        assert_eq!(b.tokens(), 10.0);
    }

    #[test]
    fn a_paced_429_costs_retry_after_cost() {
        let b = RetryBudget::new(10.0, 0.1);
        assert_eq!(b.retry_after_cost(), 1.0);
        b.on_rate_limited_at(0);
        assert_eq!(b.tokens(), 9.0);
        let b = RetryBudget::new(10.0, 0.1).with_retry_after_cost(0.5);
        for _ in 0..9 {
            b.on_rate_limited_at(0);
        }
        assert_eq!(b.tokens(), 5.5);
        assert!(b.allows_retry());
        b.on_rate_limited_at(0);
        assert!(!b.allows_retry());
        assert_eq!(
            RetryBudget::new(1.0, 0.1)
                .with_retry_after_cost(7.0)
                .retry_after_cost(),
            1.0
        );
        assert_eq!(
            RetryBudget::new(1.0, 0.1)
                .with_retry_after_cost(-1.0)
                .retry_after_cost(),
            0.0
        );
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
