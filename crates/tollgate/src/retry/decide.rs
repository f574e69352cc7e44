//! The retry decision for one failed attempt.
//!
//! Checks run in this order, and the first that refuses gives the reason:
//!
//! 1. content already reached the caller → [`GiveUpReason::ContentDelivered`] (a stream that
//!    has shown text is never silently replayed);
//! 2. a 401 while another key of the target's pool is usable ([`RetryInput::other_key`]) is the
//!    key's fault, not the request's: it moves to that key at once ([`RetryReason::OtherKey`])
//!    whatever `retry_on` says, subject to the checks below; any other failure that is not
//!    retryable ([`is_retryable`]: `x-should-retry`, then `retry_on`) →
//!    [`GiveUpReason::NotRetryable`];
//! 3. `attempt >= max_attempts` → [`GiveUpReason::AttemptsExhausted`];
//! 4. the retry budget refuses → [`GiveUpReason::RetryBudgetExhausted`];
//! 5. the delay: none for a move to another key, else what the server asked for
//!    ([`server_delay_with_source`]), else [`backoff`];
//! 6. a server delay above `max_retry_after` → [`GiveUpReason::ServerDelayTooLong`] (give up
//!    rather than sleep that long);
//! 7. a delay that does not end before the caller's deadline →
//!    [`GiveUpReason::DeadlineTooClose`].

use std::fmt;
use std::time::{Duration, SystemTime};

use super::backoff::backoff;
use super::budget::RetryBudget;
use super::classify::{Failure, is_retryable, should_retry_header};
use super::headers::{DelaySource, Headers, server_delay_with_source};
use crate::dialect::ErrorClass;
use crate::policy::Retry;
use crate::rng::SplitMix64 as Rng;

/// Everything known about the attempt that just failed.
#[derive(Debug, Clone, Copy)]
pub struct RetryInput<'a> {
    /// The number of the attempt that failed, 1 for the first.
    pub attempt: u32,
    /// What ended it.
    pub failure: Failure,
    /// The response headers ([`Headers::EMPTY`] when no response head arrived).
    pub headers: Headers<'a>,
    /// Wall-clock time now, to read HTTP-date `Retry-After` values.
    pub now_wall: SystemTime,
    /// The delay before the failed attempt (zero for the first attempt): the `after` of the
    /// previous [`RetryDecision::Retry`]. Only decorrelated jitter reads it.
    pub prev_backoff: Duration,
    /// Time left until the caller's deadline, if it has one.
    pub time_left: Option<Duration>,
    /// Whether part of the response already reached the caller (a stream that showed text).
    pub content_delivered: bool,
    /// Whether another key of the target's key pool is usable now (not quarantined), so a 401
    /// can move to it.
    pub other_key: bool,
    /// What the upstream's error body or headers said ([`crate::dialect::ProviderError`]):
    /// a class that says no retry can succeed ends the call (or moves a key pool to its next
    /// key when the key is at fault); `None`: the status alone decides.
    pub class: Option<ErrorClass>,
}

impl<'a> RetryInput<'a> {
    /// An input for `failure` on `attempt`, with no headers, no deadline, nothing delivered, and
    /// the Unix epoch as wall time; set the other fields as needed.
    pub fn new(attempt: u32, failure: Failure) -> RetryInput<'static> {
        RetryInput {
            attempt,
            failure,
            headers: Headers::EMPTY,
            now_wall: SystemTime::UNIX_EPOCH,
            prev_backoff: Duration::ZERO,
            time_left: None,
            content_delivered: false,
            other_key: false,
            class: None,
        }
    }
}

/// Why a retry goes ahead, and what set its delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryReason {
    /// The server said how long to wait.
    ServerDelay {
        /// The failure being retried.
        failure: Failure,
        /// The header that set the delay.
        source: DelaySource,
    },
    /// The policy's exponential backoff with jitter set the delay.
    Backoff {
        /// The failure being retried.
        failure: Failure,
    },
    /// A 401 on a key pool: the next attempt uses another key, at once.
    OtherKey {
        /// The failure being retried (a 401).
        failure: Failure,
    },
}

