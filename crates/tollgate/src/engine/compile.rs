//! Compiling a policy for the hot path: budgets against the state that outlives reloads,
//! routes and targets against their health, the model table.

use std::collections::HashMap;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::budget::gcra::Rate;
use crate::budget::{BudgetState, Cells, SLOTS};
use crate::clock::{Clock, Nanos, duration_nanos};
use crate::money::Money;
use crate::policy::{Budget, Policy, ScopeDim, Store, Unit};
use crate::tokens::ModelTable;

use super::budgets::{self, CompiledBudget, CompiledLimit};
use super::call::{self};
use super::health::HealthRegistry;
use super::route::Routing;
use super::wire::WireSlot;

/// A policy compiled for the hot path, with the state it acts on.
#[derive(Debug)]
pub(crate) struct Compiled {
    /// The engine's generation number of this policy (1 for the first).
    pub generation: u64,
    pub policy: Arc<Policy>,
    /// The wire of each upstream, by its index in `policy.upstreams` (= `routing.upstreams`).
    pub wires: Vec<WireSlot>,
    pub budgets: Vec<CompiledBudget>,
    pub models: ModelTable,
    pub memo: call::ModelMemo,
    pub routing: Routing,
    pub clock: Arc<dyn Clock>,
}

pub(crate) struct Registered {
    scope: Vec<ScopeDim>,
    state: Arc<BudgetState>,
    /// Nanoseconds per unit of each limit slot in the running policy (`None`: no such limit).
    rates: [Option<f64>; SLOTS],
}

/// Compiles a policy against the registry of budget state.
pub(crate) fn compile(
    generation: u64,
    previous: Option<&Compiled>,
    policy: Policy,
    registry: &mut HashMap<String, Registered>,
    health: &mut HealthRegistry,
    clock: &Arc<dyn Clock>,
    store: &mut Option<Arc<crate::store::RedisStore>>,
) -> (Compiled, ReloadReport) {
    let now = clock.now();
    // One connection per [redis] section, kept while the section stays the same.
    match &policy.redis {
        Some(section) if store.as_ref().is_none_or(|s| s.config() != section) => {
            *store = crate::store::RedisStore::connect(section).ok();
        }
        Some(_) => {}
        None => *store = None,
    }
    let mut report = ReloadReport {
        generation: 1,
        added: vec![],
        kept: vec![],
        removed: vec![],
        rescoped: vec![],
    };
    let mut budgets = Vec::with_capacity(policy.budgets.len());
    for spec in &policy.budgets {
        let compiled = match registry.get_mut(&spec.name) {
            Some(r) if r.scope == spec.scope => {
                report.kept.push(spec.name.clone());
                let compiled = compile_budget(spec, Arc::clone(&r.state), store.as_ref());
                carry_over(r, &compiled, now);
                compiled
            }
            existing => {
                if existing.is_some() {
                    report.rescoped.push(spec.name.clone());
                } else {
                    report.added.push(spec.name.clone());
                }
                let scoped = !spec.scope.is_empty();
                let state = Arc::new(BudgetState::new(
                    &spec.name,
                    scoped,
                    spec.key_capacity,
                    Arc::clone(clock),
                ));
                let compiled = compile_budget(spec, state, store.as_ref());
                registry.insert(
                    spec.name.clone(),
                    Registered {
                        scope: spec.scope.clone(),
                        state: Arc::clone(&compiled.state),
                        rates: rates_of(&compiled),
                    },
                );
                compiled
            }
        };
        if let Cells::Keyed(k) = &compiled.state.cells {
            k.set_capacity(spec.key_capacity);
        }
        compiled.state.shared.set_rates(&rates_of(&compiled));
        budgets.push(compiled);
    }
    registry.retain(|name, _| {
        let keep = policy.budgets.iter().any(|b| &b.name == name);
        if !keep {
            report.removed.push(name.clone());
        }
        keep
    });
    report.removed.sort();
    let models = ModelTable::with_overrides(
        policy.prices.iter().map(|(m, p)| (m.as_str(), *p)),
        policy
            .models
            .iter()
            .map(|(m, o)| (m.as_str(), o.encoding, o.context_window)),
    );
    let routing = Routing::compile(&policy, health);
    // Wires whose upstream kept its settings are carried over (pooled connections, tokens).
    let wires = policy
        .upstreams
        .iter()
        .map(|u| {
            previous
                .and_then(|p| {
                    let i = p.policy.upstreams.iter().position(|o| o == u)?;
                    p.wires[i].made().cloned()
                })
                .map_or_else(WireSlot::default, WireSlot::carried)
        })
        .collect();
    let compiled = Compiled {
        generation,
        policy: Arc::new(policy),
        wires,
        budgets,
        models,
        memo: call::ModelMemo::default(),
        routing,
        clock: Arc::clone(clock),
    };
    (compiled, report)
}

