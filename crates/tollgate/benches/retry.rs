//! Retry hot paths: the breaker check while closed, `decide()` returning a retry, and
//! `server_delay` over a typical 429 header set. Prints a table of criterion's medians at the end.
//!
//! Run: `cargo bench --bench retry`.

#[path = "common/mod.rs"]
mod common;

use std::hint::black_box;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{BatchSize, Criterion, Throughput};
use tollgate::policy::{Breaker, BreakerWindow, Retry};
use tollgate::retry::{
    CircuitBreaker, Failure, Headers, RetryBudget, RetryDecision, RetryInput, Rng, ServerLimits,
    decide, server_delay,
};

const GROUP: &str = "retry";

/// What OpenAI sends with a 429 (values shaped like its documentation's examples).
const HEADERS_429: &[(&str, &[u8])] = &[
    ("date", b"Sun, 01 Jun 2025 00:00:00 GMT"),
    ("content-type", b"application/json"),
    ("content-length", b"312"),
    ("openai-organization", b"org-abc"),
    ("openai-processing-ms", b"12"),
    ("openai-version", b"2020-10-01"),
    ("x-request-id", b"req_0123456789abcdef"),
    ("x-ratelimit-limit-requests", b"10000"),
    ("x-ratelimit-limit-tokens", b"2000000"),
    ("x-ratelimit-remaining-requests", b"9999"),
    ("x-ratelimit-remaining-tokens", b"0"),
    ("x-ratelimit-reset-requests", b"6ms"),
    ("x-ratelimit-reset-tokens", b"1m30.5s"),
    ("retry-after", b"2"),
    ("retry-after-ms", b"1500"),
];

/// The same without `retry-after*`: the delay comes from the `x-ratelimit-reset-*` pair, the
/// longest path through `server_delay`.
const HEADERS_429_RESET_ONLY: &[(&str, &[u8])] = HEADERS_429.split_at(13).0;

fn breaker_config() -> Breaker {
    Breaker {
        window: BreakerWindow::Calls(20),
        min_calls: 20,
        ..Breaker::default()
    }
}

/// A routed policy whose 503s always earn a retry: breakers off, a retry budget too large to
/// drain during a run.
const ROUTED: &str = r#"
version = 1
[[upstream]]
name = "primary"
base_url = "http://127.0.0.1:9/v1"
auth = { kind = "bearer", keys = ["env:KEY_ONE", "env:KEY_TWO"] }
[[upstream]]
name = "secondary"
base_url = "http://127.0.0.1:9/v1"
[[route]]
model = "gpt-4o"
targets = [{ upstream = "primary", model = "gpt-4o" }, { upstream = "secondary", model = "gpt-4o-mini" }]
[retry]
max_attempts = 3
backoff = { base = "100ms", max = "1s", jitter = "full" }
budget = { ratio = 1.0, max_tokens = 1000000000 }
[breaker]
enabled = false
[[budget]]
name = "tenant"
scope = ["tenant"]
requests_per_second = 1000000000
"#;

