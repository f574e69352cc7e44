//! Budgets compiled for the hot path: their limits, what they match, and for a budget kept in
//! Redis its spec and the room taken ahead (leases).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use smallvec::SmallVec;

use crate::budget::gcra::Rate;
use crate::budget::{BudgetState, CapacityFull, Cell, Cells, key_hash};
use crate::clock::{Nanos, duration_nanos};
use crate::policy::{Exhausted, LimitKind, Match, OnFailure, ScopeDim, Unit};
use crate::store::{AdjustEntry, RateSlot, RedisStore};

use super::call::{CallView, Demand};
use super::hold::{Hold, RemoteCharge, RemoteHold};

/// One limit of a budget, compiled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CompiledLimit {
    pub kind: LimitKind,
    pub slot: usize,
    pub unit: Unit,
    pub rate: Rate,
    /// Burst in the limit's unit (money in nano-units), for messages.
    pub burst_units: f64,
}

/// A budget, compiled against its state.
#[derive(Debug)]
pub(crate) struct CompiledBudget {
    pub state: Arc<BudgetState>,
    pub scope: SmallVec<[ScopeDim; 5]>,
    pub matcher: Match,
    pub match_all: bool,
    pub limits: SmallVec<[CompiledLimit; 4]>,
    pub concurrency: Option<u32>,
    pub exhausted: Exhausted,
    pub spends: bool,
    /// Scoped or matched by upstream or key: its refusal is about one target, so a routed call
    /// may try the next target instead.
    pub target_specific: bool,
    /// Kept in Redis (`store = "redis"`); `limits` and `concurrency` above are then this
    /// process's share for when Redis is down and the policy fails open.
    pub remote: Option<Box<RemoteSpec>>,
}

impl CompiledBudget {
    #[inline]
    pub(crate) fn matches(&self, call: &CallView<'_>) -> bool {
        self.match_all
            || ScopeDim::ALL.iter().all(|d| {
                let globs = self.matcher.globs(*d);
                globs.is_empty() || globs.iter().any(|g| g.matches(call.field(*d)))
            })
    }

    /// The cell this call maps to.
    #[inline]
    pub(crate) fn cell(&self, call: &CallView<'_>, now: Nanos) -> Result<Arc<Cell>, CapacityFull> {
        match &self.state.cells {
            Cells::Global(cell) => Ok(Arc::clone(cell)),
            Cells::Keyed(keyed) => {
                let parts = self.scope.iter().map(|d| call.field(*d));
                let hash = key_hash(parts);
                keyed.get_or_insert(
                    hash,
                    || Arc::from(self.key_text(call)),
                    &self.state.shared,
                    now,
                )
            }
        }
    }

    pub(crate) fn key_text(&self, call: &CallView<'_>) -> String {
        let mut s = String::new();
        for (i, d) in self.scope.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(d.as_str());
            s.push('=');
            s.push_str(call.field(*d));
        }
        s
    }

    pub(crate) fn units(&self, unit: Unit, demand: &Demand) -> u64 {
        match unit {
            Unit::Requests => 1,
            Unit::Tokens => demand.tokens,
            Unit::Spend => demand.spend.nanos(),
        }
    }
}

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
    pub(crate) fn slots(&self, units: impl Fn(Unit) -> u64) -> SmallVec<[RateSlot; 4]> {
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

/// Takes the call from the key's lease when every slot has room left and the lease is alive.
pub(crate) fn take_leased(
    r: &RemoteSpec,
    cell: &Arc<Cell>,
    slots: &[RateSlot],
    now: Nanos,
) -> Option<Hold> {
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

/// Keeps what Redis granted beyond this call (`spare` more calls' worth, up to `ends` per
/// slot) as the key's lease, replacing the one before (which gives its unspent room back as it
/// drops).
pub(crate) fn keep_lease(
    r: &RemoteSpec,
    cell_key: &Arc<str>,
    hash: &Arc<str>,
    slots: &[RateSlot],
    spare: u32,
    ends: &[f64],
    now: Nanos,
) {
    let Some(lease) = r.lease else {
        return;
    };
    let credit = LeaseCredit {
        store: Arc::clone(&r.store),
        key: Arc::clone(hash),
        expires: now.saturating_add(duration_nanos(lease.ttl)),
        slots: slots
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
    leases.insert(Arc::clone(cell_key), credit);
}

/// Gives a leased hold of an undone admission back to its lease (`budgets`: the policy's).
pub(crate) fn return_leased(budgets: &[CompiledBudget], hold: &Hold) {
    let Some(rh) = &hold.remote else { return };
    if !rh.leased {
        return;
    }
    let Some(r) = budgets
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

/// Nanoseconds as the scripts take them (µs).
pub(crate) fn us(ns: f64) -> f64 {
    ns / 1000.0
}
