//! Counters, gauges and histograms with labels, rendered in the Prometheus text exposition format
//! (version 0.0.4).
//!
//! A [`Registry`] holds metric families ([`CounterVec`], [`GaugeVec`], [`HistogramVec`]), each a
//! name, a help text, label names and one series per set of label values. Recording is cheap:
//! resolve a handle ([`Counter`], [`Gauge`], [`Histogram`]) once per label set and keep it, or
//! record through the family (`vec.inc_by(&["openai", "gpt-4o"], 1)`), which hashes the label
//! values on the stack and finds the series in a copy-on-write map read without a lock. A lock
//! is taken only when a label set appears for the first time. Each family keeps at most
//! [`MAX_SERIES`] label sets; further new ones share one series whose label values are all
//! [`OVERFLOW_LABEL`].
//!
//! ```
//! use tollgate::metrics::Registry;
//!
//! let mut registry = Registry::new();
//! let calls = registry.counter("tollgate_demo_calls_total", "Calls made.", &["upstream"]);
//! calls.inc_by(&["openai"], 2);
//! let openai = calls.with_label_values(&["openai"]); // a handle to keep
//! openai.inc();
//! let expected = [
//!     "# HELP tollgate_demo_calls_total Calls made.",
//!     "# TYPE tollgate_demo_calls_total counter",
//!     "tollgate_demo_calls_total{upstream=\"openai\"} 3",
//! ];
//! assert_eq!(registry.render(), expected.join("\n") + "\n");
//! ```
//!
//! # The engine's metrics
//!
//! [`crate::Engine::metrics_text`] renders these. Read at scrape time from the engine's state:
//!
//! | name | type | labels | what |
//! |------|------|--------|------|
//! | `tollgate_policy_generation` | gauge | | policies accepted so far (1 for the first) |
//! | `tollgate_budget_admitted_total` | counter | `budget` | calls admitted |
//! | `tollgate_budget_waited_total` | counter | `budget` | admitted calls that waited first |
//! | `tollgate_budget_denied_total` | counter | `budget` | calls the budget refused (every path) |
//! | `tollgate_budget_tokens_total` | counter | `budget` | tokens settled |
//! | `tollgate_budget_spend_total` | counter | `budget` | money settled |
//! | `tollgate_budget_keys` | gauge | `budget` | scope keys with state |
//! | `tollgate_breaker_state` | gauge | `upstream`, `model` | 0 closed, 1 half-open, 2 open |
//! | `tollgate_breaker_opens_total` | counter | `upstream`, `model` | times the breaker opened |
//! | `tollgate_target_latency_ewma_seconds` | gauge | `upstream`, `model` | latency moving average |
//! | `tollgate_retry_budget_tokens` | gauge | `upstream` | retry-budget tokens left |
//! | `tollgate_budget_store_up` | gauge | `store` | 1 while the shared store (Redis) answers |
//! | `tollgate_budget_store_round_trips_total` | counter | `store` | round trips to the store |
//! | `tollgate_budget_store_errors_total` | counter | `store` | store operations failed or late |
//! | `tollgate_budget_store_outages_total` | counter | `store` | times the store went down |
//! | `tollgate_budget_store_dropped_total` | counter | `store` | reconciliations dropped while down |
//! | `tollgate_budget_store_leases` | gauge | `store` | concurrency slots held in the store |
//! | `tollgate_budget_store_fallback` | gauge | `budget` | 1 while deciding locally (fail-open) |
//! | `tollgate_cache_hits_total` | counter | | fresh cache hits |
//! | `tollgate_cache_misses_total` | counter | | lookups that found nothing fresh |
//! | `tollgate_cache_stale_hits_total` | counter | | stale answers (stale-if-error) |
//! | `tollgate_cache_inserts_total` | counter | | responses stored |
//! | `tollgate_cache_refused_total` | counter | | responses too large to store |
//! | `tollgate_cache_evictions_total` | counter | | entries evicted to fit the byte budget |
//! | `tollgate_cache_expired_total` | counter | | entries removed past TTL + stale window |
//! | `tollgate_cache_bytes` | gauge | | bytes stored |
//! | `tollgate_cache_entries` | gauge | | entries stored |
//!
//! Recorded as calls are admitted and settled:
//!
//! | name | type | labels | what |
//! |------|------|--------|------|
//! | `tollgate_attempts_total` | counter | `upstream`, `model`, `outcome` | sent attempts by outcome |
//! | `tollgate_attempt_latency_seconds` | histogram | `upstream`, `model` | attempt latency |
//! | `tollgate_time_to_first_token_seconds` | histogram | `upstream`, `model` | time to first token |
//! | `tollgate_tokens_total` | counter | `upstream`, `model`, `kind` | reported tokens |
//! | `tollgate_spend_total` | counter | `upstream`, `model` | money charged |
//! | `tollgate_retries_total` | counter | `code` | retries granted, by outcome code |
//! | `tollgate_give_ups_total` | counter | `code` | calls given up, by reason code |
//! | `tollgate_denials_total` | counter | `budget`, `code` | `admit` refusals |
//!
//! `upstream` and `model` name the routed target; a call without a route has upstream `""` and
//! model `""`. `outcome` is `status_200`, `status_503`, `timeout_first_byte`, `connect_refused`,
//! `malformed`, `cut_stream`… (the codes of [`crate::AttemptRecord::outcome`]), or `unknown` when
//! the attempt was sent but its end is unknown. `kind` is `input` (prompt tokens not served from
//! the provider's prompt cache), `cached` or `output`. No label ever holds a credential: pool keys
//! appear nowhere, and only by their id elsewhere.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use smallvec::SmallVec;

