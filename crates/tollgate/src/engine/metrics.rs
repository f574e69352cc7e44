//! The engine's metrics: the catalog listed in [`crate::metrics`], on a [`Registry`], fed by
//! admission and settlement and read at scrape time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::budget::BudgetStats;
use crate::cache::CacheStats;
use crate::metrics::{
    Counter, CounterVec, Histogram, HistogramVec, LATENCY_BUCKETS, LabelMap, MetricType, Registry,
    Series, TTFT_BUCKETS, TextWriter,
};
use crate::money::Money;
use crate::retry::BreakerState;
use crate::tokens::Usage;

use super::TargetRef;

// ---------------------------------------------------------------------------------------------
// The engine's metrics

/// The series of one (upstream, model) that every settled attempt touches, resolved once.
struct TargetSeries {
    /// Attempts with outcome `status_200`, the common one.
    ok: Counter,
    latency: Histogram,
    input: Counter,
    cached: Counter,
    output: Counter,
    spend: Counter,
}

/// What the engine records, and the scrape-time view of its state.
pub(crate) struct EngineMetrics {
    /// Tells engines apart in the per-thread cache of target series.
    id: u64,
    registry: Registry,
    attempts: CounterVec,
    latency: HistogramVec,
    ttft: HistogramVec,
    tokens: CounterVec,
    spend: CounterVec,
    retries: CounterVec,
    give_ups: CounterVec,
    denials: CounterVec,
    answers: CounterVec,
    targets: LabelMap<TargetSeries>,
    unrouted: TargetSeries,
}

/// One entry of the per-thread cache of target series. It holds the target's name strings, so
/// their addresses cannot be reused while it is cached: equal addresses mean equal names.
struct CachedTarget {
    engine: u64,
    upstream: Arc<str>,
    model: Arc<str>,
    series: Arc<Series<TargetSeries>>,
}

/// Target series each thread used last: settling finds them by comparing two pointers, without
/// hashing the names.
#[derive(Default)]
struct TargetCache {
    slots: [Option<CachedTarget>; 4],
    next: usize,
}

thread_local! {
    static TARGETS: std::cell::RefCell<TargetCache> = std::cell::RefCell::default();
}

/// The engine's state at scrape time, gathered by [`crate::Engine::metrics_text`].
pub(crate) struct EngineSnapshot<'a> {
    pub generation: u64,
    /// Calls waiting for room in the budgets' queues now.
    pub waiting: u64,
    pub budgets: &'a [BudgetStats],
    pub targets: &'a [crate::TargetHealthInfo],
    pub cache: &'a CacheStats,
    /// (upstream, retry-budget tokens); `""` for calls that name no upstream of the policy.
    pub retry_tokens: &'a [(Arc<str>, f64)],
    /// The `[redis]` store, when the policy has one.
    pub store: Option<StoreSnapshot<'a>>,
    /// The cache's disk level, when the policy has one.
    pub disk: Option<crate::store::DiskStats>,
}

/// The shared store's state at one moment.
pub(crate) struct StoreSnapshot<'a> {
    pub up: bool,
    pub round_trips: u64,
    pub errors: u64,
    pub outages: u64,
    pub dropped: u64,
    pub leases: usize,
    /// Every Redis budget, and whether it is deciding locally now (fail-open while down).
    pub budgets: &'a [(Arc<str>, bool)],
}

/// Families of one unlabelled sample each: (name, help, type, value).
fn unlabelled(w: &mut TextWriter, families: &[(&str, &str, MetricType, u64)]) {
    for &(name, help, kind, value) in families {
        w.header(name, help, kind);
        w.sample_u64(name, &[], value);
    }
}

