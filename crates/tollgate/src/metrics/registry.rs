//! A Prometheus registry: counters, gauges and histograms, alone or in families by label values
//! (bounded by [`MAX_SERIES`]), lock-free to update.

use crate::bytes_eq::bytes_eq;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use smallvec::SmallVec;

use super::TextWriter;

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

pub(crate) struct Series<T> {
    labels: Box<[Box<str>]>,
    pub(crate) value: T,
}

type Table<T> = HashMap<u64, SmallVec<[Arc<Series<T>>; 1]>, BuildHasherDefault<IdHasher>>;

/// Series by label values: read through an `ArcSwap` without a lock, copied on write under a
/// lock taken only when a label set is new.
pub(crate) struct LabelMap<T> {
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
        s.labels.len() == values.len()
            && s.labels
                .iter()
                .zip(values)
                .all(|(a, b)| bytes_eq(a.as_bytes(), b.as_bytes()))
    })
}

impl<T> LabelMap<T> {
    pub(crate) fn new(arity: usize) -> LabelMap<T> {
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
    pub(crate) fn series(&self, values: &[&str], make: impl FnOnce() -> T) -> Arc<Series<T>> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
