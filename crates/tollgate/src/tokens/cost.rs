//! Money: tokens × price.

use super::{Price, Usage};

/// The cost of one call, split by what was billed, in the price table's currency.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Cost {
    /// Uncached prompt tokens × input price.
    pub input: f64,
    /// Cached prompt tokens × cached-input price.
    pub cached_input: f64,
    /// Completion tokens (reasoning included) × output price.
    pub output: f64,
}

impl Cost {
    /// The sum of the three parts.
    pub fn total(&self) -> f64 {
        self.input + self.cached_input + self.output
    }
}

const PER_MILLION: f64 = 1_000_000.0;

/// The cost of `usage` at `price` (prices are per 1M tokens).
///
/// Input is billed on the uncached prompt tokens, cached input on the cached ones, and output on
/// all completion tokens: reasoning tokens are part of `completion_tokens` and billed as output.
///
/// ```
/// use tollgate::tokens::{cost, Price, Usage};
/// let price = Price { input: 2.5, cached_input: 1.25, output: 10.0 };
/// let usage = Usage { prompt_tokens: 1_000_000, cached_prompt_tokens: 400_000,
///                     completion_tokens: 100_000, ..Usage::default() };
/// let c = cost(&price, &usage);
/// assert_eq!((c.input, c.cached_input, c.output), (1.5, 0.5, 1.0));
/// assert_eq!(c.total(), 3.0);
/// ```
pub fn cost(price: &Price, usage: &Usage) -> Cost {
    let cached = usage.cached_prompt_tokens.min(usage.prompt_tokens);
    let uncached = usage.prompt_tokens - cached;
    Cost {
        input: uncached as f64 * price.input / PER_MILLION,
        cached_input: cached as f64 * price.cached_input / PER_MILLION,
        output: usage.completion_tokens as f64 * price.output / PER_MILLION,
    }
}

/// The most a call can cost before it is sent: every prompt token at the uncached price plus
/// the completion allowance at the output price. For admission against spend budgets.
///
/// ```
/// use tollgate::tokens::{estimate_cost, Price};
/// let price = Price { input: 2.5, cached_input: 1.25, output: 10.0 };
/// assert_eq!(estimate_cost(&price, 2_000, 500), 0.01);
/// ```
pub fn estimate_cost(price: &Price, prompt_tokens: u64, completion_tokens: u64) -> f64 {
    (prompt_tokens as f64 * price.input + completion_tokens as f64 * price.output) / PER_MILLION
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Price = Price {
        input: 2.5,
        cached_input: 1.25,
        output: 10.0,
    };

    #[test]
    fn zero_usage_costs_nothing() {
        assert_eq!(cost(&P, &Usage::default()).total(), 0.0);
        assert_eq!(estimate_cost(&P, 0, 0), 0.0);
    }

    #[test]
    fn reasoning_is_output() {
        let u = Usage {
            completion_tokens: 1_000,
            reasoning_tokens: 900,
            ..Usage::default()
        };
        assert_eq!(cost(&P, &u).output, 0.01);
    }

    #[test]
    fn inconsistent_cache_count_is_clamped() {
        let u = Usage {
            prompt_tokens: 10,
            cached_prompt_tokens: 50,
            ..Usage::default()
        };
        let c = cost(&P, &u);
        assert_eq!(c.input, 0.0);
        assert_eq!(c.cached_input, 10.0 * 1.25 / 1e6);
    }

    #[test]
    fn estimate_is_an_upper_bound_of_the_actual_cost() {
        let u = Usage {
            prompt_tokens: 5_000,
            cached_prompt_tokens: 4_000,
            completion_tokens: 300,
            ..Usage::default()
        };
        assert!(cost(&P, &u).total() <= estimate_cost(&P, 5_000, 300));
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        let u = Usage {
            prompt_tokens: u64::MAX,
            completion_tokens: u64::MAX,
            ..Usage::default()
        };
        assert!(cost(&P, &u).total().is_finite());
        assert!(estimate_cost(&P, u64::MAX, u64::MAX).is_finite());
    }
}
