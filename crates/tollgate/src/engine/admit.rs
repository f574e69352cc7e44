//! Admission: may this call go now, later, or never?
//!
//! Checks run in this order; the first that refuses or blocks gives the answer, and an attempt
//! that fails one check takes nothing from the others (every hold it made is given back):
//!
//! 1. **The request** ([`spec`]): the prompt is counted (exactly for o200k/cl100k models,
//!    estimated otherwise); a body that cannot be read is refused (`invalid_request`).
//! 2. **The route** ([`try_admit_once`]): a call whose model has a `[[route]]` walks the route's
//!    targets in its strategy's order ([`super::route::Routing::candidates`]), passing over a target
//!    whose circuit breaker is open (or, with synthetic probes, half-open), whose every pool key
//!    is quarantined (a 401) or held by the server's rate-limit headers until their reset, and a
//!    target or key a Redis budget already refused for this call. A call without a route is
//!    admitted as it is, with no target.
//! 3. **The context window** ([`super::call::price`]), per target model: the prompt plus the
//!    completion allowance must fit (`context_window`); the allowance and the price give the
//!    tokens and money to reserve.
//! 4. **Local budgets** ([`attempt`]), every budget whose `match` and scope cover the call, in
//!    policy order, all or nothing: a key the budget cannot track (`key_capacity`), a spend limit
//!    on a model without a price (`unknown_price`), earlier waiters of higher priority in the
//!    key's queue (blocked), a cost above the limit's burst (`never_fits`), no room in a limit
//!    (blocked, with the time until there is), no concurrency slot (blocked).
//! 5. **Redis budgets**, in the same pass: taken from a local lease, or decided locally when
//!    Redis is down and the policy fails open, or refused when it fails closed, or asked of
//!    Redis in one round trip for all of them ([`resolve`]); a refusal by a budget about one
//!    target (scoped or matched by upstream or key) moves the call to the next target.
//! 6. **Blocked or refused targets**: a refusal or block by a budget that is not about the
//!    target (a tenant's, a model's) ends the walk, since every target would meet it; one about
//!    the target tries the next. When every target was passed over, the call is `unavailable`
//!    with the earliest time one takes calls again.
//!
//! What a blocked call does next is [`blocked_verdict`]: wait (the budget's `when_exhausted =
//! { wait_up_to }`, never past it) or be refused (`budget_exhausted`, `concurrency`,
//! `waited_too_long`). An `unavailable` call waits for its targets up to
//! `retry.max_retry_after` ([`unavailable_wait`]) through every API. The decide API turns the
//! result into a [`Decision`] ([`decision`]); waiters and the call API into a queue position or
//! a wait.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use smallvec::SmallVec;

use super::metrics::EngineMetrics;
use crate::budget::gcra;
use crate::budget::{BudgetState, CapacityFull, Cell};
use crate::clock::{Nanos, duration_nanos};
use crate::money::Money;
use crate::policy::{Exhausted, LimitKind, Policy, Unit};

use super::budgets::{self, CompiledBudget, CompiledLimit};
use super::call::{self, Call, CallView, Counted, Demand};
use super::compile::Compiled;
use super::decision::{Decision, WaitHint};
use super::deny::{Denial, DenyReason};
use super::hold::Hold;
use super::pending::{Blocked, Finished, Pending, Try};
use super::permit::{self, Journey, Permit};
use super::remote::{self, Excluded};
use super::route::TargetCtx;
use super::route::{self, Skip};
use crate::store::{AdmitReply, AdmitRequest, RedisStore, StoreError};

/// A route resolved ahead (by the call API, which needs to know it before admission): the
/// route of policy `generation`, or `None` for a call without one. Admission uses it while that
/// policy runs and resolves the route again after a reload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteHint {
    pub generation: u64,
    pub route: Option<usize>,
}

/// A call as admission sees it: who, the counted prompt, and its retry state.
pub(crate) struct Spec<'a> {
    pub view: CallView<'a>,
    pub counted: Counted,
    pub attempt: Option<&'a route::Attempt>,
    pub number: u32,
    pub deadline: Option<Nanos>,
    /// Route targets (route, target) and keys not to try: a Redis budget of theirs refused the
    /// call.
    pub exclude: &'a [remote::Excluded],
    /// The route, when resolved ahead.
    pub route: Option<RouteHint>,
}

