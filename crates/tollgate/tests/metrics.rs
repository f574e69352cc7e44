//! Metrics: the text exposition of a registry, exact counting under threads, and what the
//! engine exposes after admissions and settlements in virtual time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tollgate::clock::ManualClock;
use tollgate::metrics::{Histogram, LATENCY_BUCKETS, MetricType, Registry, TextWriter};
use tollgate::retry::{Failure, TimeoutKind};
use tollgate::tokens::Usage;
use tollgate::{Call, Decision, Engine, Outcome, Permit, Policy, Prompt, Verdict};

// --- the registry ----------------------------------------------------------------------------

#[test]
fn golden_exposition_of_a_tiny_registry() {
    let mut r = Registry::new();
    let calls = r.counter(
        "tollgate_test_calls_total",
        "Calls made.",
        &["upstream", "code"],
    );
    let level = r.gauge("tollgate_test_level", "A level.", &[]);
    let spend = r.counter_with_divisor("tollgate_test_spend_total", "Money.", &[], 1_000_000_000);
    let seconds = r.histogram(
        "tollgate_test_seconds",
        "Durations.",
        &["upstream"],
        &[0.1, 1.0],
    );
    r.histogram(
        "tollgate_test_unused_seconds",
        "Never observed.",
        &["upstream"],
        &[1.0],
    );
    calls.inc_by(&["b", "200"], 2);
    calls.inc(&["a", "503"]);
    level.set(&[], -1.5);
    spend.inc_by(&[], 1_500_000);
    seconds.observe(&["a"], 0.0625);
    seconds.observe(&["a"], 0.5);
    seconds.observe_duration(&["a"], Duration::from_secs(3));
    let expected = "\
# HELP tollgate_test_calls_total Calls made.
# TYPE tollgate_test_calls_total counter
tollgate_test_calls_total{upstream=\"a\",code=\"503\"} 1
tollgate_test_calls_total{upstream=\"b\",code=\"200\"} 2
# HELP tollgate_test_level A level.
# TYPE tollgate_test_level gauge
tollgate_test_level -1.5
# HELP tollgate_test_spend_total Money.
# TYPE tollgate_test_spend_total counter
tollgate_test_spend_total 0.0015
# HELP tollgate_test_seconds Durations.
# TYPE tollgate_test_seconds histogram
tollgate_test_seconds_bucket{upstream=\"a\",le=\"0.1\"} 1
tollgate_test_seconds_bucket{upstream=\"a\",le=\"1\"} 2
tollgate_test_seconds_bucket{upstream=\"a\",le=\"+Inf\"} 3
tollgate_test_seconds_sum{upstream=\"a\"} 3.5625
tollgate_test_seconds_count{upstream=\"a\"} 3
# HELP tollgate_test_unused_seconds Never observed.
# TYPE tollgate_test_unused_seconds histogram
";
    assert_eq!(r.render(), expected);
}

#[test]
fn label_values_and_help_are_escaped() {
    let mut r = Registry::new();
    let c = r.counter(
        "tollgate_test_escape_total",
        "Back\\slash and\nnewline; \"quotes\" stay.",
        &["v"],
    );
    c.inc(&["a\\b\"c\nd"]);
    assert_eq!(
        r.render(),
        "# HELP tollgate_test_escape_total Back\\\\slash and\\nnewline; \"quotes\" stay.\n\
         # TYPE tollgate_test_escape_total counter\n\
         tollgate_test_escape_total{v=\"a\\\\b\\\"c\\nd\"} 1\n"
    );
}

#[test]
fn special_values_are_spelled_as_prometheus_expects() {
    let mut w = TextWriter::new();
    w.header("tollgate_test_g", "G.", MetricType::Gauge);
    w.sample("tollgate_test_g", &[("k", "inf")], f64::INFINITY);
    w.sample("tollgate_test_g", &[("k", "-inf")], f64::NEG_INFINITY);
    w.sample("tollgate_test_g", &[("k", "nan")], f64::NAN);
    w.sample_u64("tollgate_test_g", &[("k", "big")], u64::MAX);
    assert_eq!(
        w.finish(),
        "# HELP tollgate_test_g G.\n# TYPE tollgate_test_g gauge\n\
         tollgate_test_g{k=\"inf\"} +Inf\n\
         tollgate_test_g{k=\"-inf\"} -Inf\n\
         tollgate_test_g{k=\"nan\"} NaN\n\
         tollgate_test_g{k=\"big\"} 18446744073709551615\n"
    );
}

#[test]
fn histogram_buckets_are_cumulative_and_inclusive() {
    let h = Histogram::new(&LATENCY_BUCKETS);
    // Deterministic spread over 0.1 ms .. 300 s, plus every bound exactly (le is inclusive).
    let mut values: Vec<f64> = (0..2000)
        .map(|i| 0.0001 * 1.007f64.powi(i) % 300.0)
        .collect();
    values.extend(LATENCY_BUCKETS);
    for v in &values {
        h.observe(*v);
    }
    h.observe(f64::NAN); // ignored
    let s = h.snapshot();
    assert_eq!(s.buckets.len(), LATENCY_BUCKETS.len() + 1);
    assert_eq!(s.count, values.len() as u64);
    assert_eq!(
        s.buckets.last().copied(),
        Some((f64::INFINITY, values.len() as u64))
    );
    for w in s.buckets.windows(2) {
        assert!(w[0].0 < w[1].0 && w[0].1 <= w[1].1, "{w:?}");
    }
    for (bound, count) in &s.buckets {
        let want = values.iter().filter(|v| **v <= *bound).count() as u64;
        assert_eq!(*count, want, "bucket le={bound}");
    }
    let sum: f64 = values.iter().sum();
    assert!((s.sum - sum).abs() < 1e-6 * sum, "{} vs {sum}", s.sum);

    // And in the text: every bucket line at least the one before, +Inf equal to _count.
    let mut r = Registry::new();
    let vec = r.histogram("tollgate_test_h_seconds", "H.", &["k"], &LATENCY_BUCKETS);
    for v in &values {
        vec.observe(&["x"], *v);
    }
    let text = r.render();
    let buckets: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("tollgate_test_h_seconds_bucket"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert_eq!(buckets.len(), LATENCY_BUCKETS.len() + 1);
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]));
    let samples = parse(&text);
    assert_eq!(
        samples["tollgate_test_h_seconds_count{k=\"x\"}"],
        *buckets.last().unwrap() as f64
    );
    assert_eq!(
        samples["tollgate_test_h_seconds_bucket{k=\"x\",le=\"120\"}"],
        values.iter().filter(|v| **v <= 120.0).count() as f64
    );
}

#[test]
fn concurrent_increments_from_8_threads_sum_exactly() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 50_000;
    let mut r = Registry::new();
    let c = r.counter("tollgate_test_concurrent_total", "C.", &["k"]);
    let h = r.histogram("tollgate_test_concurrent_seconds", "H.", &[], &[0.5, 2.0]);
    let handle = c.with_label_values(&["handle"]);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (c, h, handle) = (c.clone(), h.clone(), handle.clone());
            s.spawn(move || {
                // Series appear while other threads record: the first of each is created
                // concurrently.
                let own = format!("t{}", t % 4);
                for _ in 0..PER_THREAD {
                    handle.inc();
                    c.inc(&["shared"]);
                    c.inc_by(&[&own], 2);
                    h.observe(&[], 1.0);
                }
            });
        }
    });
    let total = THREADS * PER_THREAD;
    assert_eq!(handle.get(), total);
    assert_eq!(c.with_label_values(&["shared"]).get(), total);
    for i in 0..4 {
        assert_eq!(
            c.with_label_values(&[&format!("t{i}")]).get(),
            2 * 2 * PER_THREAD
        );
    }
    let snap = h.with_label_values(&[]).snapshot();
    assert_eq!(snap.count, total);
    assert_eq!(snap.sum, total as f64);
    assert_eq!(
        snap.buckets,
        vec![(0.5, 0), (2.0, total), (f64::INFINITY, total)]
    );
    let samples = parse(&r.render());
    assert_eq!(
        samples["tollgate_test_concurrent_total{k=\"shared\"}"],
        total as f64
    );
}

// --- through the engine ----------------------------------------------------------------------

const SECRET_VAR: &str = "TOLLGATE_METRICS_TEST_KEY";
const SECRET: &str = "sk-metrics-test-3f9a1c7e5b2d4068";

const POLICY: &str = r#"
version = 1
[[upstream]]
name = "primary"
base_url = "http://127.0.0.1:9/v1"
auth = { kind = "bearer", keys = ["env:TOLLGATE_METRICS_TEST_KEY"] }
[[upstream]]
name = "secondary"
base_url = "http://127.0.0.1:9/v1"
[[route]]
model = "gpt-4o"
targets = [{ upstream = "primary", model = "gpt-4o" }, { upstream = "secondary", model = "gpt-4o-mini" }]
[[budget]]
name = "tiny"
scope = ["tenant"]
match = { tenant = "small" }
requests_per_minute = 1
[retry]
max_attempts = 3
backoff = { base = "100ms", max = "1s", jitter = "none" }
budget = { ratio = 0.1, max_tokens = 100 }
[breaker]
window = 4
min_calls = 4
failure_rate = 0.5
open_for = "30s"
half_open_calls = 1
[prices]
"gpt-4o" = { input = 2.5, cached_input = 1.25, output = 10.0 }
"gpt-4o-mini" = { input = 0.15, cached_input = 0.075, output = 0.6 }
"#;

fn engine(toml: &str) -> (Engine, Arc<ManualClock>) {
    let policy = Policy::from_toml(toml).unwrap_or_else(|e| panic!("invalid test policy:\n{e}"));
    let clock = Arc::new(ManualClock::new());
    (Engine::with_clock(policy, clock.clone()), clock)
}

fn call(tenant: &str) -> Call<'_> {
    Call::new("gpt-4o")
        .tenant(tenant)
        .prompt(Prompt::Tokens(1000))
        .max_tokens(500)
}