/// The `tollgate_cache_disk_*` families.
fn render_disk(w: &mut TextWriter, d: &crate::store::DiskStats) {
    let families: [(&str, &str, MetricType, u64); 7] = [
        (
            "tollgate_cache_disk_up",
            "1 while the cache's disk level is open and written, 0 when it could not be used.",
            MetricType::Gauge,
            u64::from(d.up),
        ),
        (
            "tollgate_cache_disk_hits_total",
            "Fresh answers from the cache's disk level (after memory and Redis missed).",
            MetricType::Counter,
            d.hits,
        ),
        (
            "tollgate_cache_disk_misses_total",
            "Disk-level lookups that found nothing fresh.",
            MetricType::Counter,
            d.misses,
        ),
        (
            "tollgate_cache_disk_stale_hits_total",
            "Expired answers the disk level gave after every target failed (stale-if-error).",
            MetricType::Counter,
            d.stale_hits,
        ),
        (
            "tollgate_cache_disk_writes_total",
            "Answers queued for writing to the disk level.",
            MetricType::Counter,
            d.queued,
        ),
        (
            "tollgate_cache_disk_dropped_total",
            "Answers not written to the disk level because its writer's queue was full.",
            MetricType::Counter,
            d.dropped,
        ),
        (
            "tollgate_cache_disk_corrupt_total",
            "Disk rows that failed their checksum or decoding: never served, deleted.",
            MetricType::Counter,
            d.corrupt,
        ),
    ];
    unlabelled(w, &families);
    if let Some(bytes) = d.bytes {
        w.header(
            "tollgate_cache_disk_bytes",
            "Bytes of answers in the disk level's file (every process's).",
            MetricType::Gauge,
        );
        w.sample_u64(
            "tollgate_cache_disk_bytes",
            &[],
            u64::try_from(bytes).unwrap_or(0),
        );
    }
}

/// The `tollgate_budget_store_*` families.
fn render_store(w: &mut TextWriter, st: &StoreSnapshot<'_>) {
    let redis = [("store", "redis")];
    w.header(
        "tollgate_budget_store_up",
        "1 while the shared budget store answers in time, 0 while it is down.",
        MetricType::Gauge,
    );
    w.sample_u64("tollgate_budget_store_up", &redis, u64::from(st.up));
    let counters: [(&str, &str, u64); 4] = [
        (
            "tollgate_budget_store_round_trips_total",
            "Round trips to the shared store (admissions, reconciliations, renewals, cache).",
            st.round_trips,
        ),
        (
            "tollgate_budget_store_errors_total",
            "Store operations that failed or took longer than op_timeout.",
            st.errors,
        ),
        (
            "tollgate_budget_store_outages_total",
            "Times the store went down.",
            st.outages,
        ),
        (
            "tollgate_budget_store_dropped_total",
            "Reconciliations dropped because the store stayed down too long.",
            st.dropped,
        ),
    ];
    for (name, help, v) in counters {
        w.header(name, help, MetricType::Counter);
        w.sample_u64(name, &redis, v);
    }
    w.header(
        "tollgate_budget_store_leases",
        "Concurrency slots this process holds in the store now.",
        MetricType::Gauge,
    );
    w.sample_u64("tollgate_budget_store_leases", &redis, st.leases as u64);
    w.header(
        "tollgate_budget_store_fallback",
        "1 while a Redis budget decides locally with its fail-open share, else 0.",
        MetricType::Gauge,
    );
    for (budget, fallback) in st.budgets {
        w.sample_u64(
            "tollgate_budget_store_fallback",
            &[("budget", budget)],
            u64::from(*fallback),
        );
    }
}

fn target_series(
    attempts: &CounterVec,
    latency: &HistogramVec,
    tokens: &CounterVec,
    spend: &CounterVec,
    upstream: &str,
    model: &str,
) -> TargetSeries {
    TargetSeries {
        ok: attempts.with_label_values(&[upstream, model, "status_200"]),
        latency: latency.with_label_values(&[upstream, model]),
        input: tokens.with_label_values(&[upstream, model, "input"]),
        cached: tokens.with_label_values(&[upstream, model, "cached"]),
        output: tokens.with_label_values(&[upstream, model, "output"]),
        spend: spend.with_label_values(&[upstream, model]),
    }
}

/// `status_` and up to five digits, on the stack.
struct StatusLabel {
    buf: [u8; 12],
    len: usize,
}

