//! Settling an attempt, in this order:
//!
//! 1. **Budgets** ([`Permit`]'s `settle`): the reservation is replaced by the usage the outcome
//!    reports (refund or extra charge), concurrency slots are released.
//! 2. **Metrics**: the attempt, its latency, tokens and spend, by target.
//! 3. **Health** of the target ([`feed_health`]): its latency average, its circuit breaker (the
//!    breaker decides which failures count, [`crate::retry::counts_against_breaker`]), the key's
//!    server-side limits from `x-ratelimit-*` headers, and a 401's key quarantine.
//! 4. **Retry budget** of the upstream: a success earns, a failure that `retry_on` retries
//!    spends (a 429 that says when to retry spends `retry.budget.retry_after_cost`), and the
//!    time since the last failure refills it (`refill_per_second`).
//! 5. **The decision** ([`crate::retry::decide()`], which lists its checks): retry after a delay,
//!    or give up; a 401 with another usable key in the pool moves to it at once, through the
//!    same checks.
//! 6. **The verdict** ([`verdict`]): for a retry, where it goes
//!    ([`super::route::Routing::retry_target`]) and the attempt state to admit it with; in
//!    either case the attempt's record joins the call's history.

use std::time::{Duration, SystemTime};

use crate::clock::duration_nanos;
use crate::dialect::{ErrorClass, ProviderError};
use crate::retry::{
    self, BreakerState, Failure, Headers, RetryDecision, RetryInput, Rng, ServerLimits,
};

use super::compile::Compiled;
use super::metrics::EngineMetrics;
use super::outcome::{GiveUp, Outcome, Verdict};
use super::permit::Permit;
use super::route::TargetCtx;
use super::route::{Attempt, AttemptRecord, TargetRef};

/// Appends the decimal digits of `n` (the retry path builds its records without the formatting
/// machinery, which dominated its profile).
fn push_u64(out: &mut String, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[i..].iter().map(|d| char::from(*d)));
}

/// `retry in 1200 ms on openai/gpt-4o (key OPENAI_API_KEY)`, built directly.
fn retry_text(after: Duration, target: Option<&TargetRef>) -> String {
    let mut out = String::with_capacity(96);
    out.push_str("retry in ");
    push_u64(
        &mut out,
        u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
    );
    out.push_str(" ms");
    if let Some(t) = target {
        out.push_str(" on ");
        out.push_str(&t.upstream);
        out.push('/');
        out.push_str(&t.model);
        out.push_str(" (key ");
        out.push_str(&t.key);
        out.push(')');
    }
    out
}

/// Settles with the running policy's retry rules and routes (a reload since admission applies).
pub(crate) fn settle(
    compiled: &Compiled,
    metrics: &EngineMetrics,
    mut permit: Permit,
    outcome: &Outcome<'_>,
) -> Verdict {
    // 1. Budgets.
    let settlement = permit.inner.settle(outcome);
    // 2. Metrics.
    let failure = outcome.failure_class();
    if outcome.sent {
        let target = permit.inner.target.as_ref().map(|t| &t.target);
        let code = failure.as_ref().map(Failure::code);
        metrics.settled(
            target,
            outcome.status,
            code.as_deref(),
            outcome.usage.as_ref(),
            outcome.latency,
            settlement.spend,
        );
    }
    if failure.is_none() && permit.inner.target.is_none() {
        // The common case: nothing to classify, no target to feed.
        if outcome.sent && outcome.status.is_some() {
            compiled.routing.default_health.retry_budget.on_success();
        }
        return Verdict::Done(settlement);
    }
    let now = compiled.clock.now();
    let headers = Headers::new(outcome.headers);
    let target = permit.inner.target.take();
    let journey = std::mem::take(&mut permit.inner.journey);
    drop(permit);
    // 3. Health.
    if let Some(t) = &target {
        feed_health(compiled, t, outcome, failure.as_ref(), &headers, now);
    }
    // 4. Retry budget.
    let budget = target
        .as_ref()
        .map_or(&compiled.routing.default_health.retry_budget, |t| {
            &t.upstream.retry_budget
        });
    let Some(failure) = failure else {
        if outcome.sent && outcome.status.is_some() {
            budget.on_success();
        }
        return Verdict::Done(settlement);
    };
    let policy = &compiled.policy;
    let class = outcome.error.map(|e| e.class);
    let now_wall = SystemTime::now();
    if !retry::is_retryable_with(&failure, class, &policy.retry.retry_on, &headers) {
        budget.refill(now);
    } else if failure == Failure::Status(429) && retry::server_delay(&headers, now_wall).is_some() {
        budget.on_rate_limited_at(now);
    } else {
        budget.on_failure_at(now);
    }
    // 5. The decision.
    let prior = journey.prior.map(|b| *b).unwrap_or_default();
    let number = journey.number.max(1);
    let input = RetryInput {
        attempt: number,
        failure,
        headers,
        now_wall,
        prev_backoff: prior.prev_backoff,
        time_left: journey
            .deadline
            .map(|d| Duration::from_nanos(d.saturating_sub(now))),
        content_delivered: outcome.content_delivered,
        other_key: target.as_ref().is_some_and(|t| {
            compiled
                .routing
                .other_key(t, t.generation == compiled.generation, now)
        }),
        class,
    };
    let mut rng = Rng::new(compiled.routing.random());
    let decision = retry::decide(&input, &policy.retry, budget, &mut rng);
    // 6. The verdict.
    verdict(
        compiled,
        metrics,
        decision,
        target.as_deref(),
        prior,
        (number, journey.deadline),
        (failure, outcome.error),
        settlement,
        now,
    )
}