use crate::budget::BudgetStats;
use crate::cache::CacheStats;
use crate::engine::TargetRef;
use crate::money::Money;
use crate::retry::BreakerState;
use crate::tokens::Usage;

/// Latency bucket bounds in seconds, from 1 ms to 120 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Time-to-first-token bucket bounds in seconds, from 1 ms to 120 s.
pub const TTFT_BUCKETS: [f64; 16] = LATENCY_BUCKETS;

/// Most label sets one family keeps; new label sets beyond it share the overflow series.
pub const MAX_SERIES: usize = 4096;

/// The value of every label of the series that collects label sets beyond [`MAX_SERIES`] (and
/// recordings with the wrong number of label values).
pub const OVERFLOW_LABEL: &str = "__overflow__";

/// The type of a metric family, as written on its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// A value that only goes up.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Observations counted in fixed buckets, with their sum and count.
    Histogram,
}

impl MetricType {
    /// `counter`, `gauge` or `histogram`.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handles

/// A monotonically increasing integer count. Cloning shares the count.
///
/// ```
/// use tollgate::metrics::Counter;
///
/// let c = Counter::default();
/// c.inc();
/// c.inc_by(2);
/// assert_eq!(c.get(), 3);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    #[inline]
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that can go up and down. Cloning shares the value.
///
/// ```
/// use tollgate::metrics::Gauge;
///
/// let g = Gauge::default();
/// g.set(2.5);
/// g.add(-1.0);
/// assert_eq!(g.get(), 1.5);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    /// Sets the value.
    #[inline]
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    /// Adds `d` (negative to subtract).
    #[inline]
    pub fn add(&self, d: f64) {
        add_f64(&self.0, d);
    }

    /// The value now.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

fn add_f64(cell: &AtomicU64, d: f64) {
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        Some((f64::from_bits(old) + d).to_bits())
    });
}

#[derive(Debug)]
struct HistogramCore {
    bounds: Arc<[f64]>,
    /// One count per bound plus one for `+Inf`; not cumulative.
    counts: Box<[AtomicU64]>,
    /// Sum of observations, f64 bits.
    sum: AtomicU64,
}

