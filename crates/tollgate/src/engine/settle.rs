//! Settling an attempt: budgets reconciled, health fed, and the retry verdict.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::clock::duration_nanos;
use crate::retry::{
    self, BreakerState, Failure, Headers, RetryDecision, RetryInput, Rng, ServerLimits,
};

use super::Compiled;
use super::decision::{GiveUp, Outcome, Verdict};
use super::permit::{Permit, TargetCtx};
use super::route::{Attempt, AttemptRecord, TargetRef};
use crate::metrics::EngineMetrics;

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
    let settlement = permit.inner.settle(outcome);
    if outcome.sent {
        let target = permit.inner.target.as_ref().map(|t| &t.target);
        let code = outcome.failure_class().map(|f| f.code());
        metrics.settled(
            target,
            outcome.status,
            code.as_deref(),
            outcome.usage.as_ref(),
            outcome.latency,
            settlement.spend,
        );
    }
    if outcome.failure_class().is_none() && permit.inner.target.is_none() {
        // The common case: nothing to classify, no target to feed.
        if outcome.sent && outcome.status.is_some() {
            compiled.routing.default_health.retry_budget.on_success();
        }
        return Verdict::Done(settlement);
    }
    let now = compiled.clock.now();
    let policy = &compiled.policy;
    let failure = outcome.failure_class();
    let headers = Headers::new(outcome.headers);
    let target = permit.inner.target.take();
    let journey = std::mem::take(&mut permit.inner.journey);
    drop(permit);

    let upstream_health = target.as_ref().map(|t| Arc::clone(&t.upstream));
    if let Some(t) = &target {
        if let Some(latency) = outcome.latency {
            t.health.observe_latency(latency);
        }
        if let Some(p) = t.breaker.as_ref().copied() {
            if outcome.sent {
                let was_open = matches!(t.health.breaker.state(now), BreakerState::Open { .. });
                let latency = outcome.latency.unwrap_or_default();
                t.health
                    .breaker
                    .record_outcome(p, failure.as_ref(), latency, now);
                if !was_open && matches!(t.health.breaker.state(now), BreakerState::Open { .. }) {
                    t.health.opened();
                }
            } else {
                t.health.breaker.release(p);
            }
        }
        if policy.retry.honor_server_limits {
            t.key
                .server
                .update(&ServerLimits::from_headers(&headers), now);
        }
        if failure == Some(Failure::Status(401)) {
            t.key
                .quarantine(now.saturating_add(duration_nanos(t.quarantine)));
        }
    }
    let budget = upstream_health
        .as_ref()
        .map(|u| &u.retry_budget)
        .unwrap_or(&compiled.routing.default_health.retry_budget);
    let Some(failure) = failure else {
        if outcome.sent && outcome.status.is_some() {
            budget.on_success();
        }
        return Verdict::Done(settlement);
    };
    let retryable = retry::is_retryable(&failure, &policy.retry.retry_on, &headers);
    if retryable {
        budget.on_failure();
    }

    let prior = journey.prior.map(|b| *b).unwrap_or_default();
    let number = journey.number.max(1);
    let time_left = journey
        .deadline
        .map(|d| Duration::from_nanos(d.saturating_sub(now)));
    let input = RetryInput {
        attempt: number,
        failure,
        headers,
        now_wall: SystemTime::now(),
        prev_backoff: prior.prev_backoff,
        time_left,
        content_delivered: outcome.content_delivered,
    };
    let mut rng = Rng::new(compiled.routing.random());
    // A 401 on a key pool is the key's fault, not the request's: move to another key at once,
    // whatever retry_on says, while attempts remain.
    let pool = |t: &TargetCtx| {
        compiled
            .routing
            .upstream_named(&t.target.upstream)
            .map_or(&[][..], |u| &u.keys[..])
    };
    let other_key = target.as_ref().is_some_and(|t| {
        pool(t)
            .iter()
            .any(|k| !Arc::ptr_eq(k, &t.key) && !k.quarantined(now))
    });
    let decision = if failure == Failure::Status(401)
        && other_key
        && !outcome.content_delivered
        && number < policy.retry.max_attempts
    {
        RetryDecision::Retry {
            after: Duration::ZERO,
            reason: retry::RetryReason::Backoff { failure },
        }
    } else {
        retry::decide(&input, &policy.retry, budget, &mut rng)
    };
    let this_target = target.as_ref().map(|t| t.target.clone());
    let mut history = prior.history;
    let outcome_text = failure.code().into_owned();
    match decision {
        RetryDecision::Retry { after, .. } => {
            metrics.retried(&outcome_text);
            let mut next = Attempt {
                number: number + 1,
                deadline: journey.deadline,
                prev_backoff: after,
                next: None,
                failed_targets: prior.failed_targets,
                failed_keys: prior.failed_keys,
                history: vec![],
            };
            if let Some(t) = &target {
                let key_problem = matches!(failure, Failure::Status(401) | Failure::Status(429));
                if key_problem && pool(t).len() > 1 {
                    // Same target, another key.
                    next.failed_keys
                        .push((Arc::clone(&t.target.upstream), Arc::clone(&t.target.key)));
                    let other = pool(t).iter().find(|k| {
                        !Arc::ptr_eq(k, &t.key)
                            && !k.quarantined(now)
                            && !next
                                .failed_keys
                                .iter()
                                .any(|(u, id)| *u == t.target.upstream && *id == k.id)
                    });
                    let mut same = t.target.clone();
                    if let Some(k) = other {
                        same.key = Arc::clone(&k.id);
                    }
                    next.next = Some(same);
                } else {
                    next.failed_targets
                        .push((Arc::clone(&t.target.upstream), Arc::clone(&t.target.model)));
                    let route = compiled
                        .routing
                        .routes
                        .iter()
                        .position(|r| r.name == t.target.route);
                    let candidates = route
                        .map(|r| compiled.routing.candidates(r, Some(&next)))
                        .unwrap_or_default();
                    // The first candidate that will be usable when the retry is due: its circuit
                    // not open then, one of its keys not quarantined.
                    let due = now.saturating_add(duration_nanos(after));
                    next.next = candidates.iter().find_map(|c| {
                        let target = &compiled.routing.routes[c.0].targets[c.1];
                        if let BreakerState::Open { until } = target.health.breaker.state(now)
                            && until >= due
                        {
                            return None;
                        }
                        let up = &compiled.routing.upstreams[target.upstream];
                        let key = up.keys.iter().find(|k| !k.quarantined(due))?;
                        Some(compiled.routing.target_ref(*c, key))
                    });
                }
            }
            let decision_text = match &next.next {
                Some(n) => retry_text(after, Some(n)),
                None => retry_text(after, None),
            };
            history.push(AttemptRecord {
                number,
                at: now,
                target: this_target,
                outcome: outcome_text,
                decision: decision_text,
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
            history.push(AttemptRecord {
                number,
                at: now,
                target: this_target,
                outcome: outcome_text,
                decision: format!("gave up: {reason}"),
            });
            Verdict::GiveUp {
                reason: GiveUp {
                    code: reason.code(),
                    message: reason.to_string(),
                    history,
                },
                settlement,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
