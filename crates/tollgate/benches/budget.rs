//! Budget hot path: `admit` + `settle` pairs, each measured beside governor 0.10 in the same run.
//!
//! Groups (see `docs/benchmarks.md` for what each one answers):
//! - `a_one_key`: one unscoped budget, one key; vs `RateLimiter::direct(..).check()`.
//! - `b_100k_keys`: three matching budgets over 100 000 pre-warmed tenants; vs governor's keyed
//!   limiter on the same 100 000 `String` keys.
//! - `c_threads`: two threads on one hot key, on distinct keys, and on many keys, against one
//!   thread; aggregate time per operation (so ops/s = 1e9 / ns).
//!
//! After criterion has run, `main` reads criterion's own `estimates.json` files (medians) written
//! by *this* run and prints the ratio table. `cargo bench --bench budget -- --test` runs every
//! benchmark once and says the table has no measurements.

#[path = "common/mod.rs"]
mod common;

use std::hint::black_box;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};

use criterion::{Bencher, Criterion, Throughput};
use governor::clock::{Clock as _, QuantaClock, QuantaInstant, Reference as _};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tollgate::clock::{Clock, Nanos};
use tollgate::tokens::Usage;
use tollgate::{Call, Decision, Engine, Outcome, Policy, Prompt};

/// Distinct keys in groups (b) and (c3).
const KEYS: usize = 100_000;
/// Every limit is far above what a benchmark can reach, so nothing is ever refused.
const RPS: u32 = 1_000_000_000;
const MODEL: &str = "gpt-4o";
const PROMPT_TOKENS: u64 = 100;
const MAX_TOKENS: u64 = 200;

/// (a) one unscoped budget with a request limit.
const POLICY_REQUESTS: &str = r#"
version = 1
[[budget]]
name = "one"
scope = []
requests_per_second = 1000000000
"#;

/// (a) the same with a token limit: reserve 300 tokens, commit 160, refund the rest.
const POLICY_TOKENS: &str = r#"
version = 1
[[budget]]
name = "one"
scope = []
requests_per_second = 1000000000
tokens_per_minute = 1000000000000
"#;

/// (b) three budgets matching every call, each with requests, tokens and concurrency.
const POLICY_THREE: &str = r#"
version = 1
[[budget]]
name = "per-tenant"
scope = ["tenant"]
requests_per_second = 1000000000
tokens_per_minute = 1000000000000
concurrency = 1000000

[[budget]]
name = "per-tenant-model"
scope = ["tenant", "model"]
requests_per_second = 1000000000
tokens_per_minute = 1000000000000
concurrency = 1000000

[[budget]]
name = "global"
scope = []
requests_per_second = 1000000000
tokens_per_minute = 1000000000000
concurrency = 1000000
"#;

/// (c) one per-tenant budget, so distinct tenants share no budget state.
const POLICY_TENANT: &str = r#"
version = 1
[[budget]]
name = "per-tenant"
scope = ["tenant"]
requests_per_second = 1000000000
tokens_per_minute = 1000000000000
concurrency = 1000000
"#;

fn policy(text: &str) -> Policy {
    match Policy::from_toml(text) {
        Ok(p) => p,
        Err(e) => panic!("benchmark policy is invalid:\n{e}\n{text}"),
    }
}

fn usage() -> Usage {
    Usage {
        prompt_tokens: PROMPT_TOKENS,
        completion_tokens: 60,
        total_tokens: PROMPT_TOKENS + 60,
        ..Usage::default()
    }
}

fn call(tenant: &str) -> Call<'_> {
    Call::new(MODEL)
        .tenant(tenant)
        .prompt(Prompt::Tokens(PROMPT_TOKENS))
        .max_tokens(MAX_TOKENS)
}

#[cold]
#[inline(never)]
fn refused(d: &Decision) -> ! {
    panic!("benchmark policies never refuse, got {d:?}")
}

/// One admit + settle pair.
#[inline(always)]
fn pair(engine: &Engine, call: &Call<'_>, outcome: &Outcome) {
    match engine.admit(call) {
        Decision::Go(permit) => {
            black_box(engine.settle(permit, outcome));
        }
        other => refused(&other),
    }
}

fn tenants() -> Vec<String> {
    (0..KEYS).map(|i| format!("t{i}")).collect()
}