/// Observations counted in buckets fixed at construction. Cloning shares the buckets.
///
/// ```
/// use std::time::Duration;
/// use tollgate::metrics::Histogram;
///
/// let h = Histogram::new(&[0.1, 1.0]);
/// h.observe(0.05);
/// h.observe_duration(Duration::from_millis(500));
/// h.observe(7.0);
/// let s = h.snapshot();
/// assert_eq!(s.buckets, vec![(0.1, 1), (1.0, 2), (f64::INFINITY, 3)]);
/// assert_eq!(s.count, 3);
/// assert_eq!(s.sum, 7.55);
/// ```
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramCore>);

/// What a [`Histogram`] holds at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound, observations at or below it), cumulative, ending with `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations (equal to the `+Inf` bucket).
    pub count: u64,
}

impl Histogram {
    /// A histogram with the given upper bounds. Bounds that are not finite are dropped (`+Inf`
    /// is always there), the rest sorted and deduplicated.
    pub fn new(bounds: &[f64]) -> Histogram {
        Histogram::with_bounds(clean_bounds(bounds))
    }

    fn with_bounds(bounds: Arc<[f64]>) -> Histogram {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram(Arc::new(HistogramCore {
            bounds,
            counts,
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    /// Records one observation. NaN is ignored.
    #[inline]
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        let core = &*self.0;
        let i = core.bounds.partition_point(|b| *b < v);
        core.counts[i].fetch_add(1, Ordering::Relaxed);
        add_f64(&core.sum, v);
    }

    /// Records a duration, in seconds.
    #[inline]
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// The cumulative buckets, sum and count now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let core = &*self.0;
        let mut total = 0u64;
        let mut buckets = Vec::with_capacity(core.counts.len());
        for (i, c) in core.counts.iter().enumerate() {
            total = total.saturating_add(c.load(Ordering::Relaxed));
            let bound = core.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, total));
        }
        HistogramSnapshot {
            buckets,
            sum: f64::from_bits(core.sum.load(Ordering::Relaxed)),
            count: total,
        }
    }
}

fn clean_bounds(bounds: &[f64]) -> Arc<[f64]> {
    let mut b: Vec<f64> = bounds.iter().copied().filter(|v| v.is_finite()).collect();
    b.sort_by(f64::total_cmp);
    b.dedup();
    b.into()
}

// ---------------------------------------------------------------------------------------------
// Label sets

/// The map key is already a hash: pass it through.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Series<T> {
    labels: Box<[Box<str>]>,
    value: T,
}

type Table<T> = HashMap<u64, SmallVec<[Arc<Series<T>>; 1]>, BuildHasherDefault<IdHasher>>;

/// Series by label values: read through an `ArcSwap` without a lock, copied on write under a
/// lock taken only when a label set is new.
struct LabelMap<T> {
    arity: usize,
    table: ArcSwap<Table<T>>,
    write: Mutex<()>,
}

/// A fast hash of label values, eight bytes at a time (FxHash-style, with a final mix so the low
/// bits spread too). Equal hashes are checked by comparing the values.
#[inline]
fn label_hash(values: &[&str]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    #[inline(always)]
    fn add(h: u64, w: u64) -> u64 {
        (h.rotate_left(5) ^ w).wrapping_mul(K)
    }
    let mut h: u64 = 0;
    for v in values {
        let mut bytes = v.as_bytes();
        h = add(h, bytes.len() as u64);
        while let Some((chunk, rest)) = bytes.split_first_chunk::<8>() {
            h = add(h, u64::from_le_bytes(*chunk));
            bytes = rest;
        }
        let mut w = 0u64;
        for (i, b) in bytes.iter().enumerate() {
            w |= u64::from(*b) << (8 * i);
        }
        h = add(h, w);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

fn find<'t, T>(table: &'t Table<T>, hash: u64, values: &[&str]) -> Option<&'t Arc<Series<T>>> {
    table.get(&hash)?.iter().find(|s| {
        s.labels.len() == values.len() && s.labels.iter().zip(values).all(|(a, b)| &**a == *b)
    })
}

impl<T> LabelMap<T> {
    fn new(arity: usize) -> LabelMap<T> {
        LabelMap {
            arity,
            table: ArcSwap::from_pointee(Table::default()),
            write: Mutex::new(()),
        }
    }

