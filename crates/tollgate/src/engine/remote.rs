//! Budgets kept in Redis, as admission sees them.
//!
//! [`super::attempt`] checks local budgets as always; for each Redis budget it either takes the
//! call from a local lease, decides locally because Redis is down (`fail_open`, with the limits
//! divided by `expected_instances`) or refuses (`fail_closed`), or adds a check to one
//! [`AdmitRequest`]. An attempt with checks comes back as [`super::Try::Remote`]: the local
//! reservations are held while one round trip asks Redis for every Redis budget at once, then
//! [`Pending::finish`] turns the answer into a permit or gives everything back.
//!
//! The round trip is awaited by the call API and by [`crate::Engine::admit_async`], and blocked
//! on (at most `op_timeout`) by the synchronous [`crate::Engine::admit`] and
//! [`crate::Engine::acquire`].

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use smallvec::SmallVec;

use crate::budget::Cell;
use crate::clock::{Nanos, duration_nanos};
use crate::money::Money;
use crate::policy::{LimitKind, OnFailure, Unit};
use crate::store::{
    AdjustEntry, AdmitReply, AdmitRequest, Check, Grant, Owed, RateSlot, RedisStore, StoreError,
};

use super::admit::{Blocked, Try};
use super::call::Demand;
use super::compile::{Compiled, CompiledBudget, CompiledLimit};
use super::decision::DenyReason;
use super::permit::Permit;
use super::permit::{Held, Hold, Journey, TargetCtx};

/// Leases kept per budget before expired ones are swept.
const LEASE_SWEEP_AT: usize = 4096;

/// A budget whose state lives in Redis, compiled.
#[derive(Debug)]
pub(crate) struct RemoteSpec {
    pub store: Arc<RedisStore>,
    /// `{prefix}:b:{budget}:` — the rate hash of a key is this plus the scope text.
    pub hash_prefix: String,
    /// `{prefix}:c:{budget}:` — the concurrency gate of a key.
    pub gate_prefix: String,
    /// The limits as written (the budget's own limits are the fail-open share).
    pub limits: SmallVec<[CompiledLimit; 4]>,
    pub concurrency: Option<u32>,
    pub lease: Option<crate::policy::Lease>,
    pub on_failure: OnFailure,
    /// Room taken ahead per scope key (local leases).
    leases: Mutex<HashMap<Arc<str>, LeaseCredit>>,
}

impl RemoteSpec {
    /// Every limit as the scripts take it, with what a call of `units` (per limit unit) takes.
    fn slots(&self, units: impl Fn(Unit) -> u64) -> SmallVec<[RateSlot; 4]> {
        self.limits
            .iter()
            .map(|l| RateSlot {
                slot: l.slot as u8,
                ei: us(l.rate.ns_per_unit),
                tau: us(l.rate.tau as f64),
                inc: us(l.rate.increment(units(l.unit)) as f64),
            })
            .collect()
    }

    pub(crate) fn new(
        store: Arc<RedisStore>,
        budget: &str,
        limits: SmallVec<[CompiledLimit; 4]>,
        concurrency: Option<u32>,
        lease: Option<crate::policy::Lease>,
    ) -> RemoteSpec {
        let prefix = store.config().key_prefix.clone();
        let on_failure = store.config().on_failure;
        RemoteSpec {
            store,
            hash_prefix: format!("{prefix}:b:{budget}:"),
            gate_prefix: format!("{prefix}:c:{budget}:"),
            limits,
            concurrency,
            lease,
            on_failure,
            leases: Mutex::new(HashMap::new()),
        }
    }
}

/// Room a process took ahead for one scope key: per slot, the part of the charge not spent yet.
#[derive(Debug)]
struct LeaseCredit {
    store: Arc<RedisStore>,
    key: Arc<str>,
    expires: Nanos,
    slots: SmallVec<[LeaseSlot; 4]>,
}

#[derive(Debug, Clone, Copy)]
struct LeaseSlot {
    slot: u8,
    ei: f64,
    credit: f64,
    end: f64,
}

