//! Budgets kept in Redis, as admission sees them: what one Redis budget does in an admission
//! ([`plan`]) and what a key of it uses now ([`peek`]).
//!
//! Admission (`admit.rs`) checks local budgets as always; for each Redis budget [`plan`] either
//! takes the call from a local lease, decides locally because Redis is down (`fail_open`, with
//! the limits divided by `expected_instances`) or refuses (`fail_closed`), or answers an [`Ask`]:
//! a check for one [`AdmitRequest`]. An attempt with asks becomes a `Pending` (`pending.rs`): the
//! local reservations are held while one round trip asks Redis for every Redis budget at once,
//! then `Pending::finish` turns the answer into a permit or gives everything back.
//!
//! The round trip is awaited by the call API and by [`crate::Engine::admit_async`], and blocked
//! on (at most `op_timeout`) by the synchronous [`crate::Engine::admit`] and
//! [`crate::Engine::acquire`].

use std::sync::Arc;

use smallvec::SmallVec;

use crate::budget::Cell;
use crate::clock::Nanos;
use crate::money::Money;
use crate::policy::{LimitKind, OnFailure, Unit};
use crate::store::{AdmitReply, AdmitRequest, Check, Grant, RateSlot};

use super::budgets::CompiledBudget;
use super::budgets::{RemoteSpec, take_leased, us};
use super::call::Demand;
use super::deny::DenyReason;
use super::hold::Hold;

/// What one key of a Redis budget uses now, read from Redis without taking anything: per limit
/// (units in use, burst) in the limit's unit, and the calls in flight across the fleet. `None`
/// when Redis does not answer.
pub(crate) fn peek(r: &RemoteSpec, scope: &str) -> Option<(Vec<LimitUse>, u32)> {
    let mut request = AdmitRequest::default();
    if !r.limits.is_empty() {
        request
            .keys
            .push(Arc::from(format!("{}{scope}", r.hash_prefix)));
        request.checks.push(Check::Rate {
            want: 1,
            slots: r.slots(|_| 0),
        });
    }
    if r.concurrency.is_some() {
        request
            .keys
            .push(Arc::from(format!("{}{scope}", r.gate_prefix)));
        request.checks.push(Check::GatePeek);
    }
    let Ok(AdmitReply::Granted { now, grants }) = r.store.admit_blocking(Arc::new(request)) else {
        return None;
    };
    let mut limits = Vec::new();
    let mut in_flight = 0;
    for g in grants {
        match g {
            Grant::Rate { ends, .. } => {
                for (l, end) in r.limits.iter().zip(ends) {
                    let scale = if l.unit == Unit::Spend {
                        Money::SCALE
                    } else {
                        1.0
                    };
                    let used = (end - now).max(0.0) / us(l.rate.ns_per_unit) / scale;
                    limits.push((l.kind, used, l.burst_units / scale));
                }
            }
            Grant::Count(n) => in_flight = u32::try_from(n).unwrap_or(u32::MAX),
            Grant::Gate => {}
        }
    }
    Some((limits, in_flight))
}

/// A limit's use: its kind, units in use, burst.
pub(crate) type LimitUse = (LimitKind, f64, f64);

/// A route target (route, target) and a key of its pool that a shared budget refused.
pub(crate) type Excluded = ((usize, usize), Arc<str>);

/// What admission does with one Redis budget.
pub(crate) enum Plan {
    /// Decide with the local (fail-open) limits: Redis is down.
    Local,
    /// Refuse: Redis is down and the policy fails closed.
    Deny(DenyReason),
    /// Taken from a local lease.
    Leased(Hold),
    /// Ask Redis.
    Ask(Ask),
}

/// One Redis budget's part of an admission request.
pub(crate) struct Ask {
    pub budget: usize,
    pub cell: Arc<Cell>,
    pub hash: Option<Arc<str>>,
    pub gate: Option<(Arc<str>, u32)>,
    pub slots: SmallVec<[RateSlot; 4]>,
    pub want: u32,
}

/// Decides how budget `i` (a Redis budget) takes part in this admission.
pub(crate) fn plan(
    i: usize,
    b: &CompiledBudget,
    r: &RemoteSpec,
    cell: &Arc<Cell>,
    demand: &Demand,
    now: Nanos,
) -> Plan {
    if !r.store.is_up() {
        return match r.on_failure {
            OnFailure::FailOpen => Plan::Local,
            OnFailure::FailClosed => Plan::Deny(DenyReason::StoreUnavailable {
                store: "redis",
                detail: r.store.down_reason(),
            }),
        };
    }
    let slots = r.slots(|unit| b.units(unit, demand));
    if r.lease.is_some()
        && r.concurrency.is_none()
        && let Some(hold) = take_leased(r, cell, &slots, now)
    {
        return Plan::Leased(hold);
    }
    let scope = cell.key();
    Plan::Ask(Ask {
        budget: i,
        cell: Arc::clone(cell),
        hash: (!slots.is_empty()).then(|| Arc::from(format!("{}{scope}", r.hash_prefix))),
        gate: r
            .concurrency
            .map(|max| (Arc::from(format!("{}{scope}", r.gate_prefix)), max)),
        want: match (r.lease, r.concurrency) {
            (Some(l), None) => l.size,
            _ => 1,
        },
        slots,
    })
}