impl RetryReason {
    /// A stable name: `server_delay` or `backoff`.
    pub fn code(&self) -> &'static str {
        match self {
            RetryReason::ServerDelay { .. } => "server_delay",
            RetryReason::Backoff { .. } => "backoff",
            RetryReason::OtherKey { .. } => "other_key",
        }
    }

    /// The failure being retried.
    pub fn failure(&self) -> Failure {
        match *self {
            RetryReason::ServerDelay { failure, .. }
            | RetryReason::Backoff { failure }
            | RetryReason::OtherKey { failure } => failure,
        }
    }
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryReason::ServerDelay { failure, source } => write!(
                f,
                "{failure} is retried after the delay the server asked for ({})",
                source.header()
            ),
            RetryReason::Backoff { failure } => {
                write!(f, "{failure} is retried after exponential backoff")
            }
            RetryReason::OtherKey { failure } => {
                write!(
                    f,
                    "{failure}: the key is refused; retried at once with another key"
                )
            }
        }
    }
}

/// Why no retry is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GiveUpReason {
    /// The failure is not one that is retried.
    NotRetryable {
        /// The failure.
        failure: Failure,
        /// The server said `x-should-retry: false` (otherwise `retry_on` does not list it).
        server_said_no: bool,
    },
    /// Every attempt the policy allows was made.
    AttemptsExhausted {
        /// `max_attempts` of the policy.
        max: u32,
    },
    /// The server asked for a longer wait than `max_retry_after`.
    ServerDelayTooLong {
        /// What the server asked for.
        asked: Duration,
        /// `max_retry_after` of the policy.
        cap: Duration,
    },
    /// The retry could not start before the caller's deadline.
    DeadlineTooClose {
        /// The delay the retry would wait.
        after: Duration,
        /// Time left until the deadline.
        left: Duration,
    },
    /// Too many recent failures on this upstream: the retry budget (gRPC A6) is spent.
    RetryBudgetExhausted,
    /// Part of the response already reached the caller; replaying would duplicate it.
    ContentDelivered,
    /// The upstream's error says no retry can succeed: its quota or credit is exhausted (and no
    /// other key of the pool is usable), the request is invalid, the renewed credential was
    /// refused, or the error is one tollgate does not know.
    Upstream {
        /// The failure (the status the error stands for).
        failure: Failure,
        /// What the upstream's error means.
        class: ErrorClass,
    },
}

impl GiveUpReason {
    /// A stable, machine-readable name.
    pub fn code(&self) -> &'static str {
        match self {
            GiveUpReason::NotRetryable { .. } => "not_retryable",
            GiveUpReason::AttemptsExhausted { .. } => "attempts_exhausted",
            GiveUpReason::ServerDelayTooLong { .. } => "server_delay_too_long",
            GiveUpReason::DeadlineTooClose { .. } => "deadline_too_close",
            GiveUpReason::RetryBudgetExhausted => "retry_budget_exhausted",
            GiveUpReason::ContentDelivered => "content_delivered",
            GiveUpReason::Upstream {
                class: ErrorClass::QuotaExhausted { .. },
                ..
            } => "quota_exhausted",
            GiveUpReason::Upstream { .. } => "not_retryable",
        }
    }
}

fn ms(d: &Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GiveUpReason::NotRetryable {
                failure,
                server_said_no: true,
            } => write!(
                f,
                "{failure}: the server said not to retry (x-should-retry: false)"
            ),
            GiveUpReason::NotRetryable { failure, .. } => write!(
                f,
                "{failure} is not retried; add it to retry.retry_on to retry it"
            ),
            GiveUpReason::AttemptsExhausted { max } => {
                write!(
                    f,
                    "gave up after {max} attempts (retry.max_attempts = {max})"
                )
            }
            GiveUpReason::ServerDelayTooLong { asked, cap } => write!(
                f,
                "the server asked to wait {:.0} ms, more than retry.max_retry_after ({:.0} ms)",
                ms(asked),
                ms(cap)
            ),
            GiveUpReason::DeadlineTooClose { after, left } => write!(
                f,
                "a retry in {:.0} ms would not start before the deadline ({:.0} ms left)",
                ms(after),
                ms(left)
            ),
            GiveUpReason::RetryBudgetExhausted => {
                f.write_str("retry budget exhausted: too many recent failures on this upstream")
            }
            GiveUpReason::ContentDelivered => {
                f.write_str("part of the response already reached the caller; not replayed")
            }
            GiveUpReason::Upstream { failure, class } => {
                let why = match class {
                    ErrorClass::QuotaExhausted { .. } => {
                        "the upstream says the quota or credit is exhausted; not retried on \
                         this key, and no other key of its pool is usable"
                    }
                    ErrorClass::InvalidRequest => {
                        "the upstream says the request is invalid; a retry cannot succeed"
                    }
                    ErrorClass::AuthExpired | ErrorClass::Refused => {
                        "the upstream refused the credentials"
                    }
                    _ => "an upstream error tollgate does not know; not retried",
                };
                write!(f, "{failure}: {why}")
            }
        }
    }
}

