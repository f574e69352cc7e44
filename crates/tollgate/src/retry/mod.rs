//! Retry decisions, pure: what ended an attempt, whether and when to try again, and whether an
//! upstream is healthy enough to call at all.
//!
//! Nothing here does I/O, spawns, sleeps or reads a clock: monotonic time comes in as
//! [`Nanos`](crate::clock::Nanos), wall-clock time (for HTTP dates) as a `SystemTime`, and
//! randomness from a seeded [`Rng`]. So every behaviour is tested exactly, in virtual time.
//!
//! - [`classify`]: [`Failure`] and [`is_retryable`] (`x-should-retry`, then `retry_on`).
//! - [`headers`]: [`Headers`], a view over raw response headers, and the parsers for
//!   `retry-after-ms`, `Retry-After` (all RFC 9110 date forms) and OpenAI's `x-ratelimit-*`;
//!   [`server_delay`] and [`ServerLimits`].
//! - [`backoff`](mod@backoff): exponential backoff with none / full / equal / decorrelated jitter.
//! - [`budget`]: [`RetryBudget`], gRPC A6 retry throttling, also refilled with time, with a
//!   cheaper 429 when the server said when to retry.
//! - [`breaker`]: [`CircuitBreaker`], resilience4j semantics, lock-free check.
//! - [`decide`](mod@decide): [`decide()`], the verdict on one failed attempt.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use tollgate::policy::Retry;
//! use tollgate::retry::{decide, Failure, Headers, RetryBudget, RetryDecision, RetryInput, Rng};
//!
//! let policy = Retry::default();
//! let budget = RetryBudget::from_policy(&policy);
//! let mut rng = Rng::new(42);
//! let fields: &[(&str, &[u8])] = &[("x-ratelimit-remaining-tokens", b"0"), ("x-ratelimit-reset-tokens", b"1.5s")];
//!
//! budget.on_failure(); // a retryable failure: record it, then decide
//! let input = RetryInput {
//!     headers: Headers::new(fields),
//!     now_wall: SystemTime::now(),
//!     ..RetryInput::new(1, Failure::Status(429))
//! };
//! let decision = decide(&input, &policy, &budget, &mut rng);
//! assert_eq!(decision.code(), "server_delay");
//! if let RetryDecision::Retry { after, .. } = decision {
//!     assert_eq!(after, Duration::from_millis(1500));
//! }
//! ```

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod classify;
pub mod decide;
pub mod headers;

pub use crate::rng::SplitMix64 as Rng;
pub use backoff::{backoff, exponential};
pub use breaker::{
    BreakerCounts, BreakerPermit, BreakerSnapshot, BreakerState, CircuitBreaker, Rejected,
    counts_against_breaker,
};
pub use budget::RetryBudget;
pub use classify::{
    ConnectKind, Failure, TimeoutKind, is_retryable, is_retryable_with, is_success,
    should_retry_header,
};
pub use decide::{GiveUpReason, RetryDecision, RetryInput, RetryReason, decide};
pub use headers::{
    DelaySource, Headers, ServerLimits, parse_count, parse_go_duration, parse_http_date,
    parse_retry_after, parse_retry_after_ms, server_delay, server_delay_with_source,
};
