//! Admit + settle through the C ABI (`tg_engine_admit` / `tg_engine_settle`, the functions a C
//! host links) against the same pair through the Rust API, in one run, on the same policy
//! (three limits and a concurrency gate per tenant). Two shapes: a settle with usage only, and
//! one that also passes four `x-ratelimit-*` response headers. Prints each pair's ratio and the
//! target: C ≤ 1.2 × Rust + 10 ns.
//!
//! Run: `cargo bench --bench ffi`.

#[path = "../../tollgate/benches/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::mem::MaybeUninit;
use std::ptr::{null, null_mut};
use std::time::{Instant, SystemTime};

use criterion::Criterion;
use tollgate::tokens::Usage;
use tollgate::{Call, Decision, Engine, Outcome, Prompt, Verdict};
use tollgate_capi::*;

const GROUP: &str = "ffi";

const POLICY: &str = r#"version = 1
[[budget]]
name = "per-tenant"
scope = ["tenant"]
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
concurrency = 1000000
[[budget]]
name = "per-model"
scope = ["model"]
requests_per_second = 100000000
"#;

const HEADERS: [(&str, &str); 4] = [
    ("x-ratelimit-limit-requests", "10000"),
    ("x-ratelimit-remaining-requests", "9999"),
    ("x-ratelimit-limit-tokens", "2000000"),
    ("x-ratelimit-remaining-tokens", "1999000"),
];

fn usage() -> Usage {
    Usage {
        prompt_tokens: 120,
        completion_tokens: 80,
        total_tokens: 200,
        ..Usage::default()
    }
}

fn s(text: &str) -> tg_str {
    tg_str {
        ptr: text.as_ptr().cast(),
        len: text.len(),
    }
}

/// One admit + settle through the Rust API, on its own engine.
fn rust_pair<'a>(headers: &'a [(&'a str, &'a [u8])]) -> impl FnMut() + 'a {
    let engine = Engine::from_text(POLICY).expect("valid policy");
    let call = Call::new("gpt-4o")
        .tenant("acme")
        .prompt(Prompt::Tokens(120))
        .max_tokens(256);
    let outcome = Outcome::ok(usage()).with_headers(headers);
    move || {
        let Decision::Go(permit) = engine.admit(black_box(&call)) else {
            panic!("the budgets have room");
        };
        let verdict = engine.settle(permit, black_box(&outcome));
        assert!(matches!(verdict, Verdict::Done(_)));
    }
}

/// An engine created through the C ABI, freed on drop.
struct CEngine(*mut tg_engine);

impl Drop for CEngine {
    fn drop(&mut self) {
        // SAFETY: owned engine, freed once.
        unsafe { tg_engine_free(self.0) };
    }
}

/// One admit + settle through the C ABI, on its own engine, with the structs a C host fills.
fn c_pair(headers: &[tg_header]) -> impl FnMut() + '_ {
    let mut engine = null_mut();
    // SAFETY: valid buffers and out pointers.
    let status = unsafe { tg_engine_new(POLICY.as_ptr(), POLICY.len(), &mut engine, null_mut()) };
    assert_eq!(status, tg_status::Ok);
    let engine = CEngine(engine);
    let call = tg_call {
        tenant: s("acme"),
        model: s("gpt-4o"),
        upstream: s(""),
        key: s(""),
        route: s(""),
        priority: 0,
        prompt_kind: tg_prompt_kind::Tokens as u32,
        prompt_tokens: 120,
        prompt: s(""),
        has_max_tokens: true,
        max_tokens: 256,
        deadline_ms: 0,
        attempt: null(),
    };
    let outcome = tg_outcome {
        sent: true,
        status: 200,
        has_usage: true,
        usage: usage().into(),
        latency_ns: 0,
        failure: tg_failure::None as u32,
        headers: headers.as_ptr(),
        headers_len: headers.len(),
        content_delivered: false,
    };
    move || {
        // Borrow the whole handle, so the closure owns it (not just its pointer field).
        let engine: &CEngine = &engine;
        let mut decision = MaybeUninit::<tg_decision>::uninit();
        let mut verdict = MaybeUninit::<tg_verdict>::uninit();
        // SAFETY: a live engine and valid structs, as a C host passes them.
        unsafe {
            let status = tg_engine_admit(
                engine.0,
                black_box(&call),
                decision.as_mut_ptr(),
                null_mut(),
            );
            assert_eq!(status, tg_status::Ok);
            let decision = decision.assume_init();
            assert_eq!(decision.kind, tg_decision_kind::Go);
            let status = tg_engine_settle(
                engine.0,
                decision.permit,
                black_box(&outcome),
                verdict.as_mut_ptr(),
                null_mut(),
            );
            assert_eq!(status, tg_status::Ok);
            assert_eq!(verdict.assume_init().kind, tg_verdict_kind::Done);
        }
    }
}

