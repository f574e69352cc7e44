//! Where a call goes: routes, their targets in strategy order, fallback chains, key pools —
//! for the first attempt and for retries.
//!
//! Admission ([`super::admit`]) walks [`Routing::candidates`] in order: [`Routing::enter`]
//! passes over a target whose circuit is open, [`Routing::pick_key`] one whose pool has no
//! usable key, and when every target was passed over [`Routing::unavailable`] says why and
//! until when. After a failed attempt, settlement asks [`Routing::retry_target`] where the
//! retry goes and [`Routing::other_key`] whether a 401 can move to another key.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use smallvec::SmallVec;

use crate::clock::{Nanos, duration_nanos};
use crate::policy::{Auth, Glob, Policy, Strategy};
use crate::rng::SharedSplitMix64;

use crate::retry::{BreakerPermit, BreakerState, Failure};

use super::deny::DenyReason;
use super::health::{HealthRegistry, KeyState, TargetHealth, UpstreamHealth, key_id};

/// A concrete place an attempt goes: route, upstream, model and pool key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetRef {
    /// The route that chose it.
    pub route: Arc<str>,
    /// Upstream name.
    pub upstream: Arc<str>,
    /// Model name sent to the upstream.
    pub model: Arc<str>,
    /// Pool key id (`OPENAI_API_KEY` for `env:OPENAI_API_KEY`; never the secret).
    pub key: Arc<str>,
}

impl fmt::Display for TargetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} (key {})", self.upstream, self.model, self.key)
    }
}

/// One finished attempt of a call, for the reason chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// 1 for the first attempt.
    pub number: u32,
    /// When it was settled, in the engine clock's nanoseconds.
    pub at: Nanos,
    /// Where it went, when routed.
    pub target: Option<TargetRef>,
    /// How it ended, as a stable code (`status_503`, `timeout_first_byte`, `connect_refused`,
    /// `malformed`, `cut_stream`).
    pub outcome: String,
    /// What was decided after it (`retry in 1200 ms on deepseek/deepseek-chat`, `gave up: …`).
    pub decision: String,
}

impl fmt::Display for AttemptRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "attempt {}", self.number)?;
        if let Some(t) = &self.target {
            write!(f, " to {t}")?;
        }
        write!(f, ": {}; {}", self.outcome, self.decision)
    }
}

/// The state a call carries from one attempt to the next: its number, deadline, where the next
/// attempt should go, what failed, and the history. Returned in [`crate::Verdict::Retry`]; pass it
/// back with [`crate::Call::attempt`] when admitting the retry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attempt {
    pub(crate) number: u32,
    pub(crate) deadline: Option<Nanos>,
    pub(crate) prev_backoff: Duration,
    pub(crate) next: Option<TargetRef>,
    pub(crate) failed_targets: Vec<(Arc<str>, Arc<str>)>,
    pub(crate) failed_keys: Vec<(Arc<str>, Arc<str>)>,
    pub(crate) history: Vec<AttemptRecord>,
}

impl Attempt {
    /// The number of the attempt this state is for (2 for the first retry).
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Where the next attempt should go, when the engine chose.
    pub fn next_target(&self) -> Option<&TargetRef> {
        self.next.as_ref()
    }

    /// Every finished attempt, oldest first.
    pub fn history(&self) -> &[AttemptRecord] {
        &self.history
    }
}

#[derive(Debug)]
pub(crate) struct CompiledUpstream {
    pub name: Arc<str>,
    pub keys: Vec<Arc<KeyState>>,
    pub quarantine: Duration,
    pub health: Arc<UpstreamHealth>,
    next_key: AtomicUsize,
}

#[derive(Debug)]
pub(crate) struct CompiledTarget {
    pub upstream: usize,
    pub model: Arc<str>,
    pub weight: u32,
    pub health: Arc<TargetHealth>,
}

#[derive(Debug)]
pub(crate) struct CompiledRoute {
    pub name: Arc<str>,
    pub model: Glob,
    pub strategy: Strategy,
    pub targets: Vec<CompiledTarget>,
    /// Routes tried after this one, following `fallback` (loops are refused by validation; the
    /// chain also stops at a route already seen).
    pub chain: Vec<usize>,
}

/// Routes and upstreams of one policy, compiled against health state.
#[derive(Debug)]
pub(crate) struct Routing {
    pub upstreams: Vec<CompiledUpstream>,
    pub routes: Vec<CompiledRoute>,
    /// Retry budget of calls that name no upstream of the policy.
    pub default_health: Arc<UpstreamHealth>,
    rng: SharedSplitMix64,
}

/// A target of a route: (route index, target index).
pub(crate) type Candidate = (usize, usize);