fn go(e: &Engine, call: &Call<'_>) -> Permit {
    match e.admit(call) {
        Decision::Go(p) => p,
        other => panic!("expected go, got {other:?}"),
    }
}

fn usage() -> Usage {
    Usage {
        prompt_tokens: 1000,
        completion_tokens: 500,
        total_tokens: 1500,
        cached_prompt_tokens: 200,
        ..Usage::default()
    }
}

/// Every sample line as `series -> value` (the series as printed, labels included).
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        assert!(
            out.insert(series.to_owned(), value).is_none(),
            "{series} twice"
        );
    }
    out
}

fn get(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no series {series}; have {:#?}", samples.keys()))
}

/// The outcome code the engine put in the attempt history for this verdict.
fn history_code(v: &Verdict) -> Option<String> {
    match v {
        Verdict::Done(_) => None,
        Verdict::Retry { attempt, .. } => attempt.history().last().map(|a| a.outcome.clone()),
        Verdict::GiveUp { reason, .. } => reason.history.last().map(|a| a.outcome.clone()),
        _ => None,
    }
}

#[derive(Default)]
struct Tally {
    attempts: HashMap<(String, String, String), u64>,
    retries: HashMap<String, u64>,
    give_ups: HashMap<String, u64>,
    spend: HashMap<(String, String), f64>,
}

impl Tally {
    fn settle(&mut self, e: &Engine, p: Permit, outcome: &Outcome<'_>) -> Verdict {
        let (up, model) = p
            .target()
            .map(|t| (t.upstream.to_string(), t.model.to_string()))
            .unwrap_or_default();
        let v = e.settle(p, outcome);
        let code = history_code(&v)
            .unwrap_or_else(|| format!("status_{}", outcome.status.expect("a status")));
        *self
            .attempts
            .entry((up.clone(), model.clone(), code.clone()))
            .or_default() += 1;
        *self.spend.entry((up, model)).or_default() += v.settlement().spend;
        match &v {
            Verdict::Retry { .. } => *self.retries.entry(code).or_default() += 1,
            Verdict::GiveUp { reason, .. } => {
                *self.give_ups.entry(reason.code.to_owned()).or_default() += 1
            }
            _ => {}
        }
        v
    }
}

#[test]
fn the_engine_exposes_what_it_decided() {
    let (e, clock) = engine(POLICY);
    let mut tally = Tally::default();

    // Failures on the first target until its breaker opens.
    for _ in 0..4 {
        let p = go(&e, &call("t"));
        assert_eq!(&*p.target().unwrap().upstream, "primary");
        tally.settle(
            &e,
            p,
            &Outcome::status(503).with_latency(Duration::from_millis(40)),
        );
        clock.advance(Duration::from_millis(10));
    }
    // A timeout and a 400 (not retried) on what the route picks now.
    let p = go(&e, &call("t"));
    assert_eq!(&*p.target().unwrap().upstream, "secondary");
    tally.settle(
        &e,
        p,
        &Outcome::failed(Failure::Timeout(TimeoutKind::FirstByte))
            .with_latency(Duration::from_secs(30)),
    );
    let p = go(&e, &call("t"));
    let v = tally.settle(&e, p, &Outcome::status(400));
    assert_eq!(v.kind(), "give_up");
    // Two successes on the fallback with usage and latency.
    for _ in 0..2 {
        let p = go(&e, &call("t"));
        assert_eq!(&*p.target().unwrap().model, "gpt-4o-mini");
        tally.settle(
            &e,
            p,
            &Outcome::ok(usage()).with_latency(Duration::from_millis(200)),
        );
    }
    // An unrouted call.
    let p = go(
        &e,
        &Call::new("gpt-4o-mini")
            .tenant("t")
            .prompt(Prompt::Tokens(10)),
    );
    assert!(p.target().is_none());
    tally.settle(&e, p, &Outcome::ok(usage()));
    // A denial by the tiny budget; its first call goes (and holds its request until dropped).
    let first = go(&e, &call("small"));
    let Decision::Deny(denial) = e.admit(&call("small")) else {
        panic!("the tiny budget should refuse the second call")
    };
    assert_eq!(denial.code(), "budget_exhausted");
    drop(first);
    e.record_ttft("secondary", "gpt-4o-mini", Duration::from_millis(300));

    let text = e.metrics_text();
    let s = parse(&text);

    // Attempts by target and outcome, as the histories named them.
    assert!(tally.attempts.len() >= 4, "{:?}", tally.attempts);
    for ((up, model, code), n) in &tally.attempts {
        let series = format!(
            "tollgate_attempts_total{{upstream=\"{up}\",model=\"{model}\",outcome=\"{code}\"}}"
        );
        assert_eq!(get(&s, &series), *n as f64, "{series}");
    }
    let attempts: f64 = s
        .iter()
        .filter(|(k, _)| k.starts_with("tollgate_attempts_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(attempts, 9.0);
    assert_eq!(
        get(
            &s,
            "tollgate_attempts_total{upstream=\"primary\",model=\"gpt-4o\",outcome=\"status_503\"}"
        ),
        4.0
    );
    assert_eq!(
        get(
            &s,
            "tollgate_attempts_total{upstream=\"secondary\",model=\"gpt-4o-mini\",outcome=\"timeout_first_byte\"}"
        ),
        1.0
    );
    assert_eq!(
        get(
            &s,
            "tollgate_attempts_total{upstream=\"\",model=\"\",outcome=\"status_200\"}"
        ),
        1.0
    );

    // Retries and give-ups by code.
    for (code, n) in &tally.retries {
        assert_eq!(
            get(&s, &format!("tollgate_retries_total{{code=\"{code}\"}}")),
            *n as f64
        );
    }
    assert!(tally.retries.contains_key("status_503"));
    assert_eq!(
        get(&s, "tollgate_give_ups_total{code=\"not_retryable\"}"),
        1.0
    );
    for (code, n) in &tally.give_ups {
        assert_eq!(
            get(&s, &format!("tollgate_give_ups_total{{code=\"{code}\"}}")),
            *n as f64
        );
    }

    // Latency: 4 × 40 ms on primary; on secondary one 30 s timeout and two 200 ms successes.
    let p = "upstream=\"primary\",model=\"gpt-4o\"";
    let sec = "upstream=\"secondary\",model=\"gpt-4o-mini\"";
    assert_eq!(
        get(
            &s,
            &format!("tollgate_attempt_latency_seconds_count{{{p}}}")
        ),
        4.0
    );
    assert_eq!(
        get(
            &s,
            &format!("tollgate_attempt_latency_seconds_bucket{{{p},le=\"0.025\"}}")
        ),
        0.0
    );
    assert_eq!(
        get(
            &s,
            &format!("tollgate_attempt_latency_seconds_bucket{{{p},le=\"0.05\"}}")
        ),
        4.0
    );
    assert!((get(&s, &format!("tollgate_attempt_latency_seconds_sum{{{p}}}")) - 0.16).abs() < 1e-9);
    assert_eq!(
        get(
            &s,
            &format!("tollgate_attempt_latency_seconds_bucket{{{sec},le=\"0.25\"}}")
        ),
        2.0
    );
    assert_eq!(
        get(
            &s,
            &format!("tollgate_attempt_latency_seconds_bucket{{{sec},le=\"30\"}}")
        ),
        3.0
    );
    assert_eq!(
        get(
            &s,
            &format!("tollgate_attempt_latency_seconds_bucket{{{sec},le=\"+Inf\"}}")
        ),
        3.0
    );
    // The unrouted call gave no latency; its series starts at 0 with its token series.
    assert_eq!(
        get(
            &s,
            "tollgate_attempt_latency_seconds_count{upstream=\"\",model=\"\"}"
        ),
        0.0
    );

    // Tokens by kind: input = prompt - cached.
    for (kind, per_call) in [("input", 800.0), ("cached", 200.0), ("output", 500.0)] {
        assert_eq!(
            get(
                &s,
                &format!("tollgate_tokens_total{{{sec},kind=\"{kind}\"}}")
            ),
            2.0 * per_call
        );
        assert_eq!(
            get(
                &s,
                &format!("tollgate_tokens_total{{upstream=\"\",model=\"\",kind=\"{kind}\"}}")
            ),
            per_call
        );
    }
    // No usage was reported on the primary: its series exist at 0.
    assert_eq!(
        get(&s, &format!("tollgate_tokens_total{{{p},kind=\"output\"}}")),
        0.0
    );

    // Spend: what the settlements charged.
    let spent = tally.spend[&("secondary".to_owned(), "gpt-4o-mini".to_owned())];
    assert!(spent > 0.0);
    assert!((get(&s, &format!("tollgate_spend_total{{{sec}}}")) - spent).abs() < 1e-12);

    // Denial by budget and code, only on the deny path.
    assert_eq!(
        get(
            &s,
            "tollgate_denials_total{budget=\"tiny\",code=\"budget_exhausted\"}"
        ),
        1.0
    );
    let denials = text
        .lines()
        .filter(|l| l.starts_with("tollgate_denials_total{"))
        .count();
    assert_eq!(denials, 1, "{text}");
    assert_eq!(
        get(&s, "tollgate_budget_denied_total{budget=\"tiny\"}"),
        1.0
    );
    assert_eq!(
        get(&s, "tollgate_budget_admitted_total{budget=\"tiny\"}"),
        1.0
    );
    assert_eq!(get(&s, "tollgate_budget_keys{budget=\"tiny\"}"), 1.0);

    // Breakers: the primary opened once and is open; the fallback is closed.
    assert_eq!(get(&s, &format!("tollgate_breaker_state{{{p}}}")), 2.0);
    assert_eq!(
        get(&s, &format!("tollgate_breaker_opens_total{{{p}}}")),
        1.0
    );
    assert_eq!(get(&s, &format!("tollgate_breaker_state{{{sec}}}")), 0.0);
    assert!((get(&s, &format!("tollgate_target_latency_ewma_seconds{{{p}}}")) - 0.04).abs() < 1e-6);
    // Half-open once the open time has passed.
    clock.advance(Duration::from_secs(31));
    let later = parse(&e.metrics_text());
    assert_eq!(get(&later, &format!("tollgate_breaker_state{{{p}}}")), 1.0);

    // Retry budget per upstream, cache counters, TTFT, generation.
    assert!(get(&s, "tollgate_retry_budget_tokens{upstream=\"primary\"}") > 0.0);
    assert!(s.contains_key("tollgate_retry_budget_tokens{upstream=\"\"}"));
    assert_eq!(get(&s, "tollgate_cache_hits_total"), 0.0);
    assert_eq!(get(&s, "tollgate_cache_entries"), 0.0);
    assert_eq!(
        get(
            &s,
            &format!("tollgate_time_to_first_token_seconds_bucket{{{sec},le=\"0.5\"}}")
        ),
        1.0
    );
    assert_eq!(
        get(
            &s,
            &format!("tollgate_time_to_first_token_seconds_count{{{sec}}}")
        ),
        1.0
    );
    assert_eq!(get(&s, "tollgate_policy_generation"), 1.0);

    // Every sample belongs to a family declared with HELP and TYPE.
    let declared: HashMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    assert_eq!(
        text.lines().filter(|l| l.starts_with("# HELP ")).count(),
        declared.len()
    );
    for series in s.keys() {
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|f| declared.get(f) == Some(&"histogram"))
            .unwrap_or(name);
        assert!(declared.contains_key(family), "{series} has no TYPE line");
        assert!(family.starts_with("tollgate_"));
    }
}

#[test]
fn go_decisions_record_no_denials() {
    let (e, _clock) = engine(POLICY);
    for _ in 0..3 {
        let p = go(&e, &call("t"));
        e.settle(p, &Outcome::ok(usage()));
    }
    let text = e.metrics_text();
    assert!(text.contains("# TYPE tollgate_denials_total counter\n"));
    assert!(!text.contains("tollgate_denials_total{"), "{text}");
    // Denials that no budget decided are labelled with an empty budget.
    let Decision::Deny(d) = e.admit(
        &Call::new("gpt-4o")
            .tenant("t")
            .prompt(Prompt::Request(&serde_json::json!({"model": "gpt-4o"}))),
    ) else {
        panic!("a chat body without messages is refused")
    };
    let s = parse(&e.metrics_text());
    assert_eq!(
        get(
            &s,
            &format!(
                "tollgate_denials_total{{budget=\"\",code=\"{}\"}}",
                d.code()
            )
        ),
        1.0
    );
}

#[test]
fn the_metrics_text_never_contains_a_secret() {
    // SAFETY: no other test of this binary reads or writes this variable; the engine only reads
    // it when it authenticates a call.
    unsafe { std::env::set_var(SECRET_VAR, SECRET) };
    assert_eq!(std::env::var(SECRET_VAR).as_deref(), Ok(SECRET));
    let (e, clock) = engine(POLICY);
    // Exercise the keyed upstream on every path: success, a 401 (quarantines the key), a 429,
    // a denial.
    for outcome in [
        Outcome::ok(usage()),
        Outcome::status(401),
        Outcome::status(429),
    ] {
        clock.advance(Duration::from_secs(120));
        let p = go(&e, &call("t"));
        e.settle(p, &outcome.with_latency(Duration::from_millis(5)));
    }
    let _ = e.admit(&call("small"));
    let _ = e.admit(&call("small"));
    e.record_ttft("primary", "gpt-4o", Duration::from_millis(1));
    let text = e.metrics_text();
    assert!(text.contains("upstream=\"primary\""), "{text}");
    assert!(!text.contains(SECRET), "the metrics leak the key:\n{text}");
    assert!(!text.contains("3f9a1c7e5b2d4068"));
}

#[test]
fn settles_from_8_threads_are_all_counted() {
    let (e, _clock) = engine(POLICY);
    std::thread::scope(|s| {
        for _ in 0..8 {
            let e = e.clone();
            s.spawn(move || {
                for _ in 0..1000 {
                    let p = go(&e, &call("t"));
                    e.settle(
                        p,
                        &Outcome::ok(usage()).with_latency(Duration::from_millis(3)),
                    );
                }
            });
        }
    });
    let s = parse(&e.metrics_text());
    let p = "upstream=\"primary\",model=\"gpt-4o\"";
    assert_eq!(
        get(
            &s,
            &format!("tollgate_attempts_total{{{p},outcome=\"status_200\"}}")
        ),
        8000.0
    );
    assert_eq!(
        get(
            &s,
            &format!("tollgate_attempt_latency_seconds_count{{{p}}}")
        ),
        8000.0
    );
    assert_eq!(
        get(&s, &format!("tollgate_tokens_total{{{p},kind=\"output\"}}")),
        8000.0 * 500.0
    );
}

#[test]
fn engines_keep_their_own_series_and_reloads_keep_them() {
    let (a, _) = engine(POLICY);
    let (b, _) = engine(POLICY);
    let p = "upstream=\"primary\",model=\"gpt-4o\"";
    let ok = format!("tollgate_attempts_total{{{p},outcome=\"status_200\"}}");
    // Interleaved on one thread: each engine counts only its own calls.
    for _ in 0..3 {
        let pa = go(&a, &call("t"));
        a.settle(pa, &Outcome::ok(usage()));
    }
    let pb = go(&b, &call("t"));
    b.settle(pb, &Outcome::ok(usage()));
    assert_eq!(get(&parse(&a.metrics_text()), &ok), 3.0);
    assert_eq!(get(&parse(&b.metrics_text()), &ok), 1.0);
    // A reload compiles new routes; the series go on counting.
    a.reload(POLICY).expect("same policy");
    let pa = go(&a, &call("t"));
    a.settle(pa, &Outcome::ok(usage()));
    let s = parse(&a.metrics_text());
    assert_eq!(get(&s, &ok), 4.0);
    assert_eq!(get(&s, "tollgate_policy_generation"), 2.0);
    assert_eq!(get(&parse(&b.metrics_text()), &ok), 1.0);
}