/// `Engine::settle` of a routed call that failed with 503: breaker, retry budget, classification,
/// backoff and the choice of the next target, producing `Verdict::Retry`. Admission runs in the
/// untimed setup.
fn engine_settle(c: &mut Criterion) {
    use tollgate::{Call, Decision, Engine, Outcome, Policy, Prompt, Verdict};
    let policy = match Policy::from_toml(ROUTED) {
        Ok(p) => p,
        Err(e) => panic!("bench policy invalid: {e}"),
    };
    let engine = Engine::new(policy);
    let call = Call::new("gpt-4o")
        .tenant("t")
        .prompt(Prompt::Tokens(100))
        .max_tokens(100);
    let admit = || match engine.admit(&call) {
        Decision::Go(p) => p,
        other => panic!("bench admission refused: {other:?}"),
    };
    let mut g = c.benchmark_group(GROUP);
    g.throughput(Throughput::Elements(1));
    g.bench_function("engine_settle_retry", |b| {
        b.iter_batched(
            admit,
            |p| {
                let v = engine.settle(p, &Outcome::status(503));
                debug_assert!(matches!(v, Verdict::Retry { .. }));
                black_box(v)
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("engine_settle_done", |b| {
        b.iter_batched(
            admit,
            |p| black_box(engine.settle(p, &Outcome::status(200))),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("engine_admit_routed", |b| {
        b.iter_batched(|| (), |()| black_box(admit()), BatchSize::SmallInput)
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    engine_settle(c);
    let mut g = c.benchmark_group(GROUP);
    g.throughput(Throughput::Elements(1));

    let breaker = CircuitBreaker::new(&breaker_config());
    g.bench_function("breaker_check_closed", |b| {
        let mut now = 0u64;
        b.iter(|| {
            now += 1;
            black_box(breaker.try_acquire(black_box(now)))
        });
    });

    let breaker = CircuitBreaker::new(&breaker_config());
    g.bench_function("breaker_check_and_record_closed", |b| {
        let mut now = 0u64;
        b.iter(|| {
            now += 1;
            if let Ok(p) = breaker.try_acquire(black_box(now)) {
                breaker.record(p, true, Duration::from_millis(80), now);
            }
        });
    });

    // The retry budget's updates: a success (one atomic update, no clock), a failure in plain
    // A6, and a failure that first credits the refill (the time moves 1 ms a failure, so every
    // call credits something).
    let a6 = RetryBudget::new(1e9, 1.0);
    g.bench_function("budget_on_success", |b| {
        b.iter(|| black_box(&a6).on_success())
    });
    g.bench_function("budget_on_failure_a6", |b| {
        b.iter(|| {
            a6.on_failure();
            a6.on_success();
        })
    });
    let refilled = RetryBudget::new(1e9, 1.0).with_refill(0.5);
    g.bench_function("budget_on_failure_at_refill", |b| {
        let mut now = 0u64;
        b.iter(|| {
            now += 1_000_000;
            refilled.on_failure_at(black_box(now));
            refilled.on_success();
        })
    });

    let policy = Retry::default();
    let budget = RetryBudget::from_policy(&policy);
    let now_wall = UNIX_EPOCH + Duration::from_secs(1_748_736_000);
    g.bench_function("decide_retry_backoff", |b| {
        let mut rng = Rng::new(1);
        let input = RetryInput {
            now_wall,
            ..RetryInput::new(1, Failure::Status(503))
        };
        b.iter(|| {
            let d = decide(black_box(&input), &policy, &budget, &mut rng);
            debug_assert!(matches!(d, RetryDecision::Retry { .. }));
            black_box(d)
        });
    });
    g.bench_function("decide_retry_429_headers", |b| {
        let mut rng = Rng::new(1);
        let input = RetryInput {
            headers: Headers::new(HEADERS_429),
            now_wall,
            ..RetryInput::new(1, Failure::Status(429))
        };
        b.iter(|| {
            let d = decide(black_box(&input), &policy, &budget, &mut rng);
            debug_assert!(matches!(d, RetryDecision::Retry { .. }));
            black_box(d)
        });
    });

    let headers = Headers::new(HEADERS_429);
    g.bench_function("server_delay_429", |b| {
        b.iter(|| black_box(server_delay(black_box(&headers), now_wall)));
    });
    let reset_only = Headers::new(HEADERS_429_RESET_ONLY);
    g.bench_function("server_delay_429_reset_only", |b| {
        b.iter(|| black_box(server_delay(black_box(&reset_only), now_wall)));
    });
    g.bench_function("server_limits_429", |b| {
        b.iter(|| black_box(ServerLimits::from_headers(black_box(&headers))));
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// The table

fn print_table(since: SystemTime) {
    let Some(dir) = common::table_dir("tollgate retry") else {
        return;
    };
    let rows: [(&str, &str, Option<f64>); 10] = [
        (
            "engine_settle_retry",
            "engine settle(503) -> Retry verdict",
            Some(300.0),
        ),
        ("engine_settle_done", "engine settle(200), routed", None),
        (
            "engine_admit_routed",
            "engine admit, routed (two upstreams, key pool)",
            None,
        ),
        (
            "breaker_check_closed",
            "breaker try_acquire, closed",
            Some(50.0),
        ),
        (
            "breaker_check_and_record_closed",
            "breaker try_acquire + record, closed",
            None,
        ),
        (
            "decide_retry_backoff",
            "decide(): 503, no headers -> backoff",
            None,
        ),
        (
            "decide_retry_429_headers",
            "decide(): 429 + 15 headers -> server delay",
            None,
        ),
        (
            "server_delay_429",
            "server_delay, 429 set (retry-after-ms)",
            None,
        ),
        (
            "server_delay_429_reset_only",
            "server_delay, 429 set (x-ratelimit-reset)",
            None,
        ),
        (
            "server_limits_429",
            "ServerLimits::from_headers, 429 set",
            None,
        ),
    ];
    println!("{:<48} {:>12}  target", "benchmark", "median");
    common::print_rows(&dir, GROUP, &rows, since);
}

fn main() {
    let since = SystemTime::now();
    let mut c = common::criterion();
    benches(&mut c);
    c.final_summary();
    print_table(since);
}