fn headers() -> (Vec<(&'static str, &'static [u8])>, Vec<tg_header>) {
    let rust = HEADERS.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    let c = HEADERS
        .iter()
        .map(|(n, v)| tg_header {
            name: s(n),
            value: s(v),
        })
        .collect();
    (rust, c)
}

fn benches(c: &mut Criterion) {
    let (rust_headers, c_headers) = headers();
    let mut g = c.benchmark_group(GROUP);
    let mut op = rust_pair(&[]);
    g.bench_function("rust_admit_settle", |b| b.iter(&mut op));
    let mut op = c_pair(&[]);
    g.bench_function("c_admit_settle", |b| b.iter(&mut op));
    let mut op = rust_pair(&rust_headers);
    g.bench_function("rust_admit_settle_headers", |b| b.iter(&mut op));
    let mut op = c_pair(&c_headers);
    g.bench_function("c_admit_settle_headers", |b| b.iter(&mut op));
    g.finish();
}

/// Median ns per call of `rust` and `c`, measured in alternating blocks of `block` calls
/// (`rounds` blocks each, the order swapped every round) so both see the same machine load.
fn interleaved(
    mut rust: impl FnMut(),
    mut c: impl FnMut(),
    rounds: usize,
    block: u32,
) -> (f64, f64) {
    let time = |op: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..block {
            op();
        }
        start.elapsed().as_nanos() as f64 / f64::from(block)
    };
    let (mut r, mut k) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for round in 0..rounds {
        if round % 2 == 0 {
            r.push(time(&mut rust));
            k.push(time(&mut c));
        } else {
            k.push(time(&mut c));
            r.push(time(&mut rust));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(r), median(k))
}

fn print_table(since: SystemTime) {
    let Some(dir) = common::table_dir("tollgate C ABI vs Rust API") else {
        return;
    };
    println!("criterion, one after the other:");
    for (rust, c, what) in [
        ("rust_admit_settle", "c_admit_settle", "admit + settle"),
        (
            "rust_admit_settle_headers",
            "c_admit_settle_headers",
            "admit + settle with 4 headers",
        ),
    ] {
        let (Some(r), Some(cc)) = (
            common::median(&dir, GROUP, rust, since),
            common::median(&dir, GROUP, c, since),
        ) else {
            println!("{what}: not measured in this run");
            continue;
        };
        let target = 1.2 * r + 10.0;
        let verdict = if cc <= target { "met" } else { "MISSED" };
        println!(
            "{what:<32} Rust {r:>7.1} ns  C ABI {cc:>7.1} ns  ratio {:.3}  (target C <= {target:.1} ns: {verdict})",
            cc / r
        );
    }
    println!("interleaved (400 alternating blocks of 2,000 pairs each, medians; the headline):");
    let (rust_headers, c_headers) = headers();
    for (what, (r, cc)) in [
        (
            "admit + settle",
            interleaved(rust_pair(&[]), c_pair(&[]), 400, 2_000),
        ),
        (
            "admit + settle with 4 headers",
            interleaved(rust_pair(&rust_headers), c_pair(&c_headers), 400, 2_000),
        ),
    ] {
        let target = 1.2 * r + 10.0;
        let verdict = if cc <= target { "met" } else { "MISSED" };
        println!(
            "{what:<32} Rust {r:>7.1} ns  C ABI {cc:>7.1} ns  ratio {:.3}  (target C <= {target:.1} ns: {verdict})",
            cc / r
        );
    }
}

fn main() {
    let since = SystemTime::now();
    let mut c = common::criterion();
    benches(&mut c);
    c.final_summary();
    print_table(since);
}