fn rates_of(b: &CompiledBudget) -> [Option<f64>; SLOTS] {
    let mut rates = [None; SLOTS];
    for l in &b.limits {
        rates[l.slot] = Some(l.rate.ns_per_unit);
    }
    rates
}

/// Keeps a kept budget's use in units across a change of its limits: a changed rate rescales the
/// outstanding use of every key, a limit that is new starts empty.
fn carry_over(r: &mut Registered, b: &CompiledBudget, now: Nanos) {
    let rates = rates_of(b);
    for (slot, (old, new)) in r.rates.iter().zip(rates.iter()).enumerate() {
        match (old, new) {
            (Some(old), Some(new)) if old != new => r.state.rescale(slot, *old, *new, now),
            (None, Some(_)) => r.state.reset_slot(slot),
            _ => {}
        }
    }
    r.rates = rates;
}

fn compile_budget(
    spec: &Budget,
    state: Arc<BudgetState>,
    store: Option<&Arc<crate::store::RedisStore>>,
) -> CompiledBudget {
    // A Redis budget keeps its limits as written for Redis; the local cells get this process's
    // share, used only while Redis is down and the policy fails open.
    let remote_store = match spec.store {
        Store::Redis => store,
        Store::Local => None,
    };
    let share = remote_store.map_or(1.0, |s| f64::from(s.config().expected_instances.max(1)));
    let compile_limits = |share: f64| {
        let mut limits: SmallVec<[CompiledLimit; 4]> = spec
            .limits
            .iter()
            .map(|l| {
                let scale = if l.kind.unit() == Unit::Spend {
                    Money::SCALE
                } else {
                    1.0
                };
                // A share of a request burst is still at least one request.
                let floor: f64 = if l.kind.unit() == Unit::Requests {
                    1.0
                } else {
                    0.0
                };
                let burst = (l.burst / share).max(floor.min(l.burst)) * scale;
                let window = duration_nanos(l.kind.window());
                CompiledLimit {
                    kind: l.kind,
                    slot: l.kind.slot(),
                    unit: l.kind.unit(),
                    rate: Rate::new(l.amount * scale / share, window, burst),
                    burst_units: burst,
                }
            })
            .collect();
        // Holds record charges in slot order.
        limits.sort_by_key(|l| l.slot);
        limits
    };
    let limits = compile_limits(share);
    let remote = remote_store.map(|store| {
        Box::new(budgets::RemoteSpec::new(
            Arc::clone(store),
            &spec.name,
            compile_limits(1.0),
            spec.concurrency,
            spec.lease,
        ))
    });
    let concurrency = match remote {
        Some(_) => spec
            .concurrency
            .map(|c| (f64::from(c) / share).ceil().max(1.0) as u32),
        None => spec.concurrency,
    };
    CompiledBudget {
        state,
        scope: spec.scope.iter().copied().collect(),
        matcher: spec.matcher.clone(),
        match_all: spec.matcher.is_empty(),
        spends: limits.iter().any(|l| l.unit == Unit::Spend),
        target_specific: spec
            .scope
            .iter()
            .any(|d| matches!(d, ScopeDim::Upstream | ScopeDim::Key))
            || !spec.matcher.upstream.is_empty()
            || !spec.matcher.key.is_empty(),
        limits,
        concurrency,
        exhausted: spec.when_exhausted,
        remote,
    }
}

/// What a successful reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Increases by one per accepted policy.
    pub generation: u64,
    /// Budgets that are new (fresh state).
    pub added: Vec<String>,
    /// Budgets that kept their state.
    pub kept: Vec<String>,
    /// Budgets that are gone.
    pub removed: Vec<String>,
    /// Budgets whose scope changed, so their state started afresh.
    pub rescoped: Vec<String>,
}