    /// Runs `f` on the series of `values`, made by `make` if it is new.
    #[inline]
    fn with<R>(&self, values: &[&str], make: impl FnOnce() -> T, f: impl FnOnce(&T) -> R) -> R {
        if values.len() == self.arity {
            let hash = label_hash(values);
            let table = self.table.load();
            if let Some(s) = find(&table, hash, values) {
                return f(&s.value);
            }
        }
        let series = self.insert(values, make);
        f(&series.value)
    }

    /// The series of `values`, made by `make` if it is new.
    fn series(&self, values: &[&str], make: impl FnOnce() -> T) -> Arc<Series<T>> {
        if values.len() == self.arity {
            let table = self.table.load();
            if let Some(s) = find(&table, label_hash(values), values) {
                return Arc::clone(s);
            }
        }
        self.insert(values, make)
    }

    #[cold]
    fn insert(&self, values: &[&str], make: impl FnOnce() -> T) -> Arc<Series<T>> {
        let overflow: SmallVec<[&str; 4]> = SmallVec::from_elem(OVERFLOW_LABEL, self.arity);
        let _w = self.write.lock();
        let table = self.table.load_full();
        let mut values = values;
        if values.len() != self.arity {
            values = &overflow[..];
        }
        let mut hash = label_hash(values);
        if let Some(s) = find(&table, hash, values) {
            return Arc::clone(s);
        }
        if table.values().map(SmallVec::len).sum::<usize>() >= MAX_SERIES {
            values = &overflow[..];
            hash = label_hash(values);
            if let Some(s) = find(&table, hash, values) {
                return Arc::clone(s);
            }
        }
        let series = Arc::new(Series {
            labels: values.iter().map(|v| Box::from(*v)).collect(),
            value: make(),
        });
        let mut next: Table<T> = (*table).clone();
        next.entry(hash).or_default().push(Arc::clone(&series));
        self.table.store(Arc::new(next));
        series
    }

    /// Every series, sorted by label values.
    fn sorted(&self) -> Vec<Arc<Series<T>>> {
        let table = self.table.load_full();
        let mut all: Vec<Arc<Series<T>>> = table.values().flatten().cloned().collect();
        all.sort_by(|a, b| a.labels.cmp(&b.labels));
        all
    }
}

// ---------------------------------------------------------------------------------------------
// Families

struct Desc {
    name: Box<str>,
    help: Box<str>,
    labels: Box<[Box<str>]>,
}

struct CounterFamily {
    desc: Desc,
    divisor: u64,
    series: LabelMap<Counter>,
}

struct GaugeFamily {
    desc: Desc,
    series: LabelMap<Gauge>,
}

struct HistogramFamily {
    desc: Desc,
    bounds: Arc<[f64]>,
    series: LabelMap<Histogram>,
}

/// A family of counters, one per set of label values. Cloning shares the family.
#[derive(Clone)]
pub struct CounterVec(Arc<CounterFamily>);

/// A family of gauges, one per set of label values. Cloning shares the family.
#[derive(Clone)]
pub struct GaugeVec(Arc<GaugeFamily>);

/// A family of histograms with the same buckets, one per set of label values. Cloning shares
/// the family.
#[derive(Clone)]
pub struct HistogramVec(Arc<HistogramFamily>);

impl std::fmt::Debug for CounterVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CounterVec")
            .field(&self.0.desc.name)
            .finish()
    }
}

impl std::fmt::Debug for GaugeVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("GaugeVec").field(&self.0.desc.name).finish()
    }
}

impl std::fmt::Debug for HistogramVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("HistogramVec")
            .field(&self.0.desc.name)
            .finish()
    }
}

impl CounterVec {
    /// The counter of these label values (in the order the labels were declared), made if new.
    /// Keep it: recording through it touches only its atomic.
    pub fn with_label_values(&self, values: &[&str]) -> Counter {
        self.0.series.with(values, Counter::default, Counter::clone)
    }

