//! Health state that outlives reloads: circuit breakers and latency per target, retry budgets per
//! upstream, quarantine and server-reported limits per key. Keyed by names, like budget state.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::{Nanos, duration_nanos};
use crate::policy::{Breaker, Retry};
use crate::retry::{CircuitBreaker, RetryBudget, ServerLimits};

/// Health of one (upstream, model) target.
#[derive(Debug)]
pub(crate) struct TargetHealth {
    pub breaker: CircuitBreaker,
    /// Exponentially weighted moving average of latency, nanoseconds (0 = no sample yet).
    ewma_ns: AtomicU64,
    /// Times the breaker went from closed or half-open to open.
    opens: AtomicU64,
    config: Breaker,
}

/// Weight of a new latency sample in the moving average.
const EWMA_ALPHA: f64 = 0.2;

impl TargetHealth {
    fn new(config: &Breaker) -> TargetHealth {
        TargetHealth {
            breaker: CircuitBreaker::new(config),
            ewma_ns: AtomicU64::new(0),
            opens: AtomicU64::new(0),
            config: config.clone(),
        }
    }

    pub(crate) fn opened(&self) {
        self.opens.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn opens(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }

    pub(crate) fn latency(&self) -> Option<u64> {
        match self.ewma_ns.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    pub(crate) fn observe_latency(&self, latency: Duration) {
        let sample = duration_nanos(latency).max(1);
        let _ = self
            .ewma_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    sample
                } else {
                    ((old as f64) * (1.0 - EWMA_ALPHA) + (sample as f64) * EWMA_ALPHA).max(1.0)
                        as u64
                })
            });
    }
}

/// What the upstream said about one of its keys: remaining requests / tokens until a reset.
#[derive(Debug, Default)]
pub(crate) struct ServerGate {
    remaining_requests: AtomicU64,
    requests_until: AtomicU64,
    remaining_tokens: AtomicU64,
    tokens_until: AtomicU64,
}

impl ServerGate {
    /// Takes one request and `tokens` from what the server said remains, or says until when the
    /// server will refuse. Nothing is known (or the reset passed): no restriction.
    pub(crate) fn take(&self, tokens: u64, now: Nanos) -> Result<(), Nanos> {
        let req_until = self.requests_until.load(Ordering::Acquire);
        let tok_until = self.tokens_until.load(Ordering::Acquire);
        if now < req_until && self.remaining_requests.load(Ordering::Acquire) == 0 {
            return Err(req_until);
        }
        if now < tok_until && self.remaining_tokens.load(Ordering::Acquire) < tokens {
            return Err(tok_until);
        }
        if now < req_until {
            let _ =
                self.remaining_requests
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                        Some(r.saturating_sub(1))
                    });
        }
        if now < tok_until {
            let _ = self
                .remaining_tokens
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                    Some(r.saturating_sub(tokens))
                });
        }
        Ok(())
    }

    /// Records the server's `x-ratelimit-*` view. A remaining count without a reset time is
    /// ignored: it could not be bounded in time.
    pub(crate) fn update(&self, limits: &ServerLimits, now: Nanos) {
        if let (Some(remaining), Some(reset)) = (limits.remaining_requests, limits.reset_requests) {
            self.remaining_requests.store(remaining, Ordering::Release);
            self.requests_until
                .store(now.saturating_add(duration_nanos(reset)), Ordering::Release);
        }
        if let (Some(remaining), Some(reset)) = (limits.remaining_tokens, limits.reset_tokens) {
            self.remaining_tokens.store(remaining, Ordering::Release);
            self.tokens_until
                .store(now.saturating_add(duration_nanos(reset)), Ordering::Release);
        }
    }
}

/// State of one key of an upstream's pool.
#[derive(Debug)]
pub(crate) struct KeyState {
    pub id: Arc<str>,
    /// A 401 benches the key until this clock time.
    quarantined_until: AtomicU64,
    pub server: ServerGate,
}

impl KeyState {
    fn new(id: &str) -> KeyState {
        KeyState {
            id: Arc::from(id),
            quarantined_until: AtomicU64::new(0),
            server: ServerGate::default(),
        }
    }

    pub(crate) fn quarantined(&self, now: Nanos) -> bool {
        now < self.quarantined_until.load(Ordering::Acquire)
    }

    pub(crate) fn quarantine(&self, until: Nanos) {
        self.quarantined_until.fetch_max(until, Ordering::AcqRel);
    }
}

/// Retry budget of one upstream, rebuilt when its settings change.
#[derive(Debug)]
pub(crate) struct UpstreamHealth {
    pub retry_budget: RetryBudget,
    settings: [u64; 4],
}

/// Every piece of health state, by name.
#[derive(Debug, Default)]
pub(crate) struct HealthRegistry {
    targets: HashMap<(String, String), Arc<TargetHealth>>,
    upstreams: HashMap<String, Arc<UpstreamHealth>>,
    keys: HashMap<(String, String), Arc<KeyState>>,
}

impl HealthRegistry {
    /// The health of a target; a changed breaker configuration starts a fresh breaker.
    pub(crate) fn target(
        &mut self,
        upstream: &str,
        model: &str,
        config: &Breaker,
    ) -> Arc<TargetHealth> {
        let key = (upstream.to_owned(), model.to_owned());
        match self.targets.get(&key) {
            Some(h) if &h.config == config => Arc::clone(h),
            _ => {
                let h = Arc::new(TargetHealth::new(config));
                self.targets.insert(key, Arc::clone(&h));
                h
            }
        }
    }

    pub(crate) fn upstream(&mut self, name: &str, retry: &Retry) -> Arc<UpstreamHealth> {
        let settings = [
            retry.budget_max_tokens.to_bits(),
            retry.budget_ratio.to_bits(),
            retry.budget_refill_per_second.to_bits(),
            retry.budget_retry_after_cost.to_bits(),
        ];
        match self.upstreams.get(name) {
            Some(h) if h.settings == settings => Arc::clone(h),
            _ => {
                let h = Arc::new(UpstreamHealth {
                    retry_budget: RetryBudget::from_policy(retry),
                    settings,
                });
                self.upstreams.insert(name.to_owned(), Arc::clone(&h));
                h
            }
        }
    }

    pub(crate) fn key(&mut self, upstream: &str, id: &str) -> Arc<KeyState> {
        Arc::clone(
            self.keys
                .entry((upstream.to_owned(), id.to_owned()))
                .or_insert_with(|| Arc::new(KeyState::new(id))),
        )
    }

    /// Forgets everything the running policy no longer names.
    pub(crate) fn retain(
        &mut self,
        targets: &[(String, String)],
        upstreams: &[String],
        keys: &[(String, String)],
    ) {
        self.targets.retain(|k, _| targets.contains(k));
        self.upstreams.retain(|k, _| upstreams.contains(k));
        self.keys.retain(|k, _| keys.contains(k));
    }
}

/// The name a pool key goes by in budgets, decisions and metrics: never the secret, only where it
/// comes from (`OPENAI_API_KEY` for `env:OPENAI_API_KEY`, the file name for `file:`).
pub(crate) fn key_id(secret: &crate::policy::SecretRef) -> String {
    match secret {
        crate::policy::SecretRef::Env(name) => name.clone(),
        crate::policy::SecretRef::File(path) => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string()),
    }
}