impl Drop for LeaseCredit {
    /// Unspent room goes back to Redis (only what has not refilled by itself meanwhile).
    fn drop(&mut self) {
        let entries: SmallVec<[AdjustEntry; 4]> = self
            .slots
            .iter()
            .filter(|s| s.credit > 0.0)
            .map(|s| AdjustEntry {
                slot: s.slot,
                ei: s.ei,
                delta: -s.credit,
                end: s.end,
            })
            .collect();
        self.store.owe_adjust(&self.key, entries);
    }
}

/// A charge held in Redis by a permit: the slot, its rate and what was taken, in µs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RemoteCharge {
    pub slot: u8,
    pub ei: f64,
    pub inc: f64,
    pub end: f64,
}

/// What a permit holds in Redis for one budget.
#[derive(Debug)]
pub(crate) struct RemoteHold {
    pub store: Arc<RedisStore>,
    pub key: Arc<str>,
    pub charges: SmallVec<[RemoteCharge; 4]>,
    /// The concurrency gate and this call's lease in it.
    pub gate: Option<(Arc<str>, Arc<str>)>,
    /// Taken from a local lease (given back to it when the admission is undone).
    pub leased: bool,
}

impl RemoteHold {
    /// Replaces the charges by what the call used (`units` per limit kind) and releases the
    /// concurrency slot: queued for Redis, never waited for.
    pub(crate) fn settle(&self, units: impl Fn(Unit) -> u64, rate_exists: impl Fn(usize) -> bool) {
        let entries: SmallVec<[AdjustEntry; 4]> = self
            .charges
            .iter()
            .filter(|c| rate_exists(usize::from(c.slot)))
            .filter_map(|c| {
                let used = units(LimitKind::ALL[usize::from(c.slot)].unit()) as f64 * c.ei;
                let delta = used - c.inc;
                // The reservation was rounded up to a whole nanosecond: less is no difference.
                (delta.abs() >= 0.0011).then_some(AdjustEntry {
                    slot: c.slot,
                    ei: c.ei,
                    delta,
                    end: c.end,
                })
            })
            .collect();
        self.store.owe_adjust(&self.key, entries);
        if let Some((key, member)) = &self.gate {
            self.store.owe(Owed::Release {
                key: Arc::clone(key),
                member: Arc::clone(member),
            });
        }
    }
}

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
    budget: usize,
    cell: Arc<Cell>,
    hash: Option<Arc<str>>,
    gate: Option<(Arc<str>, u32)>,
    slots: SmallVec<[RateSlot; 4]>,
    want: u32,
}