/// governor's own clock (TSC via quanta) as a tollgate clock: shows how much of (a) is the clock.
#[derive(Debug)]
struct QuantaNow {
    clock: QuantaClock,
    origin: QuantaInstant,
}

impl QuantaNow {
    fn new() -> QuantaNow {
        let clock = QuantaClock::default();
        let origin = clock.now();
        QuantaNow { clock, origin }
    }
}

impl Clock for QuantaNow {
    fn now(&self) -> Nanos {
        u64::from(self.clock.now().duration_since(self.origin))
    }
}

fn quota() -> Quota {
    Quota::per_second(NonZeroU32::new(RPS).expect("RPS is not zero"))
}

// ---------------------------------------------------------------------------------------------
// (a) one budget, one key

fn one_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("a_one_key");
    g.throughput(Throughput::Elements(1));

    let engine = Engine::new(policy(POLICY_REQUESTS));
    let unknown = Outcome::unknown();
    g.bench_function("tollgate_requests", |b| {
        let call = call("");
        b.iter(|| pair(&engine, black_box(&call), &unknown));
    });

    let engine = Engine::new(policy(POLICY_TOKENS));
    let ok = Outcome::ok(usage());
    g.bench_function("tollgate_tokens", |b| {
        let call = call("");
        b.iter(|| pair(&engine, black_box(&call), &ok));
    });

    let engine = Engine::with_clock(policy(POLICY_REQUESTS), Arc::new(QuantaNow::new()));
    g.bench_function("tollgate_requests_quanta_clock", |b| {
        let call = call("");
        b.iter(|| pair(&engine, black_box(&call), &unknown));
    });

    let limiter: DefaultDirectRateLimiter = RateLimiter::direct(quota());
    g.bench_function("governor_direct", |b| {
        b.iter(|| black_box(limiter.check()));
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// (b) three budgets, 100 000 keys

struct ManyKeys {
    engine: Engine,
    keys: Vec<String>,
}

fn many_keys_engine(text: &str) -> ManyKeys {
    let engine = Engine::new(policy(text));
    let keys = tenants();
    let outcome = Outcome::ok(usage());
    for k in &keys {
        pair(&engine, &call(k), &outcome);
    }
    ManyKeys { engine, keys }
}

struct ManyGov {
    limiter: DefaultKeyedRateLimiter<String>,
    keys: Vec<String>,
}

fn many_keys_governor() -> ManyGov {
    let limiter = RateLimiter::keyed(quota());
    let keys = tenants();
    for k in &keys {
        let _ = limiter.check_key(k);
    }
    ManyGov { limiter, keys }
}

/// Runs `step(i)` for consecutive `i` starting where the last batch stopped, cycling the keys.
fn cycle(b: &mut Bencher<'_>, next: &mut usize, mut step: impl FnMut(usize)) {
    b.iter(|| {
        let i = *next;
        *next = if i + 1 == KEYS { 0 } else { i + 1 };
        step(i);
    });
}

fn hundred_k_keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("b_100k_keys");
    g.throughput(Throughput::Elements(1));

    // Built on first use, so a filter that skips the group skips the set-up too.
    let mut state: Option<ManyKeys> = None;
    let outcome = Outcome::ok(usage());
    let mut next = 0;
    g.bench_function("tollgate_3_budgets", |b| {
        let s = state.get_or_insert_with(|| many_keys_engine(POLICY_THREE));
        cycle(b, &mut next, |i| {
            pair(&s.engine, &call(black_box(&s.keys[i])), &outcome)
        });
    });
    drop(state);

    let mut gov: Option<ManyGov> = None;
    let mut next = 0;
    g.bench_function("governor_keyed", |b| {
        let s = gov.get_or_insert_with(many_keys_governor);
        cycle(b, &mut next, |i| {
            let _ = black_box(s.limiter.check_key(black_box(&s.keys[i])));
        });
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// (c) two threads

/// Runs `iters` operations split over `threads` threads (thread `t` calls `op(t, j)` for its
/// `j`-th operation) and returns the wall time from a common start to the last thread's end.
fn parallel(threads: usize, iters: u64, op: &(impl Fn(usize, u64) + Sync)) -> Duration {
    let n = threads as u64;
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let count = iters / n + if t == 0 { iters % n } else { 0 };
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    for j in 0..count {
                        op(t, j);
                    }
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for h in handles {
            h.join().expect("benchmark thread panicked");
        }
        start.elapsed()
    })
}

/// Key index for thread `t` of `threads`, operation `j`: thread `t` cycles over its own share of
/// the keys (`t`, `t + threads`, ...), so threads never use the same key.
#[inline(always)]
fn own_key(t: usize, threads: usize, j: u64) -> usize {
    let per_thread = (KEYS / threads) as u64;
    t + threads * (j % per_thread) as usize
}

fn two_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("c_threads");
    g.throughput(Throughput::Elements(1));
    let outcome = Outcome::ok(usage());

    let mut tg: Option<ManyKeys> = None;
    let mut bench_tg = |g: &mut criterion::BenchmarkGroup<'_, _>,
                        name: &str,
                        threads: usize,
                        key: fn(usize, usize, u64) -> usize| {
        g.bench_function(name, |b| {
            let s = tg.get_or_insert_with(|| many_keys_engine(POLICY_TENANT));
            let op =
                |t: usize, j: u64| pair(&s.engine, &call(&s.keys[key(t, threads, j)]), &outcome);
            b.iter_custom(|iters| parallel(threads, iters, &op));
        });
    };
    bench_tg(&mut g, "tollgate_one_key_1t", 1, |_, _, _| 0);
    bench_tg(&mut g, "tollgate_hot_key_2t", 2, |_, _, _| 0);
    bench_tg(&mut g, "tollgate_distinct_keys_2t", 2, |t, _, _| t);
    bench_tg(&mut g, "tollgate_many_keys_1t", 1, own_key);
    bench_tg(&mut g, "tollgate_many_keys_2t", 2, own_key);
    drop(tg);

    // Distinct tenants, but the policy of (b): the unscoped budget is one cell both threads share.
    let mut three: Option<ManyKeys> = None;
    g.bench_function("tollgate_distinct_keys_2t_3_budgets", |b| {
        let s = three.get_or_insert_with(|| many_keys_engine(POLICY_THREE));
        let op = |t: usize, _j: u64| pair(&s.engine, &call(&s.keys[t]), &outcome);
        b.iter_custom(|iters| parallel(2, iters, &op));
    });
    drop(three);

    let mut gov: Option<ManyGov> = None;
    let mut bench_gov = |g: &mut criterion::BenchmarkGroup<'_, _>,
                         name: &str,
                         threads: usize,
                         key: fn(usize, usize, u64) -> usize| {
        g.bench_function(name, |b| {
            let s = gov.get_or_insert_with(many_keys_governor);
            let op = |t: usize, j: u64| {
                let _ = black_box(s.limiter.check_key(&s.keys[key(t, threads, j)]));
            };
            b.iter_custom(|iters| parallel(threads, iters, &op));
        });
    };
    bench_gov(&mut g, "governor_one_key_1t", 1, |_, _, _| 0);
    bench_gov(&mut g, "governor_hot_key_2t", 2, |_, _, _| 0);
    bench_gov(&mut g, "governor_distinct_keys_2t", 2, |t, _, _| t);
    bench_gov(&mut g, "governor_many_keys_1t", 1, own_key);
    bench_gov(&mut g, "governor_many_keys_2t", 2, own_key);
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// The ratio table

/// Medians criterion wrote during this run.
struct Results {
    dir: Option<PathBuf>,
    since: SystemTime,
    test_mode: bool,
}

impl Results {
    fn new(since: SystemTime) -> Results {
        // Criterion's own rule: `cargo bench` passes `--bench`; without it, or with `--test`,
        // it only checks that every benchmark runs.
        let args: Vec<String> = std::env::args().collect();
        let test_mode = !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--test");
        Results {
            dir: common::criterion_dir(),
            since,
            test_mode,
        }
    }

    /// Median time per iteration in ns, if this run measured `group/bench`.
    fn median(&self, group: &str, bench: &str) -> Option<f64> {
        let path = self
            .dir
            .as_ref()?
            .join(group)
            .join(bench)
            .join("new")
            .join("estimates.json");
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
        if modified < self.since {
            return None; // left over from an earlier run
        }
        let text = std::fs::read_to_string(&path).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        json["median"]["point_estimate"].as_f64()
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn ops(ns: f64) -> String {
    format!("{:.1} M ops/s", 1e3 / ns)
}

fn print_table(r: &Results) {
    println!();
    println!("== tollgate vs governor 0.10 (criterion medians, this run) ==");
    if r.test_mode {
        println!("test mode: every benchmark ran once; no measurements, so no ratios.");
        return;
    }
    let a = |b: &str| r.median("a_one_key", b);
    let bb = |b: &str| r.median("b_100k_keys", b);
    let c = |b: &str| r.median("c_threads", b);
    let mut printed = 0;

    if let Some(gov) = a("governor_direct") {
        for (bench, what) in [
            ("tollgate_requests", "(a) admit+settle, requests"),
            (
                "tollgate_tokens",
                "(a) admit+settle, tokens (reserve/commit/refund)",
            ),
            (
                "tollgate_requests_quanta_clock",
                "(a) admit+settle, requests, quanta clock",
            ),
        ] {
            if let Some(t) = a(bench) {
                let ratio = t / gov;
                println!(
                    "{what}: {t:.1} ns | governor check {gov:.1} ns | ratio {ratio:.2}x (target <= 2x: {})",
                    verdict(ratio <= 2.0)
                );
                printed += 1;
            }
        }
    }
    if let (Some(t), Some(gov)) = (bb("tollgate_3_budgets"), bb("governor_keyed")) {
        println!(
            "(b) 3 budgets, 100k keys, admit+settle: {t:.1} ns (target <= 500 ns: {}) | governor keyed check {gov:.1} ns | ratio {:.2}x",
            verdict(t <= 500.0),
            t / gov
        );
        printed += 1;
    }
    for (who, prefix) in [("tollgate", "tollgate"), ("governor", "governor")] {
        let one = c(&format!("{prefix}_one_key_1t"));
        if let (Some(hot), Some(one)) = (c(&format!("{prefix}_hot_key_2t")), one) {
            println!(
                "(c1) {who}, one hot key: 2 threads {} vs 1 thread {} | scaling {:.2}x",
                ops(hot),
                ops(one),
                one / hot
            );
            printed += 1;
        }
        if let (Some(two), Some(one)) = (c(&format!("{prefix}_distinct_keys_2t")), one) {
            let scaling = one / two;
            let target = if who == "tollgate" {
                format!(" (target >= 1.5x: {})", verdict(scaling >= 1.5))
            } else {
                String::new()
            };
            println!(
                "(c2) {who}, distinct keys: 2 threads {} vs 1 thread on one key {} | scaling {scaling:.2}x{target}",
                ops(two),
                ops(one)
            );
            printed += 1;
        }
        if let (Some(two), Some(one)) = (
            c(&format!("{prefix}_many_keys_2t")),
            c(&format!("{prefix}_many_keys_1t")),
        ) {
            println!(
                "(c3) {who}, 100k keys split between threads: 2 threads {} vs 1 thread {} | scaling {:.2}x",
                ops(two),
                ops(one),
                one / two
            );
            printed += 1;
        }
    }
    if let (Some(two), Some(one)) = (
        c("tollgate_distinct_keys_2t_3_budgets"),
        c("tollgate_one_key_1t"),
    ) {
        println!(
            "(c2') tollgate, distinct tenants under the 3 budgets of (b) (shared global cell): 2 threads {} vs 1 thread on one key (1 budget) {}",
            ops(two),
            ops(one)
        );
        printed += 1;
    }
    for (group, tg, gov) in [
        ("c_threads", "tollgate_hot_key_2t", "governor_hot_key_2t"),
        (
            "c_threads",
            "tollgate_distinct_keys_2t",
            "governor_distinct_keys_2t",
        ),
    ] {
        if let (Some(t), Some(g)) = (r.median(group, tg), r.median(group, gov)) {
            println!("     {tg} / {gov}: {:.2}x the time per op", t / g);
        }
    }
    if printed == 0 {
        match &r.dir {
            Some(d) => println!("no measurements from this run under {}", d.display()),
            None => println!("no measurements: criterion's output directory was not found"),
        }
    }
}

fn main() {
    let since = SystemTime::now();
    let mut c = common::criterion();
    one_key(&mut c);
    hundred_k_keys(&mut c);
    two_threads(&mut c);
    c.final_summary();
    print_table(&Results::new(since));
}
