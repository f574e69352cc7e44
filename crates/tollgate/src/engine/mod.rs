//! The engine: the running policy (swapped atomically on reload), budget state that outlives
//! reloads, and the decide API.

mod cache;
mod call;
mod decision;
mod health;
mod permit;
mod probe;
mod remote;
mod route;
mod send;
mod settle;
mod stream;
mod wait;
mod watch;
mod wire;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use smallvec::SmallVec;

use crate::budget::gcra::{self, Rate};
use crate::budget::{BudgetState, BudgetStats, CapacityFull, Cell, Cells, SLOTS, key_hash};
use crate::clock::{Clock, MonotonicClock, Nanos, duration_nanos};
use crate::policy::{
    Budget, Exhausted, LimitKind, Match, Policy, PolicyErrors, ScopeDim, Store, Unit,
};
use crate::tokens::ModelTable;

pub use cache::{CacheFill, CacheLookup, FlightResult};
pub use call::{Call, Prompt};
pub use decision::{Decision, Denial, DenyReason, GiveUp, Outcome, Settlement, Verdict, WaitHint};
pub use permit::Permit;
pub use probe::Probe;
pub use route::{Attempt, AttemptRecord, TargetRef};
pub use send::{CallError, ChatRequest, ChatResponse, Source};
pub use stream::ChatStream;
pub use wait::{WaitPoll, Waiter};
pub use watch::{WatchEvent, Watcher};

use call::{CallView, Counted, Demand};
use health::HealthRegistry;
use permit::{Hold, Journey, TargetCtx};
use route::{Routing, Skip};

/// Money is counted in nano-units so budgets stay integer and exact.
const NANOS_PER_UNIT: f64 = 1e9;

pub(crate) fn money_to_nanos(money: f64) -> u64 {
    if money.is_nan() || money <= 0.0 {
        return 0;
    }
    let n = (money * NANOS_PER_UNIT).ceil();
    if n >= u64::MAX as f64 {
        u64::MAX
    } else {
        n as u64
    }
}

pub(crate) fn nanos_to_money(nanos: u64) -> f64 {
    nanos as f64 / NANOS_PER_UNIT
}

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
    pub remote: Option<Box<remote::RemoteSpec>>,
}

impl CompiledBudget {
    #[inline]
    fn matches(&self, call: &CallView<'_>) -> bool {
        self.match_all
            || ScopeDim::ALL.iter().all(|d| {
                let globs = self.matcher.globs(*d);
                globs.is_empty() || globs.iter().any(|g| g.matches(call.field(*d)))
            })
    }