impl<'a> Spec<'a> {
    pub(crate) fn new(
        view: CallView<'a>,
        counted: Counted,
        call: &Call<'a>,
        now: Nanos,
    ) -> Spec<'a> {
        let deadline = match call.attempt {
            Some(a) => a.deadline,
            None => call.deadline.map(|d| now.saturating_add(duration_nanos(d))),
        };
        Spec {
            view,
            counted,
            attempt: call.attempt,
            number: call.attempt.map_or(1, |a| a.number.max(1)),
            deadline,
            exclude: &[],
            route: None,
        }
    }

    /// The same call, not to be tried on `exclude`.
    pub(crate) fn excluding<'b>(&'b self, exclude: &'b [remote::Excluded]) -> Spec<'b>
    where
        'a: 'b,
    {
        Spec {
            view: self.view,
            counted: self.counted,
            attempt: self.attempt,
            number: self.number,
            deadline: self.deadline,
            exclude,
            route: self.route,
        }
    }

    fn journey(&self) -> Journey {
        Journey {
            number: self.number,
            deadline: self.deadline,
            prior: self.attempt.map(|a| Box::new(a.clone())),
        }
    }
}

/// Admission of one call, waiting for Redis on this thread when Redis budgets match (at most
/// `op_timeout` per round trip). Never returns [`Try::Remote`].
#[inline]
pub(crate) fn try_admit(compiled: &Compiled, spec: &Spec<'_>, seq: Option<u64>, now: Nanos) -> Try {
    let first = try_admit_once(compiled, spec, seq, now);
    if !matches!(first, Try::Remote(_)) {
        return first;
    }
    resolve_blocking(compiled, spec, seq, now, first)
}

/// The blocking end of [`try_admit`], out of the way of the local path.
#[cold]
#[inline(never)]
fn resolve_blocking(
    compiled: &Compiled,
    spec: &Spec<'_>,
    seq: Option<u64>,
    now: Nanos,
    first: Try,
) -> Try {
    let resolving = resolve(compiled, spec, seq, now, first, |store, request| {
        std::future::ready(store.admit_blocking(request))
    });
    // The round trips above block instead of awaiting, so the future is ready at once.
    let mut resolving = std::pin::pin!(resolving);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match resolving.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(t) => t,
        std::task::Poll::Pending => Try::Deny(Denial::new(DenyReason::StoreUnavailable {
            store: "redis",
            detail: "admission did not settle".to_owned(),
        })),
    }
}

/// [`try_admit`] for async code: the round trips to Redis are awaited.
pub(crate) async fn try_admit_async(
    compiled: &Compiled,
    spec: &Spec<'_>,
    seq: Option<u64>,
    now: Nanos,
) -> Try {
    let first = try_admit_once(compiled, spec, seq, now);
    if !matches!(first, Try::Remote(_)) {
        return first;
    }
    resolve(
        compiled,
        spec,
        seq,
        now,
        first,
        |store, request| async move { store.admit_async(request).await },
    )
    .await
}