    /// Adds `n` to the counter of these label values.
    #[inline]
    pub fn inc_by(&self, values: &[&str], n: u64) {
        self.0
            .series
            .with(values, Counter::default, |c| c.inc_by(n));
    }

    /// Adds one to the counter of these label values.
    #[inline]
    pub fn inc(&self, values: &[&str]) {
        self.inc_by(values, 1);
    }
}

impl GaugeVec {
    /// The gauge of these label values, made if new.
    pub fn with_label_values(&self, values: &[&str]) -> Gauge {
        self.0.series.with(values, Gauge::default, Gauge::clone)
    }

    /// Sets the gauge of these label values.
    #[inline]
    pub fn set(&self, values: &[&str], v: f64) {
        self.0.series.with(values, Gauge::default, |g| g.set(v));
    }
}

impl HistogramVec {
    /// The histogram of these label values, made if new.
    pub fn with_label_values(&self, values: &[&str]) -> Histogram {
        let bounds = &self.0.bounds;
        self.0.series.with(
            values,
            || Histogram::with_bounds(Arc::clone(bounds)),
            Histogram::clone,
        )
    }

    /// Records one observation in the histogram of these label values.
    #[inline]
    pub fn observe(&self, values: &[&str], v: f64) {
        let bounds = &self.0.bounds;
        self.0.series.with(
            values,
            || Histogram::with_bounds(Arc::clone(bounds)),
            |h| h.observe(v),
        );
    }

    /// Records a duration, in seconds, in the histogram of these label values.
    #[inline]
    pub fn observe_duration(&self, values: &[&str], d: Duration) {
        self.observe(values, d.as_secs_f64());
    }
}

enum Family {
    Counter(CounterVec),
    Gauge(GaugeVec),
    Histogram(HistogramVec),
}

impl Family {
    fn name(&self) -> &str {
        match self {
            Family::Counter(v) => &v.0.desc.name,
            Family::Gauge(v) => &v.0.desc.name,
            Family::Histogram(v) => &v.0.desc.name,
        }
    }
}