    /// The cell this call maps to.
    #[inline]
    fn cell(&self, call: &CallView<'_>, now: Nanos) -> Result<Arc<Cell>, CapacityFull> {
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

    fn key_text(&self, call: &CallView<'_>) -> String {
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

    fn units(&self, unit: Unit, demand: &Demand) -> u64 {
        match unit {
            Unit::Requests => 1,
            Unit::Tokens => demand.tokens,
            Unit::Spend => demand.spend_nanos,
        }
    }
}

/// A policy compiled for the hot path, with the state it acts on.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub policy: Arc<Policy>,
    pub budgets: Vec<CompiledBudget>,
    pub models: ModelTable,
    pub memo: call::ModelMemo,
    pub routing: Routing,
    pub clock: Arc<dyn Clock>,
}

/// Why an admission attempt could not take capacity now.
pub(crate) struct Blocked {
    pub budget: usize,
    pub cell: Arc<Cell>,
    /// Time until the limit has room; `None` when a concurrency slot or earlier waiters block.
    pub wait: Option<Nanos>,
    pub limit: Option<LimitKind>,
}

pub(crate) enum Try {
    Go(Permit),
    Blocked(Blocked),
    Deny(Denial),
    /// Local budgets are held; Redis budgets need one round trip ([`remote::resolve`]).
    Remote(Box<remote::Pending>),
}

struct Registered {
    scope: Vec<ScopeDim>,
    state: Arc<BudgetState>,
    /// Nanoseconds per unit of each limit slot in the running policy (`None`: no such limit).
    rates: [Option<f64>; SLOTS],
}

pub(crate) struct Inner {
    current: ArcSwap<Compiled>,
    registry: Mutex<HashMap<String, Registered>>,
    health: Mutex<HealthRegistry>,
    cache: crate::cache::CacheStore,
    flights: crate::cache::SingleFlight<FlightResult>,
    clock: Arc<dyn Clock>,
    generation: AtomicU64,
    seq: AtomicU64,
    metrics: crate::metrics::EngineMetrics,
    wires: wire::Wires,
    /// Clock time the call API last looked for due breaker probes.
    probed_at: AtomicU64,
    /// The `[redis]` store, kept across reloads that keep the section.
    store: Mutex<Option<Arc<crate::store::RedisStore>>>,
}

/// The policy engine: admits calls against every matching budget and settles them afterwards.
///
/// Cheap to clone (an `Arc`); share one per process. Decisions never lock globally and never
/// panic; a reload swaps the policy atomically while decisions continue.
///
/// ```
/// use tollgate::{Call, Decision, Engine, Outcome, Policy, Prompt};
/// use tollgate::tokens::Usage;
///
/// let policy = Policy::from_toml(r#"
///     version = 1
///     [[budget]]
///     name = "per-tenant"
///     scope = ["tenant"]
///     requests_per_minute = 2
/// "#).unwrap();
/// let engine = Engine::new(policy);
/// let call = Call::new("gpt-4o").tenant("acme").prompt(Prompt::Tokens(10)).max_tokens(5);
/// let Decision::Go(permit) = engine.admit(&call) else { panic!("room for two") };
/// let usage = Usage { prompt_tokens: 10, completion_tokens: 3, total_tokens: 13, ..Usage::default() };
/// engine.settle(permit, &Outcome::ok(usage));
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("generation", &self.generation())
            .finish()
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

/// Health of one (upstream, model) target, from [`Engine::targets`].
#[derive(Debug, Clone, PartialEq)]
pub struct TargetHealthInfo {
    /// Upstream name.
    pub upstream: String,
    /// Model sent to it.
    pub model: String,
    /// Breaker state now.
    pub breaker: crate::retry::BreakerState,
    /// Times the breaker opened since the target appeared.
    pub opens: u64,
    /// Moving average of its latency, once it has a sample.
    pub latency: Option<Duration>,
}

/// Usage of one budget key at one moment (for inspection and tests).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyUsage {
    /// The scope key.
    pub key: String,
    /// Calls holding a concurrency slot.
    pub in_flight: u32,
    /// Per limit: units in use now (the part not yet refilled) and the burst, in the limit's unit.
    pub limits: Vec<(LimitKind, f64, f64)>,
}

impl Engine {
    /// An engine on the real monotonic clock.
    pub fn new(policy: Policy) -> Engine {
        Engine::with_clock(policy, Arc::new(MonotonicClock::new()))
    }