/// Admission of one call: through its route's targets when it has a route, else directly. Redis
/// budgets are not asked yet: an attempt that needs them comes back as [`Try::Remote`].
pub(crate) fn try_admit_once(
    compiled: &Compiled,
    spec: &Spec<'_>,
    seq: Option<u64>,
    now: Nanos,
) -> Try {
    let v = &spec.view;
    let route = match spec.route {
        Some(hint) if hint.generation == compiled.generation => hint.route,
        _ => compiled.routing.route_for(v.route, v.model, v.upstream),
    };
    let Some(route) = route else {
        let demand = match call::price(
            &compiled.policy,
            &compiled.models,
            &compiled.memo,
            &spec.counted,
            v.model,
        ) {
            Ok(d) => d,
            Err(denial) => return Try::Deny(denial),
        };
        let mut result = attempt(compiled, v, &demand, seq, now);
        match &mut result {
            Try::Go(p) => p.inner.journey = spec.journey(),
            Try::Remote(p) => p.journey = spec.journey(),
            _ => {}
        }
        return result;
    };
    let routing = &compiled.routing;
    let mut first_blocked = None;
    let mut first_deny = None;
    let mut skipped: SmallVec<[Skip; 2]> = SmallVec::new();
    let avoid = spec.attempt.map_or(&[][..], |a| &a.failed_keys[..]);
    let synthetic_probes = compiled.policy.breaker.probe.is_some();
    for c in routing.candidates(route, spec.attempt) {
        let t = &routing.routes[c.0].targets[c.1];
        let up = &routing.upstreams[t.upstream];
        let breaker = match routing.enter(c, synthetic_probes, now) {
            Ok(p) => p,
            Err(skip) => {
                skipped.push(skip);
                continue;
            }
        };
        let demand = match call::price(
            &compiled.policy,
            &compiled.models,
            &compiled.memo,
            &spec.counted,
            &t.model,
        ) {
            Ok(d) => d,
            Err(denial) => {
                t.health.breaker.release(breaker);
                first_deny.get_or_insert(denial);
                continue;
            }
        };
        let never: SmallVec<[&str; 2]> = spec
            .exclude
            .iter()
            .filter(|(x, _)| *x == c)
            .map(|(_, k)| &**k)
            .collect();
        let key = match routing.pick_key(t.upstream, avoid, &never, demand.tokens, now) {
            Ok(k) => k,
            Err(skip) => {
                t.health.breaker.release(breaker);
                skipped.push(skip);
                continue;
            }
        };
        let view = CallView {
            tenant: v.tenant,
            model: &t.model,
            upstream: &up.name,
            key: &key.id,
            route: &routing.routes[c.0].name,
            priority: v.priority,
        };
        let ctx = |breaker| {
            Some(Box::new(TargetCtx {
                target: routing.target_ref(c, key),
                generation: compiled.generation,
                candidate: c,
                upstream_index: t.upstream,
                health: Arc::clone(&t.health),
                breaker: Some(breaker),
                key: Arc::clone(key),
                upstream: Arc::clone(&up.health),
                quarantine: up.quarantine,
            }))
        };
        match attempt(compiled, &view, &demand, seq, now) {
            Try::Go(mut permit) => {
                permit.inner.target = ctx(breaker);
                permit.inner.journey = spec.journey();
                return Try::Go(permit);
            }
            Try::Remote(mut pending) => {
                pending.target = ctx(breaker);
                pending.candidate = Some(c);
                pending.journey = spec.journey();
                return Try::Remote(pending);
            }
            // A refusal by a budget that is not about this target (a tenant's, a model's)
            // would follow the call to every target: it ends the search.
            Try::Blocked(b) => {
                t.health.breaker.release(breaker);
                if !compiled.budgets[b.budget].target_specific {
                    return Try::Blocked(b);
                }
                first_blocked.get_or_insert(b);
            }
            Try::Deny(d) => {
                t.health.breaker.release(breaker);
                let specific = d.budget.as_ref().is_none_or(|name| {
                    compiled
                        .budgets
                        .iter()
                        .any(|b| Arc::ptr_eq(&b.state.name, name) && b.target_specific)
                });
                if !specific {
                    return Try::Deny(d);
                }
                first_deny.get_or_insert(d);
            }
        }
    }
    if let Some(b) = first_blocked {
        return Try::Blocked(b);
    }
    if let Some(d) = first_deny {
        return Try::Deny(d);
    }
    Try::Deny(Denial::new(routing.unavailable(route, &skipped, now)))
}