/// Why a target or key was passed over.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Skip {
    BreakerOpen {
        target: String,
        retry_in: Duration,
    },
    NoKey {
        upstream: String,
    },
    ServerLimited {
        upstream: String,
        key: String,
        until: Nanos,
    },
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::BreakerOpen { target, retry_in } => {
                write!(
                    f,
                    "{target}: circuit open for {} ms more",
                    retry_in.as_millis()
                )
            }
            Skip::NoKey { upstream } => {
                write!(
                    f,
                    "{upstream}: every key is held after a 401 or an exhausted quota"
                )
            }
            Skip::ServerLimited { upstream, key, .. } => {
                write!(
                    f,
                    "{upstream} key {key}: the server's rate-limit headers say no room until the reset"
                )
            }
        }
    }
}

impl Routing {
    pub(crate) fn compile(policy: &Policy, health: &mut HealthRegistry) -> Routing {
        let mut kept_targets = vec![];
        let mut kept_keys = vec![];
        let upstreams: Vec<CompiledUpstream> = policy
            .upstreams
            .iter()
            .map(|u| {
                let ids: Vec<String> = match &u.auth {
                    Auth::Bearer { keys } => keys.iter().map(key_id).collect(),
                    _ => vec!["default".to_owned()],
                };
                let keys = ids
                    .iter()
                    .map(|id| {
                        kept_keys.push((u.name.clone(), id.clone()));
                        health.key(&u.name, id)
                    })
                    .collect();
                CompiledUpstream {
                    name: Arc::from(u.name.as_str()),
                    keys,
                    quarantine: u.key_quarantine,
                    health: health.upstream(&u.name, &policy.retry),
                    next_key: AtomicUsize::new(0),
                }
            })
            .collect();
        let routes: Vec<CompiledRoute> = policy
            .routes
            .iter()
            .map(|r| CompiledRoute {
                name: Arc::from(r.name.as_str()),
                model: r.model.clone(),
                strategy: r.strategy,
                targets: r
                    .targets
                    .iter()
                    .filter_map(|t| {
                        let upstream = upstreams.iter().position(|u| *u.name == *t.upstream)?;
                        kept_targets.push((t.upstream.clone(), t.model.clone()));
                        Some(CompiledTarget {
                            upstream,
                            model: Arc::from(t.model.as_str()),
                            weight: t.weight.max(1),
                            health: health.target(&t.upstream, &t.model, &policy.breaker),
                        })
                    })
                    .collect(),
                chain: vec![],
            })
            .collect();
        let default_health = health.upstream("", &policy.retry);
        let mut routing = Routing {
            upstreams,
            routes,
            default_health,
            rng: SharedSplitMix64::new(0x5eed),
        };
        for i in 0..routing.routes.len() {
            let mut chain = vec![];
            let mut seen = vec![i];
            let mut next = policy.routes[i].fallback.as_deref();
            while let Some(name) = next {
                let Some(j) = policy.routes.iter().position(|r| r.name == name) else {
                    break;
                };
                if seen.contains(&j) {
                    break;
                }
                seen.push(j);
                chain.push(j);
                next = policy.routes[j].fallback.as_deref();
            }
            routing.routes[i].chain = chain;
        }
        let mut names: Vec<String> = policy.upstreams.iter().map(|u| u.name.clone()).collect();
        names.push(String::new());
        health.retain(&kept_targets, &names, &kept_keys);
        routing
    }

    /// The route a call uses: the one it names, else the first whose model pattern matches —
    /// unless the call names its own upstream (bring-your-own target).
    pub(crate) fn route_for(&self, route: &str, model: &str, upstream: &str) -> Option<usize> {
        if !route.is_empty() {
            return self.routes.iter().position(|r| &*r.name == route);
        }
        if !upstream.is_empty() {
            return None;
        }
        self.routes.iter().position(|r| r.model.matches(model))
    }

    pub(crate) fn random(&self) -> u64 {
        self.rng.next_u64()
    }