impl StatusLabel {
    fn new(status: u16) -> StatusLabel {
        let mut buf = *b"status_\0\0\0\0\0";
        let mut digits = [0u8; 5];
        let mut n = status;
        let mut k = 0;
        loop {
            digits[k] = b'0' + (n % 10) as u8;
            k += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in 0..k {
            buf[7 + i] = digits[k - 1 - i];
        }
        StatusLabel { buf, len: 7 + k }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("status")
    }
}

impl EngineMetrics {
    pub(crate) fn new() -> EngineMetrics {
        let mut r = Registry::new();
        let attempts = r.counter(
            "tollgate_attempts_total",
            "Attempts sent, by target and outcome (status_200, status_503, timeout_first_byte, \
             connect_refused, malformed, cut_stream, unknown). Unrouted calls have upstream \"\" \
             and model \"\".",
            &["upstream", "model", "outcome"],
        );
        let latency = r.histogram(
            "tollgate_attempt_latency_seconds",
            "Latency of settled attempts that reported one, in seconds, by target.",
            &["upstream", "model"],
            &LATENCY_BUCKETS,
        );
        let ttft = r.histogram(
            "tollgate_time_to_first_token_seconds",
            "Time from sending a request to its first streamed token, in seconds, by target.",
            &["upstream", "model"],
            &TTFT_BUCKETS,
        );
        let tokens = r.counter(
            "tollgate_tokens_total",
            "Tokens the upstream reported, by target and kind: input (prompt tokens not served \
             from the prompt cache), cached (prompt tokens served from it), output (completion, \
             reasoning included).",
            &["upstream", "model", "kind"],
        );
        let spend = r.counter_with_divisor(
            "tollgate_spend_total",
            "Money charged for settled attempts, in the currency of the price table, by target.",
            &["upstream", "model"],
            Money::from_units(1.0).nanos(),
        );
        let retries = r.counter(
            "tollgate_retries_total",
            "Retries granted by settle, by the outcome code of the failed attempt.",
            &["code"],
        );
        let give_ups = r.counter(
            "tollgate_give_ups_total",
            "Calls given up by settle, by reason code (attempts_exhausted, not_retryable, \
             retry_budget_exhausted, ...).",
            &["code"],
        );
        let denials = r.counter(
            "tollgate_denials_total",
            "Calls refused by admit, by deciding budget (\"\" when no budget decided) and code \
             (budget_exhausted, concurrency, unavailable, ...).",
            &["budget", "code"],
        );
        let answers = r.counter(
            "tollgate_call_answers_total",
            "Calls of the call API (send, stream) answered without an upstream attempt of their \
             own, by source: cache (a fresh entry), shared (an identical call in flight), stale \
             (an expired entry served because every target failed).",
            &["source"],
        );
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let unrouted = target_series(&attempts, &latency, &tokens, &spend, "", "");
        EngineMetrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            registry: r,
            attempts,
            latency,
            ttft,
            tokens,
            spend,
            retries,
            give_ups,
            denials,
            answers,
            targets: LabelMap::new(2),
            unrouted,
        }
    }

    /// Runs `f` on the series of a routed target: from this thread's cache, else looked up by
    /// name (and cached).
    fn with_target(&self, t: &TargetRef, f: impl FnOnce(&TargetSeries)) {
        let hit = |c: &CachedTarget| {
            c.engine == self.id
                && Arc::ptr_eq(&c.upstream, &t.upstream)
                && Arc::ptr_eq(&c.model, &t.model)
        };
        let mut f = Some(f);
        let _ = TARGETS.try_with(|cache| {
            if let Ok(cache) = cache.try_borrow()
                && let Some(c) = cache.slots.iter().flatten().find(|c| hit(c))
                && let Some(f) = f.take()
            {
                f(&c.series.value);
            }
        });
        // Not cached on this thread (or the thread is exiting).
        let Some(f) = f.take() else {
            return;
        };
        let series = self.target_series(t);
        f(&series.value);
        // A thread that is exiting has no cache left: nothing is cached then.
        let _ = TARGETS.try_with(|cache| {
            if let Ok(mut cache) = cache.try_borrow_mut() {
                let i = cache.next;
                cache.next = (i + 1) % cache.slots.len();
                cache.slots[i] = Some(CachedTarget {
                    engine: self.id,
                    upstream: Arc::clone(&t.upstream),
                    model: Arc::clone(&t.model),
                    series,
                });
            }
        });
    }