/// One all-or-nothing admission attempt at `now`. `seq` is the waiter's queue ticket, if any.
pub(crate) fn attempt(
    compiled: &Compiled,
    call: &CallView<'_>,
    demand: &Demand,
    seq: Option<u64>,
    now: Nanos,
) -> Try {
    // The permit's box from the start: the holds are made in place rather than moved into it
    // (a few hundred bytes copied per call otherwise).
    let mut held = Box::new(permit::Held {
        holds: SmallVec::new(),
        demand: *demand,
        settled: false,
        target: None,
        journey: Journey::default(),
    });
    let holds = &mut held.holds;
    // Empty (no allocation) unless a Redis budget matches: the local path stays as it was.
    let mut asks: Vec<remote::Ask> = Vec::new();
    let undo = |holds: &mut SmallVec<[Hold; 3]>| {
        for h in holds.drain(..) {
            if h.remote.is_some() {
                budgets::return_leased(&compiled.budgets, &h);
            } else {
                h.undo(now);
            }
        }
    };
    for (i, b) in compiled.budgets.iter().enumerate() {
        if !b.matches(call) {
            continue;
        }
        let cell = match b.cell(call, now) {
            Ok(c) => c,
            Err(CapacityFull(capacity)) => {
                undo(holds);
                return Try::Deny(Denial {
                    budget: Some(Arc::clone(&b.state.name)),
                    key: Some(Arc::from(b.key_text(call))),
                    reason: DenyReason::KeyCapacity { capacity },
                });
            }
        };
        if b.spends && demand.price.is_none() {
            undo(holds);
            let reason = DenyReason::UnknownPrice {
                model: call.model.to_owned(),
            };
            return Try::Deny(Denial::by(&b.state.name, cell.key(), reason));
        }
        if !cell.queue.may_pass(call.priority, seq) {
            undo(holds);
            let wait = first_wait(b, &cell, demand, now);
            return Try::Blocked(Blocked {
                budget: i,
                cell,
                wait: None,
                limit: wait.map(|w| w.1),
            });
        }
        if let Some(r) = &b.remote {
            if let Some(l) = r
                .limits
                .iter()
                .find(|l| !l.rate.fits(l.rate.increment(b.units(l.unit, demand))))
            {
                undo(holds);
                let reason = never_fits(b, l, demand);
                return Try::Deny(Denial::by(&b.state.name, cell.key(), reason));
            }
            match remote::plan(i, b, r, &cell, demand, now) {
                // Redis is down and the policy fails open: this process's share, locally.
                remote::Plan::Local => {}
                remote::Plan::Deny(reason) => {
                    undo(holds);
                    return Try::Deny(Denial::by(&b.state.name, cell.key(), reason));
                }
                remote::Plan::Leased(hold) => {
                    holds.push(hold);
                    continue;
                }
                remote::Plan::Ask(ask) => {
                    asks.push(ask);
                    continue;
                }
            }
        }
        holds.push(Hold {
            cell: Arc::clone(&cell),
            slots: 0,
            charges: SmallVec::new(),
            concurrency: false,
            remote: None,
        });
        let hold = holds.last_mut().expect("just pushed");
        for l in &b.limits {
            let inc = l.rate.increment(b.units(l.unit, demand));
            if !l.rate.fits(inc) {
                undo(holds);
                let reason = never_fits(b, l, demand);
                return Try::Deny(Denial::by(&b.state.name, cell.key(), reason));
            }
            match gcra::reserve(&cell.tat[l.slot], &l.rate, inc, now) {
                Ok(charge) => {
                    hold.slots |= 1 << l.slot;
                    hold.charges.push(charge);
                }
                Err(wait) => {
                    undo(holds);
                    return Try::Blocked(Blocked {
                        budget: i,
                        cell,
                        wait: Some(wait),
                        limit: Some(l.kind),
                    });
                }
            }
        }
        if let Some(max) = b.concurrency {
            if !cell.try_acquire(max) {
                undo(holds);
                return Try::Blocked(Blocked {
                    budget: i,
                    cell,
                    wait: None,
                    limit: None,
                });
            }
            hold.concurrency = true;
        }
    }
    if !asks.is_empty() {
        let holds = std::mem::take(holds);
        return Try::Remote(Box::new(Pending::new(compiled, holds, asks, *demand)));
    }
    Try::Go(Permit { inner: held })
}

