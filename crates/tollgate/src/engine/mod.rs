//! The engine: the running policy (swapped atomically on reload), budget state that outlives
//! reloads, and the decide API.

mod admit;
mod answer;
mod budgets;
mod cache;
mod call;
mod compile;
mod decision;
mod deny;
mod health;
mod hold;
mod metrics;
mod outcome;
mod pending;
mod permit;
mod probe;
mod remote;
mod request;
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

use crate::budget::{BudgetStats, Cells, gcra, key_hash};
use crate::clock::{Clock, MonotonicClock};
use crate::money::Money;
use crate::policy::{LimitKind, Policy, PolicyErrors, Unit};

pub use answer::ErrorAnswer;
pub use cache::{CacheFill, CacheLookup, FlightResult};
pub use call::{Call, Prompt};
pub use compile::ReloadReport;
pub use decision::{Decision, WaitHint};
pub use deny::{Denial, DenyReason};
pub use outcome::{GiveUp, Outcome, Settlement, Verdict};
pub use permit::Permit;
pub use probe::Probe;
pub use request::{CallError, ChatRequest, ChatResponse, Source};
pub use route::{Attempt, AttemptRecord, TargetRef};
pub use stream::ChatStream;
pub use wait::{WaitPoll, Waiter};
pub use watch::{WatchEvent, Watcher};

use compile::{Compiled, Registered};
use health::HealthRegistry;

pub(crate) struct Inner {
    current: ArcSwap<Compiled>,
    registry: Mutex<HashMap<String, Registered>>,
    health: Mutex<HealthRegistry>,
    cache: crate::cache::CacheStore,
    flights: crate::cache::SingleFlight<FlightResult>,
    clock: Arc<dyn Clock>,
    generation: AtomicU64,
    seq: AtomicU64,
    /// Waiters alive now: calls waiting for room in the budgets' queues.
    waiting: AtomicU64,
    metrics: metrics::EngineMetrics,
    /// Clock time the call API last looked for due breaker probes.
    probed_at: AtomicU64,
    /// The `[redis]` store, kept across reloads that keep the section.
    store: Mutex<Option<Arc<crate::store::RedisStore>>>,
    /// The cache's disk level, kept across reloads that keep its path.
    disk: Mutex<Option<Arc<crate::store::DiskCache>>>,
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
        let (compiled, _) = compile::compile(
            1,
            None,
            policy,
            &mut registry,
            &mut health,
            &clock,
            &mut store,
        );
        let cache = crate::cache::CacheStore::from_policy(&compiled.policy.cache);
        let disk = cache::open_disk(None, &compiled.policy.cache, clock.now());
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
                waiting: AtomicU64::new(0),
                metrics: metrics::EngineMetrics::new(),
                probed_at: AtomicU64::new(0),
                store: Mutex::new(store),
                disk: Mutex::new(disk),
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
        let metrics = &self.inner.metrics;
        let (spec, now) = match admit::spec(&compiled, metrics, call, None) {
            Ok(s) => s,
            Err(d) => return d,
        };
        let result = admit::try_admit(&compiled, &spec, None, now);
        admit::decision(&compiled, metrics, result)
    }

    /// [`Engine::admit`] for async code: the round trip to Redis, when budgets in Redis match,
    /// is awaited rather than blocked on. Without such budgets it answers at once, like `admit`.
    pub async fn admit_async(&self, call: &Call<'_>) -> Decision {
        self.admit_routed(call, None).await
    }

    /// [`Engine::admit_async`] with the route resolved ahead.
    pub(crate) async fn admit_routed(
        &self,
        call: &Call<'_>,
        route: Option<admit::RouteHint>,
    ) -> Decision {
        self.admit_on(&self.inner.current.load_full(), call, route)
            .await
    }

    /// [`Engine::admit_async`] against `compiled`, a policy the caller already holds.
    pub(crate) async fn admit_on(
        &self,
        compiled: &Compiled,
        call: &Call<'_>,
        route: Option<admit::RouteHint>,
    ) -> Decision {
        let metrics = &self.inner.metrics;
        let (spec, now) = match admit::spec(compiled, metrics, call, route) {
            Ok(s) => s,
            Err(d) => return d,
        };
        let result = admit::try_admit_async(compiled, &spec, None, now).await;
        admit::decision(compiled, metrics, result)
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
        self.waiter_routed(call, None)
    }

    /// [`Engine::waiter`] with the route resolved ahead.
    pub(crate) fn waiter_routed(
        &self,
        call: &Call<'_>,
        route: Option<admit::RouteHint>,
    ) -> Result<Waiter, Denial> {
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
            route,
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
        self.inner.metrics.render(&metrics::EngineSnapshot {
            generation: self.generation(),
            waiting: self.waiting(),
            budgets: &self.stats(),
            targets: &self.targets(),
            cache: &self.cache_stats(),
            disk: self.inner.disk.lock().as_ref().map(|d| d.stats()),
            retry_tokens: &retry_tokens,
            store: store.as_ref().map(|st| {
                let c = st.counters();
                metrics::StoreSnapshot {
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

    /// Calls waiting for room in the budgets' queues now: [`Engine::send`] and
    /// [`Engine::stream`] calls admitted after a wait, [`Engine::acquire`] and live
    /// [`Waiter`]s (the `tollgate_calls_waiting` gauge).
    pub fn waiting(&self) -> u64 {
        self.inner.waiting.load(Ordering::Relaxed)
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
                    used /= Money::SCALE;
                    burst /= Money::SCALE;
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
    /// The `[redis]` store of the running policy, if it has one.
    pub(crate) fn redis_store(&self) -> Option<Arc<crate::store::RedisStore>> {
        self.store.lock().clone()
    }

    pub(crate) fn current(&self) -> Arc<Compiled> {
        self.current.load_full()
    }

    pub(crate) fn reload_policy(&self, policy: Policy) -> ReloadReport {
        let mut registry = self.registry.lock();
        let mut health = self.health.lock();
        let mut store = self.store.lock();
        let generation = self.generation.load(Ordering::Acquire) + 1;
        let (compiled, mut report) = compile::compile(
            generation,
            Some(&self.current.load()),
            policy,
            &mut registry,
            &mut health,
            &self.clock,
            &mut store,
        );
        report.generation = generation;
        self.cache.apply_policy(&compiled.policy.cache);
        {
            let mut disk = self.disk.lock();
            *disk = cache::open_disk(disk.take(), &compiled.policy.cache, self.clock.now());
        }
        self.current.store(Arc::new(compiled));
        self.generation.store(generation, Ordering::Release);
        report
    }
}
