//! Response cache hot path.
//!
//! - `key_2kb`: `cache_key` of a ~2 KB chat request (system + user messages, parameters).
//! - `hit_4kb`: a cache hit for a 4 KB response, key of the 2 KB request included (target ≤ 2 µs).
//! - `get_only`: the store lookup alone, key precomputed.
//! - `insert_4kb`: inserting a 4 KB response into a full store (each insert evicts one entry).
//!
//! After criterion has run, `main` reads the medians criterion wrote in this run
//! (`target/criterion/<group>/<bench>/new/estimates.json`) and prints a table.
//! `cargo bench --bench cache -- --test` runs every benchmark once and prints no figures.

#[path = "common/mod.rs"]
mod common;

use std::hint::black_box;

use std::time::{Duration, SystemTime};

use criterion::Criterion;
use serde_json::{Value, json};
use tollgate::cache::{CacheKey, CacheStore, CachedResponse, Lookup, cache_key};

const GROUP: &str = "cache";
const RESPONSE_BYTES: usize = 4096;
/// Entries in the store for the hit and insert benchmarks.
const ENTRIES: u64 = 10_000;

/// A chat request of about 2 KB of JSON.
fn request_2kb() -> Value {
    let system = "You are a careful assistant for an online bookshop. Answer briefly, cite the \
                  catalogue number when you name a book, never invent prices, and say so when \
                  you do not know. "
        .repeat(4);
    let user = "I am looking for a novel set in Lisbon, ideally translated from Portuguese, \
                not too long, and suitable as a gift for someone who liked The Shadow of the \
                Wind. What would you suggest, and why? "
        .repeat(4);
    let request = json!({
        "model": "gpt-4o-mini",
        "temperature": 0,
        "max_tokens": 300,
        "seed": 7,
        "top_p": 1.0,
        "stop": ["\n\n\n", "END"],
        "response_format": {"type": "text"},
        "user": "customer-1234",
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
            {"role": "assistant", "content": "Could you tell me the price range?"},
            {"role": "user", "content": "Under 20 euros, paperback."}
        ]
    });
    let len = request.to_string().len();
    assert!((1800..2400).contains(&len), "request is {len} bytes");
    request
}

fn response_4kb() -> CachedResponse {
    CachedResponse::new(200, vec![b'a'; RESPONSE_BYTES])
}

/// A store holding `ENTRIES` 4 KB responses, with room for exactly that many.
fn full_store() -> CacheStore {
    let size = response_4kb().size();
    let store = CacheStore::new(size * ENTRIES, size, Duration::from_secs(3600), None);
    for i in 0..ENTRIES {
        store
            .insert(key(i), response_4kb(), 0)
            .expect("sized to fit");
    }
    store
}

fn key(i: u64) -> CacheKey {
    CacheKey(u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group(GROUP);
    let request = request_2kb();

    g.bench_function("key_2kb", |b| b.iter(|| cache_key(black_box(&request))));

    let store = full_store();
    store
        .insert(cache_key(&request), response_4kb(), 0)
        .expect("fits");
    g.bench_function("hit_4kb", |b| {
        b.iter(|| {
            let k = cache_key(black_box(&request));
            match store.get(k, 1) {
                Lookup::Hit(r) => black_box(r),
                _ => panic!("the entry is fresh"),
            }
        })
    });

    let k = cache_key(&request);
    g.bench_function("get_only", |b| {
        b.iter(|| black_box(store.get(black_box(k), 1)))
    });

    let mut next = ENTRIES;
    let template = response_4kb();
    g.bench_function("insert_4kb", |b| {
        b.iter(|| {
            next += 1;
            store
                .insert(key(next), template.clone(), next)
                .expect("fits")
        })
    });
    g.finish();
}

fn print_table(since: SystemTime) {
    println!();
    println!("== tollgate response cache (criterion medians, this run) ==");
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--test") {
        println!("test mode: every benchmark ran once; no measurements.");
        return;
    }
    let Some(dir) = common::criterion_dir() else {
        println!("no measurements: criterion's output directory was not found");
        return;
    };
    let rows = [
        ("key_2kb", "cache_key of a 2 KB request", None),
        (
            "hit_4kb",
            "hit, 4 KB response, key of the 2 KB request included",
            Some(2000.0),
        ),
        ("get_only", "store lookup alone (key precomputed)", None),
        (
            "insert_4kb",
            "insert 4 KB into a full store (evicts one)",
            None,
        ),
    ];
    common::print_rows(&dir, GROUP, &rows, since);
}

fn main() {
    let since = SystemTime::now();
    let mut c = common::criterion();
    benches(&mut c);
    c.final_summary();
    print_table(since);
}