    /// The targets of one route in its strategy's order.
    fn ordered(&self, r: usize, out: &mut SmallVec<[Candidate; 8]>) {
        let route = &self.routes[r];
        let n = route.targets.len();
        let start = out.len();
        out.extend((0..n).map(|t| (r, t)));
        let slice = &mut out[start..];
        match route.strategy {
            Strategy::Ordered => {}
            Strategy::Weighted => {
                // Weighted random order: pick one by weight, then the next among the rest, …
                for i in 0..slice.len() {
                    let total: u64 = slice[i..]
                        .iter()
                        .map(|c| u64::from(route.targets[c.1].weight))
                        .sum();
                    let mut x = self.random() % total.max(1);
                    let mut pick = i;
                    for (j, c) in slice.iter().enumerate().skip(i) {
                        let w = u64::from(route.targets[c.1].weight);
                        if x < w {
                            pick = j;
                            break;
                        }
                        x -= w;
                    }
                    slice.swap(i, pick);
                }
            }
            Strategy::LowestLatency => {
                // Power of two choices on the latency EWMA (no sample yet counts as fastest, so
                // new targets get traffic); the rest follow by latency.
                let lat = |c: &Candidate| route.targets[c.1].health.latency().unwrap_or(0);
                slice.sort_by_key(lat);
                if slice.len() >= 2 {
                    let a = (self.random() % slice.len() as u64) as usize;
                    let mut b = (self.random() % (slice.len() as u64 - 1)) as usize;
                    if b >= a {
                        b += 1;
                    }
                    let best = if lat(&slice[a]) <= lat(&slice[b]) {
                        a
                    } else {
                        b
                    };
                    let chosen = slice[best];
                    slice.copy_within(0..best, 1);
                    slice[0] = chosen;
                }
            }
        }
    }

    /// Every target a call on route `r` may try, best first: the one the last verdict chose, then
    /// the route's targets in strategy order, then its fallback chain, targets that already
    /// failed this call last.
    pub(crate) fn candidates(
        &self,
        r: usize,
        attempt: Option<&Attempt>,
    ) -> SmallVec<[Candidate; 8]> {
        let mut all: SmallVec<[Candidate; 8]> = SmallVec::new();
        self.ordered(r, &mut all);
        for &f in &self.routes[r].chain {
            self.ordered(f, &mut all);
        }
        let Some(attempt) = attempt else { return all };
        let failed = |c: &Candidate| {
            let t = &self.routes[c.0].targets[c.1];
            let up = &self.upstreams[t.upstream].name;
            attempt
                .failed_targets
                .iter()
                .any(|(u, m)| u == up && *m == t.model)
        };
        let mut out: SmallVec<[Candidate; 8]> = SmallVec::new();
        if let Some(next) = &attempt.next
            && let Some(c) = all.iter().find(|c| self.is(c, next))
        {
            out.push(*c);
        }
        for c in &all {
            if !failed(c) && !out.contains(c) {
                out.push(*c);
            }
        }
        for c in &all {
            if !out.contains(c) {
                out.push(*c);
            }
        }
        out
    }

    fn is(&self, c: &Candidate, t: &TargetRef) -> bool {
        let target = &self.routes[c.0].targets[c.1];
        *self.upstreams[target.upstream].name == *t.upstream && target.model == t.model
    }

    /// A usable key of an upstream: round-robin over the pool, skipping quarantined keys, keys
    /// the server said are out of room, and `avoid` (keys that failed this call) unless nothing
    /// else is left. Takes one request and `tokens` from the server's remaining counts.
    /// A key of upstream `u` for a call of `tokens`: not quarantined, not held back by the
    /// server's rate-limit headers, preferably not in `avoid` (keys that failed this call) and
    /// never in `never` (keys a shared budget refused this call).
    pub(crate) fn pick_key(
        &self,
        u: usize,
        avoid: &[(Arc<str>, Arc<str>)],
        never: &[&str],
        tokens: u64,
        now: Nanos,
    ) -> Result<&Arc<KeyState>, Skip> {
        let up = &self.upstreams[u];
        let n = up.keys.len();
        let start = up.next_key.fetch_add(1, Ordering::Relaxed);
        let mut server_limited = None;
        for pass in 0..2 {
            for i in 0..n {
                let key = &up.keys[(start + i) % n];
                let avoided = avoid.iter().any(|(u2, k)| *u2 == up.name && *k == key.id);
                if key.quarantined(now) || (pass == 0 && avoided) || never.contains(&&*key.id) {
                    continue;
                }
                match key.server.take(tokens, now) {
                    Ok(()) => return Ok(key),
                    Err(until) => server_limited = Some((key, until)),
                }
            }
        }
        Err(match server_limited {
            Some((key, until)) => Skip::ServerLimited {
                upstream: up.name.to_string(),
                key: key.id.to_string(),
                until,
            },
            None => Skip::NoKey {
                upstream: up.name.to_string(),
            },
        })
    }

    pub(crate) fn upstream_named(&self, name: &str) -> Option<&CompiledUpstream> {
        self.upstreams.iter().find(|u| &*u.name == name)
    }

    /// The key pool of the upstream an attempt went to: by index when the attempt was admitted
    /// under this routing (`same`), else by name (a reload came in between).
    pub(crate) fn pool_of(&self, t: &TargetCtx, same: bool) -> &[Arc<KeyState>] {
        let upstream = if same {
            self.upstreams.get(t.upstream_index)
        } else {
            self.upstream_named(&t.target.upstream)
        };
        upstream.map_or(&[][..], |u| &u.keys[..])
    }