    fn target_series(&self, t: &TargetRef) -> Arc<Series<TargetSeries>> {
        self.targets.series(&[&t.upstream, &t.model], || {
            target_series(
                &self.attempts,
                &self.latency,
                &self.tokens,
                &self.spend,
                &t.upstream,
                &t.model,
            )
        })
    }

    /// Records a settled attempt that was sent, on its routed target (else upstream and model
    /// `""`). `failure_code` is the outcome code of a failed attempt; a success is labelled by
    /// its status. Allocates nothing and hashes nothing for a 200 once the series exist.
    pub(crate) fn settled(
        &self,
        target: Option<&TargetRef>,
        status: Option<u16>,
        failure_code: Option<&str>,
        usage: Option<&Usage>,
        latency: Option<Duration>,
        spend: f64,
    ) {
        let (upstream, model) = target.map_or(("", ""), |t| (&*t.upstream, &*t.model));
        let spend_nanos = Money::from_units_rounded(spend).nanos();
        let record = |t: &TargetSeries| {
            match (failure_code, status) {
                (None, Some(200)) => t.ok.inc(),
                (Some(code), _) => self.attempts.inc(&[upstream, model, code]),
                (None, Some(s)) => {
                    let label = StatusLabel::new(s);
                    self.attempts.inc(&[upstream, model, label.as_str()]);
                }
                (None, None) => self.attempts.inc(&[upstream, model, "unknown"]),
            }
            if let Some(l) = latency {
                t.latency.observe_duration(l);
            }
            if let Some(u) = usage {
                let cached = u.cached_prompt_tokens.min(u.prompt_tokens);
                t.input.inc_by(u.prompt_tokens - cached);
                t.cached.inc_by(cached);
                t.output.inc_by(u.completion_tokens);
            }
            if spend_nanos > 0 {
                t.spend.inc_by(spend_nanos);
            }
        };
        match target {
            Some(t) => self.with_target(t, record),
            None => record(&self.unrouted),
        }
    }

    /// Records a retry granted after a failure with this outcome code.
    pub(crate) fn retried(&self, code: &str) {
        self.retries.inc(&[code]);
    }

    /// Records a call given up, by reason code.
    pub(crate) fn gave_up(&self, code: &str) {
        self.give_ups.inc(&[code]);
    }

    /// Records a refusal by `admit`.
    /// Records a call answered from the cache or a shared flight.
    pub(crate) fn cache_answer(&self, source: &str) {
        self.answers.inc(&[source]);
    }

    pub(crate) fn denied(&self, denial: &crate::Denial) {
        let budget = denial.budget.as_deref().unwrap_or("");
        self.denials.inc(&[budget, denial.code()]);
    }

    /// Records a time to first token.
    pub(crate) fn ttft(&self, upstream: &str, model: &str, ttft: Duration) {
        self.ttft.observe_duration(&[upstream, model], ttft);
    }