/// Step 3: what the attempt says about its target's health.
fn feed_health(
    compiled: &Compiled,
    t: &TargetCtx,
    outcome: &Outcome<'_>,
    failure: Option<&Failure>,
    headers: &Headers<'_>,
    now: crate::clock::Nanos,
) {
    if let Some(latency) = outcome.latency {
        t.health.observe_latency(latency);
    }
    if let Some(p) = t.breaker.as_ref().copied() {
        if outcome.sent {
            let was_open = matches!(t.health.breaker.state(now), BreakerState::Open { .. });
            let latency = outcome.latency.unwrap_or_default();
            t.health.breaker.record_outcome(p, failure, latency, now);
            if !was_open && matches!(t.health.breaker.state(now), BreakerState::Open { .. }) {
                t.health.opened();
            }
        } else {
            t.health.breaker.release(p);
        }
    }
    if compiled.policy.retry.honor_server_limits {
        t.key
            .server
            .update(&ServerLimits::from_headers(headers), now);
    }
    if failure == Some(&Failure::Status(401)) {
        t.key
            .quarantine(now.saturating_add(duration_nanos(t.quarantine)));
    }
    if let Some(ErrorClass::QuotaExhausted { daily }) = outcome.error.map(|e| e.class) {
        // A key without quota is held: until the provider's next day for a daily limit,
        // else as a refused key is.
        let hold = if daily {
            until_next_day(SystemTime::now())
        } else {
            t.quarantine
        };
        t.key.quarantine(now.saturating_add(duration_nanos(hold)));
    }
}

/// Time from `now` to the next midnight in China (UTC+8), where the providers that send daily
/// quota errors (Baidu, Zhipu) start their day.
pub(crate) fn until_next_day(now: SystemTime) -> Duration {
    const DAY: u64 = 86_400;
    const OFFSET: u64 = 8 * 3_600;
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let local = secs + Duration::from_secs(OFFSET);
    let next = (local.as_secs() / DAY + 1) * DAY;
    Duration::from_secs(next) - local
}

/// Step 6: the verdict for `decision`, with the attempt's record added to the history.
#[allow(clippy::too_many_arguments)]
fn verdict(
    compiled: &Compiled,
    metrics: &EngineMetrics,
    decision: RetryDecision,
    target: Option<&TargetCtx>,
    prior: Attempt,
    (number, deadline): (u32, Option<crate::clock::Nanos>),
    (failure, error): (Failure, Option<&ProviderError>),
    settlement: crate::Settlement,
    now: crate::clock::Nanos,
) -> Verdict {
    let this_target = target.map(|t| t.target.clone());
    let mut history = prior.history;
    let outcome_text = failure.code().into_owned();
    match decision {
        RetryDecision::Retry { after, .. } => {
            metrics.retried(&outcome_text);
            let mut next = Attempt {
                number: number + 1,
                deadline,
                prev_backoff: after,
                next: None,
                failed_targets: prior.failed_targets,
                failed_keys: prior.failed_keys,
                history: vec![],
            };
            if let Some(t) = target {
                let same = t.generation == compiled.generation;
                next.next = compiled
                    .routing
                    .retry_target(t, same, &mut next, failure, after, now);
            }
            history.push(AttemptRecord {
                number,
                at: now,
                target: this_target,
                outcome: outcome_text,
                decision: retry_text(after, next.next.as_ref()),
            });
            next.history = history;
            Verdict::Retry {
                after,
                target: next.next.clone(),
                attempt: Box::new(next),
                settlement,
            }
        }
        RetryDecision::GiveUp(reason) => {
            metrics.gave_up(reason.code());
            let message = match error {
                Some(e) => format!("{reason}; the upstream said: {e}"),
                None => reason.to_string(),
            };
            history.push(AttemptRecord {
                number,
                at: now,
                target: this_target,
                outcome: outcome_text,
                decision: format!("gave up: {message}"),
            });
            Verdict::GiveUp {
                reason: GiveUp {
                    code: reason.code(),
                    message,
                    history,
                },
                settlement,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_next_day_starts_at_midnight_in_china() {
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        // 1970-01-01 16:00 UTC is midnight in UTC+8.
        assert_eq!(until_next_day(at(16 * 3600 - 1)), Duration::from_secs(1));
        assert_eq!(until_next_day(at(16 * 3600)), Duration::from_secs(86_400));
        assert_eq!(until_next_day(at(0)), Duration::from_secs(16 * 3600));
    }

    #[test]
    fn records_read_as_before() {
        let t = TargetRef {
            route: Arc::from("r"),
            upstream: Arc::from("openai"),
            model: Arc::from("gpt-4o"),
            key: Arc::from("OPENAI_API_KEY"),
        };
        assert_eq!(
            retry_text(Duration::from_millis(1200), Some(&t)),
            format!("retry in {} ms on {t}", 1200)
        );
        assert_eq!(retry_text(Duration::ZERO, None), "retry in 0 ms");
        let mut s = String::new();
        push_u64(&mut s, u64::MAX);
        assert_eq!(s, u64::MAX.to_string());
    }
}