/// Metric families, rendered together in registration order.
///
/// Families are registered with `&mut self` when the owner is built; recording needs only the
/// returned families (shared, `Send + Sync`), and rendering `&self`.
///
/// ```
/// use tollgate::metrics::{Registry, LATENCY_BUCKETS};
///
/// let mut registry = Registry::new();
/// let latency = registry.histogram(
///     "tollgate_demo_latency_seconds",
///     "Latency of demo calls.",
///     &["upstream"],
///     &LATENCY_BUCKETS,
/// );
/// latency.observe(&["openai"], 0.2);
/// let text = registry.render();
/// assert!(text.contains("tollgate_demo_latency_seconds_bucket{upstream=\"openai\",le=\"0.25\"} 1\n"));
/// assert!(text.contains("tollgate_demo_latency_seconds_count{upstream=\"openai\"} 1\n"));
/// ```
#[derive(Default)]
pub struct Registry {
    families: Vec<Family>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.families.iter().map(Family::name))
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    fn desc(&self, name: &str, help: &str, labels: &[&str], kind: MetricType) -> Desc {
        assert!(valid_name(name), "invalid metric name '{name}'");
        assert!(
            self.families.iter().all(|f| f.name() != name),
            "metric '{name}' is registered twice"
        );
        for l in labels {
            assert!(
                valid_label(l) && !(kind == MetricType::Histogram && *l == "le"),
                "invalid label name '{l}' in metric '{name}'"
            );
        }
        Desc {
            name: name.into(),
            help: help.into(),
            labels: labels.iter().map(|l| Box::from(*l)).collect(),
        }
    }

    /// Registers a family of counters. A family without labels starts with its one series at 0.
    ///
    /// # Panics
    /// When the name or a label name is not a valid Prometheus name, or the name is taken.
    pub fn counter(&mut self, name: &str, help: &str, labels: &[&str]) -> CounterVec {
        self.counter_with_divisor(name, help, labels, 1)
    }

    /// Registers a family of counters that count in `1/divisor` units and are rendered divided
    /// by `divisor` (money counted in nano-units: `divisor = 1_000_000_000`), so that adding stays
    /// an integer add.
    ///
    /// # Panics
    /// As [`Registry::counter`]; also when `divisor` is 0.
    pub fn counter_with_divisor(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        divisor: u64,
    ) -> CounterVec {
        assert!(divisor > 0, "metric '{name}' needs a positive divisor");
        let desc = self.desc(name, help, labels, MetricType::Counter);
        let vec = CounterVec(Arc::new(CounterFamily {
            desc,
            divisor,
            series: LabelMap::new(labels.len()),
        }));
        if labels.is_empty() {
            vec.with_label_values(&[]);
        }
        self.families.push(Family::Counter(vec.clone()));
        vec
    }

    /// Registers a family of gauges. A family without labels starts with its one series at 0.
    ///
    /// # Panics
    /// As [`Registry::counter`].
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        let desc = self.desc(name, help, labels, MetricType::Gauge);
        let vec = GaugeVec(Arc::new(GaugeFamily {
            desc,
            series: LabelMap::new(labels.len()),
        }));
        if labels.is_empty() {
            vec.with_label_values(&[]);
        }
        self.families.push(Family::Gauge(vec.clone()));
        vec
    }

    /// Registers a family of histograms with the given bucket upper bounds (`+Inf` is added).
    ///
    /// # Panics
    /// As [`Registry::counter`]; also when a label is named `le`.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> HistogramVec {
        let desc = self.desc(name, help, labels, MetricType::Histogram);
        let vec = HistogramVec(Arc::new(HistogramFamily {
            desc,
            bounds: clean_bounds(buckets),
            series: LabelMap::new(labels.len()),
        }));
        if labels.is_empty() {
            vec.with_label_values(&[]);
        }
        self.families.push(Family::Histogram(vec.clone()));
        vec
    }

    /// Every family in the text exposition format.
    pub fn render(&self) -> String {
        let mut w = TextWriter::new();
        self.render_into(&mut w);
        w.finish()
    }

    /// Writes every family to `w`, in registration order, series sorted by label values.
    pub fn render_into(&self, w: &mut TextWriter) {
        for family in &self.families {
            match family {
                Family::Counter(v) => {
                    let f = &*v.0;
                    w.header(&f.desc.name, &f.desc.help, MetricType::Counter);
                    for s in f.series.sorted() {
                        let labels = pairs(&f.desc.labels, &s.labels);
                        let n = s.value.get();
                        if f.divisor == 1 {
                            w.sample_u64(&f.desc.name, &labels, n);
                        } else {
                            w.sample(&f.desc.name, &labels, n as f64 / f.divisor as f64);
                        }
                    }
                }
                Family::Gauge(v) => {
                    let f = &*v.0;
                    w.header(&f.desc.name, &f.desc.help, MetricType::Gauge);
                    for s in f.series.sorted() {
                        w.sample(
                            &f.desc.name,
                            &pairs(&f.desc.labels, &s.labels),
                            s.value.get(),
                        );
                    }
                }
                Family::Histogram(v) => {
                    let f = &*v.0;
                    w.header(&f.desc.name, &f.desc.help, MetricType::Histogram);
                    for s in f.series.sorted() {
                        w.histogram(
                            &f.desc.name,
                            &pairs(&f.desc.labels, &s.labels),
                            &s.value.snapshot(),
                        );
                    }
                }
            }
        }
    }
}

fn pairs<'a>(names: &'a [Box<str>], values: &'a [Box<str>]) -> Vec<(&'a str, &'a str)> {
    names
        .iter()
        .map(|n| &**n)
        .zip(values.iter().map(|v| &**v))
        .collect()
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

// ---------------------------------------------------------------------------------------------
// Text format