    /// Whether a key of that pool other than the attempt's is usable at `now` (for a 401).
    pub(crate) fn other_key(&self, t: &TargetCtx, same: bool, now: Nanos) -> bool {
        self.pool_of(t, same)
            .iter()
            .any(|k| !Arc::ptr_eq(k, &t.key) && !k.quarantined(now))
    }

    /// Where the retry of an attempt that failed with `failure` on `t` goes, noting in `next`
    /// what failed: the same target with another key when the key is at fault (401, 429) and
    /// the pool has another; else the first other candidate of the route (and its fallbacks)
    /// that will take calls when the retry is due (`after` from `now`): its circuit not open
    /// then, one of its keys not quarantined. `None`: no target known, admission will choose.
    pub(crate) fn retry_target(
        &self,
        t: &TargetCtx,
        same: bool,
        next: &mut Attempt,
        failure: Failure,
        after: Duration,
        now: Nanos,
    ) -> Option<TargetRef> {
        let pool = self.pool_of(t, same);
        let key_problem = matches!(failure, Failure::Status(401) | Failure::Status(429));
        if key_problem && pool.len() > 1 {
            next.failed_keys
                .push((Arc::clone(&t.target.upstream), Arc::clone(&t.target.key)));
            let other = pool.iter().find(|k| {
                !Arc::ptr_eq(k, &t.key)
                    && !k.quarantined(now)
                    && !next
                        .failed_keys
                        .iter()
                        .any(|(u, id)| *u == t.target.upstream && *id == k.id)
            });
            let mut same_target = t.target.clone();
            if let Some(k) = other {
                same_target.key = Arc::clone(&k.id);
            }
            return Some(same_target);
        }
        next.failed_targets
            .push((Arc::clone(&t.target.upstream), Arc::clone(&t.target.model)));
        let route = if same {
            Some(t.candidate.0)
        } else {
            self.routes.iter().position(|r| r.name == t.target.route)
        }?;
        let due = now.saturating_add(duration_nanos(after));
        self.candidates(route, Some(next)).iter().find_map(|c| {
            let target = &self.routes[c.0].targets[c.1];
            if let BreakerState::Open { until } = target.health.breaker.state(now)
                && until >= due
            {
                return None;
            }
            let up = &self.upstreams[target.upstream];
            let key = up.keys.iter().find(|k| !k.quarantined(due))?;
            Some(self.target_ref(*c, key))
        })
    }

    /// The breaker of candidate `c`: a permit to try it, or why it is passed over. With
    /// synthetic probes in the policy (`probe`), users' calls are never the half-open probes.
    pub(crate) fn enter(
        &self,
        c: Candidate,
        synthetic_probes: bool,
        now: Nanos,
    ) -> Result<BreakerPermit, Skip> {
        let t = &self.routes[c.0].targets[c.1];
        let skip = |retry_in| Skip::BreakerOpen {
            target: format!("{}/{}", self.upstreams[t.upstream].name, t.model),
            retry_in,
        };
        match t.health.breaker.try_acquire(now) {
            Ok(p) if p.is_probe() && synthetic_probes => {
                t.health.breaker.release(p);
                Err(skip(Duration::ZERO))
            }
            Ok(p) => Ok(p),
            Err(rejected) => Err(skip(rejected.retry_in)),
        }
    }

    /// The refusal of a call on route `route` whose every target was passed over: why each was,
    /// and when the first takes calls again (its circuit's open time, the server's reset).
    pub(crate) fn unavailable(&self, route: usize, skipped: &[Skip], now: Nanos) -> DenyReason {
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
        DenyReason::Unavailable {
            route: self.routes[route].name.to_string(),
            detail,
            retry_in,
        }
    }

    pub(crate) fn target_ref(&self, c: Candidate, key: &KeyState) -> TargetRef {
        let route = &self.routes[c.0];
        let t = &route.targets[c.1];
        TargetRef {
            route: Arc::clone(&route.name),
            upstream: Arc::clone(&self.upstreams[t.upstream].name),
            model: Arc::clone(&t.model),
            key: Arc::clone(&key.id),
        }
    }
}

/// Where a routed call went, and what it holds there. Everything is held by reference count, not
/// by index, so a reload between admission and settlement cannot confuse it.
pub(crate) struct TargetCtx {
    pub target: TargetRef,
    /// The policy generation the indices below belong to.
    pub generation: u64,
    /// The target's route and place in it, in that policy's routing.
    pub candidate: (usize, usize),
    /// The upstream's index in that policy (its wire, its key pool).
    pub upstream_index: usize,
    pub health: Arc<TargetHealth>,
    pub breaker: Option<BreakerPermit>,
    pub key: Arc<KeyState>,
    pub upstream: Arc<UpstreamHealth>,
    pub quarantine: Duration,
}