/// The refusal of a call whose cost exceeds the burst of limit `l` of `b`.
pub(crate) fn never_fits(b: &CompiledBudget, l: &CompiledLimit, demand: &Demand) -> DenyReason {
    let units = b.units(l.unit, demand);
    let mut cost = units as f64;
    let mut burst = l.burst_units;
    if l.unit == Unit::Spend {
        cost /= Money::SCALE;
        burst /= Money::SCALE;
    }
    DenyReason::NeverFits {
        limit: l.kind,
        cost,
        burst,
    }
}

/// The first limit of `b` that would make this call wait, and for how long.
pub(crate) fn first_wait(
    b: &CompiledBudget,
    cell: &Cell,
    demand: &Demand,
    now: Nanos,
) -> Option<(Nanos, LimitKind)> {
    b.limits.iter().find_map(|l| {
        let w = gcra::wait_for(
            &cell.tat[l.slot],
            &l.rate,
            l.rate.increment(b.units(l.unit, demand)),
            now,
        );
        (w > 0).then_some((w, l.kind))
    })
}

/// Whether a blocked call may wait (`Ok(after)`) or is refused. `waited` is how long it has
/// waited already.
pub(crate) fn blocked_verdict(
    budget: &CompiledBudget,
    blocked: &Blocked,
    waited: Option<Nanos>,
) -> Result<Duration, Denial> {
    let deny = |reason| Denial::by(&budget.state.name, blocked.cell.key(), reason);
    let max = match budget.exhausted {
        Exhausted::Wait(max) => duration_nanos(max),
        Exhausted::Deny => 0,
    };
    let waited = waited.unwrap_or(0);
    let left = max.saturating_sub(waited);
    match (blocked.wait, blocked.limit) {
        (Some(wait), Some(limit)) if wait > left || max == 0 => Err(deny(DenyReason::Exhausted {
            limit,
            retry_after: Duration::from_nanos(wait),
        })),
        (Some(wait), _) => Ok(Duration::from_nanos(wait.max(1))),
        (None, _) if max == 0 => Err(deny(match budget.concurrency {
            Some(max) => DenyReason::Concurrency { max },
            None => DenyReason::WaitedTooLong {
                waited: Duration::from_nanos(waited),
            },
        })),
        (None, _) if left == 0 => Err(deny(DenyReason::WaitedTooLong {
            waited: Duration::from_nanos(waited),
        })),
        // Concurrency or a queue: no time is known; hosts polling `admit` retry shortly.
        (None, _) => Ok(Duration::from_millis(10).min(Duration::from_nanos(left))),
    }
}

/// How long a call refused because every target of its route is passed over for a known time
/// (open circuits, a server's rate-limit reset: [`DenyReason::Unavailable`] with `retry_in`)
/// waits before asking again, when the policy lets it: as for a server's `Retry-After`, the
/// whole wait — `waited` so far plus this one — stays within `retry.max_retry_after`. Every API
/// applies it: `admit` answers `Wait`, waiters and `acquire` wait, `send` and `stream` sleep.
pub(crate) fn unavailable_wait(
    policy: &Policy,
    denial: &Denial,
    waited: Nanos,
) -> Option<Duration> {
    let DenyReason::Unavailable {
        retry_in: Some(after),
        ..
    } = &denial.reason
    else {
        return None;
    };
    let cap = duration_nanos(policy.retry.max_retry_after);
    (waited.saturating_add(duration_nanos(*after)) <= cap).then_some(*after)
}