fn us(ns: f64) -> f64 {
    ns / 1000.0
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

/// Takes the call from the key's lease when every slot has room left and the lease is alive.
fn take_leased(r: &RemoteSpec, cell: &Arc<Cell>, slots: &[RateSlot], now: Nanos) -> Option<Hold> {
    let mut leases = r.leases.lock();
    let credit = leases.get_mut(&**cell.key())?;
    if credit.expires <= now {
        leases.remove(&**cell.key());
        return None;
    }
    let fits = slots.iter().all(|s| {
        credit
            .slots
            .iter()
            .any(|c| c.slot == s.slot && c.ei == s.ei && c.credit + 0.001 >= s.inc)
    });
    if !fits {
        return None;
    }
    let mut charges = SmallVec::new();
    for s in slots {
        if let Some(c) = credit.slots.iter_mut().find(|c| c.slot == s.slot) {
            c.credit = (c.credit - s.inc).max(0.0);
            charges.push(RemoteCharge {
                slot: s.slot,
                ei: s.ei,
                inc: s.inc,
                end: c.end,
            });
        }
    }
    Some(Hold {
        cell: Arc::clone(cell),
        slots: 0,
        charges: SmallVec::new(),
        concurrency: false,
        remote: Some(Box::new(RemoteHold {
            store: Arc::clone(&credit.store),
            key: Arc::clone(&credit.key),
            charges,
            gate: None,
            leased: true,
        })),
    })
}

/// Gives a leased hold of an undone admission back to its lease.
pub(crate) fn return_leased(compiled: &Compiled, hold: &Hold) {
    let Some(rh) = &hold.remote else { return };
    if !rh.leased {
        return;
    }
    let Some(r) = compiled
        .budgets
        .iter()
        .filter_map(|b| b.remote.as_deref())
        .find(|r| rh.key.starts_with(&r.hash_prefix))
    else {
        return;
    };
    let mut leases = r.leases.lock();
    if let Some(credit) = leases.get_mut(&**hold.cell.key()) {
        for ch in &rh.charges {
            if let Some(c) = credit.slots.iter_mut().find(|c| c.slot == ch.slot) {
                c.credit += ch.inc;
            }
        }
    }
}

/// An admission waiting for Redis: what is held locally meanwhile and the request.
pub(crate) struct Pending {
    pub holds: SmallVec<[Hold; 3]>,
    pub asks: Vec<Ask>,
    pub demand: Demand,
    pub target: Option<Box<TargetCtx>>,
    /// The route target it was admitted on (route, target index), for a routed call.
    pub candidate: Option<(usize, usize)>,
    pub journey: Journey,
    request: Arc<AdmitRequest>,
    /// Per request key: which ask, and whether it is the gate.
    map: SmallVec<[(usize, bool); 4]>,
    store: Arc<RedisStore>,
}

impl Pending {
    pub(crate) fn new(
        compiled: &Compiled,
        holds: SmallVec<[Hold; 3]>,
        asks: Vec<Ask>,
        demand: Demand,
    ) -> Pending {
        let store = asks
            .first()
            .and_then(|a| compiled.budgets[a.budget].remote.as_deref())
            .map(|r| Arc::clone(&r.store))
            .expect("a pending admission has a Redis budget");
        let mut request = AdmitRequest::default();
        let mut map = SmallVec::new();
        let ttl_us = store.config().concurrency_lease.as_micros() as f64;
        for (n, a) in asks.iter().enumerate() {
            if let Some(hash) = &a.hash {
                request.keys.push(Arc::clone(hash));
                request.checks.push(Check::Rate {
                    want: a.want,
                    slots: a.slots.clone(),
                });
                map.push((n, false));
            }
            if let Some((gate, max)) = &a.gate {
                request.keys.push(Arc::clone(gate));
                request.checks.push(Check::Gate {
                    max: *max,
                    ttl_us,
                    member: store.new_member(gate),
                });
                map.push((n, true));
            }
        }
        Pending {
            holds,
            asks,
            demand,
            target: None,
            candidate: None,
            journey: Journey::default(),
            request: Arc::new(request),
            map,
            store,
        }
    }

    /// Turns Redis's answer into the attempt's result.
    pub(crate) fn finish(
        mut self,
        compiled: &Compiled,
        reply: Result<AdmitReply, StoreError>,
        now: Nanos,
    ) -> Finished {
        match reply {
            Ok(AdmitReply::Granted { grants, .. }) => {
                let mut remote: SmallVec<[Hold; 2]> = SmallVec::new();
                for (n, a) in self.asks.iter().enumerate() {
                    let mut hold = RemoteHold {
                        store: Arc::clone(&self.store),
                        key: a.hash.clone().unwrap_or_else(|| Arc::from("")),
                        charges: SmallVec::new(),
                        gate: None,
                        leased: false,
                    };
                    for (k, (ask, gate)) in self.map.iter().enumerate() {
                        if *ask != n {
                            continue;
                        }
                        match (gate, grants.get(k)) {
                            (true, _) => {
                                if let (Some((g, _)), Some(Check::Gate { member, .. })) =
                                    (&a.gate, self.request.checks.get(k))
                                {
                                    hold.gate = Some((Arc::clone(g), Arc::clone(member)));
                                }
                            }
                            (false, Some(Grant::Rate { calls, ends })) => {
                                for (s, end) in a.slots.iter().zip(ends.iter()) {
                                    hold.charges.push(RemoteCharge {
                                        slot: s.slot,
                                        ei: s.ei,
                                        inc: s.inc,
                                        end: *end,
                                    });
                                }
                                if *calls > 1 {
                                    self.keep_lease(compiled, a, *calls - 1, ends, now);
                                }
                            }
                            (false, _) => {}
                        }
                    }
                    remote.push(Hold {
                        cell: Arc::clone(&a.cell),
                        slots: 0,
                        charges: SmallVec::new(),
                        concurrency: false,
                        remote: Some(Box::new(hold)),
                    });
                }
                let mut holds = std::mem::take(&mut self.holds);
                holds.extend(remote);
                let held = Held {
                    holds,
                    demand: self.demand,
                    settled: false,
                    target: self.target.take(),
                    journey: std::mem::take(&mut self.journey),
                };
                Finished::Done(Try::Go(Permit::new(held)))
            }
            Ok(AdmitReply::Refused {
                key, slot, wait, ..
            }) => {
                let (ask, gate) = self.map.get(key).copied().unwrap_or((0, false));
                let a = &self.asks[ask];
                let limit = match (gate, slot) {
                    (false, Some(s)) => a.slots.get(s).map(|s| LimitKind::ALL[usize::from(s.slot)]),
                    _ => None,
                };
                let blocked = Try::Blocked(Blocked {
                    budget: a.budget,
                    cell: Arc::clone(&a.cell),
                    wait: if gate {
                        None
                    } else {
                        wait.map(|w| (w * 1000.0).ceil() as Nanos)
                    },
                    limit,
                });
                let specific = compiled.budgets[a.budget].target_specific;
                let tried = self
                    .candidate
                    .zip(self.target.as_ref().map(|t| Arc::clone(&t.key.id)));
                self.undo(compiled, now);
                match tried {
                    Some(tried) if specific => Finished::Retarget(blocked, tried),
                    _ => Finished::Done(blocked),
                }
            }
            Err(e) => {
                self.undo(compiled, now);
                // Down now even when the wait gave up before the store noticed: the next
                // attempt applies `on_failure` instead of asking again.
                self.store.mark_down(&e.to_string());
                Finished::StoreFailed
            }
        }
    }

    fn keep_lease(&self, compiled: &Compiled, a: &Ask, spare: u32, ends: &[f64], now: Nanos) {
        let Some(r) = compiled.budgets[a.budget].remote.as_deref() else {
            return;
        };
        let (Some(lease), Some(hash)) = (r.lease, &a.hash) else {
            return;
        };
        let credit = LeaseCredit {
            store: Arc::clone(&self.store),
            key: Arc::clone(hash),
            expires: now.saturating_add(duration_nanos(lease.ttl)),
            slots: a
                .slots
                .iter()
                .zip(ends)
                .map(|(s, end)| LeaseSlot {
                    slot: s.slot,
                    ei: s.ei,
                    credit: s.inc * f64::from(spare),
                    end: *end,
                })
                .collect(),
        };
        let mut leases = r.leases.lock();
        if leases.len() >= LEASE_SWEEP_AT {
            leases.retain(|_, c| c.expires > now);
        }
        // A lease this one replaces gives its unspent room back as it drops.
        leases.insert(Arc::clone(a.cell.key()), credit);
    }

    /// Gives back everything held locally (and the unused concurrency lease name).
    fn undo(&mut self, compiled: &Compiled, now: Nanos) {
        for c in &self.request.checks {
            if let Check::Gate { member, .. } = c {
                self.store.drop_member(member);
            }
        }
        for h in self.holds.drain(..) {
            if h.remote.is_some() {
                return_leased(compiled, &h);
            } else {
                h.undo(now);
            }
        }
        if let Some(mut t) = self.target.take()
            && let Some(p) = t.breaker.take()
        {
            t.health.breaker.release(p);
        }
    }

    /// The request to send.
    pub(crate) fn request(&self) -> Arc<AdmitRequest> {
        Arc::clone(&self.request)
    }

    /// The store to send it to.
    pub(crate) fn store(&self) -> &Arc<RedisStore> {
        &self.store
    }
}

/// What a pending admission became.
pub(crate) enum Finished {
    /// The attempt's result.
    Done(Try),
    /// Refused by a budget about this route target and key: try another key or target.
    Retarget(Try, Excluded),
    /// Redis failed: admit again (the store is down now, so `on_failure` applies).
    StoreFailed,
}