/// The verdict on a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryDecision {
    /// Try again after `after`.
    Retry {
        /// How long to wait first.
        after: Duration,
        /// Why, and what set the delay.
        reason: RetryReason,
    },
    /// Return the failure to the caller.
    GiveUp(GiveUpReason),
}

impl RetryDecision {
    /// A stable name: the reason's code.
    pub fn code(&self) -> &'static str {
        match self {
            RetryDecision::Retry { reason, .. } => reason.code(),
            RetryDecision::GiveUp(r) => r.code(),
        }
    }
}

impl fmt::Display for RetryDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryDecision::Retry { after, reason } => {
                write!(f, "retry in {:.0} ms: {reason}", ms(after))
            }
            RetryDecision::GiveUp(r) => write!(f, "gave up: {r}"),
        }
    }
}

/// Decides whether and when to retry after a failed attempt (order in the module docs).
///
/// Pure: reads the budget without changing it (record the attempt's outcome in the budget
/// first) and draws from `rng` only when the delay comes from jittered backoff.
///
/// ```
/// use std::time::Duration;
/// use tollgate::policy::Retry;
/// use tollgate::retry::{decide, Failure, Headers, RetryBudget, RetryDecision, RetryInput, Rng};
///
/// let policy = Retry::default();
/// let budget = RetryBudget::from_policy(&policy);
/// let fields: &[(&str, &[u8])] = &[("retry-after", b"2")];
/// let input = RetryInput { headers: Headers::new(fields), ..RetryInput::new(1, Failure::Status(429)) };
/// match decide(&input, &policy, &budget, &mut Rng::new(1)) {
///     RetryDecision::Retry { after, .. } => assert_eq!(after, Duration::from_secs(2)),
///     RetryDecision::GiveUp(reason) => panic!("{reason}"),
/// }
/// ```
pub fn decide(
    input: &RetryInput<'_>,
    policy: &Retry,
    budget: &RetryBudget,
    rng: &mut Rng,
) -> RetryDecision {
    use RetryDecision::GiveUp;
    if input.content_delivered {
        return GiveUp(GiveUpReason::ContentDelivered);
    }
    let key_at_fault =
        input.failure == Failure::Status(401) || input.class.is_some_and(ErrorClass::key_at_fault);
    let other_key = input.other_key && key_at_fault;
    if !other_key
        && let Some(class) = input.class
        && class.retryable() == Some(false)
    {
        return GiveUp(GiveUpReason::Upstream {
            failure: input.failure,
            class,
        });
    }
    if !other_key && !is_retryable(&input.failure, &policy.retry_on, &input.headers) {
        return GiveUp(GiveUpReason::NotRetryable {
            failure: input.failure,
            server_said_no: should_retry_header(&input.headers) == Some(false),
        });
    }
    if input.attempt >= policy.max_attempts {
        return GiveUp(GiveUpReason::AttemptsExhausted {
            max: policy.max_attempts,
        });
    }
    if !budget.allows_retry() {
        return GiveUp(GiveUpReason::RetryBudgetExhausted);
    }
    let failure = input.failure;
    let server = if other_key {
        None
    } else {
        server_delay_with_source(&input.headers, input.now_wall)
    };
    let (after, reason) = match server {
        Some((asked, source)) => {
            if asked > policy.max_retry_after {
                return GiveUp(GiveUpReason::ServerDelayTooLong {
                    asked,
                    cap: policy.max_retry_after,
                });
            }
            (asked, RetryReason::ServerDelay { failure, source })
        }
        None if other_key => (Duration::ZERO, RetryReason::OtherKey { failure }),
        None => {
            let d = backoff(
                input.attempt,
                input.prev_backoff,
                policy.base,
                policy.max_backoff,
                policy.jitter,
                rng,
            );
            (d, RetryReason::Backoff { failure })
        }
    };
    if let Some(left) = input.time_left
        && after >= left
    {
        return GiveUp(GiveUpReason::DeadlineTooClose { after, left });
    }
    RetryDecision::Retry { after, reason }
}