    /// Renders the engine's state, then the recorded families.
    pub(crate) fn render(&self, s: &EngineSnapshot<'_>) -> String {
        let mut w = TextWriter::new();
        w.header(
            "tollgate_policy_generation",
            "Policies accepted so far (1 for the first); a reload that is refused does not count.",
            MetricType::Gauge,
        );
        w.sample_u64("tollgate_policy_generation", &[], s.generation);
        w.header(
            "tollgate_calls_waiting",
            "Calls waiting for room in the budgets' queues now.",
            MetricType::Gauge,
        );
        w.sample_u64("tollgate_calls_waiting", &[], s.waiting);

        type BudgetField = fn(&BudgetStats) -> f64;
        let budget_families: [(&str, &str, MetricType, BudgetField); 6] = [
            (
                "tollgate_budget_admitted_total",
                "Calls the budget admitted, after waiting or not.",
                MetricType::Counter,
                |b| b.admitted as f64,
            ),
            (
                "tollgate_budget_waited_total",
                "Admitted calls that waited in the budget's queue first.",
                MetricType::Counter,
                |b| b.waited as f64,
            ),
            (
                "tollgate_budget_denied_total",
                "Calls the budget refused, by admit or after waiting.",
                MetricType::Counter,
                |b| b.denied as f64,
            ),
            (
                "tollgate_budget_tokens_total",
                "Tokens settled against the budget (reported usage, else the reservation).",
                MetricType::Counter,
                |b| b.tokens as f64,
            ),
            (
                "tollgate_budget_spend_total",
                "Money settled against the budget, in the currency of the price table.",
                MetricType::Counter,
                |b| b.spend,
            ),
            (
                "tollgate_budget_keys",
                "Scope keys the budget keeps state for.",
                MetricType::Gauge,
                |b| b.keys as f64,
            ),
        ];
        for (name, help, kind, field) in budget_families {
            w.header(name, help, kind);
            for b in s.budgets {
                w.sample(name, &[("budget", &b.name)], field(b));
            }
        }

        w.header(
            "tollgate_breaker_state",
            "Circuit breaker of each routed target: 0 closed, 1 half-open, 2 open.",
            MetricType::Gauge,
        );
        for t in s.targets {
            let state = match t.breaker {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open { .. } => 2,
            };
            let labels = [("upstream", &*t.upstream), ("model", &*t.model)];
            w.sample_u64("tollgate_breaker_state", &labels, state);
        }
        w.header(
            "tollgate_breaker_opens_total",
            "Times the circuit breaker of each routed target opened.",
            MetricType::Counter,
        );
        for t in s.targets {
            let labels = [("upstream", &*t.upstream), ("model", &*t.model)];
            w.sample_u64("tollgate_breaker_opens_total", &labels, t.opens);
        }
        w.header(
            "tollgate_target_latency_ewma_seconds",
            "Moving average of each routed target's latency, in seconds, once it has a sample.",
            MetricType::Gauge,
        );
        for t in s.targets {
            if let Some(l) = t.latency {
                let labels = [("upstream", &*t.upstream), ("model", &*t.model)];
                w.sample(
                    "tollgate_target_latency_ewma_seconds",
                    &labels,
                    l.as_secs_f64(),
                );
            }
        }
        w.header(
            "tollgate_retry_budget_tokens",
            "Retry-budget tokens left per upstream (\"\" for calls naming no upstream).",
            MetricType::Gauge,
        );
        for (upstream, tokens) in s.retry_tokens {
            w.sample(
                "tollgate_retry_budget_tokens",
                &[("upstream", upstream)],
                *tokens,
            );
        }

        if let Some(st) = &s.store {
            render_store(&mut w, st);
        }

        let c = s.cache;
        let cache: [(&str, &str, MetricType, u64); 9] = [
            (
                "tollgate_cache_hits_total",
                "Fresh answers from the response cache.",
                MetricType::Counter,
                c.hits,
            ),
            (
                "tollgate_cache_misses_total",
                "Cache lookups that found nothing fresh.",
                MetricType::Counter,
                c.misses,
            ),
            (
                "tollgate_cache_stale_hits_total",
                "Stale answers given after every target failed (stale-if-error).",
                MetricType::Counter,
                c.stale_hits,
            ),
            (
                "tollgate_cache_inserts_total",
                "Responses stored in the cache (replacing one counts too).",
                MetricType::Counter,
                c.inserts,
            ),
            (
                "tollgate_cache_refused_total",
                "Responses too large to store.",
                MetricType::Counter,
                c.refused,
            ),
            (
                "tollgate_cache_evictions_total",
                "Cache entries evicted to fit the byte budget.",
                MetricType::Counter,
                c.evictions,
            ),
            (
                "tollgate_cache_expired_total",
                "Cache entries removed past their TTL and stale window.",
                MetricType::Counter,
                c.expired,
            ),
            (
                "tollgate_cache_bytes",
                "Bytes the cache holds.",
                MetricType::Gauge,
                c.bytes,
            ),
            (
                "tollgate_cache_entries",
                "Entries the cache holds.",
                MetricType::Gauge,
                c.entries,
            ),
        ];
        unlabelled(&mut w, &cache);
        if let Some(d) = &s.disk {
            render_disk(&mut w, d);
        }

        self.registry.render_into(&mut w);
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels() {
        for (s, want) in [
            (200, "status_200"),
            (0, "status_0"),
            (7, "status_7"),
            (65535, "status_65535"),
        ] {
            assert_eq!(StatusLabel::new(s).as_str(), want);
        }
    }
}