/// Counts an admission in every budget of the permit, and a wait in the budgets that queued it.
pub(crate) fn count_admitted(permit: &Permit, waited_in: &[Arc<BudgetState>]) {
    for h in &permit.inner.holds {
        let shared = &h.cell.shared;
        let c = shared.counters.local();
        c.admitted.fetch_add(1, Ordering::Relaxed);
        if waited_in.iter().any(|w| Arc::ptr_eq(&w.shared, shared)) {
            c.waited.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub(crate) fn count_denied(compiled: &Compiled, denial: &Denial) {
    if let Some(name) = &denial.budget
        && let Some(b) = compiled
            .budgets
            .iter()
            .find(|b| Arc::ptr_eq(&b.state.name, name))
    {
        b.state
            .shared
            .counters
            .local()
            .denied
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Step 1: counts the call's prompt (refusing a request that cannot be read) and reads the
/// clock.
#[inline]
pub(crate) fn spec<'a>(
    compiled: &Compiled,
    metrics: &EngineMetrics,
    call: &'a Call<'a>,
    route: Option<RouteHint>,
) -> Result<(Spec<'a>, Nanos), Decision> {
    let counted = match call::count(&compiled.models, call) {
        Ok(c) => c,
        Err(denial) => {
            metrics.denied(&denial);
            return Err(Decision::Deny(denial));
        }
    };
    let now = compiled.clock.now();
    let mut spec = Spec::new(call.view(), counted, call, now);
    spec.route = route;
    Ok((spec, now))
}

/// The decide API's answer for an admission attempt's result.
#[inline]
pub(crate) fn decision(compiled: &Compiled, metrics: &EngineMetrics, result: Try) -> Decision {
    match result {
        Try::Remote(_) => {
            let denial = Denial::new(DenyReason::StoreUnavailable {
                store: "redis",
                detail: "admission did not settle".to_owned(),
            });
            metrics.denied(&denial);
            Decision::Deny(denial)
        }
        Try::Go(permit) => {
            count_admitted(&permit, &[]);
            Decision::Go(permit)
        }
        Try::Deny(denial) => {
            // Every target passed over for a known time the policy lets a call wait: the
            // call API would wait for it, so the decide API says wait too.
            if let Some(after) = unavailable_wait(&compiled.policy, &denial, 0) {
                return Decision::Wait(WaitHint {
                    after,
                    budget: Arc::from(""),
                    key: Arc::from(""),
                    limit: None,
                });
            }
            count_denied(compiled, &denial);
            metrics.denied(&denial);
            Decision::Deny(denial)
        }
        Try::Blocked(b) => {
            let budget = &compiled.budgets[b.budget];
            match blocked_verdict(budget, &b, None) {
                Ok(after) => Decision::Wait(WaitHint {
                    after,
                    budget: Arc::clone(&budget.state.name),
                    key: Arc::clone(b.cell.key()),
                    limit: b.limit,
                }),
                Err(denial) => {
                    budget
                        .state
                        .shared
                        .counters
                        .local()
                        .denied
                        .fetch_add(1, Ordering::Relaxed);
                    metrics.denied(&denial);
                    Decision::Deny(denial)
                }
            }
        }
    }
}

/// Completes an admission that needs Redis: one round trip per attempt, through `ask` (which
/// blocks or awaits). A refusal by a target's budget moves to the route's next target, as a
/// local refusal does.
pub(crate) async fn resolve<F, Fut>(
    compiled: &Compiled,
    spec: &Spec<'_>,
    seq: Option<u64>,
    now: Nanos,
    first: Try,
    mut ask: F,
) -> Try
where
    F: FnMut(Arc<RedisStore>, Arc<AdmitRequest>) -> Fut,
    Fut: Future<Output = Result<AdmitReply, StoreError>>,
{
    let mut result = first;
    let mut excluded: SmallVec<[Excluded; 2]> = SmallVec::new();
    let mut refused: Option<Try> = None;
    // Each round either ends, excludes one more target, or finds the store down; bounded anyway.
    for _ in 0..16 {
        let Try::Remote(pending) = result else {
            break;
        };
        let reply = ask(Arc::clone(pending.store()), pending.request()).await;
        match pending.finish(compiled, reply, now) {
            Finished::Done(t) => return t,
            Finished::Retarget(t, c) => {
                refused.get_or_insert(t);
                excluded.push(c);
            }
            Finished::StoreFailed => {}
        }
        result = try_admit_once(compiled, &spec.excluding(&excluded), seq, now);
    }
    match (result, refused) {
        (Try::Remote(_), Some(r)) => r,
        (Try::Remote(_), None) => Try::Deny(Denial::new(DenyReason::StoreUnavailable {
            store: "redis",
            detail: "admission did not settle after repeated round trips".to_owned(),
        })),
        (t @ Try::Go(_), _) => t,
        (t, None) => t,
        (_, Some(r)) => r,
    }
}