    /// An engine on a given clock ([`crate::clock::ManualClock`] for tests and simulation).
    pub fn with_clock(policy: Policy, clock: Arc<dyn Clock>) -> Engine {
        let mut registry = HashMap::new();
        let mut health = HealthRegistry::default();
        let mut store = None;
        let (compiled, _) = compile(policy, &mut registry, &mut health, &clock, &mut store);
        let cache = crate::cache::CacheStore::from_policy(&compiled.policy.cache);
        Engine {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(compiled),
                registry: Mutex::new(registry),
                health: Mutex::new(health),
                cache,
                flights: crate::cache::SingleFlight::new(),
                clock,
                generation: AtomicU64::new(1),
                seq: AtomicU64::new(1),
                metrics: crate::metrics::EngineMetrics::new(),
                wires: wire::Wires::default(),
                probed_at: AtomicU64::new(0),
                store: Mutex::new(store),
            }),
        }
    }

    /// An engine from policy text (TOML or JSON, detected).
    pub fn from_text(text: &str) -> Result<Engine, PolicyErrors> {
        Ok(Engine::new(Policy::from_bytes(text.as_bytes(), None)?))
    }

    /// An engine from a policy file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Engine, PolicyErrors> {
        Ok(Engine::new(Policy::from_file(path.as_ref())?))
    }

    /// The clock decisions are made on.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The running policy.
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.inner.current.load().policy)
    }

    /// The budget names of the running policy, as the engine's decisions carry them (the
    /// same `Arc`s, so a binding can hand out views of them that live as long as the policy).
    pub fn budget_names(&self) -> Vec<Arc<str>> {
        let compiled = self.inner.current.load();
        compiled
            .budgets
            .iter()
            .map(|b| Arc::clone(&b.state.name))
            .collect()
    }

    /// Number of accepted policies so far (1 for the first).
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Replaces the policy with one read from `text` (TOML or JSON, detected). A policy with
    /// errors is refused with all of them and the running one stays.
    pub fn reload(&self, text: &str) -> Result<ReloadReport, PolicyErrors> {
        let policy = Policy::from_bytes(text.as_bytes(), None)?;
        Ok(self.reload_policy(policy))
    }

    /// Replaces the policy with an already validated one. Budget state is kept for every budget
    /// whose name and scope are unchanged, and new limits apply from the next decision.
    pub fn reload_policy(&self, policy: Policy) -> ReloadReport {
        self.inner.reload_policy(policy)
    }

    /// Decides whether a call may go now. `Go` reserves its estimated requests, tokens and money
    /// in every matching budget and holds a concurrency slot; if any budget refuses, none keeps
    /// anything. `Wait` holds nothing: ask again after the hint (or use [`Engine::acquire`] /
    /// [`Engine::waiter`] to wait in the budget's priority queue).
    ///
    /// A call that matches budgets kept in Redis waits here for one round trip (at most the
    /// `[redis]` section's `op_timeout`, then `on_failure` decides); async code should use
    /// [`Engine::admit_async`] instead, which awaits it.
    pub fn admit(&self, call: &Call<'_>) -> Decision {
        let compiled = self.inner.current.load();
        let (spec, now) = match self.spec(&compiled, call) {
            Ok(s) => s,
            Err(d) => return d,
        };
        let result = try_admit(&compiled, &spec, None, now);
        self.decide(&compiled, result)
    }

    /// [`Engine::admit`] for async code: the round trip to Redis, when budgets in Redis match,
    /// is awaited rather than blocked on. Without such budgets it answers at once, like `admit`.
    pub async fn admit_async(&self, call: &Call<'_>) -> Decision {
        let compiled = self.inner.current.load_full();
        let (spec, now) = match self.spec(&compiled, call) {
            Ok(s) => s,
            Err(d) => return d,
        };
        let result = try_admit_async(&compiled, &spec, None, now).await;
        self.decide(&compiled, result)
    }

    /// Counts the call's prompt and reads the clock.
    #[inline]
    fn spec<'a>(
        &self,
        compiled: &Compiled,
        call: &'a Call<'a>,
    ) -> Result<(Spec<'a>, Nanos), Decision> {
        let counted = match call::count(&compiled.models, call) {
            Ok(c) => c,
            Err(denial) => {
                self.inner.metrics.denied(&denial);
                return Err(Decision::Deny(denial));
            }
        };
        let now = compiled.clock.now();
        Ok((Spec::new(call.view(), counted, call, now), now))
    }

    /// The decision for an admission attempt's result.
    #[inline]
    fn decide(&self, compiled: &Compiled, result: Try) -> Decision {
        match result {
            Try::Remote(_) => {
                let denial = Denial::new(DenyReason::StoreUnavailable {
                    store: "redis",
                    detail: "admission did not settle".to_owned(),
                });
                self.inner.metrics.denied(&denial);
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
                self.inner.metrics.denied(&denial);
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
                        self.inner.metrics.denied(&denial);
                        Decision::Deny(denial)
                    }
                }
            }
        }
    }

    /// Admits a call, waiting in the budgets' priority queues as long as the policy allows.
    /// Blocks the thread; needs a clock that moves by itself (not a `ManualClock`).
    pub fn acquire(&self, call: &Call<'_>) -> Result<Permit, Denial> {
        let mut waiter = self.waiter(call)?;
        loop {
            match waiter.poll() {
                WaitPoll::Ready(result) => return result,
                WaitPoll::Pending { until } => {
                    let now = self.inner.clock.now();
                    waiter
                        .signal()
                        .wait(Duration::from_nanos(until.saturating_sub(now).max(1)));
                }
            }
        }
    }

    /// A call that waits in the budgets' priority queues: poll it until it is ready (for event
    /// loops and virtual time; [`Engine::acquire`] does this for a thread).
    pub fn waiter(&self, call: &Call<'_>) -> Result<Waiter, Denial> {
        let compiled = self.inner.current.load_full();
        let counted = call::count(&compiled.models, call)?;
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let now = compiled.clock.now();
        Ok(Waiter::new(
            Arc::clone(&self.inner),
            call,
            counted,
            seq,
            now,
        ))
    }

    /// Settles an admitted call: reserved tokens and money are replaced by the reported usage
    /// (refund or extra charge), and its concurrency slots are released.
    ///
    /// For a failed attempt the verdict says whether and when to retry, and where: the outcome is
    /// classified (status, transport failure, `x-should-retry`), the breaker of the target and the
    /// retry budget of its upstream are fed, server rate-limit headers tighten that key, a 401
    /// quarantines the key, and the retry policy picks the delay (server-directed first, then
    /// backoff) within the call's deadline.
    pub fn settle(&self, permit: Permit, outcome: &Outcome<'_>) -> Verdict {
        settle::settle(
            &self.inner.current.load(),
            &self.inner.metrics,
            permit,
            outcome,
        )
    }

    /// The engine's metrics in the Prometheus text exposition format (0.0.4), for a scrape
    /// endpoint: budget, breaker, cache and retry-budget state read now, and the attempts,
    /// latencies, tokens, spend, retries, give-ups and denials recorded so far. Every metric is
    /// listed in [`crate::metrics`]. No credential ever appears in it.
    ///
    /// ```
    /// use tollgate::Engine;
    ///
    /// let engine = Engine::from_text("version = 1").expect("valid policy");
    /// let text = engine.metrics_text();
    /// assert!(text.contains("# TYPE tollgate_attempts_total counter\n"));
    /// assert!(text.contains("tollgate_policy_generation 1\n"));
    /// ```
    pub fn metrics_text(&self) -> String {
        let compiled = self.inner.current.load();
        let routing = &compiled.routing;
        let mut retry_tokens: Vec<(Arc<str>, f64)> = routing
            .upstreams
            .iter()
            .map(|u| (Arc::clone(&u.name), u.health.retry_budget.tokens()))
            .collect();
        retry_tokens.push((Arc::from(""), routing.default_health.retry_budget.tokens()));
        let store = self.inner.store.lock().clone();
        let redis_budgets: Vec<(Arc<str>, bool)> = compiled
            .budgets
            .iter()
            .filter_map(|b| {
                let r = b.remote.as_deref()?;
                let fallback =
                    !r.store.is_up() && r.on_failure == crate::policy::OnFailure::FailOpen;
                Some((Arc::clone(&b.state.name), fallback))
            })
            .collect();
        self.inner.metrics.render(&crate::metrics::EngineSnapshot {
            generation: self.generation(),
            budgets: &self.stats(),
            targets: &self.targets(),
            cache: &self.cache_stats(),
            retry_tokens: &retry_tokens,
            store: store.as_ref().map(|st| {
                let c = st.counters();
                crate::metrics::StoreSnapshot {
                    up: st.is_up(),
                    round_trips: c.round_trips.load(Ordering::Relaxed),
                    errors: c.errors.load(Ordering::Relaxed),
                    outages: c.outages.load(Ordering::Relaxed),
                    dropped: c.dropped.load(Ordering::Relaxed),
                    leases: st.leases_held(),
                    budgets: &redis_budgets,
                }
            }),
        })
    }

    /// Records a time to first token of a streamed call to `model` on `upstream`, in the
    /// `tollgate_time_to_first_token_seconds` histogram.
    pub fn record_ttft(&self, upstream: &str, model: &str, ttft: Duration) {
        self.inner.metrics.ttft(upstream, model, ttft);
    }

    /// Counters of every budget in the running policy, in policy order.
    pub fn stats(&self) -> Vec<BudgetStats> {
        self.inner
            .current
            .load()
            .budgets
            .iter()
            .map(|b| b.state.stats())
            .collect()
    }

    /// Health of every routed target of the running policy: breaker state, how often it opened,
    /// and the latency average used by `lowest_latency` routes.
    pub fn targets(&self) -> Vec<TargetHealthInfo> {
        let compiled = self.inner.current.load();
        let now = compiled.clock.now();
        let routing = &compiled.routing;
        let mut out: Vec<TargetHealthInfo> = Vec::new();
        for t in routing.routes.iter().flat_map(|r| r.targets.iter()) {
            let upstream = routing.upstreams[t.upstream].name.to_string();
            if out
                .iter()
                .any(|o| o.upstream == upstream && *o.model == *t.model)
            {
                continue;
            }
            out.push(TargetHealthInfo {
                upstream,
                model: t.model.to_string(),
                breaker: t.health.breaker.state(now),
                opens: t.health.opens(),
                latency: t.health.latency().map(Duration::from_nanos),
            });
        }
        out
    }

    /// What one budget key is using now: the key is the one `call` maps to. For a budget kept
    /// in Redis this is the fleet's use, read from Redis (one round trip, nothing taken); while
    /// Redis is down, this process's fail-open share.
    pub fn key_usage(&self, budget: &str, call: &Call<'_>) -> Option<KeyUsage> {
        let compiled = self.inner.current.load();
        let b = compiled.budgets.iter().find(|b| &*b.state.name == budget)?;
        let view = call.view();
        if let Some(r) = b.remote.as_deref().filter(|r| r.store.is_up()) {
            let key = b.key_text(&view);
            let (limits, in_flight) = remote::peek(r, &key)?;
            return Some(KeyUsage {
                key,
                in_flight,
                limits,
            });
        }
        let cell = match &b.state.cells {
            Cells::Global(c) => Arc::clone(c),
            Cells::Keyed(k) => k.peek(key_hash(b.scope.iter().map(|d| view.field(*d))))?,
        };
        let now = compiled.clock.now();
        let limits = b
            .limits
            .iter()
            .map(|l| {
                let mut used = gcra::used_units(&cell.tat[l.slot], &l.rate, now);
                let mut burst = l.burst_units;
                if l.unit == Unit::Spend {
                    used /= NANOS_PER_UNIT;
                    burst /= NANOS_PER_UNIT;
                }
                (l.kind, used, burst)
            })
            .collect();
        Some(KeyUsage {
            key: cell.key().to_string(),
            in_flight: cell.inflight.load(Ordering::Acquire),
            limits,
        })
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

impl Inner {
    pub(crate) fn current(&self) -> Arc<Compiled> {
        self.current.load_full()
    }

    pub(crate) fn reload_policy(&self, policy: Policy) -> ReloadReport {
        let mut registry = self.registry.lock();
        let mut health = self.health.lock();
        let mut store = self.store.lock();
        let generation = self.generation.load(Ordering::Acquire) + 1;
        let (compiled, mut report) =
            compile(policy, &mut registry, &mut health, &self.clock, &mut store);
        report.generation = generation;
        self.cache.apply_policy(&compiled.policy.cache);
        let names: Vec<&str> = compiled
            .policy
            .upstreams
            .iter()
            .map(|u| u.name.as_str())
            .collect();
        self.wires.retain(&names);
        self.current.store(Arc::new(compiled));
        self.generation.store(generation, Ordering::Release);
        report
    }
}

/// Counts an admission in every budget of the permit, and a wait in the budgets that queued it.
fn count_admitted(permit: &Permit, waited_in: &[Arc<BudgetState>]) {
    for h in &permit.inner.holds {
        let shared = &h.cell.shared;
        let c = shared.counters.local();
        c.admitted.fetch_add(1, Ordering::Relaxed);
        if waited_in.iter().any(|w| Arc::ptr_eq(&w.shared, shared)) {
            c.waited.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn count_denied(compiled: &Compiled, denial: &Denial) {
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

/// Whether a blocked call may wait (`Ok(after)`) or is refused. `waited` is how long it has
/// waited already.
fn blocked_verdict(
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
    let resolving = remote::resolve(compiled, spec, seq, now, first, |store, request| {
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
    remote::resolve(
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
    let Some(route) = compiled.routing.route_for(v.route, v.model, v.upstream) else {
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
    for c in routing.candidates(route, spec.attempt) {
        let t = &routing.routes[c.0].targets[c.1];
        let up = &routing.upstreams[t.upstream];
        let breaker = match t.health.breaker.try_acquire(now) {
            // With a synthetic probe in the policy, users' calls are never the probes.
            Ok(p) if p.is_probe() && compiled.policy.breaker.probe.is_some() => {
                t.health.breaker.release(p);
                skipped.push(Skip::BreakerOpen {
                    target: format!("{}/{}", up.name, t.model),
                    retry_in: Duration::ZERO,
                });
                continue;
            }
            Ok(p) => p,
            Err(rejected) => {
                skipped.push(Skip::BreakerOpen {
                    target: format!("{}/{}", up.name, t.model),
                    retry_in: rejected.retry_in,
                });
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
    let detail = if skipped.is_empty() {
        "the route has no targets".to_owned()
    } else {
        skipped
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let retry_in = skipped
        .iter()
        .filter_map(|s| match s {
            Skip::BreakerOpen { retry_in, .. } if !retry_in.is_zero() => Some(*retry_in),
            Skip::ServerLimited { until, .. } => {
                Some(Duration::from_nanos(until.saturating_sub(now).max(1)))
            }
            _ => None,
        })
        .min();
    let route = routing.routes[route].name.to_string();
    Try::Deny(Denial::new(DenyReason::Unavailable {
        route,
        detail,
        retry_in,
    }))
}

/// One all-or-nothing admission attempt at `now`. `seq` is the waiter's queue ticket, if any.
pub(crate) fn attempt(
    compiled: &Compiled,
    call: &CallView<'_>,
    demand: &Demand,
    seq: Option<u64>,
    now: Nanos,
) -> Try {
    let mut holds: SmallVec<[Hold; 3]> = SmallVec::new();
    // Empty (no allocation) unless a Redis budget matches: the local path stays as it was.
    let mut asks: Vec<remote::Ask> = Vec::new();
    let undo = |holds: &mut SmallVec<[Hold; 3]>| {
        for h in holds.drain(..) {
            if h.remote.is_some() {
                remote::return_leased(compiled, &h);
            } else {
                undo_hold(&h, now);
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
                undo(&mut holds);
                return Try::Deny(Denial {
                    budget: Some(Arc::clone(&b.state.name)),
                    key: Some(Arc::from(b.key_text(call))),
                    reason: DenyReason::KeyCapacity { capacity },
                });
            }
        };
        if b.spends && demand.price.is_none() {
            undo(&mut holds);
            let reason = DenyReason::UnknownPrice {
                model: call.model.to_owned(),
            };
            return Try::Deny(Denial::by(&b.state.name, cell.key(), reason));
        }
        if !cell.queue.may_pass(call.priority, seq) {
            undo(&mut holds);
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
                undo(&mut holds);
                let reason = never_fits(b, l, demand);
                return Try::Deny(Denial::by(&b.state.name, cell.key(), reason));
            }
            match remote::plan(i, b, r, &cell, demand, now) {
                // Redis is down and the policy fails open: this process's share, locally.
                remote::Plan::Local => {}
                remote::Plan::Deny(reason) => {
                    undo(&mut holds);
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
        let mut hold = Hold {
            cell: Arc::clone(&cell),
            slots: 0,
            charges: SmallVec::new(),
            concurrency: false,
            remote: None,
        };
        for l in &b.limits {
            let inc = l.rate.increment(b.units(l.unit, demand));
            if !l.rate.fits(inc) {
                undo_hold(&hold, now);
                undo(&mut holds);
                let reason = never_fits(b, l, demand);
                return Try::Deny(Denial::by(&b.state.name, cell.key(), reason));
            }
            match gcra::reserve(&cell.tat[l.slot], &l.rate, inc, now) {
                Ok(charge) => {
                    hold.slots |= 1 << l.slot;
                    hold.charges.push(charge);
                }
                Err(wait) => {
                    undo_hold(&hold, now);
                    undo(&mut holds);
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
                undo_hold(&hold, now);
                undo(&mut holds);
                return Try::Blocked(Blocked {
                    budget: i,
                    cell,
                    wait: None,
                    limit: None,
                });
            }
            hold.concurrency = true;
        }
        holds.push(hold);
    }
    if !asks.is_empty() {
        return Try::Remote(Box::new(remote::Pending::new(
            compiled, holds, asks, *demand,
        )));
    }
    Try::Go(Permit::new(permit::Held {
        holds,
        demand: *demand,
        settled: false,
        target: None,
        journey: Journey::default(),
    }))
}

/// The refusal of a call whose cost exceeds the burst of limit `l` of `b`.
fn never_fits(b: &CompiledBudget, l: &CompiledLimit, demand: &Demand) -> DenyReason {
    let units = b.units(l.unit, demand);
    let mut cost = units as f64;
    let mut burst = l.burst_units;
    if l.unit == Unit::Spend {
        cost /= NANOS_PER_UNIT;
        burst /= NANOS_PER_UNIT;
    }
    DenyReason::NeverFits {
        limit: l.kind,
        cost,
        burst,
    }
}

/// The first limit of `b` that would make this call wait, and for how long.
fn first_wait(
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

/// Gives back what an unfinished hold took (same `now`, so every charge returns whole).
fn undo_hold(h: &Hold, now: Nanos) {
    for (slot, c) in h.charged() {
        if c.increment > 0 {
            gcra::refund(&h.cell.tat[slot], c.increment, c.end, now);
        }
    }
    if h.concurrency {
        h.cell.release();
    }
}

/// Compiles a policy against the registry of budget state.
fn compile(
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
    let compiled = Compiled {
        policy: Arc::new(policy),
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
                    NANOS_PER_UNIT
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
        Box::new(remote::RemoteSpec::new(
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