/// Writes the text exposition format 0.0.4: `# HELP` and `# TYPE` lines, then samples, with
/// label values and help text escaped.
///
/// ```
/// use tollgate::metrics::{MetricType, TextWriter};
///
/// let mut w = TextWriter::new();
/// w.header("tollgate_demo", "A \\ demo.\nSecond line.", MetricType::Gauge);
/// w.sample("tollgate_demo", &[("name", "say \"hi\"\n")], 1.5);
/// let expected = [
///     r#"# HELP tollgate_demo A \\ demo.\nSecond line."#,
///     r#"# TYPE tollgate_demo gauge"#,
///     r#"tollgate_demo{name="say \"hi\"\n"} 1.5"#,
/// ];
/// assert_eq!(w.finish(), expected.join("\n") + "\n");
/// ```
#[derive(Debug, Default)]
pub struct TextWriter {
    out: String,
}

impl TextWriter {
    /// An empty text.
    pub fn new() -> TextWriter {
        TextWriter::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn header(&mut self, name: &str, help: &str, kind: MetricType) {
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c => self.out.push(c),
            }
        }
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind.as_str());
        self.out.push('\n');
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<f64>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        for (i, (name, value)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(name);
            self.out.push_str("=\"");
            push_escaped(&mut self.out, value);
            self.out.push('"');
        }
        if let Some(le) = le {
            if !labels.is_empty() {
                self.out.push(',');
            }
            self.out.push_str("le=\"");
            push_f64(&mut self.out, le);
            self.out.push('"');
        }
        self.out.push('}');
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        self.labels(labels, None);
        self.out.push(' ');
        push_f64(&mut self.out, value);
        self.out.push('\n');
    }

    /// One sample line with an integer value (exact beyond 2^53).
    pub fn sample_u64(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// The lines of one histogram series: `_bucket` per bound (cumulative, `+Inf` last), `_sum`
    /// and `_count`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        for (bound, count) in &h.buckets {
            self.out.push_str(name);
            self.out.push_str("_bucket");
            self.labels(labels, Some(*bound));
            let _ = writeln!(self.out, " {count}");
        }
        if h.buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
            self.out.push_str(name);
            self.out.push_str("_bucket");
            self.labels(labels, Some(f64::INFINITY));
            let _ = writeln!(self.out, " {}", h.count);
        }
        self.out.push_str(name);
        self.out.push_str("_sum");
        self.labels(labels, None);
        self.out.push(' ');
        push_f64(&mut self.out, h.sum);
        self.out.push('\n');
        self.out.push_str(name);
        self.out.push_str("_count");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", h.count);
    }

    /// The text so far.
    pub fn as_str(&self) -> &str {
        &self.out
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

fn push_escaped(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn push_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

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
    pub budgets: &'a [BudgetStats],
    pub targets: &'a [crate::TargetHealthInfo],
    pub cache: &'a CacheStats,
    /// (upstream, retry-budget tokens); `""` for calls that name no upstream of the policy.
    pub retry_tokens: &'a [(Arc<str>, f64)],
    /// The `[redis]` store, when the policy has one.
    pub store: Option<StoreSnapshot<'a>>,
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
        for (name, help, kind, value) in cache {
            w.header(name, help, kind);
            w.sample_u64(name, &[], value);
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

    #[test]
    fn too_many_label_sets_share_the_overflow_series() {
        let mut r = Registry::new();
        let c = r.counter("tollgate_test_total", "Test.", &["k"]);
        for i in 0..MAX_SERIES + 10 {
            c.inc(&[&i.to_string()]);
        }
        assert_eq!(c.with_label_values(&[OVERFLOW_LABEL]).get(), 10);
        // The wrong number of label values lands there too.
        c.inc(&["a", "b"]);
        assert_eq!(c.with_label_values(&[OVERFLOW_LABEL]).get(), 11);
        assert_eq!(c.with_label_values(&["0"]).get(), 1);
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn a_name_is_registered_once() {
        let mut r = Registry::new();
        r.counter("tollgate_x_total", "X.", &[]);
        r.gauge("tollgate_x_total", "X.", &[]);
    }

    #[test]
    #[should_panic(expected = "invalid label name 'le'")]
    fn histograms_reserve_le() {
        Registry::new().histogram("tollgate_h", "H.", &["le"], &[1.0]);
    }
}
